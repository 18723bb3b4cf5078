"""Accuracy of voice entry on real human recordings: the Free Spoken Digit Dataset's speakers
saying the card, expiry and code, through the speech bench's telephone path and dialogue.

Run:  nice -n 19 .venv/bin/python bench/speech_real_voices.py PATH [--payments 12] [--jobs 1]
      [--seed 1] [--sources fsdd,espeak] [--conditions clean,snr20,snr10]
      [--decoders whisper,whisper+tries,whisper+tries+runnerup,baseline]
      [--gap-ms 40,250]
(the recorded run, 72 payments a condition and source: 47 minutes on one niced job)

PATH is a copy of the Free Spoken Digit Dataset (FSDD; CC BY-SA 4.0; its data is not part
of this repository):  git clone https://github.com/Jakobovski/free-spoken-digit-dataset
and pass the clone (or its `recordings` folder). FSDD holds 6 speakers (all men; American,
Belgian-French, German and Greek accents), 50 takes of each digit 0-9 each, mono 8 kHz 16-bit
WAV, trimmed to the word.

Each simulated payment is bench/bench_speech_accuracy.py's (`Payment.plan`: a Luhn-valid Visa,
Mastercard or Amex number said in groups 4-4-4-4 or 4-6-5, an expiry MMYY and a security
code), said by one FSDD speaker (payment i: speaker i mod 6, in name order): every group or
field is that speaker's takes of its digits joined, a different take for every digit said in
the payment (drawn by a seeded RNG; the takes of all attempts of all fields are allotted up
front, so a take's audio does not depend on what the dialogue did before it), with a gap of
40-250 ms between digits, uniform (`--gap-ms`; 0,60 says the digits run together). Why that
range: the takes are trimmed to the word, so the gap stands for the pause between words plus
the trimmed onset and release; at FSDD's 0.35-0.55 s a word it gives 1.3-2.6 digits a second
(1.4-2.0 at the mean gap), the range of people reading a number out, from brisk to
deliberate. The gaps are digital silence (each take faded in
and out over 5 ms, no clicks); the line noise of the noisy conditions is added over the whole
utterance, gaps included, by the telephone path. The utterance then takes the SAME telephone
path as the synthetic bench (`telephone`: 300-3400 Hz band-pass, active speech at -20 dBFS,
0.3 s of silence before and after, noise at the condition's SNR over the active speech, G.711
μ-law), and is read by the same decoders with the same dialogue (`Payment.run`): `whisper`,
`whisper+tries`, `whisper+tries+runnerup` (the journey's way) and `baseline` (pocketsphinx's
plain digit grammar, best path, no rules), all on the same audio.

Answers: FSDD has no "yes" or "no". The simulated caller's answer to a read-back is taken as
understood (the right one: "yes" when the reading is right), not recognised; on the synthetic
bench Whisper understood them in 149 of 149 read-backs clean and 187 of 188 at 10 dB. So
"paid" here is the digits' part of a payment, slightly optimistic in noise. The `espeak`
source (`--sources`) says the SAME digit strings (same seed, same payments) in the synthetic
bench's espeak-ng voices with the answers taken as understood the same way, so the two sources
compare on the same digits and the same dialogue.

Reported, per source, condition and decoder: digit error at first try (edit distance), fields
right at first try, whole card right at first try, the right reading anywhere in the
recogniser's n-best at first try (for `baseline` the hypotheses it has, though it reads only
the first), payments that succeed within the attempts (three a group or field, and as the
journey counts, three for the whole card), read-backs right, and the recogniser's CPU per
second of speech (process time; `+tries` variants reuse their recogniser's decodes). Then
the same per FSDD speaker (`--by-speaker` decoders).

Nothing is written to disk: FSDD's WAVs are read from PATH, the payments' audio is in memory.
Needs espeak-ng only for `--sources espeak`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import re
import sys
import time
import wave
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_speech_accuracy as synthetic
from bench_speech_accuracy import RATE, Payment, telephone

from spg_media.payment.journey import JourneyConfig
from spg_media.speech.digits import words_to_digits
from spg_media.speech.model import Utterance

CONDITIONS = ("clean", "snr20", "snr10")
DECODERS = ("whisper", "whisper+tries", "whisper+tries+runnerup", "baseline")
SOURCES = ("fsdd", "espeak")
SNR_DB = {"snr20": 20.0, "snr10": 10.0}
GAP_MS = (40, 250)  # silence between two digits' takes (see the docstring for why)
FADE_MS = 5  # each take faded in and out: the trimmed takes can start or end mid-wave
_FILE_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")

# speaker -> digit -> the speaker's takes of it, in take-number order
Recordings = dict[str, dict[str, list[npt.NDArray[np.int16]]]]


class DatasetError(Exception):
    """PATH holds no usable FSDD recordings."""


def load_recordings(path: Path) -> Recordings:
    """FSDD's `<digit>_<speaker>_<take>.wav` files from `path` (the clone, or its
    `recordings` folder), all mono 16-bit 8 kHz, into memory."""
    folder = path / "recordings" if (path / "recordings").is_dir() else path
    named = []
    if folder.is_dir():
        for file in folder.iterdir():
            match = _FILE_NAME.match(file.name)
            if match:
                named.append((match[2], match[1], int(match[3]), file))
    if not named:
        raise DatasetError(
            f"no FSDD recordings (<digit>_<speaker>_<take>.wav) in {path}: pass a clone of "
            "https://github.com/Jakobovski/free-spoken-digit-dataset"
        )
    recordings: Recordings = {}
    for speaker, digit, _, file in sorted(named):
        with wave.open(str(file)) as wav:
            shape = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate())
            if shape != (1, 2, RATE):
                raise DatasetError(f"{file}: not mono 16-bit {RATE} Hz ({shape})")
            take = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        recordings.setdefault(speaker, {}).setdefault(digit, []).append(take)
    for speaker, digits in recordings.items():
        missing = sorted(set("0123456789") - set(digits))
        if missing:
            raise DatasetError(f"{path}: speaker {speaker} has no takes of {','.join(missing)}")
    return recordings


def gaps(count: int, rng: random.Random, gap_ms: tuple[float, float] = GAP_MS) -> list[int]:
    """`count` gaps between digits, in samples, uniform over `gap_ms`."""
    return [round(rng.uniform(*gap_ms) * RATE / 1000) for _ in range(count)]


def compose(
    takes: Sequence[npt.NDArray[np.int16]], gap_samples: Sequence[int]
) -> npt.NDArray[np.float64]:
    """The takes said one after another, `gap_samples[i]` of silence between take i and i+1,
    each take faded in and out over `FADE_MS`."""
    if len(gap_samples) != len(takes) - 1:
        raise ValueError(f"{len(takes)} takes need {len(takes) - 1} gaps, not {len(gap_samples)}")
    parts: list[npt.NDArray[np.float64]] = []
    for index, take in enumerate(takes):
        x = take.astype(np.float64)
        fade = min(round(FADE_MS * RATE / 1000), len(x) // 2)
        if fade:
            ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
            x[:fade] *= ramp
            x[len(x) - fade :] *= ramp[::-1]
        parts.append(x)
        if index < len(gap_samples):
            parts.append(np.zeros(gap_samples[index]))
    return np.concatenate(parts)


def allot_takes(
    fields: Sequence[str], attempts: int, available: Mapping[str, int], rng: random.Random
) -> dict[tuple[int, int], list[int]]:
    """Which take of each digit every (field position, attempt) says: a different take for
    every digit said in the payment (each digit's takes shuffled, then used in turn, round
    again only if one digit is said more often than it has takes), all allotted up front in
    a fixed order so that a take does not depend on which attempts the dialogue reached."""
    order = {digit: rng.sample(range(count), count) for digit, count in sorted(available.items())}
    used: Counter[str] = Counter()
    allotted: dict[tuple[int, int], list[int]] = {}
    for attempt in range(attempts):
        for position, digits in enumerate(fields):
            indices = []
            for digit in digits:
                indices.append(order[digit][used[digit] % len(order[digit])])
                used[digit] += 1
            allotted[(position, attempt)] = indices
    return allotted


class _HeldOut(Payment):
    """The synthetic bench's payment, its answers taken as understood (no "yes"/"no"
    recordings), and the right reading in the first try's n-best counted."""

    source = ""

    def plan(self) -> tuple[str, list[tuple[str, str, str]]]:
        card, fields = super().plan()
        self.truths = [truth for _, truth, _ in fields]
        return card, fields

    def answer(self, decoder: str, word: str) -> str | None:
        return word  # the caller's own answer, as understood: see the module docstring

    def read(
        self,
        decoder: str,
        audio: npt.NDArray[np.int16],
        key: object,
        field: str,
        length: int,
        prefix: str,
        earlier: list[Utterance],
        denied: set[str],
    ) -> tuple[str, bool, Utterance]:
        heard = super().read(decoder, audio, key, field, length, prefix, earlier, denied)
        assert isinstance(key, tuple)
        position, attempt = key
        if attempt == 0:
            readings = {words_to_digits(h.words) for h in heard[2].hypotheses}
            self.counts[f"{decoder}.nbest_right"] += self.truths[position] in readings
        return heard


