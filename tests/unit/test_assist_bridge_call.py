"""The assisted call's signalling (the B2BUA) with fake peers: a UA that records what the node
sends and lets the test answer, and a media engine that records the bridge."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable
from typing import Any

import pytest

from spg_media.assist.bridge_call import AssistCall, agent_target, is_assist_invite
from spg_media.config import load_config
from spg_media.dtmf.rfc4733 import DtmfEvent
from spg_media.rtp.sdes import offer_attributes
from spg_media.sip.message import SipRequest, SipResponse, make_response, parse_message
from spg_media.sip.sdp import SessionDescription, build_answer, build_offer, negotiate
from spg_media.sip.transaction import Address

CUSTOMER = Address("udp", "192.0.2.1", 5060)
AGENT = Address("udp", "192.0.2.50", 5080)


class FakeUa:
    """What the node's UA would send, and the pending client transactions to answer."""

    def __init__(self) -> None:
        self.dialogs: dict[str, Any] = {}
        self.responses: list[SipResponse] = []
        self.requests: list[tuple[SipRequest, asyncio.Future[SipResponse]]] = []
        self.provisional: dict[SipRequest, Callable[[SipResponse], None]] = {}
        self.acks: list[SipRequest] = []
        self.resolved: list[str] = []

    def respond(self, request: SipRequest, response: SipResponse) -> None:
        self.responses.append(response)

    async def request(
        self,
        request: SipRequest,
        destination: Address,
        on_provisional: Callable[[SipResponse], None] | None = None,
    ) -> SipResponse:
        future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        self.requests.append((request, future))
        if on_provisional is not None:
            self.provisional[request] = on_provisional
        return await future

    def send_ack(self, ack: SipRequest, destination: Address) -> None:
        self.acks.append(ack)

    def abandon(self, request: SipRequest) -> None:
        pass

    async def resolve(self, uri: Any) -> Address:
        self.resolved.append(str(uri))
        peer = AGENT if uri.host == "192.0.2.50" else CUSTOMER
        return Address(uri.params.get("transport", "udp"), peer.host, peer.port)

    def contact(self, transport: str, user: str = "spg", *, secure: bool = False) -> str:
        return "<sip:spg@192.0.2.9:5060>"

    def sent_by(self, transport: str) -> str:
        return "192.0.2.9:5060"

    def sent(self, method: str) -> list[tuple[SipRequest, asyncio.Future[SipResponse]]]:
        return [(r, f) for r, f in self.requests if r.method == method]

    def answer(self, method: str, status: int, body: bytes = b"", index: int = -1) -> SipRequest:
        request, future = self.sent(method)[index]
        response = make_response(
            request,
            status,
            to_tag="agent-tag",
            headers=[("Contact", "<sip:agent@192.0.2.50:5080>")],
            body=body,
            content_type="application/sdp" if body else None,
        )
        future.set_result(response)
        return request


class FakeMedia:
    def __init__(self) -> None:
        self.ports = iter(range(40000, 40100, 2))
        self.attached: dict[int, Any] = {}
        self.bridged: list[tuple[int, int, str]] = []
        self.closed: list[int] = []

    async def open(self) -> int:
        return next(self.ports)

    def attach(self, port: int, session: Any) -> None:
        self.attached[port] = session

    def bridge(self, customer_port: int, agent_port: int, mask: str) -> None:
        self.bridged.append((customer_port, agent_port, mask))

    def unbridge(self, customer_port: int) -> None:
        self.bridged = [b for b in self.bridged if b[0] != customer_port]

    def close(self, port: int) -> None:
        self.closed.append(port)


class FakeAssist:
    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def call_started(self, handle: Any) -> None:
        self.seen.append(("started", handle.call_id, handle.transaction_hint or ""))

    def digit(self, call_id: str, key: str, now: float) -> None:
        self.seen.append(("digit", key))

    def prompt_done(self, call_id: str, now: float) -> None:
        self.seen.append(("prompt_done",))

    def call_ended(self, call_id: str, now: float) -> None:
        self.seen.append(("ended", call_id))


