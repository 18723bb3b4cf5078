"""MediaEngine.bridge: two sessions' audio crossing, transcoded, each leg's keys masked.

No sockets: the sessions are attached under ports the engine never opened, RTP is handed to
`MediaSession.receive` as the socket would, and each 20 ms tick's steps (`_detect_inband`,
`_relay`) are called by hand, then the agent's and customer's next packets taken as `_serve`
would send them.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
import pytest

from spg_media.dtmf.inband import DBM0_PEAK, scan
from spg_media.dtmf.rfc4733 import DtmfEvent
from spg_media.rtp.g711 import decode, encode
from spg_media.rtp.masking import LOOKAHEAD, Int16s
from spg_media.rtp.packet import RtpPacket, build_rtp
from spg_media.rtp.session import QUIET_PEAK, MediaEngine, MediaSession

CUSTOMER = ("127.0.0.1", 40000)
AGENT = ("127.0.0.1", 40002)
FRAME = 160
PT = {"PCMU": 0, "PCMA": 8}


def make_session(codec: str, remote: tuple[str, int], **kwargs: object) -> MediaSession:
    return MediaSession(codec=codec, remote=remote, dtmf_payload_type=101, **kwargs)  # type: ignore[arg-type]


@contextmanager
def bridged(
    customer_codec: str, agent_codec: str, mask: str = "tone", **customer_kwargs: object
) -> Iterator[tuple[MediaEngine, MediaSession, MediaSession]]:
    loop = asyncio.new_event_loop()
    try:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        engine._loop = loop
        customer = make_session(customer_codec, CUSTOMER, **customer_kwargs)
        agent = make_session(agent_codec, AGENT)
        engine.attach(50000, customer)
        engine.attach(50002, agent)
        engine.bridge(50000, 50002, mask)
        yield engine, customer, agent
        engine.close(50000)
        engine.close(50002)
        assert engine._tick_task is not None
        engine._tick_task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()


def run_ticks(
    engine: MediaEngine,
    customer: MediaSession,
    agent: MediaSession,
    customer_audio: np.ndarray,
    agent_audio: np.ndarray | None = None,
    extra: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Feed both legs 20 ms a tick; return what each leg sends (decoded), tick by tick."""
    ticks = customer_audio.size // FRAME
    if agent_audio is None:
        agent_audio = np.zeros(customer_audio.size, dtype=np.int16)
    to_agent: list[np.ndarray] = []
    to_customer: list[np.ndarray] = []
    for tick in range(ticks):
        now = tick * 0.02
        part = slice(tick * FRAME, (tick + 1) * FRAME)
        for session, source, samples in (
            (customer, CUSTOMER, customer_audio),
            (agent, AGENT, agent_audio),
        ):
            payload = encode(samples[part], session.codec)
            packet = build_rtp(PT[session.codec], tick, tick * FRAME, 0x77, payload, tick == 0)
            session.receive(packet, source, now)
        if extra is not None:
            extra(tick)
        engine._detect_inband()
        engine._relay(now)
        for session, sent in ((agent, to_agent), (customer, to_customer)):
            out = RtpPacket.parse(session.next_packet(now) or b"")
            assert out.payload_type == PT[session.codec]
            sent.append(decode(out.payload, session.codec))
    return np.concatenate(to_agent), np.concatenate(to_customer)


