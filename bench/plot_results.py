"""The plots of bench/RESULTS.md, drawn from the JSON files in bench/results/.

Run:  .venv/bin/python bench/plot_results.py [--results bench/results] [--out DIR]

Reads every `*.json` in `--results` and writes PNGs (matplotlib, Agg backend, ~100 dpi) into
`--out` (default: the same directory). Three kinds of file are understood:

1. A benchmark's figures, transcribed or written by hand, in this schema:

       {"benchmark": "bench_inband.py",      # the script (or shell script) that measured them
        "figure": "throughput",              # optional: which of its tables, when it has several
        "date": "2026-11-27", "commit": "a911fba",
        "machine": "AMD EPYC, 2 cores ...", "command": "the command line",
        "source": "transcribed from RESULTS.md section of 2026-11-27 ...",   # optional
        "units": "...",                                                      # optional
        "rows": [{...}, ...]}                # one object per table row; keys per plot below

   The PNG is named after the JSON (`inband-throughput.json` -> `inband-throughput.png`).
   Plots: `bench_inband.py` "throughput" (rows: channels_per_call, audio, ours,
   spandsp_large_chunks, spandsp_20ms_frames) and "scaling" (channels, ours_core_share_pct,
   spandsp_large_chunks_core_share_pct, spandsp_20ms_frames_core_share_pct);
   `bench_media_load.py` (sessions, node, cpu_us_per_packet, press_ms_p50, press_ms_p99);
   `admission_cpu_quota.sh` (run, node0_calls, node0_not_approved, node1_calls, sipp_failed).

2. What `bench/bench_sipp_load.py --json FILE` writes (one load run of `loadkit.run_load`,
   e.g. saved as `capacity-inband-300.json`), and
3. what `bench/bench_dtmf_latency.py --out DIR` writes as `latency.json` ({"command", "rows",
   "runs"}: one load run per row).

All the load runs of kinds 2 and 3 together give `dtmf-latency.png` (digit latency p50 and p99
per source against the measured peak of concurrent calls per node core, one line per media kind
and source), `capacity.png` (node CPU and RSS per call against the same axis) and `capacity.md`
(the capacity table of bench/RESULTS.md, one row per run, ready to paste).

A file that is not JSON or fits none of these is a one-line error, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"): no display needed
from matplotlib.figure import Figure

HERE = Path(__file__).resolve().parent
DPI = 100
SCHEMA_KEYS = ("benchmark", "date", "commit", "machine", "command", "rows")
# the sources of bench/loadkit.py's DTMF_SOURCES, in its order (not imported: loadkit needs
# the node's dependencies, this script only matplotlib)
DTMF_SOURCES = ("rfc4733", "inband", "info")


class ResultsError(Exception):
    """A results file this script cannot use (the message names it and says why)."""


# ---- the benchmarks' own figures ---------------------------------------------------------------


def _caption(doc: Mapping[str, Any]) -> str:
    return f"{doc['date']}, {doc['commit']}; {doc['machine']}"


def _finish(fig: Figure, doc: Mapping[str, Any], path: Path) -> None:
    fig.text(0.01, 0.005, _caption(doc), fontsize=6.5, color="0.35", ha="left", va="bottom",
             wrap=True)  # fmt: skip
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_inband_throughput(doc: Mapping[str, Any], path: Path) -> None:
    """Channels per core by scenario, ours against spandsp, one panel per channels a call."""
    sizes = sorted({int(r["channels_per_call"]) for r in doc["rows"]}, reverse=True)
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.2), squeeze=False)
    series = (("ours", "ours, 20 ms ticks"), ("spandsp_large_chunks", "spandsp, large chunks"),
              ("spandsp_20ms_frames", "spandsp, 20 ms frames"))  # fmt: skip
    for ax, size in zip(axes[0], sizes, strict=True):
        rows = [r for r in doc["rows"] if int(r["channels_per_call"]) == size]
        xs = range(len(rows))
        width = 0.27
        for n, (key, label) in enumerate(series):
            ax.bar([x + (n - 1) * width for x in xs], [r[key] for r in rows], width, label=label)
        ax.set_xticks(list(xs), [r["audio"] for r in rows])
        ax.set_yscale("log")
        ax.set_ylabel("channels per core (log)")
        ax.set_title(f"{size:,} channels a call")
        ax.grid(True, axis="y", alpha=0.3)
        for x, r in zip(xs, rows, strict=True):
            ratio = r["ours"] / r["spandsp_large_chunks"]
            ax.annotate(f"{ratio:.1f}x", (x - width, r["ours"]), ha="center", va="bottom",
                        fontsize=7)  # fmt: skip
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle("In-band DTMF detection: channels one core decodes in real time "
                 "(label: ours / spandsp large chunks)", fontsize=10)  # fmt: skip
    _finish(fig, doc, path)


def plot_inband_scaling(doc: Mapping[str, Any], path: Path) -> None:
    """Share of a core against in-band channels, ours against spandsp."""
    rows = sorted(doc["rows"], key=lambda r: r["channels"])
    xs = [r["channels"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = (
        ("ours_core_share_pct", "ours, 20 ms ticks"),
        ("spandsp_large_chunks_core_share_pct", "spandsp, large chunks"),
        ("spandsp_20ms_frames_core_share_pct", "spandsp, 20 ms frames"),
    )
    for key, label in series:
        ax.plot(xs, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("in-band channels (payment-call audio)")
    ax.set_ylabel("share of one core (%, log)")
    ax.axhline(100, color="0.5", linestyle=":", linewidth=1)
    ax.set_title("In-band DTMF detection: cost against load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _finish(fig, doc, path)


def plot_media_load(doc: Mapping[str, Any], path: Path) -> None:
    """Node CPU per packet and press-to-digit latency against sessions, per node tree."""
    fig, (cpu_ax, lat_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
    for node in dict.fromkeys(r["node"] for r in doc["rows"]):
        rows = sorted((r for r in doc["rows"] if r["node"] == node), key=lambda r: r["sessions"])
        xs = [r["sessions"] for r in rows]
        line = cpu_ax.plot(xs, [r["cpu_us_per_packet"] for r in rows], marker="o", label=node)
        color = line[0].get_color()
        lat_ax.plot(xs, [r["press_ms_p50"] for r in rows], marker="o", color=color,
                    label=f"{node} p50")  # fmt: skip
        lat_ax.plot(xs, [r["press_ms_p99"] for r in rows], marker="x", linestyle="--",
                    color=color, label=f"{node} p99")  # fmt: skip
    cpu_ax.set_ylim(bottom=0)
    cpu_ax.set_xlabel("full-duplex sessions (50 packets/s each way)")
    cpu_ax.set_ylabel("node CPU per packet (µs)")
    cpu_ax.set_title("Node CPU per RTP packet")
    lat_ax.set_ylim(bottom=0)
    lat_ax.set_xlabel("full-duplex sessions")
    lat_ax.set_ylabel("RFC 4733 press → on_dtmf (ms)")
    lat_ax.set_title("Digit delay in the node")
    for ax in (cpu_ax, lat_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    _finish(fig, doc, path)


def plot_admission_overload(doc: Mapping[str, Any], path: Path) -> None:
    """Where the calls went in each overload run: held node approved / not, other node."""
    rows = doc["rows"]
    labels = [r["run"] for r in rows]
    approved = [r["node0_calls"] - r["node0_not_approved"] for r in rows]
    failed = [r["node0_not_approved"] for r in rows]
    other = [r["node1_calls"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.6))
    ys = range(len(rows))
    ax.barh(ys, approved, label="held node, approved")
    ax.barh(ys, failed, left=approved, label="held node, not approved", color="tab:red")
    ax.barh(ys, other, left=[a + f for a, f in zip(approved, failed, strict=True)],
            label="other node (all approved)", color="tab:green", alpha=0.6)  # fmt: skip
    ax.set_yticks(list(ys), labels)
    ax.invert_yaxis()
    ax.set_xlabel("calls (node CDRs)")
    ax.set_title("Admission control: a node held to 10 % of a core, admission off or on")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    _finish(fig, doc, path)


Plotter = Callable[[Mapping[str, Any], Path], None]
PLOTTERS: dict[tuple[str, str | None], Plotter] = {
    ("bench_inband.py", "throughput"): plot_inband_throughput,
    ("bench_inband.py", "scaling"): plot_inband_scaling,
    ("bench_media_load.py", None): plot_media_load,
    ("admission_cpu_quota.sh", None): plot_admission_overload,
}


# ---- load runs: bench_sipp_load.py --json and bench_dtmf_latency.py --out ---------------------


def _is_load_run(doc: Mapping[str, Any]) -> bool:
    return all(k in doc for k in ("media", "peak_concurrent", "cpu_per_call_ms", "journey_s"))


def load_runs(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The load runs in a file of kind 2 or 3 (see the module docstring); [] for other files."""
    if _is_load_run(doc):
        return [doc]
    runs = doc.get("runs")
    if isinstance(runs, list) and "rows" in doc and all(isinstance(r, dict) for r in runs):
        if not all(_is_load_run(r) for r in runs):
            raise ResultsError("a latency.json whose runs are not bench_sipp_load.py results")
        # bench_dtmf_latency.py keeps its command line once, for all its runs
        return [{"command": doc.get("command"), **run} for run in runs]
    return []


