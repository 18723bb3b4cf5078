"""MediaEngine's in-band DTMF: one detector call per receive pass serves every in-band session.

No sockets: sessions are attached under port numbers the engine never opened (so nothing is
sent), audio is handed to `MediaSession.receive` as the socket would, and the tick's in-band
step (`_detect_inband`) is called by hand after each 20 ms packet.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest

from spg_media.dtmf.inband.params import Events
from spg_media.dtmf.rfc4733 import DtmfEvent
from spg_media.rtp.g711 import encode
from spg_media.rtp.packet import build_rtp
from spg_media.rtp.session import MAX_PENDING_FRAMES, MediaEngine, MediaSession, MediaStats
from spg_media.testcaller import DTMF_TONES, dtmf_tone

CALLER = ("127.0.0.1", 40000)
FRAME = 160


def keyed_audio(keys: str, codec: str) -> list[bytes]:
    """20 ms G.711 payloads: 100 ms of silence, then per key 80 ms of tone and 80 ms of silence."""
    parts = [np.zeros(800, dtype=np.int16)]
    for key in keys:
        parts += [dtmf_tone(key, 0.08), np.zeros(640, dtype=np.int16)]
    parts.append(np.zeros(1600, dtype=np.int16))
    samples = np.concatenate(parts)
    samples = np.concatenate([samples, np.zeros((-samples.size) % FRAME, dtype=np.int16)])
    audio = encode(samples, codec)
    return [audio[i : i + FRAME] for i in range(0, len(audio), FRAME)]


def make_session(codec: str, heard: list[DtmfEvent], inband: bool = True) -> MediaSession:
    return MediaSession(
        codec=codec,
        remote=("127.0.0.1", 9),
        dtmf_payload_type=101,
        on_dtmf=heard.append,
        inband=inband,
    )


def feed(engine: MediaEngine, sessions: dict[int, tuple[MediaSession, list[bytes]]]) -> None:
    """One packet per session per 20 ms tick, then the tick's detector step."""
    ticks = max(len(frames) for _, frames in sessions.values())
    for tick in range(ticks):
        now = tick * 0.02
        for session, frames in sessions.values():
            if tick < len(frames):
                pt = 0 if session.codec == "PCMU" else 8
                packet = build_rtp(pt, tick, tick * FRAME, 0x10, frames[tick], tick == 0)
                session.receive(packet, CALLER, now)
        engine._detect_inband()


def starts(events: list[DtmfEvent]) -> str:
    assert all(e.source == "inband" for e in events)
    return "".join(e.digit for e in events if e.kind == "start")


def run_in_loop(test: object) -> None:
    async def body() -> None:
        test()  # type: ignore[operator]

    asyncio.run(body())


def record_calls(engine: MediaEngine) -> list[tuple[int, int]]:
    """The shape (channels, samples) of each block the engine's detector is given from now on."""
    assert engine.inband is not None
    shapes: list[tuple[int, int]] = []
    process = engine.inband.process

    def recorded(slots: Sequence[int], block: npt.ArrayLike, now: float) -> Events:
        shapes.append(np.shape(block))
        return process(slots, block, now)

    engine.inband.process = recorded  # type: ignore[method-assign]
    return shapes


def test_one_detector_call_serves_sessions_of_both_codecs_without_crosstalk() -> None:
    def test() -> None:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        heard_u: list[DtmfEvent] = []
        heard_a: list[DtmfEvent] = []
        heard_b: list[DtmfEvent] = []
        u = make_session("PCMU", heard_u)
        a = make_session("PCMA", heard_a)
        b = make_session("PCMA", heard_b)
        for port, session in ((50000, u), (50002, a), (50004, b)):
            engine.attach(port, session)
        assert engine.inband is not None
        assert len({u.inband_slot, a.inband_slot, b.inband_slot}) == 3
        feed(
            engine,
            {
                50000: (u, keyed_audio("4111#", "PCMU")),
                50002: (a, keyed_audio("0731", "PCMA")),
                50004: (b, keyed_audio("", "PCMA")),  # silence only
            },
        )
        assert starts(heard_u) == "4111#"
        assert starts(heard_a) == "0731"
        assert heard_b == []
        assert [e.kind for e in heard_u] == ["start", "end"] * 5
        for port in (50000, 50002, 50004):
            engine.close(port)
        assert engine._tick_task is not None
        engine._tick_task.cancel()

    run_in_loop(test)


