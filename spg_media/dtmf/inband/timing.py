"""Where tones begin and end: sample positions, durations and the events that carry them.

This module owns the detector's time keeping. Inside the detector a channel's time is a sample
position (samples analysed since the channel began or restarted); each call gives the time of
position 0 (`base`, from `now` and the samples received), and events are dated from it here.
It also times a digit's tones to the sample when it may start (`tone_timing`: the onset and how
long they have lasted, fitted on the audio of the window that may start it, `window_audio`).
"""

from __future__ import annotations

from typing import Final

import numpy as np

from spg_media.dtmf.rfc4733 import DtmfEvent

from .params import (
    COL_HZ,
    F32,
    F64,
    I64,
    KEYS,
    RATE,
    ROW_HZ,
    SPAN,
    SUB,
    Events,
    Idx,
    Int16s,
)

# ---- events --------------------------------------------------------------------------------------

_new_object: Final = object.__new__


def event(digit: str, kind: str, at: float, duration_ms: float | None) -> DtmfEvent:
    """DtmfEvent(digit, kind, at, duration_ms, "inband"), made without the frozen dataclass's
    __init__ (a setattr through object per field: half the cost of an event, paid per digit)."""
    made: DtmfEvent = _new_object(DtmfEvent)
    made.__dict__.update(digit=digit, kind=kind, at=at, duration_ms=duration_ms, source="inband")
    return made


def start_event(digit: int, base: float, onset: float) -> DtmfEvent:
    """The "start" of `digit` whose tones began at sample position `onset`."""
    return event(KEYS[digit], "start", base + onset / RATE, None)


def end_event(digit: int, base: float, onset: float, end: float) -> DtmfEvent:
    """The "end" of `digit` whose tones held sample positions [onset, end)."""
    start_at = base + onset / RATE
    end_at = max(base + end / RATE, start_at)
    return event(KEYS[digit], "end", end_at, round((end_at - start_at) * 1000.0, 1))


def end_events(slots: Idx, digits: I64, base: F64, onset: F64, end: F64) -> Events:
    """ "end" events (slot, event) for several channels at once (as `end_event`)."""
    start_at = base + onset / RATE
    end_at = np.maximum(base + end / RATE, start_at)
    duration = np.round((end_at - start_at) * 1000.0, 1)
    return [
        (slot, event(KEYS[digit], "end", at, ms))
        for slot, digit, at, ms in zip(
            slots.tolist(), digits.tolist(), end_at.tolist(), duration.tolist(), strict=True
        )
    ]


# ---- a starting digit's tones, to the sample -----------------------------------------------------


def window_audio(history: Int16s, flat: Int16s, rows: Idx) -> Int16s:
    """These rows' audio (history + flat) as (k × windows × 240), a view: [i, j] is the audio
    of the decision window ending at sub-block j with the LOOK sub-blocks before it."""
    audio = np.concatenate([history[rows], flat[rows]], axis=1)
    count = (audio.shape[1] - SPAN) // SUB + 1
    step = audio.strides[1]
    shape, strides = (rows.size, count, SPAN), (audio.strides[0], SUB * step, step)
    spans: Int16s = np.lib.stride_tricks.as_strided(audio, shape, strides, writeable=False)
    return spans


def tone_timing(samples: Int16s, tones: I64, freq: F32) -> tuple[F64, F64]:
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
    n = np.arange(-SPAN, 0)
    phase = 2.0 * np.pi / RATE * hz[:, :, None, None] * n  # (8, steps, 1, count)
    table = np.concatenate([np.cos(phase), np.sin(phase)], axis=2).astype(np.float32)
    return table, base


_TIMING_SPAN: Final = 0.03
_TIMING_STEP_HZ: Final = 0.5
_TIMING_TABLE, _TIMING_BASE = _timing_table()
_TIMING_STEPS: Final = _TIMING_TABLE.shape[1]
_TIMING_ROWS: Final = _TIMING_TABLE.reshape(-1, 2, SPAN)  # (8 × steps, 2, 240)
_FIT_SAMPLES: Final = 2 * SUB
