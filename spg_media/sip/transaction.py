"""SIP transaction layer (RFC 3261 §17, RFC 6026), sans-IO.

Theory of operation
-------------------
`TransactionLayer` owns every client and server transaction of one user agent. It is fed parsed
messages with their source (`receive_request`, `receive_response`) and the time, and it is asked to
send requests and responses (`send_request`, `respond`). It never touches a socket: what must go on
the wire is queued as `Outgoing` items (`take_outgoing()`), and what the transaction user must
handle is queued as events (`take_events()`). `next_wake()` says when `handle_timer(now)` is due.

Server INVITE transactions answer retransmitted INVITEs with the last response, send `100 Trying`
at once, retransmit a final non-2xx response (timer G) until the ACK, and — as RFC 6026's
"Accepted" state — retransmit a 2xx until the dialog's ACK arrives (matched on Call-ID and CSeq
number, since that ACK has a branch of its own), reporting `AckTimeout` after 64·T1 so that the
call can be ended. An INVITE client transaction stops timer B once a provisional answer comes
(the TU ends a long ring with CANCEL, and `abandon`s it if even that gets no answer).
Non-INVITE server transactions cache their final response for retransmitted
requests (timer J). Client transactions retransmit over unreliable transports (timers A/E, capped
at T2) and report `ClientTimeout` after 64·T1 (timers B/F). Over TCP/TLS nothing is retransmitted.

Transactions are keyed as RFC 3261 §17.2.3 says: (branch, sent-by, method), with ACK and CANCEL
mapped onto the INVITE they belong to.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
from dataclasses import dataclass, field

from spg_media.sip.message import SipRequest, SipResponse, make_response
from spg_media.sip.uri import Via

T1 = 0.5
T2 = 4.0
T4 = 5.0


@dataclass(frozen=True)
class Address:
    """Where a message comes from or goes to. `transport` is udp, tcp or tls."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    def __str__(self) -> str:
        return f"{self.transport}:{self.host}:{self.port}"


@dataclass(frozen=True)
class Outgoing:
    data: bytes
    address: Address


# ---- events for the transaction user -------------------------------------------------------


@dataclass(frozen=True)
class RequestReceived:
    """A new request (not a retransmission) for the TU. ACKs for 2xx come as `AckReceived`."""

    request: SipRequest
    source: Address


@dataclass(frozen=True)
class AckReceived:
    request: SipRequest
    source: Address


@dataclass(frozen=True)
class CancelReceived:
    """A CANCEL matched a pending INVITE (already answered 200); the TU should answer it 487."""

    invite: SipRequest
    cancel: SipRequest


@dataclass(frozen=True)
class ResponseReceived:
    response: SipResponse
    request: SipRequest


@dataclass(frozen=True)
class ClientTimeout:
    """No final response to a request we sent within 64·T1 (or the transport failed)."""

    request: SipRequest


@dataclass(frozen=True)
class AckTimeout:
    """A 2xx to an INVITE was never acknowledged (RFC 3261 §13.3.1.4): the TU should send BYE."""

    invite: SipRequest


Event = (
    RequestReceived | AckReceived | CancelReceived | ResponseReceived | ClientTimeout | AckTimeout
)


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


def _server_key(request: SipRequest) -> tuple[str, str, str]:
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    return (via.branch or "", f"{via.host}:{via.port or ''}", method)


@dataclass
class ServerTransaction:
    request: SipRequest
    source: Address
    state: State
    last_response: SipResponse | None = None
    last_response_bytes: bytes = b""
    reply_to: Address | None = None
    retransmit_interval: float = T1
    retransmit_at: float | None = None
    expires_at: float | None = None
    cancelled: bool = False

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"


@dataclass
class ClientTransaction:
    request: SipRequest
    data: bytes
    destination: Address
    state: State
    started_at: float
    retransmit_interval: float = T1
    retransmit_at: float | None = None
    expires_at: float | None = None
    final: SipResponse | None = None

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"


