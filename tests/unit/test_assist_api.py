"""The agent-assisted payment API over ASGI: token, errors, idempotency, SSE, records, leaks.

The call side is a fake `AssistCallHandle`; the customer's keys go in through
`AssistService.digit`; the connector is the in-process sandbox (the real lookup and
authorisation path, journal included).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from spg_media.admin import AsgiServer
from spg_media.assist.api import build_app
from spg_media.assist.service import ASSIST_PAYMENTS_TOTAL, AssistService
from spg_media.cdr import CallbackSender, CallRecord, CdrWriter, record_bytes
from spg_media.cli import _worker_count
from spg_media.config import Config, ConfigError, load_config
from spg_media.payment.connectors import make_connector
from spg_media.payment.journal import PaymentJournal
from spg_media.payment.journey import Play
from spg_media.server import Server
from spg_media.workers import plan_workers

TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAN, EXPIRY, CVC = "5555555555554444", "0731", "737"


@dataclass
class FakeCall:
    """What the bridged call shows the service: it records what the customer would hear."""

    call_id: str = "call-1"
    from_uri: str = "sip:+34600111222@carrier.example"
    to_uri: str = "sip:assist@spg.example"
    agent_uri: str = "sip:agent7@pbx.example"
    started_at: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC)
    )
    transaction_hint: str | None = None
    language: str = "en"
    played: list[Play] = field(default_factory=list)
    stops: int = 0

    def play(self, play: Play) -> None:
        self.played.append(play)

    def stop_playback(self) -> None:
        self.stops += 1


class RecordingCallbacks(CallbackSender):
    """Keeps the body each callback would POST (allow-list checked as the real one does)."""

    def __init__(self) -> None:
        super().__init__("cb-secret", ["https://merchant.example/results"])
        self.bodies: list[bytes] = []

    async def send(self, url: str, record: CallRecord) -> bool:
        self.bodies.append(record_bytes(record))
        return True


def config_for(tmp_path: Path) -> Config:
    base = load_config(None, env={})
    return dataclasses.replace(
        base,
        log=dataclasses.replace(
            base.log,
            cdr_path=str(tmp_path / "cdr.jsonl"),
            journal_path=str(tmp_path / "journal.jsonl"),
        ),
    )


@dataclass
class Rig:
    service: AssistService
    client: httpx.AsyncClient
    call: FakeCall
    callbacks: RecordingCallbacks
    config: Config

    def cdr(self) -> list[dict[str, Any]]:
        path = Path(self.config.log.cdr_path)
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def keys(self, text: str) -> None:
        loop = asyncio.get_running_loop()
        for key in text:
            self.service.digit(self.call.call_id, key, loop.time())

    async def start(self, transaction: str = "sbx-4990-EUR-a1", key: str = "k1") -> str:
        answer = await self.client.post(
            f"/v1/calls/{self.call.call_id}/payments",
            json={"transaction": transaction, "idempotency_key": key},
            headers=AUTH,
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["payment_id"])

    async def post(self, payment_id: str, body: dict[str, Any]) -> httpx.Response:
        return await self.client.post(f"/v1/payments/{payment_id}", json=body, headers=AUTH)


@asynccontextmanager
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = config_for(tmp_path)
    connector = make_connector("sandbox", "", "", 5.0)
    callbacks = RecordingCallbacks()
    service = AssistService(
        config, connector, CdrWriter(config.log.cdr_path), callbacks,
        PaymentJournal(config.log.journal_path),
    )  # fmt: skip
    call = FakeCall()
    service.call_started(call)
    transport = httpx.ASGITransport(app=build_app(service, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://assist.test") as client:
        try:
            yield Rig(service, client, call, callbacks, config)
        finally:
            await service.aclose()
            await connector.aclose()


def run(tmp_path: Path, scenario: Callable[[Rig], Awaitable[None]]) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            await scenario(r)

    asyncio.run(main())


def test_no_token_or_a_wrong_one_is_401(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
            for method, path in [
                ("GET", "/v1/calls"),
                ("POST", "/v1/calls/call-1/payments"),
                ("GET", "/v1/payments/pay_x"),
                ("POST", "/v1/payments/pay_x"),
                ("GET", "/v1/payments/pay_x/events"),
            ]:
                answer = await r.client.request(method, path, headers=headers, json={})
                assert answer.status_code == 401, (method, path, headers)
                assert answer.json()["error"] == "unauthorized"
                assert answer.headers["www-authenticate"].startswith("Bearer")
        listed = await r.client.get("/v1/calls", headers=AUTH)
        assert listed.status_code == 200
        [call] = listed.json()
        assert call["call_id"] == "call-1" and call["agent"] == "sip:agent7@pbx.example"
        assert call["from"].startswith("sip:+34600") and "payment_id" not in call

    run(tmp_path, scenario)


def test_unknown_call_and_payment_404_unknown_transaction_422_bad_body_400(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        body = {"transaction": "sbx-4990-EUR-a1", "idempotency_key": "k1"}
        answer = await r.client.post("/v1/calls/nope/payments", json=body, headers=AUTH)
        assert answer.status_code == 404 and answer.json()["error"] == "unknown-call"
        answer = await r.client.get("/v1/payments/pay_nope", headers=AUTH)
        assert answer.status_code == 404 and answer.json()["error"] == "unknown-payment"
        answer = await r.client.get("/v1/payments/pay_nope/events", headers=AUTH)
        assert answer.status_code == 404
        unknown = {"transaction": "nope-123", "idempotency_key": "k2"}
        answer = await r.client.post("/v1/calls/call-1/payments", json=unknown, headers=AUTH)
        assert answer.status_code == 422
        assert answer.json() == {"error": "invalid-transaction", "detail": "transaction is unknown"}
        answer = await r.client.post(
            "/v1/calls/call-1/payments",
            content=b"{nope",
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert answer.status_code == 400 and answer.json()["error"] == "bad-request"
        answer = await r.client.get("/v1/nothing", headers=AUTH)
        assert answer.status_code == 404 and set(answer.json()) == {"error", "detail"}

    run(tmp_path, scenario)


def test_idempotent_creation_and_a_second_active_payment_409(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        body = {"transaction": "sbx-4990-EUR-a1", "idempotency_key": "k1"}
        first, again = await asyncio.gather(
            r.client.post("/v1/calls/call-1/payments", json=body, headers=AUTH),
            r.client.post("/v1/calls/call-1/payments", json=body, headers=AUTH),
        )
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json()
        assert first.json() == {
            "payment_id": first.json()["payment_id"],
            "status": "active",
            "required": ["payment-card-number", "expiration-date", "security-code"],
            "amount_minor": 4990,
            "currency": "EUR",
        }
        later = await r.client.post("/v1/calls/call-1/payments", json=body, headers=AUTH)
        assert later.json() == first.json()
        assert len(r.service._payments) == 1
        other = {"transaction": "sbx-4990-EUR-a1", "idempotency_key": "k2"}
        answer = await r.client.post("/v1/calls/call-1/payments", json=other, headers=AUTH)
        assert answer.status_code == 409 and answer.json()["error"] == "payment-active"
        [call] = (await r.client.get("/v1/calls", headers=AUTH)).json()
        assert call["payment_id"] == first.json()["payment_id"]

    run(tmp_path, scenario)


def test_reused_key_elsewhere_callback_outside_the_allow_list_and_capture_in_progress(
    tmp_path: Path,
) -> None:
    async def scenario(r: Rig) -> None:
        r.service.call_started(FakeCall(call_id="call-2"))
        payment_id = await r.start(key="shared")
        body = {"transaction": "sbx-4990-EUR-a1", "idempotency_key": "shared"}
        answer = await r.client.post("/v1/calls/call-2/payments", json=body, headers=AUTH)
        assert answer.status_code == 409 and answer.json()["error"] == "idempotency-key-reused"
        body = {
            "transaction": "sbx-4990-EUR-a3",
            "idempotency_key": "k3",
            "callback": "https://evil.example/results",
        }
        answer = await r.client.post("/v1/calls/call-2/payments", json=body, headers=AUTH)
        assert answer.status_code == 422 and answer.json()["error"] == "callback-not-allowed"
        for name, keyed in [
            ("payment-card-number", PAN + "#"),
            ("expiration-date", EXPIRY),
            ("security-code", CVC),
        ]:
            await r.post(payment_id, {"capture": name, "prompt": False})
            r.keys(keyed)
        await r.post(payment_id, {"capture": "security-code"})
        answer = await r.post(payment_id, {"status": "complete"})
        assert answer.status_code == 409 and answer.json()["error"] == "capture-in-progress"
        answer = await r.post(payment_id, {"status": "complete", "capture": "security-code"})
        assert answer.status_code == 400
        answer = await r.client.put(f"/v1/payments/{payment_id}", headers=AUTH)
        assert answer.status_code == 405 and answer.json()["error"] == "method-not-allowed"

    run(tmp_path, scenario)


def test_complete_with_fields_missing_is_409_with_required(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        payment_id = await r.start()
        answer = await r.post(payment_id, {"capture": "payment-card-number", "prompt": False})
        assert answer.status_code == 200 and answer.json()["capture"] == "payment-card-number"
        r.keys(PAN + "#")
        answer = await r.post(payment_id, {"status": "complete"})
        assert answer.status_code == 409
        assert answer.json()["error"] == "fields-missing"
        assert answer.json()["required"] == ["expiration-date", "security-code"]
        answer = await r.post(payment_id, {"capture": "nothing"})
        assert answer.status_code == 400
        answer = await r.post(payment_id, {"status": "cancel"})
        assert answer.json()["status"] == "cancelled" and answer.json()["result"] == "cancelled"
        answer = await r.post(payment_id, {"status": "cancel"})
        assert answer.status_code == 409 and answer.json()["error"] == "not-active"

    run(tmp_path, scenario)


def test_a_whole_payment_streams_its_states_records_assist_and_leaks_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[str] = []
    frames: list[str] = []

    async def scenario(r: Rig) -> None:
        body = {
            "transaction": "sbx-4990-EUR-a1",
            "idempotency_key": "k1",
            "callback": "https://merchant.example/results/1",
        }
        approved_before = ASSIST_PAYMENTS_TOTAL.get(result="approved")
        created = await r.client.post("/v1/calls/call-1/payments", json=body, headers=AUTH)
        answers.append(created.text)
        payment_id = created.json()["payment_id"]
        stream = asyncio.create_task(
            r.client.get(f"/v1/payments/{payment_id}/events", headers=AUTH)
        )
        await asyncio.sleep(0.05)  # the stream is subscribed
        for name, keyed in [
            ("security-code", CVC + "#"),  # no card yet: "#" ends a 3-digit code
            ("payment-card-number", PAN + "#"),
            ("expiration-date", EXPIRY + "#"),
        ]:
            answer = await r.post(payment_id, {"capture": name})
            answers.append(answer.text)
            assert r.call.played[-1].parts[0].name.startswith("enter_")
            r.keys(keyed)
            state = (await r.client.get(f"/v1/payments/{payment_id}", headers=AUTH)).json()
            answers.append(json.dumps(state))
            assert state["capture"] is None and name not in state["required"], state
        answer = await r.post(payment_id, {"status": "complete"})
        answers.append(answer.text)
        assert answer.json()["status"] == "processing"
        events = await asyncio.wait_for(stream, 10)
        assert events.headers["content-type"].startswith("text/event-stream")
        frames.extend(events.text.split("\n\n"))
        final = (await r.client.get(f"/v1/payments/{payment_id}", headers=AUTH)).json()
        answers.append(json.dumps(final))
        assert final["status"] == "complete" and final["result"] == "approved"
        assert final["reference"] and final["card_brand"] == "mastercard"
        assert final["last4"] == "4444"
        await asyncio.sleep(0)  # the callback task ran
        [record] = r.cdr()
        assert record["mode"] == "assist" and record["payment_id"] == payment_id
        assert record["result"] == "approved" and record["card"]["last4"] == "4444"
        assert record["charge_state"] == "charged" and record["call_id"] == "call-1"
        # every field came from the keypad (no voice entry with an agent on the line)
        assert record["input"] == {"card": "dtmf", "expiry": "dtmf", "security_code": "dtmf"}
        assert ASSIST_PAYMENTS_TOTAL.get(result="approved") == approved_before + 1
        [callback] = r.callbacks.bodies
        assert json.loads(callback)["mode"] == "assist"
        answers.append(callback.decode())
        answers.append(Path(r.config.log.cdr_path).read_text())
        answers.append(Path(r.config.log.journal_path).read_text())
        # the customer heard the result; another payment may start on the call
        assert r.call.played[-1].parts[0].name == "approved"
        [call] = (await r.client.get("/v1/calls", headers=AUTH)).json()
        assert "payment_id" not in call

    run(tmp_path, scenario)

    states = [json.loads(f.removeprefix("data: ")) for f in frames if f.startswith("data: ")]
    marks = [s["digits_entered"] for s in states if s.get("capture") == "payment-card-number"]
    assert marks == list(range(17)), marks  # one state per key
    # fixed-length fields end on their last key: its mark is shown before the field ends
    for name, length in (("expiration-date", 4), ("security-code", 3)):
        marks = [s["digits_entered"] for s in states if s.get("capture") == name]
        assert marks == list(range(length + 1)), (name, marks)
    assert states[-1]["status"] == "complete" and states[-1]["result"] == "approved"
    assert any(s.get("last4") == "4444" for s in states)
    logs = [log_text(r) for r in caplog.records]
    assert_no_card_data([*answers, *frames, *logs])


def assert_no_card_data(blobs: list[str]) -> None:
    for blob in blobs:
        assert PAN not in blob and PAN[:12] not in blob
        assert not re.search(rf"(?<![0-9]){EXPIRY}(?![0-9])", blob), blob
        assert not re.search(r"07/31", blob), blob
        assert not re.search(rf"(?<![0-9A-Za-z]){CVC}(?![0-9A-Za-z])", blob), blob


def test_a_payment_active_when_the_call_ends_is_hung_up_without_a_charge(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        payment_id = await r.start()
        await r.post(payment_id, {"capture": "payment-card-number", "prompt": False})
        r.keys(PAN[:6])
        r.service.call_ended("call-1", asyncio.get_running_loop().time())
        state = (await r.client.get(f"/v1/payments/{payment_id}", headers=AUTH)).json()
        assert state["status"] == "cancelled" and state["result"] == "hung-up"
        [record] = r.cdr()
        assert record["result"] == "hung-up" and record["charge_state"] == "not-charged"
        assert record["mode"] == "assist" and record["input"] == {}  # nothing taken yet
        assert (await r.client.get("/v1/calls", headers=AUTH)).json() == []
        assert (
            not Path(r.config.log.journal_path).exists()
            or not Path(r.config.log.journal_path).read_text()
        )

    run(tmp_path, scenario)


def test_a_timeout_shows_in_the_state_and_a_new_payment_after_a_result(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        r.service.session_config = dataclasses.replace(
            r.service.session_config, first_digit_timeout_s=0.05
        )
        payment_id = await r.start()
        await r.post(payment_id, {"capture": "expiration-date", "prompt": False})
        await asyncio.sleep(0.15)
        state = (await r.client.get(f"/v1/payments/{payment_id}", headers=AUTH)).json()
        assert state["error_type"] == "timeout"
        assert r.call.played[-1].parts[0].name == "no_input"
        await r.post(payment_id, {"status": "cancel"})
        second = await r.start(transaction="sbx-100-EUR-a2", key="k2")
        assert second != payment_id

    run(tmp_path, scenario)


def test_the_page_is_served_without_the_token_and_holds_no_data(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        page = await r.client.get("/assist/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "app.js" in page.text and "call-1" not in page.text
        script = await r.client.get("/assist/app.js")
        assert script.status_code == 200 and "Authorization" in script.text
        moved = await r.client.get("/assist")
        assert moved.status_code == 308 and moved.headers["location"] == "/assist/"

    run(tmp_path, scenario)


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_node_serves_the_api_when_a_token_is_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The node serves the API and page on assist.listen with its token, an event stream
    included, and ends the stream when it stops; nothing without a token."""
    caplog.set_level(logging.INFO)
    sip_port, api_port = free_tcp_port(), free_tcp_port()
    base = config_for(tmp_path)
    config = dataclasses.replace(
        base,
        sip=dataclasses.replace(base.sip, listen=(f"udp:127.0.0.1:{sip_port}",)),
        admin=dataclasses.replace(base.admin, listen=""),
        assist=dataclasses.replace(base.assist, listen=f"127.0.0.1:{api_port}", api_token=TOKEN),
        tts=dataclasses.replace(base.tts, cache_dir=str(tmp_path / "prompts")),
    )
    frames: list[bytes] = []

    async def main() -> None:
        server = Server(config, prerender=False)
        await server.start()
        try:
            assert server.assist is not None and server.assist_server is not None
            call = FakeCall()
            server.assist.call_started(call)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as client:
                assert (await client.get("/v1/calls")).status_code == 401
                assert (await client.get("/assist/")).status_code == 200
                body = {"transaction": "sbx-4990-EUR-n1", "idempotency_key": "k1"}
                created = await client.post("/v1/calls/call-1/payments", json=body, headers=AUTH)
                payment_id = created.json()["payment_id"]
                path = f"/v1/payments/{payment_id}/events"
                async with client.stream("GET", path, headers=AUTH) as stream:
                    chunks = stream.aiter_bytes()
                    frames.append(await anext(chunks))
                    server.assist.call_ended("call-1", asyncio.get_running_loop().time())
                    async for chunk in chunks:
                        frames.append(chunk)
        finally:
            await server.stop(grace_s=1)

    asyncio.run(main())
    text = b"".join(frames).decode()
    assert '"status":"active"' in text and '"result":"hung-up"' in text
    assert any("agent-assisted API and page on" in r.getMessage() for r in caplog.records)

    async def without_token() -> None:
        plain = dataclasses.replace(config, assist=dataclasses.replace(config.assist, api_token=""))
        server = Server(plain, prerender=False)
        await server.start()
        try:
            assert server.assist is None
            with pytest.raises(httpx.ConnectError):
                async with httpx.AsyncClient() as client:
                    await client.get(f"http://127.0.0.1:{api_port}/assist/")
        finally:
            await server.stop(grace_s=0)

    asyncio.run(without_token())
    assert any("api_token is empty" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("streaming", [True, False])
def test_an_event_stream_outlives_the_request_deadline_only_on_a_streaming_server(
    tmp_path: Path, streaming: bool
) -> None:
    """The admin endpoint's deadline cuts any connection that lasts; the API's server keeps
    it for the request head only, so an event stream stays open."""
    received: list[bytes] = []

    async def main() -> None:
        async with rig(tmp_path) as r:
            payment_id = await r.start()
            server = AsgiServer(build_app(r.service, TOKEN), 0.3, streaming=streaming)
            await server.start("127.0.0.1", 0)
            try:
                url = f"http://127.0.0.1:{server.port}/v1/payments/{payment_id}/events"
                async with (
                    httpx.AsyncClient() as client,
                    client.stream("GET", url, headers=AUTH) as stream,
                ):
                    chunks = stream.aiter_bytes()
                    received.append(await anext(chunks))
                    await asyncio.sleep(0.8)  # past the deadline
                    await r.post(payment_id, {"status": "cancel"})
                    with contextlib.suppress(httpx.HTTPError):
                        async for chunk in chunks:
                            received.append(chunk)
            finally:
                await server.close()

    asyncio.run(main())
    text = b"".join(received).decode()
    assert '"status":"active"' in text
    assert ('"result":"cancelled"' in text) is streaming


def test_workers_refuse_the_assist_api_which_runs_in_one_process(tmp_path: Path) -> None:
    base = config_for(tmp_path)
    config = dataclasses.replace(base, assist=dataclasses.replace(base.assist, api_token=TOKEN))
    with pytest.raises(ConfigError, match=r"assist.api_token: .*process.workers = 1"):
        plan_workers(config, 2, tmp_path)
    assert len(plan_workers(config, 1, tmp_path)) == 1
    assert len(plan_workers(base, 2, tmp_path)) == 2
    assert _worker_count(None, config) == 1  # process.workers = 0: one process then
    with pytest.raises(ConfigError):
        _worker_count("2", config)


@pytest.fixture(autouse=True)
def _quiet_httpx(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="httpx")


STANDARD_RECORD_FIELDS = set(vars(logging.LogRecord("n", 0, "p", 0, "m", None, None))) | {
    "message",
    "asctime",
}


def log_text(record: logging.LogRecord) -> str:
    """What a log line can carry: the message, its extras and any exception text (not the
    record's own timing fields, whose digits mean nothing)."""
    extras = {k: v for k, v in vars(record).items() if k not in STANDARD_RECORD_FIELDS}
    return f"{record.getMessage()} {extras} {record.exc_text or ''}"
