"""The caller's journey, driven with scripted keys, prompt ends and a clock: no I/O, no sleeps."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spg_media.payment.journey import (
    _TRANSITIONS,
    MAX_RESULT_REPEATS,
    Action,
    Authorize,
    Finish,
    Journey,
    JourneyConfig,
    Outcome,
    Play,
    PromptPart,
    State,
    StopPlayback,
)
from spg_media.payment.model import (
    AuthorizationResult,
    Operation,
    Result,
    SecretDigits,
    TransactionInfo,
)

TODAY = datetime.date(2026, 5, 17)
SALE = TransactionInfo(
    token="sbx-4990-EUR-1",
    operation=Operation.SALE,
    amount_minor=4990,
    currency="EUR",
    order="order-1",
    merchant="Hotel Sol",
)
TOKENIZE = dataclasses.replace(
    SALE, token="sbx-0-EUR-1", operation=Operation.TOKENIZE, amount_minor=0
)
SALE_TOKENIZE = dataclasses.replace(SALE, operation=Operation.SALE_TOKENIZE)

VISA = "4111111111111111"
MASTERCARD = "5555555555554444"
AMEX = "378282246310005"
EXPIRY = "1230"
CVC = "987"
AMEX_CVC = "8642"
APPROVED = AuthorizationResult(
    Result.APPROVED, reference="R123", authorization_code="A77", card_token="tok_1"
)
DECLINED = AuthorizationResult(Result.DECLINED, reference="R124", decline_code="generic")
FAILED = AuthorizationResult(Result.ERROR, detail="HTTP 500")
STEP = 0.25  # exact in binary, so times print without noise that could look like digits


def state_now(journey: Journey) -> State:
    """`journey.state`, read through a call: mypy keeps an attribute narrowed by an earlier
    `assert ... is State.X` across the calls that move the journey on."""
    return journey.state


def part(name: str, **params: object) -> PromptPart:
    return PromptPart(name, tuple(params.items()))  # type: ignore[arg-type]


class Caller:
    """Drives a Journey like the call does, keeping the clock and every action it got."""

    def __init__(
        self,
        config: JourneyConfig | None = None,
        transaction: TransactionInfo | None = SALE,
        failure: Result | None = None,
    ) -> None:
        self.journey = Journey(config or JourneyConfig(), transaction, failure, TODAY)
        self.now = 100.0
        self.actions: list[Action] = []

    def _got(self, actions: list[Action]) -> list[Action]:
        self.actions += actions
        return actions

    def start(self) -> list[Action]:
        return self._got(self.journey.start(self.now))

    def keys(self, keys: str, gap: float = STEP) -> list[Action]:
        out: list[Action] = []
        for key in keys:
            self.now += gap
            out += self.journey.digit(key, self.now)
        return self._got(out)

    def done(self, after: float = STEP) -> list[Action]:
        self.now += after
        return self._got(self.journey.prompt_done(self.now))

    def wait(self, seconds: float) -> list[Action]:
        """Let time pass, firing the timer whenever it is due, like the call's loop."""
        end = self.now + seconds
        out: list[Action] = []
        while (wake := self.journey.next_wake()) is not None and wake <= end:
            self.now = max(self.now, wake)
            out += self.journey.timer(self.now)
        self.now = end
        return self._got(out)

    def authorized(
        self, result: AuthorizationResult = APPROVED, after: float = 1.0
    ) -> list[Action]:
        self.now += after
        return self._got(self.journey.authorized(result, self.now))

    def hangup(self) -> list[Action]:
        self.now += STEP
        return self._got(self.journey.hangup(self.now))

    # A whole field, typed after its prompt finished.
    def card(self, pan: str = VISA) -> list[Action]:
        self.done()
        return self.keys(pan + "#")

    def expiry(self, expiry: str = EXPIRY) -> list[Action]:
        self.done()
        return self.keys(expiry)

    def cvc(self, cvc: str = CVC) -> list[Action]:
        self.done()
        return self.keys(cvc)

    def to_authorize(self, pan: str = VISA, expiry: str = EXPIRY, cvc: str = CVC) -> Authorize:
        self.start()
        self.card(pan)
        self.expiry(expiry)
        actions = self.cvc(cvc)
        return authorize_of(actions)

    def finish_result(self) -> Outcome:
        """From the result prompt: let it play, let the repeat window pass, say goodbye."""
        self.done()
        assert plays(self.wait(10)) == [("goodbye",)]
        return outcome_of(self.done())


def plays(actions: Iterable[Action]) -> list[tuple[str, ...]]:
    return [tuple(p.name for p in a.parts) for a in actions if isinstance(a, Play)]


def only_play(actions: list[Action]) -> Play:
    found = [a for a in actions if isinstance(a, Play)]
    assert len(found) == 1, actions
    return found[0]


def authorize_of(actions: list[Action]) -> Authorize:
    found = [a for a in actions if isinstance(a, Authorize)]
    assert len(found) == 1, actions
    return found[0]


def outcome_of(actions: list[Action]) -> Outcome:
    assert len(actions) == 1 and isinstance(actions[0], Finish), actions
    return actions[0].outcome


def state_of(journey: Journey) -> list[object]:
    """Every value the journey holds (its slots)."""
    return [getattr(journey, n) for n in Journey.__slots__ if hasattr(journey, n)]


def held(journey: Journey) -> list[SecretDigits]:
    """Every non-empty card buffer the journey still references (directly, or in a list or an
    object of the journey's module, such as the readings a caller denied)."""
    found: list[SecretDigits] = []

    def visit(value: object) -> None:
        if isinstance(value, SecretDigits):
            if len(value) > 0:
                found.append(value)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)
        elif type(value).__module__ == Journey.__module__ and hasattr(value, "__dict__"):
            for item in vars(value).values():
                visit(item)
        elif type(value).__module__ == Journey.__module__ and hasattr(value, "__slots__"):
            for name in value.__slots__:
                visit(getattr(value, name, None))

    for value in state_of(journey):
        visit(value)
    return found


