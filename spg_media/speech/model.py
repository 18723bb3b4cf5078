"""What a recogniser hands the dialogue: an utterance's n-best word hypotheses with scores.

These values carry card digits as words, so their repr shows only counts: an utterance that ends
up in a log line or an exception message reveals nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# The grammar's words (spg_media/speech/grammar.py builds the recogniser's grammar from them).
DIGIT_WORDS: dict[str, str] = {
    "zero": "0",
    "oh": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
REPEAT_WORDS: dict[str, int] = {"double": 2, "triple": 3}
END_WORDS = frozenset({"hash", "pound"})  # said after a group, like the keypad's #
OTHER_WORDS = frozenset({"yes", "no", "repeat", "star", "start", "again"})
WORDS: frozenset[str] = frozenset(DIGIT_WORDS) | frozenset(REPEAT_WORDS) | END_WORDS | OTHER_WORDS


@dataclass(frozen=True)
class Hypothesis:
    """One reading of an utterance.

    `score` is log-domain and normalised by the recogniser so that a softmax over one
    utterance's hypotheses gives their posterior probabilities (higher is better).
    """

    words: tuple[str, ...] = field(repr=False)
    score: float

    def __repr__(self) -> str:
        return f"Hypothesis(<{len(self.words)} words>, score={self.score:.2f})"


@dataclass(frozen=True)
class Utterance:
    """One stretch of speech: its n-best hypotheses, best first, and when it was said."""

    hypotheses: tuple[Hypothesis, ...] = field(repr=False)
    started: float  # loop time of the speech onset
    ended: float  # loop time of the end of speech

    def __repr__(self) -> str:
        return (
            f"Utterance(<{len(self.hypotheses)} hypotheses>, "
            f"started={self.started:.3f}, ended={self.ended:.3f})"
        )

    def posteriors(self) -> list[float]:
        """The hypotheses' posterior probabilities (softmax of their scores), in order."""
        if not self.hypotheses:
            return []
        top = max(h.score for h in self.hypotheses)
        weights = [math.exp(h.score - top) for h in self.hypotheses]
        total = sum(weights)
        return [w / total for w in weights]
