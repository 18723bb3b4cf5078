"""The HTTP connector against the in-process sandbox and against scripted platforms.

No sockets: the sandbox runs over httpx.ASGITransport, scripted platforms over MockTransport,
and the leak test also drives httpx's real HTTP/1.1 stack (httpcore) over its mock network
backend, so httpcore's DEBUG logging is part of what is searched for card data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpcore
import httpx
import pytest

from spg_media.payment.connectors import (
    ConnectorError,
    HttpConnector,
    make_connector,
    valid_token,
)
from spg_media.payment.model import (
    AuthorizationResult,
    CardData,
    ChargeState,
    Operation,
    Result,
    SecretDigits,
    TransactionInfo,
)
from spg_media.payment.sandbox import SandboxApp
from spg_media.payment.signing import verify

T = TypeVar("T")
SECRET = "gateway-secret"
NOW = 1_700_000_000.0
BASE = "https://platform.test/api"

Handler = Callable[[httpx.Request], httpx.Response]


def run(coro: Awaitable[T]) -> T:
    async def wrapped() -> T:
        return await coro

    return asyncio.run(wrapped())


def card(number: str = "4111111111111111", cvc: str = "123", brand: str = "visa") -> CardData:
    return CardData(SecretDigits(number), 12, 2030, SecretDigits(cvc), brand)


def tx(token: str = "sbx-4990-EUR-1", operation: Operation = Operation.SALE) -> TransactionInfo:
    return TransactionInfo(token, operation, 4990, "EUR", token, "Sandbox Shop")


def over_sandbox(
    app: SandboxApp | None = None,
    timeout_s: float = 2.0,
    secret: str = "",
    reconcile_s: float = 2.0,
) -> tuple[HttpConnector, SandboxApp]:
    app = app or SandboxApp(secret=secret)
    transport = httpx.ASGITransport(app=app)
    connector = HttpConnector(
        "http://sandbox.test", secret, timeout_s, transport=transport, reconcile_s=reconcile_s
    )
    return connector, app


class Scripted:
    """A platform answering from a handler, recording every request it got."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[httpx.Request] = []
        self.handler = handler

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return self.handler(request)

        return httpx.MockTransport(handle)

    def connector(self, timeout_s: float = 2.0, reconcile_s: float = 0.3) -> HttpConnector:
        return HttpConnector(
            BASE,
            SECRET,
            timeout_s,
            transport=self.transport(),
            reconcile_s=reconcile_s,
            clock=lambda: NOW,
        )


def answer(payload: Any, status: int = 200) -> Handler:
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return lambda request: httpx.Response(status, content=content)


def authorize_with(handler: Handler, token: str = "tok-1") -> AuthorizationResult:
    platform = Scripted(handler)

    async def main() -> AuthorizationResult:
        connector = platform.connector()
        try:
            return await connector.authorize(tx(token), card(), 1, "call-1:1")
        finally:
            await connector.aclose()

    return run(main())


def lookup_with(handler: Handler, token: str = "tok-1") -> TransactionInfo | None:
    platform = Scripted(handler)

    async def main() -> TransactionInfo | None:
        connector = platform.connector()
        try:
            return await connector.lookup(token)
        finally:
            await connector.aclose()

    return run(main())


LOOKUP_ANSWER = {
    "token": "tok-1",
    "operation": "sale",
    "amount_minor": 4990,
    "currency": "EUR",
    "order": "R-1",
    "merchant": "Hotel Sol",
    "status": "pending",
}


# ---- the sandbox, end to end --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "cvc", "result", "decline_code"),
    [
        ("4111111111111111", "123", Result.APPROVED, ""),
        ("5555555555554444", "737", Result.APPROVED, ""),
        ("378282246310005", "7373", Result.APPROVED, ""),
        ("6011111111111117", "123", Result.APPROVED, ""),
        ("4000000000000002", "123", Result.DECLINED, "generic"),
        ("4000000000009995", "123", Result.DECLINED, "insufficient_funds"),
        ("4000000000000119", "123", Result.ERROR, ""),
        ("4111111111111112", "123", Result.ERROR, ""),  # the sandbox answers 400
    ],
)
def test_every_sandbox_card(number: str, cvc: str, result: Result, decline_code: str) -> None:
    connector, app = over_sandbox()

    async def main() -> AuthorizationResult:
        try:
            return await connector.authorize(tx(), card(number, cvc), 1, "call-1:1")
        finally:
            await connector.aclose()

    outcome = run(main())
    assert outcome.result is result
    assert outcome.decline_code == decline_code
    if result is Result.APPROVED:
        assert re.fullmatch(r"SBX[A-Z0-9]{8}", outcome.reference)
        assert re.fullmatch(r"[0-9]{6}", outcome.authorization_code)
        assert len(app.charges) == 1
    else:
        assert app.charges == []
    if result is Result.ERROR:
        assert outcome.detail.startswith("platform answered HTTP")


def test_the_slow_card_charged_after_the_timeout_is_found_and_approved_once() -> None:
    # The platform charges after the connector gave up waiting: reconciliation finds it.
    connector, app = over_sandbox(SandboxApp(slow_delay_s=0.4), timeout_s=0.1, reconcile_s=3)

    async def main() -> tuple[AuthorizationResult, float, dict[str, Any]]:
        start = time.monotonic()
        try:
            outcome = await connector.authorize(tx(), card("4000000000000341"), 1, "key-1")
            elapsed = time.monotonic() - start
            answer = await connector._client.get(
                "http://sandbox.test/v1/transactions/" + tx().token
            )
            return outcome, elapsed, answer.json()
        finally:
            await connector.aclose()

    outcome, elapsed, answer = run(main())
    assert outcome.result is Result.APPROVED
    assert outcome.charge_state is ChargeState.CHARGED
    assert 0.4 <= elapsed < 2.5
    assert [charge.idempotency_key for charge in app.charges] == ["key-1"]
    assert outcome.reference == app.charges[0].reference
    assert answer["payment"]["idempotency_key"] == "key-1" and answer["charges"] == 1


