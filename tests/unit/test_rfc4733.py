"""RFC 4733 receiver: one key press is one start and one end, under every failure mode."""

from __future__ import annotations

import gc
import re
import struct
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reachable import reachable

from spg_media.dtmf.rfc4733 import DTMF_KEYS, DtmfEvent, Rfc4733Receiver

CODES = {key: code for code, key in enumerate(DTMF_KEYS)}
SIPP_DIR = Path("/usr/share/sip-tester")

# (first sequence number, timestamp) of each SIPp 3.6.1 DTMF pcap (/usr/share/sip-tester).
SIPP_PCAPS = {
    "0": (12080, 17632),
    "1": (7984, 13280),
    "2": (8042, 23200),
    "3": (8087, 31040),
    "4": (8121, 37120),
    "5": (8155, 43200),
    "6": (8186, 48800),
    "7": (8219, 54720),
    "8": (8253, 60800),
    "9": (8293, 67840),
    "*": (8397, 85760),
    "#": (8436, 92640),
}


def event_payload(key: str | int, duration: int, end: bool = False, volume: int = 10) -> bytes:
    code = CODES[key] if isinstance(key, str) else key
    return struct.pack("!BBH", code, (0x80 if end else 0) | volume, duration)


@dataclass(frozen=True)
class Pkt:
    """One telephone-event packet as it arrives."""

    key: str | int
    seq: int
    ts: int
    duration: int
    end: bool = False
    marker: bool = False
    at: float = 0.0

    def payload(self) -> bytes:
        return event_payload(self.key, self.duration, self.end)


def feed(receiver: Rfc4733Receiver, packets: list[Pkt]) -> list[DtmfEvent]:
    events: list[DtmfEvent] = []
    for p in packets:
        events += receiver.receive(p.payload(), p.seq, p.ts, p.marker, p.at)
    return events


def summary(events: list[DtmfEvent]) -> list[str]:
    """'+5' for a start of 5, '-5' for its end."""
    return [("+" if e.kind == "start" else "-") + e.digit for e in events]


def press(
    key: str,
    seq: int,
    ts: int,
    t0: float,
    *,
    updates: int = 7,
    step: int = 160,
    interval: float = 0.02,
    ends: int = 3,
    end_seq_same: bool = True,
    marker: bool = True,
) -> list[Pkt]:
    """A well-formed press: `updates` packets every `interval`, then the end packet `ends` times."""
    packets = [
        Pkt(key, (seq + i) & 0xFFFF, ts, step * i, False, marker and i == 0, t0 + i * interval)
        for i in range(updates)
    ]
    end_at = t0 + updates * interval
    for j in range(ends):
        end_seq = seq + updates + (0 if end_seq_same else j)
        packets.append(Pkt(key, end_seq & 0xFFFF, ts, step * updates, True, False, end_at))
    return packets


def sipp_press(key: str, t0: float) -> list[Pkt]:
    """The shape of SIPp's pcaps: 7 updates 20 ms apart (duration +320), end 3× with one seq."""
    seq, ts = SIPP_PCAPS[key]
    packets = [Pkt(key, seq + i, ts, 320 * i, False, i == 0, t0 + 0.02 * i) for i in range(7)]
    packets += [Pkt(key, seq + 7, ts, 0x8C0, True, False, t0 + 0.14)] * 3
    return packets


# ---- event codes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "digit"), list(enumerate("0123456789*#ABCD")))
def test_event_codes_map_to_keys(code: int, digit: str) -> None:
    receiver = Rfc4733Receiver()
    events = receiver.receive(event_payload(code, 0), 1, 1000, True, 0.0)
    assert events == [DtmfEvent(digit, "start", 0.0)]


@pytest.mark.parametrize("code", [16, 17, 32, 63, 100, 255])
def test_non_dtmf_events_are_ignored(code: int) -> None:
    receiver = Rfc4733Receiver()
    assert receiver.receive(event_payload(code, 0), 1, 1000, True, 0.0) == []
    assert receiver.receive(event_payload(code, 800, end=True), 2, 1000, False, 0.1) == []
    assert receiver.next_wake() is None
    assert receiver.stats.ignored == 2


def test_flash_during_a_press_does_not_disturb_it() -> None:
    receiver = Rfc4733Receiver()
    events = feed(receiver, press("5", 100, 8000, 0.0)[:3])
    events += receiver.receive(event_payload(16, 0), 500, 9000, True, 0.05)
    events += feed(receiver, press("5", 100, 8000, 0.0)[3:])
    assert summary(events) == ["+5", "-5"]


# ---- the normal press and SIPp's pcaps ----------------------------------------------------------


