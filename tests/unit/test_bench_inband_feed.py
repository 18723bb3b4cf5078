"""bench/bench_inband_feed.py still drives this tree's media code (the engine's private parts it
uses move with refactors)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from bench_inband_feed import measure


def test_the_feed_bench_times_receive_and_the_ticks_collection() -> None:
    result = asyncio.run(measure(sessions=4, ticks=10))
    assert set(result) == {"receive_us", "collect_us"}
    assert all(value > 0 for value in result.values())
