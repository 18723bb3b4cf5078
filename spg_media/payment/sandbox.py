"""The sandbox payment platform: the generic HTTP protocol of the payment platform, with test data.

This module owns `SandboxApp`, a raw ASGI application (no framework) that speaks exactly the
protocol `HttpConnector` speaks, so the default in-process connector exercises the same URLs,
JSON and signatures as a real platform; and `serve_sandbox`, which serves it alone with uvicorn
(`spg-media sandbox --listen HOST:PORT`).

Protocol (all under /v1, every request signed with `X-SPG-Signature` when a secret is set, else
401; malformed JSON or fields: 400; bodies above 64 KiB: 413):

- `GET /healthz` → 200 `{"status": "ok"}` (never signed).
- `POST /v1/transactions` `{amount_minor, currency, operation?, merchant?, order?, language?,
  return_uri?}` → 201 with the transaction, its new token included.
- `GET /v1/transactions/{token}` → 200 the transaction, 404 unknown. Tokens
  `sbx-<amount_minor>-<CUR>[-anything]` exist without being created: a pending sale of that
  amount (`sbx-0-<CUR>...` is tokenize-only), order = the token, merchant "Sandbox Shop".
  A suffix starting with `expired` (`sbx-100-EUR-expired-1`) gives status `expired`.
  A paid transaction carries `payment: {idempotency_key, result, reference, authorization_code,
  card_token?}` (the authorisation that paid it: how a node that lost the answer finds out
  whether its own key charged) and, sandbox only, `charges`: how many charges the sandbox made
  on the token (1; a second would be a bug, and tests read it here).
- `POST /v1/transactions/{token}/authorize`, header `Idempotency-Key` (required, else 400),
  `{card: {number, exp_month, exp_year, cvc}, attempt}` → 200 `{result, reference,
  authorization_code?, card_token?, decline_code?}`.

Decisions the contract leaves open, written down:

- A token can be paid once. Authorising a paid token with a new Idempotency-Key answers 200
  `declined` with decline_code `already_paid` (a definitive "no charge", which is what a
  decline means), and `expired` for an expired one; neither charges.
- Authorisations of one token are decided one at a time, in the order they arrive: a second
  key arriving while the first is processed (the slow card) waits for it, then gets
  `already_paid` if the first charged. So two keys never both charge, concurrent or not.
- The same (token, Idempotency-Key) returns the first *200* answer byte for byte and never
  charges again. 400/500 answers are not remembered (nothing was charged, a retry may succeed).
  A second request with a key whose first request is still being processed gets 409.
- An authorisation, once its request is read and valid, is carried through even when the
  client goes away (a connector's timeout, a node killed mid-request): like a real platform,
  the sandbox charges and remembers the answer; the node finds it with the GET.
- Cards: 4111111111111111, 5555555555554444, 378282246310005 approve; 4000000000000002 declines
  `generic`; 4000000000009995 declines `insufficient_funds`; 4000000000000119 answers 500;
  4000000000000341 takes `slow_delay_s` to decide, then charges and answers (set it above the
  connector's timeout: the node reconciles and finds the charge); any other Luhn-valid number
  approves; a number failing Luhn gets 400.

Card data is read from the request, checked, and dropped: nothing of it is logged, stored
(charges keep the last four only) or echoed in any answer, error bodies included.

Memory is bounded: the sandbox remembers the last `remember` (10,000) transactions it created or
charged, with their charges, and the last 4 × `remember` answers by Idempotency-Key; older ones
are forgotten oldest first (a forgotten `sbx-...` token reads as pending again). A node running
the in-process sandbox under days of load keeps a flat footprint; no test or retry reaches back
10,000 payments.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import socket
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from spg_media.payment.model import Operation
from spg_media.payment.signing import verify

log = logging.getLogger("spg.sandbox")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024
DEFAULT_MERCHANT = "Sandbox Shop"
DEFAULT_REMEMBER = 10_000  # transactions kept in memory (see the module docstring)
# At most 10 digits: a token holding a 12+ digit run would be refused by the CDR's card guard.
MAX_AMOUNT_MINOR = 9_999_999_999

SANDBOX_TOKEN = re.compile(r"sbx-([0-9]{1,10})-([A-Za-z]{3})(?:-([A-Za-z0-9._~-]*))?")
VALID_TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,128}")

APPROVE = "approve"
SLOW = "slow"
FAIL = "fail"
# Numbers with a fixed behaviour; every other Luhn-valid number approves.
TEST_CARDS: dict[str, tuple[str, str]] = {
    "4111111111111111": (APPROVE, ""),
    "5555555555554444": (APPROVE, ""),
    "378282246310005": (APPROVE, ""),
    "4000000000000002": ("decline", "generic"),
    "4000000000009995": ("decline", "insufficient_funds"),
    "4000000000000119": (FAIL, ""),
    "4000000000000341": (SLOW, ""),
}
DEMO_CARD = "4111111111111111"  # what `spg-media demo` keys unless told otherwise: approves

_ALNUM_UPPER = string.ascii_uppercase + string.digits
_ALNUM_LOWER = string.ascii_lowercase + string.digits


class BadRequest(Exception):
    """A request the sandbox answers with 400; the message names a field, never its value."""


def luhn_valid(number: str) -> bool:
    """The Luhn check, written here on purpose rather than imported from `payment.cards`.

    The sandbox stands for an external payment platform, which checks the card with its own
    code: a second, independent Luhn means a fault in the node's card rules shows up as a
    disagreement in the tests instead of being shared by both sides of the protocol."""
    if not number.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = ord(char) - 48
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def valid_token(token: str) -> bool:
    """Tokens are URL-safe words; '.' and '..' alone would be path segments, not tokens."""
    return bool(VALID_TOKEN.fullmatch(token)) and token.strip(".") != ""


@dataclass
class SandboxTransaction:
    token: str
    operation: Operation
    amount_minor: int
    currency: str
    order: str
    merchant: str
    status: str = "pending"
    language: str | None = None
    return_uri: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "operation": str(self.operation),
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "order": self.order,
            "merchant": self.merchant,
            "language": self.language,
            "return_uri": self.return_uri,
            "status": self.status,
        }


@dataclass(frozen=True)
class Charge:
    """One charge (or tokenisation) the sandbox made: what tests count. No card data."""

    token: str
    idempotency_key: str
    reference: str
    amount_minor: int
    currency: str
    last4: str
    authorization_code: str = ""
    card_token: str = ""

    def payment_json(self) -> dict[str, Any]:
        """The `payment` object of the paid transaction's GET answer (no card data)."""
        payment: dict[str, Any] = {
            "idempotency_key": self.idempotency_key,
            "result": "approved",
            "reference": self.reference,
            "authorization_code": self.authorization_code,
        }
        if self.card_token:
            payment["card_token"] = self.card_token
        return payment