def test_the_slow_card_beyond_the_window_is_an_error_with_the_charge_unknown() -> None:
    connector, app = over_sandbox(SandboxApp(slow_delay_s=1.0), timeout_s=0.1, reconcile_s=0.3)

    async def main() -> tuple[AuthorizationResult, float, int]:
        start = time.monotonic()
        try:
            outcome = await connector.authorize(tx(), card("4000000000000341"), 1, "k")
            elapsed = time.monotonic() - start
            await asyncio.sleep(1.2)  # the platform carries it through all the same
            return outcome, elapsed, len(app.charges)
        finally:
            await connector.aclose()

    outcome, elapsed, charges_later = run(main())
    assert outcome.result is Result.ERROR
    assert outcome.charge_state is ChargeState.UNKNOWN
    assert "did not answer within 0.1 s" in outcome.detail and "unknown" in outcome.detail
    assert 0.4 <= elapsed < 1.0
    assert charges_later == 1  # why "unknown" and not "not charged"


def test_the_slow_card_within_the_timeout_approves() -> None:
    connector, _ = over_sandbox(SandboxApp(slow_delay_s=0.02), timeout_s=1)

    async def main() -> AuthorizationResult:
        try:
            return await connector.authorize(tx(), card("4000000000000341"), 1, "k")
        finally:
            await connector.aclose()

    assert run(main()).result is Result.APPROVED


def test_idempotency_through_the_connector() -> None:
    connector, app = over_sandbox()

    async def main() -> list[AuthorizationResult]:
        try:
            first = await connector.authorize(tx(), card(), 1, "call-1:1")
            repeat = await connector.authorize(tx(), card(), 1, "call-1:1")
            new_key = await connector.authorize(tx(), card(), 2, "call-1:2")
            return [first, repeat, new_key]
        finally:
            await connector.aclose()

    first, repeat, new_key = run(main())
    assert first.result is Result.APPROVED
    assert repeat == first  # the same reference and authorisation code: the first answer
    assert new_key.result is Result.DECLINED
    assert new_key.decline_code == "already_paid"
    assert len(app.charges) == 1


def test_lookup_through_the_sandbox() -> None:
    connector, _ = over_sandbox()

    async def main() -> list[TransactionInfo | None]:
        try:
            return [
                await connector.lookup("sbx-4990-EUR-1"),
                await connector.lookup("sbx-0-EUR-card"),
                await connector.lookup("sbx-5-EUR-expired"),
                await connector.lookup("unknown"),
            ]
        finally:
            await connector.aclose()

    sale, tokenize, expired, unknown = run(main())
    assert sale == TransactionInfo(
        "sbx-4990-EUR-1", Operation.SALE, 4990, "EUR", "sbx-4990-EUR-1", "Sandbox Shop"
    )
    assert tokenize is not None and tokenize.operation is Operation.TOKENIZE
    assert expired is not None and expired.status == "expired"
    assert unknown is None


def test_a_paid_token_looks_up_as_paid() -> None:
    connector, _ = over_sandbox()

    async def main() -> TransactionInfo | None:
        try:
            await connector.authorize(tx(), card(), 1, "k")
            return await connector.lookup(tx().token)
        finally:
            await connector.aclose()

    info = run(main())
    assert info is not None and info.status == "paid"


def test_tokenize_returns_the_card_token() -> None:
    connector, _ = over_sandbox()

    async def main() -> AuthorizationResult:
        try:
            return await connector.authorize(tx("sbx-0-EUR-t"), card(), 1, "k")
        finally:
            await connector.aclose()

    assert run(main()).card_token.startswith("tok_")


# ---- signatures ---------------------------------------------------------------------------------


def test_signed_requests_pass_the_sandbox_check() -> None:
    connector, _ = over_sandbox(SandboxApp(secret=SECRET), secret=SECRET)

    async def main() -> tuple[TransactionInfo | None, AuthorizationResult]:
        try:
            return await connector.lookup(tx().token), await connector.authorize(
                tx(), card(), 1, "k"
            )
        finally:
            await connector.aclose()

    info, outcome = run(main())
    assert info is not None
    assert outcome.result is Result.APPROVED


@pytest.mark.parametrize(
    ("connector_secret", "clock_offset"), [("wrong-secret", 0.0), (SECRET, -301.0)]
)
def test_bad_or_old_signatures_are_refused(connector_secret: str, clock_offset: float) -> None:
    app = SandboxApp(secret=SECRET)
    connector = HttpConnector(
        "http://sandbox.test",
        connector_secret,
        2,
        transport=httpx.ASGITransport(app=app),
        clock=lambda: time.time() + clock_offset,
    )

    async def main() -> tuple[str, AuthorizationResult]:
        try:
            with pytest.raises(ConnectorError) as failure:
                await connector.lookup(tx().token)
            return str(failure.value), await connector.authorize(tx(), card(), 1, "k")
        finally:
            await connector.aclose()

    lookup_error, outcome = run(main())
    assert lookup_error == "lookup answered HTTP 401"
    assert outcome.result is Result.ERROR
    assert outcome.detail == "platform answered HTTP 401"
    assert app.charges == []


