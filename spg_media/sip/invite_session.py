"""One INVITE session (one leg of a call), sans-IO: RFC 3261 §13–15, RFC 3311, RFC 4028.

This module owns what happens to a dialog that an INVITE creates, from either side:

- as UAS (`InviteSession.as_uas`): a provisional or final answer to the INVITE (`accept`,
  `reject`), the wait for the ACK, CANCEL before the answer (487), then in the dialog: BYE,
  re-INVITE and UPDATE (an offer is answered by the `answer_offer` callback: our SDP or a
  refusal; an UPDATE without one is a session refresh), INFO and NOTIFY (200, then an event),
  OPTIONS; anything else 405. The session timer (`sip/session_timer.py`) of the INVITE is kept:
  UPDATE when we refresh, BYE when the session expires or a refresh gets 408/481.
- as UAC (`InviteSession.as_uac`): our INVITE; provisional answers (`Progress`), the 2xx
  (ACK sent, `Established`), a failure (`Failed`); `cancel()` (sent once a provisional came,
  RFC 3261 §9.1; given up after 64·T1 without a final answer); a 2xx that crosses our CANCEL
  is ACKed and ended with BYE. In the dialog, the same requests are answered as for a UAS.
- either: `bye(headers)`, `request(method, headers)` (REFER...), and the answers to what we
  sent (`response`): `RequestAnswered` for the caller of `request`.

It never touches a socket or a clock: inputs are parsed messages and `now`; outputs are
`Respond` / `Send` / `SendAck` / `Abandon` (`take_actions()`), typed events (`take_events()`)
and `next_wake()`, when `timer(now)` is due. The transaction layer stays in `sip/ua.py`:
`Send` is a client transaction whose final answer the shell feeds back to `response()`
(provisional ones too, for our INVITE), and the UA's `on_ack`, `on_cancel` and
`on_ack_timeout` become `receive_ack`, `receive_cancel` and `ack_timeout`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from spg_media.sip import session_timer
from spg_media.sip.dialog import Dialog
from spg_media.sip.message import Headers, SipRequest, SipResponse, make_response, new_branch
from spg_media.sip.transaction import T1

ACK_WAIT_S = 32.0  # 64·T1: how long our 2xx waits for its ACK (RFC 3261 §13.3.1.4)
CANCEL_WAIT_S = 64 * T1  # how long a cancelled INVITE waits for its final answer (§9.1)
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY, UPDATE"

Header = tuple[str, str]


# ---- the offer/answer callback ------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """An offer we will not take: the status (488, 500...) and the Warning text."""

    status: int
    detail: str


OfferAnswerer = Callable[[SipRequest], "bytes | Refusal"]
"""Given a re-INVITE or UPDATE carrying an offer, our SDP answer (the media already moved) or
why not. It is the only place the session meets media."""


# ---- actions (for the shell) --------------------------------------------------------------------


@dataclass(frozen=True)
class Respond:
    """Send `response` in the server transaction of `request`."""

    request: SipRequest
    response: SipResponse


@dataclass(frozen=True)
class Send:
    """Send `request` in a new client transaction (where: the session's peer, see `target`);
    its answers go back to `response()`."""

    request: SipRequest


@dataclass(frozen=True)
class SendAck:
    """An ACK for a 2xx: not a transaction, sent where in-dialog requests go."""

    request: SipRequest


@dataclass(frozen=True)
class Abandon:
    """Give up the client transaction of `request` (a cancelled INVITE that got no answer)."""

    request: SipRequest


Action = Respond | Send | SendAck | Abandon


# ---- events (for the call) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """UAC: a provisional answer (180, 183...) to our INVITE, 100 excepted."""

    response: SipResponse


@dataclass(frozen=True)
class Established:
    """UAC: our INVITE was answered 2xx (and ACKed); the body is the peer's SDP answer."""

    response: SipResponse


@dataclass(frozen=True)
class Failed:
    """UAC: our INVITE ended without a dialog (its final status; 408 for no answer at all)."""

    status: int
    reason: str
    response: SipResponse | None


@dataclass(frozen=True)
class Acked:
    """UAS: the ACK for our 2xx: the caller is there."""


@dataclass(frozen=True)
class Cancelled:
    """UAS: CANCEL before we answered; the INVITE got 487."""


EndReason = Literal["bye", "no-ack", "session-expired", "refresh-failed"]


@dataclass(frozen=True)
class Ended:
    """The dialog is over without our asking: the peer's BYE (`bye`, answered 200), no ACK for
    our 2xx, or the session timer (we sent BYE)."""

    reason: EndReason
    request: SipRequest | None = None  # the peer's BYE
    status: int | None = None  # the answer to our refresh, for refresh-failed


@dataclass(frozen=True)
class InDialogRequest:
    """INFO or NOTIFY from the peer, already answered 200."""

    request: SipRequest


@dataclass(frozen=True)
class RequestAnswered:
    """The final answer to a request of ours (`request()`, `bye()`)."""

    request: SipRequest
    response: SipResponse


Event = (
    Progress | Established | Failed | Acked | Cancelled | Ended | InDialogRequest | RequestAnswered
)


State = Literal["early", "answered", "confirmed", "ended"]


@dataclass
class InviteSession:
    """One leg's INVITE session; see the module docstring. Build with `as_uas` / `as_uac`."""

    role: Literal["uas", "uac"]
    invite: SipRequest
    local_tag: str
    contact: str
    via_transport: str
    via_sent_by: str
    answer_offer: OfferAnswerer | None = None
    public_host: str = "spg-media"  # the Warning header's agent
    timer: session_timer.SessionTimer | None = None
    dialog: Dialog | None = None
    state: State = "early"
    _actions: list[Action] = field(default_factory=list)
    _events: list[Event] = field(default_factory=list)
    _ack_deadline: float | None = None
    _cancel_deadline: float | None = None
    _cancel_wanted: bool = False
    _provisional_seen: bool = False
    _refresh_in_flight: SipRequest | None = None
    _own_requests: dict[int, SipRequest] = field(default_factory=dict)

    # ---- building ---------------------------------------------------------------------------

    @classmethod
    def as_uas(
        cls,
        invite: SipRequest,
        *,
        local_tag: str,
        via_transport: str,
        via_sent_by: str = "",
        contact: str = "",
        answer_offer: OfferAnswerer | None = None,
        public_host: str = "spg-media",
    ) -> InviteSession:
        """The session of an INVITE we received (nothing sent yet). `contact` and
        `via_sent_by` may be given later, before `accept`."""
        return cls(
            "uas", invite, local_tag, contact, via_transport, via_sent_by, answer_offer,
            public_host,
        )  # fmt: skip

    @classmethod
    def as_uac(
        cls,
        invite: SipRequest,
        *,
        via_transport: str,
        via_sent_by: str,
        answer_offer: OfferAnswerer | None = None,
        public_host: str = "spg-media",
    ) -> InviteSession:
        """The session of `invite`, ours (built by `new_invite`); `start()` sends it."""
        return cls(
            "uac",
            invite,
            invite.from_.tag or "",
            invite.headers.get("Contact") or "",
            via_transport,
            via_sent_by,
            answer_offer,
            public_host,
        )

    # ---- outputs ----------------------------------------------------------------------------

    def take_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def next_wake(self) -> float | None:
        wakes = [w for w in (self._ack_deadline, self._cancel_deadline) if w is not None]
        if self.timer is not None and self.state in ("answered", "confirmed"):
            wake = self.timer.next_wake()
            if wake is not None and self._refresh_in_flight is None:
                wakes.append(wake)
        return min(wakes) if wakes else None

    @property
    def ended(self) -> bool:
        return self.state == "ended"

    @property
    def answered(self) -> bool:
        """A 2xx went (UAS) or came (UAC) for the INVITE."""
        return self.dialog is not None

    # ---- UAS: answering the INVITE ------------------------------------------------------------

    def provisional(self, status: int, headers: Sequence[Header] = (), body: bytes = b"") -> None:
        """A 1xx (180, 183) to the INVITE, with our tag (a 183 may carry early SDP)."""
        if self.role != "uas" or self.state != "early":
            return
        response = make_response(
            self.invite,
            status,
            to_tag=self.local_tag,
            headers=[("Contact", self.contact), *headers],
            body=body,
            content_type="application/sdp" if body else None,
        )
        self._actions.append(Respond(self.invite, response))

    def accept(
        self,
        body: bytes,
        now: float,
        *,
        contact: str | None = None,
        headers: Sequence[Header] = (),
        timer: session_timer.SessionTimer | None = None,
    ) -> None:
        """Answer the INVITE 200 with our SDP; the dialog exists from now, the ACK is awaited."""
        if self.role != "uas" or self.state != "early":
            return
        if contact is not None:
            self.contact = contact
        self.timer = timer
        self.dialog = Dialog.as_uas(self.invite, self.local_tag, self.contact)
        response = make_response(
            self.invite,
            200,
            "OK",
            to_tag=self.local_tag,
            headers=[
                ("Contact", self.contact),
                ("Allow", ALLOW),
                ("Supported", "timer"),
                *(timer.response_headers() if timer is not None else []),
                *[("Record-Route", rr) for rr in self.invite.headers.get_all("Record-Route")],
                *headers,
            ],
            body=body,
            content_type="application/sdp" if body else None,
        )
        self.state = "answered"
        self._ack_deadline = now + ACK_WAIT_S
        self._actions.append(Respond(self.invite, response))

    def reject(
        self, status: int, reason: str | None = None, headers: Sequence[Header] = ()
    ) -> None:
        """A final non-2xx answer to the INVITE: the session ends without a dialog."""
        if self.role != "uas" or self.state != "early":
            return
        response = make_response(self.invite, status, reason, to_tag=self.local_tag,
                                 headers=list(headers))  # fmt: skip
        self.state = "ended"
        self._actions.append(Respond(self.invite, response))

    def receive_ack(self, ack: SipRequest, now: float) -> None:
        """The UA's `on_ack`: the ACK for our 2xx (retransmitted ones are ignored)."""
        if self.state == "answered" and ack.cseq[0] == self.invite.cseq[0]:
            self.state = "confirmed"
            self._ack_deadline = None
            self._events.append(Acked())

    def receive_cancel(self, now: float) -> None:
        """The UA's `on_cancel`: CANCEL matched the INVITE, not yet answered: 487."""
        if self.role != "uas" or self.state != "early":
            return
        self.reject(487)
        self._events.append(Cancelled())

    def ack_timeout(self, now: float) -> None:
        """The UA's `on_ack_timeout`: our 2xx was never ACKed (§13.3.1.4): BYE."""
        if self.state == "answered":
            self._ack_deadline = None
            self._end_with_bye("no-ack")

    # ---- UAC: our INVITE ----------------------------------------------------------------------

    def start(self) -> None:
        """Send our INVITE."""
        if self.role == "uac" and self.state == "early" and not self._own_requests:
            self._own_requests[self.invite.cseq[0]] = self.invite
            self._actions.append(Send(self.invite))

    def cancel(self, now: float) -> None:
        """Give up our INVITE: CANCEL once a provisional has come (§9.1); a 2xx that still
        comes is ACKed and ended with BYE."""
        if self.role != "uac" or self.state != "early" or self._cancel_wanted:
            return
        self._cancel_wanted = True
        self._cancel_deadline = now + CANCEL_WAIT_S
        if self._provisional_seen:
            self._actions.append(Send(cancel_for(self.invite)))

    # ---- either side ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        headers: Sequence[Header] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> SipRequest | None:
        """An in-dialog request of ours (REFER, INFO...); its answer comes as `RequestAnswered`.
        None when there is no dialog (not answered yet, or ended)."""
        if self.dialog is None or self.state == "ended":
            return None
        request = self.dialog.new_request(
            method, self.via_transport, self.via_sent_by, headers=list(headers), body=body,
            content_type=content_type,
        )  # fmt: skip
        self._own_requests[request.cseq[0]] = request
        self._actions.append(Send(request))
        return request

    def bye(self, headers: Sequence[Header] = ()) -> SipRequest | None:
        """End the dialog ourselves: BYE (its answer as `RequestAnswered`). Before an answer:
        a UAS rejects with 480... the caller decides (`reject`); a UAC cancels (`cancel`)."""
        if self.dialog is None or self.state == "ended":
            return None
        request = self.request("BYE", headers)
        self._finish()
        return request

    def response(self, request: SipRequest, response: SipResponse, now: float) -> None:
        """An answer to a request we sent (`Send`); for our INVITE, provisional ones too."""
        if request is self.invite or (
            request.method == "INVITE" and request.cseq[0] == self.invite.cseq[0]
        ):
            self._invite_response(response, now)
            return
        if response.status < 200:
            return
        self._own_requests.pop(request.cseq[0], None)
        if request is self._refresh_in_flight:
            self._refresh_in_flight = None
            assert self.timer is not None
            alive = self.timer.refresh_answered(response.status, response.headers, now)
            if not alive and self.state != "ended":
                self._end_with_bye("refresh-failed", response.status)
            return
        if request.method == "CANCEL":
            return
        self._events.append(RequestAnswered(request, response))

    def receive_request(self, request: SipRequest, now: float) -> None:
        """A request of the dialog (the UA's `on_request`), answered here."""
        dialog = self.dialog
        if dialog is None or request.to.tag != self.local_tag or self.state == "ended":
            self._respond(request, 481)
            return
        if not dialog.accept_remote_cseq(request):
            self._respond(request, 500, "Server Internal Error")
            return
        method = request.method
        if method == "BYE":
            self._respond(request, 200)
            self._finish()
            self._events.append(Ended("bye", request))
        elif method == "INVITE" or (method == "UPDATE" and request.body):
            self._offer(request, now)
        elif method == "UPDATE":  # without an offer: a session refresh (RFC 4028)
            self._respond(request, 200, headers=[("Allow", ALLOW), *self._refreshed(request, now)])
        elif method in ("INFO", "NOTIFY"):
            self._respond(request, 200)
            self._events.append(InDialogRequest(request))
        elif method == "OPTIONS":
            self._respond(request, 200, headers=[("Allow", ALLOW)])
        else:
            self._respond(request, 405, headers=[("Allow", ALLOW)])

    def timer_due(self, now: float) -> None:
        """Call when `next_wake()` has come."""
        if self._ack_deadline is not None and now >= self._ack_deadline:
            self.ack_timeout(now)
        if self._cancel_deadline is not None and now >= self._cancel_deadline:
            self._cancel_deadline = None
            if self.state == "early":
                self._actions.append(Abandon(self.invite))
        timer = self.timer
        if timer is None or self.state not in ("answered", "confirmed"):
            return
        if self._refresh_in_flight is not None:
            return
        due = timer.due(now)
        if due == "refresh":
            self._refresh_in_flight = self.request("UPDATE", timer.refresh_headers())
        elif due == "expired":
            self._end_with_bye("session-expired")

    # ---- internals ----------------------------------------------------------------------------

    def _respond(
        self, request: SipRequest, status: int, reason: str | None = None,
        headers: Sequence[Header] = (), body: bytes = b"",
    ) -> None:  # fmt: skip
        response = make_response(
            request, status, reason, headers=list(headers), body=body,
            content_type="application/sdp" if body else None,
        )  # fmt: skip
        self._actions.append(Respond(request, response))

    def _offer(self, request: SipRequest, now: float) -> None:
        assert self.dialog is not None
        answer = self.answer_offer(request) if self.answer_offer is not None else None
        if answer is None:
            answer = Refusal(488, "no media to change")
        if isinstance(answer, Refusal):
            warning = f'399 {self.public_host} "{answer.detail[:120]}"'
            self._respond(request, answer.status, headers=[("Warning", warning)])
            return
        self.dialog.update_target(request)
        self._respond(
            request,
            200,
            headers=[
                ("Contact", self.dialog.local_contact),
                ("Allow", ALLOW),
                *self._refreshed(request, now),
            ],
            body=answer,
        )

    def _refreshed(self, request: SipRequest, now: float) -> list[Header]:
        if self.timer is None:
            return []
        return self.timer.refreshed(request.headers, now)

    def _invite_response(self, response: SipResponse, now: float) -> None:
        if self.role != "uac":
            return
        status = response.status
        if status < 200:
            if self.state != "early":
                return
            first = not self._provisional_seen
            self._provisional_seen = True
            if first and self._cancel_wanted:
                self._actions.append(Send(cancel_for(self.invite)))
            if status > 100:
                self._events.append(Progress(response))
            return
        if status < 300:
            if self.dialog is None:
                self.dialog = Dialog.as_uac(self.invite, response)
            ack = self.dialog.new_request(
                "ACK", self.via_transport, self.via_sent_by, cseq=self.invite.cseq[0]
            )
            self._actions.append(SendAck(ack))
            if self.state != "early":
                return  # a retransmitted 2xx: ACKed again
            self._cancel_deadline = None
            if self._cancel_wanted:  # it crossed our CANCEL: the dialog is ended at once
                self.state = "confirmed"
                self.bye()
                self._events.append(Failed(487, "Request Terminated", None))
                return
            self.state = "confirmed"
            self._events.append(Established(response))
            return
        if self.state != "early":
            return
        self._cancel_deadline = None
        self.state = "ended"
        self._events.append(Failed(status, response.reason, response))

    def _end_with_bye(self, reason: EndReason, status: int | None = None) -> None:
        self.bye()
        self._events.append(Ended(reason, status=status))

    def _finish(self) -> None:
        self.state = "ended"
        self._ack_deadline = None
        self._cancel_deadline = None


def cancel_for(invite: SipRequest) -> SipRequest:
    """The CANCEL of our `invite` (RFC 3261 §9.1): its Request-URI, Call-ID, From, To, CSeq
    number, Route and its one Via (so it matches the INVITE's transaction)."""
    headers = Headers()
    headers.add("Via", str(invite.top_via))
    headers.add("Max-Forwards", "70")
    for name in ("From", "To", "Call-ID"):
        headers.add(name, invite.headers.get(name) or "")
    headers.add("CSeq", f"{invite.cseq[0]} CANCEL")
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    return SipRequest("CANCEL", invite.uri, headers)


def new_invite(
    *,
    request_uri: str,
    from_: str,
    to: str,
    call_id: str,
    contact: str,
    via_transport: str,
    via_sent_by: str,
    body: bytes,
    headers: Sequence[Header] = (),
    cseq: int = 1,
    local_tag: str,
) -> SipRequest:
    """An out-of-dialog INVITE of ours with an SDP offer (From gets `local_tag`)."""
    out = Headers()
    out.add("Via", f"SIP/2.0/{via_transport.upper()} {via_sent_by};branch={new_branch()};rport")
    out.add("Max-Forwards", "70")
    out.add("From", f"{from_};tag={local_tag}")
    out.add("To", to)
    out.add("Call-ID", call_id)
    out.add("CSeq", f"{cseq} INVITE")
    out.add("Contact", contact)
    out.add("Allow", ALLOW)
    for name, value in headers:
        out.add(name, value)
    if body:
        out.add("Content-Type", "application/sdp")
    return SipRequest("INVITE", request_uri, out, body)
