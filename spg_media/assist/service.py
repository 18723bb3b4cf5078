"""The agent-assisted payments of the node: calls, payments, their timers, records and streams.

This module owns `AssistService`, built once per node: the registry of bridged calls (each an
`AssistCallHandle`, the call side's view of a call), the payments by id and by idempotency
key, the connector's lookup when a payment starts, the authorisation (through
`payment.authorization`, the same journal and idempotency path as the IVR), the CDR line and
signed callback of each payment (`"mode": "assist"`), the timers each `PaymentSession` asks
for (`next_wake`), and the fan-out of state objects to the Server-Sent Events streams of the
API. It runs on the node's event loop; every method is called from it.

The call side reports `call_started`, every customer key (`digit`, merged: one press is one
key), `prompt_done` and `call_ended`. A payment active when its call ends is `hung-up`, no
charge; one being authorised keeps waiting for the platform, whose answer is its result.
After a result the call goes on and another payment may start on it.

Requests the service refuses raise `ApiError` (HTTP status, error word, detail) for the API.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from spg_media.assist.payment_session import (
    FIELDS,
    FINAL_STATUSES,
    PaymentSession,
    Refused,
    SessionConfig,
)
from spg_media.cdr import CallbackSender, CallRecord, CdrWriter
from spg_media.config import Config
from spg_media.observability import METRICS
from spg_media.payment.authorization import authorization_bound_s, authorize_journaled
from spg_media.payment.connectors import Connector, ConnectorError
from spg_media.payment.journal import PaymentJournal
from spg_media.payment.journey import Action, Authorize, Finish, Play, StopPlayback
from spg_media.payment.model import AuthorizationResult, ChargeState, Result
from spg_media.randomid import random_hex

log = logging.getLogger("spg.assist")

LOOKUP_TIMEOUT_S = 5.0  # beyond the connector's own timeout
MAX_FINISHED_PAYMENTS = 1000  # kept for GET after their end; the oldest are forgotten first
KEEPALIVE_S = 15.0  # an SSE comment this often, so proxies keep a quiet stream open
ASSIST_PAYMENTS_TOTAL = METRICS.counter(
    "spg_assist_payments_total",
    "Agent-assisted payments ended, by result (approved, declined, error, cancelled, hung-up).",
    ("result",),
)
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,128}")


class AssistCallHandle(Protocol):
    """The call side of one bridged call (implemented by the assisted call). It reports to
    the service every customer key (`digit`, merged), `prompt_done` only for a `Play` that
    finished by itself (not one stopped or replaced), and `call_ended` once."""

    call_id: str  # the id sent to the agent in X-SPG-Assist-Call
    from_uri: str
    to_uri: str
    agent_uri: str
    started_at: datetime.datetime
    transaction_hint: str | None  # X-SPG-Transaction of the customer's INVITE, if any
    language: str  # prompt language of the call

    def play(self, play: Play) -> None: ...  # to the customer only

    def stop_playback(self) -> None: ...


class ApiError(Exception):
    """A request refused: HTTP `status`, `error` word, `detail`, and `extra` fields."""

    def __init__(self, status: int, error: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.extra = extra


@dataclass
class _Call:
    handle: AssistCallHandle
    active: str | None = None  # payment_id of the payment not finished yet
    creating: str | None = None  # idempotency key of a creation waiting for its lookup


@dataclass
class _Payment:
    session: PaymentSession
    call_id: str
    idempotency_key: str
    created: dict[str, Any]  # the 201 answer, given again for the same idempotency key
    callback: str | None
    started_at: datetime.datetime
    state: dict[str, Any] = field(default_factory=dict)  # last published
    streams: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None
    charge_state: ChargeState = ChargeState.NOT_CHARGED


class AssistService:
    """See the module docstring."""

    def __init__(
        self,
        config: Config,
        connector: Connector,
        cdr: CdrWriter,
        callbacks: CallbackSender,
        journal: PaymentJournal | None,
        today: Callable[[], datetime.date] = datetime.date.today,
    ) -> None:
        self.config = config
        self.connector = connector
        self.cdr = cdr
        self.callbacks = callbacks
        self.journal = journal
        self.today = today
        ivr = config.ivr
        self.session_config = SessionConfig(
            first_digit_timeout_s=ivr.first_digit_timeout_s,
            inter_digit_timeout_s=ivr.inter_digit_timeout_s,
            max_attempts=ivr.max_attempts,
            card_brands=tuple(ivr.card_brands),
        )
        self.authorization_bound_s = authorization_bound_s(config)
        self._calls: dict[str, _Call] = {}
        self._payments: collections.OrderedDict[str, _Payment] = collections.OrderedDict()
        self._by_key: dict[str, str] = {}  # idempotency key -> payment_id
        self._creating: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # ---- the call side --------------------------------------------------------------------------

    def call_started(self, handle: AssistCallHandle) -> None:
        self._calls[handle.call_id] = _Call(handle)
        log.info("assisted call listed", extra={"call_id": handle.call_id})

    def digit(self, call_id: str, key: str, now: float) -> None:
        payment = self._active_payment(call_id)
        if payment is not None:
            self._apply(payment, payment.session.digit(key, now))

    def prompt_done(self, call_id: str, now: float) -> None:
        payment = self._active_payment(call_id)
        if payment is not None:
            self._apply(payment, payment.session.prompt_done(now))

    def call_ended(self, call_id: str, now: float) -> None:
        payment = self._active_payment(call_id)
        if payment is not None:
            self._apply(payment, payment.session.hangup(now))
        self._calls.pop(call_id, None)

    # ---- the API ------------------------------------------------------------------------------

    def calls(self) -> list[dict[str, Any]]:
        listed = []
        for call_id, call in self._calls.items():
            handle = call.handle
            entry: dict[str, Any] = {
                "call_id": call_id,
                "from": handle.from_uri,
                "to": handle.to_uri,
                "agent": handle.agent_uri,
                "started_at": _iso(handle.started_at),
            }
            if handle.transaction_hint:
                entry["transaction"] = handle.transaction_hint
            if call.active is not None:
                entry["payment_id"] = call.active
            listed.append(entry)
        return listed

    async def create_payment(
        self,
        call_id: str,
        transaction: Any,
        idempotency_key: Any,
        callback: Any = None,
    ) -> dict[str, Any]:
        """The 201 answer of a new payment (or of the one made with this idempotency key)."""
        if not isinstance(idempotency_key, str) or not _KEY.fullmatch(idempotency_key):
            raise ApiError(400, "bad-request", "idempotency_key: 1-255 printable characters")
        if not isinstance(transaction, str) or not _TOKEN.fullmatch(transaction):
            raise ApiError(400, "bad-request", "transaction: a transaction token")
        if callback is not None and not isinstance(callback, str):
            raise ApiError(400, "bad-request", "callback: a URL")
        known = self._by_key.get(idempotency_key)
        if known is not None and known in self._payments:
            return self._repeat(self._payments[known], call_id, transaction)
        pending = self._creating.get(idempotency_key)
        if pending is not None:  # the same request again while the first waits for its lookup
            created = await asyncio.shield(pending)
            return self._repeat(self._payments[created["payment_id"]], call_id, transaction)
        call = self._calls.get(call_id)
        if call is None:
            raise ApiError(404, "unknown-call", f"no assisted call {call_id!r}")
        if call.active is not None or call.creating is not None:
            raise ApiError(409, "payment-active", "a payment is already active on this call")
        if callback and not self.callbacks.allowed(callback):
            raise ApiError(422, "callback-not-allowed", "callback not in handoff.callback_allow")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._creating[idempotency_key] = future
        call.creating = idempotency_key
        try:
            created = await self._create(call_id, call, transaction, idempotency_key, callback)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        except BaseException:
            future.cancel()
            raise
        else:
            future.set_result(created)
            return created
        finally:
            call.creating = None
            self._creating.pop(idempotency_key, None)

    async def _create(
        self, call_id: str, call: _Call, transaction: str, key: str, callback: str | None
    ) -> dict[str, Any]:
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S + self.config.gateway.timeout_s):
                info = await self.connector.lookup(transaction)
        except (ConnectorError, TimeoutError) as exc:
            log.warning("transaction lookup failed: %s", exc, extra={"call_id": call_id})
            raise ApiError(502, "error", "the payment platform did not answer the lookup") from None
        if info is None or info.status != "pending":
            state = "unknown" if info is None else info.status
            raise ApiError(422, "invalid-transaction", f"transaction is {state}")
        if self._calls.get(call_id) is not call:
            raise ApiError(404, "unknown-call", f"the call {call_id!r} has ended")
        payment_id = "pay_" + random_hex(16)
        now = asyncio.get_running_loop().time()
        session = PaymentSession(payment_id, info, self.session_config, self.today(), now)
        created = {
            "payment_id": payment_id,
            "status": str(session.status),
            "required": session.required(),
            "amount_minor": info.amount_minor,
            "currency": info.currency,
        }
        payment = _Payment(
            session, call_id, key, created, callback or None,
            datetime.datetime.now(datetime.UTC),
        )  # fmt: skip
        self._payments[payment_id] = payment
        self._by_key[key] = payment_id
        call.active = payment_id
        self._forget_old()
        self._publish(payment)
        log.info(
            "assisted payment started",
            extra={"call_id": call_id, "payment_id": payment_id, "transaction": transaction},
        )
        return dict(created)

    def _repeat(self, payment: _Payment, call_id: str, transaction: str) -> dict[str, Any]:
        if payment.call_id != call_id or payment.session.transaction.token != transaction:
            raise ApiError(
                409, "idempotency-key-reused", "this idempotency key started another payment"
            )
        return dict(payment.created)

    def payment_state(self, payment_id: str) -> dict[str, Any]:
        return dict(self._payment(payment_id).state)

    def update_payment(self, payment_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Carry out `{capture, prompt?}`, `{status: complete}` or `{status: cancel}`; the
        state after it."""
        payment = self._payment(payment_id)
        session = payment.session
        now = asyncio.get_running_loop().time()
        capture, status = body.get("capture"), body.get("status")
        if (capture is None) == (status is None):
            raise ApiError(400, "bad-request", "give one of capture or status")
        try:
            if capture is not None:
                if capture not in FIELDS:
                    raise ApiError(400, "bad-request", f"capture: one of {', '.join(FIELDS)}")
                prompt = body.get("prompt", True)
                if not isinstance(prompt, bool):
                    raise ApiError(400, "bad-request", "prompt: true or false")
                actions = session.capture(capture, now, prompt=prompt)
            elif status == "complete":
                actions = session.complete(now)
            elif status == "cancel":
                actions = session.cancel(now)
            else:
                raise ApiError(400, "bad-request", "status: complete or cancel")
        except Refused as refused:
            extra = {"required": list(refused.required)} if refused.required else {}
            raise ApiError(409, refused.code, refused.detail, **extra) from None
        self._apply(payment, actions)
        return dict(payment.state)

    async def events(self, payment_id: str) -> AsyncGenerator[dict[str, Any] | None, None]:
        """The payment's state now, then every change, until its final state (None: nothing
        new for KEEPALIVE_S, or the node is stopping: see `closing`)."""
        payment = self._payment(payment_id)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        payment.streams.add(queue)
        try:
            state = dict(payment.state)
            yield state
            while state.get("status") not in FINAL_STATUSES and not self._closed:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield None
                    continue
                if item is None:
                    return  # the node is stopping
                state = item
                yield state
        finally:
            payment.streams.discard(queue)

    async def aclose(self, grace_s: float = 10.0) -> None:
        """End the event streams; give authorisations under way `grace_s` to settle."""
        self._closed = True
        for payment in self._payments.values():
            for queue in payment.streams:
                queue.put_nowait(None)
            if payment.timer is not None:
                payment.timer.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)

    # ---- inside ---------------------------------------------------------------------------------

    def _payment(self, payment_id: str) -> _Payment:
        payment = self._payments.get(payment_id)
        if payment is None:
            raise ApiError(404, "unknown-payment", f"no payment {payment_id!r}")
        return payment

    def _active_payment(self, call_id: str) -> _Payment | None:
        call = self._calls.get(call_id)
        if call is None or call.active is None:
            return None
        return self._payments.get(call.active)

    def _apply(self, payment: _Payment, actions: list[Action]) -> None:
        call = self._calls.get(payment.call_id)
        handle = call.handle if call is not None else None
        for action in actions:
            if isinstance(action, Play):
                if handle is not None:
                    handle.play(action)
            elif isinstance(action, StopPlayback):
                if handle is not None:
                    handle.stop_playback()
            elif isinstance(action, Authorize):
                payment.charge_state = ChargeState.UNKNOWN  # while the request may be out
                self._spawn(self._authorize(payment, action))
            elif isinstance(action, Finish):
                if call is not None and call.active == payment.session.payment_id:
                    call.active = None
                self._record(payment)
        self._schedule(payment)
        self._publish(payment)

    async def _authorize(self, payment: _Payment, action: Authorize) -> None:
        try:
            result = await authorize_journaled(
                self.connector, self.journal, payment.session.transaction, action.card,
                action.attempt, payment.call_id, self.authorization_bound_s,
            )  # fmt: skip
        except Exception:  # a bug of ours must still end the payment with a result
            log.exception("assisted authorisation failed", extra={"call_id": payment.call_id})
            action.card.wipe()
            result = AuthorizationResult(Result.ERROR, detail="internal error", charge_unknown=True)
        payment.charge_state = result.charge_state
        now = asyncio.get_running_loop().time()
        self._apply(payment, payment.session.authorized(result, now))

    def _schedule(self, payment: _Payment) -> None:
        if payment.timer is not None:
            payment.timer.cancel()
            payment.timer = None
        wake = payment.session.next_wake()
        if wake is not None and not self._closed:
            payment.timer = asyncio.get_running_loop().call_at(wake, self._on_timer, payment)

    def _on_timer(self, payment: _Payment) -> None:
        payment.timer = None
        self._apply(payment, payment.session.timer(asyncio.get_running_loop().time()))

    def _publish(self, payment: _Payment) -> None:
        for state in [*payment.session.take_passed_states(), payment.session.state()]:
            if state == payment.state:
                continue
            payment.state = state
            for queue in payment.streams:
                queue.put_nowait(dict(state))

    def _record(self, payment: _Payment) -> None:
        outcome = payment.session.outcome
        assert outcome is not None
        transaction = payment.session.transaction
        record = CallRecord.from_outcome(
            outcome,
            call_id=payment.call_id,
            transaction=transaction.token,
            order=transaction.order,
            started_at=_iso(payment.started_at),
            ended_at=_iso(datetime.datetime.now(datetime.UTC)),
            durations=dict(outcome.durations),
            charge_state=str(payment.charge_state),
            mode="assist",
            payment_id=payment.session.payment_id,
        )
        try:
            self.cdr.write(record)
        except Exception:
            log.exception("CDR write failed", extra={"call_id": payment.call_id})
        if payment.callback:
            self._spawn(self.callbacks.send(payment.callback, record))
        ASSIST_PAYMENTS_TOTAL.inc(result=str(outcome.result))
        log.info(
            "assisted payment result %s",
            outcome.result,
            extra={
                "call_id": payment.call_id,
                "payment_id": payment.session.payment_id,
                "reference": outcome.reference,
            },
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget_old(self) -> None:
        """Keep at most MAX_FINISHED_PAYMENTS finished payments (the oldest go first)."""
        finished = [pid for pid, p in self._payments.items() if p.session.status in FINAL_STATUSES]
        for payment_id in finished[: max(0, len(finished) - MAX_FINISHED_PAYMENTS)]:
            payment = self._payments.pop(payment_id)
            if self._by_key.get(payment.idempotency_key) == payment_id:
                del self._by_key[payment.idempotency_key]


def _iso(moment: datetime.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