def test_requests_on_the_wire() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=LOOKUP_ANSWER | {"token": "a.b~c-1_2"})
        return httpx.Response(200, json={"result": "approved", "reference": "R1"})

    platform = Scripted(handler)

    async def main() -> None:
        connector = platform.connector()
        try:
            await connector.lookup("a.b~c-1_2")
            await connector.authorize(tx("a.b~c-1_2"), card(), 2, "call-7@host:2")
        finally:
            await connector.aclose()

    run(main())
    get, post = platform.requests
    assert get.method == "GET"
    assert str(get.url) == f"{BASE}/v1/transactions/a.b~c-1_2"
    assert get.content == b""
    assert verify(SECRET, get.headers["X-SPG-Signature"], b"", NOW)

    assert post.method == "POST"
    assert str(post.url) == f"{BASE}/v1/transactions/a.b~c-1_2/authorize"
    assert post.headers["Idempotency-Key"] == "call-7@host:2"
    assert post.headers["Content-Type"] == "application/json"
    assert verify(SECRET, post.headers["X-SPG-Signature"], post.content, NOW)
    assert not verify(SECRET, post.headers["X-SPG-Signature"], post.content + b" ", NOW)
    assert json.loads(post.content) == {
        "card": {"number": "4111111111111111", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        "attempt": 2,
    }


def test_a_trailing_slash_in_the_url_is_ignored() -> None:
    platform = Scripted(answer({"result": "approved", "reference": "R"}))

    async def main() -> None:
        connector = HttpConnector(BASE + "/", SECRET, 1, transport=platform.transport())
        try:
            await connector.authorize(tx("t1"), card(), 1, "k")
        finally:
            await connector.aclose()

    run(main())
    assert str(platform.requests[0].url) == f"{BASE}/v1/transactions/t1/authorize"


# ---- lookup -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["", "a/b", "..", ".", "a b", "a%2Fb", "tøken", "x" * 129, "a?b", "a#b", "a\r\nb"],
)
def test_tokens_that_are_not_url_safe_words_are_unknown_without_a_request(token: str) -> None:
    platform = Scripted(answer(LOOKUP_ANSWER))

    async def main() -> tuple[TransactionInfo | None, AuthorizationResult]:
        connector = platform.connector()
        try:
            return await connector.lookup(token), await connector.authorize(
                tx(token), card(), 1, "k"
            )
        finally:
            await connector.aclose()

    info, outcome = run(main())
    assert info is None
    assert outcome.result is Result.ERROR
    assert platform.requests == []


def test_valid_token() -> None:
    assert valid_token("x" * 128)
    assert valid_token("sbx-4990-EUR-1")
    assert valid_token("...a")
    assert not valid_token("...")


def test_lookup_maps_every_field() -> None:
    info = lookup_with(
        answer(
            LOOKUP_ANSWER
            | {"operation": "sale+tokenize", "language": "es", "return_uri": "sip:a@pbx"}
        )
    )
    assert info == TransactionInfo(
        "tok-1",
        Operation.SALE_TOKENIZE,
        4990,
        "EUR",
        "R-1",
        "Hotel Sol",
        "pending",
        "es",
        "sip:a@pbx",
    )


@pytest.mark.parametrize("status", ["paid", "expired", "cancelled"])
def test_lookup_returns_non_pending_statuses_as_they_are(status: str) -> None:
    info = lookup_with(answer(LOOKUP_ANSWER | {"status": status}))
    assert info is not None and info.status == status


def test_lookup_of_an_unknown_token_is_none() -> None:
    assert lookup_with(answer({"error": "unknown"}, 404)) is None


def test_lookup_accepts_null_optional_fields_and_tokenize_with_zero() -> None:
    info = lookup_with(
        answer(
            LOOKUP_ANSWER
            | {"operation": "tokenize", "amount_minor": 0, "language": None, "return_uri": None}
        )
    )
    assert info is not None
    assert (info.operation, info.amount_minor, info.language, info.return_uri) == (
        Operation.TOKENIZE,
        0,
        None,
        None,
    )


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b"",
        LOOKUP_ANSWER | {"token": "other"},
        LOOKUP_ANSWER | {"operation": "refund"},
        LOOKUP_ANSWER | {"operation": None},
        # found by fuzzing (fuzz/run.py connector_json): unhashable, it raised TypeError
        LOOKUP_ANSWER | {"operation": {"sale": 1}},
        LOOKUP_ANSWER | {"operation": ["sale"]},
        LOOKUP_ANSWER | {"amount_minor": "4990"},
        LOOKUP_ANSWER | {"amount_minor": 49.9},
        LOOKUP_ANSWER | {"amount_minor": True},
        LOOKUP_ANSWER | {"amount_minor": -1},
        LOOKUP_ANSWER | {"amount_minor": 0},  # a sale of nothing
        LOOKUP_ANSWER | {"currency": "eur"},
        LOOKUP_ANSWER | {"currency": "EURO"},
        LOOKUP_ANSWER | {"order": None},
        LOOKUP_ANSWER | {"merchant": 5},
        LOOKUP_ANSWER | {"merchant": "x" * 300},
        LOOKUP_ANSWER | {"merchant": "line\nbreak"},
        LOOKUP_ANSWER | {"status": None},
        LOOKUP_ANSWER | {"status": "PAID!"},
        LOOKUP_ANSWER | {"language": 1},
        {k: v for k, v in LOOKUP_ANSWER.items() if k != "status"},
    ],
)
def test_lookup_of_an_invalid_answer_is_a_connector_error(payload: Any) -> None:
    with pytest.raises(ConnectorError, match="lookup answer invalid"):
        lookup_with(answer(payload))


