"""Constrained decoding: the most likely *valid* digit string among a recogniser's hypotheses.

Sans-IO. A digit recogniser alone gets a whole card number right only now and then; the field's
rules do the rest. Each hypothesis of an utterance is turned into digits ("four double one" ->
"411"); hypotheses that read the same digits pool their posterior; readings that break the
field's rules (card: brand prefix, length by brand, Luhn on the complete number; expiry: month
and the expiry window; code: its length) are dropped, and among the rest the most probable wins.

Its confidence is its share of the probability left after the rules, with the mass of the
dropped readings partly kept in the denominator (`_LEAK`): the true reading may be one the
n-best list never held, and a broken reading is evidence of that. A reading the dialogue is
not sure enough of is asked again.

Repeated attempts at the same digits add up: `earlier` takes the utterances of the caller's
previous tries at them (after a "no" or a reading too unsure to read back), whose posteriors
are pooled with this one's, and `denied` the readings the caller said "no" to, which are never
chosen again (their mass goes, unlike a broken reading's: the caller said so).

Nothing here logs, and `Reading`'s repr hides its digits.
"""

from __future__ import annotations

import datetime
from collections.abc import Container, Sequence
from dataclasses import dataclass, field

from spg_media.payment.cards import (
    PAN_MAX_LENGTH,
    PAN_MIN_LENGTH,
    ExpiryCheck,
    check_expiry,
    detect_brand,
    luhn_valid,
    possible_lengths,
)
from spg_media.speech.model import DIGIT_WORDS, END_WORDS, REPEAT_WORDS, Utterance

FIELDS = ("card-group", "card", "expiry", "code")

# Share of a broken reading's probability that stays in the confidence's denominator, by the
# strength of the check that broke it: Luhn passes 1 random string in 10, so a hypothesis that
# fails it says little about which valid string is meant; a length or month check is weaker.
_LEAK_LUHN = 0.1
_LEAK_OTHER = 0.5
# A card number heard in parts that has reached a length its brand allows but fails Luhn may
# still go on (a Visa of 16 digits could be one of 19); that is rare, so such a reading is
# weighted down against one that completes the number.
_CONTINUES_WEIGHT = 0.05


@dataclass(frozen=True)
class Reading:
    """The chosen digits of an utterance for a field, how sure, and whether the field's rules
    accept them (`valid` False: the best there was, but no hypothesis fits the rules; its
    confidence is then 0)."""

    digits: str = field(repr=False)
    confidence: float  # 0..1
    valid: bool

    def __repr__(self) -> str:
        return (
            f"Reading(<{len(self.digits)} digits>, confidence={self.confidence:.2f}, "
            f"valid={self.valid})"
        )


def words_to_digits(words: Sequence[str]) -> str | None:
    """The digits the words say ("four double one" -> "411"), or None if they are not digits.

    A trailing "hash"/"pound" (said like the keypad's #, to end a group) is dropped. "double"
    and "triple" repeat the next digit. Any other word, a repeat word not followed by a digit,
    or no digit at all gives None.
    """
    items = list(words)
    while items and items[-1] in END_WORDS:
        items.pop()
    out: list[str] = []
    repeat = 1
    for word in items:
        if word in REPEAT_WORDS:
            if repeat != 1:
                return None
            repeat = REPEAT_WORDS[word]
            continue
        digit = DIGIT_WORDS.get(word)
        if digit is None:
            return None
        out.append(digit * repeat)
        repeat = 1
    if repeat != 1 or not out:
        return None
    return "".join(out)


_ANSWERS: dict[tuple[str, ...], str] = {
    ("yes",): "yes",
    ("no",): "no",
    ("repeat",): "repeat",
    ("start", "again"): "start-again",
    ("start",): "start-again",
}


def answer_of(utterance: Utterance) -> str | None:
    """The answer ("yes" | "no" | "repeat" | "start-again") when the best hypothesis is that
    answer and it holds at least half of the utterance's probability (summed over the
    hypotheses that give the same answer); else None (digits, or not sure)."""
    if not utterance.hypotheses:
        return None
    best = _ANSWERS.get(utterance.hypotheses[0].words)
    if best is None:
        return None
    mass = sum(
        p
        for h, p in zip(utterance.hypotheses, utterance.posteriors(), strict=True)
        if _ANSWERS.get(h.words) == best
    )
    return best if mass >= 0.5 else None


