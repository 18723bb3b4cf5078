"""The RFC 3261 §17 transaction layer, driven with messages and a clock: no sockets, no sleeps."""

from __future__ import annotations

import dataclasses

from spg_media.sip.message import SipRequest, SipResponse, make_response, parse_message
from spg_media.sip.transaction import (
    T1,
    AckReceived,
    AckTimeout,
    Address,
    CancelReceived,
    ClientTimeout,
    RequestReceived,
    ResponseReceived,
    TransactionLayer,
    response_address,
)

PEER = Address("udp", "127.0.0.1", 5062)
PEER_TCP = Address("tcp", "127.0.0.1", 40000)


def request(
    method: str = "INVITE", branch: str = "z9hG4bK-1", cseq: int = 1, to_tag: str = ""
) -> SipRequest:
    to = "<sip:pay@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} sip:pay@127.0.0.1:5080 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch={branch};rport=5062;received=127.0.0.1\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:c@127.0.0.1>;tag=abc\r\n"
        f"To: {to}\r\n"
        "Call-ID: call-1@127.0.0.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    message = parse_message(text.encode())
    assert isinstance(message, SipRequest)
    return message


def statuses(layer: TransactionLayer) -> list[int]:
    out = []
    for item in layer.take_outgoing():
        message = parse_message(item.data)
        out.append(message.status if isinstance(message, SipResponse) else 0)
    return out


def test_invite_gets_100_trying_and_event() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive_request(invite, PEER, 0.0)
    assert statuses(layer) == [100]
    events = layer.take_events()
    assert len(events) == 1 and isinstance(events[0], RequestReceived)


def test_retransmitted_invite_gets_last_response_not_a_new_event() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive_request(invite, PEER, 0.0)
    layer.take_outgoing()
    layer.take_events()
    layer.receive_request(request(), PEER, 0.3)
    assert statuses(layer) == [100]
    assert layer.take_events() == []
    layer.respond(invite, make_response(invite, 180, to_tag="t"), 0.4)
    layer.take_outgoing()
    layer.receive_request(request(), PEER, 0.5)
    assert statuses(layer) == [180]


def test_2xx_retransmitted_until_ack_then_stops() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive_request(invite, PEER, 0.0)
    layer.take_outgoing()
    layer.respond(invite, make_response(invite, 200, to_tag="t"), 1.0)
    assert statuses(layer) == [200]
    # Timer fires at T1, then 2·T1 later, capped at T2
    times = []
    now = 1.0
    for _ in range(5):
        wake = layer.next_wake()
        assert wake is not None
        now = wake
        layer.handle_timer(now)
        if statuses(layer) == [200]:
            times.append(round(now - 1.0, 3))
    assert times[:4] == [T1, 3 * T1, 7 * T1, 15 * T1]
    ack = request("ACK", branch="z9hG4bK-other", to_tag="t")
    layer.receive_request(ack, PEER, now + 0.1)
    events = layer.take_events()
    assert any(isinstance(e, AckReceived) for e in events[-1:])
    layer.handle_timer(now + 100)
    assert statuses(layer) == []


def test_2xx_never_acked_reports_ack_timeout() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive_request(invite, PEER, 0.0)
    layer.take_events()
    layer.respond(invite, make_response(invite, 200, to_tag="t"), 0.0)
    now = 0.0
    while (wake := layer.next_wake()) is not None:
        now = wake
        layer.handle_timer(now)
    assert now == 64 * T1
    assert [type(e) for e in layer.take_events()] == [AckTimeout]


def test_2xx_over_tcp_is_not_retransmitted() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive_request(invite, PEER_TCP, 0.0)
    layer.take_outgoing()
    layer.respond(invite, make_response(invite, 200, to_tag="t"), 0.0)
    assert statuses(layer) == [200]
    layer.handle_timer(10.0)
    assert statuses(layer) == []


def test_error_response_retransmitted_until_ack_with_same_branch() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive_request(invite, PEER, 0.0)
    layer.take_outgoing()
    layer.respond(invite, make_response(invite, 486, to_tag="t"), 0.0)
    assert statuses(layer) == [486]
    layer.handle_timer(T1)
    assert statuses(layer) == [486]
    layer.take_events()
    layer.receive_request(request("ACK", to_tag="t"), PEER, T1 + 0.1)
    assert layer.take_events() == []  # the ACK of a non-2xx ends in the transaction
    layer.handle_timer(10.0)
    assert statuses(layer) == []


def test_non_invite_response_cached_for_retransmissions() -> None:
    layer = TransactionLayer()
    bye = request("BYE", branch="z9hG4bK-bye", cseq=2, to_tag="t")
    layer.receive_request(bye, PEER, 0.0)
    assert statuses(layer) == []  # no 100 for non-INVITE
    layer.respond(bye, make_response(bye, 200), 0.1)
    assert statuses(layer) == [200]
    layer.receive_request(request("BYE", branch="z9hG4bK-bye", cseq=2, to_tag="t"), PEER, 0.6)
    assert statuses(layer) == [200]
    assert len(layer.take_events()) == 1


