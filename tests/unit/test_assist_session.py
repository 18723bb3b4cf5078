"""PaymentSession: the agent-assisted payment's captures, key rules, completion and result."""

from __future__ import annotations

import datetime

import pytest

from spg_media.assist.payment_session import (
    CARD_NUMBER,
    EXPIRATION_DATE,
    SECURITY_CODE,
    PaymentSession,
    Refused,
    SessionConfig,
    Status,
)
from spg_media.payment.journey import Action, Authorize, Finish, Play, StopPlayback
from spg_media.payment.model import (
    AuthorizationResult,
    Operation,
    Result,
    TransactionInfo,
)

TX = TransactionInfo("sbx-4990-EUR-a1", Operation.SALE, 4990, "EUR", "R-1", "Shop")
TODAY = datetime.date(2026, 12, 4)
CONFIG = SessionConfig(first_digit_timeout_s=10, inter_digit_timeout_s=5, max_attempts=3)


def session(now: float = 0.0) -> PaymentSession:
    return PaymentSession("pay_1", TX, CONFIG, TODAY, now)


def keys(s: PaymentSession, text: str, now: float = 1.0) -> list[Action]:
    actions: list[Action] = []
    for key in text:
        actions += s.digit(key, now)
    return actions


def names(action: Action) -> list[str]:
    assert isinstance(action, Play)
    return [part.name for part in action.parts]


def capture_all(s: PaymentSession, pan: str = "4111111111111111", exp: str = "1230") -> None:
    s.capture(CARD_NUMBER, 0.0, prompt=False)
    keys(s, pan + "#")
    s.capture(EXPIRATION_DATE, 0.0, prompt=False)
    keys(s, exp)
    s.capture(SECURITY_CODE, 0.0, prompt=False)
    keys(s, "123" if len(pan) == 16 else "1234")


def test_new_session_state_lists_every_field_required() -> None:
    assert session().state() == {
        "payment_id": "pay_1",
        "status": "active",
        "capture": None,
        "digits_entered": 0,
        "required": [CARD_NUMBER, EXPIRATION_DATE, SECURITY_CODE],
    }


def test_capture_plays_the_fields_prompt_and_marks_each_key() -> None:
    s = session()
    [play] = s.capture(CARD_NUMBER, 0.0)
    assert isinstance(play, Play)
    assert names(play) == ["enter_card"] and play.barge_in
    assert s.next_wake() is None  # the first-digit timer waits for the prompt
    assert isinstance(s.digit("4", 1.0)[0], StopPlayback)  # barge-in
    keys(s, "11")
    assert s.state()["capture"] == CARD_NUMBER
    assert s.state()["digits_entered"] == 3
    keys(s, "1111111111111#")
    state = s.state()
    assert state["capture"] is None and state["digits_entered"] == 0
    assert state["card_brand"] == "visa" and state["last4"] == "1111"
    assert state["required"] == [EXPIRATION_DATE, SECURITY_CODE]
    assert "4111111111111111" not in repr(state) and "411111" not in repr(state)


def test_fields_in_any_order_then_complete_authorizes_the_card() -> None:
    s = session()
    s.capture(SECURITY_CODE, 0.0, prompt=False)
    assert keys(s, "123#") == []  # brand unknown yet: '#' ends a 3-digit code
    s.capture(EXPIRATION_DATE, 0.0, prompt=False)
    keys(s, "1230")  # ends by itself on the 4th digit
    assert s.digit("#", 1.1) == []  # the '#' right after belongs to it
    s.capture(CARD_NUMBER, 0.0, prompt=False)
    keys(s, "4111111111111111#")
    assert s.required() == []
    play, authorize = s.complete(2.0)
    assert names(play) == ["processing"]
    assert isinstance(authorize, Authorize) and authorize.attempt == 1
    card = authorize.card
    assert card.pan.matches("4111111111111111") and card.cvc.matches("123")
    assert (card.exp_month, card.exp_year, card.brand) == (12, 2030, "visa")
    assert s.status is Status.PROCESSING and s.state()["status"] == "processing"
    actions = s.authorized(AuthorizationResult(Result.APPROVED, reference="R9"), 3.0)
    assert names(actions[0]) == ["approved"]
    assert isinstance(actions[-1], Finish) and actions[-1].outcome.result is Result.APPROVED
    state = s.state()
    assert state["status"] == "complete" and state["result"] == "approved"
    assert state["reference"] == "R9"
    assert s.outcome is not None and s.outcome.last4 == "1111" and s.outcome.attempts == 1


def test_complete_with_fields_missing_is_refused_with_required() -> None:
    s = session()
    s.capture(CARD_NUMBER, 0.0, prompt=False)
    keys(s, "4111111111111111#")
    with pytest.raises(Refused) as refused:
        s.complete(1.0)
    assert refused.value.code == "fields-missing"
    assert refused.value.required == (EXPIRATION_DATE, SECURITY_CODE)


def test_complete_refused_while_a_field_is_being_keyed() -> None:
    s = session()
    capture_all(s)
    s.capture(SECURITY_CODE, 0.0, prompt=False)
    with pytest.raises(Refused) as refused:
        s.complete(1.0)
    assert refused.value.code == "capture-in-progress"