def best_reading(
    utterance: Utterance,
    field: str,
    *,
    expected_length: int | None = None,
    prefix: str = "",
    today: datetime.date | None = None,
    earlier: Sequence[Utterance] = (),
    denied: Container[str] = (),
) -> Reading | None:
    """The most probable reading of `utterance` that the field's rules accept.

    field: "card-group" (part of a card number; `prefix` holds the digits already confirmed,
    and brand, length and Luhn are checked on prefix + digits), "card" (the whole number),
    "expiry" (MMYY; three digits are read with a leading zero) or "code" (3 or 4 digits).
    `expected_length`, when given, is the number of digits this utterance must have.
    `today` (default: the current date) places the expiry window. `earlier`: the caller's
    previous tries at the same digits, pooled with this one; `denied`: readings the caller
    rejected, never chosen.

    None when no hypothesis reads as digits at all; a Reading with valid False and confidence
    0 when some do but none fits the rules (the most probable of those).
    """
    if field not in FIELDS:
        raise ValueError(f"unknown field {field!r}; expected one of {', '.join(FIELDS)}")
    pooled: dict[str, float] = {}
    # this try first: among equally likely readings, the one just said wins
    for attempt in (utterance, *earlier):
        for hypothesis, posterior in zip(attempt.hypotheses, attempt.posteriors(), strict=True):
            digits = words_to_digits(hypothesis.words)
            if digits is None:
                continue
            if field == "expiry" and len(digits) == 3:
                digits = "0" + digits
            if digits in denied:
                continue
            pooled[digits] = pooled.get(digits, 0.0) + posterior
    if not pooled:
        return None
    when = today if today is not None else datetime.date.today()
    weighted: dict[str, float] = {}
    leaked = 0.0
    for digits, mass in pooled.items():
        weight, leak = _rule_weight(digits, field, expected_length, prefix, when)
        if weight > 0.0:
            weighted[digits] = mass * weight
        else:
            leaked += mass * leak
    if not weighted:
        digits, _ = max(pooled.items(), key=lambda item: item[1])
        return Reading(digits, 0.0, valid=False)
    digits, mass = max(weighted.items(), key=lambda item: item[1])
    return Reading(digits, _share(mass, sum(weighted.values()) + leaked), valid=True)


def _share(mass: float, total: float) -> float:
    return 0.0 if total <= 0.0 else min(1.0, mass / total)


def _rule_weight(
    digits: str,
    field: str,
    expected_length: int | None,
    prefix: str,
    today: datetime.date,
) -> tuple[float, float]:
    """(prior weight of `digits` under the field's rules, 0 if they break them; and if they
    do, the leak factor of the check they broke)."""
    if expected_length is not None and len(digits) != expected_length:
        return 0.0, _LEAK_OTHER
    if field == "card":
        number = prefix + digits
        if not PAN_MIN_LENGTH <= len(number) <= PAN_MAX_LENGTH or detect_brand(number) is None:
            return 0.0, _LEAK_OTHER
        return (1.0, 0.0) if luhn_valid(number) else (0.0, _LEAK_LUHN)
    if field == "card-group":
        number = prefix + digits
        lengths = possible_lengths(number)
        if not lengths:
            return 0.0, _LEAK_OTHER
        if len(number) not in lengths:
            return 1.0, 0.0  # a plausible start; Luhn waits for the complete number
        if luhn_valid(number):
            return 1.0, 0.0
        if max(lengths) > len(number):
            return _CONTINUES_WEIGHT, 0.0
        return 0.0, _LEAK_LUHN
    if field == "expiry":
        if len(digits) != 4:
            return 0.0, _LEAK_OTHER
        verdict = check_expiry(int(digits[:2]), int(digits[2:]), today)
        return (1.0, 0.0) if verdict is ExpiryCheck.OK else (0.0, _LEAK_OTHER)
    # code
    if len(digits) not in (3, 4):
        return 0.0, _LEAK_OTHER
    return 1.0, 0.0
