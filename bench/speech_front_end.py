"""Which part of the audio path costs Whisper its digits: the same groups of four through
different paths, read by the product's recogniser with the length known.

Run:  nice -n 19 .venv/bin/python bench/speech_front_end.py [--groups 40] [--offset 0]
      [--paths telephone,8k,8k+band,8k+ulaw,wideband,vad,fold,window30,snr10,snr10+denoise]
      [--model tiny.en|base] [--prior-weights 0,0.5] [--digit-seed 7] [--audio-seed 1]

Each group is a random 4 digits said by espeak-ng (voice i % 8 of the speech bench's, variant
(i // 8 + offset) % 10, 130-190 words a minute), then:
* telephone: the speech bench's path (8 kHz, 300-3400 Hz, G.711 μ-law, 0.3 s of silence
  around), as the bench and a call hear it;
* 8k, 8k+band, 8k+ulaw: wideband resampled to 8 kHz only, then with the band-pass, or μ-law;
* wideband: espeak-ng's audio at 16 kHz, nothing else (Whisper's own rate);
* vad: the telephone utterance inside a second of line noise each side, cut by the VAD as a
  call cuts it (spg_media/speech/vad.py);
* fold: telephone with its band mirrored above 4 kHz at half strength (spectral folding);
* window30: telephone with Whisper's full 30 s window instead of the utterance plus 1 s;
* snr10: the telephone path with noise at 10 dB SNR (as the speech bench's snr10);
* telephone+denoise, snr10+denoise: those with the steady noise subtracted first
  (spg_media/speech/denoise.py, with `--denoise` over-subtraction and floor).
The recogniser subtracts steady noise itself as deployed (`denoise` on); here it is turned off,
so that each path is heard as it says.
`--model`: which of the product's pinned Whisper models (spg_media/speech/whisper.py `MODELS`:
tiny.en, the default recogniser, or base), in the same recogniser.
`--prior-weights`: the recogniser's `prior_weight` (the discount of Whisper's digit priors; 0 =
none; default the model's own), each on the same audio in the same run, one row per path and
weight. `--digit-seed` and `--audio-seed`: other digits and other noise than the recorded runs'
(7 and 1), e.g. for choosing a setting on other utterances than those it is then measured on.
Reported per path: digit errors (edit distance of the best reading), groups right, groups
whose digits are anywhere in the n-best, and CPU per second of audio. In memory only.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.signal import butter, resample_poly, sosfilt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speech_accuracy import VARIANTS, VOICES, Speaker, edits, render, spoken

from spg_media.rtp import g711
from spg_media.speech import denoise, whisper
from spg_media.speech.digits import words_to_digits
from spg_media.speech.model import Utterance
from spg_media.speech.vad import VoiceActivity
from spg_media.speech.whisper import WhisperDigitRecogniser

PATHS = (
    "telephone",
    "8k",
    "8k+band",
    "8k+ulaw",
    "wideband",
    "vad",
    "fold",
    "window30",
    "snr10",
    "telephone+denoise",
    "snr10+denoise",
)
_BAND = butter(4, [300, 3400], btype="bandpass", fs=8000, output="sos")


def wideband(text: str, voice: str, speed: int) -> npt.NDArray[np.float64]:
    """espeak-ng's audio at 16 kHz, active speech at -20 dBFS, 0.3 s of silence around."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    rate = int.from_bytes(wav[24:28], "little")
    data = wav.find(b"data")
    x = resample_poly(
        np.frombuffer(wav[data + 8 :], dtype=np.int16).astype(np.float64), 16000, rate
    )
    active = x[np.abs(x) > 0.05 * np.abs(x).max()]
    x *= 0.1 * 32767 / max(float(np.sqrt(np.mean(active**2))), 1.0)
    pad = np.zeros(int(0.3 * 16000))
    return np.concatenate((pad, x, pad))


def int16(x: npt.NDArray[np.float64]) -> npt.NDArray[np.int16]:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def narrow(wide: npt.NDArray[np.float64], band: bool, ulaw: bool) -> npt.NDArray[np.int16]:
    x = resample_poly(wide, 1, 2)
    if band:
        x = sosfilt(_BAND, x)
    pcm = int16(x)
    return g711.decode(g711.encode(pcm, "PCMU"), "PCMU") if ulaw else pcm


def vad_cut(telephone: npt.NDArray[np.int16], seed: int) -> npt.NDArray[np.int16]:
    noise = sosfilt(_BAND, np.random.default_rng(seed).standard_normal(len(telephone) + 16000))
    stream = noise * 30
    stream[8000 : 8000 + len(telephone)] += telephone
    vad = VoiceActivity()
    segments = []
    pcm = int16(stream)
    for at in range(0, len(pcm), 160):
        segments += vad.feed(pcm[at : at + 160], (at + 160) / 8000)
    if not segments:
        return np.zeros(800, dtype=np.int16)
    return max(segments, key=lambda s: len(s.samples)).samples


