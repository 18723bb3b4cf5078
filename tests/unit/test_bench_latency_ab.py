"""bench/bench_latency_ab.py's arithmetic: the trees' order, the rows and the medians (the load
runs themselves are SIPp's, in the benchmark)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from bench_latency_ab import markdown, order_of, run_row, summary


def load_run(limit: int, cpu_ms: float, p99_ms: float, approved: int = 10) -> dict[str, Any]:
    """What `loadkit.run_load` returns, the fields the A/B reads."""
    return {
        "date": "2026-12-05T07:50:30",
        "limit": limit,
        "calls": 10,
        "approved": approved,
        "cpu_per_call_ms": {"spg": cpu_ms, "sipp": 12.0},
        "dtmf_latency_s": {
            "rfc4733": None,
            "inband": {"count": 240.0, "p50": 0.027, "p95": 0.036, "p99": p99_ms / 1000},
            "info": None,
        },
    }


def test_the_trees_take_turns_going_first() -> None:
    assert [order_of(r) for r in range(3)] == [
        ("baseline", "this"),
        ("this", "baseline"),
        ("baseline", "this"),
    ]


def test_medians_over_the_rounds_and_this_tree_over_the_baseline() -> None:
    rows = [
        run_row("baseline", 0, load_run(726, 44.0, 41.0)),
        run_row("this", 0, load_run(726, 45.0, 44.0)),
        run_row("this", 1, load_run(726, 45.0, 56.0, approved=9)),
        run_row("baseline", 1, load_run(726, 45.0, 44.0)),
        run_row("baseline", 2, load_run(726, 46.0, 45.0)),
        run_row("this", 2, load_run(726, 48.0, 49.0)),
    ]
    assert rows[2]["not_approved"] == 1
    assert rows[0]["latency"].keys() == {"inband"}  # sources without digits left out
    [entry] = summary(rows)
    assert (entry["load"], entry["source"]) == (726, "inband")
    assert entry["baseline"]["runs"] == entry["this"]["runs"] == 3
    assert entry["baseline"]["p99"] == pytest.approx(0.044)
    assert entry["this"]["p99"] == pytest.approx(0.049)
    assert entry["baseline"]["cpu_ms"] == 45.0 and entry["this"]["cpu_ms"] == 45.0
    assert entry["ratio"]["p99"] == pytest.approx(49 / 44)
    assert entry["ratio"]["cpu_ms"] == pytest.approx(1.0)
    table = markdown(rows, [entry], "heading")
    assert "| 2 | this | 07:50 | 726 | 9 (1) | 45.0 ms | n/a | 27 / 36 / 56 | n/a |" in table
    assert (
        "| 726 | inband | 27 / 36 / 44 (45.0 ms) | 27 / 36 / 49 (45.0 ms) | 1.00x, 1.11x, 1.00x |"
        in (table)
    )


def test_a_tree_without_runs_of_a_source_has_no_ratio() -> None:
    quiet = load_run(300, 60.0, 40.0)
    quiet["dtmf_latency_s"]["inband"] = {"count": 0.0, "p50": None, "p95": None, "p99": None}
    rows = [run_row("baseline", 0, quiet), run_row("this", 0, load_run(300, 58.0, 38.0))]
    [entry] = summary(rows)
    assert entry["baseline"]["runs"] == 0 and entry["baseline"]["p99"] is None
    assert entry["ratio"]["p99"] is None
    assert "n/a / n/a / n/a (n/a)" in markdown(rows, [entry], "heading")
