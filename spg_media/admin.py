"""The admin HTTP endpoint (`[admin]` in the config): GET /metrics, /healthz and /calls.

`AdminApp` is a plain ASGI app: the three routes, GET only, every answer with
`Connection: close`. `AdminServer` serves it with uvicorn (h11) as a task of the node's own
event loop: it binds the socket itself (a port in use is an OSError for the caller, not
uvicorn's `sys.exit`), installs no signal handlers (the node owns SIGTERM and its drain), caps
connections (503 above `MAX_CONNECTIONS`) and request heads (`MAX_REQUEST_HEAD_BYTES`, else
400), and gives a client `REQUEST_DEADLINE_S` to send its request (then 408 and close: uvicorn
has no such deadline, and idle connections would otherwise fill the cap). It is meant for
loopback or a management network: it has no authentication.

/healthz asks `health`: a bool (200 "ok" / 503 "unavailable"), or a mapping (a node's admission
state) sent as JSON, 200 when its "status" is "ok" and 503 otherwise.

/calls returns what `calls_provider` gives (already masked by the call layer) passed once more
through the card-number masking of `observability`, so a mistake there still shows no PAN (a
call's identifiers, `IDENTIFIER_FIELDS`, are left as they are, as in the logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from spg_media.observability import (
    IDENTIFIER_FIELDS,
    LOG_MASKED_TOTAL,
    PROMETHEUS_CONTENT_TYPE,
    Metrics,
    mask_value,
)

log = logging.getLogger("spg.admin")

MAX_REQUEST_HEAD_BYTES = 8192  # request line plus headers
REQUEST_DEADLINE_S = 5.0  # for the client to send its request, and to read the answer
MAX_CONNECTIONS = 32

TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Response = tuple[int, bytes, str, list[tuple[str, str]]]
Health = Callable[[], bool | Mapping[str, Any]]
CallsProvider = Callable[[], list[dict[str, Any]]]


class AdminApp:
    """The admin routes as an ASGI app (no I/O of its own: testable with httpx's ASGI
    transport)."""

    def __init__(
        self,
        metrics: Metrics,
        calls_provider: CallsProvider,
        health: Health,
    ) -> None:
        self.metrics = metrics
        self.calls_provider = calls_provider
        self.health = health

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan or websocket here
        try:
            status, body, content_type, extra = self.route(scope["method"], scope["path"])
        except Exception:  # never let one request take the server down
            log.exception("admin request failed")
            status, body, content_type, extra = 500, b"internal error\n", TEXT_CONTENT_TYPE, []
        headers = [
            ("content-type", content_type),
            ("content-length", str(len(body))),
            ("connection", "close"),
            *extra,
        ]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def route(self, method: str, path: str) -> Response:
        """Status, body, content type and extra headers for a request."""
        if method != "GET":
            return 405, b"method not allowed\n", TEXT_CONTENT_TYPE, [("allow", "GET")]
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
            no_store = [("cache-control", "no-store")]
            return 200, (text + "\n").encode(), JSON_CONTENT_TYPE, no_store
        return 404, b"not found\n", TEXT_CONTENT_TYPE, []

    def _healthz(self) -> Response:
        try:
            state = self.health()
        except Exception:
            log.exception("health check failed")
            state = False
        if isinstance(state, Mapping):
            status = 200 if state.get("status") == "ok" else 503
            body = (json.dumps(dict(state), default=str) + "\n").encode()
            return status, body, JSON_CONTENT_TYPE, [("cache-control", "no-store")]
        if state:
            return 200, b"ok\n", TEXT_CONTENT_TYPE, []
        return 503, b"unavailable\n", TEXT_CONTENT_TYPE, []


_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n"
)


def _protocol_with_deadline(deadline_s: float, streaming: bool = False) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection `deadline_s` after it opened: with 408 when
    no whole request head came by then; an answer still unread is cut (every answer closes
    its connection, so a connection that lasts that long is stuck) unless `streaming` (an app
    whose answers may last, such as an event stream: then only the head has the deadline)."""

    class DeadlineH11Protocol(H11Protocol):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._deadline = self.loop.call_later(deadline_s, self._deadline_passed)

        def connection_lost(self, exc: Exception | None) -> None:
            self._deadline.cancel()
            super().connection_lost(exc)

        def _deadline_passed(self) -> None:
            if self.transport.is_closing() or (streaming and self.cycle is not None):
                return
            if self.cycle is None:
                self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

    return DeadlineH11Protocol


