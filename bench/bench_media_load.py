"""Benchmark: node CPU per RTP packet under many full-duplex calls, against a baseline tree.

Run:  .venv/bin/python bench/bench_media_load.py [--sessions 500] [--seconds 10] [--rounds 2]
          [--baseline-ref main | --baseline-tree PATH] [--no-inband] [--dtmf] [--bridged]
          [--profile FILE] [--shared-port]

Drives N `MediaSession`s through the real `MediaEngine` (uvloop, loopback sockets, the 20 ms
tick) in a node process, while a generator process plays N callers: 50 packets/s each of
G.711 noise (PCMU, random bytes: in-band screening of loud noise on every channel unless
--no-inband), their phases spread over the 20 ms, reading and discarding the node's packets.
With --dtmf each caller also keys an RFC 4733 press every ~2 s (5 event packets and 3 end
packets, audio paused meanwhile); the delay from the press's first packet leaving the
generator to the session's `on_dtmf` start is reported (both sides read CLOCK_MONOTONIC).

With --bridged, the node bridges its sessions in pairs (`MediaEngine.bridge`, agent-assisted
mode: the first of a pair the customer, with in-band detection, the second the agent; each
direction masked, or only the customer's in a tree before the agent's was) and the calls per
core are bridged calls (two sessions, 200 packets/s); a baseline tree without
`MediaEngine.bridge` runs the same sessions unbridged (each with in-band detection).

With --shared-port, this tree's sessions share one port pair (`MediaEngine.open_shared`, the
calls from a relay: `rtp.shared_port = "relays"`), read with `recvmmsg` and written with
`sendmmsg`; the baseline's have a port each (give `--baseline-tree .` to compare the two in one
tree), or theirs too with `--baseline-shared-port` (two shared-port trees compared). Each
caller then sends from a port of its own (both sides: the same callers), which the
shared port keys it by, and the node's packets to it are left unread (a small receive buffer).

The node's CPU (user + system, getrusage, also printed apart: the kernel's share is the system
calls and the UDP path) over --seconds after a warm-up is divided by the packets it received and
sent (the best of the rounds in which it kept up: sent its 50 packets/s a session). The same
run measures the baseline: the same node code imported from another tree (`--baseline-ref`: a
temporary `git worktree` of that ref, removed at the end; or `--baseline-tree`), alternating
rounds, so both see the same machine. Prints µs per
packet (in + out averaged), the ratio, and what that means in calls per core at 50+50 pps.
The machine is shared: compare the ratio, not the absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_tree import baseline_tree

HERE = Path(__file__).resolve().parents[1]
DTMF_PT = 101
PRESS_EVERY_S = 2.0


# ---- the node ---------------------------------------------------------------------------------


def node(args: argparse.Namespace) -> None:
    """Runs in the child: the engine of `args.tree`, N sessions, CPU measured over a window."""
    sys.path.insert(0, str(Path(args.tree).resolve()))
    import asyncio

    import uvloop

    from spg_media.rtp.session import MediaEngine, MediaSession

    delivered: list[list[float]] = [[] for _ in range(args.sessions)]

    async def main() -> dict[str, Any]:
        base = random.randrange(20000, 50000, 2)
        engine = MediaEngine("127.0.0.1", base, base + 6 * args.sessions)
        ports = []
        for index in range(args.sessions):
            caller = ("127.0.0.1", args.caller_base + index if args.caller_base else 9)
            shared = engine.open_shared(caller, None) if args.shared_port else None
            port = shared if shared is not None else await engine.open()

            def on_dtmf(event: Any, index: int = index) -> None:
                if event.kind == "start":
                    delivered[index].append(time.monotonic())

            engine.attach(
                port,
                MediaSession(
                    codec="PCMU",
                    remote=caller,  # the caller's c= address (and port: the shared port's key)
                    dtmf_payload_type=DTMF_PT,
                    on_dtmf=on_dtmf,
                    inband=args.inband,
                ),
            )
            ports.append(port)
        if args.bridged and hasattr(engine, "bridge"):  # the baseline tree may have none
            for customer, agent in zip(ports[::2], ports[1::2], strict=False):
                engine.bridge(customer, agent, "tone")
        local = getattr(engine, "local_port", lambda port: port)
        print(json.dumps({"ports": [local(port) for port in ports]}), flush=True)
        await asyncio.sleep(args.warmup)
        sessions = list(engine.sessions.values())
        received0 = sum(s.stats.received for s in sessions)
        sent0 = sum(s.stats.sent for s in sessions)
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        wall0 = time.monotonic()
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        await asyncio.sleep(args.seconds)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        wall1 = time.monotonic()
        received = sum(s.stats.received for s in sessions) - received0
        sent = sum(s.stats.sent for s in sessions) - sent0
        user = usage1.ru_utime - usage0.ru_utime
        system = usage1.ru_stime - usage0.ru_stime
        cpu = user + system
        result = {
            "cpu": cpu,
            "user": user,
            "system": system,
            "wall": wall1 - wall0,
            "received": received,
            "sent": sent,
            "dropped": sum(s.stats.dropped_foreign for s in sessions),
            "send_errors": getattr(engine, "send_errors", 0),
            "window": [wall0, wall1],
            "delivered": delivered,
        }
        await engine.aclose()
        return result

    result = uvloop.run(main())
    print(json.dumps(result), flush=True)


# ---- the callers ------------------------------------------------------------------------------


def generator(args: argparse.Namespace) -> None:
    """Runs in the child: N callers at 50 packets/s each, for --duration seconds."""
    ports = json.loads(args.ports)
    rng = random.Random(7)
    socks = []
    # a socket a caller (at the port the node was told) with --shared-port, else 8 in all
    own = bool(args.caller_base)
    for index in range(len(ports) if own else 8):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", args.caller_base + index if own else 0))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096 if own else 1 << 21)
        socks.append(sock)
    noise = [bytes(rng.getrandbits(8) for _ in range(160)) for _ in range(64)]
    callers: list[dict[str, Any]] = []
    for index, port in enumerate(ports):
        callers.append(
            {
                "dest": ("127.0.0.1", port),
                "sock": socks[index % len(socks)],
                "seq": rng.getrandbits(16),
                "ts": rng.getrandbits(32),
                "ssrc": rng.getrandbits(32),
                "next_press": rng.uniform(0.5, 0.5 + PRESS_EVERY_S),
                "press": None,  # packets of the press in progress
            }
        )
    header = struct.Struct("!BBHII")
    groups = 4  # phases spread over the 20 ms
    start = time.monotonic()
    sent_presses: list[list[float]] = [[] for _ in ports]
    step = 0
    while True:
        due = start + step * 0.02 / groups
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elapsed = time.monotonic() - start
        if elapsed > args.duration:
            break
        group = step % groups
        for index in range(group, len(callers), groups):
            caller = callers[index]
            seq = caller["seq"] = (caller["seq"] + 1) & 0xFFFF
            if args.dtmf and caller["press"] is None and elapsed >= caller["next_press"]:
                caller["next_press"] += PRESS_EVERY_S
                event = rng.randrange(10)
                caller["press"] = [(event, 0x0A, 160 * (n + 1), n == 0) for n in range(5)] + [
                    (event, 0x8A, 800, False)
                ] * 3
                caller["press_ts"] = caller["ts"]
                sent_presses[index].append(time.monotonic())
            press = caller["press"]
            if press:
                event, flags, duration, marker = press.pop(0)
                payload = struct.pack("!BBH", event, flags, duration)
                packet = header.pack(0x80, DTMF_PT | (0x80 if marker else 0), seq,
                                     caller["press_ts"], caller["ssrc"]) + payload  # fmt: skip
                if not press:
                    caller["press"] = None
            else:
                packet = header.pack(0x80, 0, seq, caller["ts"], caller["ssrc"]) + noise[seq & 63]
            caller["ts"] = (caller["ts"] + 160) & 0xFFFFFFFF
            with contextlib.suppress(OSError):
                caller["sock"].sendto(packet, caller["dest"])
        for sock in () if own else socks:  # the node's packets: read and dropped
            try:
                while True:
                    sock.recv(2048)
            except OSError:
                pass
        step += 1
    print(json.dumps({"presses": sent_presses}), flush=True)


# ---- the parent -------------------------------------------------------------------------------


def measure(
    tree: Path, args: argparse.Namespace, profile: str | None, ours: bool
) -> dict[str, Any]:
    script = str(Path(__file__).resolve())
    node_cmd = [sys.executable, script, "--node", "--tree", str(tree),
                "--sessions", str(args.sessions), "--seconds", str(args.seconds),
                "--warmup", str(args.warmup)]  # fmt: skip
    if not args.inband:
        node_cmd.append("--no-inband")
    if args.bridged:
        node_cmd.append("--bridged")
    if profile:
        node_cmd += ["--profile", profile]
    caller_base = 0
    if args.shared_port:  # the callers at ports of their own, below the node's range
        caller_base = random.randrange(10000, 19000 - args.sessions)
        node_cmd += ["--caller-base", str(caller_base)]
        if ours or args.baseline_shared_port:
            node_cmd.append("--shared-port")
    proc = subprocess.Popen(node_cmd, stdout=subprocess.PIPE, text=True)
    gen = None
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())["ports"]
        gen_cmd = [sys.executable, script, "--generator", "--ports", json.dumps(ports),
                   "--duration", str(args.warmup + args.seconds + 1),
                   "--caller-base", str(caller_base)]  # fmt: skip
        if args.dtmf:
            gen_cmd.append("--dtmf")
        gen = subprocess.Popen(gen_cmd, stdout=subprocess.PIPE, text=True)
        result: dict[str, Any] = json.loads(proc.stdout.readline())
        if result.get("send_errors") or result.get("dropped"):
            print(f"note: {result['send_errors']} send errors, {result['dropped']} dropped")
        out, _ = gen.communicate(timeout=args.warmup + args.seconds + 60)
        result["presses"] = json.loads(out)["presses"]
        proc.wait(timeout=30)
        return result
    finally:
        for child in (gen, proc):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()


def latencies(result: dict[str, Any]) -> list[float]:
    """Press to on_dtmf, ms, for presses sent inside the measured window (k-th to k-th)."""
    lo, hi = result["window"]
    found = []
    for sent, got in zip(result["presses"], result["delivered"], strict=True):
        for at, delivered in zip(sent, got, strict=False):
            if lo <= at <= hi - 0.1:
                found.append((delivered - at) * 1000)
    return sorted(found)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def kept_up(run: dict[str, Any], sessions: int) -> bool:
    """Did the node send (nearly) all its 50 packets/s a session? A starved node (a loaded
    machine) sends fewer, which makes its CPU per packet look better than it is."""
    return bool(run["sent"] >= 0.97 * 50 * sessions * run["wall"])


def summary(
    name: str, runs: list[dict[str, Any]], sessions: int, bridged: bool = False
) -> tuple[float, str]:
    fair = [r for r in runs if kept_up(r, sessions)] or runs
    best = min(fair, key=lambda r: r["cpu"] / (r["received"] + r["sent"]))
    packets = best["received"] + best["sent"]
    per_packet = best["cpu"] / packets * 1e6
    # user / system split (a baseline run recorded before the split was measured has neither)
    split = (
        f"{best['user'] / packets * 1e6:.2f} / {best['system'] / packets * 1e6:.2f}"
        if "user" in best
        else "—"
    )
    calls = 1e6 / (100 * per_packet) / (2 if bridged else 1)
    lat = latencies(best)
    line = (
        f"| {name} | {per_packet:.2f} | {split} | {best['cpu'] / best['wall'] * 100:.0f} % | "
        f"{best['received'] / best['wall']:,.0f} / {best['sent'] / best['wall']:,.0f} | "
        f"{calls:,.0f} | {sum(kept_up(r, sessions) for r in runs)} of {len(runs)} |"
    )
    if lat:
        p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        line += f" {p50:.1f} / {p99:.1f} / {lat[-1]:.1f} ({len(lat)}) |"
    return per_packet, line


def parent(args: argparse.Namespace) -> None:
    with baseline_tree(HERE, args.baseline_ref, args.baseline_tree) as baseline:
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "this tree": []}
        for round_ in range(args.rounds):
            for name, tree in (("baseline", baseline), ("this tree", HERE)):
                profile = None
                if args.profile and round_ == 0:
                    profile = f"{args.profile}.{'baseline' if name == 'baseline' else 'new'}"
                runs[name].append(measure(tree, args, profile, name == "this tree"))
        print(
            f"{args.sessions} full-duplex sessions, 50 + 50 packets/s each, "
            f"in-band {'on' if args.inband else 'off'}, "
            f"{'bridged in pairs, masking, ' if args.bridged else ''}"
            f"{'this tree on one shared port, ' if args.shared_port else ''}"
            f"{args.seconds:g} s measured after "
            f"{args.warmup:g} s, best of {args.rounds}; baseline: "
            f"{args.baseline_tree or args.baseline_ref}"
        )
        head = (
            "| node | CPU µs per packet | of which user / system µs | node CPU "
            "| packets/s in / out | "
            + ("bridged calls (2 sessions) per core" if args.bridged else "calls per core")
            + " | runs that kept up |"
        )
        if args.dtmf:
            head += " RFC 4733 press → on_dtmf ms p50 / p99 / max (presses) |"
        print(head)
        print("|---" * (head.count("|") - 1) + "|")
        base, base_line = summary("baseline", runs["baseline"], args.sessions, args.bridged)
        ours, our_line = summary("this tree", runs["this tree"], args.sessions, args.bridged)
        print(base_line)
        print(our_line)
        print(f"CPU per packet: {ours / base:.2f}x the baseline's ({base / ours:.2f}x cheaper)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline-ref", default="main")
    parser.add_argument("--baseline-tree")
    parser.add_argument("--no-inband", dest="inband", action="store_false")
    parser.add_argument("--dtmf", action="store_true", help="RFC 4733 presses, latency reported")
    parser.add_argument(
        "--bridged",
        action="store_true",
        help="this tree bridges the sessions in pairs (agent-assisted mode, masking on)",
    )
    parser.add_argument("--profile", help="cProfile each's first round: FILE.{baseline,new}")
    parser.add_argument(
        "--shared-port",
        action="store_true",
        help="this tree's sessions on one shared port; each caller on a port of its own",
    )
    parser.add_argument(
        "--baseline-shared-port",
        action="store_true",
        help="with --shared-port: the baseline's sessions on its shared port too",
    )
    parser.add_argument("--caller-base", type=int, default=0, help=argparse.SUPPRESS)
    # the children
    parser.add_argument("--node", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node:
        node(args)
    elif args.generator:
        generator(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
