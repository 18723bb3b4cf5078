"""Merging of the three DTMF sources so that one key press is one digit.

This module owns the decision "is this a new digit for the journey?". A phone or gateway may
report one press several ways at once: as RFC 4733 events, as in-band tones left in the audio,
and as SIP INFO. `DtmfMerger.feed` takes every `DtmfEvent` of a call, in arrival order, and
returns the digit to deliver on the start of a new press, or None.

Rules:

* A start of digit D from source S is the same key press as an accepted press of D from another
  source when it begins within `window_s` of that press's start, or while that press is still
  in progress (its source has not reported the end yet; a press reported with a duration and no
  end, as SIP INFO is, lasts that duration, or `window_s` when none is given).
* Presses from the same source are never merged: that source already tells presses apart.
* In-band: "off" ignores the detector; "auto" ignores it once an RFC 4733 event has been seen on
  the call (a sender that sends events may leave the tones in the audio too, and events are the
  more reliable report); "on" merges it like the other sources.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

from spg_media.dtmf.rfc4733 import DtmfEvent

InbandMode = Literal["auto", "on", "off"]


@dataclass(slots=True)
class _AcceptedPress:  # holds no digit: it is filed under one
    source: str
    started_at: float
    ends_at: float | None  # None while in progress until its source reports the end


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
        self._last: dict[str, _AcceptedPress] = {}  # per digit: the latest accepted press

    def feed(self, event: DtmfEvent) -> str | None:
        """The digit to deliver for this event, or None (an end, a duplicate, an ignored source)."""
        previous = self._last.get(event.digit)
        if event.kind == "end":
            # Ends are applied whatever the in-band policy: an in-band press accepted before the
            # first RFC 4733 event must still finish, or it would swallow later presses.
            if previous is not None and previous.source == event.source:
                previous.ends_at = event.at
            return None
        if event.source == "rfc4733":
            self.rfc4733_seen = True
        elif event.source == "inband" and (
            self.inband_mode == "off" or (self.inband_mode == "auto" and self.rfc4733_seen)
        ):
            self.ignored[event.source] += 1
            return None
        if previous is not None and previous.source != event.source:
            within_window = abs(event.at - previous.started_at) <= self.window_s
            in_progress = previous.ends_at is None or event.at <= previous.ends_at
            if within_window or in_progress:
                self.duplicates[event.source] += 1
                return None
        if event.duration_ms is not None:
            ends_at: float | None = event.at + event.duration_ms / 1000.0
        elif event.source == "info":
            ends_at = event.at + self.window_s  # INFO never reports the end of a press
        else:
            ends_at = None
        self._last[event.digit] = _AcceptedPress(event.source, event.at, ends_at)
        self.accepted[event.source] += 1
        return event.digit