class _NodeServer(uvicorn.Server):  # type: ignore[misc]
    """uvicorn without its signal handlers: SIGTERM and SIGINT are the node's (drain first)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AsgiServer:
    """An ASGI app served by uvicorn as a task of the running event loop, on a TCP port or a
    Unix socket we bind ourselves, with the caps and deadline above (the node's admin endpoint,
    and the supervisor's of `serve --workers`)."""

    def __init__(
        self,
        app: Any,
        request_deadline_s: float = REQUEST_DEADLINE_S,
        *,
        streaming: bool = False,
        label: str = "admin endpoint",
    ) -> None:
        self.app = app
        self.request_deadline_s = request_deadline_s
        self.streaming = streaming  # answers may last (event streams): the deadline is the head's
        self.label = label  # what the log lines call it
        self._server: _NodeServer | None = None
        self._serving: asyncio.Task[None] | None = None
        self.host = ""
        self.port = 0  # the bound port once started (useful with port 0)

    async def start(self, host: str, port: int) -> None:
        listener = _bind(host, port)
        await self._serve(listener, f"{host}:{port}")
        sockname = listener.getsockname()
        self.host, self.port = str(sockname[0]), int(sockname[1])
        shown = f"[{self.host}]" if ":" in self.host else self.host
        log.info("%s on http://%s:%d", self.label, shown, self.port)

    async def start_unix(self, path: str) -> None:
        """Listen on a Unix socket only this user may open (a worker answering its
        supervisor)."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by a worker that died
            listener.bind(path)
            os.chmod(path, 0o600)
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        await self._serve(listener, path)
        self.host = f"unix:{path}"
        log.info("%s on %s", self.label, self.host)

    async def _serve(self, listener: socket.socket, where: str) -> None:
        config = uvicorn.Config(
            self.app,
            http=_protocol_with_deadline(self.request_deadline_s, self.streaming),
            ws="none",
            lifespan="off",
            log_config=None,  # the process's logging (JSON lines, card masking) as it is
            access_log=False,
            server_header=False,
            proxy_headers=False,
            limit_concurrency=MAX_CONNECTIONS,
            h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
            timeout_graceful_shutdown=math.ceil(self.request_deadline_s),
        )
        server = _NodeServer(config)
        serving = asyncio.get_running_loop().create_task(server.serve(sockets=[listener]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.005)
        if serving.done():
            listener.close()
            await serving  # its error, if it had one
            raise OSError(f"{self.label} on {where} did not start")
        self._server, self._serving = server, serving

    async def close(self) -> None:
        """Stop listening, close open connections (answers in progress get the deadline to
        finish), free the port."""
        server, serving = self._server, self._serving
        if server is None or serving is None:
            return
        self._server = self._serving = None
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(serving), self.request_deadline_s + 1)
        except TimeoutError:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving


class AdminServer(AsgiServer):
    """Serves the node's metrics, health and calls over HTTP (`AdminApp`)."""

    app: AdminApp

    def __init__(
        self,
        metrics: Metrics,
        calls_provider: CallsProvider,
        health: Health,
        request_deadline_s: float = REQUEST_DEADLINE_S,
    ) -> None:
        super().__init__(AdminApp(metrics, calls_provider, health), request_deadline_s)

    @property
    def health(self) -> Health:
        return self.app.health

    @health.setter
    def health(self, health: Health) -> None:
        self.app.health = health

    @property
    def calls_provider(self) -> CallsProvider:
        return self.app.calls_provider

    @calls_provider.setter
    def calls_provider(self, calls_provider: CallsProvider) -> None:
        self.app.calls_provider = calls_provider


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError:
        listener.close()
        raise
    return listener


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
