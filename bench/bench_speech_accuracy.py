"""Accuracy of voice entry on synthetic telephone speech: the two recognisers with constrained
decoding against a plain unconstrained digit grammar, in the same run, on the same audio.

Run:  .venv/bin/python bench/bench_speech_accuracy.py [--payments 6] [--jobs 2] [--seed 1]
      [--decoders whisper,whisper+tries,constrained,constrained+tries,baseline]
      [--conditions clean,snr20,snr10,pitch] [--whisper-model tiny.en|base]
(6 payments a condition: about 4 minutes on 2 idle cores; the recorded run used 16 and six
decoders, 14 minutes on one niced job)

Each simulated payment is a random card number (Visa 16, Mastercard 16 or Amex 15 digits, Luhn
valid), an expiry in the window and a security code, said by espeak-ng in one of its English
voices with a variant (+m1.., +f1..) at a speed of 130-190 words a minute, the card in groups
(4-4-4-4, Amex 4-6-5). The audio goes through the telephone path: 8 kHz, 300-3400 Hz band-pass,
noise at the condition's SNR (over the active speech), G.711 μ-law. Conditions: clean, 20 dB,
10 dB, and a "pitch" set (clean, each utterance pitch-shifted by sox by -400..+400 cents: other
speakers than espeak's own).

The decoders hear the same utterances:
* whisper: Whisper (`--whisper-model`: tiny.en, the default recogniser, or base;
  spg_media/speech/whisper.py) constrained to digits and answers, with an
  exact-length decode, its n-best and `best_reading` with the field's rules, as below; the
  caller's "yes"/"no" is recognised by Whisper too.
* constrained: pocketsphinx with the grammar of exactly the expected number of digits, its
  n-best, and `best_reading` with the field's rules (brand prefix, length, Luhn on the
  complete card with the confirmed groups as prefix, expiry month and window, code length); a
  reading that is not valid or below `--threshold` confidence (default the journey's
  `speech_min_confidence`: 0, any valid reading) is asked again without a read-back.
* whisper+tries, constrained+tries: the same recogniser's results on the same takes (reused,
  not decoded again), with `best_reading` also given the field's earlier tries (`earlier`)
  and the readings the caller said "no" to (`denied`), as the journey does.
* whisper+tries+runnerup: as whisper+tries, and after a "no" the same try's runner-up that
  fits the rules and is at least `--runner-up-threshold` sure (default the journey's
  `speech_min_runner_up_confidence`) is read back ("was it ...?") before the caller says the
  digits again; a "no" to it too is one failed attempt, as in the journey.
* whisper+tries+open: as whisper+tries, but a card group's second and third tries are
  recognised at an open length, as the journey did after any failed group until it kept the
  printed group's length after a "no" (Whisper's digits then came from pocketsphinx's open
  grammar, its `fallback`); still the journey's way after a try not understood.
* baseline: the plain grammar (any digits), one decode with the same front end (resampling,
  noise floor), its best path, no rules: every reading is read back.

Reported: per-digit error at first try (edit distance), fields right at first try (each card
group, the expiry and the code: the dialogue's unit), whole field right at first try (the
card: every group right the first time), and with the read-back dialogue the share of
payments that succeed within the attempts (`--attempts` per group/field): each group or field
is read back and the simulated caller says "yes" or "no" (recognised from the same voice and
line); "no", or an answer not understood, costs an attempt; a wrong group confirmed fails the
payment. "paid, card's attempts shared": the same dialogue counted as the journey counts it,
`--attempts` failed tries for the whole card number, not for each group. (The journey also
lets the caller group freely after a failed group, so Whisper's next try is read at an open
length, by pocketsphinx: not simulated here.) Plus the recogniser's CPU per second of
speech, and the VAD's on a minute of line noise (no recognition should run on it).

`--records FILE`: every field's tries (voice, speed, digits said and heard, read back or not,
the answer heard) as JSON lines, for `bench/speech_errors.py`'s breakdown. Each take (a
field's attempt, an answer) is rendered from its own seed, so the same seed gives the same
utterances whatever the dialogue did: two trees or settings compare on the same audio.

The audio exists only in memory. Needs espeak-ng and sox.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.signal import butter, resample_poly, sosfilt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from spg_media.payment.cards import luhn_valid
from spg_media.payment.journey import JourneyConfig
from spg_media.rtp import g711
from spg_media.speech import whisper
from spg_media.speech.digits import answer_of, best_reading, words_to_digits
from spg_media.speech.model import Utterance
from spg_media.speech.recogniser import (
    PLAIN_DIGIT_GRAMMAR,
    DigitRecogniser,
    Recogniser,
    make_recogniser,
)
from spg_media.speech.vad import VoiceActivity
from spg_media.speech.whisper import WhisperDigitRecogniser

RATE = 8000
VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-029",
    "en-us-nyc",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
VARIANTS = ("", "+m1", "+m3", "+m5", "+m7", "+f1", "+f2", "+f3", "+f4", "+klatt")
CONDITIONS = ("clean", "snr20", "snr10", "pitch")
DECODERS = (
    "whisper",
    "whisper+tries",
    "whisper+tries+runnerup",
    "constrained",
    "constrained+tries",
    "baseline",
)
_BAND = butter(4, [300, 3400], btype="bandpass", fs=RATE, output="sos")
TODAY = datetime.date.today()


@dataclass(frozen=True)
class Speaker:
    voice: str
    speed: int
    cents: int  # pitch shift, 0 = none
    snr_db: float | None


def render(text: str, speaker: Speaker, rng: np.random.Generator) -> npt.NDArray[np.int16]:
    """`text` said by `speaker` through the telephone path, int16 at 8 kHz (in memory)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", speaker.voice, "-s", str(speaker.speed), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    if speaker.cents:
        wav = subprocess.run(
            ["sox", "-t", "wav", "-", "-t", "wav", "-", "pitch", str(speaker.cents)],
            input=wav,
            check=True,
            capture_output=True,
        ).stdout
    rate = int.from_bytes(wav[24:28], "little")
    data = wav.find(b"data")
    samples = np.frombuffer(wav[data + 8 :], dtype=np.int16).astype(np.float64)
    return telephone(resample_poly(samples, RATE, rate), speaker.snr_db, rng)


