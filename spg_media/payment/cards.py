"""Card rules: Luhn, brand by IIN range and length, expiry window, security-code length.

This module owns the answer to "is this what a card looks like?" for the caller's journey.
It does no I/O and keeps nothing: a keyed card number comes in as `SecretDigits` and is checked
digit by digit (Luhn) and by its first digits (brand), never turned into a string.

Brand names are exactly those of the `ivr.card_brands` setting.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Collection
from dataclasses import dataclass
from typing import NamedTuple

from spg_media.payment.model import SecretDigits

PAN_MIN_LENGTH = 12
PAN_MAX_LENGTH = 19
EXPIRY_MAX_YEARS_AHEAD = 20
IIN_DIGITS = 6  # a brand is told by at most the first six digits (the longest range below)

BRANDS = ("visa", "mastercard", "amex", "discover", "diners", "jcb", "unionpay", "maestro")


@dataclass(frozen=True)
class _BrandRule:
    brand: str
    # Inclusive IIN ranges; both ends have the same number of digits.
    ranges: tuple[tuple[str, str], ...]
    lengths: frozenset[int]

    def matches(self, head: str, length: int) -> bool:
        """Whether a card number of `length` digits starting with `head` (its first digits,
        at least as many as the longest range here) is of this brand."""
        if length not in self.lengths:
            return False
        for low, high in self.ranges:
            start = head[: len(low)]
            if len(start) == len(low) and int(low) <= int(start) <= int(high):
                return True
        return False


def _span(low: int, high: int) -> frozenset[int]:
    return frozenset(range(low, high + 1))


# Order matters: discover's co-branded 622126–622925 must be tried before unionpay's 62.
# The ranges of the other brands do not overlap.
_RULES: tuple[_BrandRule, ...] = (
    _BrandRule("visa", (("4", "4"),), frozenset({13, 16, 19})),
    _BrandRule("mastercard", (("51", "55"), ("2221", "2720")), frozenset({16})),
    _BrandRule("amex", (("34", "34"), ("37", "37")), frozenset({15})),
    _BrandRule(
        "discover",
        (("6011", "6011"), ("644", "649"), ("65", "65"), ("622126", "622925")),
        _span(16, 19),
    ),
    _BrandRule(
        "diners",
        (("300", "305"), ("36", "36"), ("38", "38"), ("39", "39")),
        _span(14, 19),
    ),
    _BrandRule("jcb", (("3528", "3589"),), _span(16, 19)),
    _BrandRule("unionpay", (("62", "62"),), _span(16, 19)),
    _BrandRule(
        "maestro",
        (
            ("5018", "5018"),
            ("5020", "5020"),
            ("5038", "5038"),
            ("5893", "5893"),
            ("6304", "6304"),
            ("6759", "6759"),
            ("6761", "6763"),
        ),
        _span(12, 19),
    ),
)


def _is_decimal(digits: str) -> bool:
    # str.isdigit() also accepts e.g. superscripts; card digits are ASCII only.
    return bool(digits) and digits.isascii() and digits.isdigit()


def luhn_valid(digits: str) -> bool:
    """True if `digits` (ASCII decimal, non-empty) passes the Luhn mod-10 check."""
    if not _is_decimal(digits):
        return False
    return _luhn_ok([ord(char) - 48 for char in digits])


def _luhn_ok(values: list[int]) -> bool:
    total = 0
    for position, value in enumerate(reversed(values)):
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def detect_brand(digits: str) -> str | None:
    """The brand whose IIN range and length both fit `digits`, or None."""
    if not _is_decimal(digits):
        return None
    return _brand_of(digits[:IIN_DIGITS], len(digits))


def _brand_of(head: str, length: int) -> str | None:
    for rule in _RULES:
        if rule.matches(head, length):
            return rule.brand
    return None


def possible_lengths(head: str) -> frozenset[int]:
    """The lengths a card number starting with `head` (its first digits so far, any number of
    them) can have: the union over the brands whose IIN ranges `head` can still be in.
    Empty when no brand starts that way. Used to check a card number heard in parts."""
    if not _is_decimal(head):
        return frozenset()
    lengths: set[int] = set()
    for rule in _RULES:
        for low, high in rule.ranges:
            n = min(len(low), len(head))
            if low[:n] <= head[:n] <= high[:n]:
                lengths |= rule.lengths
                break
    return frozenset(length for length in lengths if length >= len(head))


class PanCheck(enum.Enum):
    OK = "ok"
    INVALID = "invalid"  # length not 12–19, Luhn fails, or no brand has that prefix and length
    BRAND_NOT_ACCEPTED = "brand-not-accepted"


class PanVerdict(NamedTuple):
    """What `check_pan` found: the check, and the brand when it is OK (else None)."""

    check: PanCheck
    brand: str | None = None


def check_pan(pan: SecretDigits, allowed_brands: Collection[str]) -> PanVerdict:
    """Whether a keyed card number can be taken: valid, and of a brand in `allowed_brands`."""
    if not PAN_MIN_LENGTH <= len(pan) <= PAN_MAX_LENGTH:
        return PanVerdict(PanCheck.INVALID)
    if not _luhn_ok(pan.values()):
        return PanVerdict(PanCheck.INVALID)
    brand = _brand_of(pan.prefix(IIN_DIGITS), len(pan))
    if brand is None:
        return PanVerdict(PanCheck.INVALID)
    if brand not in allowed_brands:
        return PanVerdict(PanCheck.BRAND_NOT_ACCEPTED)
    return PanVerdict(PanCheck.OK, brand)


class ExpiryCheck(enum.Enum):
    OK = "ok"
    INVALID = "invalid"  # month not 01–12 (or a year that is not two digits)
    PAST = "past"  # before the current month; the current month is still valid
    TOO_FAR = "too-far"  # more than 20 years ahead of the current month


def check_expiry(mm: int, yy: int, today: datetime.date) -> ExpiryCheck:
    """Check a keyed MMYY expiry; `yy` is two digits, meaning year 2000 + yy."""
    if not 1 <= mm <= 12 or not 0 <= yy <= 99:
        return ExpiryCheck.INVALID
    expiry = (2000 + yy) * 12 + (mm - 1)
    current = today.year * 12 + (today.month - 1)
    if expiry < current:
        return ExpiryCheck.PAST
    if expiry > current + EXPIRY_MAX_YEARS_AHEAD * 12:
        return ExpiryCheck.TOO_FAR
    return ExpiryCheck.OK


def cvc_length(brand: str) -> int:
    """Digits of the security code: 4 for American Express, else 3."""
    return 4 if brand == "amex" else 3


def _double(value: int) -> int:
    return value * 2 - 9 if value > 4 else value * 2


def _luhn_sums(values: list[int]) -> tuple[int, int]:
    """The Luhn sums of `values` (mod 10) when its last digit is at an even position from the
    number's end (an even count of digits follows) and when it is at an odd one."""
    even = odd = 0
    for position, value in enumerate(reversed(values)):
        if position % 2:
            even += _double(value)
            odd += value
        else:
            even += value
            odd += _double(value)
    return even % 10, odd % 10


