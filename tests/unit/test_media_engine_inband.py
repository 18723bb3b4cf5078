"""MediaEngine's in-band DTMF: one detector call per tick serves every in-band session.

No sockets: sessions are attached under port numbers the engine never opened (so nothing is
sent), audio is handed to `MediaSession.receive` as the socket would, and the tick's in-band
step (`_detect_inband`) is called by hand after each 20 ms packet.
"""

from __future__ import annotations

import asyncio

import numpy as np

from spg_media.dtmf.rfc4733 import DtmfEvent
from spg_media.rtp.g711 import encode
from spg_media.rtp.packet import build_rtp
from spg_media.rtp.session import MediaEngine, MediaSession
from spg_media.testcaller import dtmf_tone

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

    def recorded(slots: list[int], block: np.ndarray, now: float) -> list:  # type: ignore[type-arg]
        shapes.append(block.shape)
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
        frames_steady = keyed_audio("12", "PCMU")
        frames_bursty = keyed_audio("369", "PCMU")
        calls = record_calls(engine)
        for tick in range(max(len(frames_steady), len(frames_bursty)) + 8):
            if tick < len(frames_steady):
                packet = build_rtp(0, tick, tick * FRAME, 1, frames_steady[tick], tick == 0)
                steady.receive(packet, CALLER, tick * 0.02)
            if tick % 4 == 3:
                for i in range(tick - 3, min(tick + 1, len(frames_bursty))):
                    packet = build_rtp(0, i, i * FRAME, 2, frames_bursty[i], i == 0)
                    bursty.receive(packet, CALLER, tick * 0.02)
            engine._detect_inband()
        assert 4 * FRAME in [size for _, size in calls]  # the bursts, each in one more call
        assert starts(heard_steady) == "12"
        assert starts(heard_bursty) == "369"
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
