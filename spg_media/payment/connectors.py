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
`authorize` never raises — timeouts, 5xx, resets, non-200 answers and malformed JSON all end
as `Result.ERROR`, and a retry is only ever made by the caller with a new attempt number.
"""

from __future__ import annotations

import asyncio
import ipaddress
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


class ConnectorError(Exception):
    """The platform could not answer a lookup. The message never contains card data."""


class Connector(Protocol):
    async def lookup(self, token: str) -> TransactionInfo | None:
        """The transaction, None when unknown; ConnectorError on platform/network failure."""
        ...

    async def authorize(
        self, tx: TransactionInfo, card: CardData, attempt: int, idempotency_key: str
    ) -> AuthorizationResult:
        """Approved, declined, or ERROR with an operator-facing detail; never raises."""
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("connector url must be an http:// or https:// URL with a host")
        if parts.scheme == "http" and transport is None and not _is_loopback(parts.hostname):
            log.warning("payment platform URL is plain http to %s: use https", parts.hostname)
        self.base_url = url.rstrip("/")
        self.secret = secret
        self.timeout_s = timeout_s
        self.clock = clock
        self._transport = transport
        # One trust for both requests: the CAs of certifi (which httpx ships with), not the
        # environment's SSL_CERT_FILE/SSL_CERT_DIR, which ssl's defaults would read.
        self._ssl_context = ssl.create_default_context(cafile=certifi.where())
        self._ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        # No event hooks, no redirects (a redirect would re-send the card elsewhere), no cookies
        # to keep; the body is built per request and not kept.
        self._client = httpx.AsyncClient(
            transport=transport,
            verify=self._ssl_context,
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
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
        url = f"{self.base_url}/v1/transactions/{quote(token, safe='')}"
        try:
            async with asyncio.timeout(self.timeout_s):
                request = self._client.build_request("GET", url, headers=self._signed(b""))
                status, content = await self._exchange(request)
        except TimeoutError:
            raise ConnectorError(f"lookup timed out after {self.timeout_s:g} s") from None
        except Exception as exc:  # network, TLS, protocol, a broken transport: all "cannot tell"
            raise ConnectorError(f"lookup failed: {type(exc).__name__}") from None
        if status == 404:
            return None
        if status != 200:
            raise ConnectorError(f"lookup answered HTTP {status}")
        if content is None:
            raise ConnectorError("lookup answer too large")
        try:
            return _transaction_info(token, content)
        except InvalidAnswer as exc:
            raise ConnectorError(f"lookup answer invalid: {exc}") from None

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
            return _error(f"platform did not answer within {self.timeout_s:g} s")
        except Exception as exc:  # resets, TLS, protocol errors, a broken transport: all ERROR
            log.warning("authorize %s attempt %d: %s", tx.token, attempt, type(exc).__name__)
            return _error(f"request failed: {type(exc).__name__}")
        if status != 200:
            log.warning("authorize %s attempt %d: HTTP %d", tx.token, attempt, status)
            return _error(f"platform answered HTTP {status}")
        if content is None:
            return _error("platform answer too large")
        try:
            result = _authorization_result(content)
        except InvalidAnswer as exc:
            log.warning("authorize %s attempt %d: invalid answer (%s)", tx.token, attempt, exc)
            return _error(f"platform answer invalid: {exc}")
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
            result = AuthorizationResult(
                result.result,
                reference="" if "reference" in echoed else result.reference,
                authorization_code=""
                if "authorization_code" in echoed
                else result.authorization_code,
                card_token="" if "card_token" in echoed else result.card_token,
                decline_code="" if "decline_code" in echoed else result.decline_code,
            )
        log.info(
            "authorize %s attempt %d (%s): %s %s",
            tx.token,
            attempt,
            card.masked(),
            result.result,
            result.reference,
        )
        return result

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
            request = self._client.build_request(
                "POST", url, content=bytes(body), headers=headers
            )
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
    data = _json_object(content)
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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_connector(kind: str, url: str, secret: str, timeout_s: float) -> Connector:
    """`sandbox`: the sandbox platform in-process over ASGI; `http`: the platform at `url`."""
    if kind == "sandbox":
        from spg_media.payment.sandbox import SandboxApp

        # The slow test card must answer after the connector's timeout, whatever it is.
        app = SandboxApp(secret=secret, slow_delay_s=max(12.0, timeout_s + 2.0))
        return HttpConnector(
            SANDBOX_BASE_URL, secret, timeout_s, transport=httpx.ASGITransport(app=app)
        )
    if kind == "http":
        if not url:
            raise ValueError("the http connector needs gateway.url")
        return HttpConnector(url, secret, timeout_s)
    raise ValueError(f"unknown connector kind {kind!r} (sandbox or http)")
