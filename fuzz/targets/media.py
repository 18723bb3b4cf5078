"""Targets for the media side: SDP and offer/answer, SDES keys and SRTP, RTP, RTCP, a call's RTP
session with its in-band queue and detector, agent-assisted mode's bridge and masker, RFC 4733
telephone events, and the recordings `dtmf-scan` reads."""

from __future__ import annotations

import base64
import contextlib
import functools
import math
import os
import random
import tempfile
from pathlib import Path

import numpy as np

from fuzz.harness import LOGS, Finding, Reader, expect, target
from spg_media.dtmf.inband import scan
from spg_media.dtmf.recording import FORMATS, RecordingError, read_recording
from spg_media.dtmf.rfc4733 import DTMF_KEYS, DtmfEvent, Rfc4733Receiver
from spg_media.rtp.g711 import decode, encode
from spg_media.rtp.masking import MASKS
from spg_media.rtp.packet import RtpError, RtpPacket, build_rtp, is_rtcp
from spg_media.rtp.rtcp import RtcpError, RtcpSession
from spg_media.rtp.session import MAX_PENDING_FRAMES, PAYLOAD_TYPE, MediaEngine, MediaSession
from spg_media.rtp.srtp import (
    SUPPORTED_SUITES,
    CryptoAttribute,
    CryptoAttributeError,
    SrtpContext,
    answer_for,
    select_offered,
)
from spg_media.sip.sdp import (
    DIRECTIONS,
    MAX_PTIME,
    MIN_PTIME,
    SRTP_POLICIES,
    NegotiatedAudio,
    NotAcceptable,
    SdpError,
    SessionDescription,
    build_answer,
    negotiate,
)
from spg_media.testcaller import TONE_AMPLITUDE

# ---- SDP ----------------------------------------------------------------------------------------


def _check_negotiated(neg: NegotiatedAudio) -> None:
    expect(neg.codec in ("PCMU", "PCMA"), "codec other than G.711")
    expect(0 <= neg.payload_type <= 127, "payload type out of range")
    expect(neg.dtmf_payload_type is None or 0 <= neg.dtmf_payload_type <= 127, "DTMF type")
    expect(MIN_PTIME <= neg.ptime <= MAX_PTIME, f"ptime {neg.ptime} outside 10-60")
    expect(neg.direction in DIRECTIONS, "unknown direction")
    expect(0 < neg.remote_port <= 65535, "remote RTP port out of range")
    expect(0 <= neg.remote_rtcp_port <= 65535, "remote RTCP port out of range")
    expect(bool(neg.remote_address), "no remote address")
    expect((neg.remote_crypto is None) == (not neg.srtp_offered), "SRTP offered without keys")


def _check_answer(answer: bytes, offer: SessionDescription) -> None:
    text = answer.decode("ascii")
    lines = text.split("\r\n")
    expect(lines[-1] == "", "answer does not end with CRLF")
    for line in lines[:-1]:
        expect(line.isprintable(), "a control character in our SDP answer")
    try:
        parsed = SessionDescription.parse(answer)
    except SdpError as exc:
        raise Finding(f"our SDP answer does not parse: {exc}") from exc
    expect(len(parsed.media) == max(len(offer.media), 1), "answer m-lines differ from the offer's")


@target("sdp", dictionary="sdp.dict")
def sdp(data: bytes) -> None:
    """`SessionDescription.parse` (SdpError only), then `negotiate` under each `rtp.srtp` policy
    (NotAcceptable only): what it chooses is within the contract (G.711, ptime 10-60, ports),
    `build_answer` writes an answer that is printable, parses, and has the offer's m-lines;
    the same offer again as a re-INVITE keeps the codec and, for SRTP, our key."""
    try:
        offer = SessionDescription.parse(data)
    except SdpError:
        return
    for policy in SRTP_POLICIES:
        try:
            neg = negotiate(offer, srtp_policy=policy)
        except NotAcceptable as exc:
            expect(bool(exc.detail) and isinstance(exc.detail, str), "488 without a reason")
            continue
        _check_negotiated(neg)
        _check_answer(
            build_answer(neg, local_address="127.0.0.1", local_port=20000, session_id=1, version=1),
            offer,
        )
        try:
            again = negotiate(offer, srtp_policy=policy, previous=neg)
        except NotAcceptable as exc:
            raise Finding(f"the same offer refused as a re-INVITE: {exc.detail}") from exc
        expect(again.codec == neg.codec, "a re-INVITE with the same offer changed the codec")
        expect(again.local_crypto is neg.local_crypto, "the same offer re-keyed our side")


