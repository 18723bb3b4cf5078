"""Benchmark: DTMF latency and node CPU of this tree against a baseline tree, runs interleaved.

Run (root, for SIPp's pcap play of the RFC 4733 callers):
    .venv/bin/python bench/bench_latency_ab.py --baseline-ref main --loads 726 --media inband
        --direct [--rounds 3] [--ramp-s 20] [--baseline-tree PATH] [--out DIR]

A change to the media path is judged on this machine only against runs of the baseline made
in the same half hour: a call's CPU, and with it the latency's tail, moves by a third between
hours. Each round runs every load once on each tree, the two trees in turn (the baseline first
in odd rounds, this tree first in even ones), each run a fresh stack from the load kit
(`loadkit.py`, as `bench_dtmf_latency.py`: 2 x L calls at L / `--ramp-s` a second, at most L at
once). The baseline's node is this checkout's `spg-media` with `PYTHONPATH` set to the baseline
tree (a temporary `git worktree` of `--baseline-ref`, or `--baseline-tree`), so only the
package differs: the kit, SIPp, Kamailio and the key plan are this tree's.

Prints, and writes as `ab.md` and `ab.json` into `--out`: every run (its start, approved and
refused calls, node CPU a call, digit latency p50 / p95 / p99 per source), then per tree and
load the medians over the rounds, and this tree's medians over the baseline's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_tree import baseline_tree, short_commit
from bench_dtmf_latency import held_load, ms, parse_loads
from loadkit import (
    DTMF_SOURCES,
    MEDIA_MODES,
    LoadSpec,
    check_spec,
    command_line,
    report_text,
    run_load,
)

REPO = Path(__file__).resolve().parents[1]
TREES = ("baseline", "this")


def order_of(round_index: int) -> tuple[str, str]:
    """The trees' order in a round (0-based): the baseline first in every other round."""
    return TREES if round_index % 2 == 0 else (TREES[1], TREES[0])


