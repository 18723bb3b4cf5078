"""Sans-IO RFC 4733 telephone-event receiver: RTP event packets in, key presses out.

This module owns turning `telephone-event` payloads into DTMF key presses: exactly one "start"
and one "end" per press, whatever the network or the sender does to the packets.

Theory of operation
-------------------
A press is identified by its RTP timestamp: RFC 4733 gives every packet of one event (updates and
the retransmitted end packets) the timestamp of the event's beginning, and a new event a new one.
The receiver keeps one *active* press and a short history of recent presses by timestamp:

* a packet whose timestamp is unknown begins a new press. The "start" is emitted at once, on the
  first packet that arrives (lowest latency), whether or not it carries the marker bit (senders
  that forget it exist) and whatever its position in the sequence space (SIPp plays each digit
  from its own pcap, so consecutive presses have unrelated sequence numbers and timestamps, and
  "older" numbers cannot be taken to mean "late"). An active press with another timestamp is
  ended first: its end packets were lost.
* a packet of the active press updates it; the first one with the E bit ends it. Sequence
  numbers already seen are duplicates (SIPp sends its end packet three times with one number).
* a packet of an ended press is ignored: counted as a duplicate (a repeated number, or an end
  retransmission) or as stale (an update overtaken by the end). One exception: a sender that
  replays the *same* packets for a second press of the same digit (SIPp playing one pcap twice)
  repeats already-seen sequence numbers well after the end; a non-end packet with a seen number
  arriving `replay_gap_s` or more after the end begins a new press.
* a sender that breaks the rule and reuses a timestamp for the next key: a packet of the known
  timestamp with a sequence number newer than all of that press's begins a new press when it
  cannot belong to it: it carries another key than the active press, or it is an update after
  the press's end packet (which is sent last).
* an active press that stops receiving packets is ended by `poll` at `next_wake()`: the later of
  its last packet and its onset (its first packet's arrival less that packet's duration) plus
  the last reported duration, plus a guard (`end_guard_s`, stretched to 1.5× the longest gap
  seen between its packets, for senders with sparse updates on long presses).
* long events: the 16-bit duration may wrap under the same timestamp (counted as wraps, ordered
  by sequence number with 16-bit wraparound), or the sender may start a new "segment" with a new
  timestamp and no E bit in between (RFC 4733 §2.5.1.3). A packet of the same event, without the
  marker bit, whose timestamp continues the active press (its timestamp minus the press's is,
  modulo 2^32, the duration last reported, or the press was near the 0xFFFF limit) continues it.

Memory, and card data. The keys pressed are card data, so only the active press knows its key:
an ended press is remembered by its timestamp(s), its end time and the sequence numbers it saw,
never by its event code, so the history cannot be read back as the sequence keyed. The sequence
numbers seen are a window of the newest `_SEQ_WINDOW` (a bitmask): enough to tell duplicates and
end retransmissions apart however long a press lasts; a packet further back than the window is
stale. At most `_HISTORY_SIZE` presses are remembered.

Events other than the 16 DTMF keys (flash, tones, ...) are ignored. Payloads shorter than the
4-byte event block are counted as malformed; nothing in here raises on network input.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Final, Literal

DTMF_KEYS: Final = "0123456789*#ABCD"  # event codes 0–15 (RFC 4733 §3.2)
MAX_DURATION: Final = 0xFFFF
_HISTORY_SIZE: Final = 64  # recent presses remembered to recognise their late packets
_SEQ_WINDOW: Final = 64  # sequence numbers remembered per press, back from its newest
_WINDOW_MASK: Final = (1 << _SEQ_WINDOW) - 1
_MAX_SPARSE_GUARD_S: Final = 2.0  # cap on the gap-based guard stretch
_MAX_REPORTED_S: Final = 2.0  # how far a reported duration may move a deadline past a packet
_CONTIGUITY_S: Final = 0.03  # tolerance when matching a new segment to the previous one
_NEAR_LIMIT_S: Final = 1.0  # a segment this close to 0xFFFF may have lost its last packets


@dataclass(frozen=True)
class DtmfEvent:
    """A key going down ("start") or up ("end"), from one of the DTMF sources.

    The digit is left out of the repr: the keys pressed are card data (PCI DSS), and events end
    up in debug output and tracebacks.
    """

    digit: str = field(repr=False)
    kind: Literal["start", "end"]
    at: float
    duration_ms: float | None = None
    source: str = "rfc4733"
    # When the press reached the node, where that is not `at`: for an in-band start, the
    # arrival of the packet that carried the tones' onset (`at` is the onset on the audio's
    # clock). None: `at` is the arrival (an RFC 4733 start: its first packet's; an INFO's).
    arrived_at: float | None = field(default=None, compare=False)


@dataclass
class Rfc4733Stats:
    packets: int = 0  # every payload handed to receive()
    duplicates: int = 0  # repeated sequence numbers and end retransmissions
    stale: int = 0  # packets of a press that had already ended, or too far behind its newest
    malformed: int = 0  # payloads shorter than 4 bytes
    lost_end: int = 0  # presses ended without an end packet (timeout or a new event)
    ignored: int = 0  # events that are not DTMF keys (flash etc.)
    presses: int = 0  # starts emitted
    replays: int = 0  # presses recognised as a replay of an ended press's packets

    def counts(self) -> dict[str, int]:
        """The non-zero counters, for a call's end-of-call DTMF log line."""
        return {f"rfc4733_{k}": v for k, v in asdict(self).items() if v}


