"""In-band DTMF: a sans-IO detector that hears keypad tones in the audio of many channels at once.

This module owns finding DTMF digits in 8 kHz audio: `InbandDetector` is fed (channels × samples)
blocks and the time, and hands back one "start" and one "end" `DtmfEvent` per key press and
channel (source "inband"); `scan` runs it over one recording for `spg-media dtmf-scan`. It opens
nothing, reads no clock and keeps no per-channel Python objects: every channel is a row of the
numpy state arrays, and one `process` call serves all the channels of a media tick.

Theory of operation
-------------------
Each channel's stream is cut into 10 ms *frames* (80 samples; what is left of a call waits for
the next one) and 5 ms *sub-blocks* (40 samples). Work is done in two stages, so that its cost
follows what is on the line, not the number of channels.

1. **Screen, every channel, every frame.** A glance at every 4th sample tells silence (below
   -60 dBm0) from sound; silent channels stop there (when most channels had sound in the last
   call, the glance is skipped and the gate is on the energy below). For the others, every
   other sample (4 kHz: the DTMF tones, all under 2 kHz, keep their power and bin) of each frame
   is correlated with the 8 frequencies, a matrix multiply per few thousand channels. A 20 ms
   window (the frame and the one before) is *screened in* when it has -49 dBm0 and its strongest
   row plus strongest column hold 60 % of its energy (an in-spec digit holds over 80 % of a
   window it fills, even 1.5 % off frequency with reverse twist and 15 dB SNR).
   Noise and about 98.5 % of speech stop here; the screen is lenient, as all it decides is where
   to look closely.
2. **Analysis, for channels screened in (or with a digit, candidate or glide in progress).** Each
   sub-block is correlated at full rate with the 8 frequencies (one matrix multiply). The
   correlators are the plain 40-sample ones pulled to zero response (-31 dB) around the other
   group's tones and their own image, so each gives its tone's amplitude and phase undisturbed
   by the other tone. A 20 ms decision window (4 sub-blocks) ends at every sub-block. Its
   strongest row and column (20 ms coherent sums); each tone's frequency offset from the phase
   advance between the window's halves (unwrapped with the 5 ms advance, unambiguous over
   ±100 Hz): this resolves a hertz or two where 102-sample Goertzel bins (spandsp, Asterisk) are
   78 Hz wide, so ±1.5 % is accepted and ±3.5 % rejected for all eight tones. A window is a
   *hit* when both tones are at least -46 dBm0 and together -43 dBm0, the twist is within 9.5 dB
   (row louder, "normal") or 5.5 dB (column louder, "reverse"), both offsets are within 2.5 %,
   and the two tones hold 75 % of the window's energy (speech and music spread theirs over
   harmonics).

Decisions, per sub-block, for the channels analysed where something may happen (a digit
going on steadily, its tones alone and each at its own frequency, only has its end moved
along; idle channels skip them): vectorised over them, or, up to _ROWS_ONE_BY_ONE of them (a
node's usual load), one at a time on Python scalars, which is cheaper than ~80 array calls a
sub-block; both make exactly the same decisions (a test holds them to it). A start's last
checks (timing, spectrum) read its window alone, so they are made before the sub-block loop,
in one batch, for each channel's first window that may start a digit (where nearly all digits
start); the loop makes them itself only for the others:

* a digit *starts* when hit windows of one digit (one miss tolerated) have seen its tones for
  19.875 ms, the tones still fill the last sub-block and hold 85 % of the last window's energy,
  and that window's spectrum (a 256-point FFT, made only for windows that may start a digit)
  shows nothing else within 10 dB of the weaker tone, and the two frequencies are not in a
  low-order harmonic ratio (4/3, 3/2, 5/3, 2/1, ...) that no in-spec DTMF pair can show but two
  harmonics of a voice do. The onset is first estimated from how much of each sub-block the
  tones fill (their amplitude against the steady level); once that says 16.75 ms, the tones are
  timed to the sample on the audio of the last 30 ms (`_timing`: their amplitudes and phases
  fitted over the last 10 ms, the onset and end where "the tones inside, nothing outside" fits
  best). So a tone of 19 ms or less never qualifies (margin 7 samples: none of thousands of
  trials at 15 dB SNR, all levels and twists), one of 25 ms or more does, the start event is
  dated at the onset, and, fed 20 ms frames, it comes 20 to 40 ms after the onset (median 30).
  Keypad tones start abruptly: when the tones were not below half their level in the two
  sub-blocks before the first hit window, 35 ms are required (by the first estimate).
* speech and music that glide through the accepted band are held off: a steady two-tone pattern
  seen off frequency (or refused by the spectrum check) "taints" that pair for as long as it lasts
  (not while a digit is going on: there, a window across a change of key looks like a glide).
* a started digit lasts while each 5 ms sub-block holds both its tones at half their start
  amplitude or more, with half the sub-block's energy (a phase jump from a lost packet or a
  sample slip does not stop it); it *ends* after 20 ms without them, dated where the tones
  stopped. So breaks of up to 15 ms are bridged and gaps of 20 ms or more split repeated digits.
  Another digit keyed with no gap at all starts as usual and ends the old one where it began
  (the old one may still look present: a 5 ms correlator hears its group's neighbouring tones).
* a channel whose audio stops for more than `GAP_BREAK_S` (as `now` tells) ends its digit where
  the audio stopped and starts afresh: a long outage is never bridged into one press.

Levels are in dBm0 with spandsp's reference: a 0 dBm0 sine peaks at 32767 × 10^(-3.14/20) ≈ 22,790
(G.711 μ-law overloads at about +3.17 dBm0). A level given for a digit is the sum of both tones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from spg_media.dtmf.rfc4733 import DtmfEvent

__all__ = ["DBM0_PEAK", "GAP_BREAK_S", "KEYS", "InbandDetector", "scan"]

RATE: Final = 8000
KEYS: Final = "123A456B789C*0#D"  # digit index = 4 × row + column
ROW_HZ: Final = (697.0, 770.0, 852.0, 941.0)
COL_HZ: Final = (1209.0, 1336.0, 1477.0, 1633.0)

SUB: Final = 40  # sub-block: 5 ms, the time resolution of every decision
FRAME: Final = 80  # the detector's own block: 10 ms
SUBS_PER_FRAME: Final = FRAME // SUB
WIN: Final = 4  # decision window: 4 sub-blocks, 20 ms
LOOK: Final = 2  # sub-blocks before a window where its tones' onset must show
HIST: Final = WIN - 1 + LOOK  # sub-blocks of history a window needs
DEC_PER_FRAME: Final = FRAME // 2  # the screen takes every other sample

DBM0_PEAK: Final = 32767.0 * 10.0 ** (-3.14 / 20.0)  # peak of a 0 dBm0 sine (spandsp's reference)
_P0: Final = DBM0_PEAK**2 / 2.0  # power of a 0 dBm0 sine


def _dbm0(level: float) -> float:
    """Power (mean square, int16 scale) of a sine at `level` dBm0."""
    return float(_P0 * 10.0 ** (level / 10.0))


# Acceptance (the standards' figures are in the comments).
_MIN_TONE_POWER: Final = _dbm0(-46.0)  # each tone; -36 dBm0 with 8 dB twist puts one at -44.6
_MIN_PAIR_POWER: Final = _dbm0(-43.0)  # both together; "below -50 dBm0 ignored"
_NORMAL_TWIST: Final = 10.0 ** (9.5 / 10.0)  # row louder: 8 dB accepted
_REVERSE_TWIST: Final = 10.0 ** (5.5 / 10.0)  # column louder: 4 dB accepted
_MAX_OFFSET: Final = 0.025  # relative frequency error: 1.5 % accepted, 3.5 % rejected
_MIN_FRACTION: Final = 0.75  # share of a hit window's energy in the two tones
_START_FRACTION: Final = 0.85  # ... in the window that starts a digit (fully covered by then)
_START_MS: Final = 19.875  # tone timed this long to start (< 20 ms rejected, >= 40 ms accepted)
_START_ROUGH_MS: Final = 16.75  # ... seen this long by the sub-blocks' cover: time it exactly
_START_NO_ONSET_MS: Final = 35.0  # ... when no abrupt onset was seen
_MIN_LAST_COVER: Final = 0.9  # the tones must still fill the last sub-block to start
_ONSET_COVER: Final = 0.5  # before an onset, the tones are below half their steady amplitude
_FLAT_COVER: Final = 0.8  # a window all of whose sub-blocks hold the tones this much is steady
_PATTERN_FRACTION: Final = 0.7  # two tones holding this share of a window form a pattern
_PURITY_DB: Final = -10.0  # nothing else in a starting window's spectrum within this of a tone
_PURITY_GUARD_HZ: Final = 130.0  # around each tone: its own main lobe (Hann, 20 ms) and more
_PURITY_LOW_HZ: Final = 150.0  # hum and DC are no reason to refuse a digit
_PRESENT_LEVEL: Final = 0.5  # a started digit's tones, against their start amplitude
_PRESENT_FRACTION: Final = 0.5  # ... and their share of the sub-block's energy
_END_SUBS: Final = 4  # sub-blocks without the tones that end a digit (20 ms)
_CAND_MISSES: Final = 1  # misses tolerated while a candidate builds up
GAP_BREAK_S: Final = 0.1  # audio missing longer than this ends a digit and restarts a channel
_RING: Final = 4  # calls of audio kept for the history of channels that become hot

# Screen thresholds: lenient, they only decide where to analyse.
_SCREEN_FRACTION: Final = 0.6
_SCREEN_POWER: Final = _dbm0(-49.0)
_FRAME_GATE: Final = _dbm0(-60.0)

_W: Final = 2.0 * np.pi * np.array(ROW_HZ + COL_HZ) / RATE  # rad/sample
_START_SAMPLES: Final = _START_MS * RATE / 1000.0
_START_ROUGH_SAMPLES: Final = _START_ROUGH_MS * RATE / 1000.0
_START_NO_ONSET_SAMPLES: Final = _START_NO_ONSET_MS * RATE / 1000.0
_TINY: Final = 1e-9

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
C64 = npt.NDArray[np.complex64]
I64 = npt.NDArray[np.int64]
Idx = npt.NDArray[np.intp]
Bools = npt.NDArray[np.bool_]
Events = list[tuple[int, DtmfEvent]]
# The state machine's per-channel state, as arrays over the channels decided on: act, act_on,
# act_end, absent, cand, cand_on, cand_miss, cand_need, taint (see InbandDetector).
_State = tuple[I64, F64, F64, I64, I64, F64, I64, F64, I64]
# A start's checks made ahead (`_start_checks`): timing_sub, at_timing, onset, length, pure_sub,
# at_pure, pure.
_Checks = tuple[I64, Idx, F64, F64, I64, Idx, Bools]


def _basis(positions: npt.NDArray[np.int64], scale: float = 1.0) -> F32:
    """Correlators (len(positions) × 16): cos, then -sin, of the 8 tones at those sample
    positions, so that x @ basis is Re and Im of sum x[n] e^{-i w n} (phase 0 at position 0)."""
    n = positions[:, None].astype(np.float64)
    return (np.concatenate([np.cos(_W * n), -np.sin(_W * n)], axis=1) * scale).astype(np.float32)


# The screen reads a frame's int16 pairs as int32: the high half is the odd sample, times 65536
# (the low half adds less than one unit of it), so the decimation costs no copy. Its columns are
# interleaved, Re and Im of each tone side by side: a tone's power is then the sum of two
# neighbouring squares, and x @ _DEC_BASIS (frames on rows) is BLAS's fastest form here.
_DEC_BASIS: Final = np.ascontiguousarray(
    _basis(np.arange(DEC_PER_FRAME) * 2 + 1, 1.0 / 65536.0)
    .reshape(DEC_PER_FRAME, 2, 8)
    .transpose(0, 2, 1)
    .reshape(DEC_PER_FRAME, 16)
)
_DEC_ENERGY: Final = 65536.0**2


_ROT_SUB: Final = np.exp(-1j * _W * SUB)  # a tone's phase advance over a sub-block, undone


def _correlators() -> tuple[F32, F64]:
    """The 5 ms correlators (40 × 16, like _basis) and their gain off frequency.

    A plain 40-sample correlator is 200 Hz wide: it also sees the other group's tone at -13 dB
    and its own negative frequency. Each of these is the plain one (gain 40 at its tone) pulled
    towards zero response over ±3 % around the other group's four tones and its own image, by
    regularised least squares: leakage below -31 dB, noise gain under 1.3. So a sub-block's
    correlations give the two tones' amplitudes and phases cleanly, whatever the digit.
    Returns the basis and, per tone, the gain |H(w (1 + e))| / 40 for e on _GAIN_STEPS.
    """
    n = np.arange(SUB)
    spread = np.linspace(-_NULL_SPAN, _NULL_SPAN, 7)
    basis = np.zeros((SUB, 16))
    gains = np.zeros((8, _GAIN_STEPS.size))
    for k in range(8):
        plain = np.exp(-1j * _W[k] * n)
        others = _W[4:] if k < 4 else _W[:4]
        stop = [s * w * (1 + e) for w in others for s in (1, -1) for e in spread]
        stop += [-_W[k] * (1 + e) for e in spread]
        response = np.exp(1j * np.outer(stop, n))  # H(f) = response @ h
        normal = np.eye(SUB) + _NULL_WEIGHT * (response.conj().T @ response)
        inverse = np.linalg.inv(normal)
        tone = np.exp(1j * _W[k] * n)
        g, q = inverse @ plain, inverse @ tone.conj()
        h = g + (SUB - tone @ g) / (tone @ q) * q  # keeps H(w_k) = 40
        basis[:, 2 * k], basis[:, 2 * k + 1] = h.real, h.imag  # interleaved: complex64 view
        probe = np.exp(1j * np.outer(_W[k] * (1 + _GAIN_STEPS), n))
        gains[k] = np.abs(probe @ h) / SUB
    return basis.astype(np.float32), gains


_NULL_SPAN: Final = 0.03
_NULL_WEIGHT: Final = 3.0
_GAIN_STEPS: Final = np.linspace(-0.06, 0.06, 121)
_SUB_BASIS, _SUB_GAIN = _correlators()


def _sub_gain(tone: I64, delta: F64) -> F64:
    """The correlator's gain for `tone` at relative offset delta (rad/sample)."""
    rel = delta / _W[tone]
    step = _GAIN_STEPS[1] - _GAIN_STEPS[0]
    at = np.minimum(np.maximum(np.rint((rel - _GAIN_STEPS[0]) / step), 0), _GAIN_STEPS.size - 1)
    return np.asarray(_SUB_GAIN[tone, at.astype(np.intp)])


