"""A digit's last checks before it starts, on the audio of the window that would start it.

This module owns the checks that read a window's audio rather than its correlations: the
timing to the sample (`timing.tone_timing`), and the spectrum (`purity`: a 256-point FFT shows
nothing else near the tones' level, and the two frequencies are not in a low-order harmonic
ratio, which no keypad shows but a voice does). As they read a window alone, they are made
before the decision loop, in one batch, for each channel's first window that may start a digit
(`start_checks`, giving `StartChecks`); the loop makes them itself, one window at a time
(`timing_at`, `purity_at`), only for the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from .analysis import Windows
from .params import (
    COL_HZ,
    DIGIT_TONES,
    F32,
    F64,
    I64,
    LOOK,
    PURITY_DB,
    PURITY_GUARD_HZ,
    PURITY_LOW_HZ,
    RATE,
    ROW_HZ,
    START_SAMPLES,
    SUB,
    WIN,
    Bools,
    Idx,
    Int16s,
)
from .timing import tone_timing, window_audio


@dataclass
class Audio:
    """The audio of the channels analysed in a call: each row's `history` (the HIST sub-blocks
    before the call) then its samples of the call (`flat`)."""

    history: Int16s
    flat: Int16s


@dataclass
class StartChecks:
    """A start's checks made ahead, per channel decided on: the sub-block of its timing (-1:
    none) and where its result is in onset and length (as `tone_timing`); the same for its
    spectrum check and pure (`purity`)."""

    timing_sub: I64
    at_timing: Idx
    onset: F64
    length: F64
    pure_sub: I64
    at_pure: Idx
    pure: Bools


def start_checks(audio: Audio, cols: Idx, ahead: I64, to_time: Bools, win: Windows) -> StartChecks:
    """The checks of a start in one batch, for the window ending at sub-block ahead[i] of
    channel i (-1: none; its audio is row cols[i] of `audio`): the timing there where to_time[i],
    and the spectrum there, or in the next window where the tones were timed short of
    START_MS (they are checked again there)."""
    rows, nsub = ahead.size, win.digit.shape[0]
    timing_sub = np.full(rows, -1)
    at_timing = np.zeros(rows, dtype=np.intp)
    pure_sub = np.full(rows, -1)
    at_pure = np.zeros(rows, dtype=np.intp)
    first = np.flatnonzero(ahead >= 0)
    if not first.size:
        none = np.zeros(0)
        return StartChecks(
            timing_sub, at_timing, none, none, pure_sub, at_pure, np.zeros(0, dtype=bool)
        )
    spans = window_audio(audio.history, audio.flat, cols[first])
    subs = ahead[first]
    clocked = np.flatnonzero(to_time[first])  # (of first)
    timing_sub[first[clocked]] = subs[clocked]
    at_timing[first[clocked]] = np.arange(clocked.size)
    at = subs[clocked]
    freq = win.freq[:, at, first[clocked]].T
    tones = DIGIT_TONES[win.digit[at, first[clocked]]]
    onset, length = tone_timing(spans[clocked, at], tones, freq)
    subs[clocked[length < START_SAMPLES]] += 1
    checked = np.flatnonzero(subs < nsub)  # (of first)
    subs = subs[checked]
    pure_sub[first[checked]] = subs
    at_pure[first[checked]] = np.arange(checked.size)
    samples = spans[checked, subs, LOOK * SUB :]
    pure = purity(samples, win.freq[:, subs, first[checked]].T)
    return StartChecks(timing_sub, at_timing, onset, length, pure_sub, at_pure, pure)


def timing_at(audio: Audio, rows: Idx, sub: int, win: Windows, columns: Idx) -> tuple[F64, F64]:
    """`tone_timing` of the windows ending at `sub` of these rows (their `columns` in win)."""
    if not rows.size:
        return np.zeros(0), np.zeros(0)
    tones = DIGIT_TONES[win.digit[sub, columns]]
    freq = win.freq[:, sub, columns].T
    return tone_timing(window_audio(audio.history, audio.flat, rows)[:, sub], tones, freq)


def purity_at(audio: Audio, rows: Idx, sub: int, win: Windows, columns: Idx) -> Bools:
    """`purity` of the windows ending at `sub` of these rows (their `columns` in win)."""
    freq = win.freq[:, sub, columns].T
    return purity(window_audio(audio.history, audio.flat, rows)[:, sub, LOOK * SUB :], freq)


def purity(samples: Int16s, freq: F32) -> Bools:
    """Whether 20 ms windows (k × 160 samples) hold their two tones (k × 2, Hz) and nothing
    else (`_pure`), and no voice's harmonics (`_harmonics`)."""
    if not samples.shape[0]:
        return np.zeros(0, dtype=bool)
    return np.asarray(_pure(samples, freq) & ~_harmonics(freq))


_FFT_SIZE: Final = 256  # 31 Hz bins
_FFT_HZ: Final = (np.arange(_FFT_SIZE // 2 + 1) * RATE / _FFT_SIZE).astype(np.float32)
_HANN: Final = np.hanning(WIN * SUB).astype(np.float32)
_ABOVE_HUM: Final = _FFT_HZ > PURITY_LOW_HZ


def _pure(samples: Int16s, freq: F32) -> Bools:
    """Whether 20 ms windows (k × 160 samples) hold their two tones (k × 2, Hz) and nothing
    else of note: the strongest spectral peak away from the tones must be PURITY_DB below the
    weaker tone. White noise at 15 dB SNR stays 13 dB or more below; speech and music that
    mimic a digit carry their other harmonics within a few dB."""
    product = np.fft.rfft(samples.astype(np.float32) * _HANN, _FFT_SIZE)
    spectrum = product.real**2
    spectrum += product.imag**2
    offset = np.abs(_FFT_HZ - freq[:, :, None])  # (k, 2, bins): from each tone
    tones = np.where(offset <= 40.0, spectrum[:, None], 0.0).max(axis=2)  # (k, 2)
    far = (offset.min(axis=1) > PURITY_GUARD_HZ) & _ABOVE_HUM
    rest = np.where(far, spectrum, 0.0).max(axis=1)
    return np.asarray(rest <= tones.min(axis=1) * 10.0 ** (PURITY_DB / 10.0))


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
