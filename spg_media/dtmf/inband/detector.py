"""The public detector: channels (slots), blocks of their audio in, start/end events out.

This module owns `InbandDetector` (slots, the per-channel state as a `Channels` structure of
arrays, cutting each channel's stream into frames, gaps in the audio, and the order of the
stages: `screen`, then `analysis` and `decisions` for the channels screened in) and `scan`,
which runs it over one recording for `spg-media dtmf-scan`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from .analysis import correlate, presence, steady, windows
from .checks import Audio
from .decisions import DigitState, Evidence, decide
from .history import KEPT, remember
from .params import (
    C64,
    END_SUBS,
    F32,
    F64,
    FRAME,
    GAP_BREAK_S,
    HIST,
    I64,
    RATE,
    SUB,
    Bools,
    Events,
    Idx,
    Int16s,
)
from .screen import Scratch, ScreenMemory, screen
from .timing import end_event


@dataclass
class Channels:
    """The detector's state, one element per slot (channels first, but `screen_power`, 8 ×
    slots, as the screen uses it)."""

    alive: Bools  # the slot is in use
    pending: Int16s  # (slots × 80) samples waiting for a whole frame
    pending_count: I64  # ... how many
    screen_power: F32  # the previous frame's power at the 8 frequencies (screen)
    screen_energy: F32  # ... and its energy (decimated)
    screened_last: Bools  # the previous frame was screened in
    rising_last: Bools  # ... or was much louder than the one before it (`screen.Screened`)
    z_history: C64  # (slots × HIST × 8) the last HIST sub-blocks' correlations
    e_history: F32  # (slots × HIST) ... and energies
    z_valid: Bools  # z_history/e_history are up to date (the channel was analysed last time)
    history: Int16s  # (slots × KEPT) the last HIST sub-blocks of its audio (`history`)
    history_zeros: I64  # ... how many of them, at its end, are zeros
    busy: Bools  # a digit, a candidate or a glide in progress: analyse whatever the screen
    position: I64  # samples analysed: the position of the next frame
    last_time: F64  # time just after the last sample received (NaN: none yet)
    digits: DigitState  # the decision machine's

    @classmethod
    def empty(cls, capacity: int) -> Channels:
        return cls(
            alive=np.zeros(capacity, dtype=bool),
            pending=np.zeros((capacity, FRAME), dtype=np.int16),
            pending_count=np.zeros(capacity, dtype=np.int64),
            screen_power=np.zeros((8, capacity), dtype=np.float32),
            screen_energy=np.zeros(capacity, dtype=np.float32),
            screened_last=np.zeros(capacity, dtype=bool),
            rising_last=np.zeros(capacity, dtype=bool),
            z_history=np.zeros((capacity, HIST, 8), dtype=np.complex64),
            e_history=np.zeros((capacity, HIST), dtype=np.float32),
            z_valid=np.zeros(capacity, dtype=bool),
            history=np.zeros((capacity, KEPT), dtype=np.int16),
            history_zeros=np.full(capacity, KEPT, dtype=np.int64),
            busy=np.zeros(capacity, dtype=bool),
            position=np.zeros(capacity, dtype=np.int64),
            last_time=np.full(capacity, np.nan),
            digits=DigitState.empty(capacity),
        )

    def grown(self, capacity: int) -> Channels:
        """A copy with room for `capacity` slots."""
        bigger = Channels.empty(capacity)
        old = self.alive.size
        for field in fields(self):
            if field.name == "digits":
                continue
            current = getattr(self, field.name)
            if field.name == "screen_power":
                bigger.screen_power[:, :old] = current
            else:
                getattr(bigger, field.name)[:old] = current
        bigger.digits = self.digits.grown(capacity)
        return bigger

    def reset(self, slots: Idx) -> None:
        """Forget everything of these channels but their existence and position (their history
        is zeros)."""
        self.pending[slots] = 0
        self.pending_count[slots] = 0
        self.screen_power[:, slots] = 0
        self.screen_energy[slots] = 0
        self.screened_last[slots] = False
        self.rising_last[slots] = False
        self.z_history[slots] = 0
        self.e_history[slots] = 0
        self.z_valid[slots] = False
        self.history[slots] = 0
        self.history_zeros[slots] = KEPT
        self.busy[slots] = False
        self.digits.reset(slots)


class _Frames(NamedTuple):
    """Whole frames of some channels, for one run of the stages."""

    slots: Idx  # the channels
    sel: Idx | slice  # how they are selected in the state arrays
    frames: Int16s  # (rows × F × 80)
    now: float  # the time just after the call's last sample
    left: int  # samples of theirs that wait after these frames (for the next call)


class InbandDetector:
    """Batched in-band DTMF detection for many channels at 8000 Hz.

    `add_channel` gives a slot; `process(slots, block, now)` takes a (len(slots) × N) block of
    int16 samples (floats are taken on the int16 scale), row i continuing slot slots[i]'s stream,
    with `now` the time just after the block's last sample, and returns (slot, DtmfEvent) pairs.
    Slots left out of a call simply get no audio that tick (a lost packet).

    `gaps_from_time`: a slot whose audio resumes more than GAP_BREAK_S after the end of its
    last block (by the `now` given) ends its digit and starts afresh. A caller that knows where
    the audio is missing (the media engine, from RTP timestamps) turns this off and calls
    `flush` there instead: `now` then only dates the events, and audio that comes late in a
    burst (a stalled path or tick) is not taken for a pause.
    """

    def __init__(self, sample_rate: int = RATE, *, gaps_from_time: bool = True) -> None:
        if sample_rate != RATE:
            raise ValueError(f"the in-band detector works at {RATE} Hz, not {sample_rate}")
        self._gaps_from_time = gaps_from_time
        self._free: list[int] = []
        self._scratch = Scratch()
        self._busy_line = False  # most channels had sound in the last call
        self._size = 0
        self._channels = Channels.empty(16)

    # ---- slots ---------------------------------------------------------------------------------

    def add_channel(self) -> int:
        """A new channel's slot (a freed one is reused), its state reset."""
        channels = self._channels
        if self._free:
            slot = self._free.pop()
        else:
            if self._size == channels.alive.size:
                channels = self._channels = channels.grown(2 * channels.alive.size)
            slot = self._size
            self._size += 1
        channels.reset(np.array([slot], dtype=np.intp))
        channels.alive[slot] = True
        channels.position[slot] = 0
        channels.last_time[slot] = np.nan
        return slot

    def remove_channel(self, slot: int) -> None:
        """Give a slot back (a digit in progress is dropped without an event)."""
        self._check_slot(slot)
        self._channels.alive[slot] = False
        self._free.append(slot)

    def hot_slots(self) -> Idx:
        """The slots where something may be starting or going on: a digit, a candidate or a
        glide in progress, tones screened in at the end of the audio given so far, or a sudden
        rise in its last 10 ms (a tone's first milliseconds: the next packet may decide it). A
        caller that cannot give every channel its audio at once gives these theirs first: the
        others hold silence, noise or speech, where a start needs more audio than one packet
        anyway."""
        channels, size = self._channels, self._size
        maybe = channels.busy[:size] | channels.screened_last[:size] | channels.rising_last[:size]
        return np.flatnonzero(channels.alive[:size] & maybe)

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self._size or not self._channels.alive[slot]:
            raise ValueError(f"no such in-band channel: {slot}")

    # ---- the per-tick entry points -------------------------------------------------------------

    def process(self, slots: Sequence[int], block: npt.ArrayLike, now: float) -> Events:
        """Feed `block` (len(slots) × N samples, any N) and return the digits' start/end events.

        `slots` may be a list or an int array (an array in slot order is cheapest: the state is
        then sliced, not gathered); each slot at most once. N need not be a multiple of the
        detector's 80-sample frame: leftovers wait, per slot, for the next call. Events carry
        source "inband"; `at` is the onset (start) or the end of the tones (end), worked out
        from sample positions counted back from `now`; "end" events carry duration_ms. A slot
        whose audio resumes more than GAP_BREAK_S after its last block ends its digit first
        (unless built with gaps_from_time=False).
        Raises ValueError for unknown, removed or repeated slots or a mismatched block.
        """
        index = np.asarray(slots, dtype=np.intp).reshape(-1)
        data = np.asarray(block)
        if data.ndim == 1 and index.size == 1:
            data = data.reshape(1, -1)
        if data.ndim != 2 or data.shape[0] != index.size:
            raise ValueError(f"block shape {data.shape} does not match {index.size} slots")
        if index.size == 0 or data.shape[1] == 0:
            return []
        sel = self._selector(index)
        channels = self._channels
        samples = as_int16(data)
        n = samples.shape[1]
        events: Events = []

        # Audio missing for a while: end what was in progress where the audio stopped.
        if self._gaps_from_time:
            last_time = channels.last_time[sel]
            broken = np.flatnonzero((now - n / RATE) - last_time > GAP_BREAK_S)  # NaN: False
            if broken.size:
                self._end_digits(index[broken], last_time[broken], events)
                channels.reset(index[broken])
        channels.last_time[sel] = now

        waiting_of = channels.pending_count[sel]
        if n % FRAME == 0 and not waiting_of.any():  # the usual tick: whole frames, none waiting
            frames = samples.reshape(index.size, n // FRAME, FRAME)
            self._run(_Frames(index, sel, frames, now, 0), events)
            return events
        for waiting in np.unique(waiting_of):
            rows = np.flatnonzero(waiting_of == waiting)
            group = index[rows]
            joined = np.concatenate([channels.pending[group, :waiting], samples[rows]], axis=1)
            whole = joined.shape[1] // FRAME * FRAME
            left = joined.shape[1] - whole
            if whole:
                frames = joined[:, :whole].reshape(group.size, whole // FRAME, FRAME)
                self._run(_Frames(group, group, frames, now, left), events)
            channels.pending[group, :left] = joined[:, whole:]
            channels.pending_count[group] = left
        return events

    def _selector(self, index: Idx) -> Idx | slice:
        """Check the slots of a call; a run of consecutive slots is taken as a slice (views
        instead of gathers and scatters of the state: the usual case, all channels in order)."""
        alive = self._channels.alive
        first, last = int(index[0]), int(index[-1])
        # (index[1:] - index[:-1] is np.diff without its ~2 µs of Python around it.)
        if last - first == index.size - 1 and (
            index.size == 1 or (index[1:] - index[:-1] == 1).all()
        ):
            if first < 0 or last >= self._size or not alive[first : last + 1].all():
                raise ValueError("process: unknown or removed slot")
            return slice(first, last + 1)
        if index.min() < 0 or index.max() >= self._size or not alive[index].all():
            raise ValueError("process: unknown or removed slot")
        seen = np.zeros(self._size, dtype=bool)
        seen[index] = True
        if np.count_nonzero(seen) != index.size:
            raise ValueError("process: a slot given twice")
        return index

    def flush(self, slot: int, now: float) -> Events:
        """The stream ended: end a digit in progress and forget the channel's partial state."""
        self._check_slot(slot)
        index = np.array([slot], dtype=np.intp)
        events: Events = []
        last_time = self._channels.last_time[index]
        ended_at = np.where(np.isnan(last_time), now, np.minimum(last_time, now))
        self._end_digits(index, ended_at, events)
        self._channels.reset(index)
        return events

    # ---- internals -----------------------------------------------------------------------------

    def _end_digits(self, slots: Idx, last_time: F64, events: Events) -> None:
        """End the digits in progress on `slots`, last_time[i] being the time just after slot
        i's last sample received (position `position` + `pending_count`)."""
        channels = self._channels
        digits = channels.digits
        for i in np.flatnonzero(digits.digit[slots] >= 0):
            slot = int(slots[i])
            received = channels.position[slot] + channels.pending_count[slot]
            base = float(last_time[i]) - float(received) / RATE
            if digits.absent[slot] == 0:  # its tones were still on when the audio stopped
                end = float(channels.position[slot])
            else:
                end = float(digits.end[slot])
            onset = float(digits.onset[slot])
            events.append((slot, end_event(int(digits.digit[slot]), base, onset, end)))
        digits.digit[slots] = -1

    def _run(self, batch: _Frames, events: Events) -> None:
        """Screen whole frames of some channels, and analyse those screened in and those
        busy."""
        channels = self._channels
        slots, sel = batch.slots, batch.sel
        rows, nframes = batch.frames.shape[:2]
        frames = np.ascontiguousarray(batch.frames)
        count = nframes * FRAME

        before = ScreenMemory(channels.screen_power[:, sel], channels.screen_energy[sel])
        screened, active, last, rising = screen(frames, before, self._scratch, self._busy_line)
        self._busy_line = 3 * active.size > 2 * rows
        channels.screen_power[:, sel] = last.power
        channels.screen_energy[sel] = last.energy
        channels.rising_last[sel] = rising
        busy = np.flatnonzero(channels.busy[sel])
        if not active.size and not busy.size:  # silence, and nothing going on
            remember(channels.history, channels.history_zeros, sel, frames, active)
            channels.z_valid[sel] = False
            channels.screened_last[sel] = False
            channels.position[sel] += count
            return
        # A frame is analysed when its window or the one before was screened in.
        hot_frame = screened.copy()
        hot_frame[0] |= channels.screened_last[sel]
        hot_frame[1:] |= screened[:-1]
        channels.screened_last[sel] = screened[-1]
        any_hot = hot_frame[0].copy()
        for f in range(1, nframes):
            any_hot |= hot_frame[f]
        any_hot[busy] = True
        hot = np.flatnonzero(any_hot)
        if hot.size:
            hot_slots = slots[hot]
            self._analyse(
                _Frames(hot_slots, hot_slots, frames[hot], batch.now, batch.left),
                hot_frame[:, hot],
                events,
            )
            channels.busy[hot_slots] = channels.digits.busy(hot_slots)
        valid = np.zeros(rows, dtype=bool)
        valid[hot] = True
        channels.z_valid[sel] = valid
        channels.position[sel] += count
        remember(channels.history, channels.history_zeros, sel, frames, active)

    def _analyse(self, hot: _Frames, looked: Bools, events: Events) -> None:
        """Full-rate analysis, and the decisions where something may happen, for the channels
        screened in or busy (`looked`, F × rows: their frames screened in). Arrays here keep
        the channels on the last axis."""
        channels, digits = self._channels, self._channels.digits
        slots = hot.slots
        rows = slots.size
        flat = hot.frames.reshape(rows, -1)
        nsub = flat.shape[1] // SUB
        pos0 = channels.position[slots]
        base = hot.now - (pos0 + flat.shape[1] + hot.left) / RATE  # time of position 0
        # Each row's audio before this call (its own last HIST sub-blocks, whatever other calls
        # were made since its last: `history`): those not analysed last time rebuild their
        # correlation history from it, and a digit's last checks read it.
        history = channels.history[slots]
        zt, et = self._correlations(slots, flat, history)

        # Is the digit in progress still there, sub-block by sub-block? (nsub × rows)
        digit = digits.digit[slots]
        present = np.zeros((nsub, rows), dtype=bool)
        cover = np.zeros((nsub, rows), dtype=np.float32)
        going_steadily = np.zeros(rows, dtype=bool)
        going = np.flatnonzero(digit >= 0)
        if going.size:
            present[:, going], cover[:, going] = presence(
                zt[:, HIST:, going], et[HIST:, going], digit[going], digits.ref[:, slots[going]]
            )
            going_steadily[going] = steady(zt[:, HIST - 1 :, going], digit[going])
        # Decision windows count wherever a digit may begin: not where a digit's tones go on
        # without a break, each at its own frequency (there they would only show that digit).
        candidate, taint = digits.candidate[slots], digits.taint[slots]
        quiet = (digit >= 0) & (digits.absent[slots] == 0) & (candidate < 0) & (taint < 0)
        quiet &= present.all(axis=0)
        quiet &= going_steadily
        looking = np.flatnonzero(~quiet)
        if 4 * looking.size < 3 * rows:  # only these: the gather costs less than the rest
            win = windows(zt[:, :, looking], et[:, looking], nsub)
            seen = looking  # the channels of win's columns
        else:
            win = windows(zt, et, nsub)
            seen = np.arange(rows)
            if looking.size < rows:
                win.digit[:, quiet] = -1
                win.pair[:, quiet] = -1
                win.glide[:, quiet] = False
        eventful = np.zeros(rows, dtype=bool)  # a hit, a pattern or a glide in a window
        eventful[seen] = (
            (win.digit >= 0).any(axis=0) | (win.pair >= 0).any(axis=0) | win.glide.any(axis=0)
        )
        idle = (digit < 0) & (candidate < 0) & (taint < 0) & ~eventful
        # Digits going on without a break, and idle channels, need no decisions (there they
        # would only move their tones' end along): they are made for the rest alone.
        last = np.flatnonzero(quiet)
        if last.size:  # their tones end, for now, where the last sub-block has them end
            end = (pos0[last] + (nsub - 1) * SUB).astype(np.float64) + SUB * cover[-1, last]
            digits.end[slots[last]] = end
        rest = np.flatnonzero(~(quiet | idle))  # all among those seen (the others are quiet)
        if not rest.size:
            return
        if rest.size < seen.size:
            column = np.zeros(rows, dtype=np.intp)
            column[seen] = np.arange(seen.size)
            win = win.take(column[rest])
        if rest.size < rows:
            present, cover, looked = present[:, rest], cover[:, rest], looked[:, rest]
        decided = slots[rest]
        evidence = Evidence(
            slots=decided,
            cols=rest,
            win=win,
            present=present,
            cover=cover,
            looked=looked,
            zt=zt,
            et=et,
            audio=Audio(history, flat),
            pos0=pos0[rest],
            base=base[rest],
        )
        state = digits.take(decided)
        decide(evidence, state, events)
        digits.put(decided, state)

    def _correlations(self, slots: Idx, flat: Int16s, history: Int16s) -> tuple[C64, F32]:
        """The sub-blocks' correlations (8 × (HIST + nsub) × rows) and energies ((HIST + nsub)
        × rows) of these channels: the HIST before this call (kept, or rebuilt from `history`
        where stale) then this call's; the last HIST are kept for the next call."""
        channels = self._channels
        z_new, e_new = correlate(flat)
        z_history = channels.z_history[slots]
        e_history = channels.e_history[slots]
        gone_stale = np.flatnonzero(~channels.z_valid[slots])
        if gone_stale.size:
            z_history[gone_stale], e_history[gone_stale] = correlate(history[gone_stale])
        z_all = np.concatenate([z_history, z_new], axis=1)  # (rows, HIST + nsub, 8)
        e_all = np.concatenate([e_history, e_new], axis=1)
        channels.z_history[slots] = z_all[:, -HIST:]
        channels.e_history[slots] = e_all[:, -HIST:]
        zt = np.ascontiguousarray(z_all.transpose(2, 1, 0))
        et = np.ascontiguousarray(e_all.T)
        return zt, et


def as_int16(data: npt.NDArray[np.generic]) -> Int16s:
    """Samples as int16: floats rounded, everything clipped to the int16 range."""
    if data.dtype == np.int16:
        return np.ascontiguousarray(data, dtype=np.int16)
    if data.dtype.kind == "f":
        data = np.rint(data)
    return np.asarray(np.clip(data, -32768, 32767), dtype=np.int16)


_SCAN_BLOCK: Final = 8000  # scan() feeds a recording a second at a time


def scan(samples: npt.ArrayLike, sample_rate: int = RATE) -> list[tuple[str, float, float]]:
    """Digits in one recording: (digit, start_ms, end_ms) in order (what `dtmf-scan` prints).

    `samples` are mono, int16 or floats on the int16 scale; other rates are resampled to 8 kHz.
    """
    audio = np.asarray(samples).reshape(-1)
    if sample_rate != RATE:
        from scipy.signal import resample_poly

        g = math.gcd(int(sample_rate), RATE)
        audio = resample_poly(audio.astype(np.float64), RATE // g, int(sample_rate) // g)
    audio16 = as_int16(audio)
    # Trailing silence lets a digit that runs to the end of the file end as it would on a line.
    tail = np.zeros(FRAME + END_SUBS * SUB + (-audio16.size) % FRAME, dtype=np.int16)
    padded = np.concatenate([audio16, tail])
    detector = InbandDetector()
    slot = detector.add_channel()
    events: Events = []
    for begin in range(0, padded.size, _SCAN_BLOCK):
        chunk = padded[begin : begin + _SCAN_BLOCK]
        events += detector.process([slot], chunk[None, :], (begin + chunk.size) / RATE)
    events += detector.flush(slot, padded.size / RATE)
    found: list[tuple[str, float, float]] = []
    start: float | None = None
    for _slot, event in events:
        if event.kind == "start":
            start = event.at
        elif start is not None:
            found.append((event.digit, start * 1000.0, event.at * 1000.0))
            start = None
    return found
