"""Each channel's last HIST sub-blocks of audio, from which a channel that becomes hot gets its
history.

This module owns `remember`: a decision window reaches HIST sub-blocks (200 samples) back,
before the call that screens a channel in, and a start's last checks (`checks`) read that audio.
Every channel keeps its own last 200 samples, a row of the detector's state, moved along by
each call it is in (two copies of 200 samples a row: less than the call's own block).

Why per channel: the detector used to keep the blocks of its last 4 calls and read a channel's
past back from them. The media engine makes one call per tick for the channels that give 20 ms,
and one more for each other amount (channels behind after a stalled tick or a burst of packets):
a tick of 5 calls pushed a channel's last call out of those 4, its past read as zeros, and a
start's timing and spectrum checks then saw a tone beginning at the call's edge (too short, or
not pure): a 100 ms keypad tone was missed, or one press split in two. A channel's own row
cannot be pushed out by other channels' calls.

What the history holds is what the ring held, so decisions on audio fed steadily are
unchanged: the audio of the channel's calls, or zeros for the part of a call where it was quiet
(no sound by the screen's gate) while most of that call's channels were quiet too (the ring
kept only the loud rows then), and zeros from a reset (a new channel, a gap in its audio).
"""

from __future__ import annotations

from typing import Final

import numpy as np

from .params import HIST, I64, SUB, Idx, Int16s

KEPT: Final = HIST * SUB  # samples of each channel's history


def remember(history: Int16s, zeros: I64, sel: Idx | slice, frames: Int16s, active: Idx) -> None:
    """Move the rows `sel` of `history` (slots × KEPT) along by this call's audio: `frames`,
    (rows × F × 80) of those slots in that order, `active` the rows with sound. When most rows
    are quiet, the quiet rows' part of this call is kept as zeros. `zeros` (per slot) counts
    the zeros at the end of each row (up to KEPT): a call of silence on rows that hold nothing
    else costs one test."""
    rows = frames.shape[0]
    audio = frames.reshape(rows, -1)
    n = audio.shape[1]
    if not active.size:  # every row quiet: zeros in
        if (zeros[sel] >= KEPT).all():
            return
        zeros[sel] = np.minimum(zeros[sel] + n, KEPT)
    elif 2 * active.size <= rows:  # the quiet rows' part: zeros
        quiet = np.ones(rows, dtype=bool)
        quiet[active] = False
        zeros[sel] = np.where(quiet, np.minimum(zeros[sel] + n, KEPT), 0)
    else:  # every row's audio
        quiet = None
        zeros[sel] = 0
    mine = history[sel]  # a view for a slice; a copy (written back below) for an index array
    if n >= KEPT:
        mine[:] = audio[:, n - KEPT :]
    else:
        mine[:, : KEPT - n] = mine[:, n:]
        mine[:, KEPT - n :] = audio
    if not active.size:
        mine[:, KEPT - min(n, KEPT) :] = 0
    elif quiet is not None:
        mine[quiet, KEPT - min(n, KEPT) :] = 0
    if not isinstance(sel, slice):
        history[sel] = mine
