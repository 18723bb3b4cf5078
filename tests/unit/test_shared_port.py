"""The shared media port (`MediaEngine.open_shared`, spg_media.rtp.shared_port) over real
loopback sockets: calls from one relay address told apart by their exact source port, a
stranger (another port of the relay's address, or another address) dropped before anything
looks at its datagrams and sent nothing, one source never given to two calls, SSRCs pinned,
re-INVITE moves re-keyed, RTCP on both ports, a flood that cannot keep a digit out, and the
batch buffers wiped when the last call ends."""

from __future__ import annotations

import asyncio
import ctypes
import struct
from collections.abc import Awaitable, Callable

import pytest
from test_media_engine_receive import drain, udp

from spg_media.dtmf.rfc4733 import DtmfEvent
from spg_media.rtp import mmsg
from spg_media.rtp.session import SHARED_IDS, SSRC_HANDOVER_S, MediaEngine, MediaSession

pytestmark = pytest.mark.skipif(not mmsg.available(), reason="recvmmsg/sendmmsg: Linux only")

RELAY = "127.0.0.1"
STRANGER = "127.0.0.2"


def rtp(
    pt: int, seq: int, ts: int, payload: bytes, marker: bool = False, ssrc: int = 0x1234
) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq, ts, ssrc) + payload


def press(digit: int, seq: int, ts: int, ssrc: int = 0x1234) -> bytes:
    """The first packet of an RFC 4733 press of `digit` (payload type 101)."""
    return rtp(101, seq, ts, bytes([digit, 10, 0, 160]), True, ssrc)


