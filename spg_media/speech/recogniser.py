"""The recogniser: one utterance of 8 kHz int16 samples in, n-best `Hypothesis` tuple out.

`DigitRecogniser` wraps a pocketsphinx 5 decoder (its en-US acoustic model and dictionary ship
in the wheel) searching a JSGF grammar of the digit words and the dialogue's answers. Telephone
audio is resampled 8 -> 16 kHz (the model's rate). It blocks for the decode (about a tenth of
the audio's duration) and holds the GIL while doing so, which is why the engine runs it in
worker processes (spg_media/speech/engine.py). No audio or text leaves it except the returned
hypotheses; pocketsphinx's own logging is turned off (it would print the words).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

from spg_media.speech.model import Hypothesis

LANGUAGES = ("en",)
MODEL_RATE = 16000
NBEST = 40  # lattice paths read; many differ only in word timing and are merged
# Path scores come as the exponential of a scaled-down log-likelihood, so the natural log of
# two paths' scores differ by hundredths; this factor turns that into the log-odds the
# softmax of `best_reading` wants (set from the benchmark's confusions: see bench/RESULTS.md).
SCORE_SCALE = 200.0

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
    of), or a yes/no/repeat answer: the grammar itself rules out insertions and deletions."""
    if not 1 <= length <= 19:
        raise ValueError("digit count must be 1..19")
    return f"""#JSGF V1.0;
grammar exact;
public <utterance> = {" ".join(["<digit>"] * length)} [hash | pound] | yes | no | repeat
    | start again;
<digit> = {_DIGITS};
"""


# The unconstrained baseline of the benchmark: any sequence of digit words, nothing else.
PLAIN_DIGIT_GRAMMAR = f"""#JSGF V1.0;
grammar plain;
public <utterance> = ({_DIGITS})+;
"""


def language_supported(language: str) -> bool:
    """Whether a model for `language` ("en", "en-GB", ...) is installed."""
    base = language.lower().split("-")[0].split("_")[0]
    if base not in LANGUAGES:
        return False
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        return False
    return True


def resample_to_model(samples: npt.NDArray[np.int16], rate: int = 8000) -> bytes:
    """int16 samples at `rate` as 16 kHz int16 bytes for the decoder."""
    if rate == MODEL_RATE:
        return samples.astype(np.int16).tobytes()
    ratio = Fraction(MODEL_RATE, rate)
    up = resample_poly(samples.astype(np.float32), ratio.numerator, ratio.denominator)
    return bytes(np.clip(np.round(up), -32768, 32767).astype(np.int16).tobytes())


class DigitRecogniser:
    """A pocketsphinx decoder on the digit grammar. Not thread-safe: one per worker."""

    def __init__(self, grammar: str = DIGIT_GRAMMAR) -> None:
        self._searches: dict[int | None, str] = {None: "digits"}
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise RuntimeError(
                "speech recognition needs the pocketsphinx package (pip install pocketsphinx)"
            ) from exc
        # loglevel FATAL: pocketsphinx logs hypotheses at INFO; none may reach a log.
        self._decoder = Decoder(loglevel="FATAL", bestpath=True)
        self._decoder.add_jsgf_string("digits", grammar)
        self._decoder.activate_search("digits")

    def recognise(
        self, samples: npt.NDArray[np.int16], rate: int = 8000, length: int | None = None
    ) -> tuple[Hypothesis, ...]:
        """The n-best readings of one utterance, best first (empty if nothing fits).
        `length`: the utterance is exactly that many digits (or an answer)."""
        audio = resample_to_model(samples, rate)
        decoder = self._decoder
        search = self._searches.get(length)
        if search is None:
            assert length is not None
            search = f"exact{length}"
            decoder.add_jsgf_string(search, exact_length_grammar(length))
            self._searches[length] = search
        if decoder.current_search() != search:
            decoder.activate_search(search)
        decoder.start_utt()
        decoder.process_raw(audio, no_search=False, full_utt=True)
        decoder.end_utt()
        best = decoder.hyp()
        if best is None or not best.hypstr:
            return ()
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
        if best_words not in scores:
            scores[best_words] = max(scores.values(), default=0.0)
        ranked = sorted(scores.items(), key=lambda item: -item[1])
        # the decoder's best path first, whatever the n-best search made of it
        ranked.sort(key=lambda item: item[0] != best_words)
        return tuple(Hypothesis(words, score) for words, score in ranked)


def _log_score(score: float) -> float:
    """pocketsphinx's Python API hands out path scores already exponentiated (logmath_exp);
    back to the log domain (a path whose score underflowed is as good as impossible)."""
    return math.log(score) if score > 0.0 else -1e4
