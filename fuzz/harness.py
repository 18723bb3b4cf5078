"""The fuzzing harness: the target registry, the per-input hang check, and the replay CI runs.

A *target* is a function of one input (bytes) that drives one parser the way the node does. It
returns normally whenever the parser keeps its documented promise: a result, or the parser's
documented error, which the target catches. Anything else escapes and is a finding: an
exception the parser does not document (an *escaped exception*), or a `Finding`, a documented
promise that does not hold (a parsed message whose Via does not parse, our own SDP answer that
does not parse back, a card number in a log line).

`TimedRunner` wraps a target, times every input with `time.perf_counter` and raises `Hang` for
one that takes over `HANG_S` (100 ms) after a warm-up, confirmed by running it again: a shared
machine can stall any single call, a real hang is slow every time. It also keeps the slowest
input's CPU time (`time.thread_time`), which such stalls do not inflate.

Two drivers use the same targets: `fuzz/run.py` under atheris (coverage-guided, libFuzzer's
mutations) for the long runs, and `replay` (the seed corpus plus seeded random mutations of it,
no atheris needed) for the short run in the unit tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
DICT_DIR = FUZZ_DIR / "dicts"
ARTIFACT_DIR = FUZZ_DIR / "artifacts"

HANG_S = 0.100  # an input slower than this is a hang
WARMUP_INPUTS = 200  # first inputs run before timing counts (imports, caches, first compiles)
RECHECKS = 2  # a slow input is run again this many times; a hang is slow every time
STATS_EVERY = 10_000  # inputs between two writes of the stats file

T = TypeVar("T")


class Finding(AssertionError):
    """A documented promise of the code under test does not hold for an input."""


class Hang(Exception):
    """An input took longer than HANG_S, every time it was run."""


def expect(condition: bool, what: str) -> None:
    """Raise `Finding(what)` unless `condition` holds."""
    if not condition:
        raise Finding(what)


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    doc: str
    max_len: int = 4096  # libFuzzer's -max_len for this target
    dictionary: str | None = None  # a file in fuzz/dicts/

    @property
    def corpus_dir(self) -> Path:
        return CORPUS_DIR / self.name


TARGETS: dict[str, Target] = {}


def target(
    name: str, *, max_len: int = 4096, dictionary: str | None = None
) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
    """Register a target function under `name` (its docstring says what it checks)."""

    def register(function: Callable[[bytes], None]) -> Callable[[bytes], None]:
        if name in TARGETS:
            raise ValueError(f"two fuzz targets named {name}")
        doc = (function.__doc__ or "").strip().split("\n\n", 1)[0]
        TARGETS[name] = Target(name, function, " ".join(doc.split()), max_len, dictionary)
        return function

    return register


# ---- structured inputs --------------------------------------------------------------------------


class Reader:
    """Reads fields off an input; past its end every field reads as zero or empty, so any input
    decodes (libFuzzer then learns which bytes matter)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size).ljust(size, b"\0"), "big")

    def take(self, size: int) -> bytes:
        chunk = self.data[self.pos : self.pos + size]
        self.pos += len(chunk)
        return chunk

    def chunk(self) -> bytes:
        """A field of up to 255 bytes, its length in the byte before it."""
        return self.take(self.byte())

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.byte() % len(options)]


# ---- log lines ----------------------------------------------------------------------------------


