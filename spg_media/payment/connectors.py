"""Payment platform connectors: the generic HTTP protocol of the payment platform.

This module owns talking to the payment platform. `HttpConnector.authorize` is the one place
where card data leaves the process: it has `card_request` write the card into one body buffer,
signs it, posts it (over a connection of its own, not httpx: see `card_request`), and wipes
it. Everything else a connector hands back — `TransactionInfo`, `AuthorizationResult`,
`ConnectorError`, log records — is built from the platform's answer, status codes and
exception *type names*, never from the request.

`make_connector("sandbox", ...)` runs the same `HttpConnector` over `httpx.ASGITransport` to
an in-process `SandboxApp`, so the default setup exercises exactly the production protocol.

Failure rules: `lookup` returns None for an unknown token (404, or a token that is not a
URL-safe word, which is never sent) and raises `ConnectorError` when it cannot tell;
`authorize` never raises and never sends the card twice: the POST is made once, and an answer
that leaves open whether the platform charged is settled by asking it (`check_payment`).

Reconciliation. After a timeout, a reset or any other transport failure, a 5xx, a 409 (our key
still being processed) or a 200 that cannot be read, the platform may have charged. The
connector then looks the transaction up, polling with a short backoff for at most
`reconcile_s`: the GET answer of a paid transaction carries `payment: {idempotency_key, result,
reference, authorization_code?, card_token?}`.

- paid under OUR idempotency key: `approved`, with the payment's reference and codes;
- paid under another key, or expired: ours did not charge (`error`, not charged);
- pending: when the platform answered our POST (a 500, 501, 503, or an unreadable 200) nothing
  of ours is left in flight, so not charged; when it may still be working on it (a timeout, a
  reset, 502, 504, 409), ask again until the window ends;
- still undecided at the end of the window, or paid without a `payment` object: `error` with
  `charge_unknown` (charge state `unknown`).

A refused connection (connect error, TLS handshake failure) never reached the platform and a
4xx other than 409 is a refusal: both are `error`, not charged, without reconciliation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import certifi
import httpx

from spg_media.config import is_loopback_host
from spg_media.observability import CONNECTOR_LATENCY_SECONDS, CONNECTOR_REQUESTS_TOTAL
from spg_media.payment import card_request
from spg_media.payment.model import (
    AuthorizationResult,
    CardData,
    Operation,
    Result,
    TransactionInfo,
)
from spg_media.payment.signing import SIGNATURE_HEADER, sign

log = logging.getLogger("spg.connector")

VALID_TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,128}")
VALID_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII: safe in a header
TRANSACTION_STATUS = re.compile(r"[a-z][a-z_-]{0,31}")
CURRENCY = re.compile(r"[A-Z]{3}")
MAX_ANSWER_BYTES = 64 * 1024
MAX_FIELD_CHARS = 256
SANDBOX_BASE_URL = "http://sandbox.spg.invalid"
_HEADERS = {"User-Agent": "spg-media", "Accept": "application/json"}
DEFAULT_RECONCILE_S = 20.0
RECONCILE_FIRST_DELAY_S = 0.25  # then doubling, up to RECONCILE_MAX_DELAY_S
RECONCILE_MAX_DELAY_S = 2.0
# Answers after which our request may still be in progress: 409 (a request with our key is
# being processed) and a proxy's 502/504 (the platform behind it may still be working on it).
IN_FLIGHT_STATUSES = frozenset({409, 502, 504})


class ConnectorError(Exception):
    """The platform could not answer a lookup. The message never contains card data."""


@dataclasses.dataclass(frozen=True)
class PaymentCheck:
    """What the platform's transaction says about the authorisation made with one key.

    `state`: "charged" (paid under this key: `result` is its approved answer), "not-charged"
    (expired, or paid under another key), "pending" (not paid yet), "unknown" (paid, but the
    answer does not say under which key; or a status outside the protocol).
    """

    state: str
    status: str
    result: AuthorizationResult | None = None
    reason: str = ""


class Connector(Protocol):
    async def lookup(self, token: str) -> TransactionInfo | None:
        """The transaction, None when unknown; ConnectorError on platform/network failure."""
        ...

    async def authorize(
        self, tx: TransactionInfo, card: CardData, attempt: int, idempotency_key: str
    ) -> AuthorizationResult:
        """Approved, declined, or ERROR with an operator-facing detail; never raises. Settles
        an uncertain answer by reconciliation (module docstring) before returning."""
        ...

    async def check_payment(self, token: str, idempotency_key: str) -> PaymentCheck:
        """One look at the transaction for the payment made with `idempotency_key`;
        ConnectorError when the platform cannot be asked or its answer cannot be read."""
        ...

    async def aclose(self) -> None: ...


def valid_token(token: str) -> bool:
    """URL-safe words only; '.' and '..' alone would be path segments, not tokens."""
    return bool(VALID_TOKEN.fullmatch(token)) and token.strip(".") != ""


class InvalidAnswer(Exception):
    """The platform's JSON does not follow the protocol; the message names the field only."""


