"""Constrained decoding of spoken digits: words to digits, answers, and the field's rules
choosing among a recogniser's n-best hypotheses."""

from __future__ import annotations

import datetime

import pytest

from spg_media.payment.cards import luhn_valid, possible_lengths
from spg_media.speech import (
    Hypothesis,
    Utterance,
    answer_of,
    best_reading,
    words_to_digits,
)
from spg_media.speech.model import DIGIT_WORDS

TODAY = datetime.date(2026, 12, 4)
WORD = {digit: word for word, digit in DIGIT_WORDS.items() if word != "oh"}


def said(digits: str) -> tuple[str, ...]:
    return tuple(WORD[d] for d in digits)


def utterance(*readings: tuple[str | tuple[str, ...], float]) -> Utterance:
    hypotheses = tuple(
        Hypothesis(said(r) if isinstance(r, str) else r, score) for r, score in readings
    )
    return Utterance(hypotheses, started=1.0, ended=2.0)


@pytest.mark.parametrize(
    ("words", "digits"),
    [
        ("four one one one", "4111"),
        ("four double one", "411"),
        ("triple five four", "5554"),
        ("oh one two six", "0126"),
        ("zero", "0"),
        ("three seven eight hash", "378"),
        ("three seven pound", "37"),
        ("double", None),
        ("four double", None),
        ("double triple one", None),
        ("yes", None),
        ("four yes", None),
        ("hash", None),
        ("", None),
        ("star one", None),
    ],
)
def test_words_to_digits(words: str, digits: str | None) -> None:
    assert words_to_digits(words.split()) == digits


def test_answers() -> None:
    assert answer_of(utterance((("yes",), 0.0))) == "yes"
    assert answer_of(utterance((("no",), 0.0), (("yes",), -3.0))) == "no"
    assert answer_of(utterance((("repeat",), 0.0))) == "repeat"
    assert answer_of(utterance((("start", "again"), 0.0))) == "start-again"
    assert answer_of(utterance(("41", 0.0))) is None
    # best is "yes" but "no" readings together hold more
    assert answer_of(utterance((("yes",), 0.0), (("no",), -0.1), (("no",), -0.2))) is None
    assert answer_of(Utterance((), 0.0, 0.0)) is None


def test_luhn_picks_the_valid_alternative() -> None:
    # the recogniser's best reading fails Luhn; the second passes and wins
    wrong = "4111111111111121"
    assert not luhn_valid(wrong) and luhn_valid("4111111111111111")
    reading = best_reading(utterance((wrong, 0.0), ("4111111111111111", -0.5)), "card")
    assert reading is not None and reading.valid
    assert reading.digits == "4111111111111111"


def test_a_sure_valid_reading_is_confident_and_a_contested_one_is_not() -> None:
    sure = best_reading(utterance(("4111111111111111", 0.0), ("4111111111111121", -6.0)), "card")
    assert sure is not None and sure.confidence > 0.9
    # two Luhn-valid readings close in score: neither is sure
    contested = best_reading(
        utterance(("5555555555554444", 0.0), ("5555555555554477", -0.1)), "card"
    )
    assert luhn_valid("5555555555554477")
    assert contested is not None and contested.valid and contested.confidence < 0.6


def test_brand_and_length_rule_out_readings() -> None:
    # 15 digits starting 4: no Visa has 15; the Amex reading (34/37, 15 digits) is taken
    reading = best_reading(utterance(("478282246310005", 0.0), ("378282246310005", -1.0)), "card")
    assert reading is not None and reading.digits == "378282246310005"
    # nothing valid: the best reading comes back marked invalid
    invalid = best_reading(utterance(("1234", 0.0), ("1235", -1.0)), "card")
    assert invalid is not None and not invalid.valid and invalid.digits == "1234"
    assert invalid.confidence == 0.0