@pytest.mark.parametrize("status", [500, 502, 401, 400, 301, 201])
def test_lookup_of_other_statuses_is_a_connector_error(status: int) -> None:
    with pytest.raises(ConnectorError, match=f"HTTP {status}"):
        lookup_with(answer(LOOKUP_ANSWER, status))


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ReadError("reset"),
        httpx.ReadTimeout("slow"),
        ConnectionResetError(104, "reset"),
        RuntimeError("a transport bug"),
    ],
)
def test_lookup_network_failures_are_connector_errors(error: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(ConnectorError, match=type(error).__name__) as failure:
        lookup_with(handler)
    assert failure.value.__cause__ is None and failure.value.__suppress_context__


def test_lookup_timeout_is_a_connector_error() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=LOOKUP_ANSWER)

    async def main() -> None:
        connector = HttpConnector(BASE, SECRET, 0.05, transport=httpx.MockTransport(handler))
        try:
            await connector.lookup("tok-1")
        finally:
            await connector.aclose()

    with pytest.raises(ConnectorError, match="timed out"):
        run(main())


def test_lookup_answer_too_large() -> None:
    with pytest.raises(ConnectorError, match="too large"):
        lookup_with(answer(b'{"pad": "' + b"x" * 70_000 + b'"}'))


# ---- authorisation answers ----------------------------------------------------------------------


def test_approved_answer_with_every_field() -> None:
    outcome = authorize_with(
        answer(
            {
                "result": "approved",
                "reference": "R123",
                "authorization_code": "654321",
                "card_token": "tok_abc",
                "unknown_field": "ignored",
            }
        )
    )
    assert outcome == AuthorizationResult(
        Result.APPROVED, reference="R123", authorization_code="654321", card_token="tok_abc"
    )


def test_declined_answer_with_and_without_a_code() -> None:
    outcome = authorize_with(answer({"result": "declined", "reference": "R9"}))
    assert (outcome.result, outcome.reference, outcome.decline_code) == (
        Result.DECLINED,
        "R9",
        "",
    )
    outcome = authorize_with(
        answer({"result": "declined", "reference": "", "decline_code": "do_not_honor"})
    )
    assert outcome.decline_code == "do_not_honor"


def test_null_optional_fields_are_empty() -> None:
    outcome = authorize_with(
        answer(
            {"result": "approved", "reference": "R", "authorization_code": None, "card_token": None}
        )
    )
    assert (outcome.authorization_code, outcome.card_token) == ("", "")


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b"\xff", "not JSON"),
        (b'"approved"', "not a JSON object"),
        (b"[" * 5_000, "not JSON"),  # nested too deep: RecursionError escaped authorize()
        ({"result": "ok", "reference": "R"}, "result"),
        ({"result": "APPROVED", "reference": "R"}, "result"),
        ({"result": "error", "reference": "R"}, "result"),
        ({"reference": "R"}, "result"),
        ({"result": "approved"}, "reference missing"),
        ({"result": "approved", "reference": 123}, "reference"),
        ({"result": "approved", "reference": "R" * 300}, "reference"),
        ({"result": "approved", "reference": "R", "card_token": ["x"]}, "card_token"),
        ({"result": "approved", "reference": "R", "authorization_code": 123456}, "authorization"),
        ({"result": "declined", "reference": "R", "decline_code": {}}, "decline_code"),
    ],
)
def test_invalid_answers_are_errors(payload: Any, detail: str) -> None:
    outcome = authorize_with(answer(payload))
    assert outcome.result is Result.ERROR
    assert outcome.detail.startswith("platform answer invalid")
    assert detail in outcome.detail


