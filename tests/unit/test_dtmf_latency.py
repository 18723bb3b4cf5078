"""spg_dtmf_latency_seconds{source}: from a press reaching the node to the journey taking its
digit, for each source.

The press's arrival is dated where it happens: an RFC 4733 press by its first packet's arrival,
an in-band one by the arrival of the packet that carried the tones' onset (a tone that starts
mid-packet, at a known sample), an INFO by the request's. The delivery is the `now` the call
hands the journey with the digit. The call runs on stub services (a config and a UA that
records its responses) with a journey that stops at its first digit.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import numpy as np

from spg_media.call import Call
from spg_media.config import load_config
from spg_media.dtmf.rfc4733 import DtmfEvent
from spg_media.observability import DTMF_LATENCY_SECONDS
from spg_media.rtp.g711 import encode
from spg_media.rtp.packet import build_rtp
from spg_media.rtp.session import MediaEngine, MediaSession
from spg_media.sip.dialog import Dialog
from spg_media.sip.message import SipRequest, parse_message
from spg_media.sip.transaction import Address
from spg_media.testcaller import dtmf_tone

CALLER = ("127.0.0.1", 40000)
SOURCE = Address("udp", "127.0.0.1", 5999)
FRAME = 160


class FirstDigitJourney:
    """Takes one digit, remembering the `now` it came with, and ends."""

    def __init__(self) -> None:
        self.outcome: Any = None
        self.digits: list[tuple[str, float]] = []

    def start(self, now: float) -> list[Any]:
        return []

    def next_wake(self) -> float | None:
        return None

    def digit(self, digit: str, now: float) -> list[Any]:
        self.digits.append((digit, now))
        self.outcome = "done"
        return []

    def hangup(self, now: float) -> list[Any]:
        self.outcome = "hung-up"
        return []


class RecordingUa:
    def __init__(self) -> None:
        self.responses: list[Any] = []

    def respond(self, request: SipRequest, response: Any) -> None:
        self.responses.append(response)


def invite() -> SipRequest:
    text = (
        "INVITE sip:pay@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-lat1\r\n"
        "From: <sip:pbx@127.0.0.1>;tag=from1\r\nTo: <sip:pay@127.0.0.1>\r\n"
        "Call-ID: latency@pbx\r\nCSeq: 1 INVITE\r\nContact: <sip:pbx@127.0.0.1:5999>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    message = parse_message(text.encode())
    assert isinstance(message, SipRequest)
    return message


def info(to_tag: str, key: str) -> SipRequest:
    body = f"Signal={key}\r\nDuration=160\r\n"
    text = (
        "INFO sip:pay@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-info1\r\n"
        f"From: <sip:pbx@127.0.0.1>;tag=from1\r\nTo: <sip:pay@127.0.0.1>;tag={to_tag}\r\n"
        "Call-ID: latency@pbx\r\nCSeq: 2 INFO\r\n"
        f"Content-Type: application/dtmf-relay\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )
    message = parse_message(text.encode())
    assert isinstance(message, SipRequest)
    return message


def a_call(inband: str = "on") -> Call:
    config = load_config(None, env={"SPG_DTMF__INBAND": inband})
    services = types.SimpleNamespace(config=config, ua=RecordingUa(), observer=None)
    return Call(services, invite(), SOURCE)  # type: ignore[arg-type]


def observed(source: str) -> tuple[int, float]:
    return DTMF_LATENCY_SECONDS.get_count(source=source), DTMF_LATENCY_SECONDS.get_sum(
        source=source
    )


async def deliver(call: Call) -> tuple[str, float]:
    """The call's journey takes what its inbox holds: the digit and the `now` it came with."""
    journey = FirstDigitJourney()
    await asyncio.wait_for(call._drive(journey), 2.0)  # type: ignore[arg-type]
    return journey.digits[0]