class SandboxApp:
    """The sandbox platform as an ASGI callable. State lives in memory, per instance."""

    def __init__(
        self,
        secret: str = "",
        slow_delay_s: float = 12.0,
        merchant: str = DEFAULT_MERCHANT,
        clock: Callable[[], float] = time.time,
        remember: int = DEFAULT_REMEMBER,
    ) -> None:
        if remember < 1:
            raise ValueError("remember must be at least 1")
        self.secret = secret
        self.slow_delay_s = slow_delay_s
        self.merchant = merchant
        self.clock = clock
        self.remember = remember
        self.charges: list[Charge] = []  # oldest first, of the remembered transactions
        # Insertion-ordered: the oldest is the first key, forgotten first.
        self._transactions: dict[str, SandboxTransaction] = {}
        self._charges_by_token: dict[str, list[Charge]] = {}
        self._answers: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._in_flight: set[tuple[str, str]] = set()
        # One authorisation of a token at a time; a lock lives while someone holds or awaits it.
        self._token_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # Carried through after the client went away; kept referenced until done.
        self._processing: set[asyncio.Task[tuple[int, bytes]]] = set()

    def charges_of(self, token: str) -> list[Charge]:
        return list(self._charges_by_token.get(token, ()))

    def _keep_transaction(self, transaction: SandboxTransaction) -> None:
        """Remember `transaction` as the newest; forget the oldest past `remember`."""
        transactions = self._transactions
        transactions.pop(transaction.token, None)  # re-inserted: now the newest
        transactions[transaction.token] = transaction
        while len(transactions) > self.remember:
            oldest = next(iter(transactions))
            del transactions[oldest]
            for charge in self._charges_by_token.pop(oldest, ()):
                self.charges.remove(charge)  # near the front: the oldest (a C memmove)

    def transaction_json(self, transaction: SandboxTransaction) -> dict[str, Any]:
        """The GET answer: the transaction, and for a paid one its payment and charge count."""
        answer = transaction.to_json()
        charges = self.charges_of(transaction.token)
        if transaction.status == "paid" and charges:
            answer["payment"] = charges[0].payment_json()
            answer["charges"] = len(charges)
        return answer

    # ---- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._http(scope, receive, tracked_send)
        except Exception as exc:
            # Only the type: a message could quote the request, and the request holds a card.
            log.error("sandbox request failed: %s", type(exc).__name__)
            if not started:
                await _respond(send, 500, {"error": "internal error"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        segments = raw_path.decode("latin-1").split("/")[1:]
        if segments == ["healthz"]:
            if method not in ("GET", "HEAD"):
                await _respond(send, 405, {"error": "method not allowed"})
                return
            await _respond(send, 200, {"status": "ok"})
            return
        if segments[:2] != ["v1", "transactions"] or len(segments) > 4:
            await _respond(send, 404, {"error": "not found"})
            return

        body = await _read_body(receive)
        if body is None:
            await _respond(send, 413, {"error": "request body too large"})
            return
        headers = _headers(scope)
        if self.secret and not verify(
            self.secret, headers.get("x-spg-signature", ""), body, self.clock()
        ):
            log.warning("%s %s: missing or bad signature", method, scope["path"])
            await _respond(send, 401, {"error": "missing or bad X-SPG-Signature"})
            return

        if len(segments) == 2:
            if method != "POST":
                await _respond(send, 405, {"error": "method not allowed"})
                return
            await self._create(body, send)
            return

        token = unquote(segments[2])
        if len(segments) == 3:
            if method != "GET":
                await _respond(send, 405, {"error": "method not allowed"})
                return
            transaction = self._resolve(token)
            if transaction is None:
                await _respond(send, 404, {"error": "unknown transaction"})
                return
            await _respond(send, 200, self.transaction_json(transaction))
            return

        if segments[3] != "authorize":
            await _respond(send, 404, {"error": "not found"})
            return
        if method != "POST":
            await _respond(send, 405, {"error": "method not allowed"})
            return
        status, answer = await self._authorize(token, headers.get("idempotency-key", ""), body)
        await _send_raw(send, status, answer)

    # ---- transactions -------------------------------------------------------------------------

    def _resolve(self, token: str) -> SandboxTransaction | None:
        """A created or paid transaction, or the one an `sbx-...` token describes."""
        if not valid_token(token):
            return None
        known = self._transactions.get(token)
        if known is not None:
            return known
        match = SANDBOX_TOKEN.fullmatch(token)
        if match is None:
            return None
        amount = int(match.group(1))
        suffix = match.group(3) or ""
        return SandboxTransaction(
            token=token,
            operation=Operation.TOKENIZE if amount == 0 else Operation.SALE,
            amount_minor=amount,
            currency=match.group(2).upper(),
            order=token,
            merchant=self.merchant,
            status="expired" if suffix.startswith("expired") else "pending",
        )

    def create_transaction(
        self,
        amount_minor: int,
        currency: str,
        operation: Operation | str | None = None,
        merchant: str | None = None,
        order: str | None = None,
        language: str | None = None,
        return_uri: str | None = None,
    ) -> SandboxTransaction:
        """What `POST /v1/transactions` does; raises BadRequest naming the bad field."""
        if type(amount_minor) is not int or not 0 <= amount_minor <= MAX_AMOUNT_MINOR:
            raise BadRequest("amount_minor")
        if not isinstance(currency, str) or not re.fullmatch(r"[A-Za-z]{3}", currency):
            raise BadRequest("currency")
        if operation is None:
            operation = Operation.SALE if amount_minor else Operation.TOKENIZE
        try:
            op = Operation(operation)
        except ValueError:
            raise BadRequest("operation") from None
        if (op is Operation.TOKENIZE) != (amount_minor == 0):
            raise BadRequest("amount_minor")  # tokenize has no amount; a sale needs one
        for name, value, limit in (
            ("merchant", merchant, 100),
            ("order", order, 100),
            ("language", language, 16),
            ("return_uri", return_uri, 512),
        ):
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= limit):
                raise BadRequest(name)
        suffix = "".join(secrets.choice(_ALNUM_LOWER) for _ in range(10))
        token = f"sbx-{amount_minor}-{currency.upper()}-{suffix}"
        transaction = SandboxTransaction(
            token=token,
            operation=op,
            amount_minor=amount_minor,
            currency=currency.upper(),
            order=order or token,
            merchant=merchant or self.merchant,
            language=language,
            return_uri=return_uri,
        )
        self._keep_transaction(transaction)
        return transaction

    async def _create(self, body: bytes, send: Send) -> None:
        try:
            data = _json_object(body)
            unknown = set(data) - {
                "amount_minor",
                "currency",
                "operation",
                "merchant",
                "order",
                "language",
                "return_uri",
            }
            if unknown:
                raise BadRequest("unknown field")
            if "amount_minor" not in data and data.get("operation") != "tokenize":
                raise BadRequest("amount_minor")
            transaction = self.create_transaction(
                data.get("amount_minor", 0),
                data.get("currency"),  # type: ignore[arg-type]  # validated inside
                data.get("operation"),
                data.get("merchant"),
                data.get("order"),
                data.get("language"),
                data.get("return_uri"),
            )
        except BadRequest as exc:
            await _respond(send, 400, {"error": f"invalid {exc}"})
            return
        log.info("transaction %s created", transaction.token)
        await _respond(send, 201, transaction.to_json())

    # ---- authorisation ------------------------------------------------------------------------

    async def _authorize(self, token: str, key: str, body: bytes) -> tuple[int, bytes]:
        transaction = self._resolve(token)
        if transaction is None:
            return _encode(404, {"error": "unknown transaction"})
        if not key or len(key) > 255:
            return _encode(400, {"error": "missing Idempotency-Key"})
        slot = (token, key)
        remembered = self._answers.get(slot)
        if remembered is not None:
            log.info("authorize %s: repeated Idempotency-Key, first answer returned", token)
            return remembered
        if slot in self._in_flight:
            return _encode(409, {"error": "a request with this Idempotency-Key is in progress"})
        try:
            number, attempt = _parse_authorization(body)
        except BadRequest as exc:
            log.info("authorize %s: bad request (%s)", token, exc)
            return _encode(400, {"error": f"invalid {exc}"})
        if not luhn_valid(number):
            log.info("authorize %s: card number fails the Luhn check", token)
            return _encode(400, {"error": "invalid card number"})
        last4 = number[-4:]
        behaviour, decline_code = TEST_CARDS.get(number, (APPROVE, ""))
        del number  # the card is not needed beyond this point

        # From here the platform has the request: it is carried through even if the client
        # goes away (shielded), like a real platform that charges and keeps the answer.
        self._in_flight.add(slot)
        task = asyncio.get_running_loop().create_task(
            self._decide(slot, attempt, behaviour, decline_code, last4)
        )
        self._processing.add(task)
        task.add_done_callback(self._processing.discard)
        return await asyncio.shield(task)

    async def _decide(
        self,
        slot: tuple[str, str],
        attempt: int,
        behaviour: str,
        decline_code: str,
        last4: str,
    ) -> tuple[int, bytes]:
        token, key = slot
        try:
            async with self._token_lock(token):
                if behaviour == FAIL:
                    log.info("authorize %s attempt %d: simulated platform failure", token, attempt)
                    return _encode(500, {"error": "simulated platform failure"})
                if behaviour == SLOW:
                    await asyncio.sleep(self.slow_delay_s)
                # Looked at under the token's lock: another key may have paid it meanwhile.
                transaction = self._resolve(token)
                if transaction is None:
                    return _encode(404, {"error": "unknown transaction"})
                if transaction.status != "pending":
                    code = "already_paid" if transaction.status == "paid" else transaction.status
                    log.info(
                        "authorize %s attempt %d: token is %s", token, attempt, transaction.status
                    )
                    return self._remember(slot, _declined(code))
                if decline_code:
                    answer = _declined(decline_code)
                else:
                    answer = self._approve(transaction, key, last4)
                log.info(
                    "authorize %s attempt %d: %s %s",
                    token,
                    attempt,
                    answer["result"],
                    answer["reference"],
                )
                return self._remember(slot, answer)
        finally:
            self._in_flight.discard(slot)

    @contextlib.asynccontextmanager
    async def _token_lock(self, token: str) -> AsyncIterator[None]:
        lock, users = self._token_locks.get(token, (asyncio.Lock(), 0))
        self._token_locks[token] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._token_locks[token]
            if users <= 1:
                del self._token_locks[token]
            else:
                self._token_locks[token] = (lock, users - 1)

    def _approve(self, transaction: SandboxTransaction, key: str, last4: str) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "result": "approved",
            "reference": _reference(),
            "authorization_code": "".join(secrets.choice(string.digits) for _ in range(6)),
        }
        if transaction.operation in (Operation.SALE_TOKENIZE, Operation.TOKENIZE):
            answer["card_token"] = "tok_" + "".join(
                secrets.choice(string.ascii_letters) for _ in range(20)
            )
        transaction.status = "paid"
        charge = Charge(
            token=transaction.token,
            idempotency_key=key,
            reference=answer["reference"],
            amount_minor=transaction.amount_minor,
            currency=transaction.currency,
            last4=last4,
            authorization_code=answer["authorization_code"],
            card_token=answer.get("card_token", ""),
        )
        self.charges.append(charge)
        self._charges_by_token.setdefault(transaction.token, []).append(charge)
        self._keep_transaction(transaction)
        return answer

    def _remember(self, slot: tuple[str, str], answer: dict[str, Any]) -> tuple[int, bytes]:
        encoded = _encode(200, answer)
        answers = self._answers
        answers[slot] = encoded
        while len(answers) > 4 * self.remember:  # a few attempts a transaction
            del answers[next(iter(answers))]
        return encoded


