"""Steady line noise taken out of one utterance before it is recognised.

Sans-IO, in memory: int16 samples in, float samples (int16 scale) out. Power spectral
subtraction: the utterance's short-time spectrum (32 ms frames, three-quarter overlap) loses
`over` times the noise's power in each bin, keeping at least `floor` of the bin's power; the
noise's spectrum is the mean of the quietest tenth of the frames, which in a call are the
line between words and the 0.2 s the voice-activity detector keeps before the speech. Only
steady noise (hiss, hum, a fan) is estimated well so; a noise that comes and goes is mostly
left alone (its quiet frames underestimate it), never amplified.

Why: Whisper reads digits in noise worse than clean (at 10 dB SNR a quarter of the digits
wrong against a tenth), and on the speech bench this cut that a little for 1-2 % of the
recognition's CPU (bench/RESULTS.md, "Voice entry").
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.signal import istft, stft

FRAME_S = 0.032
OVERLAP = 0.75
QUIET_SHARE = 0.1  # of the frames, the quietest: the noise's spectrum
MIN_QUIET_FRAMES = 3
OVER_SUBTRACTION = 4.0
POWER_FLOOR = 0.01  # of a bin's power, kept whatever the noise (-20 dB)


def subtract_noise(
    samples: npt.NDArray[np.int16] | npt.NDArray[np.float64],
    rate: int,
    over: float = OVER_SUBTRACTION,
    floor: float = POWER_FLOOR,
) -> npt.NDArray[np.float64]:
    """`samples` (at `rate` Hz) with their steady noise subtracted, as floats at int16 scale
    and the same length. Too short to tell noise from speech (fewer than
    MIN_QUIET_FRAMES / QUIET_SHARE frames): returned as they are."""
    x = np.asarray(samples, dtype=np.float64)
    size = max(16, round(rate * FRAME_S))
    overlap = round(size * OVERLAP)
    step = size - overlap
    if len(x) < size + step * (round(MIN_QUIET_FRAMES / QUIET_SHARE) - 1):
        return x.copy()
    _, _, spectrum = stft(x, fs=rate, nperseg=size, noverlap=overlap)
    power = np.abs(spectrum) ** 2
    energy = power.sum(axis=0)
    quiet = np.argsort(energy)[: max(MIN_QUIET_FRAMES, int(len(energy) * QUIET_SHARE))]
    noise = power[:, quiet].mean(axis=1, keepdims=True)
    gain = np.sqrt(np.maximum(1.0 - over * noise / np.maximum(power, 1e-12), floor))
    _, y = istft(spectrum * gain, fs=rate, nperseg=size, noverlap=overlap)
    out = np.zeros(len(x))
    out[: min(len(x), len(y))] = y[: len(x)]
    return out