def test_an_answered_info_keeps_no_key_press_for_its_retransmissions() -> None:
    """Timer J holds a non-INVITE transaction 32 s over UDP: an INFO's body (a key press)
    must not stay with it, or the transactions of one card would spell the card."""
    layer = TransactionLayer()
    presses = []
    for n, key in enumerate("4111"):
        info = dataclasses.replace(
            request("INFO", branch=f"z9hG4bK-info{n}", cseq=2 + n, to_tag="t"),
            body=f"Signal={key}\r\nDuration=160\r\n".encode(),
        )
        presses.append(info)
        layer.receive_request(info, PEER, 0.0)
        layer.respond(info, make_response(info, 200), 0.1)
    assert statuses(layer) == [200] * 4
    bodies = []
    for event in layer.take_events():
        assert isinstance(event, RequestReceived)
        bodies.append(event.request.body)
    assert bodies == [p.body for p in presses]
    assert all(tx.request.body == b"" for tx in layer.server.values())
    assert not any(b"Signal" in tx.last_response_bytes for tx in layer.server.values())
    # a retransmission is still answered from what is kept
    layer.receive_request(presses[0], PEER, 1.0)
    assert statuses(layer) == [200] and layer.take_events() == []


def test_cancel_matches_pending_invite() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive_request(invite, PEER, 0.0)
    layer.take_outgoing()
    layer.take_events()
    layer.receive_request(request("CANCEL"), PEER, 0.5)
    assert statuses(layer) == [200]
    events = layer.take_events()
    assert len(events) == 1 and isinstance(events[0], CancelReceived)


def test_cancel_without_invite_gets_481() -> None:
    layer = TransactionLayer()
    layer.receive_request(request("CANCEL", branch="z9hG4bK-none"), PEER, 0.0)
    assert statuses(layer) == [481]
    assert layer.take_events() == []


def client_request(method: str = "BYE") -> SipRequest:
    return request(method, branch="z9hG4bK-client", cseq=5, to_tag="t")


def response_to(req: SipRequest, status: int) -> SipResponse:
    data = make_response(req, status).to_bytes()
    message = parse_message(data)
    assert isinstance(message, SipResponse)
    return message


def test_client_non_invite_retransmits_with_timer_e_and_times_out() -> None:
    layer = TransactionLayer()
    bye = client_request()
    layer.send_request(bye, PEER, 0.0)
    assert len(layer.take_outgoing()) == 1
    sends = []
    while (wake := layer.next_wake()) is not None:
        layer.handle_timer(wake)
        if layer.take_outgoing():
            sends.append(wake)
    assert sends[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]  # doubling up to T2 = 4 s
    events = layer.take_events()
    assert [type(e) for e in events] == [ClientTimeout]


def test_client_final_response_stops_retransmission() -> None:
    layer = TransactionLayer()
    bye = client_request()
    layer.send_request(bye, PEER, 0.0)
    layer.take_outgoing()
    layer.receive_response(response_to(bye, 200), 0.1)
    events = layer.take_events()
    assert isinstance(events[0], ResponseReceived) and events[0].response.status == 200
    layer.handle_timer(1.0)
    assert layer.take_outgoing() == []
    # a retransmitted 200 is absorbed
    layer.receive_response(response_to(bye, 200), 1.2)
    assert layer.take_events() == []


def test_client_over_tcp_does_not_retransmit() -> None:
    layer = TransactionLayer()
    layer.send_request(client_request(), PEER_TCP, 0.0)
    layer.take_outgoing()
    layer.handle_timer(5.0)
    assert layer.take_outgoing() == []


def test_fail_destination_reports_timeout() -> None:
    layer = TransactionLayer()
    layer.send_request(client_request(), PEER_TCP, 0.0)
    layer.fail_destination(PEER_TCP)
    assert [type(e) for e in layer.take_events()] == [ClientTimeout]


def test_response_address_uses_rport_and_received() -> None:
    invite = request()
    assert response_address(invite, PEER) == Address("udp", "127.0.0.1", 5062)
    assert response_address(invite, PEER_TCP) == PEER_TCP


def test_response_address_ignores_an_rport_that_is_no_port() -> None:
    # Found by fuzzing (fuzz/run.py sip_transaction): the sender's own rport value went to
    # int(): "abc" raised (the request got no answer at all) and 99999 made an address no
    # socket can send to (plain asyncio then closes the node's whole UDP transport).
    for rport in ("abc", "99999", "\u00b2", "0"):
        text = request().to_bytes().replace(b"rport=5062", f"rport={rport}".encode())
        invite = parse_message(text)
        assert isinstance(invite, SipRequest)
        assert response_address(invite, PEER) == Address("udp", "127.0.0.1", 5062)
        layer = TransactionLayer()
        layer.receive_request(invite, PEER, 0.0)
        assert [out.address.port for out in layer.take_outgoing()] == [5062]


def test_a_ringing_invite_waits_past_timer_b_until_answered_or_abandoned() -> None:
    layer = TransactionLayer()
    invite = client_request("INVITE")
    layer.send_request(invite, PEER, 0.0)
    layer.take_outgoing()
    layer.receive_response(response_to(invite, 180), 0.2)
    assert [e.response.status for e in layer.take_events()] == [180]  # type: ignore[union-attr]
    layer.handle_timer(64 * T1 + 10)  # timer B stopped with the provisional: no 408
    assert layer.take_events() == [] and layer.take_outgoing() == []
    layer.abandon(invite)  # the TU gave up (cancelled, no answer to that either)
    assert [type(e) for e in layer.take_events()] == [ClientTimeout]
    layer.abandon(invite)
    assert layer.take_events() == []
    silent = request("INVITE", branch="z9hG4bK-silent", cseq=6)
    layer.send_request(silent, PEER, 0.0)
    while (wake := layer.next_wake()) is not None:  # no answer at all: timer B
        layer.handle_timer(wake)
    assert [type(e) for e in layer.take_events()] == [ClientTimeout]