# ---- helpers ------------------------------------------------------------------------------------


def _reference() -> str:
    return "SBX" + "".join(secrets.choice(_ALNUM_UPPER) for _ in range(8))


def _declined(code: str) -> dict[str, Any]:
    return {"result": "declined", "reference": _reference(), "decline_code": code}


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise BadRequest("JSON") from None  # the decoder's message would quote the body
    if not isinstance(data, dict):
        raise BadRequest("JSON")
    return data


def _parse_authorization(body: bytes) -> tuple[str, int]:
    """(card number, attempt) after checking every field; errors name the field only."""
    data = _json_object(body)
    card = data.get("card")
    if not isinstance(card, dict):
        raise BadRequest("card")
    number = card.get("number")
    if not isinstance(number, str) or not re.fullmatch(r"[0-9]{12,19}", number):
        raise BadRequest("card number")
    month = card.get("exp_month")
    if type(month) is not int or not 1 <= month <= 12:
        raise BadRequest("exp_month")
    year = card.get("exp_year")
    if type(year) is not int or not 2000 <= year <= 2099:
        raise BadRequest("exp_year")
    cvc = card.get("cvc")
    if not isinstance(cvc, str) or not re.fullmatch(r"[0-9]{3,4}", cvc):
        raise BadRequest("cvc")
    attempt = data.get("attempt")
    if type(attempt) is not int or not 1 <= attempt <= 100:
        raise BadRequest("attempt")
    return number, attempt


