"""Call records: their JSON, the card guard, the CDR file and the signed result callback."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from spg_media.cdr import CallbackSender, CallRecord, CdrWriter, record_bytes
from spg_media.payment.signing import verify

T = TypeVar("T")
SECRET = "gateway-secret"
NOW = 1_700_000_000.0
ALLOW = ("https://merchant.test/", "https://pay.example.com:8443/hooks/", "http://127.0.0.1:9000")


def run(coro: Awaitable[T]) -> T:
    async def wrapped() -> T:
        return await coro

    return asyncio.run(wrapped())


def record(**changes: Any) -> CallRecord:
    base = CallRecord(
        call_id="a84b4c76e66710@pbx.example",
        transaction="sbx-4990-EUR-1",
        order="R-1001",
        result="approved",
        reference="SBXAB12CD34",
        authorization_code="123456",
        card={"brand": "visa", "last4": "1111"},
        card_token="",
        attempts=1,
        started_at="2024-05-01T10:00:00.000Z",
        ended_at="2024-05-01T10:01:02.345Z",
        durations={"setup": 0.0123456, "ivr": 41.5, "authorization": 0.25},
    )
    return dataclasses.replace(base, **changes)


# ---- the record ---------------------------------------------------------------------------------


def test_the_record_has_exactly_the_contract_fields() -> None:
    assert [f.name for f in dataclasses.fields(CallRecord)] == [
        "call_id",
        "transaction",
        "order",
        "result",
        "reference",
        "authorization_code",
        "card",
        "card_token",
        "attempts",
        "started_at",
        "ended_at",
        "durations",
        "charge_state",
        "mode",  # agent-assisted payments only, with their payment_id
        "payment_id",
        "input",
    ]


def test_an_assisted_payment_says_so_and_an_ivr_call_does_not() -> None:
    assert "mode" not in record().to_json() and "payment_id" not in record().to_json()
    assisted = dataclasses.replace(record(), mode="assist", payment_id="pay_1")
    assert assisted.to_json()["mode"] == "assist"
    assert assisted.to_json()["payment_id"] == "pay_1"


def test_to_json() -> None:
    assert record().to_json() == {
        "call_id": "a84b4c76e66710@pbx.example",
        "transaction": "sbx-4990-EUR-1",
        "order": "R-1001",
        "result": "approved",
        "charge_state": "charged",
        "reference": "SBXAB12CD34",
        "authorization_code": "123456",
        "card": {"brand": "visa", "last4": "1111"},
        "card_token": "",
        "attempts": 1,
        "input": {},
        "started_at": "2024-05-01T10:00:00.000Z",
        "ended_at": "2024-05-01T10:01:02.345Z",
        "durations": {"setup": 0.012, "ivr": 41.5, "authorization": 0.25},
    }


def test_input_says_how_each_field_was_entered() -> None:
    given = {"card": "mixed", "expiry": "speech", "security_code": "dtmf"}
    data = record(input=given).to_json()
    assert data["input"] == given
    assert json.loads(record_bytes(record(input=given)))["input"] == given
    data["input"]["card"] = "dtmf"
    assert given["card"] == "mixed"  # a copy


@pytest.mark.parametrize(
    "bad",
    [
        {"card": "voice"},
        {"pan": "speech"},
        {"card": "4111111111111111"},
        {"security_code": "123"},
    ],
)
def test_input_holds_only_field_names_and_kinds(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="input") as error:
        record(input=bad).to_json()
    assert "4111" not in str(error.value) and "123" not in str(error.value)


@pytest.mark.parametrize(
    ("result", "given", "charge_state"),
    [
        ("approved", "", "charged"),
        ("declined", "", "not-charged"),
        ("cancelled", "", "not-charged"),
        ("hung-up", "", "not-charged"),
        ("error", "", "unknown"),  # a record made without one: the careful guess
        ("error", "not-charged", "not-charged"),
        ("error", "unknown", "unknown"),
        ("hung-up", "charged", "charged"),  # hung up, the platform's answer came after
    ],
)
def test_every_record_carries_a_charge_state(result: str, given: str, charge_state: str) -> None:
    data = record(result=result, charge_state=given).to_json()
    assert data["charge_state"] == charge_state
    assert json.loads(record_bytes(record(result=result, charge_state=given)))["charge_state"] == (
        charge_state
    )


def test_to_json_without_a_card_and_with_no_durations() -> None:
    data = record(card=None, durations={}, result="invalid-transaction").to_json()
    assert data["card"] is None
    assert data["durations"] == {}
    json.dumps(data)  # JSON-ready


def test_to_json_is_a_copy() -> None:
    rec = record()
    data = rec.to_json()
    data["card"]["last4"] = "9999"
    data["durations"]["ivr"] = 0
    assert rec.card == {"brand": "visa", "last4": "1111"}
    assert rec.durations["ivr"] == 41.5


def test_repr_is_short() -> None:
    assert repr(record()) == "CallRecord(call_id='a84b4c76e66710@pbx.example', result='approved')"


@pytest.mark.parametrize(
    "digits", ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"]
)
@pytest.mark.parametrize(
    "field_name",
    [
        "call_id",
        "transaction",
        "order",
        "reference",
        "authorization_code",
        "card_token",
        "ended_at",
    ],
)
def test_a_card_like_digit_run_is_masked_and_named(
    field_name: str, digits: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = record(**{field_name: f"x{digits}y"})
    data = rec.to_json()
    assert data[field_name] == "x" + "*" * (len(digits) - 4) + digits[-4:] + "y"
    assert digits[:-4] not in record_bytes(rec).decode()
    assert field_name in caplog.text and digits[:-4] not in caplog.text


@pytest.mark.parametrize("digits", ["4111111111111112", "1732640000123", "4" * 25])
def test_numeric_ids_that_cannot_be_a_pan_pass(digits: str) -> None:
    # Not Luhn-valid, or longer than any PAN: numeric references and Call-IDs stay as they are.
    assert record(reference=digits, call_id=digits).to_json()["reference"] == digits


@pytest.mark.parametrize(
    "changes",
    [
        {"card": {"brand": "visa", "last4": "41111"}},
        {"card": {"brand": "visa", "last4": "4111111111111111"}},
        {"card": {"brand": "visa", "last4": "1111", "pan": "4111111111111111"}},
        {"card": {"brand": "visa", "last4": "1111", "exp": "1230"}},
        {"card": {"brand": "visa"}},
    ],
)
def test_the_card_and_durations_are_guarded_too(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as refused:
        record(**changes).to_json()
    assert "4111111111" not in str(refused.value)
    assert "1230" not in str(refused.value)


def test_eleven_digits_and_separated_groups_pass() -> None:
    # The guard is a last resort for runs that could be a PAN; a phone-like 11-digit order passes.
    data = record(order="44123456789", reference="1234-5678-9012").to_json()
    assert data["order"] == "44123456789"


# ---- the CDR file -------------------------------------------------------------------------------


def test_cdr_lines_are_appended(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "cdr.jsonl"
    writer = CdrWriter(path)
    assert writer.enabled
    writer.write(record())
    writer.write(record(call_id="second", card=None, result="hung-up"))
    text = path.read_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert [json.loads(line) for line in lines] == [
        record().to_json(),
        record(call_id="second", card=None, result="hung-up").to_json(),
    ]
    CdrWriter(str(path)).write(record(call_id="third"))  # a new writer appends as well
    assert len(path.read_text().splitlines()) == 3


def test_cdr_keeps_non_ascii_readable(tmp_path: Path) -> None:
    path = tmp_path / "cdr.jsonl"
    CdrWriter(path).write(record(order="Habitación 12"))
    assert "Habitación 12" in path.read_text(encoding="utf-8")


def test_an_empty_path_disables_the_cdr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    writer = CdrWriter("")
    assert not writer.enabled
    writer.write(record())
    assert list(tmp_path.iterdir()) == []


def test_a_card_in_a_record_is_masked_in_the_cdr_and_the_result_kept(tmp_path: Path) -> None:
    path = tmp_path / "cdr.jsonl"
    writer = CdrWriter(path)
    writer.write(record())
    writer.write(record(reference="5555555555554444"))
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["reference"] == "************4444"
    assert "555555555555" not in path.read_text()


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "cdr.jsonl"
    writers = [CdrWriter(path) for _ in range(4)]
    long_order = "o" * 5000

    def write_many(writer: CdrWriter, n: int) -> None:
        for i in range(50):
            writer.write(record(call_id=f"{n}-{i}", order=long_order))

    threads = [threading.Thread(target=write_many, args=(w, n)) for n, w in enumerate(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 200
    assert len({json.loads(line)["call_id"] for line in lines}) == 200


def test_a_cdr_write_error_is_raised_to_the_caller(tmp_path: Path) -> None:
    (tmp_path / "cdr.jsonl").mkdir()  # a directory where the file should be
    with pytest.raises(OSError):
        CdrWriter(tmp_path / "cdr.jsonl").write(record())


# ---- the callback allow-list --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://merchant.test/",
        "https://merchant.test/result",
        "https://merchant.test/result?id=5#x",
        "https://MERCHANT.test/result",
        "https://merchant.test:443/result",
        "https://pay.example.com:8443/hooks/spg",
        "http://127.0.0.1:9000/cb",
        "http://127.0.0.1:9000",
    ],
)
def test_allowed_urls(url: str) -> None:
    assert CallbackSender(SECRET, ALLOW).allowed(url)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "merchant.test/result",
        "http://merchant.test/result",  # https listed: plain http is not
        "https://merchant.test.evil.example/",
        "https://merchant.test@evil.example/",
        "https://user:pw@merchant.test/",
        "https://evil.example/https://merchant.test/",
        "https://merchant.test:8443/result",
        "https://pay.example.com/hooks/spg",  # port 443, not 8443
        "https://pay.example.com:8443/other",
        "https://pay.example.com:8443/hooks/../admin",
        "https://pay.example.com:8443/hooks/%2e%2e/admin",
        "https://merchant.test/a b",
        "https://merchant.test/\r\nX-Injected: 1",
        "https://merchant.test\\@evil.example/",
        "https://merchant.test:99999/",
        "ftp://merchant.test/",
        "javascript:alert(1)",
        "http://127.0.0.1:9001/cb",
        "https://127.0.0.1:9000/cb",
    ],
)
def test_refused_urls(url: str) -> None:
    assert not CallbackSender(SECRET, ALLOW).allowed(url)


def test_an_empty_allow_list_allows_nothing() -> None:
    assert not CallbackSender(SECRET, []).allowed("https://merchant.test/")


def test_invalid_prefixes_allow_nothing() -> None:
    sender = CallbackSender(SECRET, ["merchant.test", "ftp://merchant.test/", ""])
    assert not sender.allowed("https://merchant.test/")


# ---- sending ------------------------------------------------------------------------------------


class Merchant:
    """A callback receiver answering a scripted list of statuses (or exceptions)."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, headers={"Location": "https://elsewhere.test/"})

    def sender(self, **options: Any) -> CallbackSender:
        options.setdefault("backoff_s", 0)
        options.setdefault("clock", lambda: NOW)
        return CallbackSender(SECRET, ALLOW, transport=httpx.MockTransport(self.handle), **options)


