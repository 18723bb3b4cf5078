"""The sandbox platform, spoken to in raw HTTP through httpx's in-process ASGI transport.

One test serves it for real with uvicorn on 127.0.0.1 (a free port); the rest use no sockets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from spg_media.payment.sandbox import SandboxApp, luhn_valid, serve_sandbox
from spg_media.payment.signing import sign

T = TypeVar("T")
NOW = 1_700_000_000.0
SECRET = "sandbox-secret"


def run(coro: Awaitable[T]) -> T:
    async def wrapped() -> T:
        return await coro

    return asyncio.run(wrapped())


def card_body(number: str, cvc: str = "123", attempt: int = 1, **extra: Any) -> dict[str, Any]:
    card = {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": cvc} | extra
    return {"card": card, "attempt": attempt}


class Platform:
    """A client of one SandboxApp, signing requests when a secret is given."""

    def __init__(self, app: SandboxApp, secret: str = "", clock: float = NOW) -> None:
        self.app = app
        self.secret = secret
        self.clock = clock
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sandbox"
        )

    def headers(self, body: bytes, **extra: str) -> dict[str, str]:
        headers = dict(extra)
        if self.secret:
            headers["X-SPG-Signature"] = sign(self.secret, body, int(self.clock))
        return headers

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(path, headers=self.headers(b""))

    async def post(self, path: str, payload: Any, **headers: str) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return await self.client.post(path, content=body, headers=self.headers(body, **headers))

    async def authorize(
        self, token: str, number: str, key: str = "k1", **card: Any
    ) -> httpx.Response:
        return await self.post(
            f"/v1/transactions/{token}/authorize",
            card_body(number, **card),
            **{"Idempotency-Key": key},
        )


def scenario(
    body: Callable[[Platform], Awaitable[T]], app: SandboxApp | None = None, secret: str = ""
) -> T:
    async def main() -> T:
        platform = Platform(app or SandboxApp(secret=secret, clock=lambda: NOW), secret)
        try:
            return await body(platform)
        finally:
            await platform.client.aclose()

    return asyncio.run(main())


# ---- Luhn ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117", "79927398713"],
)
def test_luhn_valid(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize("number", ["4111111111111112", "79927398710", "", "4111x11111111111"])
def test_luhn_invalid(number: str) -> None:
    assert not luhn_valid(number)


# ---- lookups and routes -------------------------------------------------------------------------


def test_healthz() -> None:
    async def body(p: Platform) -> None:
        response = await p.client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert (await p.client.post("/healthz")).status_code == 405

    scenario(body)


def test_sandbox_token_is_a_pending_sale() -> None:
    async def body(p: Platform) -> None:
        response = await p.get("/v1/transactions/sbx-4990-EUR-1")
        assert response.status_code == 200
        assert response.json() == {
            "token": "sbx-4990-EUR-1",
            "operation": "sale",
            "amount_minor": 4990,
            "currency": "EUR",
            "order": "sbx-4990-EUR-1",
            "merchant": "Sandbox Shop",
            "language": None,
            "return_uri": None,
            "status": "pending",
        }

    scenario(body)


@pytest.mark.parametrize(
    ("token", "operation", "amount", "currency", "status"),
    [
        ("sbx-0-EUR-abc", "tokenize", 0, "EUR", "pending"),
        ("sbx-0-EUR", "tokenize", 0, "EUR", "pending"),
        ("sbx-100-usd", "sale", 100, "USD", "pending"),
        ("sbx-100-GBP-", "sale", 100, "GBP", "pending"),
        ("sbx-250-EUR-expired-1", "sale", 250, "EUR", "expired"),
    ],
)
def test_sandbox_token_forms(
    token: str, operation: str, amount: int, currency: str, status: str
) -> None:
    async def body(p: Platform) -> dict[str, Any]:
        response = await p.get(f"/v1/transactions/{token}")
        assert response.status_code == 200
        return dict(response.json())

    data = scenario(body)
    assert (data["operation"], data["amount_minor"], data["currency"], data["status"]) == (
        operation,
        amount,
        currency,
        status,
    )


def test_the_merchant_name_is_configurable() -> None:
    async def body(p: Platform) -> str:
        return str((await p.get("/v1/transactions/sbx-1-EUR")).json()["merchant"])

    assert scenario(body, SandboxApp(merchant="Hotel Sol")) == "Hotel Sol"


@pytest.mark.parametrize(
    "token",
    [
        "unknown",
        "sbx-12-EURO",
        "sbx-abc-EUR",
        "sbx--EUR",
        "sbx-12345678901-EUR",  # more than 10 amount digits
        "sbx-1-EUR-a%2Fb",
        "%2e%2e",
        "sbx-1-EUR-" + "a" * 130,
    ],
)
def test_unknown_tokens_are_404(token: str) -> None:
    async def body(p: Platform) -> int:
        return (await p.get(f"/v1/transactions/{token}")).status_code

    assert scenario(body) == 404


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/v1", 404),
        ("GET", "/v1/other", 404),
        ("GET", "/v1/transactions/sbx-1-EUR/refund", 404),
        ("GET", "/v1/transactions/sbx-1-EUR/authorize/x", 404),
        ("GET", "/v1/transactions", 405),
        ("POST", "/v1/transactions/sbx-1-EUR", 405),
        ("GET", "/v1/transactions/sbx-1-EUR/authorize", 405),
        ("DELETE", "/v1/transactions/sbx-1-EUR", 405),
    ],
)
def test_routes(method: str, path: str, status: int) -> None:
    async def body(p: Platform) -> int:
        return (await p.client.request(method, path)).status_code

    assert scenario(body) == status


def test_a_body_above_the_limit_is_413() -> None:
    async def body(p: Platform) -> int:
        return (await p.post("/v1/transactions", b"{" + b" " * 70_000 + b"}")).status_code

    assert scenario(body) == 413


# ---- creating transactions ----------------------------------------------------------------------


def test_create_then_look_up() -> None:
    async def body(p: Platform) -> tuple[dict[str, Any], dict[str, Any]]:
        created = await p.post(
            "/v1/transactions",
            {
                "amount_minor": 1250,
                "currency": "usd",
                "operation": "sale+tokenize",
                "merchant": "Hotel Sol",
                "order": "R-77",
                "language": "es",
                "return_uri": "sip:agent@pbx",
            },
        )
        assert created.status_code == 201
        token = created.json()["token"]
        looked_up = await p.get(f"/v1/transactions/{token}")
        assert looked_up.status_code == 200
        return created.json(), looked_up.json()

    created, looked_up = scenario(body)
    assert created == looked_up
    assert re.fullmatch(r"sbx-1250-USD-[a-z0-9]{10}", created["token"])
    assert created["operation"] == "sale+tokenize"
    assert (created["merchant"], created["order"], created["language"]) == (
        "Hotel Sol",
        "R-77",
        "es",
    )
    assert created["return_uri"] == "sip:agent@pbx"
    assert created["status"] == "pending"


def test_create_defaults() -> None:
    async def body(p: Platform) -> tuple[dict[str, Any], dict[str, Any]]:
        sale = await p.post("/v1/transactions", {"amount_minor": 5, "currency": "EUR"})
        tokenize = await p.post("/v1/transactions", {"currency": "EUR", "operation": "tokenize"})
        assert (sale.status_code, tokenize.status_code) == (201, 201)
        return sale.json(), tokenize.json()

    sale, tokenize = scenario(body)
    assert (sale["operation"], sale["order"], sale["merchant"]) == (
        "sale",
        sale["token"],
        "Sandbox Shop",
    )
    assert (tokenize["operation"], tokenize["amount_minor"]) == ("tokenize", 0)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        {"currency": "EUR"},
        {"amount_minor": "100", "currency": "EUR"},
        {"amount_minor": True, "currency": "EUR"},
        {"amount_minor": -1, "currency": "EUR"},
        {"amount_minor": 10**10, "currency": "EUR"},
        {"amount_minor": 100, "currency": "EURO"},
        {"amount_minor": 100},
        {"amount_minor": 100, "currency": "EUR", "operation": "refund"},
        {"amount_minor": 0, "currency": "EUR", "operation": "sale"},
        {"amount_minor": 100, "currency": "EUR", "operation": "tokenize"},
        {"amount_minor": 100, "currency": "EUR", "merchant": ""},
        {"amount_minor": 100, "currency": "EUR", "order": 5},
        {"amount_minor": 100, "currency": "EUR", "language": "x" * 17},
        {"amount_minor": 100, "currency": "EUR", "colour": "red"},
    ],
)
def test_create_rejects_bad_requests(payload: Any) -> None:
    async def body(p: Platform) -> httpx.Response:
        return await p.post("/v1/transactions", payload)

    response = scenario(body)
    assert response.status_code == 400
    assert response.json()["error"].startswith("invalid ")


# ---- authorising --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "cvc", "result", "decline_code"),
    [
        ("4111111111111111", "123", "approved", None),
        ("5555555555554444", "737", "approved", None),
        ("378282246310005", "7373", "approved", None),
        ("6011111111111117", "123", "approved", None),  # any other Luhn-valid card
        ("4000000000000002", "123", "declined", "generic"),
        ("4000000000009995", "123", "declined", "insufficient_funds"),
    ],
)
def test_every_answering_card(number: str, cvc: str, result: str, decline_code: str | None) -> None:
    app = SandboxApp()

    async def body(p: Platform) -> dict[str, Any]:
        response = await p.authorize("sbx-4990-EUR-1", number, cvc=cvc)
        assert response.status_code == 200
        return dict(response.json())

    answer = scenario(body, app)
    assert answer["result"] == result
    assert re.fullmatch(r"SBX[A-Z0-9]{8}", answer["reference"])
    assert "card_token" not in answer  # a sale does not tokenise
    if result == "approved":
        assert re.fullmatch(r"[0-9]{6}", answer["authorization_code"])
        assert "decline_code" not in answer
        assert [c.last4 for c in app.charges] == [number[-4:]]
        assert app.charges[0].amount_minor == 4990
    else:
        assert answer["decline_code"] == decline_code
        assert app.charges == []


def test_the_failing_card_answers_500_and_is_not_remembered() -> None:
    app = SandboxApp()

    async def body(p: Platform) -> tuple[int, int, str]:
        failed = await p.authorize("sbx-100-EUR", "4000000000000119", key="same")
        # 500 is not a first answer to replay: the same key with a good card goes through.
        retried = await p.authorize("sbx-100-EUR", "4111111111111111", key="same")
        return failed.status_code, retried.status_code, retried.json()["result"]

    assert scenario(body, app) == (500, 200, "approved")
    assert len(app.charges) == 1


def test_the_slow_card_answers_after_the_delay() -> None:
    app = SandboxApp(slow_delay_s=0.05)

    async def body(p: Platform) -> tuple[float, str]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        response = await p.authorize("sbx-100-EUR", "4000000000000341")
        return loop.time() - start, response.json()["result"]

    elapsed, result = scenario(body, app)
    assert elapsed >= 0.05
    assert result == "approved"


def test_a_non_luhn_card_is_400_without_echo() -> None:
    async def body(p: Platform) -> httpx.Response:
        return await p.authorize("sbx-100-EUR", "4111111111111112")

    response = scenario(body)
    assert response.status_code == 400
    assert "4111" not in response.text


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"card":' * 5_000,  # nested too deep: RecursionError made it a 500
        {"attempt": 1},
        {"card": "4111111111111111", "attempt": 1},
        card_body("41111111111"),  # 11 digits
        card_body("41111111111111111111"),  # 20 digits
        card_body(4111111111111111),  # type: ignore[arg-type]
        card_body("4111111111111111", exp_month=13),
        card_body("4111111111111111", exp_month="12"),
        card_body("4111111111111111", exp_year=30),
        card_body("4111111111111111", cvc="12"),
        card_body("4111111111111111", cvc="12345"),
        card_body("4111111111111111", cvc=123),  # type: ignore[arg-type]
        card_body("4111111111111111", attempt=0),
        card_body("4111111111111111", attempt=True),
        {"card": {"number": "4111111111111111", "exp_month": 12, "exp_year": 2030}, "attempt": 1},
    ],
)
def test_malformed_authorizations_are_400_and_echo_nothing(payload: Any) -> None:
    async def body(p: Platform) -> httpx.Response:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return await p.client.post(
            "/v1/transactions/sbx-100-EUR/authorize",
            content=raw,
            headers={"Idempotency-Key": "k"},
        )

    response = scenario(body)
    assert response.status_code == 400
    assert not re.search(r"[0-9]{3}", response.text)


def test_authorize_needs_an_idempotency_key_and_a_known_token() -> None:
    async def body(p: Platform) -> tuple[int, int, int]:
        content = json.dumps(card_body("4111111111111111")).encode()
        no_key = await p.client.post("/v1/transactions/sbx-1-EUR/authorize", content=content)
        long_key = await p.authorize("sbx-1-EUR", "4111111111111111", key="k" * 256)
        unknown = await p.authorize("nope", "4111111111111111")
        return no_key.status_code, long_key.status_code, unknown.status_code

    assert scenario(body) == (400, 400, 404)


def test_tokenize_transactions_return_a_card_token() -> None:
    app = SandboxApp()

    async def body(p: Platform) -> tuple[dict[str, Any], dict[str, Any]]:
        tokenize = await p.authorize("sbx-0-EUR-x", "5555555555554444")
        created = await p.post(
            "/v1/transactions",
            {"amount_minor": 990, "currency": "EUR", "operation": "sale+tokenize"},
        )
        both = await p.authorize(created.json()["token"], "4111111111111111")
        return tokenize.json(), both.json()

    tokenize, both = scenario(body, app)
    for answer in (tokenize, both):
        assert answer["result"] == "approved"
        assert re.fullmatch(r"tok_[A-Za-z]{20}", answer["card_token"])
    assert [c.amount_minor for c in app.charges] == [0, 990]


def test_same_idempotency_key_returns_the_first_answer_and_charges_once() -> None:
    app = SandboxApp()

    async def body(p: Platform) -> tuple[bytes, bytes]:
        first = await p.authorize("sbx-100-EUR-a", "4111111111111111", key="call-1:1")
        second = await p.authorize("sbx-100-EUR-a", "4111111111111111", key="call-1:1")
        return first.content, second.content

    first, second = scenario(body, app)
    assert first == second
    assert len(app.charges) == 1


def test_a_repeated_key_replays_a_decline_even_with_another_card() -> None:
    app = SandboxApp()

    async def body(p: Platform) -> tuple[dict[str, Any], dict[str, Any]]:
        first = await p.authorize("sbx-100-EUR", "4000000000000002", key="k")
        second = await p.authorize("sbx-100-EUR", "4111111111111111", key="k")
        return first.json(), second.json()

    first, second = scenario(body, app)
    assert first == second
    assert first["result"] == "declined"
    assert app.charges == []


def test_a_paid_token_is_not_charged_again_with_a_new_key() -> None:
    app = SandboxApp()

    async def body(p: Platform) -> tuple[dict[str, Any], dict[str, Any], str]:
        first = await p.authorize("sbx-100-EUR-b", "4111111111111111", key="k1")
        second = await p.authorize("sbx-100-EUR-b", "5555555555554444", key="k2")
        status = (await p.get("/v1/transactions/sbx-100-EUR-b")).json()["status"]
        return first.json(), second.json(), status

    first, second, status = scenario(body, app)
    assert first["result"] == "approved"
    assert second["result"] == "declined"
    assert second["decline_code"] == "already_paid"
    assert status == "paid"
    assert len(app.charges) == 1


def test_an_expired_token_is_declined() -> None:
    app = SandboxApp()

    async def body(p: Platform) -> dict[str, Any]:
        return dict((await p.authorize("sbx-1-EUR-expired", "4111111111111111")).json())

    answer = scenario(body, app)
    assert (answer["result"], answer["decline_code"]) == ("declined", "expired")
    assert app.charges == []


def test_a_declined_token_can_still_be_paid_with_another_attempt() -> None:
    app = SandboxApp()

    async def body(p: Platform) -> list[str]:
        results = []
        for key, number in (("k1", "4000000000009995"), ("k2", "4111111111111111")):
            results.append((await p.authorize("sbx-7-EUR", number, key=key)).json()["result"])
        return results

    assert scenario(body, app) == ["declined", "approved"]
    assert len(app.charges) == 1


def test_the_same_key_in_flight_gets_409() -> None:
    app = SandboxApp(slow_delay_s=0.1)

    async def body(p: Platform) -> list[int]:
        slow = asyncio.create_task(p.authorize("sbx-100-EUR", "4000000000000341", key="k"))
        await asyncio.sleep(0.02)
        again = await p.authorize("sbx-100-EUR", "4000000000000341", key="k")
        return [(await slow).status_code, again.status_code]

    assert scenario(body, app) == [200, 409]
    assert len(app.charges) == 1


def test_a_second_key_while_the_slow_one_is_processed_waits_and_is_declined() -> None:
    # One token, two keys, concurrently: decided in the order they came, one charge.
    app = SandboxApp(slow_delay_s=0.1)

    async def body(p: Platform) -> list[Any]:
        slow = asyncio.create_task(p.authorize("sbx-100-EUR", "4000000000000341", key="k1"))
        await asyncio.sleep(0.02)
        fast = (await p.authorize("sbx-100-EUR", "4111111111111111", key="k2")).json()
        slow_answer = (await slow).json()
        return [slow_answer["result"], fast["result"], fast["decline_code"]]

    assert scenario(body, app) == ["approved", "declined", "already_paid"]
    assert [charge.idempotency_key for charge in app.charges] == ["k1"]


@pytest.mark.parametrize("cards", [("4000000000000341",) * 2, ("4111111111111111",) * 8])
def test_concurrent_authorizations_of_one_token_charge_once(cards: tuple[str, ...]) -> None:
    app = SandboxApp(slow_delay_s=0.05)

    async def body(p: Platform) -> list[str]:
        answers = await asyncio.gather(
            *(p.authorize("sbx-100-EUR-c", n, key=f"k{i}") for i, n in enumerate(cards))
        )
        return sorted(answer.json()["result"] for answer in answers)

    assert scenario(body, app) == ["approved"] + ["declined"] * (len(cards) - 1)
    assert len(app.charges) == 1


def test_a_slow_request_whose_client_went_away_still_charges_once() -> None:
    # Like a real platform: the node's timeout (or its death) does not undo the payment; the
    # same key then gets the first answer, and the GET shows the payment under that key.
    app = SandboxApp(slow_delay_s=0.2)

    async def body(p: Platform) -> tuple[int, int, dict[str, Any], dict[str, Any]]:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await p.authorize("sbx-100-EUR", "4000000000000341", key="k")
        in_flight = await p.authorize("sbx-100-EUR", "4000000000000341", key="k")
        await asyncio.sleep(0.3)
        again = await p.authorize("sbx-100-EUR", "4000000000000341", key="k")
        looked_up = (await p.get("/v1/transactions/sbx-100-EUR")).json()
        return in_flight.status_code, again.status_code, again.json(), looked_up

    in_flight, status, again, looked_up = scenario(body, app)
    assert (in_flight, status, again["result"]) == (409, 200, "approved")
    assert len(app.charges) == 1
    assert looked_up["status"] == "paid" and looked_up["charges"] == 1
    assert looked_up["payment"] == {
        "idempotency_key": "k",
        "result": "approved",
        "reference": again["reference"],
        "authorization_code": again["authorization_code"],
    }


def test_the_paid_lookup_names_the_payment_and_the_others_do_not() -> None:
    app = SandboxApp()

    async def body(p: Platform) -> list[dict[str, Any]]:
        await p.authorize("sbx-0-EUR-t", "5555555555554444", key="tok-key")
        await p.authorize("sbx-100-EUR-d", "4000000000000002", key="declined-key")
        return [
            (await p.get(f"/v1/transactions/{token}")).json()
            for token in ("sbx-0-EUR-t", "sbx-100-EUR-d", "sbx-100-EUR-expired", "sbx-1-EUR")
        ]

    tokenized, declined, expired, pending = scenario(body, app)
    assert tokenized["status"] == "paid" and tokenized["charges"] == 1
    payment = tokenized["payment"]
    assert payment["idempotency_key"] == "tok-key" and payment["result"] == "approved"
    assert re.fullmatch(r"tok_[A-Za-z]{20}", payment["card_token"])
    assert payment["reference"] == app.charges[0].reference
    for other in (declined, expired, pending):
        assert "payment" not in other and "charges" not in other
    assert [declined["status"], expired["status"], pending["status"]] == [
        "pending",
        "expired",
        "pending",
    ]
    assert not re.search(r"5555|4444|0002", json.dumps([tokenized, declined]))


@pytest.mark.parametrize(
    "raw", [b"[" * 30_000 + b"]" * 30_000, b'{"card":' * 6_000 + b"1" + b"}" * 6_000]
)
def test_a_deeply_nested_body_is_400(raw: bytes) -> None:
    async def body(p: Platform) -> list[int]:
        headers = {"Idempotency-Key": "k"}
        authorize = await p.post("/v1/transactions/sbx-100-EUR/authorize", raw, **headers)
        create = await p.post("/v1/transactions", raw)
        return [authorize.status_code, create.status_code]

    assert scenario(body) == [400, 400]


def test_references_and_tokens_never_hold_a_card_like_digit_run() -> None:
    app = SandboxApp()

    async def body(p: Platform) -> list[str]:
        values = []
        for index in range(40):
            answer = (await p.authorize(f"sbx-0-EUR-{index}", "4111111111111111")).json()
            values += [answer["reference"], answer["card_token"], answer["authorization_code"]]
        return values

    assert not any(re.search(r"[0-9]{12}", value) for value in scenario(body, app))


# ---- signatures ---------------------------------------------------------------------------------


def test_requests_must_be_signed_when_a_secret_is_set() -> None:
    async def body(p: Platform) -> list[int]:
        good_get = await p.get("/v1/transactions/sbx-1-EUR")
        good_post = await p.authorize("sbx-1-EUR", "4111111111111111")
        health = await p.client.get("/healthz")  # never signed
        unsigned = await p.client.get("/v1/transactions/sbx-1-EUR")
        wrong = await p.client.get(
            "/v1/transactions/sbx-1-EUR", headers={"X-SPG-Signature": sign("x", b"", int(NOW))}
        )
        old = await p.client.get(
            "/v1/transactions/sbx-1-EUR",
            headers={"X-SPG-Signature": sign(SECRET, b"", int(NOW) - 301)},
        )
        content = json.dumps(card_body("4111111111111111")).encode()
        other_body = await p.client.post(
            "/v1/transactions/sbx-2-EUR/authorize",
            content=content,
            headers={
                "X-SPG-Signature": sign(SECRET, content + b" ", int(NOW)),
                "Idempotency-Key": "k",
            },
        )
        return [
            r.status_code for r in (good_get, good_post, health, unsigned, wrong, old, other_body)
        ]

    assert scenario(body, secret=SECRET) == [200, 200, 200, 401, 401, 401, 401]


def test_no_secret_means_no_signature_check() -> None:
    async def body(p: Platform) -> int:
        return (await p.client.get("/v1/transactions/sbx-1-EUR")).status_code

    assert scenario(body) == 200


# ---- card data ----------------------------------------------------------------------------------


def test_no_card_data_in_answers_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = SandboxApp(slow_delay_s=0)
    numbers = [
        "4111111111111111",
        "5555555555554444",
        "378282246310005",
        "4000000000000002",
        "4000000000009995",
        "4000000000000119",
        "4000000000000341",
        "4111111111111112",  # not Luhn-valid: 400
    ]

    async def body(p: Platform) -> list[str]:
        texts = []
        for index, number in enumerate(numbers):
            response = await p.authorize(f"sbx-100-EUR-{index}", number, cvc="739")
            texts.append(response.text)
            texts.append((await p.authorize(f"sbx-100-EUR-{index}", number, cvc="739")).text)
        return texts

    texts = scenario(body, app)
    texts += [record.getMessage() for record in caplog.records]
    everything = "\n".join(texts)
    for number in numbers:
        assert number not in everything
        assert number[:-4] not in everything
    # The answers' random digits (an authorisation code "012305", a reference "SBX2030AB")
    # may hold the expiry's by chance: they are blanked out before it is looked for.
    for text in texts[: 2 * len(numbers)]:
        answer = json.loads(text)
        for field in ("authorization_code", "reference"):
            if isinstance(answer.get(field), str) and answer[field]:
                everything = everything.replace(answer[field], "<random>")
    assert "12/30" not in everything and "1230" not in everything and "2030" not in everything
    assert not re.search(r"(?<![A-Za-z0-9])739(?![A-Za-z0-9])", everything)
    assert "exp_month" not in everything and "cvc" not in everything


# ---- served for real ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_sandbox_on_loopback() -> None:
    port = free_port()

    async def main() -> tuple[int, int, str]:
        started = asyncio.Event()
        server = asyncio.create_task(serve_sandbox("127.0.0.1", port, SECRET, started=started))
        try:
            async with asyncio.timeout(5):
                await started.wait()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                health = await client.get("/healthz")
                unsigned = await client.get("/v1/transactions/sbx-1-EUR")
                content = json.dumps(card_body("4111111111111111")).encode()
                paid = await client.post(
                    "/v1/transactions/sbx-1-EUR/authorize",
                    content=content,
                    headers={
                        "X-SPG-Signature": sign(SECRET, content, int(time.time())),
                        "Idempotency-Key": "k",
                    },
                )
            return health.status_code, unsigned.status_code, paid.json()["result"]
        finally:
            server.cancel()
            with pytest.raises(asyncio.CancelledError):
                await server

    assert asyncio.run(main()) == (200, 401, "approved")
    # The port is free again once the server is gone.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_serve_sandbox_on_a_busy_port_raises_oserror() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(OSError):
            asyncio.run(serve_sandbox("127.0.0.1", port, ""))


def test_memory_is_bounded_oldest_transactions_forgotten_first() -> None:
    app = SandboxApp(remember=3)

    async def body(p: Platform) -> list[str]:
        results = []
        for n in range(6):
            created = app.create_transaction(100 + n, "EUR")
            answer = await p.authorize(created.token, "4111111111111111", key=f"k{n}")
            results.append(answer.json()["result"])
            declined = await p.authorize(f"sbx-{n + 1}-EUR", "4000000000000002", key=f"d{n}")
            results.append(declined.json()["result"])
        return results

    assert scenario(body, app) == ["approved", "declined"] * 6
    # the three newest transactions and their charges are kept, in order; nothing older
    assert [c.amount_minor for c in app.charges] == [103, 104, 105]
    assert len(app._transactions) == 3
    assert all(len(app.charges_of(c.token)) == 1 for c in app.charges)
    assert len(app._answers) <= 12


def test_a_remembered_charge_is_still_found_and_replayed() -> None:
    app = SandboxApp(remember=2)

    async def body(p: Platform) -> tuple[str, str, int]:
        first = await p.authorize("sbx-700-EUR-a", "4111111111111111", key="same")
        app.create_transaction(100, "EUR")  # one newer transaction: the paid one is kept
        again = await p.authorize("sbx-700-EUR-a", "4111111111111111", key="same")
        paid = (await p.get("/v1/transactions/sbx-700-EUR-a")).json()
        return first.json()["reference"], again.json()["reference"], paid["charges"]

    first, again, charges = scenario(body, app)
    assert first == again and charges == 1


def test_remember_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SandboxApp(remember=0)
