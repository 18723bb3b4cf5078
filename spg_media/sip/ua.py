"""The SIP user agent's asyncio shell: transports (UDP, TCP, TLS) around the sans-IO core.

Bytes from a socket are parsed (`message.parse_message`), checked (trusted sources, RFC 3581
rport), and fed to the `TransactionLayer`; what it asks to send goes out on the right socket or
stream; its events are routed to the call that owns the dialog (by Call-ID) or, for a new INVITE,
to the `InviteHandler`. Out-of-dialog OPTIONS (Kamailio's keepalive pings) are answered here:
200, or 503 with Retry-After while the node refuses new calls (`refusing_calls`).
Malformed requests get a 400 with a Warning whenever enough of them can be read to answer; the
loop never sees the exception.

`request()` is the one awaitable: it starts a client transaction and resolves with the final
response, or a synthetic 408 when the transaction times out or the transport fails.

TCP/TLS: responses go back on the connection the request came on, and a request to an address
we already have a connection with (the `source` of a call's INVITE) reuses it; a new connection
is opened only when there is none (RFC 3261 §18, RFC 5923-style reuse). `contact()` gives
`sip:...;transport=tls` over TLS, and `sips:` only for a dialog whose INVITE was `sips:`.

Strangers (sources outside `sip.trusted_sources`) cost little: a TCP or TLS connection from one
is closed at accept, before any TLS handshake (the listeners accept plain TCP and upgrade it
themselves); a UDP packet from one is dropped unparsed and counted, except an INVITE, which gets
`403` while a small token bucket allows it. Connections are bounded (`sip.max_connections`, a
TLS handshake timeout, a deadline for a message's head, an idle timeout for connections no
call uses): the bookkeeping is `sip/limits.py`, this module closes what it says to.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from spg_media.observability import (
    CALLS_REJECTED_TOTAL,
    METRICS,
    SIP_MESSAGES_TOTAL,
    SIP_PARSE_ERRORS_TOTAL,
)
from spg_media.sip.invite_session import ALLOW
from spg_media.sip.limits import (
    LIMIT,
    UNTRUSTED,
    ConnectionLimits,
    ConnectionTable,
    LogThrottle,
    TokenBucket,
    address_in,
    parse_networks,
)
from spg_media.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    StreamFramer,
    make_response,
    new_tag,
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
    State,
    TransactionLayer,
    response_address,
)
from spg_media.sip.uri import SipUri

log = logging.getLogger("spg.sip")

MAX_REMEMBERED_ACKS = 256
# SIP extensions (option tags) we implement; a request that Requires another gets 420.
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset({"timer"})  # RFC 4028, sip/session_timer.py
SERVER = "spg-media"

# A stranger's INVITE is answered 403 (the external contract) at most this often, all strangers
# together: past it, dropped like everything else they send. Never an amplifier or a flood.
FORBIDDEN_PER_S = 5.0
FORBIDDEN_BURST = 20.0
STRANGER_LOG_PERIOD_S = 10.0
# A peer that does not read what we send: its connection is closed past this much unsent.
MAX_WRITE_BUFFER = 1 << 20
LISTEN_BACKLOG = 1024
CONNECT_TIMEOUT_S = 5.0  # a connection we open: TCP connect (plus the TLS handshake timeout)

SIP_CONNECTIONS_OPEN = METRICS.gauge(
    "spg_sip_connections_open", "Open SIP TCP/TLS connections, inbound and outbound."
)
SIP_CONNECTIONS_REFUSED_TOTAL = METRICS.counter(
    "spg_sip_connections_refused_total",
    "Inbound SIP TCP/TLS connections closed at accept, by reason (untrusted, limit).",
    ("reason",),
)
SIP_CONNECTIONS_CLOSED_TOTAL = METRICS.counter(
    "spg_sip_connections_closed_total",
    "SIP TCP/TLS connections the node closed, by reason "
    "(idle, header, handshake, malformed, unread, replaced).",
    ("reason",),
)
SIP_DROPPED_TOTAL = METRICS.counter(
    "spg_sip_dropped_total",
    "SIP messages dropped unanswered, by reason (untrusted: from outside sip.trusted_sources).",
    ("reason",),
)


@dataclass(frozen=True)
class Listen:
    transport: str  # udp | tcp | tls
    host: str
    port: int


class DialogHandler(Protocol):
    """What a call must offer to receive the requests of its dialog."""

    @property
    def source(self) -> Address:
        """Where the dialog's INVITE came from (or went to): over TCP/TLS, that connection
        carries the call and is never closed for idleness while the dialog lives."""
        ...

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


class _ServerTls:
    """The server side of TLS over memory buffers (`ssl.SSLObject`), for an accepted connection.

    The stream feeds it what it reads and writes out what it returns. TLS is done here, and not
    with the loop's `start_tls`, so that the peer is checked before the handshake on every
    event loop alike: uvloop starts reading a new connection right after `connection_made`, so
    a client's first flight could reach the plain protocol before a `start_tls` took over.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.established = False

    def receive(self, data: bytes) -> tuple[bytes, bool]:
        """Feed bytes read from the peer: (the application data they completed, whether the
        peer closed TLS). Raises ssl.SSLError on a failed handshake or a bad record; `output()`
        then holds the alert for the peer."""
        self._incoming.write(data)
        if not self.established:
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                return b"", False
            self.established = True
        plain = bytearray()
        while True:
            try:
                chunk = self.ssl_object.read(65536)
            except ssl.SSLWantReadError:
                return bytes(plain), False
            except ssl.SSLZeroReturnError:  # close_notify
                return bytes(plain), True
            if not chunk:
                return bytes(plain), True
            plain += chunk

    def send(self, data: bytes) -> None:
        self.ssl_object.write(data)

    def output(self) -> bytes:
        """The TLS bytes waiting to go to the peer."""
        return self._outgoing.read()


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection, in or out; messages framed by Content-Length.

    An inbound one is accepted as plain TCP: the UA's connection table decides at once whether
    it may stay (trusted source, under the connection limit), and only then does a `tls`
    listener's connection start its TLS handshake (`_ServerTls`, within the handshake timeout).
    An outbound one (`SipUserAgent._connect`) is TLS from its first byte when it is `tls`.
    """

    def __init__(self, ua: SipUserAgent, kind: str, address: Address | None = None) -> None:
        self.ua = ua
        self.kind = kind  # tcp | tls
        self.address = address  # outbound: where we connected; inbound: set at accept
        self.transport: asyncio.Transport | None = None
        self.framer = StreamFramer()
        self.tls: _ServerTls | None = None  # inbound TLS
        self.open = False  # in the UA's table (admitted, not yet closed)
        self._unsent: list[bytes] = []  # answers to a request read with the handshake's end

    # ---- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.address is not None:  # outbound: already verified and handshaken
            self.ua._opened(self, handshake=False)
            return
        peer = transport.get_extra_info("peername")
        self.address = Address(self.kind, str(peer[0]), int(peer[1]))
        refusal = self.ua.connections.admit(self.address.host)
        if refusal is not None:
            SIP_CONNECTIONS_REFUSED_TOTAL.inc(reason=refusal)
            self.ua._note_refused(self.address, refusal)
            self.transport.abort()  # no handshake, nothing read or answered, the fd freed now
            return
        if self.kind == "tls":
            assert self.ua.ssl_context is not None
            self.tls = _ServerTls(self.ua.ssl_context)
        self.ua._opened(self, handshake=self.tls is not None)

    def data_received(self, data: bytes) -> None:
        if not self.open or self.address is None:
            return
        peer_closed = False
        if self.tls is not None:
            data, peer_closed = self._decrypt(data)
        if data:
            try:
                messages = self.framer.feed(data)
            except SipParseError as exc:
                log.info("closing %s: %s", self.address, exc.reason)
                self.close("malformed")
                return
            self.ua._received(self, len(messages), self.framer.pending > 0)
            for message in messages:
                if not self.open:
                    break
                self.ua.on_bytes(message, self.address)
        if peer_closed:  # TLS close_notify, after what came with it
            self.close("eof")

    def eof_received(self) -> bool | None:
        return False  # the peer is done: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("stream %s ended: %s", self.address, exc)
        self.ua._closed(self)

    # ---- ours ------------------------------------------------------------------------------

    def _decrypt(self, data: bytes) -> tuple[bytes, bool]:
        """TLS records in: the application data out (b"" while the handshake runs), and
        whether the peer closed TLS."""
        tls = self.tls
        assert tls is not None and self.transport is not None and self.address is not None
        was_established = tls.established
        try:
            plain, peer_closed = tls.receive(data)
        except ssl.SSLError as exc:
            log.debug("TLS with %s failed: %s", self.address, exc)
            self.transport.write(tls.output())  # the alert, if any
            self.close("handshake" if not was_established else "malformed")
            return b"", False
        self.transport.write(tls.output())
        if tls.established and not was_established:
            self.ua.connections.established(self.address)
            unsent, self._unsent = self._unsent, []
            for message in unsent:
                self.send(message)
        return plain, peer_closed

    def get_extra_info(self, name: str) -> Any:
        if name == "ssl_object" and self.tls is not None:
            return self.tls.ssl_object if self.tls.established else None
        return None if self.transport is None else self.transport.get_extra_info(name)

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.tls is not None:
            if not self.tls.established:
                self._unsent.append(data)
                return
            self.tls.send(data)
            data = self.tls.output()
        transport.write(data)
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.info("closing %s: it does not read what we send", self.address)
            self.close("unread")

    def close(self, reason: str) -> None:
        """Close the connection now (counted by `reason` unless it is the peer's doing)."""
        if self.open and reason != "eof":
            SIP_CONNECTIONS_CLOSED_TOTAL.inc(reason=reason)
        if self.transport is not None:
            if reason == "eof":
                self.transport.close()
            else:
                self.transport.abort()
        self.ua._closed(self)


class SipUserAgent:
    """Transports + transaction layer + routing of requests to calls."""

    def __init__(
        self,
        listen: Iterable[Listen],
        public_host: str,
        trusted_sources: Iterable[str] = ("127.0.0.0/8",),
        ssl_context: ssl.SSLContext | None = None,
        client_ssl_context: ssl.SSLContext | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.listen = list(listen)
        self.public_host = public_host
        self.trusted = parse_networks(trusted_sources)
        self.ssl_context = ssl_context  # our TLS listeners' certificate
        # For TLS connections we open: by default the system's CAs and the peer's name or
        # address checked (a card-data path never trusts an unverified peer); `sip.tls_ca`
        # gives a context that trusts a private CA instead (SipConfig.client_tls).
        self.client_ssl_context = client_ssl_context
        self.limits = limits or ConnectionLimits()
        self.connections: ConnectionTable[Address] = ConnectionTable(self.limits, self.trusted)
        self.transactions = TransactionLayer()
        self.dialogs: dict[str, DialogHandler] = {}
        self.invite_handler: InviteHandler | None = None
        # While the node takes no new calls: the Retry-After seconds its 503 carries, else None.
        # Out-of-dialog OPTIONS then get that 503 too, as an INVITE would (RFC 3261 §11.2), so a
        # dispatcher's keepalive takes the node out of its pool until it accepts again.
        self.refusing_calls: Callable[[], int | None] | None = None
        self.streams: dict[Address, _Stream] = {}
        self.udp: dict[str, _Udp] = {}
        self.servers: list[asyncio.Server] = []
        self.parse_errors = 0
        self._pending: dict[tuple[str, str], asyncio.Future[SipResponse]] = {}
        # Our INVITEs' provisional answers go to the caller of `request` that asked for them.
        self._provisional: dict[tuple[str, str], Callable[[SipResponse], None]] = {}
        # The ACKs we sent for 2xx answers, by (Call-ID, CSeq): a retransmitted 2xx (our ACK
        # was lost) gets the same ACK again (RFC 3261 §13.2.2.4). The last few only.
        self._acks: collections.OrderedDict[tuple[str, int], tuple[bytes, Address]] = (
            collections.OrderedDict()
        )
        self._timer: asyncio.TimerHandle | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_at: float | None = None
        self._forbidden = TokenBucket(FORBIDDEN_PER_S, FORBIDDEN_BURST)
        self._stranger_log = LogThrottle(STRANGER_LOG_PERIOD_S)
        self._refused_log = LogThrottle(STRANGER_LOG_PERIOD_S)
        self._refused: collections.Counter[str] = collections.Counter()  # since the last line
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
                if spec.transport == "tls" and self.ssl_context is None:
                    raise ValueError("a tls listener needs a certificate (ssl_context)")
                # Plain TCP for tls too: the peer is checked before any handshake.
                server = await self.loop.create_server(
                    functools.partial(_Stream, self, spec.transport),
                    spec.host,
                    spec.port,
                    backlog=LISTEN_BACKLOG,
                )
                self.servers.append(server)
            log.info("listening on %s:%s:%d", spec.transport, spec.host, spec.port)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for protocol in self.udp.values():
            if protocol.transport is not None:
                protocol.transport.close()
        if self._timer is not None:
            self._timer.cancel()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for stream in list(self.streams.values()):
            if stream.transport is not None:
                stream.transport.close()  # what is queued is still sent
            self._closed(stream)
        await asyncio.sleep(0)  # the transports' connection_lost callbacks run

    # ---- connections: admitted, counted, timed out --------------------------------------------

    def _opened(self, stream: _Stream, handshake: bool) -> None:
        assert stream.address is not None
        old = self.streams.get(stream.address)
        if old is not None and old is not stream:  # the same address again: the new one wins
            old.close("replaced")
        stream.open = True
        self.streams[stream.address] = stream
        self.connections.opened(stream.address, self.loop.time(), handshake=handshake)
        SIP_CONNECTIONS_OPEN.inc()  # inc/dec, not set: a process may run more than one UA
        self._schedule_sweep()

    def _received(self, stream: _Stream, messages: int, incomplete: bool) -> None:
        assert stream.address is not None
        self.connections.received(stream.address, self.loop.time(), messages, incomplete)
        self._schedule_sweep()

    def _closed(self, stream: _Stream) -> None:
        if not stream.open:
            return
        stream.open = False
        SIP_CONNECTIONS_OPEN.dec()
        address = stream.address
        if address is not None and self.streams.get(address) is stream:
            del self.streams[address]
            self.connections.closed(address)

    def _note_refused(self, address: Address, reason: str) -> None:
        self._refused[reason] += 1
        count = self._refused_log.note(self.loop.time())
        if count is not None:
            log.warning(
                "closed %d SIP connections at accept since the last report: %d from outside "
                "sip.trusted_sources, %d over sip.max_connections (latest from %s)",
                count,
                self._refused[UNTRUSTED],
                self._refused[LIMIT],
                address.host,
            )
            self._refused.clear()

    def _busy_connections(self) -> set[Address]:
        """Connections a call uses: its INVITE's, or one a request of ours waits on."""
        busy = {handler.source for handler in self.dialogs.values() if handler.source.reliable}
        for tx in self.transactions.client.values():
            if tx.destination.reliable and tx.state in _CLIENT_PENDING:
                busy.add(tx.destination)
        return busy

    def _schedule_sweep(self) -> None:
        wake = self.connections.next_wake()
        if wake is None or (self._sweep_at is not None and self._sweep_at <= wake):
            return
        if self._sweep is not None:
            self._sweep.cancel()
        self._sweep_at = wake
        self._sweep = self.loop.call_at(wake, self._on_sweep)

    def _on_sweep(self) -> None:
        self._sweep = None
        self._sweep_at = None
        busy = self._busy_connections()
        for address, reason in self.connections.expired(self.loop.time(), busy.__contains__):
            stream = self.streams.get(address)
            if stream is None:
                continue
            # counted; one line each at debug only (thousands may go at once)
            log.debug("closing %s: %s", address, _CLOSE_REASONS[reason])
            SIP_CONNECTIONS_CLOSED_TOTAL.inc(reason=reason)
            stream.open = False  # already out of the table: counted once, here
            SIP_CONNECTIONS_OPEN.dec()
            del self.streams[address]
            if stream.transport is not None:
                stream.transport.abort()
        self._schedule_sweep()

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
        if source.transport == "udp" and not self._is_trusted(source.host):
            # TCP/TLS strangers never get this far: their connections are closed at accept.
            self._from_stranger(data, source)
            return
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
                self._apply_rport(message, source)
                self.transactions.receive_request(message, source, now)
            else:
                self.transactions.receive_response(message, now)
            self._pump()
        except Exception:
            log.exception("error handling a message from %s", source)

    def _from_stranger(self, data: bytes, source: Address) -> None:
        """A UDP packet from outside `sip.trusted_sources`: an INVITE gets 403 while the token
        bucket allows (the contract's answer to strangers); all else is dropped and counted,
        with a log line every so often (never one per packet: no amplifier, no log flood)."""
        now = self.loop.time()
        answered = False
        if data.startswith(b"INVITE ") and self._forbidden.take(now):
            try:
                message = parse_message(data)
            except Exception:  # SipParseError, or a parser bug: a stranger gets nothing
                message = None
            if isinstance(message, SipRequest) and message.method == "INVITE":
                response = make_response(message, 403, "Forbidden", to_tag=new_tag())
                response.headers.add("Server", SERVER)
                self._send(response.to_bytes(), source)  # to the packet's source, not its Via
                CALLS_REJECTED_TOTAL.inc(status="403")
                answered = True
        if not answered:
            SIP_DROPPED_TOTAL.inc(reason="untrusted")
        count = self._stranger_log.note(now)
        if count is not None:
            log.warning(
                "%d SIP messages from outside sip.trusted_sources since the last report "
                "(latest from %s): INVITEs answered 403 at most %g/s, the rest dropped",
                count,
                source.host,
                FORBIDDEN_PER_S,
            )

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
            self._send(response.to_bytes(), response_address(request, source))
        except Exception:  # the partial request may be too broken to answer
            log.debug("could not answer a malformed message from %s", source)

    def _is_trusted(self, host: str) -> bool:
        return address_in(host, self.trusted)

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
            key = (event.request.top_via.branch or "", event.request.method)
            if event.response.status < 200:
                on_provisional = self._provisional.get(key)
                if on_provisional is not None:
                    on_provisional(event.response)
                return
            self._provisional.pop(key, None)
            future = self._pending.pop(key, None)
            if future is not None and not future.done():
                future.set_result(event.response)
            elif event.request.method == "INVITE" and event.response.status < 300:
                acked = self._acks.get((event.response.call_id, event.response.cseq[0]))
                if acked is not None:  # a 2xx again: our ACK was lost
                    self.transactions.send_stateless(*acked)
        elif isinstance(event, ClientTimeout):
            key = (event.request.top_via.branch or "", event.request.method)
            self._provisional.pop(key, None)
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
            headers = [("Allow", ALLOW), ("Accept", "application/sdp"), ("Server", SERVER)]
            retry_after = self.refusing_calls() if self.refusing_calls is not None else None
            if retry_after is not None:
                headers.append(("Retry-After", str(retry_after)))
                refusal = make_response(request, 503, "Service Unavailable", headers=headers)
                self.respond(request, refusal)
            else:
                self.respond(request, make_response(request, 200, headers=headers))
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

    async def request(
        self,
        request: SipRequest,
        destination: Address,
        on_provisional: Callable[[SipResponse], None] | None = None,
    ) -> SipResponse:
        """Send `request` in a new client transaction; the final response (408 on timeout).
        `on_provisional` is given the 1xx answers (of an INVITE) as they come."""
        key = (request.top_via.branch or "", request.method)
        future: asyncio.Future[SipResponse] = self.loop.create_future()
        self._pending[key] = future
        if on_provisional is not None:
            self._provisional[key] = on_provisional
        if destination.transport == "udp" and self.udp.get("*") is None:
            # no UDP listener (a TLS-only node calling a UDP agent): nothing could ever leave,
            # so say so now rather than retransmit into the void until timer B
            log.warning("cannot reach %s: no UDP listener", destination)
            self._pending.pop(key, None)
            self._provisional.pop(key, None)
            return make_response(request, 503, "Service Unavailable")
        if destination.reliable and destination not in self.streams:
            try:
                await self._connect(destination)
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                log.warning("cannot reach %s: %s", destination, exc)
                self._pending.pop(key, None)
                self._provisional.pop(key, None)
                return make_response(request, 503, "Service Unavailable")
        self.transactions.send_request(request, destination, self.loop.time())
        self._pump()
        try:
            return await future
        finally:
            self._provisional.pop(key, None)

    def abandon(self, request: SipRequest) -> None:
        """Give up our pending INVITE (cancelled, and no answer even to that): its `request`
        returns 408."""
        self.transactions.abandon(request)
        self._pump()

    def send_ack(self, ack: SipRequest, destination: Address) -> None:
        data = ack.to_bytes()
        self._acks[(ack.call_id, ack.cseq[0])] = (data, destination)
        while len(self._acks) > MAX_REMEMBERED_ACKS:
            self._acks.popitem(last=False)
        self.transactions.send_stateless(data, destination)
        self._pump()

    async def _connect(self, destination: Address) -> None:
        ctx = None
        if destination.transport == "tls":
            if self.client_ssl_context is None:
                self.client_ssl_context = ssl.create_default_context()
                self.client_ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx = self.client_ssl_context
        async with asyncio.timeout(CONNECT_TIMEOUT_S + self.limits.tls_handshake_timeout_s):
            await self.loop.create_connection(
                functools.partial(_Stream, self, destination.transport, destination),
                destination.host,
                destination.port,
                ssl=ctx,
                ssl_handshake_timeout=self.limits.tls_handshake_timeout_s if ctx else None,
            )

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


_CLIENT_PENDING = frozenset({State.CALLING, State.TRYING, State.PROCEEDING})
_CLOSE_REASONS = {
    "idle": "no message and no call for sip.idle_timeout_s",
    "header": "a message not whole within sip.header_timeout_s",
    "handshake": "TLS handshake not done within sip.tls_handshake_timeout_s",
}

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