# The last three digits that give each pair of Luhn sums (every pair has one: checked by a test).
_SUM_TAILS: dict[tuple[int, int], tuple[int, int, int]] = {}
for _tail in ((a, b, c) for a in range(10) for b in range(10) for c in range(10)):
    _SUM_TAILS.setdefault(_luhn_sums(list(_tail)), _tail)
del _tail

SURROGATE_KEPT = IIN_DIGITS + 2  # a prefix this short is given as it is (3 digits are needed)


def rules_surrogate(prefix: SecretDigits) -> str:
    """A stand-in for the first digits of a card number that every card rule judges as it
    would the real ones, whatever digits follow: same length, same first six (the brand), and
    the same Luhn sums (zeros, then three digits chosen for them). So a recogniser can weigh
    the next digits it heard by brand, length and Luhn without being given a string of the
    caller's number. Up to `SURROGATE_KEPT` digits it is the prefix itself (the brand's six
    digits and two more at most: no card number)."""
    values = prefix.values()
    if len(values) <= SURROGATE_KEPT:
        return "".join(chr(48 + value) for value in values)
    head = values[:IIN_DIGITS]
    head_sums = _luhn_sums(head + [0] * (len(values) - IIN_DIGITS))
    want = _luhn_sums(values)
    tail = _SUM_TAILS[((want[0] - head_sums[0]) % 10, (want[1] - head_sums[1]) % 10)]
    digits = head + [0] * (len(values) - IIN_DIGITS - 3) + list(tail)
    return "".join(chr(48 + value) for value in digits)
