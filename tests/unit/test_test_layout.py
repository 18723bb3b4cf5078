"""The test tree itself: pytest imports test modules by basename (no packages), so a unit and an
integration test file of the same name cannot be collected in one run; that run is CI's."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_test_module_name_is_used_twice() -> None:
    unit = {p.name for p in (TESTS / "unit").glob("test_*.py")}
    integration = {p.name for p in (TESTS / "integration").glob("test_*.py")}
    assert unit & integration == set()