def test_rfc4733_from_the_first_packets_arrival_to_the_journey() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        call = a_call()
        media = MediaSession(
            codec="PCMU", remote=CALLER, dtmf_payload_type=101, on_dtmf=call._on_dtmf
        )
        arrived = loop.time() - 0.037  # the packet came 37 ms ago: the tick read it late
        start = build_rtp(101, 7, 1600, 0x51, bytes([5, 10, 0, 160]), marker=True)
        media.receive(start, CALLER, arrived)
        media.receive(build_rtp(101, 8, 1600, 0x51, bytes([5, 10, 1, 64])), CALLER, arrived + 0.02)
        count, total = observed("rfc4733")
        digit, delivered = await deliver(call)
        assert digit == "5"
        after_count, after_total = observed("rfc4733")
        assert after_count == count + 1
        assert abs((after_total - total) - (delivered - arrived)) < 1e-9
        assert delivered - arrived >= 0.037

    asyncio.run(body())


def keyed_packets(onset_sample: int) -> list[bytes]:
    """20 ms PCMU payloads: silence, then the tone of "7" from `onset_sample` on for 80 ms."""
    samples = np.zeros(40 * FRAME, dtype=np.int16)
    tone = dtmf_tone("7", 0.08)
    samples[onset_sample : onset_sample + tone.size] = tone
    audio = encode(samples, "PCMU")
    return [audio[i : i + FRAME] for i in range(0, len(audio), FRAME)]


def inband_start(onset_packet: int, offset: int, base: float) -> tuple[DtmfEvent, list[float]]:
    """Feed the tone starting `offset` samples into packet `onset_packet` through the engine,
    one packet a tick, the k-th arriving at base + 20 ms × k plus a jitter of its own; return
    the start event and the arrival times."""
    engine = MediaEngine("127.0.0.1", 40000, 40100)
    heard: list[DtmfEvent] = []
    session = MediaSession(
        codec="PCMU", remote=CALLER, dtmf_payload_type=101, on_dtmf=heard.append, inband=True
    )
    engine.attach(50000, session)
    payloads = keyed_packets(onset_packet * FRAME + offset)
    arrivals = [base + 0.02 * k + 0.001 * (k % 5) for k in range(len(payloads))]
    for k, payload in enumerate(payloads):
        session.receive(build_rtp(0, k, k * FRAME, 0x51, payload), CALLER, arrivals[k])
        engine._detect_inband()
    engine.close(50000)
    assert engine._tick_task is not None
    engine._tick_task.cancel()
    starts = [e for e in heard if e.kind == "start"]
    assert [e.digit for e in starts] == ["7"]
    return starts[0], arrivals


def test_an_inband_start_is_dated_by_the_packet_carrying_the_onset_sample() -> None:
    async def body() -> None:
        for offset in (5, 70, 150):  # early, mid, late in packet 12
            event, arrivals = inband_start(12, offset, 1000.0)
            assert event.arrived_at == arrivals[12], offset

    asyncio.run(body())


def test_inband_from_the_onsets_packet_to_the_journey() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        call = a_call()
        event, arrivals = inband_start(12, 70, loop.time() - 1.0)
        count, total = observed("inband")
        call._on_dtmf(event)
        digit, delivered = await deliver(call)
        assert digit == "7"
        after_count, after_total = observed("inband")
        assert after_count == count + 1
        assert abs((after_total - total) - (delivered - arrivals[12])) < 1e-9

    asyncio.run(body())


def test_info_from_the_requests_arrival_to_the_journey() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        call = a_call()
        call.session.dialog = Dialog.as_uas(call.invite, call.local_tag, "<sip:spg@127.0.0.1>")
        call.session.state = "confirmed"  # answered and ACKed
        count, total = observed("info")
        before = loop.time()
        call.leg.on_request(info(call.local_tag, "9"), SOURCE)
        after = loop.time()
        assert [r.status for r in call.ua.responses] == [200]  # type: ignore[attr-defined]
        await asyncio.sleep(0.03)  # the journey busy elsewhere for 30 ms
        digit, delivered = await deliver(call)
        assert digit == "9"
        after_count, after_total = observed("info")
        assert after_count == count + 1
        assert delivered - after - 1e-9 <= after_total - total <= delivered - before + 1e-9
        assert after_total - total >= 0.03

    asyncio.run(body())
