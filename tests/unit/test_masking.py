"""ToneMasker: keypad tones replaced from their first sample to their last, the rest bit-exact."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spg_media.dtmf.inband import DBM0_PEAK, scan
from spg_media.rtp.g711 import ULAW_TO_LINEAR
from spg_media.rtp.masking import (
    BLOCK,
    FLOOR_START,
    GATE_POWER,
    LOOKAHEAD,
    MASK_TONE_PEAK,
    MIN_FRACTION,
    MIN_PAIR_POWER,
    MIN_TONE_POWER,
    SCREEN_SLACK,
    WINDOW,
    Scratch,
    ToneMasker,
    dbm0,
    keyed_windows,
    probe_test,
    screen,
    screen_strongest,
    window_energy,
)

ROWS = (697.0, 770.0, 852.0, 941.0)
COLS = (1209.0, 1336.0, 1477.0, 1633.0)


def key_tone(
    low: float, high: float, samples: int, level_dbm0: float, twist_db: float = 0.0
) -> npt.NDArray[np.float64]:
    """The two tones, together at `level_dbm0`, the row `twist_db` louder than the column."""
    total = DBM0_PEAK * 10 ** (level_dbm0 / 20)
    row = total / np.sqrt(1 + 10 ** (-twist_db / 10))
    col = row * 10 ** (-twist_db / 20)
    t = np.arange(samples) / 8000
    tones: npt.NDArray[np.float64] = row * np.sin(2 * np.pi * low * t) + col * np.sin(
        2 * np.pi * high * t + 1.0
    )
    return tones


def voice(samples: int, seed: int, pitch: float = 140.0) -> np.ndarray:
    """A vowel-like sound: harmonics of a wavering pitch under two formants, with noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 8000
    f0 = pitch * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / 8000
    out = np.zeros(samples)
    for h in range(1, 25):
        f = h * pitch
        gain = np.exp(-(((f - 500) / 200) ** 2)) + 0.5 * np.exp(-(((f - 1500) / 250) ** 2))
        out += gain * np.sin(h * phase)
    out *= 4000 / np.sqrt(np.mean(out**2))
    return out + rng.normal(0, 100, samples)


def run(masker: ToneMasker, slot: int, audio: np.ndarray, chunk: int = 160) -> np.ndarray:
    """Feed `audio` (then the look-ahead's worth of silence) and return the output realigned."""
    samples = np.concatenate([audio, np.zeros(LOOKAHEAD)])
    samples = np.clip(np.round(samples), -32768, 32767).astype(np.int16)
    pad = (-samples.size) % chunk
    samples = np.concatenate([samples, np.zeros(pad, dtype=np.int16)])
    out = [
        masker.process([slot], samples[None, i : i + chunk])[0]
        for i in range(0, samples.size, chunk)
    ]
    return np.concatenate(out)[LOOKAHEAD : LOOKAHEAD + audio.size]


def level_at(audio: np.ndarray, freq: float) -> float:
    """dBm0 of the sine at `freq` in `audio`."""
    t = np.arange(audio.size) / 8000
    amplitude = 2 * abs(np.dot(audio.astype(np.float64), np.exp(-2j * np.pi * freq * t)))
    return float(20 * np.log10(max(amplitude / audio.size, 1e-9) / DBM0_PEAK))


