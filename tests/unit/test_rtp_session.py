"""MediaSession: latching, DTMF hand-off, prompt playback and the counters it reports."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import numpy as np
import pytest

from spg_media import observability as obs
from spg_media.dtmf.rfc4733 import DtmfEvent
from spg_media.rtp.packet import RtpPacket, build_rtp
from spg_media.rtp.session import MediaEngine, MediaSession

CALLER = ("127.0.0.1", 40000)
OTHER = ("127.0.0.1", 40002)


def event_packet(key: int, seq: int, ts: int, duration: int, end: bool = False) -> bytes:
    payload = struct.pack("!BBH", key, 0x80 | 10 if end else 10, duration)
    return build_rtp(101, seq, ts, 0x1234, payload, marker=duration == 160)


def session(**kwargs: object) -> MediaSession:
    return MediaSession(codec="PCMU", remote=("127.0.0.1", 9), dtmf_payload_type=101, **kwargs)  # type: ignore[arg-type]


def test_latches_on_the_first_source_and_answers_there() -> None:
    media = session()
    media.receive(build_rtp(0, 1, 160, 7, b"\xff" * 160), CALLER, 0.0)
    assert media.latched == CALLER and media.remote == CALLER
    media.receive(build_rtp(0, 1, 160, 8, b"\xff" * 160), OTHER, 0.02)
    assert media.stats.dropped_foreign == 1
    assert media.stats.received == 1 and media.stats.audio == 1


def test_malformed_and_rtcp_are_counted_not_fatal() -> None:
    media = session()
    media.receive(b"\x80\x00", CALLER, 0.0)
    media.receive(b"\x81\xc9" + b"\x00" * 6, CALLER, 0.01)  # RTCP RR on the RTP port
    assert media.stats.dropped_malformed == 1 and media.stats.rtcp == 1
    assert media.stats.received == 0


def test_packets_with_csrcs_an_extension_or_padding_are_read_like_plain_ones() -> None:
    """The plain header is read without RtpPacket.parse; every other layout goes through it."""
    got: list[DtmfEvent] = []
    heard: list[bytes] = []
    media = session(on_dtmf=got.append, on_audio=lambda payload, now: heard.append(payload))
    press = struct.pack("!BBH", 7, 10, 160)
    fancy = RtpPacket(2, True, True, True, 101, 5, 800, 0x1234, (9, 10), press, 0xBEDE, b"abcd")
    media.receive(fancy.serialize(), CALLER, 0.0)
    media.receive(build_rtp(0, 6, 960, 0x1234, b"\x55" * 160), CALLER, 0.02)
    short = RtpPacket(2, False, False, False, 0, 7, 1120, 0x1234, (1,), b"").serialize()[:14]
    media.receive(short, CALLER, 0.04)  # its CSRC list runs past the end
    assert [(e.digit, e.kind) for e in got] == [("7", "start")]
    assert heard == [b"\x55" * 160]
    assert media.stats.received == 2 and media.stats.dropped_malformed == 1


def test_telephone_events_become_one_press() -> None:
    got: list[DtmfEvent] = []
    media = session(on_dtmf=got.append)
    for n, duration in enumerate((160, 320, 480)):
        media.receive(event_packet(5, 10 + n, 8000, duration), CALLER, n * 0.05)
    for n in range(3):  # the end packet, sent three times
        media.receive(event_packet(5, 13 + n, 8000, 640, end=True), CALLER, 0.2 + n * 0.01)
    assert [(e.digit, e.kind) for e in got] == [("5", "start"), ("5", "end")]
    assert media.stats.events == 6


def test_audio_goes_to_the_audio_hook() -> None:
    heard: list[tuple[bytes, float]] = []
    media = session(on_audio=lambda payload, now: heard.append((payload, now)))
    media.receive(build_rtp(0, 1, 160, 7, b"\x10" * 160), CALLER, 1.5)
    media.receive(build_rtp(8, 2, 320, 7, b"\x10" * 160), CALLER, 1.52)  # PCMA: not ours
    assert heard == [(b"\x10" * 160, 1.5)]


def test_playback_pads_to_packets_then_reports_done_and_sends_silence() -> None:
    done: list[bool] = []
    media = session(on_playback_done=lambda: done.append(True))
    media.play(b"\x01" * 300)  # 1.875 packets: padded with silence to 2
    assert media.playing
    first_bytes = media.next_packet()
    second_bytes = media.next_packet()
    assert first_bytes is not None and second_bytes is not None
    first = RtpPacket.parse(first_bytes)
    second = RtpPacket.parse(second_bytes)
    assert first.marker and not second.marker
    assert first.payload == b"\x01" * 160
    assert second.payload == b"\x01" * 140 + b"\xff" * 20
    assert done == [True] and not media.playing
    silence_bytes = media.next_packet()
    assert silence_bytes is not None
    silence = RtpPacket.parse(silence_bytes)
    assert silence.payload == b"\xff" * 160
    assert (second.sequence - first.sequence) % 65536 == 1
    assert (silence.timestamp - second.timestamp) % 2**32 == 160
    assert media.stats.sent == 3


def test_stop_ends_playback_without_done() -> None:
    done: list[bool] = []
    media = session(on_playback_done=lambda: done.append(True))
    media.play(b"\x01" * 1600)
    media.next_packet()
    media.stop()
    assert not media.playing and done == []


def test_report_stats_adds_only_what_changed() -> None:
    def values() -> tuple[float, float, float, float]:
        return (
            obs.RTP_PACKETS_TOTAL.get(direction="in"),
            obs.RTP_PACKETS_TOTAL.get(direction="out"),
            obs.RTP_DROPPED_TOTAL.get(reason="source"),
            obs.RTP_DROPPED_TOTAL.get(reason="malformed"),
        )

    start = values()
    media = session()
    media.receive(build_rtp(0, 1, 160, 7, b"\xff" * 160), CALLER, 0.0)
    media.receive(build_rtp(0, 2, 320, 7, b"\xff" * 160), OTHER, 0.0)
    media.receive(b"\x80", CALLER, 0.0)
    media.next_packet()
    media.next_packet()
    media.report_stats()
    media.report_stats()  # nothing new: adds nothing
    assert [b - a for a, b in zip(start, values(), strict=True)] == [1, 2, 1, 1]
    media.receive(build_rtp(0, 3, 480, 7, b"\xff" * 160), CALLER, 0.02)
    media.report_stats()
    assert values()[0] - start[0] == 2


def test_renegotiate_transcodes_the_rest_of_the_prompt_and_recuts_it() -> None:
    from spg_media.rtp.g711 import decode_array, encode

    done: list[bool] = []
    media = session(on_playback_done=lambda: done.append(True))
    tone = (3000 * np.sin(np.arange(640) * 0.3)).astype(np.int16)
    media.play(encode(tone, "PCMU"))
    first = media.next_packet()
    assert first is not None and RtpPacket.parse(first).payload_type == 0
    media.renegotiate("PCMA", 40)  # a re-INVITE to PCMA with 40 ms packets
    assert media.playing
    rest = RtpPacket.parse(media.next_packet() or b"")
    assert rest.payload_type == 8 and len(rest.payload) == 320
    heard = decode_array(np.frombuffer(rest.payload, dtype=np.uint8), "PCMA").astype(int)
    assert np.max(np.abs(heard - tone[160:480])) < 200  # the same sound, in the new codec
    last = RtpPacket.parse(media.next_packet() or b"")  # 160 samples left, padded to 320
    assert last.payload[160:] == b"\xd5" * 160 and done == [True]
    silence = RtpPacket.parse(media.next_packet() or b"")
    assert silence.payload == b"\xd5" * 320 and not media.playing
    media.renegotiate("PCMA", 40)  # nothing changes: nothing happens
    assert not media.playing


def test_one_sessions_failure_in_the_tick_stops_its_media_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in one call's media (an exception in the tick) used to end the tick task, and with
    it the media of every call on the node."""

    class Broken(MediaSession):
        def next_packet(self, due: float | None = None) -> bytes | None:
            raise RuntimeError("a bug")

    async def body() -> tuple[int, bool]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller:
            caller.bind(("127.0.0.1", 0))
            caller.setblocking(False)
            engine = MediaEngine("127.0.0.1", 31400, 31420)
            good_port, bad_port = await engine.open(), await engine.open()
            bad = Broken(codec="PCMU", remote=("127.0.0.1", 9), dtmf_payload_type=101)
            engine.attach(bad_port, bad)
            good = MediaSession(codec="PCMU", remote=caller.getsockname(), dtmf_payload_type=101)
            engine.attach(good_port, good)
            loop = asyncio.get_running_loop()
            received = 0
            for _ in range(10):  # 10 packets: 200 ms of the good call's media
                await asyncio.wait_for(loop.sock_recv(caller, 2048), 1.0)
                received += 1
            still_ticking = bad_port not in engine.sessions and good_port in engine.sessions
            await engine.aclose()
            return received, still_ticking

    with caplog.at_level(logging.ERROR, logger="spg.rtp"):
        received, still_ticking = asyncio.run(body())
    assert received == 10 and still_ticking
    assert sum("media of the session" in r.getMessage() for r in caplog.records) == 1