@pytest.mark.parametrize(
    ("field", "entry", "error_type", "prompt"),
    [
        (CARD_NUMBER, "4111111111111112#", "invalid-card-number", "card_invalid"),
        (CARD_NUMBER, "6011000990139424#", "invalid-card-type", "card_brand_not_accepted"),
        (CARD_NUMBER, "#", "invalid-card-number", "empty_entry"),
        (EXPIRATION_DATE, "1320", "invalid-date", "expiry_invalid"),
        (EXPIRATION_DATE, "0120", "invalid-date", "expiry_past"),
        (EXPIRATION_DATE, "12#", "invalid-date", "expiry_invalid"),
        (SECURITY_CODE, "12#", "invalid-security-code", "cvc_invalid"),
    ],
)
def test_invalid_entries_have_their_error_type_and_prompt(
    field: str, entry: str, error_type: str, prompt: str
) -> None:
    config = SessionConfig(card_brands=("visa", "mastercard"))
    s = PaymentSession("pay_1", TX, config, TODAY, 0.0)
    s.capture(field, 0.0, prompt=False)
    actions = keys(s, entry)
    assert names(actions[-1])[0] == prompt
    assert names(actions[-1])[1].startswith("enter_")  # asked again
    state = s.state()
    assert state["error_type"] == error_type
    assert state["capture"] == field and state["digits_entered"] == 0


def test_timeouts_are_failed_attempts_and_max_attempts_stops_the_capture() -> None:
    s = session()
    s.capture(EXPIRATION_DATE, 0.0, prompt=False)
    assert s.next_wake() == 10.0
    assert s.timer(9.0) == []  # early
    [play] = s.timer(10.0)
    assert names(play) == ["no_input", "enter_expiry"]
    assert s.state()["error_type"] == "timeout"
    s.prompt_done(11.0)
    keys(s, "1", 12.0)
    assert s.next_wake() == 17.0  # inter-digit
    s.timer(17.0)
    s.prompt_done(18.0)
    [last] = s.timer(28.0)
    assert isinstance(last, Play)
    assert names(last) == ["no_input"] and not last.barge_in  # the capture stops
    state = s.state()
    assert state["capture"] is None and state["error_type"] == "timeout"
    assert state["status"] == "active" and EXPIRATION_DATE in state["required"]
    assert keys(s, "1230") == []  # keys outside a capture are ignored
    s.capture(EXPIRATION_DATE, 30.0, prompt=False)  # the agent tries again: fresh counter
    keys(s, "1230", 31.0)
    assert EXPIRATION_DATE not in s.required()


def test_star_clears_the_field_and_star_on_empty_cancels() -> None:
    s = session()
    s.capture(CARD_NUMBER, 0.0, prompt=False)
    keys(s, "4111")
    [play] = s.digit("*", 1.0)
    assert names(play) == ["enter_card"]
    assert s.state()["digits_entered"] == 0
    actions = s.digit("*", 2.0)
    assert isinstance(actions[0], StopPlayback)  # the ask playing is stopped by the key
    assert names(actions[1]) == ["cancelled"]
    assert isinstance(actions[-1], Finish) and actions[-1].outcome.result is Result.CANCELLED
    assert s.state()["status"] == "cancelled" and s.state()["result"] == "cancelled"


def test_code_keyed_before_the_card_is_checked_against_the_brand() -> None:
    s = session()
    s.capture(SECURITY_CODE, 0.0, prompt=False)
    keys(s, "123#")
    s.capture(CARD_NUMBER, 0.0, prompt=False)
    keys(s, "378282246310005#")  # amex: 4-digit code
    state = s.state()
    assert state["card_brand"] == "amex"
    assert state["error_type"] == "invalid-security-code"
    assert SECURITY_CODE in state["required"]
    [play] = s.capture(SECURITY_CODE, 1.0)
    assert isinstance(play, Play)
    assert play.parts[0].params == (("digits", 4),)
    keys(s, "1234")
    assert s.required() == [EXPIRATION_DATE]


def test_recapture_replaces_the_field() -> None:
    s = session()
    capture_all(s)
    s.capture(CARD_NUMBER, 1.0, prompt=False)
    assert "card_brand" not in s.state() and CARD_NUMBER in s.required()
    keys(s, "5555555555554444#")
    assert s.state()["last4"] == "4444"


def test_cancel_and_hangup() -> None:
    s = session()
    s.capture(CARD_NUMBER, 0.0)
    actions = s.cancel(1.0)
    assert names(actions[0]) == ["cancelled"]
    assert s.state()["result"] == "cancelled"
    with pytest.raises(Refused):
        s.capture(CARD_NUMBER, 2.0)

    hung = session()
    hung.capture(CARD_NUMBER, 0.0, prompt=False)
    keys(hung, "4111")
    [finish] = hung.hangup(1.0)
    assert isinstance(finish, Finish) and finish.outcome.result is Result.HUNG_UP
    assert hung.state()["status"] == "cancelled" and hung.state()["result"] == "hung-up"


def test_hangup_while_processing_waits_for_the_platform() -> None:
    s = session()
    capture_all(s)
    _, authorize = s.complete(1.0)
    assert isinstance(authorize, Authorize)
    assert s.hangup(2.0) == []
    with pytest.raises(Refused):
        s.cancel(2.5)
    actions = s.authorized(AuthorizationResult(Result.APPROVED, reference="R1"), 3.0)
    assert [type(a) for a in actions] == [Finish]  # nobody to play the result to
    assert s.state()["result"] == "approved"


def test_declined_and_error_results() -> None:
    for answer, word in [(Result.DECLINED, "declined"), (Result.ERROR, "error")]:
        s = session()
        capture_all(s)
        s.complete(1.0)
        actions = s.authorized(AuthorizationResult(answer, reference="R2"), 2.0)
        assert names(actions[0])[0] in ("declined", "payment_error")
        assert s.state()["result"] == word and s.state()["status"] == "complete"


def test_card_digits_are_wiped_when_the_session_ends() -> None:
    s = session()
    s.capture(CARD_NUMBER, 0.0, prompt=False)
    keys(s, "4111111111111111#")
    pan = s._pan
    assert pan is not None and len(pan) == 16
    s.cancel(1.0)
    assert len(pan) == 0 and pan.matches("")
