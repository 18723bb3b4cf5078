"""Our own test caller: a small SIP UAC that behaves like a transferred customer.

It sends the transferred INVITE with the X-SPG-* headers, listens to the prompts (it waits for
each prompt to go quiet before keying, as a person would), keys digits as RFC 4733 events — or,
with `inband=True`, as DTMF tones in a continuous PCMU audio stream offered without
telephone-event, as a PSTN gateway would — and
plays the transferee's part of the REFER (202, then a NOTIFY whose sipfrag says the return call
was answered) before accepting the BYE. With `transport="tls"` it signals over TLS (trusting
only the certificate file it is given) and with `srtp=True` it offers RTP/SAVP with fresh SDES
keys and protects and checks every packet, as a secure phone does. With `stream_audio=True` it
sends a continuous audio stream even when keying RFC 4733 events, `say()` speaks into it, and
each key's tone is played in it too (a phone whose keypad tones reach the line as well as its
events: what agent-assisted mode must mask). It serves `spg-media demo` and unit tests;
integration tests use real peers (SIPp, baresip) instead.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from spg_media.rtp import srtp as srtp_keys
from spg_media.rtp.g711 import ULAW_TO_LINEAR
from spg_media.rtp.packet import RtpError, RtpPacket, build_rtp, is_rtcp
from spg_media.sip.dialog import Dialog
from spg_media.sip.message import Headers, SipRequest, make_response, new_branch, new_tag
from spg_media.sip.sdp import build_offer
from spg_media.sip.transaction import Address
from spg_media.sip.ua import Listen, SipUserAgent

DTMF_EVENTS = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
DTMF_PT = 101
DTMF_TONES = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477),
}  # fmt: skip
TONE_AMPLITUDE = 4000.0  # per frequency: about -15 dBm0, a typical phone's level
FRAME = 160  # samples per 20 ms packet


def dtmf_tone(key: str, duration_s: float, rate: int = 8000) -> np.ndarray:
    """The two-frequency tone of a key as int16 samples."""
    low, high = DTMF_TONES[key]
    t = np.arange(int(duration_s * rate)) / rate
    wave = TONE_AMPLITUDE * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))
    return np.round(wave).astype(np.int16)


@dataclass
class CallerReport:
    """What the caller saw: the INVITE's answer and the result headers it was handed."""

    status: int = 0
    result_headers: dict[str, str] = field(default_factory=dict)
    refer_to: str = ""
    ended_by: str = ""  # "refer" | "bye" | "timeout"
    audio_packets: int = 0
    bye_headers: dict[str, str] = field(default_factory=dict)  # the X-SPG-* of the BYE


TRANSFER_MODES = ("ok", "refuse", "fail", "silent")


class _RtpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, caller: TestCaller) -> None:
        self.caller = caller

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:  # type: ignore[override]
        self.caller.on_rtp(data)