def per_core(run: Mapping[str, Any]) -> float:
    """The measured peak of concurrent calls per node core (a worker process is one core)."""
    return float(run["peak_concurrent"]) / (int(run.get("nodes", 1)) * int(run.get("workers", 1)))


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f}"


def capacity_headers() -> list[str]:
    head = ["concurrent calls (peak, per core)", "media kind", "approved", "journey vs unloaded",
            "node CPU per call", "RSS per call"]  # fmt: skip
    return head + [f"DTMF latency {source} p50 / p99 ms" for source in DTMF_SOURCES]


def capacity_row(run: Mapping[str, Any]) -> list[str]:
    journey = run["journey_s"]
    ratio = (
        f"{journey['median'] / journey['baseline']:.2f}x"
        if journey.get("median") and journey.get("baseline")
        else "n/a"
    )
    rss_kb = (run.get("rss") or {}).get("per_call_kb")
    cells = [
        f"{run['peak_concurrent']} ({per_core(run):.0f})",
        str(run["media"]),
        f"{run.get('approved', 0)}/{run['calls']}",
        ratio,
        f"{run['cpu_per_call_ms']['spg']:.0f} ms",
        "n/a" if rss_kb is None else f"{rss_kb:.0f} KiB",
    ]
    latency = run.get("dtmf_latency_s") or {}
    for source in DTMF_SOURCES:
        entry = latency.get(source)
        if not entry or not entry.get("count"):
            cells.append("n/a")
        else:
            cells.append(f"{_ms(entry['p50'])} / {_ms(entry['p99'])}")
    return cells