def _headers(scope: Scope) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in scope.get("headers", [])
    }


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None above MAX_BODY_BYTES."""
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks += message.get("body", b"")
        if len(chunks) > MAX_BODY_BYTES:
            return None
        if not message.get("more_body", False):
            break
    return bytes(chunks)


def _encode(status: int, payload: dict[str, Any]) -> tuple[int, bytes]:
    return status, json.dumps(payload, separators=(",", ":")).encode("utf-8")


async def _send_raw(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _respond(send: Send, status: int, payload: dict[str, Any]) -> None:
    await _send_raw(send, *_encode(status, payload))


async def serve_sandbox(
    host: str,
    port: int,
    secret: str,
    *,
    slow_delay_s: float = 12.0,
    started: asyncio.Event | None = None,
) -> None:
    """Serve the sandbox platform with uvicorn until cancelled or interrupted.

    `started` (optional) is set once the socket listens, for callers that wait on it.
    """
    import uvicorn

    app = SandboxApp(secret=secret, slow_delay_s=slow_delay_s)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_config=None,  # keep the process's logging setup (JSON logs, masking filter)
        access_log=True,  # method, path (the token) and status: no bodies
    )
    server = uvicorn.Server(config)
    # Bind here: a port in use is then an OSError for the caller, not uvicorn's sys.exit().
    listener = _bind(host, port)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            if serving.done():
                await serving
                return
            await asyncio.sleep(0.01)
        if started is not None:
            started.set()
        await serving
    finally:
        if not serving.done():
            # Cancelled from outside: let uvicorn close its sockets and finish the lifespan.
            server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(serving), timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                serving.cancel()
        listener.close()


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
        listener.set_inheritable(True)
    except OSError:
        listener.close()
        raise
    return listener
