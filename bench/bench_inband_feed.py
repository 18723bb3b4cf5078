"""Benchmark: the Python work of an in-band call's audio packet around the detector, against a
baseline tree.

Run:  .venv/bin/python bench/bench_inband_feed.py [--baseline-ref main | --baseline-tree PATH]
          [--sessions 700] [--ticks 300] [--rounds 3]

What each received PCMA packet of an in-band call costs the node in Python before and after
the detector's numpy work: `MediaSession.receive` (header, RTCP statistics, the packet queued
for the detector) and the tick's share of `MediaEngine._detect_inband` (the packet taken off
its session's queue and put in the tick's block), for `--sessions` sessions, one packet each
a tick. The detector's `process` is replaced by one that finds nothing, so only the code
around it is timed; no sockets. Each tree runs in a child process of its own (the baseline:
a temporary `git worktree` of `--baseline-ref`, or `--baseline-tree`), the two alternating,
pinned to the last CPU; prints µs a packet for each part, best of `--rounds`, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_tree import baseline_tree, short_commit  # noqa: E402


async def measure(sessions: int, ticks: int) -> dict[str, float]:
    """µs a packet: receive, and the tick's collection (this process's tree)."""
    from spg_media.rtp.packet import build_rtp
    from spg_media.rtp.session import MediaEngine, MediaSession

    engine = MediaEngine("127.0.0.1", 42000, 44000)
    engine._loop = asyncio.get_running_loop()
    calls: list[tuple[MediaSession, tuple[str, int]]] = []
    for n in range(sessions):
        caller = ("127.0.0.1", 20000 + 2 * n)
        media = MediaSession(codec="PCMA", remote=caller, dtmf_payload_type=None, inband=True)
        media.start_rtcp(0.0, time.time())
        engine.sessions[30000 + 2 * n] = media  # attached without the engine's tick task
        engine._start_inband(media)
        calls.append((media, caller))
    assert engine.inband is not None
    engine.inband.process = lambda slots, block, now: []  # type: ignore[method-assign,assignment]
    noise = bytes(random.Random(1).getrandbits(8) for _ in range(160))
    packets = [
        [build_rtp(8, seq, seq * 160, 1000 + n, noise) for seq in range(ticks)] for n in range(4)
    ]
    received = collected = 0.0
    for tick in range(ticks):
        now = tick * 0.02
        start = time.perf_counter()
        for n, (media, caller) in enumerate(calls):
            media.receive(packets[n % 4][tick], caller, now)
        middle = time.perf_counter()
        engine._detect_inband()
        received += middle - start
        collected += time.perf_counter() - middle
    # every packet was queued and handed to the (stubbed) detector, or nothing was measured
    assert all(media.fed_samples == ticks * 160 for media, _ in calls), "audio not fed"
    count = ticks * sessions
    return {"receive_us": received / count * 1e6, "collect_us": collected / count * 1e6}


def child(args: argparse.Namespace) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    print(json.dumps(asyncio.run(measure(args.sessions, args.ticks))))


def run_tree(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    command = [sys.executable, str(Path(__file__).resolve()), "--child",
               "--sessions", str(args.sessions), "--ticks", str(args.ticks)]  # fmt: skip
    out = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-ref", default="main")
    parser.add_argument("--baseline-tree")
    parser.add_argument("--sessions", type=int, default=700)
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with baseline_tree(HERE, args.baseline_ref, args.baseline_tree) as baseline:
        runs: dict[str, list[dict[str, float]]] = {"baseline": [], "this tree": []}
        for _ in range(args.rounds):
            for name, tree in (("baseline", baseline), ("this tree", HERE)):
                runs[name].append(run_tree(tree, args))
        label = args.baseline_tree or args.baseline_ref
        print(f"# in-band feed: {args.sessions} sessions, {args.ticks} ticks, best of "
              f"{args.rounds}; baseline {label} ({short_commit(baseline)}), this tree "
              f"{short_commit(HERE)}")  # fmt: skip
        best: dict[str, dict[str, Any]] = {}
        print("| tree | receive µs a packet | tick's collection µs a packet | total |")
        print("|---|---:|---:|---:|")
        for name, results in runs.items():
            receive = min(r["receive_us"] for r in results)
            collect = min(r["collect_us"] for r in results)
            best[name] = {"receive": receive, "collect": collect, "total": receive + collect}
            print(f"| {name} | {receive:.3f} | {collect:.3f} | {receive + collect:.3f} |")
        ratio = best["this tree"]["total"] / best["baseline"]["total"]
        print(f"this tree over the baseline: {ratio:.2f}x")


if __name__ == "__main__":
    main()