# ---- SDES and SRTP ------------------------------------------------------------------------------

_SUITE_CHOICES: tuple[tuple[str, ...] | None, ...] = (
    None,
    SUPPORTED_SUITES,
    ("AES_CM_128_HMAC_SHA1_80",),
    ("AES_CM_128_HMAC_SHA1_32", "AEAD_AES_128_GCM"),
)


def _key_texts(line: str) -> list[str]:
    """The key texts of a line that must never show in an error or a repr: those longer than
    the 32 characters up to which the module echoes a token (a suite or parameter name) in an
    error; every real key is longer (base64 of 28 to 44 bytes)."""
    texts = []
    for part in line.split():
        if part.lower().startswith("inline:"):
            texts.append(part[7:].split("|", 1)[0])
    return [text for text in texts if len(text) > 32]


def _check_secret(text: str, key_texts: list[str], key: bytes | None = None) -> None:
    for key_text in key_texts:
        expect(key_text not in text, "an a=crypto key shown in an error or repr")
    if key is not None:
        expect(base64.b64encode(key).decode() not in text, "a key shown in a repr")


@target("sdes", dictionary="sdes.dict")
def sdes(data: bytes) -> None:
    """SDES `a=crypto` values (RFC 4568): the text before the first NUL is lines of offer
    values, the bytes after it a packet. `CryptoAttribute.parse` and `select_offered` raise
    CryptoAttributeError only, whose reason never holds the key; an accepted line prints back
    to an equal one and its repr hides the key; an SrtpContext from it unprotects the fuzzed
    packet (None or bytes, never an exception) and round-trips a packet its peer protects."""
    reader = Reader(data)
    suites = reader.choice(_SUITE_CHOICES)
    text, _, packet = reader.rest().partition(b"\0")
    lines = text.decode("utf-8", errors="replace").split("\n")[:8]
    first: CryptoAttribute | None = None
    for line in lines:
        secrets = _key_texts(line)
        try:
            attribute = CryptoAttribute.parse(line, suites=suites)
        except CryptoAttributeError as exc:
            _check_secret(exc.reason, secrets)
            expect(exc.reason.isprintable() and len(exc.reason) < 200, "unfit Warning text")
            continue
        _check_secret(repr(attribute), secrets, attribute.key)
        try:
            again = CryptoAttribute.parse(attribute.sdp_value(), suites=suites)
        except CryptoAttributeError as exc:
            raise Finding(f"an accepted a=crypto does not parse once printed: {exc}") from exc
        expect(again == attribute, "an a=crypto line changed in a round trip")
        first = first or attribute
    try:
        chosen = select_offered(lines, suites=suites)
    except CryptoAttributeError as exc:
        expect(first is None, f"select_offered refused a line parse accepts: {exc.reason}")
        return
    expect(chosen == first, "select_offered did not take the first usable line")
    ours = answer_for(chosen)
    expect(ours.suite == chosen.suite and ours.tag == chosen.tag, "answer suite or tag differs")
    context = SrtpContext(ours, chosen)
    for plain in (context.unprotect_rtp(packet), context.unprotect_rtcp(packet)):
        expect(plain is None or isinstance(plain, bytes), "unprotect returned something else")
    peer = SrtpContext(chosen, ours)  # the caller's side: protects with the offered key
    if len(packet) >= 12 and packet[0] >> 6 == 2:
        fresh = SrtpContext(ours, chosen)
        protected = peer.protect_rtp(packet)
        if protected is not None:
            expect(fresh.unprotect_rtp(protected) == packet, "an SRTP round trip failed")


