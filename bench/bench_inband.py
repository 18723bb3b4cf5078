"""Benchmark: in-band DTMF channels per core in real time, against spandsp's dtmf_rx, and latency.

Run:  .venv/bin/python bench/bench_inband.py [--quick] [--channels 4000] [--seconds 3]
      .venv/bin/python bench/bench_inband.py --scaling 200,1000,4000,20000

Throughput, on one core (the process pins itself to the last CPU; BLAS threads = 1). Every
scenario is C channels × S seconds of the same int16 audio, fed
* to `InbandDetector.process`: one call per 20 ms tick with all C channels (full decision logic,
  events made);
* to spandsp `dtmf_rx` (ctypes, bench/spandsp.py) per channel, once with each channel's whole
  audio in one call ("large chunks", spandsp at its fastest) and once per 20 ms frame (what a
  media loop would do; each call pays the ctypes crossing).
Real-time channels per core = C × S / seconds taken (best of --repeats). Ratios are ours over
spandsp in the same run: the machine is shared and noisy, the ratios are what to compare.

Scenarios: "payment calls" (a caller leg: background noise at -65 dBm0, a few seconds of speech,
then card number, expiry and security code keyed at a caller's pace, 25 digits a minute), "speech"
(continuous, several languages and voices), "keying" (continuous digits, 7 a second: the worst
case for us, whose costly work is per digit) and "silence" (idle line, -70 dBm0).

With --baseline PATH (another copy of the detector package spg_media/dtmf/inband, e.g. the last
commit's: `mkdir -p /tmp/head && git archive HEAD spg_media/dtmf/inband | tar -x -C /tmp/head`,
then PATH is /tmp/head/spg_media/dtmf/inband; or the single file it was until the package,
`git show 59121c3:spg_media/dtmf/inband.py > /tmp/inband_file.py`), that detector is timed too,
alternating run by run with ours (the machine is shared: runs far apart can differ by 10 % and
more), and its figures and ours over it are added to the table, with whether the two made the
same events (every one: channel, kind, digit, time, duration) on each scenario.

Latency: 2000 digits (60-100 ms, -5 to -30 dBm0, twist -3 to +6 dB, 30 dB SNR, onset at a random
point of a 20 ms tick), from the onset to the start event's detection: with 20 ms frames (the
event comes at the end of the tick that completes the evidence) and with 1 ms blocks (the
detector's own delay). spandsp's decision point is exact (its callback reports the sample), so
its 20 ms figure is that point rounded up to the tick.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: before numpy loads its BLAS

import argparse  # noqa: E402
import functools  # noqa: E402
import importlib.util  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from inband_accuracy import (  # noqa: E402
    RATE,
    add_noise,
    dbm0_power,
    silence,
    speech,
    to_int16,
    tone,
)
from spandsp import SpandspDtmf  # noqa: E402

from spg_media.dtmf.inband import KEYS, InbandDetector  # noqa: E402

TICK = 160  # 20 ms
Int16s = npt.NDArray[np.int16]


# ---- audio ---------------------------------------------------------------------------------------


def line_noise(samples: int, level: float, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    return np.asarray(rng.standard_normal(samples) * np.sqrt(dbm0_power(level)), dtype=np.float64)


def caller_leg(seconds: float, talk: npt.NDArray[np.float64], rng: np.random.Generator) -> Int16s:
    """A payment call heard from the caller: quiet while prompts play, a few words, then card
    number (16 digits in groups of 4), expiry (4), security code (3) and '#', keyed at a
    caller's pace (tones 60-120 ms, 120-400 ms apart, 1-2 s between fields), and quiet again."""
    audio = line_noise(int(seconds * RATE), -65.0, rng)
    position = int(rng.uniform(2, 5) * RATE)
    words = talk[: int(rng.uniform(2, 4) * RATE)]
    audio[position : position + words.size] += words
    position += words.size + int(rng.uniform(1, 3) * RATE)
    level, twist = rng.uniform(-25, -5), rng.uniform(-2, 4)
    for field in (4, 4, 4, 4, 4, 3, 1):
        for _ in range(field):
            digit = KEYS[int(rng.integers(12))]
            burst = tone(digit, rng.uniform(60, 120), rng, level=level, twist=twist)
            if position + burst.size >= audio.size:
                return to_int16(audio)
            audio[position : position + burst.size] += burst
            position += burst.size + int(rng.uniform(0.12, 0.4) * RATE)
        position += int(rng.uniform(1, 2) * RATE)
    return to_int16(audio)


