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
  datagram in one call.

Printed: node CPU (user and system, this process) per packet pair (one in, one out), datagrams
received and sent a second (did it keep up), and the ratio to `per-call` measured in the same
run. The peer's CPU is not counted; on loopback the kernel's delivery of what the node sends is
the node's. Linux only. No SIP, no RTP parsing, no detector: the other costs of a packet stay.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import multiprocessing
import os
import resource
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"
TICK = 0.02
PAYLOAD = 172  # 12-byte RTP header + 160 bytes of G.711
BATCH = 64  # datagrams a recvmmsg call
SLOT = 2048  # bytes of buffer a received datagram
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)


# ---- ctypes: recvmmsg / sendmmsg --------------------------------------------------------------


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
_MSG_DONTWAIT = 0x40
_MSG_LEN_OFFSET = MMsgHdr.msg_len.offset
_MMSG_SIZE = ctypes.sizeof(MMsgHdr)
_UNPACK_LEN = struct.Struct("I").unpack_from  # an mmsghdr's msg_len


def _sockaddr(host: str, port: int) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET)
        + struct.pack("!H", port)
        + socket.inet_aton(host)
        + bytes(8)
    )


def _headers(
    count: int,
    data: ctypes.Array[ctypes.c_char],
    slot: int,
    length: int,
    names: ctypes.Array[ctypes.c_char],
) -> tuple[ctypes.Array[IoVec], ctypes.Array[MMsgHdr]]:
    """`count` message headers, each with one buffer of `length` bytes at `slot` intervals of
    `data` and a 16-byte address in `names`."""  # fmt: skip
    iovecs = (IoVec * count)()
    headers = (MMsgHdr * count)()
    base, names_base = ctypes.addressof(data), ctypes.addressof(names)
    for i in range(count):
        iovecs[i].iov_base = base + i * slot
        iovecs[i].iov_len = length
        hdr = headers[i].msg_hdr
        hdr.msg_name = names_base + 16 * i
        hdr.msg_namelen = 16
        hdr.msg_iov = ctypes.pointer(iovecs[i])
        hdr.msg_iovlen = 1
    return iovecs, headers


class BatchReceiver:
    """recvmmsg into preallocated buffers: each call gives (payload, source key, stamp) tuples,
    the source as the raw 6 bytes of port and address (what a demultiplexer would look up)."""

    def __init__(self, sock: socket.socket) -> None:
        self.fd = sock.fileno()
        self.data = ctypes.create_string_buffer(BATCH * SLOT)
        self.names = ctypes.create_string_buffer(BATCH * 16)
        self.control = ctypes.create_string_buffer(BATCH * _ANCILLARY)
        self.iovecs, self.headers = _headers(BATCH, self.data, SLOT, SLOT, self.names)
        for i in range(BATCH):  # and room for each datagram's arrival stamp
            hdr = self.headers[i].msg_hdr
            hdr.msg_control = ctypes.addressof(self.control) + _ANCILLARY * i
            hdr.msg_controllen = _ANCILLARY
        # the kernel overwrites the name and control lengths: restored from this copy each call
        self.pristine = bytes(self.headers)
        self.headers_address = ctypes.addressof(self.headers)
        self.data_view = memoryview(self.data).cast("B")
        self.names_view = memoryview(self.names).cast("B")
        self.control_view = memoryview(self.control).cast("B")
        self.headers_view = memoryview(self.headers).cast("B")

    def receive(self) -> list[tuple[bytes, bytes, float]]:
        out: list[tuple[bytes, bytes, float]] = []
        while True:
            ctypes.memmove(self.headers_address, self.pristine, len(self.pristine))
            n = _recvmmsg(self.fd, self.headers_address, BATCH, _MSG_DONTWAIT, None)
            if n <= 0:
                return out
            data, names, control = self.data_view, self.names_view, self.control_view
            for i in range(n):
                (length,) = _UNPACK_LEN(self.headers_view, i * _MMSG_SIZE + _MSG_LEN_OFFSET)
                seconds, nanos = _TIMESPEC.unpack_from(control, i * _ANCILLARY + 16)
                out.append(
                    (
                        bytes(data[i * SLOT : i * SLOT + length]),
                        bytes(names[i * 16 + 2 : i * 16 + 8]),
                        seconds + nanos * 1e-9,
                    )
                )
            if n < BATCH:
                return out


class BatchSender:
    """sendmmsg of one datagram to each of a fixed list of destinations."""

    def __init__(self, sock: socket.socket, destinations: list[tuple[str, int]]) -> None:
        self.fd = sock.fileno()
        count = len(destinations)
        self.count = count
        self.data = ctypes.create_string_buffer(count * 256)
        self.names = ctypes.create_string_buffer(b"".join(_sockaddr(*d) for d in destinations))
        self.iovecs, self.headers = _headers(count, self.data, 256, PAYLOAD, self.names)
        self.view = memoryview(self.data).cast("B")
        self.headers_address = ctypes.addressof(self.headers)

    def send(self, payloads: list[bytes]) -> int:
        view = self.view
        for i, payload in enumerate(payloads):  # every payload PAYLOAD bytes, as iov_len says
            view[i * 256 : i * 256 + PAYLOAD] = payload
        sent = 0
        while sent < self.count:
            chunk = min(self.count - sent, 1024)  # UIO_MAXIOV
            n = _sendmmsg(self.fd, self.headers_address + sent * _MMSG_SIZE, chunk, 0)
            if n <= 0:
                break
            sent += n
        return sent


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
        receiver = BatchReceiver(socks[0])
        sender = BatchSender(socks[0], destinations)
        payloads = [payload] * calls

        keys = {_sockaddr(*d)[2:8]: i for i, d in enumerate(destinations)}

        def tick() -> tuple[int, int]:
            got = receiver.receive()
            for _payload, source, _stamp in got:
                keys.get(source)  # the demultiplexing a shared socket needs
            return len(got), sender.send(payloads)

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