# ---- RTP ----------------------------------------------------------------------------------------


@target("rtp_packet")
def rtp_packet(data: bytes) -> None:
    """`RtpPacket.parse` (RtpError only) and `is_rtcp`; a parsed packet serialises to bytes that
    parse to the same packet."""
    is_rtcp(data)
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    expect(0 <= packet.payload_type <= 127 and len(packet.csrcs) <= 15, "header out of range")
    try:
        again = RtpPacket.parse(packet.serialize())
    except RtpError as exc:
        raise Finding(f"a parsed RTP packet does not parse once serialised: {exc}") from exc
    expect(again == packet, "an RTP packet changed in a round trip")


_RTCP_OURS = 0x11111111
_RTCP_SSRCS = (0x22222222, 0x33333333, _RTCP_OURS)


@target("rtcp")
def rtcp(data: bytes) -> None:
    """`RtcpSession.receive` on a compound packet (RtcpError only), after up to 7 RTP packets of
    the peer (SSRC, sequence, timestamp, arrival from the input); then our report and BYE, which
    a peer's session must accept, and the summary."""
    reader = Reader(data)
    session = RtcpSession(_RTCP_OURS, 0.0, rng=random.Random(1), cname="fuzz")
    now = 0.0
    for _ in range(reader.byte() % 8):
        ssrc = reader.choice(_RTCP_SSRCS)
        sequence, timestamp = reader.uint(2), reader.uint(4)
        step = reader.byte()
        now += step / 1000
        session.rtp_received(ssrc, sequence, timestamp, now, audio=bool(step & 1))
        session.rtp_sent(timestamp, 160, now)
    wall = 1_700_000_000.0 + now
    with contextlib.suppress(RtcpError):
        session.receive(reader.rest(), now, wall)
    peer = RtcpSession(0x22222222, 0.0, rng=random.Random(2), cname="peer")
    for packet in (session.report(now + 10, wall + 10), session.bye(now + 11, wall + 11, "bye")):
        expect(packet is not None, "no report due 10 s after the start")
        assert packet is not None
        try:
            peer.receive(packet, now + 11, wall + 11)
        except RtcpError as exc:
            raise Finding(f"our own RTCP packet is refused by a peer: {exc}") from exc
    summary = session.summary
    expect(summary.lost >= 0 and summary.received >= 0, "negative counts")
    expect(math.isfinite(summary.jitter_ms), "jitter not finite")


# ---- a call's RTP session and the in-band queue ------------------------------------------------

_MEDIA_RECORD = 8  # bytes of a record of rtp_session and bridge
_MEDIA_RECORDS = 100  # records an input holds at most
_OFFERED = ("192.0.2.10", 40000)  # the caller's SDP address and port
_SOURCES = (_OFFERED, ("192.0.2.10", 40002), ("198.51.100.7", 40000), _OFFERED)
_PAYLOAD_SIZES = (160, 160, 160, 160, 80, 240, 320, 0, 1, 12, 159, 161, 480, 800, 40, 160)
_PORT = 30000


@functools.cache
def _keyed_audio() -> tuple[bytes, ...]:
    """Each DTMF key's tone as 0.5 s of PCMU with line noise, then 0.25 s of the noise alone."""
    rng = np.random.default_rng(4733)
    t = np.arange(4000) / 8000
    clips = []
    for key in "0123456789*#ABCD":
        row, column = divmod("123A456B789C*0#D".index(key), 4)
        low, high = (697, 770, 852, 941)[row], (1209, 1336, 1477, 1633)[column]
        samples = rng.normal(0.0, 30.0, 6000)  # line noise, about -60 dBm0
        samples[:4000] += TONE_AMPLITUDE * (
            np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t)
        )
        clips.append(encode(np.clip(np.rint(samples), -32768, 32767).astype(np.int16), "PCMU"))
    return tuple(clips)