def test_start_is_emitted_on_the_first_packet() -> None:
    receiver = Rfc4733Receiver()
    first = receiver.receive(event_payload("7", 0), 10, 5000, True, 1.0)
    assert first == [DtmfEvent("7", "start", 1.0, None, "rfc4733")]


def test_normal_press_with_triple_end() -> None:
    receiver = Rfc4733Receiver()
    events = feed(receiver, press("9", 1, 1000, 0.0))
    assert summary(events) == ["+9", "-9"]
    end = events[1]
    assert end.at == pytest.approx(0.14)
    assert end.duration_ms == pytest.approx(140.0)
    assert receiver.stats.duplicates == 2
    assert receiver.stats.lost_end == 0
    assert receiver.next_wake() is None


@pytest.mark.parametrize("end_seq_same", [True, False], ids=["same-seq", "new-seqs"])
@pytest.mark.parametrize("ends", [1, 2, 3, 5])
def test_end_packet_repeats_count_once(ends: int, end_seq_same: bool) -> None:
    receiver = Rfc4733Receiver()
    events = feed(receiver, press("1", 65530, 1000, 0.0, ends=ends, end_seq_same=end_seq_same))
    assert summary(events) == ["+1", "-1"]
    assert receiver.stats.duplicates == ends - 1


@pytest.mark.parametrize("key", list(SIPP_PCAPS))
def test_sipp_pcap_shape_each_digit(key: str) -> None:
    receiver = Rfc4733Receiver()
    events = feed(receiver, sipp_press(key, 0.0))
    assert summary(events) == ["+" + key, "-" + key]
    assert events[0].at == 0.0
    assert events[1].duration_ms == pytest.approx(280.0)  # 0x8C0 samples at 8 kHz


@pytest.mark.parametrize(
    "keys",
    ["4111111111111111", "5555555555554444", "1230#", "0987654321*#", "99", "#1#"],
)
@pytest.mark.parametrize("pause", [0.06, 0.2, 1.0])
def test_sipp_pcaps_played_one_after_another(keys: str, pause: float) -> None:
    """Unrelated seq/ts ranges per digit, and the SAME pcap replayed for a repeated digit."""
    receiver = Rfc4733Receiver()
    events: list[DtmfEvent] = []
    t = 0.0
    for key in keys:
        events += feed(receiver, sipp_press(key, t))
        t += 0.14 + pause
        events += receiver.poll(t - 0.001)
    events += receiver.poll(t + 10)
    assert "".join(e.digit for e in events if e.kind == "start") == keys
    assert "".join(e.digit for e in events if e.kind == "end") == keys
    assert receiver.stats.lost_end == 0


@pytest.mark.skipif(not SIPP_DIR.is_dir(), reason="sip-tester pcaps not installed")
@pytest.mark.parametrize("name", ["1", "5", "9", "pound", "star", "0"])
def test_real_sipp_pcap(name: str) -> None:
    path = SIPP_DIR / f"dtmf_2833_{name}.pcap"
    data = path.read_bytes()
    (magic, link) = struct.unpack_from("<I16xI", data)
    assert magic == 0xA1B2C3D4 and link == 1  # microsecond pcap of Ethernet frames
    receiver = Rfc4733Receiver()
    events: list[DtmfEvent] = []
    offset = 24
    t0: float | None = None
    count = 0
    while offset < len(data):
        seconds, micros, length = struct.unpack_from("<III", data, offset)
        frame = data[offset + 16 : offset + 16 + length]
        offset += 16 + length
        ip_header = (frame[14] & 0x0F) * 4
        rtp = frame[14 + ip_header + 8 :]
        second, seq, ts = struct.unpack_from("!xBHI", rtp)
        now = seconds + micros / 1e6
        t0 = now if t0 is None else t0
        events += receiver.receive(rtp[12:], seq, ts, bool(second & 0x80), now - t0)
        count += 1
    expected = {"pound": "#", "star": "*"}.get(name, name)
    assert count == 10
    assert summary(events) == ["+" + expected, "-" + expected]
    assert events[0].at == 0.0


# ---- lost end packets ---------------------------------------------------------------------------


def test_lost_end_times_out_after_last_duration_plus_guard() -> None:
    receiver = Rfc4733Receiver(end_guard_s=0.25)
    events = feed(receiver, press("3", 1, 1000, 0.0, ends=0))  # last update at 0.12 s, 960 samples
    assert summary(events) == ["+3"]
    wake = receiver.next_wake()
    assert wake is not None
    assert wake == pytest.approx(0.12 + 0.25)
    assert receiver.poll(wake - 0.001) == []
    ended = receiver.poll(wake)
    assert summary(ended) == ["-3"]
    assert ended[0].duration_ms == pytest.approx(120.0)
    assert receiver.stats.lost_end == 1
    assert receiver.next_wake() is None
    assert receiver.poll(wake + 5) == []