@pytest.mark.parametrize("level", [0, -10, -20, -30])
@pytest.mark.parametrize("speech_before", [False, True])
def test_a_tone_is_replaced_from_its_first_sample_to_its_last(
    level: int, speech_before: bool
) -> None:
    rng = np.random.default_rng(-level * 7 + speech_before)
    masker = ToneMasker()
    slot = masker.add_channel("silence")
    for trial in range(6):
        low, high = ROWS[trial % 4], COLS[(trial + level) % 4]
        onset = 4000 + int(rng.integers(0, 4 * BLOCK))  # every offset within a block
        length = int(rng.integers(320, 960))  # 40 to 120 ms
        twist = float(rng.uniform(-4, 8))
        audio = rng.normal(0, 30, onset + length + 3000)
        if speech_before:
            audio[onset - 2400 : onset] += voice(2400, trial)
        without = np.round(audio).astype(np.int16)
        audio[onset : onset + length] += key_tone(low, high, length, level, twist)
        out = run(masker, slot, audio)
        # Silence mask: every sample of the tone is gone, not just its energy, and the rest is
        # the audio as it was without the tone: one masked stretch, at most 25 ms either side.
        assert not out[onset : onset + length].any(), (trial, onset, length)
        changed = np.flatnonzero(out != without)
        assert changed.size and changed[0] >= onset - 200 and changed[-1] < onset + length + 200
        masked = slice(changed[0], changed[-1] + 1)
        assert not out[masked].any()
        assert scan(out) == []
    assert masker.masked_blocks > 0


def test_a_quiet_tone_on_a_noisy_line_is_masked() -> None:
    # -30 dBm0 keys over white noise at -35 dBm0: the noise alone would hold the tones' share
    # of a window under 80 %; the line's noise floor is not held against them.
    rng = np.random.default_rng(11)
    masker = ToneMasker()
    slot = masker.add_channel("silence")
    noise_rms = DBM0_PEAK * 10 ** (-35 / 20) / np.sqrt(2)
    for trial in range(4):
        onset = 24000 + int(rng.integers(0, BLOCK))  # after 3 s of the line's noise
        audio = rng.normal(0, noise_rms, onset + 4000)
        audio[onset : onset + 480] += key_tone(ROWS[trial], COLS[3 - trial], 480, -30, 4.0)
        out = run(masker, slot, audio)
        assert not out[onset : onset + 480].any(), trial
    noise = np.round(rng.normal(0, noise_rms, 16000))
    fresh = ToneMasker()
    assert np.array_equal(run(fresh, fresh.add_channel(), noise), noise.astype(np.int16))
    assert fresh.masked_blocks == 0  # the noise alone is not a key


def test_the_mask_tone_covers_the_key_at_440_hz() -> None:
    masker = ToneMasker()
    slot = masker.add_channel("tone")
    audio = np.zeros(6000)
    audio[2000:2800] = key_tone(941, 1336, 800, -5)  # "0", 100 ms
    out = run(masker, slot, audio).astype(np.float64)
    keyed = out[2000:2800]
    assert abs(level_at(keyed, 440.0) - (-20.0)) < 0.5
    assert np.abs(keyed).max() <= MASK_TONE_PEAK + 1
    assert level_at(keyed, 941.0) < -50 and level_at(keyed, 1336.0) < -50
    assert not out[:1800].any() and not out[3000:].any()  # the silence around it, untouched


def test_speech_passes_bit_exact() -> None:
    masker = ToneMasker()
    slot = masker.add_channel()
    for seed, pitch in ((1, 110.0), (2, 140.0), (3, 210.0)):
        audio = np.clip(np.round(voice(16000, seed, pitch)), -32768, 32767)
        out = run(masker, slot, audio)
        assert np.array_equal(out, audio.astype(np.int16)), pitch
    assert masker.masked_blocks == 0


def test_speech_after_a_key_passes_bit_exact_past_the_guard() -> None:
    masker = ToneMasker()
    slot = masker.add_channel()
    audio = np.zeros(8000)
    audio[1000:1400] = key_tone(770, 1477, 400, -15)
    audio[1600:] = voice(6400, 4)
    audio = np.round(audio)
    out = run(masker, slot, audio)
    assert np.array_equal(out[1600:], audio[1600:].astype(np.int16))
    assert np.array_equal(out[:800], audio[:800].astype(np.int16))


