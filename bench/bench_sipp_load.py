"""Benchmark: whole payment calls under SIPp load, through Kamailio, to spg-media nodes.

Run (root, for SIPp's pcap play):
    .venv/bin/python bench/bench_sipp_load.py [--calls 100] [--rate 4] [--nodes 1]

What an operator load-testing with SIPp does: SIPp places `--calls` calls at `--rate` calls/s
through Kamailio (kamailio/kamailio.cfg as shipped, dispatcher over `--nodes` `spg-media serve`
processes); each call is the whole journey — the announcement, the card, expiry and code keyed as
RFC 4733 events (SIPp's pcaps), the sandbox authorisation, the spoken result and reference, and
the REFER back with `X-SPG-Result: approved` checked by SIPp.

Prints the calls that succeeded (SIPp's verdict and the nodes' CDRs), the peak of concurrent
calls, the call duration, and the CPU time each party used (from /proc, whole process groups).
The baseline, measured in the same run on the same calls, is SIPp itself: the C++ tool on the
other end of every call (signalling, its RTP events, its checks). "spg / SIPp" is how many
times SIPp's CPU per call the node spends (it also paces 50 RTP packets/s of prompt audio and
runs the journey); "concurrent calls per core" is the call duration over the node's CPU per
call, what one core would carry of this traffic if nothing else ran on it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from harness import (
    HOST,
    KAMAILIO,
    SIPP,
    KamailioProxy,
    SpgNode,
    free_port,
    make_pay_scenario,
    stop_process,
)

CARD, EXPIRY, CVC = "4111111111111111", "1230", "123"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process in process group `pgid` (children reaped by
    their parent are added to its cutime/cstime, so they count too)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state ppid pgrp ... utime(12) stime(13) cutime(14) cstime(15)
        if int(fields[2]) == pgid:
            total += sum(int(f) for f in fields[11:15])
    return total / CLOCK_TICKS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--rate", type=float, default=4.0, help="new calls per second")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, help="SIPp -l (0: no limit)")
    args = parser.parse_args()
    if SIPP is None or KAMAILIO is None:
        print("needs sipp (Debian sip-tester) and kamailio", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("needs root: SIPp's play_pcap_audio sends from a raw socket", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="spg-load-"))
    run = uuid.uuid4().hex[:6]
    # the agent the caller goes back to (nobody answers there: the REFER's result is the point)
    node_env = {"SPG_LOG__LEVEL": "info", "SPG_IVR__RETURN_URI": f"sip:agent@{HOST}:5999"}
    nodes = [SpgNode(work / f"node{i}", env=node_env) for i in range(args.nodes)]
    for node in nodes:
        node.start()
    proxy = KamailioProxy(work / "kamailio", [f"sip:{HOST}:{n.sip_port}" for n in nodes])
    proxy.start()
    scenario = make_pay_scenario(
        [CARD + "#", EXPIRY, CVC],
        work / "pay.xml",
        headers={"X-SPG-Transaction": f"sbx-4990-EUR-load{run}-[call_number]"},
        result_timeout_ms=90_000,
    )
    stats_file = work / "sipp-stats.csv"
    sipp_args = [
        str(SIPP), f"{HOST}:{proxy.port}",
        "-sf", str(scenario),
        "-m", str(args.calls),
        "-r", str(args.rate),
        "-t", "u1",
        "-i", HOST, "-mi", HOST,
        "-p", str(free_port()), "-mp", str(free_port()),
        "-nostdin",
        "-timeout", f"{int(args.calls / args.rate + 150)}s",
        "-max_recv_loops", "10000",
        # Kamailio's workers may pass the node's BYE before its 200 to SIPp's NOTIFY; that 200
        # then arrives in SIPp's final timewait: logged, not a failed call
        "-default_behaviors", "all,-abortunexp",
        "-trace_stat", "-stf", str(stats_file), "-fd", "1",
        "-trace_err", "-error_file", str(work / "sipp-errors.log"),
    ]  # fmt: skip
    if args.limit:
        sipp_args += ["-l", str(args.limit)]
    before = {
        "spg": sum(group_cpu_seconds(n.proc.pid) for n in nodes if n.proc),
        "kamailio": group_cpu_seconds(proxy.proc.pid) if proxy.proc else 0.0,
    }
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    children_before = usage.ru_utime + usage.ru_stime
    started = time.monotonic()
    sipp = subprocess.Popen(
        sipp_args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=work,
        start_new_session=True,
    )
    try:
        sipp.wait(args.calls / args.rate + 200)
    finally:
        if sipp.poll() is None:
            stop_process(sipp)
    # SIPp is the only child this script has reaped: its exact CPU time
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    sipp_cpu = usage.ru_utime + usage.ru_stime - children_before
    wall = time.monotonic() - started
    after = {
        "spg": sum(group_cpu_seconds(n.proc.pid) for n in nodes if n.proc),
        "kamailio": group_cpu_seconds(proxy.proc.pid) if proxy.proc else 0.0,
    }
    stderr = sipp.stderr.read().decode(errors="replace") if sipp.stderr else ""
    time.sleep(1.0)  # the last CDR lines
    cdrs = [json.loads(line) for n in nodes for line in n.cdr_lines()]
    proxy.stop()
    for node in nodes:
        node.stop()

    rows = list(csv.DictReader(stats_file.open(), delimiter=";")) if stats_file.exists() else []
    last = rows[-1] if rows else {}
    ok = int(last.get("SuccessfulCall(C)", 0) or 0)
    failed = int(last.get("FailedCall(C)", 0) or 0)
    peak = max((int(r.get("CurrentCall", 0) or 0) for r in rows), default=0)
    durations = [r["durations"]["ivr"] for r in cdrs if "ivr" in r.get("durations", {})]
    approved = sum(1 for r in cdrs if r.get("result") == "approved")
    spg_cpu = after["spg"] - before["spg"]
    kam_cpu = after["kamailio"] - before["kamailio"]
    per_call = {name: cpu / max(ok, 1) * 1000 for name, cpu in
                (("spg", spg_cpu), ("sipp", sipp_cpu), ("kamailio", kam_cpu))}  # fmt: skip
    median_s = statistics.median(durations) if durations else 0.0

    print(f"$ {shlex.join(sys.argv)}")
    print(f"{args.calls} calls at {args.rate}/s through Kamailio to {args.nodes} node(s), "
          f"{wall:.0f} s wall")  # fmt: skip
    print(f"SIPp: {ok} succeeded, {failed} failed; CDRs: {approved} approved of {len(cdrs)}")
    print(f"peak concurrent calls {peak}; call duration (node) median {median_s:.1f} s")
    print(f"CPU seconds: spg-media {spg_cpu:.1f}, SIPp {sipp_cpu:.1f}, Kamailio {kam_cpu:.1f}")
    print(
        f"CPU per call: spg-media {per_call['spg']:.0f} ms, SIPp {per_call['sipp']:.0f} ms, "
        f"Kamailio {per_call['kamailio']:.0f} ms"
    )
    if per_call["sipp"]:
        print(f"spg / SIPp per call: {per_call['spg'] / per_call['sipp']:.1f}x")
    if per_call["spg"]:
        print(f"concurrent payment calls per core (node): {median_s * 1000 / per_call['spg']:.0f}")
    if failed or ok < args.calls:
        print(f"SIPp stderr tail: {stderr[-500:]}")
        print(f"work files kept in {work}")
    return 0 if ok == args.calls else 1


if __name__ == "__main__":
    sys.exit(main())