def _seq_newer(a: int, b: int) -> bool:
    """True when sequence number a comes after b (RFC 3550 16-bit serial arithmetic)."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


# What a sequence number is to a press: seen already, newer than all it has seen, older than its
# newest but not seen (a late packet), or further back than the window remembers.
_SEEN, _NEWER, _LATE, _TOO_OLD = range(4)


@dataclass(slots=True, eq=False, repr=False)  # no repr: the event code is the key pressed
class _Press:
    event: int | None  # the key's event code while the press is active; None once it has ended
    timestamp: int  # of the current segment
    started_at: float
    last_at: float
    onset_at: float = 0.0  # when the event began, by its first packet's arrival and duration
    top_seq: int | None = None  # the newest sequence number seen (16-bit serial order)
    seen: int = 0  # bit i set: top_seq - i seen (i < _SEQ_WINDOW)
    newest_seq: int | None = None  # newest packet of the current segment, by sequence number
    raw_duration: int = 0  # its duration field
    wraps: int = 0  # times the duration field wrapped within the current segment
    previous_segments: int = 0  # samples covered by earlier segments
    duration: int = 0  # samples in all: previous segments plus the current one
    max_gap: float = 0.0
    ended_at: float | None = None
    ended_by_end: bool = False  # by its end packet (not a timeout or the next event)
    deadline: float = 0.0  # when poll() ends it without an end packet; kept by _update

    @property
    def digit(self) -> str:
        assert self.event is not None, "an ended press knows no key"
        return DTMF_KEYS[self.event]

    @property
    def segment_duration(self) -> int:
        return self.wraps * (MAX_DURATION + 1) + self.raw_duration

    def classify(self, sequence: int) -> int:
        """_SEEN, _NEWER, _LATE or _TOO_OLD: what `sequence` is to this press."""
        top = self.top_seq
        if top is None:
            return _NEWER
        behind = (top - sequence) & 0xFFFF
        if behind == 0:
            return _SEEN
        if behind >= 0x8000:
            return _NEWER
        if behind >= _SEQ_WINDOW:
            return _TOO_OLD
        return _SEEN if self.seen >> behind & 1 else _LATE

    def mark(self, sequence: int, kind: int) -> None:
        """Remember `sequence` (classified _NEWER or _LATE) as seen."""
        if kind == _NEWER:
            top = self.top_seq
            ahead = _SEQ_WINDOW if top is None else (sequence - top) & 0xFFFF
            self.seen = (self.seen << ahead | 1) & _WINDOW_MASK if ahead < _SEQ_WINDOW else 1
            self.top_seq = sequence
        else:
            assert self.top_seq is not None
            self.seen |= 1 << ((self.top_seq - sequence) & 0xFFFF)


class Rfc4733Receiver:
    """One RTP stream's telephone events; see the module docstring."""

    def __init__(
        self,
        clock_rate: int = 8000,
        end_guard_s: float = 0.25,
        *,
        replay_gap_s: float = 0.05,
    ) -> None:
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        if end_guard_s <= 0:
            raise ValueError("end_guard_s must be positive")
        self.clock_rate = clock_rate
        self.end_guard_s = end_guard_s
        self.replay_gap_s = replay_gap_s
        self.stats = Rfc4733Stats()
        self._active: _Press | None = None
        # Recent presses by timestamp (a long press: one entry per segment). Keys are never
        # remembered: the event code lives only in the active press.
        self._history: OrderedDict[int, _Press] = OrderedDict()
        self._contiguity = int(_CONTIGUITY_S * clock_rate)
        self._near_limit = MAX_DURATION - int(_NEAR_LIMIT_S * clock_rate)

    # ---- inputs -------------------------------------------------------------------------------

    def receive(
        self, payload: bytes, sequence: int, timestamp: int, marker: bool, now: float
    ) -> list[DtmfEvent]:
        """One telephone-event packet (the RTP payload and header fields) arriving at `now`."""
        self.stats.packets += 1
        if len(payload) < 4:
            self.stats.malformed += 1
            return []
        # Only the first event block counts: more bytes are padding or redundancy we don't use.
        event = payload[0]
        is_end = bool(payload[1] & 0x80)
        raw_duration = (payload[2] << 8) | payload[3]
        active = self._active
        out = self._expire(now) if active is not None and now >= active.deadline else []
        if event >= 16:  # not a DTMF key
            self.stats.ignored += 1
            return out
        sequence &= 0xFFFF
        timestamp &= 0xFFFFFFFF
        press = self._history.get(timestamp)
        if press is not None:
            kind = press.classify(sequence)
            if press.ended_at is None:  # the active press
                if press.event == event:
                    self._update(press, sequence, timestamp, raw_duration, is_end, now, out, kind)
                    return out
                if kind != _NEWER:  # another key's packet, older than the press: stale
                    self.stats.stale += 1
                    return out
                # another key under the same timestamp, after the press: a new press
            elif kind == _NEWER and not is_end and press.ended_by_end:
                pass  # an update after the end packet: the next key under a reused timestamp
            elif is_end or kind != _SEEN or now - press.ended_at < self.replay_gap_s:
                if is_end or kind == _SEEN:
                    self.stats.duplicates += 1
                else:
                    self.stats.stale += 1
                return out
            else:
                self.stats.replays += 1  # same packets again, well after the end: a second press
        else:
            active = self._active
            if (
                active is not None
                and active.event == event
                and not marker
                and self._continues(active, timestamp)
            ):
                self._new_segment(active, timestamp)
                self._remember(timestamp, active)
                self._update(
                    active, sequence, timestamp, raw_duration, is_end, now, out,
                    active.classify(sequence),
                )  # fmt: skip
                return out
        if self._active is not None:
            self.stats.lost_end += 1
            out.append(self._end(self._active, now))
        press = _Press(event, timestamp, now, now, now - raw_duration / self.clock_rate)
        self._active = press
        self._remember(timestamp, press)
        self.stats.presses += 1
        out.append(DtmfEvent(press.digit, "start", now))
        self._update(press, sequence, timestamp, raw_duration, is_end, now, out, _NEWER)
        return out

    def poll(self, now: float) -> list[DtmfEvent]:
        """Timers: end the active press if its packets stopped (its end packets were lost)."""
        return self._expire(now)

    def next_wake(self) -> float | None:
        """When `poll` has something to do, or None."""
        return None if self._active is None else self._active.deadline

    # ---- internals ----------------------------------------------------------------------------

    def _expire(self, now: float) -> list[DtmfEvent]:
        active = self._active
        if active is None or now < active.deadline:
            return []
        self.stats.lost_end += 1
        return [self._end(active, now)]

    def _deadline(self, press: _Press) -> float:
        guard = max(self.end_guard_s, min(1.5 * press.max_gap, _MAX_SPARSE_GUARD_S))
        # The key is down at least until onset + last reported duration; the first packet's
        # arrival dates the onset conservatively (it is never early), so bursts of delayed
        # updates do not end a press that the sender says is still going. Capped against
        # absurd durations.
        reported_end = min(
            press.onset_at + press.duration / self.clock_rate, press.last_at + _MAX_REPORTED_S
        )
        return max(press.last_at, reported_end) + guard

    def _update(
        self,
        press: _Press,
        sequence: int,
        timestamp: int,
        raw_duration: int,
        is_end: bool,
        now: float,
        out: list[DtmfEvent],
        kind: int,
    ) -> None:
        """A packet of the active press (`kind`: what its sequence number is to the press)."""
        if kind == _SEEN:
            self.stats.duplicates += 1
            return
        if kind == _TOO_OLD:  # far behind the newest: nothing left to learn from it
            self.stats.stale += 1
            return
        press.mark(sequence, kind)
        if now > press.last_at:
            press.max_gap = max(press.max_gap, now - press.last_at)
            press.last_at = now
        # Durations of late packets of an earlier segment are already in previous_segments.
        newest = press.newest_seq
        if timestamp == press.timestamp and (newest is None or _seq_newer(sequence, newest)):
            if newest is not None and raw_duration < press.raw_duration - 0x8000:
                press.wraps += 1  # same timestamp, duration went past 0xFFFF
            press.newest_seq = sequence
            press.raw_duration = raw_duration
            press.duration = (
                press.previous_segments + press.wraps * (MAX_DURATION + 1) + raw_duration
            )
        if is_end:
            press.ended_by_end = True
            out.append(self._end(press, now))
        else:
            press.deadline = self._deadline(press)

    def _continues(self, press: _Press, timestamp: int) -> bool:
        """Does a new timestamp of the same event continue `press` as a new segment?"""
        delta = (timestamp - press.timestamp) & 0xFFFFFFFF
        seen = press.segment_duration
        if delta == 0 or delta >= 0x80000000:  # not after the press: not its continuation
            return False
        if abs(delta - seen) <= self._contiguity:
            return True
        # The previous segment's last packets may be lost; it must then have been near the limit.
        return seen >= self._near_limit and seen <= delta <= MAX_DURATION + self._contiguity

    def _new_segment(self, press: _Press, timestamp: int) -> None:
        press.previous_segments += (timestamp - press.timestamp) & 0xFFFFFFFF
        press.timestamp = timestamp
        press.newest_seq = None
        press.raw_duration = 0
        press.wraps = 0
        press.duration = press.previous_segments

    def _end(self, press: _Press, now: float) -> DtmfEvent:
        press.ended_at = now
        if self._active is press:
            self._active = None
        duration_ms = press.duration * 1000.0 / self.clock_rate
        ended = DtmfEvent(press.digit, "end", now, duration_ms)
        press.event = None  # the key is card data: an ended press is its timestamp only
        return ended

    def _remember(self, timestamp: int, press: _Press) -> None:
        self._history[timestamp] = press
        self._history.move_to_end(timestamp)
        while len(self._history) > _HISTORY_SIZE:
            self._history.popitem(last=False)