def buffers(journey: Journey) -> list[SecretDigits]:
    return [v for v in state_of(journey) if isinstance(v, SecretDigits)]


def assert_no_card_data(texts: Iterable[str], pan: str, expiry: str, cvc: str) -> None:
    for text in texts:
        assert pan[:-4] not in text, text
        assert pan[:6] not in text, text
        assert expiry not in text and f"{expiry[:2]}/{expiry[2:]}" not in text, text
        assert cvc not in text, text


# ---- the happy path ----------------------------------------------------------------------------


def test_sale_happy_path() -> None:
    caller = Caller()
    assert caller.start() == [
        Play(
            (
                part("announce_sale", amount_minor=4990, currency="EUR", merchant="Hotel Sol"),
                part("enter_card"),
            ),
            barge_in=True,
        )
    ]
    assert caller.journey.state is State.CARD
    assert caller.card() == [Play((part("enter_expiry"),), barge_in=True)]
    assert caller.expiry() == [Play((part("enter_cvc", digits=3),), barge_in=True)]
    actions = caller.cvc()
    assert actions[0] == Play((part("processing"),), barge_in=False)
    authorize = authorize_of(actions)
    assert authorize.attempt == 1
    card = authorize.card
    assert (
        "".join(card.pan.characters()),
        card.exp_month,
        card.exp_year,
        "".join(card.cvc.characters()),
        card.brand,
    ) == (
        VISA,
        12,
        2030,
        CVC,
        "visa",
    )
    assert state_now(caller.journey) is State.PROCESSING
    assert caller.authorized() == [
        Play((part("approved", reference="R123"), part("press_9_to_repeat")), barge_in=False)
    ]
    assert caller.done() == []
    assert state_now(caller.journey) is State.REPEAT_WAIT
    assert caller.journey.next_wake() == caller.now + 4.0
    assert caller.wait(4.0) == [Play((part("goodbye"),), barge_in=False)]
    assert caller.journey.outcome is None and not caller.journey.finished
    outcome = outcome_of(caller.done())
    assert outcome.result is Result.APPROVED
    assert (outcome.reference, outcome.authorization_code, outcome.card_token) == (
        "R123",
        "A77",
        "tok_1",
    )
    assert (outcome.brand, outcome.last4, outcome.attempts, outcome.decline_code) == (
        "visa",
        "1111",
        1,
        "",
    )
    assert caller.journey.finished and caller.journey.outcome == outcome
    assert caller.journey.next_wake() is None


def test_tokenize_uses_its_own_wording() -> None:
    caller = Caller(transaction=TOKENIZE)
    assert caller.start() == [
        Play((part("announce_tokenize", merchant="Hotel Sol"), part("enter_card")), True)
    ]
    caller.card()
    caller.expiry()
    authorize_of(caller.cvc())
    assert plays(caller.authorized()) == [("tokenized", "press_9_to_repeat")]
    assert caller.actions[-1] == Play(
        (part("tokenized", reference="R123"), part("press_9_to_repeat")), False
    )
    assert caller.finish_result().result is Result.APPROVED


def test_sale_and_tokenize_is_announced_and_approved_as_a_sale() -> None:
    caller = Caller(transaction=SALE_TOKENIZE)
    assert plays(caller.start()) == [("announce_sale", "enter_card")]
    caller.card()
    caller.expiry()
    caller.cvc()
    assert plays(caller.authorized()) == [("approved", "press_9_to_repeat")]


def test_amex_asks_for_and_takes_four_digits() -> None:
    caller = Caller()
    caller.start()
    caller.card(AMEX)
    assert caller.expiry() == [Play((part("enter_cvc", digits=4),), True)]
    assert caller.cvc(AMEX_CVC[:3]) == []  # three digits are not the end of it
    authorize = authorize_of(caller.keys(AMEX_CVC[3]))
    assert "".join(authorize.card.cvc.characters()) == AMEX_CVC
    assert authorize.card.brand == "amex"
    caller.authorized()
    assert (caller.finish_result().brand, caller.journey.outcome.last4) == (  # type: ignore[union-attr]
        "amex",
        "0005",
    )


@pytest.mark.parametrize(
    ("pan", "brand"),
    [
        ("5555555555554444", "mastercard"),
        ("6011111111111117", "discover"),
        ("30569309025904", "diners"),
        ("3530111333300000", "jcb"),
        ("6200000000000005", "unionpay"),
        ("6759649826438453", "maestro"),
        ("4000000000000002", "visa"),
    ],
)
def test_other_brands_go_through(pan: str, brand: str) -> None:
    authorize = Caller().to_authorize(pan)
    assert authorize.card.brand == brand
    assert "".join(authorize.card.pan.characters()) == pan


def test_card_ends_by_itself_at_the_nineteenth_digit() -> None:
    pan = "4000000000000000006"  # 19-digit visa, Luhn-valid
    caller = Caller()
    caller.start()
    caller.done()
    assert caller.keys(pan[:18]) == []
    assert plays(caller.keys(pan[18])) == [("enter_expiry",)]
    caller.expiry()
    assert "".join(authorize_of(caller.cvc()).card.pan.characters()) == pan


def test_twelve_digit_maestro_is_long_enough() -> None:
    pan = "501800000009"
    assert Caller().to_authorize(pan).card.brand == "maestro"


# ---- invalid entries: each with its own prompt ---------------------------------------------


def entry_failure(caller: Caller, field: str, keys: str) -> list[Action]:
    caller.start()
    if field in ("expiry", "cvc"):
        caller.card()
    if field == "cvc":
        caller.expiry()
    # Past the moment a '#' would still belong to the expiry that ended on its last digit.
    caller.done(after=6.0)
    return caller.keys(keys)