class InbandDetector:
    """Batched in-band DTMF detection for many channels at 8000 Hz.

    `add_channel` gives a slot; `process(slots, block, now)` takes a (len(slots) × N) block of
    int16 samples (floats are taken on the int16 scale), row i continuing slot slots[i]'s stream,
    with `now` the time just after the block's last sample, and returns (slot, DtmfEvent) pairs.
    Slots left out of a call simply get no audio that tick (a lost packet).
    """

    _alive: Bools
    _pend: npt.NDArray[np.int16]  # samples waiting for a whole frame
    _npend: I64
    _dprev: F32  # the previous frame's power at the 8 frequencies (screen)
    _eprev: F32  # ... and its energy (decimated)
    _sprev: Bools  # the previous frame was screened in
    _zh: C64  # the last HIST sub-blocks' correlations (HIST × 8)
    _eh: F32  # ... and energies
    _zvalid: Bools  # _zh/_eh are up to date (the channel was analysed last time)
    _hist_from: I64  # the first call (sequence number) whose audio is this channel's history
    _busy: Bools  # a digit, a candidate or a glide in progress: analyse whatever the screen
    _pos: I64  # samples analysed: the position of the next frame
    _tlast: F64  # time just after the last sample received
    _act: I64  # the digit in progress, or -1
    _act_on: F64  # its onset (sample position)
    _act_end: F64  # where its tones were last seen to end
    _act_ref: F32  # (2 × slots) its row and column amplitude per sub-block, as correlated
    _act_absent: I64  # sub-blocks in a row without its tones
    _cand: I64  # the digit building up to a start, or -1
    _cand_on: F64  # its estimated onset
    _cand_miss: I64  # windows missed since its last hit
    _cand_need: F64  # samples it must be seen for to start
    _taint: I64  # the digit whose tones are now gliding through, or -1

    def __init__(self, sample_rate: int = RATE) -> None:
        if sample_rate != RATE:
            raise ValueError(f"the in-band detector works at {RATE} Hz, not {sample_rate}")
        self._free: list[int] = []
        self._scratch = _Scratch()
        # The audio of the last calls, (sequence number, frames (rows × samples), slot -> row):
        # the history a channel needs when it becomes hot. A copy of each block, where keeping
        # a per-channel history cost three strided copies of every channel per call.
        self._ring: list[tuple[int, npt.NDArray[np.int16], npt.NDArray[np.int32]]] = []
        self._seq = 0
        self._busy_line = False  # most channels had sound in the last call
        self._size = 0
        self._capacity = 0
        self._grow(16)

    # ---- slots ---------------------------------------------------------------------------------

    def _grow(self, capacity: int) -> None:
        old = self._size

        def new(
            current: npt.NDArray[np.generic] | None,
            shape: tuple[int, ...],
            dtype: npt.DTypeLike,
            fill: object,
        ) -> npt.NDArray[np.generic]:
            array = np.full((capacity, *shape), fill, dtype=dtype)
            if current is not None and old:
                array[:old] = current[:old]
            return array

        def cur(name: str) -> npt.NDArray[np.generic] | None:
            return getattr(self, name, None)  # type: ignore[no-any-return]

        self._alive = new(cur("_alive"), (), np.bool_, False)  # type: ignore[assignment]
        self._pend = new(cur("_pend"), (FRAME,), np.int16, 0)  # type: ignore[assignment]
        self._npend = new(cur("_npend"), (), np.int64, 0)  # type: ignore[assignment]
        dprev = np.zeros((8, capacity), dtype=np.float32)  # channels last, as the screen uses it
        if old:
            dprev[:, :old] = self._dprev[:, :old]
        self._dprev = dprev
        self._eprev = new(cur("_eprev"), (), np.float32, 0)  # type: ignore[assignment]
        self._sprev = new(cur("_sprev"), (), np.bool_, False)  # type: ignore[assignment]
        self._zh = new(cur("_zh"), (HIST, 8), np.complex64, 0)  # type: ignore[assignment]
        self._eh = new(cur("_eh"), (HIST,), np.float32, 0)  # type: ignore[assignment]
        self._zvalid = new(cur("_zvalid"), (), np.bool_, False)  # type: ignore[assignment]
        self._hist_from = new(cur("_hist_from"), (), np.int64, 0)  # type: ignore[assignment]
        self._busy = new(cur("_busy"), (), np.bool_, False)  # type: ignore[assignment]
        self._pos = new(cur("_pos"), (), np.int64, 0)  # type: ignore[assignment]
        self._tlast = new(cur("_tlast"), (), np.float64, np.nan)  # type: ignore[assignment]
        self._act = new(cur("_act"), (), np.int64, -1)  # type: ignore[assignment]
        self._act_on = new(cur("_act_on"), (), np.float64, 0)  # type: ignore[assignment]
        self._act_end = new(cur("_act_end"), (), np.float64, 0)  # type: ignore[assignment]
        act_ref = np.zeros((2, capacity), dtype=np.float32)
        if old:
            act_ref[:, :old] = self._act_ref[:, :old]
        self._act_ref = act_ref
        self._act_absent = new(cur("_act_absent"), (), np.int64, 0)  # type: ignore[assignment]
        self._cand = new(cur("_cand"), (), np.int64, -1)  # type: ignore[assignment]
        self._cand_on = new(cur("_cand_on"), (), np.float64, 0)  # type: ignore[assignment]
        self._cand_miss = new(cur("_cand_miss"), (), np.int64, 0)  # type: ignore[assignment]
        self._cand_need = new(cur("_cand_need"), (), np.float64, 0)  # type: ignore[assignment]
        self._taint = new(cur("_taint"), (), np.int64, -1)  # type: ignore[assignment]
        self._capacity = capacity

    def _reset(self, slots: Idx) -> None:
        """Forget everything of these channels but their existence."""
        self._pend[slots] = 0
        self._npend[slots] = 0
        self._dprev[:, slots] = 0
        self._eprev[slots] = 0
        self._sprev[slots] = False
        self._zh[slots] = 0
        self._eh[slots] = 0
        self._zvalid[slots] = False
        self._hist_from[slots] = self._seq + 1
        self._busy[slots] = False
        self._act[slots] = -1
        self._act_absent[slots] = 0
        self._cand[slots] = -1
        self._cand_miss[slots] = 0
        self._taint[slots] = -1

    def add_channel(self) -> int:
        """A new channel's slot (a freed one is reused), its state reset."""
        if self._free:
            slot = self._free.pop()
        else:
            if self._size == self._capacity:
                self._grow(self._capacity * 2)
            slot = self._size
            self._size += 1
        self._reset(np.array([slot], dtype=np.intp))
        self._alive[slot] = True
        self._pos[slot] = 0
        self._tlast[slot] = np.nan
        return slot

    def remove_channel(self, slot: int) -> None:
        """Give a slot back (a digit in progress is dropped without an event)."""
        self._check_slot(slot)
        self._alive[slot] = False
        self._free.append(slot)

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self._size or not self._alive[slot]:
            raise ValueError(f"no such in-band channel: {slot}")

    # ---- the per-tick entry points -------------------------------------------------------------

    def process(self, slots: Sequence[int], block: npt.ArrayLike, now: float) -> Events:
        """Feed `block` (len(slots) × N samples, any N) and return the digits' start/end events.

        `slots` may be a list or an int array (an array in slot order is cheapest: the state is
        then sliced, not gathered); each slot at most once. N need not be a multiple of the
        detector's 80-sample frame: leftovers wait, per slot, for the next call. Events carry
        source "inband"; `at` is the onset (start) or the end of the tones (end), worked out
        from sample positions counted back from `now`; "end" events carry duration_ms. A slot
        whose audio resumes more than GAP_BREAK_S after its last block ends its digit first.
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
        samples = _as_int16(data)
        n = samples.shape[1]
        events: Events = []

        # Audio missing for a while: end what was in progress where the audio stopped.
        tlast = self._tlast[sel]
        broken = np.flatnonzero((now - n / RATE) - tlast > GAP_BREAK_S)  # NaN compares False
        if broken.size:
            self._end_active(index[broken], tlast[broken], events)
            self._reset(index[broken])
        self._tlast[sel] = now

        npend = self._npend[sel]
        if n % FRAME == 0 and not npend.any():  # the usual tick: whole frames, nothing waiting
            frames = samples.reshape(index.size, n // FRAME, FRAME)
            self._run(index, sel, frames, now, 0, events)
            return events
        for waiting in np.unique(npend):
            rows = np.flatnonzero(npend == waiting)
            group = index[rows]
            joined = np.concatenate([self._pend[group, :waiting], samples[rows]], axis=1)
            whole = joined.shape[1] // FRAME * FRAME
            left = joined.shape[1] - whole
            if whole:
                frames = joined[:, :whole].reshape(group.size, whole // FRAME, FRAME)
                self._run(group, group, frames, now, left, events)
            self._pend[group, :left] = joined[:, whole:]
            self._npend[group] = left
        return events

    def _selector(self, index: Idx) -> Idx | slice:
        """Check the slots of a call; a run of consecutive slots is taken as a slice (views
        instead of gathers and scatters of the state: the usual case, all channels in order)."""
        first, last = int(index[0]), int(index[-1])
        if last - first == index.size - 1 and (index.size == 1 or (np.diff(index) == 1).all()):
            if first < 0 or last >= self._size or not self._alive[first : last + 1].all():
                raise ValueError("process: unknown or removed slot")
            return slice(first, last + 1)
        if index.min() < 0 or index.max() >= self._size or not self._alive[index].all():
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
        tlast = self._tlast[index]
        self._end_active(index, np.where(np.isnan(tlast), now, np.minimum(tlast, now)), events)
        self._reset(index)
        return events

    # ---- internals -----------------------------------------------------------------------------

    def _end_active(self, slots: Idx, tlast: F64, events: Events) -> None:
        """End the digits in progress on `slots`, tlast[i] being the time just after slot i's
        last sample received (position _pos + _npend)."""
        for i in np.flatnonzero(self._act[slots] >= 0):
            slot = int(slots[i])
            base = float(tlast[i]) - float(self._pos[slot] + self._npend[slot]) / RATE
            if self._act_absent[slot] == 0:  # its tones were still on when the audio stopped
                end = float(self._pos[slot])
            else:
                end = float(self._act_end[slot])
            events.append(
                (slot, _end_event(int(self._act[slot]), base, float(self._act_on[slot]), end))
            )
        self._act[slots] = -1

    def _run(
        self,
        slots: Idx,
        sel: Idx | slice,
        frames: npt.NDArray[np.int16],
        now: float,
        left: int,
        events: Events,
    ) -> None:
        """Analyse whole frames (rows × F × 80) of `slots` (`sel` selects them in the state
        arrays); `left` samples wait after them."""
        rows, nframes = frames.shape[:2]
        frames = np.ascontiguousarray(frames)
        count = nframes * FRAME

        # 1. Screen every channel; 2. analyse those screened in and those busy.
        screened, active, last_power, last_energy = _screen(
            frames, self._dprev[:, sel], self._eprev[sel], self._scratch, self._busy_line
        )
        self._busy_line = 3 * active.size > 2 * rows
        self._dprev[:, sel] = last_power
        self._eprev[sel] = last_energy
        busy = np.flatnonzero(self._busy[sel])
        if not active.size and not busy.size:  # silence, and nothing going on
            self._remember(slots, frames, active)
            self._zvalid[sel] = False
            self._sprev[sel] = False
            self._pos[sel] += count
            return
        # A frame is analysed when its window or the one before was screened in.
        hot_frame = screened.copy()
        hot_frame[0] |= self._sprev[sel]
        hot_frame[1:] |= screened[:-1]
        self._sprev[sel] = screened[-1]
        any_hot = hot_frame[0].copy()
        for f in range(1, nframes):
            any_hot |= hot_frame[f]
        any_hot[busy] = True
        hot = np.flatnonzero(any_hot)
        hot_slots = slots[hot]
        flat = frames.reshape(rows, count)
        if hot.size:
            pos0 = self._pos[hot_slots]
            base = now - (pos0 + count + left) / RATE  # time of sample position 0
            self._analyse(hot_slots, flat[hot], hot_frame[:, hot], pos0, base, events)
            self._busy[hot_slots] = (
                (self._act[hot_slots] >= 0)
                | (self._cand[hot_slots] >= 0)
                | (self._taint[hot_slots] >= 0)
            )
        valid = np.zeros(rows, dtype=bool)
        valid[hot] = True
        self._zvalid[sel] = valid
        self._pos[sel] += count
        self._remember(slots, frames, active)

    def _remember(self, slots: Idx, frames: npt.NDArray[np.int16], active: Idx) -> None:
        """Keep this call's audio as the history of the next calls: a copy of the channels with
        sound; the quiet ones are marked -2 (their history: zeros), those not in the call -1."""
        self._seq += 1
        rowmap = np.full(self._capacity, -1, dtype=np.int32)
        audio = frames.reshape(slots.size, -1)
        if 2 * active.size > slots.size:
            rowmap[slots] = np.arange(slots.size, dtype=np.int32)
            # Into the buffer of a call that leaves the ring: a fresh one this size comes
            # from mmap and is faulted in page by page, every call.
            spare = self._ring[0][1].base if len(self._ring) == _RING else None
            if (
                isinstance(spare, np.ndarray)
                and spare.dtype == np.int16
                and spare.size >= audio.size
            ):
                kept = spare.reshape(-1)[: audio.size].reshape(audio.shape)
                np.copyto(kept, audio)
            else:
                kept = np.empty(audio.size, dtype=np.int16).reshape(audio.shape)
                np.copyto(kept, audio)
        else:
            rowmap[slots] = -2
            rowmap[slots[active]] = np.arange(active.size, dtype=np.int32)
            kept = audio[active]
        self._ring.append((self._seq, kept, rowmap))
        del self._ring[:-_RING]

    def _history(self, slots: Idx) -> npt.NDArray[np.int16]:
        """The HIST sub-blocks of audio before this call, (k × 200), for some channels: from the
        last calls they were in; zeros where they were quiet, or where there is nothing (a new
        or reset channel, or more calls missed than the ring holds)."""
        want = HIST * SUB
        out = np.zeros((slots.size, want), dtype=np.int16)
        filled = np.zeros(slots.size, dtype=np.int64)
        start = self._hist_from[slots]
        for seq, data, rowmap in reversed(self._ring):
            if filled.min() >= want:
                break
            rows = np.where(slots < rowmap.size, rowmap[np.minimum(slots, rowmap.size - 1)], -1)
            usable = (rows != -1) & (seq >= start) & (filled < want)
            if not usable.any():
                continue
            length = data.shape[1]
            values = filled[usable]
            low = int(values.min())
            # Usually every channel has the same amount already (np.unique is slow on small arrays).
            for value in [low] if low == values.max() else np.unique(values).tolist():
                pick = np.flatnonzero(usable & (filled == value))
                take = min(length, want - value)
                loud = pick[rows[pick] >= 0]  # the quiet ones stay zeros
                out[loud, want - value - take : want - value] = data[rows[loud], length - take :]
                filled[pick] = value + take
        return out

    def _analyse(
        self,
        slots: Idx,
        flat: npt.NDArray[np.int16],
        hot_frame: Bools,
        pos0: I64,
        base: F64,
        events: Events,
    ) -> None:
        """Full-rate analysis and the decision state machine for the channels screened in.

        hot_frame is (F × rows). Arrays here keep the channels on the last axis."""
        rows = slots.size
        nsub = flat.shape[1] // SUB
        x = flat.reshape(rows * nsub, SUB).astype(np.float32)
        z_new = (x @ _SUB_BASIS).view(np.complex64).reshape(rows, nsub, 8)
        e_new = np.einsum("ij,ij->i", x, x).reshape(rows, nsub)

        # The audio before this call: those not analysed last time rebuild their correlation
        # history from it, and a digit's last checks read it.
        act = self._act[slots]
        cand = self._cand[slots]
        taint = self._taint[slots]
        absent = self._act_absent[slots]
        act_ref = self._act_ref[:, slots]
        zh = self._zh[slots]
        eh = self._eh[slots]
        # The history is fetched from the ring once for every row (one pass over the ring
        # costs about the same for a few rows or all): those gone stale rebuild their
        # correlations from it, and the windows that may start a digit read it below.
        history = self._history(slots)
        gone_stale = np.flatnonzero(~self._zvalid[slots])
        if gone_stale.size:
            hx = history[gone_stale].reshape(-1, SUB).astype(np.float32)
            zh[gone_stale] = (hx @ _SUB_BASIS).view(np.complex64).reshape(-1, HIST, 8)
            eh[gone_stale] = np.einsum("ij,ij->i", hx, hx).reshape(-1, HIST)
        z_all = np.concatenate([zh, z_new], axis=1)  # (rows, HIST + nsub, 8)
        e_all = np.concatenate([eh, e_new], axis=1)
        self._zh[slots] = z_all[:, -HIST:]
        self._eh[slots] = e_all[:, -HIST:]
        zt = np.ascontiguousarray(z_all.transpose(2, 1, 0))  # (8, HIST + nsub, rows)
        et = np.ascontiguousarray(e_all.T)  # (HIST + nsub, rows)

        # Is the digit in progress still there, sub-block by sub-block? (nsub × rows)
        present = np.zeros((nsub, rows), dtype=bool)
        cover = np.zeros((nsub, rows), dtype=np.float32)
        steady = np.zeros(rows, dtype=bool)
        going = np.flatnonzero(act >= 0)
        if going.size:
            present[:, going], cover[:, going] = _presence(
                zt[:, HIST:, going], et[HIST:, going], act[going], act_ref[:, going]
            )
            steady[going] = _steady(zt[:, HIST - 1 :, going], act[going])
        # Decision windows count wherever a digit may begin: not where a digit's tones go on
        # without a break, each at its own frequency (there they would only show that digit).
        quiet = (act >= 0) & (absent == 0) & (cand < 0) & (taint < 0) & present.all(axis=0)
        quiet &= steady
        looking = np.flatnonzero(~quiet)
        if 4 * looking.size < 3 * rows:  # only these: the gather costs less than the rest
            win = _windows(zt[:, :, looking], et[:, looking], nsub)
            seen = looking  # the channels of win's columns
        else:
            win = _windows(zt, et, nsub)
            seen = np.arange(rows)
            if looking.size < rows:
                win.digit[:, quiet] = -1
                win.pair[:, quiet] = -1
                win.glide[:, quiet] = False
        eventful = np.zeros(rows, dtype=bool)  # a hit, a pattern or a glide in a window
        eventful[seen] = (
            (win.digit >= 0).any(axis=0) | (win.pair >= 0).any(axis=0) | win.glide.any(axis=0)
        )
        idle = (act < 0) & (cand < 0) & (taint < 0) & ~eventful
        # Digits going on without a break, and idle channels, need no state machine (there it
        # would only move their tones' end along): it runs on the rest alone.
        last = np.flatnonzero(quiet)
        if last.size:  # their tones end, for now, where the last sub-block has them end
            end = (pos0[last] + (nsub - 1) * SUB).astype(np.float64) + SUB * cover[-1, last]
            self._act_end[slots[last]] = end
        rest = np.flatnonzero(~(quiet | idle))  # all among those seen (the others are quiet)
        if not rest.size:
            return
        if rest.size < seen.size:
            column = np.zeros(rows, dtype=np.intp)
            column[seen] = np.arange(seen.size)
            win = win.take(column[rest])
        if rest.size < rows:
            present, cover, hot_frame = present[:, rest], cover[:, rest], hot_frame[:, rest]
        self._decide(
            slots[rest], rest, win, present, cover, zt, et, hot_frame, history, flat, pos0[rest],
            base[rest], events,
        )  # fmt: skip

    def _decide(
        self,
        slots: Idx,
        cols: Idx,
        win: _Windows,
        present: Bools,
        cover: F32,
        zt: C64,
        et: F32,
        hot_frame: Bools,
        history: npt.NDArray[np.int16],
        flat: npt.NDArray[np.int16],
        pos0: I64,
        base: F64,
        events: Events,
    ) -> None:
        """The state machine, sub-block by sub-block (`_decide_vectorised` or, for a few
        channels, `_decide_each`). Each channel's audio is its `history` (HIST sub-blocks,
        where needed) then this call's samples.

        `slots` are the channels decided on; zt, et, history and flat hold more (all those
        analysed), `cols` are the slots' columns (rows of history and flat) in them. The other
        arguments are for `slots` alone."""
        act = self._act[slots]
        act_on = self._act_on[slots]
        act_end = self._act_end[slots]
        act_ref = self._act_ref[:, slots]
        absent = self._act_absent[slots]
        cand = self._cand[slots]
        cand_on = self._cand_on[slots]
        cand_miss = self._cand_miss[slots]
        cand_need = self._cand_need[slots]
        taint = self._taint[slots]

        # A start's checks (timing, spectrum) read its window alone: they are made at once, in
        # one batch instead of one per sub-block, for each channel's first window that may
        # start a digit (its spectrum in the next window where the tones were timed short of
        # _START_MS: that is where they are checked again); nearly all digits start in one of
        # these. In the loop for the others.
        may_start = (
            (win.digit >= 0)
            & (win.last_cover >= _MIN_LAST_COVER)
            & (win.fraction >= _START_FRACTION)
            & (win.digit != act)  # a digit going on is not started again
        )
        ahead = np.where(may_start.any(axis=0), may_start.argmax(axis=0), -1)
        # Timed there unless a candidate of that digit is already timed, or needs no timing.
        seen = (cand >= 0) & (cand == win.digit[np.maximum(ahead, 0), np.arange(ahead.size)])
        to_time = ~(seen & (cand_need != _START_ROUGH_SAMPLES))
        checks = _start_checks(history, flat, cols, ahead, to_time, win)
        state: _State = (act, act_on, act_end, absent, cand, cand_on, cand_miss, cand_need, taint)
        # Few channels: a loop over them costs less than the array calls (the same decisions).
        decide = _decide_each if slots.size <= _ROWS_ONE_BY_ONE else _decide_vectorised
        decide(
            slots, cols, win, present, cover, zt, et, hot_frame, history, flat, pos0, base,
            state, act_ref, checks, events,
        )  # fmt: skip

        self._act[slots] = act
        self._act_on[slots] = act_on
        self._act_end[slots] = act_end
        self._act_ref[:, slots] = act_ref
        self._act_absent[slots] = absent
        self._cand[slots] = cand
        self._cand_on[slots] = cand_on
        self._cand_miss[slots] = np.minimum(cand_miss, 100)
        self._cand_need[slots] = cand_need
        self._taint[slots] = taint


def _decide_vectorised(
    slots: Idx,
    cols: Idx,
    win: _Windows,
    present: Bools,
    cover: F32,
    zt: C64,
    et: F32,
    hot_frame: Bools,
    history: npt.NDArray[np.int16],
    flat: npt.NDArray[np.int16],
    pos0: I64,
    base: F64,
    state: _State,
    act_ref: F32,
    checks: _Checks,
    events: Events,
) -> None:
    """InbandDetector._decide's state machine, sub-block by sub-block, vectorised over the
    channels; arguments as `_decide_each`."""
    nsub = present.shape[0]
    timing_sub, at_timing, pre_onset, pre_length, pure_sub, at_pure, pre_pure = checks
    act, act_on, act_end, absent, cand, cand_on, cand_miss, cand_need, taint = state
    for j in range(nsub):
        on = act >= 0
        if not (
            hot_frame[j // SUBS_PER_FRAME].any()
            or on.any()
            or (cand >= 0).any()
            or (taint >= 0).any()
        ):
            continue  # nothing to look at or to carry on with in this sub-block
        sub_start = (pos0 + j * SUB).astype(np.float64)
        end_here = sub_start + SUB

        # -- the digit in progress: still there, or gone for long enough to end?
        if on.any():
            here = present[j] & on
            gone = on & ~here
            c = cover[j]
            # Where the tones stopped: the end of the last sub-block holding them, plus
            # what they fill of the first one without them.
            act_end = np.where(here, sub_start + SUB * c, act_end)
            first_gone = gone & (absent == 0) & (act_end >= sub_start - 0.5)
            act_end = np.where(first_gone, act_end + SUB * c, act_end)
            absent = np.where(here, 0, np.where(gone, absent + 1, absent))
            ended = np.flatnonzero(gone & (absent >= _END_SUBS))
            if ended.size:
                events += _end_events(
                    slots[ended], act[ended], base[ended], act_on[ended], act_end[ended]
                )
                act[ended] = -1
                absent[ended] = 0

        # -- hits, glides and candidates
        looked = hot_frame[j // SUBS_PER_FRAME] | (act >= 0) | (cand >= 0) | (taint >= 0)
        # A steady two-tone pattern seen off frequency (or not clean) taints that pair
        # while it lasts: speech and music glide into the accepted band, keypad tones
        # start in it.
        pair = np.where(looked, win.pair[j], -1)
        taint = np.where(pair != taint, -1, taint)
        taint = np.where(looked & win.glide[j] & (act < 0), pair, taint)
        hit = np.where(looked, win.digit[j], -1)
        hit = np.where((hit == taint) | ((act >= 0) & (hit == act)), -1, hit)
        same = (hit >= 0) & (hit == cand)
        fresh = (hit >= 0) & (hit != cand)
        cand_on = np.where(fresh, end_here - win.covered[j], cand_on)
        cand_need = np.where(
            fresh,
            np.where(win.onset[j], _START_ROUGH_SAMPLES, _START_NO_ONSET_SAMPLES),
            cand_need,
        )
        cand = np.where(fresh, hit, cand)
        cand_miss = np.where(hit >= 0, 0, cand_miss + 1)
        cand = np.where((hit < 0) & (cand_miss > _CAND_MISSES), -1, cand)
        ready = (
            (same | fresh)
            & (end_here - cand_on >= cand_need)
            & (win.last_cover[j] >= _MIN_LAST_COVER)
        )
        begun = np.flatnonzero(ready & (win.fraction[j] >= _START_FRACTION))
        if not begun.size:
            continue
        known = timing_sub[begun] == j  # timed before the loop
        checked = at_timing[begun[known]]
        timed = cand_need[begun] == _START_ROUGH_SAMPLES
        # Tones that began abruptly are timed to the sample, from the audio of the window
        # and the LOOK sub-blocks before it: they start once they have lasted _START_MS.
        if timed.any():
            onset = np.empty(begun.size)
            length = np.empty(begun.size)
            onset[known], length[known] = pre_onset[checked], pre_length[checked]
            late = np.flatnonzero(timed & ~known)
            if late.size:
                onset[late], length[late] = _start_timing(
                    history, flat, cols[begun[late]], j, win, begun[late]
                )
            early = length[timed] < _START_SAMPLES
            cand_on[begun[timed]] = (
                sub_start[begun[timed]] + (SUB - (WIN + LOOK) * SUB) + onset[timed]
            )
            cand_need[begun[timed]] = _START_SAMPLES  # timed: the onset is known from now on
            if early.any():  # not yet
                keep = ~timed
                keep[timed] = ~early
                begun = begun[keep]
                if not begun.size:
                    continue
        # Last check, on the spectrum of the window: nothing but the two tones.
        pure = np.empty(begun.size, dtype=bool)
        known = pure_sub[begun] == j
        pure[known] = pre_pure[at_pure[begun[known]]]
        late = np.flatnonzero(~known)
        if late.size:
            pure[late] = _start_purity(history, flat, cols[begun[late]], j, win, begun[late])
        if not pure.all():  # more than two tones, or a voice: not again in this pattern
            refused = begun[~pure]
            taint[refused] = cand[refused]
            cand[refused] = -1
            begun = begun[pure]
            if not begun.size:
                continue
        again = begun[act[begun] >= 0]  # another digit without a gap: the old one ends first
        if again.size:  # at the latest where the new one began (a shared tone goes on)
            events += _end_events(
                slots[again],
                act[again],
                base[again],
                act_on[again],
                np.minimum(act_end[again], cand_on[again]),
            )
        for slot, digit, at in zip(
            slots[begun].tolist(),
            cand[begun].tolist(),
            (base[begun] + cand_on[begun] / RATE).tolist(),
            strict=True,
        ):
            events.append((slot, _event(KEYS[digit], "start", at, None)))
        act[begun] = cand[begun]
        act_on[begun] = cand_on[begun]
        act_end[begun] = end_here[begun]
        act_ref[:, begun] = win.ref[:, j, begun]
        absent[begun] = 0
        cand[begun] = -1
        if j + 1 < nsub:  # the new digits' presence for the rest of this call
            later = HIST + j + 1
            source = cols[begun]
            present[j + 1 :, begun], cover[j + 1 :, begun] = _presence(
                zt[:, later:, source], et[later:, source], act[begun], act_ref[:, begun]
            )
    for array, value in zip(
        state,
        (act, act_on, act_end, absent, cand, cand_on, cand_miss, cand_need, taint),
        strict=True,
    ):
        array[:] = value


_ROWS_ONE_BY_ONE: Final = 120  # up to this many channels, _decide_each (crossover: ~130)
_F32_LAST_COVER: Final = float(np.float32(_MIN_LAST_COVER))  # the thresholds as the arrays
_F32_START_FRACTION: Final = float(np.float32(_START_FRACTION))  # compare them (float32)


def _decide_each(
    slots: Idx,
    cols: Idx,
    win: _Windows,
    present: Bools,
    cover: F32,
    zt: C64,
    et: F32,
    hot_frame: Bools,
    history: npt.NDArray[np.int16],
    flat: npt.NDArray[np.int16],
    pos0: I64,
    base: F64,
    state: _State,
    act_ref: F32,
    checks: _Checks,
    events: Events,
) -> None:
    """InbandDetector._decide's state machine, one channel at a time on Python scalars: the
    same decisions, without ~80 array calls a sub-block, which is what a few channels cost.
    `state` (act, act_on, act_end, absent, cand, cand_on, cand_miss, cand_need, taint) and
    act_ref are updated in place. Values are read as the arrays hold them (float32 ones
    exactly) and compared as the arrays would be (against float32 thresholds); a new digit's
    presence comes from one batch made for the windows where starts were checked ahead."""
    nsub, rows = present.shape
    timing_sub, at_timing, pre_onset, pre_length, pure_sub, at_pure, pre_pure = checks
    # The presence, over this call, of the digit each start window checked ahead would start.
    ahead = np.flatnonzero(pure_sub >= 0)
    at = pure_sub[ahead]
    ahead_present, ahead_cover = _presence(
        zt[:, HIST:, cols[ahead]],
        et[HIST:, cols[ahead]],
        win.digit[at, ahead],
        win.ref[:, at, ahead],
    )
    ahead_present_t, ahead_filled_t = ahead_present.T.tolist(), (SUB * ahead_cover).T.tolist()
    looked_frames = hot_frame.T.tolist()  # (rows × F)
    w_digit, w_pair, w_glide = win.digit.T.tolist(), win.pair.T.tolist(), win.glide.T.tolist()
    w_covered, w_onset = win.covered.T.tolist(), win.onset.T.tolist()
    w_last, w_fraction = win.last_cover.T.tolist(), win.fraction.T.tolist()
    present_t, filled_t = present.T.tolist(), (SUB * cover).T.tolist()  # float32 products
    timing_at, pure_at = timing_sub.tolist(), pure_sub.tolist()
    lists = [array.tolist() for array in state]
    acts, act_ons, act_ends, absents, cands, cand_ons, misses, needs, taints = lists
    starts0, bases, ahead_at = pos0.tolist(), base.tolist(), at_pure.tolist()
    records: list[tuple[int, int, float, float | None]] = []  # row, digit, onset, end (None: start)
    started: list[tuple[int, int]] = []  # (row, sub-block)
    for r in range(rows):
        act, act_on, act_end, absent = acts[r], act_ons[r], act_ends[r], absents[r]
        cand, cand_on, miss, need, taint = cands[r], cand_ons[r], misses[r], needs[r], taints[r]
        here_of, filled = present_t[r], filled_t[r]
        for j in range(nsub):
            sub_start = float(starts0[r] + j * SUB)
            end_here = sub_start + SUB
            if act >= 0:  # the digit in progress: still there, or gone for long enough?
                if here_of[j]:
                    act_end = sub_start + filled[j]
                    absent = 0
                else:
                    if absent == 0 and act_end >= sub_start - 0.5:
                        act_end = act_end + filled[j]
                    absent += 1
                    if absent >= _END_SUBS:
                        records.append((r, act, act_on, act_end))
                        act, absent = -1, 0
            looked = looked_frames[r][j // SUBS_PER_FRAME] or act >= 0 or cand >= 0 or taint >= 0
            pair = w_pair[r][j] if looked else -1
            if pair != taint:
                taint = -1
            if looked and w_glide[r][j] and act < 0:
                taint = pair
            hit = w_digit[r][j] if looked else -1
            if hit == taint or (act >= 0 and hit == act):
                hit = -1
            same = hit >= 0 and hit == cand
            fresh = hit >= 0 and hit != cand
            if fresh:
                cand_on = end_here - w_covered[r][j]
                need = _START_ROUGH_SAMPLES if w_onset[r][j] else _START_NO_ONSET_SAMPLES
                cand = hit
            miss = 0 if hit >= 0 else miss + 1
            if hit < 0 and miss > _CAND_MISSES:
                cand = -1
            if not (
                (same or fresh)
                and end_here - cand_on >= need
                and w_last[r][j] >= _F32_LAST_COVER
                and w_fraction[r][j] >= _F32_START_FRACTION
            ):
                continue
            if need == _START_ROUGH_SAMPLES:  # timed to the sample (see _decide_vectorised)
                if timing_at[r] == j:
                    onset, length = float(pre_onset[at_timing[r]]), float(pre_length[at_timing[r]])
                else:
                    late = _start_timing(history, flat, cols[r : r + 1], j, win, np.array([r]))
                    onset, length = float(late[0][0]), float(late[1][0])
                cand_on = sub_start + (SUB - (WIN + LOOK) * SUB) + onset
                need = _START_SAMPLES
                if length < _START_SAMPLES:
                    continue
            if pure_at[r] == j:
                pure = bool(pre_pure[ahead_at[r]])
            else:
                pure = bool(_start_purity(history, flat, cols[r : r + 1], j, win, np.array([r]))[0])
            if not pure:  # more than two tones, or a voice: not again in this pattern
                taint, cand = cand, -1
                continue
            if act >= 0:  # another digit without a gap: the old one ends first
                records.append((r, act, act_on, min(act_end, cand_on)))
            records.append((r, cand, cand_on, None))
            act, act_on, act_end, absent, cand = cand, cand_on, end_here, 0, -1
            started.append((r, j))
            if j + 1 < nsub:  # the new digit's presence for the rest of this call
                if pure_at[r] == j:
                    here_of = ahead_present_t[ahead_at[r]]
                    filled = ahead_filled_t[ahead_at[r]]
                else:
                    later, source = HIST + j + 1, cols[r : r + 1]
                    now_present, now_cover = _presence(
                        zt[:, later:, source], et[later:, source], np.array([act]),
                        win.ref[:, j, r : r + 1],
                    )  # fmt: skip
                    here_of = here_of[: j + 1] + now_present[:, 0].tolist()
                    filled = filled[: j + 1] + (SUB * now_cover[:, 0]).tolist()
        acts[r], act_ons[r], act_ends[r], absents[r] = act, act_on, act_end, absent
        cands[r], cand_ons[r], misses[r], needs[r], taints[r] = cand, cand_on, miss, need, taint
    for array, values in zip(state, lists, strict=True):
        array[:] = values
    if started:
        rows_started, subs_started = np.array(started).T
        act_ref[:, rows_started] = win.ref[:, subs_started, rows_started]
    # The events, in order: ends made in one batch (as _decide_vectorised makes them).
    ended = [record for record in records if record[3] is not None]
    end_events = iter(
        _end_events(
            slots[[r for r, _, _, _ in ended]],
            np.array([digit for _, digit, _, _ in ended], dtype=np.int64),
            base[[r for r, _, _, _ in ended]],
            np.array([onset for _, _, onset, _ in ended]),
            np.array([end for _, _, _, end in ended]),
        )
        if ended
        else []
    )
    for r, digit, onset, end in records:
        if end is not None:
            events.append(next(end_events))
        else:
            at_time = bases[r] + onset / RATE
            events.append((int(slots[r]), _event(KEYS[digit], "start", at_time, None)))


def _start_checks(
    history: npt.NDArray[np.int16],
    flat: npt.NDArray[np.int16],
    cols: Idx,
    ahead: I64,
    timed: Bools,
    win: _Windows,
) -> _Checks:
    """The checks of a start in one batch, for the window ending at sub-block ahead[i] of
    channel i (-1: none): the timing there where timed[i], and the spectrum there, or in the
    next window where the tones were timed short of _START_MS (they are checked again there).
    Returns per channel the sub-block of its timing (-1: none) and where that is in onset and
    length (as `_timing`), those, then the same for its spectrum and pure (`_purity`)."""
    rows, nsub = ahead.size, win.digit.shape[0]
    timing_sub = np.full(rows, -1)
    at_timing = np.zeros(rows, dtype=np.intp)
    pure_sub = np.full(rows, -1)
    at_pure = np.zeros(rows, dtype=np.intp)
    first = np.flatnonzero(ahead >= 0)
    if not first.size:
        none = np.zeros(0)
        return timing_sub, at_timing, none, none, pure_sub, at_pure, np.zeros(0, dtype=bool)
    spans = _spans(history, flat, cols[first])
    subs = ahead[first]
    clocked = np.flatnonzero(timed[first])  # (of first)
    timing_sub[first[clocked]] = subs[clocked]
    at_timing[first[clocked]] = np.arange(clocked.size)
    at = subs[clocked]
    freq = win.freq[:, at, first[clocked]].T
    tones = _DIGIT_TONES[win.digit[at, first[clocked]]]
    onset, length = _timing(spans[clocked, at], tones, freq)
    subs[clocked[length < _START_SAMPLES]] += 1
    checked = np.flatnonzero(subs < nsub)  # (of first)
    subs = subs[checked]
    pure_sub[first[checked]] = subs
    at_pure[first[checked]] = np.arange(checked.size)
    audio = spans[checked, subs, LOOK * SUB :]
    pure = _purity(audio, win.freq[:, subs, first[checked]].T)
    return timing_sub, at_timing, onset, length, pure_sub, at_pure, pure


def _spans(
    history: npt.NDArray[np.int16], flat: npt.NDArray[np.int16], rows: Idx
) -> npt.NDArray[np.int16]:
    """These rows' audio (history + flat) as (k × windows × 240), a view: [i, j] is the audio
    of the decision window ending at sub-block j with the LOOK sub-blocks before it."""
    audio = np.concatenate([history[rows], flat[rows]], axis=1)
    size = (WIN + LOOK) * SUB
    count = (audio.shape[1] - size) // SUB + 1
    step = audio.strides[1]
    shape, strides = (rows.size, count, size), (audio.strides[0], SUB * step, step)
    spans: npt.NDArray[np.int16] = np.lib.stride_tricks.as_strided(
        audio, shape, strides, writeable=False
    )
    return spans


def _start_timing(
    history: npt.NDArray[np.int16],
    flat: npt.NDArray[np.int16],
    rows: Idx,
    sub: int,
    win: _Windows,
    columns: Idx,
) -> tuple[F64, F64]:
    """`_timing` of the windows ending at `sub` of these rows (their `columns` in win)."""
    if not rows.size:
        return np.zeros(0), np.zeros(0)
    tones = _DIGIT_TONES[win.digit[sub, columns]]
    freq = win.freq[:, sub, columns].T
    return _timing(_spans(history, flat, rows)[:, sub], tones, freq)


def _start_purity(
    history: npt.NDArray[np.int16],
    flat: npt.NDArray[np.int16],
    rows: Idx,
    sub: int,
    win: _Windows,
    columns: Idx,
) -> Bools:
    """Whether the windows ending at `sub` of these rows hold two tones and nothing else
    (`_pure`), and no voice's harmonics (`_harmonics`)."""
    freq = win.freq[:, sub, columns].T
    return _purity(_spans(history, flat, rows)[:, sub, LOOK * SUB :], freq)


