"""Stage 1, the screen: the cheap look at every channel's every 10 ms frame.

This module owns deciding where tones may be: silence is told from sound on every 4th sample,
and the frames with sound are correlated at 4 kHz with the 8 frequencies; a 20 ms window
(a frame and the one before) is screened in when its strongest row and column hold most of
its energy; a channel whose last frame is much louder than the one before is said to be rising
(a tone's first milliseconds, for `InbandDetector.hot_slots`). It is lenient (it decides only
where `analysis` looks closely) and keeps its work buffers from call to call (`Scratch`).
"""

from __future__ import annotations

import math
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from .params import (
    DEC_PER_FRAME,
    F32,
    FRAME,
    FRAME_GATE,
    RISE,
    SCREEN_FRACTION,
    SCREEN_POWER,
    Bools,
    Idx,
    Int16s,
    W,
)


def basis(positions: npt.NDArray[np.int64], scale: float = 1.0) -> F32:
    """Correlators (len(positions) × 16): cos, then -sin, of the 8 tones at those sample
    positions, so that x @ basis is Re and Im of sum x[n] e^{-i w n} (phase 0 at position 0)."""
    n = positions[:, None].astype(np.float64)
    return (np.concatenate([np.cos(W * n), -np.sin(W * n)], axis=1) * scale).astype(np.float32)


# The screen reads a frame's int16 pairs as int32: the high half is the odd sample, times 65536
# (the low half adds less than one unit of it), so the decimation costs no copy. Its columns are
# interleaved, Re and Im of each tone side by side: a tone's power is then the sum of two
# neighbouring squares, and x @ _DEC_BASIS (frames on rows) is BLAS's fastest form here.
_DEC_BASIS: Final = np.ascontiguousarray(
    basis(np.arange(DEC_PER_FRAME) * 2 + 1, 1.0 / 65536.0)
    .reshape(DEC_PER_FRAME, 2, 8)
    .transpose(0, 2, 1)
    .reshape(DEC_PER_FRAME, 16)
)
_DEC_ENERGY: Final = 65536.0**2
_SCREEN_ROWS: Final = 4096  # rows per block of the screen: 1.3 MB of float samples


class Scratch:
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


class ScreenMemory(NamedTuple):
    """What the screen keeps of each channel's last frame for the next call: its power at the
    8 frequencies (8 × rows, channels last as the screen uses it) and its energy (rows)."""

    power: F32
    energy: F32


class Screened(NamedTuple):
    """The screen's answer for one call (possibly views of its `Scratch`, good until the next
    call)."""

    windows: Bools  # (F × rows) the 20 ms windows screened in
    sound: Idx  # the rows with any sound (above the gate, here or in the frame before)
    last: ScreenMemory  # the last frame's, for the next call
    rising: Bools  # (rows) the last frame is RISE louder than the one before, and not quiet


def screen(frames: Int16s, before: ScreenMemory, scratch: Scratch, busy_line: bool) -> Screened:
    """The screen over frames (rows × F × 80); `before` is what it kept of the frame before.
    `busy_line`: most rows had sound last time, so the quick look is skipped (the gate is then
    on the 4 kHz energy).

    At 4 kHz (every other sample) and per 10 ms frame, each tone's power is the squared
    correlation; a window adds two frames' (100 Hz wide bins, so a tone 1.5 % off loses
    nothing). The powers are kept tones first ((8 × rows × F), each row's frames side by
    side): numpy is slow on short last axes.
    """
    prev_power, prev_energy = before
    rows, nframes = frames.shape[:2]
    count = rows * nframes
    gate = DEC_PER_FRAME * FRAME_GATE
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
        quiet = ScreenMemory(np.zeros((8, rows), np.float32), np.zeros(rows, np.float32))
        return Screened(empty, active, quiet, np.zeros(rows, dtype=bool))
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
    energy_before = prev_energy if every else prev_energy[active]
    np.add(energy2[:, 0], energy_before, out=e_win[:, 0])
    np.add(energy2[:, 1:], energy2[:, :-1], out=e_win[:, 1:])
    # A tone of amplitude A correlates to 20 A over a frame's 40 samples, of energy 20 A².
    found = (strongest >= SCREEN_FRACTION * (DEC_PER_FRAME / 2) * e_win) & (
        e_win >= 2 * DEC_PER_FRAME * SCREEN_POWER
    )
    # A sudden rise at the very end (a tone's first milliseconds, too few to screen in): the
    # caller may want to look at this channel's next audio as soon as it comes.
    before_last = energy2[:, -2] if nframes > 1 else energy_before
    rising = energy2[:, -1] >= RISE * np.maximum(before_last, gate)
    if every:
        last = ScreenMemory(power3[:, :, -1], energy2[:, -1])
        return Screened(found.T, active, last, rising)
    screened = np.zeros((nframes, rows), dtype=bool)
    screened[:, active] = found.T
    power_out = np.zeros((8, rows), dtype=np.float32)
    power_out[:, active] = power3[:, :, -1]
    energy_out = np.zeros(rows, dtype=np.float32)
    energy_out[active] = energy2[:, -1]
    rising_out = np.zeros(rows, dtype=bool)
    rising_out[active] = rising
    return Screened(screened, active, ScreenMemory(power_out, energy_out), rising_out)


def _any_frame(loud: Bools, before: Bools) -> Bools:
    """Rows (F × rows) with a loud frame, or loud just before."""
    found = before.copy()
    for frame in loud:
        found |= frame
    return found