@pytest.mark.parametrize(
    ("field", "keys", "prompt", "ask"),
    [
        ("card", "4111111111111112#", "card_invalid", part("enter_card")),
        ("card", "41111111111#", "card_invalid", part("enter_card")),  # 11 digits
        ("card", "4#", "card_invalid", part("enter_card")),
        ("card", "411111111111111#", "card_invalid", part("enter_card")),  # visa of 15
        ("card", "9000000000000008#", "card_invalid", part("enter_card")),  # no brand
        ("card", "4000000000000000001", "card_invalid", part("enter_card")),  # 19, bad Luhn
        ("card", "#", "empty_entry", part("enter_card")),
        ("expiry", "1330", "expiry_invalid", part("enter_expiry")),
        ("expiry", "0030", "expiry_invalid", part("enter_expiry")),
        ("expiry", "0426", "expiry_past", part("enter_expiry")),
        ("expiry", "1225", "expiry_past", part("enter_expiry")),
        ("expiry", "0646", "expiry_too_far", part("enter_expiry")),
        ("expiry", "123#", "expiry_invalid", part("enter_expiry")),
        ("expiry", "1#", "expiry_invalid", part("enter_expiry")),
        ("expiry", "#", "empty_entry", part("enter_expiry")),
        ("cvc", "98#", "cvc_invalid", part("enter_cvc", digits=3)),
        ("cvc", "9#", "cvc_invalid", part("enter_cvc", digits=3)),
        ("cvc", "#", "empty_entry", part("enter_cvc", digits=3)),
    ],
)
def test_invalid_entry_has_its_own_prompt_then_asks_again(
    field: str, keys: str, prompt: str, ask: PromptPart
) -> None:
    caller = Caller()
    actions = entry_failure(caller, field, keys)
    assert actions == [Play((part(prompt), ask), barge_in=True)]
    assert caller.journey.next_wake() is None  # no timer while the re-ask plays
    assert held(caller.journey) == [] or field != "card"
    # ... and a good entry is then taken.
    if field == "card":
        assert plays(caller.card()) == [("enter_expiry",)]
    elif field == "expiry":
        assert plays(caller.expiry()) == [("enter_cvc",)]
    else:
        authorize_of(caller.cvc())


def test_current_month_is_a_valid_expiry() -> None:
    assert Caller().to_authorize(expiry="0526").card.exp_month == 5


def test_brand_not_accepted_has_its_own_prompt() -> None:
    caller = Caller(JourneyConfig(card_brands=("visa",)))
    caller.start()
    assert caller.card(MASTERCARD) == [
        Play((part("card_brand_not_accepted"), part("enter_card")), True)
    ]
    assert caller.card(AMEX) == [Play((part("card_brand_not_accepted"), part("enter_card")), True)]
    assert caller.card(VISA) == [Play((part("enter_expiry"),), True)]


def test_amex_code_short_by_one_is_invalid() -> None:
    caller = Caller()
    caller.start()
    caller.card(AMEX)
    caller.expiry()
    caller.done()
    assert plays(caller.keys("864#")) == [("cvc_invalid", "enter_cvc")]


# ---- attempts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["card", "expiry", "cvc"])
def test_three_failures_on_one_field_end_the_payment(field: str) -> None:
    caller = Caller()
    bad = {"card": "4111111111111112#", "expiry": "1330", "cvc": "#"}[field]
    entry_failure(caller, field, bad)
    caller.done()
    assert plays(caller.keys(bad))[0][0] != "too_many_attempts"
    caller.done()
    assert caller.keys(bad) == [Play((part("too_many_attempts"), part("goodbye")), False)]
    assert caller.journey.state is State.CLOSING
    assert caller.keys("1234*#") == []  # nothing is taken any more
    assert caller.journey.outcome is None
    outcome = outcome_of(caller.done())
    assert outcome.result is Result.TOO_MANY_ATTEMPTS
    assert outcome.attempts == 3
    assert held(caller.journey) == []
    assert (outcome.brand, outcome.last4) == (("", "") if field == "card" else ("visa", "1111"))


def test_failures_on_different_fields_do_not_add_up() -> None:
    caller = Caller()
    caller.start()
    caller.card("4111111111111112")
    caller.card("4111")
    caller.card()
    caller.expiry("1330")
    caller.expiry("0420")
    caller.expiry()
    caller.cvc("1#")
    caller.cvc("#")
    authorize_of(caller.cvc())
    caller.authorized()
    outcome = caller.finish_result()
    assert outcome.result is Result.APPROVED
    assert outcome.attempts == 6 + 1  # six failed entries and one authorisation


def test_max_attempts_is_configurable() -> None:
    caller = Caller(JourneyConfig(max_attempts=1))
    caller.start()
    assert plays(caller.card("4111")) == [("too_many_attempts", "goodbye")]


def test_clear_with_star_is_not_a_failed_attempt() -> None:
    caller = Caller(JourneyConfig(max_attempts=1))
    caller.start()
    caller.done()
    for _ in range(5):
        assert caller.keys("4111*") == [Play((part("enter_card"),), barge_in=True)]
        caller.done()
    assert plays(caller.card()) == [("enter_expiry",)]
    caller.expiry()
    caller.cvc()
    caller.authorized()
    assert caller.finish_result().attempts == 1


# ---- '*' ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["card", "expiry", "cvc"])
def test_star_clears_the_field_and_asks_again(field: str) -> None:
    caller = Caller()
    caller.start()
    if field != "card":
        caller.card()
    if field == "cvc":
        caller.expiry()
    caller.done()
    partial = {"card": "411111", "expiry": "12", "cvc": "98"}[field]
    caller.keys(partial)
    entry = [b for b in buffers(caller.journey) if len(b) == len(partial)]
    assert len(entry) == 1
    ask = {"card": "enter_card", "expiry": "enter_expiry", "cvc": "enter_cvc"}[field]
    assert plays(caller.keys("*")) == [(ask,)]
    assert len(entry[0]) == 0  # the abandoned digits are wiped
    assert caller.journey.next_wake() is None  # the re-ask plays first
    # What was keyed before the '*' does not count.
    if field == "card":
        caller.card()
        caller.expiry()
        card = authorize_of(caller.cvc()).card
    elif field == "expiry":
        caller.expiry("0131")
        card = authorize_of(caller.cvc()).card
    else:
        card = authorize_of(caller.cvc("123")).card
    assert "".join(card.pan.characters()) == VISA
    assert (card.exp_month, card.exp_year) == ((1, 2031) if field == "expiry" else (12, 2030))
    assert "".join(card.cvc.characters()) == ("123" if field == "cvc" else CVC)