def test_long_numbers_in_an_answer_are_kept_and_the_result_stands() -> None:
    # Numeric references (16 digits, this one Luhn-valid), tokens that hold another card's
    # number: the platform's data, not the caller's card. The payment stands.
    payload = {
        "result": "approved",
        "reference": "4539578763621486",
        "authorization_code": "000123456789012",
        "card_token": "tok_5555555555554444",
    }
    outcome = authorize_with(answer(payload))
    assert outcome.result is Result.APPROVED
    assert outcome.reference == "4539578763621486"
    assert outcome.authorization_code == "000123456789012"
    assert outcome.card_token == "tok_5555555555554444"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reference", "4111111111111111"),
        ("reference", "ref-4111 1111 1111 1111"),
        ("card_token", "tok_4111-1111-1111-1111"),
        ("authorization_code", "A4111111111111111Z"),
    ],
)
def test_the_callers_card_number_echoed_back_is_dropped_and_the_result_stands(
    field: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    payload = {"result": "approved", "reference": "R-1", field: value}
    with caplog.at_level(logging.DEBUG):
        outcome = authorize_with(answer(payload))
    assert outcome.result is Result.APPROVED
    assert getattr(outcome, field) == ""
    if field != "reference":
        assert outcome.reference == "R-1"
    assert f"the card number in {field}, dropped" in caplog.text
    assert_no_card_data(repr(outcome) + caplog.text)
    declined = authorize_with(answer({"result": "declined", "reference": value}))
    assert declined.result is Result.DECLINED and declined.reference == ""


def test_long_numbers_in_a_transaction_are_kept() -> None:
    order = "ORD-20261127000123"
    info = lookup_with(
        answer(
            {
                "token": "tok-1",
                "operation": "sale",
                "amount_minor": 4990,
                "currency": "EUR",
                "order": order,
                "merchant": "Shop 123456789012",
                "status": "pending",
            }
        )
    )
    assert info is not None and info.order == order and info.merchant == "Shop 123456789012"


@pytest.mark.parametrize("status", [500, 502, 503, 400, 401, 404, 409, 422, 201, 302])
def test_non_200_answers_are_errors(status: int) -> None:
    outcome = authorize_with(answer({"result": "approved", "reference": "R"}, status))
    assert outcome.result is Result.ERROR
    assert outcome.detail.startswith(f"platform answered HTTP {status}")


def test_redirects_are_not_followed() -> None:
    platform = Scripted(
        lambda request: httpx.Response(307, headers={"Location": "https://elsewhere.test/"})
    )

    async def main() -> AuthorizationResult:
        connector = platform.connector()
        try:
            return await connector.authorize(tx("t"), card(), 1, "k")
        finally:
            await connector.aclose()

    assert run(main()).result is Result.ERROR
    assert len(platform.requests) == 1


def test_an_answer_too_large_is_an_error() -> None:
    outcome = authorize_with(answer(b'{"result":"approved","reference":"' + b"R" * 70_000 + b'"}'))
    assert outcome.result is Result.ERROR
    assert outcome.detail.startswith("platform answer too large")


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ReadError("connection reset by peer"),
        httpx.RemoteProtocolError("peer closed connection"),
        httpx.WriteTimeout("slow"),
        ConnectionResetError(104, "Connection reset by peer"),
        RuntimeError("a transport bug"),
    ],
)
def test_network_failures_are_errors(error: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    outcome = authorize_with(handler)
    assert outcome.result is Result.ERROR
    if isinstance(error, httpx.ConnectError):  # never sent: known not to have charged
        assert outcome.detail == "cannot reach the platform: ConnectError"
        assert outcome.charge_state is ChargeState.NOT_CHARGED
    else:
        assert outcome.detail.startswith(f"request failed: {type(error).__name__}")
        assert outcome.charge_state is ChargeState.UNKNOWN


def test_a_hanging_platform_is_cut_at_the_timeout() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json={"result": "approved", "reference": "R"})

    async def main() -> tuple[AuthorizationResult, float]:
        connector = HttpConnector(
            BASE, SECRET, 0.05, transport=httpx.MockTransport(handler), reconcile_s=0.2
        )
        start = time.monotonic()
        try:
            return await connector.authorize(tx("t"), card(), 1, "k"), time.monotonic() - start
        finally:
            await connector.aclose()

    outcome, elapsed = run(main())
    assert outcome.result is Result.ERROR
    assert outcome.charge_state is ChargeState.UNKNOWN
    assert elapsed < 1


@pytest.mark.parametrize("key", ["", "with space", "new\nline", "k" * 256, "ключ"])
def test_bad_idempotency_keys_are_errors_without_a_request(key: str) -> None:
    platform = Scripted(answer({"result": "approved", "reference": "R"}))

    async def main() -> AuthorizationResult:
        connector = platform.connector()
        try:
            return await connector.authorize(tx("t"), card(), 1, key)
        finally:
            await connector.aclose()

    assert run(main()).result is Result.ERROR
    assert platform.requests == []


def test_authorize_leaves_the_card_intact_for_the_caller_to_wipe() -> None:
    the_card = card()
    authorize_with(answer({"result": "approved", "reference": "R"}))
    platform = Scripted(answer({"result": "approved", "reference": "R"}))

    async def main() -> None:
        connector = platform.connector()
        try:
            await connector.authorize(tx("t"), the_card, 1, "k")
        finally:
            await connector.aclose()

    run(main())
    assert "".join(the_card.pan.characters()) == "4111111111111111"


# ---- reconciliation: did the platform charge under OUR key? ------------------------------------

KEY = "0123456789abcdef0123456789abcdef"


def paid(key: str = KEY, **payment: Any) -> dict[str, Any]:
    return {
        **LOOKUP_ANSWER,
        "status": "paid",
        "payment": {
            "idempotency_key": key,
            "result": "approved",
            "reference": "R-PAID",
            "authorization_code": "654321",
            **payment,
        },
    }


def platform(post: Handler, *gets: Any) -> Scripted:
    """POST answered by `post`; the GETs in turn by `gets` (JSON bodies, or exceptions), the
    last one repeated."""
    answers = list(gets)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return post(request)
        got = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(got, Exception):
            raise got
        if isinstance(got, int):
            return httpx.Response(got)
        return httpx.Response(200, json=got)

    return Scripted(handle)


def times_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("no answer")