def customer_invite(
    extra: str = "", uri: str = "sip:assist@192.0.2.9", crypto: list[Any] | None = None
) -> SipRequest:
    body = build_offer(
        local_address="192.0.2.1", local_port=30000, session_id=1, version=1,
        codecs=("PCMA",), dtmf_pt=101, crypto_lines=crypto or [],
    )  # fmt: skip
    text = (
        f"INVITE {uri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKcust1\r\n"
        'From: "Customer" <sip:+4915551234@192.0.2.1>;tag=cust\r\n'
        f"To: <{uri}>\r\nCall-ID: customer-leg@pbx\r\nCSeq: 10 INVITE\r\n"
        "Contact: <sip:customer@192.0.2.1:5060>\r\n"
        f"{extra}Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    message = parse_message(text.encode() + body)
    assert isinstance(message, SipRequest)
    return message


def in_dialog(method: str, cseq: int, call_id: str, to_tag: str, body: bytes = b"", **h: str):  # type: ignore[no-untyped-def]
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in h.items())
    text = (
        f"{method} sip:spg@192.0.2.9:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bK{method}{cseq}\r\n"
        f"From: <sip:peer@192.0.2.77>;tag=peer\r\nTo: <sip:spg@192.0.2.9>;tag={to_tag}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    message = parse_message(text.encode() + body)
    assert isinstance(message, SipRequest)
    return message


AGENT_ANSWER = build_offer(
    local_address="192.0.2.50", local_port=50000, session_id=7, version=1,
    codecs=("PCMU",), dtmf_pt=96,
)  # fmt: skip


def node(extra_env: dict[str, str] | None = None) -> tuple[Any, FakeUa, FakeMedia, FakeAssist]:
    env = {"SPG_ASSIST__AGENT_URI": "sip:queue@192.0.2.50:5080", **(extra_env or {})}
    config = load_config(None, env=env)
    ua, media, assist = FakeUa(), FakeMedia(), FakeAssist()
    services = types.SimpleNamespace(
        config=config, ua=ua, media=media, prompts=None, calls={}, observer=None
    )
    return services, ua, media, assist


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def started_call(
    invite: SipRequest | None = None,
    source: Address = CUSTOMER,
    env: dict[str, str] | None = None,
) -> tuple[AssistCall, asyncio.Task[None], FakeUa, FakeMedia, FakeAssist]:
    services, ua, media, assist = node(env)
    call = AssistCall(services, assist, invite or customer_invite(), source)  # type: ignore[arg-type]
    task = asyncio.get_running_loop().create_task(call.run())
    await settle()
    return call, task, ua, media, assist


def statuses(ua: FakeUa) -> list[int]:
    return [r.status for r in ua.responses]


def test_the_agent_is_called_ringing_relayed_and_both_answered_then_bye_ends_the_other() -> None:
    async def body() -> None:
        invite = customer_invite("X-SPG-Transaction: tx-42\r\n")
        call, task, ua, media, assist = await started_call(invite)
        ((agent_invite, _),) = ua.sent("INVITE")
        assert agent_invite.uri == "sip:queue@192.0.2.50:5080"
        assert agent_invite.headers.get("X-SPG-Assist-Call") == call.call_id
        assert agent_invite.headers.get("X-SPG-Transaction") == "tx-42"
        assert agent_invite.call_id != invite.call_id and agent_invite.from_.tag != "cust"
        assert agent_invite.from_.uri.user == "+4915551234"  # who calls, for the agent
        offer = SessionDescription.parse(agent_invite.body).media[0]
        assert offer.proto == "RTP/AVP" and offer.port == 40002  # the agent leg's own port
        ua.provisional[agent_invite](make_response(agent_invite, 180, to_tag="agent-tag"))
        assert statuses(ua) == [180]
        ua.answer("INVITE", 200, AGENT_ANSWER)
        await settle()
        assert [a.method for a in ua.acks] == ["ACK"]
        ok = ua.responses[-1]
        assert ok.status == 200 and ok.to.tag == call.customer.local_tag
        answer = SessionDescription.parse(ok.body).media[0]
        assert answer.port == 40000 and answer.formats[0] == 8  # the customer's codec, PCMA
        assert media.bridged == [(40000, 40002, "tone")]
        assert media.attached[40000].codec == "PCMA" and media.attached[40002].codec == "PCMU"
        assert media.attached[40002].dtmf_payload_type == 96
        assert assist.seen == [("started", call.call_id, "tx-42")]
        # The customer's INFO key goes to the assist service and nowhere else.
        customer_tag = call.customer.local_tag
        call.customer_leg.on_request(
            in_dialog("INFO", 11, invite.call_id, customer_tag, b"Signal=7\r\nDuration=160\r\n",
                      Content_Type="application/dtmf-relay"),
            CUSTOMER,
        )  # fmt: skip
        assert assist.seen[-1] == ("digit", "7") and statuses(ua)[-1] == 200
        assert [r.method for r, _ in ua.requests] == ["INVITE"]  # nothing went to the agent
        # The agent holds: answered on its leg only.
        assert call.agent is not None and call.agent_leg is not None
        hold = build_offer(
            local_address="192.0.2.50", local_port=50000, session_id=7, version=2,
            codecs=("PCMU",), dtmf_pt=96, direction="sendonly",
        )  # fmt: skip
        agent_id, agent_tag = agent_invite.call_id, call.agent.local_tag
        call.agent_leg.on_request(
            in_dialog("INVITE", 2, agent_id, agent_tag, hold, Content_Type="application/sdp"),
            AGENT,
        )
        reinvite_ok = ua.responses[-1]
        assert reinvite_ok.status == 200 and b"a=recvonly" in reinvite_ok.body
        assert media.attached[40002].hold and not media.attached[40000].hold
        assert [r.method for r, _ in ua.requests] == ["INVITE"]
        # The agent hangs up: the customer gets BYE.
        call.agent_leg.on_request(in_dialog("BYE", 3, agent_id, agent_tag), AGENT)
        await settle()
        assert statuses(ua)[-1] == 200
        ((bye, _),) = ua.sent("BYE")
        assert bye.call_id == invite.call_id and bye.uri == "sip:customer@192.0.2.1:5060"
        ua.answer("BYE", 200)
        await asyncio.wait_for(task, 2)
        assert media.bridged == [] and sorted(media.closed) == [40000, 40002]
        assert assist.seen[-1] == ("ended", call.call_id)
        assert invite.call_id not in ua.dialogs and agent_id not in ua.dialogs

    asyncio.run(body())


def test_a_customer_bye_ends_the_agent_leg() -> None:
    async def body() -> None:
        call, task, ua, _media, _assist = await started_call()
        ua.answer("INVITE", 200, AGENT_ANSWER)
        await settle()
        tag = call.customer.local_tag
        call.customer_leg.on_ack(in_dialog("ACK", 10, "customer-leg@pbx", tag))
        call.customer_leg.on_request(in_dialog("BYE", 11, "customer-leg@pbx", tag), CUSTOMER)
        await settle()
        ((bye, _),) = ua.sent("BYE")
        assert bye.call_id == ua.sent("INVITE")[0][0].call_id and bye.to.tag == "agent-tag"
        ua.answer("BYE", 200)
        await asyncio.wait_for(task, 2)

    asyncio.run(body())


def test_an_agent_failure_is_relayed_as_its_status() -> None:
    async def body() -> None:
        _call, task, ua, media, assist = await started_call()
        ua.answer("INVITE", 486)
        await asyncio.wait_for(task, 2)
        assert statuses(ua) == [486] and media.bridged == [] and assist.seen == []
        assert sorted(media.closed) == [40000, 40002]

    asyncio.run(body())


@pytest.mark.parametrize(("agent", "customer"), [(302, 480), (407, 403), (603, 603)])
def test_agent_answers_the_node_cannot_follow_become_a_plain_failure(
    agent: int, customer: int
) -> None:
    async def body() -> None:
        _call, task, ua, _media, _assist = await started_call()
        ua.answer("INVITE", agent)
        await asyncio.wait_for(task, 2)
        assert statuses(ua) == [customer]

    asyncio.run(body())


def test_a_customer_cancel_cancels_the_agent_leg() -> None:
    async def body() -> None:
        call, task, ua, _media, assist = await started_call()
        ((agent_invite, _),) = ua.sent("INVITE")
        ua.provisional[agent_invite](make_response(agent_invite, 180, to_tag="agent-tag"))
        call.customer_leg.on_cancel(call.invite)
        await settle()
        assert statuses(ua) == [180, 487]
        ((cancel, _),) = ua.sent("CANCEL")
        assert cancel.top_via.branch == agent_invite.top_via.branch
        await asyncio.wait_for(task, 2)
        ua.answer("CANCEL", 200)
        ua.answer("INVITE", 487)
        await settle()
        assert assist.seen == []

    asyncio.run(body())


def test_an_agent_ringing_past_ring_timeout_s_is_cancelled_and_the_customer_gets_480() -> None:
    async def body() -> None:
        _call, task, ua, _media, assist = await started_call(
            env={"SPG_ASSIST__RING_TIMEOUT_S": "0.2"}
        )
        ((agent_invite, _),) = ua.sent("INVITE")
        ua.provisional[agent_invite](make_response(agent_invite, 180, to_tag="agent-tag"))
        await settle()
        assert statuses(ua) == [180]
        await asyncio.sleep(0.4)
        await settle()
        assert statuses(ua) == [180, 480]
        ((cancel, _),) = ua.sent("CANCEL")
        assert cancel.top_via.branch == agent_invite.top_via.branch
        ua.answer("CANCEL", 200)
        ua.answer("INVITE", 487)
        await asyncio.wait_for(task, 2)
        assert assist.seen == []

    asyncio.run(body())


def test_no_agent_target_is_480_and_a_bad_one_400() -> None:
    async def body() -> None:
        services, ua, _media, assist = node({"SPG_ASSIST__AGENT_URI": ""})
        call = AssistCall(services, assist, customer_invite(), CUSTOMER)  # type: ignore[arg-type]
        await call.run()
        bad = AssistCall(
            services,
            assist,  # type: ignore[arg-type]
            customer_invite("X-SPG-Agent: <http://agent.example/>\r\n"),
            CUSTOMER,
        )
        await bad.run()
        assert statuses(ua) == [480, 400] and ua.requests == []

    asyncio.run(body())


def test_entry_and_agent_target() -> None:
    config = load_config(None, env={"SPG_ASSIST__AGENT_URI": "sip:queue@pbx.example"})
    assert is_assist_invite(customer_invite(), config)
    plain = customer_invite(uri="sip:pay@192.0.2.9")
    assert not is_assist_invite(plain, config)
    assert is_assist_invite(customer_invite("X-SPG-Mode: assist\r\n", "sip:pay@192.0.2.9"), config)
    assert agent_target(plain, config) == "sip:queue@pbx.example"
    by_param = customer_invite(uri="sip:assist@192.0.2.9;x-spg-agent=sip%3A2001%40pbx.example")
    assert agent_target(by_param, config) == "sip:2001@pbx.example"
    both = customer_invite(
        "X-SPG-Agent: <sip:2002@pbx.example>\r\n",
        "sip:assist@192.0.2.9;x-spg-agent=sip%3A2001%40pbx.example",
    )
    assert agent_target(both, config) == "sip:2002@pbx.example"


def test_each_leg_has_its_own_srtp_keys() -> None:
    """The customer's SDES offer over TLS is answered with SRTP; the agent, over TLS, is offered
    SRTP with keys of our own; both contexts run, with different keys."""

    async def body() -> None:
        offered = offer_attributes(["AES_CM_128_HMAC_SHA1_80"])
        invite = customer_invite(crypto=offered)
        tls_agent = {"SPG_ASSIST__AGENT_URI": "sip:queue@192.0.2.50:5081;transport=tls"}
        call, task, ua, media, _assist = await started_call(
            invite, Address("tls", "192.0.2.1", 40123), tls_agent
        )
        ((agent_invite, _),) = ua.sent("INVITE")
        agent_offer = SessionDescription.parse(agent_invite.body)
        assert agent_offer.media[0].proto == "RTP/SAVP" and agent_offer.media[0].crypto
        agent_answer = build_answer(
            negotiate(agent_offer), local_address="192.0.2.50", local_port=50000,
            session_id=9, version=1,
        )  # fmt: skip
        ua.answer("INVITE", 200, agent_answer)
        await settle()
        ok = ua.responses[-1]
        assert ok.status == 200 and b"RTP/SAVP" in ok.body and b"a=crypto:1 " in ok.body
        customer_srtp = media.attached[40000].srtp
        agent_srtp = media.attached[40002].srtp
        assert customer_srtp is not None and agent_srtp is not None
        assert customer_srtp.remote.same_key(offered[0])
        assert not customer_srtp.local.same_key(agent_srtp.local)
        call.customer_leg.on_request(
            in_dialog("BYE", 11, invite.call_id, call.customer.local_tag), CUSTOMER
        )
        await settle()
        ua.answer("BYE", 200)
        await asyncio.wait_for(task, 2)

    asyncio.run(body())


def test_a_failure_of_ours_when_the_agent_answers_ends_both_legs() -> None:
    async def body() -> None:
        _call, task, ua, media, _assist = await started_call()

        def broken(customer_port: int, agent_port: int, mask: str) -> None:
            raise KeyError("no media session")

        media.bridge = broken  # type: ignore[method-assign]
        ua.answer("INVITE", 200, AGENT_ANSWER)
        await settle()
        assert statuses(ua) == [500]
        ((bye, _),) = ua.sent("BYE")
        assert bye.call_id == ua.sent("INVITE")[0][0].call_id
        ua.answer("BYE", 200)
        await asyncio.wait_for(task, 2)
        assert sorted(media.closed) == [40000, 40002]

    asyncio.run(body())


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
@pytest.mark.parametrize("first", ["rfc4733", "inband"])
def test_a_customer_key_sent_as_events_and_as_tones_is_one_digit(mode: str, first: str) -> None:
    """A phone may send a key both as RFC 4733 events and as tones left in the audio: the
    payment session gets one digit a press, whichever report comes first."""

    async def body() -> None:
        call, _task, ua, media, assist = await started_call(env={"SPG_DTMF__INBAND": mode})
        ua.answer("INVITE", 200, AGENT_ANSWER)
        await settle()
        on_dtmf = media.attached[40000].on_dtmf
        assert on_dtmf is not None
        second = "inband" if first == "rfc4733" else "rfc4733"
        for n, (digit, at) in enumerate((("4", 10.0), ("4", 10.3), ("1", 10.6))):
            # Each press's two reports: the in-band start dated at the tone's onset, a few
            # ms off the first event packet's arrival; the ends 80 ms on.
            skew = 0.004 if n % 2 else -0.006
            for source in (first, second):
                start = at + (skew if source == "inband" else 0.0)
                on_dtmf(DtmfEvent(digit, "start", start, None, source))
            for source in (first, second):
                on_dtmf(DtmfEvent(digit, "end", at + 0.08, 80.0, source))
        assert [s for s in assist.seen if s[0] == "digit"] == [
            ("digit", "4"),
            ("digit", "4"),
            ("digit", "1"),
        ]
        assert sum(call.merger.accepted.values()) == 3

    asyncio.run(body())