def speech_like(seconds: float, seed: int = 7) -> np.ndarray:
    """Band-limited noise with a syllabic envelope: loud, broadband, no keypad pattern."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 8000)
    noise = np.convolve(rng.normal(0, 3000, n), np.ones(4) / 4, mode="same")
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * np.arange(n) / 8000)
    return np.round(noise * envelope).astype(np.int16)


def key_tone(low: float, high: float, samples: int, level_dbm0: float) -> np.ndarray:
    amplitude = DBM0_PEAK * 10 ** (level_dbm0 / 20) / np.sqrt(2)  # the pair at level_dbm0
    t = np.arange(samples) / 8000
    tones: np.ndarray = amplitude * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))
    return tones


def test_customer_speech_reaches_the_agent_late_by_the_lookahead_and_otherwise_intact() -> None:
    speech = speech_like(1.0)
    with bridged("PCMU", "PCMU") as (engine, customer, agent):
        to_agent, _ = run_ticks(engine, customer, agent, speech)
    heard = decode(encode(speech, "PCMU"), "PCMU")  # the customer's own G.711
    assert np.array_equal(to_agent[LOOKAHEAD:], heard[: heard.size - LOOKAHEAD])
    assert not to_agent[:LOOKAHEAD].any()


def test_each_direction_is_transcoded_to_the_other_legs_codec() -> None:
    speech = speech_like(0.6, seed=1)
    reply = speech_like(0.6, seed=2)
    with bridged("PCMA", "PCMU") as (engine, customer, agent):
        to_agent, to_customer = run_ticks(engine, customer, agent, speech, reply)
    said = decode(encode(speech, "PCMA"), "PCMA")
    assert np.array_equal(
        to_agent[LOOKAHEAD:], decode(encode(said[: said.size - LOOKAHEAD], "PCMU"), "PCMU")
    )
    answered = decode(encode(reply, "PCMU"), "PCMU")
    # The agent's audio: masked too, so as late by the look-ahead (silence before it).
    late = np.concatenate([np.zeros(LOOKAHEAD, np.int16), answered[: answered.size - LOOKAHEAD]])
    assert np.array_equal(to_customer, decode(encode(late, "PCMA"), "PCMA"))


def test_a_prompt_on_the_customer_leg_is_heard_instead_of_the_agent() -> None:
    reply = speech_like(0.4, seed=3)
    prompt = encode(np.full(800, 1000, dtype=np.int16), "PCMU")  # 100 ms
    with bridged("PCMU", "PCMU") as (engine, customer, agent):

        def start_prompt(tick: int) -> None:
            if tick == 5:
                customer.play(prompt)

        _, to_customer = run_ticks(engine, customer, agent, speech_like(0.4), reply, start_prompt)
    answered = decode(encode(reply, "PCMU"), "PCMU")
    late = np.concatenate([np.zeros(LOOKAHEAD, dtype=np.int16), answered])  # the look-ahead
    assert np.array_equal(to_customer[:800], late[:800])
    assert (to_customer[800:1600] == decode(prompt, "PCMU")).all()
    # After the prompt: the agent again, from what the agent says then.
    assert np.array_equal(to_customer[1760:], late[1760 : to_customer.size])


def test_a_keyed_tone_never_reaches_the_agent_and_still_reaches_the_customer_leg() -> None:
    digits: list[DtmfEvent] = []
    audio = speech_like(1.2).astype(np.float64) * 0.3
    onset, length = 3000 + 17, 640
    audio[onset : onset + length] = key_tone(852, 1477, length, -10)  # "9", 80 ms
    audio[onset + length : onset + length + 400] = 0
    samples = np.round(audio).astype(np.int16)
    with bridged("PCMU", "PCMA", on_dtmf=digits.append) as (engine, customer, agent):
        to_agent, _ = run_ticks(engine, customer, agent, samples)
    assert [e.digit for e in digits if e.kind == "start"] == ["9"]
    assert scan(to_agent) == []
    keyed = to_agent[LOOKAHEAD + onset : LOOKAHEAD + onset + length].astype(np.float64)
    # The mask: a 440 Hz tone at -20 dBm0, nothing of the key's 852 and 1477 Hz.
    t = np.arange(keyed.size) / 8000
    for freq, present in ((440.0, True), (852.0, False), (1477.0, False)):
        amplitude = 2 * abs(np.dot(keyed, np.exp(-2j * np.pi * freq * t))) / keyed.size
        level = 20 * np.log10(max(amplitude, 1e-9) / DBM0_PEAK)
        assert (level > -22) if present else (level < -50), (freq, level)


def band_levels(audio: np.ndarray, freqs: tuple[float, ...]) -> list[float]:
    """Each frequency's level in `audio`, dBm0."""
    samples = audio.astype(np.float64)
    t = np.arange(samples.size) / 8000
    levels = []
    for freq in freqs:
        amplitude = 2 * abs(np.dot(samples, np.exp(-2j * np.pi * freq * t))) / samples.size
        levels.append(float(20 * np.log10(max(amplitude, 1e-9) / DBM0_PEAK)))
    return levels