def test_reported_duration_extends_the_deadline_past_a_burst() -> None:
    """Updates delayed and delivered in a burst: the duration says the key is still down."""
    receiver = Rfc4733Receiver(end_guard_s=0.25)
    packets = [Pkt("3", i, 1000, 800 * i, False, i == 0, 0.0) for i in range(4)]  # all at t=0
    feed(receiver, packets)
    assert receiver.next_wake() == pytest.approx(0.3 + 0.25)  # 2400 samples = 0.3 s


def test_lost_end_then_late_packets_of_that_press_are_ignored() -> None:
    receiver = Rfc4733Receiver()
    packets = press("3", 1, 1000, 0.0)
    events = feed(receiver, packets[:4])
    events += receiver.poll(1.0)
    events += feed(
        receiver, [Pkt(p.key, p.seq, p.ts, p.duration, p.end, p.marker, 1.1) for p in packets[4:]]
    )
    assert summary(events) == ["+3", "-3"]


def test_receive_also_runs_the_timer() -> None:
    """Without poll() being called, the next packet still ends a timed-out press first."""
    receiver = Rfc4733Receiver()
    events = feed(receiver, press("3", 1, 1000, 0.0, ends=0))
    events += feed(receiver, press("4", 50, 9000, 5.0))
    assert summary(events) == ["+3", "-3", "+4", "-4"]
    assert events[1].at == 5.0
    assert receiver.stats.lost_end == 1


@pytest.mark.parametrize(
    ("second_key", "marker"),
    [("8", True), ("8", False), ("3", True)],
    ids=["other-digit", "other-digit-no-marker", "same-digit"],
)
def test_lost_end_new_timestamp_ends_the_old_press(second_key: str, marker: bool) -> None:
    receiver = Rfc4733Receiver()
    events = feed(receiver, press("3", 1, 1000, 0.0, ends=0))
    events += feed(receiver, press(second_key, 8, 3000, 0.2, marker=marker))
    assert summary(events) == ["+3", "-3", f"+{second_key}", f"-{second_key}"]
    assert events[1].at == 0.2  # ended by the new event's first packet
    assert receiver.stats.lost_end == 1


# ---- marker bit and new timestamps --------------------------------------------------------------


@pytest.mark.parametrize("keys", ["12", "11", "555", "#*#"])
def test_missing_marker_bit_new_timestamp_is_a_new_press(keys: str) -> None:
    receiver = Rfc4733Receiver()
    events: list[DtmfEvent] = []
    seq, ts, t = 100, 1000, 0.0
    for key in keys:
        events += feed(receiver, press(key, seq, ts, t, marker=False))
        seq, ts, t = seq + 10, ts + 2400, t + 0.3
    assert summary(events) == [s for k in keys for s in ("+" + k, "-" + k)]


def test_missing_marker_and_lost_end_same_digit_is_two_presses() -> None:
    """Not contiguous with what was reported: a release gap lies between the two."""
    receiver = Rfc4733Receiver()
    events = feed(receiver, press("1", 100, 1000, 0.0, ends=0, marker=False))  # up to 960
    events += feed(receiver, press("1", 107, 1000 + 1600, 0.2, marker=False))
    assert summary(events) == ["+1", "-1", "+1", "-1"]


def test_new_timestamp_mid_digit_ends_old_and_starts_new() -> None:
    receiver = Rfc4733Receiver()
    events = feed(receiver, press("2", 1, 1000, 0.0, ends=0)[:3])
    events += feed(receiver, press("6", 4, 1480, 0.06))
    assert summary(events) == ["+2", "-2", "+6", "-6"]
    assert events[1].at == events[2].at == 0.06


@pytest.mark.parametrize("gap_s", [0.04, 0.06, 0.1])
def test_same_digit_pressed_twice_quickly_is_two_presses(gap_s: float) -> None:
    receiver = Rfc4733Receiver()
    first = press("5", 1, 1000, 0.0, updates=3)
    second_t0 = 0.06 + gap_s
    second = press("5", 7, 1000 + int(second_t0 * 8000), second_t0, updates=3)
    events = feed(receiver, first + second)
    assert summary(events) == ["+5", "-5", "+5", "-5"]


# ---- long presses -------------------------------------------------------------------------------