def run_row(tree: str, round_index: int, run: Mapping[str, Any]) -> dict[str, Any]:
    """What the tables show of one load run."""
    return {
        "round": round_index + 1,
        "tree": tree,
        "date": run["date"],
        "load": run["limit"],
        "calls": run["calls"],
        "approved": run["approved"],
        "not_approved": run["calls"] - run["approved"],
        "cpu_ms": run["cpu_per_call_ms"]["spg"],
        "latency": {
            source: entry
            for source, entry in run["dtmf_latency_s"].items()
            if entry and entry.get("count")
        },
    }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per load, source and tree: the medians over the rounds of p50, p95, p99 and CPU a call,
    and this tree's over the baseline's."""
    out = []
    for load in sorted({row["load"] for row in rows}):
        here = [row for row in rows if row["load"] == load]
        sources = [s for s in DTMF_SOURCES if any(s in row["latency"] for row in here)]
        for source in sources:
            entry: dict[str, Any] = {"load": load, "source": source}
            for tree in TREES:
                mine = [row for row in here if row["tree"] == tree and source in row["latency"]]
                entry[tree] = {
                    "runs": len(mine),
                    "cpu_ms": _median([row["cpu_ms"] for row in mine]),
                    **{
                        q: _median([row["latency"][source][q] for row in mine])
                        for q in ("p50", "p95", "p99")
                    },
                }
            entry["ratio"] = {
                key: (entry["this"][key] / entry["baseline"][key])
                if entry["this"][key] is not None and entry["baseline"][key]
                else None
                for key in ("cpu_ms", "p50", "p95", "p99")
            }
            out.append(entry)
    return out


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def markdown(
    rows: Sequence[Mapping[str, Any]], totals: Sequence[Mapping[str, Any]], heading: str
) -> str:
    lines = [
        heading,
        "",
        "| round | tree | start | load | approved (not) | node CPU a call | "
        + " | ".join(f"{s} p50 / p95 / p99 ms" for s in DTMF_SOURCES)
        + " |",
        "|" + "---|" * (6 + len(DTMF_SOURCES)),
    ]
    for row in rows:
        cells = [
            str(row["round"]),
            row["tree"],
            row["date"][11:16],
            str(row["load"]),
            f"{row['approved']} ({row['not_approved']})",
            f"{row['cpu_ms']:.1f} ms",
        ]
        for source in DTMF_SOURCES:
            entry = row["latency"].get(source)
            cells.append(
                "n/a"
                if entry is None
                else f"{ms(entry['p50'])} / {ms(entry['p95'])} / {ms(entry['p99'])}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| load | source | baseline p50 / p95 / p99 ms (CPU a call) | this p50 / p95 / p99 ms "
        "(CPU a call) | this over baseline: p50, p99, CPU |",
        "|---|---|---|---|---|",
    ]
    for entry in totals:
        cells = [str(entry["load"]), entry["source"]]
        for tree in TREES:
            t = entry[tree]
            cpu = "n/a" if t["cpu_ms"] is None else f"{t['cpu_ms']:.1f} ms"
            cells.append(f"{ms(t['p50'])} / {ms(t['p95'])} / {ms(t['p99'])} ({cpu})")
        ratio = entry["ratio"]
        cells.append(f"{_x(ratio['p50'])}, {_x(ratio['p99'])}, {_x(ratio['cpu_ms'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-ref", default="main", help="git ref of the baseline tree")
    parser.add_argument("--baseline-tree", help="a checkout to use as the baseline instead")
    parser.add_argument("--loads", default="726", help="concurrent calls, comma-separated")
    parser.add_argument("--media", choices=MEDIA_MODES, default="inband")
    parser.add_argument("--direct", action="store_true", help="SIPp calls the node, no Kamailio")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ramp-s", type=float, default=20.0, help="seconds to reach each load")
    parser.add_argument("--out", type=Path, default=Path("bench-latency-ab"))
    args = parser.parse_args()
    loads = parse_loads(args.loads)
    if not loads:
        print("bench_latency_ab: --loads must be positive integers, e.g. 726", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.ramp_s <= 0:
        print("bench_latency_ab: --rounds must be 1 or more, --ramp-s positive", file=sys.stderr)
        return 2
    if args.baseline_tree and not (Path(args.baseline_tree) / "spg_media").is_dir():
        print(f"bench_latency_ab: no spg_media in {args.baseline_tree}", file=sys.stderr)
        return 2

    def spec_for(load: int) -> LoadSpec:
        return held_load(load, args.ramp_s, media=args.media, direct=args.direct, baseline=False)

    for load in loads:
        problem = check_spec(spec_for(load))
        if problem:
            print(f"bench_latency_ab: {problem}", file=sys.stderr)
            return 2
    command = command_line()
    print(command)
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    journey_s: float | None = None
    with baseline_tree(REPO, args.baseline_ref, args.baseline_tree) as base:
        commits = {"baseline": short_commit(base), "this": short_commit(REPO)}
        for round_index in range(args.rounds):
            for tree in order_of(round_index):
                for load in loads:
                    spec = spec_for(load)
                    spec.baseline = journey_s is None  # one unloaded call, before the first
                    spec.journey_baseline_s = journey_s
                    if tree == "baseline":
                        spec.node_env = {"PYTHONPATH": str(base)}
                    print(f"\n== round {round_index + 1}, {tree} ({commits[tree]}), {load} calls")
                    result = run_load(spec)
                    result.pop("samples", None)
                    result["tree"], result["commit"] = tree, commits[tree]
                    print(report_text(result), flush=True)
                    if journey_s is None:
                        journey_s = result["journey_s"]["baseline"]
                    runs.append(result)
                    rows.append(run_row(tree, round_index, result))
    totals = summary(rows)
    heading = (
        f"`{command.removeprefix('$ ')}`: baseline {commits['baseline']}, this "
        f"{commits['this']}, {datetime.date.today().isoformat()}"
    )
    table = markdown(rows, totals, heading)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ab.md").write_text(table)
    (args.out / "ab.json").write_text(
        json.dumps(
            {"command": command, "commits": commits, "rows": rows, "summary": totals,
             "runs": runs},
            indent=2,
        )
        + "\n"
    )  # fmt: skip
    print()
    print(table)
    print(f"wrote {args.out / 'ab.md'}, {args.out / 'ab.json'}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