def test_stop_inband_gives_the_channel_back_and_hears_no_more() -> None:
    def test() -> None:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        heard: list[DtmfEvent] = []
        session = make_session("PCMU", heard)
        engine.attach(50000, session)
        frames = keyed_audio("55", "PCMU")
        feed(engine, {50000: (session, frames[:11])})  # the first 5 is heard
        assert starts(heard) == "5"
        session.stop_inband()  # RFC 4733 seen with dtmf.inband = auto
        feed(engine, {50000: (session, frames[11:])})
        assert starts(heard) == "5"
        assert session.inband_slot is None and not session.pending_audio
        engine.close(50000)
        assert engine._tick_task is not None
        engine._tick_task.cancel()

    run_in_loop(test)


def test_sessions_without_inband_cost_the_detector_nothing() -> None:
    def test() -> None:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        heard: list[DtmfEvent] = []
        session = make_session("PCMU", heard, inband=False)
        engine.attach(50000, session)
        assert engine.inband is None and session.inband_slot is None
        for tick, frame in enumerate(keyed_audio("1", "PCMU")):
            session.receive(build_rtp(0, tick, tick * FRAME, 1, frame, False), CALLER, tick / 50)
        assert session.pending_audio == [] and heard == []
        engine.close(50000)
        assert engine._tick_task is not None
        engine._tick_task.cancel()

    run_in_loop(test)


def test_packets_either_side_of_the_tick_boundary_still_make_one_detector_call() -> None:
    # Packets land either side of a tick: a channel has none in one tick and two in the next.
    # With both codecs too, each tick is still one (channels × 160) block and one call (a call
    # has a fixed cost); each channel's digits are read exactly.
    def test() -> None:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        assert engine.inband is None
        sessions = []
        keys = ["4111", "0731#", "5", "", "96*", "2580"]
        for n, digits in enumerate(keys):
            heard: list[DtmfEvent] = []
            session = make_session("PCMU" if n % 2 else "PCMA", heard)
            engine.attach(50000 + 2 * n, session)
            sessions.append((session, keyed_audio(digits, session.codec), heard, digits))
        calls = record_calls(engine)
        ticks = max(len(frames) for _, frames, _, _ in sessions) + 2
        for tick in range(ticks):
            for n, (session, frames, _, _) in enumerate(sessions):
                # Packet i arrives in tick i, or one tick late when (i + n) % 3 == 0.
                for i in (tick - 1, tick):
                    late = (i + n) % 3 == 0
                    if 0 <= i < len(frames) and (i == tick - 1) == late:
                        pt = 0 if session.codec == "PCMU" else 8
                        packet = build_rtp(pt, i, i * FRAME, 0x10 + n, frames[i], i == 0)
                        session.receive(packet, CALLER, tick * 0.02)
            before = len(calls)
            engine._detect_inband()
            assert len(calls) - before <= 1, tick
        assert max(rows for rows, _ in calls) == len(sessions)  # both codecs in one block
        for _, _, heard, digits in sessions:
            assert starts(heard) == digits
        for n in range(len(sessions)):
            engine.close(50000 + 2 * n)
        assert engine._tick_task is not None
        engine._tick_task.cancel()

    run_in_loop(test)


def feed_steady_and_bursty(
    engine: MediaEngine,
    steady: MediaSession,
    bursty: MediaSession,
    keys: tuple[str, str],
    burst: int,
) -> None:
    """`steady` gets keyed_audio(keys[0]) a packet a tick; `bursty` gets keyed_audio(keys[1])
    `burst` packets at a time every `burst` ticks (a stalled path); the detector step after
    each tick, and 8 ticks more at the end."""
    pt = 0 if steady.codec == "PCMU" else 8
    frames_steady = keyed_audio(keys[0], steady.codec)
    frames_bursty = keyed_audio(keys[1], bursty.codec)
    for tick in range(max(len(frames_steady), len(frames_bursty)) + 8):
        if tick < len(frames_steady):
            packet = build_rtp(pt, tick, tick * FRAME, 1, frames_steady[tick], tick == 0)
            steady.receive(packet, CALLER, tick * 0.02)
        if tick % burst == burst - 1:
            for i in range(tick - burst + 1, min(tick + 1, len(frames_bursty))):
                packet = build_rtp(pt, i, i * FRAME, 2, frames_bursty[i], i == 0)
                bursty.receive(packet, CALLER, tick * 0.02)
        engine._detect_inband()


