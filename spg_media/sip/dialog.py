"""SIP dialogs (RFC 3261 §12), sans-IO: dialog state and building in-dialog requests.

A `Dialog` is created from the INVITE we answer (UAS) or from the 2xx we receive (UAC, for the demo
caller). It holds the route set taken from Record-Route, the remote target from Contact, and both
CSeq spaces; `new_request()` builds an in-dialog request with the Route headers and says where it
must be sent (the first loose route, else the remote target). `accept_remote_cseq()` applies the
rule that in-dialog requests must have increasing CSeq numbers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from spg_media.sip.message import SipRequest, SipResponse, new_branch
from spg_media.sip.uri import NameAddr, SipUri


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_party: str  # name-addr of our side with our tag (From of our requests)
    remote_party: str  # name-addr of the peer with its tag (To of our requests)
    remote_target: SipUri
    route_set: list[str]
    local_contact: str
    local_cseq: int = field(default_factory=lambda: random.randint(1, 20000))
    remote_cseq: int | None = None
    secure: bool = False

    @classmethod
    def as_uas(cls, invite: SipRequest, local_tag: str, local_contact: str) -> Dialog:
        """The dialog a 2xx to `invite` creates on our side (§12.1.1)."""
        from_ = invite.from_
        to = invite.to
        to.params["tag"] = local_tag
        contact = invite.headers.get("Contact")
        target = NameAddr.parse(contact).uri if contact else from_.uri
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=from_.tag or "",
            local_party=str(to),
            remote_party=str(from_),
            remote_target=target,
            route_set=list(invite.headers.get_all("Record-Route")),
            local_contact=local_contact,
            remote_cseq=invite.cseq[0],
            secure=invite.uri.lower().startswith("sips:"),
        )

    @classmethod
    def as_uac(cls, invite: SipRequest, response: SipResponse) -> Dialog:
        """The dialog a 2xx to our `invite` creates (§12.1.2): routes in reverse order."""
        contact = response.headers.get("Contact")
        target = NameAddr.parse(contact).uri if contact else SipUri.parse(invite.uri)
        return cls(
            call_id=invite.call_id,
            local_tag=invite.from_.tag or "",
            remote_tag=response.to.tag or "",
            local_party=str(invite.from_),
            remote_party=str(response.to),
            remote_target=target,
            route_set=list(reversed(response.headers.get_all("Record-Route"))),
            local_contact=invite.headers.get("Contact") or "",
            local_cseq=invite.cseq[0],
        )

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    def next_hop(self) -> SipUri:
        """Where an in-dialog request goes: the first route if loose routing, else the target."""
        if self.route_set:
            return NameAddr.parse(self.route_set[0]).uri
        return self.remote_target

    def new_request(
        self,
        method: str,
        via_transport: str,
        via_sent_by: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        cseq: int | None = None,
    ) -> SipRequest:
        """An in-dialog request (§12.2.1.1) with a fresh branch and the next local CSeq."""
        from spg_media.sip.message import Headers

        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        hdrs = Headers()
        hdrs.add(
            "Via", f"SIP/2.0/{via_transport.upper()} {via_sent_by};branch={new_branch()};rport"
        )
        hdrs.add("Max-Forwards", "70")
        hdrs.add("From", self.local_party)
        hdrs.add("To", self.remote_party)
        hdrs.add("Call-ID", self.call_id)
        hdrs.add("CSeq", f"{cseq} {method}")
        for route in self.route_set:
            hdrs.add("Route", route)
        if method in ("INVITE", "REFER", "SUBSCRIBE", "NOTIFY", "UPDATE"):
            hdrs.add("Contact", self.local_contact)
        for name, value in headers or ():
            hdrs.add(name, value)
        if content_type and body:
            hdrs.add("Content-Type", content_type)
        return SipRequest(method, str(self.remote_target), hdrs, body)

    def accept_remote_cseq(self, request: SipRequest) -> bool:
        """False if the request's CSeq is lower than the last one (answer 500, §12.2.2)."""
        number = request.cseq[0]
        if request.method == "ACK":
            return True
        if self.remote_cseq is not None and number <= self.remote_cseq:
            return False
        self.remote_cseq = number
        return True

    def update_target(self, request: SipRequest) -> None:
        """Target refresh (re-INVITE, UPDATE) replaces the remote target with the new Contact."""
        contact = request.headers.get("Contact")
        if contact:
            self.remote_target = NameAddr.parse(contact).uri