def telephone(
    samples: npt.NDArray[np.float64], snr_db: float | None, rng: np.random.Generator
) -> npt.NDArray[np.int16]:
    """Speech at 8 kHz through the telephone path (band-pass, line level, 0.3 s of padding
    each side, noise at `snr_db` over the active speech, G.711 μ-law), int16 at 8 kHz."""
    x = sosfilt(_BAND, samples)
    # active speech at -20 dBFS RMS, a usual line level
    active = x[np.abs(x) > 0.05 * np.abs(x).max()]
    x *= 10 ** (-20 / 20) * 32767 / max(float(np.sqrt(np.mean(active**2))), 1.0)
    pad = np.zeros(int(0.3 * RATE))
    x = np.concatenate((pad, x, pad))
    if snr_db is not None:
        loud = x[np.abs(x) > 0.05 * np.abs(x).max()]
        speech_power = float(np.mean(loud**2))
        noise = sosfilt(_BAND, rng.standard_normal(len(x)))
        noise *= np.sqrt(speech_power / 10 ** (snr_db / 10) / np.mean(noise**2))
        x = x + noise
    pcm = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    return g711.decode(g711.encode(pcm, "PCMU"), "PCMU")


def card_number(rng: random.Random) -> tuple[str, tuple[int, ...]]:
    brand = rng.choice(("visa", "mastercard", "amex"))
    groups: tuple[int, ...]
    if brand == "amex":
        head, length, groups = rng.choice(("34", "37")), 15, (4, 6, 5)
    elif brand == "mastercard":
        head, length, groups = str(rng.randint(51, 55)), 16, (4, 4, 4, 4)
    else:
        head, length, groups = "4", 16, (4, 4, 4, 4)
    body = head + "".join(str(rng.randint(0, 9)) for _ in range(length - len(head) - 1))
    check = next(d for d in "0123456789" if luhn_valid(body + d))
    return body + check, groups


def spoken(digits: str) -> str:
    return " ".join(digits)