def _session_packet(record: bytes, sequence: int, timestamp: int) -> bytes:
    """An RTP datagram from one record: PCMU audio (a key's tone, line noise or silence) or a
    telephone event, the header plain or not (CSRCs), or a datagram that reads as RTCP."""
    flags, size, content, offset = record[0], record[3], record[4], record[5]
    length = _PAYLOAD_SIZES[size % len(_PAYLOAD_SIZES)]
    clip = _keyed_audio()[content % 16]
    start = (offset * 20) % len(clip)  # 8 units a 20 ms packet
    if content & 0x30 == 0x10:
        payload = (clip[start:] + clip)[:length]
    elif content & 0x30 == 0x20:
        payload = (clip[4000 + start % 2000 :] + clip[4000:])[:length]  # the noise alone
    else:
        payload = b"\xff" * length  # PCMU silence
    payload_type = 101 if flags & 0x20 else 0
    if flags & 0x20 and content & 0x40:
        end_and_volume = 0x8A if content & 0x80 else 0x0A
        payload = bytes((content % 16, end_and_volume)) + offset.to_bytes(2, "big")
    packet = RtpPacket(
        version=2,
        padding=False,
        extension=False,
        marker=bool(flags & 0x40),
        payload_type=payload_type,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=0x5150 + (record[7] & 1),
        csrcs=(0x01020304,) * (content >> 6) if flags & 0x10 else (),
        payload=payload,
    ).serialize()
    if flags & 0x80:  # its second octet in RTCP's range
        packet = packet[:1] + bytes((200 + record[7] % 8,)) + packet[2:]
    return packet


def _media_records(data: bytes, start: int = 0) -> list[bytes]:
    """rtp_session's and bridge's records from `start` on (the last one padded with zeros)."""
    ends = range(start, len(data), _MEDIA_RECORD)
    return [data[at : at + _MEDIA_RECORD].ljust(_MEDIA_RECORD, b"\0") for at in ends][
        :_MEDIA_RECORDS
    ]


def _numbers_after(record: bytes, sequence: int, timestamp: int) -> tuple[int, int]:
    """The RTP sequence number and timestamp of a record's packet, from the previous ones: a
    signed step, and the next 160 samples or a jump either way."""
    step = record[1] if record[1] < 128 else record[1] - 256
    jump = record[2]
    return (
        (sequence + step) & 0xFFFF,
        (timestamp + (160 if jump < 128 else jump * 997 - 160_000)) & 0xFFFFFFFF,
    )


def _expect_no_failure_logged(since: int) -> None:
    """The media engine logs a failure (and carries on) when a call's media or the detector
    raised: a finding."""
    failures = [m for m in LOGS.messages[since:] if "failed" in m]
    expect(not failures, f"the media engine logged a failure: {failures[:1]}")


