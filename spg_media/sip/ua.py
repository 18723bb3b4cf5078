"""The SIP user agent's asyncio shell: transports (UDP, TCP, TLS) around the sans-IO core.

Bytes from a socket are parsed (`message.parse_message`), checked (trusted sources, RFC 3581
rport), and fed to the `TransactionLayer`; what it asks to send goes out on the right socket or
stream; its events are routed to the call that owns the dialog (by Call-ID) or, for a new INVITE,
to the `InviteHandler`. Out-of-dialog OPTIONS (Kamailio's keepalive pings) are answered here.
Malformed requests get a 400 with a Warning whenever enough of them can be read to answer; the
loop never sees the exception.

`request()` is the one awaitable: it starts a client transaction and resolves with the final
response, or a synthetic 408 when the transaction times out or the transport fails.

TCP/TLS: responses go back on the connection the request came on, and a request to an address
we already have a connection with (the `source` of a call's INVITE) reuses it; a new connection
is opened only when there is none (RFC 3261 §18, RFC 5923-style reuse). `contact()` gives
`sip:...;transport=tls` over TLS, and `sips:` only for a dialog whose INVITE was `sips:`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, cast

from spg_media.observability import SIP_MESSAGES_TOTAL, SIP_PARSE_ERRORS_TOTAL
from spg_media.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    StreamFramer,
    make_response,
    parse_message,
    partial_request_info,
)
from spg_media.sip.transaction import (
    AckReceived,
    AckTimeout,
    Address,
    CancelReceived,
    ClientTimeout,
    RequestReceived,
    ResponseReceived,
    TransactionLayer,
)
from spg_media.sip.uri import SipUri

log = logging.getLogger("spg.sip")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY, UPDATE"
# SIP extensions (option tags) we implement; a request that Requires another gets 420.
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset({"timer"})  # RFC 4028, sip/session_timer.py
SERVER = "spg-media"


@dataclass(frozen=True)
class Listen:
    transport: str  # udp | tcp | tls
    host: str
    port: int


class DialogHandler(Protocol):
    """What a call must offer to receive the requests of its dialog."""

    def on_request(self, request: SipRequest, source: Address) -> None: ...
    def on_ack(self, ack: SipRequest) -> None: ...
    def on_cancel(self, invite: SipRequest) -> None: ...
    def on_ack_timeout(self) -> None: ...


class InviteHandler(Protocol):
    def on_invite(self, invite: SipRequest, source: Address) -> None: ...


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, ua: SipUserAgent, listen: Listen) -> None:
        self.ua = ua
        self.listen = listen
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython 3.11's selector transport does not subclass DatagramTransport: cast, not assert.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:  # type: ignore[override]
        self.ua.on_bytes(data, Address("udp", str(addr[0]), int(cast(int, addr[1]))))

    def error_received(self, exc: Exception) -> None:
        log.debug("sip udp error: %s", exc)


class _Stream:
    """One TCP or TLS connection, in or out; messages framed by Content-Length."""

    def __init__(
        self,
        ua: SipUserAgent,
        address: Address,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.ua = ua
        self.address = address
        self.reader = reader
        self.writer = writer
        self.framer = StreamFramer()

    async def run(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                try:
                    messages = self.framer.feed(data)
                except SipParseError as exc:
                    log.info("closing %s: %s", self.address, exc.reason)
                    break
                for message in messages:
                    self.ua.on_bytes(message, self.address)
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.debug("stream %s ended: %s", self.address, exc)
        finally:
            self.ua.streams.pop(self.address, None)
            self.writer.close()

    def send(self, data: bytes) -> None:
        self.writer.write(data)


class SipUserAgent:
    """Transports + transaction layer + routing of requests to calls."""

    def __init__(
        self,
        listen: Iterable[Listen],
        public_host: str,
        trusted_sources: Iterable[str] = ("127.0.0.0/8",),
        ssl_context: ssl.SSLContext | None = None,
        client_ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.listen = list(listen)
        self.public_host = public_host
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_sources]
        self.ssl_context = ssl_context  # our TLS listeners' certificate
        # For TLS connections we open: by default the system's CAs and the peer's name or
        # address checked (a card-data path never trusts an unverified peer); `sip.tls_ca`
        # gives a context that trusts a private CA instead (SipConfig.client_tls).
        self.client_ssl_context = client_ssl_context
        self.transactions = TransactionLayer()
        self.dialogs: dict[str, DialogHandler] = {}
        self.invite_handler: InviteHandler | None = None
        self.streams: dict[Address, _Stream] = {}
        self.udp: dict[str, _Udp] = {}
        self.servers: list[asyncio.Server] = []
        self.parse_errors = 0
        self._pending: dict[tuple[str, str], asyncio.Future[SipResponse]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # The loop is the one `start()` (or the first use) runs in: asking for it here would
        # fail, or make a stray loop, when the UA is built outside a running loop.
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for spec in self.listen:
            if spec.transport == "udp":
                _, protocol = await self.loop.create_datagram_endpoint(
                    functools.partial(_Udp, self, spec), local_addr=(spec.host, spec.port)
                )
                self.udp[spec.host] = protocol
                self.udp.setdefault("*", protocol)
            else:
                server = await asyncio.start_server(
                    self._accept_stream(spec.transport),
                    spec.host,
                    spec.port,
                    ssl=self.ssl_context if spec.transport == "tls" else None,
                )
                self.servers.append(server)
            log.info("listening on %s:%s:%d", spec.transport, spec.host, spec.port)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for stream in list(self.streams.values()):
            stream.writer.close()
        for protocol in self.udp.values():
            if protocol.transport is not None:
                protocol.transport.close()
        if self._timer is not None:
            self._timer.cancel()
        # Let the stream readers see their end (else the loop cancels them mid-read and
        # asyncio's start_server callback logs the CancelledError as an error).
        current = asyncio.current_task()
        tasks = {task for task in self._tasks if task is not current and not task.done()}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2)
            for task in pending:
                task.cancel()

    def _accept_stream(self, transport: str):  # type: ignore[no-untyped-def]
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:  # tracked so that close() can wait for it
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            peer = writer.get_extra_info("peername")
            address = Address(transport, str(peer[0]), int(peer[1]))
            stream = _Stream(self, address, reader, writer)
            self.streams[address] = stream
            await stream.run()

        return accept

    # ---- identity -------------------------------------------------------------------------

    def listen_for(self, transport: str) -> Listen:
        for spec in self.listen:
            if spec.transport == transport:
                return spec
        return self.listen[0]

    def sent_by(self, transport: str) -> str:
        return f"{self.public_host}:{self.listen_for(transport).port}"

    def contact(self, transport: str, user: str = "spg", *, secure: bool = False) -> str:
        """Our Contact (a name-addr) for a dialog on `transport`.

        Over TLS it is `sip:...;transport=tls` (RFC 5630 §3.1.3: a `sip:` request that happened
        to come over TLS must not be answered with a `sips:` Contact; peers such as baresip 1.0
        / libre cannot even send the ACK to one and drop the call). `secure=True` (the dialog's
        INVITE had a `sips:` Request-URI, RFC 3261 §12.1.1) gives `sips:` with no transport
        parameter. UDP carries no transport parameter.
        """
        spec = self.listen_for(transport)
        if secure and transport == "tls":
            return f"<sips:{user}@{self.public_host}:{spec.port}>"
        param = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:{user}@{self.public_host}:{spec.port}{param}>"

    # ---- receiving --------------------------------------------------------------------------

    def on_bytes(self, data: bytes, source: Address) -> None:
        if not data.strip(b"\r\n\x00 "):
            return  # keepalive (RFC 5626 CRLF ping) or padding
        now = self.loop.time()
        try:
            message = parse_message(data)
        except SipParseError as exc:
            self.parse_errors += 1
            SIP_PARSE_ERRORS_TOTAL.inc()
            self._answer_malformed(data, source, exc)
            return
        except Exception:  # the parser promises SipParseError only; never let the loop die
            self.parse_errors += 1
            SIP_PARSE_ERRORS_TOTAL.inc()
            log.exception("parser failure on a message from %s", source)
            return
        SIP_MESSAGES_TOTAL.inc(direction="in", kind=_message_kind(data))
        try:
            if isinstance(message, SipRequest):
                if not self._is_trusted(source.host):
                    log.warning("refused %s from untrusted %s", message.method, source)
                    if message.method != "ACK":
                        self._send(make_response(message, 403, "Forbidden").to_bytes(), source)
                    return
                self._apply_rport(message, source)
                self.transactions.receive_request(message, source, now)
            else:
                self.transactions.receive_response(message, now)
            self._pump()
        except Exception:
            log.exception("error handling a message from %s", source)

    def _answer_malformed(self, data: bytes, source: Address, exc: SipParseError) -> None:
        request = partial_request_info(data)
        log.info("malformed SIP from %s: %d %s", source, exc.status, exc.detail or exc.reason)
        if request is None or request.method == "ACK":
            return
        try:
            self._apply_rport(request, source)
            response = make_response(
                request,
                exc.status if exc.status >= 400 else 400,
                exc.reason,
                headers=[
                    ("Warning", f'399 {self.public_host} "{_quote(exc.detail or exc.reason)}"')
                ],
            )
            from spg_media.sip.transaction import response_address

            self._send(response.to_bytes(), response_address(request, source))
        except Exception:  # the partial request may be too broken to answer
            log.debug("could not answer a malformed message from %s", source)

    def _is_trusted(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    @staticmethod
    def _apply_rport(request: SipRequest, source: Address) -> None:
        """RFC 3581 / RFC 3261 §18.2.1: note where the request really came from."""
        vias = request.headers.get_all("Via")
        if not vias:
            return
        from spg_media.sip.uri import Via

        top = Via.parse(vias[0])
        changed = False
        if top.host != source.host:
            top.params["received"] = source.host
            changed = True
        if "rport" in top.params and not top.params["rport"]:
            top.params["rport"] = str(source.port)
            top.params.setdefault("received", source.host)
            changed = True
        if changed:
            rest = vias[1:]
            request.headers.remove("Via")
            request.headers.add("Via", str(top))
            for via in rest:
                request.headers.add("Via", via)

    # ---- the pump: outgoing bytes, events, timer ----------------------------------------------

    def _pump(self) -> None:
        for out in self.transactions.take_outgoing():
            self._send(out.data, out.address)
        for event in self.transactions.take_events():
            try:
                self._dispatch(event)
            except Exception:
                log.exception("error dispatching %s", type(event).__name__)
        for out in self.transactions.take_outgoing():
            self._send(out.data, out.address)
        self._schedule_timer()

    def _schedule_timer(self) -> None:
        wake = self.transactions.next_wake()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if wake is not None:
            self._timer = self.loop.call_at(wake, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.transactions.handle_timer(self.loop.time())
        self._pump()

    def _dispatch(self, event: object) -> None:
        if isinstance(event, RequestReceived):
            self._route_request(event.request, event.source)
        elif isinstance(event, ResponseReceived):
            if event.response.status >= 200:
                key = (event.request.top_via.branch or "", event.request.method)
                future = self._pending.pop(key, None)
                if future is not None and not future.done():
                    future.set_result(event.response)
        elif isinstance(event, ClientTimeout):
            key = (event.request.top_via.branch or "", event.request.method)
            future = self._pending.pop(key, None)
            if future is not None and not future.done():
                future.set_result(make_response(event.request, 408, "Request Timeout"))
        elif isinstance(event, AckReceived):
            handler = self.dialogs.get(event.request.call_id)
            if handler is not None:
                handler.on_ack(event.request)
        elif isinstance(event, CancelReceived):
            handler = self.dialogs.get(event.invite.call_id)
            if handler is not None:
                handler.on_cancel(event.invite)
            else:
                self.respond(event.invite, make_response(event.invite, 487))
        elif isinstance(event, AckTimeout):
            handler = self.dialogs.get(event.invite.call_id)
            if handler is not None:
                handler.on_ack_timeout()

    def _route_request(self, request: SipRequest, source: Address) -> None:
        # RFC 3261 §8.2.2.3: an extension the request Requires and we do not implement (timer,
        # 100rel, replaces ...) is refused, in a dialog or not, before anything acts on it.
        unknown = [
            tag
            for tag in request.headers.get_all("Require")
            if tag and tag.lower() not in SUPPORTED_EXTENSIONS
        ]
        if unknown:
            self.respond(
                request, make_response(request, 420, headers=[("Unsupported", ", ".join(unknown))])
            )
            return
        to_tag = request.to.tag
        handler = self.dialogs.get(request.call_id)
        if to_tag:
            if handler is None:
                self.respond(
                    request, make_response(request, 481, "Call/Transaction Does Not Exist")
                )
            else:
                handler.on_request(request, source)
            return
        if request.method == "INVITE":
            if handler is not None:  # a second INVITE for a call we already handle (loop/merge)
                self.respond(request, make_response(request, 482, "Loop Detected"))
            elif self.invite_handler is None:
                self.respond(request, make_response(request, 503, "Service Unavailable"))
            else:
                self.invite_handler.on_invite(request, source)
        elif request.method == "OPTIONS":
            self.respond(
                request,
                make_response(
                    request,
                    200,
                    headers=[("Allow", ALLOW), ("Accept", "application/sdp"), ("Server", SERVER)],
                ),
            )
        elif request.method in ("BYE", "INFO", "NOTIFY", "REFER", "UPDATE", "PRACK"):
            self.respond(request, make_response(request, 481, "Call/Transaction Does Not Exist"))
        else:
            self.respond(request, make_response(request, 405, headers=[("Allow", ALLOW)]))

    # ---- sending ------------------------------------------------------------------------------

    def respond(self, request: SipRequest, response: SipResponse) -> None:
        if "Server" not in response.headers:
            response.headers.add("Server", SERVER)
        self.transactions.respond(request, response, self.loop.time())
        self._pump()

    async def resolve(self, uri: SipUri) -> Address:
        transport = uri.params.get("transport") or ("tls" if uri.scheme == "sips" else "udp")
        transport = transport.lower()
        port = uri.port or (5061 if transport == "tls" else 5060)
        host = uri.host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            infos = await self.loop.getaddrinfo(host, port, type=2)  # SOCK_DGRAM: one per address
            host = str(infos[0][4][0])
        return Address(transport, host, port)

    async def request(self, request: SipRequest, destination: Address) -> SipResponse:
        """Send `request` in a new client transaction; the final response (408 on timeout)."""
        key = (request.top_via.branch or "", request.method)
        future: asyncio.Future[SipResponse] = self.loop.create_future()
        self._pending[key] = future
        if destination.reliable and destination not in self.streams:
            try:
                await self._connect(destination)
            except (OSError, ssl.SSLError) as exc:
                log.warning("cannot reach %s: %s", destination, exc)
                self._pending.pop(key, None)
                return make_response(request, 503, "Service Unavailable")
        self.transactions.send_request(request, destination, self.loop.time())
        self._pump()
        return await future

    def send_ack(self, ack: SipRequest, destination: Address) -> None:
        self.transactions.send_stateless(ack.to_bytes(), destination)
        self._pump()

    async def _connect(self, destination: Address) -> None:
        ctx = None
        if destination.transport == "tls":
            if self.client_ssl_context is None:
                self.client_ssl_context = ssl.create_default_context()
                self.client_ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx = self.client_ssl_context
        reader, writer = await asyncio.open_connection(destination.host, destination.port, ssl=ctx)
        stream = _Stream(self, destination, reader, writer)
        self.streams[destination] = stream
        task = self.loop.create_task(stream.run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, data: bytes, address: Address) -> None:
        SIP_MESSAGES_TOTAL.inc(direction="out", kind=_message_kind(data))
        if address.transport == "udp":
            protocol = self.udp.get("*")
            if protocol is None or protocol.transport is None:
                log.warning("no UDP socket to send to %s", address)
                return
            protocol.transport.sendto(data, (address.host, address.port))
            return
        stream = self.streams.get(address)
        if stream is None:
            log.warning("no connection to %s; message dropped", address)
            self.transactions.fail_destination(address)
            return
        stream.send(data)


_METRIC_METHODS = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "REFER", "NOTIFY", "UPDATE", "PRACK"}
)


def _message_kind(data: bytes) -> str:
    """The metric label of a message: its method, or its status class ("2xx"); a fixed set."""
    first = data[:16]
    if first.startswith(b"SIP/2.0 ") and len(first) >= 9 and first[8:9].isdigit():
        return f"{first[8:9].decode()}xx"
    method = first.split(b" ", 1)[0].decode("ascii", "replace")
    return method if method in _METRIC_METHODS else "other"


def new_headers(items: Iterable[tuple[str, str]]) -> Headers:
    headers = Headers()
    for name, value in items:
        headers.add(name, value)
    return headers


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')[:200]