@pytest.mark.parametrize("field", ["card", "expiry", "cvc"])
def test_star_on_an_empty_field_cancels(field: str) -> None:
    caller = Caller()
    caller.start()
    if field != "card":
        caller.card()
    if field == "cvc":
        caller.expiry()
    caller.done()
    assert caller.keys("*") == [Play((part("cancelled"), part("goodbye")), barge_in=False)]
    assert caller.keys("12#*") == []
    assert caller.journey.next_wake() is None
    outcome = outcome_of(caller.done())
    assert outcome.result is Result.CANCELLED
    assert (outcome.brand, outcome.last4) == (("", "") if field == "card" else ("visa", "1111"))
    assert held(caller.journey) == []


def test_star_then_star_cancels() -> None:
    caller = Caller()
    caller.start()
    caller.done()
    assert plays(caller.keys("41*")) == [("enter_card",)]
    assert plays(caller.keys("*")) == [("cancelled", "goodbye")]


def test_star_during_the_announcement_cancels() -> None:
    caller = Caller()
    caller.start()
    assert caller.keys("*") == [
        StopPlayback(),
        Play((part("cancelled"), part("goodbye")), barge_in=False),
    ]


# ---- '#' ---------------------------------------------------------------------------------------


def test_hash_after_expiry_belongs_to_it() -> None:
    caller = Caller()
    caller.start()
    caller.card()
    caller.done()
    assert plays(caller.keys(EXPIRY)) == [("enter_cvc",)]
    assert caller.keys("#") == []  # neither an empty entry nor a barge-in
    assert caller.journey.state is State.CVC
    caller.done()
    authorize_of(caller.keys(CVC))


def test_hash_after_security_code_belongs_to_it() -> None:
    caller = Caller()
    caller.to_authorize()
    assert caller.keys("#") == []
    assert caller.journey.state is State.PROCESSING


def test_hash_after_security_code_before_confirm_belongs_to_it() -> None:
    caller = Caller(JourneyConfig(confirm=True))
    caller.start()
    caller.card()
    caller.expiry()
    assert plays(caller.cvc()) == [("confirm",)]
    assert caller.keys("#") == []
    assert caller.journey.state is State.CONFIRM
    assert plays(caller.keys("1")) == [("processing",)]


def test_hash_after_a_nineteen_digit_card_belongs_to_it() -> None:
    caller = Caller()
    caller.start()
    caller.done()
    caller.keys("4000000000000000006")
    assert caller.keys("#") == []
    assert caller.journey.state is State.EXPIRY


def test_hash_after_an_invalid_complete_expiry_belongs_to_it() -> None:
    caller = Caller()
    caller.start()
    caller.card()
    caller.done()
    assert plays(caller.keys("1330")) == [("expiry_invalid", "enter_expiry")]
    assert caller.keys("#") == []
    caller.done()
    assert plays(caller.keys(EXPIRY)) == [("enter_cvc",)]


def test_only_one_hash_belongs_to_the_field_before() -> None:
    caller = Caller()
    caller.start()
    caller.card()
    caller.done()
    caller.keys(EXPIRY + "#")
    assert caller.keys("#") == [
        StopPlayback(),
        Play((part("empty_entry"), part("enter_cvc", digits=3)), True),
    ]


def test_a_late_hash_is_an_empty_entry_of_the_next_field() -> None:
    caller = Caller()
    caller.start()
    caller.card()
    caller.done()
    caller.keys(EXPIRY)
    caller.done(after=1.0)
    assert plays(caller.keys("#", gap=5.0)) == [("empty_entry", "enter_cvc")]


def test_hash_after_a_card_ended_by_hash_is_an_empty_expiry() -> None:
    caller = Caller()
    caller.start()
    caller.done()
    assert plays(caller.keys(VISA + "##")) == [("enter_expiry",), ("empty_entry", "enter_expiry")]


def test_hash_after_a_digit_key_is_not_swallowed() -> None:
    caller = Caller()
    caller.start()
    caller.card()
    caller.done()
    caller.keys(EXPIRY)
    # A digit of the security code came first: the next '#' is the code's own.
    assert plays(caller.keys("9#")) == [("cvc_invalid", "enter_cvc")]


# ---- timers ------------------------------------------------------------------------------------


def test_first_digit_timer_starts_only_when_the_prompt_is_done() -> None:
    caller = Caller()
    caller.start()
    assert caller.journey.next_wake() is None
    assert caller.wait(60) == []  # a long announcement is not a timeout
    caller.done()
    assert caller.journey.next_wake() == caller.now + 10.0
    assert caller.journey.timer(caller.now + 9.99) == []  # early: nothing
    assert caller.wait(9.99) == []
    assert caller.wait(0.01) == [Play((part("no_input"), part("enter_card")), True)]
    assert caller.journey.next_wake() is None


def test_inter_digit_timeout_after_each_digit() -> None:
    caller = Caller()
    caller.start()
    caller.done()
    caller.keys("4111")
    assert caller.journey.next_wake() == caller.now + 5.0
    assert caller.wait(4.75) == []
    caller.keys("1")  # restarts it
    assert caller.journey.next_wake() == caller.now + 5.0
    assert plays(caller.wait(5.0)) == [("no_input", "enter_card")]
    assert held(caller.journey) == []  # the partial entry is wiped


def test_first_digit_during_the_prompt_starts_the_inter_digit_timer() -> None:
    caller = Caller()
    caller.start()
    assert caller.keys("4") == [StopPlayback()]
    assert caller.journey.next_wake() == caller.now + 5.0
    assert caller.journey.prompt_done(caller.now) == []  # stale: it was stopped


