"""Benchmark: SRTP protect + unprotect of 172-byte PCMU packets, per suite, against plain RTP.

Run:  .venv/bin/python bench/bench_srtp.py [--quick]

Prints, on one core, for each suite our libsrtp offers:
* the same-run baseline: building the plain RTP packet (`build_rtp`, 12-byte header + 160 bytes
  of PCMU, what every outgoing 20 ms packet costs without SRTP);
* build + `SrtpContext.protect_rtp` (the caller's side) + `SrtpContext.unprotect_rtp` (ours),
  i.e. one packet through both ends of a call, as packets/s and as a ratio to the baseline;
* the same with bare pylibsrtp `Session`s, so the cost of our wrapper (length checks, drop
  accounting) shows apart from libsrtp's;
* what 1,000 SRTP calls would take of one core: each call sends 50 and receives 50 packets/s,
  so 50,000 protects and 50,000 unprotects per second.

The whole run takes about 10 s (2 s with --quick).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pylibsrtp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spg_media.rtp.packet import build_rtp
from spg_media.rtp.srtp import (
    SUITES,
    SrtpContext,
    accept_answer,
    choose_answer,
    offer_attributes,
)

PAYLOAD = bytes(range(160))
SSRC = 0x1234_5678
CALLS, PACKETS_PER_S = 1000, 50


def best_of(repeats: int, setup: Callable[[], Callable[[], object]]) -> float:
    """Fastest wall time of `repeats` runs, each on fresh state (replay windows start empty)."""
    best = float("inf")
    for _ in range(repeats):
        run = setup()
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def pair(suite: str) -> tuple[SrtpContext, SrtpContext]:
    """(caller, callee) contexts keyed through the SDES offer/answer, as in a call."""
    offered = offer_attributes([suite])
    remote, local = choose_answer([offered[0].sdp_value()])
    callee = SrtpContext(local, remote)
    caller = accept_answer(offered, [local.sdp_value()])
    return caller, callee


def bench(packets: int, repeats: int) -> None:
    seqs = [n & 0xFFFF for n in range(packets)]

    def baseline() -> Callable[[], object]:
        def run() -> None:
            for seq in seqs:
                build_rtp(0, seq, seq * 160, SSRC, PAYLOAD)

        return run

    t_base = best_of(repeats, baseline)
    print(f"SRTP: {packets} packets of 172 bytes (PCMU, 20 ms) per run, best of {repeats}")
    print(f"  build_rtp only (baseline)          {packets / t_base:>12,.0f} packets/s")
    print(
        "  suite                      path        packets/s   x baseline   us/packet   1000 calls"
    )
    for name, suite in SUITES.items():

        def ours(name: str = name) -> Callable[[], object]:
            caller, callee = pair(name)
            protect, unprotect = caller.protect_rtp, callee.unprotect_rtp

            def run() -> None:
                for seq in seqs:
                    assert unprotect(protect(build_rtp(0, seq, seq * 160, SSRC, PAYLOAD)) or b"")

            return run

        def bare(
            profile: int = suite.profile, length: int = suite.master_length
        ) -> Callable[[], object]:
            key = bytes(range(length))
            tx = pylibsrtp.Session(
                pylibsrtp.Policy(key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
            )
            rx = pylibsrtp.Session(
                pylibsrtp.Policy(key, pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
            )
            protect, unprotect = tx.protect, rx.unprotect

            def run() -> None:
                for seq in seqs:
                    unprotect(protect(build_rtp(0, seq, seq * 160, SSRC, PAYLOAD)))

            return run

        for label, setup in (("SrtpContext", ours), ("pylibsrtp", bare)):
            elapsed = best_of(repeats, setup)
            per_packet = (elapsed - t_base) / packets  # protect + unprotect, baseline removed
            core_share = CALLS * PACKETS_PER_S * per_packet  # seconds of CPU per second
            print(
                f"  {name:<26} {label:<11} {packets / elapsed:>9,.0f}"
                f"   {elapsed / t_base:>9.1f}x   {per_packet * 1e6:>9.2f}"
                f"   {core_share:>9.1%}"
            )
    print(
        "x baseline = run time / build_rtp-only run time; us/packet = protect + unprotect of one"
        f" packet;\n1000 calls = share of one core for {CALLS} calls x {PACKETS_PER_S} packets/s"
        " each way"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer packets and repeats")
    args = parser.parse_args()
    print("$ .venv/bin/python " + shlex.join(["bench/bench_srtp.py", *sys.argv[1:]]))
    if args.quick:
        bench(packets=5_000, repeats=3)
    else:
        bench(packets=20_000, repeats=7)


if __name__ == "__main__":
    main()
