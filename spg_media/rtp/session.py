"""Per-call RTP sessions and the shared media tick.

`MediaSession` is the sans-IO state of one call's media: it latches onto the first source that
sends RTP to its port (symmetric RTP; other sources are dropped and counted), hands telephone-event
payloads to the RFC 4733 receiver, and produces the call's outgoing packets — prompt audio encoded
once per codec, packetised here, or silence — one packet per `ptime`.

`MediaEngine` is the asyncio shell: one UDP socket per session and ONE timer for all sessions that
sends every due packet each 20 ms tick (DESIGN principle 3), so per-call work in the hot path is a
dictionary walk and a `sendto`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from spg_media.dtmf.rfc4733 import DtmfEvent, Rfc4733Receiver
from spg_media.observability import RTP_DROPPED_TOTAL, RTP_PACKETS_TOTAL
from spg_media.rtp.g711 import encode
from spg_media.rtp.packet import RtpError, RtpPacket, build_rtp, is_rtcp

log = logging.getLogger("spg.rtp")

SILENCE_BYTE = {"PCMU": 0xFF, "PCMA": 0xD5}
PAYLOAD_TYPE = {"PCMU": 0, "PCMA": 8}


@dataclass
class MediaStats:
    received: int = 0
    sent: int = 0
    dropped_foreign: int = 0
    dropped_malformed: int = 0
    rtcp: int = 0
    audio: int = 0
    events: int = 0


@dataclass
class MediaSession:
    """One call's RTP state; see the module docstring."""

    codec: str
    remote: tuple[str, int]
    dtmf_payload_type: int | None
    ptime_ms: int = 20
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    stats: MediaStats = field(default_factory=MediaStats)
    on_dtmf: Callable[[DtmfEvent], None] | None = None
    on_playback_done: Callable[[], None] | None = None
    on_audio: Callable[[bytes, float], None] | None = None
    latched: tuple[str, int] | None = None
    hold: bool = False

    def __post_init__(self) -> None:
        self.payload_type = PAYLOAD_TYPE[self.codec]
        self.samples_per_packet = 8 * self.ptime_ms
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._frames: list[bytes] = []
        self._frame_index = 0
        self._marker = True
        self._silence = bytes([SILENCE_BYTE[self.codec]]) * self.samples_per_packet
        self.receiver = Rfc4733Receiver()
        self.next_send_at: float | None = None
        self._reported = MediaStats()

    def report_stats(self) -> None:
        """Add what changed since the last report to the process's RTP counters."""
        now, last = self.stats, self._reported
        if now.received != last.received:
            RTP_PACKETS_TOTAL.inc(now.received - last.received, direction="in")
        if now.sent != last.sent:
            RTP_PACKETS_TOTAL.inc(now.sent - last.sent, direction="out")
        if now.dropped_foreign != last.dropped_foreign:
            RTP_DROPPED_TOTAL.inc(now.dropped_foreign - last.dropped_foreign, reason="source")
        if now.dropped_malformed != last.dropped_malformed:
            RTP_DROPPED_TOTAL.inc(
                now.dropped_malformed - last.dropped_malformed, reason="malformed"
            )
        self._reported = dataclasses.replace(now)

    # ---- receiving --------------------------------------------------------------------------

    def receive(self, data: bytes, source: tuple[str, int], now: float) -> None:
        if self.latched is None:
            self.latched = source
            self.remote = source  # symmetric RTP: answer where the caller really is
        elif source != self.latched:
            self.stats.dropped_foreign += 1
            return
        if is_rtcp(data):
            self.stats.rtcp += 1
            return
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            self.stats.dropped_malformed += 1
            return
        self.stats.received += 1
        if self.dtmf_payload_type is not None and packet.payload_type == self.dtmf_payload_type:
            self.stats.events += 1
            events = self.receiver.receive(
                packet.payload, packet.sequence, packet.timestamp, packet.marker, now
            )
            self._deliver(events)
        elif packet.payload_type == self.payload_type:
            self.stats.audio += 1
            if self.on_audio is not None:
                self.on_audio(packet.payload, now)

    def poll(self, now: float) -> None:
        """Timers of the DTMF receiver (a lost end packet)."""
        wake = self.receiver.next_wake()
        if wake is not None and now >= wake:
            self._deliver(self.receiver.poll(now))

    def _deliver(self, events: list[DtmfEvent]) -> None:
        if self.on_dtmf is not None:
            for event in events:
                self.on_dtmf(event)

    # ---- sending ----------------------------------------------------------------------------

    def play(self, audio_g711: bytes) -> None:
        """Start playing encoded audio (replacing what plays); silence is padded to a packet."""
        n = self.samples_per_packet
        pad = (-len(audio_g711)) % n
        audio_g711 += bytes([SILENCE_BYTE[self.codec]]) * pad
        self._frames = [audio_g711[i : i + n] for i in range(0, len(audio_g711), n)]
        self._frame_index = 0
        self._marker = True

    def stop(self) -> None:
        self._frames = []
        self._frame_index = 0

    @property
    def playing(self) -> bool:
        return self._frame_index < len(self._frames)

    def next_packet(self) -> bytes:
        """The next outgoing packet: prompt audio while playing, else silence."""
        if self._frame_index < len(self._frames):
            payload = self._frames[self._frame_index]
            self._frame_index += 1
            if self._frame_index == len(self._frames):
                self._frames = []
                self._frame_index = 0
                if self.on_playback_done is not None:
                    self.on_playback_done()
        else:
            payload = self._silence
        packet = build_rtp(self.payload_type, self._seq, self._ts, self.ssrc, payload, self._marker)
        self._marker = False
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + self.samples_per_packet) & 0xFFFFFFFF
        self.stats.sent += 1
        return packet

    def encode_prompt(self, samples: np.ndarray) -> bytes:
        return encode(samples, self.codec)


