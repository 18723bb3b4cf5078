"""Key-press masking for bridged calls: each leg's audio, delayed by a short look-ahead, with
every keypad tone replaced from its first sample to its last.

This module owns the audio processing of both directions in agent-assisted mode (customer →
agent and agent → customer, a channel each), sans IO and batched over channels like the
in-band detector: `ToneMasker.process(slots, block)` takes
a (channels × samples) int16 block (samples a multiple of BLOCK, 5 ms) and returns the same
shape, each channel's audio LOOKAHEAD samples (30 ms) late, with the blocks around any keypad
tone replaced by the channel's mask: `tone` (a flat 440 Hz tone at -20 dBm0), `silence` or
`noise` (low white noise). Everything else passes bit-exact.

Why a look-ahead: a detector decides that a tone is a tone some time after its onset (the
in-band detector 20-40 ms; every detector needs a stretch of it), and masking from that moment
lets the tone's first tens of milliseconds through ("DTMF bleed"), enough for another detector,
or a trained ear, to read the key. Here the audio is held back for LOOKAHEAD, so the decision
for each 5 ms block can see the blocks that follow it.

The decision, per channel and per 5 ms step: the 20 ms window starting there (Hann-weighted) is
correlated with probes at and around each of the 8 DTMF frequencies (±3.5 % in 1.75 % steps,
so off-frequency keypads are caught at full level). The window is *keyed* when the strongest
row probe and the strongest column probe are both above MIN_TONE_POWER, together above
MIN_PAIR_POWER, within MAX_TWIST_DB of each other, and hold MIN_FRACTION of the window's
energy (speech spreads its energy over harmonics and formants; a keypad puts it in two tones).
The line's steady noise is not held against a tone: each channel keeps a noise floor (its
quietest window, rising slowly when the line gets noisier, held while a key is masked), and up
to half a window's energy is discounted as that noise. Windows below the energy gate are not
analysed at all (silence costs a comparison).

The full test (`probe_test`: 40 probes, 80 columns of a matrix product a window) runs only on
the windows that pass a cheap first stage, `screen`: 16 probes, two a tone at ±2.2 % (32
columns), the same tests but the twist's, every threshold times SCREEN_SLACK (0.4, -4 dB).
It is lenient by construction: a lone tone anywhere within ±3.5 % of a DTMF frequency reaches
the screen's nearer probe at most 3.0 dB below the full test's strongest (1633 Hz on frequency,
between its two probes; 0.5-2.5 dB for the others), a key's pair at most ~2.3 dB below (the
column 4 dB louder), so ~1.7 dB is left for the speech or noise on the line to take from the
key's probes before the screen could refuse a window the full test keys. Tested
(tests/unit/test_masking.py): no such window over keys at the tone bench's extremes (0 to -30
dBm0, twist -4 to +8 dB, ±3.5 %, any onset and phase) alone, over speech or noise, with every
floor; over 3,000 keyed windows the least margin measured is 0.67 of the full test's
thresholds (0.4 needed). So the keyed windows are those of the full test alone. What it saves:
random noise, where every window is loud, passes the screen ~1 % of the time (its strongest
probes hold ~10 % of a window's energy; the screen asks 16-32 %, the full test 40-80 %), so a
tick of 400 noisy channels costs ~0.6 of what it did with the full test on every window
(bench/bench_masker.py); speech passes more often (a synthetic vowel with a formant in each
tone group: ~14 % of its windows), keys always.

Every block from GUARD_BEFORE blocks before a keyed window to GUARD_AFTER blocks after it is
masked. A tone of 25 ms or more fills at least one window entirely (a 20 ms window starts at
most 5 ms after its onset), so masking reaches back over its onset block; symmetrically at its
end. Output block b can only be decided once every window that could mask it has been seen:
the windows starting up to b + GUARD_BEFORE, which end WINDOW_BLOCKS - 1 blocks later, hence
LOOKAHEAD = (GUARD_BEFORE + WINDOW_BLOCKS) × BLOCK.

The thresholds are deliberately lenient (any two-tone pattern in the DTMF band, twist up to
10 dB, no minimum duration): masking a little speech is preferred to letting a tone through.
"""

