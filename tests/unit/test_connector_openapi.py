"""docs/connector-openapi.yaml against the code: the sandbox's real answers and the http
connector's real requests are validated with openapi-core.

- Every answer the sandbox gives (every status of every operation: the test fails when one is
  declared and not produced, or produced and not declared) and every request it accepted.
- The http connector's requests as they cross a real loopback socket: the authorisation goes
  over its own h11 connection (payment/card_request.py), so the sandbox is served by uvicorn
  behind an ASGI recorder, and the lookups go through httpx.
- The spec's examples are read by the connector as it reads a platform's answers.
- The result callback's body (the CDR line) against the spec's CallRecord.
- Wrong answers and requests are refused, so the validation above can fail.

Validation errors are reported by field and rule only: a request body holds a card number.
Answers for a method or path outside the protocol (405, 404 of an unknown path) are not in
the spec and not checked here.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec

from spg_media.cdr import CallRecord, record_bytes
from spg_media.payment.connectors import (
    HttpConnector,
    _authorization_result,
    _payment_check,
    _transaction_info,
)
from spg_media.payment.model import CardData, Result, SecretDigits
from spg_media.payment.sandbox import SandboxApp
from spg_media.payment.signing import sign

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "connector-openapi.yaml"
HOST_URL = "https://platform.example"  # the spec's server
SECRET = "openapi-secret"
NOW = 1_700_000_000.0
T = TypeVar("T")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC_PATH))


ANSWER_SCHEMAS = ("Transaction", "Payment", "AuthorizeAnswer", "Error")


@pytest.fixture(scope="module")
def strict_openapi(spec: dict[str, Any]) -> OpenAPI:
    """The spec with no field beyond those it names in an answer: a platform may add fields
    (the connector ignores them), but the sandbox, which shows what the protocol is, adds none
    (so a field renamed on one side only is caught)."""
    strict = copy.deepcopy(spec)
    for name in ANSWER_SCHEMAS:
        strict["components"]["schemas"][name]["additionalProperties"] = False
    return OpenAPI.from_dict(strict)


def test_the_spec_is_a_valid_openapi_3_1_document(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    validate_spec(spec)  # raises on any error


def run(coro: Awaitable[T]) -> T:
    async def wrapped() -> T:
        return await coro

    return asyncio.run(wrapped())


# ---- recording what crosses the wire ------------------------------------------------------------


@dataclass
class Exchange:
    """One HTTP request and the answer to it, as the ASGI app saw them."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    answer_headers: dict[str, str] = field(default_factory=dict)
    answer: bytes = b""

    def request(self) -> MockRequest:
        return MockRequest(
            HOST_URL,
            self.method,
            self.path,
            headers=self.headers,
            data=self.body,
            content_type=self.headers.get("content-type", "application/json"),
        )

    def response(self) -> MockResponse:
        return MockResponse(
            self.answer,
            self.status,
            headers=self.answer_headers,
            content_type=self.answer_headers.get("content-type", ""),
        )


class Recorder:
    """ASGI middleware: records every HTTP exchange with the app it wraps."""

    def __init__(self, app: SandboxApp) -> None:
        self.app = app
        self.exchanges: list[Exchange] = []

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange(
            scope["method"],
            scope["path"],
            {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            b"",
        )
        body = bytearray()

        async def recorded_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def recorded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                exchange.answer_headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1")
                    for k, v in message.get("headers", [])
                }
            elif message["type"] == "http.response.body":
                exchange.answer += message.get("body", b"")
            await send(message)

        await self.app(scope, recorded_receive, recorded_send)
        exchange.body = bytes(body)
        self.exchanges.append(exchange)


# ---- validation, reported without values --------------------------------------------------------


