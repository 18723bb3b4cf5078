"""Targets for the HTTP and signature side: the handoff signature, the platform's JSON answers
to the connector, the admin endpoint's request head, and the sandbox platform's ASGI app."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from collections.abc import Coroutine, MutableMapping
from typing import Any

import h11

from fuzz.harness import LOGS, Finding, Reader, expect, target
from spg_media import admin
from spg_media.observability import Metrics
from spg_media.payment.connectors import (
    MAX_FIELD_CHARS,
    InvalidAnswer,
    _authorization_result,
    _echoing_card,
    _transaction_info,
)
from spg_media.payment.model import CardData, Operation, Result, SecretDigits
from spg_media.payment.sandbox import SandboxApp
from spg_media.payment.signing import (
    parse_signature,
    sign,
    sign_handoff,
    verify,
    verify_handoff,
)

# ---- the handoff signature ----------------------------------------------------------------------

_SECRET = "fuzz-secret"
_NOW = 1_700_000_000


@target("handoff_signature", dictionary="signature.dict")
def handoff_signature(data: bytes) -> None:
    """`X-SPG-Signature` of a transferred INVITE: NUL-separated header, Call-ID, transaction,
    return-to and callback. `parse_signature` gives None or (t, lowercase hex digests);
    `verify_handoff` and `verify` answer a bool and never raise; a signature made for these
    values verifies, with any other secret or an empty one it does not."""
    fields = [part.decode("utf-8", errors="replace") for part in data.split(b"\0")]
    header, call_id, transaction, return_to, callback = (fields + [""] * 5)[:5]
    parsed = parse_signature(header)
    now = float(_NOW)
    if parsed is not None:
        t, digests = parsed
        expect(t >= 0 and bool(digests), "a parsed signature without t or v1")
        expect(all(re.fullmatch("[0-9a-f]{64}", d) for d in digests), "a digest not hex")
        now = float(t)
    values = (call_id, transaction or None, return_to or None, callback or None)
    result = verify_handoff(_SECRET, header, *values, now)
    expect(isinstance(result, bool), "verify_handoff answered a non-bool")
    expect(isinstance(verify(_SECRET, header, data, now), bool), "verify answered a non-bool")
    t = int(now)
    genuine = sign_handoff(_SECRET, t, *values)
    expect(verify_handoff(_SECRET, genuine, *values, now), "a genuine signature refused")
    expect(not verify_handoff("other", genuine, *values, now), "a wrong secret verified")
    expect(not verify_handoff("", genuine, *values, now), "an empty secret verified")
    expect(verify(_SECRET, sign(_SECRET, data, t), data, now), "a genuine body signature refused")


# ---- the platform's answers ---------------------------------------------------------------------

_TOKEN = "sbx-4990-EUR-1"
_CARD = CardData(SecretDigits("4242424242424242"), 12, 2030, SecretDigits("123"), "visa")
_SHORT_TEXT = re.compile(r"[A-Za-z_ ]{1,60}")


def _check_invalid(exc: InvalidAnswer) -> None:
    # "the message names the field only": never a piece of the answer
    expect(bool(_SHORT_TEXT.fullmatch(str(exc))), f"InvalidAnswer text {str(exc)[:80]!r}")


def _check_text(value: str | None, required: bool = False) -> None:
    if value is None or (value == "" and not required):
        return
    expect(isinstance(value, str) and len(value) <= MAX_FIELD_CHARS, "a long field accepted")
    expect(value.isprintable(), "a field with control characters accepted")


@target("connector_json", max_len=8192, dictionary="json.dict")
def connector_json(data: bytes) -> None:
    """The platform's JSON answers as the `http` connector reads them: `_authorization_result`
    (an authorisation) and `_transaction_info` (a lookup of token sbx-4990-EUR-1) raise
    InvalidAnswer only, naming a field and never quoting the answer; what they accept is within
    the protocol (result, amounts, currency, status, short printable texts)."""
    try:
        result = _authorization_result(data)
    except InvalidAnswer as exc:
        _check_invalid(exc)
    else:
        expect(result.result in (Result.APPROVED, Result.DECLINED), "result not approved/declined")
        for value in (result.reference, result.authorization_code, result.card_token):
            _check_text(value)
        _check_text(result.decline_code)
        _echoing_card(result, _CARD)
    try:
        info = _transaction_info(_TOKEN, data)
    except InvalidAnswer as exc:
        _check_invalid(exc)
    else:
        expect(info.token == _TOKEN, "another token accepted")
        expect(type(info.amount_minor) is int and info.amount_minor >= 0, "bad amount")
        expect(info.operation is Operation.TOKENIZE or info.amount_minor > 0, "a sale of 0")
        expect(bool(re.fullmatch("[A-Z]{3}", info.currency)), "bad currency")
        for value in (info.order, info.merchant):
            _check_text(value, required=True)
        _check_text(info.language)
        _check_text(info.return_uri)


# ---- the admin endpoint -------------------------------------------------------------------------

_PAN = "4242424242424242"


def _drive(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits (its input is all there) without an event loop."""
    try:
        while True:
            yielded = coroutine.send(None)
            if yielded is not None:  # a future: it would wait for I/O or a timer
                coroutine.close()
                raise Finding("the code under test waited for something that will not come")
    except StopIteration as stop:
        return stop.value


class _AdminNode:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.metrics.counter("spg_calls_total", "Calls.", ("result",)).inc(result="approved")

    @staticmethod
    def calls() -> list[dict[str, Any]]:
        # a mistake upstream (a PAN in a call's fields) must still be masked in /calls
        return [{"call_id": "a@b", "phase": "journey", "note": f"card {_PAN}", "n": int(_PAN)}]