from __future__ import annotations

from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

RATE: Final = 8000
BLOCK: Final = 40  # 5 ms: the masking's time resolution
WINDOW_BLOCKS: Final = 4  # analysis window: 20 ms
WINDOW: Final = WINDOW_BLOCKS * BLOCK
GUARD_BEFORE: Final = 2  # blocks masked before the first keyed window (10 ms)
GUARD_AFTER: Final = 2  # ... and after the last one
LOOKAHEAD_BLOCKS: Final = GUARD_BEFORE + WINDOW_BLOCKS
LOOKAHEAD: Final = LOOKAHEAD_BLOCKS * BLOCK  # samples of delay (30 ms)
# Keyed-window flags kept from earlier calls: those of the windows that still decide a block.
FLAG_HISTORY: Final = GUARD_BEFORE + GUARD_AFTER + WINDOW_BLOCKS

MASKS: Final = ("tone", "silence", "noise")

DBM0_PEAK: Final = 32767.0 * 10.0 ** (-3.14 / 20.0)  # a 0 dBm0 sine's peak (as dtmf.inband)


def dbm0(level: float) -> float:
    """Power (mean square, int16 scale) of a sine at `level` dBm0."""
    return float(DBM0_PEAK**2 / 2.0 * 10.0 ** (level / 10.0))


ROW_HZ: Final = (697.0, 770.0, 852.0, 941.0)
COL_HZ: Final = (1209.0, 1336.0, 1477.0, 1633.0)
PROBE_OFFSETS: Final = (-0.035, -0.0175, 0.0, 0.0175, 0.035)  # relative, around each tone
GATE_POWER: Final = dbm0(-46.0)  # windows quieter than this hold no tone worth masking
MIN_TONE_POWER: Final = dbm0(-48.0)  # each tone (-30 dBm0 keyed with 10 dB twist: -41)
MIN_PAIR_POWER: Final = dbm0(-45.0)  # both: tones below -40 dBm0 are masked too
MAX_TWIST_DB: Final = 10.0
MIN_FRACTION: Final = 0.8  # the two tones' share of the window's energy (less the line's noise)
# The screen (see the module docstring): two probes a tone, the thresholds times SCREEN_SLACK
SCREEN_OFFSETS: Final = (-0.022, 0.022)
SCREEN_SLACK: Final = 0.4  # -4 dB; the keyed windows' least screen margin measured: 0.67
FLOOR_START: Final = dbm0(0.0)  # a new channel's: its first quiet window sets it
FLOOR_MIN: Final = dbm0(-70.0)  # never lower (a floor of 0 could not rise again)
FLOOR_RISE: Final = 1.0155  # per 5 ms window: ~13 dB a second

MASK_TONE_HZ: Final = 440.0
MASK_TONE_PEAK: Final = DBM0_PEAK * 10.0 ** (-20.0 / 20.0)  # -20 dBm0
MASK_NOISE_RMS: Final = float(np.sqrt(dbm0(-50.0)))  # white noise at -50 dBm0
RAMP: Final = 16  # samples (2 ms) of fade at a mask's edges: no click spreads into the band

_T = TypeVar("_T", bound=np.generic)
Int16s = npt.NDArray[np.int16]
F32 = npt.NDArray[np.float32]
Bools = npt.NDArray[np.bool_]


