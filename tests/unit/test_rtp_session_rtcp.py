"""MediaSession's RTCP: reports about the caller's stream, where they go, what is taken in.

Sans-IO like the session itself: packets are handed to `receive` / `receive_rtcp` and reports
asked for with a time; one test runs the engine on loopback to see them leave its RTCP port.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time

from spg_media.rtp.packet import build_rtp
from spg_media.rtp.rtcp import RtcpSession
from spg_media.rtp.session import MediaEngine, MediaSession, PortRangeExhausted
from spg_media.rtp.srtp import CryptoAttribute, SrtpContext, answer_for

CALLER = ("127.0.0.1", 40000)
CALLER_RTCP = ("127.0.0.1", 40001)
CALLER_SSRC = 0x5150
WALL = 1_800_000_000.0  # Unix time at now = 0


def session(**kwargs: object) -> MediaSession:
    settings: dict[str, object] = {"remote": CALLER, "rtcp_remote": CALLER_RTCP, **kwargs}
    media = MediaSession(codec="PCMU", dtmf_payload_type=101, **settings)  # type: ignore[arg-type]
    media.start_rtcp(0.0, WALL, rng=random.Random(1))  # a fixed schedule: one report in 4 s
    return media


def talk(
    media: MediaSession, seconds: float, lose: frozenset[int] = frozenset()
) -> tuple[float, bytes] | None:
    """The caller's 20 ms packets (losing those numbered in `lose`) and ours, for `seconds`,
    asking for a report each tick: the first one and when it came (None if none came)."""
    first: tuple[float, bytes] | None = None
    for n in range(int(seconds / 0.02)):
        now = n * 0.02
        if n not in lose:
            media.receive(build_rtp(0, n, n * 160, CALLER_SSRC, b"\xff" * 160), CALLER, now)
        media.next_packet(now)
        report = media.rtcp_report(now)
        if report is not None and first is None:
            first = (now, report)
    return first


def packets(compound: bytes) -> list[tuple[int, bytes]]:
    """(packet type, packet) of each RTCP packet in a compound one."""
    out = []
    while compound:
        length = (struct.unpack_from("!H", compound, 2)[0] + 1) * 4
        out.append((compound[1], compound[:length]))
        compound = compound[length:]
    return out


def first_report(media: MediaSession) -> tuple[float, bytes]:
    found = talk(media, 4.0)
    assert found is not None, "no report"
    return found


def test_a_sender_report_about_the_callers_stream_within_the_first_seconds() -> None:
    media = session()
    assert media.rtcp_report(0.5) is None  # not due yet
    found = talk(media, 4.0, lose=frozenset({10, 11, 50}))
    assert found is not None
    at, report = found
    assert 1.0 <= at <= 3.1
    kinds = packets(report)
    assert [kind for kind, _ in kinds] == [200, 202]  # SR (we send audio), SDES
    sr = kinds[0][1]
    assert sr[0] & 0x1F == 1  # one report block
    (sender,) = struct.unpack_from("!I", sr, 4)
    assert sender == media.ssrc
    ntp_seconds = struct.unpack_from("!I", sr, 8)[0]
    assert ntp_seconds == int(WALL + at) + 2208988800
    block = sr[28:52]
    source, lost_word, highest = struct.unpack_from("!III", block)
    assert source == CALLER_SSRC
    assert highest == round(at / 0.02)  # the packet of that tick came just before it
    assert lost_word & 0xFFFFFF == 3
    assert media.stats.rtcp_sent == 1
    assert b"\x01" in kinds[1][1]  # a CNAME item


def test_rtcp_port_takes_the_callers_address_only_and_answers_where_it_came_from() -> None:
    media = session()
    talk(media, 0.2)
    peer = RtcpSession(CALLER_SSRC, 0.0, rng=random.Random(1))
    report = peer.bye(0.2, WALL + 0.2)
    media.receive_rtcp(report, ("127.0.0.2", 40001), 0.2)  # another address
    assert media.stats.dropped_foreign == 1 and media.stats.rtcp == 0
    media.receive_rtcp(b"\x80\xc9\x00\x07garbage", ("127.0.0.1", 40011), 0.2)
    assert media.stats.dropped_malformed == 1 and media.rtcp_latched is None
    media.receive_rtcp(report, ("127.0.0.1", 40011), 0.21)  # its RTCP leaves from 40011
    assert media.stats.rtcp == 1
    assert media.rtcp_latched == ("127.0.0.1", 40011) == media.rtcp_target
    media.receive_rtcp(report, ("127.0.0.1", 40021), 0.22)  # not the latched source
    assert media.stats.dropped_foreign == 2 and media.stats.rtcp == 1


def test_behind_a_nat_reports_go_above_the_port_the_rtp_comes_from() -> None:
    media = session()
    media.receive(build_rtp(0, 1, 160, CALLER_SSRC, b"\xff" * 160), ("127.0.0.1", 50000), 0.0)
    assert media.rtcp_target == ("127.0.0.1", 50001)


def test_no_reports_to_a_hold_address_or_without_a_port() -> None:
    assert session(remote=("0.0.0.0", 4000), rtcp_remote=("0.0.0.0", 4001)).rtcp_target is None
    assert session(rtcp_remote=("127.0.0.1", 0)).rtcp_target is None
    assert session(rtcp_remote=None).rtcp_target is None


def test_with_rtcp_mux_reports_share_the_rtp_port() -> None:
    media = session(rtcp_mux=True)
    talk(media, 0.1)
    assert media.rtcp_target == CALLER
    peer = RtcpSession(CALLER_SSRC, 0.0)
    media.receive(peer.bye(0.1, WALL), CALLER, 0.1)  # RTCP on the RTP port
    assert media.stats.rtcp == 1 and media.stats.received == 5


def test_the_peers_reports_give_loss_jitter_and_round_trip() -> None:
    media = session()
    at, ours = first_report(media)
    peer = RtcpSession(CALLER_SSRC, 0.0, rng=random.Random(2))
    for n in range(200):
        if n != 7:  # one of ours lost on the way
            peer.rtp_received(media.ssrc, n, n * 160, n * 0.02)
    peer.receive(ours, at + 0.03, WALL + at + 0.03)
    reply = peer.bye(at + 0.05, WALL + at + 0.05)
    media.receive_rtcp(reply, CALLER_RTCP, at + 0.08)
    assert media.rtcp is not None
    summary = media.rtcp.summary
    assert summary.peer_lost == 1
    assert summary.rtt_ms is not None and abs(summary.rtt_ms - 60.0) < 1.0


def test_srtp_calls_send_and_take_srtcp_only() -> None:
    offered = CryptoAttribute.generate("AES_CM_128_HMAC_SHA1_80", 1)
    answered = answer_for(offered)
    media = session(srtp=SrtpContext(answered, offered))
    caller = SrtpContext(offered, answered)
    now = 0.0
    while (report := media.rtcp_report(now)) is None:
        now += 0.02
    plain_report = caller.unprotect_rtcp(report)  # the caller can read it
    assert plain_report is not None and packets(plain_report)[0][0] == 201  # RR: nothing sent
    peer = RtcpSession(CALLER_SSRC, 0.0)
    plain = peer.bye(3.0, WALL + 3.0)
    media.receive_rtcp(plain, CALLER_RTCP, 3.0)  # in clear: refused
    assert media.stats.dropped_srtp == 1 and media.rtcp_latched is None
    protected = caller.protect_rtcp(plain)
    assert protected is not None
    media.receive_rtcp(protected, CALLER_RTCP, 3.01)
    assert media.stats.rtcp == 1 and media.rtcp_latched == CALLER_RTCP


def test_the_engine_sends_reports_from_the_rtcp_port_and_a_bye_at_the_end() -> None:
    async def body() -> list[bytes]:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtcp,
        ):
            rtp.bind(("127.0.0.1", 0))
            rtcp.bind(("127.0.0.1", 0))
            rtcp.setblocking(False)
            engine = MediaEngine("127.0.0.1", 31000, 31100)
            port = await engine.open()
            assert port % 2 == 0 and port + 1 == engine.sockets[port][1].getsockname()[1]
            media = MediaSession(
                codec="PCMU",
                remote=rtp.getsockname(),
                dtmf_payload_type=101,
                rtcp_remote=rtcp.getsockname(),
            )
            engine.attach(port, media)
            now = engine.loop.time()
            # the first report as early as the schedule allows: ~1 s
            low = random.Random()
            low.random = lambda: 0.0  # type: ignore[method-assign]
            media.start_rtcp(now, time.time(), rng=low)
            loop = asyncio.get_running_loop()
            got = [await asyncio.wait_for(loop.sock_recv(rtcp, 2048), 3.0)]
            engine.close(port)
            got.append(await asyncio.wait_for(loop.sock_recv(rtcp, 2048), 1.0))
            await engine.aclose()
            return got

    report, last = asyncio.run(body())
    assert [kind for kind, _ in packets(report)] == [200, 202]
    assert [kind for kind, _ in packets(last)] == [200, 202, 203]


def test_the_engine_takes_ports_in_pairs_inside_the_range() -> None:
    async def body() -> list[int | str]:
        engine = MediaEngine("127.0.0.1", 31200, 31206)
        got: list[int | str] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
            squatter.bind(("127.0.0.1", 31203))  # 31202's RTCP port is taken: skip the pair
            for _ in range(3):
                try:
                    got.append(await engine.open())
                except PortRangeExhausted:
                    got.append("exhausted")  # 31206 has no odd port above it in the range
        bound = {sock.getsockname()[1] for pair in engine.sockets.values() for sock in pair}
        await engine.aclose()
        assert bound == {31200, 31201, 31204, 31205}
        return got

    got = asyncio.run(body())
    assert sorted(got[:2]) == [31200, 31204] and got[2] == "exhausted"  # drawn in any order
