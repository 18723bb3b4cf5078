"""In-band DTMF detector: the accuracy targets, each over generated signals.

Levels are in dBm0 as in the module (0 dBm0 sine peak = 32767 × 10^(-3.14/20)), for the two
tones together; twist is row (low group) minus column (high group) level, so +8 dB is "normal"
twist and -4 dB "reverse" twist.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import Iterable
from dataclasses import replace
from io import BytesIO
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spg_media.dtmf.inband import DBM0_PEAK, KEYS, InbandDetector, scan
from spg_media.dtmf.rfc4733 import DtmfEvent
from spg_media.rtp import g711

RATE = 8000
ROWS = (697.0, 770.0, 852.0, 941.0)
COLS = (1209.0, 1336.0, 1477.0, 1633.0)
Audio = npt.NDArray[np.float64]


def tone(
    digit: str,
    ms: float,
    level: float = -10.0,
    twist: float = 0.0,
    offset: tuple[float, float] = (0.0, 0.0),
    rng: np.random.Generator | None = None,
) -> Audio:
    """A digit's two tones: `level` dBm0 both together, `twist` dB row over column, each
    frequency off by a relative `offset`, random phases."""
    rng = rng or np.random.default_rng(0)
    row, col = divmod(KEYS.index(digit), 4)
    t = np.arange(round(ms * RATE / 1000)) / RATE
    power = 10.0 ** (level / 10.0)
    col_power = power / (1.0 + 10.0 ** (twist / 10.0))
    amps = DBM0_PEAK * np.sqrt([power - col_power, col_power])
    phases = rng.uniform(0, 2 * np.pi, 2)
    f_row, f_col = ROWS[row] * (1 + offset[0]), COLS[col] * (1 + offset[1])
    return np.asarray(
        amps[0] * np.cos(2 * np.pi * f_row * t + phases[0])
        + amps[1] * np.cos(2 * np.pi * f_col * t + phases[1])
    )


def silence(ms: float) -> Audio:
    return np.zeros(round(ms * RATE / 1000))


def keyed(digits: str, on: float = 70, off: float = 70, lead: float = 100, **kw: object) -> Audio:
    parts = [silence(lead)]
    for digit in digits:
        parts += [tone(digit, on, **kw), silence(off)]  # type: ignore[arg-type]
    parts.append(silence(lead))
    return np.concatenate(parts)


def with_noise(audio: Audio, snr_db: float, signal_power: float, seed: int = 1) -> Audio:
    rng = np.random.default_rng(seed)
    noisy: Audio = audio + rng.standard_normal(audio.size) * np.sqrt(
        signal_power / 10 ** (snr_db / 10)
    )
    return noisy


def dbm0_power(level: float) -> float:
    return float(DBM0_PEAK**2 / 2 * 10 ** (level / 10))


def digits_of(audio: Audio) -> str:
    return "".join(d for d, _, _ in scan(audio))


# ---- the basics ----------------------------------------------------------------------------------


def test_all_sixteen_digits_with_their_times() -> None:
    found = scan(keyed(KEYS, on=70, off=70, lead=100))
    assert "".join(d for d, _, _ in found) == KEYS
    for i, (_digit, start, end) in enumerate(found):
        assert start == pytest.approx(100 + 140 * i, abs=2.0)
        assert end == pytest.approx(170 + 140 * i, abs=2.0)


def test_events_carry_source_and_duration_and_never_show_the_digit() -> None:
    detector = InbandDetector()
    slot = detector.add_channel()
    audio = keyed("7", on=80, off=100)
    events = detector.process([slot], audio[None, :], audio.size / RATE)
    assert [e.kind for _, e in events] == ["start", "end"]
    start, end = events[0][1], events[1][1]
    assert {e.source for _, e in events} == {"inband"}
    assert start.digit == end.digit == "7"
    assert end.duration_ms == pytest.approx(80, abs=2.0)
    assert start.at == pytest.approx(0.1, abs=0.002)
    for _, event in events:  # the repr is the same whatever the digit
        assert repr(event) == repr(replace(event, digit="0")) == str(event)
        assert "digit" not in repr(event)


def test_repr_hides_every_digit() -> None:
    for digit in KEYS:
        shown = repr(DtmfEvent(digit, "start", 1.25, None, "inband"))
        assert f"'{digit}'" not in shown and "digit" not in shown


# ---- frequency tolerance: ±1.5 % accepted, ±3.5 % rejected, all eight tones ----------------------

# Each tone with a partner of the other group: the row tones with 1336 Hz, the columns with 770.
TONE_CASES = [(ROWS[r], KEYS[4 * r + 1], 0) for r in range(4)] + [
    (COLS[c], KEYS[4 + c], 1) for c in range(4)
]


@pytest.mark.parametrize(
    ("freq", "digit", "which"), TONE_CASES, ids=[str(c[0]) for c in TONE_CASES]
)
@pytest.mark.parametrize("offset", [-0.015, 0.015])
def test_within_one_and_a_half_percent_accepted(
    freq: float, digit: str, which: int, offset: float
) -> None:
    off = (offset, 0.0) if which == 0 else (0.0, offset)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        assert digits_of(keyed(digit, on=60, offset=off, rng=rng)) == digit, (freq, offset)


@pytest.mark.parametrize(
    ("freq", "digit", "which"), TONE_CASES, ids=[str(c[0]) for c in TONE_CASES]
)
@pytest.mark.parametrize("offset", [-0.035, 0.035, -0.05, 0.05])
def test_three_and_a_half_percent_off_rejected(
    freq: float, digit: str, which: int, offset: float
) -> None:
    off = (offset, 0.0) if which == 0 else (0.0, offset)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        assert digits_of(keyed(digit, on=80, offset=off, rng=rng)) == "", (freq, offset)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    digit=st.sampled_from(KEYS),
    row_off=st.floats(-0.015, 0.015),
    col_off=st.floats(-0.015, 0.015),
    twist=st.floats(-4.0, 8.0),
    level=st.floats(-36.0, 0.0),
    seed=st.integers(0, 2**16),
)
def test_any_tone_in_spec_is_read(
    digit: str, row_off: float, col_off: float, twist: float, level: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    audio = keyed(digit, on=45, level=level, twist=twist, offset=(row_off, col_off), rng=rng)
    assert digits_of(audio) == digit


# ---- timing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ms", [40, 45, 60])
def test_tones_of_40_ms_or_more_accepted(ms: float) -> None:
    rng = np.random.default_rng(int(ms))
    for digit in KEYS:
        assert digits_of(keyed(digit, on=ms, rng=rng)) == digit


@pytest.mark.parametrize("ms", [5, 10, 15, 19])
def test_tones_under_20_ms_rejected(ms: float) -> None:
    rng = np.random.default_rng(int(ms))
    for digit in KEYS:
        audio = keyed(digit, on=ms, rng=rng)
        assert digits_of(audio) == ""
        noisy = with_noise(audio, 15, dbm0_power(-10))
        assert digits_of(noisy) == ""


def starts_per_channel(audio: npt.NDArray[np.int16], block: int = 160) -> list[str]:
    """Feed each row as one channel of a detector, `block` samples a call; the digits started."""
    detector = InbandDetector()
    slots = [detector.add_channel() for _ in range(audio.shape[0])]
    found = [""] * audio.shape[0]
    for begin in range(0, audio.shape[1], block):
        now = (begin + block) / RATE
        for slot, event in detector.process(slots, audio[:, begin : begin + block], now):
            if event.kind == "start":
                found[slot] += event.digit
    return found


def test_19_ms_tones_rejected_at_any_phase_level_and_twist_with_noise() -> None:
    # The start rule times the tones to the sample: 19 ms is 7 samples short of it.
    rng = np.random.default_rng(19)
    rows = []
    for i, (level, twist, snr) in enumerate(
        (level, twist, snr)
        for level in (-36.0, -20.0, 0.0)
        for twist in (-4.0, 0.0, 8.0)
        for snr in (None, 15.0)
    ):
        for k, digit in enumerate(KEYS):
            lead = 60 + (7 * k + 3 * i) % 20 + rng.uniform(0, 1)  # every phase of a 20 ms tick
            offset = (rng.choice([-0.015, 0.0, 0.015]), rng.choice([-0.015, 0.0, 0.015]))
            burst = tone(digit, 19, level=level, twist=twist, offset=offset, rng=rng)
            audio = np.concatenate([silence(lead), burst, silence(200 - lead)])[:2400]
            if snr is not None:
                audio = with_noise(audio, snr, dbm0_power(level), seed=i * 16 + k)
            rows.append(np.rint(audio).astype(np.int16))
    assert starts_per_channel(np.stack(rows)) == [""] * len(rows)


@pytest.mark.parametrize("gap", [2, 5, 8, 10])
def test_interruptions_up_to_10_ms_are_bridged(gap: float) -> None:
    rng = np.random.default_rng(int(gap))
    for digit in KEYS:
        audio = np.concatenate(
            [silence(50), tone(digit, 60, rng=rng), silence(gap), tone(digit, 60, rng=rng)]
        )
        found = scan(np.concatenate([audio, silence(80)]))
        assert [d for d, _, _ in found] == [digit]
        assert found[0][2] - found[0][1] == pytest.approx(120 + gap, abs=3.0)


@pytest.mark.parametrize("gap", [40, 50, 100])
def test_gaps_of_40_ms_split_repeated_digits(gap: float) -> None:
    rng = np.random.default_rng(int(gap))
    for digit in KEYS:
        audio = np.concatenate(
            [silence(50), tone(digit, 60, rng=rng), silence(gap), tone(digit, 60, rng=rng)]
        )
        assert digits_of(np.concatenate([audio, silence(80)])) == digit * 2


def test_ten_digits_a_second_read_exactly() -> None:
    rng = np.random.default_rng(10)
    for _ in range(4):
        digits = "".join(rng.choice(list(KEYS), 30))
        audio = keyed(digits, on=50, off=50, level=-15, rng=rng)
        assert digits_of(with_noise(audio, 20, dbm0_power(-15))) == digits


# ---- twist, level, noise -------------------------------------------------------------------------


@pytest.mark.parametrize("twist", [8.0, 4.0, 0.0, -2.0, -4.0])
def test_twist_8_db_normal_and_4_db_reverse_accepted(twist: float) -> None:
    rng = np.random.default_rng(int(twist * 10) + 100)
    for level in (-5.0, -25.0):
        audio = keyed(KEYS, on=50, level=level, twist=twist, rng=rng)
        assert digits_of(audio) == KEYS, (twist, level)


@pytest.mark.parametrize("level", [0.0, -6.0, -12.0, -20.0, -30.0, -36.0])
def test_levels_0_to_minus_36_dbm0_accepted(level: float) -> None:
    rng = np.random.default_rng(int(-level))
    assert digits_of(keyed(KEYS, on=50, level=level, rng=rng)) == KEYS


def test_minus_36_dbm0_with_8_db_twist_accepted() -> None:
    # The weaker tone is then at -44.6 dBm0.
    rng = np.random.default_rng(36)
    assert digits_of(keyed(KEYS, on=50, level=-36, twist=8, rng=rng)) == KEYS


@pytest.mark.parametrize("level", [-50.0, -55.0, -60.0])
def test_below_minus_50_dbm0_ignored(level: float) -> None:
    rng = np.random.default_rng(int(-level))
    assert digits_of(keyed(KEYS, on=80, level=level, rng=rng)) == ""


@pytest.mark.parametrize(("level", "twist"), [(-10.0, 0.0), (-20.0, 8.0), (-20.0, -4.0)])
def test_white_noise_at_15_db_snr_every_digit_detected(level: float, twist: float) -> None:
    for seed in range(3):
        rng = np.random.default_rng(seed)
        digits = "".join(rng.choice(list(KEYS), 16))
        audio = keyed(digits, on=50, off=60, level=level, twist=twist, rng=rng)
        assert digits_of(with_noise(audio, 15, dbm0_power(level), seed)) == digits


# ---- G.711 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_g711_round_trip(codec: str) -> None:
    rng = np.random.default_rng(711)
    for level in (0.0, -20.0, -36.0):
        audio = keyed(KEYS, on=50, level=level, rng=rng)
        decoded = g711.decode(g711.encode(audio, codec), codec)
        assert digits_of(decoded.astype(np.float64)) == KEYS, (codec, level)


# ---- batching and feeding ------------------------------------------------------------------------


def run_blocks(audio: Audio, block: int) -> list[tuple[str, str, float]]:
    """Feed one channel `block` samples at a time; (kind, digit, at) of every event."""
    detector = InbandDetector()
    slot = detector.add_channel()
    samples = np.rint(audio).astype(np.int16)
    out: list[tuple[str, str, float]] = []
    for begin in range(0, samples.size, block):
        chunk = samples[begin : begin + block]
        for _, event in detector.process([slot], chunk[None, :], (begin + chunk.size) / RATE):
            out.append((event.kind, event.digit, event.at))
    return out


def test_any_block_size_gives_the_same_digits_and_times() -> None:
    rng = np.random.default_rng(5)
    audio = with_noise(keyed("159#*0D", on=60, off=80, level=-12, rng=rng), 25, dbm0_power(-12))
    reference = run_blocks(audio, 160)
    assert "".join(d for k, d, _ in reference if k == "start") == "159#*0D"
    for block in (1, 37, 1000, 80, 8000):
        events = run_blocks(audio, block)
        assert [(k, d) for k, d, _ in events] == [(k, d) for k, d, _ in reference], block
        for (_, _, at), (_, _, ref_at) in zip(events, reference, strict=True):
            assert at == pytest.approx(ref_at, abs=1e-3), block


def test_many_channels_at_once_same_as_one_at_a_time() -> None:
    rng = np.random.default_rng(6)
    channels = 24
    length = 8000
    streams = []
    for c in range(channels):
        digits = "".join(rng.choice(list(KEYS), 4))
        audio = keyed(digits, on=50 + c, off=60 + 2 * c, lead=30 + 7 * c, level=-5 - c, rng=rng)
        audio = with_noise(audio, 20, dbm0_power(-5 - c), seed=c)
        streams.append(np.rint(np.resize(audio, length)).astype(np.int16))
    block = np.stack(streams)

    together = InbandDetector()
    slots = [together.add_channel() for _ in range(channels)]
    batch: dict[int, list[tuple[str, str, float]]] = {s: [] for s in slots}
    for begin in range(0, length, 160):
        now = (begin + 160) / RATE
        for slot, event in together.process(slots, block[:, begin : begin + 160], now):
            batch[slot].append((event.kind, event.digit, round(event.at, 4)))

    for c in range(channels):
        alone = InbandDetector()
        slot = alone.add_channel()
        single = []
        for begin in range(0, length, 160):
            now = (begin + 160) / RATE
            for _, event in alone.process([slot], block[c : c + 1, begin : begin + 160], now):
                single.append((event.kind, event.digit, round(event.at, 4)))
        assert batch[slots[c]] == single, c
        assert single  # every stream has digits


def test_starts_checked_in_one_batch_same_as_one_at_a_time() -> None:
    # A start's checks are made for many channels at once, ahead of the sub-block where they
    # count; tones ramping up and digits back to back without a gap take the other path
    # (checks made in the loop), as do more of the starts in calls of 10 sub-blocks: each
    # channel's events must not depend on the others or on the path.
    rng = np.random.default_rng(21)
    channels, length = 16, 6400
    streams = []
    for c in range(channels):
        parts = [silence(20 + 9 * c)]
        for digit in rng.choice(list(KEYS), 3):
            burst = tone(str(digit), 60 + 3 * c, level=-8 - c, rng=rng)
            if c % 3 == 1:  # no abrupt onset: the tones ramp up over 15 ms
                burst[:120] *= np.linspace(0.0, 1.0, 120)
            parts += [burst, silence(0 if c % 3 == 2 else 50)]  # back to back on every third
        audio = with_noise(np.concatenate(parts), 25, dbm0_power(-8 - c), seed=c)
        streams.append(np.rint(np.resize(audio, length)).astype(np.int16))
    block = np.stack(streams)

    def run(rows: list[int], size: int) -> dict[int, list[tuple[str, str, float]]]:
        detector = InbandDetector()
        slots = [detector.add_channel() for _ in rows]
        seen: dict[int, list[tuple[str, str, float]]] = {row: [] for row in rows}
        for begin in range(0, length, size):
            now = (begin + size) / RATE
            for slot, event in detector.process(slots, block[rows, begin : begin + size], now):
                seen[rows[slot]].append((event.kind, event.digit, round(event.at, 4)))
        return seen

    everyone = list(range(channels))
    for size in (160, 400):
        together = run(everyone, size)
        for c in everyone:
            assert together[c] == run([c], size)[c], (size, c)
            assert together[c], (size, c)  # every stream has digits


def test_digits_back_to_back_sharing_a_tone_each_start_whatever_the_block_size() -> None:
    # No gap between digits that share a row or a column tone ('4' then '5' share 770 Hz): a
    # 5 ms correlator still hears the old digit's lost tone in its neighbour, so the old digit
    # looks present throughout, and the windows across the change look like a glide. The new
    # digit must still start, the old one end where the new one began, and the events must
    # not depend on the size of the blocks fed. (Out of spec, as keypads leave a gap: a digit
    # after a change is dated within 5 ms, the first one within 2; the old one may seem to end
    # a few ms after the new one began.)
    rng = np.random.default_rng(8)
    cases = ["456", "*70", "2580", "147*", "3692", "BC"]  # along a row, down a column, both
    for n, keys in enumerate(cases):
        for level in (-8.0, -22.0, -33.0):
            parts = [silence(45)] + [tone(key, 90, level=level, rng=rng) for key in keys]
            audio = with_noise(
                np.concatenate([*parts, silence(120)]), 25, dbm0_power(level), seed=n
            )
            seen = []
            for size in (80, 160, 400):
                detector = InbandDetector()
                slot = detector.add_channel()
                events = []
                for begin in range(0, audio.size, size):
                    chunk = audio[None, begin : begin + size]
                    now = (begin + chunk.shape[1]) / RATE
                    events += [e for _, e in detector.process([slot], chunk, now)]
                starts = [e for e in events if e.kind == "start"]
                ends = [e for e in events if e.kind == "end"]
                assert "".join(e.digit for e in starts) == keys, (keys, level, size)
                assert starts[0].at == pytest.approx(0.045, abs=0.002)
                assert ends[-1].at == pytest.approx(0.045 + 0.09 * len(keys), abs=0.002)
                for i, start in enumerate(starts):
                    assert start.at == pytest.approx(0.045 + 0.09 * i, abs=0.0055), (keys, i)
                    duration = (ends[i].duration_ms or 0.0) / 1000
                    assert ends[i].at - start.at == pytest.approx(duration, abs=1e-4)
                    assert ends[i].at <= (starts[i + 1].at + 0.008 if i + 1 < len(keys) else 1.0)
                seen.append([(e.kind, e.digit, round(e.at, 4)) for e in events])
            assert seen[0] == seen[1] == seen[2], (keys, level)


def varied_lines(length: int = 16000) -> npt.NDArray[np.int16]:
    """24 channels (rows) of what may happen on a line: keys with gaps, keys changing with no gap
    (sharing a tone or not), ramped onsets, short dropouts early in a key and late in it, a third
    tone that makes a key impure, keys too short, keys in noise, and music gliding into the
    band."""
    rng = np.random.default_rng(31)

    def key(digit: str, ms: float, level: float) -> Audio:
        return tone(digit, ms, level=level, rng=rng)

    def gapped(c: int, level: float) -> Audio:
        parts: list[Audio] = [silence(15 + 7 * c)]
        for digit in rng.choice(list(KEYS), 5):
            burst = key(str(digit), rng.uniform(35, 110), level)
            kind = c % 6
            if kind == 1:  # ramped onset
                burst[:120] *= np.linspace(0.0, 1.0, 120)
            elif kind == 2:  # a 5-9 ms burst of noise 8-30 ms in, or near the end
                at = int(rng.uniform(64, 240)) if rng.random() < 0.7 else burst.size - 120
                span = slice(at, at + int(rng.uniform(40, 72)))
                loud = DBM0_PEAK * 10 ** (level / 20) * 2.0
                burst[span] += rng.standard_normal(burst[span].size) * loud
            elif kind == 3:  # a third tone over the first half of the key: impure, then not
                t = np.arange(burst.size // 2) / RATE
                third = DBM0_PEAK * 10 ** (level / 20) * 0.5 * np.sin(2 * np.pi * 1100 * t)
                burst[: t.size] += third
            parts += [burst, silence(rng.uniform(15, 80))]
        return np.concatenate(parts)

    streams = []
    changes = ["456", "*70", "2580", "147*", "3692", "1593", "BCD#", "A3"]
    for c in range(24):
        level = -6.0 - c
        if c % 8 == 7:
            audio = music(2.0, seed=c)
        elif c % 4 == 2:  # keys changing with no gap at all
            keys = changes[c // 4]
            parts = [silence(30)] + [key(k, rng.uniform(50, 100), level) for k in keys]
            audio = with_noise(np.concatenate([*parts, silence(60)]), 25, dbm0_power(level), c)
        else:
            audio = with_noise(gapped(c, level), 18 + c % 7, dbm0_power(level), seed=c)
        streams.append(np.rint(np.resize(audio, length)).astype(np.int16))
    return np.stack(streams)


def test_state_machine_one_channel_at_a_time_decides_as_the_vectorised_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Up to ROWS_ONE_BY_ONE channels the state machine runs on Python scalars, beyond on
    # arrays: each must give exactly the same events (times included), whatever happens on
    # the line (varied_lines).
    from spg_media.dtmf.inband import decisions

    block = varied_lines()
    length = block.shape[1]
    machines_run: list[str] = []

    def counted(machine: Any) -> Any:
        def run_machine(*args: Any) -> None:
            machines_run.append(machine.__name__)
            machine(*args)

        return run_machine

    for machine in (decisions.decide_each, decisions.decide_vectorised):
        monkeypatch.setattr(decisions, machine.__name__, counted(machine))

    def run(one_by_one: int, size: int) -> list[tuple[int, str, str, float, float | None]]:
        monkeypatch.setattr(decisions, "ROWS_ONE_BY_ONE", one_by_one)
        machines_run.clear()
        detector = InbandDetector()
        slots = [detector.add_channel() for _ in range(block.shape[0])]
        seen = []
        for begin in range(0, length, size):
            now = (begin + size) / RATE
            for slot, e in detector.process(slots, block[:, begin : begin + size], now):
                seen.append((slot, e.kind, e.digit, e.at, e.duration_ms))
        # The machine asked for, and it alone, made the decisions.
        assert set(machines_run) == {"decide_each" if one_by_one else "decide_vectorised"}
        return sorted(seen, key=lambda event: event[0])  # each channel's in order

    for size in (160, 400):
        vectorised = run(0, size)
        assert len(vectorised) > 100
        assert run(10**6, size) == vectorised, size


def test_both_state_machines_leave_the_same_state_call_by_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stricter than the events alone: at every call of the decision machine, both machines,
    # given the same evidence and state, leave every field of the state equal (digit, onset,
    # end, reference amplitudes, absences, candidate, its onset, misses and need, taint) and
    # make the same events, in the same order for each channel (the scalar machine makes them
    # channel by channel, the vectorised one sub-block by sub-block).
    import copy
    import dataclasses

    from spg_media.dtmf.inband import decisions

    compared: list[int] = []
    scalar, vectorised = decisions.decide_each, decisions.decide_vectorised

    def both(evidence: Any, state: Any, checks: Any, events: Any) -> None:
        twin_state = copy.deepcopy(state)
        twin_events: list[Any] = []
        vectorised(copy.deepcopy(evidence), twin_state, copy.deepcopy(checks), twin_events)
        before = len(events)
        scalar(evidence, state, checks, events)
        for field in dataclasses.fields(state):
            mine, twin_value = getattr(state, field.name), getattr(twin_state, field.name)
            assert np.array_equal(mine, twin_value), field.name
        made = [(slot, e.kind, e.digit, e.at, e.duration_ms) for slot, e in events[before:]]
        twin = [(slot, e.kind, e.digit, e.at, e.duration_ms) for slot, e in twin_events]
        assert sorted(made, key=lambda event: event[0]) == sorted(twin, key=lambda e: e[0])
        compared.append(len(made))

    monkeypatch.setattr(decisions, "decide_each", both)
    monkeypatch.setattr(decisions, "ROWS_ONE_BY_ONE", 10**6)
    block = varied_lines()
    for size in (160, 240):
        detector = InbandDetector()
        slots = [detector.add_channel() for _ in range(block.shape[0])]
        for begin in range(0, block.shape[1], size):
            detector.process(slots, block[:, begin : begin + size], (begin + size) / RATE)
    assert len(compared) > 100 and sum(compared) > 100


def test_same_digits_whether_the_other_channels_are_quiet_or_busy() -> None:
    # With most channels quiet the screen first glances at every 4th sample; with most busy it
    # skips that glance: a channel's digits must not depend on which.
    rng = np.random.default_rng(13)
    audio = keyed("*5D0", on=45, off=60, level=-30, rng=rng)
    audio = with_noise(audio, 15, dbm0_power(-30), seed=13)
    ours = np.rint(audio).astype(np.int16)
    results = []
    for others in (np.zeros(ours.size), with_noise(np.zeros(ours.size), 0, dbm0_power(-20))):
        block = np.stack([ours] + [np.rint(others).astype(np.int16)] * 30)
        detector = InbandDetector()
        slots = [detector.add_channel() for _ in range(block.shape[0])]
        seen = []
        for begin in range(0, block.shape[1] - 159, 160):
            now = (begin + 160) / RATE
            for slot, event in detector.process(slots, block[:, begin : begin + 160], now):
                if slot == slots[0]:
                    seen.append((event.kind, event.digit, round(event.at, 4)))
        results.append(seen)
    assert "".join(d for k, d, _ in results[0] if k == "start") == "*5D0"
    assert results[0] == results[1]


def test_a_channels_past_is_its_own_whatever_calls_come_between_its_calls() -> None:
    # The media engine makes one call a tick for the channels that give 20 ms and one more per
    # other amount (channels behind after a stalled tick or a burst): several calls of other
    # channels can come between two calls of one channel. Its digits and their times must be
    # those it gets fed alone. (The detector once kept the audio of its last 4 calls only: a
    # tick of 5 calls lost a channel's past, and a 100 ms tone was missed or split in two.)
    rng = np.random.default_rng(21)
    keys = "4111111#"  # as the load kit keys a card: 100 ms tones, 200 ms apart, in line noise
    parts = [silence(95)]
    for key in keys:
        parts += [tone(key, 100, level=-12, rng=rng), silence(200)]
    audio = np.concatenate([*parts, silence(100)])
    audio = with_noise(audio, 45, dbm0_power(-12), seed=21)
    ours = np.rint(audio[: audio.size // 160 * 160]).astype(np.int16)
    others = np.rint(with_noise(keyed("2580" * 4, level=-20), 20, dbm0_power(-20), seed=22))

    def run(between: int) -> list[tuple[str, str, float, float | None]]:
        detector = InbandDetector()
        slot = detector.add_channel()
        crowd = [detector.add_channel() for _ in range(between)]
        fed = np.zeros(len(crowd), dtype=np.int64)
        seen: list[tuple[str, str, float, float | None]] = []
        for begin in range(0, ours.size, 160):
            now = (begin + 160) / RATE
            for _, event in detector.process([slot], ours[None, begin : begin + 160], now):
                seen.append((event.kind, event.digit, round(event.at, 4), event.duration_ms))
            for n, other in enumerate(crowd):  # each a call of its own, of another size
                size = 160 * (n + 2)
                chunk = np.resize(others[fed[n] : fed[n] + size], size)
                fed[n] = (fed[n] + size) % (others.size - size)
                detector.process([other], chunk[None, :].astype(np.int16), now)
        return seen

    alone = run(0)
    assert "".join(d for k, d, _, _ in alone if k == "start") == keys
    for between in (3, 4, 6):
        assert run(between) == alone, between


def test_slots_in_any_order_and_subsets() -> None:
    rng = np.random.default_rng(7)
    detector = InbandDetector()
    for _ in range(6):
        detector.add_channel()
    audio = np.rint(keyed("3", on=80, rng=rng)).astype(np.int16)
    audio = np.concatenate([audio, np.zeros(-audio.size % 160, dtype=np.int16)])
    seen: dict[int, str] = {}
    order = [5, 0, 3]  # the others get no audio at all: never a digit for them
    for begin in range(0, audio.size, 160):
        block = np.stack([audio[begin : begin + 160]] * len(order))
        for slot, event in detector.process(order, block, (begin + 160) / RATE):
            if event.kind == "start":
                seen[slot] = seen.get(slot, "") + event.digit
    assert seen == {5: "3", 0: "3", 3: "3"}


def test_lost_packets_do_not_crash_or_make_digits() -> None:
    rng = np.random.default_rng(8)
    detector = InbandDetector()
    slots = [detector.add_channel() for _ in range(4)]
    audio = np.rint(keyed("2580", on=100, off=100, level=-10, rng=rng)).astype(np.int16)
    audio = np.concatenate([audio, np.zeros(-audio.size % 160, dtype=np.int16)])
    starts: dict[int, str] = {s: "" for s in slots}
    for tick, begin in enumerate(range(0, audio.size, 160)):
        # Each channel loses a different packet now and then.
        present = [s for s in slots if (tick + s) % 7 != 0]
        block = np.stack([audio[begin : begin + 160]] * len(present))
        for slot, event in detector.process(present, block, (begin + 160) / RATE):
            if event.kind == "start":
                starts[slot] += event.digit
    for slot in slots:
        assert starts[slot] == "2580", slot


def test_a_long_pause_is_not_bridged_into_one_digit() -> None:
    rng = np.random.default_rng(9)
    detector = InbandDetector()
    slot = detector.add_channel()
    press = np.rint(tone("5", 200, rng=rng)).astype(np.int16)
    events: list[DtmfEvent] = []
    now = 0.0
    for begin in range(0, 160 * 5, 160):  # 100 ms of the tone
        now += 0.02
        events += [e for _, e in detector.process([slot], press[None, begin : begin + 160], now)]
    now += 1.0  # the channel is silent for a second (no packets), then the tone again
    for begin in range(0, 160 * 5, 160):
        now += 0.02
        events += [e for _, e in detector.process([slot], press[None, begin : begin + 160], now)]
    for _ in range(5):
        now += 0.02
        events += [e for _, e in detector.process([slot], np.zeros((1, 160), dtype=np.int16), now)]
    assert [(e.kind, e.digit) for e in events] == [
        ("start", "5"),
        ("end", "5"),
        ("start", "5"),
        ("end", "5"),
    ]
    first_end = events[1]
    assert first_end.at == pytest.approx(0.1, abs=0.011)  # where the audio stopped
    assert first_end.duration_ms is not None and first_end.duration_ms < 120


def test_without_gaps_from_time_the_times_given_only_date_the_events() -> None:
    # Built with gaps_from_time=False (the media engine, which reads gaps from RTP timestamps
    # and calls flush there), a channel whose audio comes 1 s after its last block is not
    # restarted: the same samples give the same decisions whatever the times given.
    rng = np.random.default_rng(9)
    press = np.rint(tone("5", 200, rng=rng)).astype(np.int16)
    audio = np.concatenate([press, np.zeros(800, dtype=np.int16)])
    seen = []
    for pause in (0.0, 1.0):
        detector = InbandDetector(gaps_from_time=False)
        slot = detector.add_channel()
        events: list[DtmfEvent] = []
        now = 0.0
        for begin in range(0, audio.size, 160):
            now += 0.02 + (pause if begin == 800 else 0.0)  # late from the 6th block on
            chunk = audio[None, begin : begin + 160]
            events += [e for _, e in detector.process([slot], chunk, now)]
        seen.append([(e.kind, e.digit, e.duration_ms) for e in events])
    assert [(kind, digit) for kind, digit, _ in seen[0]] == [("start", "5"), ("end", "5")]
    assert seen[1] == seen[0]


def test_flush_ends_a_digit_in_progress() -> None:
    rng = np.random.default_rng(10)
    detector = InbandDetector()
    slot = detector.add_channel()
    audio = np.rint(np.concatenate([silence(40), tone("9", 200, rng=rng)])).astype(np.int16)
    events = detector.process([slot], audio[None, :], audio.size / RATE)
    assert [(e.kind, e.digit) for _, e in events] == [("start", "9")]
    ended = detector.flush(slot, audio.size / RATE)
    assert [(e.kind, e.digit) for _, e in ended] == [("end", "9")]
    assert ended[0][1].at == pytest.approx(0.24, abs=0.011)
    assert detector.flush(slot, 1.0) == []


def test_float_blocks_on_the_int16_scale() -> None:
    audio = keyed("A", on=60)
    detector = InbandDetector()
    slot = detector.add_channel()
    events = detector.process([slot], audio[None, :].astype(np.float32), audio.size / RATE)
    assert [(e.kind, e.digit) for _, e in events] == [("start", "A"), ("end", "A")]


def test_bad_calls_are_refused() -> None:
    detector = InbandDetector()
    a = detector.add_channel()
    b = detector.add_channel()
    with pytest.raises(ValueError):
        detector.process([a, a], np.zeros((2, 160)), 0.02)
    with pytest.raises(ValueError):
        detector.process([a, b], np.zeros((3, 160)), 0.02)
    with pytest.raises(ValueError):
        detector.process([a, 99], np.zeros((2, 160)), 0.02)
    detector.remove_channel(b)
    with pytest.raises(ValueError):
        detector.process([b], np.zeros((1, 160)), 0.02)
    with pytest.raises(ValueError):
        detector.remove_channel(b)
    with pytest.raises(ValueError):
        InbandDetector(sample_rate=16000)
    assert detector.process([a], np.zeros((1, 0)), 0.02) == []
    assert detector.add_channel() == b  # reused


def test_a_reused_slot_starts_clean() -> None:
    rng = np.random.default_rng(11)
    detector = InbandDetector()
    slot = detector.add_channel()
    half = np.rint(tone("4", 17, rng=rng)).astype(np.int16)
    detector.process([slot], half[None, :], 0.017)  # a candidate is building up
    detector.remove_channel(slot)
    again = detector.add_channel()
    assert again == slot
    rest = np.rint(tone("4", 17, rng=rng)).astype(np.int16)
    events = detector.process([again], rest[None, :], 0.034)
    events += detector.process([again], np.zeros((1, 400), dtype=np.int16), 0.084)
    assert events == []  # 17 ms of tone in the new stream: not a digit (34 ms would be one)


def test_many_slots_grow_the_state() -> None:
    detector = InbandDetector()
    slots = [detector.add_channel() for _ in range(100)]
    assert slots == list(range(100))
    audio = np.rint(keyed("8", on=60)).astype(np.int16)
    block = np.tile(audio, (100, 1))
    events = detector.process(slots, block, audio.size / RATE)
    assert sorted(s for s, e in events if e.kind == "start") == slots


# ---- latency -------------------------------------------------------------------------------------


def test_start_reported_within_40_ms_of_the_onset() -> None:
    rng = np.random.default_rng(12)
    latencies = []
    for i in range(32):
        lead = 20 + rng.uniform(0, 10)
        audio = np.concatenate([silence(lead), tone(KEYS[i % 16], 80, rng=rng), silence(60)])
        detector = InbandDetector()
        slot = detector.add_channel()
        samples = np.rint(audio).astype(np.int16)
        for begin in range(0, samples.size, 8):  # 1 ms blocks: detection time to the ms
            now = (begin + 8) / RATE
            events = detector.process([slot], samples[None, begin : begin + 8], now)
            if events:
                assert events[0][1].kind == "start"
                assert events[0][1].at == pytest.approx(lead / 1000, abs=0.002)
                latencies.append(now - lead / 1000)
                break
    assert len(latencies) == 32
    assert max(latencies) <= 0.040
    assert float(np.median(latencies)) <= 0.030


def test_start_within_40_ms_median_30_fed_20_ms_frames() -> None:
    # The event comes at the end of the tick that completes 19.875 ms of tone: 20 to 40 ms
    # after the onset, whatever the onset's place in the tick (here every quarter millisecond).
    rng = np.random.default_rng(20)
    count = 160
    onsets = 480 + np.arange(count) * 2 + (np.arange(count) % 2)  # samples: 60 ms + 0..40 ms
    audio = np.zeros((count, 2400))
    for c in range(count):
        level, twist = rng.uniform(-30, -5), rng.uniform(-3, 6)
        burst = tone(KEYS[c % 16], rng.uniform(60, 100), level=level, twist=twist, rng=rng)
        audio[c, onsets[c] : onsets[c] + burst.size] = burst
        audio[c] = with_noise(audio[c], 30, dbm0_power(level), seed=c)
    samples = np.rint(audio).astype(np.int16)
    detector = InbandDetector()
    slots = [detector.add_channel() for _ in range(count)]
    latency = np.full(count, np.nan)
    for begin in range(0, samples.shape[1], 160):
        now = (begin + 160) / RATE
        for slot, event in detector.process(slots, samples[:, begin : begin + 160], now):
            if event.kind == "start" and np.isnan(latency[slot]):
                assert event.at == pytest.approx(onsets[slot] / RATE, abs=0.001)
                latency[slot] = now - onsets[slot] / RATE
    assert not np.isnan(latency).any()
    assert latency.min() > 0.019
    assert latency.max() <= 0.040
    assert float(np.median(latency)) <= 0.030


def test_a_tones_first_milliseconds_make_the_channel_hot() -> None:
    # A tone that begins in the last few milliseconds of a 20 ms packet is too short there to
    # be screened in, yet its next packet may decide it: the channel is hot (`hot_slots`) so
    # that its caller feeds that packet as soon as it comes, not at the next tick. Steady
    # noise, loud or not, and silence never make a channel hot.
    rng = np.random.default_rng(7)
    tails = list(range(1, 49, 3))  # samples of tone at the end of the packet: 0.125-6 ms
    count = len(tails)
    audio = np.zeros((count + 3, 480))
    for c, tail in enumerate(tails):
        level = rng.uniform(-30, -5)
        burst = tone(KEYS[c % 16], 60, level=level, rng=rng)
        audio[c, 320 - tail :] = burst[: 160 + tail]
        audio[c] = with_noise(audio[c], 30, dbm0_power(level), seed=c)
    audio[count] = rng.standard_normal(480) * 3000  # loud white noise
    audio[count + 1] = rng.standard_normal(480) * 30  # line noise, about -60 dBm0
    samples = np.rint(audio).astype(np.int16)
    detector = InbandDetector()
    slots = [detector.add_channel() for _ in range(count + 3)]
    detector.process(slots, samples[:, :160], 0.02)
    assert detector.hot_slots().tolist() == []
    detector.process(slots, samples[:, 160:320], 0.04)  # the tones' first milliseconds
    assert detector.hot_slots().tolist() == slots[:count]
    events = detector.process(slots, samples[:, 320:], 0.06)
    assert sorted(slot for slot, event in events if event.kind == "start") == slots[:count]


# ---- talk-off ------------------------------------------------------------------------------------

SENTENCES = {
    "en": "Thank you for calling. Please enter your card number followed by the hash key. "
    "The quick brown fox jumps over the lazy dog while the children sing in the garden.",
    "es": "Gracias por llamar. Por favor, introduzca el número de su tarjeta seguido de la "
    "tecla almohadilla. Mañana por la mañana iremos a la playa con los niños.",
    "fr": "Merci de votre appel. Veuillez saisir le numéro de votre carte suivi de la touche "
    "dièse. Le petit chat dort au soleil pendant que les enfants jouent.",
    "de": "Vielen Dank für Ihren Anruf. Bitte geben Sie Ihre Kartennummer ein und drücken Sie "
    "die Rautetaste. Der schnelle braune Fuchs springt über den faulen Hund.",
    "it": "Grazie per aver chiamato. Inserisca il numero della carta seguito dal tasto "
    "cancelletto. Domani andremo al mare con tutta la famiglia.",
}
VOICES = ["", "+f2", "+f4", "+m3", "+klatt", "+Annie"]


def espeak(text: str, voice: str, pitch: int, speed: int) -> Audio:
    from scipy.signal import resample_poly

    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout"],
        input=text.encode(),
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    with wave.open(BytesIO(wav)) as w:
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return np.asarray(resample_poly(data.astype(np.float64), RATE, rate))


def speech(seconds: float, seed: int) -> Audio:
    rng = np.random.default_rng(seed)
    parts: list[Audio] = []
    total = 0
    while total < seconds * RATE:
        lang = list(SENTENCES)[int(rng.integers(len(SENTENCES)))]
        voice = lang + VOICES[int(rng.integers(len(VOICES)))]
        clip = espeak(
            SENTENCES[lang], voice, int(rng.integers(20, 99)), int(rng.integers(130, 210))
        )
        loud = clip[np.abs(clip) > 0.01 * np.abs(clip).max()]
        target = 32767 * 10 ** ((-18 + rng.uniform(-8, 8)) / 20)
        parts.append(np.clip(clip * target / np.sqrt(np.mean(loud**2)), -32768, 32767))
        total += parts[-1].size
    return np.concatenate(parts)


def music(seconds: float, seed: int) -> Audio:
    """Chords and harmonic sweeps: notes with the overtones of real instruments (about 1/h),
    half of them on the notes nearest DTMF frequencies (F5 698 Hz, F#6 1480 Hz, ...)."""
    rng = np.random.default_rng(seed)
    out = []
    dtmf_like = [698.46, 1479.98, 932.33, 1318.51, 783.99, 1661.22, 1174.66]  # F5 F#6 A#5 ...
    for _ in range(int(seconds / 0.5)):
        t = np.arange(4000) / RATE
        chord = np.zeros(t.size)
        if rng.random() < 0.5:
            notes = rng.choice(dtmf_like, int(rng.integers(2, 4)), replace=False)
        else:
            notes = 220.0 * 2 ** (rng.integers(0, 36, 3) / 12)
        for f0 in notes:
            glide = 1 + (rng.uniform(-0.04, 0.04) * t / t[-1] if rng.random() < 0.5 else 0)
            for h in range(1, 8):
                if f0 * h < 3800:
                    amp = rng.uniform(0.6, 1.0) / h
                    chord += amp * np.sin(2 * np.pi * f0 * h * glide * t + rng.uniform(0, 6))
        envelope = np.minimum(1, np.minimum(t, t[-1] - t) / 0.03)
        out.append(
            chord * envelope / np.abs(chord).max() * 32767 * 10 ** (rng.uniform(-20, -3) / 20)
        )
    return np.concatenate(out)


def noises(seconds: float, seed: int) -> Iterable[Audio]:
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    yield rng.standard_normal(n) * 3000  # white
    pink = np.cumsum(rng.standard_normal(n))
    yield (pink - np.convolve(pink, np.ones(64) / 64, "same")) * 300  # low-passed walk
    clicks = np.zeros(n)
    clicks[rng.integers(0, n, 400)] = rng.uniform(-20000, 20000, 400)
    yield clicks


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_talk_off_speech() -> None:
    # Two minutes here; the 30 minutes and spandsp's count on the same audio are in
    # bench/inband_accuracy.py.
    assert scan(speech(120, seed=2026)) == []


def test_talk_off_music_and_noise() -> None:
    assert scan(music(60, seed=3)) == []
    for audio in noises(20, seed=4):
        assert scan(audio) == []


def test_a_pure_two_note_chord_on_dtmf_frequencies_is_a_digit() -> None:
    # The test above must be able to fail: two pure tones are a digit, whatever plays them.
    t = np.arange(800) / RATE
    chord = 8000 * (np.sin(2 * np.pi * 698.46 * t) + np.sin(2 * np.pi * 1479.98 * t))
    assert digits_of(np.concatenate([silence(50), chord, silence(100)])) == "3"