def test_a_channel_ticks_behind_catches_up_in_one_more_call() -> None:
    # A sender whose packets come four at a time (a stalled path): that channel gives all it
    # has, in a second call beside the others' 20 ms block, and is read exactly.
    def test() -> None:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        heard_steady: list[DtmfEvent] = []
        heard_bursty: list[DtmfEvent] = []
        steady = make_session("PCMU", heard_steady)
        bursty = make_session("PCMU", heard_bursty)
        engine.attach(50000, steady)
        engine.attach(50002, bursty)
        calls = record_calls(engine)
        feed_steady_and_bursty(engine, steady, bursty, ("12", "369"), burst=4)
        assert 4 * FRAME in [size for _, size in calls]  # the bursts, each in one more call
        assert starts(heard_steady) == "12"
        assert starts(heard_bursty) == "369"
        engine.close(50000)
        engine.close(50002)
        assert engine._tick_task is not None
        engine._tick_task.cancel()

    run_in_loop(test)


def test_the_audio_given_to_the_detector_is_zeroed_once_it_has_been_heard() -> None:
    # The tick's joined G.711 codes and their decoding hold every channel's keypad tones: the
    # engine zeroes both after the detector call (freed, they would stay in the heap). The
    # usual 20 ms block and a catch-up call's longer one alike; the keys are still heard.
    def test() -> None:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        heard_steady: list[DtmfEvent] = []
        heard_bursty: list[DtmfEvent] = []
        steady = make_session("PCMA", heard_steady)
        bursty = make_session("PCMA", heard_bursty)
        engine.attach(50000, steady)
        engine.attach(50002, bursty)
        assert engine.inband is not None
        given: list[npt.NDArray[np.int16]] = []
        loud: list[bool] = []
        process = engine.inband.process

        def keep(slots: Sequence[int], block: npt.ArrayLike, now: float) -> Events:
            array = np.asarray(block)
            given.append(array)
            loud.append(bool(np.abs(array).max() > 1000))
            return process(slots, block, now)

        engine.inband.process = keep  # type: ignore[method-assign]
        feed_steady_and_bursty(engine, steady, bursty, ("47", "58"), burst=3)
        assert starts(heard_steady) == "47" and starts(heard_bursty) == "58"
        assert any(loud)  # the tones went through these blocks...
        assert {block.shape[1] for block in given} >= {FRAME, 3 * FRAME}
        assert all(not block.any() for block in given)  # ...and none of them holds them now
        engine.close(50000)
        engine.close(50002)
        assert engine._tick_task is not None
        engine._tick_task.cancel()

    run_in_loop(test)


def _events_fed(
    schedule: list[list[int]], seq_of: list[int], keys: str
) -> tuple[list[DtmfEvent], int]:
    """One PCMU session fed keyed_audio(keys): at tick t the packets schedule[t] (indexes into
    the audio, in that order), with RTP sequence numbers seq_of[index]. Returns the events
    heard and the session's count of audio packets dropped as late."""
    heard: list[DtmfEvent] = []
    late: list[int] = []

    def test() -> None:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        session = make_session("PCMU", heard)
        engine.attach(50000, session)
        frames = keyed_audio(keys, "PCMU")
        for tick, indexes in enumerate(schedule):
            for i in indexes:
                packet = build_rtp(0, seq_of[i], i * FRAME, 7, frames[i], i == 0)
                session.receive(packet, CALLER, tick * 0.02)
            engine._detect_inband()
        late.append(session.stats.audio_late)
        engine.close(50000)
        assert engine._tick_task is not None
        engine._tick_task.cancel()

    run_in_loop(test)
    return heard, late[0]


