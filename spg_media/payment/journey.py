"""The caller's journey as a sans-IO state machine.

This module owns what the caller hears and when, which keys count, the attempt and timeout
rules, and the moment card data is handed to the connector. The key rules of one field
(`field_length`, `hash_failure`, `check_card_entry`, `check_expiry_entry`, `ask_part`) are
module functions, shared with the agent-assisted payment sessions (`spg_media.assist`).
It does no I/O: the call feeds it events with the current time and carries out the actions
it returns.

Theory of operation
===================

The call drives one `Journey` with six kinds of event, each taking `now` (seconds, any
monotonic clock) and returning a list of actions to carry out in order:

    start()          once, after the call is answered
    digit(key)       a key press: '0'-'9', '*', '#' ('A'-'D' and anything else are ignored)
    prompt_done()    the last `Play` finished by itself (never for one that was stopped/replaced)
    timer()          `now >= next_wake()`; a spurious early call does nothing
    authorized(r)    the connector answered the last `Authorize` (the call always reports it,
                     an `ERROR` result included, even after the caller hung up)
    hangup()         the caller left

Actions: `Play(parts, barge_in)` replaces whatever is playing; `StopPlayback()` stops it because
a key barged in; `Authorize(card, attempt)` hands the card to the connector; `Finish(outcome)`
ends the journey (the call then returns the caller), after which every event returns [].

States and transitions (every one of them is below, and `_TRANSITIONS` enforces the table):

    IDLE ──start──▶ CARD                         Play(announce_*, enter_card), barge-in
    IDLE ──start──▶ CLOSING                      a failure given (or no transaction: ERROR):
                                                 Play(<failure prompt>, goodbye)
    CARD ──card ok──▶ EXPIRY ──expiry ok──▶ CVC ──code complete──▶ CONFIRM (config.confirm)
                                                 └──code complete──▶ PROCESSING (otherwise)
    CONFIRM ──'1'──▶ PROCESSING                  Play(processing), Authorize(card, 1)
    CONFIRM ──'2'──▶ CARD                        every field cleared and wiped, counters reset
    any field ──'*' on empty / max failures──▶ CLOSING    Play(cancelled|too_many_attempts, goodbye)
    PROCESSING ──prompt_done, then timer──▶ PROCESSING    Play(still_processing), every
                                                 processing_reminder_s of silence
    PROCESSING ──authorized──▶ RESULT            Play(approved|tokenized|declined, with the
                                                 reference, + press_9_to_repeat | payment_error)
    PROCESSING ──hangup──▶ HUNG_UP_AUTHORIZING ──authorized──▶ FINISHED (the platform's
                                                 result, reference, codes and token kept)
    RESULT ──prompt_done──▶ REPEAT_WAIT ──'9'──▶ RESULT (replayed, at most MAX_RESULT_REPEATS)
    REPEAT_WAIT ──timer──▶ CLOSING               Play(goodbye)
    CLOSING ──prompt_done──▶ FINISHED            Finish(outcome)
    any other state ──hangup──▶ FINISHED         Finish(hung-up), brand/last4 kept if read;
                                                 after authorized(): Finish(the platform's result)

Inside a field state (CARD, EXPIRY, CVC, CONFIRM):

- A prompt for the field plays with barge-in. A key keyed while it plays first yields
  `StopPlayback()` and then counts (type-ahead works: the whole card can be keyed during the
  announcement). No timer runs while the prompt plays.
- The first-digit timer starts at `prompt_done`; every digit (re)starts the inter-digit timer.
  Either expiring is a failed attempt: Play(no_input, <ask again>).
- Card number: 12–19 digits, ends on '#' or by itself at the 19th digit. Expiry MMYY ends on the
  4th digit, the security code on its 3rd (4th for amex). A '#' that is the very next key after
  a field ended on its last digit, within `inter_digit_timeout_s`, belongs to that field and is
  ignored (it does not barge in either). Otherwise '#' on an empty field is an empty entry,
  '#' on a short fixed-length field an invalid entry: both are failed attempts.
- '*' on a field with digits wipes them and asks again (not a failed attempt); '*' on an empty
  field cancels the payment. In CONFIRM, which holds no digits, '*' therefore cancels too.
- Each invalid entry has its own prompt (card_invalid, card_brand_not_accepted, expiry_invalid,
  expiry_past, expiry_too_far, cvc_invalid, empty_entry, no_input; in CONFIRM another key
  than 1, 2 or '*': confirm_invalid) followed by the field's ask.
  In CONFIRM a key other than 1/2/* is a failed attempt answered by the confirm prompt again.
- Failures are counted per field; `max_attempts` on one field ends with too-many-attempts.
  Failures on different fields do not add up. '2' at confirm starts over with fresh counters.

Outside the fields, keys are ignored except '9' in RESULT/REPEAT_WAIT. Prompts that do not
take keys are played with barge_in=False (processing, results, and the closing prompts); the
result prompt is "barged in" only by '9', which replaces it with a new `Play` of itself.

Outcome.attempts counts every failed entry attempt on every field (timeouts, invalid and empty
entries, wrong keys at confirm) plus the authorisations handed to the connector (0 or 1).
Outcome.durations holds, in seconds from the `now` values: "card_entry" (start to Authorize, or
to the end when there was none), "authorization" (Authorize to authorized), "result" (authorized
to the end) and "journey" (start to the end); a phase that did not happen is left out.

Card data: digits are kept in `SecretDigits` buffers only while they are needed. A buffer of an
abandoned entry (failed, cleared by '*', restarted with '2') is wiped at once; when the card is
handed over in `Authorize`, the journey drops its references (the call owns and wipes the card);
on every way out all remaining buffers are wiped. The confirm prompt gets its own copy of the
expiry digits. No action or outcome repr shows more than brand and last four.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from spg_media.payment.cards import (
    PAN_MAX_LENGTH,
    PAN_MIN_LENGTH,
    ExpiryCheck,
    PanCheck,
    check_expiry,
    check_pan,
    cvc_length,
)
from spg_media.payment.model import (
    AuthorizationResult,
    CardData,
    Operation,
    Result,
    SecretDigits,
    TransactionInfo,
)

# A stuck or playful '9' must not keep the call in the IVR forever.
MAX_RESULT_REPEATS = 5

EXPIRY_LENGTH = 4
DIGITS = frozenset("0123456789")
KEYS = DIGITS | {"*", "#"}


# ---- actions ---------------------------------------------------------------------------------

ParamValue = str | int | SecretDigits


@dataclass(frozen=True)
class PromptPart:
    """One named phrase of a prompt; the renderer turns name + params into speech."""

    name: str
    params: tuple[tuple[str, ParamValue], ...] = ()


@dataclass(frozen=True)
class Play:
    """Play these parts in order, replacing whatever is playing; report `prompt_done` after."""

    parts: tuple[PromptPart, ...]
    barge_in: bool


@dataclass(frozen=True)
class StopPlayback:
    """A key barged in: stop the prompt (no `prompt_done` for it)."""


@dataclass(frozen=True)
class Authorize:
    """Run the connector with this card, then call `authorized()`. The call owns the card."""

    card: CardData
    attempt: int


@dataclass(frozen=True)
class Outcome:
    """How the journey ended. Safe to log: a card shows only as brand and last four."""

    result: Result
    reference: str = ""
    authorization_code: str = ""
    card_token: str = ""
    brand: str = ""
    last4: str = ""
    attempts: int = 0
    decline_code: str = ""
    durations: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Finish:
    """The journey is over: record `outcome` and return the caller."""

    outcome: Outcome


Action = Play | StopPlayback | Authorize | Finish


@dataclass(frozen=True)
class JourneyConfig:
    first_digit_timeout_s: float = 10.0
    inter_digit_timeout_s: float = 5.0
    max_attempts: int = 3
    confirm: bool = False
    card_brands: tuple[str, ...] = (
        "visa",
        "mastercard",
        "amex",
        "discover",
        "diners",
        "jcb",
        "unionpay",
        "maestro",
    )
    repeat_window_s: float = 4.0  # after the result prompt, time to press 9 to hear it again
    # while the platform is asked (a slow answer, a reconciliation): silence this long, then
    # "still processing", again and again, so the caller does not hang up on a payment
    processing_reminder_s: float = 8.0


# ---- the key rules of a field (shared with agent-assisted payment sessions) --------------------

EntryField = Literal["card", "expiry", "cvc"]


def field_length(field: EntryField, brand: str) -> int:
    """Digits at which a field ends by itself: 19 for a card number (shorter ones end on '#'),
    4 for an expiry MMYY, the brand's security-code length (4 when the brand is not known yet:
    a 3-digit code then ends on '#')."""
    if field == "card":
        return PAN_MAX_LENGTH
    if field == "expiry":
        return EXPIRY_LENGTH
    return cvc_length(brand) if brand else 4


def hash_failure(field: EntryField, length: int, brand: str = "") -> str | None:
    """The failure prompt for a '#' ending a field of `length` digits, None when '#' ends it
    well (a card number of any length: checked next; a security code of 3 digits when the
    brand is not known yet). A full fixed-length field has ended by itself before any '#'."""
    if length == 0:
        return "empty_entry"
    if field == "expiry":
        return "expiry_invalid"  # short: a full one ended by itself
    if field == "cvc" and (brand or length != 3):
        return "cvc_invalid"
    return None


def check_card_entry(entry: SecretDigits, brands: Collection[str]) -> tuple[str | None, str]:
    """(failure prompt or None, brand) of a keyed card number."""
    if len(entry) < PAN_MIN_LENGTH:
        return "card_invalid", ""
    verdict = check_pan(entry, brands)
    if verdict.check is PanCheck.BRAND_NOT_ACCEPTED:
        return "card_brand_not_accepted", ""
    if verdict.check is not PanCheck.OK or verdict.brand is None:
        return "card_invalid", ""
    return None, verdict.brand


_EXPIRY_FAILURES = {
    ExpiryCheck.INVALID: "expiry_invalid",
    ExpiryCheck.PAST: "expiry_past",
    ExpiryCheck.TOO_FAR: "expiry_too_far",
}


def check_expiry_entry(entry: SecretDigits, today: datetime.date) -> tuple[str | None, int, int]:
    """(failure prompt or None, month, four-digit year) of a keyed MMYY expiry."""
    month = int(entry.prefix(2))
    year = int(entry.last(2))
    check = check_expiry(month, year, today)
    if check is not ExpiryCheck.OK:
        return _EXPIRY_FAILURES[check], 0, 0
    return None, month, 2000 + year


def ask_part(field: EntryField, brand: str) -> PromptPart:
    """The prompt part asking for a field."""
    if field == "card":
        return _part("enter_card")
    if field == "expiry":
        return _part("enter_expiry")
    return _part("enter_cvc", digits=cvc_length(brand) if brand else 3)


# ---- states ----------------------------------------------------------------------------------


class State(enum.Enum):
    IDLE = "idle"  # built, start() not called yet
    CARD = "card"  # keying the card number
    EXPIRY = "expiry"  # keying MMYY
    CVC = "cvc"  # keying the security code
    CONFIRM = "confirm"  # "press 1 to confirm, 2 to start again"
    PROCESSING = "processing"  # Authorize handed over, waiting for authorized()
    HUNG_UP_AUTHORIZING = "hung-up-authorizing"  # caller left; Finish when authorized() comes
    RESULT = "result"  # the result prompt plays
    REPEAT_WAIT = "repeat-wait"  # result played; repeat_window_s to press 9
    CLOSING = "closing"  # final prompts play; Finish when they are done
    FINISHED = "finished"


FIELD_STATES = frozenset({State.CARD, State.EXPIRY, State.CVC, State.CONFIRM})

_TRANSITIONS: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.CARD, State.CLOSING, State.FINISHED}),
    State.CARD: frozenset({State.EXPIRY, State.CLOSING, State.FINISHED}),
    State.EXPIRY: frozenset({State.CVC, State.CLOSING, State.FINISHED}),
    State.CVC: frozenset({State.CONFIRM, State.PROCESSING, State.CLOSING, State.FINISHED}),
    State.CONFIRM: frozenset({State.CARD, State.PROCESSING, State.CLOSING, State.FINISHED}),
    State.PROCESSING: frozenset({State.RESULT, State.HUNG_UP_AUTHORIZING}),
    State.HUNG_UP_AUTHORIZING: frozenset({State.FINISHED}),
    State.RESULT: frozenset({State.REPEAT_WAIT, State.CLOSING, State.FINISHED}),
    State.REPEAT_WAIT: frozenset({State.RESULT, State.CLOSING, State.FINISHED}),
    State.CLOSING: frozenset({State.FINISHED}),
    State.FINISHED: frozenset(),
}

_FIELD_OF_STATE: dict[State, EntryField] = {
    State.CARD: "card",
    State.EXPIRY: "expiry",
    State.CVC: "cvc",
}

_FAILURE_PROMPTS = {
    Result.INVALID_TRANSACTION: "invalid_transaction",
    Result.INVALID_HANDOFF: "invalid_handoff",
}


def _part(name: str, **params: ParamValue) -> PromptPart:
    return PromptPart(name, tuple(params.items()))


# ---- the machine -----------------------------------------------------------------------------


class Journey:
    """One caller's way from the announcement to the result. See the module docstring."""

    def __init__(
        self,
        config: JourneyConfig,
        transaction: TransactionInfo | None,
        failure: Result | None,
        today: datetime.date,
    ) -> None:
        self._config = config
        self._transaction = transaction
        # No transaction and no reason given is still a failure the caller must hear.
        self._failure = failure if failure is not None or transaction is not None else Result.ERROR
        self._today = today

        self._state = State.IDLE
        self._playing = False
        self._deadline: float | None = None
        self._hash_grace_until: float | None = None

        self._entry = SecretDigits()  # the field being keyed
        self._pan: SecretDigits | None = None
        self._expiry: SecretDigits | None = None
        self._exp_month = 0
        self._exp_year = 0
        self._cvc: SecretDigits | None = None
        self._brand = ""
        self._last4 = ""

        self._field_failures: dict[State, int] = {}
        self._failed_total = 0
        self._authorizations = 0
        self._auth: AuthorizationResult | None = None
        self._result_parts: tuple[PromptPart, ...] = ()
        self._repeats = 0
        self._closing_result: Result | None = None
        self._outcome: Outcome | None = None

        self._t_start: float | None = None
        self._t_entry: float | None = None
        self._t_authorize: float | None = None
        self._t_authorized: float | None = None

    # ---- public view --------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def finished(self) -> bool:
        return self._state is State.FINISHED

    @property
    def outcome(self) -> Outcome | None:
        return self._outcome

    def next_wake(self) -> float | None:
        return self._deadline

    # ---- events -------------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        if self._state is not State.IDLE:
            return []
        self._t_start = now
        if self._failure is not None:
            prompt = _FAILURE_PROMPTS.get(self._failure, "payment_error")
            return self._close(self._failure, (_part(prompt), _part("goodbye")))
        assert self._transaction is not None
        self._t_entry = now
        self._goto(State.CARD)
        return [self._play((self._announcement(), _part("enter_card")), barge_in=True)]

    def digit(self, key: str, now: float) -> list[Action]:
        if key not in KEYS:
            return []
        if self._state in FIELD_STATES:
            return self._field_key(key, now)
        if self._state in (State.RESULT, State.REPEAT_WAIT) and key == "9":
            return self._repeat_result()
        return []  # processing, closing and the like take no keys

    def prompt_done(self, now: float) -> list[Action]:
        if not self._playing:
            return []  # stale: that prompt was stopped or replaced
        self._playing = False
        if self._state in FIELD_STATES:
            if len(self._entry) == 0 and self._deadline is None:
                self._deadline = now + self._config.first_digit_timeout_s
            return []
        if self._state is State.RESULT:
            if self._config.repeat_window_s <= 0:
                return self._goodbye_after_result()
            self._goto(State.REPEAT_WAIT)
            self._deadline = now + self._config.repeat_window_s
            return []
        if self._state is State.CLOSING:
            assert self._closing_result is not None
            return self._finish(self._closing_result, now)
        if self._state is State.PROCESSING:
            self._deadline = now + self._config.processing_reminder_s
        return []

    def timer(self, now: float) -> list[Action]:
        if self._deadline is None or now < self._deadline:
            return []
        self._deadline = None
        if self._state in FIELD_STATES:
            return self._failed(now, "no_input")
        if self._state is State.REPEAT_WAIT:
            return self._goodbye_after_result()
        if self._state is State.PROCESSING:
            return [self._play((_part("still_processing"),), barge_in=False)]
        return []

    def authorized(self, result: AuthorizationResult, now: float) -> list[Action]:
        if self._state is State.HUNG_UP_AUTHORIZING:
            # The platform's answer outranks the hang-up: the merchant must learn that the
            # payment went through (or was declined) even if the caller never heard it.
            self._auth = result
            self._t_authorized = now
            return self._finish(result.result, now)
        if self._state is not State.PROCESSING:
            return []
        self._auth = result
        self._t_authorized = now
        self._deadline = None  # no more "still processing"
        parts: tuple[PromptPart, ...]
        if result.result is Result.APPROVED:
            tokenize = (
                self._transaction is not None and self._transaction.operation is Operation.TOKENIZE
            )
            name = "tokenized" if tokenize else "approved"
            parts = (_part(name, reference=result.reference), _part("press_9_to_repeat"))
        elif result.result is Result.DECLINED:
            parts = (_part("declined", reference=result.reference), _part("press_9_to_repeat"))
        else:
            parts = (_part("payment_error"),)
        self._result_parts = parts
        self._goto(State.RESULT)
        return [self._play(parts, barge_in=False)]

    def hangup(self, now: float) -> list[Action]:
        if self._state in (State.FINISHED, State.HUNG_UP_AUTHORIZING):
            return []
        if self._state is State.PROCESSING:
            # The payment may go through: wait for its answer so the outcome carries the
            # reference (the call always reports authorized()).
            self._goto(State.HUNG_UP_AUTHORIZING)
            self._playing = False
            self._deadline = None
            return []
        if self._auth is not None:  # hung up during the result: the result stands
            return self._finish(self._auth.result, now)
        return self._finish(Result.HUNG_UP, now)

    # ---- fields -------------------------------------------------------------------------------

    def _field_key(self, key: str, now: float) -> list[Action]:
        grace, self._hash_grace_until = self._hash_grace_until, None
        if key == "#" and grace is not None and now <= grace:
            return []  # the '#' closing a field that had already ended on its last digit
        actions: list[Action] = []
        if self._playing:
            self._playing = False
            actions.append(StopPlayback())
        if self._state is State.CONFIRM:
            actions += self._confirm_key(key, now)
        elif key == "*":
            actions += self._cancel() if len(self._entry) == 0 else self._clear()
        elif key == "#":
            actions += self._hash(now)
        else:
            self._entry.append(key)
            self._deadline = now + self._config.inter_digit_timeout_s
            if len(self._entry) == self._field_length():
                self._hash_grace_until = now + self._config.inter_digit_timeout_s
                actions += self._complete(now)
        return actions

    def _field_length(self) -> int:
        """Digits at which the field ends by itself."""
        return field_length(self._field(), self._brand)

    def _field(self) -> EntryField:
        return _FIELD_OF_STATE[self._state]

    def _hash(self, now: float) -> list[Action]:
        failure = hash_failure(self._field(), len(self._entry), self._brand)
        if failure is not None:
            return self._failed(now, failure)
        return self._complete(now)

    def _complete(self, now: float) -> list[Action]:
        """The field being keyed has ended: check it and move on, or count a failure."""
        self._deadline = None
        if self._state is State.CARD:
            return self._complete_card(now)
        if self._state is State.EXPIRY:
            return self._complete_expiry(now)
        return self._complete_cvc(now)

    def _complete_card(self, now: float) -> list[Action]:
        failure, brand = check_card_entry(self._entry, self._config.card_brands)
        if failure is not None:
            return self._failed(now, failure)
        self._pan, self._entry = self._entry, SecretDigits()
        self._brand = brand
        self._last4 = self._pan.last(4)
        return self._ask_next(State.EXPIRY)

    def _complete_expiry(self, now: float) -> list[Action]:
        failure, month, year = check_expiry_entry(self._entry, self._today)
        if failure is not None:
            return self._failed(now, failure)
        self._expiry, self._entry = self._entry, SecretDigits()
        self._exp_month, self._exp_year = month, year
        return self._ask_next(State.CVC)

    def _complete_cvc(self, now: float) -> list[Action]:
        self._cvc, self._entry = self._entry, SecretDigits()
        if self._config.confirm:
            return self._ask_next(State.CONFIRM)
        return self._authorize(now)

    def _confirm_key(self, key: str, now: float) -> list[Action]:
        if key == "1":
            return self._authorize(now)
        if key == "2":
            self._wipe_card()
            self._brand = self._last4 = ""
            self._field_failures.clear()  # a fresh start; the total still counts them
            self._deadline = None
            return self._ask_next(State.CARD)
        if key == "*":
            return self._cancel()
        return self._failed(now, "confirm_invalid")

    def _ask(self) -> PromptPart:
        """The prompt asking for the current field."""
        if self._state in _FIELD_OF_STATE:
            return ask_part(self._field(), self._brand)
        assert self._expiry is not None
        # The prompt owns its copy: whoever renders it may wipe it, ours stays until Authorize.
        return _part("confirm", last4=self._last4, expiry=self._expiry.copy())

    def _ask_next(self, state: State) -> list[Action]:
        self._goto(state)
        self._deadline = None
        return [self._play((self._ask(),), barge_in=True)]

    def _clear(self) -> list[Action]:
        self._entry.wipe()
        self._deadline = None
        return [self._play((self._ask(),), barge_in=True)]

    def _failed(self, now: float, prompt: str) -> list[Action]:
        """A failed attempt on the current field: say why and ask again, or give up."""
        self._entry.wipe()
        self._deadline = None
        count = self._field_failures.get(self._state, 0) + 1
        self._field_failures[self._state] = count
        self._failed_total += 1
        if count >= self._config.max_attempts:
            return self._close(
                Result.TOO_MANY_ATTEMPTS, (_part("too_many_attempts"), _part("goodbye"))
            )
        parts = (_part(prompt), self._ask())
        return [self._play(parts, barge_in=True)]

    def _cancel(self) -> list[Action]:
        return self._close(Result.CANCELLED, (_part("cancelled"), _part("goodbye")))

    # ---- authorisation and result -------------------------------------------------------------

    def _authorize(self, now: float) -> list[Action]:
        assert self._pan is not None and self._cvc is not None
        card = CardData(
            pan=self._pan,
            exp_month=self._exp_month,
            exp_year=self._exp_year,
            cvc=self._cvc,
            brand=self._brand,
        )
        # Hand over, then forget: the call owns the card now and wipes it after the request.
        self._pan = self._cvc = None
        self._exp_month = self._exp_year = 0
        if self._expiry is not None:
            self._expiry.wipe()
            self._expiry = None
        self._deadline = None
        self._authorizations += 1
        self._t_authorize = now
        self._goto(State.PROCESSING)
        return [
            self._play((_part("processing"),), barge_in=False),
            Authorize(card, self._authorizations),
        ]

    def _repeat_result(self) -> list[Action]:
        if self._repeats >= MAX_RESULT_REPEATS:
            return []
        self._repeats += 1
        self._deadline = None
        if self._state is not State.RESULT:
            self._goto(State.RESULT)
        return [self._play(self._result_parts, barge_in=False)]

    def _goodbye_after_result(self) -> list[Action]:
        assert self._auth is not None
        result = self._auth.result
        if result not in (Result.APPROVED, Result.DECLINED):
            result = Result.ERROR
        return self._close(result, (_part("goodbye"),))

    # ---- endings ------------------------------------------------------------------------------

    def _close(self, result: Result, parts: tuple[PromptPart, ...]) -> list[Action]:
        """Say the last words; `Finish(result)` follows when they have played."""
        self._wipe_card()
        self._deadline = None
        self._closing_result = result
        self._goto(State.CLOSING)
        return [self._play(parts, barge_in=False)]

    def _finish(self, result: Result, now: float) -> list[Action]:
        self._wipe_card()
        self._deadline = None
        self._playing = False
        auth = self._auth
        self._outcome = Outcome(
            result=result,
            reference=auth.reference if auth else "",
            authorization_code=auth.authorization_code if auth else "",
            card_token=auth.card_token if auth else "",
            brand=self._brand,
            last4=self._last4,
            attempts=self._failed_total + self._authorizations,
            decline_code=auth.decline_code if auth else "",
            durations=self._durations(now),
        )
        self._goto(State.FINISHED)
        return [Finish(self._outcome)]

    def _durations(self, end: float) -> tuple[tuple[str, float], ...]:
        phases: list[tuple[str, float]] = []
        if self._t_entry is not None:
            entry_end = self._t_authorize if self._t_authorize is not None else end
            phases.append(("card_entry", entry_end - self._t_entry))
        if self._t_authorize is not None and self._t_authorized is not None:
            phases.append(("authorization", self._t_authorized - self._t_authorize))
            if self._state is not State.HUNG_UP_AUTHORIZING:
                phases.append(("result", end - self._t_authorized))
        if self._t_start is not None:
            phases.append(("journey", end - self._t_start))
        return tuple((name, round(max(0.0, seconds), 3)) for name, seconds in phases)

    # ---- helpers ------------------------------------------------------------------------------

    def _announcement(self) -> PromptPart:
        info = self._transaction
        assert info is not None
        if info.operation is Operation.TOKENIZE:
            return _part("announce_tokenize", merchant=info.merchant)
        return _part(
            "announce_sale",
            amount_minor=info.amount_minor,
            currency=info.currency,
            merchant=info.merchant,
        )

    def _play(self, parts: tuple[PromptPart, ...], *, barge_in: bool) -> Play:
        self._playing = True
        return Play(parts, barge_in)

    def _goto(self, state: State) -> None:
        if state not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"journey: no transition {self._state.name} -> {state.name}")
        self._state = state

    def _wipe_card(self) -> None:
        """Wipe every card digit the journey still holds (not one handed to `Authorize`)."""
        self._entry.wipe()
        for buffer in (self._pan, self._expiry, self._cvc):
            if buffer is not None:
                buffer.wipe()
        self._pan = self._expiry = self._cvc = None
        self._exp_month = self._exp_year = 0
