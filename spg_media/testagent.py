"""Our own test agent: a small SIP UAS that answers agent-assisted calls and records what it hears.

The counterpart of `testcaller.py` on the agent's side of an agent-assisted call: it listens
on UDP, answers every INVITE (180, then 200 with a plain RTP answer to the node's offer,
telephone-event included when offered, so that any event the node sent would arrive), sends a
silent PCMU/PCMA stream back (a headset with the agent listening), and keeps what the node sent
it: each call's audio, decoded and laid out by RTP timestamp, the count of packets that were
not audio (telephone-event or anything else), and the INVITE's `X-SPG-Assist-Call` (the id the
agent's desktop uses in the API). `hangup()` sends BYE, as an agent who ends the call.

It serves `spg-media demo --assist` and tests; integration tests use SIPp as the agent.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from spg_media.rtp.g711 import ALAW_TO_LINEAR, ULAW_TO_LINEAR, encode
from spg_media.rtp.packet import RtpError, RtpPacket, build_rtp, is_rtcp
from spg_media.sip.invite_session import Ended, Event, InviteSession
from spg_media.sip.leg import SessionLeg
from spg_media.sip.message import SipRequest, new_tag
from spg_media.sip.sdp import NotAcceptable, SdpError, SessionDescription, build_answer, negotiate
from spg_media.sip.transaction import Address
from spg_media.sip.ua import Listen, SipUserAgent

FRAME = 160  # samples per 20 ms packet
_AUDIO_PT = {0: ULAW_TO_LINEAR, 8: ALAW_TO_LINEAR}


@dataclass
class RtpRecording:
    """What one RTP stream brought: audio decoded and laid out by RTP timestamp, and the
    packets that were not audio."""

    audio_packets: int = 0
    other_packets: int = 0  # RTP that is not PCMU/PCMA: telephone-event would land here
    other_payload_types: set[int] = field(default_factory=set)
    _chunks: dict[int, npt.NDArray[np.int16]] = field(default_factory=dict)  # by RTP timestamp
    _first_ts: int | None = None

    def receive(self, packet: RtpPacket) -> None:
        table = _AUDIO_PT.get(packet.payload_type)
        if table is None:
            self.other_packets += 1
            self.other_payload_types.add(packet.payload_type)
            return
        self.audio_packets += 1
        if self._first_ts is None:
            self._first_ts = packet.timestamp
        offset = (packet.timestamp - self._first_ts) & 0xFFFFFFFF
        if offset < 8000 * 3600:  # an hour: anything beyond is a wrapped or foreign timestamp
            samples = table[np.frombuffer(packet.payload, dtype=np.uint8)].astype(np.int16)
            self._chunks[offset] = samples

    def receive_bytes(self, data: bytes) -> None:
        """A datagram as it came (RTCP and anything unreadable ignored)."""
        if is_rtcp(data):
            return
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            return
        self.receive(packet)

    def audio(self) -> npt.NDArray[np.int16]:
        """Everything heard, int16 at 8 kHz, each packet at its RTP timestamp (gaps silent)."""
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        end = max(offset + chunk.size for offset, chunk in self._chunks.items())
        out = np.zeros(end, dtype=np.int16)
        for offset, chunk in self._chunks.items():
            out[offset : offset + chunk.size] = chunk
        return out


@dataclass
class AgentCall:
    """One call the agent answered: what it was told and what it heard."""

    assist_call: str  # X-SPG-Assist-Call of the INVITE ("" when absent)
    transaction: str  # X-SPG-Transaction of the INVITE ("" when absent)
    invite: SipRequest
    codec: str = ""
    recording: RtpRecording = field(default_factory=RtpRecording)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    ended_by: str = ""  # "node" (BYE from the node) | "agent" (ours)


class _Media(asyncio.DatagramProtocol):
    def __init__(self, agent: TestAgent, call: AgentCall) -> None:
        self.agent = agent
        self.call = call

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:  # type: ignore[override]
        self.call.recording.receive_bytes(data)


class TestAgent:
    """Answers INVITEs on `host`:`port` (UDP); `calls` in the order they came."""

    __test__ = False  # not a pytest test class

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.ua: SipUserAgent | None = None
        self.calls: list[AgentCall] = []
        self.call_arrived = asyncio.Event()
        self._legs: list[tuple[SessionLeg, AgentCall]] = []
        self._transports: list[asyncio.DatagramTransport] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def uri(self) -> str:
        return f"sip:agent@{self.host}:{self.port}"

    async def start(self) -> None:
        if not self.port:
            self.port = _free_udp_port(self.host)
        self.ua = SipUserAgent([Listen("udp", self.host, self.port)], self.host)
        self.ua.invite_handler = self
        await self.ua.start()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for leg, _ in self._legs:
            leg.close()
        for transport in self._transports:
            transport.close()
        if self.ua is not None:
            await self.ua.close()

    async def wait_call(self, timeout_s: float = 10.0) -> AgentCall:
        await asyncio.wait_for(self.call_arrived.wait(), timeout_s)
        return self.calls[-1]

    async def hangup(self, call: AgentCall) -> None:
        """BYE from the agent."""
        for leg, known in self._legs:
            if known is call and not leg.session.ended:
                call.ended_by = "agent"
                request = leg.session.bye()
                leg.pump()
                await leg.answer(request)

    # InviteHandler: a new INVITE from the node
    def on_invite(self, invite: SipRequest, source: Address) -> None:
        assert self.ua is not None
        self._spawn(self._answer(invite, source))

    async def _answer(self, invite: SipRequest, source: Address) -> None:
        assert self.ua is not None
        call = AgentCall(
            assist_call=invite.headers.get("X-SPG-Assist-Call") or "",
            transaction=invite.headers.get("X-SPG-Transaction") or "",
            invite=invite,
        )
        session = InviteSession.as_uas(
            invite,
            local_tag=new_tag(),
            via_transport=source.transport,
            via_sent_by=self.ua.sent_by(source.transport),
            contact=self.ua.contact(source.transport, user="agent"),
        )

        def on_event(event: Event) -> None:
            if isinstance(event, Ended):
                if not call.ended_by:
                    call.ended_by = "node"
                call.ended.set()

        leg = SessionLeg(self.ua, session, source, on_event)
        self.ua.dialogs[invite.call_id] = leg
        self._legs.append((leg, call))
        try:
            neg = negotiate(SessionDescription.parse(invite.body))
        except (SdpError, NotAcceptable):
            session.reject(488)
            leg.pump()
            return
        call.codec = neg.codec
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Media(self, call), local_addr=(self.host, 0)
        )
        self._transports.append(transport)
        local_port = int(transport.get_extra_info("sockname")[1])
        session.provisional(180)
        answer = build_answer(
            neg,
            local_address=self.host,
            local_port=local_port,
            session_id=random.randint(1, 2**31),
            version=1,
        )
        session.accept(answer, loop.time())
        leg.pump()
        self.calls.append(call)
        self.call_arrived.set()
        self._spawn(self._send_silence(transport, (neg.remote_address, neg.remote_port), call))

    async def _send_silence(
        self, transport: asyncio.DatagramTransport, remote: tuple[str, int], call: AgentCall
    ) -> None:
        """A listening agent's stream: silence every 20 ms until the call ends."""
        payload = encode(np.zeros(FRAME, dtype=np.int16), call.codec)
        pt = 0 if call.codec == "PCMU" else 8
        seq, ts, ssrc = random.getrandbits(16), random.getrandbits(32), random.getrandbits(32)
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not call.ended.is_set():
            transport.sendto(build_rtp(pt, seq, ts, ssrc, payload, False), remote)
            seq, ts = (seq + 1) & 0xFFFF, (ts + FRAME) & 0xFFFFFFFF
            next_at += 0.02
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _free_udp_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