def test_channels_are_independent_and_chunking_does_not_matter() -> None:
    rng = np.random.default_rng(5)
    audio = [rng.normal(0, 200, 8000) for _ in range(3)]
    audio[1][3000:3600] += key_tone(852, 1209, 600, -12)
    one = ToneMasker()
    slots = [one.add_channel("silence") for _ in range(3)]
    samples = np.stack([np.concatenate([a, np.zeros(LOOKAHEAD)]) for a in audio])
    samples = np.round(samples).astype(np.int16)
    together = np.concatenate(
        [one.process(slots, samples[:, i : i + 80]) for i in range(0, samples.shape[1], 80)],
        axis=1,
    )
    for c in range(3):
        alone = ToneMasker()
        slot = alone.add_channel("silence")
        assert np.array_equal(run(alone, slot, audio[c], chunk=480), together[c, LOOKAHEAD:])
    assert np.array_equal(together[0, LOOKAHEAD:], samples[0, :8000])
    assert not together[1, LOOKAHEAD + 3000 : LOOKAHEAD + 3600].any()


def test_a_slot_given_back_starts_fresh() -> None:
    masker = ToneMasker()
    slot = masker.add_channel()
    masker.process([slot], np.full((1, 160), 1234, dtype=np.int16))
    masker.remove_channel(slot)
    again = masker.add_channel("silence")
    assert again == slot
    out = masker.process([again], np.zeros((1, 160), dtype=np.int16))
    assert not out.any()  # nothing held from the channel before


def test_bad_input_is_refused() -> None:
    masker = ToneMasker()
    slot = masker.add_channel()
    with pytest.raises(ValueError):
        masker.process([slot], np.zeros((1, 50), dtype=np.int16))
    with pytest.raises(ValueError):
        masker.add_channel("music")


def test_reused_work_arrays_give_the_same_decisions_as_fresh_ones() -> None:
    """`process` works in arrays kept from call to call (Scratch); the windows' energy and
    keyed flags must be those of the plain computation, whatever the channel count did
    before (grown, shrunk, some windows below the energy gate, some above)."""
    rng = np.random.default_rng(3)
    scratch = Scratch()
    for count in (3, 200, 7, 64, 1):
        tones = np.stack([key_tone(770.0, 1336.0, WINDOW, -10.0 - n % 30) for n in range(count)])
        noise = rng.normal(0, rng.uniform(0, 3000, (count, 1)), (count, WINDOW))
        quiet = rng.normal(0, 2, (count, WINDOW))
        windows = np.concatenate([tones, noise, quiet]).astype(np.float32)
        floor = rng.uniform(0, dbm0(-40.0), len(windows)).astype(np.float32)
        scratch.ensure(len(windows))
        energy = window_energy(windows)
        assert np.array_equal(window_energy(windows, scratch), energy)
        plain = keyed_windows(windows, energy, floor)
        assert plain[:count].all() and not plain[2 * count :].any()
        assert np.array_equal(keyed_windows(windows, energy, floor, scratch), plain)
        loud = windows[:count]  # every window above the gate: the path without a subset
        assert np.array_equal(
            keyed_windows(loud, None, None, scratch), keyed_windows(loud, None, None)
        )


def test_channel_counts_changing_between_calls_do_not_mix_channels() -> None:
    """The work arrays outlive a call: a call with fewer channels (or other block sizes) than
    the last must not see the last one's rows (each channel's output equals what a masker of
    its own gives)."""
    rng = np.random.default_rng(4)
    audio = [voice(4000, seed=n) for n in range(6)]
    audio[2][1200:1700] += key_tone(852.0, 1477.0, 500, -6.0)
    audio[5][2000:2600] += key_tone(697.0, 1209.0, 600, -12.0)
    shared = ToneMasker()
    slots = [shared.add_channel() for _ in audio]
    alone = [ToneMasker() for _ in audio]
    alone_slots = [m.add_channel() for m in alone]
    fed = [0] * len(audio)
    got: list[list[np.ndarray]] = [[] for _ in audio]
    want: list[list[np.ndarray]] = [[] for _ in audio]
    step = 0
    while min(fed) < 3600:
        size = (160, 80, 320, 160)[step % 4]  # and the block size changing too
        step += 1
        members = [n for n in rng.permutation(len(audio)) if fed[n] < 3600][: rng.integers(1, 7)]
        block = np.stack([audio[n][fed[n] : fed[n] + size] for n in members]).astype(np.int16)
        out = shared.process([slots[n] for n in members], block)
        for row, n in enumerate(members):
            got[n].append(out[row])
            want[n].append(alone[n].process([alone_slots[n]], block[row : row + 1])[0])
            fed[n] += size
    for n in range(len(audio)):
        assert np.array_equal(np.concatenate(got[n]), np.concatenate(want[n]))
    assert shared.masked_blocks > 0