def test_a_press_whose_end_packets_are_lost_ends_by_the_tick_polling_its_timer() -> None:
    """The tick polls a session only when its RFC 4733 timer (`dtmf_wake`) is due: it must be
    set by a press's first packet, fire once, and be cleared after."""
    events: list[DtmfEvent] = []
    media = session(on_dtmf=events.append)
    assert media.dtmf_wake == float("inf")
    media.poll(100.0)  # nothing on: nothing happens
    media.receive(event_packet(5, 1, 1600, 160), CALLER, 1.0)
    media.receive(event_packet(5, 2, 1600, 320), CALLER, 1.02)
    assert [e.kind for e in events] == ["start"]
    wake = media.dtmf_wake
    assert 1.02 < wake < 5.0
    media.poll(wake - 0.001)  # not yet
    assert [e.kind for e in events] == ["start"]
    media.poll(wake)
    assert [e.kind for e in events] == ["start", "end"]
    assert media.dtmf_wake == float("inf")


def test_packets_are_the_bytes_build_rtp_makes_through_the_wraps() -> None:
    """next_packet packs its header inline: the same bytes as build_rtp, marker on the first
    packet of a prompt only, sequence and timestamp wrapping, prompt, relayed audio, silence."""
    media = session()
    media._seq, media._ts = 0xFFFE, 0xFFFFFFFF - 200  # both wrap within three packets
    prompt = bytes(range(160)) * 2
    media.play(prompt)
    media.relay(bytes(x % 256 for x in range(100, 260)))  # dropped: the prompt plays
    expected_payloads = [prompt[:160], prompt[160:], b"\xff" * 160]
    seq, ts = 0xFFFE, 0xFFFFFFFF - 200
    for n, payload in enumerate(expected_payloads):
        packet = media.next_packet(float(n))
        assert packet == build_rtp(0, seq, ts, media.ssrc, payload, marker=n == 0)
        seq, ts = (seq + 1) & 0xFFFF, (ts + 160) & 0xFFFFFFFF
    relayed = bytes(x % 256 for x in range(100, 260))
    media.relay(relayed)
    packet = media.next_packet(3.0)
    assert packet == build_rtp(0, seq, ts, media.ssrc, relayed)
    assert isinstance(packet, bytes) and not media.relay_out
    assert media.stats.sent == 4 and media._octets_sent == 4 * 160


