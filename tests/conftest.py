"""How the suite runs in parallel (`pytest -n N --dist loadgroup`, the README's command).

Every test is put in its module's xdist group, so a module runs on one worker and its
module-scoped nodes, proxies and calls are started once. The modules that load the machine
(SIPp waves, floods, memory scans) share one group: they run one after another on
one worker, so they never load the machine together, while the rest (mostly waiting on
real-time calls) runs beside them.
"""

from __future__ import annotations

import pytest

# Modules whose tests put real load on the machine's two cores.
HEAVY_MODULES = frozenset(
    {
        "test_failover",
        "test_memory_hygiene",
        "test_workers_behind_kamailio",
        "test_connection_flood",
        "test_media_sources",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.stem
        group = "heavy" if module in HEAVY_MODULES else f"{item.path.parent.name}/{module}"
        item.add_marker(pytest.mark.xdist_group(group))
