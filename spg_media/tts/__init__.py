"""Prompts: wording per language, rendering to 8 kHz audio, the on-disk cache."""
