"""Card data in memory: `SecretDigits` never copies its digits out, and the authorisation
request is built in one buffer, sent without being joined to anything, and wiped.

The requests go over real loopback sockets: to a small h11 server here (to see the bytes on the
wire) and to the sandbox platform served by uvicorn (a whole authorisation through the http
connector, as a node in production makes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import h11
import httpx
import pytest
import uvicorn

from spg_media.payment import card_request
from spg_media.payment.connectors import HttpConnector
from spg_media.payment.model import (
    AuthorizationResult,
    CardData,
    ChargeState,
    Result,
    SecretDigits,
    TransactionInfo,
)
from spg_media.payment.sandbox import SandboxApp
from spg_media.payment.signing import sign, verify

VISA = "4111111111111111"
SECRET = "platform-secret"


def card(number: str = VISA, month: int = 12, year: int = 2030, cvc: str = "123") -> CardData:
    return CardData(SecretDigits(number), month, year, SecretDigits(cvc), "visa")


# ---- SecretDigits -------------------------------------------------------------------------------


def test_secret_digits_never_grow_their_buffer() -> None:
    """A growing bytearray moves to a bigger block and leaves the old one, digits and all, in
    freed memory: the buffer is allocated once at its full size."""
    digits = SecretDigits()
    allocated = digits._buf.__alloc__()
    for char in "4111111111111111999":
        digits.append(char)
        assert digits._buf.__alloc__() == allocated
    with pytest.raises(ValueError):
        for _ in range(SecretDigits.CAPACITY):
            digits.append("1")


def test_secret_digits_show_at_most_four_and_eight() -> None:
    digits = SecretDigits(VISA)
    assert (digits.last(4), digits.prefix(6), len(digits)) == ("1111", "411111", 16)
    assert VISA not in repr(digits) and VISA not in str(digits)
    with pytest.raises(ValueError):
        digits.last(5)
    with pytest.raises(ValueError):
        digits.prefix(9)
    assert not hasattr(digits, "reveal")  # no way to get the whole number as a str


def test_secret_digits_compare_copy_and_wipe() -> None:
    digits = SecretDigits(VISA)
    twin = digits.copy()
    assert digits.matches(VISA) and not digits.matches(VISA[:-1]) and twin == digits
    assert digits.occurs_in(f"ref-{VISA}-x") and not digits.occurs_in("4111")
    assert digits.values()[:2] == [4, 1] and digits.characters()[-1] == "1"
    digits.wipe()
    assert len(digits) == 0 and digits._buf == bytearray(SecretDigits.CAPACITY)
    assert twin.matches(VISA)  # the copy is its own
    with pytest.raises(ValueError):
        SecretDigits("12a4")
    with pytest.raises(TypeError):
        pickle.dumps(twin)


# ---- the body -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("the_card", "attempt"),
    [
        (card(), 1),
        (card("378282246310005", 1, 2029, "7890"), 12),
        (card("6011000990139424", 10, 2041, "000"), 3),
    ],
)
def test_the_body_is_the_protocols_json_in_a_buffer_of_exactly_its_size(
    the_card: CardData, attempt: int
) -> None:
    body = card_request.build_body(the_card, attempt)
    expected = {
        "card": {
            "number": "".join(the_card.pan.characters()),
            "exp_month": the_card.exp_month,
            "exp_year": the_card.exp_year,
            "cvc": "".join(the_card.cvc.characters()),
        },
        "attempt": attempt,
    }
    assert json.loads(body) == expected
    assert body.__alloc__() == len(body) + 1  # allocated once, never grown
    card_request.wipe(body)
    assert body == bytearray(len(body))


def test_the_body_refuses_values_out_of_range() -> None:
    for bad in (card(month=0), card(month=13), card(year=30)):
        with pytest.raises(ValueError):
            card_request.build_body(bad, 1)


def test_signing_a_buffer_is_signing_its_bytes() -> None:
    body = card_request.build_body(card(), 1)
    assert sign(SECRET, body, 1_700_000_000) == sign(SECRET, bytes(body), 1_700_000_000)
    assert verify(SECRET, sign(SECRET, body, 1_700_000_000), bytes(body), 1_700_000_000)


# ---- on the wire --------------------------------------------------------------------------------


class WirePlatform:
    """An HTTP/1.1 server on 127.0.0.1 that records what it got and answers `answer`."""

    def __init__(self, status: int = 200, answer: bytes = b'{"result":"approved"}') -> None:
        self.status = status
        self.answer = answer
        self.raw = bytearray()
        self.requests: list[tuple[h11.Request, bytes]] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                self.raw += data
                connection.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert request is not None
        self.requests.append((request, bytes(body)))
        response = h11.Response(
            status_code=self.status,
            headers=[
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(self.answer))),
            ],
        )
        writer.write(connection.send(response) or b"")
        writer.write(connection.send(h11.Data(data=self.answer)) or b"")
        writer.write(connection.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        writer.close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield f"http://127.0.0.1:{self.port}"


def test_post_sends_the_buffer_once_framed_by_content_length() -> None:
    platform = WirePlatform()
    body = card_request.build_body(card(), 1)
    expected = bytes(body)

    async def main() -> tuple[int, bytes | None]:
        async with platform.serving() as url:
            return await card_request.post(
                f"{url}/v1/transactions/t1/authorize?x=1",
                [("Idempotency-Key", "k1"), ("Content-Type", "application/json")],
                body,
                ssl_context=None,
                max_answer_bytes=1024,
            )

    assert asyncio.run(main()) == (200, b'{"result":"approved"}')
    request, received = platform.requests[0]
    headers = {name.decode(): value.decode() for name, value in request.headers}
    assert (request.method, request.target) == (b"POST", b"/v1/transactions/t1/authorize?x=1")
    assert headers["content-length"] == str(len(expected)) and received == expected
    assert headers["idempotency-key"] == "k1" and headers["connection"] == "close"
    assert "transfer-encoding" not in headers
    assert platform.raw.count(expected) == 1


def test_post_hands_the_buffer_itself_to_the_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """h11 passes the body's memoryview through instead of joining it to a new bytes."""
    passed: list[Any] = []
    real = h11.Connection.send_with_data_passthrough

    def spy(self: h11.Connection, event: h11.Data) -> Any:
        chunks = real(self, event)
        for chunk in chunks or []:
            passed.append(chunk.obj if isinstance(chunk, memoryview) else chunk)
        return chunks

    monkeypatch.setattr(h11.Connection, "send_with_data_passthrough", spy)
    platform = WirePlatform()
    body = card_request.build_body(card(), 1)

    async def main() -> None:
        async with platform.serving() as url:
            await card_request.post(url, [], body, ssl_context=None, max_answer_bytes=1024)

    expected = bytes(body)
    asyncio.run(main())
    # (the server's own h11 sends go through the spy too: they are bytes)
    assert [chunk for chunk in passed if chunk is body] == [body]
    assert not any(expected in chunk for chunk in passed if chunk is not body)