def test_an_agent_keyed_tone_never_reaches_the_customer() -> None:
    audio = speech_like(1.2, seed=4).astype(np.float64) * 0.3
    onset, length = 4000 + 23, 560
    audio[onset : onset + length] = key_tone(770, 1336, length, -3)  # "5", 70 ms
    audio[onset + length : onset + length + 400] = 0
    samples = np.round(audio).astype(np.int16)
    assert [d for d, _start, _end in scan(decode(encode(samples, "PCMA"), "PCMA"))] == ["5"]
    with bridged("PCMU", "PCMA") as (engine, customer, agent):
        _, to_customer = run_ticks(engine, customer, agent, np.zeros_like(samples), samples)
    assert scan(to_customer) == []
    keyed = to_customer[LOOKAHEAD + onset : LOOKAHEAD + onset + length]
    mask, low, high = band_levels(keyed, (440.0, 770.0, 1336.0))
    assert mask > -22 and low < -50 and high < -50, (mask, low, high)
    # Energy anywhere in the DTMF band (650-1700 Hz) while the key was held: none left.
    window = np.hanning(keyed.size)
    spectrum = np.abs(np.fft.rfft(keyed.astype(np.float64) * window)) * 2 / window.sum()
    freqs = np.fft.rfftfreq(keyed.size, 1 / 8000)
    band = spectrum[(freqs >= 650) & (freqs <= 1700)]
    assert 20 * np.log10(band.max() / DBM0_PEAK) < -50
    # The agent's speech around the key: bit-exact, only late (PCMA to PCMU).
    said = decode(encode(decode(encode(samples, "PCMA"), "PCMA"), "PCMU"), "PCMU")
    clear = onset - 160  # well before the key's guard
    assert np.array_equal(to_customer[LOOKAHEAD:clear], said[: clear - LOOKAHEAD])
    after = onset + length + 400
    end = to_customer.size - LOOKAHEAD
    assert np.array_equal(to_customer[after:], said[after - LOOKAHEAD : end])


def test_agent_speech_reaches_the_customer_late_by_the_lookahead_and_otherwise_intact() -> None:
    reply = speech_like(1.0, seed=9)
    with bridged("PCMU", "PCMU") as (engine, customer, agent):
        _, to_customer = run_ticks(engine, customer, agent, np.zeros_like(reply), reply)
    answered = decode(encode(reply, "PCMU"), "PCMU")
    assert np.array_equal(to_customer[LOOKAHEAD:], answered[: answered.size - LOOKAHEAD])
    assert not to_customer[:LOOKAHEAD].any()


def test_both_directions_of_every_bridge_take_one_masker_call_a_tick() -> None:
    with bridged("PCMU", "PCMA") as (engine, customer, agent):
        masker = engine.masker
        assert masker is not None
        calls: list[int] = []
        process = masker.process

        def counted(slots: list[int] | npt.NDArray[np.intp], block: Int16s) -> Int16s:
            calls.append(len(slots))
            return process(slots, block)

        masker.process = counted  # type: ignore[method-assign]
        run_ticks(engine, customer, agent, speech_like(0.2), speech_like(0.2, seed=6))
    assert calls == [2] * 10  # one call a tick, a row for each direction


def test_the_audio_given_to_the_masker_is_zeroed_once_masked() -> None:
    # Each tick's block of both legs' audio holds the customer's keypad tones unmasked: the
    # engine zeroes it once the masker has it (freed, it would stay in the heap until reused).
    audio = speech_like(0.4).astype(np.float64) * 0.3
    audio[800:1440] = key_tone(852, 1477, 640, -10)
    samples = np.round(audio).astype(np.int16)
    with bridged("PCMU", "PCMA") as (engine, customer, agent):
        masker = engine.masker
        assert masker is not None
        given: list[Int16s] = []
        loud: list[bool] = []
        process = masker.process

        def keep(slots: list[int] | npt.NDArray[np.intp], block: Int16s) -> Int16s:
            given.append(block)
            loud.append(bool(np.abs(block).max() > 1000))
            return process(slots, block)

        masker.process = keep  # type: ignore[method-assign]
        to_agent, _ = run_ticks(engine, customer, agent, samples)
    assert scan(to_agent) == []
    assert len(given) == 20 and any(loud)  # the audio, tones and all, went through them...
    assert not any(block.any() for block in given)  # ...and none of them holds it now


