"""InviteSession, both roles, without sockets or sleeps: messages and `now` in, actions out."""

from __future__ import annotations

from collections.abc import Sequence

from spg_media.sip import session_timer
from spg_media.sip.invite_session import (
    ACK_WAIT_S,
    CANCEL_WAIT_S,
    Abandon,
    Acked,
    Cancelled,
    Ended,
    Established,
    Failed,
    InDialogRequest,
    InviteSession,
    Progress,
    Refusal,
    RequestAnswered,
    Respond,
    Send,
    SendAck,
    new_invite,
)
from spg_media.sip.message import SipRequest, SipResponse, make_response, parse_message

OFFER = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"


def request(
    method: str,
    cseq: int,
    *,
    to_tag: str | None = None,
    extra: str = "",
    body: bytes = b"",
    branch: str = "",
) -> SipRequest:
    to = "<sip:pay@192.0.2.9>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} sip:pay@192.0.2.9 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{branch or method}{cseq}\r\n"
        "From: <sip:pbx@192.0.2.1>;tag=caller\r\n"
        f"To: {to}\r\nCall-ID: c1@pbx\r\nCSeq: {cseq} {method}\r\n"
        "Contact: <sip:pbx@192.0.2.1:5060>\r\nRecord-Route: <sip:proxy.example;lr>\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    message = parse_message(text.encode() + body)
    assert isinstance(message, SipRequest)
    return message


def uas(answer_offer=None) -> InviteSession:  # type: ignore[no-untyped-def]
    return InviteSession.as_uas(
        request("INVITE", 1, body=OFFER),
        local_tag="ours",
        via_transport="udp",
        via_sent_by="192.0.2.9:5060",
        answer_offer=answer_offer,
        public_host="node.example",
    )


def responses(session: InviteSession) -> list[SipResponse]:
    return [a.response for a in session.take_actions() if isinstance(a, Respond)]


def sent(actions: Sequence[object]) -> list[SipRequest]:
    return [a.request for a in actions if isinstance(a, Send | SendAck)]


def answered_and_acked(timer: session_timer.SessionTimer | None = None) -> InviteSession:
    session = uas(lambda req: b"v=0 answer")
    session.accept(b"v=0 ours", 0.0, contact="<sip:spg@192.0.2.9>", timer=timer)
    session.receive_ack(request("ACK", 1, to_tag="ours", branch="ack"), 0.1)
    session.take_actions()
    session.take_events()
    return session


# ---- UAS ----------------------------------------------------------------------------------------


def test_uas_answers_200_and_waits_for_the_ack() -> None:
    session = uas()
    session.provisional(180)
    session.accept(b"v=0 ours", 10.0, contact="<sip:spg@192.0.2.9>")
    ringing, ok = responses(session)
    assert ringing.status == 180 and ringing.to.tag == "ours"
    assert ok.status == 200 and ok.to.tag == "ours" and ok.body == b"v=0 ours"
    assert ok.headers.get("Contact") == "<sip:spg@192.0.2.9>"
    assert ok.headers.get_all("Record-Route") == ["<sip:proxy.example;lr>"]
    assert "timer" in ok.headers.get_all("Supported")
    assert session.answered and session.next_wake() == 10.0 + ACK_WAIT_S
    session.receive_ack(request("ACK", 1, to_tag="ours", branch="ack"), 10.2)
    assert session.take_events() == [Acked()] and session.state == "confirmed"
    session.receive_ack(request("ACK", 1, to_tag="ours", branch="ack"), 10.3)
    assert session.take_events() == [] and session.next_wake() is None


def test_uas_without_an_ack_sends_bye_and_ends() -> None:
    session = uas()
    session.accept(b"v=0", 0.0, contact="<sip:spg@192.0.2.9>")
    session.take_actions()
    session.timer_due(ACK_WAIT_S - 0.1)
    assert session.take_actions() == [] and not session.ended
    session.timer_due(ACK_WAIT_S)
    (bye,) = sent(session.take_actions())
    assert bye.method == "BYE" and bye.uri == "sip:pbx@192.0.2.1:5060"
    assert bye.headers.get_all("Route") == ["<sip:proxy.example;lr>"]
    assert session.take_events() == [Ended("no-ack")] and session.ended


def test_uas_cancel_before_the_answer_is_487_and_after_it_nothing() -> None:
    session = uas()
    session.receive_cancel(1.0)
    (response,) = responses(session)
    assert response.status == 487 and session.take_events() == [Cancelled()]
    assert session.ended and not session.answered
    late = uas()
    late.accept(b"v=0", 0.0, contact="<sip:spg@192.0.2.9>")
    late.take_actions()
    late.receive_cancel(1.0)
    assert late.take_actions() == [] and late.take_events() == [] and not late.ended


def test_uas_reject_is_final() -> None:
    session = uas()
    session.reject(488, headers=[("Warning", '399 node "no codec"')])
    session.accept(b"v=0", 0.0, contact="<sip:spg@192.0.2.9>")  # too late: ignored
    (response,) = responses(session)
    assert response.status == 488 and response.headers.get("Warning") == '399 node "no codec"'
    assert session.ended and session.dialog is None


