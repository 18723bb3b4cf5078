"""Benchmark: DTMF digit latency per source against concurrent calls per node core.

Run (root, for SIPp's pcap play of the RFC 4733 callers):
    .venv/bin/python bench/bench_dtmf_latency.py --loads 100,300,500,700 [--media mixed]
        [--direct] [--nodes 1] [--out DIR]

For each load L, a fresh stack (one node by default, `--direct` or through Kamailio) takes
full-duplex payment calls from the load kit (`loadkit.py`, as `bench_sipp_load.py`): SIPp keeps
at most L calls at once (`-l L`), places 2 x L calls in all at L / `--ramp-s` calls per second,
so the concurrency climbs to L within the ramp and stays there while most cards are keyed. The
nodes' `spg_dtmf_latency_seconds` histogram (key press to digit, by source: rfc4733, inband,
info) is read before and after; p50 and p99 per source come from the bucket deltas ("n/a"
when a node does not export it). Before the first load, one unloaded call of each kind gives
the row "unloaded".

The x axis is the measured peak of concurrent calls (the nodes' `/healthz` count) per node
(one node is one asyncio process: one core). Writes `latency.md` (a markdown table with the
command), `latency.png` (matplotlib, from the `dev` extra) and `latency.json` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadkit import (
    DTMF_SOURCES,
    MEDIA_MODES,
    LoadSpec,
    check_spec,
    command_line,
    report_text,
    run_load,
)


def ms(value: float | None) -> str:
    """Seconds as whole milliseconds for a table ("n/a" for none)."""
    return "n/a" if value is None else f"{value * 1000:.0f}"


def parse_loads(text: str) -> list[int]:
    """`--loads` ("100,300") as positive integers; [] when it is not that."""
    try:
        loads = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        return []
    return loads if loads and min(loads) >= 1 else []


def held_load(load: int, ramp_s: float, **spec: Any) -> LoadSpec:
    """A run that climbs to `load` calls at once within `ramp_s` and holds it while most
    cards are keyed: 2 x `load` calls at `load` / `ramp_s` a second, at most `load` at once."""
    return LoadSpec(calls=2 * load, rate=load / ramp_s, limit=load, **spec)


def rows_of(runs: Sequence[Mapping[str, Any]], nodes: int) -> list[dict[str, Any]]:
    """One row per load (the unloaded calls first): calls per core and latency per source."""
    rows = []
    first = runs[0] if runs else {}
    base = first.get("baseline", {}).get("dtmf_latency_s")
    if base:
        rows.append({"load": "unloaded", "per_core": None, "approved": "", "latency": base})
    for run in runs:
        rows.append(
            {
                "load": run["limit"],
                "per_core": run["peak_concurrent"] / nodes,
                "approved": f"{run['approved']}/{run['calls']}",
                "journey_ratio": (
                    run["journey_s"]["median"] / run["journey_s"]["baseline"]
                    if run["journey_s"]["median"] and run["journey_s"]["baseline"]
                    else None
                ),
                "latency": run["dtmf_latency_s"],
            }
        )
    return rows


def markdown(rows: Sequence[Mapping[str, Any]], command: str) -> str:
    head = ["load (max calls)", "peak calls / core", "approved"]
    for source in DTMF_SOURCES:
        head += [f"{source} p50 ms", f"{source} p99 ms"]
    lines = [
        f"`{command.removeprefix('$ ')}`",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        cells = [
            str(row["load"]),
            "-" if row["per_core"] is None else f"{row['per_core']:.0f}",
            str(row["approved"]),
        ]
        for source in DTMF_SOURCES:
            entry = row["latency"].get(source)
            if entry is None or not entry.get("count"):
                cells += ["n/a", "n/a"]
            else:
                cells += [ms(entry["p50"]), ms(entry["p99"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> bool:
    """p50 (solid) and p99 (dashed) per source against calls per core; False if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for source in DTMF_SOURCES:
        points = [
            (row["per_core"], row["latency"][source])
            for row in rows
            if row["per_core"] is not None and (row["latency"].get(source) or {}).get("count")
        ]
        if not points:
            continue
        xs = [x for x, _ in points]
        line = ax.plot(xs, [e["p50"] * 1000 for _, e in points], marker="o", label=f"{source} p50")
        ax.plot(xs, [e["p99"] * 1000 for _, e in points], marker="x", linestyle="--",
                color=line[0].get_color(), label=f"{source} p99")  # fmt: skip
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no spg_dtmf_latency_seconds on the node", ha="center",
                transform=ax.transAxes)  # fmt: skip
    ax.set_xlabel("concurrent calls per node core (measured peak)")
    ax.set_ylabel("digit latency (ms)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", default="100,300,500,700",
                        help="concurrent calls to hold, comma-separated")  # fmt: skip
    parser.add_argument("--media", choices=MEDIA_MODES, default="mixed")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument(
        "--workers", type=int, default=1, help="serve --workers of each node (through Kamailio)"
    )
    parser.add_argument("--direct", action="store_true", help="SIPp calls the node, no Kamailio")
    parser.add_argument("--ramp-s", type=float, default=20.0,
                        help="seconds to reach each load")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench-dtmf-latency"))
    args = parser.parse_args()
    loads = parse_loads(args.loads)
    if not loads:
        print(
            "bench_dtmf_latency: --loads must be positive integers, e.g. 100,300", file=sys.stderr
        )
        return 2
    if args.ramp_s <= 0:
        print("bench_dtmf_latency: --ramp-s must be positive", file=sys.stderr)
        return 2
    specs = [
        held_load(
            load,
            args.ramp_s,
            media=args.media,
            nodes=args.nodes,
            workers=args.workers,
            direct=args.direct,
            baseline=(n == 0),
        )
        for n, load in enumerate(loads)
    ]
    for spec in specs:
        problem = check_spec(spec)
        if problem:
            print(f"bench_dtmf_latency: {problem}", file=sys.stderr)
            return 2
    command = command_line()
    print(command)
    runs: list[dict[str, Any]] = []
    for spec in specs:
        if runs:  # the unloaded call ran before the first load only
            spec.journey_baseline_s = runs[0]["journey_s"]["baseline"]
        print(f"\n== at most {spec.limit} calls at once ({spec.calls} calls at {spec.rate:g}/s)")
        result = run_load(spec)
        result.pop("samples", None)
        print(report_text(result), flush=True)
        runs.append(result)
    rows = rows_of(runs, args.nodes * args.workers)  # a worker process per core
    table = markdown(rows, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.md").write_text(table)
    path = "direct" if args.direct else "through Kamailio"
    plot(rows, args.out / "latency.png", f"DTMF latency, {args.media} callers, {path}")
    (args.out / "latency.json").write_text(
        json.dumps({"command": command, "rows": rows, "runs": runs}, indent=2) + "\n"
    )
    print()
    print(table)
    print(
        f"wrote {args.out / 'latency.md'}, {args.out / 'latency.png'}, {args.out / 'latency.json'}"
    )
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
