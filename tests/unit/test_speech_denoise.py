"""The subtraction of steady line noise before recognition (spg_media/speech/denoise.py)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from spg_media.speech.denoise import subtract_noise

RATE = 8000


def rms(x: npt.NDArray[np.float64]) -> float:
    return float(np.sqrt(np.mean(x**2)))


def utterance(seed: int = 1) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(a vowel-like tone between 0.3 s of line noise each side, the noise alone): 1.6 s."""
    t = np.arange(int(1.0 * RATE)) / RATE
    voice = 3000.0 * (np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 880 * t))
    pad = np.zeros(int(0.3 * RATE))
    clean = np.concatenate((pad, voice, pad))
    noise = 300.0 * np.random.default_rng(seed).standard_normal(len(clean))
    return clean, noise


def test_steady_noise_is_taken_out_and_the_speech_kept() -> None:
    clean, noise = utterance()
    noisy = np.round(clean + noise).astype(np.int16)
    out = subtract_noise(noisy, RATE)
    assert out.shape == noisy.shape and out.dtype == np.float64
    edge = int(0.25 * RATE)  # noise only
    assert rms(out[:edge]) < rms(noise[:edge]) / 4  # more than 12 dB less
    middle = slice(int(0.5 * RATE), int(1.1 * RATE))  # the "speech"
    assert abs(rms(out[middle]) - rms(clean[middle])) < 0.05 * rms(clean[middle])
    # closer to the clean signal than the noisy input was
    assert rms(out - clean) < rms(noise) / 2


def test_clean_audio_passes_unchanged() -> None:
    clean, _ = utterance()
    pcm = np.round(clean).astype(np.int16)
    out = subtract_noise(pcm, RATE)
    assert rms(out - pcm) < 0.01 * rms(pcm.astype(np.float64))


def test_too_short_to_tell_noise_from_speech_is_returned_as_it_is() -> None:
    short = (1000 * np.random.default_rng(2).standard_normal(800)).astype(np.int16)  # 0.1 s
    out = subtract_noise(short, RATE)
    assert np.array_equal(out, short.astype(np.float64))
    assert subtract_noise(np.zeros(0, dtype=np.int16), RATE).shape == (0,)


def test_other_rates_and_silence() -> None:
    clean, noise = utterance()
    wide = np.repeat(clean + noise, 2)  # 16 kHz, the same 1.6 s
    assert subtract_noise(wide, 2 * RATE).shape == wide.shape
    silence = np.zeros(RATE, dtype=np.int16)
    assert not np.any(subtract_noise(silence, RATE))