_ADMIN = admin.AdminApp(_AdminNode().metrics, _AdminNode.calls, lambda: True)
_ADMIN_STATUSES = (200, 404, 405, 500, 503)


@target("admin_head", max_len=10240, dictionary="http.dict")
def admin_head(data: bytes) -> None:
    """The admin endpoint's request head as uvicorn reads it (h11, the head bounded by
    `MAX_REQUEST_HEAD_BYTES`) from a stream holding the input then EOF: a request, h11's
    RemoteProtocolError (uvicorn's 400), or nothing yet (closed without an answer); a request
    becomes the ASGI scope uvicorn builds, and the app answers one response of the endpoint's
    statuses, with a Content-Length that fits its body, and /calls never shows a card number."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=admin.MAX_REQUEST_HEAD_BYTES)
    connection.receive_data(data)
    connection.receive_data(b"")
    try:
        event = connection.next_event()
    except h11.RemoteProtocolError:
        return  # uvicorn answers 400
    if not isinstance(event, h11.Request):
        expect(
            event in (h11.NEED_DATA, h11.PAUSED) or isinstance(event, h11.ConnectionClosed),
            f"h11 gave {event!r} before a request",
        )
        return
    raw_path, _, query = event.target.partition(b"?")
    scope = {
        "type": "http",
        "method": event.method.decode("ascii"),
        "path": urllib.parse.unquote(raw_path.decode("ascii")),
        "query_string": query,
        "headers": [(name.lower(), value) for name, value in event.headers],
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    _drive(_ADMIN(scope, receive, send))
    expect(
        [m["type"] for m in sent] == ["http.response.start", "http.response.body"],
        "not one response",
    )
    status, body = sent[0]["status"], sent[1]["body"]
    expect(status in _ADMIN_STATUSES, f"status {status} not one of the endpoint's")
    headers = dict(sent[0]["headers"])
    expect(int(headers[b"content-length"]) == len(body), "Content-Length does not fit the body")
    expect(headers[b"connection"] == b"close", "an answer that keeps the connection")
    expect(_PAN.encode() not in body, "a card number in an admin answer")


# ---- the sandbox platform -----------------------------------------------------------------------

_SANDBOX_SECRET = "sandbox-secret"
_SANDBOX_LOOP = asyncio.new_event_loop()
_STATUSES = frozenset((200, 201, 400, 401, 404, 405, 409, 413))
_PAN_RE = re.compile(r"[0-9]{12,19}")


def _request_card_numbers(body: bytes) -> list[str]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return []
    card = data.get("card") if isinstance(data, dict) else None
    number = card.get("number") if isinstance(card, dict) else None
    return [number] if isinstance(number, str) and _PAN_RE.fullmatch(number) else []


def _sandbox_request(app: SandboxApp, fields: list[bytes], signed: bool) -> None:
    method, raw_path, header_block, body = (fields + [b""] * 4)[:4]
    headers = []
    for line in header_block.split(b"\n")[:16]:
        name, colon, value = line.partition(b":")
        if colon:
            headers.append((name.strip().lower(), value.strip()))
    if signed:
        headers.append((b"x-spg-signature", sign(_SANDBOX_SECRET, body, _NOW).encode()))
    path = raw_path.decode("latin-1")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method.decode("latin-1"),
        "scheme": "http",
        "path": path,
        "raw_path": raw_path or None,
        "query_string": b"",
        "headers": headers,
    }
    pieces = [body[i : i + 1024] for i in range(0, len(body), 1024)] or [b""]
    received = iter(pieces)
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        piece = next(received, None)
        if piece is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": piece, "more_body": piece is not pieces[-1]}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    logged_before = len(LOGS.messages)
    # In an event loop: the app serialises one token's authorisations with a lock and carries an
    # accepted request through in a task of its own.
    _SANDBOX_LOOP.run_until_complete(asyncio.wait_for(app(scope, receive, send), 5.0))
    expect(len(sent) == 2, f"{len(sent)} ASGI messages for one request")
    start, answer = sent
    expect(start["type"] == "http.response.start", "no response start")
    status = start["status"]
    answer_body = answer["body"]
    if status == 500:  # only the test card that simulates a platform failure may get one
        expect(b"simulated platform failure" in answer_body, "500: the sandbox failed")
    else:
        expect(status in _STATUSES, f"undocumented status {status}")
    json.loads(answer_body)
    # The card read from the body: never in an answer or a log line. (A client that writes the
    # number in the path or a header has put it there itself: the access log shows the path.)
    elsewhere = method + raw_path + header_block
    for number in _request_card_numbers(body):
        if number.encode() in elsewhere:
            continue
        expect(number.encode() not in answer_body, "a card number in a sandbox answer")
        for message in LOGS.messages[logged_before:]:
            expect(number not in message, "a card number in a sandbox log line")


@target("sandbox", max_len=8192, dictionary="http.dict")
def sandbox(data: bytes) -> None:
    """The sandbox platform's ASGI app driven in-process (one event loop; the slow card waits 0 s)
    by up to 4 requests separated by 0x1e, each of method, raw path, header lines and body
    separated by 0x1f; the first byte says whether the app has a secret and the requests are
    signed. Each request gets one response with a documented status (500 only for the failing
    test card) and a JSON body; no card number is in an answer or a log line."""
    reader = Reader(data)
    flags = reader.byte()
    app = SandboxApp(
        secret=_SANDBOX_SECRET if flags & 1 else "", slow_delay_s=0.0, clock=lambda: float(_NOW)
    )
    for request in reader.rest().split(b"\x1e")[:4]:
        _sandbox_request(app, request.split(b"\x1f"), signed=bool(flags & 2))
