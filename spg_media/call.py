"""One payment call, from the transferred INVITE to the BYE, readable top to bottom.

`Call.run()` is the whole story: read the handoff (the `X-SPG-*` headers), negotiate media, look the
transaction up, answer, run the caller's journey, record the result (CDR, callback), and send the
caller back with REFER, or end with BYE. The SIP side of the call is its `InviteSession`
(`sip/invite_session.py`: the answer, the ACK wait, re-INVITE/UPDATE, the session timer, BYE,
CANCEL) run by a `SessionLeg`, to which the UA routes the dialog's requests by Call-ID.

The journey reads as session events → journey → actions: whatever happens to the call (the
session's events, key presses, utterances, prompt ends, the journey's timer, the connector's
answer) becomes one typed item of the call's inbox (`InboxItem`), `_feed` hands each to the
`Journey` (a sans-IO machine), and `_apply` carries out the actions it returns. Authorisations
go through `payment/authorization.py`, as agent-assisted ones do.

Card digits exist here only inside the journey and the `Authorize` action handed to the connector.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import heapq
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, unquote

import numpy as np

from spg_media.cdr import CallbackSender, CallRecord, CdrWriter
from spg_media.config import Config
from spg_media.dtmf.merge import DtmfMerger
from spg_media.dtmf.rfc4733 import DtmfEvent
from spg_media.dtmf.sipinfo import parse_info_dtmf
from spg_media.observability import (
    CALLS_ACTIVE,
    CALLS_REJECTED_TOTAL,
    CALLS_TOTAL,
    DTMF_DIGITS_TOTAL,
    DTMF_LATENCY_SECONDS,
)
from spg_media.payment.authorization import authorization_bound_s, authorize_journaled
from spg_media.payment.connectors import Connector, ConnectorError
from spg_media.payment.journal import PaymentJournal
from spg_media.payment.journey import (
    FIELD_STATES,
    Action,
    Authorize,
    Finish,
    Journey,
    JourneyConfig,
    Outcome,
    Play,
    StopPlayback,
)
from spg_media.payment.model import AuthorizationResult, ChargeState, Result, TransactionInfo
from spg_media.payment.signing import handoff_canonical, parse_signature, verify_handoff
from spg_media.rtp.g711 import decode_array
from spg_media.rtp.prompts import EncodedClips, PromptPackets, shared_key
from spg_media.rtp.session import MediaEngine, MediaSession, in_sources
from spg_media.rtp.srtp import SrtpContext
from spg_media.sip import session_timer
from spg_media.sip.invite_session import (
    Acked,
    Cancelled,
    Ended,
    Event,
    InDialogRequest,
    InviteSession,
    Refusal,
)
from spg_media.sip.leg import SessionLeg
from spg_media.sip.limits import address_in, parse_networks
from spg_media.sip.message import SipRequest, new_tag
from spg_media.sip.sdp import (
    PLAIN_PROTOS,
    SRTP_PROTOS,
    NegotiatedAudio,
    NotAcceptable,
    SdpError,
    SessionDescription,
    build_answer,
    negotiate,
)
from spg_media.sip.transaction import Address
from spg_media.sip.ua import SipUserAgent
from spg_media.sip.uri import NameAddr, SipSyntaxError, SipUri
from spg_media.speech import SpeechEngine, SpeechInput, Utterance, speech_available
from spg_media.speech.recogniser import DEFAULT_RECOGNISER
from spg_media.tts.phrases import SPEECH_LANGUAGES, SUPPORTED_LANGUAGES
from spg_media.tts.prompts import PromptLibrary

log = logging.getLogger("spg.call")

HANDOFF_HEADERS = (
    "X-SPG-Transaction",
    "X-SPG-Return-To",
    "X-SPG-Language",
    "X-SPG-Callback",
    "X-SPG-Signature",
)
LOOKUP_TIMEOUT_S = 5.0
NOTIFY_WAIT_S = 32.0
# Beyond the connector's own timeout and reconciliation window, before giving up on it.
MAX_SEEN_HANDOFFS = 100_000


@dataclass
class Handoff:
    """The X-SPG-* values of the transferred INVITE: headers first, then R-URI parameters."""

    transaction: str | None = None
    return_to: str | None = None
    language: str | None = None
    callback: str | None = None
    signature: str | None = None

    @classmethod
    def from_invite(cls, invite: SipRequest) -> Handoff:
        try:
            uri_params = SipUri.parse(invite.uri).params
        except SipSyntaxError:
            uri_params = {}
        values: list[str | None] = []
        for name in HANDOFF_HEADERS:
            value = invite.headers.get(name)
            if value is None:
                param = uri_params.get(name.lower())
                value = unquote(param) if param else None
            values.append(value.strip() if value else None)
        return cls(*values)


def refer_to_uri(target: str, result: Result, reference: str = "") -> SipUri:
    """The Refer-To URI that sends the caller back to `target` with the result.

    The result and reference go twice: as URI parameters (`x-spg-result`, `x-spg-reference`),
    which survive a PBX that keeps only the URI (Asterisk's `SIPREFERTOHDR` drops `?headers`;
    FreeSWITCH passes the parameters on as `X-FS-Refer-Params`), and as `?headers`, which a
    phone following the REFER copies into its INVITE.
    """
    uri = SipUri.parse(target)
    uri.params["x-spg-result"] = str(result)
    uri.headers["X-SPG-Result"] = str(result)
    if reference:
        # the platform's reference is free text: escaped to what a URI parameter may hold
        uri.params["x-spg-reference"] = quote(reference, safe=_PARAM_SAFE)
        uri.headers["X-SPG-Reference"] = reference
    return uri


# RFC 3261 param-unreserved and unreserved marks: what a URI parameter value holds unescaped
_PARAM_SAFE = "-_.!~*'()[]/:&+$"


class SeenHandoffs:
    """Signed handoffs already accepted, so that one cannot be used for a second call.

    A handoff signature is valid for `max_age_s` around its `t`; an accepted one is kept until
    then (`t + max_age_s`), keyed by a hash of what it signs (t, Call-ID, transaction, return
    URI, callback), so neither another formatting of the header nor extra `v1` values make a
    replay look new. Only verified handoffs are kept, so only a holder of the signing secret can
    fill it; past `limit` the ones that expire first are forgotten.
    """

    def __init__(self, limit: int = MAX_SEEN_HANDOFFS) -> None:
        self.limit = limit
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def first_use(self, signed: bytes, expires_at: float, now: float) -> bool:
        """True (and remembered) the first time `signed` is seen; False for a replay."""
        while self._heap and self._heap[0][0] < now:
            _, digest = heapq.heappop(self._heap)
            self._expiry.pop(digest, None)
        digest = hashlib.sha256(signed).digest()
        if digest in self._expiry:
            return False
        self._expiry[digest] = expires_at
        heapq.heappush(self._heap, (expires_at, digest))
        if len(self._expiry) > self.limit:
            _, oldest = heapq.heappop(self._heap)
            self._expiry.pop(oldest, None)
        return True


# ---- what can happen to a call: the items of its inbox ------------------------------------------


@dataclass(frozen=True)
class CallerAcked:
    """The ACK for our 200: the caller is there."""


@dataclass(frozen=True)
class SessionOver:
    """The session ended without our asking: CANCEL before the answer, the caller's BYE, no
    ACK for our 200, the session expired or its refresh failed (the session logged which)."""


@dataclass(frozen=True)
class KeyPressed:
    """A key the DTMF merger let through (RFC 4733, in-band or INFO), and when the press
    reached the node (for `spg_dtmf_latency_seconds`)."""

    digit: str
    source: str
    arrived_at: float


@dataclass(frozen=True)
class Spoken:
    """An utterance of voice entry's recogniser (what was said stays between it and the
    journey)."""

    utterance: Utterance


@dataclass(frozen=True)
class PromptDone:
    """The media session played a prompt to its end; `generation` tells a stale one (a later
    `Play` or `StopPlayback` came) from the current one."""

    generation: int


@dataclass(frozen=True)
class TimerDue:
    """The journey's `next_wake()` came with nothing else in the inbox."""


