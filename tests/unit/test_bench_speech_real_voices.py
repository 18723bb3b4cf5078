"""bench/speech_real_voices.py's pure parts: the dataset read from a user's path (and refused
with a clear error when it has no recordings), utterances composed from takes with gaps, and
the takes allotted to a payment's attempts. A tiny fake dataset stands in for FSDD."""

from __future__ import annotations

import random
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from bench_speech_accuracy import RATE
from speech_real_voices import (
    FADE_MS,
    GAP_MS,
    DatasetError,
    allot_takes,
    compose,
    gaps,
    load_recordings,
    main,
)


def _write_take(folder: Path, name: str, samples: np.ndarray, rate: int = RATE) -> None:
    with wave.open(str(folder / name), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype(np.int16).tobytes())


def _fake_dataset(root: Path, speakers: tuple[str, ...] = ("ann", "bob"), takes: int = 2) -> Path:
    """A clone's layout: recordings/<digit>_<speaker>_<take>.wav, each take a constant
    100 * (digit + 1) + take, 80 samples long, so a test can tell which take was used."""
    folder = root / "recordings"
    folder.mkdir(parents=True)
    for speaker in speakers:
        for digit in range(10):
            for take in range(takes):
                value = 100 * (digit + 1) + take
                _write_take(folder, f"{digit}_{speaker}_{take}.wav", np.full(80, value))
    (root / "README.md").write_text("not a recording")
    return root


def test_the_dataset_is_read_by_speaker_and_digit_in_take_order(tmp_path: Path) -> None:
    root = _fake_dataset(tmp_path, takes=11)  # take 10 sorts after take 9, not after take 1
    for path in (root, root / "recordings"):
        recordings = load_recordings(path)
        assert sorted(recordings) == ["ann", "bob"]
        assert sorted(recordings["ann"]) == list("0123456789")
        takes = recordings["bob"]["7"]
        assert [int(take[0]) for take in takes] == [800 + t for t in range(11)]
        assert takes[0].dtype == np.int16


def test_a_path_without_recordings_is_refused_with_the_clone_to_get(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(DatasetError, match="free-spoken-digit-dataset"):
            load_recordings(path)


def test_the_bench_exits_2_with_one_line_on_a_bad_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["speech_real_voices.py", str(tmp_path)])
    assert main() == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no FSDD recordings" in error


@pytest.mark.parametrize("gap", ["5", "60,0", "-1,5", "a,b"])
def test_the_bench_exits_2_with_one_line_on_a_bad_gap_range(
    gap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _fake_dataset(tmp_path)
    monkeypatch.setattr(sys, "argv", ["speech_real_voices.py", str(root), f"--gap-ms={gap}"])
    assert main() == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--gap-ms" in error


def test_gaps_are_drawn_from_the_range_given() -> None:
    drawn = gaps(200, random.Random(3), (0, 60))
    assert min(drawn) >= 0 and max(drawn) <= 60 * RATE // 1000
    assert max(drawn) > 40 * RATE // 1000  # the range's top is reached, not the default's


def test_recordings_not_at_8_khz_or_missing_a_digit_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    _write_take(folder, "0_ann_0.wav", np.zeros(80), rate=16000)
    with pytest.raises(DatasetError, match="8000 Hz"):
        load_recordings(tmp_path)
    _write_take(folder, "0_ann_0.wav", np.zeros(80))
    with pytest.raises(DatasetError, match="no takes of 1,2,3"):
        load_recordings(tmp_path)


def test_an_utterance_is_its_takes_with_silent_gaps_between_and_faded_edges() -> None:
    takes = [np.full(100, 1000, dtype=np.int16), np.full(100, -2000, dtype=np.int16)]
    audio = compose(takes, [30])
    assert len(audio) == 100 + 30 + 100
    fade = FADE_MS * RATE // 1000
    assert audio[0] == 0 and audio[fade] == 1000 and audio[99] < 1000  # faded in and out
    assert not audio[100:130].any()  # the gap is silence
    assert audio[130 + fade] == -2000
    with pytest.raises(ValueError):
        compose(takes, [30, 30])


def test_gaps_are_drawn_in_the_chosen_range_and_repeat_with_the_seed() -> None:
    drawn = gaps(500, random.Random(3))
    low, high = (ms * RATE / 1000 for ms in GAP_MS)
    assert all(low <= gap <= high for gap in drawn)
    assert max(drawn) - min(drawn) > (high - low) * 0.9  # the whole range, not one value
    assert drawn == gaps(500, random.Random(3))


def test_every_digit_said_in_a_payment_gets_a_take_of_its_own() -> None:
    fields = ["4111", "1111", "0127", "123"]
    allotted = allot_takes(fields, 3, {d: 50 for d in "0123456789"}, random.Random(1))
    assert set(allotted) == {(p, a) for p in range(4) for a in range(3)}
    used = [
        (digit, take)
        for (position, attempt), takes in allotted.items()
        for digit, take in zip(fields[position], takes, strict=True)
    ]
    assert len(used) == len(set(used)) == 3 * sum(map(len, fields))
    # fixed up front: the same seed gives the same takes whatever the dialogue reaches
    assert allotted == allot_takes(fields, 3, {d: 50 for d in "0123456789"}, random.Random(1))


def test_takes_are_used_again_only_when_a_digit_runs_out() -> None:
    allotted = allot_takes(["1111"], 2, {d: 3 for d in "0123456789"}, random.Random(1))
    said = allotted[(0, 0)] + allotted[(0, 1)]
    assert sorted(said[:3]) == [0, 1, 2]  # all three takes before any again
    assert said == [said[i % 3] for i in range(8)]
