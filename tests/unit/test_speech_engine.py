"""Speech input: voice-activity detection (sans-IO) and the engine's process pool, fed like the
media tick feeds it, with speech rendered by espeak-ng in the test (never stored)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import numpy as np
import numpy.typing as npt
import pytest

from spg_media.speech import (
    SpeechEngine,
    Utterance,
    answer_of,
    speech_available,
    words_to_digits,
)
from spg_media.speech.recogniser import DigitRecogniser
from spg_media.speech.vad import VoiceActivity

RATE = 8000
TICK = 160

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


def spoken(text: str) -> npt.NDArray[np.int16]:
    """`text` said by espeak-ng, at 8 kHz (rendered in memory)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-us", "--stdout", text], check=True, capture_output=True
    ).stdout
    assert wav[:4] == b"RIFF"
    rate = int.from_bytes(wav[24:28], "little")
    samples = np.frombuffer(wav[44:], dtype=np.int16).astype(np.float64)
    from scipy.signal import resample_poly

    audio: npt.NDArray[np.float64] = np.clip(resample_poly(samples, RATE, rate), -32768, 32767)
    return audio.astype(np.int16)


def noise(seconds: float, level: float = 30.0, seed: int = 0) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * RATE)) * level).astype(np.int16)


def ticks(samples: npt.NDArray[np.int16]) -> list[npt.NDArray[np.int16]]:
    return [samples[i : i + TICK] for i in range(0, len(samples), TICK)]


def test_silence_and_noise_make_no_speech() -> None:
    vad = VoiceActivity()
    now = 0.0
    found = []
    for chunk in ticks(noise(5.0)):
        now += len(chunk) / RATE
        found += vad.feed(chunk, now)
    assert found == [] and not vad.in_speech


def test_a_click_is_not_speech() -> None:
    vad = VoiceActivity()
    audio = noise(2.0)
    audio[8000:8080] = 20000  # 10 ms click
    now = 0.0
    found = []
    for chunk in ticks(audio):
        now += len(chunk) / RATE
        found += vad.feed(chunk, now)
    assert found == []


@needs_espeak
def test_speech_is_found_with_its_times() -> None:
    speech = spoken("four one one one")
    audio = np.concatenate((noise(1.0), speech, noise(1.5, seed=1)))
    vad = VoiceActivity()
    now = 0.0
    found = []
    for chunk in ticks(audio):
        now += len(chunk) / RATE
        found += vad.feed(chunk, now)
    assert len(found) == 1
    segment = found[0]
    voiced = np.flatnonzero(np.abs(speech) > 300)
    onset, end = 1.0 + voiced[0] / RATE, 1.0 + voiced[-1] / RATE
    assert abs(segment.started - onset) < 0.1
    assert abs(segment.ended - end) < 0.1
    # lead-in and a little trailing quiet kept; the long silence after is not
    assert len(segment.samples) / RATE < (end - onset) + 0.6


@needs_espeak
def test_recogniser_hears_yes() -> None:
    hypotheses = DigitRecogniser().recognise(
        np.concatenate((noise(0.3), spoken("yes"), noise(0.3)))
    )
    assert hypotheses and hypotheses[0].words == ("yes",)
    assert answer_of(Utterance(hypotheses, 0.0, 1.0)) == "yes"


@needs_espeak
def test_exact_length_grammar_gives_that_many_digits() -> None:
    hypotheses = DigitRecogniser().recognise(
        np.concatenate((noise(0.3), spoken("5 5 5 5 4 4 4 4"), noise(0.3))), length=4
    )
    assert hypotheses
    for hypothesis in hypotheses:
        digits = words_to_digits(hypothesis.words)
        assert digits is None or len(digits) == 4
    assert any(words_to_digits(h.words) for h in hypotheses)


@pytest.mark.parametrize("length", [1, 3, 8, 19])
def test_exact_length_grammars_compile_and_count_double_and_triple(length: int) -> None:
    recogniser = DigitRecogniser(passes=1)
    audio = np.concatenate((noise(0.3), (noise(0.6) * 40).astype(np.int16), noise(0.3)))
    for hypothesis in recogniser.recognise(audio, length=length):
        digits = words_to_digits(hypothesis.words)
        assert digits is None or len(digits) == length


def test_speech_available() -> None:
    assert speech_available("en") and speech_available("en-GB")
    assert not speech_available("es") and not speech_available("fr-FR")