@target("rtp_session", max_len=800)
def rtp_session(data: bytes) -> None:
    """A call's `MediaSession` (in-band DTMF on, telephone events on 101) fed up to 100 records
    (8 bytes each: what comes — a datagram, the media tick or a pass between ticks — its
    source, header and payload shape, sequence and timestamp steps, the time passing), the
    engine's tick running the real in-band detector over what it queued (`_detect_inband`,
    `_detect_hot`, the RFC 4733 poll), then a second of silence in order. Nothing raises and
    nothing is logged as failed; a stranger's datagram changes nothing but its counter; the
    queue never holds more than MAX_PENDING_FRAMES payloads, and every sample of audio it
    took is either given to the detector or still queued; DTMF starts and ends alternate per
    source with one key each, a start dated no later than now; no press is left open after
    the second of silence. Inputs of odd length run the session as the shared port does, its
    SSRCs pinned (`pin_ssrc`): a datagram dropped for its SSRC changes nothing but its
    counter."""
    engine = MediaEngine("127.0.0.1", 20000, 20100)
    events: list[DtmfEvent] = []
    session = MediaSession(codec="PCMU", remote=_OFFERED, dtmf_payload_type=101, inband=True,
                           on_dtmf=events.append)  # fmt: skip
    session.pin_ssrc = len(data) % 2 == 1
    session.start_rtcp(0.0, 1_700_000_000.0, rng=random.Random(1))
    engine.sessions[_PORT] = session
    engine._start_inband(session)
    now = 0.0
    sequence, timestamp = 1000, 160_000
    taken = 0  # samples of audio the session queued for the detector
    logged = len(LOGS.messages)

    def tick() -> None:
        if now >= session.dtmf_wake:
            session.poll(now)
        engine._detect_inband()

    def receive(packet: bytes, source: tuple[str, int]) -> int:
        """Give the session a datagram; the samples of audio it queued."""
        stats = session.stats
        before = (stats.received, stats.audio, stats.audio_late, stats.audio_dropped)
        pending_before = len(session.pending_audio)
        pinned_out = stats.dropped_ssrc
        session.receive(packet, source, now)
        after = (stats.received, stats.audio, stats.audio_late, stats.audio_dropped)
        if source[0] != _OFFERED[0]:
            expect(after == before, "a stranger's datagram reached the call")
        if stats.dropped_ssrc != pinned_out:
            expect(session.pin_ssrc, "an SSRC dropped on a session that pins none")
            expect(after == before, "a datagram of another SSRC reached the call")
            expect(len(session.pending_audio) == pending_before, "another SSRC's audio queued")
        samples = len(packet) - 12 - 4 * (packet[0] & 0x0F)
        if after[1] == before[1] or after[2:] != before[2:] or not samples:
            return 0  # not audio, audio the queue turned away (counted), or no audio at all
        expect(len(session.pending_audio) == pending_before + 1, "audio not queued")
        return samples

    def check() -> None:
        pending = session.pending_audio
        expect(len(pending) <= MAX_PENDING_FRAMES, "the in-band queue grew past its bound")
        queued = sum(len(item[0]) for item in pending)
        expect(session.fed_samples + queued == taken, "audio lost or made up in the queue")

    for record in _media_records(data):
        now += record[6] / 4000  # 0 to 64 ms
        kind = record[0] & 3
        if kind == 2:
            tick()
        elif kind == 3:
            engine._detect_hot()
        else:
            sequence, timestamp = _numbers_after(record, sequence, timestamp)
            source = _SOURCES[(record[0] >> 2) & 3]
            taken += receive(_session_packet(record, sequence, timestamp), source)
        check()
    # A second of silence in order, from where the call's audio is: every press ends.
    source = session.latched or _OFFERED
    pending = session.pending_audio
    newest = pending[-1][1] if pending else session.fed_through
    sequence = (sequence if newest is None else newest) + 1
    for _ in range(50):
        now += 0.02
        timestamp = (timestamp + 160) & 0xFFFFFFFF
        ssrc = 0x5150 if session.pinned_ssrc is None else session.pinned_ssrc
        taken += receive(build_rtp(0, sequence & 0xFFFF, timestamp, ssrc, b"\xff" * 160), source)
        sequence += 1
        tick()
        check()
    now += 1.0
    session.poll(now)
    _expect_no_failure_logged(logged)
    open_keys: dict[str, str] = {}
    for event in events:
        expect(event.digit in DTMF_KEYS and len(event.digit) == 1, "not a DTMF key")
        if event.kind == "start":
            expect(event.source not in open_keys, f"two {event.source} starts without an end")
            open_keys[event.source] = event.digit
            arrived = event.arrived_at
            expect(arrived is None or arrived <= now, "a start dated after its decision")
        else:
            expect(open_keys.pop(event.source, None) == event.digit, "an end without its start")
    expect(not open_keys, f"a press left open after a second of silence: {sorted(open_keys)}")


# ---- agent-assisted mode: the bridge and its masker ---------------------------------------------

_AGENT = ("192.0.2.20", 42000)
_CUSTOMER_PORT, _AGENT_PORT = 30000, 30002


