"""The caller's journey as a sans-IO state machine.

This module owns what the caller hears and when, which keys count, the attempt and timeout
rules, and the moment card data is handed to the connector. The key rules of one field
(`field_length`, `hash_failure`, `check_card_entry`, `check_expiry_entry`, `ask_part`) are
module functions, shared with the agent-assisted payment sessions (`spg_media.assist`).
It does no I/O: the call feeds it events with the current time and carries out the actions
it returns.

Theory of operation
===================

The call drives one `Journey` with these events, each taking `now` (seconds, any
monotonic clock) and returning a list of actions to carry out in order:

    start()          once, after the call is answered
    digit(key)       a key press: '0'-'9', '*', '#' ('A'-'D' and anything else are ignored)
    prompt_done()    the last `Play` finished by itself (never for one that was stopped/replaced)
    timer()          `now >= next_wake()`; a spurious early call does nothing
    authorized(r)    the connector answered the last `Authorize` (the call always reports it,
                     an `ERROR` result included, even after the caller hung up)
    hangup()         the caller left
    speech(u)        with voice entry (config.speech): the caller said something (one
                     `Utterance`, its n-best hypotheses); see "Voice entry" below
    speaking()       with voice entry: the caller is talking now (returns nothing; a field's
                     timer due now waits a second more)

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

Voice entry (config.speech, which the call sets only when a recogniser listens to it)
--------------------------------------------------------------------------------------

The field prompts become "key in or say" (`*_speech` prompt names). In a field, an utterance
is decoded under the field's rules (`speech.digits.best_reading`: a card group by brand,
length and Luhn on what was taken so far, given as `cards.rules_surrogate`, never the number
itself; the expiry's window; the code's length), failing that by the words alone (a real but
invalid entry then gets its own failure prompt once confirmed), and, when its confidence
reaches `speech_min_confidence` (0: any reading that fits the rules) or, heard by the words
alone, `speech_min_plain_confidence` (0.5), read back as digit clips ("I heard 4 1 1 1. Is
that right? Say yes or press one, or no or press two."): `heard` holds it meanwhile. Then:

- "yes" or '1': the digits join the field. A card number is taken once it is valid (Luhn,
  brand, length) or as long as its brand allows (then checked as a keyed one is); else "and
  the next digits?". The expiry and the code are then checked exactly as when keyed.
- "no" or '2': dropped. If the same try has a runner-up that fits the field's rules and is at
  least `speech_min_runner_up_confidence` (0.1) sure, it is read back in its place ("Sorry.
  Was it 4 1 1 7? ...", the `heard_instead` prompt): "yes" takes it as above with no failed
  attempt, "no" drops it too. Otherwise, and after a "no" to a runner-up, "please say those
  digits again"; a failed attempt (the card's
  confirmed groups stay; the same group's length is expected again). The tries at the same
  digits add up: the next utterance is read with the earlier ones' hypotheses pooled in, and
  a reading the caller said "no" to is never read back again for them (`best_reading`'s
  `earlier` and `denied`), until the digits are taken, keyed, or the field is started again.
- "start again" or '*': the field is wiped and asked again (never a cancellation).
- "repeat": the read-back (or the field's prompt) again; new digits replace the read-back.
- not sure enough (no reading that fits the rules, none clear by the words alone), or words
  that are no digits: "sorry, I did not understand", a failed attempt (a card's confirmed
  groups and a waiting read-back stay; the next group's length is left open).
- a read-back not answered within `first_digit_timeout_s`: no_input, asked again, a failed
  attempt. The other timers and `max_attempts` are the keypad's.

Keys and speech mix freely: a key is always taken as on the keypad, except that '1', '2' and
'*' answer a read-back; any other key drops a read-back not yet answered (keys win), and an
utterance that began before the latest key press is ignored. `expected_digits()` tells the
call how many digits the next words should hold (the card's printed groups: 4-6-5 for
American Express, fours otherwise; the expiry's or code's remaining digits; None after a card
group was not understood or timed out, so the caller may group as they like; after a "no" the
same group again), for the recogniser's grammar. In
CONFIRM, "yes"/"no"/"start again" answer as '1'/'2'. Outcome.inputs says how each field
taken came: dtmf, speech, or mixed (both in one field; a read-back confirmed by '1' is speech).
Speech is never on in agent-assisted mode (JourneyConfig.speech defaults to False).

Card data: digits are kept in `SecretDigits` buffers only while they are needed. A buffer of an
abandoned entry (failed, cleared by '*', restarted with '2') is wiped at once; when the card is
handed over in `Authorize`, the journey drops its references (the call owns and wipes the card);
on every way out all remaining buffers are wiped. The confirm prompt gets its own copy of the
expiry digits, a read-back its own copy of the digits heard. No action or outcome repr shows
more than brand and last four.
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
    possible_lengths,
    rules_surrogate,
)
from spg_media.payment.model import (
    AuthorizationResult,
    CardData,
    Operation,
    Result,
    SecretDigits,
    TransactionInfo,
)
from spg_media.speech.digits import answer_of, best_reading, words_to_digits
from spg_media.speech.model import Utterance

# A stuck or playful '9' must not keep the call in the IVR forever.
MAX_RESULT_REPEATS = 5

EXPIRY_LENGTH = 4
DIGITS = frozenset("0123456789")
KEYS = DIGITS | {"*", "#"}
# Keys that answer a read-back of spoken digits, as the words would.
_READBACK_KEYS = {"1": "yes", "2": "no", "*": "start-again"}
# A card number is said in the groups printed on the card: American Express 4-6-5, the
# others fours (and three for the last of a 19-digit number).
CARD_GROUPS = (4, 4, 4, 4, 3)
AMEX_GROUPS = (4, 6, 5)
SPEECH_HOLD_S = 1.0  # a field's timer waits this long again while the caller is talking
# What the recogniser is asked for in each field (the constraints it applies).
_SPOKEN_FIELD = {"card": "card-group", "expiry": "expiry", "security_code": "code"}


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
    # How each field that was taken was entered: ("card" | "expiry" | "security_code",
    # "dtmf" | "speech" | "mixed"), in the order they were taken.
    inputs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        result: Result,
        auth: AuthorizationResult | None,
        *,
        brand: str,
        last4: str,
        attempts: int,
        durations: tuple[tuple[str, float], ...],
        inputs: tuple[tuple[str, str], ...],
    ) -> Outcome:
        """The outcome of a payment ending with `result`, the platform's answer `auth` (if
        one came) giving its reference, codes and token."""
        return cls(
            result=result,
            reference=auth.reference if auth else "",
            authorization_code=auth.authorization_code if auth else "",
            card_token=auth.card_token if auth else "",
            brand=brand,
            last4=last4,
            attempts=attempts,
            decline_code=auth.decline_code if auth else "",
            durations=durations,
            inputs=inputs,
        )


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
    # Voice entry: the caller may also say the digits (the call turns it on only where a
    # recogniser listens to this call: `ivr.input = "dtmf speech"`, a language with a model,
    # a recognition slot free, and never in agent-assisted mode).
    speech: bool = False
    # A reading that fits the field's rules is read back when at least this sure, one heard
    # by the words alone (it breaks them) when at least `speech_min_plain_confidence`; else
    # "sorry, I did not understand". That costs the attempt a "no" to a wrong read-back costs,
    # and the read-back of a right reading takes it, so any reading that fits is read back
    # (at 0.5, 4 readings in 10 that were right went unread on the speech bench, most
    # payments failing for it: bench/RESULTS.md "Voice entry").
    speech_min_confidence: float = 0.0
    speech_min_plain_confidence: float = 0.5
    # After a "no" to a read-back, the same try's next reading that fits the rules is read
    # back in its place when at least this sure ("was it ...?"), before the caller is asked
    # to say the digits again: the right reading is often the recogniser's second. A wrong
    # one costs the caller a question but no attempt; below 0.1 they were nearly all wrong
    # (bench/RESULTS.md "Voice entry": 0.1 kept 99 of 111 right runner-ups, 423 of 492
    # wrong ones; 0.2, 69 and 209, and fewer payments).
    speech_min_runner_up_confidence: float = 0.1


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


class _Denied:
    """Readings the caller said "no" to, as `SecretDigits` (wiped when forgotten); `in` tells
    whether a reading is one of them without making a string of them."""

    def __init__(self) -> None:
        self._readings: list[SecretDigits] = []

    def append(self, reading: SecretDigits) -> None:
        self._readings.append(reading)

    def __contains__(self, digits: object) -> bool:
        return isinstance(digits, str) and any(r.matches(digits) for r in self._readings)

    def __repr__(self) -> str:
        # A fixed text: the default one carries a memory address, whose hex digits can look
        # like part of a card to a leak search.
        return f"<denied readings: {len(self._readings)}>"

    def wipe(self) -> None:
        for reading in self._readings:
            reading.wipe()
        self._readings = []


def _plain_reading(
    utterance: Utterance, length: int | None, denied: _Denied | None = None
) -> tuple[str, float] | None:
    """The digits most probably said (of `length`, when given), by no rule but the words, and
    their share of the utterance's probability (never a reading the caller said "no" to)."""
    pooled: dict[str, float] = {}
    for hypothesis, posterior in zip(utterance.hypotheses, utterance.posteriors(), strict=True):
        digits = words_to_digits(hypothesis.words)
        if denied is not None and digits in denied:
            continue
        if digits is not None and (length is None or len(digits) == length):
            pooled[digits] = pooled.get(digits, 0.0) + posterior
    if not pooled:
        return None
    return max(pooled.items(), key=lambda item: item[1])


