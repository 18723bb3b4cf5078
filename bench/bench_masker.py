"""Benchmark: `ToneMasker.process` alone, one 20 ms tick of many channels, against a baseline.

Run:  .venv/bin/python bench/bench_masker.py [--channels 400] [--ticks 100] [--rounds 5]
          [--baseline-ref main | --baseline-file PATH]

The masker of agent-assisted mode (spg_media/rtp/masking.py) takes one call a tick with every
bridged direction's 20 ms (160 samples), as the media tick gives it. Timed here alone, on one
core (the process pins itself to the last CPU; BLAS threads = 1, as the node sets them), over
--ticks ticks of --channels channels, best of --rounds, alternating with the baseline: the
masking module of another tree (`--baseline-ref`, read with `git show`, or `--baseline-file`),
imported under another name (it imports nothing of the package). Scenarios:

* "noise": random bytes decoded as PCMU on every channel, what `bench_media_load.py --bridged`
  sends (every window loud, analysed);
* "speech": a synthetic voice (harmonics of a wavering pitch under two formants, -15 to
  -25 dBm0) on every channel;
* "keys": white noise at -35 dBm0 with a key (-30 to 0 dBm0, twist -4 to +8 dB, up to ±3.5 %
  off frequency, 40-120 ms) every 300 ms or so on each channel;
* "silence": an idle line, -70 dBm0 noise.

Prints µs a tick and per channel, the ratio against the baseline, and whether the two gave the
same output (every sample of every tick, masked blocks included).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: before numpy loads its BLAS

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from spg_media.rtp import masking  # noqa: E402
from spg_media.rtp.g711 import ULAW_TO_LINEAR  # noqa: E402

RATE = 8000
TICK = 160
PEAK = masking.DBM0_PEAK


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def voice(samples: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """A vowel-like sound at -15 to -25 dBm0 (as tests/unit/test_masking.py's)."""
    pitch = rng.uniform(100, 220)
    t = np.arange(samples) / RATE
    f0 = pitch * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    out = np.zeros(samples)
    for h in range(1, 25):
        f = h * pitch
        gain = np.exp(-(((f - 500) / 200) ** 2)) + 0.5 * np.exp(-(((f - 1500) / 250) ** 2))
        out += gain * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
    rms = PEAK / np.sqrt(2) * 10 ** (rng.uniform(-25, -15) / 20)
    return np.asarray(out * rms / np.sqrt(np.mean(out**2)) + rng.normal(0, 30, samples))


def keys(samples: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    out = rng.normal(0, PEAK * 10 ** (-35 / 20) / np.sqrt(2), samples)
    at = int(rng.integers(0, 2400))
    while at + 960 < samples:
        length = int(rng.integers(320, 961))
        low = masking.ROW_HZ[rng.integers(4)] * (1 + rng.uniform(-0.035, 0.035))
        high = masking.COL_HZ[rng.integers(4)] * (1 + rng.uniform(-0.035, 0.035))
        total = PEAK * 10 ** (rng.uniform(-30, 0) / 20)
        twist = rng.uniform(-4, 8)
        row = total / np.sqrt(1 + 10 ** (-twist / 10))
        col = row * 10 ** (-twist / 20)
        t = np.arange(length) / RATE
        out[at : at + length] += row * np.sin(2 * np.pi * low * t) + col * np.sin(
            2 * np.pi * high * t + rng.uniform(0, 2 * np.pi)
        )
        at += length + int(rng.integers(1200, 3600))
    return out


def scenario(name: str, channels: int, ticks: int, seed: int) -> npt.NDArray[np.int16]:
    """(ticks × channels × TICK) int16 samples."""
    rng = np.random.default_rng(seed)
    samples = ticks * TICK
    if name == "noise":
        audio = ULAW_TO_LINEAR[rng.integers(0, 256, (channels, samples))].astype(np.float64)
    elif name == "speech":
        audio = np.stack([voice(samples, rng) for _ in range(channels)])
    elif name == "keys":
        audio = np.stack([keys(samples, rng) for _ in range(channels)])
    else:
        audio = rng.normal(0, PEAK * 10 ** (-70 / 20) / np.sqrt(2), (channels, samples))
    ints = np.clip(np.round(audio), -32768, 32767).astype(np.int16)
    return np.ascontiguousarray(ints.reshape(channels, ticks, TICK).transpose(1, 0, 2))


def run(module: ModuleType, blocks: npt.NDArray[np.int16]) -> tuple[float, bytes, int]:
    """Seconds for all ticks, the output's bytes, masked blocks."""
    masker = module.ToneMasker(seed=1)
    slots = np.array([masker.add_channel("silence") for _ in range(blocks.shape[1])])
    out = []
    start = time.perf_counter()
    for block in blocks:
        out.append(masker.process(slots, block))
    took = time.perf_counter() - start
    return took, np.stack(out).tobytes(), int(masker.masked_blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=400)
    parser.add_argument("--ticks", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline-ref", default="main")
    parser.add_argument("--baseline-file", help="a masking.py to time against (not a ref's)")
    parser.add_argument("--scenarios", default="noise,speech,keys,silence")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    if args.baseline_file:
        base_path, base_name = Path(args.baseline_file), args.baseline_file
    else:
        text = subprocess.run(
            ["git", "-C", str(HERE), "show", f"{args.baseline_ref}:spg_media/rtp/masking.py"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        base_path = Path(tempfile.mkdtemp(prefix="spg-masker-")) / "masking_baseline.py"
        base_path.write_text(text)
        commit = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", args.baseline_ref],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        base_name = f"{args.baseline_ref} ({commit})"
    baseline = load(base_path, "masking_baseline")
    ours = masking
    print(
        f"ToneMasker.process: {args.channels} channels, one call a 20 ms tick, {args.ticks} "
        f"ticks, best of {args.rounds}, one core, BLAS threads 1; baseline {base_name}"
    )
    print("| scenario | baseline µs a tick | this tree µs a tick | µs a channel (base / this) "
          "| this tree's cost | same output | masked blocks |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for n, name in enumerate(args.scenarios.split(",")):
        blocks = scenario(name, args.channels, args.ticks, seed=n)
        times: dict[str, list[float]] = {"base": [], "ours": []}
        outputs: dict[str, bytes] = {}
        masked: dict[str, int] = {}
        for _ in range(args.rounds):
            for key, module in (("base", baseline), ("ours", ours)):
                took, out, count = run(module, blocks)
                times[key].append(took)
                outputs[key], masked[key] = out, count
        base = min(times["base"]) / args.ticks * 1e6
        this = min(times["ours"]) / args.ticks * 1e6
        same = "yes" if outputs["base"] == outputs["ours"] else "**no**"
        print(
            f"| {name} | {base:.0f} | {this:.0f} | {base / args.channels:.2f} / "
            f"{this / args.channels:.2f} | {this / base:.2f}x ({base / this:.2f}x cheaper) "
            f"| {same} | {masked['base']} / {masked['ours']} |"
        )


if __name__ == "__main__":
    main()
