"""RtcpSession: A.1 statistics, A.8 jitter, the packets it builds, A.7 timing and A.2 checks.

Packets are taken apart here with `struct`, from the RFC 3550 layouts, not by the module's parser;
expected loss, jitter and intervals are worked out independently from the RFC's formulas.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spg_media.rtp.rtcp import RtcpError, RtcpSession

OURS = 0x11223344
PEER = 0x55667788
WALL = 1_700_000_000.0  # Unix time, a whole second
NTP_OFFSET = 2208988800
COMPENSATION = 2.71828 - 1.5  # RFC 3550 A.7
CNAME = "gw@example"


def rtcp_session(
    now: float = 0.0, seed: int = 1, clock_rate: int = 8000, session_bandwidth: float = 80000.0
) -> RtcpSession:
    return RtcpSession(
        OURS,
        now,
        clock_rate=clock_rate,
        cname=CNAME,
        rng=random.Random(seed),
        session_bandwidth=session_bandwidth,
    )


def packets(compound: bytes) -> list[tuple[int, int, bytes]]:
    """(count field, packet type, packet) of each packet of a compound one, checking that every
    one is version 2 without padding and that their lengths add up."""
    out = []
    offset = 0
    while offset < len(compound):
        first, kind, words = struct.unpack_from("!BBH", compound, offset)
        assert first >> 6 == 2 and not first & 0x20
        end = offset + 4 * (words + 1)
        assert end <= len(compound)
        out.append((first & 0x1F, kind, compound[offset:end]))
        offset = end
    assert offset == len(compound)
    return out


def kinds(compound: bytes) -> list[int]:
    return [kind for _, kind, _ in packets(compound)]


def report_blocks(compound: bytes) -> list[tuple[int, int, int, int, int, int, int]]:
    """(ssrc, fraction lost, cumulative lost, highest seq, jitter, LSR, DLSR) of each block in
    the first packet (SR or RR)."""
    count, kind, packet = packets(compound)[0]
    start = 28 if kind == 200 else 8
    blocks = []
    for n in range(count):
        ssrc, word, highest, jitter, lsr, dlsr = struct.unpack_from(
            "!IIIIII", packet, start + 24 * n
        )
        lost = word & 0xFFFFFF
        lost = lost - (1 << 24) if lost & 0x800000 else lost
        blocks.append((ssrc, word >> 24, lost, highest, jitter, lsr, dlsr))
    return blocks


def due(rtcp: RtcpSession) -> tuple[float, bytes]:
    """The next scheduled report, at its time."""
    at = rtcp.next_report_at()
    packet = rtcp.report(at, WALL + at)
    assert packet is not None
    return at, packet


def feed(
    rtcp: RtcpSession,
    sequences: list[int],
    ssrc: int = PEER,
    start: float = 0.0,
    audio: bool = True,
) -> float:
    """The peer's 20 ms packets (timestamps from their sequence numbers); returns the last time."""
    now = start
    for n, sequence in enumerate(sequences):
        now = start + n * 0.02
        rtcp.rtp_received(ssrc, sequence & 0xFFFF, sequence * 160 & 0xFFFFFFFF, now, audio)
    return now