def test_long_press_with_sparse_updates() -> None:
    receiver = Rfc4733Receiver(end_guard_s=0.25)
    events: list[DtmfEvent] = []
    for i in range(16):  # an update every 200 ms for 3 s
        at = 0.2 * i
        events += receiver.poll(at - 1e-6)
        events += receiver.receive(event_payload("0", 1600 * i), 40 + i, 7777, i == 0, at)
    events += receiver.receive(event_payload("0", 24000, end=True), 56, 7777, False, 3.05)
    assert summary(events) == ["+0", "-0"]
    assert events[1].duration_ms == pytest.approx(3000.0)


def test_guard_stretches_to_the_sender_update_interval() -> None:
    receiver = Rfc4733Receiver(end_guard_s=0.25)
    events = receiver.receive(event_payload("0", 0), 1, 50, True, 0.0)
    events += receiver.receive(event_payload("0", 1600), 2, 50, False, 0.2)
    # The next update comes 0.29 s later: more than the guard, less than 1.5 × the 0.2 s gap.
    events += receiver.poll(0.2 + 0.28)
    events += receiver.receive(event_payload("0", 3920), 3, 50, False, 0.49)
    events += receiver.receive(event_payload("0", 4000, end=True), 4, 50, False, 0.5)
    assert summary(events) == ["+0", "-0"]
    assert receiver.stats.lost_end == 0


def test_duration_field_wrapping_under_one_timestamp() -> None:
    """A sender that lets the 16-bit duration wrap instead of segmenting: still one press."""
    receiver = Rfc4733Receiver()
    events: list[DtmfEvent] = []
    for i in range(91):  # an update every 200 ms for 18 s: the field wraps twice
        at = 0.2 * i
        events += receiver.poll(at)
        payload = event_payload("#", (1600 * i) & 0xFFFF)
        events += receiver.receive(payload, (65500 + i) & 0xFFFF, 123, i == 0, at)
    end = event_payload("#", (1600 * 91) & 0xFFFF, end=True)
    events += receiver.receive(end, (65500 + 91) & 0xFFFF, 123, False, 18.2)
    assert summary(events) == ["+#", "-#"]
    assert events[1].duration_ms == pytest.approx(1600 * 91 / 8)


def test_reordered_old_duration_is_not_taken_for_a_wrap() -> None:
    receiver = Rfc4733Receiver()
    events = receiver.receive(event_payload("1", 65000), 10, 5, True, 0.0)
    events += receiver.receive(event_payload("1", 100), 9, 5, False, 0.01)  # older seq
    events += receiver.receive(event_payload("1", 65100, end=True), 11, 5, False, 0.02)
    assert events[-1].duration_ms == pytest.approx(65100 / 8)


def segmented_press(
    key: str, ts: int, seq: int, *, drop_last_of_first_segment: bool = False
) -> list[Pkt]:
    """RFC 4733 §2.5.1.3: a long event in segments of 0xFFFF with new timestamps, no E between.

    Two full segments (updates every 200 ms, the last one at 0xFFFF), then a third one of
    32000 samples ended by the end packet three times.
    """
    packets: list[Pkt] = []
    t = 0.0
    segment_ts = ts
    full = [*range(0, 0xFFFF, 1600), 0xFFFF]
    for segment, durations in enumerate([full, full, list(range(0, 32000, 1600))]):
        for i, duration in enumerate(durations):
            last_of_first = segment == 0 and i == len(durations) - 1
            if not (drop_last_of_first_segment and last_of_first):
                marker = segment == 0 and i == 0  # only the event's first packet is marked
                packets.append(
                    Pkt(key, seq & 0xFFFF, segment_ts & 0xFFFFFFFF, duration, False, marker, t)
                )
            seq += 1
            t += 0.2 if duration != 0xFFFF else 0.005
        if segment < 2:
            segment_ts += 0xFFFF
    packets += [Pkt(key, seq & 0xFFFF, segment_ts & 0xFFFFFFFF, 32000, True, False, t)] * 3
    return packets


@pytest.mark.parametrize("ts", [1000, 0xFFFFFFFF - 70000, 0xFFFFFFFF - 5])
@pytest.mark.parametrize("drop", [False, True], ids=["complete", "lost-segment-tail"])
def test_segmented_long_event_is_one_press(ts: int, drop: bool) -> None:
    receiver = Rfc4733Receiver()
    events: list[DtmfEvent] = []
    for p in segmented_press("4", ts, 65530, drop_last_of_first_segment=drop):
        events += receiver.poll(p.at)
        events += receiver.receive(p.payload(), p.seq, p.ts, p.marker, p.at)
    assert summary(events) == ["+4", "-4"]
    assert events[1].duration_ms == pytest.approx((2 * 0xFFFF + 32000) / 8)
    assert receiver.stats.lost_end == 0