@pytest.mark.parametrize("mask", ["silence", "noise"])
def test_other_masks(mask: str) -> None:
    audio = np.zeros(8000)
    audio[2000:2800] = key_tone(697, 1209, 800, 0)
    samples = np.round(audio).astype(np.int16)
    with bridged("PCMU", "PCMU", mask=mask) as (engine, customer, agent):
        to_agent, to_customer = run_ticks(engine, customer, agent, samples, samples)
    for heard in (to_agent, to_customer):  # the same mask both ways
        keyed = heard[LOOKAHEAD + 2000 : LOOKAHEAD + 2800].astype(np.float64)
        rms = np.sqrt(np.mean(keyed**2))
        if mask == "silence":
            assert rms == 0
        else:
            assert 0 < rms < DBM0_PEAK * 10 ** (-40 / 20)
        assert scan(heard) == []


def test_telephone_events_are_not_forwarded() -> None:
    digits: list[DtmfEvent] = []
    with bridged("PCMU", "PCMU", on_dtmf=digits.append) as (engine, customer, agent):

        def press(tick: int) -> None:
            if 5 <= tick < 10:
                payload = struct.pack("!BBH", 7, (0x80 if tick == 9 else 0) | 10, 160 * (tick - 4))
                packet = build_rtp(101, 1000 + tick, 8000, 0x77, payload, tick == 5)
                customer.receive(packet, CUSTOMER, tick * 0.02 + 0.01)

        to_agent, _ = run_ticks(
            engine, customer, agent, np.zeros(4000, dtype=np.int16), None, press
        )
    assert [(e.digit, e.kind) for e in digits] == [("7", "start"), ("7", "end")]
    assert not to_agent.any()  # the silence the customer sent, nothing else


def test_unbridge_and_close_stop_the_crossing() -> None:
    with bridged("PCMU", "PCMU") as (engine, customer, agent):
        engine.unbridge(50000)
        assert customer.relay_in is None and agent.relay_in is None
        to_agent, to_customer = run_ticks(
            engine, customer, agent, speech_like(0.2), speech_like(0.2, seed=5)
        )
        assert not to_agent.any() and not to_customer.any()  # silence both ways
        engine.bridge(50000, 50002, "tone")
        engine.close(50002)  # the agent's leg goes: the bridge with it
        assert engine.bridges == {} and customer.relay_in is None
        engine.attach(50002, agent)


def test_bridge_refuses_unknown_ports_and_masks() -> None:
    with bridged("PCMU", "PCMU") as (engine, _customer, _agent):
        with pytest.raises(KeyError):
            engine.bridge(50000, 50010, "tone")
        with pytest.raises(ValueError):
            engine.bridge(50000, 50002, "music")
        with pytest.raises(ValueError):
            engine.bridge(50000, 50000, "tone")


def test_the_customer_leg_always_runs_the_inband_detector_and_the_agent_leg_none() -> None:
    with bridged("PCMU", "PCMU", inband=False) as (engine, customer, agent):
        assert customer.inband and customer.inband_slot is not None
        assert not agent.inband and agent.inband_slot is None  # never attached one
        engine.unbridge(50000)
        engine.bridge(50002, 50000, "silence")  # the other way round: roles swap
        assert agent.inband and agent.inband_slot is not None
        assert not customer.inband
        engine._detect_inband()  # the slot is given back by the tick's in-band step
        assert customer.inband_slot is None


def test_audio_queued_beyond_a_packet_is_dropped_in_the_next_pause() -> None:
    session = make_session("PCMU", AGENT)
    loud = [encode(np.full(FRAME, 3000 + n, dtype=np.int16), "PCMU") for n in range(3)]
    quiet = encode(np.zeros(FRAME, dtype=np.int16), "PCMU")

    def sent() -> bytes:
        return RtpPacket.parse(session.next_packet() or b"").payload

    assert sent() == b"\xff" * FRAME  # nothing queued: silence (a tick without a packet)
    session.relay(loud[0])
    session.relay(loud[1])  # two in the next tick: a packet more than it sends
    assert sent() == loud[0]
    session.relay(quiet)  # the older of what is queued is speech: kept, a packet late
    assert sent() == loud[1]
    session.relay(loud[2])  # the older is a pause now: dropped, back to no delay
    assert sent() == loud[2]
    for _ in range(4):
        session.relay(loud[0])  # a burst: at most a packet queued beyond this tick's
    assert len(session.relay_out) == 2 * FRAME