def header(kind: int, count: int, body: bytes, padding: bool = False, version: int = 2) -> bytes:
    first = (version << 6) | (padding << 5) | count
    return struct.pack("!BBH", first, kind, len(body) // 4) + body


def block(
    ssrc: int = OURS,
    fraction: int = 0,
    lost: int = 0,
    highest: int = 0,
    jitter: int = 0,
    lsr: int = 0,
    dlsr: int = 0,
) -> bytes:
    return struct.pack(
        "!IIIIII", ssrc, (fraction << 24) | (lost & 0xFFFFFF), highest, jitter, lsr, dlsr
    )


def peer_rr(*blocks: bytes, reporter: int = PEER) -> bytes:
    return header(201, len(blocks), struct.pack("!I", reporter) + b"".join(blocks))


def peer_sr(seconds: int, fraction: int, *blocks: bytes) -> bytes:
    info = struct.pack("!IIIIII", PEER, seconds, fraction, 1234, 10, 1600)
    return header(200, len(blocks), info + b"".join(blocks))


PEER_SDES = header(202, 1, struct.pack("!I", PEER) + b"\x01\x04peer\x00\x00")


def ntp_middle(wall: float) -> int:
    seconds = int(wall) + NTP_OFFSET
    fraction = int((wall - int(wall)) * 65536)
    return (seconds << 16 | fraction) & 0xFFFFFFFF


# ---- sequence statistics (A.1, A.3) ---------------------------------------------------------


def test_in_order_stream_counts_from_the_packet_that_ends_probation() -> None:
    rtcp = rtcp_session()
    feed(rtcp, list(range(1000, 1100)))
    summary = rtcp.summary
    # A.1: the first packet only starts probation; counting starts at the second (base_seq).
    assert (summary.received, summary.expected, summary.lost) == (99, 99, 0)
    _, report = due(rtcp)
    assert report_blocks(report) == [(PEER, 0, 0, 1099, 0, 0, 0)]


def test_loss_gives_cumulative_and_per_interval_fraction() -> None:
    rtcp = rtcp_session()
    lost_first = {10, 20, 21, 50}
    feed(rtcp, [n for n in range(100) if n not in lost_first])
    assert (rtcp.summary.expected, rtcp.summary.received, rtcp.summary.lost) == (99, 95, 4)
    _, first = due(rtcp)
    # expected 99 (1..99), received 95: fraction = (4 << 8) // 99
    assert report_blocks(first)[0][1:4] == ((4 << 8) // 99, 4, 99)
    feed(rtcp, [n for n in range(100, 200) if n != 150], start=2.0)
    _, second = due(rtcp)
    # this interval: expected 100, received 99
    assert report_blocks(second)[0][1:4] == ((1 << 8) // 100, 5, 199)
    assert rtcp.summary.lost == 5


def test_no_report_block_without_rtp_since_the_last_report() -> None:
    rtcp = rtcp_session()
    feed(rtcp, list(range(10)))
    _, first = due(rtcp)
    assert len(report_blocks(first)) == 1
    _, second = due(rtcp)
    assert report_blocks(second) == []
    assert packets(second)[0][:2] == (0, 201)


def test_sequence_wrap_extends_the_highest_number() -> None:
    rtcp = rtcp_session()
    feed(rtcp, [65530 + n for n in range(20)])  # 65530 .. 65535, 0 .. 13
    summary = rtcp.summary
    assert (summary.received, summary.expected, summary.lost) == (19, 19, 0)
    _, report = due(rtcp)
    assert report_blocks(report)[0][3] == (1 << 16) + 13  # one cycle, highest 13


def test_duplicates_keep_lost_at_zero_and_the_field_goes_negative() -> None:
    rtcp = rtcp_session()
    feed(rtcp, list(range(10)) + list(range(5, 10)) * 2)
    summary = rtcp.summary
    assert (summary.received, summary.expected, summary.lost) == (19, 9, 0)
    _, report = due(rtcp)
    _, fraction, lost, *_ = report_blocks(report)[0]
    assert (fraction, lost) == (0, -10)  # RFC 3550 6.4.1: duplicates may make it negative


def test_cumulative_lost_field_is_clamped_not_wrapped() -> None:
    rtcp = rtcp_session()
    # Gaps just under MAX_DROPOUT: each packet says 2998 more were lost.
    feed(rtcp, [0] + [1 + 2999 * n for n in range(2900)])
    true_lost = 2998 * 2899
    assert true_lost > 0x7FFFFF
    assert rtcp.summary.lost == true_lost
    _, report = due(rtcp)
    _, fraction, lost, *_ = report_blocks(report)[0]
    assert lost == 0x7FFFFF
    assert fraction == (true_lost << 8) // rtcp.summary.expected


def test_a_single_packet_is_on_probation() -> None:
    rtcp = rtcp_session()
    rtcp.rtp_received(PEER, 500, 0, 0.0)
    assert (rtcp.summary.received, rtcp.summary.expected) == (0, 0)
    _, report = due(rtcp)
    assert report_blocks(report) == []
    rtcp.rtp_received(PEER, 501, 160, 3.0)
    assert (rtcp.summary.received, rtcp.summary.expected) == (1, 1)


def test_probation_restarts_on_a_non_sequential_packet() -> None:
    rtcp = rtcp_session()
    feed(rtcp, [10, 12, 14])
    assert rtcp.summary.expected == 0
    feed(rtcp, [15], start=1.0)
    assert (rtcp.summary.received, rtcp.summary.expected) == (1, 1)


def test_probation_follows_the_sequence_across_its_wrap() -> None:
    rtcp = rtcp_session()
    feed(rtcp, [65535, 65536])  # 65535 then 0
    assert (rtcp.summary.received, rtcp.summary.expected) == (1, 1)


def test_a_stray_packet_from_another_ssrc_does_not_replace_the_source() -> None:
    rtcp = rtcp_session()
    feed(rtcp, list(range(20)))
    before = rtcp.summary
    rtcp.rtp_received(0xBAD, 7000, 123456, 0.5)
    assert rtcp.summary == before
    feed(rtcp, [20], start=0.52)
    rtcp.rtp_received(0xBAD, 7001, 123616, 0.54)  # sequential, but the source spoke between
    feed(rtcp, [21], start=0.56)
    _, report = due(rtcp)
    assert [b[0] for b in report_blocks(report)] == [PEER]
    assert rtcp.summary.received == 21


def test_a_new_ssrc_that_passes_probation_starts_fresh_statistics() -> None:
    rtcp = rtcp_session()
    feed(rtcp, [n for n in range(50) if n % 7])
    assert rtcp.summary.lost > 0
    feed(rtcp, [9000, 9001], ssrc=0xC0FFEE, start=1.0)
    summary = rtcp.summary
    assert (summary.received, summary.expected, summary.lost) == (1, 1, 0)
    assert summary.jitter_ms < 1e-6  # the old source's jitter went with it
    _, report = due(rtcp)
    assert report_blocks(report) == [(0xC0FFEE, 0, 0, 9001, 0, 0, 0)]


def test_a_jump_beyond_max_dropout_resyncs_on_two_sequential_packets() -> None:
    rtcp = rtcp_session()
    feed(rtcp, list(range(10)))
    feed(rtcp, [5000], start=0.2)  # one packet far ahead: set aside
    assert (rtcp.summary.received, rtcp.summary.expected) == (9, 9)
    feed(rtcp, [10], start=0.22)  # the stream goes on as before
    assert (rtcp.summary.received, rtcp.summary.expected) == (10, 10)
    feed(rtcp, [6000, 6001], start=0.24)  # the sender restarted: count from here
    assert (rtcp.summary.received, rtcp.summary.expected) == (1, 1)
    _, report = due(rtcp)
    assert report_blocks(report)[0][3] == 6001


def test_a_late_packet_within_max_misorder_is_counted_not_a_jump() -> None:
    rtcp = rtcp_session()
    feed(rtcp, [*range(11), 12, 11, 13])  # 11 comes after 12
    assert (rtcp.summary.received, rtcp.summary.expected, rtcp.summary.lost) == (13, 13, 0)


# ---- jitter (A.8) ---------------------------------------------------------------------------


def expected_jitter(arrivals: list[float], timestamps: list[int]) -> float:
    """A.8's recurrence, in RTP units at 8 kHz, over consecutive packets."""
    jitter = 0.0
    for n in range(1, len(arrivals)):
        d = (arrivals[n] - arrivals[n - 1]) * 8000 - (timestamps[n] - timestamps[n - 1])
        jitter += (abs(d) - jitter) / 16
    return jitter


def test_constant_spacing_has_no_jitter() -> None:
    rtcp = rtcp_session()
    for n in range(200):
        rtcp.rtp_received(PEER, n, 4000 + 160 * n, 100.0 + 0.02 * n)
    assert rtcp.summary.jitter_ms < 1e-6


def test_jitter_follows_the_a8_recurrence() -> None:
    rtcp = rtcp_session()
    rng = random.Random(7)
    sends = [0.02 * n for n in range(300)]
    arrivals = [t + 0.03 + rng.uniform(0, 0.04) for t in sends]
    arrivals.sort()  # the network keeps them in order here; only delays vary
    timestamps = [160 * n for n in range(300)]
    for n in range(300):
        rtcp.rtp_received(PEER, n, timestamps[n], arrivals[n])
    jitter = expected_jitter(arrivals, timestamps)
    assert jitter > 10
    assert rtcp.summary.jitter_ms == pytest.approx(jitter / 8, rel=1e-9)
    at = rtcp.next_report_at()
    report = rtcp.report(max(at, arrivals[-1]), WALL)
    assert report is not None
    assert report_blocks(report)[0][4] == int(jitter)


def test_a_late_packet_across_a_timestamp_wrap_keeps_jitter_positive() -> None:
    # Found by fuzzing (fuzz/run.py rtcp): the per-packet path folded |D| only once, so a packet
    # late by more than its timestamp step across the 2^32 wrap made the jitter negative, and
    # the next report raised struct.error (in the media tick that serves every call).
    rtcp = rtcp_session()
    first = 2**32 - 480
    arrivals = [0.0, 0.02, 0.04, 1.06]  # the fourth, stamped 0 after the wrap, 1 s late
    timestamps = [(first + 160 * n) & 0xFFFFFFFF for n in range(4)]
    for n in range(4):
        rtcp.rtp_received(PEER, 100 + n, timestamps[n], arrivals[n])
    unwrapped = [first + 160 * n for n in range(4)]
    assert rtcp.summary.jitter_ms == pytest.approx(expected_jitter(arrivals, unwrapped) / 8)
    report = rtcp.report(10.0, WALL)
    assert report is not None
    assert report_blocks(report)[0][4] == int(expected_jitter(arrivals, unwrapped))
    assert rtcp.bye(11.0, WALL + 1)


def test_alternating_delay_converges_to_its_swing() -> None:
    rtcp = rtcp_session()
    for n in range(400):
        rtcp.rtp_received(PEER, n, 160 * n, 0.02 * n + (0.01 if n % 2 else 0.0))
    # every |D| is 80 units (10 ms): J -> 80 units = 10 ms
    assert rtcp.summary.jitter_ms == pytest.approx(10.0, rel=1e-6)


def test_telephone_events_do_not_touch_jitter() -> None:
    audio_only = rtcp_session()
    mixed = rtcp_session()
    rng = random.Random(3)
    sequence = 0
    for n in range(100):
        arrival = 0.02 * n + rng.uniform(0, 0.01)
        for rtcp in (audio_only, mixed):
            rtcp.rtp_received(PEER, sequence, 160 * n, arrival)
        sequence += 1
        if n % 10 == 5:  # a key press: three events with one timestamp, bunched up
            for k in range(3):
                mixed.rtp_received(PEER, sequence, 160 * n, arrival + 0.001 * k, audio=False)
                audio_only.rtp_received(PEER, sequence, 0, 0.0, audio=False)
                sequence += 1
    assert mixed.summary.jitter_ms == audio_only.summary.jitter_ms > 0
    assert mixed.summary.received == audio_only.summary.received == sequence - 1


def test_a_sender_restart_does_not_read_as_jitter() -> None:
    rtcp = rtcp_session()
    for n in range(50):
        rtcp.rtp_received(PEER, n, 160 * n, 0.02 * n)
    for n in range(50, 100):  # same SSRC, new sequence and timestamp bases
        rtcp.rtp_received(PEER, 30000 + n, 0x7000_0000 + 160 * n, 0.02 * n)
    assert rtcp.summary.expected == 49  # resynced at 30051
    assert rtcp.summary.jitter_ms < 1e-6


def test_jitter_across_the_timestamp_wrap() -> None:
    rtcp = rtcp_session()
    for n in range(20):
        rtcp.rtp_received(PEER, n, (0xFFFFFFFF - 800 + 160 * n) & 0xFFFFFFFF, 0.02 * n)
    assert rtcp.summary.jitter_ms < 1e-6


# ---- the packets we build -------------------------------------------------------------------


def test_sender_report_fields() -> None:
    rtcp = rtcp_session()
    for n in range(3):
        rtcp.rtp_sent((0xFFFFF000 + 160 * n) & 0xFFFFFFFF, 160, 0.5 + 0.02 * n)
    at = rtcp.next_report_at()
    report = rtcp.report(at, WALL + 0.25)
    assert report is not None
    assert kinds(report) == [200, 202]
    count, _, sr = packets(report)[0]
    assert count == 0 and len(sr) == 28 and struct.unpack_from("!H", sr, 2)[0] == 6
    ssrc, seconds, fraction, timestamp, sent, octets = struct.unpack_from("!IIIIII", sr, 4)
    assert ssrc == OURS
    assert seconds == int(WALL) + NTP_OFFSET
    assert fraction == 1 << 30  # a quarter second
    # extrapolated from the last packet sent (at 0.54 s) to the report's `now`
    assert timestamp == (0xFFFFF000 + 320 + round((at - 0.54) * 8000)) & 0xFFFFFFFF
    assert (sent, octets) == (3, 480)


def test_sender_report_rtp_timestamp_uses_the_clock_rate() -> None:
    rtcp = rtcp_session(clock_rate=16000)
    rtcp.rtp_sent(1000, 320, 0.0)
    at = rtcp.next_report_at()
    report = rtcp.report(at, WALL)
    assert report is not None
    assert struct.unpack_from("!I", report, 16)[0] == 1000 + round(at * 16000)


def test_receiver_report_when_we_have_not_sent_and_again_two_reports_after_we_stop() -> None:
    quiet = rtcp_session()
    _, report = due(quiet)
    assert kinds(report) == [201, 202]
    assert len(packets(report)[0][2]) == 8
    assert struct.unpack_from("!I", report, 4)[0] == OURS

    talker = rtcp_session()
    talker.rtp_sent(0, 160, 0.1)
    _, first = due(talker)
    _, second = due(talker)  # we sent since the report before the last (none: the start)
    _, third = due(talker)  # nothing since the first report
    assert [kinds(p)[0] for p in (first, second, third)] == [200, 200, 201]


def test_report_block_carries_lsr_and_dlsr_of_the_peers_last_sr() -> None:
    rtcp = rtcp_session()
    feed(rtcp, list(range(20)))
    rtcp.receive(peer_sr(0x12345678, 0x9ABCDEF0) + PEER_SDES, 0.5, WALL + 0.5)
    assert rtcp.summary.reports_received == 1
    at = rtcp.next_report_at()
    report = rtcp.report(at, WALL + at)
    assert report is not None
    (*_, lsr, dlsr) = report_blocks(report)[0]
    assert lsr == 0x56789ABC
    assert abs(dlsr - (at - 0.5) * 65536) <= 1


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 255])
def test_sdes_cname_chunk_is_null_terminated_and_padded(length: int) -> None:
    cname = "x" * length
    rtcp = RtcpSession(OURS, 0.0, cname=cname, rng=random.Random(1))
    report = rtcp.report(rtcp.next_report_at(), WALL)
    assert report is not None
    count, kind, sdes = packets(report)[1]
    assert (count, kind) == (1, 202)
    assert struct.unpack_from("!I", sdes, 4)[0] == OURS
    assert sdes[8:10] == bytes([1, length]) and sdes[10 : 10 + length] == cname.encode()
    tail = sdes[10 + length :]
    assert 1 <= len(tail) <= 4 and tail == bytes(len(tail))  # at least one null, then padding
    assert len(sdes) % 4 == 0


def test_cname_defaults_to_a_short_term_random_one() -> None:
    names = {RtcpSession(OURS, 0.0).cname for _ in range(5)}
    assert len(names) == 5
    for name in names:
        assert len(name) == 16 and set(name) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_cname_longer_than_an_sdes_item_is_refused() -> None:
    with pytest.raises(ValueError):
        RtcpSession(OURS, 0.0, cname="x" * 256)


def test_bye_without_reason() -> None:
    rtcp = rtcp_session()
    packet = rtcp.bye(1.0, WALL + 1.0)
    assert kinds(packet) == [201, 202, 203]
    count, _, bye = packets(packet)[2]
    assert count == 1 and bye == struct.pack("!BBHI", 0x81, 203, 1, OURS)
    assert rtcp.summary.reports_sent == 1
    assert rtcp.report(100.0, WALL + 100.0) is None  # nothing after the last packet


@pytest.mark.parametrize("reason", ["x", "ab", "abc", "hang up", "€" * 200, "x" + "€" * 100])
def test_bye_with_reason_is_padded_and_at_most_255_bytes(reason: str) -> None:
    rtcp = rtcp_session()
    rtcp.rtp_sent(0, 160, 0.5)
    feed(rtcp, list(range(10)))
    packet = rtcp.bye(1.0, WALL + 1.0, reason)
    assert kinds(packet) == [200, 202, 203]
    assert len(packet) % 4 == 0
    _, _, bye = packets(packet)[2]
    size = bye[8]
    text = bye[9 : 9 + size]
    assert size <= 255 and text.decode() == reason[: len(text.decode())]
    assert text.decode() == reason or size > 252  # cut only at the limit, at a character
    assert bye[9 + size :] == bytes(len(bye) - 9 - size) and len(bye) - 9 - size < 4
    assert len(report_blocks(packet)) == 1


# ---- what the peer tells us -----------------------------------------------------------------


def test_peer_report_block_about_us_gives_loss_jitter_and_round_trip() -> None:
    rtcp = rtcp_session()
    sent_wall = WALL + 3.0
    lsr = ntp_middle(sent_wall)
    dlsr = int(0.5 * 65536)
    arrived_wall = sent_wall + 0.5 + 0.08
    rr = peer_rr(
        block(0xABCDEF, fraction=200, lost=99),
        block(fraction=64, lost=-5, jitter=800, lsr=lsr, dlsr=dlsr),
    )
    rtcp.receive(rr + PEER_SDES, 5.0, arrived_wall)
    summary = rtcp.summary
    assert summary.peer_fraction_lost == 0.25
    assert summary.peer_lost == -5
    assert summary.peer_jitter_ms == 100.0
    assert summary.rtt_ms is not None and abs(summary.rtt_ms - 80.0) < 0.1
    assert summary.reports_received == 1


def test_round_trip_needs_an_lsr_and_ignores_one_over_a_minute() -> None:
    rtcp = rtcp_session()
    rtcp.receive(peer_rr(block(fraction=1)), 1.0, WALL)
    assert rtcp.summary.rtt_ms is None and rtcp.summary.peer_fraction_lost == 1 / 256
    stale = ntp_middle(WALL - 61.0)
    rtcp.receive(peer_rr(block(lsr=stale)), 2.0, WALL)
    assert rtcp.summary.rtt_ms is None
    rtcp.receive(peer_rr(block(lsr=ntp_middle(WALL - 0.2), dlsr=65536 // 10)), 3.0, WALL)
    assert rtcp.summary.rtt_ms is not None and abs(rtcp.summary.rtt_ms - 100.0) < 0.1
    future = ntp_middle(WALL + 1.0)  # our clock went back: "negative", i.e. huge
    rtcp.receive(peer_rr(block(lsr=future)), 4.0, WALL)
    assert rtcp.summary.rtt_ms is not None and abs(rtcp.summary.rtt_ms - 100.0) < 0.1


def test_blocks_about_other_sources_and_our_own_reports_looped_back_are_ignored() -> None:
    rtcp = rtcp_session()
    rtcp.receive(peer_rr(block(ssrc=0xABCDEF, fraction=128, lost=7)), 1.0, WALL)
    assert rtcp.summary.peer_lost is None
    rtcp.receive(peer_rr(block(fraction=128, lost=7), reporter=OURS), 1.0, WALL)
    assert rtcp.summary.peer_lost is None
    # our own SR reflected back is not the peer's: no LSR from it
    feed(rtcp, list(range(10)), start=1.0)
    rtcp.rtp_sent(0, 160, 1.0)
    _, ours = due(rtcp)
    rtcp.receive(ours, 3.5, WALL + 3.5)
    feed(rtcp, list(range(10, 20)), start=3.6)
    _, report = due(rtcp)
    assert report_blocks(report)[0][5:] == (0, 0)


def test_a_compound_with_every_other_packet_type_is_accepted_and_skipped() -> None:
    rtcp = rtcp_session()
    compound = (
        peer_rr(block(lost=3))
        + PEER_SDES
        + header(204, 0, struct.pack("!I", PEER) + b"name" + b"data")  # APP
        + header(205, 1, struct.pack("!II", PEER, OURS))  # generic NACK header
        + header(206, 1, struct.pack("!II", PEER, OURS))  # PLI
        + header(207, 0, struct.pack("!I", PEER))  # XR, no blocks
        + header(210, 0, b"\x00" * 8)  # unknown, in range
        + header(203, 1, struct.pack("!I", PEER) + b"\x03bye")  # BYE with a reason
    )
    rtcp.receive(compound, 1.0, WALL)
    assert rtcp.summary.reports_received == 1 and rtcp.summary.peer_lost == 3


def test_padding_on_the_last_packet_is_accepted() -> None:
    rtcp = rtcp_session()
    chunk = struct.pack("!I", PEER) + b"\x01\x02ab" + bytes(4)
    padded_sdes = header(202, 1, chunk + b"\x00\x00\x00\x04", padding=True)
    rtcp.receive(peer_rr(block(lost=2)) + padded_sdes, 1.0, WALL)
    assert rtcp.summary.peer_lost == 2


# ---- two sessions ---------------------------------------------------------------------------


def test_two_sessions_measure_round_trip_and_the_loss_on_the_way() -> None:
    one_way = 0.04
    a_ssrc, b_ssrc = 0xA, 0xB
    a = RtcpSession(a_ssrc, 0.0, rng=random.Random(11))
    b = RtcpSession(b_ssrc, 0.0, rng=random.Random(12))
    a_wall, b_wall = 1_700_000_000.0, 1_600_000_123.456  # their clocks disagree
    dropped = set(range(5, 2000, 10))  # A's RTP lost on the way to B: 1 in 10
    in_flight: list[tuple[float, str, object]] = []  # (arrival, to, what)
    b_lost_reported: list[int] = []
    kinds_sent: dict[str, set[int]] = {"a": set(), "b": set()}
    for step in range(1500):  # 30 s in 20 ms steps
        now = step * 0.02
        arrived = sorted((x for x in in_flight if x[0] <= now), key=lambda x: x[0])
        for arrival, to, what in arrived:
            in_flight.remove((arrival, to, what))
            if to == "b" and isinstance(what, int):
                b.rtp_received(a_ssrc, what, what * 160, arrival)
            elif to == "b":
                assert isinstance(what, bytes)
                b.receive(what, arrival, b_wall + arrival)
            else:
                assert isinstance(what, bytes)
                a.receive(what, arrival, a_wall + arrival)
        a.rtp_sent(step * 160, 160, now)
        if step not in dropped:
            in_flight.append((now + one_way, "b", step))
        report = a.report(now, a_wall + now)
        if report is not None:
            kinds_sent["a"].add(report[1])
            in_flight.append((now + one_way, "b", report))
        report = b.report(now, b_wall + now)
        if report is not None:
            kinds_sent["b"].add(report[1])
            b_lost_reported.append(b.summary.lost)
            in_flight.append((now + one_way, "a", report))
    assert kinds_sent == {"a": {200}, "b": {201}}  # only A sends RTP
    summary = a.summary
    assert summary.reports_received >= 4
    assert summary.rtt_ms is not None and abs(summary.rtt_ms - 80.0) < 1.0
    assert summary.peer_lost == b_lost_reported[summary.reports_received - 1] > 0
    assert summary.peer_fraction_lost is not None
    assert abs(summary.peer_fraction_lost - 0.1) < 0.01
    # B's own count: every dropped number from its base (1) to the highest it has seen
    highest = b.summary.expected
    assert b.summary.lost == len([n for n in dropped if n <= highest])


# ---- scheduling (A.7) -----------------------------------------------------------------------


def test_first_report_comes_within_the_initial_interval() -> None:
    low, high = 2.5 * 0.5 / COMPENSATION, 2.5 * 1.5 / COMPENSATION
    firsts = [rtcp_session(100.0, seed).next_report_at() - 100.0 for seed in range(300)]
    assert all(low <= t <= high for t in firsts)
    assert min(firsts) < low + 0.2 and max(firsts) > high - 0.2  # randomised over the range


def test_later_reports_come_every_five_seconds_randomised() -> None:
    low, high = 5 * 0.5 / COMPENSATION, 5 * 1.5 / COMPENSATION
    rtcp = rtcp_session(seed=5)
    now = 0.0
    sequence = 0
    intervals = []
    for _ in range(60):
        at = rtcp.next_report_at()
        while now < at:  # both sides talk: 2 members, 2 senders
            rtcp.rtp_received(PEER, sequence & 0xFFFF, sequence * 160, now)
            rtcp.rtp_sent(sequence * 160, 160, now)
            sequence += 1
            now += 0.02
        assert rtcp.report(at, WALL + at) is not None
        intervals.append(rtcp.next_report_at() - at)
    assert all(low <= t <= high for t in intervals)
    assert max(intervals) - min(intervals) > 2.0


def test_report_is_none_before_it_is_due_and_changes_nothing() -> None:
    rtcp = rtcp_session()
    at = rtcp.next_report_at()
    assert rtcp.report(at - 1e-6, WALL) is None
    assert rtcp.next_report_at() == at and rtcp.summary.reports_sent == 0
    assert rtcp.report(at, WALL) is not None
    assert rtcp.next_report_at() > at and rtcp.summary.reports_sent == 1


def test_a_seeded_rng_gives_the_same_schedule() -> None:
    def schedule(seed: int) -> list[float]:
        rtcp = rtcp_session(seed=seed)
        return [due(rtcp)[0] for _ in range(10)]

    assert schedule(42) == schedule(42)
    assert schedule(42) != schedule(43)


def test_the_average_packet_size_counts_what_the_peer_sends() -> None:
    small, large = rtcp_session(session_bandwidth=800.0), rtcp_session(session_bandwidth=800.0)
    app = header(204, 0, struct.pack("!I", PEER) + b"name" + bytes(400))
    small.receive(peer_rr(), 0.5, WALL)
    large.receive(peer_rr() + app, 0.5, WALL)
    at_small, _ = due(small)
    at_large, _ = due(large)
    small_interval = small.next_report_at() - at_small
    large_interval = large.next_report_at() - at_large
    # same draws; the 408 bytes weigh 1/16 of the average, times 15/16 after our report
    assert large_interval > small_interval * 1.2


def test_slow_sessions_space_reports_by_bandwidth_and_members() -> None:
    # 800 bit/s: 5 bytes/s of RTCP, so a ~100-byte packet every ~20 s beats the 5 s minimum.
    alone = rtcp_session(session_bandwidth=800.0)
    heard = rtcp_session(session_bandwidth=800.0)
    heard.rtp_received(PEER, 1, 160, 0.1)  # on probation: no report block, same packet size
    assert alone.next_report_at() == heard.next_report_at() > 5 * 1.5 / COMPENSATION
    at_alone, first_alone = due(alone)
    at_heard, first_heard = due(heard)
    assert len(first_alone) == len(first_heard)
    # alone: 1 member, no sender -> receivers' 75 % for 1; heard: 2 members, 1 sender -> all of
    # it for 2 (a sender is not "few" among 2). Same random draw: 2 / (1 / 0.75) = 1.5.
    ratio = (heard.next_report_at() - at_heard) / (alone.next_report_at() - at_alone)
    assert ratio == pytest.approx(1.5)


# ---- receive() validation (A.2) -------------------------------------------------------------

VALID = peer_rr(block(lost=1)) + PEER_SDES


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(VALID[:4], id="header only"),
        pytest.param(VALID[:-4], id="truncated"),
        pytest.param(VALID[:-1], id="not whole words"),
        pytest.param(bytes([0x41]) + VALID[1:], id="version 1"),
        pytest.param(PEER_SDES + peer_rr(), id="first packet SDES"),
        pytest.param(header(203, 1, struct.pack("!I", PEER)), id="first packet BYE"),
        pytest.param(VALID[:2] + b"\x00\x0f" + VALID[4:], id="length overrun"),
        pytest.param(
            peer_rr(block()) + PEER_SDES[:2] + b"\x00\x02" + PEER_SDES[4:], id="length underrun"
        ),
        pytest.param(VALID + b"\x00\x00\x00\x00", id="trailing zero word"),
        pytest.param(VALID + header(72, 0, b""), id="type outside the RTCP range"),
        pytest.param(
            header(201, 2, struct.pack("!I", PEER) + block()), id="report count beyond its length"
        ),
        pytest.param(
            header(201, 0, struct.pack("!I", PEER) + b"\x00\x00\x00\x04", padding=True) + PEER_SDES,
            id="padding on a non-last packet",
        ),
        pytest.param(
            peer_rr() + header(202, 0, b"\x00\x00\x00\x00", padding=True), id="zero padding count"
        ),
        pytest.param(
            peer_rr() + header(202, 0, b"\x00\x00\x00\x09", padding=True), id="padding too long"
        ),
        pytest.param(header(201, 0, b"") + header(201, 0, b""), id="RR without its SSRC"),
    ],
)
def test_malformed_compound_packets_are_refused_and_change_nothing(data: bytes) -> None:
    rtcp = rtcp_session()
    before = rtcp.summary, rtcp.next_report_at()
    with pytest.raises(RtcpError):
        rtcp.receive(data, 1.0, WALL)
    assert (rtcp.summary, rtcp.next_report_at()) == before


def test_the_valid_packet_of_the_cases_above_is_accepted() -> None:
    rtcp = rtcp_session()
    rtcp.receive(VALID, 1.0, WALL)
    assert rtcp.summary.reports_received == 1 and rtcp.summary.peer_lost == 1


def test_error_messages_never_carry_packet_bytes() -> None:
    secret = b"4111111111111111"
    cases = [
        bytes([0x41, 201, 0, 4]) + secret,  # version 1
        bytes([0x81, 201, 0, 9]) + secret,  # overrun
        header(202, 1, secret),  # first packet SDES
        header(201, 0, struct.pack("!I", PEER) + b"\x00\x00\x00\x04", padding=True)
        + header(202, 1, secret),  # padding, not last
    ]
    for data in cases:
        with pytest.raises(RtcpError) as caught:
            rtcp_session().receive(data, 1.0, WALL)
        message = str(caught.value)
        assert "4111" not in message and "\\x" not in message and data.hex()[:8] not in message


def our_packets() -> list[bytes]:
    """Valid compounds of every shape we make, and the peer's kinds."""
    talker = RtcpSession(PEER, 0.0, rng=random.Random(9))
    talker.rtp_sent(0, 160, 0.1)
    for n in range(10):
        talker.rtp_received(OURS, n, 160 * n, 0.02 * n)
    return [
        due(talker)[1],
        talker.bye(9.0, WALL + 9.0, "done"),
        VALID,
        peer_sr(1, 2, block(lsr=3, dlsr=4)) + PEER_SDES,
    ]


VALID_SAMPLES = our_packets()


def check_refused_or_taken(data: bytes) -> None:
    rtcp = rtcp_session()
    feed(rtcp, list(range(5)))
    before = rtcp.summary, rtcp.next_report_at()
    try:
        rtcp.receive(data, 1.0, WALL)
    except RtcpError as error:
        assert (rtcp.summary, rtcp.next_report_at()) == before
        if len(data) >= 4:
            assert data.hex() not in str(error)
    else:
        assert rtcp.summary.reports_received == 1
        rtcp.report(rtcp.next_report_at(), WALL + 5.0)  # and it can still report


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    check_refused_or_taken(data)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(VALID_SAMPLES),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(0, 200),
    st.binary(max_size=12),
)
def test_fuzz_mutated_valid_packets(
    valid: bytes, changes: list[tuple[int, int]], keep: int, tail: bytes
) -> None:
    data = bytearray(valid)
    for at, value in changes:
        if at < len(data):
            data[at] = value
    check_refused_or_taken(bytes(data[:keep]) + tail)


def test_our_packets_are_accepted_by_a_peer() -> None:
    for data in VALID_SAMPLES:
        rtcp = rtcp_session()
        rtcp.receive(data, 1.0, WALL)
        assert rtcp.summary.reports_received == 1
