"""The Whisper recogniser (spg_media/speech/whisper.py): its features, its constraints and its
model check, on speech rendered by espeak-ng in the test (never stored), and the choice of
recogniser by `speech.recogniser`."""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy.signal import resample_poly

from spg_media.call import voice_entry_offered
from spg_media.config import ConfigError, load_config
from spg_media.speech import Utterance, answer_of, words_to_digits
from spg_media.speech import whisper as whisper_module
from spg_media.speech.model import DIGIT_WORDS, WORDS, Hypothesis
from spg_media.speech.recogniser import (
    DEFAULT_RECOGNISER,
    RECOGNISERS,
    DigitRecogniser,
    make_recogniser,
    recogniser_installed,
)
from spg_media.speech.whisper import (
    HOP,
    MODEL_RATE,
    N_MELS,
    WhisperDigitRecogniser,
    log_mel,
    mel_filters,
)

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


def spoken(text: str) -> npt.NDArray[np.int16]:
    """`text` said by espeak-ng, at 8 kHz (rendered in memory)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-us", "--stdout", text], check=True, capture_output=True
    ).stdout
    rate = int.from_bytes(wav[24:28], "little")
    samples = np.frombuffer(wav[44:], dtype=np.int16).astype(np.float64)
    audio: npt.NDArray[np.float64] = np.clip(resample_poly(samples, 8000, rate), -32768, 32767)
    return audio.astype(np.int16)


def noise(seconds: float, level: float = 30.0, seed: int = 0) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * 8000)) * level).astype(np.int16)


@pytest.fixture(scope="module", params=sorted(whisper_module.MODELS))
def recogniser(request: pytest.FixtureRequest) -> WhisperDigitRecogniser:
    """Each pinned Whisper model in the same recogniser."""
    return WhisperDigitRecogniser(model=request.param)


def test_mel_filters_cover_the_band_in_order() -> None:
    filters = mel_filters()
    assert filters.shape == (N_MELS, 201)
    assert (filters >= 0).all() and (filters.sum(axis=1) > 0).all()
    peaks = filters.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all() and peaks[-1] > peaks[0]


def test_log_mel_puts_a_tone_in_its_band_and_pads_to_the_frames() -> None:
    t = np.arange(MODEL_RATE) / MODEL_RATE
    tone = 8000.0 * np.sin(2 * np.pi * 1000.0 * t)
    features = log_mel(tone, 150)  # one second of tone, half a second of silence after
    assert features.shape == (N_MELS, 150)
    fft_bin = round(1000.0 / (MODEL_RATE / 400))
    assert abs(int(features[:, 50].argmax()) - int(mel_filters()[:, fft_bin].argmax())) <= 1
    # Whisper's normalisation: at most 8 decades below the loudest, scaled by a quarter
    assert features.max() - features.min() <= 2.0 + 1e-6
    assert features[:, 130].max() < features[:, 50].max()  # the padding is silence
    assert log_mel(tone, MODEL_RATE // HOP // 2).shape == (N_MELS, 50)  # cut to the frames


@needs_espeak
def test_whisper_hears_yes_and_no_with_or_without_a_length(
    recogniser: WhisperDigitRecogniser,
) -> None:
    for word in ("yes", "no"):
        audio = np.concatenate((noise(0.3), spoken(word), noise(0.3)))
        for length in (None, 4):
            hypotheses = recogniser.recognise(audio, length=length)
            assert answer_of(Utterance(hypotheses, 0.0, 1.0)) == word


@needs_espeak
def test_whisper_gives_only_grammar_words_and_that_many_digits(
    recogniser: WhisperDigitRecogniser,
) -> None:
    audio = np.concatenate((noise(0.3), spoken("5 5 5 5 4 4 4 4"), noise(0.3)))
    hypotheses = recogniser.recognise(audio, length=4)
    assert hypotheses
    for hypothesis in hypotheses:
        assert set(hypothesis.words) <= WORDS
        digits = words_to_digits(hypothesis.words)
        assert digits is None or len(digits) == 4
    assert any(words_to_digits(h.words) for h in hypotheses)
    # the scores are log posteriors over the n-best
    assert sum(np.exp(h.score) for h in hypotheses) == pytest.approx(1.0)


@needs_espeak
def test_whisper_reads_every_group_length_it_is_given(recogniser: WhisperDigitRecogniser) -> None:
    # American Express's groups are 4-6-5 and its code 4: the exact decode must reach each
    # length (it once stopped one short of 5 and 6: CTranslate2's halved max_length)
    for said in ("3 6 7", "3 6 7 2", "3 6 7 2 5", "3 6 7 2 5 1", "3 6 7 2 5 1 8 4"):
        length = len(said.split())
        audio = np.concatenate((noise(0.3), spoken(said), noise(0.3)))
        readings = [words_to_digits(h.words) for h in recogniser.recognise(audio, length=length)]
        digits = [reading for reading in readings if reading is not None]
        assert digits, length
        assert all(len(reading) == length for reading in digits), length
        assert digits[0] == said.replace(" ", ""), length


def test_decode_lengths_allow_for_ctranslate2_halving_them() -> None:
    # CTranslate2's Whisper generates min(max_length // 2, max_length - prompt) tokens
    for prompt in (1, 4, 7):
        for tokens in range(1, 30):
            max_length = whisper_module._max_length(prompt, tokens)
            assert min(max_length // 2, max_length - prompt) >= tokens
            assert max_length <= max(prompt + tokens, 2 * tokens)


@needs_espeak
def test_whisper_reads_clear_digits(recogniser: WhisperDigitRecogniser) -> None:
    audio = np.concatenate((noise(0.3), spoken("3 6 7 2"), noise(0.3)))
    hypotheses = recogniser.recognise(audio, length=4)
    assert words_to_digits(hypotheses[0].words) == "3672"
    free = recogniser.recognise(audio)  # any number of digits, no fallback: Whisper's own
    assert all(word in DIGIT_WORDS for word in free[0].words)


class _Fallback:
    """Stands in for pocketsphinx: says what it was asked and always hears "1 2"."""

    def __init__(self) -> None:
        self.calls: list[int | None] = []

    def recognise(
        self, samples: npt.NDArray[np.int16], rate: int = 8000, length: int | None = None
    ) -> tuple[Hypothesis, ...]:
        self.calls.append(length)
        return (Hypothesis(("one", "two"), 0.0),)


@needs_espeak
def test_digits_of_unknown_length_come_from_the_fallback() -> None:
    fallback = _Fallback()
    recogniser = WhisperDigitRecogniser(fallback=fallback)
    digits = np.concatenate((noise(0.3), spoken("3 6 7 2"), noise(0.3)))
    assert words_to_digits(recogniser.recognise(digits)[0].words) == "12"
    assert fallback.calls == [None]
    # a known length: Whisper alone
    assert words_to_digits(recogniser.recognise(digits, length=4)[0].words) == "3672"
    # an answer: Whisper's, the fallback not asked
    yes = np.concatenate((noise(0.3), spoken("yes"), noise(0.3)))
    assert answer_of(Utterance(recogniser.recognise(yes), 0.0, 1.0)) == "yes"
    assert fallback.calls == [None]


def test_whisper_on_silence_gives_nothing_long(recogniser: WhisperDigitRecogniser) -> None:
    for hypothesis in recogniser.recognise(noise(1.0, level=5.0), length=6):
        digits = words_to_digits(hypothesis.words)
        assert digits is None or len(digits) == 6


@pytest.mark.parametrize("model", sorted(whisper_module.MODELS))
@pytest.mark.parametrize("changed", ["model.bin", "tokenizer.json"])
def test_changed_model_files_are_refused(
    monkeypatch: pytest.MonkeyPatch, model: str, changed: str
) -> None:
    """Every file is checked against the publisher's hash: changed weights, or a tokenizer that
    maps tokens to other words (changing what the digits read as), are refused."""
    pinned = whisper_module.MODELS[model]
    wrong = dataclasses.replace(pinned, sha256={**pinned.sha256, changed: "0" * 64})
    monkeypatch.setitem(whisper_module.MODELS, model, wrong)
    with pytest.raises(RuntimeError, match="SHA-256"):
        WhisperDigitRecogniser(model=model)
    kind = f"whisper-{model}"
    whisper_module.whisper_installed.cache_clear()
    try:
        # not offered at all: callers are asked for keys only
        assert not recogniser_installed(kind)
        assert recogniser_installed("pocketsphinx")
        assert not voice_entry_offered("en", kind)
        assert voice_entry_offered("en", "pocketsphinx")  # speech.recogniser = "pocketsphinx"
        other = next(name for name in whisper_module.MODELS if name != model)
        assert voice_entry_offered("en", f"whisper-{other}")  # the other model is intact
    finally:
        whisper_module.whisper_installed.cache_clear()


def test_the_pinned_models_are_the_publishers_files() -> None:
    for model in whisper_module.MODELS.values():
        files = model.verified_files()
        assert set(files) == set(whisper_module.FILES)
        assert len(files["model.bin"]) == model.weights_bytes


def test_the_digit_priors_are_discounted_for_tiny_en_only() -> None:
    """tiny.en's discount keeps it within the CPU budget; base's would not (0.18 core-s a
    second of speech): its weight is 0."""
    assert whisper_module.TINY_EN.prior_weight == 0.5
    assert whisper_module.BASE.prior_weight == 0.0
    assert WhisperDigitRecogniser(model="base").prior_weight == 0.0


def test_recognisers_by_name() -> None:
    assert DEFAULT_RECOGNISER == "whisper-tiny.en"
    assert set(RECOGNISERS) == {"whisper-tiny.en", "whisper-base", "pocketsphinx"}
    assert all(recogniser_installed(kind) for kind in RECOGNISERS)
    assert isinstance(make_recogniser("pocketsphinx"), DigitRecogniser)
    for kind, model in (("whisper-tiny.en", "tiny.en"), ("whisper-base", "base")):
        made = make_recogniser(kind)
        assert isinstance(made, WhisperDigitRecogniser) and made.model == model
    with pytest.raises(ValueError, match="unknown recogniser"):
        make_recogniser("kaldi")
    with pytest.raises(ValueError, match="unknown recogniser"):
        recogniser_installed("kaldi")


def test_config_chooses_the_recogniser(tmp_path: Path) -> None:
    path = tmp_path / "spg.toml"
    for kind in ("pocketsphinx", "whisper-base", "whisper-tiny.en"):
        path.write_text(f'[speech]\nrecogniser = "{kind}"\n')
        assert load_config(path, env={}).speech.recogniser == kind
    path.write_text("")
    assert load_config(path, env={}).speech.recogniser == "whisper-tiny.en"
    for wrong in ("kaldi", "whisper"):  # "whisper" names no model: which one is the choice
        path.write_text(f'[speech]\nrecogniser = "{wrong}"\n')
        with pytest.raises(ConfigError, match=r"speech\.recogniser"):
            load_config(path, env={})


def test_discounting_the_prior_moves_mass_from_what_the_model_says_to_noise() -> None:
    one, two, three = ("one", "two"), ("three", "four"), ("five", "six")
    pooled = {("yes",): 0.1, one: 0.5, two: 0.3, three: 0.1}
    # "one two" is what the model reads in noise too; "three four" less so; "five six" unscored
    priors: dict[tuple[str, ...], float] = {one: math.log(0.5), two: math.log(0.05)}
    discounted = whisper_module.discount_prior(pooled, priors, 0.5)
    assert discounted[("yes",)] == pooled[("yes",)] and discounted[three] == pooled[three]
    assert discounted[one] + discounted[two] == pytest.approx(0.8)
    # 0.5 / 0.5**0.5 against 0.3 / 0.05**0.5: the second now ahead
    assert discounted[two] > discounted[one]
    assert discounted[two] / discounted[one] == pytest.approx((0.3 / 0.5) * (10**0.5))
    assert whisper_module.discount_prior(pooled, priors, 0.0) == pytest.approx(pooled)
    assert whisper_module.discount_prior(pooled, {}, 0.5) == pooled
    # a reading with no probability is left alone (no log of zero)
    assert whisper_module.discount_prior({one: 0.0, two: 1.0}, priors, 0.5)[one] == 0.0


def test_line_noise_has_the_utterances_length_level_and_band() -> None:
    t = np.arange(8000) / 8000
    speech = (3000 * np.sin(2 * np.pi * 700 * t)).astype(np.int16)
    noise = whisper_module.line_noise(speech, 8000)
    assert noise is not None and len(noise) == len(speech)
    level = float(np.sqrt(np.mean(speech.astype(np.float64) ** 2)))
    assert float(np.sqrt(np.mean(noise**2))) == pytest.approx(level, rel=1e-6)
    spectrum = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.fft.rfftfreq(len(noise), 1 / 8000)
    in_band = spectrum[(freqs > 400) & (freqs < 3300)].sum()
    assert in_band > 0.9 * spectrum.sum()
    # the same every time (recognition repeats itself), none for digital silence
    again = whisper_module.line_noise(speech, 8000)
    assert again is not None and np.array_equal(noise, again)
    assert whisper_module.line_noise(np.zeros(800, dtype=np.int16), 8000) is None


@needs_espeak
def test_the_prior_is_discounted_for_digits_of_a_known_length_only(
    recogniser: WhisperDigitRecogniser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recogniser, "prior_weight", 0.5)  # base's own is 0 (its CPU)
    scored: list[list[list[int]]] = []  # the prior's passes: the readings' tokens
    model = recogniser._model
    prompt = len(recogniser._prompt)

    class Counting:
        def __getattr__(self, name: str) -> object:
            return getattr(model, name)

        def generate(self, features: object, prompts: list[list[int]], **kwargs: object) -> object:
            if kwargs.get("return_logits_vocab"):
                scored.append([tokens[prompt:] for tokens in prompts])
            return model.generate(features, prompts, **kwargs)

    monkeypatch.setattr(recogniser, "_model", Counting())
    audio = np.concatenate((noise(0.3), spoken("5 9 0 7"), noise(0.3)))
    with_prior = recogniser.recognise(audio, length=4)
    assert len(scored) == 1
    assert 2 <= len(scored[0]) <= whisper_module.PRIOR_READINGS
    # each reading in the same, digit-by-digit spelling (" 5", " 9", ...)
    words = [recogniser._words(tokens) for tokens in scored[0]]
    assert all(len(w) == 4 and all(word in DIGIT_WORDS for word in w) for w in words)
    assert len(set(words)) == len(words)
    assert {tokens[0] for tokens in scored[0]} <= {recogniser._spelt((w[0],))[0] for w in words}  # type: ignore[index]
    assert sum(np.exp(h.score) for h in with_prior) == pytest.approx(1.0)
    # the same readings, reordered or re-weighted only
    monkeypatch.setattr(recogniser, "prior_weight", 0.0)
    without = recogniser.recognise(audio, length=4)
    assert len(scored) == 1
    assert {h.words for h in with_prior} == {h.words for h in without}
    assert [h.score for h in with_prior] != pytest.approx([h.score for h in without])
    # answers (no length) are heard as before: no prior
    monkeypatch.setattr(recogniser, "prior_weight", 0.5)
    yes = np.concatenate((noise(0.3), spoken("yes"), noise(0.3)))
    assert answer_of(Utterance(recogniser.recognise(yes), 0.0, 1.0)) == "yes"
    assert len(scored) == 1


def test_readings_are_spelt_digit_by_digit_for_the_prior(
    recogniser: WhisperDigitRecogniser,
) -> None:
    import tokenizers

    files = whisper_module.MODELS[recogniser.model].verified_files()
    tokenizer = tokenizers.Tokenizer.from_str(files["tokenizer.json"].decode())
    tokens = recogniser._spelt(("three", "six", "six", "oh"))
    assert tokens is not None and len(tokens) == 4
    assert [tokenizer.decode([token]) for token in tokens] == [" 3", " 6", " 6", " 0"]
    assert recogniser._spelt(("three", "yes")) is None