def reset(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("connection reset by peer")


def status_answer(status: int) -> Handler:
    return lambda request: httpx.Response(status, json={"error": "x"})


def reconcile(
    scripted: Scripted, reconcile_s: float = 1.0, the_card: CardData | None = None
) -> tuple[AuthorizationResult, float, list[str]]:
    async def main() -> tuple[AuthorizationResult, float]:
        connector = scripted.connector(reconcile_s=reconcile_s)
        start = time.monotonic()
        try:
            outcome = await connector.authorize(tx("tok-1"), the_card or card(), 1, KEY)
            return outcome, time.monotonic() - start
        finally:
            await connector.aclose()

    outcome, elapsed = run(main())
    return outcome, elapsed, [request.method for request in scripted.requests]


@pytest.mark.parametrize("failure", [times_out, reset, status_answer(500), status_answer(504)])
def test_paid_under_our_key_after_a_failure_is_approved_with_the_payments_reference(
    failure: Handler,
) -> None:
    outcome, _, methods = reconcile(platform(failure, paid(card_token="tok_x")))
    assert outcome == AuthorizationResult(
        Result.APPROVED, reference="R-PAID", authorization_code="654321", card_token="tok_x"
    )
    assert outcome.charge_state is ChargeState.CHARGED
    assert methods == ["POST", "GET"]  # never a second POST


def test_the_lookup_is_signed_and_names_the_transaction() -> None:
    scripted = platform(times_out, paid())
    reconcile(scripted)
    get = scripted.requests[1]
    assert get.url == f"{BASE}/v1/transactions/tok-1"
    assert verify(SECRET, get.headers["X-SPG-Signature"], b"", NOW)


def test_pending_then_paid_is_found_by_polling() -> None:
    pending = {**LOOKUP_ANSWER}
    outcome, elapsed, methods = reconcile(platform(times_out, pending, pending, paid()), 3.0)
    assert outcome.result is Result.APPROVED
    assert methods == ["POST", "GET", "GET", "GET"]
    assert 0.25 + 0.5 <= elapsed < 2  # backoff 0.25 s, then 0.5 s


@pytest.mark.parametrize(
    ("answer_", "reason"),
    [
        (paid(key="someone-else"), "paid by another authorisation"),
        ({**LOOKUP_ANSWER, "status": "expired"}, "the transaction expired"),
    ],
)
def test_paid_under_another_key_or_expired_did_not_charge(
    answer_: dict[str, Any], reason: str
) -> None:
    outcome, _, methods = reconcile(platform(times_out, answer_))
    assert outcome.result is Result.ERROR
    assert outcome.charge_state is ChargeState.NOT_CHARGED
    assert outcome.detail.endswith(f"not charged: {reason}")
    assert outcome.reference == ""
    assert methods == ["POST", "GET"]


@pytest.mark.parametrize("status", [500, 501, 503])
def test_pending_after_the_platform_answered_5xx_did_not_charge(status: int) -> None:
    # The platform answered: nothing of ours is in flight, so pending means not paid by us.
    outcome, elapsed, methods = reconcile(platform(status_answer(status), LOOKUP_ANSWER), 5.0)
    assert outcome.charge_state is ChargeState.NOT_CHARGED
    assert methods == ["POST", "GET"]
    assert elapsed < 2.5  # one look, not the 5 s window


def test_pending_after_an_unreadable_200_did_not_charge() -> None:
    outcome, _, methods = reconcile(platform(answer(b"{bad"), LOOKUP_ANSWER))
    assert (outcome.result, outcome.charge_state) == (Result.ERROR, ChargeState.NOT_CHARGED)
    assert outcome.detail.startswith("platform answer invalid: not JSON; not charged")
    assert methods == ["POST", "GET"]


@pytest.mark.parametrize("failure", [times_out, reset, status_answer(502), status_answer(409)])
def test_still_pending_at_the_end_of_the_window_is_unknown(failure: Handler) -> None:
    # Our request may still be processed: pending is no answer; the window bounds the wait.
    outcome, elapsed, methods = reconcile(platform(failure, LOOKUP_ANSWER), 0.8)
    assert outcome.result is Result.ERROR
    assert outcome.charge_state is ChargeState.UNKNOWN
    assert outcome.charge_unknown and "charge state unknown" in outcome.detail
    assert 0.75 <= elapsed < 3  # the 0.8 s window, with room for a loaded machine
    assert methods.count("POST") == 1 and methods.count("GET") >= 3


@pytest.mark.parametrize(
    "get_answer",
    [
        httpx.ConnectError("down"),
        503,
        404,
        {**LOOKUP_ANSWER, "status": "paid"},  # paid, no payment object: whose?
        {**LOOKUP_ANSWER, "status": "refunded"},
        paid(result="declined"),
        {**paid(), "payment": "yes"},
        {**paid(), "token": "tok-2"},
    ],
)
def test_a_platform_that_cannot_say_leaves_the_charge_unknown(get_answer: Any) -> None:
    outcome, elapsed, _ = reconcile(platform(times_out, get_answer), 0.5)
    assert (outcome.result, outcome.charge_state) == (Result.ERROR, ChargeState.UNKNOWN)
    assert elapsed < 3


def test_a_refused_connection_never_sent_anything_and_is_not_reconciled() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    outcome, _, methods = reconcile(platform(refused, paid()))
    assert outcome.charge_state is ChargeState.NOT_CHARGED
    assert methods == ["POST"]


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_a_refusal_is_not_charged_and_not_reconciled(status: int) -> None:
    outcome, _, methods = reconcile(platform(status_answer(status), paid()))
    assert outcome.charge_state is ChargeState.NOT_CHARGED
    assert methods == ["POST"]


def test_a_reconciled_answer_echoing_the_card_loses_those_fields() -> None:
    echo = paid(reference="ref 4111 1111 1111 1111", card_token="tok-4111111111111111")
    outcome, _, _ = reconcile(platform(times_out, echo))
    assert outcome.result is Result.APPROVED
    assert (outcome.reference, outcome.card_token) == ("", "")
    assert outcome.authorization_code == "654321"


def test_check_payment_reads_each_state() -> None:
    scripted = platform(
        times_out, paid(), paid(key="other"), LOOKUP_ANSWER, {**LOOKUP_ANSWER, "status": "x"}
    )

    async def main() -> list[str]:
        connector = scripted.connector()
        try:
            return [(await connector.check_payment("tok-1", KEY)).state for _ in range(4)]
        finally:
            await connector.aclose()

    assert run(main()) == ["charged", "not-charged", "pending", "unknown"]


# ---- answers nested too deep --------------------------------------------------------------------

# Within the size limit (64 KiB), far beyond the JSON decoder's recursion limit.
NESTED = b"[" * 30_000 + b"]" * 30_000
NESTED_OBJECTS = b'{"a":' * 10_000 + b"1" + b"}" * 10_000


@pytest.mark.parametrize("body", [NESTED, NESTED_OBJECTS, b"[" * 100_000 + b"]" * 100_000])
def test_a_deeply_nested_authorize_answer_is_an_error_not_a_recursion_error(body: bytes) -> None:
    outcome = authorize_with(answer(body))
    assert outcome.result is Result.ERROR
    assert "platform answer" in outcome.detail


@pytest.mark.parametrize("body", [NESTED, NESTED_OBJECTS, b"[" * 100_000 + b"]" * 100_000])
def test_a_deeply_nested_lookup_answer_is_a_connector_error(body: bytes) -> None:
    with pytest.raises(ConnectorError, match="lookup answer"):
        lookup_with(answer(body))


def test_a_deeply_nested_reconciliation_answer_leaves_the_charge_unknown() -> None:
    scripted = Scripted(
        lambda request: httpx.Response(504 if request.method == "POST" else 200, content=NESTED)
    )
    outcome, _, _ = reconcile(scripted, 0.3)
    assert outcome.charge_state is ChargeState.UNKNOWN


# ---- nothing from the environment on the card path ---------------------------------------------


class Listener:
    """A loopback TCP server that counts connections and answers one JSON body over HTTP/1.1."""

    def __init__(self, body: bytes, ssl_context: ssl.SSLContext | None = None) -> None:
        self.body = body
        self.ssl_context = ssl_context
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n".encode()
                + self.body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


def test_proxy_variables_in_the_environment_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    answer_ = json.dumps(LOOKUP_ANSWER).encode()

    async def main() -> tuple[TransactionInfo | None, int, int]:
        async with Listener(answer_) as platform_, Listener(b"{}") as proxy:
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
                for variant in (name, name.lower()):
                    monkeypatch.setenv(variant, f"http://127.0.0.1:{proxy.port}")
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            connector = HttpConnector(f"http://127.0.0.1:{platform_.port}", SECRET, 2)
            try:
                info = await connector.lookup("tok-1")
            finally:
                await connector.aclose()
            return info, platform_.connections, proxy.connections

    info, platform_connections, proxy_connections = run(main())
    assert info is not None and info.order == "R-1"
    assert (platform_connections, proxy_connections) == (1, 0)


def test_a_ca_bundle_from_the_environment_is_not_trusted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # SSL_CERT_FILE naming an attacker's certificate must not make it trusted on the card path.
    from spg_media.tlscert import OpensslMissing, make_self_signed

    try:
        pair = make_self_signed(tmp_path, name="intruder", common_name="127.0.0.1", days=1)
    except OpensslMissing:
        pytest.skip("openssl is not installed")
    monkeypatch.setenv("SSL_CERT_FILE", str(pair.cert))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(pair.cert, pair.key)

    async def main() -> str:
        async with Listener(json.dumps(LOOKUP_ANSWER).encode(), server_context) as intruder:
            connector = HttpConnector(f"https://127.0.0.1:{intruder.port}", SECRET, 2)
            try:
                await connector.lookup("tok-1")
            except ConnectorError as exc:
                return str(exc)
            finally:
                await connector.aclose()
            return "trusted"

    assert run(main()) == "lookup failed: ConnectError"  # certificate verify failed


# ---- make_connector -----------------------------------------------------------------------------


def test_make_connector_sandbox_runs_a_payment_in_process() -> None:
    async def main() -> tuple[TransactionInfo | None, AuthorizationResult]:
        connector = make_connector("sandbox", "", SECRET, 2)
        try:
            return await connector.lookup("sbx-100-EUR-m"), await connector.authorize(
                tx("sbx-100-EUR-m"), card(), 1, "k"
            )
        finally:
            await connector.aclose()

    info, outcome = run(main())
    assert info is not None and info.amount_minor == 100
    assert outcome.result is Result.APPROVED


def test_make_connector_sandbox_slow_card_outlasts_any_timeout() -> None:
    connector = make_connector("sandbox", "", "", 30)
    assert isinstance(connector, HttpConnector)
    transport = connector._client._transport
    assert isinstance(transport, httpx.ASGITransport)
    assert isinstance(transport.app, SandboxApp)
    assert transport.app.slow_delay_s > 30
    run(connector.aclose())


def test_make_connector_http_and_errors() -> None:
    connector = make_connector("http", "https://pay.example/", SECRET, 3)
    assert isinstance(connector, HttpConnector)
    assert connector.base_url == "https://pay.example"
    run(connector.aclose())
    with pytest.raises(ValueError, match=r"gateway\.url"):
        make_connector("http", "", SECRET, 3)
    with pytest.raises(ValueError, match="unknown connector"):
        make_connector("soap", "https://pay.example", SECRET, 3)
    with pytest.raises(ValueError, match="http"):
        HttpConnector("ftp://pay.example", SECRET, 3)


# ---- card data never leaks ----------------------------------------------------------------------

LEAK_CARDS = [
    ("4111111111111111", "739"),
    ("5555555555554444", "739"),
    ("378282246310005", "7390"),
    ("6011111111111117", "739"),
    ("4000000000000002", "739"),
    ("4000000000009995", "739"),
    ("4000000000000119", "739"),
    ("4000000000000341", "739"),
    ("4111111111111112", "739"),
]


def assert_no_card_data(text: str) -> None:
    for number, cvc in LEAK_CARDS:
        assert number not in text
        assert number[:-4] not in text  # nothing beyond the last four
        assert not re.search(rf"(?<![A-Za-z0-9]){cvc}(?![A-Za-z0-9])", text), cvc
    for expiry in ("12/30", "1230", "12/2030", "2030"):
        assert expiry not in text, expiry
    assert not re.search(r"[0-9]{12,}", text)
    assert '"cvc"' not in text and "exp_month" not in text


def http11(status: int, body: bytes) -> list[bytes]:
    return [
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    ]


NO_VERIFY = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # built once: loading CA files is slow
NO_VERIFY.check_hostname = False
NO_VERIFY.verify_mode = ssl.CERT_NONE


def httpcore_transport(status: int, body: bytes) -> httpx.AsyncHTTPTransport:
    """httpx's real HTTP/1.1 transport with httpcore over a scripted network backend."""
    transport = httpx.AsyncHTTPTransport(verify=NO_VERIFY)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=NO_VERIFY, network_backend=httpcore.AsyncMockBackend(http11(status, body))
    )
    return transport