def _probe_matrix(offsets: tuple[float, ...] = PROBE_OFFSETS) -> tuple[F32, float, float]:
    """The Hann-weighted probes at `offsets` around each tone (rows' tones first) as one real
    matrix (WINDOW × 2·probes: cosines then sines), and the normalisers of a probe's power and
    the window's energy (a sine's power either way)."""
    hann = np.hanning(WINDOW + 2)[1:-1]
    n = np.arange(WINDOW)
    freqs = [f * (1.0 + r) for f in ROW_HZ + COL_HZ for r in offsets]
    phases = 2.0 * np.pi * np.outer(n, freqs) / RATE
    matrix = np.concatenate([np.cos(phases), np.sin(phases)], axis=1) * hann[:, None]
    return (
        matrix.astype(np.float32),
        2.0 / float(hann.sum()) ** 2,
        1.0 / float((hann**2).sum()),
    )


_PROBES, _PROBE_NORM, _ENERGY_WEIGHTS_NORM = _probe_matrix()
# WINDOW × 32: 16 probes' cosines then sines, scaled so that cos² + sin² is the probe's power
_SCREEN_PROBES: Final = (_probe_matrix(SCREEN_OFFSETS)[0] * np.sqrt(_PROBE_NORM)).astype(np.float32)
_SCREEN_HALF: Final = _SCREEN_PROBES.shape[1] // 2
assert _SCREEN_HALF == 16, "screen_strongest halves 8 probes a group to find the strongest"
_HANN_SQ: Final = (np.hanning(WINDOW + 2)[1:-1] ** 2).astype(np.float32)
_PER_TONE: Final = len(PROBE_OFFSETS)
assert 4 * _PER_TONE == 20, "keyed_windows halves 20 probes a group to find the strongest"
_TWIST: Final = 10.0 ** (MAX_TWIST_DB / 10.0)
_SCREEN_TONE: Final = SCREEN_SLACK * MIN_TONE_POWER
_SCREEN_PAIR: Final = SCREEN_SLACK * MIN_PAIR_POWER
_SCREEN_FRACTION: Final = SCREEN_SLACK * MIN_FRACTION
_FADE_IN: Final = (0.5 - 0.5 * np.cos(np.pi * (np.arange(RAMP) + 0.5) / RAMP)).astype(np.float32)


class Scratch:
    """Work arrays kept from one `ToneMasker.process` call to the next, grown as needed.

    A tick's temporaries are large (400 channels: 1 MB of windows, as much again squared, half
    a megabyte of probe products), and arrays that large are fresh memory from the kernel each
    time (glibc maps them, or trims its heap when they are freed): the page faults cost two to
    three times the arithmetic (measured). Written with `out=`, the same operations on the same
    operands: the results are the same bit for bit."""

    def __init__(self) -> None:
        self.capacity = 0
        self._grow(64)
        self._held = np.empty((0, LOOKAHEAD), dtype=np.int16)
        self._audio = np.empty((0, LOOKAHEAD), dtype=np.int16)
        self._samples = 0

    def _grow(self, windows: int) -> None:
        self.capacity = windows
        self.windows = np.empty((windows, WINDOW), dtype=np.float32)
        self.squares = np.empty((windows, WINDOW), dtype=np.float32)
        self.parts = np.empty((windows, _PROBES.shape[1]), dtype=np.float32)
        half = _PROBES.shape[1] // 2
        self.power = np.empty((windows, half), dtype=np.float32)
        self.other = np.empty((windows, half), dtype=np.float32)
        self.screen_parts = np.empty((windows, 2 * _SCREEN_HALF), dtype=np.float32)
        # the screen's probe powers transposed (probe × window): its maxima on contiguous rows
        self.screen_power = np.empty((_SCREEN_HALF, windows), dtype=np.float32)
        self.screen_other = np.empty((_SCREEN_HALF, windows), dtype=np.float32)

    def ensure(self, windows: int) -> None:
        if windows > self.capacity:
            self._grow(max(windows, 2 * self.capacity))

    def audio(self, channels: int, samples: int) -> tuple[Int16s, Int16s]:
        """Room for `channels` rows of held audio (LOOKAHEAD) and of held and new (+ samples)."""
        if channels > len(self._held) or samples != self._samples:
            rows = len(self._held)
            if channels > rows:
                rows = max(channels, 2 * rows)
            self._held = np.empty((rows, LOOKAHEAD), dtype=np.int16)
            self._audio = np.empty((rows, LOOKAHEAD + samples), dtype=np.int16)
            self._samples = samples
        return self._held[:channels], self._audio[:channels]