def test_timeouts_per_field_and_too_many() -> None:
    caller = Caller()
    caller.start()
    caller.card()
    caller.done()
    assert plays(caller.wait(10)) == [("no_input", "enter_expiry")]
    caller.done()
    caller.keys("12")
    assert plays(caller.wait(5)) == [("no_input", "enter_expiry")]
    caller.done()
    assert plays(caller.wait(10)) == [("too_many_attempts", "goodbye")]
    assert caller.journey.next_wake() is None
    outcome = outcome_of(caller.done())
    assert (outcome.result, outcome.attempts) == (Result.TOO_MANY_ATTEMPTS, 3)


def test_configured_timeouts() -> None:
    caller = Caller(JourneyConfig(first_digit_timeout_s=3, inter_digit_timeout_s=1.5))
    caller.start()
    caller.done()
    assert caller.journey.next_wake() == caller.now + 3
    caller.keys("4")
    assert caller.journey.next_wake() == caller.now + 1.5


def test_no_timer_while_closing_and_only_the_reminder_while_processing() -> None:
    caller = Caller()
    caller.to_authorize()
    assert caller.journey.next_wake() is None
    caller.done()
    # one reminder: the next waits for its end (never reported here)
    assert plays(caller.wait(600)) == [("still_processing",)]
    caller = Caller()
    caller.start()
    caller.done()
    caller.keys("*")
    assert caller.journey.next_wake() is None


def test_timer_without_a_deadline_does_nothing() -> None:
    caller = Caller()
    caller.start()
    assert caller.journey.timer(caller.now + 1000) == []


# ---- barge-in and type-ahead -------------------------------------------------------------------


def test_whole_card_keyed_during_the_announcement() -> None:
    caller = Caller()
    caller.start()
    actions = caller.keys(VISA + "#" + EXPIRY + CVC)
    assert actions[0] == StopPlayback()
    assert actions[1:3] == [Play((part("enter_expiry"),), True), StopPlayback()]
    assert actions[3:5] == [Play((part("enter_cvc", digits=3),), True), StopPlayback()]
    assert actions[5] == Play((part("processing"),), False)
    card = authorize_of(actions).card
    assert (
        "".join(card.pan.characters()),
        card.exp_month,
        card.exp_year,
        "".join(card.cvc.characters()),
    ) == (
        VISA,
        12,
        2030,
        CVC,
    )
    assert len(actions) == 7


def test_barge_in_on_an_error_prompt() -> None:
    caller = Caller()
    caller.start()
    caller.card("4111")
    assert caller.keys("4") == [StopPlayback()]
    assert plays(caller.keys(VISA[1:] + "#")) == [("enter_expiry",)]


def test_keys_during_processing_are_ignored() -> None:
    caller = Caller()
    caller.to_authorize()
    assert caller.keys("1234567890*#") == []
    caller.done()
    assert caller.keys("*") == []
    assert caller.journey.state is State.PROCESSING


@pytest.mark.parametrize("key", ["A", "B", "C", "D", "", "x", "12", "99"])
def test_letter_keys_are_ignored(key: str) -> None:
    caller = Caller()
    caller.start()
    assert caller.journey.digit(key, caller.now) == []  # no barge-in either
    caller.done()
    caller.keys("4111")
    caller.journey.digit(key, caller.now)
    assert plays(caller.keys(VISA[4:] + "#")) == [("enter_expiry",)]


def test_prompt_done_without_a_prompt_is_ignored() -> None:
    caller = Caller()
    caller.start()
    caller.done()
    wake = caller.journey.next_wake()
    assert caller.done() == []
    assert caller.journey.next_wake() == wake


# ---- confirmation ------------------------------------------------------------------------------


def confirming(caller: Caller, pan: str = VISA) -> Play:
    caller.start()
    caller.card(pan)
    caller.expiry()
    return only_play(caller.cvc())


def test_confirm_prompt_and_one_proceeds() -> None:
    caller = Caller(JourneyConfig(confirm=True))
    play = confirming(caller)
    assert play == Play((part("confirm", last4="1111", expiry=SecretDigits(EXPIRY)),), True)
    assert caller.journey.state is State.CONFIRM
    caller.done()
    assert caller.journey.next_wake() == caller.now + 10.0
    actions = caller.keys("1")
    assert actions[0] == Play((part("processing"),), False)
    card = authorize_of(actions).card
    assert ("".join(card.pan.characters()), "".join(card.cvc.characters()), card.exp_month) == (
        VISA,
        CVC,
        12,
    )
    # The prompt's copy of the expiry is its own: it survives the hand-over.
    expiry = dict(play.parts[0].params)["expiry"]
    assert isinstance(expiry, SecretDigits) and "".join(expiry.characters()) == EXPIRY


def test_confirm_barged_in_by_one() -> None:
    caller = Caller(JourneyConfig(confirm=True))
    confirming(caller)
    actions = caller.keys("1")
    assert actions[0] == StopPlayback()
    authorize_of(actions)


def test_confirm_two_starts_again_with_everything_wiped() -> None:
    caller = Caller(JourneyConfig(confirm=True))
    confirming(caller)
    old = [b for b in buffers(caller.journey) if len(b) > 0]
    assert sorted(len(b) for b in old) == [3, 4, 16]
    assert caller.keys("2") == [StopPlayback(), Play((part("enter_card"),), True)]
    assert all(len(b) == 0 for b in old)
    assert held(caller.journey) == []
    assert caller.journey.state is State.CARD
    # Hanging up now: the discarded card is no longer "read".
    assert caller.hangup() != []
    assert (caller.journey.outcome.brand, caller.journey.outcome.last4) == ("", "")  # type: ignore[union-attr]


def test_confirm_two_then_a_new_card() -> None:
    caller = Caller(JourneyConfig(confirm=True))
    confirming(caller)
    caller.keys("2")
    caller.card(MASTERCARD)
    caller.expiry("0128")
    assert only_play(caller.cvc("321")) == Play(
        (part("confirm", last4="4444", expiry=SecretDigits("0128")),), True
    )
    card = authorize_of(caller.keys("1")).card
    assert (
        "".join(card.pan.characters()),
        card.exp_year,
        "".join(card.cvc.characters()),
        card.brand,
    ) == (
        MASTERCARD,
        2028,
        "321",
        "mastercard",
    )
    caller.authorized()
    outcome = caller.finish_result()
    assert (outcome.brand, outcome.last4) == ("mastercard", "4444")