def describe(exc: BaseException) -> str:
    """What failed, by error type, parameter name, field path and rule: never a value."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = getattr(current, "name", None)
        parts.append(type(current).__name__ + (f"[{name}]" if isinstance(name, str) else ""))
        for error in getattr(current, "schema_errors", None) or []:
            where = "/".join(str(p) for p in error.absolute_path) or "(body)"
            rule = "/".join(str(p) for p in error.absolute_schema_path)
            parts.append(f"{where}: {error.validator} at {rule}")
        current = current.__cause__ or current.__context__
    return "; ".join(parts)


def check_request(openapi: OpenAPI, exchange: Exchange) -> None:
    try:
        openapi.validate_request(exchange.request())
    except Exception as exc:
        raise AssertionError(
            f"{exchange.method} {exchange.path}: request not as the spec says: {describe(exc)}"
        ) from None


def check_response(openapi: OpenAPI, exchange: Exchange) -> None:
    try:
        openapi.validate_response(exchange.request(), exchange.response())
    except Exception as exc:
        raise AssertionError(
            f"{exchange.method} {exchange.path} -> {exchange.status}: answer not as the spec "
            f"says: {describe(exc)}"
        ) from None


def refused(check: Callable[[], None]) -> bool:
    try:
        check()
    except AssertionError:
        return True
    return False


_OPERATIONS = (
    ("POST", re.compile(r"/v1/transactions/[^/]+/authorize"), "authorize"),
    ("GET", re.compile(r"/v1/transactions/[^/]+"), "getTransaction"),
    ("POST", re.compile(r"/v1/transactions"), "createTransaction"),
    ("GET", re.compile(r"/healthz"), "health"),
)


def operation_of(exchange: Exchange) -> str | None:
    for method, path, operation_id in _OPERATIONS:
        if exchange.method == method and path.fullmatch(exchange.path):
            return operation_id
    return None


def declared_statuses(spec: dict[str, Any]) -> set[tuple[str, int]]:
    declared = set()
    for item in spec["paths"].values():
        for method in ("get", "post"):
            if method in item:
                for status in item[method]["responses"]:
                    declared.add((item[method]["operationId"], int(status)))
    return declared


# ---- the sandbox's answers ----------------------------------------------------------------------


class Client:
    """Signed requests to a recorded in-process sandbox."""

    def __init__(self, recorder: Recorder) -> None:
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=recorder), base_url=HOST_URL
        )

    async def send(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        signed: bool = True,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = b"" if payload is None else (
            payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        )  # fmt: skip
        sent = dict(headers or {})
        if body:
            sent["Content-Type"] = "application/json"
        sent["X-SPG-Signature"] = sign(SECRET if signed else "wrong", body, int(NOW))
        return await self.http.request(method, path, content=body, headers=sent)

    async def authorize(
        self, token: str, number: str, key: str, cvc: str = "123", **extra: Any
    ) -> httpx.Response:
        card = {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": cvc}
        return await self.send(
            "POST",
            f"/v1/transactions/{token}/authorize",
            {"card": card, "attempt": 1, **extra},
            headers={"Idempotency-Key": key},
        )


async def sandbox_conversation(client: Client) -> None:
    """Everything the sandbox answers, each status at least once."""
    big = b'{"pad":"' + b"x" * (70 * 1024) + b'"}'
    assert (await client.send("GET", "/healthz")).status_code == 200

    # Creating transactions: 201, 400, 401, 413.
    created = await client.send(
        "POST",
        "/v1/transactions",
        {"amount_minor": 4990, "currency": "EUR", "merchant": "Hotel Sol", "order": "R-1",
         "language": "es", "return_uri": "sip:agent@pbx.example"},
    )  # fmt: skip
    assert created.status_code == 201
    token = created.json()["token"]
    tokenize = await client.send("POST", "/v1/transactions", {"operation": "tokenize",
                                                              "currency": "usd"})  # fmt: skip
    assert tokenize.status_code == 201
    for bad in ({"amount_minor": 1, "currency": "EURO"}, {"currency": "EUR", "amount_minor": 5,
                "colour": "red"}, {"currency": "EUR"}, b"[1]", b"{"):  # fmt: skip
        assert (await client.send("POST", "/v1/transactions", bad)).status_code == 400
    assert (await client.send("POST", "/v1/transactions", {"amount_minor": 1, "currency": "EUR"},
                              signed=False)).status_code == 401  # fmt: skip
    assert (await client.send("POST", "/v1/transactions", big)).status_code == 413

    # Looking up: pending, expired, created, unknown, unsigned.
    for looked_up in (token, "sbx-4990-EUR-1", "sbx-100-EUR-expired-1", "sbx-0-EUR-t"):
        assert (await client.send("GET", f"/v1/transactions/{looked_up}")).status_code == 200
    assert (await client.send("GET", "/v1/transactions/unknown-token")).status_code == 404
    assert (await client.send("GET", f"/v1/transactions/{token}", signed=False)).status_code == 401

    # Authorising: approved, repeated, already paid, declined, expired, tokenised.
    approved = await client.authorize(token, "4111111111111111", "key-1")
    assert approved.json()["result"] == "approved"
    again = await client.authorize(token, "4111111111111111", "key-1")
    assert again.content == approved.content
    assert (await client.authorize(token, "5555555555554444", "key-2")).json()[
        "decline_code"
    ] == "already_paid"
    paid = await client.send("GET", f"/v1/transactions/{token}")
    assert paid.json()["status"] == "paid" and paid.json()["payment"]["idempotency_key"] == "key-1"
    for number, code in (("4000000000000002", "generic"), ("4000000000009995",
                                                             "insufficient_funds")):  # fmt: skip
        answer = await client.authorize(f"sbx-1000-EUR-{code}", number, "key-d")
        assert answer.json()["decline_code"] == code
    expired = await client.authorize("sbx-100-EUR-expired-2", "4111111111111111", "key-e")
    assert expired.json()["decline_code"] == "expired"
    stored = await client.authorize("sbx-0-EUR-t", "378282246310005", "key-t", cvc="1234")
    assert stored.json()["card_token"].startswith("tok_")
    tokenised = await client.send("GET", "/v1/transactions/sbx-0-EUR-t")
    assert "card_token" in tokenised.json()["payment"]
    created_sale = await client.send(
        "POST", "/v1/transactions", {"operation": "sale+tokenize", "amount_minor": 100,
                                     "currency": "GBP"})  # fmt: skip
    sale_token = created_sale.json()["token"]
    assert "card_token" in (await client.authorize(sale_token, "4111111111111111", "k")).json()

    # Refusals: 400, 401, 404, 413; the platform failing: 500; a key in progress: 409.
    refused: list[tuple[str, str, dict[str, Any]]] = [
        ("4111111111111112", "key-x", {}),  # fails Luhn
        ("4111", "key-x", {}),
        ("4111111111111111", "", {}),  # no Idempotency-Key
        ("4111111111111111", "key-x", {"attempt": 0}),
    ]
    for number, key, extra in refused:
        answer = await client.authorize("sbx-100-EUR-bad", number, key, **extra)
        assert answer.status_code == 400
    assert (await client.send("POST", "/v1/transactions/sbx-100-EUR-b/authorize", {"card": {}},
                              headers={"Idempotency-Key": "k"})).status_code == 400  # fmt: skip
    assert (await client.send("POST", "/v1/transactions/sbx-1-EUR-u/authorize", {},
                              signed=False)).status_code == 401  # fmt: skip
    assert (await client.authorize("unknown-token", "4111111111111111", "k")).status_code == 404
    assert (await client.send("POST", "/v1/transactions/sbx-1-EUR-big/authorize", big,
                              headers={"Idempotency-Key": "k"})).status_code == 413  # fmt: skip
    assert (await client.authorize("sbx-1-EUR-f", "4000000000000119", "k")).status_code == 500
    slow = asyncio.create_task(client.authorize("sbx-1-EUR-slow", "4000000000000341", "key-s"))
    await asyncio.sleep(0.05)
    in_progress = await client.authorize("sbx-1-EUR-slow", "4000000000000341", "key-s")
    assert in_progress.status_code == 409
    assert (await slow).json()["result"] == "approved"


def test_every_answer_of_the_sandbox_is_in_the_spec(
    strict_openapi: OpenAPI, spec: dict[str, Any]
) -> None:
    openapi = strict_openapi
    recorder = Recorder(SandboxApp(secret=SECRET, slow_delay_s=0.3, clock=lambda: NOW))

    async def main() -> None:
        client = Client(recorder)
        try:
            await sandbox_conversation(client)
        finally:
            await client.http.aclose()

    run(main())
    seen: set[tuple[str, int]] = set()
    for exchange in recorder.exchanges:
        operation = operation_of(exchange)
        assert operation is not None, f"{exchange.method} {exchange.path}: not in the protocol"
        seen.add((operation, exchange.status))
        check_response(openapi, exchange)
        if 200 <= exchange.status < 300:  # accepted, so it must be a request the spec allows
            check_request(openapi, exchange)
    declared = declared_statuses(spec)
    assert seen - declared == set(), "the sandbox gives answers the spec does not declare"
    assert declared - seen == set(), "the spec declares answers the sandbox never gave here"


# ---- the http connector's requests, over a real socket ------------------------------------------


@contextlib.asynccontextmanager
async def served(app: Recorder) -> AsyncIterator[str]:
    """`app` served by uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                assert not serving.done(), "uvicorn did not start"
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 10)
        listener.close()


