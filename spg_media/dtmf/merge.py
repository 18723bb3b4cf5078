"""Merging of the three DTMF sources so that one key press is one digit.

This module owns the decision "is this a new digit for the journey?". A phone or gateway may
report one press several ways at once: as RFC 4733 events, as in-band tones left in the audio,
and as SIP INFO. `DtmfMerger.feed` takes every `DtmfEvent` of a call, in arrival order, and
returns the digit to deliver on the start of a new press, or None.

Rules:

* A start of digit D from source S is the same key press as an accepted press from another
  source that is still in progress with digit D (its source has not reported the end yet).
* It is also the same key press as an accepted press from another source that has ended, when
  it begins within `window_s` of that press's start or before its end (a press reported with a
  duration and no end, as SIP INFO is, lasts that duration, or `window_s` when none is given),
  whatever its digit: keys do not overlap, and a press starting that close to another's start
  is the other source's report of it (or its misreading), not a new key.
* Presses from the same source are never merged: that source already tells presses apart.
* In-band: "off" ignores the detector; "auto" ignores it once an RFC 4733 event has been seen on
  the call (a sender that sends events may leave the tones in the audio too, and events are the
  more reliable report); "on" merges it like the other sources.

Card data: the keys are the card. Only a press in progress knows its digit (one per source at
most); an ended press is kept as its source and times only, and only while it can still be
matched (`_FORGET_AFTER_S` past its window), so nothing here reads back as the keys pressed.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Final, Literal

from spg_media.dtmf.rfc4733 import DtmfEvent

InbandMode = Literal["auto", "on", "off"]

# How long past its window an ended press is kept: a source may date its start well before the
# events fed before it (the in-band detector dates a start at the tone's onset).
_FORGET_AFTER_S: Final = 1.0
_MAX_ENDED: Final = 16  # and never more than this many


@dataclass(slots=True)
class _OpenPress:  # an accepted press in progress: the one place a digit is kept
    digit: str
    started_at: float


@dataclass(slots=True)
class _EndedPress:  # holds no digit
    source: str
    started_at: float
    ends_at: float

    def forget_at(self, window_s: float) -> float:
        return max(self.started_at + window_s, self.ends_at) + _FORGET_AFTER_S


class DtmfMerger:
    """One call's DTMF merging; see the module docstring."""

    def __init__(self, inband_mode: InbandMode = "auto", window_s: float = 0.12) -> None:
        if inband_mode not in ("auto", "on", "off"):
            raise ValueError(f"inband_mode must be auto, on or off, not {inband_mode!r}")
        if window_s < 0:
            raise ValueError("window_s must not be negative")
        self.inband_mode: InbandMode = inband_mode
        self.window_s = window_s
        self.rfc4733_seen = False
        self.accepted: Counter[str] = Counter()  # digits delivered, per source
        self.duplicates: Counter[str] = Counter()  # starts dropped as another source's press
        self.ignored: Counter[str] = Counter()  # events dropped by the in-band policy
        self._open: dict[str, _OpenPress] = {}  # per source: its accepted press in progress
        self._ended: deque[_EndedPress] = deque(maxlen=_MAX_ENDED)  # in the order they ended
        self._latest = float("-inf")  # the latest event time fed

    def feed(self, event: DtmfEvent) -> str | None:
        """The digit to deliver for this event, or None (an end, a duplicate, an ignored source)."""
        self._latest = max(self._latest, event.at)
        self._forget()
        if event.kind == "end":
            # Ends are applied whatever the in-band policy: an in-band press accepted before the
            # first RFC 4733 event must still finish, or it would swallow later presses.
            pending = self._open.get(event.source)
            if pending is not None and pending.digit == event.digit:
                self._close(event.source, event.at)
            return None
        if event.source == "rfc4733":
            self.rfc4733_seen = True
        elif event.source == "inband" and (
            self.inband_mode == "off" or (self.inband_mode == "auto" and self.rfc4733_seen)
        ):
            self.ignored[event.source] += 1
            return None
        if self._is_duplicate(event):
            self.duplicates[event.source] += 1
            return None
        if event.source in self._open:  # its end was never reported: it ends here
            self._close(event.source, event.at)
        if event.duration_ms is not None or event.source == "info":
            # Known in full at its start (INFO never reports the end of a press).
            length_s = self.window_s if event.duration_ms is None else event.duration_ms / 1000
            self._ended.append(_EndedPress(event.source, event.at, event.at + length_s))
        else:
            self._open[event.source] = _OpenPress(event.digit, event.at)
        self.accepted[event.source] += 1
        return event.digit

    def counts(self) -> dict[str, int]:
        """Digits delivered, dropped as duplicates and ignored, per source: counts, no keys
        (logged at a call's end, so a doubled or missed digit can be traced to its source)."""
        out: dict[str, int] = {}
        for name, counter in (
            ("accepted", self.accepted),
            ("duplicates", self.duplicates),
            ("ignored", self.ignored),
        ):
            for source, count in sorted(counter.items()):
                out[f"{name}_{source}"] = count
        return out

    def _is_duplicate(self, event: DtmfEvent) -> bool:
        for source, pending in self._open.items():
            if source != event.source and pending.digit == event.digit:
                return True
        for ended in self._ended:
            if ended.source != event.source and (
                abs(event.at - ended.started_at) <= self.window_s or event.at <= ended.ends_at
            ):
                return True
        return False

    def _close(self, source: str, at: float) -> None:
        pending = self._open.pop(source)
        self._ended.append(_EndedPress(source, pending.started_at, at))

    def _forget(self) -> None:
        """Drop the ended presses nothing can be matched with any more."""
        ended = self._ended
        while ended and ended[0].forget_at(self.window_s) < self._latest:
            ended.popleft()
