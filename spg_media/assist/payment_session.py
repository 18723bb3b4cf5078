"""One agent-assisted payment as a sans-IO state machine: captures, completion, result.

This module owns what happens to one payment taken while the agent stays on the call: which
field the customer is keying, the key rules (those of the IVR journey, from
`spg_media.payment.journey`), what the customer hears, the state the agent's desktop sees, and
the moment the card is handed to the connector. It does no I/O: the service feeds it the
agent's requests and the customer's keys with the current time and carries out the actions it
returns (`Play`, `StopPlayback`, `Authorize`, `Finish` of the journey module).

Events (each takes `now`, returns a list of actions):

    capture(field, prompt)  the agent asks for a field: "payment-card-number",
                            "expiration-date" or "security-code", in any order, again if wanted
    digit(key)              a key of the customer ('0'-'9', '*', '#'; others ignored)
    prompt_done()           the last `Play` finished by itself
    timer()                 `now >= next_wake()`
    complete()              the agent asks for the authorisation (`Authorize`)
    authorized(result)      the connector answered
    cancel()                the agent gave up on the payment
    hangup()                the call ended

`complete` and `capture` raise `Refused` when the payment cannot take them (`code` says why,
`required` lists the fields still missing).

Key rules of a capture (the IVR's): the field's prompt plays with barge-in (a key stops it and
counts); with `prompt=False` nothing plays and the first-digit timer starts at once. '#' ends
the field; the expiry (MMYY) ends on its 4th digit, the security code on its 3rd (4th for
amex; 4th when no card number is captured yet: then '#' ends a 3-digit one, and the prompt
asks for 3 digits), a card number on its 19th; a '#' right after a field ended by itself
belongs to it. '*' clears the field and asks again; '*' on an empty field cancels the payment
(result `cancelled`), as in the IVR.
The first-digit and inter-digit timeouts and each invalid entry are failed attempts: the
customer hears why and is asked again, and the state shows `error_type`. After
`max_attempts` failed attempts of one capture the capture stops (the failure prompt plays,
`capture` is null, `error_type` stays): the agent, who is on the call, decides what next
(capture again, or cancel). Capturing a field again replaces what it held. A security code
captured before the card number is checked against the brand when the card number comes; a
length that does not fit drops it (`invalid-security-code`, required again).

States: `active` (captures) → `processing` (complete) → `complete` (result approved, declined
or error); `active` → `cancelled` (result cancelled, or hung-up when the call ended). A call
that ends while `processing` keeps waiting for the platform: its answer is the result.

Card data: digits only in `SecretDigits` and the `CardData` handed over in `Authorize` (the
service wipes it after the request); an abandoned entry is wiped at once, everything at the
end. The state shows at most brand and last four; no action or outcome repr shows more.
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass
from typing import Any

from spg_media.payment.cards import cvc_length
from spg_media.payment.journey import (
    KEYS,
    Action,
    Authorize,
    EntryField,
    Finish,
    Outcome,
    Play,
    PromptPart,
    StopPlayback,
    ask_part,
    check_card_entry,
    check_expiry_entry,
    field_length,
    hash_failure,
)
from spg_media.payment.model import (
    AuthorizationResult,
    CardData,
    Operation,
    Result,
    SecretDigits,
    TransactionInfo,
)

CARD_NUMBER = "payment-card-number"
EXPIRATION_DATE = "expiration-date"
SECURITY_CODE = "security-code"
# The API's field names, in the order `required` lists them.
FIELDS: dict[str, EntryField] = {
    CARD_NUMBER: "card",
    EXPIRATION_DATE: "expiry",
    SECURITY_CODE: "cvc",
}
_NAME_OF: dict[EntryField, str] = {entry: name for name, entry in FIELDS.items()}

# The failure prompt of an entry → the error_type the agent sees.
_ERROR_TYPES = {
    "no_input": "timeout",
    "card_invalid": "invalid-card-number",
    "card_brand_not_accepted": "invalid-card-type",
    "expiry_invalid": "invalid-date",
    "expiry_past": "invalid-date",
    "expiry_too_far": "invalid-date",
    "cvc_invalid": "invalid-security-code",
}
# An empty entry ('#' alone) is an invalid entry of that field.
_EMPTY_ERROR_TYPES: dict[EntryField, str] = {
    "card": "invalid-card-number",
    "expiry": "invalid-date",
    "cvc": "invalid-security-code",
}


class Status(enum.StrEnum):
    ACTIVE = "active"
    PROCESSING = "processing"
    COMPLETE = "complete"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset({Status.COMPLETE, Status.CANCELLED})


@dataclass(frozen=True)
class SessionConfig:
    first_digit_timeout_s: float = 10.0
    inter_digit_timeout_s: float = 5.0
    max_attempts: int = 3
    card_brands: tuple[str, ...] = (
        "visa", "mastercard", "amex", "discover", "diners", "jcb", "unionpay", "maestro",
    )  # fmt: skip


class Refused(Exception):
    """The payment cannot take this request now: `code` (an API error word) and, for a
    `complete` with fields missing, `required`."""

    def __init__(self, code: str, detail: str, required: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.required = required


def _part(name: str, **params: str | int) -> PromptPart:
    return PromptPart(name, tuple(params.items()))


class PaymentSession:
    """One agent-assisted payment; see the module docstring."""

    def __init__(
        self,
        payment_id: str,
        transaction: TransactionInfo,
        config: SessionConfig,
        today: datetime.date,
        now: float,
    ) -> None:
        self.payment_id = payment_id
        self.transaction = transaction
        self._config = config
        self._today = today
        self._status = Status.ACTIVE
        self._t_created = now
        self._t_authorize: float | None = None
        self._t_authorized: float | None = None

        self._capture: EntryField | None = None
        self._entry = SecretDigits()
        self._playing = False
        self._deadline: float | None = None
        self._hash_grace_until: float | None = None
        self._capture_failures = 0
        self._failed_total = 0
        self._error_type: str | None = None

        self._pan: SecretDigits | None = None
        self._passed_states: list[dict[str, Any]] = []
        # the fields taken, as the CDR's `input` says them: always keys here (the agent would
        # hear speech, so voice entry is off in assisted mode)
        self._taken: dict[str, str] = {}
        self._brand = ""
        self._last4 = ""
        self._exp_month = 0
        self._exp_year = 0
        self._cvc: SecretDigits | None = None

        self._authorizations = 0
        self._auth: AuthorizationResult | None = None
        self._hung_up = False
        self._outcome: Outcome | None = None

    # ---- public view --------------------------------------------------------------------------

    @property
    def status(self) -> Status:
        return self._status

    @property
    def outcome(self) -> Outcome | None:
        return self._outcome

    def next_wake(self) -> float | None:
        return self._deadline

    def required(self) -> list[str]:
        """The fields not captured yet, in the API's order."""
        held = {"card": self._pan, "expiry": self._exp_month or None, "cvc": self._cvc}
        return [name for name, entry in FIELDS.items() if held[entry] is None]

    def state(self) -> dict[str, Any]:
        """What the agent's desktop sees (the API's state object): never more of the card
        than brand and last four."""
        state: dict[str, Any] = {
            "payment_id": self.payment_id,
            "status": str(self._status),
            "capture": _NAME_OF[self._capture] if self._capture is not None else None,
            "digits_entered": len(self._entry) if self._capture is not None else 0,
            "required": self.required() if self._status is Status.ACTIVE else [],
        }
        if self._brand:
            state["card_brand"] = self._brand
            state["last4"] = self._last4
        if self._error_type is not None:
            state["error_type"] = self._error_type
        if self._outcome is not None:
            state["result"] = str(self._outcome.result)
            if self._outcome.reference:
                state["reference"] = self._outcome.reference
        return state

    # ---- the agent's requests -----------------------------------------------------------------

    def capture(self, name: str, now: float, *, prompt: bool = True) -> list[Action]:
        if name not in FIELDS:
            raise Refused("bad-request", f"unknown field {name!r}")
        self._require_active()
        field = FIELDS[name]
        actions: list[Action] = []
        self._entry.wipe()
        self._drop(field)  # capturing a field replaces what it held
        self._capture = field
        self._capture_failures = 0
        self._error_type = None
        self._hash_grace_until = None
        if prompt:
            self._deadline = None  # the first-digit timer starts when the prompt has played
            actions.append(self._play((ask_part(field, self._brand),), barge_in=True))
        else:
            if self._playing:
                self._playing = False
                actions.append(StopPlayback())
            self._deadline = now + self._config.first_digit_timeout_s
        return actions

    def complete(self, now: float) -> list[Action]:
        self._require_active()
        if self._capture is not None:
            raise Refused("capture-in-progress", f"{_NAME_OF[self._capture]} is being keyed")
        missing = self.required()
        if missing:
            raise Refused("fields-missing", "not every field is captured", tuple(missing))
        assert self._pan is not None and self._cvc is not None
        card = CardData(self._pan, self._exp_month, self._exp_year, self._cvc, self._brand)
        # Hand over, then forget: the service owns the card now and wipes it after the request.
        self._pan = self._cvc = None
        self._exp_month = self._exp_year = 0
        self._deadline = None
        self._authorizations += 1
        self._t_authorize = now
        self._status = Status.PROCESSING
        self._error_type = None
        return [
            self._play((_part("processing"),), barge_in=False),
            Authorize(card, self._authorizations),
        ]

    def cancel(self, now: float) -> list[Action]:
        if self._status is Status.PROCESSING:
            raise Refused("processing", "the authorisation is under way")
        self._require_active()
        return self._end(Result.CANCELLED, now, (_part("cancelled"),))

    # ---- the call's events --------------------------------------------------------------------

    def digit(self, key: str, now: float) -> list[Action]:
        if key not in KEYS or self._capture is None or self._status is not Status.ACTIVE:
            return []
        grace, self._hash_grace_until = self._hash_grace_until, None
        if key == "#" and grace is not None and now <= grace:
            return []  # the '#' closing a field that had already ended on its last digit
        actions: list[Action] = []
        if self._playing:
            self._playing = False
            actions.append(StopPlayback())
        field = self._capture
        if key == "*":
            if len(self._entry) == 0:
                return actions + self._end(Result.CANCELLED, now, (_part("cancelled"),))
            self._entry.wipe()
            self._deadline = None
            return [*actions, self._play((ask_part(field, self._brand),), barge_in=True)]
        if key == "#":
            failure = hash_failure(field, len(self._entry), self._brand)
            if failure is not None:
                return actions + self._failed(failure, empty=len(self._entry) == 0)
            return actions + self._complete_field(now)
        self._entry.append(key)
        self._deadline = now + self._config.inter_digit_timeout_s
        if len(self._entry) == field_length(field, self._brand):
            # the desktop shows this last key's mark too, before the field ends
            self._passed_states.append(self.state())
            self._hash_grace_until = now + self._config.inter_digit_timeout_s
            actions += self._complete_field(now)
        return actions

    def take_passed_states(self) -> list[dict[str, Any]]:
        """States the session went through within one input, before the current one (the mark
        of a field's last key, which also ends the field); each is given out once."""
        states, self._passed_states = self._passed_states, []
        return states

    def prompt_done(self, now: float) -> list[Action]:
        if not self._playing:
            return []  # stale: that prompt was stopped or replaced
        self._playing = False
        if self._capture is not None and len(self._entry) == 0 and self._deadline is None:
            self._deadline = now + self._config.first_digit_timeout_s
        return []

    def timer(self, now: float) -> list[Action]:
        if self._deadline is None or now < self._deadline:
            return []
        self._deadline = None
        if self._capture is not None and self._status is Status.ACTIVE:
            return self._failed("no_input")
        return []

    def authorized(self, result: AuthorizationResult, now: float) -> list[Action]:
        if self._status is not Status.PROCESSING:
            return []
        self._auth = result
        self._t_authorized = now
        parts: tuple[PromptPart, ...] = ()
        if not self._hung_up:
            if result.result is Result.APPROVED:
                tokenize = self.transaction.operation is Operation.TOKENIZE
                name = "tokenized" if tokenize else "approved"
                parts = (_part(name, reference=result.reference),)
            elif result.result is Result.DECLINED:
                parts = (_part("declined", reference=result.reference),)
            else:
                parts = (_part("payment_error"),)
        outcome_result = result.result
        if outcome_result not in (Result.APPROVED, Result.DECLINED):
            outcome_result = Result.ERROR
        return self._end(outcome_result, now, parts)

    def hangup(self, now: float) -> list[Action]:
        if self._status is Status.PROCESSING:
            # The payment may go through: its answer is the result (the service always reports
            # authorized(), an error included).
            self._hung_up = True
            self._playing = False
            return []
        if self._status is not Status.ACTIVE:
            return []
        self._hung_up = True
        return self._end(Result.HUNG_UP, now, ())

    # ---- inside ---------------------------------------------------------------------------------

    def _require_active(self) -> None:
        if self._status is not Status.ACTIVE:
            raise Refused("not-active", f"the payment is {self._status}")

    def _complete_field(self, now: float) -> list[Action]:
        field = self._capture
        assert field is not None
        self._deadline = None
        if field == "card":
            failure, brand = check_card_entry(self._entry, self._config.card_brands)
            if failure is not None:
                return self._failed(failure)
            self._pan, self._entry = self._entry, SecretDigits()
            self._brand, self._last4 = brand, self._pan.last(4)
            self._taken["card"] = "dtmf"
            if self._cvc is not None and len(self._cvc) != cvc_length(brand):
                self._drop("cvc")  # keyed before the card: too short or long for this brand
                self._error_type = "invalid-security-code"
        elif field == "expiry":
            failure, month, year = check_expiry_entry(self._entry, self._today)
            if failure is not None:
                return self._failed(failure)
            self._entry.wipe()  # month and year are kept as numbers, as the card carries them
            self._exp_month, self._exp_year = month, year
            self._taken["expiry"] = "dtmf"
        else:
            if self._brand and len(self._entry) != cvc_length(self._brand):
                return self._failed("cvc_invalid")
            self._cvc, self._entry = self._entry, SecretDigits()
            self._taken["security_code"] = "dtmf"
        self._capture = None
        return []

    def _failed(self, prompt: str, *, empty: bool = False) -> list[Action]:
        """A failed attempt: say why and ask again, or stop the capture after max_attempts."""
        field = self._capture
        assert field is not None
        self._entry.wipe()
        self._deadline = None
        self._hash_grace_until = None
        self._capture_failures += 1
        self._failed_total += 1
        self._error_type = _EMPTY_ERROR_TYPES[field] if empty else _ERROR_TYPES[prompt]
        if self._capture_failures >= self._config.max_attempts:
            self._capture = None
            return [self._play((_part(prompt),), barge_in=False)]
        return [self._play((_part(prompt), ask_part(field, self._brand)), barge_in=True)]

    def _drop(self, field: EntryField) -> None:
        """Forget a captured field (wiping its digits)."""
        if field == "card":
            if self._pan is not None:
                self._pan.wipe()
            self._pan = None
            self._brand = self._last4 = ""
        elif field == "expiry":
            self._exp_month = self._exp_year = 0
        elif self._cvc is not None:
            self._cvc.wipe()
            self._cvc = None

    def _end(self, result: Result, now: float, parts: tuple[PromptPart, ...]) -> list[Action]:
        self._wipe()
        self._capture = None
        self._deadline = None
        self._hash_grace_until = None
        self._status = Status.COMPLETE if self._auth is not None else Status.CANCELLED
        actions: list[Action] = []
        if parts:
            actions.append(self._play(parts, barge_in=False))
        elif self._playing:
            self._playing = False
            actions.append(StopPlayback())
        self._outcome = Outcome.of(
            result,
            self._auth,
            brand=self._brand,
            last4=self._last4,
            attempts=self._failed_total + self._authorizations,
            durations=self._durations(now),
            inputs=tuple(self._taken.items()),
        )
        actions.append(Finish(self._outcome))
        return actions

    def _durations(self, end: float) -> tuple[tuple[str, float], ...]:
        capture_end = self._t_authorize if self._t_authorize is not None else end
        phases = [("capture", capture_end - self._t_created)]
        if self._t_authorize is not None and self._t_authorized is not None:
            phases.append(("authorization", self._t_authorized - self._t_authorize))
        phases.append(("payment", end - self._t_created))
        return tuple((name, round(max(0.0, seconds), 3)) for name, seconds in phases)

    def _play(self, parts: tuple[PromptPart, ...], *, barge_in: bool) -> Play:
        self._playing = True
        return Play(parts, barge_in)

    def _wipe(self) -> None:
        self._entry.wipe()
        for buffer in (self._pan, self._cvc):
            if buffer is not None:
                buffer.wipe()
        self._pan = self._cvc = None
        self._exp_month = self._exp_year = 0