def card(number: str, cvc: str, month: int) -> CardData:
    return CardData(SecretDigits(number), month, 2030, SecretDigits(cvc), "visa")


def test_the_http_connectors_requests_are_in_the_spec(strict_openapi: OpenAPI) -> None:
    openapi = strict_openapi
    recorder = Recorder(SandboxApp(secret=SECRET, slow_delay_s=0.3))

    async def main() -> list[Result]:
        async with served(recorder) as url:
            connector = HttpConnector(url, SECRET, 5, reconcile_s=5)
            results = []
            try:
                for token, number, cvc, month in (
                    ("sbx-4990-EUR-a", "4111111111111111", "123", 1),  # a one-digit month
                    ("sbx-0-EUR-b", "378282246310005", "1234", 12),  # tokenise, 4-digit code
                    ("sbx-100-USD-c", "4000000000000002", "123", 6),  # declined
                    ("sbx-100-USD-d", "4000000000000119", "123", 6),  # 500: reconciled
                ):
                    info = await connector.lookup(token)
                    assert info is not None
                    key = f"key-{token}"
                    result = await connector.authorize(info, card(number, cvc, month), 1, key)
                    results.append(result.result)
                    await connector.check_payment(token, key)
                assert await connector.lookup("unknown-token") is None
            finally:
                await connector.aclose()
            return results

    results = run(main())
    for exchange in recorder.exchanges:
        # The authorisation came over card_request's own connection: h11 framed it.
        if operation_of(exchange) == "authorize":
            assert exchange.headers["connection"] == "close"
        check_request(openapi, exchange)
        check_response(openapi, exchange)
    operations = [operation_of(exchange) for exchange in recorder.exchanges]
    assert operations.count("authorize") == 4 and "getTransaction" in operations
    assert results == [Result.APPROVED, Result.APPROVED, Result.DECLINED, Result.ERROR]


