"""docs/contract.md stays true to the code: it names every configuration key and every command
(a key or a command added without a line there fails here)."""

from __future__ import annotations

import argparse
from pathlib import Path

from spg_media.cli import _build_parser
from spg_media.config import _all_keys

CONTRACT = (Path(__file__).resolve().parents[2] / "docs" / "contract.md").read_text()


def test_every_config_key_is_in_the_contract() -> None:
    missing = [key for key in _all_keys() if f"`{key}`" not in CONTRACT]
    assert missing == []


def test_every_command_and_its_options_are_in_the_contract() -> None:
    parser = _build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert f"`spg-media {name}" in CONTRACT, name
        line = next(x for x in CONTRACT.splitlines() if x.startswith(f"| `spg-media {name}"))
        for action in sub._actions:
            shown = [o for o in action.option_strings if o not in ("-h", "--help")]
            if shown and action.help != argparse.SUPPRESS:
                assert any(f"{o} " in line or f"{o}]" in line for o in shown), (name, shown)
