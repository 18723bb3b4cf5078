"""Benchmark: what a node's memory grows with under full-duplex SIPp traffic.

Run (root for `--media rfc4733`, SIPp's pcap play):
    .venv/bin/python bench/bench_load_memory.py [--media rfc4733|inband] [--calls 300]
        [--rate 10] [--limit 150] [--frames 1] [--plain] [--linger-s 40]
        [--baseline-ref main | --baseline-tree DIR] [--json FILE]

With `--baseline-ref` (or `--baseline-tree`) the same load runs first against a node of that
tree (a temporary worktree, its `spg_media` first on the node's PYTHONPATH), then against this
checkout, and a table compares them. `--plain`: no probe, the RSS as the load kit reads it
(idle, every peak reading, drained, linger), for the shipped figure.

One load of the SIPp load kit (`loadkit.run_load`, straight to one `serve --workers 1` node)
with the bench-only probe `bench/memprobe/sitecustomize.py` in the node (on the node's
PYTHONPATH, on only when `SPG_BENCH_MEMPROBE` is set). The bench signals the node (SIGUSR1)
at these points, each probe writing the node's RSS, live objects by type, asyncio tasks, the
Python bytes traced since the first probe with the biggest holders by line, and the RSS after
`malloc_trim(0)`:

- `idle`: after the unloaded calls, before the load (tracemalloc starts here);
- `peak-1`, `peak-2`, ...: every `--peak-every-s` seconds while the calls in progress stay at
  or above 80 % of `--limit` (same calls held, more traffic through: what grows with traffic);
- `drained`: once the calls have ended; `linger`: `--linger-s` later (after the 32 s a SIP
  transaction is kept), and what is left against idle is what the traffic left behind.

It tells apart memory per call held (peak against drained), per completed call (drained or
linger against idle, over the calls completed) and the allocator's high water (RSS against
RSS after the trim). The trim changes the node's RSS from the first probe on, so the load
kit's own "RSS per active call" of a probed run is not the shipped figure: measure that with
`bench_sipp_load.py` (no probe). tracemalloc about doubles the node's CPU, so the node's
load-based admission limits (tick busy, tick and loop lateness) are off unless `--admission`:
else it refuses calls the shipped node would take (`max_calls` stays).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_tree import baseline_tree, short_commit
from loadkit import (
    LoadSpec,
    Stack,
    check_spec,
    command_line,
    fetch_calls,
    report_text,
    run_load,
)

HERE = Path(__file__).resolve().parents[1]
PROBE_PATH = Path(__file__).resolve().parent / "memprobe"


class Prober:
    def __init__(
        self, out: Path, limit: int, peak_every_s: float, linger_s: float, plain: bool = False
    ) -> None:
        self.out = out
        self.plain = plain
        self.limit = limit
        self.peak_every_s = peak_every_s
        self.linger_s = linger_s
        self.threshold = 0.8
        self.stack: Stack | None = None
        self.probes: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def probe(self, label: str, stack: Stack) -> dict[str, Any]:
        node = stack.nodes[0]
        assert node.proc is not None
        n = len(self.probes)
        active = fetch_calls(node.admin_port) or 0
        if self.plain:  # RSS as the load kit reads it, nothing done in the node
            rss = stack.rss()
            plain: dict[str, Any] = {"label": label, "active": int(active), "rss": rss}
            plain["cdrs"] = len(node.cdr_lines())
            self.probes.append(plain)
            print(f"{label}: {int(active)} calls, {plain['cdrs']} CDRs, RSS {rss / 2**20:.1f} MiB")
            return plain
        os.kill(node.proc.pid, signal.SIGUSR1)
        path = self.out / f"probe-{n}.json"
        deadline = time.monotonic() + 120
        while not path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no probe {path} from the node")
            time.sleep(0.2)
        report: dict[str, Any] = json.loads(path.read_text())
        report["label"] = label
        report["active"] = int(active)
        report["cdrs"] = len(node.cdr_lines())
        self.probes.append(report)
        print(
            f"probe {label}: {int(active)} calls, {report['cdrs']} CDRs, "
            f"RSS {report['rss'] / 2**20:.1f} MiB, after trim "
            f"{report['rss_after_trim'] / 2**20:.1f} MiB, traced "
            f"{report.get('traced', 0) / 2**20:.1f} MiB ({report['probe_s']} s)",
            flush=True,
        )
        return report

    def on_phase(self, phase: str, stack: Stack) -> None:
        if phase == "idle":
            self.stack = stack
            self.probe("idle", stack)
            self.thread = threading.Thread(target=self.watch, daemon=True)
            self.thread.start()
        elif phase == "drained":
            self.stop.set()
            if self.thread is not None:
                self.thread.join(150)
            self.probe("drained", stack)
            time.sleep(self.linger_s)
            self.probe("linger", stack)

    def watch(self) -> None:
        assert self.stack is not None
        node = self.stack.nodes[0]
        last = 0.0
        k = 0
        while not self.stop.wait(0.5):
            active = fetch_calls(node.admin_port) or 0
            due = time.monotonic() - last >= self.peak_every_s
            if active >= self.threshold * self.limit and due:
                if last == 0.0:
                    # let the last calls in settle past their first prompt
                    last = time.monotonic() - self.peak_every_s + 5.0
                    continue
                k += 1
                self.probe(f"peak-{k}", self.stack)
                last = time.monotonic()


def holders(after: dict[str, Any], n: int = 25) -> list[str]:
    lines = []
    for entry in after.get("top", [])[:n]:
        where = " <- ".join(entry["where"])
        lines.append(
            f"  {entry['size_diff'] / 1024:+10.1f} KiB {entry['count_diff']:+8d} blocks  {where}"
        )
    return lines


def type_growth(before: dict[str, Any], after: dict[str, Any], n: int = 25) -> list[str]:
    diff = {
        t: after["types"].get(t, 0) - before["types"].get(t, 0)
        for t in set(before["types"]) | set(after["types"])
    }
    top = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:n]
    return [f"  {d:+8d}  {t}" for t, d in top if d]


def summary(probes: list[dict[str, Any]]) -> str:
    if not probes or "types" not in probes[0]:
        return ""
    idle = probes[0]
    out = []
    mib = 2**20
    for p in probes:
        out.append(
            f"{p['label']:>8}: calls {p['active']:4d}  CDRs {p['cdrs']:5d}  "
            f"RSS {p['rss'] / mib:6.1f} MiB  trimmed {p['rss_after_trim'] / mib:6.1f} MiB  "
            f"traced {p.get('traced', 0) / mib:5.1f} MiB  objects {p['gc_objects']}  "
            f"loop {p['loop']}"
        )
        pym = p.get("pymalloc", {})
        st = p.get("status", {})
        names = p.get("maps", {}).get("by_name", {})
        out.append(
            f"{'':>10}RssAnon {st.get('RssAnon', 0) / mib:6.1f} MiB  RssFile "
            f"{st.get('RssFile', 0) / mib:5.1f} MiB  [heap] {names.get('[heap]', 0) / mib:5.1f}"
            f" MiB  other anon {names.get('[anon]', 0) / mib:5.1f} MiB  threads "
            f"{st.get('Threads', 0)}  pymalloc arenas {pym.get('# arenas allocated current', 0)}"
            f" (blocks in use {pym.get('# bytes in allocated blocks', 0) / mib:.1f} MiB, free "
            f"{pym.get('# bytes in available blocks', 0) / mib:.1f} MiB)"
        )
        after = p.get("status_after_trim", {})
        names_after = p.get("maps_after_trim", {}).get("by_name", {})
        out.append(
            f"{'':>10}after trim: RssAnon {after.get('RssAnon', 0) / mib:6.1f} MiB  [heap] "
            f"{names_after.get('[heap]', 0) / mib:5.1f} MiB  other anon "
            f"{names_after.get('[anon]', 0) / mib:5.1f} MiB"
        )
    for p in probes[1:]:
        out.append(f"\n== {p['label']} against idle: Python bytes by line (traced since idle)")
        out.extend(holders(p))
        out.append(f"-- {p['label']} against idle: objects by type")
        out.extend(type_growth(idle, p))
    return "\n".join(out)


def run_tree(args: argparse.Namespace, tree: Path | None) -> dict[str, Any]:
    """One load against a node of `tree` (None: this checkout), probed unless `--plain`."""
    out = Path(tempfile.mkdtemp(prefix="spg-memprobe-"))
    prober = Prober(out, args.limit, args.peak_every_s, args.linger_s, plain=args.plain)
    paths = [] if args.plain else [str(PROBE_PATH)]
    if tree is not None:
        paths.append(str(tree))  # its spg_media before the editable install's
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env = {"PYTHONPATH": os.pathsep.join(paths)} if paths else {}
    if not args.plain:
        env["SPG_BENCH_MEMPROBE"] = str(out)
        env["SPG_BENCH_MEMPROBE_FRAMES"] = str(args.frames)
    if not args.admission and not args.plain:
        env.update(
            {
                "SPG_ADMISSION__MAX_TICK_LAG_MS": "0",
                "SPG_ADMISSION__MAX_LOOP_LAG_MS": "0",
                "SPG_ADMISSION__MAX_TICK_BUSY": "0",
            }
        )
    spec = LoadSpec(
        media=args.media,
        calls=args.calls,
        rate=args.rate,
        direct=True,
        limit=args.limit,
        node_env=env,
        on_phase=prober.on_phase,
    )
    result = run_load(spec)
    result["probes"] = prober.probes
    result["tree"] = str(tree) if tree is not None else "this checkout"
    print(report_text(result))
    print(summary(prober.probes), flush=True)
    return result


def comparison(results: list[tuple[str, dict[str, Any]]]) -> str:
    lines = [
        "| node | peak calls | CDRs | idle RSS | at peak | per active call | drained "
        "| linger | linger - idle per completed call |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results:
        rss = r["rss"]
        probes = {p["label"]: p for p in r["probes"]}
        idle = probes["idle"]["rss"]
        linger = probes["linger"]["rss"]
        done = max(r["cdr_total"], 1)
        lines.append(
            f"| {label} | {r['peak_concurrent']} | {r['cdr_total']} | {idle / 2**20:.1f} MiB "
            f"| {rss['at_peak_mb']:.1f} MiB | {rss['per_call_kb']} KiB "
            f"| {probes['drained']['rss'] / 2**20:.1f} MiB | {linger / 2**20:.1f} MiB "
            f"| {(linger - idle) / 1024 / done:.1f} KiB |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--media", choices=("rfc4733", "inband", "mixed"), default="rfc4733")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument(
        "--frames", type=int, default=1, help="tracemalloc traceback depth (0: no tracemalloc)"
    )
    parser.add_argument("--peak-every-s", type=float, default=20.0)
    parser.add_argument("--linger-s", type=float, default=40.0)
    parser.add_argument("--json", type=Path, help="write the probes and the load's figures")
    parser.add_argument(
        "--admission", action="store_true", help="keep the node's load-based admission limits"
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="no probe in the node: RSS from /proc only (idle, the kit's peak, drained, linger)",
    )
    parser.add_argument("--baseline-ref", help="first the same load against a node of this ref")
    parser.add_argument("--baseline-tree", help="... or of this checkout (no worktree made)")
    args = parser.parse_args()
    problem = check_spec(LoadSpec(media=args.media, calls=args.calls, direct=True))
    if problem:
        print(f"bench_load_memory: {problem}", file=sys.stderr)
        return 2
    results: list[tuple[str, dict[str, Any]]] = []
    print(command_line(), flush=True)
    if args.baseline_ref or args.baseline_tree:
        ref = args.baseline_ref or "HEAD"
        with baseline_tree(HERE, ref, args.baseline_tree) as tree:
            commit = short_commit(tree)
            label = f"baseline {args.baseline_tree or ref} {commit}"
            print(f"== {label}", flush=True)
            results.append((label, run_tree(args, tree)))
    commit = short_commit(HERE)
    label = f"this checkout {commit}"
    print(f"== {label}", flush=True)
    results.append((label, run_tree(args, None)))
    print(comparison(results))
    if args.plain:
        print("(plain: no probe in the nodes, RSS as the kit reads it)")
    else:
        print("(probed: the load kit's RSS figures include the probes' malloc_trim)")
    if args.json:
        args.json.write_text(json.dumps(dict(results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
