"""SDES keys only over TLS: an RTP/SAVP offer whose `a=crypto` keys crossed UDP or TCP is refused.

A node in this process, raw SIP over loopback UDP (`RawPeer`): the INVITE's offer and a
re-INVITE's or UPDATE's are each refused with 488 and a Warning naming the reason, unless the
source is in `rtp.sdes_cleartext_sources`; an offer with a plain alternative gets the plain
stream answered while the policy allows plain RTP. (Over TLS the same offers are taken: the
TLS + SRTP calls of test_call_inprocess.py and test_baresip.py.)
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from pathlib import Path

import pytest
from test_call_inprocess import SDP_OFFER, Capture, RawPeer, cdr_lines, node_config, start_node

from spg_media import observability as obs
from spg_media.config import Config
from spg_media.sip.message import SipResponse
from spg_media.sip.sdp import SessionDescription

KEY = base64.b64encode(bytes(range(1, 31))).decode()
SDP_HEAD = "v=0\r\no=t 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
SAVP_STREAM = (
    "m=audio 40002 RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n"
)
AVP_STREAM = (
    "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)
SAVP_OFFER = SDP_HEAD.format(version=1) + SAVP_STREAM
BOTH_OFFER = SDP_HEAD.format(version=1) + SAVP_STREAM + AVP_STREAM  # SRTP first, plain as fallback


def configured(tmp_path: Path, srtp: str = "optional", cleartext: tuple[str, ...] = ()) -> Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = node_config(tmp_path)
    return dataclasses.replace(
        config, rtp=dataclasses.replace(config.rtp, srtp=srtp, sdes_cleartext_sources=cleartext)
    )


async def invite(config: Config, call_id: str, body: str) -> SipResponse:
    """One INVITE over UDP with `body`: its final answer (a 200 is ACKed, then BYE'd)."""
    server, port = await start_node(config, Capture())
    try:
        with RawPeer(port, call_id) as peer:
            await peer.send(peer.request("INVITE", [], body))
            answer = await peer.final("INVITE")
            if answer.status == 200:
                peer.to_tag = answer.to.tag or ""
                await peer.send(peer.request("ACK", [], cseq=1))
                peer.cseq = 2
                await peer.send(peer.request("BYE", []))
                await peer.final("BYE")
            return answer
    finally:
        await server.stop(grace_s=5)


def sdes_refusal(answer: SipResponse) -> None:
    assert answer.status == 488, answer
    warning = answer.headers.get("Warning") or ""
    assert warning.startswith('399 127.0.0.1 "SDES keys'), warning
    assert "TLS" in warning, warning
    assert KEY not in answer.to_bytes().decode()


@pytest.mark.timeout(60)
def test_an_srtp_offer_over_udp_is_refused_with_488_naming_the_reason(tmp_path: Path) -> None:
    config = configured(tmp_path)
    before = obs.CALLS_REJECTED_TOTAL.get(status="488")
    answer = asyncio.run(invite(config, "sdes-udp", SAVP_OFFER))
    sdes_refusal(answer)
    assert obs.CALLS_REJECTED_TOTAL.get(status="488") - before == 1
    assert cdr_lines(config) == []  # a refused INVITE is not a call


@pytest.mark.timeout(60)
def test_an_srtp_offer_from_a_cleartext_source_is_answered_with_srtp(tmp_path: Path) -> None:
    config = configured(tmp_path, cleartext=("127.0.0.1/32",))
    answer = asyncio.run(invite(config, "sdes-private", SAVP_OFFER))
    assert answer.status == 200, answer
    media = SessionDescription.parse(answer.body).media
    assert [m.proto for m in media] == ["RTP/SAVP"] and media[0].crypto


@pytest.mark.timeout(60)
def test_an_offer_with_a_plain_fallback_gets_the_plain_stream_when_the_policy_allows(
    tmp_path: Path,
) -> None:
    answer = asyncio.run(invite(configured(tmp_path / "optional"), "sdes-both", BOTH_OFFER))
    assert answer.status == 200, answer
    media = SessionDescription.parse(answer.body).media
    assert [(m.proto, m.port != 0) for m in media] == [("RTP/SAVP", False), ("RTP/AVP", True)]
    assert not any(m.crypto for m in media)
    # srtp = required: the plain stream is not an option, and the keys came in clear
    strict = configured(tmp_path / "required", srtp="required")
    sdes_refusal(asyncio.run(invite(strict, "sdes-both-req", BOTH_OFFER)))


@pytest.mark.timeout(60)
def test_a_reinvite_or_update_with_sdes_keys_over_udp_is_refused(tmp_path: Path) -> None:
    config = configured(tmp_path)

    async def scenario() -> tuple[SipResponse, SipResponse, SipResponse]:
        server, port = await start_node(config, Capture())
        try:
            with RawPeer(port, "sdes-reinvite") as peer:
                assert (await peer.invite([])).status == 200
                peer.cseq = 2
                await peer.send(
                    peer.request("INVITE", [], SDP_HEAD.format(version=2) + SAVP_STREAM)
                )
                reinvite = await peer.final("INVITE")
                await peer.send(peer.request("ACK", [], cseq=2))
                peer.cseq = 3
                await peer.send(
                    peer.request("UPDATE", [], SDP_HEAD.format(version=3) + SAVP_STREAM)
                )
                update = await peer.final("UPDATE")
                peer.cseq = 4  # the call goes on: a plain re-offer is still answered
                await peer.send(peer.request("UPDATE", [], SDP_OFFER.replace("o=t 1 1", "o=t 1 4")))
                plain = await peer.final("UPDATE")
                return reinvite, update, plain
        finally:
            await server.stop(grace_s=5)

    reinvite, update, plain = asyncio.run(scenario())
    sdes_refusal(reinvite)
    sdes_refusal(update)
    assert plain.status == 200 and b"RTP/AVP" in plain.body
