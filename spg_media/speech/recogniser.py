"""The recogniser: one utterance of 8 kHz int16 samples in, n-best `Hypothesis` tuple out.

`DigitRecogniser` wraps a pocketsphinx 5 decoder (its en-US acoustic model and dictionary ship
in the wheel) searching a JSGF grammar of the digit words and the dialogue's answers. Telephone
audio is resampled 8 -> 16 kHz (the model's rate) and decoded over a noise floor, three times
(see `recognise`). It blocks for the decodes (a few hundredths of the audio's duration each)
and holds the GIL while doing so, which is why the engine runs it in worker processes
(spg_media/speech/engine.py). No audio or text leaves it except the returned hypotheses;
pocketsphinx's own logging is turned off (it would print the words).
"""

from __future__ import annotations

import math
import time
from fractions import Fraction
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

from spg_media.speech.digits import words_to_digits
from spg_media.speech.model import Hypothesis

LANGUAGES = ("en",)
MODEL_RATE = 16000
NBEST = 40  # lattice paths read; many differ only in word timing and are merged
# Path scores come as the exponential of a scaled-down log-likelihood, so the natural logs of
# two paths' scores differ by hundredths; this factor makes them log-odds in which a pass's
# runner-up readings keep some weight. Chosen by eye on a few utterances, not calibrated: the
# spread between the pooled passes carries most of the confidence.
SCORE_SCALE = 200.0
PASSES = 3  # decodes of each utterance, each over another noise floor (see `recognise`)
# CPU budget per second of speech: a further pass runs only if it fits, judged by what the
# passes so far took (noisy audio keeps more of the search alive and costs 3x clean audio)
CPU_PER_SPEECH_SECOND = 0.15
NOISE_FLOOR_SNR_DB = 20.0
REPEATS_UP_TO = 8  # digits an exact-length grammar allows "double"/"triple" in

_DIGITS = "zero | oh | one | two | three | four | five | six | seven | eight | nine"
DIGIT_GRAMMAR = f"""#JSGF V1.0;
grammar digits;
public <utterance> = <digits> [hash | pound] | yes | no | repeat | start again | star;
<digits> = <item>+;
<item> = {_DIGITS} | double <digit> | triple <digit>;
<digit> = {_DIGITS};
"""


def exact_length_grammar(length: int) -> str:
    """Exactly `length` digits (a card group, an expiry, a code the dialogue knows the length
    of), "double"/"triple" counting two and three, or an answer: the grammar itself rules out
    inserted and dropped digits."""
    if not 1 <= length <= 19:
        raise ValueError("digit count must be 1..19")
    # <nK> = K digits: one digit and K-1 more, or a double and K-2 more, or a triple and K-3.
    # The grammar compiler inlines rules, so the paths grow as a tribonacci sequence: past
    # REPEATS_UP_TO digits (longer than any group said at once) the digits are said one by one.
    repeats = length <= REPEATS_UP_TO
    rules = []
    for count in range(1, length + 1):
        ways = [f"<digit> <n{count - 1}>" if count > 1 else "<digit>"]
        for word, size in (("double", 2), ("triple", 3)) if repeats else ():
            if count == size:
                ways.append(f"{word} <digit>")
            elif count > size:
                ways.append(f"{word} <digit> <n{count - size}>")
        rules.append(f"<n{count}> = {' | '.join(ways)};")
    body = "\n".join(rules)
    return f"""#JSGF V1.0;
grammar exact;
public <utterance> = <n{length}> [hash | pound] | yes | no | repeat | start again;
{body}
<digit> = {_DIGITS};
"""


# The unconstrained baseline of the benchmark: any sequence of digit words, nothing else.
PLAIN_DIGIT_GRAMMAR = f"""#JSGF V1.0;
grammar plain;
public <utterance> = ({_DIGITS})+;
"""


# The recognisers `speech.recogniser` chooses among (docs/contract.md): Whisper tiny.en or base
# on CTranslate2 (spg_media/speech/whisper.py), or pocketsphinx's en-US model (this module).
# tiny.en is the default: fewer digit errors than base on every condition of the speech bench,
# for two thirds of its CPU (bench/RESULTS.md "Voice entry").
WHISPER_RECOGNISERS = {"whisper-tiny.en": "tiny.en", "whisper-base": "base"}
RECOGNISERS = (*WHISPER_RECOGNISERS, "pocketsphinx")
DEFAULT_RECOGNISER = "whisper-tiny.en"