def window_energy(windows: F32, scratch: Scratch | None = None) -> F32:
    """The Hann-weighted power of each of (n × WINDOW) windows (a sine's power for a sine).
    `scratch`: work arrays to reuse (`Scratch`), with room for n windows."""
    if scratch is None:
        squares = windows * windows
    else:
        squares = np.multiply(windows, windows, out=scratch.squares[: len(windows)])
    return np.asarray((squares @ _HANN_SQ) * _ENERGY_WEIGHTS_NORM, dtype=np.float32)


def keyed_windows(
    windows: F32,
    energy: F32 | None = None,
    floor: F32 | None = None,
    scratch: Scratch | None = None,
) -> Bools:
    """For (n × WINDOW) float audio: is each window keyed (see the module docstring)?
    `energy`: `window_energy(windows)` if already known. `floor`: each window's channel's noise
    floor; up to half a window's energy is taken for noise (never more: so a floor can only
    make a window more likely keyed, never less). `scratch`: work arrays to reuse.

    The windows above the energy gate go through `screen`, and those it passes through
    `probe_test`: the same answer as `probe_test` on every window above the gate wherever the
    screen passes every window that test keys (tests/unit/test_masking.py checks it does over
    keys at the extremes of the tone bench, with speech and noise)."""
    if energy is None:
        energy = window_energy(windows, scratch)
    keyed = np.zeros(len(windows), dtype=np.bool_)
    loud = np.flatnonzero(energy >= GATE_POWER)
    if loud.size == 0:
        return keyed
    if loud.size == len(windows):  # every window (a noisy line): no copy of them all
        base, chosen, floors = energy, windows, floor
    else:
        base, chosen = energy[loud], windows[loud]
        floors = floor[loud] if floor is not None else None
    if floors is not None:
        base = base - np.minimum(floors, 0.5 * base)
    passed = np.flatnonzero(screen(chosen, base, scratch))
    if passed.size == 0:
        return keyed
    if passed.size < len(chosen):
        chosen, base = chosen[passed], base[passed]
    if passed.size < len(loud):
        keyed[loud[passed]] = probe_test(chosen, base, scratch)
    else:
        keyed[loud if loud.size < len(windows) else slice(None)] = probe_test(chosen, base, scratch)
    return keyed


def _power(
    windows: F32, probes: F32, scratch: tuple[F32, F32, F32] | None
) -> npt.NDArray[np.float32]:
    """Each probe's power in each window ((n × probes): cos² + sin², normalised), computed
    into `scratch` (parts, power, other) when given: the same operations either way."""
    half = probes.shape[1] // 2
    if scratch is None:
        parts = windows @ probes
        return np.asarray((parts[:, :half] ** 2 + parts[:, half:] ** 2) * _PROBE_NORM)
    n = len(windows)
    parts = np.matmul(windows, probes, out=scratch[0][:n])
    power: npt.NDArray[np.float32] = np.square(parts[:, :half], out=scratch[1][:n])
    power += np.square(parts[:, half:], out=scratch[2][:n])
    power *= _PROBE_NORM
    return power


