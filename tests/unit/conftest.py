"""Shared fixtures of the unit tests."""

from __future__ import annotations

import pytest

from spg_media import hardening


@pytest.fixture(autouse=True)
def _process_not_hardened(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` run in this process would make it undumpable, with no core file, for the rest of
    the run: the protections are tested in child processes (test_hardening.py) instead."""
    if request.module.__name__ != "test_hardening":
        monkeypatch.setattr(
            hardening, "harden_process", lambda lock_memory=False: ["core dumps off"]
        )