def keying(seconds: float, rng: np.random.Generator) -> Int16s:
    parts = []
    for _ in range(int(seconds / 0.14) + 1):
        digit = KEYS[int(rng.integers(16))]
        parts += [tone(digit, 70, rng, level=rng.uniform(-25, -5)), silence(70)]
    audio = np.concatenate(parts)[: int(seconds * RATE)]
    return to_int16(add_noise(audio, 30, dbm0_power(-15), rng))


def scenario_pool(name: str, talk: npt.NDArray[np.float64], rng: np.random.Generator) -> Int16s:
    """A long stream the channels take their audio from, at different offsets."""
    if name == "payment calls":
        return np.concatenate([caller_leg(60, talk[i * 8000 * 4 :], rng) for i in range(6)])
    if name == "speech":
        return to_int16(talk)
    if name == "keying":
        return keying(120, rng)
    return to_int16(line_noise(120 * RATE, -70.0, rng))


def channels_audio(pool: Int16s, channels: int, samples: int, rng: np.random.Generator) -> Int16s:
    starts = rng.integers(0, pool.size - samples, channels)
    return np.stack([pool[s : s + samples] for s in starts])


# ---- measurements --------------------------------------------------------------------------------


def best_of(
    repeats: int, prepare: Callable[[], Any], run: Callable[[Any], int]
) -> tuple[float, int]:
    """Fastest of `repeats` runs of run(prepare()), the preparation (making the detectors and
    their channels) not timed."""
    best, result = float("inf"), 0
    for _ in range(repeats):
        state = prepare()
        started = time.perf_counter()
        result = run(state)
        best = min(best, time.perf_counter() - started)
    return best, result


def ours_ready(
    channels: int, detector_class: Callable[[], Any] = InbandDetector
) -> tuple[Any, npt.NDArray[np.intp]]:
    detector = detector_class()
    slots = np.array([detector.add_channel() for _ in range(channels)], dtype=np.intp)
    return detector, slots


def alternating(
    repeats: int, runs: list[tuple[Callable[[], Any], Callable[[Any], int]]]
) -> list[tuple[float, int]]:
    """Like best_of for several (prepare, run) pairs, taking turns run by run."""
    best = [(float("inf"), 0)] * len(runs)
    for _ in range(repeats):
        for i, (prepare, run) in enumerate(runs):
            state = prepare()
            started = time.perf_counter()
            result = run(state)
            best[i] = (min(best[i][0], time.perf_counter() - started), result)
    return best


def load_baseline(path: str) -> ModuleType:
    """Another copy of the detector, under the name inband_baseline: a copy of the package
    directory spg_media/dtmf/inband (its modules import each other relatively), or of the
    single file it was before (inband.py)."""
    location = Path(path)
    if location.is_dir():
        spec = importlib.util.spec_from_file_location(
            "inband_baseline", location / "__init__.py", submodule_search_locations=[str(location)]
        )
    else:
        spec = importlib.util.spec_from_file_location("inband_baseline", location)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["inband_baseline"] = module  # for the package's relative imports
    spec.loader.exec_module(module)
    return module


def run_ours(blocks: Int16s, ready: tuple[Any, npt.NDArray[np.intp]]) -> int:
    """All ticks through one detector, all channels in each call; the digits started."""
    detector, slots = ready
    starts = 0
    process = detector.process
    for tick in range(blocks.shape[0]):
        for _slot, event in process(slots, blocks[tick], (tick + 1) * 0.02):
            starts += event.kind == "start"
    return starts


def events_of(blocks: Int16s, detector_class: Callable[[], Any]) -> list[tuple[Any, ...]]:
    """Every event of one detector fed all ticks (all channels in each call), as tuples."""
    detector, slots = ours_ready(blocks.shape[1], detector_class)
    out: list[tuple[Any, ...]] = []
    for tick in range(blocks.shape[0]):
        for slot, event in detector.process(slots, blocks[tick], (tick + 1) * 0.02):
            out.append((slot, event.kind, event.digit, event.at, event.duration_ms))
    return out


def spandsp_ready(channels: int) -> list[SpandspDtmf]:
    return [SpandspDtmf() for _ in range(channels)]


