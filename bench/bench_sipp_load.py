"""Benchmark: whole full-duplex payment calls under SIPp load against spg-media nodes.

Run (root, for SIPp's pcap play; `--media inband` needs no root):
    .venv/bin/python bench/bench_sipp_load.py [--media rfc4733|inband|mixed|silent]
        [--calls 100] [--rate 4] [--nodes 1] [--direct] [--limit N] [--pin]
        [--node-env SPG_SECTION__KEY=VALUE ...] [--relay] [--json FILE]

What an operator load-testing with SIPp does: SIPp places `--calls` calls at `--rate` calls/s,
through Kamailio (kamailio/kamailio.cfg as shipped, dispatcher over `--nodes` `spg-media serve`
processes) or with `--direct` straight to one node. Each call is the whole journey: the
announcement, the card 4111111111111111 '#', an expiry two years ahead and the code keyed by a
caller who waits for each prompt to end, the sandbox authorisation, the spoken result and
reference, and the REFER back with `X-SPG-Result: approved` checked by SIPp. Like a real phone,
the caller sends audio (20 ms PCMA packets) for the whole call, not only its keys:

- `rfc4733`: line noise streamed by SIPp, the keys as RFC 4733 events (SIPp's pcaps);
- `inband`: line noise with the keys as DTMF tones in it, no telephone-event offered;
- `mixed`: half the calls of each (two SIPp processes);
- `silent`: the RFC 4733 pcaps alone (the old caller, silent between its keys).

Before the load, one unloaded call of each kind runs alone: the baseline of the same run.
Prints: the calls approved or failed (SIPp's verdict and the nodes' CDRs by result), the peak
of concurrent calls (the nodes' calls in progress by `/healthz`, every 0.5 s), the CPU per call of
each party (from /proc, whole process groups) and "concurrent calls per node core" (the
journey's median over the node's CPU per call: what one core would carry of this traffic if
nothing else ran on it), the journey's median and p95 against the unloaded call, the digit
latency p50/p95/p99 per source from the nodes' `spg_dtmf_latency_seconds` histogram (bucket
deltas over the load; "n/a" where a node does not export it), and the nodes' RSS per active
call ((RSS at the peak of calls - idle RSS) / peak calls). `--json FILE` writes all of it.

`--relay` puts rtpengine (userspace forwarding) in the media path, driven by Kamailio's `-A
WITH_RTPENGINE`: the nodes then take each call's media from rtpengine's address, one port a call,
as behind a production relay (what `rtp.shared_port = "relays"` needs; rtpengine's CPU is
reported apart).

The nodes run with the shipped admission limits; `--node-env` sets any of their settings
(`SPG_ADMISSION__MAX_TICK_BUSY=0.8`). `--pin` gives the nodes the last CPU and everything else
(SIPp, Kamailio, this script) the others: "per node core" then means a core of its own, its
threads (the journal's writes, the payment client's) included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadkit import MEDIA_MODES, LoadSpec, check_spec, command_line, report_text, run_load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--media", choices=MEDIA_MODES, default="rfc4733")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--rate", type=float, default=4.0, help="new calls per second")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument(
        "--workers", type=int, default=1, help="serve --workers of each node (through Kamailio)"
    )
    parser.add_argument("--direct", action="store_true", help="SIPp calls the node, no Kamailio")
    parser.add_argument("--limit", type=int, default=0, help="SIPp -l: calls at once (0: no limit)")
    parser.add_argument(
        "--think-s",
        type=float,
        default=0.8,
        help="the caller's pause between a prompt's end and its first key",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the nodes on the last CPU, SIPp, Kamailio and this kit on the others",
    )
    parser.add_argument(
        "--relay",
        action="store_true",
        help="the calls' media through rtpengine (Kamailio -A WITH_RTPENGINE), as behind a relay",
    )
    parser.add_argument(
        "--node-env",
        action="append",
        default=[],
        metavar="SPG_SECTION__KEY=VALUE",
        help="a setting of the nodes (repeatable), e.g. SPG_ADMISSION__MAX_TICK_BUSY=0.8",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    node_env: dict[str, str] = {}
    for item in args.node_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("SPG_"):
            print(
                f"bench_sipp_load: --node-env {item!r}: expected SPG_SECTION__KEY=VALUE",
                file=sys.stderr,
            )
            return 2
        node_env[key] = value
    spec = LoadSpec(
        media=args.media,
        calls=args.calls,
        rate=args.rate,
        nodes=args.nodes,
        workers=args.workers,
        direct=args.direct,
        limit=args.limit,
        think_s=args.think_s,
        pin=args.pin,
        relay=args.relay,
        node_env=node_env,
    )
    problem = check_spec(spec)
    if problem:
        print(f"bench_sipp_load: {problem}", file=sys.stderr)
        return 2
    result = run_load(spec)
    result["command"] = command_line()
    print(result["command"])
    print(report_text(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