def test_card_groups_check_the_prefix_and_the_complete_number() -> None:
    # a first group no brand starts with loses to one that a brand does
    first = best_reading(utterance(("9111", 0.0), ("4111", -0.5)), "card-group")
    assert first is not None and first.digits == "4111" and first.valid
    # the last group of a 16-digit Visa: Luhn on prefix + group decides
    prefix = "411111111111"
    last = best_reading(
        utterance(("1121", 0.0), ("1111", -0.7)), "card-group", prefix=prefix, expected_length=4
    )
    assert last is not None and last.digits == "1111"
    # the expected length rules out a group heard with a digit too many
    group = best_reading(utterance(("41111", 0.0), ("4111", -2.0)), "card-group", expected_length=4)
    assert group is not None and group.digits == "4111"
    # an Amex cannot go past 15 digits
    over = best_reading(utterance(("0005", 0.0)), "card-group", prefix="378282246310")
    assert over is not None and not over.valid


def test_possible_lengths() -> None:
    assert possible_lengths("4") == {13, 16, 19}
    assert possible_lengths("37") == {15}
    assert possible_lengths("2") >= {16}  # 2221-2720
    assert possible_lengths("28") == frozenset()
    assert possible_lengths("9") == frozenset()
    assert possible_lengths("") == frozenset()


def test_expiry_window_and_month() -> None:
    # "one three two seven": month 13 is no month; "one two two seven" is
    reading = best_reading(utterance(("1327", 0.0), ("1227", -1.0)), "expiry", today=TODAY)
    assert reading is not None and reading.digits == "1227" and reading.valid
    # a past date loses to one in the window
    past = best_reading(utterance(("0125", 0.0), ("0128", -1.0)), "expiry", today=TODAY)
    assert past is not None and past.digits == "0128"
    # three digits are a month 1-9 with a leading zero
    short = best_reading(utterance(("128", 0.0)), "expiry", today=TODAY)
    assert short is not None and short.digits == "0128" and short.valid
    # this month is still valid
    now = best_reading(utterance(("1226", 0.0)), "expiry", today=TODAY)
    assert now is not None and now.valid


def test_code_length() -> None:
    reading = best_reading(utterance(("12", 0.0), ("123", -1.0)), "code")
    assert reading is not None and reading.digits == "123"
    amex = best_reading(utterance(("123", 0.0), ("1234", -1.0)), "code", expected_length=4)
    assert amex is not None and amex.digits == "1234"


def test_same_digits_pool_their_probability() -> None:
    # "double one" and "one one" read the same digits: together they beat "one seven"
    reading = best_reading(
        utterance(
            ("17", 0.0),
            (("double", "one"), -0.3),
            (("one", "one"), -0.3),
        ),
        "code",
        expected_length=2,
    )
    assert reading is not None and reading.digits == "11"


def test_no_digits_and_bad_field() -> None:
    assert best_reading(utterance((("yes",), 0.0)), "card") is None
    with pytest.raises(ValueError, match="unknown field"):
        best_reading(utterance(("1", 0.0)), "pin")


def test_reprs_hide_the_digits() -> None:
    hypotheses = utterance(("4111111111111111", 0.0))
    reading = best_reading(hypotheses, "card")
    for value in (hypotheses, hypotheses.hypotheses[0], reading):
        assert "one" not in repr(value) and "4111" not in repr(value)


def test_earlier_tries_are_pooled_and_denied_readings_never_chosen() -> None:
    first = utterance(("4111", 0.0), ("4171", -0.2))
    second = utterance(("4911", 0.0), ("4171", -0.1), ("4111", -3.0))
    alone = best_reading(second, "card-group", expected_length=4)
    assert alone is not None and alone.digits == "4911"
    pooled = best_reading(second, "card-group", expected_length=4, earlier=[first])
    assert pooled is not None and pooled.digits == "4171"  # heard both times
    denied = best_reading(first, "card-group", expected_length=4, denied={"4111"})
    assert denied is not None and denied.digits == "4171" and denied.confidence == 1.0
    only = best_reading(utterance(("4111", 0.0)), "card-group", denied={"4111"})
    assert only is None  # nothing left to read back
    # the earlier tries' readings of another length do not count when the length is known
    short = best_reading(
        utterance(("123", 0.0)), "code", expected_length=3, earlier=[utterance(("1234", 0.0))]
    )
    assert short is not None and short.digits == "123"