def run_spandsp_chunks(audio: Int16s, receivers: list[SpandspDtmf]) -> int:
    for row, receiver in zip(audio, receivers, strict=True):
        receiver.feed_raw(row.ctypes.data, row.size)
    digits = sum(1 for r in receivers for d, _ in r.reports if d)
    for r in receivers:
        r.close()
    return digits


def run_spandsp_frames(audio: Int16s, receivers: list[SpandspDtmf]) -> int:
    feeds = [r.feed_raw for r in receivers]
    base = audio.ctypes.data
    stride = audio.strides[0]
    for tick in range(audio.shape[1] // TICK):
        offset = base + tick * TICK * 2
        for c, feed in enumerate(feeds):
            feed(offset + c * stride, TICK)
    digits = sum(1 for r in receivers for d, _ in r.reports if d)
    for r in receivers:
        r.close()
    return digits


def throughput(
    channels: int,
    seconds: float,
    repeats: int,
    talk: npt.NDArray[np.float64],
    baseline: ModuleType | None = None,
) -> None:
    print(
        f"\nthroughput: {channels} channels x {seconds:g} s of audio, one core, best of {repeats}"
    )
    head = ("| audio | ours (20 ms ticks) | spandsp, large chunks | spandsp, 20 ms frames |"
            " ours / large | ours / 20 ms | digits ours / spandsp |")  # fmt: skip
    rule = "|---|---|---|---|---|---|---|"
    if baseline is not None:
        head += (" baseline (20 ms ticks) | baseline / large | ours / baseline |"
                 " events = baseline's |")  # fmt: skip
        rule += "---|---|---|---|"
    print(head)
    print(rule)
    samples = int(seconds * RATE) // TICK * TICK
    for name in ("payment calls", "speech", "keying", "silence"):
        rng = np.random.default_rng(3)
        audio = channels_audio(scenario_pool(name, talk, rng), channels, samples, rng)
        ticks = samples // TICK
        blocks = np.ascontiguousarray(audio.reshape(channels, ticks, TICK).transpose(1, 0, 2))
        work = channels * samples / RATE  # channel-seconds of audio
        runs: list[tuple[Callable[[], Any], Callable[[Any], int]]] = [
            (functools.partial(ours_ready, channels), functools.partial(run_ours, blocks))
        ]
        if baseline is not None:
            base_class = baseline.InbandDetector
            runs.append(
                (
                    functools.partial(ours_ready, channels, base_class),
                    functools.partial(run_ours, blocks),
                )
            )
        timed = alternating(repeats, runs)
        t_ours, found = timed[0]
        t_large, theirs = best_of(
            repeats,
            functools.partial(spandsp_ready, channels),
            functools.partial(run_spandsp_chunks, audio),
        )
        t_frames, _ = best_of(
            max(1, repeats - 1),
            functools.partial(spandsp_ready, channels),
            functools.partial(run_spandsp_frames, audio),
        )
        line = (
            f"| {name} | {work / t_ours:,.0f} | {work / t_large:,.0f} | {work / t_frames:,.0f} "
            f"| {t_large / t_ours:.1f}x | {t_frames / t_ours:.1f}x | {found} / {theirs} |"
        )
        if baseline is not None:
            t_base = timed[1][0]
            line += f" {work / t_base:,.0f} | {t_large / t_base:.1f}x | {t_base / t_ours:.2f}x |"
            # the same decisions, every event to the bit (kind, digit, time, duration)?
            same = events_of(blocks, InbandDetector) == events_of(blocks, baseline.InbandDetector)
            line += " yes |" if same else " **no** |"
        print(line)


def scaling(counts: list[int], seconds: float, repeats: int, talk: npt.NDArray[np.float64]) -> None:
    """Share of a core that N payment-call channels take, for several N: a node's real load is
    hundreds of in-band calls, not tens of thousands, and our cost per call has a fixed part."""
    print(f"\nscaling: payment calls, {seconds:g} s of audio, one core, best of {repeats}")
    print("| channels | ours, ms a 20 ms tick | ours, share of a core | spandsp large chunks |"
          " spandsp 20 ms frames | ours / large |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(3)
    pool = scenario_pool("payment calls", talk, rng)
    samples = int(seconds * RATE) // TICK * TICK
    ticks = samples // TICK
    for channels in counts:
        audio = channels_audio(pool, channels, samples, rng)
        blocks = np.ascontiguousarray(audio.reshape(channels, ticks, TICK).transpose(1, 0, 2))
        t_ours, _ = best_of(
            repeats, functools.partial(ours_ready, channels), functools.partial(run_ours, blocks)
        )
        t_large, _ = best_of(
            repeats,
            functools.partial(spandsp_ready, channels),
            functools.partial(run_spandsp_chunks, audio),
        )
        t_frames, _ = best_of(
            repeats,
            functools.partial(spandsp_ready, channels),
            functools.partial(run_spandsp_frames, audio),
        )
        print(
            f"| {channels:,} | {t_ours / ticks * 1000:.2f} | {t_ours / seconds:.1%} "
            f"| {t_large / seconds:.1%} | {t_frames / seconds:.1%} | {t_large / t_ours:.2f}x |"
        )


# ---- latency -------------------------------------------------------------------------------------


def latency_audio(count: int, rng: np.random.Generator) -> tuple[Int16s, npt.NDArray[np.float64]]:
    """One digit per channel at a random onset; (channels × samples, onsets in seconds)."""
    length = int(0.3 * RATE)
    audio = np.zeros((count, length))
    onsets = np.zeros(count)
    for c in range(count):
        onset = int(rng.uniform(0.06, 0.1) * RATE)
        burst = tone(
            KEYS[c % 16], rng.uniform(60, 100), rng, rng.uniform(-30, -5), rng.uniform(-3, 6)
        )
        audio[c, onset : onset + burst.size] = burst
        audio[c] = add_noise(audio[c], 30, dbm0_power(-30), rng)
        onsets[c] = onset / RATE
    return to_int16(audio), onsets


def ours_latency(
    audio: Int16s, onsets: npt.NDArray[np.float64], block: int
) -> npt.NDArray[np.float64]:
    detector = InbandDetector()
    slots = [detector.add_channel() for _ in range(audio.shape[0])]
    found = np.full(audio.shape[0], np.nan)
    for begin in range(0, audio.shape[1], block):
        now = (begin + block) / RATE
        for slot, event in detector.process(slots, audio[:, begin : begin + block], now):
            if event.kind == "start" and np.isnan(found[slot]):
                found[slot] = now - onsets[slot]
    return found


def spandsp_latency(audio: Int16s, onsets: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    found = np.full(audio.shape[0], np.nan)
    for c, row in enumerate(audio):
        receiver = SpandspDtmf()
        receiver.feed(row)
        decided = [at for d, at in receiver.reports if d]
        if decided:
            found[c] = decided[0] / RATE - onsets[c]
        receiver.close()
    return found


def summary(latencies: npt.NDArray[np.float64]) -> str:
    ms = latencies[~np.isnan(latencies)] * 1000
    missed = int(np.isnan(latencies).sum())
    return (
        f"median {np.median(ms):5.1f} ms   p99 {np.percentile(ms, 99):5.1f} ms   "
        f"max {ms.max():5.1f} ms   missed {missed}"
    )


def latency(count: int) -> None:
    rng = np.random.default_rng(11)
    audio, onsets = latency_audio(count, rng)
    print(f"\nlatency, onset to start event, {count} digits")
    print(f"  ours, 20 ms frames        {summary(ours_latency(audio, onsets, TICK))}")
    print(f"  ours, 1 ms blocks         {summary(ours_latency(audio, onsets, 8))}")
    exact = spandsp_latency(audio, onsets)
    tick_end = (np.ceil((exact + onsets) * RATE / TICK) * TICK) / RATE - onsets
    print(f"  spandsp, 20 ms frames     {summary(tick_end)}")
    print(f"  spandsp, decision point   {summary(exact)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--channels", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--baseline", help="another copy of the detector (package directory or inband.py)"
    )
    parser.add_argument(
        "--scaling",
        metavar="N,N,...",
        help="instead: the share of a core N payment-call channels take, for each N",
    )
    args = parser.parse_args()
    baseline = load_baseline(args.baseline) if args.baseline else None
    channels, seconds, repeats, count = args.channels, args.seconds, args.repeats, 2000
    if args.quick:
        channels, seconds, repeats, count = 300, 1.0, 1, 200
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, pinned to CPU {cpu}")
    talk = speech(60, seed=5)
    if args.scaling:
        counts = [int(n) for n in args.scaling.split(",")]
        scaling(counts, seconds, repeats, talk)
        return
    throughput(channels, seconds, repeats, talk, baseline)
    latency(count)


if __name__ == "__main__":
    main()
