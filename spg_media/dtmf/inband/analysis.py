"""Stage 2, the analysis: full-rate correlation of the channels the screen let through.

This module owns what the audio says, sub-block by sub-block, where tones may be: the 5 ms
correlators (`correlate`), the 20 ms decision windows ending at each sub-block (`windows`:
strongest row and column, their frequencies to a hertz or two, levels, twist, share of the
energy, how much of each sub-block they fill: a `Windows`), and, for a digit in progress,
whether each sub-block still holds its tones (`presence`) and whether they go on alone at
their own frequencies (`steady`). It decides nothing: `decisions` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from .params import (
    C64,
    F32,
    F64,
    FLAT_COVER,
    I64,
    LOOK,
    MAX_OFFSET,
    MIN_FRACTION,
    MIN_PAIR_POWER,
    MIN_TONE_POWER,
    NORMAL_TWIST,
    ONSET_COVER,
    PATTERN_FRACTION,
    PRESENT_FRACTION,
    PRESENT_LEVEL,
    RATE,
    REVERSE_TWIST,
    ROT_SUB,
    SUB,
    TINY,
    WIN,
    Bools,
    Idx,
    Int16s,
    W,
)

_NULL_SPAN: Final = 0.03
_NULL_WEIGHT: Final = 3.0
_GAIN_STEPS: Final = np.linspace(-0.06, 0.06, 121)


def _correlators() -> tuple[F32, F64]:
    """The 5 ms correlators (40 × 16, Re and Im of each tone interleaved) and their gain off
    frequency.

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
        plain = np.exp(-1j * W[k] * n)
        others = W[4:] if k < 4 else W[:4]
        stop = [s * w * (1 + e) for w in others for s in (1, -1) for e in spread]
        stop += [-W[k] * (1 + e) for e in spread]
        response = np.exp(1j * np.outer(stop, n))  # H(f) = response @ h
        normal = np.eye(SUB) + _NULL_WEIGHT * (response.conj().T @ response)
        inverse = np.linalg.inv(normal)
        tone = np.exp(1j * W[k] * n)
        g, q = inverse @ plain, inverse @ tone.conj()
        h = g + (SUB - tone @ g) / (tone @ q) * q  # keeps H(w_k) = 40
        basis[:, 2 * k], basis[:, 2 * k + 1] = h.real, h.imag  # interleaved: complex64 view
        probe = np.exp(1j * np.outer(W[k] * (1 + _GAIN_STEPS), n))
        gains[k] = np.abs(probe @ h) / SUB
    return basis.astype(np.float32), gains


_SUB_BASIS, _SUB_GAIN = _correlators()


def correlate(audio: Int16s) -> tuple[C64, F32]:
    """Each sub-block's correlation with the 8 tones and its energy, for audio (k × m·40):
    (k × m × 8) and (k × m)."""
    x = audio.reshape(-1, SUB).astype(np.float32)
    z = (x @ _SUB_BASIS).view(np.complex64).reshape(audio.shape[0], -1, 8)
    energy = np.einsum("ij,ij->i", x, x).reshape(audio.shape[0], -1)
    return z, energy


def _sub_gain(tone: I64, delta: F64) -> F64:
    """The correlator's gain for `tone` at relative offset delta (rad/sample)."""
    rel = delta / W[tone]
    step = _GAIN_STEPS[1] - _GAIN_STEPS[0]
    at = np.minimum(np.maximum(np.rint((rel - _GAIN_STEPS[0]) / step), 0), _GAIN_STEPS.size - 1)
    return np.asarray(_SUB_GAIN[tone, at.astype(np.intp)])


@dataclass
class Windows:
    """Per decision window (windows × channels; ref and freq 2 × windows × channels, row tone
    then column tone), what the decision machine needs."""

    digit: I64  # the digit it hits, or -1
    pair: I64  # its strongest tones' digit if they form a pattern, or -1
    fraction: F32  # the two tones' share of its energy
    covered: F32  # samples they fill, back from its end
    last_cover: F32  # how much of its last sub-block they fill
    onset: Bools  # they were below half that just before it
    glide: Bools  # a steady two-tone pattern off frequency
    ref: F32  # their amplitude per sub-block, as correlated
    freq: F32  # their frequencies, Hz

    def take(self, columns: Idx) -> Windows:
        """These channels' windows."""
        return Windows(
            digit=self.digit[:, columns],
            pair=self.pair[:, columns],
            fraction=self.fraction[:, columns],
            covered=self.covered[:, columns],
            last_cover=self.last_cover[:, columns],
            onset=self.onset[:, columns],
            glide=self.glide[:, columns],
            ref=self.ref[:, :, columns],
            freq=self.freq[:, :, columns],
        )


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


