"""Benchmark: per-packet Python work of a call's media, with RTCP statistics and without.

Run:  .venv/bin/python bench/bench_media_packet.py [--packets 20000] [--repeats 5]

One `MediaSession` takes the caller's 20 ms PCMU packets (`receive`) and makes ours
(`next_packet`), one of each per simulated tick, as the engine's socket and tick would (no
sockets: the cost measured is the session's own). "with RTCP" is a session as the engine runs it
(`start_rtcp`: every packet counted for RFC 3550's statistics, reports asked for each tick as
the tick does); "without" is the same session never started on RTCP, the baseline, timed in
the same run, alternating. Prints microseconds per packet pair (one in, one out), best of
--repeats, and the ratio. Pinned to the last CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spg_media.rtp.packet import build_rtp
from spg_media.rtp.session import MediaSession

CALLER = ("127.0.0.1", 40000)


def run(packets: list[bytes], rtcp: bool) -> float:
    """Microseconds per packet pair."""
    media = MediaSession(codec="PCMU", remote=CALLER, dtmf_payload_type=101)
    if rtcp:
        media.start_rtcp(0.0, time.time())
    start = time.perf_counter()
    for n, packet in enumerate(packets):
        now = n * 0.02
        media.receive(packet, CALLER, now)
        media.next_packet(now)
        if now >= media.rtcp_due:  # the tick's check, for every session
            media.rtcp_report(now)
    return (time.perf_counter() - start) / len(packets) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    packets = [
        build_rtp(0, n & 0xFFFF, (n * 160) & 0xFFFFFFFF, 0x5150, b"\xff" * 160)
        for n in range(args.packets)
    ]
    without, with_rtcp = [], []
    for _ in range(args.repeats):
        without.append(run(packets, rtcp=False))
        with_rtcp.append(run(packets, rtcp=True))
    base, ours = min(without), min(with_rtcp)
    print(f"{args.packets} packet pairs, best of {args.repeats}")
    print("| session | µs per packet pair (in + out) |")
    print("|---|---|")
    print(f"| without RTCP (baseline) | {base:.2f} |")
    print(f"| with RTCP | {ours:.2f} |")
    print(f"RTCP adds {ours - base:.2f} µs a packet pair: {ours / base:.2f}x the baseline")


if __name__ == "__main__":
    main()