class RecordedPayment(_HeldOut):
    """A payment said by one FSDD speaker, from their recorded takes."""

    source = "fsdd"

    def __init__(
        self,
        condition: str,
        index: int,
        seed: int,
        attempts: int,
        threshold: float,
        recordings: Recordings,
    ):
        super().__init__(condition, index, seed, attempts, threshold)
        speakers = sorted(recordings)
        self.voice = speakers[index % len(speakers)]
        self.recordings = recordings[self.voice]
        self.allotted: dict[tuple[int, int], list[int]] = {}

    def plan(self) -> tuple[str, list[tuple[str, str, str]]]:
        card, fields = super().plan()
        available = {digit: len(takes) for digit, takes in self.recordings.items()}
        self.allotted = allot_takes(
            self.truths, self.attempts, available, random.Random(f"{self.name}-takes")
        )
        return card, fields

    def say(self, text: str, take: object) -> npt.NDArray[np.int16]:
        """The digits of `text` in this speaker's takes allotted to `take` (a field's
        (position, attempt)), with its own gaps and noise."""
        assert isinstance(take, tuple)
        digits = text.replace(" ", "")
        rng = random.Random(f"{self.name}-{take}")
        clips = [self.recordings[d][i] for d, i in zip(digits, self.allotted[take], strict=True)]
        self.speeds.append(0)  # no speaking rate to record (`Payment.run` keeps one a take)
        audio = compose(clips, gaps(len(clips) - 1, rng, _gap_ms))
        return telephone(
            audio, SNR_DB.get(self.condition), np.random.default_rng(rng.randrange(2**32))
        )


