"""The admin HTTP endpoint (`[admin]` in the config): GET /metrics, /healthz and /calls.

A deliberately small HTTP/1.x server on raw asyncio streams: one request per connection
(`Connection: close`), GET only, no request bodies, a bounded request head, a deadline for the
client to send it, and a bounded number of connections at once. Whatever arrives, the answer is
a status line (400, 404, 405, 408, 431, 500, 503) or a closed connection, never an exception in
the loop. It is meant for loopback or a management network: it has no authentication.

/healthz asks `health`: a bool (200 "ok" / 503 "unavailable"), or a mapping — the node's
admission state — sent as JSON, 200 when its "status" is "ok" and 503 otherwise.

/calls returns what `calls_provider` gives (already masked by the call layer) passed once more
through the card-number masking of `observability`, so a mistake there still shows no PAN (a
call's identifiers, `IDENTIFIER_FIELDS`, are left as they are, as in the logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from spg_media.observability import IDENTIFIER_FIELDS, LOG_MASKED_TOTAL, Metrics, mask_value

log = logging.getLogger("spg.admin")

MAX_REQUEST_HEAD_BYTES = 8192  # request line plus headers
MAX_HEADER_LINES = 64
REQUEST_DEADLINE_S = 5.0  # for the client to send its whole request head
MAX_CONNECTIONS = 32
LINGER_S = 1.0  # after answering, read what the client still sends so closing does not reset
LINGER_BYTES = 65536

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class AdminServer:
    """Serves the node's metrics, health and calls over HTTP."""

    def __init__(
        self,
        metrics: Metrics,
        calls_provider: Callable[[], list[dict[str, Any]]],
        health: Callable[[], bool | Mapping[str, Any]],
        request_deadline_s: float = REQUEST_DEADLINE_S,
    ) -> None:
        self.metrics = metrics
        self.calls_provider = calls_provider
        self.health = health
        self.request_deadline_s = request_deadline_s
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self.host = ""
        self.port = 0  # the bound port once started (useful with port 0)

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, host, port, limit=MAX_REQUEST_HEAD_BYTES
        )
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = str(sockname[0]), int(sockname[1])
        shown = f"[{self.host}]" if ":" in self.host else self.host
        log.info("admin endpoint on http://%s:%d", shown, self.port)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Abort rather than cancel the handlers: their reads end, they finish on their own (a
        # cancelled stream handler makes Python 3.11 log a spurious error).
        for writer in list(self._connections.values()):
            writer.transport.abort()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=self.request_deadline_s)
        await self._server.wait_closed()
        self._server = None

    # ---- one connection ------------------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            if len(self._connections) > MAX_CONNECTIONS:
                await self._respond(writer, 503, b"busy\n", TEXT_CONTENT_TYPE)
                return
            try:
                async with asyncio.timeout(self.request_deadline_s):
                    method, path = await _read_request_head(reader)
            except _BadRequest as exc:
                await self._respond(writer, exc.status, f"{_REASONS[exc.status]}\n".encode())
                return
            except TimeoutError:
                await self._respond(writer, 408, b"request timeout\n")
                return
            except (ConnectionError, asyncio.IncompleteReadError):
                return  # the client went away before finishing its request
            status, body, content_type, extra = self._route(method, path)
            await self._respond(writer, status, body, content_type, extra)
        except Exception:  # never let one connection take the server down
            log.exception("admin connection failed")
        finally:
            await _linger(reader, writer)
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        if method != "GET":
            return 405, b"method not allowed\n", TEXT_CONTENT_TYPE, [("Allow", "GET")]
        if path == "/metrics":
            return 200, self.metrics.render_prometheus().encode(), PROMETHEUS_CONTENT_TYPE, []
        if path == "/healthz":
            return self._healthz()
        if path == "/calls":
            try:
                text, count = _calls_json(list(self.calls_provider()))
            except Exception:
                log.exception("calls listing failed")
                return 500, b"internal error\n", TEXT_CONTENT_TYPE, []
            if count:
                LOG_MASKED_TOTAL.inc()
                log.warning("card-number-like digits masked in /calls output")
            no_store = [("Cache-Control", "no-store")]
            return 200, (text + "\n").encode(), JSON_CONTENT_TYPE, no_store
        return 404, b"not found\n", TEXT_CONTENT_TYPE, []

    def _healthz(self) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        """200 when `health()` says so, else 503. A mapping from it (the node's admission
        state) is the JSON body, healthy when its "status" is "ok"; a bool gives ok/unavailable."""
        try:
            state = self.health()
        except Exception:
            log.exception("health check failed")
            state = False
        if isinstance(state, Mapping):
            status = 200 if state.get("status") == "ok" else 503
            body = (json.dumps(dict(state), default=str) + "\n").encode()
            return status, body, JSON_CONTENT_TYPE, [("Cache-Control", "no-store")]
        if state:
            return 200, b"ok\n", TEXT_CONTENT_TYPE, []
        return 503, b"unavailable\n", TEXT_CONTENT_TYPE, []

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str = TEXT_CONTENT_TYPE,
        extra_headers: list[tuple[str, str]] | None = None,
    ) -> None:
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *(extra_headers or []),
        ]
        head = f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
        try:
            writer.write(head.encode("ascii") + body)
            async with asyncio.timeout(self.request_deadline_s):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the client is gone or not reading: nothing more to do


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then discard unread input for a moment: closing a socket with unread data
    sends a reset, which can destroy our response before the client has read it."""
    if writer.transport.is_closing():
        return
    try:
        if writer.can_write_eof():
            writer.write_eof()
        discarded = 0
        async with asyncio.timeout(LINGER_S):
            while discarded < LINGER_BYTES:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                discarded += len(chunk)
    except (OSError, TimeoutError, RuntimeError, ValueError):
        pass  # reset, slow or gone: close anyway


async def _read_request_head(reader: asyncio.StreamReader) -> tuple[str, str]:
    """The method and path of a request; headers are read (to stay bounded) and ignored."""
    total = 0
    lines: list[bytes] = []
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(431) from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and not lines:
                raise  # connected and closed without a byte
            raise _BadRequest(400) from None
        total += len(line)
        if total > MAX_REQUEST_HEAD_BYTES or len(lines) > MAX_HEADER_LINES:
            raise _BadRequest(431)
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue  # RFC 9112 §2.2: ignore empty lines before the request line
            break
        lines.append(line)
    parts = lines[0].decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400)
    method, target, _ = parts
    if not method.isascii() or not method.isalpha() or not target.startswith("/"):
        raise _BadRequest(400)
    path = target.split("?", 1)[0].split("#", 1)[0]
    return method, path


def _calls_json(calls: list[Any]) -> tuple[str, int]:
    """The /calls body, masked, and how many digit runs were masked. A call's identifiers
    (`IDENTIFIER_FIELDS`: from signalling, never built from keyed digits) are left as they are,
    as in the logs; everything else is masked as a structure, then as text (`default=str` may
    have printed an object)."""
    entries: list[str] = []
    total = 0
    for call in calls:
        kept = (
            {k: call[k] for k in IDENTIFIER_FIELDS if k in call} if isinstance(call, dict) else {}
        )
        rest = {k: v for k, v in call.items() if k not in kept} if kept else call
        masked, count = mask_value(rest)
        text, late = mask_value(json.dumps(masked, default=str, ensure_ascii=False))
        total += count + late
        if kept:  # the identifiers first, then the masked rest of the object
            head = json.dumps(kept, default=str, ensure_ascii=False)[:-1]
            text = head + ("}" if text == "{}" else ", " + text[1:])
        entries.append(text)
    return "[" + ", ".join(entries) + "]", total
