"""The speech engine: per-call voice-activity detection on the loop, recognition off it.

`SpeechEngine` (one per process) owns a pool of worker processes, each with its own recogniser
(`speech.recogniser`: Whisper tiny.en or base, or pocketsphinx; spg_media/speech/recogniser.py).
Processes, not threads: pocketsphinx holds the GIL while it decodes (measured: a decode in a
thread stalled the loop's thread for 117 ms), and the media tick must not stall.
`SpeechInput` (one per call) runs `VoiceActivity` on the samples the media tick hands it (a few
µs per 20 ms frame; silence costs nothing more) and sends each finished stretch of speech to
the pool; the result comes back on the loop (`call_soon_threadsafe`) as an `Utterance`.

Bounds: `max_concurrent` calls may use speech at once (`open_input` returns None past it and the
call stays on the keypad); each call has at most `MAX_QUEUED_PER_CALL` utterances waiting or in
recognition (a further one is dropped: the dialogue asks again when nothing comes back); an
utterance is at most 12 s (the VAD cuts it). Audio crosses to the workers in memory, never to
disk; no words are logged here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import numpy.typing as npt

from spg_media.hardening import end_with_parent, harden_process
from spg_media.speech.model import Hypothesis, Utterance
from spg_media.speech.recogniser import (
    DEFAULT_RECOGNISER,
    Recogniser,
    language_supported,
    make_recogniser,
)
from spg_media.speech.vad import SpeechSegment, VoiceActivity

log = logging.getLogger("spg.speech")

MAX_QUEUED_PER_CALL = 2

_worker_recogniser: Recogniser | None = None


def speech_available(language: str, recogniser: str = DEFAULT_RECOGNISER) -> bool:
    """Whether callers speaking `language` can say their digits (`recogniser`'s model is
    installed)."""
    return language_supported(language, recogniser)


def speech_languages(
    languages: list[str] | tuple[str, ...], recogniser: str = DEFAULT_RECOGNISER
) -> list[str]:
    """Those of `languages` that have a speech model."""
    return [language for language in languages if speech_available(language, recogniser)]


def _worker_init(lock_memory: bool = False, recogniser: str = DEFAULT_RECOGNISER) -> None:
    global _worker_recogniser
    # A worker holds callers' spoken digits: the node's own protections, applied again since
    # exec made this process dumpable (hardening.py), and it ends with the node.
    harden_process(lock_memory)
    end_with_parent()
    _worker_recogniser = make_recogniser(recogniser)


def _worker_ready() -> bool:
    """A task that only makes the pool start a worker (whose initializer loads the model)."""
    return _worker_recogniser is not None


def _worker_recognise(samples: npt.NDArray[np.int16], length: int | None) -> tuple[Hypothesis, ...]:
    if _worker_recogniser is None:  # pragma: no cover - the initializer ran
        _worker_init()
    assert _worker_recogniser is not None
    return _worker_recogniser.recognise(samples, length=length)


class SpeechEngine:
    """One per process: the recognition workers and the count of calls using speech."""

    def __init__(
        self,
        max_concurrent: int = 8,
        *,
        workers: int | None = None,
        lock_memory: bool = False,
        recogniser: str = DEFAULT_RECOGNISER,
    ) -> None:
        self.max_concurrent = max_concurrent
        self.recogniser = recogniser  # `speech.recogniser`: which model the workers load
        self._lock_memory = lock_memory
        # no more processes than recognitions may run at once
        self._workers = max(1, min(max_concurrent, workers or os.cpu_count() or 1))
        self._pool: ProcessPoolExecutor | None = None
        self._inputs: set[SpeechInput] = set()
        self.recognitions = 0  # finished recognitions (for metrics and tests)
        self.refused = 0  # open_input calls past the limit
        self.dropped = 0  # utterances dropped past a call's queue bound

    @property
    def processes(self) -> int:
        """Recogniser processes the pool runs."""
        return self._workers

    @property
    def active(self) -> int:
        return len(self._inputs)

    def start(self) -> None:
        """Start the workers now (each loads the model, about a second) rather than at the
        first caller's first utterance."""
        pool = self._ensure_pool()
        # a task per worker makes the pool start them all (each loads its model on start)
        for _ in range(self._workers):
            pool.submit(_worker_ready)

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: the serving process has threads; a forked child would inherit their locks
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(self._lock_memory, self.recogniser),
            )
        return self._pool

    def open_input(
        self, language: str, on_utterance: Callable[[Utterance], None]
    ) -> SpeechInput | None:
        """A speech input for one call, or None: no model for `language`, or `max_concurrent`
        calls already use speech (the caller keys the digits instead)."""
        if not speech_available(language, self.recogniser):
            return None
        if len(self._inputs) >= self.max_concurrent:
            self.refused += 1
            return None
        speech_input = SpeechInput(self, on_utterance, asyncio.get_running_loop())
        self._inputs.add(speech_input)
        return speech_input

    def _release(self, speech_input: SpeechInput) -> None:
        self._inputs.discard(speech_input)

    def _submit(
        self, samples: npt.NDArray[np.int16], length: int | None
    ) -> Future[tuple[Hypothesis, ...]]:
        try:
            return self._ensure_pool().submit(_worker_recognise, samples, length)
        except BrokenProcessPool:
            self._pool_broken()
            raise

    def _pool_broken(self) -> None:
        """A worker died (killed, out of memory): the next utterance gets a new pool."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        for speech_input in list(self._inputs):
            speech_input.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class SpeechInput:
    """One call's speech: feed it the call's samples; utterances come back on the loop."""

    def __init__(
        self,
        engine: SpeechEngine,
        on_utterance: Callable[[Utterance], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._engine = engine
        self._on_utterance = on_utterance
        self._loop = loop
        self._vad = VoiceActivity()
        self._queued = 0
        self._closed = False
        self._length: int | None = None

    @property
    def in_speech(self) -> bool:
        """Whether the caller is talking now (the dialogue may hold a prompt's timeout)."""
        return self._vad.in_speech

    def expect(self, length: int | None) -> None:
        """The next utterances are exactly `length` digits (or an answer: yes, no, repeat,
        start again); None: any number of digits. Optional: a grammar that knows the length
        rules out the recogniser's commonest errors, inserted and dropped digits."""
        if length is not None and not 1 <= length <= 19:
            raise ValueError("digit count must be 1..19")
        self._length = length

    def feed(self, samples: npt.NDArray[np.int16], now: float) -> None:
        """The call's received audio, int16 at 8 kHz, ending at loop time `now`."""
        if self._closed:
            return
        for segment in self._vad.feed(samples, now):
            self._recognise(segment)

    def _recognise(self, segment: SpeechSegment) -> None:
        if self._queued >= MAX_QUEUED_PER_CALL:
            self._engine.dropped += 1
            return
        self._queued += 1
        try:
            future = self._engine._submit(segment.samples, self._length)
        except (BrokenProcessPool, RuntimeError) as exc:
            self._queued -= 1
            log.error("speech recognition unavailable: %s", type(exc).__name__)
            return
        started, ended = segment.started, segment.ended

        def done(result: Future[tuple[Hypothesis, ...]]) -> None:
            # on a pool thread: hand over to the loop
            with contextlib.suppress(RuntimeError):  # a closed loop: the call is gone
                self._loop.call_soon_threadsafe(self._deliver, result, started, ended)

        future.add_done_callback(done)

    def _deliver(
        self, result: Future[tuple[Hypothesis, ...]], started: float, ended: float
    ) -> None:
        self._queued -= 1
        self._engine.recognitions += 1
        if self._closed or result.cancelled():
            return
        error = result.exception()
        if isinstance(error, BrokenProcessPool):
            self._engine._pool_broken()
        if error is not None:
            # the type only: a message could carry what was said
            log.error("speech recognition failed: %s", type(error).__name__)
            return
        hypotheses = result.result()
        if hypotheses:
            self._on_utterance(Utterance(hypotheses, started, ended))

    def close(self) -> None:
        """The call ended or left speech entry: nothing more is delivered."""
        if not self._closed:
            self._closed = True
            self._engine._release(self)