class HttpConnector:
    """The generic protocol over one `httpx.AsyncClient` (pooled connections, TLS verified)."""

    def __init__(
        self,
        url: str,
        secret: str,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        reconcile_s: float = DEFAULT_RECONCILE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("connector url must be an http:// or https:// URL with a host")
        if parts.scheme == "http" and transport is None and not is_loopback_host(parts.hostname):
            log.warning("payment platform URL is plain http to %s: use https", parts.hostname)
        self.base_url = url.rstrip("/")
        self.secret = secret
        self.timeout_s = timeout_s
        self.reconcile_s = reconcile_s
        self.clock = clock
        self._transport = transport
        # One trust for both requests: the CAs of certifi (which httpx ships with), not the
        # environment's SSL_CERT_FILE/SSL_CERT_DIR, which ssl's defaults would read.
        self._ssl_context = ssl.create_default_context(cafile=certifi.where())
        self._ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        # No event hooks, no redirects (a redirect would re-send the card elsewhere), no cookies
        # to keep; the body is built per request and not kept. Nothing from the environment:
        # an HTTPS_PROXY or SSL_CERT_FILE the process inherited must not route the card through
        # a proxy or trust another CA.
        self._client = httpx.AsyncClient(
            transport=transport,
            verify=self._ssl_context,
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            trust_env=False,
            headers=_HEADERS,
        )

    # ---- lookup -------------------------------------------------------------------------------

    async def lookup(self, token: str) -> TransactionInfo | None:
        started = time.perf_counter()
        outcome = "error"
        try:
            info = await self._lookup(token)
            outcome = "not_found" if info is None else "found"
            return info
        finally:
            CONNECTOR_REQUESTS_TOTAL.inc(op="lookup", outcome=outcome)
            CONNECTOR_LATENCY_SECONDS.observe(time.perf_counter() - started)

    async def _lookup(self, token: str) -> TransactionInfo | None:
        if not valid_token(token):
            log.info("transaction token rejected without a request: not a URL-safe word")
            return None
        content = await self._get_transaction(token, self.timeout_s)
        if content is None:
            return None
        try:
            return _transaction_info(token, content)
        except InvalidAnswer as exc:
            raise ConnectorError(f"lookup answer invalid: {exc}") from None

    async def _get_transaction(self, token: str, timeout_s: float) -> bytes | None:
        """The GET answer's body; None for 404; ConnectorError when the platform cannot tell."""
        url = f"{self.base_url}/v1/transactions/{quote(token, safe='')}"
        try:
            async with asyncio.timeout(timeout_s):
                request = self._client.build_request("GET", url, headers=self._signed(b""))
                status, content = await self._exchange(request)
        except TimeoutError:
            raise ConnectorError(f"lookup timed out after {timeout_s:g} s") from None
        except Exception as exc:  # network, TLS, protocol, a broken transport: all "cannot tell"
            raise ConnectorError(f"lookup failed: {type(exc).__name__}") from None
        if status == 404:
            return None
        if status != 200:
            raise ConnectorError(f"lookup answered HTTP {status}")
        if content is None:
            raise ConnectorError("lookup answer too large")
        return content

    # ---- what the platform says about one payment ---------------------------------------------

    async def check_payment(self, token: str, idempotency_key: str) -> PaymentCheck:
        return await self._check_payment(token, idempotency_key, self.timeout_s)

    async def _check_payment(
        self, token: str, idempotency_key: str, timeout_s: float
    ) -> PaymentCheck:
        outcome = "error"
        try:
            if not valid_token(token):
                raise ConnectorError("transaction token is not a URL-safe word")
            content = await self._get_transaction(token, timeout_s)
            if content is None:
                raise ConnectorError("the platform does not know the transaction (HTTP 404)")
            try:
                check = _payment_check(token, idempotency_key, content)
            except InvalidAnswer as exc:
                raise ConnectorError(f"lookup answer invalid: {exc}") from None
            outcome = check.state
            return check
        finally:
            CONNECTOR_REQUESTS_TOTAL.inc(op="check", outcome=outcome)

    # ---- authorisation ------------------------------------------------------------------------

    async def authorize(
        self, tx: TransactionInfo, card: CardData, attempt: int, idempotency_key: str
    ) -> AuthorizationResult:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await self._authorize(tx, card, attempt, idempotency_key)
            outcome = str(result.result)
            return result
        finally:
            CONNECTOR_REQUESTS_TOTAL.inc(op="authorize", outcome=outcome)
            CONNECTOR_LATENCY_SECONDS.observe(time.perf_counter() - started)

    async def _authorize(
        self, tx: TransactionInfo, card: CardData, attempt: int, idempotency_key: str
    ) -> AuthorizationResult:
        if not valid_token(tx.token):
            return _error("transaction token is not a URL-safe word")
        if not VALID_IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            return _error("idempotency key must be 1-255 visible ASCII characters")
        url = f"{self.base_url}/v1/transactions/{quote(tx.token, safe='')}/authorize"
        try:
            async with asyncio.timeout(self.timeout_s):
                status, content = await self._post_card(url, card, attempt, idempotency_key)
        except TimeoutError:
            log.warning("authorize %s attempt %d: timed out", tx.token, attempt)
            why = f"platform did not answer within {self.timeout_s:g} s"
            result = await self._reconcile(tx.token, idempotency_key, attempt, why, in_flight=True)
        except (httpx.ConnectError, httpx.ConnectTimeout, card_request.NotSent) as exc:
            # No connection, no request: the platform cannot have charged.
            log.warning("authorize %s attempt %d: %s", tx.token, attempt, type(exc).__name__)
            return _error(f"cannot reach the platform: {type(exc).__name__}")
        except Exception as exc:  # resets, TLS, protocol errors, a broken transport
            log.warning("authorize %s attempt %d: %s", tx.token, attempt, type(exc).__name__)
            why = f"request failed: {type(exc).__name__}"
            result = await self._reconcile(tx.token, idempotency_key, attempt, why, in_flight=True)
        else:
            result = await self._answer(tx.token, idempotency_key, attempt, status, content)
        echoed = _echoing_card(result, card)
        if echoed:
            # A platform that echoes the card number: those fields go, the result stays (the
            # card may be charged: calling that an error would invite a second charge).
            log.warning(
                "authorize %s attempt %d: the card number in %s, dropped",
                tx.token,
                attempt,
                ", ".join(echoed),
            )
            result = dataclasses.replace(
                result,
                reference="" if "reference" in echoed else result.reference,
                authorization_code=""
                if "authorization_code" in echoed
                else result.authorization_code,
                card_token="" if "card_token" in echoed else result.card_token,
                decline_code="" if "decline_code" in echoed else result.decline_code,
            )
        if result.result is Result.ERROR:
            return result
        log.info(
            "authorize %s attempt %d (%s): %s %s",
            tx.token,
            attempt,
            card.masked(),
            result.result,
            result.reference,
        )
        return result

    async def _answer(
        self, token: str, key: str, attempt: int, status: int, content: bytes | None
    ) -> AuthorizationResult:
        """The platform's answer to our POST, reconciled when it leaves the charge open."""
        if status != 200:
            log.warning("authorize %s attempt %d: HTTP %d", token, attempt, status)
            why = f"platform answered HTTP {status}"
            if status >= 500 or status in IN_FLIGHT_STATUSES:
                in_flight = status in IN_FLIGHT_STATUSES
                return await self._reconcile(token, key, attempt, why, in_flight=in_flight)
            return _error(why)  # a refusal: nothing was charged
        if content is None:
            why = "platform answer too large"
            return await self._reconcile(token, key, attempt, why, in_flight=False)
        try:
            return _authorization_result(content)
        except InvalidAnswer as exc:
            log.warning("authorize %s attempt %d: invalid answer (%s)", token, attempt, exc)
            why = f"platform answer invalid: {exc}"
            return await self._reconcile(token, key, attempt, why, in_flight=False)

    async def _reconcile(
        self, token: str, key: str, attempt: int, why: str, *, in_flight: bool
    ) -> AuthorizationResult:
        """Ask the platform whether our key charged, for at most `reconcile_s`.

        `in_flight`: our request may still be processed (so "pending" is no answer yet).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconcile_s
        delay = RECONCILE_FIRST_DELAY_S
        last = "no answer"
        while (remaining := deadline - loop.time()) > 0:
            try:
                check = await self._check_payment(token, key, min(self.timeout_s, remaining))
            except ConnectorError as exc:
                last = str(exc)
            else:
                if check.state == "charged" and check.result is not None:
                    log.warning(
                        "authorize %s attempt %d: %s, but the platform charged it: %s",
                        token, attempt, why, check.result.reference,
                    )  # fmt: skip
                    return check.result
                if check.state == "not-charged" or (check.state == "pending" and not in_flight):
                    reason = check.reason or "the transaction is still pending"
                    log.warning(
                        "authorize %s attempt %d: %s; not charged (%s)", token, attempt, why, reason
                    )
                    return _error(f"{why}; not charged: {reason}")
                if check.state == "unknown":
                    last = check.reason
                    break  # the answer will not change by asking again
                last = f"the transaction is {check.status}"
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, RECONCILE_MAX_DELAY_S)
        log.error(
            "authorize %s attempt %d: %s; charge state unknown after %g s of reconciliation (%s)",
            token, attempt, why, self.reconcile_s, last,
        )  # fmt: skip
        return AuthorizationResult(
            Result.ERROR, detail=f"{why}; charge state unknown ({last})", charge_unknown=True
        )

    async def _post_card(
        self, url: str, card: CardData, attempt: int, idempotency_key: str
    ) -> tuple[int, bytes | None]:
        # The only place card digits leave the card type: into one buffer (card_request), which
        # is signed and sent as it is and wiped here, whatever happens.
        body = card_request.build_body(card, attempt)
        try:
            headers = self._signed(body)
            headers["Content-Type"] = "application/json"
            headers["Idempotency-Key"] = idempotency_key
            if self._transport is None:
                return await card_request.post(
                    url,
                    [*_HEADERS.items(), *headers.items()],
                    body,
                    ssl_context=self._ssl_context,
                    max_answer_bytes=MAX_ANSWER_BYTES,
                )
            # An httpx transport given (the in-process sandbox, tests): it needs its own copy.
            request = self._client.build_request("POST", url, content=bytes(body), headers=headers)
            return await self._exchange(request)
        finally:
            card_request.wipe(body)

    async def _exchange(self, request: httpx.Request) -> tuple[int, bytes | None]:
        """(status, body or None when above MAX_ANSWER_BYTES); the response is not kept."""
        response = await self._client.send(request, stream=True)
        try:
            chunks = bytearray()
            async for chunk in response.aiter_bytes():
                chunks += chunk
                if len(chunks) > MAX_ANSWER_BYTES:
                    return response.status_code, None
            return response.status_code, bytes(chunks)
        finally:
            await response.aclose()

    def _signed(self, body: bytes | bytearray) -> dict[str, str]:
        return {SIGNATURE_HEADER: sign(self.secret, body, int(self.clock()))}

    async def aclose(self) -> None:
        await self._client.aclose()


# ---- answers ------------------------------------------------------------------------------------


def _error(detail: str) -> AuthorizationResult:
    return AuthorizationResult(Result.ERROR, detail=detail)


def _json_object(content: bytes) -> dict[str, Any]:
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise InvalidAnswer("not JSON") from None
    if not isinstance(data, dict):
        raise InvalidAnswer("not a JSON object")
    return data


def _text(data: dict[str, Any], name: str, *, required: bool) -> str:
    """A short printable string field ('' when optional and absent or null)."""
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidAnswer(f"{name} missing")
        return ""
    if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS or not value.isprintable():
        raise InvalidAnswer(f"{name} is not a short string")
    return value


def _echoing_card(result: AuthorizationResult, card: CardData) -> list[str]:
    """The answer's fields that hold the card number, separators or not. A long digit run alone
    is no reason (numeric references, tokens and order numbers are common): only this card's
    number, which must not reach headers, CDRs or logs through the platform's answer."""
    return [
        name
        for name in _ANSWER_FIELDS
        if card.pan.occurs_in(re.sub(r"[^0-9]", "", getattr(result, name)))
    ]


_ANSWER_FIELDS = ("reference", "authorization_code", "card_token", "decline_code")


def _authorization_result(content: bytes) -> AuthorizationResult:
    return _authorization_fields(_json_object(content))


def _authorization_fields(data: dict[str, Any]) -> AuthorizationResult:
    result = data.get("result")
    if result not in ("approved", "declined"):
        raise InvalidAnswer("result is not approved or declined")
    reference = _text(data, "reference", required=True)
    authorization_code = _text(data, "authorization_code", required=False)
    card_token = _text(data, "card_token", required=False)
    decline_code = _text(data, "decline_code", required=False)
    if result == "approved":
        return AuthorizationResult(
            Result.APPROVED,
            reference=reference,
            authorization_code=authorization_code,
            card_token=card_token,
        )
    return AuthorizationResult(Result.DECLINED, reference=reference, decline_code=decline_code)


def _payment_check(token: str, key: str, content: bytes) -> PaymentCheck:
    """The GET answer read for the payment made with `key` (module docstring)."""
    data = _json_object(content)
    if data.get("token") != token:
        raise InvalidAnswer("token does not match the one looked up")
    status = data.get("status")
    if not isinstance(status, str) or not TRANSACTION_STATUS.fullmatch(status):
        raise InvalidAnswer("status")
    if status == "pending":
        return PaymentCheck("pending", status)
    if status == "expired":
        return PaymentCheck("not-charged", status, reason="the transaction expired")
    if status != "paid":
        return PaymentCheck("unknown", status, reason=f"status {status} is not in the protocol")
    payment = data.get("payment")
    if payment is None:
        return PaymentCheck("unknown", status, reason="paid, but the answer names no payment")
    if not isinstance(payment, dict):
        raise InvalidAnswer("payment is not an object")
    paid_key = payment.get("idempotency_key")
    if not isinstance(paid_key, str) or not paid_key:
        raise InvalidAnswer("payment.idempotency_key")
    if paid_key != key:
        return PaymentCheck("not-charged", status, reason="paid by another authorisation")
    try:
        result = _authorization_fields(payment)
    except InvalidAnswer as exc:
        raise InvalidAnswer(f"payment.{exc}") from None
    if result.result is not Result.APPROVED:
        raise InvalidAnswer("payment.result of a paid transaction is not approved")
    return PaymentCheck("charged", status, result=result)


def _transaction_info(token: str, content: bytes) -> TransactionInfo:
    data = _json_object(content)
    if data.get("token") != token:
        raise InvalidAnswer("token does not match the one looked up")
    operation_name = data.get("operation")
    if not isinstance(operation_name, str) or operation_name not in {op.value for op in Operation}:
        raise InvalidAnswer("operation")
    operation = Operation(operation_name)
    amount = data.get("amount_minor")
    if type(amount) is not int or amount < 0:
        raise InvalidAnswer("amount_minor")
    if operation is not Operation.TOKENIZE and amount == 0:
        raise InvalidAnswer("amount_minor")
    currency = data.get("currency")
    if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
        raise InvalidAnswer("currency")
    status = data.get("status")
    # pending | paid | expired in the contract; any other word is passed on too, and the call
    # layer treats everything but pending as an invalid transaction.
    if not isinstance(status, str) or not TRANSACTION_STATUS.fullmatch(status):
        raise InvalidAnswer("status")
    return TransactionInfo(
        token=token,
        operation=operation,
        amount_minor=amount,
        currency=currency,
        order=_text(data, "order", required=True),
        merchant=_text(data, "merchant", required=True),
        status=status,
        language=_text(data, "language", required=False) or None,
        return_uri=_text(data, "return_uri", required=False) or None,
    )


def make_connector(
    kind: str,
    url: str,
    secret: str,
    timeout_s: float,
    reconcile_s: float = DEFAULT_RECONCILE_S,
) -> Connector:
    """`sandbox`: the sandbox platform in-process over ASGI; `http`: the platform at `url`."""
    if kind == "sandbox":
        from spg_media.payment.sandbox import SandboxApp

        # The slow test card charges after the connector's timeout, whatever it is, and within
        # the reconciliation window, where the node finds the charge.
        slow_delay_s = timeout_s + min(2.0, reconcile_s / 2)
        app = SandboxApp(secret=secret, slow_delay_s=slow_delay_s)
        return HttpConnector(
            SANDBOX_BASE_URL,
            secret,
            timeout_s,
            transport=httpx.ASGITransport(app=app),
            reconcile_s=reconcile_s,
        )
    if kind == "http":
        if not url:
            raise ValueError("the http connector needs gateway.url")
        return HttpConnector(url, secret, timeout_s, reconcile_s=reconcile_s)
    raise ValueError(f"unknown connector kind {kind!r} (sandbox or http)")