def test_the_send_loop_paces_catches_up_at_most_three_and_skips_what_it_must() -> None:
    """`MediaEngine._serve`, the tick's one loop over the sessions, without sockets: a due
    packet a tick; after a late tick at most three packets at once; more than 100 ms behind,
    the schedule restarts from now; nothing while on hold; a press's lost end is delivered by
    its timer; a session whose packet fails is stopped alone."""
    loop = asyncio.new_event_loop()
    try:
        engine = MediaEngine("127.0.0.1", 40000, 40100)
        engine._loop = loop
        events: list[DtmfEvent] = []
        on_time, late, stalled, held, pressed = (session() for _ in range(5))
        pressed.on_dtmf = events.append

        class Broken(MediaSession):
            def next_packet(self, due: float | None = None) -> bytes | None:
                raise RuntimeError("a bug")

        broken = Broken(codec="PCMU", remote=("127.0.0.1", 9), dtmf_payload_type=101)
        for port, media in enumerate((on_time, late, stalled, held, pressed, broken)):
            engine.attach(50000 + 2 * port, media)  # ports never opened: nothing is sent
        now = 10.0
        on_time.next_send_at = now
        late.next_send_at = now - 0.05  # a late tick: 3 packets due, and one more
        stalled.next_send_at = now - 0.5
        held.next_send_at, held.hold = now, True
        pressed.next_send_at = now + 0.01  # not due yet
        pressed.receive(event_packet(3, 1, 800, 160), CALLER, now - 5.0)  # its end never comes
        broken.next_send_at = now
        engine._serve(now)
        assert on_time.stats.sent == 1 and on_time.next_send_at == pytest.approx(now + 0.02)
        assert late.stats.sent == 3 and late.next_send_at == pytest.approx(now + 0.01)
        assert stalled.stats.sent == 3 and stalled.next_send_at == now  # restarted from now
        assert held.stats.sent == 0 and held.next_send_at == now
        assert pressed.stats.sent == 0 and [e.kind for e in events] == ["start", "end"]
        assert 50010 not in engine.sessions and engine.sessions.get(50000) is on_time
        engine._serve(now + 0.02)
        assert on_time.stats.sent == 2 and late.stats.sent == 4
        assert engine._tick_task is not None
        engine._tick_task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