class SyntheticPayment(_HeldOut):
    """The same payment (same seed, same digits) said by espeak-ng as the synthetic bench
    says it, answers taken as understood like the recordings'."""

    source = "espeak"


_recordings: Recordings = {}
_gap_ms: tuple[float, float] = GAP_MS


def _init(path: str, decoders: tuple[str, ...], gap_ms: tuple[float, float]) -> None:
    global _recordings, _gap_ms
    _recordings = load_recordings(Path(path))
    _gap_ms = gap_ms
    synthetic._init(decoders)


def _one(task: tuple[str, str, int, int, int]) -> tuple[str, str, str, Counter[str]]:
    source, condition, index, seed, attempts = task
    threshold = JourneyConfig().speech_min_confidence  # read back as the journey does
    payment: _HeldOut
    if source == "fsdd":
        payment = RecordedPayment(condition, index, seed, attempts, threshold, _recordings)
    else:
        payment = SyntheticPayment(condition, index, seed, attempts, threshold)
    return source, condition, payment.voice, payment.run()


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a clone of the Free Spoken Digit Dataset")
    parser.add_argument("--payments", type=int, default=12, help="per condition (default 12)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--attempts", type=int, default=3, help="per group or field (default 3)")
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--decoders", default=",".join(DECODERS))
    parser.add_argument(
        "--by-speaker",
        default="whisper+tries+runnerup,baseline",
        help="decoders to break down by FSDD speaker",
    )
    parser.add_argument(
        "--gap-ms",
        default=f"{GAP_MS[0]},{GAP_MS[1]}",
        help="MIN,MAX silence between two digits' takes, ms (default %(default)s; 0,60: "
        "digits run together)",
    )
    args = parser.parse_args()
    try:
        low, high = (float(x) for x in args.gap_ms.split(","))
        if not 0 <= low <= high:
            raise ValueError
    except ValueError:
        print(
            f"speech_real_voices: --gap-ms {args.gap_ms!r}: MIN,MAX with 0 <= MIN <= MAX",
            file=sys.stderr,
        )
        return 2
    gap_ms = (low, high)
    try:
        speakers = sorted(load_recordings(Path(args.path)))  # fail before starting workers
    except DatasetError as error:
        print(f"speech_real_voices: {error}", file=sys.stderr)
        return 2
    sources = args.sources.split(",")
    conditions = args.conditions.split(",")
    decoders = tuple(args.decoders.split(","))
    by_speaker = [d for d in args.by_speaker.split(",") if d in decoders]
    tasks = [
        (source, condition, index, args.seed, args.attempts)
        for index in range(args.payments)
        for condition in conditions
        for source in sources
    ]
    started = time.monotonic()
    totals: dict[tuple[str, ...], Counter[str]] = {}
    with multiprocessing.get_context("spawn").Pool(
        args.jobs, initializer=_init, initargs=(args.path, decoders, gap_ms)
    ) as pool:
        for source, condition, voice, counts in pool.imap_unordered(_one, tasks):
            totals.setdefault((source, condition), Counter()).update(counts)
            totals.setdefault((source, condition, voice), Counter()).update(counts)
    wall = time.monotonic() - started

    print(
        f"# speech on real voices: {args.payments} payments per condition and source, FSDD "
        f"speakers {', '.join(speakers)}, gaps {gap_ms[0]:g}-{gap_ms[1]:g} ms, "
        f"attempts {args.attempts}, answers taken as "
        f"understood, seed {args.seed}, {wall:.0f} s wall on {args.jobs} jobs"
    )
    print(
        "| source | condition | decoder | digit error, 1st try | fields right 1st try "
        "| card right 1st try | expiry 1st | code 1st | right reading in n-best, 1st try "
        "| paid within attempts | paid, card's attempts shared | read-backs right "
        "| CPU s per s of speech |"
    )
    print("| --- | --- | --- |" + " ---: |" * 10)
    for source in sources:
        for condition in conditions:
            t = totals.get((source, condition), Counter())
            n = t["payments"]
            for decoder in decoders:
                print(
                    f"| {source} | {condition} | {decoder} | "
                    f"{t[f'{decoder}.digit_errors'] / max(t[f'{decoder}.digits'], 1):.1%} | "
                    f"{_share(t[f'{decoder}.fields_right'], t[f'{decoder}.fields'])} | "
                    f"{_share(t[f'{decoder}.card_first'], n)} | "
                    f"{_share(t[f'{decoder}.expiry_first'], n)} | "
                    f"{_share(t[f'{decoder}.code_first'], n)} | "
                    f"{_share(t[f'{decoder}.nbest_right'], t[f'{decoder}.fields'])} | "
                    f"{_share(t[f'{decoder}.paid'], n)} | "
                    f"{_share(t[f'{decoder}.paid_shared'], n)} | "
                    f"{_share(t[f'{decoder}.read_backs_right'], t[f'{decoder}.read_backs'])} | "
                    f"{t[f'{decoder}.cpu'] / max(t[f'{decoder}.speech_s'], 1e-9):.3f} |"
                )
    for source in sources:
        for condition in conditions:
            t = totals.get((source, condition), Counter())
            for decoder in decoders:
                if "+runnerup" in decoder:
                    print(
                        f"{source} {condition} {decoder}: runner-ups read back after a 'no' "
                        f"{t[f'{decoder}.runner_ups']}, right {t[f'{decoder}.runner_ups_right']}"
                    )
    if "fsdd" not in sources or not by_speaker:
        return 0
    print()
    print("# by FSDD speaker")
    print(
        "| condition | speaker | decoder | payments | digit error, 1st try "
        "| fields right 1st try | card right 1st try | right reading in n-best, 1st try "
        "| paid, card's attempts shared |"
    )
    print("| --- | --- | --- |" + " ---: |" * 6)
    for condition in conditions:
        for speaker in speakers:
            t = totals.get(("fsdd", condition, speaker), Counter())
            n = t["payments"]
            for decoder in by_speaker:
                print(
                    f"| {condition} | {speaker} | {decoder} | {n} | "
                    f"{t[f'{decoder}.digit_errors'] / max(t[f'{decoder}.digits'], 1):.1%} | "
                    f"{t[f'{decoder}.fields_right']}/{t[f'{decoder}.fields']} | "
                    f"{t[f'{decoder}.card_first']}/{n} | "
                    f"{t[f'{decoder}.nbest_right']}/{t[f'{decoder}.fields']} | "
                    f"{t[f'{decoder}.paid_shared']}/{n} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