# ---- the screen: a cheap first stage that must pass every window the full test keys ----------


def probe_test_everywhere(windows: np.ndarray, energy: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """What `keyed_windows` answered before the screen: the full test on every loud window."""
    keyed = np.zeros(len(windows), dtype=bool)
    loud = energy >= GATE_POWER
    base = energy[loud] - np.minimum(floor[loud], 0.5 * energy[loud])
    keyed[loud] = probe_test(windows[loud], base)
    return keyed


def windows_of(audio: np.ndarray, step: int) -> np.ndarray:
    """Every window of `audio` starting `step` samples apart, rounded to int16 as the line's."""
    ints = np.clip(np.round(audio), -32768, 32767)
    view = np.lib.stride_tricks.sliding_window_view(ints, WINDOW)[::step]
    return np.ascontiguousarray(view, dtype=np.float32)


def floors_for(energy: np.ndarray, line: np.ndarray) -> list[np.ndarray]:
    """A fresh channel's floor, the line's own noise (its quietest window), and none at all:
    the floor only ever makes a window more likely keyed (more of it discounted)."""
    quiet = float(window_energy(windows_of(line, BLOCK)).min()) if line.any() else 0.0
    return [np.full(len(energy), value, dtype=np.float32) for value in (FLOOR_START, quiet, 0.0)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    row=st.sampled_from(ROWS),
    col=st.sampled_from(COLS),
    row_off=st.floats(-0.035, 0.035),
    col_off=st.floats(-0.035, 0.035),
    level=st.floats(-30.0, 0.0),
    twist=st.floats(-4.0, 8.0),
    length=st.integers(40, 960),
    onset=st.integers(0, WINDOW - 1),
    phases=st.tuples(st.floats(0.0, 6.3), st.floats(0.0, 6.3)),
    mix=st.sampled_from(["none", "speech", "noise"]),
    mix_dbm0=st.floats(-60.0, -5.0),
    seed=st.integers(0, 2**16),
)
def test_the_screen_passes_every_window_the_full_test_keys(
    row: float,
    col: float,
    row_off: float,
    col_off: float,
    level: float,
    twist: float,
    length: int,
    onset: int,
    phases: tuple[float, float],
    mix: str,
    mix_dbm0: float,
    seed: int,
) -> None:
    """Keys at the tone bench's extremes (0 to -30 dBm0, twist -4 to +8 dB, ±3.5 % off
    frequency, 5 to 120 ms, starting anywhere in a window, any phases), alone, over speech or
    over white noise (-60 to -5 dBm0), with each floor a channel can have: every window the
    40-probe test keys passes the screen, so `keyed_windows` (the screen, then that test) keys
    the same windows as the test alone."""
    total = WINDOW + onset + length + WINDOW
    t = np.arange(length) / 8000
    amplitude = DBM0_PEAK * 10 ** (level / 20)
    low = amplitude / np.sqrt(1 + 10 ** (-twist / 10))
    high = low * 10 ** (-twist / 20)
    audio = np.zeros(total)
    audio[WINDOW + onset : WINDOW + onset + length] = low * np.sin(
        2 * np.pi * row * (1 + row_off) * t + phases[0]
    ) + high * np.sin(2 * np.pi * col * (1 + col_off) * t + phases[1])
    line = np.zeros(total)
    if mix == "speech":  # voice() is at about -15 dBm0
        line = voice(total, seed) * 10 ** ((mix_dbm0 + 15) / 20)
    elif mix == "noise":
        rng = np.random.default_rng(seed)
        line = rng.normal(0, DBM0_PEAK * 10 ** (mix_dbm0 / 20) / np.sqrt(2), total)
    windows = windows_of(audio + line, 8)
    energy = window_energy(windows)
    loud = energy >= GATE_POWER
    for floor in floors_for(energy, line):
        base = energy[loud] - np.minimum(floor[loud], 0.5 * energy[loud])
        keyed = probe_test(windows[loud], base)
        passed = screen(windows[loud], base)
        assert not (keyed & ~passed).any()


def keys_speech_and_noise(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` windows of keys (±3.5 %, 0 to -30 dBm0, twist -4 to +8 dB, filling the window
    or part of it) over speech or noise or nothing, then as many of speech and of random-byte
    G.711 noise alone: (windows, their energy, floors: the line's own or a fresh channel's)."""
    rng = np.random.default_rng(seed)
    speech = np.concatenate([voice(8000, s, p) for s, p in ((1, 110.0), (2, 140.0), (3, 210.0))])
    out = []
    for n in range(count):
        low = ROWS[n % 4] * (1 + rng.uniform(-0.035, 0.035))
        high = COLS[(n // 4) % 4] * (1 + rng.uniform(-0.035, 0.035))
        length = int(rng.integers(40, 400))
        audio = np.zeros(3 * WINDOW + 400)
        at = int(rng.integers(max(0, WINDOW - length + 1), 2 * WINDOW))  # overlapping the window
        audio[at : at + length] = key_tone(
            low, high, length, rng.uniform(-30, 0), rng.uniform(-4, 8)
        )
        kind = n % 3
        if kind == 1:
            start = int(rng.integers(0, speech.size - audio.size))
            audio += speech[start : start + audio.size] * 10 ** (rng.uniform(-40, 0) / 20)
        elif kind == 2:
            rms = DBM0_PEAK * 10 ** (rng.uniform(-60, -30) / 20) / np.sqrt(2)
            audio += rng.normal(0, rms, audio.size)
        out.append(audio[WINDOW : 2 * WINDOW])
    for _ in range(count):
        start = int(rng.integers(0, speech.size - WINDOW))
        out.append(speech[start : start + WINDOW] * 10 ** (rng.uniform(-30, 5) / 20))
    noise = ULAW_TO_LINEAR[rng.integers(0, 256, (count, WINDOW))].astype(np.float64)
    windows = np.clip(np.round(np.concatenate([np.stack(out), noise])), -32768, 32767)
    windows = windows.astype(np.float32)
    energy = window_energy(windows)
    floor = np.where(
        rng.random(len(windows)) < 0.5, energy * rng.uniform(0, 1.2, len(windows)), FLOOR_START
    ).astype(np.float32)
    return windows, energy, floor


def test_keyed_windows_decides_as_the_full_test_alone() -> None:
    """The screen changes the cost, not the answer: the same keyed windows as the 40-probe
    test on every loud window (keys, speech, noise; with work arrays kept and without)."""
    windows, energy, floor = keys_speech_and_noise(3000, seed=7)
    want = probe_test_everywhere(windows, energy, floor)
    assert 1000 < want.sum() < 3000  # most keys keyed, speech and noise not
    assert np.array_equal(keyed_windows(windows, energy, floor), want)
    scratch = Scratch()
    scratch.ensure(len(windows))
    assert np.array_equal(keyed_windows(windows, energy, floor, scratch), want)
    noisy = windows[-3000:]  # every window loud: the path without a subset
    assert np.array_equal(
        keyed_windows(noisy, None, None, scratch),
        probe_test_everywhere(noisy, window_energy(noisy), np.zeros(3000, np.float32)),
    )


def test_the_screen_keeps_a_margin_and_rules_out_noise() -> None:
    """How lenient the screen is, measured: over the keyed windows above, the screen's figures
    stay at least 1.5x its thresholds (each tone, the pair, the pair's share of the energy: a
    window would fail it only if the figures fell to SCREEN_SLACK of the full test's
    thresholds), and it passes few random-byte noise windows (the benchmark's every window)."""
    windows, energy, floor = keys_speech_and_noise(3000, seed=8)
    keyed = probe_test_everywhere(windows, energy, floor)
    base = energy - np.minimum(floor, 0.5 * energy)
    row, col = screen_strongest(windows[keyed])
    pair = row + col
    margin = np.minimum.reduce(
        [
            row / MIN_TONE_POWER,
            col / MIN_TONE_POWER,
            pair / MIN_PAIR_POWER,
            pair / (MIN_FRACTION * base[keyed]),
        ]
    )
    assert margin.min() >= 1.5 * SCREEN_SLACK, margin.min()
    noise = windows[-3000:]
    noise_energy = energy[-3000:]
    # the floor at the line's noise
    passed = screen(noise, noise_energy - np.float32(0.5) * noise_energy)
    assert passed.mean() < 0.05


# ---- the masks written: all of a tick's masked blocks at once ---------------------------------


def _mask_block_by_block(
    masker: ToneMasker, rows: np.ndarray, out: np.ndarray, hit: np.ndarray, masked: np.ndarray
) -> None:
    """The masks as they were written before: one block at a time (the reference)."""
    from spg_media.rtp.masking import (
        _FADE_IN,
        MASK_NOISE_RMS,
        MASK_TONE_HZ,
        MASKS,
        RAMP,
        RATE,
    )

    before = np.concatenate([masker._was_masked[rows][:, None], hit[:, :-1]], axis=1)
    after = masked[:, 1:]
    for c, k in zip(*np.nonzero(hit), strict=True):
        row = rows[c]
        kind = MASKS[masker._mask_kind[row]]
        start = k * BLOCK
        if kind == "silence":
            fill = np.zeros(BLOCK, dtype=np.float32)
        elif kind == "noise":
            fill = masker._rng.normal(0.0, MASK_NOISE_RMS, BLOCK).astype(np.float32)
        else:
            t = masker._phase[row] + start + np.arange(BLOCK)
            fill = (MASK_TONE_PEAK * np.sin(2.0 * np.pi * MASK_TONE_HZ * t / RATE)).astype(
                np.float32
            )
        if not before[c, k]:
            fill[:RAMP] *= _FADE_IN
        if not after[c, k]:
            fill[-RAMP:] *= _FADE_IN[::-1]
        out[c, start : start + BLOCK] = np.round(fill).astype(np.int16)


@pytest.mark.parametrize("seed", range(5))
def test_masks_written_at_once_are_those_written_block_by_block(seed: int) -> None:
    """Every channel's mask kind, phase and edge (fades in and out), the noise drawn in the
    same order: the same samples, bit for bit, and nothing else touched."""
    rng = np.random.default_rng(seed)
    channels, blocks = 60, 8
    ours, reference = ToneMasker(seed=seed), ToneMasker(seed=seed)
    kinds = rng.choice(["tone", "silence", "noise"], channels)
    for masker in (ours, reference):
        for kind in kinds:
            masker.add_channel(str(kind))
    rows = rng.permutation(channels)[: channels - 7].astype(np.intp)  # not every slot, shuffled
    phases = rng.integers(0, 10**7, channels)
    was = rng.random(channels) < 0.5
    for masker in (ours, reference):
        masker._phase[:channels] = phases
        masker._was_masked[:channels] = was
    masked = rng.random((len(rows), blocks + 1)) < 0.35
    hit = masked[:, :blocks]
    audio = rng.integers(-20000, 20000, (len(rows), blocks * BLOCK)).astype(np.int16)
    got, want = audio.copy(), audio.copy()
    ours._mask(rows, got, hit, masked)
    _mask_block_by_block(reference, rows, want, hit, masked)
    assert np.array_equal(got, want)
    untouched = np.repeat(~hit, BLOCK, axis=1)
    assert np.array_equal(got[untouched], audio[untouched])
    assert ours.masked_blocks == int(hit.sum())
    # and the generators are left in the same state (the next tick's noise is the same too)
    assert ours._rng.normal() == reference._rng.normal()