class Recogniser(Protocol):
    """One utterance of int16 samples in, n-best hypotheses (the grammar's words) out."""

    def recognise(
        self, samples: npt.NDArray[np.int16], rate: int = 8000, length: int | None = None
    ) -> tuple[Hypothesis, ...]: ...


def recogniser_installed(kind: str) -> bool:
    """Whether the recogniser `kind` (one of `RECOGNISERS`) and its model are installed."""
    if kind in WHISPER_RECOGNISERS:
        from spg_media.speech.whisper import whisper_installed

        return whisper_installed(WHISPER_RECOGNISERS[kind])
    if kind == "pocketsphinx":
        try:
            import pocketsphinx  # noqa: F401
        except ImportError:
            return False
        return True
    raise ValueError(f"unknown recogniser {kind!r}; expected one of {', '.join(RECOGNISERS)}")


def make_recogniser(kind: str = DEFAULT_RECOGNISER) -> Recogniser:
    """A recogniser of the kind `speech.recogniser` names, its model loaded (about a second)."""
    if kind in WHISPER_RECOGNISERS:
        from spg_media.speech.whisper import WhisperDigitRecogniser

        # pocketsphinx reads digits of unknown length, within what is left of the CPU budget
        return WhisperDigitRecogniser(
            fallback=DigitRecogniser(cpu_per_speech_second=0.08),
            model=WHISPER_RECOGNISERS[kind],
        )
    if kind == "pocketsphinx":
        return DigitRecogniser()
    raise ValueError(f"unknown recogniser {kind!r}; expected one of {', '.join(RECOGNISERS)}")


def language_supported(language: str, recogniser: str = DEFAULT_RECOGNISER) -> bool:
    """Whether `recogniser`'s model for `language` ("en", "en-GB", ...) is installed."""
    base = language.lower().split("-")[0].split("_")[0]
    return base in LANGUAGES and recogniser_installed(recogniser)


def resample_to_model(
    samples: npt.NDArray[np.int16] | npt.NDArray[np.float64], rate: int = 8000
) -> npt.NDArray[np.float64]:
    """Samples at `rate` (int16, or float at int16 scale) as float samples at 16 kHz, the
    rate of both models (pocketsphinx's and Whisper's)."""
    x = samples.astype(np.float64)
    if rate == MODEL_RATE:
        return x
    ratio = Fraction(MODEL_RATE, rate)
    return np.asarray(resample_poly(x, ratio.numerator, ratio.denominator), dtype=np.float64)


def with_noise_floor(
    audio: npt.NDArray[np.float64], seed: int, snr_db: float = NOISE_FLOOR_SNR_DB
) -> bytes:
    """`audio` with white noise `snr_db` below its active speech, as int16 bytes.

    The wideband model decodes band-limited telephone speech far better over a noise floor
    (digit error on espeak-ng groups 61 % -> 27 %, measured): the empty band above 4 kHz and
    the digital silence around the speech otherwise give the front end log-energies the model
    never saw in training.
    """
    magnitude = np.abs(audio)
    peak = float(magnitude.max()) if audio.size else 0.0
    if peak > 0.0:
        active = audio[magnitude > 0.05 * peak]
        power = float(np.mean(active**2))
        noise = np.random.default_rng(seed).standard_normal(audio.size)
        audio = audio + noise * np.sqrt(power / 10 ** (snr_db / 10))
    return bytes(np.clip(np.round(audio), -32768, 32767).astype(np.int16).tobytes())