def test_audio_reordered_within_a_tick_is_put_back_in_sequence() -> None:
    # Two packets every other tick, the second sent before the first: without reordering,
    # 20 ms of tone would land in the silence between keys and silence inside them.
    count = len(keyed_audio("5858", "PCMU"))
    seq = [1000 + i for i in range(count)]
    pairs = [[i, i + 1] if i + 1 < count else [i] for i in range(0, count, 2)]
    in_order = [ticks for pair in pairs for ticks in (pair, [])]
    swapped = [ticks for pair in pairs for ticks in (pair[::-1], [])]
    reordered, late = _events_fed(swapped, seq, "5858")
    assert starts(reordered) == "5858"
    assert late == 0
    reference, _ = _events_fed(in_order, seq, "5858")
    assert [(e.kind, e.digit, e.at, e.duration_ms) for e in reordered] == [
        (e.kind, e.digit, e.at, e.duration_ms) for e in reference
    ]


def test_audio_too_late_is_dropped_and_counted_and_a_new_run_is_taken() -> None:
    count = len(keyed_audio("14", "PCMU"))
    seq = [65530 + i for i in range(count)]  # wrapping through 65535 -> 0
    half = count // 2
    seq[half:] = [64000 + i for i in range(count - half)]  # a restart: far behind, a new run
    schedule = [[i] for i in range(count)]
    schedule[3], schedule[4] = [], [4, 3]  # 3 (silence) comes in the same tick after 4
    heard, late = _events_fed(schedule, seq, "14")
    assert starts(heard) == "14"
    assert late == 0  # put back in place
    schedule[4], schedule[5] = [4], [5, 3]  # after 4 was given to the detector: dropped
    heard, late = _events_fed(schedule, seq, "14")
    assert starts(heard) == "14"
    assert late == 1


# ---- the same audio however it arrives -------------------------------------------------------

CARD = "4111111111111111#"  # the load kit's card: repeats of one key, 200 ms apart
FAINT_KEYS = "2580*#093"


def loadkit_keyed(keys: str, seed: int) -> list[bytes]:
    """20 ms PCMA payloads as the load kit's in-band caller streams them (bench/loadkit.py,
    `caller_audio`): line noise (RMS 30, about -60 dBm0) all along, each key a 100 ms tone
    (`dtmf_tone`: -15 dBm0 a frequency) every 300 ms, starting at any sample of a frame."""
    rng = np.random.default_rng(seed)
    samples = round((0.9 + 0.3 * len(keys)) * 8000)
    audio = rng.normal(0.0, 30.0, samples + (-samples) % FRAME)
    for n, key in enumerate(keys):
        start = round((0.5 + 0.3 * n) * 8000) + int(rng.integers(FRAME))
        tone = dtmf_tone(key, 0.1).astype(np.float64)
        audio[start : start + tone.size] += tone
    coded = encode(np.clip(np.round(audio), -32768, 32767).astype(np.int16), "PCMA")
    return [coded[i : i + FRAME] for i in range(0, len(coded), FRAME)]


def faint_keyed(keys: str, seed: int) -> list[bytes]:
    """At the detector's limits: 45 ms tones 45 ms apart (40 ms is the least it must take of
    either), -32 dBm0 both tones together with 6 dB of normal twist, white noise 20 dB below."""
    rng = np.random.default_rng(seed)
    peak = 32767.0 * 10.0 ** (-3.14 / 20.0)  # a 0 dBm0 sine's
    row_amp = peak * np.sqrt(10 ** (-32 / 10) / (1 + 10 ** (-6 / 10)))
    col_amp = row_amp * 10 ** (-6 / 20)
    t = np.arange(360) / 8000
    parts = [np.zeros(4000 + int(rng.integers(FRAME)))]
    for key in keys:
        low, high = DTMF_TONES[key]
        phases = rng.uniform(0, 2 * np.pi, 2)
        parts.append(
            row_amp * np.sin(2 * np.pi * low * t + phases[0])
            + col_amp * np.sin(2 * np.pi * high * t + phases[1])
        )
        parts.append(np.zeros(360))
    audio = np.concatenate([*parts, np.zeros(3200)])
    noise_power = (row_amp**2 + col_amp**2) / 2 / 100
    audio += rng.normal(0.0, np.sqrt(noise_power), audio.size)
    audio = np.concatenate([audio, np.zeros((-audio.size) % FRAME)])
    coded = encode(np.clip(np.round(audio), -32768, 32767).astype(np.int16), "PCMA")
    return [coded[i : i + FRAME] for i in range(0, len(coded), FRAME)]