def test_early_segmentation_contiguous_with_the_last_duration_is_one_press() -> None:
    """A sender that segments well before 0xFFFF: the new timestamp continues the old exactly."""
    receiver = Rfc4733Receiver()
    events: list[DtmfEvent] = []
    seq, t = 1, 0.0
    for segment_ts in (1000, 1000 + 4000, 1000 + 8000):
        for duration in range(0, 4001, 400):
            events += receiver.receive(event_payload("7", duration), seq, segment_ts, seq == 1, t)
            seq, t = seq + 1, t + 0.05
    events += receiver.receive(event_payload("7", 4000, end=True), seq, 9000, False, t)
    assert summary(events) == ["+7", "-7"]
    assert events[1].duration_ms == pytest.approx(12000 / 8)


def test_late_packet_of_an_earlier_segment_stays_in_the_press() -> None:
    receiver = Rfc4733Receiver()
    events = receiver.receive(event_payload("4", 60000), 1, 1000, True, 0.0)
    events += receiver.receive(event_payload("4", 0xFFFF), 3, 1000, False, 0.2)
    events += receiver.receive(event_payload("4", 800), 4, 1000 + 0xFFFF, False, 0.3)
    events += receiver.receive(event_payload("4", 65000), 2, 1000, False, 0.31)  # late, old seg
    events += receiver.receive(event_payload("4", 1600, end=True), 5, 1000 + 0xFFFF, False, 0.4)
    assert summary(events) == ["+4", "-4"]
    assert events[1].duration_ms == pytest.approx((0xFFFF + 1600) / 8)


def test_segment_of_another_digit_is_not_a_continuation() -> None:
    receiver = Rfc4733Receiver()
    events = receiver.receive(event_payload("4", 0xFFFF), 1, 1000, True, 0.0)
    events += receiver.receive(event_payload("5", 800), 2, 1000 + 0xFFFF, False, 0.1)
    assert summary(events) == ["+4", "-4", "+5"]


def test_marked_new_timestamp_right_after_is_a_new_press_not_a_segment() -> None:
    receiver = Rfc4733Receiver()
    events = receiver.receive(event_payload("4", 800), 1, 1000, True, 0.0)
    events += receiver.receive(event_payload("4", 0), 2, 1800, True, 0.1)
    assert summary(events) == ["+4", "-4", "+4"]


# ---- reordering and duplicates ------------------------------------------------------------------


def test_duplicated_updates_are_counted_and_ignored() -> None:
    receiver = Rfc4733Receiver()
    packets = press("8", 10, 500, 0.0)
    doubled = [p for p in packets[:7] for _ in range(2)] + packets[7:]
    events = feed(receiver, doubled)
    assert summary(events) == ["+8", "-8"]
    assert receiver.stats.duplicates == 7 + 2


def test_end_overtaking_updates_ends_once_and_later_updates_are_stale() -> None:
    receiver = Rfc4733Receiver()
    packets = press("8", 10, 500, 0.0, ends=1)
    reordered = [packets[0], packets[-1], *packets[1:-1]]
    events = feed(receiver, reordered)
    assert summary(events) == ["+8", "-8"]
    assert receiver.stats.stale == 6


def test_end_packet_first_gives_start_and_end_at_once() -> None:
    receiver = Rfc4733Receiver()
    events = receiver.receive(event_payload("B", 1120, end=True), 7, 99, False, 2.0)
    assert summary(events) == ["+B", "-B"]
    assert events[1].duration_ms == pytest.approx(140.0)
    assert receiver.next_wake() is None


def test_packets_of_an_ended_press_are_ignored_after_another_press() -> None:
    receiver = Rfc4733Receiver()
    first = press("1", 100, 1000, 0.0)
    second = press("2", 110, 4000, 0.3)
    late = Pkt("1", 103, 1000, 480, False, False, 0.35)  # overtaken by the whole press
    late_end = Pkt("1", 107, 1000, 1120, True, False, 0.36)
    delivered = [p for p in first if p.seq != 103]
    events = feed(receiver, delivered + second[:3] + [late, late_end] + second[3:])
    assert summary(events) == ["+1", "-1", "+2", "-2"]
    assert receiver.stats.lost_end == 0
    assert receiver.stats.stale == 1


def test_sequence_wraparound_within_a_press() -> None:
    receiver = Rfc4733Receiver()
    events = feed(receiver, press("C", 65532, 0xFFFFFF00, 0.0))
    assert summary(events) == ["+C", "-C"]
    assert events[1].duration_ms == pytest.approx(140.0)


