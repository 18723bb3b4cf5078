"""How the suite runs in parallel (`pytest -n N --dist loadgroup`, the README's command), and the
unit tests' shared fixture.

Every test is put in its module's xdist group, so a module runs on one worker and its
module-scoped nodes, proxies and calls are started once. The modules that load the machine
(SIPp waves, floods, memory scans) share one group: they run one after another on
one worker, so they never load the machine together, while the rest (mostly waiting on
real-time calls) runs beside them.

The unit tests have no conftest.py of their own: mypy checks the whole suite in one run with
tests/unit and tests/integration as top-level module bases (pyproject.toml), the way pytest
imports them, and two conftest.py files there would both be the module `conftest`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spg_media import hardening

UNIT_DIR = Path(__file__).resolve().parent / "unit"

# Modules whose tests put real load on the machine's two cores.
HEAVY_MODULES = frozenset(
    {
        "test_failover",
        "test_memory_hygiene",
        "test_workers_behind_kamailio",
        "test_connection_flood",
        "test_media_sources",
        "test_shared_port_relay",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.stem
        group = "heavy" if module in HEAVY_MODULES else f"{item.path.parent.name}/{module}"
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def _process_not_hardened(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests only: `serve` run in this process would make it undumpable, with no core file,
    for the rest of the run: the protections are tested in child processes (test_hardening.py)
    instead."""
    if request.path.resolve().parent != UNIT_DIR:
        return
    if request.module.__name__ != "test_hardening":
        monkeypatch.setattr(
            hardening, "harden_process", lambda lock_memory=False: ["core dumps off"]
        )