def test_confirm_two_resets_the_field_counters() -> None:
    caller = Caller(JourneyConfig(confirm=True, max_attempts=2))
    caller.start()
    caller.card("4111")  # one failure on the card
    caller.card()
    caller.expiry()
    caller.cvc()
    caller.keys("2")
    assert plays(caller.card("4111")) == [("card_invalid", "enter_card")]  # not too many
    caller.card()
    caller.expiry()
    caller.cvc()
    caller.keys("1")
    caller.authorized()
    assert caller.finish_result().attempts == 2 + 1


def test_confirm_other_keys_and_timeouts_are_failed_attempts() -> None:
    caller = Caller(JourneyConfig(confirm=True))
    confirming(caller)
    caller.done()
    confirm = part("confirm", last4="1111", expiry=SecretDigits(EXPIRY))
    assert caller.keys("5") == [Play((part("confirm_invalid"), confirm), True)]  # its own prompt
    caller.done()
    assert caller.wait(10) == [
        Play((part("no_input"), part("confirm", last4="1111", expiry=SecretDigits(EXPIRY))), True)
    ]
    assert caller.keys("#") == [
        StopPlayback(),
        Play((part("too_many_attempts"), part("goodbye")), False),
    ]
    outcome = outcome_of(caller.done())
    assert (outcome.result, outcome.attempts, outcome.last4) == (
        Result.TOO_MANY_ATTEMPTS,
        3,
        "1111",
    )
    assert held(caller.journey) == []


def test_confirm_star_cancels() -> None:
    caller = Caller(JourneyConfig(confirm=True))
    confirming(caller)
    caller.done()
    assert plays(caller.keys("*")) == [("cancelled", "goodbye")]
    assert held(caller.journey) == []
    assert outcome_of(caller.done()).result is Result.CANCELLED


def test_each_confirm_prompt_gets_a_fresh_copy_of_the_expiry() -> None:
    caller = Caller(JourneyConfig(confirm=True))
    first = confirming(caller)
    copy = dict(first.parts[0].params)["expiry"]
    assert isinstance(copy, SecretDigits)
    copy.wipe()  # the renderer may wipe its copy
    caller.done()
    second = only_play(caller.keys("7"))
    assert [p.name for p in second.parts] == ["confirm_invalid", "confirm"]
    assert dict(second.parts[1].params)["expiry"] == SecretDigits(EXPIRY)
    card = authorize_of(caller.keys("1")).card
    assert (card.exp_month, card.exp_year) == (12, 2030)


# ---- results and repeat ------------------------------------------------------------------------


def test_declined() -> None:
    caller = Caller()
    caller.to_authorize("4000000000000002")
    # the result and its reference, and how to hear it again
    declined = Play((part("declined", reference="R124"), part("press_9_to_repeat")), False)
    assert caller.authorized(DECLINED) == [declined]
    outcome = caller.finish_result()
    assert (outcome.result, outcome.reference, outcome.decline_code) == (
        Result.DECLINED,
        "R124",
        "generic",
    )


def test_platform_error() -> None:
    caller = Caller()
    caller.to_authorize("4000000000000119")
    assert caller.authorized(FAILED) == [Play((part("payment_error"),), False)]
    outcome = caller.finish_result()
    assert (outcome.result, outcome.reference, outcome.attempts) == (Result.ERROR, "", 1)


def test_unexpected_authorization_result_counts_as_error() -> None:
    caller = Caller()
    caller.to_authorize()
    assert plays(caller.authorized(AuthorizationResult(Result.CANCELLED))) == [("payment_error",)]
    assert caller.finish_result().result is Result.ERROR


def test_nine_repeats_the_result() -> None:
    caller = Caller()
    caller.to_authorize()
    result_play = only_play(caller.authorized())
    assert caller.keys("9") == [result_play]  # during the result: start it over
    assert caller.keys("12345678*#") == []  # other keys do nothing
    caller.done()
    assert caller.journey.state is State.REPEAT_WAIT
    assert caller.wait(3.75) == []
    assert caller.keys("9") == [result_play]
    assert caller.journey.next_wake() is None
    assert state_now(caller.journey) is State.RESULT
    caller.done()
    assert caller.journey.next_wake() == caller.now + 4.0  # a fresh window
    assert caller.wait(4) == [Play((part("goodbye"),), False)]
    assert caller.keys("9") == []  # too late
    assert outcome_of(caller.done()).result is Result.APPROVED


def test_repeat_also_after_a_decline() -> None:
    caller = Caller()
    caller.to_authorize()
    caller.authorized(DECLINED)
    caller.done()
    declined = Play((part("declined", reference="R124"), part("press_9_to_repeat")), False)
    assert caller.keys("9") == [declined]


def test_repeats_are_limited() -> None:
    caller = Caller()
    caller.to_authorize()
    caller.authorized()
    for _ in range(MAX_RESULT_REPEATS):
        assert len(caller.keys("9")) == 1
    assert caller.keys("9") == []
    assert caller.finish_result().result is Result.APPROVED


def test_no_repeat_window() -> None:
    caller = Caller(JourneyConfig(repeat_window_s=0))
    caller.to_authorize()
    caller.authorized()
    assert caller.done() == [Play((part("goodbye"),), False)]


def test_authorized_out_of_turn_is_ignored() -> None:
    caller = Caller()
    caller.start()
    assert caller.authorized() == []
    caller.card()
    caller.expiry()
    caller.cvc()
    caller.authorized()
    assert caller.authorized(DECLINED) == []  # a second answer changes nothing
    assert caller.finish_result().result is Result.APPROVED


def test_start_twice_does_nothing() -> None:
    caller = Caller()
    caller.start()
    assert caller.start() == []