def test_post_cuts_an_answer_too_large_and_fails_on_a_silent_close() -> None:
    async def main() -> None:
        platform = WirePlatform(answer=b"x" * 5000)
        async with platform.serving() as url:
            body = card_request.build_body(card(), 1)
            assert await card_request.post(
                url, [], body, ssl_context=None, max_answer_bytes=100
            ) == (
                200,
                None,
            )

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(10)
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            with pytest.raises(h11.RemoteProtocolError):
                await card_request.post(
                    f"http://127.0.0.1:{port}", [], body, ssl_context=None, max_answer_bytes=100
                )

    asyncio.run(main())


# ---- through the http connector -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def sandbox_over_http() -> AsyncIterator[tuple[str, SandboxApp]]:
    app = SandboxApp(secret=SECRET)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def built_bodies(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytearray]]:
    bodies: list[bytearray] = []
    real = card_request.build_body

    def keep(the_card: CardData, attempt: int) -> bytearray:
        bodies.append(real(the_card, attempt))
        return bodies[-1]

    monkeypatch.setattr(card_request, "build_body", keep)
    yield bodies


def test_a_whole_authorisation_over_a_socket_without_httpx(
    monkeypatch: pytest.MonkeyPatch, built_bodies: list[bytearray]
) -> None:
    async def no_httpx(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the card went through httpx")

    async def main() -> Result:
        async with sandbox_over_http() as (url, _app):
            connector = HttpConnector(url, SECRET, 5)
            try:
                info = await connector.lookup("sbx-4990-EUR-direct")
                assert info is not None
                monkeypatch.setattr(httpx.AsyncClient, "send", no_httpx)
                result = await connector.authorize(info, card(), 1, "key-1")
                return result.result
            finally:
                await connector.aclose()

    assert asyncio.run(main()) is Result.APPROVED
    assert len(built_bodies) == 1 and built_bodies[0] == bytearray(len(built_bodies[0]))


@pytest.mark.parametrize("direct", [True, False])
def test_the_body_is_wiped_when_the_request_fails(
    direct: bool, built_bodies: list[bytearray]
) -> None:
    tx = TransactionInfo("sbx-1-EUR", "sale", 1, "EUR", "o", "m")  # type: ignore[arg-type]

    async def main() -> AuthorizationResult:
        if direct:  # nobody listens there
            connector = HttpConnector(f"http://127.0.0.1:{_free_port()}", SECRET, 5)
        else:

            def broken(request: httpx.Request) -> httpx.Response:
                raise httpx.ConnectError("refused")

            connector = HttpConnector(
                "http://platform.test", SECRET, 5, transport=httpx.MockTransport(broken)
            )
        try:
            return await connector.authorize(tx, card(), 1, "key-1")
        finally:
            await connector.aclose()

    outcome = asyncio.run(main())
    # no connection, no request: known not charged at once, without reconciliation
    assert outcome.result is Result.ERROR and outcome.charge_state is ChargeState.NOT_CHARGED
    assert len(built_bodies) == 1 and built_bodies[0] == bytearray(len(built_bodies[0]))


# ---- what a serving node loads ----------------------------------------------------------------


def test_a_node_on_the_http_connector_never_loads_the_sandboxs_card_numbers() -> None:
    """The sandbox module holds test card numbers as constants: a node that serves with the
    http connector must not import it, or a scan of its memory finds complete card numbers."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from spg_media import cli, server\n"
        "from spg_media.payment.connectors import make_connector\n"
        "make_connector('http', 'https://platform.example', 's', 5)\n"
        "cli._build_parser().parse_args(['demo'])\n"
        "print('spg_media.payment.sandbox' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