def _part(name: str, **params: ParamValue) -> PromptPart:
    return PromptPart(name, tuple(params.items()))


# ---- the machine -----------------------------------------------------------------------------


class Journey:
    """One caller's way from the announcement to the result. See the module docstring."""

    # Slots: one journey per call in progress, and 34 attributes overflow a shared-key __dict__.
    __slots__ = (
        "_auth", "_authorizations", "_brand", "_closing_result", "_config", "_cvc",
        "_deadline", "_denied", "_entry", "_entry_inputs", "_exp_month", "_exp_year", "_expiry",
        "_failed_total", "_failure", "_field_failures", "_free_grouping", "_hash_grace_until",
        "_heard", "_inputs", "_last4", "_last_key_at", "_outcome", "_pan", "_playing",
        "_repeats", "_result_parts", "_runner_up", "_speech", "_state", "_t_authorize",
        "_t_authorized", "_t_entry", "_t_start", "_today", "_transaction", "_tries", "_tries_at",
    )  # fmt: skip

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

        # Voice entry (config.speech): spoken digits read back and waiting for yes or no, how
        # the digits of the entry came (dtmf, speech), and how each field taken was entered.
        self._speech = config.speech
        self._heard: SecretDigits | None = None
        self._runner_up = False  # `heard` is a runner-up, read back after a "no" to the first
        self._entry_inputs: set[str] = set()
        self._inputs: dict[str, str] = {}
        self._last_key_at: float | None = None
        self._free_grouping = False  # a card group failed: the next may have any length
        # The tries at the digits asked now (state, digits taken): the utterances said for
        # them and the readings the caller said "no" to, pooled and excluded next time.
        self._tries_at: tuple[State, int] | None = None
        self._tries: list[Utterance] = []
        self._denied = _Denied()

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
        return [self._play((self._announcement(), self._ask()), barge_in=True)]

    def digit(self, key: str, now: float) -> list[Action]:
        if key not in KEYS:
            return []
        self._last_key_at = now
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
            # Keys typed during the prompt already run the inter-digit timer; otherwise the
            # caller now has the first-digit time to key, to say the next digits, or to answer
            # a read-back.
            if self._deadline is None:
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
            # An unanswered read-back keeps what was said: it is asked again.
            return self._failed(now, "no_input", keep=self._heard is not None)
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
        elif self._heard is not None and key in _READBACK_KEYS:
            actions += self._answer_heard(_READBACK_KEYS[key], now)
        elif key == "*":
            actions += self._cancel() if len(self._entry) == 0 else self._clear()
        elif key == "#":
            self._drop_heard()
            actions += self._hash(now)
        else:
            self._drop_heard()  # keys win: what was said and not yet confirmed is dropped
            self._forget_tries()
            self._entry.append(key)
            self._entry_inputs.add("dtmf")
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
        self._take_inputs("card")
        self._brand = brand
        self._last4 = self._pan.last(4)
        return self._ask_next(State.EXPIRY)

    def _complete_expiry(self, now: float) -> list[Action]:
        failure, month, year = check_expiry_entry(self._entry, self._today)
        if failure is not None:
            return self._failed(now, failure)
        self._expiry, self._entry = self._entry, SecretDigits()
        self._take_inputs("expiry")
        self._exp_month, self._exp_year = month, year
        return self._ask_next(State.CVC)

    def _complete_cvc(self, now: float) -> list[Action]:
        self._cvc, self._entry = self._entry, SecretDigits()
        self._take_inputs("security_code")
        if self._config.confirm:
            return self._ask_next(State.CONFIRM)
        return self._authorize(now)

    def _confirm_key(self, key: str, now: float) -> list[Action]:
        if key == "1":
            return self._authorize(now)
        if key == "2":
            self._wipe_card()
            self._brand = self._last4 = ""
            self._inputs.clear()
            self._field_failures.clear()  # a fresh start; the total still counts them
            self._deadline = None
            return self._ask_next(State.CARD)
        if key == "*":
            return self._cancel()
        return self._failed(now, "confirm_invalid")

    # ---- voice entry --------------------------------------------------------------------------

    def speech(self, utterance: Utterance, now: float) -> list[Action]:
        """The caller said something (one utterance, its n-best hypotheses)."""
        if not self._speech or self._state not in FIELD_STATES:
            return []
        if self._last_key_at is not None and self._last_key_at >= utterance.started:
            return []  # a key pressed while the caller spoke (or since) wins
        self._hash_grace_until = None
        actions: list[Action] = []
        if self._playing:
            self._playing = False
            actions.append(StopPlayback())
        answer = answer_of(utterance)
        if self._state is State.CONFIRM:
            key = {"yes": "1", "no": "2", "start-again": "2"}.get(answer or "")
            if key is not None:
                return actions + self._confirm_key(key, now)
            if answer == "repeat":
                self._deadline = None
                return [*actions, self._play((self._ask(),), barge_in=True)]
            return actions + self._failed(now, "not_understood")
        if answer == "repeat":
            self._deadline = None
            return [*actions, self._play((self._again(),), barge_in=True)]
        if answer is not None and (self._heard is not None or answer == "start-again"):
            return actions + self._answer_heard(answer, now)
        digits = self._reading(utterance)
        self._tries.append(utterance)  # evidence for the next try at the same digits
        if digits is None:
            # Kept: the card's digits confirmed so far, a read-back waiting for its answer.
            keep = self._heard is not None or self._state is State.CARD
            return actions + self._failed(now, "not_understood", keep=keep)
        self._drop_heard()  # a new reading replaces one not yet answered
        self._heard = digits
        self._runner_up = False
        self._deadline = None
        return [*actions, self._play((self._read_back(),), barge_in=True)]

    def expected_digits(self) -> int | None:
        """How many digits the caller's next words should hold, for the recogniser (a grammar
        of that length rules out its commonest errors, digits inserted or dropped); None: any
        number. A card number goes by the groups printed on it; after a group went wrong
        (not understood, a timeout; not after a "no" to a read-back, which showed the grouping)
        the next may be grouped as the caller likes."""
        if not self._speech or self._state not in (State.CARD, State.EXPIRY, State.CVC):
            return None
        taken = len(self._entry)
        if self._state is not State.CARD:
            remaining = self._field_length() - taken
            return remaining if remaining > 0 else None
        return None if self._free_grouping else self._printed_group()

    def _printed_group(self) -> int | None:
        """The length of the card number's next group as printed on the card; None when keyed
        digits left the number between groups."""
        taken = len(self._entry)
        groups = (
            AMEX_GROUPS
            if taken and possible_lengths(self._entry.prefix(6)) == {15}
            else CARD_GROUPS
        )
        end = 0
        for group in groups:
            if end == taken:
                return group
            end += group
        return None

    def speaking(self, now: float) -> None:
        """The caller is talking (the recogniser hears speech): a field's timer due now waits
        SPEECH_HOLD_S more, so a caller is not cut off mid-sentence; what they said decides."""
        if self._speech and self._state in FIELD_STATES and self._deadline is not None:
            self._deadline = max(self._deadline, now + SPEECH_HOLD_S)

    def _field_name(self) -> str:
        if self._state is State.CARD:
            return "card"
        return "expiry" if self._state is State.EXPIRY else "security_code"

    def _reading(self, utterance: Utterance) -> SecretDigits | None:
        """The digits the caller most likely said for this field, or None when nothing is
        sure enough to read back. First under the field's rules (a card group: brand, length,
        and Luhn once it can complete the number; the expiry's window; the code's length);
        failing that, what was heard all the same: the caller says "no" to a mishearing, and a
        real but invalid entry, once confirmed, gets its own failure prompt as keyed."""
        if self._tries_at != (self._state, len(self._entry)):
            self._forget_tries()  # other digits asked now: the tries so far were at others
            self._tries_at = (self._state, len(self._entry))
        return self._best_of(utterance, self._tries, plain=True)

    def _runner_up_reading(self) -> SecretDigits | None:
        """After a "no": the last try's next reading that fits the field's rules (the one
        denied now excluded), when at least `speech_min_runner_up_confidence` sure."""
        if not self._tries or self._tries_at != (self._state, len(self._entry)):
            return None
        return self._best_of(
            self._tries[-1],
            self._tries[:-1],
            plain=False,
            least=self._config.speech_min_runner_up_confidence,
        )

    def _best_of(
        self,
        utterance: Utterance,
        earlier: list[Utterance],
        *,
        plain: bool,
        least: float | None = None,
    ) -> SecretDigits | None:
        """`_reading`'s choice for `utterance` with `earlier` tries pooled in and the denied
        readings left out; `plain`: failing the rules, by the words alone; `least`: the
        confidence a reading that fits the rules needs (default `speech_min_confidence`)."""
        remaining = self._field_length() - len(self._entry)
        if remaining <= 0:
            return None
        denied = self._denied
        field = self._field_name()
        # (digits, confidence, the least confidence to read them back at)
        candidates: list[tuple[str, float, float]] = []
        checked = self._config.speech_min_confidence if least is None else least
        if field == "card":
            # The group printed next on the card first, even when the grammar was left open
            # after a try not understood (the caller most likely says one again), then any.
            group = self._printed_group()
            lengths: tuple[int | None, ...] = (group, None) if group is not None else (None,)
            # The card's rules judge the digits heard after those taken; they are given a
            # stand-in for those (same brand, length and Luhn sums), never the number.
            prefix = rules_surrogate(self._entry)
            for length in lengths:
                reading = best_reading(
                    utterance,
                    "card-group",
                    expected_length=length,
                    prefix=prefix,
                    earlier=earlier,
                    denied=denied,
                )
                if reading is not None and reading.valid:
                    candidates.append((reading.digits, reading.confidence, checked))
        else:
            lengths = (remaining,)
            if not len(self._entry):  # a whole expiry or code (not the rest of a keyed one)
                reading = best_reading(
                    utterance,
                    _SPOKEN_FIELD[field],
                    expected_length=remaining,
                    today=self._today,
                    earlier=earlier,
                    denied=denied,
                )
                if reading is not None and reading.valid:
                    candidates.append((reading.digits, reading.confidence, checked))
        if plain:
            for length in lengths:
                heard = _plain_reading(utterance, length, denied)
                if heard is not None:
                    candidates.append((*heard, self._config.speech_min_plain_confidence))
        for digits, confidence, least in candidates:
            if confidence < least:
                continue
            if not 1 <= len(digits) <= remaining:
                continue
            if field != "card" and len(digits) != remaining:
                continue
            try:
                return SecretDigits(digits)
            except ValueError:
                continue
        return None

    def _read_back(self) -> PromptPart:
        assert self._heard is not None
        group = 2 if self._state is State.EXPIRY and len(self._heard) == EXPIRY_LENGTH else 4
        # The prompt owns its copy (whoever renders it may wipe it).
        name = "heard_instead" if self._runner_up else "heard"
        return _part(name, digits=self._heard.copy(), group=group)

    def _answer_heard(self, answer: str, now: float) -> list[Action]:
        """yes / no / start again, said or keyed (1, 2, *), to a read-back."""
        if answer == "start-again":
            return self._clear()  # never a cancellation, even on an empty field
        if self._heard is None:
            return self._failed(now, "not_understood", keep=self._state is State.CARD)
        if answer == "no":
            self._denied.append(self._heard.copy())  # never read back again for these digits
            was_runner_up = self._runner_up
            self._drop_heard()
            self._deadline = None
            if not was_runner_up:
                runner_up = self._runner_up_reading()
                if runner_up is not None:  # "was it ...?": part of the same try, no failure
                    self._heard, self._runner_up = runner_up, True
                    return [self._play((self._read_back(),), barge_in=True)]
            # "say those digits again": the read-back showed the grouping, the same length is
            # expected (at an open length Whisper's digits would be pocketsphinx's: fewer
            # payments and more CPU on the speech bench)
            if self._count_failure(free_grouping=False):
                return self._too_many_attempts()
            return [self._play((_part("say_again"),), barge_in=True)]
        if answer != "yes":
            return self._failed(now, "not_understood", keep=True)
        heard, self._heard = self._heard, None
        self._runner_up = False  # (not _drop_heard: the digits are taken, not wiped)
        self._forget_tries()  # these digits are taken: the tries at them are done with
        for digit in heard.characters():
            self._entry.append(digit)
        heard.wipe()
        self._entry_inputs.add("speech")
        self._free_grouping = False
        self._deadline = None
        if self._state is State.CARD:
            taken = len(self._entry) >= PAN_MIN_LENGTH and (
                check_pan(self._entry, self._config.card_brands).check is PanCheck.OK
                or len(self._entry) >= max(possible_lengths(self._entry.prefix(6)), default=0)
            )
        else:
            taken = len(self._entry) >= self._field_length()
        if taken:
            return self._complete(now)
        return [self._play((_part("next_digits"),), barge_in=True)]

    def _drop_heard(self) -> None:
        self._runner_up = False
        if self._heard is not None:
            self._heard.wipe()
            self._heard = None

    def _forget_tries(self) -> None:
        self._tries = []
        self._denied.wipe()
        self._tries_at = None

    def _ask(self) -> PromptPart:
        """The prompt asking for the current field ("key or say" with voice entry)."""
        spoken = "_speech" if self._speech else ""
        if self._state in _FIELD_OF_STATE:
            part = ask_part(self._field(), self._brand)
            return PromptPart(part.name + spoken, part.params)
        assert self._expiry is not None
        # The prompt owns its copy: whoever renders it may wipe it, ours stays until Authorize.
        return _part("confirm" + spoken, last4=self._last4, expiry=self._expiry.copy())

    def _again(self) -> PromptPart:
        """What to ask after a failure that kept the entry: the read-back waiting for its
        answer, the next digits of a card number begun, else the field."""
        if self._heard is not None:
            return self._read_back()
        if self._speech and self._state is State.CARD and len(self._entry):
            return _part("next_digits")
        return self._ask()

    def _ask_next(self, state: State) -> list[Action]:
        self._goto(state)
        self._deadline = None
        return [self._play((self._ask(),), barge_in=True)]

    def _clear(self) -> list[Action]:
        """'*' on a field with digits, or "start again": wipe it and ask for it again."""
        self._wipe_entry()
        self._forget_tries()
        self._deadline = None
        return [self._play((self._ask(),), barge_in=True)]

    def _failed(self, now: float, prompt: str, *, keep: bool = False) -> list[Action]:
        """A failed attempt on the current field: say why and ask again, or give up. `keep`:
        the entry (digits said and confirmed, a read-back waiting) stays, and is asked on."""
        if not keep:
            self._wipe_entry()
        self._deadline = None
        if self._count_failure():
            return self._too_many_attempts()
        parts = (_part(prompt), self._again())
        return [self._play(parts, barge_in=True)]

    def _count_failure(self, *, free_grouping: bool = True) -> bool:
        """Count a failed attempt on the current field; True when that was the last allowed.
        `free_grouping`: a card's next words may be grouped as the caller likes."""
        self._free_grouping = free_grouping and self._state is State.CARD
        count = self._field_failures.get(self._state, 0) + 1
        self._field_failures[self._state] = count
        self._failed_total += 1
        return count >= self._config.max_attempts

    def _too_many_attempts(self) -> list[Action]:
        return self._close(Result.TOO_MANY_ATTEMPTS, (_part("too_many_attempts"), _part("goodbye")))

    def _wipe_entry(self) -> None:
        self._entry.wipe()
        self._entry_inputs.clear()
        self._drop_heard()

    def _take_inputs(self, field: str) -> None:
        """The field was taken: remember how its digits came (keys, voice or both)."""
        inputs = self._entry_inputs
        self._inputs[field] = "mixed" if len(inputs) > 1 else next(iter(inputs), "dtmf")
        self._entry_inputs = set()

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
        self._outcome = Outcome.of(
            result,
            self._auth,
            brand=self._brand,
            last4=self._last4,
            attempts=self._failed_total + self._authorizations,
            durations=self._durations(now),
            inputs=tuple(self._inputs.items()),
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
        self._forget_tries()

    def _wipe_card(self) -> None:
        """Wipe every card digit the journey still holds (not one handed to `Authorize`)."""
        self._entry.wipe()
        self._drop_heard()
        self._forget_tries()
        for buffer in (self._pan, self._expiry, self._cvc):
            if buffer is not None:
                buffer.wipe()
        self._pan = self._expiry = self._cvc = None
        self._exp_month = self._exp_year = 0