def folded(telephone: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    x = telephone.astype(np.float64)
    resampled = resample_poly(x, 2, 1)
    stuffed = np.zeros(len(resampled))
    stuffed[::2] = 2.0 * x[: (len(resampled) + 1) // 2]
    return int16(resampled + 0.5 * (stuffed - resampled))


DENOISE = {"over": denoise.OVER_SUBTRACTION, "floor": denoise.POWER_FLOOR}


def denoised(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """`pcm` with its steady noise subtracted (spg_media/speech/denoise.py, `--denoise`'s
    settings)."""
    return int16(denoise.subtract_noise(pcm, 8000, DENOISE["over"], DENOISE["floor"]))


def path_input(
    path: str, telephone: npt.NDArray[np.int16], wide: npt.NDArray[np.float64], seed: int
) -> tuple[npt.NDArray[np.int16], int]:
    """The group's audio through `path`, and its rate."""
    if path in ("telephone", "window30"):
        return telephone, 8000
    if path == "telephone+denoise":
        return denoised(telephone), 8000
    if path == "wideband":
        return int16(wide), 16000
    if path == "vad":
        return vad_cut(telephone, seed), 8000
    if path == "fold":
        return folded(telephone), 16000
    return narrow(wide, band=path == "8k+band", ulaw=path == "8k+ulaw"), 8000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=40)
    parser.add_argument("--offset", type=int, default=0, help="first variant")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--model", choices=sorted(whisper.MODELS), default="tiny.en")
    parser.add_argument("--prior-weights", help="default: the model's own prior_weight")
    parser.add_argument("--digit-seed", type=int, default=7)
    parser.add_argument("--audio-seed", type=int, default=1)
    parser.add_argument(
        "--denoise",
        default=f"{DENOISE['over']:g},{DENOISE['floor']:g}",
        help="the +denoise paths' over-subtraction and power floor (default the product's)",
    )
    args = parser.parse_args()
    DENOISE["over"], DENOISE["floor"] = (float(v) for v in args.denoise.split(","))
    paths = args.paths.split(",")
    recogniser = WhisperDigitRecogniser(model=args.model)
    recogniser.denoise = False  # the paths say what is done to the audio
    prior_weights = args.prior_weights or str(recogniser.prior_weight)
    weights = [float(weight) for weight in prior_weights.split(",")]
    rng = random.Random(args.digit_seed)
    audio_rng = np.random.default_rng(args.audio_seed)
    # (path, prior weight) -> errors, right, in n-best, cpu, s
    totals = {(p, w): [0, 0, 0, 0.0, 0.0] for p in paths for w in weights}
    for i in range(args.groups):
        voice = VOICES[i % len(VOICES)] + VARIANTS[(i // len(VOICES) + args.offset) % 10]
        digits = "".join(str(rng.randint(0, 9)) for _ in range(4))
        speed = rng.randint(130, 190)
        telephone = render(spoken(digits), Speaker(voice, speed, 0, None), audio_rng)
        noisy = render(spoken(digits), Speaker(voice, speed, 0, 10.0), audio_rng)
        wide = wideband(spoken(digits), voice, speed)
        for path, weight in totals:
            if path == "snr10":
                audio, rate = noisy, 8000
            elif path == "snr10+denoise":
                audio, rate = denoised(noisy), 8000
            else:
                audio, rate = path_input(path, telephone, wide, i)
            padding = whisper.PAD_FRAMES
            if path == "window30":
                whisper.PAD_FRAMES = whisper.MAX_FRAMES
            recogniser.prior_weight = weight
            started = time.process_time()
            try:
                hypotheses = recogniser.recognise(audio, rate=rate, length=4)
            finally:
                whisper.PAD_FRAMES = padding
            pooled: dict[str, float] = {}
            utterance = Utterance(hypotheses, 0.0, 1.0)
            for hypothesis, p in zip(hypotheses, utterance.posteriors(), strict=True):
                reading = words_to_digits(hypothesis.words)
                if reading is not None:
                    pooled[reading] = pooled.get(reading, 0.0) + p
            best = max(pooled, key=lambda r: pooled[r]) if pooled else ""
            t = totals[path, weight]
            t[0] += edits(digits, best)
            t[1] += best == digits
            t[2] += digits in pooled
            t[3] += time.process_time() - started
            t[4] += len(audio) / rate
    print(
        f"# {args.groups} groups of four, variants from {args.offset}, Whisper {args.model}, "
        f"length 4, digit seed {args.digit_seed}, audio seed {args.audio_seed}"
    )
    print(
        "| path | prior weight | digit errors | groups right | in the n-best "
        "| CPU s per s of audio |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for (path, weight), (errors, right, anywhere, cpu, seconds) in totals.items():
        print(
            f"| {path} | {weight:g} | {errors / (4 * args.groups):.1%} | {right}/{args.groups} | "
            f"{anywhere}/{args.groups} | {cpu / max(seconds, 1e-9):.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