@target("bridge", max_len=808)
def bridge(data: bytes) -> None:
    """Agent-assisted mode's media: a customer's and an agent's `MediaSession` bridged by the
    engine (`MediaEngine.bridge`), codecs, the agent's packet time and the mask from the first
    8 bytes, then up to 100 records (8 bytes each, as `rtp_session`'s: the customer's packets
    with DTMF tones, line noise or silence in any sizes and order, the agent's, and 20 ms ticks
    that detect, cross the audio through the masker and take each leg's packet as the tick
    sends it). Nothing raises and nothing is logged as failed; every packet a leg sends parses
    and carries its own codec's payload type; and no DTMF digit can be read (`scan`, our own
    detector) in the audio the agent is sent: the customer's keys never reach the agent."""
    head = data[:8].ljust(8, b"\0")
    codecs = ("PCMU", "PCMA")
    customer_codec, agent_codec = codecs[head[0] & 1], codecs[(head[0] >> 1) & 1]
    agent_ptime = (20, 20, 10, 30)[(head[0] >> 2) & 3]
    mask = MASKS[head[1] % len(MASKS)]
    engine = MediaEngine("127.0.0.1", 20000, 20100)
    customer = MediaSession(codec=customer_codec, remote=_OFFERED, dtmf_payload_type=101)
    agent = MediaSession(codec=agent_codec, remote=_AGENT, dtmf_payload_type=101,
                         ptime_ms=agent_ptime)  # fmt: skip
    for port, session in ((_CUSTOMER_PORT, customer), (_AGENT_PORT, agent)):
        session.start_rtcp(0.0, 1_700_000_000.0, rng=random.Random(port))
        session.next_send_at = 0.0
        engine.sessions[port] = session
    engine.bridge(_CUSTOMER_PORT, _AGENT_PORT, mask)
    logged = len(LOGS.messages)
    heard: dict[str, list[bytes]] = {"customer": [], "agent": []}
    now = 0.0
    sequences = {"customer": 1000, "agent": 5000}
    stamps = {"customer": 160_000, "agent": 80_000}

    def tick() -> None:
        engine._detect_inband()
        engine._relay(now)
        for name, session in (("customer", customer), ("agent", agent)):
            due = session.next_send_at or 0.0
            while due <= now + 0.001:  # every packet due by now (`_serve` would send at most 3)
                packet = session.next_packet(due)
                expect(packet is not None, "a plain RTP leg sent nothing")
                assert packet is not None
                try:
                    parsed = RtpPacket.parse(packet)
                except RtpError as exc:
                    raise Finding(f"a leg sent a packet that does not parse: {exc}") from exc
                expect(parsed.payload_type == PAYLOAD_TYPE[session.codec], "wrong payload type")
                heard[name].append(parsed.payload)
                due += session.ptime_ms / 1000
            session.next_send_at = due

    for record in _media_records(data, start=8):
        now += record[6] / 4000  # 0 to 64 ms
        if record[0] & 3 == 2:
            tick()
            continue
        leg = "agent" if record[0] & 3 == 3 else "customer"
        sequences[leg], stamps[leg] = _numbers_after(record, sequences[leg], stamps[leg])
        session = agent if leg == "agent" else customer
        packet = _session_packet(record, sequences[leg], stamps[leg])
        if session.codec == "PCMA" and not record[0] & 0xA0:  # its audio in its own codec
            header = 12 + 4 * (packet[0] & 0x0F)
            audio = encode(decode(packet[header:], "PCMU"), "PCMA")
            packet = packet[:1] + bytes(((packet[1] & 0x80) | 8,)) + packet[2:header] + audio
        session.receive(packet, _AGENT if leg == "agent" else _OFFERED, now)
    for _ in range(10):  # what is held back (the masker's lookahead) comes out
        now += 0.02
        tick()
    _expect_no_failure_logged(logged)
    to_agent = b"".join(heard["agent"])
    digits = scan(decode(to_agent, agent_codec)) if to_agent else []
    expect(not digits, f"a DTMF digit reached the agent: {[d for d, _, _ in digits]}")