def screen(windows: F32, base: F32, scratch: Scratch | None = None) -> Bools:
    """The cheap first stage: could each window be keyed? `base`: each window's energy less
    the noise discounted (as `probe_test`'s). 16 probes (two a tone, SCREEN_OFFSETS) instead
    of 40, and `probe_test`'s thresholds times SCREEN_SLACK, the twist not tested; lenient by
    design, it passes every window `probe_test` keys (see the module docstring), and rules
    out most loud windows that hold no key (random noise: all but ~1 %)."""
    row, col = screen_strongest(windows, scratch)
    pair = row + col
    return np.asarray(
        (row >= _SCREEN_TONE)
        & (col >= _SCREEN_TONE)
        & (pair >= _SCREEN_PAIR)
        & (pair >= _SCREEN_FRACTION * base)
    )


def screen_strongest(windows: F32, scratch: Scratch | None = None) -> tuple[F32, F32]:
    """The screen's strongest row probe and column probe power in each window."""
    n = len(windows)
    if scratch is None:
        parts = (windows @ _SCREEN_PROBES).T
        power = parts[:_SCREEN_HALF] ** 2 + parts[_SCREEN_HALF:] ** 2
    else:  # the same, into the work arrays
        parts = np.matmul(windows, _SCREEN_PROBES, out=scratch.screen_parts[:n]).T
        power = np.square(parts[:_SCREEN_HALF], out=scratch.screen_power[:, :n])
        power += np.square(parts[_SCREEN_HALF:], out=scratch.screen_other[:, :n])
    # Transposed (probe × window), the maxima run over contiguous rows: rows' probes, columns'
    probes = power.reshape(2, _SCREEN_HALF // 2, n)
    fours = np.maximum(probes[:, :4], probes[:, 4:])
    twos = np.maximum(fours[:, :2], fours[:, 2:])
    strongest = np.maximum(twos[:, 0], twos[:, 1])
    return strongest[0], strongest[1]


def probe_test(windows: F32, base: F32, scratch: Scratch | None = None) -> Bools:
    """The full test: is each window keyed? `base`: each window's energy less the noise
    discounted. The 40 probes (PROBE_OFFSETS around each tone) and the thresholds of the
    module docstring."""
    work = None
    if scratch is not None:
        work = (scratch.parts, scratch.power, scratch.other)
    power = _power(windows, _PROBES, work)
    # The strongest row probe and column probe (20 each): halved by elementwise maxima, as
    # numpy's reduction over a short last axis costs more (exact either way: max rounds nothing)
    probes = power.reshape(len(power), 2, 4 * _PER_TONE)
    tens = np.maximum(probes[:, :, :10], probes[:, :, 10:])
    fives = np.maximum(tens[:, :, :5], tens[:, :, 5:])
    strongest = np.maximum(fives[:, :, 0], fives[:, :, 1])
    for k in range(2, 5):
        np.maximum(strongest, fives[:, :, k], out=strongest)
    row = strongest[:, 0]
    col = strongest[:, 1]
    pair = row + col
    return np.asarray(
        (row >= MIN_TONE_POWER)
        & (col >= MIN_TONE_POWER)
        & (pair >= MIN_PAIR_POWER)
        & (row <= col * _TWIST)
        & (col <= row * _TWIST)
        & (pair >= MIN_FRACTION * base)
    )


def _by_column(op: np.ufunc, array: npt.NDArray[_T]) -> npt.NDArray[_T]:
    """`op` reduced over the few columns of (rows × m) `array`, a column at a time: numpy's
    reduction over a short last axis costs several times more (exact either way for minimum
    and or)."""
    out: npt.NDArray[_T] = array[:, 0].copy()
    for k in range(1, array.shape[1]):
        op(out, array[:, k], out=out)
    return out


class ToneMasker:
    """Masks keypad tones in many channels' audio at once; see the module docstring.

    A channel is a slot (`add_channel(mask)`); its state is a row of the arrays below: the last
    LOOKAHEAD samples not yet given back, the keyed flags of the windows that still decide a
    block, whether its last block given back was masked, and the mask tone's phase.
    """

    def __init__(self, *, capacity: int = 16, seed: int | None = None) -> None:
        self._capacity = 0
        self._held = np.zeros((0, LOOKAHEAD), dtype=np.int16)
        self._flags = np.zeros((0, FLAG_HISTORY), dtype=np.bool_)
        self._was_masked = np.zeros(0, dtype=np.bool_)
        self._phase = np.zeros(0, dtype=np.int64)  # mask tone position (samples) per slot
        self._mask_kind = np.zeros(0, dtype=np.int8)
        self._floor = np.zeros(0, dtype=np.float32)  # the line's noise power per slot
        self._free: list[int] = []
        self._used = 0
        self._rng = np.random.default_rng(seed)
        self.masked_blocks = 0  # blocks replaced, all channels (for tests and benchmarks)
        self._scratch = Scratch()
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        extra = capacity - self._capacity
        if extra <= 0:
            return
        self._held = np.concatenate([self._held, np.zeros((extra, LOOKAHEAD), np.int16)])
        self._flags = np.concatenate([self._flags, np.zeros((extra, FLAG_HISTORY), np.bool_)])
        self._was_masked = np.concatenate([self._was_masked, np.zeros(extra, np.bool_)])
        self._phase = np.concatenate([self._phase, np.zeros(extra, np.int64)])
        self._mask_kind = np.concatenate([self._mask_kind, np.zeros(extra, np.int8)])
        self._floor = np.concatenate([self._floor, np.zeros(extra, np.float32)])
        self._capacity = capacity

    def add_channel(self, mask: str = "tone") -> int:
        """A fresh channel (silence held, nothing keyed) masking with `mask`; its slot."""
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {mask!r}")
        if self._free:
            slot = self._free.pop()
        else:
            if self._used == self._capacity:
                self._grow(2 * self._capacity)
            slot = self._used
            self._used += 1
        self._held[slot] = 0
        self._flags[slot] = False
        self._was_masked[slot] = False
        self._phase[slot] = 0
        self._mask_kind[slot] = MASKS.index(mask)
        self._floor[slot] = FLOOR_START
        return slot

    def remove_channel(self, slot: int) -> None:
        self._free.append(slot)

    def set_mask(self, slot: int, mask: str) -> None:
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {mask!r}")
        self._mask_kind[slot] = MASKS.index(mask)

    def process(self, slots: list[int] | npt.NDArray[np.intp], block: Int16s) -> Int16s:
        """Take (len(slots) × n) int16 samples (n a multiple of BLOCK), one row per slot, and
        give back n samples per slot: its audio LOOKAHEAD samples earlier, masked."""
        channels, samples = block.shape
        if samples % BLOCK:
            raise ValueError(f"samples must be a multiple of {BLOCK}, got {samples}")
        rows = np.asarray(slots, dtype=np.intp)
        if channels == 0 or samples == 0:
            return np.zeros((channels, samples), dtype=np.int16)
        m = samples // BLOCK
        scratch = self._scratch
        held, audio = scratch.audio(channels, samples)  # (C, LOOKAHEAD), (C, LOOKAHEAD + n)
        np.take(self._held, rows, axis=0, out=held)
        np.concatenate([held, block], axis=1, out=audio)
        # The windows starting at the new ones' first possible start: the last WINDOW_BLOCKS-1
        # held blocks onwards, one a block, m in all.
        first = LOOKAHEAD - (WINDOW_BLOCKS - 1) * BLOCK
        # Each channel's m windows, one a block, as a view (sliding_window_view's, built
        # directly: its checks cost more than the copy below for 400 channels)
        span = audio[:, first:]
        rows_stride, step = span.strides
        views = np.lib.stride_tricks.as_strided(
            span, (channels, m, WINDOW), (rows_stride, BLOCK * step, step), writeable=False
        )
        scratch.ensure(channels * m)
        windows = scratch.windows[: channels * m]
        # int16 to float32 is exact: the same windows as converting first, without the copies
        np.copyto(windows.reshape(channels, m, WINDOW), views, casting="unsafe")
        energy = window_energy(windows, scratch)
        floor = self._floor[rows]
        keyed = keyed_windows(windows, energy, np.repeat(floor, m), scratch).reshape(channels, m)
        # The noise floor: the quietest window of each call, rising back by FLOOR_RISE a window
        # (about 13 dB a second) when the line gets noisier; held while a key is masked.
        quietest = _by_column(np.minimum, energy.reshape(channels, m))
        risen = floor * np.float32(FLOOR_RISE**m)
        lowered = np.maximum(np.minimum(risen, quietest), FLOOR_MIN)  # digital silence: 0
        self._floor[rows] = np.where(_by_column(np.logical_or, keyed), floor, lowered)
        flags = np.concatenate([self._flags[rows], keyed], axis=1)  # (C, FLAG_HISTORY + m)
        # Output block k is masked if a window starting from WINDOW_BLOCKS - 1 + GUARD_AFTER
        # blocks before it to GUARD_BEFORE blocks after it is keyed. The new windows start at
        # output blocks GUARD_BEFORE + 1 onwards, so the one starting at block k sits at
        # `base + k` in `flags`. Block m (the next call's first) is decided too: whether the
        # mask fades out at the end of block m - 1.
        base = FLAG_HISTORY - GUARD_BEFORE - 1
        low = base - (WINDOW_BLOCKS - 1) - GUARD_AFTER
        reach = WINDOW_BLOCKS + GUARD_AFTER + GUARD_BEFORE
        masked = flags[:, low : low + m + 1].copy()
        for offset in range(1, reach):
            masked |= flags[:, low + offset : low + offset + m + 1]
        out = audio[:, :samples].copy()
        self._held[rows] = audio[:, samples:]
        self._flags[rows] = flags[:, -FLAG_HISTORY:]
        hit = masked[:, :m]
        if hit.any():
            self._mask(rows, out, hit, masked)
        self._was_masked[rows] = hit[:, -1]
        self._phase[rows] += samples
        return out

    def _mask(self, rows: npt.NDArray[np.intp], out: Int16s, hit: Bools, masked: Bools) -> None:
        """Replace the masked blocks of `out` by each channel's mask, faded in where the block
        before was not masked and out where the block after is not. All the tick's masked
        blocks at once (a Python loop over them cost ~5 µs a block: milliseconds a tick when
        many calls key together); the same samples as block by block, the noise drawn in the
        same order (channel, then block)."""
        before = np.concatenate([self._was_masked[rows][:, None], hit[:, :-1]], axis=1)
        after = masked[:, 1:]
        channel, block = np.nonzero(hit)  # row-major: the loop's order
        kind = self._mask_kind[rows[channel]]
        fill = np.zeros((len(channel), BLOCK), dtype=np.float32)  # "silence" stays 0
        tone = kind == MASKS.index("tone")
        if tone.any():
            t = (
                self._phase[rows[channel[tone]]][:, None]
                + block[tone][:, None] * BLOCK
                + np.arange(BLOCK)
            )
            wave = MASK_TONE_PEAK * np.sin(2.0 * np.pi * MASK_TONE_HZ * t / RATE)
            fill[tone] = wave.astype(np.float32)
        noise = kind == MASKS.index("noise")
        if noise.any():
            drawn = self._rng.normal(0.0, MASK_NOISE_RMS, (int(noise.sum()), BLOCK))
            fill[noise] = drawn.astype(np.float32)
        fade_in = ~before[channel, block]
        fill[fade_in, :RAMP] *= _FADE_IN
        fade_out = ~after[channel, block]
        fill[fade_out, -RAMP:] *= _FADE_IN[::-1]
        at = block[:, None] * BLOCK + np.arange(BLOCK)  # each masked block's samples
        out[channel[:, None], at] = np.round(fill).astype(np.int16)
        self.masked_blocks += len(channel)