def test_replayed_packets_well_after_the_end_are_a_second_press() -> None:
    receiver = Rfc4733Receiver(replay_gap_s=0.05)
    packets = press("1", 7984, 13280, 0.0)
    events = feed(receiver, packets)
    replay = [Pkt(p.key, p.seq, p.ts, p.duration, p.end, p.marker, p.at + 0.2) for p in packets]
    events += feed(receiver, replay)
    assert summary(events) == ["+1", "-1", "+1", "-1"]
    assert receiver.stats.replays == 1


def test_duplicates_right_after_the_end_are_not_a_replay() -> None:
    receiver = Rfc4733Receiver(replay_gap_s=0.05)
    packets = press("1", 7984, 13280, 0.0)
    events = feed(receiver, packets)
    again = [Pkt(p.key, p.seq, p.ts, p.duration, p.end, p.marker, 0.16) for p in packets]
    events += feed(receiver, again)
    assert summary(events) == ["+1", "-1"]
    assert receiver.stats.replays == 0


def test_late_end_retransmission_is_never_a_replay() -> None:
    receiver = Rfc4733Receiver()
    packets = press("1", 7984, 13280, 0.0)
    events = feed(receiver, packets)
    events += receiver.receive(packets[-1].payload(), packets[-1].seq, 13280, False, 5.0)
    assert summary(events) == ["+1", "-1"]


# ---- malformed input ----------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x01\x0a", b"\x01\x0a\x00"])
def test_malformed_payloads_are_counted_never_raised(payload: bytes) -> None:
    receiver = Rfc4733Receiver()
    assert receiver.receive(payload, 1, 2, True, 0.0) == []
    assert receiver.stats.malformed == 1
    assert receiver.stats.packets == 1
    assert receiver.next_wake() is None


def test_malformed_payload_mid_press_does_not_disturb_it() -> None:
    receiver = Rfc4733Receiver()
    packets = press("6", 1, 1000, 0.0)
    events = feed(receiver, packets[:3])
    events += receiver.receive(b"\x06", 4, 1000, False, 0.05)
    events += feed(receiver, packets[3:])
    assert summary(events) == ["+6", "-6"]


def test_extra_bytes_after_the_event_block_are_ignored() -> None:
    receiver = Rfc4733Receiver()
    events = receiver.receive(event_payload("6", 0) + b"\x00\x00\x00\x00", 1, 1000, True, 0.0)
    assert summary(events) == ["+6"]


def test_out_of_range_header_values_are_masked() -> None:
    receiver = Rfc4733Receiver()
    events = receiver.receive(event_payload("6", 0), 65536 + 1, 2**32 + 1000, True, 0.0)
    events += receiver.receive(event_payload("6", 160, end=True), 2, 1000, False, 0.02)
    assert summary(events) == ["+6", "-6"]


@pytest.mark.parametrize(("clock_rate", "guard"), [(0, 0.25), (-8000, 0.25), (8000, 0.0)])
def test_bad_configuration_is_refused(clock_rate: int, guard: float) -> None:
    with pytest.raises(ValueError):
        Rfc4733Receiver(clock_rate, guard)


def test_other_clock_rate() -> None:
    receiver = Rfc4733Receiver(clock_rate=16000)
    events = receiver.receive(event_payload("1", 3200, end=True), 1, 0, True, 0.0)
    assert events[1].duration_ms == pytest.approx(200.0)


# ---- properties ---------------------------------------------------------------------------------


@st.composite
def shuffled_press(draw: st.DrawFn) -> tuple[str, list[Pkt]]:
    key = draw(st.sampled_from(DTMF_KEYS))
    seq = draw(st.integers(0, 0xFFFF))
    ts = draw(st.integers(0, 0xFFFFFFFF))
    updates = draw(st.integers(1, 12))
    ends = draw(st.integers(1, 3))
    same = draw(st.booleans())
    marker = draw(st.booleans())
    packets = press(key, seq, ts, 0.0, updates=updates, ends=ends, end_seq_same=same, marker=marker)
    chosen = draw(
        st.lists(st.sampled_from(range(len(packets))), min_size=1, max_size=40)
    )  # any subset, order and duplication
    return key, [packets[i] for i in chosen]