@dataclass(frozen=True)
class AuthorizationAnswered:
    """The connector's answer to the journey's `Authorize` (journaled, card wiped)."""

    result: AuthorizationResult


@dataclass(frozen=True)
class TransferNotify:
    """A NOTIFY of the REFER subscription (already answered 200 by the session)."""

    request: SipRequest


InboxItem = (
    CallerAcked | SessionOver | KeyPressed | Spoken | PromptDone | TimerDue
    | AuthorizationAnswered | TransferNotify
)  # fmt: skip


class Inbox:
    """A call's items, first in first out, for one reader (the call's task): `put_nowait`
    from callbacks, `await get()`, and `get_until(deadline)`, None when the loop's clock
    reaches `deadline` first (at once when it has: the timer before what waits). Lighter than
    an `asyncio.Queue` (three deques and an Event, ~2.5 KiB a call) under `wait_for` (a task
    for every wait): a list, and a future with a timer while the reader waits."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[InboxItem] = []
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: InboxItem) -> None:
        self._items.append(item)
        _wake(self._waiter)

    def get_nowait(self) -> InboxItem:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> InboxItem:
        item = await self.get_until(None)
        assert item is not None
        return item

    async def get_until(self, deadline: float | None) -> InboxItem | None:
        loop = asyncio.get_running_loop()
        if deadline is not None and loop.time() >= deadline:
            return None
        while not self._items:
            waiter = self._waiter = loop.create_future()
            timer = None if deadline is None else loop.call_at(deadline, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._items:
                return None  # the deadline
        return self._items.pop(0)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class ActiveCall(Protocol):
    """A call in progress as the server sees it: an IVR `Call` or an assisted call."""

    def summary(self) -> dict[str, Any]: ...


@dataclass
class CallServices:
    """What every call shares: the process's UA, media, prompts, connector and records."""

    config: Config
    ua: SipUserAgent
    media: MediaEngine
    prompts: PromptLibrary
    connector: Connector
    cdr: CdrWriter
    callbacks: CallbackSender
    calls: dict[str, ActiveCall] = field(default_factory=dict)  # by the customer's Call-ID
    observer: Callable[[str, str, dict[str, Any]], None] | None = None  # (call_id, kind, details)
    # Written before every authorisation request; None only in tests that send none.
    journal: PaymentJournal | None = None
    seen_handoffs: SeenHandoffs = field(default_factory=SeenHandoffs)
    # Voice entry's recognisers (with ivr.input = "dtmf speech"); None: keys only.
    speech: SpeechEngine | None = None
    # What outlives its call (callback retries): the server waits for them when it stops.
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    # Prompts cut into RTP payloads, shared by the calls that play them.
    prompt_packets: PromptPackets = field(default_factory=PromptPackets)
    # The clips of the prompts a call plays alone, encoded once per codec (`rtp.prompts`).
    prompt_clips: EncodedClips = field(default_factory=EncodedClips)