# ---- the spec's examples, as the connector reads answers ----------------------------------------


def test_the_spec_examples_are_valid_and_read_by_the_connector(
    openapi: OpenAPI, spec: dict[str, Any]
) -> None:
    lookup = spec["paths"]["/v1/transactions/{token}"]["get"]["responses"]["200"]
    examples = lookup["content"]["application/json"]["examples"]
    for name, example in examples.items():
        value = example["value"]
        exchange = Exchange("GET", f"/v1/transactions/{value['token']}", {
            "x-spg-signature": sign(SECRET, b"", int(NOW))}, b"", 200,
            {"content-type": "application/json"}, json.dumps(value).encode())  # fmt: skip
        check_response(openapi, exchange)
        info = _transaction_info(value["token"], exchange.answer)
        assert info.status == value["status"], name
    paid = examples["paid"]["value"]
    check = _payment_check(
        paid["token"], paid["payment"]["idempotency_key"], json.dumps(paid).encode()
    )
    assert check.state == "charged"

    authorize = spec["paths"]["/v1/transactions/{token}/authorize"]["post"]
    body = json.dumps(authorize["requestBody"]["content"]["application/json"]["example"]).encode()
    answers = authorize["responses"]["200"]["content"]["application/json"]["examples"]
    for name, example in answers.items():
        exchange = Exchange(
            "POST",
            "/v1/transactions/sbx-4990-EUR-1/authorize",
            {"x-spg-signature": sign(SECRET, body, int(NOW)), "idempotency-key": "k",
             "content-type": "application/json"},
            body, 200, {"content-type": "application/json"}, json.dumps(example["value"]).encode(),
        )  # fmt: skip
        check_request(openapi, exchange)
        check_response(openapi, exchange)
        assert str(_authorization_result(exchange.answer).result) == example["value"]["result"]
        assert name == example["value"]["result"]


