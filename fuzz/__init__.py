"""Coverage-guided fuzzing of every spg-media parser that takes outside bytes (see README.md).

`fuzz.harness` holds the target registry, the per-input hang check and the replay used by CI;
`fuzz.targets` the targets themselves; `fuzz/run.py` the command line (atheris / libFuzzer).
"""
