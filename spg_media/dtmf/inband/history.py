"""The audio of the last few calls, from which a channel that becomes hot gets its history.

This module owns `AudioRing`: a decision window reaches HIST sub-blocks back, before the call
that screens a channel in. Rather than keep a per-channel history (three strided copies of every
channel per call), the detector keeps a copy of each call's block, and the few channels that
need their past read it back from there (`AudioRing.history`).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from .params import HIST, I64, SUB, Idx, Int16s

_RING: Final = 4  # calls of audio kept


class AudioRing:
    """The audio of the last _RING calls: (sequence number, frames (rows × samples),
    slot -> row). Calls are numbered from 1 (`seq` is the last one's number)."""

    def __init__(self) -> None:
        self._calls: list[tuple[int, Int16s, npt.NDArray[np.int32]]] = []
        self.seq = 0

    def remember(self, slots: Idx, frames: Int16s, active: Idx, capacity: int) -> None:
        """Keep this call's audio as the history of the next calls: a copy of the channels with
        sound (rows `active` of slots); the quiet ones are marked -2 (their history: zeros),
        those not in the call -1. `capacity`: the detector's number of slots."""
        self.seq += 1
        rowmap = np.full(capacity, -1, dtype=np.int32)
        audio = frames.reshape(slots.size, -1)
        if 2 * active.size > slots.size:
            rowmap[slots] = np.arange(slots.size, dtype=np.int32)
            # Into the buffer of a call that leaves the ring: a fresh one this size comes
            # from mmap and is faulted in page by page, every call.
            spare = self._calls[0][1].base if len(self._calls) == _RING else None
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
        self._calls.append((self.seq, kept, rowmap))
        del self._calls[:-_RING]

    def history(self, slots: Idx, since: I64) -> Int16s:
        """The HIST sub-blocks of audio before this call, (k × 200), for some channels: from the
        last calls they were in, from call number since[i] on; zeros where they were quiet, or
        where there is nothing (a new or reset channel, or more calls missed than the ring
        holds)."""
        want = HIST * SUB
        out = np.zeros((slots.size, want), dtype=np.int16)
        filled = np.zeros(slots.size, dtype=np.int64)
        for seq, data, rowmap in reversed(self._calls):
            if filled.min() >= want:
                break
            rows = np.where(slots < rowmap.size, rowmap[np.minimum(slots, rowmap.size - 1)], -1)
            usable = (rows != -1) & (seq >= since) & (filled < want)
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
