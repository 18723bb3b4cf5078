"""Rendering to 8 kHz, the prompt cache, assembling a Play, and card digits kept out of the
synthesiser, the cache and the logs. Most tests use a fake synthesiser; a few run espeak-ng."""

from __future__ import annotations

import logging
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from spg_media.payment.model import SecretDigits
from spg_media.tts.phrases import SYMBOLS, fixed_phrases
from spg_media.tts.prompts import PART_GAP_MS, PromptLibrary, silence
from spg_media.tts.render import (
    EDGE_SILENCE_MS,
    SAMPLE_RATE,
    EspeakCommandSynthesizer,
    FallbackSynthesizer,
    PromptRenderer,
    Pyttsx3Synthesizer,
    Samples,
    SynthesizerUnavailable,
    condition,
    default_synthesizer,
)

EDGE = SAMPLE_RATE * EDGE_SILENCE_MS // 1000
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing")


@dataclass(frozen=True)
class Part:
    name: str
    params: tuple[tuple[str, object], ...] = ()


def part(name: str, **params: object) -> Part:
    return Part(name, tuple(params.items()))


def dbfs(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean((x.astype(np.float64) / 32768) ** 2))))


def peak_dbfs(x: np.ndarray) -> float:
    return float(20 * np.log10(np.abs(x.astype(np.float64)).max() / 32768))


class ToneSynthesizer:
    """Fake: a 0.2 s tone at 22050 Hz whose length grows with the text; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()

    def synthesize(self, text: str, voice: str, rate: int) -> tuple[Samples, int]:
        with self.lock:
            self.calls.append((text, voice, rate))
        n = 4410 + 100 * len(text)
        t = np.arange(n) / 22050
        tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
        return np.concatenate([np.zeros(2205, np.int16), tone, np.zeros(4410, np.int16)]), 22050


class Spy:
    """Wraps a real synthesiser and records what it is asked to say."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def synthesize(self, text: str, voice: str, rate: int) -> tuple[Samples, int]:
        self.texts.append(text)
        return self.inner.synthesize(text, voice, rate)  # type: ignore[attr-defined, no-any-return]


class Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def synthesize(self, text: str, voice: str, rate: int) -> tuple[Samples, int]:
        self.calls += 1
        raise self.error


# ---- conditioning -------------------------------------------------------------------------------


