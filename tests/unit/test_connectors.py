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
    app: SandboxApp | None = None, timeout_s: float = 2.0, secret: str = ""
) -> tuple[HttpConnector, SandboxApp]:
    app = app or SandboxApp(secret=secret)
    transport = httpx.ASGITransport(app=app)
    return HttpConnector("http://sandbox.test", secret, timeout_s, transport=transport), app


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

    def connector(self, timeout_s: float = 2.0) -> HttpConnector:
        return HttpConnector(BASE, SECRET, timeout_s, transport=self.transport(), clock=lambda: NOW)


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


def test_the_slow_card_times_out_as_error() -> None:
    connector, app = over_sandbox(SandboxApp(slow_delay_s=5), timeout_s=0.1)

    async def main() -> tuple[AuthorizationResult, float]:
        start = time.monotonic()
        try:
            outcome = await connector.authorize(tx(), card("4000000000000341"), 1, "k")
        finally:
            await connector.aclose()
        return outcome, time.monotonic() - start

    outcome, elapsed = run(main())
    assert outcome.result is Result.ERROR
    assert "did not answer within 0.1 s" in outcome.detail
    assert elapsed < 1.0
    assert app.charges == []


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
    assert outcome.detail == f"platform answered HTTP {status}"


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
    assert (outcome.result, outcome.detail) == (Result.ERROR, "platform answer too large")


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
    assert outcome.detail == f"request failed: {type(error).__name__}"


def test_a_hanging_platform_is_cut_at_the_timeout() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json={"result": "approved", "reference": "R"})

    async def main() -> tuple[AuthorizationResult, float]:
        connector = HttpConnector(BASE, SECRET, 0.05, transport=httpx.MockTransport(handler))
        start = time.monotonic()
        try:
            return await connector.authorize(tx("t"), card(), 1, "k"), time.monotonic() - start
        finally:
            await connector.aclose()

    outcome, elapsed = run(main())
    assert outcome.result is Result.ERROR
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
        connectors: list[HttpConnector] = [
            over_sandbox(SandboxApp(secret=SECRET, slow_delay_s=1), 0.05, SECRET)[0],
            HttpConnector(BASE, SECRET, 1, transport=httpx.MockTransport(leaky_reset)),
            HttpConnector(BASE, SECRET, 1, transport=httpx.MockTransport(leaky_bug)),
            HttpConnector(BASE, SECRET, 1, transport=httpx.MockTransport(answer(b"{bad"))),
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
                real = HttpConnector(BASE, SECRET, 1, transport=httpcore_transport(status, body))
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