@settings(max_examples=300, deadline=None)
@given(shuffled_press())
def test_any_permutation_and_duplication_is_one_press(case: tuple[str, list[Pkt]]) -> None:
    key, packets = case
    receiver = Rfc4733Receiver()
    events: list[DtmfEvent] = []
    for i, p in enumerate(packets):  # arriving within 40 ms, as jitter would reorder them
        events += receiver.receive(p.payload(), p.seq, p.ts, p.marker, i * 0.001)
    assert summary(events).count("+" + key) == 1
    assert summary(events).count("-" + key) <= 1
    assert summary(events)[0] == "+" + key
    events += receiver.poll(100.0)
    assert summary(events) == ["+" + key, "-" + key]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.binary(max_size=6),
            st.integers(0, 0xFFFF),
            st.integers(0, 0xFFFFFFFF),
            st.booleans(),
            st.floats(0, 0.5),
        ),
        max_size=30,
    )
)
def test_arbitrary_input_never_raises_and_starts_and_ends_pair_up(
    packets: list[tuple[bytes, int, int, bool, float]],
) -> None:
    receiver = Rfc4733Receiver()
    events: list[DtmfEvent] = []
    now = 0.0
    for payload, seq, ts, marker, step in packets:
        now += step
        events += receiver.receive(payload, seq, ts, marker, now)
        events += receiver.poll(now)
    events += receiver.poll(now + 100)
    open_digit: str | None = None
    for e in events:
        if e.kind == "start":
            assert open_digit is None  # one press at a time, always ended before the next
            open_digit = e.digit
        else:
            assert e.digit == open_digit
            open_digit = None
    assert open_digit is None
    assert receiver.next_wake() is None


# ---- card data ----------------------------------------------------------------------------------


def test_keyed_card_never_appears_in_reprs() -> None:
    """The keys pressed are card data: events and the receiver must not print them."""
    pan, expiry, cvc = "4111111111111111", "1230", "737"
    receiver = Rfc4733Receiver()
    events: list[DtmfEvent] = []
    t = 0.0
    for n, key in enumerate(pan + expiry + cvc):
        events += feed(receiver, press(key, n * 20, n * 4000, t))
        t += 0.5
    assert "".join(e.digit for e in events if e.kind == "start") == pan + expiry + cvc
    printed = " ".join(repr(e) + str(e) for e in events)
    printed += repr(receiver) + repr(receiver.stats) + repr(vars(receiver).get("_active"))
    printed += " ".join(repr(p) for p in receiver._history.values())
    # Object addresses ("at 0x7fd4d4617e20") are not card data but may contain "737" by chance.
    printed = re.sub(r"0x[0-9a-f]+", "0x?", printed)
    assert "digit=" not in printed
    for secret in (pan, pan[:6], expiry, cvc, "'4'", "'1'"):
        assert secret not in printed


# ---- memory: bounded, and no keys once a press has ended ----------------------------------------


def deep_size(root: object) -> int:
    total, seen, stack = 0, set(), [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type | types.ModuleType | types.FunctionType):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def key_presses(keys: str) -> list[Pkt]:
    """SIPp-shaped presses of `keys`, 0.5 s apart; numbering and timing depend only on position."""
    packets: list[Pkt] = []
    for n, key in enumerate(keys):
        packets += press(key, (n * 20) & 0xFFFF, 160_000 + n * 4000, n * 0.5)
    return packets


def test_after_the_presses_nothing_reachable_holds_the_keys() -> None:
    """Two callers key different cards with the same timing: afterwards everything reachable
    from their receivers is the same, so nothing in it tells which keys were pressed (the old
    history, keyed (timestamp, event), gave back the whole sequence in order)."""
    cards = ["4111111111111111#1230#737", "5555555555554444#0731#123"]
    states = []
    for keys in cards:
        receiver = Rfc4733Receiver()
        events = feed(receiver, key_presses(keys))
        events += receiver.poll(100.0)
        assert "".join(e.digit for e in events if e.kind == "start") == keys
        state = reachable(receiver)
        codes = [repr(CODES[key]) for key in keys]
        assert "'4111111111111111'" not in state and "'5555555555554444'" not in state
        states.append((state, codes))
    assert states[0][0] == states[1][0]
    assert len(states[0][0]) > 100  # the walk did go through the history


def test_an_active_press_alone_knows_its_key() -> None:
    receiver = Rfc4733Receiver()
    feed(receiver, key_presses("41"))
    receiver.receive(event_payload("7", 0), 500, 999_000, True, 5.0)  # 7 held down
    assert sum(p.event is not None for p in receiver._history.values()) == 1
    assert receiver._active is not None and receiver._active.event == CODES["7"]