def test_in_dialog_requests_are_answered() -> None:
    session = answered_and_acked()
    session.receive_request(request("OPTIONS", 2, to_tag="ours"), 1.0)
    session.receive_request(request("MESSAGE", 3, to_tag="ours"), 1.0)
    session.receive_request(request("INFO", 4, to_tag="ours", body=b"Signal=5"), 1.0)
    session.receive_request(request("INFO", 4, to_tag="ours", branch="again"), 1.0)  # old CSeq
    session.receive_request(request("INFO", 9, to_tag="other"), 1.0)
    assert [r.status for r in responses(session)] == [200, 405, 200, 500, 481]
    (event,) = session.take_events()
    assert isinstance(event, InDialogRequest) and event.request.body == b"Signal=5"


def test_reinvite_is_answered_by_the_callback_or_refused_with_its_reason() -> None:
    offers: list[bytes] = []

    def answer(req: SipRequest) -> bytes | Refusal:
        offers.append(req.body)
        return Refusal(488, "SDES needs TLS") if b"bad" in req.body else b"v=0 new answer"

    session = uas(answer)
    session.accept(b"v=0", 0.0, contact="<sip:spg@192.0.2.9>")
    session.take_actions()
    moved = "Contact: <sip:pbx@192.0.2.77:5070>\r\n"
    session.receive_request(request("INVITE", 2, to_tag="ours", body=b"v=0 hold"), 1.0)
    session.receive_request(request("UPDATE", 3, to_tag="ours", body=b"v=0 bad"), 1.0)
    ok, refused = responses(session)
    assert offers == [b"v=0 hold", b"v=0 bad"]
    assert ok.status == 200 and ok.body == b"v=0 new answer"
    assert ok.headers.get("Content-Type") == "application/sdp"
    assert refused.status == 488
    assert refused.headers.get("Warning") == '399 node.example "SDES needs TLS"'
    session.receive_request(
        request("INVITE", 4, to_tag="ours", body=b"v=0", extra=moved.replace("Contact", "X-A")),
        1.0,
    )
    assert session.dialog is not None
    assert str(session.dialog.remote_target) == "sip:pbx@192.0.2.1:5060"


def test_bye_from_the_peer_ends_the_session() -> None:
    session = answered_and_acked()
    bye = request("BYE", 2, to_tag="ours")
    session.receive_request(bye, 5.0)
    (ok,) = responses(session)
    assert ok.status == 200 and session.take_events() == [Ended("bye", bye)] and session.ended
    assert session.bye() is None  # nothing more to end
    session.receive_request(request("INFO", 3, to_tag="ours"), 5.1)
    assert [r.status for r in responses(session)] == [481]


def test_our_requests_and_their_answers() -> None:
    session = answered_and_acked()
    refer = session.request("REFER", [("Refer-To", "<sip:back@pbx>")])
    assert refer is not None and refer.method == "REFER" and refer.to.tag == "caller"
    assert sent(session.take_actions()) == [refer]
    accepted = make_response(refer, 202)
    session.response(refer, accepted, 1.0)
    assert session.take_events() == [RequestAnswered(refer, accepted)]
    bye = session.bye([("X-SPG-Result", "approved")])
    assert bye is not None and bye.headers.get("X-SPG-Result") == "approved"
    assert bye.cseq[0] == refer.cseq[0] + 1 and session.ended


def test_session_timer_we_refresh_and_a_481_ends_the_call() -> None:
    timer = session_timer.SessionTimer(interval=120, refresher="uas", last_refresh=0.0)
    session = answered_and_acked(timer)
    assert session.next_wake() == 60.0
    session.timer_due(60.0)
    (update,) = sent(session.take_actions())
    assert (
        update.method == "UPDATE" and update.headers.get("Session-Expires") == "120;refresher=uas"
    )
    assert session.next_wake() is None  # one refresh at a time
    session.response(update, make_response(update, 200), 60.5)
    assert session.next_wake() == 120.5 and session.take_events() == []
    session.timer_due(120.5)
    (second,) = sent(session.take_actions())
    session.response(second, make_response(second, 481), 121.0)
    (bye,) = sent(session.take_actions())
    assert bye.method == "BYE" and session.take_events() == [Ended("refresh-failed", status=481)]


def test_session_timer_a_silent_refresher_ends_the_call_and_a_refresh_keeps_it() -> None:
    timer = session_timer.SessionTimer(interval=90, refresher="uac", last_refresh=0.0)
    session = answered_and_acked(timer)
    session.receive_request(request("UPDATE", 2, to_tag="ours", extra="Supported: timer\r\n"), 50)
    (ok,) = responses(session)
    assert ok.status == 200 and ok.headers.get("Session-Expires") == "90;refresher=uac"
    assert session.next_wake() == 50 + 90 - 30
    session.timer_due(110.0)
    (bye,) = sent(session.take_actions())
    assert bye.method == "BYE" and session.take_events() == [Ended("session-expired")]


