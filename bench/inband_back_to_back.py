"""Keys back to back with no gap at all: read exactly, and the same whatever the block size.

Run:  .venv/bin/python bench/inband_back_to_back.py [--count 300] [--seed 99] [--baseline PATH]

Each case is 3 random keys (the same key twice in a row counts once), 60-110 ms each with no
gap between them, -33 to -5 dBm0, 25 dB SNR. Out of spec (keypads and dialers leave a pause),
but where a detector that hears a 5 ms correlator's neighbouring tones as its own goes wrong:
two keys sharing a row or a column tone. Counted: cases read exactly fed 20 ms blocks, and
cases whose events (digit, kind, time) are the same fed 20 ms and 50 ms blocks; spandsp's
`dtmf_rx` on the same audio for comparison (whole recording in one call). With --baseline PATH
(another copy of the detector, as bench_inband.py takes it) that detector is counted too.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_inband import load_baseline
from inband_accuracy import RATE, add_noise, dbm0_power, silence, to_int16, tone
from spandsp import spandsp_scan

from spg_media.dtmf.inband import KEYS, InbandDetector

Events = list[tuple[str, str, float]]


def feed(detector_class: Any, audio: np.ndarray[Any, np.dtype[np.int16]], block: int) -> Events:
    detector = detector_class()
    slot = detector.add_channel()
    events: Events = []
    for begin in range(0, audio.size, block):
        chunk = audio[None, begin : begin + block]
        now = (begin + chunk.shape[1]) / RATE
        for _, event in detector.process([slot], chunk, now):
            events.append((event.kind, event.digit, round(event.at, 4)))
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--baseline", help="another copy of the detector, counted alongside ours")
    args = parser.parse_args()
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]))
    detectors: dict[str, Any] = {"ours": InbandDetector}
    if args.baseline:
        detectors["baseline"] = load_baseline(args.baseline).InbandDetector
    exact = dict.fromkeys(detectors, 0)
    same = dict.fromkeys(detectors, 0)
    theirs = 0
    rng = np.random.default_rng(args.seed)
    for n in range(args.count):
        keys = "".join(rng.choice(list(KEYS), 3))
        level, ms = rng.uniform(-33, -5), rng.uniform(60, 110)
        parts = [silence(45)] + [tone(key, ms, rng, level=level) for key in keys]
        audio = np.concatenate([*parts, silence(120)])
        audio = to_int16(add_noise(audio, 25, dbm0_power(level), np.random.default_rng(n)))
        want = "".join(k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k)
        for name, detector_class in detectors.items():
            tick = feed(detector_class, audio, 160)
            starts = "".join(digit for kind, digit, _ in tick if kind == "start")
            exact[name] += starts == want
            same[name] += tick == feed(detector_class, audio, 400)
        theirs += "".join(d for d, _, _ in spandsp_scan(audio)) == want
    print(f"\n{args.count} sequences of 3 keys, no gap between keys\n")
    print("| detector | read exactly | same events fed 20 ms and 50 ms blocks |")
    print("|---|---|---|")
    for name in detectors:
        print(f"| {name} | {exact[name]} / {args.count} | {same[name]} / {args.count} |")
    print(f"| spandsp | {theirs} / {args.count} | |")


if __name__ == "__main__":
    main()
