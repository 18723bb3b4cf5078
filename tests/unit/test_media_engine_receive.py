"""MediaEngine's receive pass over real loopback sockets: datagrams read once per tick reach
their session dated by their arrival (not by the tick that read them), a stranger's are dropped
before they latch or reach a receiver, RTCP goes to the RTCP port's rules, and a flood on one
port cannot hold the tick."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

from spg_media.dtmf.rfc4733 import DtmfEvent
from spg_media.rtp import session as session_module
from spg_media.rtp.session import MediaEngine, MediaSession

STRANGER = "127.0.0.2"


def rtp(pt: int, seq: int, ts: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq, ts, 0x1234) + payload


def receiver_report() -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, 0x1234)  # RR, no report blocks


def udp(address: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(4096)
        except BlockingIOError:
            return count
        count += 1


def test_datagrams_reach_their_session_dated_by_arrival_and_strangers_get_nothing() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        engine = MediaEngine("127.0.0.1", 31400, 31440)
        caller, caller_rtcp, stranger = udp(), udp(), udp(STRANGER)
        heard: list[DtmfEvent] = []
        port = await engine.open()
        media = MediaSession(
            codec="PCMU",
            remote=caller.getsockname(),
            dtmf_payload_type=101,
            on_dtmf=heard.append,
            rtcp_remote=caller_rtcp.getsockname(),
        )
        engine.attach(port, media)
        await asyncio.sleep(0.05)
        # The stranger first: it must not latch, nor key a digit.
        stranger.sendto(rtp(101, 1, 800, bytes([5, 10, 0, 160]), True), ("127.0.0.1", port))
        stranger.sendto(receiver_report(), ("127.0.0.1", port + 1))
        sent_at = loop.time()
        caller.sendto(rtp(0, 10, 0, b"\xff" * 160), ("127.0.0.1", port))
        caller.sendto(rtp(101, 11, 160, bytes([1, 10, 0, 160]), True), ("127.0.0.1", port))
        caller_rtcp.sendto(receiver_report(), ("127.0.0.1", port + 1))
        sent_done = loop.time()
        time.sleep(0.015)  # the loop held: no tick reads them before this
        await asyncio.sleep(0.1)
        assert media.latched == caller.getsockname()
        assert media.stats.received == 2 and media.stats.dropped_foreign == 2
        assert media.stats.rtcp == 1 and media.rtcp_latched == caller_rtcp.getsockname()
        assert [(e.digit, e.kind) for e in heard] == [("1", "start")]
        # Dated when it came (the kernel's stamp on the loop's clock; uvloop's is in ms), not
        # when a tick up to 20 ms later read it.
        assert sent_at - 0.002 <= heard[0].at <= sent_done + 0.002
        assert drain(caller) >= 3  # our packets go to the caller ...
        assert drain(stranger) == 0  # ... and never to the stranger
        await engine.aclose()
        for sock in (caller, caller_rtcp, stranger):
            sock.close()

    asyncio.run(body())


def test_a_flood_on_one_port_is_read_a_bounded_number_of_times_a_tick() -> None:
    async def body() -> tuple[int, int]:
        engine = MediaEngine("127.0.0.1", 31450, 31490)
        caller = udp()
        port = await engine.open()
        media = MediaSession(codec="PCMU", remote=caller.getsockname(), dtmf_payload_type=101)
        engine.sessions[port] = media  # attached without the tick: the pass is driven here
        caller.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for n in range(200):
            caller.sendto(rtp(0, n, n * 160, b"\xff" * 160), ("127.0.0.1", port))
        await asyncio.sleep(0.01)
        engine._receive(asyncio.get_running_loop().time())
        first = media.stats.received
        engine._receive(asyncio.get_running_loop().time())
        second = media.stats.received - first
        await engine.aclose()
        caller.close()
        return first, second

    first, second = asyncio.run(body())
    assert first == session_module.READ_ROUNDS  # the rest waits for the next tick
    assert second == min(200 - first, session_module.READ_ROUNDS)


def test_a_closed_session_stops_its_sockets_being_polled() -> None:
    async def body() -> None:
        engine = MediaEngine("127.0.0.1", 31500, 31540)
        caller = udp()
        port = await engine.open()
        engine.attach(
            port, MediaSession(codec="PCMU", remote=caller.getsockname(), dtmf_payload_type=101)
        )
        engine.close(port)
        assert port not in engine.sockets and not engine._readers
        engine._receive(time.monotonic())  # nothing registered: nothing read, nothing raised
        await engine.aclose()
        caller.close()

    asyncio.run(body())