# ---- UAC ----------------------------------------------------------------------------------------


def uac() -> InviteSession:
    invite = new_invite(
        request_uri="sip:agent@192.0.2.50:5080",
        from_="<sip:customer@192.0.2.1>",
        to="<sip:agent@192.0.2.50>",
        call_id="leg2@node",
        contact="<sip:spg@192.0.2.9:5060>",
        via_transport="udp",
        via_sent_by="192.0.2.9:5060",
        body=OFFER,
        headers=[("X-SPG-Assist-Call", "abc")],
        local_tag="b2b",
    )
    session = InviteSession.as_uac(invite, via_transport="udp", via_sent_by="192.0.2.9:5060")
    session.start()
    return session


def answer_to(invite: SipRequest, status: int, body: bytes = b"") -> SipResponse:
    return make_response(
        invite,
        status,
        to_tag="agent" if status > 100 else None,
        headers=[("Contact", "<sip:agent@192.0.2.51:5090>")] if status > 100 else [],
        body=body,
        content_type="application/sdp" if body else None,
    )


def test_uac_sends_its_invite_relays_progress_and_acks_the_2xx() -> None:
    session = uac()
    (invite,) = sent(session.take_actions())
    assert invite is session.invite and invite.headers.get("X-SPG-Assist-Call") == "abc"
    assert invite.from_.tag == "b2b" and invite.body == OFFER
    session.response(invite, answer_to(invite, 100), 0.1)
    assert session.take_events() == []
    ringing = answer_to(invite, 180)
    session.response(invite, ringing, 0.2)
    assert session.take_events() == [Progress(ringing)]
    ok = answer_to(invite, 200, b"v=0 agent")
    session.response(invite, ok, 1.0)
    (ack,) = sent(session.take_actions())
    assert ack.method == "ACK" and ack.cseq == (invite.cseq[0], "ACK")
    assert ack.uri == "sip:agent@192.0.2.51:5090" and ack.to.tag == "agent"
    assert session.take_events() == [Established(ok)] and session.state == "confirmed"
    session.response(invite, ok, 1.5)  # retransmitted: ACKed again, nothing new
    assert [r.method for r in sent(session.take_actions())] == ["ACK"]
    assert session.take_events() == []
    bye = request("BYE", 7, to_tag="b2b")
    session.receive_request(bye, 9.0)
    assert session.take_events() == [Ended("bye", bye)]


def test_uac_failure_is_reported_with_its_status() -> None:
    session = uac()
    (invite,) = sent(session.take_actions())
    busy = answer_to(invite, 486)
    session.response(invite, busy, 0.5)
    assert session.take_events() == [Failed(486, "Busy Here", busy)] and session.ended
    assert session.take_actions() == []  # the transaction layer ACKs a non-2xx itself


def test_uac_cancel_waits_for_a_provisional_then_matches_the_invite() -> None:
    session = uac()
    (invite,) = sent(session.take_actions())
    session.cancel(0.1)
    assert session.take_actions() == []  # nothing heard yet: no CANCEL (RFC 3261 §9.1)
    session.response(invite, answer_to(invite, 100), 0.2)
    (cancel,) = sent(session.take_actions())
    assert cancel.method == "CANCEL" and cancel.uri == invite.uri
    assert cancel.top_via.branch == invite.top_via.branch
    assert cancel.cseq == (invite.cseq[0], "CANCEL") and cancel.call_id == invite.call_id
    session.response(cancel, make_response(cancel, 200), 0.3)
    terminated = answer_to(invite, 487)
    session.response(invite, terminated, 0.4)
    assert session.take_events() == [Failed(487, "Request Terminated", terminated)]


def test_uac_a_2xx_crossing_the_cancel_is_acked_and_ended() -> None:
    session = uac()
    (invite,) = sent(session.take_actions())
    session.response(invite, answer_to(invite, 180), 0.1)
    session.take_events()
    session.cancel(0.2)
    assert [r.method for r in sent(session.take_actions())] == ["CANCEL"]
    session.response(invite, answer_to(invite, 200, b"v=0"), 0.3)
    assert [r.method for r in sent(session.take_actions())] == ["ACK", "BYE"]
    assert session.take_events() == [Failed(487, "Request Terminated", None)] and session.ended


def test_uac_a_cancelled_invite_with_no_answer_is_abandoned() -> None:
    session = uac()
    (invite,) = sent(session.take_actions())
    session.response(invite, answer_to(invite, 180), 0.1)
    session.cancel(1.0)
    session.take_actions()
    assert session.next_wake() == 1.0 + CANCEL_WAIT_S
    session.timer_due(1.0 + CANCEL_WAIT_S)
    assert session.take_actions() == [Abandon(invite)]
    timeout = make_response(invite, 408)  # what the UA answers for an abandoned transaction
    session.response(invite, timeout, 40.0)
    assert session.take_events()[-1] == Failed(408, "Request Timeout", timeout)