class TestCaller:
    """One outbound call to spg-media; `await run(keys_per_field)`."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        target: tuple[str, int],
        transaction: str,
        *,
        local_host: str = "127.0.0.1",
        return_to: str | None = None,
        extra_headers: list[tuple[str, str]] | None = None,
        on_progress: Callable[[str], None] | None = None,
        request_uri: str | None = None,
        inband: bool = False,
        transport: str = "udp",
        srtp: bool = False,
        tls_ca_file: str | None = None,
        handoff_signature: Callable[[str], str] | None = None,
        transfer: str = "ok",
        stream_audio: bool = False,
    ) -> None:
        self.target = target
        self.transaction = transaction
        self.local_host = local_host
        self.return_to = return_to
        self.extra_headers = extra_headers or []
        # The PBX's X-SPG-Signature for a Call-ID (`payment.signing.sign_handoff`), if any.
        self.handoff_signature = handoff_signature
        # How we take the REFER back: "ok" (202, then NOTIFY 200: the agent answered),
        # "refuse" (403), "fail" (202, then NOTIFY 486: the agent was busy), "silent" (no
        # answer at all: the REFER times out).
        if transfer not in TRANSFER_MODES:
            raise ValueError(f"transfer must be one of {TRANSFER_MODES}, not {transfer!r}")
        self.transfer = transfer
        self.on_progress = on_progress or (lambda _msg: None)
        self.request_uri = request_uri or f"sip:pay@{target[0]}:{target[1]}"
        self.inband = inband
        self.stream_audio = stream_audio or inband  # in-band keys need the audio stream
        if transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"transport must be udp, tcp or tls, not {transport!r}")
        self.transport = transport
        self.use_srtp = srtp
        self.tls_ca_file = tls_ca_file
        self.srtp: srtp_keys.SrtpContext | None = None  # after the answer, when srtp
        self.srtp_suite = ""
        self._offered: list[srtp_keys.CryptoAttribute] = []
        self._session_id = 0
        self._sdp_version = 0
        self._audio_out: list[bytes] = []  # PCMU frames queued to send (in-band mode)
        self._audio_task: asyncio.Task[None] | None = None
        self.report = CallerReport()
        self.dialog: Dialog | None = None
        self.ua: SipUserAgent | None = None
        self.rtp: asyncio.DatagramTransport | None = None
        self.remote_rtp: tuple[str, int] | None = None
        self._ended = asyncio.Event()
        self._last_loud = 0.0
        self._heard_speech = False
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._ssrc = random.getrandbits(32)

    # ---- RTP ----------------------------------------------------------------------------------

    def on_rtp(self, data: bytes) -> None:
        if self.use_srtp:
            if self.srtp is None or is_rtcp(data):
                return
            plain = self.srtp.unprotect_rtp(data)
            if plain is None:
                return
            data = plain
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            return
        self.report.audio_packets += 1
        if packet.payload_type != 0:
            return
        samples = ULAW_TO_LINEAR[np.frombuffer(packet.payload, dtype=np.uint8)].astype(np.float64)
        if samples.size and float(np.sqrt(np.mean(samples * samples))) > 300.0:
            self._heard_speech = True
            self._last_loud = asyncio.get_running_loop().time()

    async def wait_prompt_end(self, quiet_s: float = 0.8, limit_s: float = 20.0) -> None:
        """Wait until a prompt has been heard and then ~quiet_s of silence followed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        self._heard_speech = False
        while loop.time() < deadline and not self._ended.is_set():
            if self._heard_speech and loop.time() - self._last_loud >= quiet_s:
                return
            await asyncio.sleep(0.05)

    async def wait_prompt_start(self, limit_s: float = 20.0) -> None:
        """Wait until something loud (a prompt) is heard from now on."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        self._heard_speech = False
        while loop.time() < deadline and not self._ended.is_set() and not self._heard_speech:
            await asyncio.sleep(0.02)

    async def key(self, keys: str, gap_s: float = 0.12) -> None:
        """Key digits as RFC 4733 events: 7 updates then the end packet three times.

        In in-band mode: 80 ms of tone then `gap_s` of silence per key, in the audio stream.
        """
        assert self.rtp is not None and self.remote_rtp is not None
        if self.inband:
            await self._key_inband(keys, gap_s)
            return
        for key in keys:
            event = DTMF_EVENTS[key]
            if self.stream_audio:
                # The event is dated in the audio's timeline, and its tone goes in the audio.
                event_ts = self._ts
                self._queue_audio(dtmf_tone(key, 0.14))
            else:
                self._ts = (self._ts + 1600) & 0xFFFFFFFF
                event_ts = self._ts
            for i in range(1, 8):
                payload = struct.pack("!BBH", event, 10, 160 * i)
                self._send_rtp(payload, marker=(i == 1), ts=event_ts)
                await asyncio.sleep(0.02)
            end = struct.pack("!BBH", event, 0x80 | 10, 160 * 8)
            for _ in range(3):
                self._send_rtp(end, marker=False, ts=event_ts)
            await asyncio.sleep(gap_s)

    def _queue_audio(self, samples: np.ndarray) -> None:
        from spg_media.rtp.g711 import encode

        samples = np.concatenate([samples, np.zeros((-samples.size) % FRAME, np.int16)])
        encoded = encode(samples, "PCMU")
        self._audio_out.extend(encoded[i : i + FRAME] for i in range(0, len(encoded), FRAME))

    async def say(self, samples: np.ndarray) -> None:
        """Speak `samples` (int16, 8 kHz) into the audio stream (`stream_audio`); returns when
        they have been sent."""
        if not self.stream_audio:
            raise RuntimeError("say() needs stream_audio=True")
        self._queue_audio(np.asarray(samples, dtype=np.int16))
        while self._audio_out and not self._ended.is_set():
            await asyncio.sleep(0.02)

    async def _key_inband(self, keys: str, gap_s: float) -> None:
        from spg_media.rtp.g711 import encode

        for key in keys:
            samples = np.concatenate(
                [dtmf_tone(key, 0.08), np.zeros(int(max(gap_s, 0.05) * 8000), dtype=np.int16)]
            )
            samples = np.concatenate([samples, np.zeros((-samples.size) % FRAME, np.int16)])
            encoded = encode(samples, "PCMU")
            self._audio_out.extend(encoded[i : i + FRAME] for i in range(0, len(encoded), FRAME))
        while self._audio_out and not self._ended.is_set():
            await asyncio.sleep(0.02)

    async def _send_audio(self) -> None:
        """A phone's audio stream: a PCMU frame every 20 ms, silence unless keying."""
        loop = asyncio.get_running_loop()
        silence = b"\xff" * FRAME
        next_at = loop.time()
        while not self._ended.is_set():
            payload = self._audio_out.pop(0) if self._audio_out else silence
            self._ts = (self._ts + FRAME) & 0xFFFFFFFF
            packet = build_rtp(0, self._seq, self._ts, self._ssrc, payload, False)
            self._seq = (self._seq + 1) & 0xFFFF
            self._send_packet(packet)
            next_at += 0.02
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def _send_rtp(self, payload: bytes, marker: bool, ts: int | None = None) -> None:
        assert self.rtp is not None and self.remote_rtp is not None
        stamp = self._ts if ts is None else ts
        packet = build_rtp(DTMF_PT, self._seq, stamp, self._ssrc, payload, marker)
        self._seq = (self._seq + 1) & 0xFFFF
        self._send_packet(packet)

    def _send_packet(self, packet: bytes) -> None:
        if self.rtp is None or self.remote_rtp is None:
            return
        if self.use_srtp:
            if self.srtp is None:
                return
            protected = self.srtp.protect_rtp(packet)
            if protected is None:
                return
            packet = protected
        self.rtp.sendto(packet, self.remote_rtp)

    # ---- SIP ----------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sip_port = _free_udp_port(self.local_host)
        client_tls = None
        if self.transport == "tls":
            client_tls = ssl.create_default_context(cafile=self.tls_ca_file)
            client_tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ua = SipUserAgent(
            [Listen("udp", self.local_host, sip_port)],
            self.local_host,
            client_ssl_context=client_tls,
        )
        await self.ua.start()
        rtp_port = _free_udp_port(self.local_host)
        self.rtp, _ = await loop.create_datagram_endpoint(
            lambda: _RtpEndpoint(self), local_addr=(self.local_host, rtp_port)
        )
        self.rtp_port = rtp_port
        self.sip_port = sip_port

    def _security(self) -> str:
        parts = []
        if self.transport == "tls" and self.ua is not None:
            stream = self.ua.streams.get(Address("tls", self.target[0], self.target[1]))
            tls = stream.get_extra_info("ssl_object") if stream is not None else None
            if tls is not None:
                parts.append(f"{tls.version()} {tls.cipher()[0]}")
        if self.srtp is not None:
            parts.append(f"SRTP {self.srtp_suite}")
        return f" over {', '.join(parts)}" if parts else ""

    def _offer_body(self, offered: list[srtp_keys.CryptoAttribute]) -> bytes:
        return build_offer(
            local_address=self.local_host,
            local_port=self.rtp_port,
            session_id=self._session_id,
            version=self._sdp_version,
            codecs=("PCMU",),
            dtmf_pt=None if self.inband else DTMF_PT,
            crypto_lines=offered,
        )

    async def reinvite(self, *, new_keys: bool = True) -> int:
        """Send a re-INVITE (same media); under SRTP with `new_keys`, offer fresh keys and
        switch to the answer's. Returns the final status."""
        assert self.ua is not None and self.dialog is not None
        from spg_media.sip.sdp import SessionDescription, negotiate

        offered = self._offered
        if self.use_srtp and new_keys:
            offered = srtp_keys.offer_attributes()
        self._sdp_version += 1
        invite = self.dialog.new_request(
            "INVITE",
            self.transport,
            self._sent_by,
            body=self._offer_body(offered),
            content_type="application/sdp",
        )
        response = await self.ua.request(invite, await self.ua.resolve(self.dialog.next_hop()))
        if response.status != 200:
            return response.status
        ack = self.dialog.new_request("ACK", self.transport, self._sent_by, cseq=invite.cseq[0])
        self.ua.send_ack(ack, await self.ua.resolve(self.dialog.next_hop()))
        if self.use_srtp:
            answer = negotiate(SessionDescription.parse(response.body))
            self.srtp = srtp_keys.accept_answer(offered, [c.value() for c in answer.crypto])
            self._offered = offered
        self.on_progress("re-INVITE answered" + (" (new SRTP keys)" if new_keys else ""))
        return 200

    @property
    def _sent_by(self) -> str:
        return f"{self.local_host}:{self.sip_port}"

    @property
    def _param(self) -> str:
        return "" if self.transport == "udp" else f";transport={self.transport}"

    async def call(self) -> int:
        """Send the INVITE; on 200, ACK it and return 200; else the failure status."""
        assert self.ua is not None
        call_id = f"{random.getrandbits(64):016x}@{self.local_host}"
        headers = Headers()
        headers.add(
            "Via",
            f"SIP/2.0/{self.transport.upper()} {self.local_host}:{self.sip_port}"
            f";branch={new_branch()};rport",
        )
        headers.add("Max-Forwards", "70")
        headers.add("From", f'"Customer" <sip:customer@{self.local_host}>;tag={new_tag()}')
        headers.add("To", f"<{self.request_uri}>")
        headers.add("Call-ID", call_id)
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", f"<sip:customer@{self.local_host}:{self.sip_port}{self._param}>")
        headers.add("X-SPG-Transaction", self.transaction)
        if self.return_to:
            headers.add("X-SPG-Return-To", self.return_to)
        for name, value in self.extra_headers:
            headers.add(name, value)
        if self.handoff_signature is not None:
            headers.add("X-SPG-Signature", self.handoff_signature(call_id))
        headers.add("Content-Type", "application/sdp")
        offered = srtp_keys.offer_attributes() if self.use_srtp else []
        self._offered = offered
        self._session_id = random.randint(1, 2**31)
        self._sdp_version = 1
        body = self._offer_body(offered)
        invite = SipRequest("INVITE", self.request_uri, headers, body)
        self.ua.dialogs[call_id] = self
        destination = Address(self.transport, self.target[0], self.target[1])
        self.on_progress(f"INVITE {self.request_uri} (X-SPG-Transaction: {self.transaction})")
        response = await self.ua.request(invite, destination)
        self.report.status = response.status
        if response.status != 200:
            self.on_progress(f"call refused: {response.status} {response.reason}")
            return response.status
        self.dialog = Dialog.as_uac(invite, response)
        from spg_media.sip.sdp import SessionDescription, negotiate

        answer = negotiate(SessionDescription.parse(response.body))
        if self.use_srtp:
            lines = [c.value() for c in answer.crypto]
            if not answer.srtp_offered or not lines:
                raise ConnectionError("SRTP offered but the answer is plain RTP")
            self.srtp = srtp_keys.accept_answer(offered, lines)
            self.srtp_suite = self.srtp.suite.name
        self.remote_rtp = (answer.remote_address, answer.remote_port)
        ack = self.dialog.new_request("ACK", self.transport, self._sent_by, cseq=invite.cseq[0])
        self.ua.send_ack(ack, await self.ua.resolve(self.dialog.next_hop()))
        self.on_progress("answered (200 OK, ACK sent)" + self._security())
        if self.stream_audio:
            self._audio_task = asyncio.get_running_loop().create_task(self._send_audio())
        return 200

    async def hangup(self) -> None:
        assert self.ua is not None and self.dialog is not None
        bye = self.dialog.new_request("BYE", self.transport, self._sent_by)
        self.report.ended_by = "caller"
        self._ended.set()
        await self.ua.request(bye, await self.ua.resolve(self.dialog.next_hop()))

    async def wait_end(self, timeout_s: float = 60.0) -> CallerReport:
        try:
            await asyncio.wait_for(self._ended.wait(), timeout_s)
        except TimeoutError:
            self.report.ended_by = "timeout"
        return self.report

    async def close(self) -> None:
        self._ended.set()
        if self._audio_task is not None:
            self._audio_task.cancel()
        if self.rtp is not None:
            self.rtp.close()
        if self.ua is not None:
            await self.ua.close()

    # DialogHandler protocol: requests spg-media sends us
    @property
    def source(self) -> Address:
        """The node: over TCP/TLS, the connection this caller's dialog lives on."""
        return Address(self.transport, self.target[0], self.target[1])

    def on_request(self, request: SipRequest, source: Address) -> None:
        assert self.ua is not None
        if request.method == "REFER":
            self._note_result(request)
            self.report.refer_to = request.headers.get("Refer-To") or ""
            if self.transfer == "silent":
                return
            if self.transfer == "refuse":
                self.ua.respond(request, make_response(request, 403, "Forbidden"))
                return
            self.ua.respond(request, make_response(request, 202, "Accepted"))
            self.on_progress(f"REFER back to {self.report.refer_to}")
            status = "200 OK" if self.transfer == "ok" else "486 Busy Here"
            asyncio.get_running_loop().create_task(self._notify_transfer_done(status))
        elif request.method == "BYE":
            if not self.report.result_headers:
                self._note_result(request)
            self.report.bye_headers = {
                name: value
                for name, value in request.headers.items()
                if name.lower().startswith("x-spg-")
            }
            self.ua.respond(request, make_response(request, 200))
            if not self.report.ended_by:
                self.report.ended_by = "refer" if self.report.refer_to else "bye"
            self.on_progress("BYE received: call ended")
            self._ended.set()
        else:
            self.ua.respond(request, make_response(request, 200))

    def _note_result(self, request: SipRequest) -> None:
        for name, value in request.headers.items():
            if name.lower().startswith("x-spg-"):
                self.report.result_headers[name] = value

    async def _notify_transfer_done(self, status: str) -> None:
        """As a transferee whose new call to the agent was answered, or failed with `status`
        (RFC 3515 §2.4.5)."""
        assert self.ua is not None and self.dialog is not None
        notify = self.dialog.new_request(
            "NOTIFY",
            self.transport,
            self._sent_by,
            headers=[
                ("Event", "refer"),
                ("Subscription-State", "terminated;reason=noresource"),
            ],
            body=f"SIP/2.0 {status}\r\n".encode(),
            content_type="message/sipfrag;version=2.0",
        )
        await self.ua.request(notify, await self.ua.resolve(self.dialog.next_hop()))

    def on_ack(self, ack: SipRequest) -> None:
        pass

    def on_cancel(self, invite: SipRequest) -> None:
        pass

    def on_ack_timeout(self) -> None:
        pass


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