def edits(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


_recognisers: dict[str, Recogniser] = {}
_decoders: tuple[str, ...] = DECODERS
_runner_up_threshold = JourneyConfig().speech_min_runner_up_confidence


def _init(
    decoders: tuple[str, ...],
    whisper_model: str = "tiny.en",
    prior_weight: float | None = None,
    runner_up_threshold: float = _runner_up_threshold,
    denoise: bool | None = None,
    beam: int | None = None,
) -> None:
    global _decoders, _runner_up_threshold
    _decoders = decoders
    _runner_up_threshold = runner_up_threshold
    hearers = {decoder.split("+")[0] for decoder in decoders}
    if beam is not None:  # Whisper's beam width and n-best instead of the product's
        whisper.BEAM = beam
    if "whisper" in hearers:  # as deployed with speech.recogniser = "whisper-<model>"
        recogniser = make_recogniser(f"whisper-{whisper_model}")
        if prior_weight is not None:  # the discount of Whisper's digit priors, not the model's
            assert isinstance(recogniser, WhisperDigitRecogniser)
            recogniser.prior_weight = prior_weight
        if denoise is not None:  # the line noise subtracted or not, not as deployed
            assert isinstance(recogniser, WhisperDigitRecogniser)
            recogniser.denoise = denoise
        _recognisers["whisper"] = recogniser
    if hearers & {"constrained", "baseline"}:
        _recognisers["constrained"] = DigitRecogniser()  # also hears the baseline's answers
    if "baseline" in hearers:
        # the same front end (resampling, noise floor), one pass, no rules
        _recognisers["baseline"] = DigitRecogniser(PLAIN_DIGIT_GRAMMAR, passes=1)


class Payment:
    """One simulated caller paying, heard by both decoders."""

    def __init__(self, condition: str, index: int, seed: int, attempts: int, threshold: float):
        self.rng = random.Random(f"{seed}-{condition}-{index}")
        self.name = f"{seed}-{condition}-{index}"
        self.condition = condition
        self.attempts = attempts
        self.threshold = threshold
        self.voice = VOICES[index % len(VOICES)] + VARIANTS[(index // 2) % len(VARIANTS)]
        self.counts: Counter[str] = Counter()  # float values too (CPU, seconds)
        self._answers: dict[str, npt.NDArray[np.int16]] = {}
        self._heard: dict[tuple[str, object], tuple[Utterance, float]] = {}
        self.last_reading: tuple[bool, float] | None = None  # of `read`, for `--records`
        self.speeds: list[int] = []  # of each utterance rendered, in order
        self.records: list[dict[str, object]] = []  # `--records`: one per field and decoder

    def say(self, text: str, take: object) -> npt.NDArray[np.int16]:
        """`text` said by this payment's caller. Each take (`take` names it: a field's
        attempt, an answer) has its own speed, pitch and noise drawn from its own seed, so
        the audio is the same whatever the dialogue did before it: two configurations are
        compared on the same utterances."""
        rng = random.Random(f"{self.name}-{take}")
        snr = {"snr20": 20.0, "snr10": 10.0}.get(self.condition)
        cents = rng.randint(-400, 400) if self.condition == "pitch" else 0
        speaker = Speaker(self.voice, rng.randint(130, 190), cents, snr)
        self.speeds.append(speaker.speed)
        return render(text, speaker, np.random.default_rng(rng.randrange(2**32)))

    def recognise(
        self, decoder: str, audio: npt.NDArray[np.int16], length: int | None, key: object
    ) -> Utterance:
        """What `decoder`'s recogniser hears in `audio` (`key` names the take: a "+tries"
        variant reuses its recogniser's result, and its CPU, for the same take)."""
        hearer = decoder.split("+")[0]
        if (hearer, key) not in self._heard:
            started = time.process_time()
            hypotheses = _recognisers[hearer].recognise(
                audio, length=None if hearer == "baseline" else length
            )
            cpu = time.process_time() - started
            self._heard[(hearer, key)] = (Utterance(hypotheses, 0.0, len(audio) / RATE), cpu)
        utterance, cpu = self._heard[(hearer, key)]
        # Counter holds these floats as well (typed for int values only)
        self.counts[f"{decoder}.cpu"] += cpu  # type: ignore[assignment]
        self.counts[f"{decoder}.speech_s"] += len(audio) / RATE  # type: ignore[assignment]
        return utterance

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
        """(digits heard, whether to read them back, the utterance)."""
        # "+open": a card group's retry recognised at an open length (the journey's grouping
        # as the caller likes after a failed group), read for the printed group's length first
        attempt = key[1] if isinstance(key, tuple) else 0
        if decoder.endswith("+open") and field == "card-group" and attempt > 0:
            utterance = self.recognise(decoder, audio, None, (key, "open"))
        else:
            utterance = self.recognise(decoder, audio, length, key)
        if decoder == "baseline":
            words = utterance.hypotheses[0].words if utterance.hypotheses else ()
            return words_to_digits(words) or "", True, utterance
        reading = best_reading(
            utterance,
            field,
            expected_length=length,
            prefix=prefix,
            today=TODAY,
            earlier=earlier,
            denied=denied,
        )
        if reading is None:
            return "", False, utterance
        self.last_reading = (reading.valid, reading.confidence)
        return reading.digits, reading.valid and reading.confidence >= self.threshold, utterance

    def runner_up(
        self,
        decoder: str,
        utterance: Utterance,
        earlier: list[Utterance],
        field: str,
        truth: str,
        prefix: str,
        denied: set[str],
    ) -> tuple[str, str | None, float] | None:
        """The runner-up reading after a "no", the caller's answer to it ("was it ...?") and
        its confidence,
        for "+runnerup" decoders, when it fits the field's rules and is at least
        `_runner_up_threshold` sure, as the journey reads it back."""
        if "+runnerup" not in decoder:
            return None
        reading = best_reading(
            utterance,
            field,
            expected_length=len(truth),
            prefix=prefix,
            today=TODAY,
            earlier=earlier,
            denied=denied,
        )
        if reading is None or not reading.valid or reading.confidence < _runner_up_threshold:
            return None
        self.counts[f"{decoder}.read_backs"] += 1
        self.counts[f"{decoder}.read_backs_right"] += reading.digits == truth
        self.counts[f"{decoder}.runner_ups"] += 1
        self.counts[f"{decoder}.runner_ups_right"] += reading.digits == truth
        answer = self.answer(decoder, "yes" if reading.digits == truth else "no")
        return reading.digits, answer, reading.confidence

    def answer(self, decoder: str, word: str) -> str | None:
        if word not in self._answers:
            self._answers[word] = self.say(word, word)
        hearer = "whisper" if decoder.startswith("whisper") else "constrained"
        return answer_of(self.recognise(hearer, self._answers[word], None, word))

    def plan(self) -> tuple[str, list[tuple[str, str, str]]]:
        """This payment's card number and fields to say, (field kind, truth, prefix) each,
        drawn from its seed (so another source of speech at the same seed says the same
        digits)."""
        card, groups = card_number(self.rng)
        month = self.rng.randint(1, 12)
        year = (TODAY.year + self.rng.randint(1, 8)) % 100
        fields: list[tuple[str, str, str]] = []  # (field kind, truth, prefix)
        at = 0
        for size in groups:
            fields.append(("card-group", card[at : at + size], card[:at]))
            at += size
        fields.append(("expiry", f"{month:02d}{year:02d}", ""))
        fields.append(
            (
                "code",
                "".join(str(self.rng.randint(0, 9)) for _ in range(4 if len(card) == 15 else 3)),
                "",
            )
        )
        return card, fields

    def run(self) -> Counter[str]:
        card, fields = self.plan()
        # the same utterances for both decoders: attempt k of each field rendered once
        takes: dict[tuple[int, int], npt.NDArray[np.int16]] = {}
        take_speed: dict[tuple[int, int], int] = {}

        def take(position: int, attempt: int) -> npt.NDArray[np.int16]:
            if (position, attempt) not in takes:
                takes[(position, attempt)] = self.say(
                    spoken(fields[position][1]), (position, attempt)
                )
                take_speed[(position, attempt)] = self.speeds[-1]
            return takes[(position, attempt)]

        for decoder in _decoders:
            ok = True
            card_first = True
            card_failures = 0  # failed tries over all the card's groups
            for position, (field, truth, _) in enumerate(fields):
                confirmed = None
                tried: list[dict[str, object]] = []
                # "+tries": the field's earlier tries pooled, the readings denied never again
                earlier: list[Utterance] = []
                denied: set[str] = set()
                for attempt in range(self.attempts):
                    prefix = (
                        card[: sum(len(f[1]) for f in fields[:position])]
                        if field == "card-group"
                        else ""
                    )
                    tries = "+tries" in decoder
                    self.last_reading = None
                    digits, read_back, utterance = self.read(
                        decoder,
                        take(position, attempt),
                        (position, attempt),
                        field,
                        len(truth),
                        prefix,
                        earlier if tries else [],
                        denied if tries else set(),
                    )
                    earlier.append(utterance)
                    tried.append(
                        {
                            "heard": digits,
                            "read_back": read_back,
                            "speed": take_speed[(position, attempt)],
                            "valid": self.last_reading and self.last_reading[0],
                            "confidence": self.last_reading and round(self.last_reading[1], 3),
                        }
                    )
                    if attempt == 0:
                        self.counts[f"{decoder}.digit_errors"] += edits(truth, digits)
                        self.counts[f"{decoder}.digits"] += len(truth)
                        right = digits == truth
                        self.counts[f"{decoder}.fields"] += 1
                        self.counts[f"{decoder}.fields_right"] += right
                        if field == "card-group":
                            card_first &= right
                        else:
                            self.counts[f"{decoder}.{field}_first"] += right
                    if not read_back:
                        continue
                    self.counts[f"{decoder}.read_backs"] += 1
                    self.counts[f"{decoder}.read_backs_right"] += digits == truth
                    heard = self.answer(decoder, "yes" if digits == truth else "no")
                    tried[-1]["answer"] = heard
                    if heard == "yes":
                        confirmed = digits
                        break
                    if heard == "no":
                        denied.add(digits)
                        # "+runnerup": the runner-up read back in the same try, no attempt
                        # more (the journey's way since speech_min_runner_up_confidence)
                        second = self.runner_up(
                            decoder, utterance, earlier[:-1], field, truth, prefix, denied
                        )
                        if second is not None:
                            tried[-1]["runner_up"] = second[0]
                            tried[-1]["runner_up_answer"] = second[1]
                            tried[-1]["runner_up_confidence"] = round(second[2], 3)
                            if second[1] == "yes":
                                confirmed = second[0]
                                break
                            if second[1] == "no":
                                denied.add(second[0])
                # a failed field fails the payment; the rest are still said, so that the
                # first-try figures cover every field
                ok &= confirmed == truth
                if field == "card-group":
                    card_failures += len(tried) - (confirmed is not None)
                self.records.append(
                    {
                        "condition": self.condition,
                        "decoder": decoder,
                        "voice": self.voice,
                        "field": field,
                        "position": position,
                        "truth": truth,  # synthetic digits of a simulated caller
                        "tries": tried,
                        "confirmed": confirmed,
                    }
                )
            self.counts[f"{decoder}.card_first"] += card_first
            self.counts[f"{decoder}.paid"] += ok
            # the journey counts a card's failed attempts over all its groups (the keypad's
            # `max_attempts` a field), not a group's
            self.counts[f"{decoder}.paid_shared"] += ok and card_failures < self.attempts
        self.counts["payments"] += 1
        return self.counts


def _one(
    task: tuple[str, int, int, int, float],
) -> tuple[str, Counter[str], list[dict[str, object]]]:
    condition, index, seed, attempts, threshold = task
    payment = Payment(condition, index, seed, attempts, threshold)
    counts = payment.run()
    return condition, counts, payment.records


def silence_cost(seconds: float = 60.0) -> tuple[float, int]:
    """CPU seconds the VAD takes on `seconds` of line noise in 20 ms ticks, and the stretches
    of speech it finds there (each would be a recognition)."""
    rng = np.random.default_rng(0)
    noise = (sosfilt(_BAND, rng.standard_normal(int(seconds * RATE))) * 60).astype(np.int16)
    vad = VoiceActivity()
    found = 0
    started = time.process_time()
    for at in range(0, len(noise), 160):
        found += len(vad.feed(noise[at : at + 160], (at + 160) / RATE))
    return time.process_time() - started, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--payments", type=int, default=6, help="per condition (default 6)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--attempts", type=int, default=3, help="per group or field (default 3)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=JourneyConfig().speech_min_confidence,
        help="confidence to read back (default the journey's, speech_min_confidence)",
    )
    parser.add_argument(
        "--runner-up-threshold",
        type=float,
        default=_runner_up_threshold,
        help="confidence to read a runner-up back after a 'no' (+runnerup decoders; default "
        "the journey's, speech_min_runner_up_confidence)",
    )
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--decoders", default=",".join(DECODERS))
    parser.add_argument(
        "--whisper-model",
        choices=("tiny.en", "base"),
        default="tiny.en",
        help="the Whisper model of the whisper decoders (speech.recogniser whisper-tiny.en, "
        "the default, or whisper-base)",
    )
    parser.add_argument(
        "--whisper-prior-weight",
        type=float,
        help="the Whisper recogniser's prior_weight instead of its model's (0: no discount of "
        "its digit priors), to compare on the same audio",
    )
    parser.add_argument(
        "--whisper-denoise",
        choices=("on", "off"),
        help="the Whisper recogniser's subtraction of steady line noise on or off instead of "
        "as deployed (on), to compare on the same audio",
    )
    parser.add_argument(
        "--whisper-beam",
        type=int,
        help=f"Whisper's beam width and n-best instead of the product's ({whisper.BEAM})",
    )
    parser.add_argument(
        "--records",
        help="write each field's tries (voice, truth, heard, answers) here as JSON lines, "
        "for bench/speech_errors.py (synthetic digits only)",
    )
    args = parser.parse_args()
    conditions = args.conditions.split(",")
    decoders = tuple(args.decoders.split(","))
    tasks = [
        (condition, index, args.seed, args.attempts, args.threshold)
        for index in range(args.payments)
        for condition in conditions
    ]
    started = time.monotonic()
    totals: dict[str, Counter[str]] = {condition: Counter() for condition in conditions}
    with multiprocessing.get_context("spawn").Pool(
        args.jobs,
        initializer=_init,
        initargs=(
            decoders,
            args.whisper_model,
            args.whisper_prior_weight,
            args.runner_up_threshold,
            None if args.whisper_denoise is None else args.whisper_denoise == "on",
            args.whisper_beam,
        ),
    ) as pool:
        records: list[dict[str, object]] = []
        for condition, counts, payment_records in pool.imap_unordered(_one, tasks):
            totals[condition].update(counts)
            records.extend(payment_records)
    if args.records:
        with open(args.records, "w") as out:
            for record in records:
                out.write(json.dumps(record) + "\n")
    wall = time.monotonic() - started
    vad_cpu, vad_found = silence_cost()

    print(
        f"# speech accuracy: {args.payments} payments per condition, attempts {args.attempts}, "
        f"threshold {args.threshold}, runner-up threshold {args.runner_up_threshold}, "
        f"seed {args.seed}, {wall:.0f} s wall on {args.jobs} jobs"
        + (
            f", Whisper prior weight {args.whisper_prior_weight:g}"
            if args.whisper_prior_weight is not None
            else ""
        )
        + (f", denoise {args.whisper_denoise}" if args.whisper_denoise else "")
        + (f", beam {args.whisper_beam}" if args.whisper_beam else "")
    )
    print(
        "| condition | decoder | digit error, 1st try | fields right 1st try | card right 1st try "
        "| expiry 1st | code 1st | paid within attempts | paid, card's attempts shared "
        "| read-backs right | CPU s per s of speech |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for condition in conditions:
        t = totals[condition]
        n = max(t["payments"], 1)
        for decoder in decoders:
            digits = max(t[f"{decoder}.digits"], 1)
            speech = max(t[f"{decoder}.speech_s"], 1e-9)
            print(
                f"| {condition} | {decoder} | {t[f'{decoder}.digit_errors'] / digits:.1%} | "
                f"{t[f'{decoder}.fields_right'] / max(t[f'{decoder}.fields'], 1):.0%} | "
                f"{t[f'{decoder}.card_first'] / n:.0%} | {t[f'{decoder}.expiry_first'] / n:.0%} | "
                f"{t[f'{decoder}.code_first'] / n:.0%} | {t[f'{decoder}.paid'] / n:.0%} | "
                f"{t[f'{decoder}.paid_shared'] / n:.0%} | "
                f"{t[f'{decoder}.read_backs_right'] / max(t[f'{decoder}.read_backs'], 1):.0%} | "
                f"{t[f'{decoder}.cpu'] / speech:.3f} |"
            )
    for condition in conditions:
        t = totals[condition]
        for decoder in decoders:
            if "+runnerup" in decoder:
                print(
                    f"{condition} {decoder}: runner-ups read back after a 'no' "
                    f"{t[f'{decoder}.runner_ups']}, right {t[f'{decoder}.runner_ups_right']}"
                )
    print(
        f"VAD on 60 s of line noise: {vad_cpu * 1000:.0f} ms CPU "
        f"({vad_cpu / 60:.5f} s per s), {vad_found} stretches of speech found (recognitions)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