def test_a_long_press_keeps_memory_bounded_and_still_tells_duplicates() -> None:
    """One press of 70,000 packets (the sequence numbers wrap): the old receiver kept every
    number, 65,536 of them; the window keeps the newest 64."""
    receiver = Rfc4733Receiver()
    events = receiver.receive(event_payload("5", 0), 0, 1000, True, 0.0)
    size_early = 0
    for n in range(1, 70_000):
        events += receiver.receive(
            event_payload("5", (160 * n) & 0xFFFF), n & 0xFFFF, 1000, False, n * 0.02
        )
        if n == 100:
            size_early = deep_size(receiver)
    assert deep_size(receiver) <= size_early + 64  # a few more bits in one int at most
    last = 69_999
    events += receiver.receive(event_payload("5", 0), (last - 3) & 0xFFFF, 1000, False, 1400.0)
    assert receiver.stats.duplicates == 1  # a recent number again: a duplicate
    end = event_payload("5", 1000, end=True)
    for _ in range(3):
        events += receiver.receive(end, (last + 1) & 0xFFFF, 1000, False, 1400.01)
    assert summary(events) == ["+5", "-5"]
    assert receiver.stats.duplicates == 3  # and the end packet's retransmissions
    events += receiver.receive(event_payload("5", 160), 5, 1000, False, 1401.0)
    assert summary(events) == ["+5", "-5"] and receiver.stats.stale == 1  # far behind: stale


def test_a_late_update_just_inside_the_window_is_still_recognised() -> None:
    receiver = Rfc4733Receiver()
    packets = press("3", 100, 7000, 0.0, updates=70, ends=1)
    held_back = packets[5]
    events = feed(receiver, [p for p in packets[:69] if p is not held_back])
    late = Pkt(held_back.key, held_back.seq, held_back.ts, held_back.duration, at=1.39)
    events += feed(receiver, [late, late])  # 63 numbers behind the newest: taken, then repeated
    assert receiver.stats.duplicates == 1 and receiver.stats.stale == 0
    events += feed(receiver, packets[69:])
    assert summary(events) == ["+3", "-3"]


def test_a_sender_reusing_a_timestamp_for_the_next_key_still_gets_both_presses() -> None:
    """Against RFC 4733, some senders keep the timestamp: the next key comes with newer
    sequence numbers, after the first's end packet. Late packets of the first stay stale."""
    receiver = Rfc4733Receiver()
    first = press("1", 100, 5000, 0.0, ends=3)
    second = press("2", 110, 5000, 0.3, ends=3)
    late = Pkt("1", 103, 5000, 480, False, False, 0.35)
    events = feed(receiver, first + second[:2] + [late] + second[2:])
    assert summary(events) == ["+1", "-1", "+2", "-2"]
    assert receiver.stats.stale == 1


def test_another_key_under_the_active_timestamp_is_a_new_press_unless_older() -> None:
    receiver = Rfc4733Receiver()
    events = feed(receiver, press("1", 100, 5000, 0.0, ends=0)[:3])
    events += receiver.receive(event_payload("9", 0), 90, 5000, False, 0.05)  # older: stale
    events += receiver.receive(event_payload("9", 0), 110, 5000, True, 0.1)  # newer: a press
    assert summary(events) == ["+1", "-1", "+9"]
    assert receiver.stats.stale == 1 and receiver.stats.lost_end == 1


@pytest.mark.skipif(not SIPP_DIR.is_dir(), reason="sip-tester pcaps not installed")
def test_sipp_pcaps_give_every_key_its_own_timestamp() -> None:
    """The receiver identifies an ended press by its timestamp alone: in SIPp's pcaps no two
    keys share one (each pcap is one key, one timestamp)."""
    stamps: dict[int, set[str]] = {}
    for path in sorted(SIPP_DIR.glob("dtmf_2833_*.pcap")):
        data = path.read_bytes()
        offset, found = 24, set()
        while offset < len(data):
            length = struct.unpack_from("<I", data, offset + 8)[0]
            frame = data[offset + 16 : offset + 16 + length]
            offset += 16 + length
            rtp = frame[14 + (frame[14] & 0x0F) * 4 + 8 :]
            found.add((struct.unpack_from("!I", rtp, 4)[0], rtp[12]))
        assert len(found) == 1, path.name  # one timestamp and one event code per pcap
        ((stamp, code),) = found
        stamps.setdefault(stamp, set()).add(DTMF_KEYS[code])
    assert len(stamps) == 12 and all(len(keys) == 1 for keys in stamps.values())


def test_stats_counts_are_the_non_zero_counters() -> None:
    receiver = Rfc4733Receiver()
    payload = bytes([5, 0x80 | 10, 0x01, 0x40])
    receiver.receive(payload, 1, 8000, True, 0.0)
    receiver.receive(payload, 1, 8000, False, 0.02)  # the same packet again
    assert receiver.stats.counts() == {
        "rfc4733_packets": 2,
        "rfc4733_presses": 1,
        "rfc4733_duplicates": 1,
    }