# Arrival patterns: when each payload of a stream arrives (seconds; its delivery order is by
# time, then index), every payload kept. The sender's clock: payload i is sent at i × 20 ms.
def steady(count: int, rng: random.Random) -> list[float]:
    return [i * 0.02 + 0.001 for i in range(count)]


def jittered(count: int, rng: random.Random) -> list[float]:
    """Up to 35 ms late, each, in order."""
    times: list[float] = []
    for i in range(count):
        times.append(max(times[-1] if times else 0.0, i * 0.02 + rng.uniform(0.0, 0.035)))
    return times


def sender_bursts(count: int, rng: random.Random) -> list[float]:
    """Now and then the sender stalls and sends the 2 to 5 packets held at once."""
    times: list[float] = []
    i = 0
    while i < count:
        held = rng.randint(2, 5) if rng.random() < 0.15 else 1
        last = min(count, i + held) - 1
        times += [last * 0.02 + 0.001] * (last + 1 - i)
        i = last + 1
    return times


def reordered(count: int, rng: random.Random) -> list[float]:
    """Now and then a packet comes after the next one (in the same tick)."""
    times = steady(count, rng)
    for i in range(0, count - 1):
        if rng.random() < 0.2 and times[i] < times[i + 1]:
            times[i] = times[i + 1] + 0.0005
    return times


PATTERNS: dict[str, Callable[[int, random.Random], list[float]]] = {
    "steady": steady,
    "jittered": jittered,
    "sender bursts": sender_bursts,
    "reordered": reordered,
}


def steady_ticks(end: float) -> list[float]:
    return [k * 0.02 + 0.0195 for k in range(round(end / 0.02) + 1)]


def stalled_ticks(end: float, rng: random.Random) -> list[float]:
    """A tick now and then 40 to 200 ms late (a busy event loop); the ones it held up then run
    back to back (as MediaEngine._tick catches up)."""
    ticks: list[float] = []
    due = 0.0195
    while due < end:
        if rng.random() < 0.08:
            late = due + rng.uniform(0.04, 0.2)
            while due < late:
                ticks.append(late)
                due += 0.02
        else:
            ticks.append(due)
            due += 0.02
    return ticks


@dataclass
class Stream:
    frames: list[bytes]
    arrivals: list[float]
    heard: list[DtmfEvent] = field(default_factory=list)
    session: MediaSession | None = None


def through_engine(streams: list[Stream], ticks: list[float]) -> MediaEngine:
    """All streams at once through one engine: at each tick the payloads arrived by then are
    received (each dated by its arrival), then the tick's in-band step runs."""

    def test() -> None:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        order = []
        for n, stream in enumerate(streams):
            stream.session = make_session("PCMA", stream.heard)
            engine.attach(50000 + 2 * n, stream.session)
            order += [(at, i, n) for i, at in enumerate(stream.arrivals)]
        order.sort()
        next_packet = 0
        for tick in ticks:
            while next_packet < len(order) and order[next_packet][0] <= tick:
                at, i, n = order[next_packet]
                stream = streams[n]
                packet = build_rtp(
                    8, (7000 + i) & 0xFFFF, 320 + i * FRAME, n, stream.frames[i], i == 0
                )
                assert stream.session is not None
                stream.session.receive(packet, CALLER, at)
                next_packet += 1
            engine._detect_inband()
        for n in range(len(streams)):
            engine.close(50000 + 2 * n)
        assert engine._tick_task is not None
        engine._tick_task.cancel()
        holder.append(engine)

    holder: list[MediaEngine] = []
    run_in_loop(test)
    return holder[0]


def decided(events: list[DtmfEvent]) -> list[tuple[str, str, float | None]]:
    """What the detector decided, apart from when the audio arrived: each event's kind, digit
    and duration (from sample positions)."""
    return [(e.kind, e.digit, e.duration_ms) for e in events]


