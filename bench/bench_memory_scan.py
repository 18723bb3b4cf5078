"""Benchmark: what card data a node's memory holds after many payments.

Run (root: SIPp's pcap play, and reading a process that is not dumpable):
    .venv/bin/python bench/bench_memory_scan.py [--calls 1000] [--rate 10] [--limit 250]

An attacker who gets root on a node (or a core dump, or its swap) reads its memory. This runs
`--calls` whole payment calls (SIPp callers keying the card, expiry and security code as RFC
4733 events) into one `spg-media serve` whose connector is `http`, talking to a separate
`spg-media sandbox` process, as in production; four cards, one per SIPp process, so a find
says which calls it comes from. When every call has ended, it reads the node's whole memory
(every readable mapping of /proc/PID/maps through /proc/PID/mem) and counts complete card
numbers and security codes next to an expiry (as keyed, and as the payment request's JSON).

The baseline, in the same run, is the sandbox process: the platform end of the same requests,
which parses every card and keeps what Python leaves of it. The target for the node is 0 and 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from harness import (
    HOST,
    SIPP,
    SandboxProcess,
    SippLoadResult,
    SpgNode,
    make_pay_scenario,
    run_sipp_load,
)
from memscan import KnownCard, scan_process

# Sandbox cards that approve; each SIPp process keys one of them in all its calls.
CARDS = [
    KnownCard("4111111111111111", "1230", "123"),
    KnownCard("5555555555554444", "0631", "456"),
    KnownCard("378282246310005", "0929", "7890"),  # American Express: a four-digit code
    KnownCard("6011000990139424", "1133", "321"),
]


def run_calls(
    node: SpgNode, calls: int, rate: float, limit: int, work: Path
) -> list[SippLoadResult]:
    """`calls` payment calls into `node`, split over the cards, one SIPp process per card."""
    run = uuid.uuid4().hex[:6]
    results: list[SippLoadResult] = []
    threads = []
    share = [calls // len(CARDS) + (1 if i < calls % len(CARDS) else 0) for i in range(len(CARDS))]
    for index, (card, count) in enumerate(zip(CARDS, share, strict=True)):
        if not count:
            continue
        scenario = make_pay_scenario(
            [card.number + "#", card.expiry, card.cvc],
            work / f"pay{index}.xml",
            headers={"X-SPG-Transaction": f"sbx-4990-EUR-mem{run}c{index}-[call_number]"},
            result_timeout_ms=120_000,
        )

        def one(scenario: Path = scenario, count: int = count) -> None:
            results.append(
                run_sipp_load(
                    scenario,
                    f"{HOST}:{node.sip_port}",
                    count,
                    rate / len(CARDS),
                    workdir=work / "sipp",
                    limit=max(1, limit // len(CARDS)),
                    timeout_s=count / (rate / len(CARDS)) + 300,
                )
            )

        thread = threading.Thread(target=one)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0, help="new calls per second")
    parser.add_argument("--limit", type=int, default=250, help="calls at once at most")
    args = parser.parse_args()
    if SIPP is None:
        print("needs sipp (Debian sip-tester)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("needs root: SIPp's pcap play and reading the node's memory", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="spg-memscan-"))
    started = time.monotonic()
    with SandboxProcess(work / "sandbox") as sandbox:
        env = {
            **sandbox.node_env(),
            "SPG_LOG__LEVEL": "info",
            "SPG_IVR__RETURN_URI": f"sip:agent@{HOST}:5999",
        }
        with SpgNode(work / "node", env=env) as node:
            results = run_calls(node, args.calls, args.rate, args.limit, work)
            time.sleep(2.0)  # the last BYEs and CDR lines
            assert node.proc is not None and sandbox.proc is not None
            node_report = scan_process(node.proc.pid, CARDS)
            sandbox_report = scan_process(sandbox.proc.pid, CARDS)
            cdrs = [json.loads(line) for line in node.cdr_lines()]
    approved = sum(1 for r in cdrs if r.get("result") == "approved")
    print(f"$ {shlex.join(sys.argv)}")
    print(
        f"{args.calls} calls at {args.rate}/s (at most {args.limit} at once), "
        f"{time.monotonic() - started:.0f} s: SIPp {sum(r.succeeded for r in results)} "
        f"succeeded, {sum(r.failed for r in results)} failed; CDRs: {approved} approved "
        f"of {len(cdrs)}"
    )
    print(f"node    (spg-media serve, http connector): {node_report.summary()}")
    print(f"sandbox (the platform, baseline):          {sandbox_report.summary()}")
    for card in CARDS:
        print(
            f"  card {card.masked}: node {node_report.numbers[card.masked]} numbers, "
            f"{node_report.codes_near_expiry[card.masked]} codes; sandbox "
            f"{sandbox_report.numbers[card.masked]} numbers, "
            f"{sandbox_report.codes_near_expiry[card.masked]} codes"
        )
    clean = node_report.total_numbers == 0 and node_report.total_codes == 0
    verdict = "met" if clean else "NOT met"
    print(f"target (0 numbers, 0 codes next to an expiry in the node): {verdict}")
    return 0 if clean and approved == args.calls else 1


if __name__ == "__main__":
    sys.exit(main())
