"""Card rules: Luhn, brands by IIN range and length, expiry window, security-code length."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spg_media.payment import cards
from spg_media.payment.cards import (
    BRANDS,
    ExpiryCheck,
    PanCheck,
    PanVerdict,
    check_expiry,
    check_pan,
    cvc_length,
    detect_brand,
    luhn_valid,
)
from spg_media.payment.model import SecretDigits

ALL = BRANDS


def luhn_complete(prefix: str, length: int) -> str:
    """`prefix` padded with zeros to `length`, with the last digit making it Luhn-valid."""
    body = prefix.ljust(length - 1, "0")
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable")


def luhn_break(number: str) -> str:
    last = int(number[-1])
    return number[:-1] + str((last + 1) % 10)


# ---- Luhn ------------------------------------------------------------------------------------

PUBLISHED_VALID = [
    "4111111111111111",
    "5555555555554444",
    "378282246310005",
    "4000000000000002",
    "4000000000009995",
    "4000000000000119",
    "4000000000000341",
    "4012888888881881",
    "4222222222222",
    "5105105105105100",
    "2223003122003222",
    "371449635398431",
    "378734493671000",
    "6011111111111117",
    "6011000990139424",
    "30569309025904",
    "38520000023237",
    "3530111333300000",
    "3566002020360505",
    "6200000000000005",
    "6759649826438453",
    "79927398713",  # the textbook example
    "0",
    "18",
]


@pytest.mark.parametrize("number", PUBLISHED_VALID)
def test_luhn_accepts_published_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize(
    "number",
    ["4111111111111112", "5555555555554440", "378282246310006", "79927398710", "1", "19"],
)
def test_luhn_rejects_wrong_check_digit(number: str) -> None:
    assert not luhn_valid(number)


@pytest.mark.parametrize("text", ["", " ", "4111 1111 1111 1111", "4111-1111", "abc", "١٢٣", "²"])
def test_luhn_rejects_non_digits(text: str) -> None:
    assert not luhn_valid(text)


@given(st.text(alphabet="0123456789", min_size=1, max_size=18))
def test_luhn_exactly_one_check_digit_fits(body: str) -> None:
    assert sum(luhn_valid(body + d) for d in "0123456789") == 1


@given(st.text(alphabet="0123456789", min_size=2, max_size=19), st.integers(0, 18))
def test_luhn_catches_every_single_digit_error(number: str, position: int) -> None:
    position %= len(number)
    if not luhn_valid(number):
        number = luhn_complete(number[:-1], len(number))
    wrong = str((int(number[position]) + 1) % 10)
    assert not luhn_valid(number[:position] + wrong + number[position + 1 :])


@given(st.text(alphabet="0123456789", min_size=2, max_size=19), st.integers(0, 17))
def test_luhn_catches_adjacent_transpositions_except_09(number: str, position: int) -> None:
    position %= len(number) - 1
    number = luhn_complete(number[:-1], len(number))
    a, b = number[position], number[position + 1]
    swapped = number[:position] + b + a + number[position + 2 :]
    if a == b or {a, b} == {"0", "9"}:
        return  # identical digits, and the 09/90 swap Luhn is known not to catch
    assert not luhn_valid(swapped)


# ---- brands ----------------------------------------------------------------------------------

KNOWN_BRANDS = [
    ("4111111111111111", "visa"),
    ("4222222222222", "visa"),
    ("4012888888881881", "visa"),
    ("4000000000000002", "visa"),
    ("4000000000009995", "visa"),
    ("4000000000000119", "visa"),
    ("4000000000000341", "visa"),
    ("5555555555554444", "mastercard"),
    ("5105105105105100", "mastercard"),
    ("2223003122003222", "mastercard"),
    ("378282246310005", "amex"),
    ("371449635398431", "amex"),
    ("378734493671000", "amex"),
    ("6011111111111117", "discover"),
    ("6011000990139424", "discover"),
    ("30569309025904", "diners"),
    ("38520000023237", "diners"),
    ("3530111333300000", "jcb"),
    ("3566002020360505", "jcb"),
    ("6200000000000005", "unionpay"),
    ("6759649826438453", "maestro"),
]


@pytest.mark.parametrize(("number", "brand"), KNOWN_BRANDS)
def test_brand_of_published_cards(number: str, brand: str) -> None:
    assert detect_brand(number) == brand


# (prefix, brand, accepted lengths) at both ends of every range, and just outside them.
RANGES: list[tuple[str, str, list[int]]] = [
    ("4", "visa", [13, 16, 19]),
    ("51", "mastercard", [16]),
    ("55", "mastercard", [16]),
    ("2221", "mastercard", [16]),
    ("2720", "mastercard", [16]),
    ("34", "amex", [15]),
    ("37", "amex", [15]),
    ("6011", "discover", [16, 17, 18, 19]),
    ("644", "discover", [16, 17, 18, 19]),
    ("649", "discover", [16, 17, 18, 19]),
    ("65", "discover", [16, 17, 18, 19]),
    ("622126", "discover", [16, 17, 18, 19]),
    ("622925", "discover", [16, 17, 18, 19]),
    ("300", "diners", [14, 15, 16, 17, 18, 19]),
    ("305", "diners", [14, 15, 16, 17, 18, 19]),
    ("36", "diners", [14, 15, 16, 17, 18, 19]),
    ("38", "diners", [14, 15, 16, 17, 18, 19]),
    ("39", "diners", [14, 15, 16, 17, 18, 19]),
    ("3528", "jcb", [16, 17, 18, 19]),
    ("3589", "jcb", [16, 17, 18, 19]),
    ("62", "unionpay", [16, 17, 18, 19]),
    ("622125", "unionpay", [16, 17, 18, 19]),
    ("622926", "unionpay", [16, 17, 18, 19]),
    ("5018", "maestro", list(range(12, 20))),
    ("5020", "maestro", list(range(12, 20))),
    ("5038", "maestro", list(range(12, 20))),
    ("5893", "maestro", list(range(12, 20))),
    ("6304", "maestro", list(range(12, 20))),
    ("6759", "maestro", list(range(12, 20))),
    ("6761", "maestro", list(range(12, 20))),
    ("6763", "maestro", list(range(12, 20))),
]


@pytest.mark.parametrize(("prefix", "brand", "lengths"), RANGES)
def test_brand_by_range_and_length(prefix: str, brand: str, lengths: list[int]) -> None:
    for length in range(10, 22):
        number = luhn_complete(prefix, length)
        expected = brand if length in lengths else None
        assert detect_brand(number) == expected, (number, length)


@pytest.mark.parametrize(
    "prefix",
    [
        "50",  # 50xx other than maestro's
        "56",
        "2220",
        "2721",
        "33",
        "35",  # 35 outside jcb
        "3527",
        "3590",
        "306",
        "309",
        "6010",
        "6012",
        "643",
        "66",
        "6760",
        "6764",
        "5017",
        "5019",
        "5894",
        "6303",
        "6758",
        "1",
        "0",
        "7",
        "8",
        "9",
    ],
)
def test_no_brand_outside_the_ranges(prefix: str) -> None:
    for length in range(12, 20):
        assert detect_brand(luhn_complete(prefix, length)) is None, (prefix, length)


def test_brand_is_decided_without_luhn() -> None:
    assert detect_brand("4111111111111112") == "visa"


@pytest.mark.parametrize("text", ["", "4111 1111 1111 1111", "411111111111111a", "abc"])
def test_brand_of_non_digits_is_none(text: str) -> None:
    assert detect_brand(text) is None


def test_brand_names_are_the_contract_names() -> None:
    assert BRANDS == (
        "visa",
        "mastercard",
        "amex",
        "discover",
        "diners",
        "jcb",
        "unionpay",
        "maestro",
    )
    produced = {brand for _, brand, _ in RANGES}
    assert produced == set(BRANDS)


@given(st.text(alphabet="0123456789", min_size=0, max_size=25))
def test_detect_brand_never_raises_and_names_a_known_brand(number: str) -> None:
    brand = detect_brand(number)
    assert brand is None or brand in BRANDS


# ---- check_pan -------------------------------------------------------------------------------

SANDBOX = {
    "4111111111111111": "visa",
    "5555555555554444": "mastercard",
    "378282246310005": "amex",
    "4000000000000002": "visa",
    "4000000000009995": "visa",
    "4000000000000119": "visa",
    "4000000000000341": "visa",
}


@pytest.mark.parametrize(("number", "brand"), list(SANDBOX.items()) + KNOWN_BRANDS)
def test_check_pan_accepts_valid_cards(number: str, brand: str) -> None:
    assert check_pan(SecretDigits(number), ALL) == PanVerdict(PanCheck.OK, brand)


@pytest.mark.parametrize(("number", "brand"), KNOWN_BRANDS)
def test_check_pan_refuses_brands_not_configured(number: str, brand: str) -> None:
    others = [b for b in ALL if b != brand]
    verdict = check_pan(SecretDigits(number), others)
    assert verdict.check is PanCheck.BRAND_NOT_ACCEPTED
    assert verdict.brand is None


def test_check_pan_with_no_brands_accepts_nothing() -> None:
    assert check_pan(SecretDigits("4111111111111111"), ()).check is PanCheck.BRAND_NOT_ACCEPTED


@pytest.mark.parametrize(
    "number",
    [
        "",
        "4",
        "41111111111",  # 11 digits
        luhn_complete("4", 11),
        luhn_complete("5018", 20),  # 20 digits
        "4111111111111112",  # Luhn fails
        "378282246310006",
        luhn_complete("4", 15),  # visa prefix, length 15: no brand
        luhn_complete("51", 15),
        luhn_complete("34", 16),
        luhn_complete("9", 16),  # no brand at all
        "000000000000",  # Luhn-valid zeros, no brand
    ],
)
def test_check_pan_invalid(number: str) -> None:
    assert check_pan(SecretDigits(number), ALL) == PanVerdict(PanCheck.INVALID, None)


def test_check_pan_invalid_wins_over_brand_not_accepted() -> None:
    # A broken number of a refused brand is reported as invalid: the caller mistyped.
    assert check_pan(SecretDigits("4111111111111112"), ["amex"]).check is PanCheck.INVALID


def test_check_pan_leaves_the_digits_alone() -> None:
    pan = SecretDigits("4111111111111111")
    check_pan(pan, ALL)
    assert "".join(pan.characters()) == "4111111111111111"


def test_pan_verdict_repr_has_no_digits() -> None:
    verdict = check_pan(SecretDigits("4111111111111111"), ALL)
    assert "1111" not in repr(verdict) and "4111" not in repr(verdict)


@given(st.text(alphabet="0123456789", min_size=0, max_size=22))
def test_check_pan_agrees_with_the_rules(number: str) -> None:
    verdict = check_pan(SecretDigits(number), ALL)
    ok = 12 <= len(number) <= 19 and luhn_valid(number) and detect_brand(number) is not None
    assert (verdict.check is PanCheck.OK) == ok
    if ok:
        assert verdict.brand == detect_brand(number)


# ---- expiry ----------------------------------------------------------------------------------

TODAY = datetime.date(2026, 5, 17)


@pytest.mark.parametrize(
    ("mm", "yy", "expected"),
    [
        (5, 26, ExpiryCheck.OK),  # the current month is valid
        (6, 26, ExpiryCheck.OK),
        (12, 26, ExpiryCheck.OK),
        (1, 27, ExpiryCheck.OK),
        (12, 30, ExpiryCheck.OK),
        (5, 46, ExpiryCheck.OK),  # exactly 20 years ahead
        (6, 46, ExpiryCheck.TOO_FAR),
        (1, 47, ExpiryCheck.TOO_FAR),
        (12, 99, ExpiryCheck.TOO_FAR),
        (4, 26, ExpiryCheck.PAST),
        (12, 25, ExpiryCheck.PAST),
        (1, 0, ExpiryCheck.PAST),
        (0, 30, ExpiryCheck.INVALID),
        (13, 30, ExpiryCheck.INVALID),
        (99, 30, ExpiryCheck.INVALID),
        (0, 0, ExpiryCheck.INVALID),
        (13, 20, ExpiryCheck.INVALID),  # bad month wins over past
        (5, 100, ExpiryCheck.INVALID),
        (5, -1, ExpiryCheck.INVALID),
        (-1, 30, ExpiryCheck.INVALID),
    ],
)
def test_check_expiry(mm: int, yy: int, expected: ExpiryCheck) -> None:
    assert check_expiry(mm, yy, TODAY) is expected


@pytest.mark.parametrize("day", [1, 31])
def test_check_expiry_ignores_the_day(day: int) -> None:
    today = datetime.date(2026, 1, day)
    assert check_expiry(1, 26, today) is ExpiryCheck.OK
    assert check_expiry(12, 25, today) is ExpiryCheck.PAST
    assert check_expiry(1, 46, today) is ExpiryCheck.OK
    assert check_expiry(2, 46, today) is ExpiryCheck.TOO_FAR


def test_check_expiry_in_december() -> None:
    today = datetime.date(2030, 12, 31)
    assert check_expiry(12, 30, today) is ExpiryCheck.OK
    assert check_expiry(11, 30, today) is ExpiryCheck.PAST
    assert check_expiry(1, 31, today) is ExpiryCheck.OK
    assert check_expiry(12, 50, today) is ExpiryCheck.OK
    assert check_expiry(1, 51, today) is ExpiryCheck.TOO_FAR


@given(st.integers(1, 12), st.integers(0, 99), st.dates(datetime.date(2000, 1, 1)))
def test_check_expiry_agrees_with_month_arithmetic(mm: int, yy: int, today: datetime.date) -> None:
    months_ahead = (2000 + yy - today.year) * 12 + (mm - today.month)
    expected = (
        ExpiryCheck.PAST
        if months_ahead < 0
        else ExpiryCheck.TOO_FAR
        if months_ahead > 240
        else ExpiryCheck.OK
    )
    assert check_expiry(mm, yy, today) is expected


# ---- security code ---------------------------------------------------------------------------


@pytest.mark.parametrize("brand", ALL)
def test_cvc_length(brand: str) -> None:
    assert cvc_length(brand) == (4 if brand == "amex" else 3)


# ---- the rules' stand-in for a card number begun (voice entry) -------------------------------


def test_every_pair_of_luhn_sums_has_a_tail() -> None:
    assert len(cards._SUM_TAILS) == 100


@given(
    st.text("0123456789", min_size=1, max_size=18),
    st.text("0123456789", min_size=0, max_size=7),
)
def test_surrogate_is_judged_as_the_prefix_whatever_follows(prefix: str, more: str) -> None:
    stand_in = cards.rules_surrogate(SecretDigits(prefix))
    assert len(stand_in) == len(prefix) and stand_in[:6] == prefix[:6]
    number, other = prefix + more, stand_in + more
    assert cards.luhn_valid(number) == cards.luhn_valid(other)
    assert cards.possible_lengths(number) == cards.possible_lengths(other)
    assert cards.detect_brand(number) == cards.detect_brand(other)


def test_surrogate_is_not_the_card_number() -> None:
    pan = "4111111111111111"
    for length in range(cards.SURROGATE_KEPT + 1, len(pan)):
        stand_in = cards.rules_surrogate(SecretDigits(pan[:length]))
        assert stand_in != pan[:length]
        assert stand_in[6:-3] == "0" * (length - 9)
    assert cards.rules_surrogate(SecretDigits("41111111")) == "41111111"  # 8: brand and two