def receiver_report(ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def run(body: Callable[[MediaEngine], Awaitable[None]], low: int = 31500) -> None:
    async def main() -> None:
        engine = MediaEngine("127.0.0.1", low, low + 40)
        try:
            await body(engine)
        finally:
            await engine.aclose()

    asyncio.run(main())


def session(
    remote: tuple[str, int],
    heard: list[DtmfEvent] | None = None,
    rtcp_remote: tuple[str, int] | None = None,
    rtcp_mux: bool = False,
) -> MediaSession:
    return MediaSession(
        codec="PCMU",
        remote=remote,
        dtmf_payload_type=101,
        on_dtmf=None if heard is None else heard.append,
        rtcp_remote=rtcp_remote,
        rtcp_mux=rtcp_mux,
        media_sources=(f"{RELAY}/32",),
    )


def test_two_calls_from_one_relay_address_are_told_apart_by_port_and_strangers_get_nothing() -> (
    None
):
    async def body(engine: MediaEngine) -> None:
        first, second = udp(), udp()
        same_address_other_port, stranger = udp(), udp(STRANGER)
        heard_first: list[DtmfEvent] = []
        heard_second: list[DtmfEvent] = []
        id_first = engine.open_shared(first.getsockname(), None)
        id_second = engine.open_shared(second.getsockname(), None)
        assert id_first is not None and id_second is not None and id_first != id_second
        assert id_first >= SHARED_IDS
        port = engine.local_port(id_first)
        assert port == engine.local_port(id_second) and engine.port_min <= port < engine.port_max
        one = session(first.getsockname(), heard_first)
        two = session(second.getsockname(), heard_second)
        engine.attach(id_first, one)
        engine.attach(id_second, two)
        await asyncio.sleep(0.05)
        # Strangers first: the relay's address from another port, and another address
        same_address_other_port.sendto(press(9, 1, 800), (RELAY, port))
        stranger.sendto(press(8, 1, 800), (RELAY, port))
        first.sendto(press(1, 10, 160), (RELAY, port))
        second.sendto(press(2, 20, 320), (RELAY, port))
        await asyncio.sleep(0.1)
        assert [(e.digit, e.kind) for e in heard_first] == [("1", "start")]
        assert [(e.digit, e.kind) for e in heard_second] == [("2", "start")]
        assert engine.shared is not None and engine.shared.dropped == 2
        assert one.stats.dropped_foreign == two.stats.dropped_foreign == 0
        assert one.latched == first.getsockname() and two.latched == second.getsockname()
        await asyncio.sleep(0.1)
        # Each call's packets (50 a second, sent in one batch a tick) go to its own source only
        assert drain(first) >= 5 and drain(second) >= 5
        assert drain(same_address_other_port) == 0 and drain(stranger) == 0
        for sock in (first, second, same_address_other_port, stranger):
            sock.close()

    run(body)


def test_a_source_is_never_given_to_two_calls_and_is_free_again_when_its_call_ends() -> None:
    async def body(engine: MediaEngine) -> None:
        relay = udp()
        rtcp = udp()
        taken = engine.open_shared(relay.getsockname(), rtcp.getsockname())
        assert taken is not None
        assert engine.open_shared(relay.getsockname(), None) is None  # its RTP source
        assert engine.open_shared(udp().getsockname(), rtcp.getsockname()) is None  # its RTCP's
        assert engine.open_shared(("0.0.0.0", 4000), None) is None  # no source to key by
        assert engine.open_shared(("not-an-address", 4000), None) is None
        engine.close(taken)  # (never attached: an answer that failed)
        again = engine.open_shared(relay.getsockname(), rtcp.getsockname())
        assert again is not None and again != taken
        relay.close()
        rtcp.close()

    run(body, 31560)


def test_another_ssrc_from_the_calls_source_is_dropped_while_the_stream_flows() -> None:
    async def body(engine: MediaEngine) -> None:
        relay = udp()
        heard: list[DtmfEvent] = []
        call = engine.open_shared(relay.getsockname(), None)
        assert call is not None
        media = session(relay.getsockname(), heard)
        engine.attach(call, media)
        port = engine.local_port(call)
        await asyncio.sleep(0.05)
        relay.sendto(rtp(0, 1, 0, b"\xff" * 160, ssrc=0xAAAA), (RELAY, port))
        relay.sendto(press(4, 2, 160, ssrc=0xAAAA), (RELAY, port))  # the stream's own press
        await asyncio.sleep(0.03)
        relay.sendto(rtp(0, 3, 160, b"\xff" * 160, ssrc=0xCCCC), (RELAY, port))  # spoofed audio
        relay.sendto(press(5, 4, 320, ssrc=0xDDDD), (RELAY, port))  # a spoofed press
        await asyncio.sleep(0.03)
        assert [(e.digit, e.kind) for e in heard] == [("4", "start")]
        assert media.stats.dropped_ssrc == 2 and media.stats.received == 2
        media.move(relay.getsockname(), None)  # a re-INVITE (same source): the pin lets go
        relay.sendto(rtp(0, 5, 480, b"\xff" * 160, ssrc=0xCCCC), (RELAY, port))
        await asyncio.sleep(0.03)
        assert media.stats.received == 3 and media.pinned_ssrc == 0xCCCC
        # The stream silent past the handover time: a new SSRC (a sender's restart) takes over
        await asyncio.sleep(SSRC_HANDOVER_S + 0.05)
        relay.sendto(rtp(0, 6, 640, b"\xff" * 160, ssrc=0xEEEE), (RELAY, port))
        await asyncio.sleep(0.03)
        assert media.stats.received == 4 and media.pinned_ssrc == 0xEEEE
        assert media.stats.dropped_ssrc == 2
        relay.close()

    run(body, 31600)


def test_a_reinvite_that_moves_the_media_rekeys_the_call() -> None:
    async def body(engine: MediaEngine) -> None:
        old, new, other_call = udp(), udp(), udp()
        heard: list[DtmfEvent] = []
        call = engine.open_shared(old.getsockname(), None)
        other = engine.open_shared(other_call.getsockname(), None)
        assert call is not None and other is not None
        media = session(old.getsockname(), heard)
        engine.attach(call, media)
        engine.attach(other, session(other_call.getsockname()))
        port = engine.local_port(call)
        await asyncio.sleep(0.05)
        media.move(new.getsockname(), None)
        old.sendto(press(6, 1, 160), (RELAY, port))  # the old source: a stranger now
        new.sendto(press(7, 2, 320), (RELAY, port))
        await asyncio.sleep(0.08)
        assert [e.digit for e in heard if e.kind == "start"] == ["7"]
        media.move(("0.0.0.0", 0), None)  # on hold: the stream coming is still taken
        new.sendto(press(3, 3, 640), (RELAY, port))
        await asyncio.sleep(0.08)
        assert [e.digit for e in heard if e.kind == "start"] == ["7", "3"]
        # Moved onto another call's source: that source stays the other call's; this call
        # takes nothing (no source shared)
        media.move(other_call.getsockname(), None)
        other_call.sendto(press(2, 4, 960), (RELAY, port))
        await asyncio.sleep(0.08)
        assert [e.digit for e in heard if e.kind == "start"] == ["7", "3"]
        shared = engine.shared
        assert shared is not None and not shared.holds(call)
        assert shared.keys[mmsg.sockaddr(other_call.getsockname())][0] == other
        for sock in (old, new, other_call):
            sock.close()

    run(body, 31640)


def test_rtcp_comes_on_the_odd_port_from_its_own_source_or_muxed_on_the_rtp_key() -> None:
    async def body(engine: MediaEngine) -> None:
        relay, relay_rtcp, muxed, stranger = udp(), udp(), udp(), udp()
        plain = engine.open_shared(relay.getsockname(), relay_rtcp.getsockname())
        mux = engine.open_shared(muxed.getsockname(), None)
        assert plain is not None and mux is not None
        plain_media = session(relay.getsockname(), rtcp_remote=relay_rtcp.getsockname())
        mux_media = session(muxed.getsockname(), rtcp_mux=True)
        engine.attach(plain, plain_media)
        engine.attach(mux, mux_media)
        port = engine.local_port(plain)
        await asyncio.sleep(0.05)
        relay.sendto(rtp(0, 1, 0, b"\xff" * 160), (RELAY, port))
        relay_rtcp.sendto(receiver_report(), (RELAY, port + 1))
        stranger.sendto(receiver_report(), (RELAY, port + 1))
        muxed.sendto(receiver_report(), (RELAY, port))
        await asyncio.sleep(0.08)
        assert plain_media.stats.rtcp == 1 and mux_media.stats.rtcp == 1
        assert engine.shared is not None and engine.shared.dropped == 1
        for sock in (relay, relay_rtcp, muxed, stranger):
            sock.close()

    run(body, 31680)


def test_a_flood_on_the_shared_port_cannot_keep_a_calls_digit_out() -> None:
    async def body(engine: MediaEngine) -> None:
        relay, stranger = udp(), udp(STRANGER)
        heard: list[DtmfEvent] = []
        call = engine.open_shared(relay.getsockname(), None)
        assert call is not None
        engine.attach(call, session(relay.getsockname(), heard))
        port = engine.local_port(call)
        await asyncio.sleep(0.05)
        junk = rtp(101, 1, 0, bytes([9, 10, 0, 160]), True)
        for round_ in range(10):
            for _ in range(500):
                try:
                    stranger.sendto(junk, (RELAY, port))
                except BlockingIOError:
                    break
            if round_ == 5:
                relay.sendto(press(0, 7, 160), (RELAY, port))
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        assert [(e.digit, e.kind) for e in heard] == [("0", "start")]
        assert engine.shared is not None and engine.shared.dropped >= 1000
        assert drain(stranger) == 0
        relay.close()
        stranger.close()

    run(body, 31720)


def test_the_batch_buffers_are_wiped_when_the_last_call_on_the_port_ends() -> None:
    card_audio = bytes(range(60, 220))  # stands for a caller's keypad tones

    async def body(engine: MediaEngine) -> None:
        relay = udp()
        call = engine.open_shared(relay.getsockname(), None)
        assert call is not None
        engine.attach(call, session(relay.getsockname()))
        port = engine.local_port(call)
        await asyncio.sleep(0.05)
        relay.sendto(rtp(0, 1, 0, card_audio), (RELAY, port))
        await asyncio.sleep(0.06)
        shared = engine.shared
        assert shared is not None
        received = ctypes.string_at(
            ctypes.addressof(shared.receiver._data), ctypes.sizeof(shared.receiver._data)
        )
        assert card_audio in received  # (the test sees the buffer it checks below)
        engine.close(call)
        received = ctypes.string_at(
            ctypes.addressof(shared.receiver._data), ctypes.sizeof(shared.receiver._data)
        )
        sent = ctypes.string_at(
            ctypes.addressof(shared.sender._data), ctypes.sizeof(shared.sender._data)
        )
        assert received.count(0) == len(received) and sent.count(0) == len(sent)
        relay.close()

    run(body, 31760)


def test_a_pinned_session_takes_one_ssrc_until_it_falls_silent_without_sockets() -> None:
    source = ("127.0.0.1", 4000)
    media = session(source)
    media.pin_ssrc = True
    media.receive(rtp(0, 1, 0, b"\xff" * 160, ssrc=1), source, 0.0)
    media.receive(rtp(0, 2, 160, b"\xff" * 160, ssrc=2), source, 0.02)  # while 1 flows
    media.receive(press(1, 3, 320, ssrc=3), source, 0.04)  # events in another SSRC
    media.receive(rtp(0, 4, 480, b"\xff" * 160, ssrc=1), source, 0.06)
    assert (media.stats.received, media.stats.dropped_ssrc) == (2, 2)
    media.receive(rtp(0, 5, 640, b"\xff" * 160, ssrc=2), source, 0.06 + SSRC_HANDOVER_S - 0.01)
    assert (media.stats.received, media.stats.dropped_ssrc) == (2, 3)  # not silent long enough
    media.receive(rtp(0, 6, 800, b"\xff" * 160, ssrc=2), source, 0.06 + SSRC_HANDOVER_S + 0.001)
    assert (media.stats.received, media.stats.dropped_ssrc) == (3, 3)
    assert media.pinned_ssrc == 2
    unpinned = session(source)  # a port of its own: no pinning
    unpinned.receive(rtp(0, 1, 0, b"\xff" * 160, ssrc=1), source, 0.0)
    unpinned.receive(rtp(0, 2, 160, b"\xff" * 160, ssrc=2), source, 0.02)
    assert (unpinned.stats.received, unpinned.stats.dropped_ssrc) == (2, 0)


def test_a_receive_buffer_smaller_than_asked_is_warned_about_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from spg_media.rtp import session as session_module

    # more than any kernel grants: the warning an operator with Debian's default ceiling sees
    monkeypatch.setattr(session_module, "SHARED_RECEIVE_BUFFER", 1 << 40)

    async def body(engine: MediaEngine) -> None:
        first, second = udp(), udp()
        with caplog.at_level("WARNING", logger="spg.rtp"):
            assert engine.open_shared(first.getsockname(), None) is not None
            assert engine.open_shared(second.getsockname(), None) is not None
        warnings = [r.getMessage() for r in caplog.records if "receive buffer" in r.getMessage()]
        assert len(warnings) == 1 and "net.core.rmem_max" in warnings[0], warnings
        first.close()
        second.close()

    run(body, 31800)


def test_a_reinvite_that_turns_rtcp_mux_on_drops_the_calls_rtcp_port_key() -> None:
    from spg_media.call import renegotiate_media
    from spg_media.sip.sdp import NegotiatedAudio

    async def body(engine: MediaEngine) -> None:
        relay, relay_rtcp, moved = udp(), udp(), udp()
        call = engine.open_shared(relay.getsockname(), relay_rtcp.getsockname())
        assert call is not None
        media = session(relay.getsockname(), rtcp_remote=relay_rtcp.getsockname())
        engine.attach(call, media)
        shared = engine.shared
        assert shared is not None and relay_rtcp.getsockname() in shared.rtcp_keys
        host, port = moved.getsockname()
        offer = NegotiatedAudio(
            remote_address=host, remote_port=port, codec="PCMU", payload_type=0,
            dtmf_payload_type=101, ptime=20, direction="sendrecv", srtp_offered=False,
            crypto=[], rtcp_mux=True,
        )  # fmt: skip
        renegotiate_media(media, offer)
        assert shared.rtcp_keys == {}  # its RTCP now comes muxed, on its new RTP key
        assert shared.keys[mmsg.sockaddr(moved.getsockname())][0] == call
        for sock in (relay, relay_rtcp, moved):
            sock.close()

    run(body, 31840)


def test_a_batch_the_sender_refuses_is_counted_and_the_next_tick_starts_empty() -> None:
    async def body(engine: MediaEngine) -> None:
        relay = udp()
        call = engine.open_shared(relay.getsockname(), None)
        shared = engine.shared
        assert call is not None and shared is not None
        shared.outbox.append((b"\x80" * 12, b"not a socket address, far too long"))
        shared.flush()
        assert shared.send_errors == 1 and shared.outbox == []
        relay.close()

    run(body, 31880)
