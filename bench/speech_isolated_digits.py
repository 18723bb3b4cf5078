"""Would asking for a card group one digit at a time help? The same digits said alone and in
groups of four, read by the product's recogniser with the length known.

Run:  nice -n 19 .venv/bin/python bench/speech_isolated_digits.py [--groups 40] [--snr clean|20|10]
      [--model tiny.en|base] [--seed 5]

Each group is a random 4 digits, said by espeak-ng (voice i % 8 of the speech bench's, variant
(i // 2) % 10, 130-190 words a minute) through the speech bench's telephone path (8 kHz,
300-3400 Hz, G.711 μ-law, noise at `--snr` over the active speech): once as four separate
utterances of one digit each (read with length 1), once as the group (length 4). Reported:
digits right alone, groups right, digits right in groups, and CPU per digit said alone. In
memory only.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speech_accuracy import VARIANTS, VOICES, Speaker, render

from spg_media.speech.digits import words_to_digits
from spg_media.speech.model import Hypothesis
from spg_media.speech.recogniser import make_recogniser


def best_digits(hypotheses: tuple[Hypothesis, ...]) -> str:
    return (words_to_digits(hypotheses[0].words) or "") if hypotheses else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=40)
    parser.add_argument("--snr", default="clean", help="clean, or the SNR in dB")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    try:
        snr = None if args.snr == "clean" else float(args.snr)
    except ValueError:
        parser.exit(2, f"--snr: 'clean' or a number of dB, not {args.snr!r}\n")
    if args.groups < 1:
        parser.exit(2, "--groups: at least 1\n")
    recogniser = make_recogniser(f"whisper-{args.model}")
    rng = random.Random(args.seed)
    alone_right = groups_right = digits_right_in_groups = 0
    cpu = 0.0
    for i in range(args.groups):
        voice = VOICES[i % len(VOICES)] + VARIANTS[(i // 2) % len(VARIANTS)]
        group = "".join(str(rng.randint(0, 9)) for _ in range(4))
        speaker = Speaker(voice, rng.randint(130, 190), 0, snr)
        noise = np.random.default_rng(i)
        for digit in group:
            audio = render(digit, speaker, noise)
            started = time.process_time()
            heard = best_digits(recogniser.recognise(audio, length=1))
            cpu += time.process_time() - started
            alone_right += heard == digit
        heard = best_digits(recogniser.recognise(render(" ".join(group), speaker, noise), length=4))
        groups_right += heard == group
        digits_right_in_groups += sum(a == b for a, b in zip(heard, group, strict=False))
    digits = 4 * args.groups
    print(
        f"{args.groups} groups, {args.snr}, whisper {args.model}: digits right said alone "
        f"{alone_right}/{digits} ({alone_right / digits:.1%}); in groups "
        f"{digits_right_in_groups}/{digits} ({digits_right_in_groups / digits:.1%}), "
        f"groups right {groups_right}/{args.groups}; CPU {cpu / digits:.3f} s a digit alone"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