@dataclass
class TransactionLayer:
    """All transactions of one UA; see the module docstring."""

    t1: float = T1
    server: dict[tuple[str, str, str], ServerTransaction] = field(default_factory=dict)
    client: dict[tuple[str, str], ClientTransaction] = field(default_factory=dict)
    # (call-id, cseq number) of INVITEs answered 2xx and waiting for their ACK
    accepted: dict[tuple[str, int], ServerTransaction] = field(default_factory=dict)
    _outgoing: list[Outgoing] = field(default_factory=list)
    _events: list[Event] = field(default_factory=list)
    _timers: list[tuple[float, int, object]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    # ---- outputs ------------------------------------------------------------------------------

    def take_outgoing(self) -> list[Outgoing]:
        out, self._outgoing = self._outgoing, []
        return out

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def next_wake(self) -> float | None:
        while self._timers:
            when, _, tx = self._timers[0]
            if self._timer_live(tx, when):
                return when
            heapq.heappop(self._timers)
        return None

    # ---- inputs: the wire -------------------------------------------------------------------

    def receive_request(self, request: SipRequest, source: Address, now: float) -> None:
        """A parsed request from `source`. rport/received must already be applied to its Via."""
        if request.method == "ACK":
            self._receive_ack(request, source, now)
            return
        key = _server_key(request)
        tx = self.server.get(key)
        if tx is not None:  # retransmission: answer with what we last said
            if tx.last_response_bytes and tx.reply_to is not None:
                self._outgoing.append(Outgoing(tx.last_response_bytes, tx.reply_to))
            return
        if request.method == "CANCEL":
            self._receive_cancel(request, source, now)
            return
        tx = ServerTransaction(
            request=request,
            source=source,
            state=State.PROCEEDING if request.method == "INVITE" else State.TRYING,
            reply_to=response_address(request, source),
        )
        self.server[key] = tx
        if tx.is_invite:
            self._send_server_response(tx, make_response(request, 100, "Trying"))
        self._events.append(RequestReceived(request, source))

    def receive_response(self, response: SipResponse, now: float) -> None:
        via = response.top_via
        method = response.cseq[1]
        tx = self.client.get((via.branch or "", method))
        if tx is None:
            # A 2xx retransmission for an INVITE whose transaction ended: the TU must re-ACK it.
            if method == "INVITE" and 200 <= response.status < 300:
                for done in self._recent_invites:
                    if done.request.call_id == response.call_id:
                        self._events.append(ResponseReceived(response, done.request))
                        break
            return
        if tx.state in (State.COMPLETED, State.TERMINATED):
            if tx.is_invite and response.status >= 300 and tx.final is not None:
                self._outgoing.append(
                    Outgoing(self._ack_for(tx, response).to_bytes(), tx.destination)
                )
            elif tx.is_invite and response.status >= 200:
                # A 2xx again (RFC 6026 Accepted): the TU's ACK was lost; it sends it again.
                self._events.append(ResponseReceived(response, tx.request))
            return
        if response.status < 200:
            if tx.state in (State.CALLING, State.TRYING):
                tx.state = State.PROCEEDING
                if not tx.is_invite and not tx.destination.reliable:
                    tx.retransmit_interval = T2
                elif tx.is_invite:
                    tx.retransmit_at = None  # timer A stops on a provisional
                    # and timer B: a ringing INVITE waits for its answer as long as the TU
                    # lets it (it CANCELs, then `abandon`s it if no answer comes).
                    tx.expires_at = None
            self._events.append(ResponseReceived(response, tx.request))
            return
        tx.final = response
        self._events.append(ResponseReceived(response, tx.request))
        if tx.is_invite and response.status >= 300:
            self._outgoing.append(Outgoing(self._ack_for(tx, response).to_bytes(), tx.destination))
        tx.state = State.COMPLETED
        tx.retransmit_at = None
        if tx.is_invite and response.status < 300:
            self._recent_invites.append(tx)
            del self._recent_invites[:-32]
        linger = 0.0 if tx.destination.reliable else (T4 if not tx.is_invite else 32.0)
        tx.expires_at = now + linger
        self._arm(tx, tx.expires_at)

    # ---- inputs: the transaction user -------------------------------------------------------

    def send_request(self, request: SipRequest, destination: Address, now: float) -> None:
        """Start a client transaction (the request must carry its own Via with a fresh branch)."""
        data = request.to_bytes()
        tx = ClientTransaction(
            request=request,
            data=data,
            destination=destination,
            state=State.CALLING if request.method == "INVITE" else State.TRYING,
            started_at=now,
        )
        if request.method == "ACK":  # ACK for a 2xx is not a transaction: just send it
            self._outgoing.append(Outgoing(data, destination))
            return
        self.client[(request.top_via.branch or "", request.method)] = tx
        self._outgoing.append(Outgoing(data, destination))
        if not destination.reliable:
            tx.retransmit_interval = self.t1
            tx.retransmit_at = now + self.t1
            self._arm(tx, tx.retransmit_at)
        tx.expires_at = now + 64 * self.t1
        self._arm(tx, tx.expires_at)

    def send_stateless(self, data: bytes, destination: Address) -> None:
        """Bytes outside any transaction (an ACK for a 2xx, a stateless error response)."""
        self._outgoing.append(Outgoing(data, destination))

    def respond(self, request: SipRequest, response: SipResponse, now: float) -> None:
        """Send `response` in the server transaction of `request`."""
        tx = self.server.get(_server_key(request))
        if tx is None or tx.state in (State.COMPLETED, State.CONFIRMED, State.TERMINATED):
            return
        if tx.state == State.ACCEPTED:
            return
        self._send_server_response(tx, response)
        if response.status < 200:
            tx.state = State.PROCEEDING
            return
        reliable = tx.source.reliable
        if tx.is_invite and response.status < 300:
            tx.state = State.ACCEPTED
            self.accepted[(request.call_id, request.cseq[0])] = tx
            tx.retransmit_interval = self.t1
            tx.retransmit_at = None if reliable else now + self.t1
            tx.expires_at = now + 64 * self.t1
        elif tx.is_invite:
            tx.state = State.COMPLETED
            tx.retransmit_interval = self.t1
            tx.retransmit_at = None if reliable else now + self.t1
            tx.expires_at = now + 64 * self.t1
        else:
            tx.state = State.COMPLETED
            tx.expires_at = now + (0.0 if reliable else 64 * self.t1)
            # Timer J keeps the transaction for retransmissions, which need only the response:
            # an INFO's body is a key press, and 32 s of them would be the caller's whole card.
            tx.request = dataclasses.replace(tx.request, body=b"")
        if tx.retransmit_at is not None:
            self._arm(tx, tx.retransmit_at)
        self._arm(tx, tx.expires_at)

    def handle_timer(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            when, _, tx = heapq.heappop(self._timers)
            if not self._timer_live(tx, when):
                continue
            if isinstance(tx, ServerTransaction):
                self._server_timer(tx, now)
            elif isinstance(tx, ClientTransaction):
                self._client_timer(tx, now)

    def pending_invite(self, call_id: str) -> ServerTransaction | None:
        for tx in self.server.values():
            if tx.is_invite and tx.request.call_id == call_id and tx.state == State.PROCEEDING:
                return tx
        return None

    def abandon(self, request: SipRequest) -> None:
        """Give up our pending client transaction of `request` (a cancelled INVITE that got
        no final answer, RFC 3261 §9.1): reported as `ClientTimeout`."""
        key = (request.top_via.branch or "", request.method)
        tx = self.client.get(key)
        if tx is not None and tx.state in (State.CALLING, State.TRYING, State.PROCEEDING):
            tx.state = State.TERMINATED
            del self.client[key]
            self._events.append(ClientTimeout(tx.request))

    def fail_destination(self, destination: Address) -> None:
        """The transport could not reach `destination` (e.g. TCP connect refused)."""
        for key, tx in list(self.client.items()):
            if tx.destination == destination and tx.state in (
                State.CALLING,
                State.TRYING,
                State.PROCEEDING,
            ):
                tx.state = State.TERMINATED
                del self.client[key]
                self._events.append(ClientTimeout(tx.request))

    # ---- internals --------------------------------------------------------------------------

    def __post_init__(self) -> None:
        self._recent_invites: list[ClientTransaction] = []

    def _timer_live(self, tx: object, when: float) -> bool:
        if isinstance(tx, ServerTransaction | ClientTransaction):
            return tx.state != State.TERMINATED and when in (tx.retransmit_at, tx.expires_at)
        return False

    def _arm(self, tx: ServerTransaction | ClientTransaction, when: float) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), tx))

    def _send_server_response(self, tx: ServerTransaction, response: SipResponse) -> None:
        tx.last_response = response
        tx.last_response_bytes = response.to_bytes()
        if tx.reply_to is not None:
            self._outgoing.append(Outgoing(tx.last_response_bytes, tx.reply_to))

    def _receive_ack(self, ack: SipRequest, source: Address, now: float) -> None:
        key = _server_key(ack)
        tx = self.server.get(key)
        if tx is not None and tx.state == State.COMPLETED and tx.is_invite:
            tx.state = State.CONFIRMED  # ACK to our non-2xx final: absorb retransmissions for T4
            tx.retransmit_at = None
            tx.expires_at = now + (0.0 if tx.source.reliable else T4)
            self._arm(tx, tx.expires_at)
            return
        if tx is not None and tx.state == State.CONFIRMED:
            return
        accepted = self.accepted.pop((ack.call_id, ack.cseq[0]), None)
        if accepted is not None:
            self._terminate_server(accepted)
            self._events.append(AckReceived(ack, source))
            return
        # A retransmitted ACK for a 2xx already acknowledged, or a stray: the TU may ignore it.
        self._events.append(AckReceived(ack, source))

    def _receive_cancel(self, cancel: SipRequest, source: Address, now: float) -> None:
        reply_to = response_address(cancel, source)
        via = cancel.top_via
        invite_tx = self.server.get((via.branch or "", f"{via.host}:{via.port or ''}", "INVITE"))
        cancel_tx = ServerTransaction(
            request=cancel, source=source, state=State.TRYING, reply_to=reply_to
        )
        self.server[_server_key(cancel)] = cancel_tx
        if invite_tx is None or invite_tx.state != State.PROCEEDING:
            self.respond(cancel, make_response(cancel, 481), now)
            return
        self.respond(cancel, make_response(cancel, 200), now)
        if not invite_tx.cancelled:
            invite_tx.cancelled = True
            self._events.append(CancelReceived(invite_tx.request, cancel))

    def _terminate_server(self, tx: ServerTransaction) -> None:
        tx.state = State.TERMINATED
        self.server.pop(_server_key(tx.request), None)

    def _server_timer(self, tx: ServerTransaction, now: float) -> None:
        if (
            tx.retransmit_at is not None
            and now >= tx.retransmit_at
            and (tx.expires_at is None or now < tx.expires_at)
        ):
            if tx.reply_to is not None:
                self._outgoing.append(Outgoing(tx.last_response_bytes, tx.reply_to))
            tx.retransmit_interval = min(tx.retransmit_interval * 2, T2)
            tx.retransmit_at = now + tx.retransmit_interval
            self._arm(tx, tx.retransmit_at)
            return
        if tx.expires_at is not None and now >= tx.expires_at:
            if tx.state == State.ACCEPTED:
                self.accepted.pop((tx.request.call_id, tx.request.cseq[0]), None)
                self._events.append(AckTimeout(tx.request))
            self._terminate_server(tx)

    def _client_timer(self, tx: ClientTransaction, now: float) -> None:
        key = (tx.request.top_via.branch or "", tx.request.method)
        if tx.expires_at is not None and now >= tx.expires_at:
            timed_out = tx.state in (State.CALLING, State.TRYING, State.PROCEEDING)
            tx.state = State.TERMINATED
            self.client.pop(key, None)
            if timed_out:
                self._events.append(ClientTimeout(tx.request))
            return
        if tx.retransmit_at is not None and now >= tx.retransmit_at:
            self._outgoing.append(Outgoing(tx.data, tx.destination))
            cap = T2 if not tx.is_invite else float("inf")
            tx.retransmit_interval = min(tx.retransmit_interval * 2, cap)
            if tx.state == State.PROCEEDING and not tx.is_invite:
                tx.retransmit_interval = T2
            tx.retransmit_at = now + tx.retransmit_interval
            self._arm(tx, tx.retransmit_at)

    def _ack_for(self, tx: ClientTransaction, response: SipResponse) -> SipRequest:
        """ACK for a non-2xx final response: same branch, To from the response (§17.1.1.3)."""
        req = tx.request
        ack = SipRequest("ACK", req.uri, req.headers.copy(), b"")
        for name in ("Content-Type", "Contact", "Allow", "Supported", "Content-Encoding"):
            ack.headers.remove(name)
        ack.headers.remove("Via")
        ack.headers.add("Via", str(req.top_via))
        to = response.headers.get("To")
        if to is not None:
            ack.headers.set("To", to)
        ack.headers.set("CSeq", f"{req.cseq[0]} ACK")
        return ack


def response_address(request: SipRequest, source: Address) -> Address:
    """Where responses to `request` go (RFC 3261 §18.2.2 with RFC 3581 rport)."""
    if source.reliable:
        return source
    via: Via = request.top_via
    host = via.params.get("received") or via.host
    port = via.rport or via.port or 5060
    return Address(source.transport, host, port)