# ---- failure start -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "prompt"),
    [
        (Result.INVALID_TRANSACTION, "invalid_transaction"),
        (Result.INVALID_HANDOFF, "invalid_handoff"),
        (Result.ERROR, "payment_error"),
        (None, "payment_error"),
    ],
)
def test_failure_start(failure: Result | None, prompt: str) -> None:
    caller = Caller(transaction=None, failure=failure)
    assert caller.start() == [Play((part(prompt), part("goodbye")), barge_in=False)]
    assert caller.keys("4111*#") == []
    assert caller.journey.next_wake() is None
    outcome = outcome_of(caller.done())
    assert outcome.result is (failure or Result.ERROR)
    assert (outcome.attempts, outcome.brand, outcome.last4) == (0, "", "")
    assert dict(outcome.durations) == {"journey": 1.75}  # six keys and the prompt's end


# ---- hang-up -----------------------------------------------------------------------------------


def test_hangup_before_start() -> None:
    caller = Caller()
    outcome = outcome_of(caller.hangup())
    assert outcome.result is Result.HUNG_UP
    assert caller.start() == []


def test_hangup_during_the_announcement() -> None:
    caller = Caller()
    caller.start()
    assert outcome_of(caller.hangup()) == Outcome(
        Result.HUNG_UP, durations=(("card_entry", 0.25), ("journey", 0.25))
    )


@pytest.mark.parametrize("field", ["card", "expiry", "cvc", "confirm"])
def test_hangup_while_keying(field: str) -> None:
    caller = Caller(JourneyConfig(confirm=True))
    caller.start()
    caller.done()
    caller.keys("4111")
    if field != "card":
        caller.keys(VISA[4:] + "#")
    if field in ("cvc", "confirm"):
        caller.expiry()
    if field == "confirm":
        caller.cvc()
    else:
        caller.keys("1")
    before = [b for b in buffers(caller.journey) if len(b) > 0]
    outcome = outcome_of(caller.hangup())
    assert outcome.result is Result.HUNG_UP
    assert (outcome.brand, outcome.last4) == (("", "") if field == "card" else ("visa", "1111"))
    assert all(len(b) == 0 for b in before)
    assert held(caller.journey) == []
    assert caller.journey.finished and caller.journey.next_wake() is None
    # After the end, nothing happens any more.
    assert caller.keys("1") == [] and caller.done() == [] and caller.wait(100) == []
    assert caller.hangup() == [] and caller.authorized() == []


def test_hangup_during_authorization_waits_for_the_answer() -> None:
    caller = Caller()
    authorize = caller.to_authorize()
    handed_over = caller.now
    assert caller.hangup() == []
    assert caller.journey.outcome is None and not caller.journey.finished
    assert caller.journey.state is State.HUNG_UP_AUTHORIZING
    assert caller.hangup() == []
    assert caller.done() == [] and caller.keys("9") == []
    assert "".join(authorize.card.pan.characters()) == VISA  # the call still has what it needs
    outcome = outcome_of(caller.authorized(after=2.0))
    assert outcome.result is Result.APPROVED  # the answer outranks the hang-up
    assert (outcome.reference, outcome.authorization_code, outcome.card_token) == (
        "R123",
        "A77",
        "tok_1",
    )
    assert (outcome.brand, outcome.last4, outcome.attempts) == ("visa", "1111", 1)
    assert dict(outcome.durations)["authorization"] == caller.now - handed_over
    assert "result" not in dict(outcome.durations)


def test_hangup_during_authorization_that_then_fails() -> None:
    caller = Caller()
    caller.to_authorize()
    caller.hangup()
    outcome = outcome_of(caller.authorized(FAILED))
    assert (outcome.result, outcome.reference) == (Result.ERROR, "")  # the platform answer stands


@pytest.mark.parametrize("when", ["result", "repeat-window", "goodbye"])
def test_hangup_after_the_result_keeps_the_result(when: str) -> None:
    caller = Caller()
    caller.to_authorize()
    caller.authorized()
    if when != "result":
        caller.done()
    if when == "goodbye":
        caller.wait(4)
    outcome = outcome_of(caller.hangup())
    assert (outcome.result, outcome.reference, outcome.last4) == (Result.APPROVED, "R123", "1111")


@pytest.mark.parametrize("failure", [Result.INVALID_TRANSACTION, Result.ERROR])
def test_hangup_during_the_failure_prompt(failure: Result) -> None:
    caller = Caller(transaction=None, failure=failure)
    caller.start()
    assert outcome_of(caller.hangup()).result is Result.HUNG_UP
    assert caller.done() == []


def test_hangup_during_the_cancel_prompt() -> None:
    caller = Caller()
    caller.start()
    caller.done()
    caller.keys("*")
    assert outcome_of(caller.hangup()).result is Result.HUNG_UP
    assert caller.done() == []


# ---- durations and attempts ---------------------------------------------------------------------


def test_durations_of_each_phase() -> None:
    caller = Caller()
    t0 = caller.now
    caller.start()
    caller.card()
    caller.expiry()
    caller.cvc()
    t_authorize = caller.now
    caller.authorized(after=1.5)
    t_authorized = caller.now
    outcome = caller.finish_result()
    durations = dict(outcome.durations)
    assert list(durations) == ["card_entry", "authorization", "result", "journey"]
    assert durations["card_entry"] == t_authorize - t0
    assert durations["authorization"] == 1.5
    assert durations["result"] == caller.now - t_authorized
    assert durations["journey"] == caller.now - t0


def test_attempts_count_every_kind_of_failure() -> None:
    caller = Caller(JourneyConfig(confirm=True))
    caller.start()
    caller.done()
    caller.wait(10)  # timeout on the card
    caller.card("4111")  # invalid card
    caller.card()
    caller.expiry("0120")  # past
    caller.expiry()
    caller.done(after=6.0)
    caller.keys("#")  # empty
    caller.cvc()
    caller.keys("3")  # wrong key at confirm
    caller.keys("1")
    caller.authorized()
    assert caller.finish_result().attempts == 5 + 1