def _purity(samples: npt.NDArray[np.int16], freq: F32) -> Bools:
    """`_pure` and no voice's harmonics (`_harmonics`)."""
    if not samples.shape[0]:
        return np.zeros(0, dtype=bool)
    return np.asarray(_pure(samples, freq) & ~_harmonics(freq))


class _Scratch:
    """Work buffers kept from call to call. Large temporaries allocated afresh every tick come
    from mmap and are faulted in page by page each time (glibc returns them on free): that was
    a third of the screen's cost."""

    def __init__(self) -> None:
        self._buffers: dict[str, npt.NDArray[np.generic]] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != np.dtype(dtype):
            buffer = np.empty(max(size, 1024), dtype=dtype)
            self._buffers[name] = buffer
        return buffer[:size].reshape(shape)


def _screen(
    frames: npt.NDArray[np.int16],
    prev_power: F32,
    prev_energy: F32,
    scratch: _Scratch,
    busy_line: bool,
) -> tuple[Bools, Idx, F32, F32]:
    """The screen over frames (rows × F × 80): which 20 ms windows (each frame with the one
    before) are screened in, (F × rows); the rows with any sound (above the gate, here or in
    the frame before); and the last frame's power at the 8 frequencies (8 × rows) and energy
    (rows), for the next call. prev_* are those of the frame before. `busy_line`: most rows
    had sound last time, so the quick look is skipped (the gate is then on the 4 kHz energy).
    What it returns may be views of `scratch`, good until the next call.

    At 4 kHz (every other sample) and per 10 ms frame, each tone's power is the squared
    correlation; a window adds two frames' (100 Hz wide bins, so a tone 1.5 % off loses
    nothing). The powers are kept tones first ((8 × rows × F), each row's frames side by
    side): numpy is slow on short last axes.
    """
    rows, nframes = frames.shape[:2]
    count = rows * nframes
    gate = DEC_PER_FRAME * _FRAME_GATE
    # First a quick look at every 4th sample, enough to tell silence from anything that could
    # hold a digit (the gate is 17 dB under the weakest digit).
    if busy_line:
        active = np.arange(rows)  # for now
    else:
        probe = scratch.get("probe", (count, FRAME // 4), np.float32)
        np.copyto(probe, frames.reshape(count, FRAME)[:, 3::4], casting="unsafe")
        rough = scratch.get("rough", (count,), np.float32)
        np.einsum("ij,ij->i", probe, probe, out=rough)
        rough *= 2.0
        level = rough.reshape(rows, nframes).T
        active = np.flatnonzero(_any_frame(level >= gate, prev_energy >= gate))
    if not active.size:  # silence everywhere
        empty = np.zeros((nframes, rows), dtype=bool)
        return empty, active, np.zeros((8, rows), np.float32), np.zeros(rows, np.float32)
    every = 2 * active.size > rows  # then work on all rows: a gather costs more than it saves
    n = rows if every else active.size
    source = frames if every else frames[active]
    size = n * nframes
    energy = scratch.get("energy", (size,), np.float32)
    power = scratch.get("power", (8, size), np.float32)
    # By blocks of rows, so that the float samples and their products stay in the cache; the
    # frames as they come (a frame a row: a contiguous copy, and BLAS's fastest form), each
    # block's powers turned tones first.
    step = min(n, _SCREEN_ROWS)
    dec = scratch.get("dec", (step * nframes, DEC_PER_FRAME), np.float32)
    part = scratch.get("part", (step * nframes * 16,), np.float32)
    block = scratch.get("block", (step * nframes * 8,), np.float32)
    for first in range(0, n, step):
        a, b = first * nframes, min(first + step, n) * nframes
        x, squares, tones = dec[: b - a], part[: 16 * (b - a)], block[: 8 * (b - a)]
        np.copyto(x, source[first : first + step].view(np.int32).reshape(b - a, -1), "unsafe")
        np.einsum("ij,ij->i", x, x, out=energy[a:b])
        np.matmul(x, _DEC_BASIS, out=squares.reshape(b - a, 16))
        np.square(squares, out=squares)
        np.add(squares[0::2], squares[1::2], out=tones)
        np.copyto(power[:, a:b], tones.reshape(b - a, 8).T)
    energy /= np.float32(_DEC_ENERGY)
    loud = energy >= gate  # (n × F)
    if busy_line:
        active = np.flatnonzero(_any_frame(loud.reshape(n, nframes).T, prev_energy >= gate))
    power *= loud  # quiet frames count as silence
    power3 = power.reshape(8, n, nframes)
    window = scratch.get("window", (8, n, nframes), np.float32)  # over the frame and the last
    np.add(power3[:, :, 0], prev_power if every else prev_power[:, active], out=window[:, :, 0])
    np.add(power3[:, :, 1:], power3[:, :, :-1], out=window[:, :, 1:])
    strongest = scratch.get("strongest", (n, nframes), np.float32)
    other = scratch.get("other", (n, nframes), np.float32)
    np.maximum(window[0], window[1], out=strongest)
    np.maximum(window[2], window[3], out=other)
    np.maximum(strongest, other, out=strongest)
    np.maximum(window[4], window[5], out=other)
    np.maximum(window[6], window[7], out=window[0])  # (tone 0's row, read already)
    np.maximum(other, window[0], out=other)
    strongest += other
    energy2 = energy.reshape(n, nframes)
    e_win = scratch.get("e_win", (n, nframes), np.float32)
    np.add(energy2[:, 0], prev_energy if every else prev_energy[active], out=e_win[:, 0])
    np.add(energy2[:, 1:], energy2[:, :-1], out=e_win[:, 1:])
    # A tone of amplitude A correlates to 20 A over a frame's 40 samples, of energy 20 A².
    found = (strongest >= _SCREEN_FRACTION * (DEC_PER_FRAME / 2) * e_win) & (
        e_win >= 2 * DEC_PER_FRAME * _SCREEN_POWER
    )
    if every:
        return found.T, active, power3[:, :, -1], energy2[:, -1]
    screened = np.zeros((nframes, rows), dtype=bool)
    screened[:, active] = found.T
    power_out = np.zeros((8, rows), dtype=np.float32)
    power_out[:, active] = power3[:, :, -1]
    energy_out = np.zeros(rows, dtype=np.float32)
    energy_out[active] = energy2[:, -1]
    return screened, active, power_out, energy_out


_SCREEN_ROWS: Final = 4096  # rows per block of the screen: 1.3 MB of float samples


def _any_frame(loud: Bools, before: Bools) -> Bools:
    """Rows (F × rows) with a loud frame, or loud just before."""
    found = before.copy()
    for frame in loud:
        found |= frame
    return found


_new_object: Final = object.__new__


def _event(digit: str, kind: str, at: float, duration_ms: float | None) -> DtmfEvent:
    """DtmfEvent(digit, kind, at, duration_ms, "inband"), made without the frozen dataclass's
    __init__ (a setattr through object per field: half the cost of an event, paid per digit)."""
    event: DtmfEvent = _new_object(DtmfEvent)
    event.__dict__.update(digit=digit, kind=kind, at=at, duration_ms=duration_ms, source="inband")
    return event


def _end_event(digit: int, base: float, onset: float, end: float) -> DtmfEvent:
    start_at = base + onset / RATE
    end_at = max(base + end / RATE, start_at)
    return _event(KEYS[digit], "end", end_at, round((end_at - start_at) * 1000.0, 1))


def _end_events(slots: Idx, digits: I64, base: F64, onset: F64, end: F64) -> Events:
    """ "end" events (slot, event) for several channels at once."""
    start_at = base + onset / RATE
    end_at = np.maximum(base + end / RATE, start_at)
    duration = np.round((end_at - start_at) * 1000.0, 1)
    return [
        (slot, _event(KEYS[digit], "end", at, ms))
        for slot, digit, at, ms in zip(
            slots.tolist(), digits.tolist(), end_at.tolist(), duration.tolist(), strict=True
        )
    ]


def _presence(zt: C64, energy: F32, digit: I64, ref: F32) -> tuple[Bools, F32]:
    """For channels with a digit in progress: whether each sub-block still holds both its
    tones, and how much of it they fill. zt is (8 × k × n), energy (k × n), ref (2 × n)."""
    every = np.arange(digit.size)
    mr = np.abs(zt[digit // 4, :, every]).T  # (k, n)
    mc = np.abs(zt[digit % 4 + 4, :, every]).T
    # A tone of amplitude A correlates to 20 A and has 20 A² of energy in a sub-block.
    fill = (mr * mr + mc * mc) / (SUB / 2.0) / np.maximum(energy, _TINY)
    ref_r = np.maximum(ref[0], _TINY)
    ref_c = np.maximum(ref[1], _TINY)
    present = (
        (mr >= _PRESENT_LEVEL * ref_r)
        & (mc >= _PRESENT_LEVEL * ref_c)
        & (fill >= _PRESENT_FRACTION)
    )
    cover = np.minimum(0.5 * (mr / ref_r + mc / ref_c), 1.0).astype(np.float32)
    return present, cover


def _steady(zt: C64, digit: I64) -> Bools:
    """Whether a digit's tones go on alone, each at its own frequency, from sub-block to
    sub-block (zt is 8 × k × n, the sub-block before the first one included).

    A 5 ms correlator also hears the neighbouring tones of its group, at up to its own gain:
    another digit that shares a tone and replaces this one without a gap keeps it "present".
    Then either the replaced tone's correlator turns at its neighbour's frequency (more than
    _STEADY_HZ off, modulo the 200 Hz a sub-block cannot tell apart), or a correlator of its
    group hears more than the digit's tone can leak into it (770 Hz after 941 Hz: 171 Hz off,
    which looks like 29 Hz)."""
    every = np.arange(digit.size)
    rot = _ROT_SUB.astype(np.complex64)
    magnitude = np.abs(zt[:, 1:])  # (8, k, n)
    steady = np.ones(digit.size, dtype=bool)
    for tone, group in ((digit // 4, slice(0, 4)), (digit % 4 + 4, slice(4, 8))):
        z = zt[tone, :, every]  # (n, k + 1)
        turn = z[:, 1:] * z[:, :-1].conj() * rot[tone][:, None]  # phase advance, less nominal
        steady &= (turn.real >= _STEADY_COS * np.abs(turn)).all(axis=1)
        own = magnitude[tone, :, every].T  # (k, n)
        limit = _LEAK_LIMIT[group, tone][:, None, :] * own  # (4, k, n)
        steady &= (magnitude[group] <= limit).all(axis=(0, 1))
    return steady


def _leakage() -> F64:
    """[k, t]: the most correlator k hears of tone t (relative to tone t's own gain),
    over t's accepted offsets."""
    basis = _SUB_BASIS.astype(np.float64)
    h = basis[:, 0::2] + 1j * basis[:, 1::2]  # (40, 8)
    n = np.arange(SUB)
    leak = np.zeros((8, 8))
    for t in range(8):
        for offset in np.linspace(-_MAX_OFFSET, _MAX_OFFSET, 11):
            probe = np.exp(1j * _W[t] * (1 + offset) * n)
            leak[:, t] = np.maximum(leak[:, t], np.abs(probe @ h) / SUB)
    return leak


_STEADY_HZ: Final = 40.0  # a tone 2.5 % off moves 24 Hz; the nearest other tone is 73 Hz away
_STEADY_COS: Final = math.cos(2.0 * math.pi * _STEADY_HZ * SUB / RATE)
_LEAK_MARGIN: Final = 0.3  # of the tone's amplitude: noise and the tone's own image
_LEAK_LIMIT: Final = (_leakage() + _LEAK_MARGIN).astype(np.float32)


_FFT_SIZE: Final = 256  # 31 Hz bins
_FFT_HZ: Final = (np.arange(_FFT_SIZE // 2 + 1) * RATE / _FFT_SIZE).astype(np.float32)


_HANN: Final = np.hanning(WIN * SUB).astype(np.float32)
_ABOVE_HUM: Final = _FFT_HZ > _PURITY_LOW_HZ


def _pure(samples: npt.NDArray[np.int16], freq: F32) -> Bools:
    """Whether 20 ms windows (k × 160 samples) hold their two tones (k × 2, Hz) and nothing
    else of note: the strongest spectral peak away from the tones must be _PURITY_DB below the
    weaker tone. White noise at 15 dB SNR stays 13 dB or more below; speech and music that
    mimic a digit carry their other harmonics within a few dB."""
    product = np.fft.rfft(samples.astype(np.float32) * _HANN, _FFT_SIZE)
    spectrum = product.real**2
    spectrum += product.imag**2
    offset = np.abs(_FFT_HZ - freq[:, :, None])  # (k, 2, bins): from each tone
    tones = np.where(offset <= 40.0, spectrum[:, None], 0.0).max(axis=2)  # (k, 2)
    far = (offset.min(axis=1) > _PURITY_GUARD_HZ) & _ABOVE_HUM
    rest = np.where(far, spectrum, 0.0).max(axis=1)
    return np.asarray(rest <= tones.min(axis=1) * 10.0 ** (_PURITY_DB / 10.0))


def _timing(samples: npt.NDArray[np.int16], tones: I64, freq: F32) -> tuple[F64, F64]:
    """Where two tones (k × 2: their indices and frequencies in Hz) begin in 30 ms of audio
    (k × 240 samples) whose last 10 ms they fill, and how long they last up to its end, to
    the sample.

    Their amplitudes and phases are fitted (least squares) over the last 10 ms, and the model
    m extended back over the 30 ms; the tones are taken to hold [s, e) when that minimises the
    squared error of "m inside, nothing outside": with P the running sum of m² - 2xm, s is
    where P peaks (before the last sub-block) and e where it bottoms (in it)."""
    rows, count = samples.shape
    x = samples.astype(np.float32)
    # cos and sin of each tone for n = -count … -1 (0 just after the end), from the table:
    # (k, 4, count), rows cos_r, sin_r, cos_c, sin_c.
    step = np.rint((freq - _TIMING_BASE[tones]) / _TIMING_STEP_HZ).astype(np.intp)
    np.maximum(step, 0, out=step)  # (np.clip costs three times as much on small arrays)
    np.minimum(step, _TIMING_STEPS - 1, out=step)
    step += tones * _TIMING_STEPS  # one row of the table, flattened over tones and steps
    basis = _TIMING_ROWS.take(step, axis=0).reshape(rows, 4, count)
    # Least squares of u_r z_r + u_c z_c (z = cos + i sin) on the last _FIT_SAMPLES (the
    # tones' images are left out: they correlate under 2.5 % with them over 10 ms): with
    # b = sum x z* and g = sum z_r* z_c, u = [[N, g], [g*, N]]^-1 b; the model is 2 Re(u z).
    fit = basis[:, :, -_FIT_SAMPLES:]
    r = (fit @ x[:, -_FIT_SAMPLES:, None])[:, :, 0]  # (k, 4): sum x cos, sum x sin, …
    b_r = r[:, 0] - 1j * r[:, 1]
    b_c = r[:, 2] - 1j * r[:, 3]
    cross = fit[:, :2] @ fit[:, 2:].transpose(0, 2, 1)  # (k, 2, 2): cos_r, sin_r by cos_c, sin_c
    g = (cross[:, 0, 0] + cross[:, 1, 1]) + 1j * (cross[:, 0, 1] - cross[:, 1, 0])
    size = float(_FIT_SAMPLES)
    det = size * size - (g.real**2 + g.imag**2)
    u = np.empty((rows, 2), dtype=np.complex64)
    u[:, 0] = (size * b_r - g * b_c) / det
    u[:, 1] = (size * b_c - g.conj() * b_r) / det
    coef = 2.0 * u.conj().view(np.float32)  # (k, 4): 2 Re u_r, -2 Im u_r, 2 Re u_c, -2 Im u_c
    model = (coef[:, None, :] @ basis)[:, 0]  # (k, count)
    # The running sum P of m² - 2xm: the onset where it peaks, the end where it bottoms.
    step_cost = model - 2.0 * x
    step_cost *= model
    run = np.zeros((rows, count + 1), dtype=np.float32)
    np.cumsum(step_cost, axis=1, out=run[:, 1:])  # P[0 … count]
    last = count - SUB
    begin = run[:, : last + 1].argmax(axis=1)
    end = last + run[:, last:].argmin(axis=1)
    return begin.astype(np.float64), (end - begin).astype(np.float64)


def _timing_table() -> tuple[F32, F64]:
    """cos and sin of w n for n = -240 … -1 (8 × steps × 2 × 240), for each tone at frequencies
    every _TIMING_STEP_HZ over ±3 % (a quarter hertz off turns the model by 0.05 rad at most
    over 30 ms: nothing)."""
    nominal = np.array(ROW_HZ + COL_HZ)
    base = nominal * (1.0 - _TIMING_SPAN)
    steps = int(np.ceil(2.0 * _TIMING_SPAN * nominal.max() / _TIMING_STEP_HZ)) + 1
    hz = base[:, None] + _TIMING_STEP_HZ * np.arange(steps)  # (8, steps)
    n = np.arange(-(WIN + LOOK) * SUB, 0)
    phase = 2.0 * np.pi / RATE * hz[:, :, None, None] * n  # (8, steps, 1, count)
    table = np.concatenate([np.cos(phase), np.sin(phase)], axis=2).astype(np.float32)
    return table, base


_TIMING_SPAN: Final = 0.03
_TIMING_STEP_HZ: Final = 0.5
_TIMING_TABLE, _TIMING_BASE = _timing_table()
_TIMING_STEPS: Final = _TIMING_TABLE.shape[1]
_TIMING_ROWS: Final = _TIMING_TABLE.reshape(-1, 2, (WIN + LOOK) * SUB)  # (8 × steps, 2, 240)
_FIT_SAMPLES: Final = 2 * SUB
_DIGIT_TONES: Final = np.array([(d // 4, d % 4 + 4) for d in range(16)])  # row and column tone


def _harmonic_ratios() -> F64:
    """Frequency ratios m/n (n <= 6) of two harmonics of one voice that no pair of DTMF tones can
    show, even each 1.5 % off (3.05 % on the ratio) and with _HARMONIC_TOLERANCE on top: the
    DTMF frequencies were chosen away from such ratios, a voice's harmonics sit on them."""
    pairs = np.array([c / r for r in ROW_HZ for c in COL_HZ])
    found = []
    for n in range(1, 7):
        for m in range(n + 1, 3 * n + 1):
            if math.gcd(m, n) != 1:
                continue
            ratio = m / n
            if np.abs(ratio / pairs - 1.0).min() > 0.0305 + _HARMONIC_TOLERANCE:
                found.append(ratio)
    return np.array(found)


_HARMONIC_TOLERANCE: Final = 0.004
_HARMONIC: Final = _harmonic_ratios()


def _harmonics(freq: F32) -> Bools:
    """Whether tone pairs (k × 2, Hz) stand in one of those ratios: a voice, not a keypad."""
    ratio = (freq[:, 1] / np.maximum(freq[:, 0], 1.0)).astype(np.float64)
    return np.asarray((np.abs(ratio[:, None] / _HARMONIC - 1.0) <= _HARMONIC_TOLERANCE).any(axis=1))


class _Windows:
    """Per decision window (windows × channels), what the state machine needs."""

    _FIELDS: Final = ("digit", "pair", "fraction", "covered", "last_cover", "onset", "glide")

    def __init__(self, shape: tuple[int, int]) -> None:
        self.digit = np.full(shape, -1, dtype=np.int64)  # the digit it hits, or -1
        self.pair = np.full(shape, -1, dtype=np.int64)  # its strongest tones' digit if a pattern
        self.fraction = np.zeros(shape, dtype=np.float32)  # the two tones' share of its energy
        self.covered = np.zeros(shape, dtype=np.float32)  # samples they fill, back from its end
        self.last_cover = np.zeros(shape, dtype=np.float32)  # how much of its last sub-block
        self.onset = np.zeros(shape, dtype=bool)  # they were below half that just before it
        self.glide = np.zeros(shape, dtype=bool)  # a steady two-tone pattern off frequency
        self.ref = np.zeros((2, *shape), dtype=np.float32)  # their amplitude per sub-block
        self.freq = np.zeros((2, *shape), dtype=np.float32)  # their frequencies, Hz

    def take(self, columns: Idx) -> _Windows:
        """These channels' windows."""
        part = _Windows.__new__(_Windows)
        for name in self._FIELDS:
            setattr(part, name, getattr(self, name)[:, columns])
        part.ref = self.ref[:, :, columns]
        part.freq = self.freq[:, :, columns]
        return part


def _argmax4(values: F32) -> I64:
    """Index of the largest of 4 (axis 1 of 2 × 4 × …), elementwise."""
    best = np.zeros((values.shape[0], *values.shape[2:]), dtype=np.int64)
    top = values[:, 0].copy()
    for k in (1, 2, 3):
        better = values[:, k] > top
        best[better] = k
        np.maximum(top, values[:, k], out=top)
    return best


_GROUP: Final = np.array([0, 4]).reshape(2, 1, 1)  # first tone of the row and column groups


def _windows(zt: C64, energy: F32, nwin: int) -> _Windows:
    """Evaluate the `nwin` decision windows ending at each new sub-block.

    zt is (8 × (HIST + nwin) × n): HIST sub-blocks of history then the new ones; window j is
    made of sub-blocks j+LOOK … j+LOOK+3, and the LOOK sub-blocks before it are where an onset
    must show. Results are (nwin × n). Row and column tone are worked out together, on a
    leading axis of 2.
    """
    n = zt.shape[2]
    # The strongest row and column tone over each window's 20 ms, correlated coherently (the
    # 5 ms correlators alone are too wide to tell neighbouring rows or columns apart).
    rot = _ROT_SUB.astype(np.complex64)[:, None, None]
    coherent = zt[:, LOOK + 3 : LOOK + 3 + nwin] * rot
    for m in (2, 1, 0):
        coherent += zt[:, LOOK + m : LOOK + m + nwin]
        if m:
            coherent *= rot
    power = coherent.real**2 + coherent.imag**2  # (8, nwin, n)
    tone = _argmax4(power.reshape(2, 4, nwin, n)) + _GROUP  # (2, nwin, n): row, column
    e_win = energy[LOOK : LOOK + nwin].astype(np.float64)
    for m in (1, 2, 3):
        e_win = e_win + energy[LOOK + m : LOOK + m + nwin]

    # Each window's sub-blocks (and the LOOK before it) for its two tones: a tone of amplitude
    # A e^{i phi} correlates to 20 A e^{i phi}.
    span = np.arange(WIN + LOOK)[:, None, None] + np.arange(nwin)[None, :, None]  # (6, nwin, 1)
    every = np.arange(n)[None, None, :]
    a = zt[tone[:, None], span, every] / np.float32(SUB / 2)  # (2, 6, nwin, n)
    delta, amp = _tone(a[:, LOOK:], tone)

    tone_power = amp**2 / 2.0  # each tone's power
    power_r, power_c = tone_power[0], tone_power[1]
    twist = power_r / np.maximum(power_c, _TINY)
    fraction = (power_r + power_c) * (WIN * SUB) / np.maximum(e_win, _TINY)
    loud = (
        (power_r >= _MIN_TONE_POWER)
        & (power_c >= _MIN_TONE_POWER)
        & (power_r + power_c >= _MIN_PAIR_POWER)
        & (twist <= _NORMAL_TWIST)
        & (twist * _REVERSE_TWIST >= 1.0)
    )
    on = np.abs(delta) <= _MAX_OFFSET * _W[tone]
    on_frequency = on[0] & on[1]

    # How much of each sub-block the tones fill: amplitude against the steady level, which is
    # that of the window's last two sub-blocks (the tones are on there when a digit starts).
    m = np.abs(a)  # (2, 6, nwin, n)
    ref = np.maximum(np.maximum(m[:, -1], m[:, -2]), _TINY)  # as correlated, over 20
    cover = np.minimum(0.5 * (m[0] / ref[0] + m[1] / ref[1]), 1.0)  # (6, nwin, n)
    inside = cover[LOOK:]
    digit = tone[0] * 4 + tone[1] - 4
    result = _Windows.__new__(_Windows)  # every field set below
    result.digit = np.where(loud & on_frequency & (fraction >= _MIN_FRACTION), digit, -1)
    result.pair = np.where(loud & (fraction >= _PATTERN_FRACTION), digit, -1)
    result.fraction = fraction.astype(np.float32)
    result.covered = SUB * inside.sum(axis=0)
    result.last_cover = inside[-1]
    result.onset = np.minimum(cover[0], cover[1]) <= _ONSET_COVER
    result.glide = loud & ~on_frequency & (inside.min(axis=0) >= _FLAT_COVER)
    result.ref = ref * np.float32(SUB / 2)
    result.freq = ((_W[tone] + delta) * (RATE / (2.0 * np.pi))).astype(np.float32)
    return result


def _tone(a: C64, tone: I64) -> tuple[F64, F64]:
    """For tones' complex amplitudes in a window's 4 sub-blocks (axis 1: 2 × 4 × …, tone is
    2 × …): their frequency offset (rad/sample) and their amplitude at that frequency."""
    rot = _ROT_SUB.astype(np.complex64)[tone]  # e^{-i w 40}
    a0, a1, a2, a3 = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
    # Coarse: phase advance from sub-block to sub-block (unambiguous over ±100 Hz).
    lag1 = (a1 * np.conj(a0) + a2 * np.conj(a1) + a3 * np.conj(a2)) * rot
    # Fine: from the window's first 10 ms to its last.
    first = a0 + a1 * rot
    second = a2 + a3 * rot
    coarse, fine = _angle(np.stack([lag1, second * np.conj(first) * rot * rot]))
    coarse /= SUB
    fine /= 2 * SUB
    step = 2.0 * np.pi / (2 * SUB)
    delta = fine + np.round((coarse - fine) / step) * step
    # The mean of the 4 amplitudes, each turned back by the phase the tone advanced.
    back = (delta * SUB).astype(np.float32)
    turn = np.empty(back.shape, dtype=np.complex64)  # e^{-i delta 40}, from float32 cos and sin
    turn.real = np.cos(back)
    turn.imag = -np.sin(back)
    turn *= rot
    mean = ((a3 * turn + a2) * turn + a1) * turn + a0
    amp = np.abs(mean) / (WIN * _sub_gain(tone, delta))
    return delta, amp


def _angle(z: C64) -> F32:
    """np.angle(z), to within 5e-7 rad, several times faster (numpy's arctan2 takes ~40 ns a
    value here): an odd polynomial for atan on [0, 1], then the octant, in plain arithmetic
    on contiguous float32 (np.where on these is slow)."""
    x = np.ascontiguousarray(z.real)
    y = np.ascontiguousarray(z.imag)
    ax, ay = np.abs(x), np.abs(y)
    high = np.maximum(ax, ay)
    a = np.minimum(ax, ay)
    np.maximum(high, np.float32(1e-30), out=high)
    a /= high
    square = a * a
    r = square * _ATAN[-1]
    r += _ATAN[-2]
    for c in _ATAN[-3::-1]:
        r *= square
        r += c
    r *= a
    # Above the diagonal: pi/2 - r; left half-plane: pi - r; then the sign of y.
    swap = (ay > ax).astype(np.float32)
    r += swap * (np.float32(np.pi / 2) - 2.0 * r)
    left = (x < 0).astype(np.float32)
    r += left * (np.float32(np.pi) - 2.0 * r)
    return np.copysign(r, y, out=r)


# atan(a) = a (c0 + c1 a² + …) on [0, 1], minimax to 2.5e-7.
_ATAN: Final = tuple(
    np.float32(c)
    for c in (0.99999611, -0.33317368, 0.19807815, -0.13233339, 0.0796236, -0.03360414, 0.00681176)
)


def _as_int16(data: npt.NDArray[np.generic]) -> npt.NDArray[np.int16]:
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
    audio16 = _as_int16(audio)
    # Trailing silence lets a digit that runs to the end of the file end as it would on a line.
    tail = np.zeros(FRAME + _END_SUBS * SUB + (-audio16.size) % FRAME, dtype=np.int16)
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