class _SessionProtocol(asyncio.DatagramProtocol):
    def __init__(self, engine: MediaEngine, port: int) -> None:
        self.engine = engine
        self.port = port

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:  # type: ignore[override]
        session = self.engine.sessions.get(self.port)
        if session is not None:
            source = (str(addr[0]), int(cast(int, addr[1])))
            session.receive(data, source, self.engine.loop.time())

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the peer is gone: not worth more than a debug line.
        log.debug("rtp socket error on port %d: %s", self.port, exc)


class PortRangeExhausted(Exception):
    pass


class MediaEngine:
    """All RTP sockets of the process and the single 20 ms send tick."""

    def __init__(self, address: str, port_min: int, port_max: int) -> None:
        self.address = address
        self.port_min = port_min + (port_min % 2)
        self.port_max = port_max
        self.sessions: dict[int, MediaSession] = {}
        self.transports: dict[int, asyncio.DatagramTransport] = {}
        self._next_port = self.port_min
        self._tick_task: asyncio.Task[None] | None = None
        self.loop = asyncio.get_event_loop()

    async def open(self) -> int:
        """Bind a free even port from the range and return it (the session is attached later)."""
        self.loop = asyncio.get_running_loop()
        span = (self.port_max - self.port_min) // 2 + 1
        for _ in range(span):
            port = self._next_port
            self._next_port += 2
            if self._next_port > self.port_max:
                self._next_port = self.port_min
            if port in self.transports:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((self.address, port))
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            transport, _ = await self.loop.create_datagram_endpoint(
                functools.partial(_SessionProtocol, self, port), sock=sock
            )
            self.transports[port] = transport
            return port
        raise PortRangeExhausted(f"no free RTP port in {self.port_min}-{self.port_max}")

    def attach(self, port: int, session: MediaSession) -> None:
        session.next_send_at = self.loop.time()
        self.sessions[port] = session
        if self._tick_task is None or self._tick_task.done():
            self._tick_task = self.loop.create_task(self._tick())

    def close(self, port: int) -> None:
        session = self.sessions.pop(port, None)
        if session is not None:
            session.report_stats()
        transport = self.transports.pop(port, None)
        if transport is not None:
            transport.close()

    async def aclose(self) -> None:
        for port in list(self.transports):
            self.close(port)
        if self._tick_task is not None:
            self._tick_task.cancel()

    async def _tick(self) -> None:
        interval = 0.02
        ticks = 0
        next_tick = self.loop.time()
        while self.sessions:
            now = self.loop.time()
            for port, session in list(self.sessions.items()):
                session.poll(now)
                if session.hold or session.next_send_at is None:
                    continue
                transport = self.transports.get(port)
                sent = 0
                # Catch up after a late tick, but never burst more than 3 packets.
                while session.next_send_at <= now + 0.001 and sent < 3:
                    packet = session.next_packet()
                    if transport is not None:
                        transport.sendto(packet, session.remote)
                    session.next_send_at += session.ptime_ms / 1000
                    sent += 1
                if session.next_send_at < now - 0.1:
                    session.next_send_at = now
            ticks += 1
            if ticks % 50 == 0:  # once a second: the counters stay current at 1/50 of the cost
                for session in self.sessions.values():
                    session.report_stats()
            next_tick += interval
            delay = next_tick - self.loop.time()
            if delay < -0.1:
                next_tick = self.loop.time()
                delay = 0
            await asyncio.sleep(max(delay, 0))