def capacity_markdown(runs: Sequence[Mapping[str, Any]]) -> str:
    """The capacity table: one row per load run, by media kind then load."""
    head = capacity_headers()
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in sorted(runs, key=lambda r: (str(r["media"]), per_core(r))):
        lines.append("| " + " | ".join(capacity_row(run)) + " |")
    commands = sorted({str(r["command"]) for r in runs if r.get("command")})
    notes = [f"`{c.removeprefix('$ ')}`" for c in commands]
    dates = sorted({str(r.get("date", ""))[:10] for r in runs if r.get("date")})
    if dates:
        notes.append("run " + ", ".join(dates))
    return "\n".join(lines) + "\n" + ("\n" + "; ".join(notes) + "\n" if notes else "")


def _by_media(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for run in sorted(runs, key=per_core):
        out.setdefault(str(run["media"]), []).append(run)
    return out


def plot_dtmf_latency(runs: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """p50 (solid) and p99 (dashed) per media kind and source against calls per core."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    drawn = False
    for media, of_media in _by_media(runs).items():
        for source in DTMF_SOURCES:
            points = [
                (per_core(r), r["dtmf_latency_s"][source])
                for r in of_media
                if ((r.get("dtmf_latency_s") or {}).get(source) or {}).get("count")
            ]
            if not points:
                continue
            xs = [x for x, _ in points]
            label = f"{media} callers, {source}"
            line = ax.plot(xs, [e["p50"] * 1000 for _, e in points], marker="o",
                           label=f"{label} p50")  # fmt: skip
            ax.plot(xs, [e["p99"] * 1000 for _, e in points], marker="x", linestyle="--",
                    color=line[0].get_color(), label=f"{label} p99")  # fmt: skip
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no digit latency in these runs (spg_dtmf_latency_seconds)",
                ha="center", transform=ax.transAxes)  # fmt: skip
    else:
        ax.legend(fontsize=7)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("concurrent calls per node core (measured peak)")
    ax.set_ylabel("key press → digit (ms)")
    ax.set_title("DTMF latency under load")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return drawn


def plot_capacity(runs: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Node CPU per call, RSS per call and the journey's stretch against calls per core."""
    fig, (cpu_ax, rss_ax, journey_ax) = plt.subplots(1, 3, figsize=(12, 4))
    for media, of_media in _by_media(runs).items():
        xs = [per_core(r) for r in of_media]
        cpu_ax.plot(xs, [r["cpu_per_call_ms"]["spg"] for r in of_media], marker="o", label=media)
        rss = [((r.get("rss") or {}).get("per_call_kb"), per_core(r)) for r in of_media]
        rss_ax.plot([x for v, x in rss if v is not None], [v for v, _ in rss if v is not None],
                    marker="o", label=media)  # fmt: skip
        stretch = [
            (per_core(r), r["journey_s"]["median"] / r["journey_s"]["baseline"])
            for r in of_media
            if r["journey_s"].get("median") and r["journey_s"].get("baseline")
        ]
        journey_ax.plot([x for x, _ in stretch], [y for _, y in stretch], marker="o", label=media)
    labels = (
        (cpu_ax, "node CPU per call (ms)"),
        (rss_ax, "node RSS per active call (KiB)"),
        (journey_ax, "journey median / unloaded call"),
    )
    for ax, ylabel in labels:
        ax.set_xlabel("concurrent calls per node core")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    cpu_ax.set_ylim(bottom=0)
    rss_ax.set_ylim(bottom=0)
    journey_ax.axhline(1.0, color="0.5", linestyle=":", linewidth=1)
    fig.suptitle("Full-duplex payment calls: what a call costs a node", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# ---- the script ---------------------------------------------------------------------------------


def _read(path: Path) -> Mapping[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path.name}: not readable JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ResultsError(f"{path.name}: a JSON object is expected")
    return doc


def _check_schema(doc: Mapping[str, Any], name: str) -> None:
    missing = [k for k in SCHEMA_KEYS if k not in doc]
    if missing:
        raise ResultsError(f"{name}: missing {', '.join(missing)}")
    rows = doc["rows"]
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ResultsError(f"{name}: rows must be a non-empty list of objects")


def plot_all(results: Path, out: Path) -> list[Path]:
    """Every output for the JSON files in `results`, written into `out`; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    runs: list[Mapping[str, Any]] = []
    for path in sorted(results.glob("*.json")):
        doc = _read(path)
        try:
            found = load_runs(doc)
        except ResultsError as exc:
            raise ResultsError(f"{path.name}: {exc}") from None
        if found:
            runs += found
            continue
        _check_schema(doc, path.name)
        key = (str(doc["benchmark"]), doc.get("figure"))
        plotter = PLOTTERS.get(key)
        if plotter is None:
            known = ", ".join(f"{b} {f or ''}".strip() for b, f in PLOTTERS)
            raise ResultsError(f"{path.name}: no plot for {' '.join(map(str, key))} ({known})")
        target = out / f"{path.stem}.png"
        try:
            plotter(doc, target)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            plt.close("all")
            raise ResultsError(f"{path.name}: a row lacks or mistypes {exc}") from None
        written.append(target)
    if runs:
        try:
            plot_dtmf_latency(runs, out / "dtmf-latency.png")
            plot_capacity(runs, out / "capacity.png")
            (out / "capacity.md").write_text(capacity_markdown(runs), encoding="utf-8")
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            plt.close("all")
            raise ResultsError(f"a load run lacks or mistypes {exc}") from None
        written += [out / "dtmf-latency.png", out / "capacity.png", out / "capacity.md"]
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="the directory of JSON files (default bench/results)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="where to write (default: --results)")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"plot_results: {args.results} is not a directory", file=sys.stderr)
        return 2
    try:
        written = plot_all(args.results, args.out or args.results)
    except ResultsError as exc:
        print(f"plot_results: {exc}", file=sys.stderr)
        return 2
    if not written:
        print(f"plot_results: no JSON results in {args.results}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
