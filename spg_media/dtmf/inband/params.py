"""The in-band detector's fixed figures: frequencies, block geometry, levels and thresholds.

Every stage reads its thresholds from here, so that the acceptance rules stand in one place
(the standards' figures are in the comments). Also the array type names the package uses.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from spg_media.dtmf.rfc4733 import DtmfEvent

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
SPAN: Final = (WIN + LOOK) * SUB  # samples of a window with the LOOK sub-blocks before it
DEC_PER_FRAME: Final = FRAME // 2  # the screen takes every other sample

DBM0_PEAK: Final = 32767.0 * 10.0 ** (-3.14 / 20.0)  # peak of a 0 dBm0 sine (spandsp's reference)
_P0: Final = DBM0_PEAK**2 / 2.0  # power of a 0 dBm0 sine


def dbm0(level: float) -> float:
    """Power (mean square, int16 scale) of a sine at `level` dBm0."""
    return float(_P0 * 10.0 ** (level / 10.0))


# Acceptance of a decision window (a "hit").
MIN_TONE_POWER: Final = dbm0(-46.0)  # each tone; -36 dBm0 with 8 dB twist puts one at -44.6
MIN_PAIR_POWER: Final = dbm0(-43.0)  # both together; "below -50 dBm0 ignored"
NORMAL_TWIST: Final = 10.0 ** (9.5 / 10.0)  # row louder: 8 dB accepted
REVERSE_TWIST: Final = 10.0 ** (5.5 / 10.0)  # column louder: 4 dB accepted
MAX_OFFSET: Final = 0.025  # relative frequency error: 1.5 % accepted, 3.5 % rejected
MIN_FRACTION: Final = 0.75  # share of a hit window's energy in the two tones
PATTERN_FRACTION: Final = 0.7  # two tones holding this share of a window form a pattern
ONSET_COVER: Final = 0.5  # before an onset, the tones are below half their steady amplitude
FLAT_COVER: Final = 0.8  # a window all of whose sub-blocks hold the tones this much is steady

# A digit's start.
START_FRACTION: Final = 0.85  # the tones' share of the window that starts a digit
START_MS: Final = 19.875  # tone timed this long to start (< 20 ms rejected, >= 40 ms accepted)
START_ROUGH_MS: Final = 16.75  # ... seen this long by the sub-blocks' cover: time it exactly
START_NO_ONSET_MS: Final = 35.0  # ... when no abrupt onset was seen
MIN_LAST_COVER: Final = 0.9  # the tones must still fill the last sub-block to start
PURITY_DB: Final = -10.0  # nothing else in a starting window's spectrum within this of a tone
PURITY_GUARD_HZ: Final = 130.0  # around each tone: its own main lobe (Hann, 20 ms) and more
PURITY_LOW_HZ: Final = 150.0  # hum and DC are no reason to refuse a digit
CAND_MISSES: Final = 1  # misses tolerated while a candidate builds up
START_SAMPLES: Final = START_MS * RATE / 1000.0
START_ROUGH_SAMPLES: Final = START_ROUGH_MS * RATE / 1000.0
START_NO_ONSET_SAMPLES: Final = START_NO_ONSET_MS * RATE / 1000.0

# A digit going on, and its end.
PRESENT_LEVEL: Final = 0.5  # a started digit's tones, against their start amplitude
PRESENT_FRACTION: Final = 0.5  # ... and their share of the sub-block's energy
END_SUBS: Final = 4  # sub-blocks without the tones that end a digit (20 ms)
GAP_BREAK_S: Final = 0.1  # audio missing longer than this ends a digit and restarts a channel

# The screen: lenient, it only decides where to analyse.
SCREEN_FRACTION: Final = 0.6
SCREEN_POWER: Final = dbm0(-49.0)
FRAME_GATE: Final = dbm0(-60.0)
RISE: Final = 10.0  # a frame this much louder (10 dB) than the one before may hold an onset

W: Final = 2.0 * np.pi * np.array(ROW_HZ + COL_HZ) / RATE  # the 8 tones, rad/sample
ROT_SUB: Final = np.exp(-1j * W * SUB)  # a tone's phase advance over a sub-block, undone
DIGIT_TONES: Final = np.array([(d // 4, d % 4 + 4) for d in range(16)])  # row and column tone
TINY: Final = 1e-9

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
C64 = npt.NDArray[np.complex64]
I64 = npt.NDArray[np.int64]
Idx = npt.NDArray[np.intp]
Bools = npt.NDArray[np.bool_]
Int16s = npt.NDArray[np.int16]
Events = list[tuple[int, DtmfEvent]]