def test_condition_resamples_trims_and_normalises() -> None:
    rate = 22050
    t = np.arange(rate) / rate  # 1 s of speech-band tone, with 0.5 s silence either side
    tone = (0.9 * np.sin(2 * np.pi * 300 * t) * 32767).astype(np.int16)
    raw = np.concatenate([np.zeros(rate // 2, np.int16), tone, np.zeros(rate // 2, np.int16)])
    out = condition(raw, rate)
    assert out.dtype == np.int16
    assert abs(len(out) - (SAMPLE_RATE + 2 * EDGE)) < 20  # 1 s of tone + 50 ms at each end
    assert not out[: EDGE - 5].any() and not out[-(EDGE - 5) :].any()
    assert out[EDGE + 5 : EDGE + 40].any()
    # speech level -18 dBFS RMS; a sine's crest factor is 3 dB, so its peaks are at -15
    assert abs(dbfs(out[EDGE:-EDGE]) - (-18.0)) < 0.2
    assert abs(peak_dbfs(out) - (-15.0)) < 0.3


def test_condition_limits_peaks_to_minus_3_dbfs() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    quiet = 0.01 * np.sin(2 * np.pi * 300 * t)
    quiet[4000] = 0.9  # a click: -18 dBFS RMS would push it far past full scale
    out = condition((quiet * 32767).astype(np.int16), SAMPLE_RATE)
    assert abs(peak_dbfs(out) - (-3.0)) < 0.1
    assert dbfs(out[EDGE:-EDGE]) < -20.0


def test_condition_of_silence_is_just_the_edges() -> None:
    assert np.array_equal(condition(np.zeros(5000, np.int16), 22050), np.zeros(2 * EDGE, np.int16))
    assert len(condition(np.zeros(0, np.int16), 22050)) == 2 * EDGE


# ---- the cache ----------------------------------------------------------------------------------


def test_second_render_is_a_cache_hit(tmp_path: Path) -> None:
    synth = ToneSynthesizer()
    renderer = PromptRenderer(tmp_path, synthesizer=synth)
    first = renderer.render_text("Thank you for calling. Goodbye.", "en")
    second = renderer.render_text("Thank you  for calling.\nGoodbye.", "en")  # same words
    assert len(synth.calls) == 1 and renderer.renders == 1
    assert second is first
    assert not first.flags.writeable  # shared by the cache: nobody may change it in place
    files = list(tmp_path.rglob("*.s16"))
    assert len(files) == 1 and files[0].parent == tmp_path / "en"
    assert np.array_equal(np.fromfile(files[0], dtype="<i2"), first)

    # a new process (new renderer) finds it on disk
    again = PromptRenderer(tmp_path, synthesizer=synth)
    assert np.array_equal(again.render_text("Thank you for calling. Goodbye.", "en"), first)
    assert len(synth.calls) == 1 and again.disk_hits == 1


def test_cache_key_covers_language_rate_and_text(tmp_path: Path) -> None:
    synth = ToneSynthesizer()
    slow = PromptRenderer(tmp_path, voice_rate=120, synthesizer=synth)
    normal = PromptRenderer(tmp_path, synthesizer=synth)
    keys = {
        slow.cache_key("hola", "es"),
        normal.cache_key("hola", "es"),
        normal.cache_key("hola", "en"),
        normal.cache_key("hola.", "es"),
    }
    assert len(keys) == 4
    for key in keys:
        assert len(key) == 64 and set(key) <= set("abcdefghijklmnop")  # sha256, no digits
    normal.render_text("hola", "es")
    slow.render_text("hola", "es")
    assert [call[1:] for call in synth.calls] == [("es", 150), ("es", 120)]
    assert normal.cache_path("hola", "es").exists()


def test_memory_cache_is_bounded(tmp_path: Path) -> None:
    synth = ToneSynthesizer()
    renderer = PromptRenderer(tmp_path, synthesizer=synth, memory_clips=2)
    for text in ("a", "b", "c", "a"):
        renderer.render_text(text, "en")
    assert len(synth.calls) == 3  # 'a' came back from disk, not from the synthesiser
    assert renderer.disk_hits == 1


def test_torn_cache_file_is_rendered_again(tmp_path: Path) -> None:
    synth = ToneSynthesizer()
    renderer = PromptRenderer(tmp_path, synthesizer=synth)
    path = renderer.cache_path("hello", "en")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x01\x02\x03")  # odd length: a torn write
    audio = renderer.render_text("hello", "en")
    assert len(synth.calls) == 1
    assert path.read_bytes() == audio.astype("<i2").tobytes()


def test_unwritable_cache_still_renders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    renderer = PromptRenderer(blocker, synthesizer=ToneSynthesizer())
    with caplog.at_level(logging.WARNING):
        audio = renderer.render_text("hello", "en")
    assert len(audio) > 2 * EDGE
    assert "not writable" in caplog.text
    assert not list(tmp_path.rglob("*.part"))


def test_render_digit_uses_the_shared_word_clip(tmp_path: Path) -> None:
    synth = ToneSynthesizer()
    renderer = PromptRenderer(tmp_path, synthesizer=synth)
    seven = renderer.render_digit("7", "en")
    assert renderer.render_text("seven", "en") is seven
    assert renderer.render_digit("r", "es") is renderer.render_digit("R", "es")
    assert [c[0] for c in synth.calls] == ["seven", "R"]
    for bad in ("#", "77", ""):
        with pytest.raises(ValueError):
            renderer.render_digit(bad, "en")


def test_empty_text_needs_no_synthesiser(tmp_path: Path) -> None:
    synth = ToneSynthesizer()
    audio = PromptRenderer(tmp_path, synthesizer=synth).render_text("  ", "en")
    assert synth.calls == [] and not audio.any()


def test_unknown_language_is_named(tmp_path: Path) -> None:
    renderer = PromptRenderer(tmp_path, synthesizer=ToneSynthesizer())
    with pytest.raises(ValueError, match="'fr'"):
        renderer.render_text("bonjour", "fr")
    with pytest.raises(ValueError, match=re.escape("'../x'")):
        renderer.render_text("hi", "../x")
    with pytest.raises(ValueError, match="'de'"):
        PromptLibrary(renderer).audio_for([part("goodbye")], "de")
    with pytest.raises(ValueError, match="'it'"):
        PromptLibrary(renderer).prerender("it")
    assert not any(tmp_path.iterdir())


def test_renders_from_worker_threads(tmp_path: Path) -> None:
    synth = ToneSynthesizer()
    renderer = PromptRenderer(tmp_path, synthesizer=synth)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: renderer.render_text(f"text {i % 5}", "en"), range(40)))
    assert {len(r) for r in results} == {
        len(renderer.render_text(f"text {i}", "en")) for i in range(5)
    }
    assert 5 <= len(synth.calls) <= 40
    assert len(list(tmp_path.rglob("*.s16"))) == 5


# ---- synthesiser choice -------------------------------------------------------------------------


def test_fallback_drops_an_unavailable_synthesizer() -> None:
    missing = Failing(SynthesizerUnavailable("not installed"))
    tone = ToneSynthesizer()
    fallback = FallbackSynthesizer(missing, tone)
    fallback.synthesize("one", "en", 150)
    fallback.synthesize("two", "en", 150)
    assert missing.calls == 1 and len(tone.calls) == 2


def test_fallback_keeps_a_synthesizer_that_failed_once() -> None:
    flaky = Failing(RuntimeError("boom"))
    tone = ToneSynthesizer()
    fallback = FallbackSynthesizer(flaky, tone)
    fallback.synthesize("one", "en", 150)
    fallback.synthesize("two", "en", 150)
    assert flaky.calls == 2 and len(tone.calls) == 2
    with pytest.raises(RuntimeError, match="no speech synthesiser"):
        FallbackSynthesizer(Failing(RuntimeError("a")), Failing(OSError("b"))).synthesize(
            "x", "en", 150
        )


def test_missing_program_is_unavailable() -> None:
    with pytest.raises(SynthesizerUnavailable):
        EspeakCommandSynthesizer("no-such-espeak-binary").synthesize("hi", "en", 150)


@needs_espeak
def test_espeak_program_renders_speech() -> None:
    samples, rate = EspeakCommandSynthesizer().synthesize("Hello there.", "en", 150)
    assert rate == 22050 and samples.dtype == np.int16
    assert 0.4 < len(samples) / rate < 3.0 and np.abs(samples).max() > 3000


def test_pyttsx3_renders_headless_and_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        samples, rate = Pyttsx3Synthesizer().synthesize("Hello there.", "en", 150)
    except SynthesizerUnavailable:
        pytest.skip("pyttsx3 or libespeak-ng missing")
    assert rate == 22050 and 0.4 < len(samples) / rate < 3.0
    assert capsys.readouterr().out == ""


# ---- the library --------------------------------------------------------------------------------


def test_silence() -> None:
    assert len(silence(250)) == 2000 and silence(250).dtype == np.int16 and not silence(250).any()
    assert len(silence(-5)) == 0
    assert (
        len(
            PromptLibrary(
                PromptRenderer(Path("/nonexistent"), synthesizer=ToneSynthesizer())
            ).silence(20)
        )
        == 160
    )


def test_parts_are_joined_with_a_quarter_second(tmp_path: Path) -> None:
    library = PromptLibrary(PromptRenderer(tmp_path, synthesizer=ToneSynthesizer()))
    one = library.audio_for([part("processing")], "en")
    two = library.audio_for([part("processing"), part("goodbye")], "en")
    goodbye = library.audio_for([part("goodbye")], "en")
    assert np.array_equal(two, np.concatenate([one, silence(PART_GAP_MS), goodbye]))
    # the silence heard between the parts: the gap plus the edges kept on both clips
    assert PART_GAP_MS + 2 * EDGE_SILENCE_MS == 250
    assert len(library.audio_for([], "en")) == 0


def test_pieces_are_the_shared_clips_and_join_into_the_audio(tmp_path: Path) -> None:
    library = PromptLibrary(PromptRenderer(tmp_path, synthesizer=ToneSynthesizer()))
    parts = [part("approved", reference="AB12"), part("goodbye")]
    pieces = library.pieces_for(parts, "en")
    joined = [np.zeros(p, np.int16) if isinstance(p, int) else p for p in pieces]
    assert np.array_equal(np.concatenate(joined), library.audio_for(parts, "en"))
    clips = [p for p in pieces if not isinstance(p, int)]
    assert len(clips) >= 5  # the phrase, the reference's four symbols, goodbye
    # another call's prompt refers to the very same clip arrays: nothing of its own
    again = [p for p in library.pieces_for(parts, "en") if not isinstance(p, int)]
    assert all(a is b for a, b in zip(clips, again, strict=True))
    digits = library.pieces_for([part("approved", reference="11")], "en")
    ones = [p for p in digits if not isinstance(p, int)][-2:]
    assert ones[0] is ones[1]  # one clip of "1", played twice


def test_prerender_counts_and_then_hits_the_cache(tmp_path: Path) -> None:
    synth = ToneSynthesizer()
    library = PromptLibrary(PromptRenderer(tmp_path, synthesizer=synth))
    count = library.prerender("es")
    assert count == len(fixed_phrases("es")) + len(SYMBOLS)
    assert len(synth.calls) == count
    assert all(voice == "es" for _, voice, _ in synth.calls)
    fresh = PromptLibrary(PromptRenderer(tmp_path, synthesizer=synth))
    assert fresh.prerender("es") == count
    assert len(synth.calls) == count  # all from disk
    # a call's fixed prompts need no synthesis after prerender
    fresh.audio_for([part("enter_card"), part("enter_cvc", digits=4), part("goodbye")], "es")
    fresh.audio_for([part("approved", reference="AB12")], "es")
    assert len(synth.calls) == count


def test_only_the_announcement_is_synthesised_per_call(tmp_path: Path) -> None:
    synth = ToneSynthesizer()
    library = PromptLibrary(PromptRenderer(tmp_path, synthesizer=synth))
    library.prerender("en")
    before = len(synth.calls)
    sale = part("announce_sale", amount_minor=4990, currency="EUR", merchant="Hotel Sol")
    library.audio_for([sale, part("enter_card")], "en")
    assert [c[0] for c in synth.calls[before:]] == [
        "You are paying forty nine euros and ninety cents to Hotel Sol."
    ]


# ---- real speech, and the PCI rule ------------------------------------------------------------


@needs_espeak
def test_real_prompt_audio(tmp_path: Path) -> None:
    library = PromptLibrary(PromptRenderer(tmp_path))
    sale = part("announce_sale", amount_minor=4990, currency="EUR", merchant="Hotel Sol")
    audio = library.audio_for([sale, part("enter_card")], "en")
    assert audio.dtype == np.int16
    seconds = len(audio) / SAMPLE_RATE
    assert 4.0 < seconds < 15.0  # two sentences at 150 words a minute
    level = dbfs(audio)
    assert -26.0 < level < -15.0
    assert np.abs(audio.astype(np.int32)).max() <= round(32768 * 10 ** (-3 / 20)) + 1
    # spanish is spanish: a different, also plausible, rendering
    spanish = library.audio_for([sale], "es")
    assert 2.0 < len(spanish) / SAMPLE_RATE < 10.0


@needs_espeak
def test_card_digits_never_reach_synthesizer_cache_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spy = Spy(default_synthesizer())
    library = PromptLibrary(PromptRenderer(tmp_path, synthesizer=spy))
    confirm = part("confirm", last4="1111", expiry=SecretDigits("1230"))
    with caplog.at_level(logging.DEBUG):
        audio = library.audio_for([confirm], "en")
        library.audio_for([confirm], "es")
    # card ending 1 1 1 1, expiry 1 2 _ 3 0: eight digit clips and three phrases
    assert 4.0 < len(audio) / SAMPLE_RATE < 12.0
    assert spy.texts  # it did synthesise: the phrases and digit clips
    for text in spy.texts:
        assert "1111" not in text and "1230" not in text
        assert not any(c.isdigit() for c in text)  # digits go to the synthesiser as words
    assert {"one", "two", "three", "zero", "uno", "dos", "tres", "cero"} <= set(spy.texts)
    files = [p for p in tmp_path.rglob("*")]
    assert files
    for path in files:
        assert "1111" not in path.name and "1230" not in path.name
        assert not any(c.isdigit() for c in path.stem)  # only the ".s16" suffix has digits
        if path.is_file():
            content = path.read_bytes()
            assert b"1111" not in content and b"1230" not in content
            text = content.decode("latin-1")
            assert "1111" not in text and "1230" not in text
    assert "1111" not in caplog.text and "1230" not in caplog.text