@needs_espeak
def test_engine_delivers_utterances_on_the_loop_and_bounds_calls() -> None:
    async def scenario() -> None:
        engine = SpeechEngine(max_concurrent=1, workers=1)
        try:
            got: list[Utterance] = []
            arrived = asyncio.Event()

            def on_utterance(utterance: Utterance) -> None:
                asyncio.get_running_loop()  # raises if not called on the loop
                got.append(utterance)
                arrived.set()

            first = engine.open_input("en", on_utterance)
            assert first is not None
            # past the limit: keys only; an unsupported language: no speech at all
            assert engine.open_input("en", on_utterance) is None
            assert engine.refused == 1
            audio = np.concatenate((noise(0.5), spoken("yes"), noise(1.0, seed=2)))
            now = 0.0
            for chunk in ticks(audio):
                now += len(chunk) / RATE
                first.feed(chunk, now)
            await asyncio.wait_for(arrived.wait(), 30.0)
            assert len(got) == 1 and answer_of(got[0]) == "yes"
            assert 0.4 < got[0].started < got[0].ended < now
            # silence costs no recognition
            for chunk in ticks(noise(3.0, seed=3)):
                now += len(chunk) / RATE
                first.feed(chunk, now)
            await asyncio.sleep(0.2)
            assert engine.recognitions == 1
            first.close()
            assert engine.open_input("es", on_utterance) is None
            second = engine.open_input("en", on_utterance)
            assert second is not None
            second.close()
        finally:
            engine.close()

    asyncio.run(scenario())


@needs_espeak
def test_recognition_is_repeatable_and_gives_probabilities() -> None:
    audio = np.concatenate((noise(0.3), spoken("3 7 8 2"), noise(0.3)))
    recogniser = DigitRecogniser(cpu_per_speech_second=None)  # every pass, however slow
    first = recogniser.recognise(audio, length=4)
    assert first == recogniser.recognise(audio, length=4)  # seeded noise floors
    total = sum(float(np.exp(h.score)) for h in first)
    assert abs(total - 1.0) < 1e-6  # the passes' pooled probabilities
    assert [h.score for h in first] == sorted((h.score for h in first), reverse=True)


@needs_espeak
def test_a_dead_worker_costs_one_utterance_not_the_engine() -> None:
    async def scenario() -> None:
        engine = SpeechEngine(max_concurrent=2, workers=1)
        try:
            got: list[Utterance] = []
            arrived = asyncio.Event()

            def on_utterance(utterance: Utterance) -> None:
                got.append(utterance)
                arrived.set()

            speech_input = engine.open_input("en", on_utterance)
            assert speech_input is not None
            engine.start()
            pool = engine._pool
            assert pool is not None
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: pool.submit(int).result()
            )
            for process in list(pool._processes.values()):
                process.kill()
            now = 0.0
            audio = np.concatenate((noise(0.5), spoken("yes"), noise(1.0, seed=4)))
            for _ in range(3):  # the first utterance may meet the broken pool
                for chunk in ticks(audio):
                    now += len(chunk) / RATE
                    speech_input.feed(chunk, now)
                try:
                    await asyncio.wait_for(arrived.wait(), 8.0)
                    break
                except TimeoutError:
                    continue
            assert got and answer_of(got[0]) == "yes"
        finally:
            engine.close()

    asyncio.run(scenario())


def test_endless_sound_is_cut_into_bounded_stretches() -> None:
    t = np.arange(int(30 * RATE)) / RATE
    tone = (3000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    vad = VoiceActivity()
    now = 0.0
    found = []
    for chunk in ticks(np.concatenate((noise(0.5), tone))):
        now += len(chunk) / RATE
        found += vad.feed(chunk, now)
    assert len(found) == 2  # 12 s each, the rest still in progress
    assert all(len(segment.samples) <= 12.3 * RATE for segment in found)


def test_recognition_workers_are_hardened_like_the_node() -> None:
    """A worker holds callers' spoken digits: exec made it dumpable again, so it must apply
    the node's protections itself (not dumpable, no core file)."""
    import resource
    import sys

    from spg_media import hardening

    engine = SpeechEngine(max_concurrent=1, workers=1)
    try:
        pool = engine._ensure_pool()
        dumpable = pool.submit(hardening.dumpable).result(timeout=60)
        core = pool.submit(resource.getrlimit, resource.RLIMIT_CORE).result(timeout=60)
    finally:
        engine.close()
    if sys.platform.startswith("linux"):
        assert dumpable is False
    assert core == (0, 0)


def test_recogniser_processes_never_exceed_the_recognitions_allowed_at_once() -> None:
    assert SpeechEngine(max_concurrent=2, workers=6).processes == 2
    assert SpeechEngine(max_concurrent=8, workers=3).processes == 3
    assert 1 <= SpeechEngine(max_concurrent=8).processes <= 8