def test_no_card_data_in_logs_exceptions_or_results(caplog: pytest.LogCaptureFixture) -> None:
    # caplog.set_level restores each logger's level when the test ends, so no later test
    # inherits DEBUG on "spg" or httpx.
    for name in ("", "httpx", "httpcore", "spg", "spg.connector", "spg.sandbox"):
        caplog.set_level(logging.DEBUG, logger=name or None)
    texts: list[str] = []

    def leaky_reset(request: httpx.Request) -> httpx.Response:
        # A transport whose error message quotes the request: the connector must not pass it on.
        raise httpx.ReadError(f"reset while sending {request.content!r}")

    def leaky_bug(request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"bug with {request.content!r}")

    async def main() -> None:
        def scripted(handler: Handler) -> HttpConnector:
            return HttpConnector(
                BASE, SECRET, 1, transport=httpx.MockTransport(handler), reconcile_s=0.1
            )

        connectors: list[HttpConnector] = [
            over_sandbox(SandboxApp(secret=SECRET, slow_delay_s=0.1), 0.05, SECRET, 0.5)[0],
            scripted(leaky_reset),
            scripted(leaky_bug),
            scripted(answer(b"{bad")),
        ]
        for index, (number, cvc) in enumerate(LEAK_CARDS):
            the_card = card(number, cvc, "amex" if number.startswith("37") else "visa")
            texts.append(repr(the_card))
            texts.append(str(the_card))
            for connector in connectors:
                outcome = await connector.authorize(tx(f"sbx-100-EUR-{index}"), the_card, 1, "k")
                texts.extend([repr(outcome), outcome.detail, str(outcome)])
            # httpx and httpcore for real (HTTP/1.1 framing, their DEBUG logs), scripted network.
            for status, body in ((200, b'{"result":"approved","reference":"R1"}'), (500, b"{}")):
                real = HttpConnector(
                    BASE, SECRET, 1, transport=httpcore_transport(status, body), reconcile_s=0.1
                )
                try:
                    outcome = await real.authorize(tx("t"), the_card, 1, "k")
                finally:
                    await real.aclose()
                texts.append(repr(outcome))
        for connector in connectors:
            try:
                await connector.lookup("sbx-100-EUR-0")
            except ConnectorError as exc:
                texts.append(str(exc))
            await connector.aclose()

    run(main())
    records = caplog.records
    assert any(r.name.startswith("httpcore") for r in records), "httpcore logs were not captured"
    assert any(r.name == "spg.connector" for r in records)
    for record in records:
        texts.append(record.getMessage())
        texts.append(repr(record.args))
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
    assert_no_card_data("\n".join(texts))