class DigitRecogniser:
    """A pocketsphinx decoder on the digit grammar. Not thread-safe: one per worker."""

    def __init__(
        self,
        grammar: str = DIGIT_GRAMMAR,
        passes: int = PASSES,
        cpu_per_speech_second: float | None = CPU_PER_SPEECH_SECOND,
    ) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise RuntimeError(
                "speech recognition needs the pocketsphinx package (pip install pocketsphinx)"
            ) from exc
        self._searches: dict[int | None, str] = {None: "digits"}
        self.passes = passes
        self.cpu_per_speech_second = cpu_per_speech_second  # None: always every pass
        # loglevel FATAL: pocketsphinx logs hypotheses at INFO; none may reach a log.
        self._decoder = Decoder(loglevel="FATAL", bestpath=True)
        self._decoder.add_jsgf_string("digits", grammar)
        self._decoder.activate_search("digits")

    def recognise(
        self, samples: npt.NDArray[np.int16], rate: int = 8000, length: int | None = None
    ) -> tuple[Hypothesis, ...]:
        """The n-best readings of one utterance, best first (empty if nothing fits).
        `length`: the utterance is exactly that many digits (or an answer).

        The utterance is decoded up to `passes` times (fewer when another would take the CPU
        past `CPU_PER_SPEECH_SECOND`), each over its own noise floor; each pass's n-best is
        turned into probabilities and the passes are averaged. Where the passes
        disagree, that is where the recogniser is unsure: the pooled probabilities say so
        better than one pass's path scores, and the alternatives are real ones for the field's
        rules to choose among.
        """
        decoder = self._decoder
        search = self._searches.get(length)
        if search is None:
            assert length is not None
            search = f"exact{length}"
            decoder.add_jsgf_string(search, exact_length_grammar(length))
            self._searches[length] = search
        if decoder.current_search() != search:
            decoder.activate_search(search)
        audio = resample_to_model(samples, rate)
        budget = (
            math.inf
            if self.cpu_per_speech_second is None
            else self.cpu_per_speech_second * len(samples) / rate
        )
        started = time.thread_time()
        pooled: dict[tuple[str, ...], float] = {}
        for seed in range(self.passes):
            for words, probability in self._decode(with_noise_floor(audio, seed)).items():
                pooled[words] = pooled.get(words, 0.0) + probability
            spent = time.thread_time() - started
            if spent + spent / (seed + 1) > budget:
                break
        if length is not None:
            # a decode that never reached the grammar's end hands out its best partial path
            pooled = {
                words: mass
                for words, mass in pooled.items()
                if len(words_to_digits(words) or "x" * length) == length
            }
        total = sum(pooled.values())
        pooled = {words: mass / total for words, mass in pooled.items() if total > 0.0}
        ranked = sorted(pooled.items(), key=lambda item: -item[1])
        return tuple(Hypothesis(words, math.log(p)) for words, p in ranked if p > 0.0)

    def _decode(self, audio: bytes) -> dict[tuple[str, ...], float]:
        """One pass: its distinct readings with probabilities (softmax of the path scores)."""
        decoder = self._decoder
        # The front end's noise estimate and cepstral mean carry over from one utterance to
        # the next; each decode starts afresh (0.1 ms), so that one caller's voice and line
        # do not bias another's and a result depends on its audio alone.
        decoder.reinit_feat()
        decoder.start_utt()
        decoder.process_raw(audio, no_search=False, full_utt=True)
        decoder.end_utt()
        best = decoder.hyp()
        if best is None or not best.hypstr:
            return {}
        scores: dict[tuple[str, ...], float] = {}
        for index, path in enumerate(decoder.nbest()):
            if index >= NBEST or path is None:
                break
            words = tuple(path.hypstr.split())
            if not words:
                continue
            score = _log_score(path.score) * SCORE_SCALE
            if words not in scores or score > scores[words]:
                scores[words] = score
        best_words = tuple(best.hypstr.split())
        top = max(scores.values(), default=0.0)
        # the decoder's best path holds at least as much as any n-best path
        scores[best_words] = max(scores.get(best_words, top), top)
        weights = {words: math.exp(score - top) for words, score in scores.items()}
        total = sum(weights.values())
        return {words: weight / total for words, weight in weights.items()}


def _log_score(score: float) -> float:
    """pocketsphinx's Python API hands out path scores already exponentiated (logmath_exp);
    back to the log domain (a path whose score underflowed is as good as impossible)."""
    return math.log(score) if score > 0.0 else -1e4