@pytest.mark.parametrize("stalls", [False, True])
def test_the_same_digits_whatever_the_arrival_pattern_and_the_tick(stalls: bool) -> None:
    # Load-kit keying (100 ms tones, a card of repeated keys) and keying at the detector's
    # limits, each stream arriving steadily, jittered, in the sender's bursts or reordered,
    # all through one engine whose ticks run on time or now and then stall 40-200 ms. Every
    # stream keeps all its audio, so every one must give the digits and durations it gives
    # fed alone and on time. (With several calls a tick, one per backlog size, the detector
    # once lost a channel's past, and a late burst was once taken for a pause.)
    rng = random.Random(5 if stalls else 4)
    audio = {
        "card": [loadkit_keyed(CARD, seed) for seed in range(4)],
        "faint": [faint_keyed(FAINT_KEYS, seed) for seed in range(3)],
    }
    expected = {"card": CARD, "faint": FAINT_KEYS}
    alone: dict[tuple[str, int], list[tuple[str, str, float | None]]] = {}
    for kind, streams in audio.items():
        for seed, frames in enumerate(streams):
            single = Stream(frames, steady(len(frames), rng))
            through_engine([single], steady_ticks(len(frames) * 0.02 + 0.2))
            assert starts(single.heard) == expected[kind], (kind, seed)
            alone[kind, seed] = decided(single.heard)
    runs: list[tuple[str, str, int, Stream]] = []
    for name, pattern in PATTERNS.items():
        for kind, streams in audio.items():
            for seed, frames in enumerate(streams):
                runs.append((name, kind, seed, Stream(frames, pattern(len(frames), rng))))
    end = max(max(stream.arrivals) for *_, stream in runs) + 0.3
    ticks = stalled_ticks(end, rng) if stalls else steady_ticks(end)
    through_engine([stream for *_, stream in runs], ticks)
    for name, kind, seed, stream in runs:
        assert stream.session is not None
        stats = stream.session.stats
        assert (stats.audio_late, stats.audio_dropped, stats.audio_gaps) == (0, 0, 0), name
        assert decided(stream.heard) == alone[kind, seed], (name, kind, seed)


def test_a_tick_over_a_second_late_drops_the_newest_audio_and_counts_it() -> None:
    # The detector's queue holds MAX_PENDING_FRAMES payloads (1 s): a tick later than that
    # keeps the oldest second and drops the rest, counted; the audio after the drop does not
    # follow what the detector was given (by the RTP timestamps): its channel restarts, counted.
    frames = loadkit_keyed(CARD, 9)
    stream = Stream(frames, steady(len(frames), random.Random(0)))
    ticks = steady_ticks(len(frames) * 0.02 + 0.2)
    stall_at = 100  # a tick at 2 s, during the keys, that comes 1.3 s late
    ticks = [*ticks[:stall_at], ticks[stall_at] + 1.3, *ticks[stall_at + 66 :]]
    through_engine([stream], ticks)
    assert stream.session is not None
    stats = stream.session.stats
    assert stats.audio_dropped == 66 - MAX_PENDING_FRAMES  # 1.32 s of packets, 1 s kept
    assert stats.audio_gaps == 1
    counts = stream.session.inband_counts()
    assert counts["inband_dropped"] == stats.audio_dropped and counts["inband_gaps"] == 1
    assert counts["inband_backlog_ms"] == MAX_PENDING_FRAMES * 20
    assert len(starts(stream.heard)) < len(CARD)  # the keys in the 320 ms dropped are lost