# ---- card data ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pan", "expiry", "cvc"),
    [(VISA, EXPIRY, CVC), (AMEX, "0731", AMEX_CVC), (MASTERCARD, "1128", "654")],
)
@pytest.mark.parametrize("confirm", [False, True])
def test_no_action_or_outcome_shows_card_data(
    pan: str, expiry: str, cvc: str, confirm: bool
) -> None:
    caller = Caller(JourneyConfig(confirm=confirm))
    caller.start()
    caller.card(pan[:-1] + "#")  # a wrong one first
    caller.done()
    caller.keys(pan[:7] + "*")
    caller.card(pan)
    caller.expiry(expiry)
    caller.cvc(cvc)
    if confirm:
        caller.keys("5")
        caller.keys("1")
    caller.authorized()
    caller.keys("9")
    outcome = caller.finish_result()
    texts = [repr(a) for a in caller.actions] + [str(a) for a in caller.actions]
    texts += [repr(outcome), str(outcome), repr(caller.journey.state)]
    texts += [repr(v) for v in state_of(caller.journey)]
    assert_no_card_data(texts, pan, expiry, cvc)
    assert pan[-4:] in repr(outcome)  # the last four are allowed, and shown
    assert any(isinstance(a, Authorize) for a in caller.actions)


def test_authorize_repr_is_masked() -> None:
    authorize = Caller().to_authorize(AMEX, "0731", AMEX_CVC)
    assert repr(authorize) == "Authorize(card=CardData(amex 0005), attempt=1)"


def test_journey_lets_go_of_the_card_when_handing_it_over() -> None:
    caller = Caller()
    card = caller.to_authorize().card
    assert held(caller.journey) == []
    values = state_of(caller.journey)
    assert all(v is not card.pan and v is not card.cvc for v in values)
    assert caller.journey._exp_month == 0 and caller.journey._exp_year == 0
    card.wipe()  # what the call does after the request: the journey does not mind
    caller.authorized()
    assert caller.finish_result().last4 == "1111"


def test_failed_entries_are_wiped() -> None:
    caller = Caller()
    caller.start()
    caller.done()
    caller.keys("4111111111111112")
    entry = [b for b in buffers(caller.journey) if len(b) == 16]
    assert len(entry) == 1
    caller.keys("#")
    assert len(entry[0]) == 0
    assert held(caller.journey) == []


def test_buffers_after_each_field() -> None:
    caller = Caller()
    caller.start()
    caller.card()
    assert sorted(len(b) for b in held(caller.journey)) == [16]
    caller.expiry()
    assert sorted(len(b) for b in held(caller.journey)) == [4, 16]
    caller.cvc()
    assert held(caller.journey) == []


# ---- the machine as a whole --------------------------------------------------------------------


def test_transition_table_covers_every_state() -> None:
    assert set(_TRANSITIONS) == set(State)
    assert _TRANSITIONS[State.FINISHED] == frozenset()
    for targets in _TRANSITIONS.values():
        assert targets <= set(State)
    # Every state but IDLE can be reached.
    reachable = set().union(*_TRANSITIONS.values())
    assert reachable == set(State) - {State.IDLE}


EVENTS = st.lists(
    st.one_of(
        st.sampled_from(list("0123456789*#A")).map(lambda k: ("digit", k)),
        st.sampled_from([VISA + "#", EXPIRY, CVC]).map(lambda k: ("digit", k)),
        st.just(("done", "")),
        st.floats(0, 15).map(lambda s: ("wait", s)),
        st.sampled_from(["approved", "declined", "error"]).map(lambda r: ("authorized", r)),
        st.just(("hangup", "")),
    ),
    max_size=60,
)
RESULTS = {"approved": APPROVED, "declined": DECLINED, "error": FAILED}


@settings(max_examples=150, deadline=None)
@given(EVENTS, st.booleans(), st.sampled_from([SALE, TOKENIZE, None]))
def test_any_sequence_of_events_is_safe(
    events: list[tuple[str, object]], confirm: bool, transaction: TransactionInfo | None
) -> None:
    caller = Caller(JourneyConfig(confirm=confirm), transaction, None)
    caller.start()
    for kind, value in events:
        if kind == "digit":
            caller.keys(str(value))
        elif kind == "done":
            caller.done()
        elif kind == "wait":
            caller.wait(float(value))  # type: ignore[arg-type]
        elif kind == "authorized":
            caller.authorized(RESULTS[str(value)])
        else:
            caller.hangup()
    # However it went, a hang-up (and the pending answer, if any) ends it.
    caller.hangup()
    if not caller.journey.finished:
        caller.authorized(APPROVED)
    assert caller.journey.finished and caller.journey.outcome is not None
    finishes = [a for a in caller.actions if isinstance(a, Finish)]
    assert len(finishes) == 1 and caller.actions[-1] is finishes[0]
    assert held(caller.journey) == []
    assert len([a for a in caller.actions if isinstance(a, Authorize)]) <= 1
    texts = [repr(a) for a in caller.actions] + [repr(caller.journey.outcome)]
    for text in texts:
        assert VISA[:7] not in text and EXPIRY not in text


# ---- a slow platform ---------------------------------------------------------------------------


def test_a_slow_authorisation_tells_the_caller_to_stay_on_the_line() -> None:
    """A timeout and a reconciliation can keep the caller waiting half a minute: silence that
    long makes callers hang up on a payment that may go through."""
    caller = Caller(JourneyConfig(processing_reminder_s=8.0))
    caller.to_authorize()
    assert caller.wait(20) == []  # the processing prompt still plays: no reminder over it
    assert caller.done() == []
    assert plays(caller.wait(7.5)) == []
    assert plays(caller.wait(1.0)) == [("still_processing",)]
    assert only_play(caller.actions[-1:]).barge_in is False
    assert plays(caller.keys("123")) == []  # keys do not stop it
    assert caller.done() == [] and plays(caller.wait(8.5)) == [("still_processing",)]
    caller.done()
    assert plays(caller.authorized(after=2.0)) == [("approved", "press_9_to_repeat")]
    assert caller.journey.next_wake() is None  # no reminder over the result


def test_no_reminder_after_a_hang_up_while_authorising() -> None:
    caller = Caller()
    caller.to_authorize()
    caller.done()
    assert caller.hangup() == [] and caller.journey.next_wake() is None
    assert caller.wait(30) == []