def test_send_posts_the_signed_record() -> None:
    merchant = Merchant(200)
    assert run(merchant.sender().send("https://merchant.test/result?id=7", record())) is True
    (request,) = merchant.requests
    assert request.method == "POST"
    assert str(request.url) == "https://merchant.test/result?id=7"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == record().to_json()
    assert verify(SECRET, request.headers["X-SPG-Signature"], request.content, NOW)
    assert not verify("other", request.headers["X-SPG-Signature"], request.content, NOW)


def test_callbacks_take_no_proxy_or_ca_bundle_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A receiver on loopback, a "proxy" beside it, and proxy/CA variables set as a compromised
    # environment would: the result goes straight to the receiver.
    got: dict[str, int] = {"receiver": 0, "proxy": 0}

    async def serve(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got[name] += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *([0-9]+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()

    async def main() -> bool:
        receiver = await asyncio.start_server(lambda r, w: serve("receiver", r, w), "127.0.0.1", 0)
        proxy = await asyncio.start_server(lambda r, w: serve("proxy", r, w), "127.0.0.1", 0)
        port = receiver.sockets[0].getsockname()[1]
        proxy_url = f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        bundle = tmp_path / "not-a-ca.pem"
        bundle.write_text("not a certificate\n")
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # would break client creation if read
        sender = CallbackSender(SECRET, [f"http://127.0.0.1:{port}/"], backoff_s=0, retries=0)
        try:
            return await sender.send(f"http://127.0.0.1:{port}/result", record())
        finally:
            for server in (receiver, proxy):
                server.close()
                await server.wait_closed()

    assert run(main()) is True
    assert got == {"receiver": 1, "proxy": 0}


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_any_2xx_is_delivered(status: int) -> None:
    assert run(Merchant(status).sender().send("https://merchant.test/", record())) is True


@pytest.mark.parametrize(
    ("answers", "delivered", "tries"),
    [
        ((500, 200), True, 2),
        ((502, 503, 204), True, 3),
        ((500, 500, 500), False, 3),
        ((429, 200), True, 2),
        ((httpx.ConnectError("refused"), 200), True, 2),
        ((httpx.ReadError("reset"), httpx.ReadTimeout("slow"), 200), True, 3),
        ((httpx.ConnectError("refused"),), False, 3),
        ((400,), False, 1),
        ((401,), False, 1),
        ((404,), False, 1),
        ((302,), False, 1),  # redirects are not followed
        ((500, 400), False, 2),
    ],
)
def test_retries(answers: tuple[int | Exception, ...], delivered: bool, tries: int) -> None:
    merchant = Merchant(*answers)
    assert run(merchant.sender().send("https://merchant.test/", record())) is delivered
    assert len(merchant.requests) == tries
    assert {r.content for r in merchant.requests} == {merchant.requests[0].content}


def test_each_try_is_signed_afresh() -> None:
    merchant = Merchant(500, 500, 200)
    ticks = iter([NOW, NOW + 10, NOW + 20])
    assert run(merchant.sender(clock=lambda: next(ticks)).send("https://merchant.test/", record()))
    stamps = [r.headers["X-SPG-Signature"].split(",")[0] for r in merchant.requests]
    assert stamps == [f"t={int(NOW)}", f"t={int(NOW) + 10}", f"t={int(NOW) + 20}"]


def test_backoff_doubles() -> None:
    merchant = Merchant(500)
    start = time.monotonic()
    assert not run(merchant.sender(backoff_s=0.02).send("https://merchant.test/", record()))
    assert time.monotonic() - start >= 0.02 + 0.04


def test_a_hanging_receiver_is_cut_at_the_timeout() -> None:
    requests = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal requests
        requests += 1
        await asyncio.sleep(5)
        return httpx.Response(200)

    sender = CallbackSender(
        SECRET, ALLOW, timeout_s=0.05, transport=httpx.MockTransport(handle), backoff_s=0
    )
    start = time.monotonic()
    assert run(sender.send("https://merchant.test/", record())) is False
    assert requests == 3
    assert time.monotonic() - start < 1


def test_a_url_outside_the_allow_list_is_not_contacted() -> None:
    merchant = Merchant(200)
    assert run(merchant.sender().send("https://evil.example/", record())) is False
    assert merchant.requests == []


def test_a_card_in_a_record_is_masked_in_the_callback(caplog: pytest.LogCaptureFixture) -> None:
    merchant = Merchant(200)
    rec = record(card_token="4111111111111111")
    assert run(merchant.sender().send("https://merchant.test/", rec)) is True
    assert len(merchant.requests) == 1
    assert "411111111111" not in str(merchant.requests[0].content)
    assert "4111111111111111" not in caplog.text


def test_send_never_raises() -> None:
    merchant = Merchant(RuntimeError("a transport bug"))
    assert run(merchant.sender().send("https://merchant.test/", record())) is False

    class Broken(CallRecord):
        def to_json(self) -> dict[str, Any]:
            raise KeyError("boom")

    broken = Broken(**{f.name: getattr(record(), f.name) for f in dataclasses.fields(record())})
    assert run(Merchant(200).sender().send("https://merchant.test/", broken)) is False


def test_a_given_transport_is_borrowed_not_closed() -> None:
    closed: list[bool] = []

    class Recording(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(204)

        async def aclose(self) -> None:
            closed.append(True)

    sender = CallbackSender(SECRET, ALLOW, transport=Recording())

    async def twice() -> list[bool]:
        return [
            await sender.send("https://merchant.test/", record()),
            await sender.send("https://merchant.test/", record()),
        ]

    assert run(twice()) == [True, True]
    assert closed == []


def test_logs_name_the_origin_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    merchant = Merchant(500, 200)
    url = "https://merchant.test/result?secret=s3cr3t-value"
    assert run(merchant.sender().send(url, record()))
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("spg"))
    assert "https://merchant.test" in ours
    assert "s3cr3t-value" not in ours  # (httpx's own INFO line shows the URL: its logger, its say)


def test_callback_body_and_cdr_line_are_the_same_bytes(tmp_path: Path) -> None:
    merchant = Merchant(200)
    rec = record()
    run(merchant.sender().send("https://merchant.test/", rec))
    CdrWriter(tmp_path / "cdr.jsonl").write(rec)
    assert (tmp_path / "cdr.jsonl").read_bytes() == merchant.requests[0].content + b"\n"