# ---- the result callback ------------------------------------------------------------------------


def test_call_records_are_the_specs_callback_body(spec: dict[str, Any]) -> None:
    validator = OAS31Validator(
        spec["components"]["schemas"]["CallRecord"], format_checker=OAS31Validator.FORMAT_CHECKER
    )
    common: dict[str, Any] = {
        "started_at": "2030-01-31T10:00:00.000Z",
        "ended_at": "2030-01-31T10:01:00.500Z",
    }
    records = [
        CallRecord("c1", "sbx-4990-EUR-1", "R-1", "approved", "SBX1", "123456",
                   {"brand": "visa", "last4": "1111"}, "", 1, durations={"setup": 0.01,
                   "ivr": 40.2, "card_entry": 20.0, "authorization": 0.3, "result": 15.0,
                   "journey": 40.0}, charge_state="charged", **common),
        CallRecord("c2", "", "", "invalid-handoff", "", "", None, "", 0, **common),
        CallRecord("c3", "sbx-1-EUR-2", "sbx-1-EUR-2", "error", "", "", {"brand": "amex",
                   "last4": "0005"}, "", 1, charge_state="unknown", **common),
    ]  # fmt: skip
    for record in records:
        errors = list(validator.iter_errors(json.loads(record_bytes(record))))
        assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.validator}" for e in errors]
    wrong = json.loads(record_bytes(records[0]))
    wrong["card"]["pan"] = "4111111111111111"
    assert list(validator.iter_errors(wrong))


# ---- the validation can fail ---------------------------------------------------------------------


def test_answers_and_requests_outside_the_spec_are_refused(openapi: OpenAPI) -> None:
    body = json.dumps(
        {"card": {"number": "4111111111111111", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
         "attempt": 1}, separators=(",", ":")
    ).encode()  # fmt: skip
    headers = {"x-spg-signature": sign(SECRET, body, int(NOW)), "idempotency-key": "k",
               "content-type": "application/json"}  # fmt: skip
    path = "/v1/transactions/sbx-1-EUR-1/authorize"
    good_answer = b'{"result":"approved","reference":"R1"}'

    def exchange(**changes: Any) -> Exchange:
        base = Exchange("POST", path, dict(headers), body, 200,
                        {"content-type": "application/json"}, good_answer)  # fmt: skip
        for name, value in changes.items():
            setattr(base, name, value)
        return base

    check_request(openapi, exchange())
    check_response(openapi, exchange())
    assert refused(lambda: check_response(openapi, exchange(answer=b'{"result":"approved"}')))
    assert refused(lambda: check_response(openapi, exchange(answer=b'{"result":"maybe",'
                                                            b'"reference":"R"}')))  # fmt: skip
    assert refused(lambda: check_response(openapi, exchange(status=202)))
    no_key = {k: v for k, v in headers.items() if k != "idempotency-key"}
    assert refused(lambda: check_request(openapi, exchange(headers=no_key)))
    year_text = body.replace(b'"exp_year":2030', b'"exp_year":"2030"')
    assert year_text != body
    assert refused(lambda: check_request(openapi, exchange(body=year_text)))
    paid_without_payment = json.dumps({"token": "t", "operation": "sale", "amount_minor": 1,
        "currency": "EUR", "order": "o", "merchant": "m", "status": "paid"}).encode()  # fmt: skip
    lookup = Exchange("GET", "/v1/transactions/t", {"x-spg-signature": headers[
        "x-spg-signature"]}, b"", 200, {"content-type": "application/json"},
        paid_without_payment)  # fmt: skip
    assert refused(lambda: check_response(openapi, lookup))