def test_lost_audio_splits_a_press_and_late_audio_does_not() -> None:
    # A 400 ms tone. Packets lost for 120 ms in its middle (RTP timestamps jump past the
    # detector's GAP_BREAK_S): the press is not bridged over them, it is two. The same
    # packets held by the sender for 160 ms and then sent at once: nothing is missing, it is
    # one press (by arrival times alone, the first of them given to the detector in a tick
    # before the rest looks like a pause of 140 ms).
    samples = np.concatenate(
        [np.zeros(800), dtmf_tone("7", 0.4).astype(np.float64), np.zeros(1600)]
    )
    coded = encode(np.round(samples).astype(np.int16), "PCMA")
    frames = [coded[i : i + FRAME] for i in range(0, len(coded), FRAME)]
    on_time = steady(len(frames), random.Random(0))
    lost = Stream(frames, on_time)
    kept = [i for i in range(len(frames)) if not 14 <= i < 20]  # 6 payloads: 120 ms
    lost_frames = [frames[i] for i in kept]

    def test() -> None:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        lost.session = make_session("PCMA", lost.heard)
        engine.attach(50000, lost.session)
        for tick, i in enumerate(kept):
            packet = build_rtp(8, i, i * FRAME, 3, lost_frames[tick], i == 0)
            lost.session.receive(packet, CALLER, i * 0.02 + 0.001)
            engine._detect_inband()
        engine.close(50000)
        assert engine._tick_task is not None
        engine._tick_task.cancel()

    run_in_loop(test)
    assert [(e.kind, e.digit) for e in lost.heard] == [("start", "7"), ("end", "7")] * 2
    assert lost.session is not None and lost.session.stats.audio_gaps == 1

    held = list(on_time)
    for i in range(12, 20):  # sent together with packet 20: the first just before a tick
        held[i] = held[20] if i > 12 else held[20] - 0.002
    late = Stream(frames, held)
    others = [
        Stream(loadkit_keyed("12", seed), steady(len(frames), random.Random(0)))
        for seed in range(3)
    ]
    through_engine([late, *others], steady_ticks(len(frames) * 0.02 + 0.2))
    assert [(e.kind, e.digit) for e in late.heard] == [("start", "7"), ("end", "7")]
    assert late.session is not None and late.session.stats.audio_gaps == 0


def test_an_empty_audio_payload_before_a_gap_does_not_stop_the_channel() -> None:
    # An audio packet with no payload holds no samples: it is not queued. (Queued, a gap
    # right after it left the tick nothing to take off the queue's head, and the channel
    # heard nothing more: the fuzz target rtp_session found it.)
    def test() -> None:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        heard: list[DtmfEvent] = []
        session = make_session("PCMU", heard)
        engine.attach(50000, session)
        audio = keyed_audio("8", "PCMU")
        session.receive(build_rtp(0, 1, 0, 7, audio[0], True), CALLER, 0.0)
        engine._detect_inband()
        session.receive(build_rtp(0, 2, FRAME, 7, b""), CALLER, 0.02)  # no payload
        for n, frame in enumerate(audio[1:], start=10):  # 160 ms of packets missing
            session.receive(build_rtp(0, n, n * FRAME, 7, frame), CALLER, 0.2 + n * 0.02)
            engine._detect_inband()
        assert not session.pending_audio
        assert session.stats.audio == len(audio) + 1
        engine.close(50000)
        assert engine._tick_task is not None
        engine._tick_task.cancel()
        assert starts(heard) == "8"

    run_in_loop(test)


def test_a_sender_with_timestamps_on_a_wrong_clock_is_still_heard() -> None:
    # Timestamps that advance 8000 a packet (milliseconds taken for samples, say): every packet
    # looks 990 ms after the last by its timestamp, but the packets come steadily, so no audio
    # is missing and the detector is never restarted.
    frames = loadkit_keyed("4111#", 3)
    heard: list[DtmfEvent] = []
    stats: list[MediaStats] = []

    def test() -> None:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        session = make_session("PCMA", heard)
        engine.attach(50000, session)
        for i, frame in enumerate(frames):
            packet = build_rtp(8, i, (i * 8000) & 0xFFFFFFFF, 4, frame, i == 0)
            session.receive(packet, CALLER, i * 0.02 + 0.001)
            engine._detect_inband()
        stats.append(session.stats)
        engine.close(50000)
        assert engine._tick_task is not None
        engine._tick_task.cancel()

    run_in_loop(test)
    assert starts(heard) == "4111#"
    assert stats[0].audio_gaps == 0


