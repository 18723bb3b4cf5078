"""The authorisation request: the one place card digits leave the card type, and the process.

This module owns the bytes of a card payment on their way out. `build_body` writes the JSON
body `{"card":{"number":..,"exp_month":..,"exp_year":..,"cvc":..},"attempt":..}` straight from
the `SecretDigits` buffers into ONE bytearray of exactly its size: no `str`, no `bytes`, no
intermediate JSON text holds a digit, and the buffer never grows (a grown buffer leaves its old
copy in freed memory). `post` sends it over a connection of its own, framed by h11 without the
body ever being joined to the head (h11's `send_with_data_passthrough` hands the buffer's
memoryview to the socket as it is), reads the answer, and closes the connection; the caller
wipes the buffer (`wipe`) whatever happened.

What is left that Python code cannot clear: the TLS library encrypts the plaintext in its own
record buffer (OpenSSL overwrites it with the ciphertext in place), and the kernel's socket
buffers. Everything else a request needs (URL, headers, the signature) holds no card data.

httpx is not used for this request: every path through httpx, httpcore and h11's `send()`
joins the head and the body into a new immutable `bytes`, which outlives the request in freed
memory (a scan of a node's memory after 1000 payments found tens of complete request bodies).
httpx still carries the lookups, and the in-process sandbox's and tests' transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from urllib.parse import urlsplit

import h11

from spg_media.payment.model import CardData

_HEAD_NUMBER = b'{"card":{"number":"'
_HEAD_MONTH = b'","exp_month":'
_HEAD_YEAR = b',"exp_year":'
_HEAD_CVC = b',"cvc":"'
_HEAD_ATTEMPT = b'"},"attempt":'
_TAIL = b"}"


class NotSent(ConnectionError):
    """No connection to the platform could be made (refused, unreachable, TLS handshake
    failed): the request never left, so nothing can have been charged."""


def _int_digits(value: int) -> int:
    return len(str(value))


def build_body(card: CardData, attempt: int) -> bytearray:
    """The authorisation body, written into one bytearray of exactly its length."""
    if not 1 <= card.exp_month <= 12 or not 1000 <= card.exp_year <= 9999 or attempt < 1:
        raise ValueError("expiry month, four-digit year and attempt must be in range")
    month_digits = 2 if card.exp_month >= 10 else 1
    size = (
        len(_HEAD_NUMBER) + len(card.pan) + len(_HEAD_MONTH) + month_digits + len(_HEAD_YEAR) + 4
        + len(_HEAD_CVC) + len(card.cvc) + len(_HEAD_ATTEMPT) + _int_digits(attempt) + len(_TAIL)
    )  # fmt: skip
    body = bytearray(size)
    at = _put(body, 0, _HEAD_NUMBER)
    at = card.pan.write_into(body, at)
    at = _put(body, at, _HEAD_MONTH)
    at = _put_int(body, at, card.exp_month, month_digits)
    at = _put(body, at, _HEAD_YEAR)
    at = _put_int(body, at, card.exp_year, 4)
    at = _put(body, at, _HEAD_CVC)
    at = card.cvc.write_into(body, at)
    at = _put(body, at, _HEAD_ATTEMPT)
    at = _put(body, at, str(attempt).encode("ascii"))  # not card data
    at = _put(body, at, _TAIL)
    assert at == size
    return body


def _put(target: bytearray, at: int, data: bytes) -> int:
    target[at : at + len(data)] = data
    return at + len(data)


def _put_int(target: bytearray, at: int, value: int, digits: int) -> int:
    """`value` in decimal, written digit by digit: no string of the expiry is made."""
    for position in range(digits - 1, -1, -1):
        target[at + position] = 48 + value % 10
        value //= 10
    return at + digits


def wipe(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))


async def post(
    url: str,
    headers: Sequence[tuple[str, str]],
    body: bytearray,
    *,
    ssl_context: ssl.SSLContext | None,
    max_answer_bytes: int,
) -> tuple[int, bytes | None]:
    """POST `body` to `url` on a new connection (TLS verified for https): (status, answer body,
    or None when it is longer than `max_answer_bytes`). Raises OSError/ssl.SSLError on network
    failures after the connection was made, NotSent when it could not be made, and
    h11.ProtocolError on a broken answer; the caller bounds the time taken."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if secure and ssl_context is None:
        raise ValueError("an https URL needs an SSL context")
    try:
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=ssl_context if secure else None,
            server_hostname=host if secure else None,
        )
    except (OSError, ssl.SSLError) as exc:
        raise NotSent(type(exc).__name__) from exc
    try:
        connection = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="POST",
            target=target,
            headers=[
                ("Host", parts.netloc.rpartition("@")[2]),
                *headers,
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ],
        )
        writer.write(connection.send(request) or b"")
        with memoryview(body) as view:
            data = h11.Data(data=view)  # type: ignore[arg-type]  # h11 passes any buffer through
            for chunk in connection.send_with_data_passthrough(data) or []:
                writer.write(chunk)
            writer.write(connection.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        return await _answer(connection, reader, max_answer_bytes)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _answer(
    connection: h11.Connection, reader: asyncio.StreamReader, max_answer_bytes: int
) -> tuple[int, bytes | None]:
    status: int | None = None
    content = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            content += event.data
            if len(content) > max_answer_bytes and status is not None:
                return status, None
        elif isinstance(event, h11.EndOfMessage) and status is not None:
            return status, bytes(content)
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionResetError("the platform closed the connection without an answer")
        # InformationalResponse (100 Continue and the like): wait for the final one