def test_a_legs_packet_queued_extra_by_the_tick_is_dropped_in_the_next_pause() -> None:
    # Through the engine's tick (the usual row is queued inline, not by MediaSession.relay): a
    # tick without the customer's packet and one with two leave the agent a packet behind while
    # the customer speaks, and back to none queued beyond its packet once a pause reaches it.
    speech = speech_like(0.6)
    with bridged("PCMU", "PCMA") as (engine, customer, agent):
        left: list[int] = []
        for tick in range(60):
            now = tick * 0.02
            sequences = {5: [], 6: [5, 6]}.get(tick, [tick])
            for sequence in sequences:
                part = speech[sequence * FRAME : (sequence + 1) * FRAME] if sequence < 30 else None
                samples = part if part is not None else np.zeros(FRAME, dtype=np.int16)
                payload = encode(samples, "PCMU")
                packet = build_rtp(0, sequence, sequence * FRAME, 0x77, payload, sequence == 0)
                customer.receive(packet, CUSTOMER, now)
            engine._detect_inband()
            engine._relay(now)
            assert agent.next_packet(now) is not None
            left.append(len(agent.relay_out))
        assert left[:6] == [0] * 6
        assert left[6:28] == [FRAME] * 22  # speech: kept, a packet late
        assert left[-1] == 0  # the pause (and the look-ahead's 30 ms) passed: dropped


@pytest.mark.parametrize("agent_ptime", [10, 30, 60])
def test_an_agent_leg_with_another_packet_time_gets_every_sample_once(agent_ptime: int) -> None:
    loop = asyncio.new_event_loop()
    engine = MediaEngine("127.0.0.1", 40000, 40100)
    engine._loop = loop
    customer = make_session("PCMU", CUSTOMER)
    agent = make_session("PCMA", AGENT, ptime_ms=agent_ptime)
    engine.attach(50000, customer)
    engine.attach(50002, agent)
    engine.bridge(50000, 50002, "tone")
    agent.next_send_at = 0.005  # the agent's packets due off the tick's phase
    speech = speech_like(3.0)
    out: list[np.ndarray] = []
    for tick in range(speech.size // FRAME):
        now = tick * 0.02
        payload = encode(speech[tick * FRAME : (tick + 1) * FRAME], "PCMU")
        customer.receive(build_rtp(0, tick, tick * FRAME, 5, payload), CUSTOMER, now)
        engine._relay(now)
        while agent.next_send_at <= now + 0.001:  # as _serve sends them
            out.append(decode(RtpPacket.parse(agent.next_packet() or b"").payload, "PCMA"))
            agent.next_send_at += agent_ptime / 1000
    heard = np.concatenate(out)
    said = decode(encode(decode(encode(speech, "PCMU"), "PCMU"), "PCMA"), "PCMA")
    # After the first 0.5 s (the first packets fill up), one constant delay: nothing dropped,
    # nothing repeated, no silence inserted.
    probe = said[4000:8000].astype(np.float64)
    lag = max(range(1200), key=lambda n: float(np.dot(probe, heard[4000 + n : 8000 + n])))
    count = min(heard.size - lag, said.size) - 4000
    assert count > 2 * 8000
    assert np.array_equal(heard[4000 + lag : 4000 + lag + count], said[4000 : 4000 + count])
    for port in (50000, 50002):
        engine.close(port)
    assert engine._tick_task is not None
    engine._tick_task.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_queued_audio_is_a_pause_exactly_when_its_decoded_peak_is_quiet(codec: str) -> None:
    """`relay` tells a pause by the G.711 codes themselves (no decoding a packet): the same
    answer as decoding the queued audio and comparing its peak with QUIET_PEAK, code by code
    and for mixed packets."""
    rng = np.random.default_rng(9)
    codes = np.arange(256, dtype=np.uint8)
    peaks = np.abs(decode(codes.tobytes(), codec).astype(np.int32))
    quiet = codes[peaks <= QUIET_PEAK]
    loud = codes[peaks > QUIET_PEAK]
    assert quiet.size and loud.size
    for case in range(200):
        older = rng.choice(quiet, FRAME)
        if case % 2:  # one loud sample anywhere makes it speech
            older[rng.integers(FRAME)] = rng.choice(loud)
        session = make_session(codec, AGENT)
        session.relay(older.tobytes())
        session.relay(rng.choice(loud, FRAME).tobytes())  # a packet more than it sends
        is_quiet = int(np.abs(decode(older.tobytes(), codec)).max()) <= QUIET_PEAK
        assert len(session.relay_out) == (FRAME if is_quiet else 2 * FRAME)