def test_every_receive_pass_runs_the_detector_for_the_hot_channels() -> None:
    # The tick reads the sockets four times in 20 ms (RECEIVE_PASSES); after each read between
    # ticks the detector runs for the channels where a digit may be starting (`_detect_hot`),
    # so a tone whose audio came in such a pass is decided there, up to 15 ms sooner than at
    # the next tick. (The tick's own timing is the engine's: only the order of its steps is
    # checked here.)
    async def body() -> None:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        steps: list[str] = []
        receive, detect, hot, serve = (
            engine._receive, engine._detect_inband, engine._detect_hot, engine._serve
        )  # fmt: skip

        def receiving(now: float) -> None:
            steps.append("receive")
            receive(now)

        def detecting(sessions: object = None) -> None:
            steps.append("detect")
            detect(sessions)  # type: ignore[arg-type]

        def detecting_hot() -> None:
            steps.append("hot")
            hot()

        def serving(now: float) -> None:
            steps.append("serve")  # once a tick
            serve(now)

        engine._receive = receiving  # type: ignore[method-assign]
        engine._detect_inband = detecting  # type: ignore[method-assign]
        engine._detect_hot = detecting_hot  # type: ignore[method-assign]
        engine._serve = serving  # type: ignore[method-assign]
        session = make_session("PCMU", [])
        engine.attach(50000, session)
        await asyncio.sleep(0.3)
        engine.close(50000)
        assert engine._tick_task is not None
        engine._tick_task.cancel()
        receives = [n for n, step in enumerate(steps) if step == "receive"]
        # the tick's reads and at least a few of the passes between ticks
        assert len(receives) >= steps.count("serve") + 3, steps
        assert all(n + 1 < len(steps) and steps[n + 1] in ("detect", "hot") for n in receives)
        assert steps.count("detect") == steps.count("serve")  # every channel: at the tick

    asyncio.run(body())


def test_a_tone_begun_at_a_packets_end_is_decided_in_the_pass_of_the_next() -> None:
    # The tone's first packet holds only its first 2 ms (too little to screen in); the channel
    # is hot all the same (its last 10 ms rose), so the next packet, read in a pass between
    # ticks, is fed there and decides the tone at once instead of waiting for the tick.
    def test() -> None:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        heard: list[DtmfEvent] = []
        keyed = make_session("PCMU", heard)
        engine.attach(50000, keyed)
        rng = np.random.default_rng(3)
        samples = rng.normal(0.0, 30.0, 8 * FRAME)  # line noise, about -60 dBm0
        begins = 3 * FRAME - 16  # the tone's first 2 ms end packet 2
        samples[begins : begins + 800] += dtmf_tone("8", 0.1)
        audio = encode(np.clip(np.rint(samples), -32768, 32767).astype(np.int16), "PCMU")
        decided_in_pass = []
        for n in range(8):
            frame = audio[n * FRAME : (n + 1) * FRAME]
            keyed.receive(build_rtp(0, n, n * FRAME, 1, frame, n == 0), CALLER, n * 0.02)
            before = len(heard)
            engine._detect_hot()  # the pass that read it
            decided_in_pass.append(len(heard) > before)
            engine._detect_inband()  # the next tick
        assert starts(heard) == "8"
        assert decided_in_pass[3], decided_in_pass  # packet 3: 22 ms of tone
        engine.close(50000)
        assert engine._tick_task is not None
        engine._tick_task.cancel()

    run_in_loop(test)


def test_between_ticks_only_the_channels_where_a_tone_began_are_fed() -> None:
    # Each 20 ms packet comes in a pass between ticks: a hot channel's is fed there and then,
    # a cold one's waits for the tick.
    def test() -> None:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        heard: list[DtmfEvent] = []
        keyed, quiet = make_session("PCMU", heard), make_session("PCMU", [])
        engine.attach(50000, keyed)
        engine.attach(50002, quiet)
        audio = keyed_audio("5", "PCMU")  # 100 ms of silence, then the tone (80 ms)
        silence = encode(np.zeros(FRAME, dtype=np.int16), "PCMU")
        fed_between: list[bool] = []
        for n, frame in enumerate(audio):
            first = n == 0
            keyed.receive(build_rtp(0, n, n * FRAME, 1, frame, first), CALLER, n * 0.02)
            quiet.receive(build_rtp(0, n, n * FRAME, 2, silence, first), CALLER, n * 0.02)
            engine._detect_hot()  # the pass
            fed_between.append(not keyed.pending_audio)
            assert quiet.pending_audio  # silence never makes a channel hot
            engine._detect_inband()  # the tick
            assert not keyed.pending_audio and not quiet.pending_audio
        assert starts(heard) == "5"
        # cold through the silence and the tone's first packet; hot from the tone's second
        # packet until its end has been seen
        assert fed_between[:6] == [False] * 6
        assert fed_between[6:9] == [True] * 3
        for port in (50000, 50002):
            engine.close(port)
        assert engine._tick_task is not None
        engine._tick_task.cancel()

    run_in_loop(test)
