"""Agent-assisted mode: the agent stays on the call while the customer keys the card."""