# ---- RFC 4733 -----------------------------------------------------------------------------------

_RECORD = 8


@target("rfc4733", max_len=1024)
def rfc4733(data: bytes) -> None:
    """The telephone-event receiver fed a sequence of up to 128 packets (8 bytes each: event, E
    bit and volume, duration, sequence step, timestamp mode, time step, marker and payload
    length), with polls at its wake-ups. Nothing raises; presses alternate start/end with one
    digit each, end with a non-negative duration, and none is left open after a long silence."""
    receiver = Rfc4733Receiver()
    now = 0.0
    sequence = 1000
    timestamp = 16000
    duration = 0
    events = []
    for at in range(0, len(data) - _RECORD + 1, _RECORD):
        record = data[at : at + _RECORD]
        event, flags, step, ts_mode, time_step, shape = (
            record[0] % 20,
            record[1],
            record[4],
            record[5],
            record[6],
            record[7],
        )
        sequence = (sequence + (step if step < 128 else step - 256)) & 0xFFFF
        if ts_mode >= 192:  # a new event, timestamp far away
            timestamp = (timestamp + ts_mode * 997) & 0xFFFFFFFF
        elif ts_mode >= 128:  # the next segment of a long event
            timestamp = (timestamp + duration) & 0xFFFFFFFF
        duration = int.from_bytes(record[2:4], "big")
        now += time_step / 1000
        wake = receiver.next_wake()
        if wake is not None and wake <= now:
            events += receiver.poll(now)
        payload = bytes((event, flags)) + record[2:4]
        payload = (payload + b"\0\0")[: (shape >> 1) % 7] if shape & 0x40 else payload
        events += receiver.receive(payload, sequence, timestamp, bool(shape & 1), now)
    wake = receiver.next_wake()
    events += receiver.poll(max(now, wake or now) + 10.0)
    expect(receiver.next_wake() is None, "a press still open after 10 s of silence")
    open_digit = None
    for item in events:
        expect(item.digit in DTMF_KEYS and len(item.digit) == 1, "not a DTMF key")
        if item.kind == "start":
            expect(open_digit is None, "two starts without an end")
            open_digit = item.digit
        else:
            expect(open_digit == item.digit, "an end without its start")
            expect(item.duration_ms is not None and item.duration_ms >= 0, "bad duration")
            open_digit = None
    expect(open_digit is None, "a start without an end")
    expect(receiver.stats.presses == sum(e.kind == "start" for e in events), "presses miscounted")


# ---- recordings ---------------------------------------------------------------------------------


@functools.cache
def _recording_dir() -> Path:
    """Where the input file is written (in memory where /dev/shm exists); each file is removed
    after its read (libFuzzer ends the process without running exit handlers)."""
    shm = Path("/dev/shm")
    path = (shm if shm.is_dir() else Path(tempfile.gettempdir())) / f"spg-fuzz-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


_SUFFIXES = (".wav", ".al", ".ul", ".raw", ".bin")
_RATES = (None, None, 8000, 16000, 11025, 44100, 999, 384001)


@target("recording", max_len=16384)
def recording(data: bytes) -> None:
    """`read_recording` as `dtmf-scan FILE [--format F] [--rate R]` calls it, on a file holding
    the input after its first byte (which picks the name's extension, the format and the rate):
    int16 samples at 8 kHz, or RecordingError."""
    reader = Reader(data)
    control = reader.byte()
    path = _recording_dir() / f"input-{os.getpid()}{_SUFFIXES[control % 5]}"
    audio_format = (None, *FORMATS)[(control // 5) % 5]
    rate = _RATES[(control // 25) % len(_RATES)]
    path.write_bytes(reader.rest())
    try:
        samples = read_recording(path, audio_format, rate)
    except RecordingError as exc:
        expect("\n" not in str(exc), "a RecordingError of more than one line")
        return
    finally:
        path.unlink()
    expect(samples.dtype == np.int16 and samples.ndim == 1, "not int16 mono samples")
