"""What batching the system calls would save a node per RTP packet: one socket per call against
one socket for all calls, read and written with `recvmmsg`/`sendmmsg` (through ctypes, as
Python's socket module has neither).

Run:  .venv/bin/python bench/bench_udp_batching.py [--calls 500] [--seconds 5] [--rounds 3]

A peer process (the callers) has one UDP socket per call and every 20 ms sends each call one
172-byte RTP-sized datagram and drains what came back. The node side, in this process, does only
the system-call part of a media tick, in one of three ways, each for --seconds after a second of
warm-up, the modes alternated over --rounds:

* `per-call`: the node as it is: a socket per call (SO_TIMESTAMPNS on), one `recvmsg` each per
  tick, one `sendto` each back to its caller;
* `shared`: one socket for every call, the same calls: `recvmsg` until it would block, one
  `sendto` a call (the shared socket alone, without batching);
* `shared-mmsg`: one socket, `recvmmsg` of up to 64 datagrams a call (their arrival stamps,
  payloads and source addresses taken out of the ctypes buffers), `sendmmsg` of every call's
  datagram in one call (spg_media/rtp/mmsg.py, as the shared media port would use them).

Printed: node CPU (user and system, this process) per packet pair (one in, one out), datagrams
received and sent a second (did it keep up), and the ratio to `per-call` measured in the same
run. The peer's CPU is not counted; on loopback the kernel's delivery of what the node sends is
the node's. Linux only. No SIP, no RTP parsing, no detector: the other costs of a packet stay.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spg_media.rtp import mmsg

HOST = "127.0.0.1"
TICK = 0.02
PAYLOAD = 172  # 12-byte RTP header + 160 bytes of G.711
BATCH = 64  # datagrams a recvmmsg call
SLOT = 2048  # bytes of buffer a received datagram
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)


# ---- the callers ------------------------------------------------------------------------------


def peer(calls: int, ready: Any, stop: Any, ports: Any) -> None:
    """One socket a call: a datagram to its target every 20 ms; what comes back is drained.
    Its ports go to the node over the pipe `ports`, the node's targets come back on it."""
    socks = []
    for _ in range(calls):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        sock.setblocking(False)
        socks.append(sock)
    ports.send([s.getsockname()[1] for s in socks])
    targets = ports.recv()
    ready.set()
    payload = bytes(PAYLOAD)
    poller = select.epoll()
    for sock in socks:
        poller.register(sock.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): s for s in socks}
    next_tick = time.monotonic()
    while not stop.is_set():
        for sock, target in zip(socks, targets, strict=True):
            with contextlib.suppress(OSError):
                sock.sendto(payload, target)
        next_tick += TICK
        while True:
            wait = next_tick - time.monotonic()
            if wait <= 0:
                break
            for fd, _ in poller.poll(wait):
                try:
                    while True:
                        by_fd[fd].recv(SLOT)
                except OSError:
                    pass


# ---- the node's side --------------------------------------------------------------------------


def node_sockets(count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        socks.append(sock)
    return socks


def run_mode(mode: str, calls: int, seconds: float) -> dict[str, float]:
    shared = mode != "per-call"
    socks = node_sockets(1 if shared else calls)
    targets = [socks[0].getsockname()] * calls if shared else [s.getsockname() for s in socks]
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    here, there = ctx.Pipe()
    proc = ctx.Process(target=peer, args=(calls, ready, stop, there), daemon=True)
    proc.start()
    peer_ports = here.recv()
    here.send(targets)
    ready.wait(30)
    destinations = [(HOST, port) for port in peer_ports]
    payload = bytes(PAYLOAD)
    stamps: list[tuple[int, int] | None] = []  # the arrival stamps, taken out as a node would
    tick: Callable[[], tuple[int, int]]

    if mode == "per-call":
        readers = [s.recvmsg for s in socks]
        senders = [(s.sendto, d) for s, d in zip(socks, destinations, strict=True)]

        def tick() -> tuple[int, int]:
            got = 0
            for recvmsg in readers:
                try:
                    _data, ancillary, _flags, _source = recvmsg(SLOT, _ANCILLARY)
                except BlockingIOError:
                    continue
                stamps.append(_TIMESPEC.unpack_from(ancillary[0][2]) if ancillary else None)
                got += 1
            stamps.clear()
            for sendto, destination in senders:
                sendto(payload, destination)
            return got, len(senders)

    elif mode == "shared":
        recvmsg, sendto = socks[0].recvmsg, socks[0].sendto
        callers = {d: i for i, d in enumerate(destinations)}

        def tick() -> tuple[int, int]:
            got = 0
            while True:
                try:
                    _data, ancillary, _flags, source = recvmsg(SLOT, _ANCILLARY)
                except BlockingIOError:
                    break
                callers.get(source)  # the demultiplexing a shared socket needs
                stamps.append(_TIMESPEC.unpack_from(ancillary[0][2]) if ancillary else None)
                got += 1
            stamps.clear()
            for destination in destinations:
                sendto(payload, destination)
            return got, len(destinations)

    else:
        receiver = mmsg.BatchReceiver(socks[0], batch=BATCH, slot=SLOT)
        sender = mmsg.BatchSender(socks[0], capacity=calls, slot=SLOT)
        raw = [mmsg.sockaddr(d) for d in destinations]
        messages = [(payload, to) for to in raw]

        keys = {to: i for i, to in enumerate(raw)}

        def tick() -> tuple[int, int]:
            got = receiver.receive()
            for _payload, source, _stamp in got:
                keys.get(source)  # the demultiplexing a shared socket needs
            return len(got), sender.send(messages)

    def loop(duration: float) -> tuple[int, int]:
        got = out = 0
        next_tick = time.monotonic()
        end = next_tick + duration
        while next_tick < end:
            a, b = tick()
            got, out = got + a, out + b
            next_tick += TICK
            wait = next_tick - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        return got, out

    loop(1.0)  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    received, sent = loop(seconds)
    after = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.monotonic() - started
    stop.set()
    proc.join(5)
    for s in socks:
        s.close()
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    pairs = max(min(received, sent), 1)
    return {
        "us_per_pair": (user + system) / pairs * 1e6,
        "user_us": user / pairs * 1e6,
        "system_us": system / pairs * 1e6,
        "in_per_s": received / wall,
        "out_per_s": sent / wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        print("Linux only (recvmmsg, sendmmsg, SO_TIMESTAMPNS)", file=sys.stderr)
        return 2
    modes = ("per-call", "shared", "shared-mmsg")
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            results[mode].append(run_mode(mode, args.calls, args.seconds))
    expected = args.calls / TICK
    print(
        f"{args.calls} calls, one datagram each way every 20 ms ({expected:,.0f}/s each way), "
        f"{args.seconds:g} s a run, best of {args.rounds}; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print("| node side | CPU µs a packet pair | user / system µs | in / out a s | vs per-call |")
    print("|---|---|---|---|---|")
    best = {mode: min(runs, key=lambda r: r["us_per_pair"]) for mode, runs in results.items()}
    base = best["per-call"]["us_per_pair"]
    for mode in modes:
        r = best[mode]
        print(
            f"| {mode} | {r['us_per_pair']:.2f} | {r['user_us']:.2f} / {r['system_us']:.2f} | "
            f"{r['in_per_s']:,.0f} / {r['out_per_s']:,.0f} | {r['us_per_pair'] / base:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
