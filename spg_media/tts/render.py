"""Text to 8 kHz telephone audio: synthesis with espeak-ng, conditioning, caching.

This module owns turning a phrase into samples. `PromptRenderer.render_text(text, lang)` gives
8 kHz mono int16 audio, rendered once and then served from an on-disk cache
(`<cache_dir>/<lang>/<key>.s16`, raw little-endian int16) and an in-memory LRU.

Pipeline: synthesise at the engine's rate (espeak-ng: 22050 Hz) -> resample to 8 kHz
(`scipy.signal.resample_poly`, whose FIR also removes what 8 kHz cannot carry) -> trim leading
and trailing silence to 50 ms -> normalise (speech about -18 dBFS RMS, peaks at most -3 dBFS).

Synthesisers: `EspeakCommandSynthesizer` (the `espeak-ng` program, text on stdin) and
`Pyttsx3Synthesizer` (the design's pyttsx3, libespeak-ng in-process). pyttsx3 does render
headless to a file here, but its espeak driver runs the library asynchronously and polls it:
from worker threads some renders came out empty and the same text came out with different
lengths, while the program's output is byte-identical run to run and takes 12-26 ms a sentence.
So `default_synthesizer()` uses the program and falls back to pyttsx3 when it is missing. Any
object with `synthesize(text, voice, rate)` can be injected (tests spy on what it is given).

Cache keys are the SHA-256 of the text and the voice settings, written with the letters a-p
instead of hex digits: a file name can then never contain a run of decimal digits, let alone
one that looks like card data. Nothing here logs a text.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections import OrderedDict
from math import gcd
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from spg_media.tts.phrases import SUPPORTED_LANGUAGES, symbol_text

log = logging.getLogger(__name__)

SAMPLE_RATE = 8000
EDGE_SILENCE_MS = 50  # kept at each end of a clip, so clips join with natural gaps
TARGET_RMS_DBFS = -18.0  # speech level over its active frames
PEAK_LIMIT_DBFS = -3.0
PIPELINE_VERSION = "1"  # part of every cache key: bump when the conditioning changes
VOICES = {"en": "en", "es": "es"}  # prompt language -> espeak-ng voice
MEMORY_CACHE_CLIPS = 512
SYNTH_TIMEOUT_S = 10.0

Samples = npt.NDArray[np.int16]

_HEX_TO_LETTERS = str.maketrans("0123456789abcdef", "abcdefghijklmnop")


class Synthesizer(Protocol):
    """Speaks `text` with an espeak-ng voice at `rate` words per minute.

    Returns mono int16 samples and their sample rate.
    """

    def synthesize(self, text: str, voice: str, rate: int) -> tuple[Samples, int]: ...


def _read_wav(data: bytes | str) -> tuple[Samples, int]:
    source: Any = io.BytesIO(data) if isinstance(data, bytes) else data
    with wave.open(source, "rb") as wav:
        if wav.getsampwidth() != 2:
            raise RuntimeError("synthesiser output is not 16-bit PCM")
        channels = wav.getnchannels()
        rate = wav.getframerate()
        # espeak's --stdout header claims ~2**30 frames (it streams): read what is there
        frames = wav.readframes(wav.getnframes())
    samples = np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2").astype(np.int16)
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels)[:, 0].copy()
    return samples, rate


class SynthesizerUnavailable(RuntimeError):
    """A synthesiser that cannot work on this machine (program or library missing)."""


# One espeak-ng library per process, with global state (voice, rate, callback): one user at a time.
_ESPEAK_LOCK = threading.Lock()


class Pyttsx3Synthesizer:
    """pyttsx3's espeak driver, saving each utterance to a temporary WAV file.

    The driver runs libespeak-ng in its asynchronous mode and polls it, so the tail of one
    utterance can still be arriving when the next starts (measured here: from worker threads,
    7 renders in 100 came out empty, and the same text gave different lengths). Hence the
    waits for espeak to go idle, and up to three attempts when an utterance comes out empty;
    the `espeak-ng` program is preferred for that reason (`default_synthesizer`).
    """

    IDLE_WAIT_S = 2.0
    ATTEMPTS = 3

    def __init__(self) -> None:
        self._engine: Any = None
        self._espeak: Any = None

    def _load(self) -> Any:
        if self._engine is None:
            try:
                import pyttsx3

                engine = pyttsx3.init("espeak")
            except Exception as exc:  # no pyttsx3, or no libespeak-ng to load
                raise SynthesizerUnavailable(f"pyttsx3/libespeak-ng: {exc}") from exc
            # The driver prints "Audio saved to <file>" on stdout, which `spg-media prompts`
            # and `dtmf-scan` use for JSON lines: shadow `print` in that module only.
            driver_module = sys.modules.get("pyttsx3.drivers.espeak")
            if driver_module is not None:
                driver_module.print = lambda *args, **kwargs: None  # type: ignore[attr-defined]
            self._espeak = sys.modules.get("pyttsx3.drivers._espeak")
            self._engine = engine
        return self._engine

    def _wait_idle(self) -> None:
        if self._espeak is None:
            return
        deadline = time.monotonic() + self.IDLE_WAIT_S
        while self._espeak.IsPlaying() and time.monotonic() < deadline:
            time.sleep(0.002)

    def synthesize(self, text: str, voice: str, rate: int) -> tuple[Samples, int]:
        for _ in range(self.ATTEMPTS):
            samples, sample_rate = self._synthesize_once(text, voice, rate)
            if len(samples):
                return samples, sample_rate
        raise RuntimeError("pyttsx3 wrote an empty utterance")

    def _synthesize_once(self, text: str, voice: str, rate: int) -> tuple[Samples, int]:
        handle, path = tempfile.mkstemp(prefix="spg-tts-", suffix=".wav")
        os.close(handle)
        try:
            with _ESPEAK_LOCK:
                engine = self._load()
                self._wait_idle()
                engine.setProperty("voice", voice)
                engine.setProperty("rate", rate)
                engine.save_to_file(text, path)
                engine.runAndWait()
                self._wait_idle()
            if os.path.getsize(path) == 0:
                return np.zeros(0, dtype=np.int16), SAMPLE_RATE
            return _read_wav(path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)


class EspeakCommandSynthesizer:
    """The `espeak-ng` program; the text goes on stdin (never on the command line)."""

    def __init__(self, executable: str = "espeak-ng") -> None:
        self.executable = executable

    def synthesize(self, text: str, voice: str, rate: int) -> tuple[Samples, int]:
        path = shutil.which(self.executable)
        if path is None:
            raise SynthesizerUnavailable(f"{self.executable} is not installed")
        completed = subprocess.run(
            [path, "-v", voice, "-s", str(rate), "--stdout"],
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=SYNTH_TIMEOUT_S,
            check=False,
        )
        if completed.returncode != 0 or not completed.stdout:
            raise RuntimeError(f"{self.executable} failed with exit code {completed.returncode}")
        return _read_wav(completed.stdout)


class FallbackSynthesizer:
    """Tries its synthesisers in order for each text. One that is unavailable on this machine
    is not asked again; one that failed on a text is still asked for the next."""

    def __init__(self, *synthesizers: Synthesizer) -> None:
        self._synthesizers = list(synthesizers)
        self._lock = threading.Lock()

    def synthesize(self, text: str, voice: str, rate: int) -> tuple[Samples, int]:
        with self._lock:
            candidates = list(self._synthesizers)
        failure: Exception | None = None
        for current in candidates:
            try:
                return current.synthesize(text, voice, rate)
            except Exception as exc:  # any failure of a backend: go on with the next one
                failure = exc
                if isinstance(exc, SynthesizerUnavailable):
                    with self._lock, contextlib.suppress(ValueError):
                        self._synthesizers.remove(current)
                # the exception text comes from the backend, never from the spoken text
                log.warning(
                    "speech synthesiser %s failed (%s: %s)",
                    type(current).__name__,
                    type(exc).__name__,
                    exc,
                )
        raise RuntimeError("no speech synthesiser could render the prompt") from failure


def default_synthesizer() -> Synthesizer:
    """The `espeak-ng` program first: deterministic output, no shared state between threads,
    12-26 ms a sentence here; pyttsx3 (libespeak-ng in-process) when the program is missing."""
    return FallbackSynthesizer(EspeakCommandSynthesizer(), Pyttsx3Synthesizer())


# ---- conditioning ------------------------------------------------------------------------------


def _dbfs(level: float) -> float:
    return float(10 ** (level / 20))


def condition(samples: Samples, rate: int) -> Samples:
    """Resample to 8 kHz mono, trim silence to 50 ms at each end, normalise the level."""
    from scipy.signal import resample_poly  # seconds to import: only when a clip is rendered

    x = samples.astype(np.float64) / 32768.0
    if rate != SAMPLE_RATE and len(x):
        common = gcd(SAMPLE_RATE, rate)
        x = resample_poly(x, SAMPLE_RATE // common, rate // common)
    edge = SAMPLE_RATE * EDGE_SILENCE_MS // 1000
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak < 1e-4:  # nothing audible: just the edges
        return np.zeros(2 * edge, dtype=np.int16)
    loud = np.flatnonzero(np.abs(x) > peak * _dbfs(-40.0))
    speech = x[loud[0] : loud[-1] + 1]
    # speech level over its active 20 ms frames, so pauses between words do not lower it
    frame = SAMPLE_RATE // 50
    usable = len(speech) // frame * frame
    if usable:
        frame_rms = np.sqrt(np.mean(speech[:usable].reshape(-1, frame) ** 2, axis=1))
        active = frame_rms[frame_rms > frame_rms.max() * _dbfs(-30.0)]
        rms = float(np.sqrt(np.mean(active**2)))
    else:
        rms = float(np.sqrt(np.mean(speech**2)))
    gain = min(_dbfs(TARGET_RMS_DBFS) / max(rms, 1e-9), _dbfs(PEAK_LIMIT_DBFS) / peak)
    scaled = np.clip(np.round(speech * gain * 32767.0), -32768, 32767).astype(np.int16)
    silence = np.zeros(edge, dtype=np.int16)
    return np.concatenate([silence, scaled, silence])


# ---- the renderer ------------------------------------------------------------------------------


class PromptRenderer:
    """Text -> 8 kHz int16 samples, cached on disk and in memory. Safe to call from threads."""

    def __init__(
        self,
        cache_dir: Path,
        voice_rate: int = 150,
        *,
        synthesizer: Synthesizer | None = None,
        memory_clips: int = MEMORY_CACHE_CLIPS,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.voice_rate = voice_rate
        self.synthesizer = synthesizer if synthesizer is not None else default_synthesizer()
        self._memory: OrderedDict[str, Samples] = OrderedDict()
        self._memory_clips = memory_clips
        self._lock = threading.Lock()
        self.renders = 0  # synthesiser calls made by this renderer
        self.disk_hits = 0

    def cache_key(self, text: str, lang: str) -> str:
        """SHA-256 of the text and voice settings, spelled with the letters a-p (no digits)."""
        voice = _voice(lang)
        material = "\x00".join(
            (PIPELINE_VERSION, lang, voice, str(self.voice_rate), str(SAMPLE_RATE), text)
        )
        digest = hashlib.sha256(material.encode("utf-8")).hexdigest()
        return digest.translate(_HEX_TO_LETTERS)

    def cache_path(self, text: str, lang: str) -> Path:
        return self.cache_dir / lang / f"{self.cache_key(text, lang)}.s16"

    def render_text(self, text: str, lang: str) -> Samples:
        """`text` spoken in `lang`: 8 kHz mono int16, read-only (it is shared by the cache)."""
        text = " ".join(text.split())
        key = self.cache_key(text, lang)
        with self._lock:
            cached = self._memory.get(key)
            if cached is not None:
                self._memory.move_to_end(key)
                return cached
        path = self.cache_dir / lang / f"{key}.s16"
        samples = self._load(path)
        if samples is None:
            samples = self._synthesize(text, lang)
            self._store(path, samples)
        else:
            with self._lock:
                self.disk_hits += 1
        samples.setflags(write=False)
        with self._lock:
            self._memory[key] = samples
            self._memory.move_to_end(key)
            while len(self._memory) > self._memory_clips:
                self._memory.popitem(last=False)
        return samples

    def render_digit(self, ch: str, lang: str) -> Samples:
        """One digit or letter clip ('7', 'R'): shared by every call, whatever the card."""
        return self.render_text(symbol_text(ch, lang), lang)

    def _synthesize(self, text: str, lang: str) -> Samples:
        if not text:
            # pyttsx3 waits forever on an empty utterance; an empty phrase is just the edges
            return condition(np.zeros(0, dtype=np.int16), SAMPLE_RATE)
        raw, rate = self.synthesizer.synthesize(text, _voice(lang), self.voice_rate)
        with self._lock:
            self.renders += 1
        return condition(raw, rate)

    @staticmethod
    def _load(path: Path) -> Samples | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("prompt cache file unreadable (%s): rendering again", type(exc).__name__)
            return None
        if not data or len(data) % 2:
            return None  # a torn file: render again and overwrite it
        return np.frombuffer(data, dtype="<i2").astype(np.int16)

    @staticmethod
    def _store(path: Path, samples: Samples) -> None:
        temp = ""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
            with os.fdopen(handle, "wb") as out:
                out.write(samples.astype("<i2").tobytes())
            os.replace(temp, path)  # atomic: readers see the old file or the whole new one
        except OSError as exc:
            # a read-only or full cache still lets the call hear its prompt
            log.warning("prompt cache not writable (%s: %s)", type(exc).__name__, path.parent)
            if temp:
                with contextlib.suppress(OSError):
                    os.unlink(temp)


def _voice(lang: str) -> str:
    if lang not in VOICES or lang not in SUPPORTED_LANGUAGES:
        raise ValueError(
            f"unsupported prompt language {lang!r} (supported: {', '.join(SUPPORTED_LANGUAGES)})"
        )
    return VOICES[lang]