class LogCapture(logging.Handler):
    """Keeps the formatted messages of the `spg` loggers, for targets that search them for card
    data; the runner empties it before each input."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


LOGS = LogCapture()


@contextlib.contextmanager
def capture_logs() -> Iterator[None]:
    """Route the `spg` loggers into LOGS only while in it (no output: a fuzz run would drown in
    it); the logger is as it was afterwards (the replay runs inside the test session)."""
    logger = logging.getLogger("spg")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers = [LOGS]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])


# ---- timing -------------------------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class TimedRunner:
    """Runs a target on each input it is called with, timing it (see the module docstring).

    `artifacts`: where a hanging input is saved (`hang-<sha1>`); `stats_path`: a JSON file
    rewritten every STATS_EVERY inputs and at the `total`-th (libFuzzer ends the process with
    `exit()`, so there is no later moment to write it).
    """

    def __init__(
        self,
        target: Target,
        *,
        hang_s: float = HANG_S,
        warmup: int = WARMUP_INPUTS,
        artifacts: Path | None = None,
        stats_path: Path | None = None,
        total: int | None = None,
    ) -> None:
        self.target = target
        self.hang_s = hang_s
        self.warmup = warmup
        self.artifacts = artifacts
        self.stats_path = stats_path
        self.total = total
        self.inputs = 0
        self.slowest_s = 0.0  # after the warm-up (for a re-run input: its fastest run)
        self.slowest_cpu_s = 0.0  # CPU time of the input that used the most, after the warm-up
        self.false_alarms = 0  # inputs slow once and fast when run again
        self._warmup_slow: list[bytes] = []
        self._started = time.monotonic()

    def __call__(self, data: bytes) -> None:
        LOGS.messages.clear()
        cpu_started = time.thread_time()
        started = time.perf_counter()
        self.target.run(data)
        elapsed = time.perf_counter() - started
        cpu = time.thread_time() - cpu_started
        self.inputs += 1
        if self.inputs <= self.warmup:
            if elapsed > self.hang_s and len(self._warmup_slow) < 16:
                self._warmup_slow.append(data)
            if self.inputs == self.warmup:
                for slow in self._warmup_slow:  # judged now that the imports are done
                    self._confirm(slow)
                self._warmup_slow.clear()
        else:
            self.slowest_cpu_s = max(self.slowest_cpu_s, cpu)
            if elapsed > self.hang_s:
                self._confirm(data)
            elif elapsed > self.slowest_s:
                self.slowest_s = elapsed
        if self.stats_path is not None and (
            self.inputs % STATS_EVERY == 0 or self.inputs == self.total
        ):
            self.write_stats()

    def _confirm(self, data: bytes) -> None:
        times = []
        for _ in range(RECHECKS):
            started = time.perf_counter()
            self.target.run(data)
            times.append(time.perf_counter() - started)
            if times[-1] <= self.hang_s:
                self.false_alarms += 1
                self.slowest_s = max(self.slowest_s, times[-1])
                return
        if self.artifacts is not None:
            self.artifacts.mkdir(parents=True, exist_ok=True)
            (self.artifacts / f"hang-{_digest(data)}").write_bytes(data)
        raise Hang(
            f"{self.target.name}: an input of {len(data)} bytes took "
            f"{min(times) * 1000:.0f} ms or more every time (limit {self.hang_s * 1000:.0f} ms)"
        )

    def stats(self) -> dict[str, object]:
        return {
            "target": self.target.name,
            "inputs": self.inputs,
            "slowest_ms": round(self.slowest_s * 1000, 2),
            "slowest_cpu_ms": round(self.slowest_cpu_s * 1000, 2),
            "false_alarms": self.false_alarms,
            "wall_s": round(time.monotonic() - self._started, 2),
        }

    def write_stats(self) -> None:
        assert self.stats_path is not None
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        self.stats_path.write_text(json.dumps(self.stats()) + "\n")


# ---- corpus, dictionaries, replay ---------------------------------------------------------------


def load_corpus(target: Target) -> list[bytes]:
    """The checked-in seed inputs of a target, in a stable order."""
    return [path.read_bytes() for path in sorted(target.corpus_dir.glob("*")) if path.is_file()]


_DICT_LINE = re.compile(r'^(?:[A-Za-z0-9_]+=)?"(.*)"$')


def load_dictionary(target: Target) -> list[bytes]:
    """The tokens of a target's libFuzzer dictionary (`"text"` lines, `\\xNN` escapes)."""
    if target.dictionary is None:
        return []
    tokens = []
    for line in (DICT_DIR / target.dictionary).read_text().splitlines():
        match = _DICT_LINE.match(line.strip())
        if match is not None:
            tokens.append(_unescape(match.group(1)))
    return tokens


def _unescape(text: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            if text[i + 1] == "x":
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
            out += text[i + 1].encode()
            i += 2
            continue
        out += text[i].encode()
        i += 1
    return bytes(out)


_INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x80\x00")


def mutate(
    data: bytes, rng: random.Random, tokens: Sequence[bytes], others: Sequence[bytes], limit: int
) -> bytes:
    """One to four of libFuzzer's simpler mutations (bit flip, byte change, insert, erase,
    copy, dictionary token, splice with another input), capped at `limit` bytes."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(8)
        at = rng.randint(0, len(out))
        if kind == 0 and out:
            at = min(at, len(out) - 1)
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:
            at = min(at, len(out) - 1)
            out[at] = rng.randrange(256)
        elif kind == 2:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3 and out:
            del out[at : at + rng.randint(1, 16)]
        elif kind == 4 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 32)]
        elif kind == 5 and tokens:
            token = rng.choice(tokens)
            if rng.random() < 0.5:
                out[at:at] = token
            else:
                out[at : at + len(token)] = token
        elif kind == 6 and others:
            other = rng.choice(others)
            cut = rng.randint(0, len(other))
            out = out[:at] + bytearray(other[cut:])
        else:
            out[at:at] = rng.choice(_INTERESTING)
    return bytes(out[:limit])


class ReplayFailure(AssertionError):
    """An input of the replay failed; the message has the input (hex) to reproduce it."""


def replay_inputs(target: Target, count: int, seed: int = 0) -> Iterable[bytes]:
    """The seed corpus, then `count` seeded mutations of it (one in ten plain random bytes)."""
    corpus = load_corpus(target)
    yield from corpus
    tokens = load_dictionary(target)
    rng = random.Random(f"{target.name}:{seed}")
    for index in range(count):
        if not corpus or index % 10 == 9:
            yield bytes(rng.randrange(256) for _ in range(rng.randint(0, 256)))
        else:
            data = rng.choice(corpus)
            for _ in range(rng.randint(1, 3)):  # stacked, as libFuzzer does
                data = mutate(data, rng, tokens, corpus, target.max_len)
            yield data


def replay(target: Target, count: int, seed: int = 0) -> TimedRunner:
    """Run a target on its corpus and `count` mutations; `ReplayFailure` on the first failure."""
    runner = TimedRunner(target, warmup=min(WARMUP_INPUTS, 20))
    with capture_logs():
        for data in replay_inputs(target, count, seed):
            try:
                runner(data)
            except Exception as exc:
                raise ReplayFailure(
                    f"{target.name}: {type(exc).__name__}: {exc}\n"
                    f"input ({len(data)} bytes): {data[:2048].hex()}"
                ) from exc
    return runner