class Call:
    """One call; see the module docstring."""

    # Slots: a thousand calls at once, and 30 attributes overflow a shared-key __dict__.
    __slots__ = (
        "_authorizing", "_play_generation", "_tasks", "call_id", "charge_state", "config",
        "handoff", "inbox", "invite", "language", "leg", "local_tag", "marks", "media",
        "merger", "negotiated", "outcome", "phase", "return_to_trusted", "rtp_port",
        "sdp_version", "services", "session", "session_id", "source", "speech_input",
        "started_at", "transaction", "transport", "ua",
    )  # fmt: skip

    def __init__(self, services: CallServices, invite: SipRequest, source: Address) -> None:
        self.services = services
        self.config = services.config
        self.ua = services.ua
        self.invite = invite
        self.source = source
        self.call_id = invite.call_id
        self.transport = source.transport
        self.inbox = Inbox()
        self.media: MediaSession | None = None
        self.rtp_port: int | None = None
        self.negotiated: NegotiatedAudio | None = None
        self.sdp_version = 1
        self.session_id = random.randint(1, 2**31)
        self.local_tag = new_tag()
        self.session = InviteSession.as_uas(
            invite,
            local_tag=self.local_tag,
            via_transport=self.transport,
            answer_offer=self._answer_offer,
            public_host=self.config.sip.public_host,
        )
        self.leg = SessionLeg(self.ua, self.session, source, self._on_session_event)
        self.handoff = Handoff.from_invite(invite)
        self.transaction: TransactionInfo | None = None
        self.language = self.config.ivr.language
        self.merger = DtmfMerger(inband_mode=self.config.dtmf.inband)  # type: ignore[arg-type]
        self.started_at = datetime.datetime.now(datetime.UTC)
        self.outcome: Outcome | None = None
        self.phase = "setup"
        self.marks: dict[str, float] = {"invite": time.monotonic()}
        self._play_generation = 0
        self._tasks: set[asyncio.Task[Any]] = set()  # cancelled when the call ends
        # Never cancelled: an authorisation finishes its journal line whatever the call does.
        self._authorizing: set[asyncio.Task[Any]] = set()
        self.charge_state = ChargeState.NOT_CHARGED  # until an authorisation says otherwise
        self.return_to_trusted = True  # False when the handoff's signature fails
        self.speech_input: SpeechInput | None = None  # voice entry's recogniser, while it listens

    # What the call knows of its dialog is its session's.
    @property
    def answered(self) -> bool:
        """Our 200 went to the INVITE."""
        return self.session.answered

    @property
    def hung_up(self) -> bool:
        """The dialog is over (either side's BYE, no ACK, session expired), or never was."""
        return self.session.ended

    # ---- the story --------------------------------------------------------------------------

    def register(self) -> None:
        """Claim the Call-ID: the UA routes its requests here from now on, and refuses another
        INVITE with it (482). The server calls this when the INVITE arrives, before the call's
        task first runs, so two INVITEs in one read cannot both start a call."""
        self.services.calls[self.call_id] = self
        self.ua.dialogs[self.call_id] = self.leg

    def unregister(self) -> None:
        """Give the Call-ID back (idempotent; never another call's registration)."""
        if self.ua.dialogs.get(self.call_id) is self.leg:
            del self.ua.dialogs[self.call_id]
        if self.services.calls.get(self.call_id) is self:
            del self.services.calls[self.call_id]

    async def run(self) -> None:
        self.register()
        CALLS_ACTIVE.inc()
        try:
            await self._run()
        except Exception:
            log.exception("call failed", extra={"call_id": self.call_id})
            if self.outcome is None:  # a bug of ours: the call still has a result
                self._end_early(Result.ERROR)
            if self.session.state == "early":
                with contextlib.suppress(Exception):  # the INVITE still gets a final answer
                    self._reject(500, "Server Internal Error", "internal error")
            if self.answered and not self.hung_up:
                with contextlib.suppress(Exception):
                    await self._bye(self._result_headers(Result.ERROR))
        finally:
            self._cleanup()

    async def _run(self) -> None:
        # 1. Media offer: refuse what we cannot answer before doing anything else.
        if not self._negotiate_offer():
            return
        timer = session_timer.negotiate(self.invite.headers, asyncio.get_running_loop().time())
        if isinstance(timer, session_timer.TooSmall):
            self._reject(
                422, "Session Interval Too Small", "session interval too small",
                timer.response_headers(),
            )  # fmt: skip
            return

        # 2. The handoff and the transaction it names.
        failure = self._check_handoff()
        if failure is None:
            failure = await self._lookup()
        if self.hung_up:  # the caller cancelled while it rang: still a result to record
            self._end_early(Result.HUNG_UP)
            return
        self.language = prompt_language(
            self.handoff.language or "",
            (self.transaction.language if self.transaction is not None else None) or "",
            self.config.ivr.language,
        )

        # 3. Answer.
        unanswered = await self._answer(timer)
        if unanswered is None and self.hung_up:  # the caller gone before the journey began
            unanswered = Result.HUNG_UP
        if unanswered is not None:
            self._end_early(unanswered)
            return

        # 4. The caller's journey.
        self.phase = "journey"
        self._emit("answered", language=self.language)
        journey = Journey(
            JourneyConfig(
                first_digit_timeout_s=self.config.ivr.first_digit_timeout_s,
                inter_digit_timeout_s=self.config.ivr.inter_digit_timeout_s,
                max_attempts=self.config.ivr.max_attempts,
                confirm=self.config.ivr.confirm,
                card_brands=tuple(self.config.ivr.card_brands),
                speech=self._open_speech(),
            ),
            self.transaction,
            failure,
            datetime.date.today(),
        )
        outcome = await self._drive(journey)
        self.outcome = outcome
        self.marks["finished"] = time.monotonic()

        # 5. Record the result, then return the caller.
        self._record(outcome)
        if not self.hung_up:
            self.phase = "returning"
            await self._return_caller(outcome)

    def _negotiate_offer(self) -> bool:
        """The INVITE's offer negotiated into `self.negotiated`; False when refused (488).
        (A method of its own: the parsed offer is not kept for the call's life by `_run`'s
        frame.)"""
        try:
            offer = SessionDescription.parse(self.invite.body) if self.invite.body else None
            if offer is None:
                raise NotAcceptable("an SDP offer is required in the INVITE")
            policy = self._offer_policy(offer, self.source)
            self.negotiated = negotiate(offer, srtp_policy=policy)
        except (SdpError, NotAcceptable) as exc:
            detail = getattr(exc, "detail", None) or str(exc)
            self._reject(488, "Not Acceptable Here", detail)
            return False
        return True

    def _end_early(self, result: Result) -> None:
        """A call that ends before its journey: recorded all the same (CDR, callback)."""
        self.outcome = Outcome(result)
        self.marks["finished"] = time.monotonic()
        self._record(self.outcome)

    async def _drive(self, journey: Journey) -> Outcome:
        """Session events → journey → actions: every inbox item is fed to the journey and its
        actions carried out, until the journey has an outcome."""
        loop = asyncio.get_running_loop()
        self._apply(journey.start(loop.time()))
        if self.hung_up:  # BYE came before the journey started
            self._apply(journey.hangup(loop.time()))
        while journey.outcome is None:
            wake = journey.next_wake()
            item = await self._next_item(wake)
            self._feed(journey, item, loop.time())
            if (
                wake is not None
                and not isinstance(item, TimerDue)
                and loop.time() >= wake
                and journey.outcome is None
            ):
                self._feed(journey, TimerDue(), loop.time())  # an item came just as it fell due
            if self.speech_input is not None:
                if journey.state not in FIELD_STATES:
                    self._close_speech()  # the card is taken (or the call ends): stop listening
                else:
                    self.speech_input.expect(journey.expected_digits())
        self._close_speech()
        return journey.outcome

    async def _next_item(self, wake: float | None) -> InboxItem:
        """The inbox's next item, or `TimerDue` when the loop reaches `wake` first."""
        item = await self.inbox.get_until(wake)
        return TimerDue() if item is None else item

    def _feed(self, journey: Journey, item: InboxItem, now: float) -> None:
        """One item to the journey, and the journey's actions carried out."""
        match item:
            case KeyPressed(digit, source, arrived_at):
                # How long the press took from reaching the node to the journey (the time in
                # the socket's buffer until the media tick read it included).
                DTMF_LATENCY_SECONDS.observe(max(0.0, now - arrived_at), source=source)
                self._emit("digit", digit="*" if digit.isdigit() else digit)
                actions = journey.digit(digit, now)
            case Spoken(utterance):
                self._emit("speech")  # that something was said: never what
                actions = journey.speech(utterance, now)
            case PromptDone(generation) if generation == self._play_generation:
                actions = journey.prompt_done(now)
            case TimerDue():
                if self.speech_input is not None and self.speech_input.in_speech:
                    journey.speaking(now)  # a caller in mid-sentence is not timed out
                actions = journey.timer(now)
            case AuthorizationAnswered(result):
                actions = journey.authorized(result, now)
            case SessionOver():
                actions = journey.hangup(now)
            case _:  # a stale prompt's end, the ACK after type-ahead, a NOTIFY: not the journey's
                return
        self._apply(actions)

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Play():
                    self._play(action)
                case StopPlayback():
                    self._play_generation += 1
                    if self.media is not None:
                        self.media.stop()
                case Authorize():
                    self.marks.setdefault("authorize", time.monotonic())
                    self._spawn(self._authorize(action), self._authorizing)
                case Finish():
                    pass  # journey.outcome carries it

    # ---- prompts ----------------------------------------------------------------------------

    def _play(self, action: Play) -> None:
        self._play_generation += 1
        generation = self._play_generation
        if self.media is not None:
            self.media.stop()
        self._emit("prompt", parts=[part.name for part in action.parts])
        self._spawn(self._render_and_play(action, generation))

    async def _render_and_play(self, action: Play, generation: int) -> None:
        await play_prompt(
            self.services, action, self.language, self.call_id,
            lambda: self.media if generation == self._play_generation else None,
        )  # fmt: skip

    def _on_playback_done(self) -> None:
        self.inbox.put_nowait(PromptDone(self._play_generation))

    # ---- voice entry ------------------------------------------------------------------------

    def _open_speech(self) -> bool:
        """Whether this caller may also say the digits: `ivr.input = "dtmf speech"`, a language
        with a model, and a recognition slot free (`speech.max_concurrent`; else keys only).
        The caller's audio then goes to the recogniser, in memory only."""
        engine = self.services.speech
        if self.config.ivr.input != "dtmf speech" or engine is None or self.media is None:
            return False
        if not voice_entry_offered(self.language, self.config.speech.recogniser):
            return False
        speech_input = engine.open_input(self.language, self._on_utterance)
        if speech_input is None:
            log.info(
                "voice entry: no recognition slot free (speech.max_concurrent): keys only",
                extra={"call_id": self.call_id},
            )
            return False
        self.speech_input = speech_input
        speech_input.expect(4)  # the first group of a card number
        self.media.on_audio = self._on_audio
        return True

    def _on_audio(self, payload: bytes, now: float) -> None:
        """One RTP payload of the caller's audio (from the media tick) to the recogniser."""
        speech_input, media = self.speech_input, self.media
        if speech_input is None or media is None:
            return
        try:
            samples = decode_array(np.frombuffer(payload, dtype=np.uint8), media.codec)
            speech_input.feed(samples, now)
        except Exception as exc:  # never the call's media: voice entry stops, keys go on
            log.error(
                "voice entry failed (%s): keys only", type(exc).__name__,
                extra={"call_id": self.call_id},
            )  # fmt: skip
            self._close_speech()

    def _on_utterance(self, utterance: Utterance) -> None:
        self.inbox.put_nowait(Spoken(utterance))

    def _close_speech(self) -> None:
        speech_input, self.speech_input = self.speech_input, None
        if speech_input is not None:
            speech_input.close()
        if self.media is not None:
            self.media.on_audio = None

    # ---- DTMF -------------------------------------------------------------------------------

    def _on_dtmf(self, event: DtmfEvent) -> None:
        if (
            event.source == "rfc4733"
            and self.merger.inband_mode == "auto"
            and self.media is not None
            and self.media.inband
        ):
            self.media.stop_inband()  # the merger ignores in-band from now on: stop computing it
        digit = self.merger.feed(event)
        if digit is not None:
            DTMF_DIGITS_TOTAL.inc(source=event.source)
            arrived_at = event.at if event.arrived_at is None else event.arrived_at
            self.inbox.put_nowait(KeyPressed(digit, event.source, arrived_at))

    # ---- the connector ------------------------------------------------------------------------

    async def _lookup(self) -> Result | None:
        token = self.handoff.transaction
        if not token:
            return Result.INVALID_TRANSACTION
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S + self.config.gateway.timeout_s):
                info = await self.services.connector.lookup(token)
        except (ConnectorError, TimeoutError) as exc:
            log.warning("transaction lookup failed: %s", exc, extra={"call_id": self.call_id})
            return Result.ERROR
        if info is None or info.status != "pending":
            log.info(
                "transaction %s is %s",
                token,
                "unknown" if info is None else info.status,
                extra={"call_id": self.call_id},
            )
            return Result.INVALID_TRANSACTION
        self.transaction = info
        return None

    async def _authorize(self, action: Authorize) -> None:
        """The journey's `Authorize`, as every authorisation goes (`authorize_journaled`: a
        random idempotency key, the journal's line first, a bounded wait, the card wiped); the
        answer comes back through the inbox."""
        assert self.transaction is not None
        self.charge_state = ChargeState.UNKNOWN  # while the request may be at the platform
        result = await authorize_journaled(
            self.services.connector, self.services.journal, self.transaction, action.card,
            action.attempt, self.call_id, authorization_bound_s(self.config),
        )  # fmt: skip
        self.charge_state = result.charge_state
        self.marks["authorized"] = time.monotonic()
        self._emit(
            "authorized",
            result=str(result.result),
            reference=result.reference,
            charge_state=str(result.charge_state),
        )
        self.inbox.put_nowait(AuthorizationAnswered(result))

    # ---- SIP: the INVITE --------------------------------------------------------------------

    def _offer_policy(self, offer: SessionDescription, source: Address) -> str:
        """The SRTP policy for `offer` from `source` (`offer_policy`: 488 for SDES in clear)."""
        return offer_policy(self.config, offer, source, self.negotiated)

    def _check_handoff(self) -> Result | None:
        secret = self.config.handoff.signing_secret
        if not secret:
            return None
        now = time.time()
        max_age_s = self.config.handoff.max_age_s
        ok = bool(self.handoff.signature) and verify_handoff(
            secret,
            self.handoff.signature or "",
            self.call_id,
            self.handoff.transaction or "",
            self.handoff.return_to or "",
            self.handoff.callback or "",
            now,
            max_age_s,
        )
        parsed = parse_signature(self.handoff.signature or "") if ok else None
        if parsed is not None:
            t = parsed[0]
            signed = handoff_canonical(
                t, self.call_id, self.handoff.transaction, self.handoff.return_to,
                self.handoff.callback,
            )  # fmt: skip
            # A signed handoff opens one call: the same one again (a new INVITE, not a
            # retransmission, which the transaction layer absorbs) is a replay.
            if not self.services.seen_handoffs.first_use(signed, t + max_age_s, now):
                log.warning("handoff signature already used", extra={"call_id": self.call_id})
                ok = False
        if not ok:
            log.warning("handoff signature missing or invalid", extra={"call_id": self.call_id})
            # What it signs cannot be trusted: the caller is not sent to its X-SPG-Return-To
            # (the callback still goes only to an allowed URL, with the result).
            self.return_to_trusted = False
            return Result.INVALID_HANDOFF
        return None

    def _reject(
        self,
        status: int,
        reason: str,
        detail: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        log.info("rejecting call: %d %s", status, detail, extra={"call_id": self.call_id})
        self.session.reject(
            status,
            reason,
            [("Warning", f'399 {self.config.sip.public_host} "{detail[:120]}"'), *(headers or [])],
        )
        self.leg.pump()
        CALLS_REJECTED_TOTAL.inc(status=str(status))

    async def _answer(self, timer: session_timer.SessionTimer | None) -> Result | None:
        """Open the media, answer 200 (with the session timer, RFC 4028, when the INVITE asked
        for one) and wait for the ACK. None when answered; else the call's result: `error`
        without a media port (the INVITE gets 503), `hung-up` when the caller cancelled."""
        assert self.negotiated is not None
        neg = self.negotiated
        engine = self.services.media
        try:
            shared = None
            rtp = self.config.rtp
            if rtp.shared_port == "relays" and in_sources(neg.remote_address, rtp.media_sources):
                # media from a relay: keyed by its exact source on the port the calls share
                rtcp_source = None if neg.rtcp_mux else neg.remote_rtcp
                shared = engine.open_shared((neg.remote_address, neg.remote_port), rtcp_source)
            self.rtp_port = shared if shared is not None else await engine.open()
        except Exception as exc:
            self._reject(503, "Service Unavailable", f"no media port: {exc}")
            return Result.ERROR
        if self.hung_up:  # cancelled while the port was opened
            return Result.HUNG_UP
        self.media = MediaSession(
            codec=neg.codec,
            remote=(neg.remote_address, neg.remote_port),
            dtmf_payload_type=neg.dtmf_payload_type,
            ptime_ms=neg.ptime,
            on_dtmf=self._on_dtmf,
            on_playback_done=self._on_playback_done,
            inband=self.config.dtmf.inband != "off",
            rtcp_remote=neg.remote_rtcp,
            rtcp_mux=neg.rtcp_mux,
            media_sources=self.config.rtp.media_sources,  # a relay's; else the c= address only
        )
        if neg.local_crypto is not None and neg.remote_crypto is not None:
            self.media.srtp = SrtpContext(neg.local_crypto, neg.remote_crypto)
        self.media.hold = neg.direction in ("sendonly", "inactive")
        # A sips: Request-URI asks for a sips: dialog (RFC 3261 §12.1.1); else sip:, even on TLS.
        secure = self.invite.uri.lower().startswith("sips:")
        self.session.via_sent_by = self.ua.sent_by(self.transport)
        self.services.media.attach(self.rtp_port, self.media)
        self.session.accept(
            self._sdp_answer(),
            asyncio.get_running_loop().time(),
            contact=self.ua.contact(self.transport, secure=secure),
            timer=timer,
        )
        self.leg.pump()
        self.marks["answered"] = time.monotonic()
        # Wait for the ACK (or anything that shows the caller is there) before speaking; the
        # session ends the call (BYE) when no ACK comes.
        while not self.hung_up:
            item = await self.inbox.get()
            if isinstance(item, CallerAcked):
                break
            if isinstance(item, KeyPressed):  # type-ahead before the ACK: keep it
                self.inbox.put_nowait(item)
                break
        return None

    def _sdp_answer(self) -> bytes:
        assert self.negotiated is not None and self.rtp_port is not None
        return build_answer(
            self.negotiated,
            local_address=self.config.rtp.address,
            local_port=self.services.media.local_port(self.rtp_port),
            session_id=self.session_id,
            version=self.sdp_version,
        )

    # ---- SIP: the session's events -------------------------------------------------------------

    # The UA hands the dialog's requests to the leg (`register`); the session answers them and
    # tells the call what matters here.

    def _on_session_event(self, event: Event) -> None:
        """What the session tells the call, as inbox items (INFO keys through the merger)."""
        match event:
            case Acked():
                self.inbox.put_nowait(CallerAcked())
            case Cancelled():
                self.inbox.put_nowait(SessionOver())
            case Ended(reason=reason, status=status):
                if reason == "bye":
                    self._emit("hangup")
                elif reason == "no-ack":
                    log.warning("no ACK for our 200", extra={"call_id": self.call_id})
                elif reason == "session-expired":
                    log.warning("session expired: no refresh", extra={"call_id": self.call_id})
                else:
                    log.warning("session refresh failed: %d", status or 0,
                                extra={"call_id": self.call_id})  # fmt: skip
                if self.media is not None:
                    self.media.stop()
                self.inbox.put_nowait(SessionOver())
            case InDialogRequest(request) if request.method == "INFO":
                parsed = parse_info_dtmf(request.headers.get("Content-Type") or "", request.body)
                if parsed is not None:
                    now = asyncio.get_running_loop().time()
                    key, duration_ms = parsed
                    self._on_dtmf(DtmfEvent(key, "start", now, duration_ms, "info"))
            case InDialogRequest(request) if request.method == "NOTIFY":
                self.inbox.put_nowait(TransferNotify(request))

    def _answer_offer(self, request: SipRequest) -> bytes | Refusal:
        """Hold, unhold or a media change, by re-INVITE or UPDATE: answered from the same port
        (RFC 3264 §8); the session sends the 200 or the refusal."""
        if self.media is None:
            return Refusal(488, "no media session")
        try:
            offer = SessionDescription.parse(request.body)
            policy = self._offer_policy(offer, self.leg.last_source)
            neg = negotiate(offer, srtp_policy=policy, previous=self.negotiated)
        except (SdpError, NotAcceptable) as exc:
            detail = getattr(exc, "detail", None) or str(exc)
            log.info(
                "refusing a %s offer: 488 %s", request.method, detail,
                extra={"call_id": self.call_id},
            )  # fmt: skip
            return Refusal(488, detail)
        self.negotiated = neg
        renegotiate_media(self.media, neg)
        self.sdp_version += 1
        return self._sdp_answer()

    # ---- the result ---------------------------------------------------------------------------

    def _result_headers(
        self, result: Result, outcome: Outcome | None = None
    ) -> list[tuple[str, str]]:
        headers = [("X-SPG-Result", str(result))]
        if outcome is not None and outcome.reference:
            headers.append(("X-SPG-Reference", outcome.reference))
        if self.handoff.transaction:
            headers.append(("X-SPG-Transaction", self.handoff.transaction))
        if outcome is not None and outcome.brand and outcome.last4:
            headers.append(("X-SPG-Card", f"{outcome.brand} {outcome.last4}"))
        return headers

    def _return_target(self) -> str | None:
        candidates = [self.handoff.return_to if self.return_to_trusted else None]
        referred_by = self.invite.headers.get("Referred-By")
        if referred_by:
            with contextlib.suppress(SipSyntaxError):
                candidates.append(str(NameAddr.parse(referred_by).uri))
        if self.transaction is not None:
            candidates.append(self.transaction.return_uri)
        candidates.append(self.config.ivr.return_uri)
        for candidate in candidates:
            if not candidate:
                continue
            text = candidate.strip()
            if text.startswith("<") and text.endswith(">"):
                text = text[1:-1]
            try:
                SipUri.parse(text)
            except SipSyntaxError:
                log.warning("ignoring bad return URI", extra={"call_id": self.call_id})
                continue
            return text
        return None

    async def _return_caller(self, outcome: Outcome) -> None:
        headers = self._result_headers(outcome.result, outcome)
        target = self._return_target()
        if target is None:
            self._emit("bye", reason="no return target")
            await self._bye(headers)
            return
        refer_to = refer_to_uri(target, outcome.result, outcome.reference)
        request = self.session.request(
            "REFER",
            [
                ("Refer-To", f"<{refer_to}>"),
                ("Referred-By", f"<sip:spg@{self.config.sip.public_host}>"),
                *headers,
            ],
        )
        self._emit("refer", target=target, result=str(outcome.result))
        self.leg.pump()
        response = await self.leg.answer(request)
        if response is None or not 200 <= response.status < 300:
            refusal = response.status if response is not None else 0
            log.info("REFER refused: %d", refusal, extra={"call_id": self.call_id})
            await self._bye(headers)
            return
        status = await self._wait_transfer_outcome()
        if status is not None and 200 <= status < 300:
            await self._bye([])
        else:
            await self._bye(headers)

    async def _wait_transfer_outcome(self) -> int | None:
        """The sipfrag status of the final NOTIFY of the REFER subscription, None on timeout."""
        try:
            async with asyncio.timeout(NOTIFY_WAIT_S):
                while True:
                    item = await self.inbox.get()
                    if isinstance(item, SessionOver):
                        return None
                    if not isinstance(item, TransferNotify):
                        continue
                    status = _sipfrag_status(item.request.body)
                    state = (item.request.headers.get("Subscription-State") or "").lower()
                    if status is not None and status >= 200:
                        return status
                    if state.startswith("terminated"):
                        return status
        except TimeoutError:
            log.info("no final NOTIFY for the REFER", extra={"call_id": self.call_id})
            return None

    async def _bye(self, headers: list[tuple[str, str]]) -> None:
        if self.hung_up:
            return
        if self.media is not None:
            self.media.stop()
        request = self.session.bye(headers)
        self.leg.pump()
        response = await self.leg.answer(request)
        self._emit("ended", status=response.status if response is not None else 0)

    def _record(self, outcome: Outcome) -> None:
        durations = dict(outcome.durations)
        marks = self.marks
        if "answered" in marks:
            durations["setup"] = round(marks["answered"] - marks["invite"], 3)
        if "finished" in marks and "answered" in marks:
            durations["ivr"] = round(marks["finished"] - marks["answered"], 3)
        if "authorized" in marks and "authorize" in marks:
            durations["authorization"] = round(marks["authorized"] - marks["authorize"], 3)
        record = CallRecord.from_outcome(
            outcome,
            call_id=self.call_id,
            transaction=self.handoff.transaction or "",
            order=self.transaction.order if self.transaction else "",
            started_at=_iso(self.started_at),
            ended_at=_iso(datetime.datetime.now(datetime.UTC)),
            durations=durations,
            charge_state=str(self.charge_state),
        )
        try:
            self.services.cdr.write(record)
        except Exception:
            log.exception("CDR write failed", extra={"call_id": self.call_id})
        url = self.handoff.callback
        if url and self.services.callbacks.allowed(url):
            self._spawn_detached(self.services.callbacks.send(url, record))
        elif url:
            log.warning(
                "callback URL not in handoff.callback_allow", extra={"call_id": self.call_id}
            )
        CALLS_TOTAL.inc(result=str(outcome.result))
        self._emit("result", result=str(outcome.result), reference=outcome.reference)
        log.info(
            "call result %s",
            outcome.result,
            extra={"call_id": self.call_id, "reference": outcome.reference},
        )

    # ---- plumbing -----------------------------------------------------------------------------

    def _emit(self, kind: str, **details: Any) -> None:
        if self.services.observer is not None:
            try:
                self.services.observer(self.call_id, kind, details)
            except Exception:
                log.exception("observer failed")

    def _spawn(self, coro: Any, tasks: set[asyncio.Task[Any]] | None = None) -> None:
        tasks = self._tasks if tasks is None else tasks
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _spawn_detached(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.services.background.add(task)
        task.add_done_callback(self.services.background.discard)

    def _cleanup(self) -> None:
        CALLS_ACTIVE.dec()
        self._close_speech()
        self.leg.close()
        for task in self._tasks:
            task.cancel()
        if self.rtp_port is not None:
            self.services.media.close(self.rtp_port)
            quality = self._media_quality()
            if quality is not None:
                log.info("media quality", extra={"call_id": self.call_id, **quality})
        log.info("dtmf", extra={"call_id": self.call_id, **dtmf_counts(self.merger, self.media)})
        self.unregister()
        release_callbacks([self.leg], [self.session], [self.media])

    def summary(self) -> dict[str, Any]:
        """For the admin /calls page: nothing from the card but what the CDR may show."""
        return {
            "call_id": self.call_id,
            "transaction": self.handoff.transaction,
            "phase": self.phase,
            "language": self.language,
            "started_at": _iso(self.started_at),
            "result": str(self.outcome.result) if self.outcome else None,
            # what protects the call: an operator can check no card is keyed in clear
            "signalling": self.transport,
            "media": self._media_security(),
            "quality": self._media_quality(),
        }

    def _media_security(self) -> dict[str, Any] | None:
        if self.media is None:
            return None
        srtp = self.media.srtp
        return {
            "srtp": srtp.suite.name if srtp is not None else None,
            "srtp_drops": srtp.drops.as_dict() if srtp is not None else {},
            "dropped_foreign": self.media.stats.dropped_foreign,
        }

    def _media_quality(self) -> dict[str, Any] | None:
        """The call's RTCP view of both streams: ours as the caller's side reports it."""
        if self.media is None or self.media.rtcp is None:
            return None
        quality = self.media.rtcp.summary

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 1)

        return {
            "received": quality.received,
            "lost": quality.lost,
            "jitter_ms": rounded(quality.jitter_ms),
            "peer_lost": quality.peer_lost,
            "peer_lost_percent": rounded(
                None if quality.peer_fraction_lost is None else 100 * quality.peer_fraction_lost
            ),
            "peer_jitter_ms": rounded(quality.peer_jitter_ms),
            "rtt_ms": rounded(quality.rtt_ms),
            "rtcp_sent": quality.reports_sent,
            "rtcp_received": quality.reports_received,
            # the shared media port (rtp.shared_port) or one of its own
            "port": "shared" if self.media.pin_ssrc else "own",
        }


def _ended(event: Event) -> None:
    """What a call's SIP leg tells once the call is over (a late answer): nobody listens."""


def release_callbacks(
    legs: Sequence[SessionLeg | None],
    sessions: Sequence[InviteSession | None],
    media: Sequence[MediaSession | None],
) -> None:
    """At a call's end: its SIP legs, INVITE sessions and media sessions hold its methods as
    callbacks, so the call and everything it holds form a reference cycle. Cut them, so that
    an ended call is freed at once by reference counting instead of waiting for a full garbage
    collection (rare in `serve`: gcpolicy.py). For the IVR call and the assisted call."""
    for leg in legs:
        if leg is not None:
            leg.on_event = _ended
    for session in sessions:
        if session is not None:
            session.answer_offer = None
    for one in media:
        if one is not None:
            one.on_dtmf = one.on_playback_done = one.on_audio = None


def dtmf_counts(merger: DtmfMerger, media: MediaSession | None) -> dict[str, int]:
    """A call's DTMF counters for its end-of-call log line: how many digits each source gave,
    what was dropped as the same press reported twice or by the in-band policy, and what the
    RFC 4733 receiver made of the packets, and what became of the audio queued for the in-band
    detector (`MediaSession.inband_counts`: packets dropped, gaps, the largest backlog), so a
    missed tone can be traced to its cause. Counts only: never a key."""
    counts = merger.counts()
    if media is not None:
        counts.update(media.receiver.stats.counts())
        counts.update(media.inband_counts())
    return counts


SDES_NEEDS_TLS = "SDES keys (a=crypto) need TLS signalling: offer RTP/SAVP over TLS only"


def offer_policy(
    config: Config,
    offer: SessionDescription,
    source: Address,
    current: NegotiatedAudio | None = None,
) -> str:
    """The SRTP policy to negotiate `offer` under, given where it came from.

    SDES keys (`a=crypto` of an RTP/SAVP(F) stream) that crossed UDP or TCP were readable
    by anyone on the path: such an offer is refused (NotAcceptable: 488) unless it came
    over TLS or from `rtp.sdes_cleartext_sources` (a private link from our own proxy). When
    the offer also has a plain RTP stream and plain RTP is allowed (the policy is not
    `required` and the call, `current`, is not already SRTP), that stream is answered instead.
    """
    policy = config.rtp.srtp
    if policy == "off" or not _offers_sdes_keys(offer) or _sdes_allowed(config, source):
        return policy
    already_srtp = current is not None and current.remote_crypto is not None
    if policy != "required" and not already_srtp and _offers_plain_audio(offer):
        return "off"
    raise NotAcceptable(SDES_NEEDS_TLS)


def _sdes_allowed(config: Config, source: Address) -> bool:
    if source.transport == "tls":
        return True
    return address_in(source.host, parse_networks(config.rtp.sdes_cleartext_sources))


def renegotiate_media(media: MediaSession, neg: NegotiatedAudio) -> None:
    """A re-INVITE's or UPDATE's accepted offer applied to the call's media (same port)."""
    media.hold = neg.direction in ("sendonly", "inactive")
    media.rtcp_mux = neg.rtcp_mux  # first: a move re-keys a shared-port call's RTCP by it
    media.move((neg.remote_address, neg.remote_port), neg.remote_rtcp)
    media.dtmf_payload_type = neg.dtmf_payload_type
    media.renegotiate(neg.codec, neg.ptime)
    if neg.local_crypto is not None and neg.remote_crypto is not None:
        # New keys from the peer (or the first ones): the old receiving key stays valid for
        # packets in flight until the first packet under the new one authenticates.
        if media.srtp is None:
            media.srtp = SrtpContext(neg.local_crypto, neg.remote_crypto)
        else:
            media.srtp = media.srtp.rekey(neg.local_crypto, neg.remote_crypto)


def _offers_sdes_keys(offer: SessionDescription) -> bool:
    """Whether an active stream of `offer` carries SRTP keys in `a=crypto` lines."""
    return any(
        media.port != 0 and media.proto.upper() in SRTP_PROTOS and media.crypto
        for media in offer.media
    )


def _offers_plain_audio(offer: SessionDescription) -> bool:
    return any(
        media.port != 0 and media.media.lower() == "audio" and media.proto.upper() in PLAIN_PROTOS
        for media in offer.media
    )


def voice_entry_offered(language: str, recogniser: str = DEFAULT_RECOGNISER) -> bool:
    """Whether callers in `language` may say their digits: `recogniser`'s model
    (`speech.recogniser`) is installed and the prompts have "key or say" wording for it.
    Other languages stay keypad-only."""
    return language in SPEECH_LANGUAGES and speech_available(language, recogniser)


async def play_prompt(
    services: CallServices,
    play: Play,
    language: str,
    call_id: str,
    current_media: Callable[[], MediaSession | None],
) -> None:
    """Play `play`'s prompt on `current_media()` (None: the prompt was replaced, or the media
    is gone): its payloads shared with the other calls that play it (`rtp.prompts`), else
    its clips found off the loop (200 ms of silence if rendering fails, logged) and played
    from the shared encoded clips, and its payloads shared from then on unless it holds card
    digits. For the IVR call and the assisted call."""
    packets = services.prompt_packets
    media = current_media()
    if media is None:
        return
    key = shared_key(play.parts, language, media.codec, media.samples_per_packet)
    shared = packets.get(key) if key is not None else None
    if shared is not None:
        media.play_packets(shared)
        return
    pieces: list[Any]
    try:
        pieces = await asyncio.to_thread(services.prompts.pieces_for, play.parts, language)
        rendered = True
    except Exception:
        log.exception("prompt rendering failed", extra={"call_id": call_id})
        pieces, rendered = [len(services.prompts.silence(200))], False
    media = current_media()
    if media is None:
        return
    # the library's clips, shared by the calls, not a copy of the audio for this call
    payloads: Sequence[bytes] = services.prompt_clips.splice(
        pieces, media.codec, media.samples_per_packet
    )
    # the codec and packet size of now: a re-INVITE may have changed them meanwhile
    key = shared_key(play.parts, language, media.codec, media.samples_per_packet)
    if key is not None and rendered:  # a rendering failure's silence is not kept
        payloads = packets.put(key, payloads)
    media.play_packets(payloads)


def prompt_language(*candidates: str) -> str:
    """The first of the candidates (X-SPG-Language, the transaction's, the configured one) that
    we have prompts for, by its primary subtag: "es-ES", "ES" and "es_MX" are "es". The last
    one (the configuration's, validated) when none is."""
    for tag in candidates:
        primary = tag.strip().replace("_", "-").split("-", 1)[0].lower()
        if primary in SUPPORTED_LANGUAGES:
            return primary
    return candidates[-1]


def _sipfrag_status(body: bytes) -> int | None:
    first = body.split(b"\n", 1)[0].strip()
    parts = first.split()
    if len(parts) >= 2 and parts[0].upper().startswith(b"SIP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def _iso(moment: datetime.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