# ---- metrics ------------------------------------------------------------------------------------


def test_requests_are_counted_by_operation_and_outcome() -> None:
    from spg_media import observability as obs

    def count(op: str, outcome: str) -> float:
        return obs.CONNECTOR_REQUESTS_TOTAL.get(op=op, outcome=outcome)

    labels = [
        ("lookup", "found"),
        ("lookup", "not_found"),
        ("lookup", "error"),
        ("authorize", "approved"),
        ("authorize", "declined"),
        ("authorize", "error"),
    ]
    before = {label: count(*label) for label in labels}
    latency_before = obs.CONNECTOR_LATENCY_SECONDS.get_count()
    connector, _ = over_sandbox()
    broken = Scripted(answer(b"{bad")).connector()

    async def main() -> None:
        try:
            await connector.lookup("sbx-4990-EUR-1")
            await connector.lookup("unknown")
            with pytest.raises(ConnectorError):
                await broken.lookup("tok-1")
            await connector.authorize(tx(), card(), 1, "m-1")
            await connector.authorize(tx(), card("4000000000000002"), 1, "m-2")
            await broken.authorize(tx("tok-1"), card(), 1, "m-3")
        finally:
            await connector.aclose()
            await broken.aclose()

    run(main())
    assert {label: count(*label) - before[label] for label in labels} == dict.fromkeys(labels, 1)
    assert obs.CONNECTOR_LATENCY_SECONDS.get_count() - latency_before == 6
    rendered = obs.METRICS.render_prometheus()
    assert "4111111111111111" not in rendered and "411111" not in rendered