def windows(zt: C64, energy: F32, nwin: int) -> Windows:
    """Evaluate the `nwin` decision windows ending at each new sub-block.

    zt is (8 × (HIST + nwin) × n): HIST sub-blocks of history then the new ones; window j is
    made of sub-blocks j+LOOK … j+LOOK+3, and the LOOK sub-blocks before it are where an onset
    must show. Results are (nwin × n). Row and column tone are worked out together, on a
    leading axis of 2.
    """
    n = zt.shape[2]
    # The strongest row and column tone over each window's 20 ms, correlated coherently (the
    # 5 ms correlators alone are too wide to tell neighbouring rows or columns apart).
    rot = ROT_SUB.astype(np.complex64)[:, None, None]
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
    twist = power_r / np.maximum(power_c, TINY)
    fraction = (power_r + power_c) * (WIN * SUB) / np.maximum(e_win, TINY)
    loud = (
        (power_r >= MIN_TONE_POWER)
        & (power_c >= MIN_TONE_POWER)
        & (power_r + power_c >= MIN_PAIR_POWER)
        & (twist <= NORMAL_TWIST)
        & (twist * REVERSE_TWIST >= 1.0)
    )
    on = np.abs(delta) <= MAX_OFFSET * W[tone]
    on_frequency = on[0] & on[1]

    # How much of each sub-block the tones fill: amplitude against the steady level, which is
    # that of the window's last two sub-blocks (the tones are on there when a digit starts).
    m = np.abs(a)  # (2, 6, nwin, n)
    ref = np.maximum(np.maximum(m[:, -1], m[:, -2]), TINY)  # as correlated, over 20
    cover = np.minimum(0.5 * (m[0] / ref[0] + m[1] / ref[1]), 1.0)  # (6, nwin, n)
    inside = cover[LOOK:]
    digit = tone[0] * 4 + tone[1] - 4
    return Windows(
        digit=np.where(loud & on_frequency & (fraction >= MIN_FRACTION), digit, -1),
        pair=np.where(loud & (fraction >= PATTERN_FRACTION), digit, -1),
        fraction=fraction.astype(np.float32),
        covered=SUB * inside.sum(axis=0),
        last_cover=inside[-1],
        onset=np.minimum(cover[0], cover[1]) <= ONSET_COVER,
        glide=loud & ~on_frequency & (inside.min(axis=0) >= FLAT_COVER),
        ref=ref * np.float32(SUB / 2),
        freq=((W[tone] + delta) * (RATE / (2.0 * np.pi))).astype(np.float32),
    )


def _tone(a: C64, tone: I64) -> tuple[F64, F64]:
    """For tones' complex amplitudes in a window's 4 sub-blocks (axis 1: 2 × 4 × …, tone is
    2 × …): their frequency offset (rad/sample) and their amplitude at that frequency."""
    rot = ROT_SUB.astype(np.complex64)[tone]  # e^{-i w 40}
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


def presence(zt: C64, energy: F32, digit: I64, ref: F32) -> tuple[Bools, F32]:
    """For channels with a digit in progress: whether each sub-block still holds both its
    tones, and how much of it they fill. zt is (8 × k × n), energy (k × n), ref (2 × n)."""
    every = np.arange(digit.size)
    mr = np.abs(zt[digit // 4, :, every]).T  # (k, n)
    mc = np.abs(zt[digit % 4 + 4, :, every]).T
    # A tone of amplitude A correlates to 20 A and has 20 A² of energy in a sub-block.
    fill = (mr * mr + mc * mc) / (SUB / 2.0) / np.maximum(energy, TINY)
    ref_r = np.maximum(ref[0], TINY)
    ref_c = np.maximum(ref[1], TINY)
    present = (
        (mr >= PRESENT_LEVEL * ref_r) & (mc >= PRESENT_LEVEL * ref_c) & (fill >= PRESENT_FRACTION)
    )
    cover = np.minimum(0.5 * (mr / ref_r + mc / ref_c), 1.0).astype(np.float32)
    return present, cover


def steady(zt: C64, digit: I64) -> Bools:
    """Whether a digit's tones go on alone, each at its own frequency, from sub-block to
    sub-block (zt is 8 × k × n, the sub-block before the first one included).

    A 5 ms correlator also hears the neighbouring tones of its group, at up to its own gain:
    another digit that shares a tone and replaces this one without a gap keeps it "present".
    Then either the replaced tone's correlator turns at its neighbour's frequency (more than
    _STEADY_HZ off, modulo the 200 Hz a sub-block cannot tell apart), or a correlator of its
    group hears more than the digit's tone can leak into it (770 Hz after 941 Hz: 171 Hz off,
    which looks like 29 Hz)."""
    every = np.arange(digit.size)
    rot = ROT_SUB.astype(np.complex64)
    magnitude = np.abs(zt[:, 1:])  # (8, k, n)
    result = np.ones(digit.size, dtype=bool)
    for tone, group in ((digit // 4, slice(0, 4)), (digit % 4 + 4, slice(4, 8))):
        z = zt[tone, :, every]  # (n, k + 1)
        turn = z[:, 1:] * z[:, :-1].conj() * rot[tone][:, None]  # phase advance, less nominal
        result &= (turn.real >= _STEADY_COS * np.abs(turn)).all(axis=1)
        own = magnitude[tone, :, every].T  # (k, n)
        limit = _LEAK_LIMIT[group, tone][:, None, :] * own  # (4, k, n)
        result &= (magnitude[group] <= limit).all(axis=(0, 1))
    return result


def _leakage() -> F64:
    """[k, t]: the most correlator k hears of tone t (relative to tone t's own gain),
    over t's accepted offsets."""
    basis = _SUB_BASIS.astype(np.float64)
    h = basis[:, 0::2] + 1j * basis[:, 1::2]  # (40, 8)
    n = np.arange(SUB)
    leak = np.zeros((8, 8))
    for t in range(8):
        for offset in np.linspace(-MAX_OFFSET, MAX_OFFSET, 11):
            probe = np.exp(1j * W[t] * (1 + offset) * n)
            leak[:, t] = np.maximum(leak[:, t], np.abs(probe @ h) / SUB)
    return leak


_STEADY_HZ: Final = 40.0  # a tone 2.5 % off moves 24 Hz; the nearest other tone is 73 Hz away
_STEADY_COS: Final = math.cos(2.0 * math.pi * _STEADY_HZ * SUB / RATE)
_LEAK_MARGIN: Final = 0.3  # of the tone's amplitude: noise and the tone's own image
_LEAK_LIMIT: Final = (_leakage() + _LEAK_MARGIN).astype(np.float32)
