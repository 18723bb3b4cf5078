"""SDP parsing (RFC 4566) and audio offer/answer (RFC 3264) with real-world offers."""

from __future__ import annotations

import base64
import dataclasses
import subprocess
import sys

import pytest

from spg_media.rtp.srtp import CryptoAttribute, offer_attributes
from spg_media.sip.sdp import (
    Crypto,
    NegotiatedAudio,
    NotAcceptable,
    SdpError,
    SessionDescription,
    build_answer,
    build_offer,
    negotiate,
)


def sdp(*lines: str, eol: str = "\r\n") -> bytes:
    return (eol.join(lines) + eol).encode()


KEY80 = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"  # RFC 4568 §5.1: 30 bytes
KEY32 = "inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj|2^20|1:32"

# SIPp 3.6 built-in uac scenario (PCMU only) and uac_pcap (PCMA + telephone-event).
SIPP_UAC = sdp(
    "v=0",
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "m=audio 6000 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
)
SIPP_PCAP = sdp(
    "v=0",
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "m=audio 6000 RTP/AVP 8 101",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-11,16",
)
SIPP_PCMU_DTMF = sdp(
    "v=0",
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "m=audio 6000 RTP/AVP 0 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
)
# baresip 1.0 with its default codec list: opus, G.722, G.711.
BARESIP = sdp(
    "v=0",
    "o=- 1513356207 2839352183 IN IP4 192.168.1.10",
    "s=-",
    "c=IN IP4 192.168.1.10",
    "t=0 0",
    "m=audio 10000 RTP/AVP 96 9 0 8 101",
    "b=AS:128",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 stereo=1;sprop-stereo=1",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=rtcp-rsize",
    "a=ssrc:1617392914 cname:0c6e2b2b-56f6-4a5c-a4b7-2d6b2b7e6b1b",
    "a=sendrecv",
    "a=label:1",
    "a=ptime:20",
)
# baresip with mediaenc=srtp-mand.
BARESIP_SRTP = sdp(
    "v=0",
    "o=- 1513356207 2839352183 IN IP4 192.168.1.10",
    "s=-",
    "c=IN IP4 192.168.1.10",
    "t=0 0",
    "m=audio 10000 RTP/SAVP 0 8 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=sendrecv",
    "a=ptime:20",
    f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY80}",
    f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 {KEY32}",
)


def offer(*media_lines: str, session: tuple[str, ...] = ("c=IN IP4 192.0.2.10",)) -> bytes:
    return sdp("v=0", "o=x 1 1 IN IP4 192.0.2.10", "s=-", *session, "t=0 0", *media_lines)


# ---- parsing ----------------------------------------------------------------------------------


def test_parse_baresip_offer() -> None:
    session = SessionDescription.parse(BARESIP)
    assert session.origin is not None and session.origin.session_id == "1513356207"
    assert session.origin.address == "192.168.1.10"
    assert session.session_name == "-"
    assert session.connection == "192.168.1.10"
    (audio,) = session.media
    assert (audio.media, audio.port, audio.proto) == ("audio", 10000, "RTP/AVP")
    assert audio.formats == [96, 9, 0, 8, 101]
    assert audio.rtpmap[96] == ("opus", 48000, "2")
    assert audio.rtpmap[0] == ("PCMU", 8000, None)
    assert audio.fmtp == {96: "stereo=1;sprop-stereo=1", 101: "0-15"}
    assert audio.ptime == 20
    assert audio.direction == "sendrecv"
    assert audio.connection == "192.168.1.10"
    assert ("label", "1") in audio.attributes and ("rtcp-rsize", None) in audio.attributes
    assert audio.crypto == []


def test_parse_crypto_lines() -> None:
    (audio,) = SessionDescription.parse(BARESIP_SRTP).media
    assert audio.crypto == [
        Crypto(1, "AES_CM_128_HMAC_SHA1_80", KEY80, []),
        Crypto(2, "AES_CM_128_HMAC_SHA1_32", KEY32, []),
    ]
    with_params = SessionDescription.parse(
        offer(
            "m=audio 4000 RTP/SAVP 0",
            f"a=crypto:7 AES_CM_128_HMAC_SHA1_80 {KEY80} KDR=1 UNENCRYPTED_SRTCP",
        )
    )
    crypto = with_params.media[0].crypto[0]
    assert (crypto.tag, crypto.session_params) == (7, ["KDR=1", "UNENCRYPTED_SRTCP"])
    assert crypto.value() == f"7 AES_CM_128_HMAC_SHA1_80 {KEY80} KDR=1 UNENCRYPTED_SRTCP"
    assert "WVNfX19" not in str(crypto)  # str() is for logs: the key stays hidden


def test_crypto_repr_hides_the_key() -> None:
    (audio,) = SessionDescription.parse(BARESIP_SRTP).media
    assert "WVNfX19" not in repr(audio.crypto[0])
    neg = negotiate(SessionDescription.parse(BARESIP_SRTP))
    assert "WVNfX19" not in repr(neg)


def test_parse_tolerates_bare_lf_and_blank_lines_and_str() -> None:
    text = SIPP_PCAP.decode().replace("\r\n", "\n") + "\n\n"
    session = SessionDescription.parse(text)
    assert session.media[0].formats == [8, 101]
    assert SessionDescription.parse(text.encode()).media[0].rtpmap[101][0] == "telephone-event"


def test_media_level_connection_and_direction_override_session_level() -> None:
    session = SessionDescription.parse(
        offer(
            "a=sendonly",
            "m=audio 4000 RTP/AVP 0",
            "m=audio 4002 RTP/AVP 0",
            "c=IN IP4 198.51.100.7",
            "a=recvonly",
            session=("c=IN IP4 192.0.2.10",),
        )
    )
    first, second = session.media
    assert session.direction == "sendonly"
    assert (first.connection, first.direction) == ("192.0.2.10", "sendonly")
    assert (second.connection, second.direction) == ("198.51.100.7", "recvonly")


def test_parse_ipv6_multicast_port_count_and_non_rtp_media() -> None:
    session = SessionDescription.parse(
        sdp(
            "v=0",
            "o=x 1 1 IN IP6 2001:db8::1",
            "s=-",
            "c=IN IP6 2001:db8::1",
            "t=0 0",
            "m=audio 4000/2 RTP/AVP 0",
            "c=IN IP4 224.2.1.1/127/3",
            "m=application 5000 UDP/BFCP *",
        )
    )
    audio, app = session.media
    assert (audio.port, audio.port_count, audio.connection) == (4000, 2, "224.2.1.1")
    assert app.formats == [] and app.format_tokens == ["*"]
    assert app.connection == "2001:db8::1"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"garbage",
        b"v=1\r\n",
        b"o=x 1 1 IN IP4 h\r\nv=0\r\n",
        sdp("v=0", "this is not sdp"),
        offer("m=audio"),
        offer("m=audio port RTP/AVP 0"),
        offer("m=audio 70000 RTP/AVP 0"),
        offer("m=audio 4000 RTP/AVP zero"),
        offer("m=audio 4000 RTP/AVP 128"),
        offer("m=audio 4000 RTP/AVP 0", "c=IN IP4"),
        offer("m=audio 4000 RTP/AVP 0", "c=XX IP4 192.0.2.1"),
        offer("m=audio 4000 RTP/AVP 0", "a=rtpmap:0"),
        offer("m=audio 4000 RTP/AVP 0", "a=rtpmap:0 PCMU"),
        offer("m=audio 4000 RTP/AVP 0", "a=rtpmap:0 PCMU/fast"),
        offer("m=audio 4000 RTP/AVP 0", "a=ptime:abc"),
        offer("m=audio 4000 RTP/AVP 0", "a=ptime:-20"),
        offer("m=audio 4000 RTP/SAVP 0", "a=crypto:x AES_CM_128_HMAC_SHA1_80 inline:k"),
        offer("m=audio 4000 RTP/SAVP 0", "a=crypto:1 AES_CM_128_HMAC_SHA1_80"),
        sdp("v=0", "o=too few fields"),
    ],
)
def test_bad_sdp_raises_sdp_error(body: bytes) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(body)


def test_sdp_error_is_a_value_error() -> None:
    assert issubclass(SdpError, ValueError)


# ---- negotiation ------------------------------------------------------------------------------


def test_sipp_pcmu_only() -> None:
    neg = negotiate(SessionDescription.parse(SIPP_UAC))
    assert (neg.remote_address, neg.remote_port) == ("127.0.0.1", 6000)
    assert (neg.codec, neg.payload_type, neg.dtmf_payload_type) == ("PCMU", 0, None)
    assert (neg.ptime, neg.direction, neg.srtp_offered, neg.crypto) == (20, "sendrecv", False, [])


def test_sipp_pcap_pcma_with_telephone_event() -> None:
    neg = negotiate(SessionDescription.parse(SIPP_PCAP))
    assert (neg.codec, neg.payload_type, neg.dtmf_payload_type) == ("PCMA", 8, 101)


def test_sipp_pcmu_with_dtmf() -> None:
    neg = negotiate(SessionDescription.parse(SIPP_PCMU_DTMF))
    assert (neg.codec, neg.payload_type, neg.dtmf_payload_type) == ("PCMU", 0, 101)


def test_baresip_many_codecs_first_g711_in_offer_order_wins() -> None:
    neg = negotiate(SessionDescription.parse(BARESIP))
    assert (neg.codec, neg.payload_type, neg.dtmf_payload_type) == ("PCMU", 0, 101)
    pcma_first = BARESIP.replace(b"96 9 0 8 101", b"96 9 8 0 101")
    assert negotiate(SessionDescription.parse(pcma_first)).codec == "PCMA"


def test_static_payload_types_without_rtpmap() -> None:
    neg = negotiate(SessionDescription.parse(offer("m=audio 4000 RTP/AVP 18 8 0")))
    assert (neg.codec, neg.payload_type) == ("PCMA", 8)


def test_pcma_only() -> None:
    neg = negotiate(
        SessionDescription.parse(offer("m=audio 4000 RTP/AVP 8", "a=rtpmap:8 PCMA/8000"))
    )
    assert (neg.codec, neg.payload_type) == ("PCMA", 8)


def test_dynamic_payload_type_for_g711_and_rtpmap_names_any_case() -> None:
    neg = negotiate(
        SessionDescription.parse(offer("m=audio 4000 RTP/AVP 110 97", "a=rtpmap:110 pcmu/8000/1"))
    )
    assert (neg.codec, neg.payload_type) == ("PCMU", 110)


def test_g711_at_other_clock_rate_or_stereo_is_not_taken() -> None:
    body = offer(
        "m=audio 4000 RTP/AVP 96 97 8",
        "a=rtpmap:96 PCMU/16000",
        "a=rtpmap:97 PCMU/8000/2",
    )
    assert negotiate(SessionDescription.parse(body)).payload_type == 8


@pytest.mark.parametrize(
    "body",
    [
        offer("m=audio 4000 RTP/AVP 18", "a=rtpmap:18 G729/8000"),
        offer("m=audio 4000 RTP/AVP 96 9", "a=rtpmap:96 opus/48000/2"),
        offer("m=audio 4000 RTP/AVP 101", "a=rtpmap:101 telephone-event/8000"),
        offer("m=audio 4000 RTP/AVP 0", "a=rtpmap:0 G729/8000"),  # rtpmap wins over static
    ],
)
def test_no_common_codec_is_not_acceptable(body: bytes) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate(SessionDescription.parse(body))
    assert "codec" in info.value.detail


def test_telephone_event_with_other_payload_types() -> None:
    for pt in (96, 100, 127):
        body = offer(
            f"m=audio 4000 RTP/AVP 0 {pt}",
            f"a=rtpmap:{pt} telephone-event/8000",
            f"a=fmtp:{pt} 0-16",
        )
        assert negotiate(SessionDescription.parse(body)).dtmf_payload_type == pt
    wideband_only = offer("m=audio 4000 RTP/AVP 0 102", "a=rtpmap:102 telephone-event/16000")
    assert negotiate(SessionDescription.parse(wideband_only)).dtmf_payload_type is None
    both = offer(
        "m=audio 4000 RTP/AVP 0 102 101",
        "a=rtpmap:102 telephone-event/48000",
        "a=rtpmap:101 TELEPHONE-EVENT/8000",
    )
    assert negotiate(SessionDescription.parse(both)).dtmf_payload_type == 101


@pytest.mark.parametrize(
    ("attributes", "ptime"),
    [
        ((), 20),
        (("a=ptime:10",), 10),
        (("a=ptime:30",), 30),
        (("a=ptime:60",), 60),
        (("a=ptime:20.0",), 20),
        (("a=ptime:5",), 10),  # clamped, not refused
        (("a=ptime:80",), 60),
        (("a=ptime:40", "a=maxptime:30"), 30),
        (("a=maxptime:10",), 10),
    ],
)
def test_ptime(attributes: tuple[str, ...], ptime: int) -> None:
    body = offer("m=audio 4000 RTP/AVP 0", *attributes)
    assert negotiate(SessionDescription.parse(body)).ptime == ptime


@pytest.mark.parametrize(
    ("lines", "session", "direction", "answer"),
    [
        (("a=sendrecv",), (), "sendrecv", "sendrecv"),
        (("a=sendonly",), (), "sendonly", "recvonly"),
        (("a=recvonly",), (), "recvonly", "sendonly"),
        (("a=inactive",), (), "inactive", "inactive"),
        ((), ("a=sendonly",), "sendonly", "recvonly"),  # session level
        (("a=sendrecv",), ("a=inactive",), "sendrecv", "sendrecv"),  # media level wins
        (("c=IN IP4 0.0.0.0",), (), "sendonly", "recvonly"),  # RFC 2543 hold
        (("c=IN IP4 0.0.0.0", "a=recvonly"), (), "inactive", "inactive"),
        (("c=IN IP4 0.0.0.0", "a=sendonly"), (), "sendonly", "recvonly"),
    ],
)
def test_hold_and_direction(
    lines: tuple[str, ...], session: tuple[str, ...], direction: str, answer: str
) -> None:
    body = offer("m=audio 4000 RTP/AVP 0", *lines, session=("c=IN IP4 192.0.2.10", *session))
    neg = negotiate(SessionDescription.parse(body))
    assert neg.direction == direction
    assert neg.answer_direction == answer
    assert neg.on_hold == (direction in ("sendonly", "inactive"))
    printed = build_answer(
        neg, local_address="198.51.100.1", local_port=20000, session_id=1, version=1
    )
    assert f"a={answer}\r\n".encode() in printed


def test_port_zero_stream_is_skipped_and_all_zero_is_not_acceptable() -> None:
    body = offer("m=audio 0 RTP/AVP 0", "m=audio 4002 RTP/AVP 8")
    neg = negotiate(SessionDescription.parse(body))
    assert (neg.remote_port, neg.codec, neg.stream_index) == (4002, "PCMA", 1)
    with pytest.raises(NotAcceptable) as info:
        negotiate(SessionDescription.parse(offer("m=audio 0 RTP/AVP 0")))
    assert "port 0" in info.value.detail


def test_no_audio_is_not_acceptable() -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate(
            SessionDescription.parse(offer("m=video 4000 RTP/AVP 96", "a=rtpmap:96 H264/90000"))
        )
    assert "no audio" in info.value.detail
    with pytest.raises(NotAcceptable):
        negotiate(SessionDescription.parse(offer()))


def test_missing_connection_is_not_acceptable() -> None:
    body = sdp("v=0", "o=x 1 1 IN IP4 h", "s=-", "t=0 0", "m=audio 4000 RTP/AVP 0")
    with pytest.raises(NotAcceptable):
        negotiate(SessionDescription.parse(body))


def test_unsupported_transport_is_not_acceptable() -> None:
    for proto in ("UDP/TLS/RTP/SAVPF", "udp", "TCP/RTP/AVP"):
        with pytest.raises(NotAcceptable):
            negotiate(SessionDescription.parse(offer(f"m=audio 4000 {proto} 0")))


def test_rtp_avpf_is_accepted_as_plain_rtp() -> None:
    neg = negotiate(SessionDescription.parse(offer("m=audio 4000 RTP/AVPF 0")))
    assert (neg.proto, neg.srtp_offered) == ("RTP/AVPF", False)


# ---- SRTP policy --------------------------------------------------------------------------------

SAVP = BARESIP_SRTP
AVP = SIPP_PCMU_DTMF


@pytest.mark.parametrize(
    ("body", "policy", "srtp"),
    [
        (AVP, "off", False),
        (AVP, "optional", False),
        (AVP, "required", None),
        (SAVP, "off", None),
        (SAVP, "optional", True),
        (SAVP, "required", True),
    ],
)
def test_srtp_policy(body: bytes, policy: str, srtp: bool | None) -> None:
    session = SessionDescription.parse(body)
    if srtp is None:
        with pytest.raises(NotAcceptable) as info:
            negotiate(session, srtp_policy=policy)
        assert "SRTP" in info.value.detail
        return
    neg = negotiate(session, srtp_policy=policy)
    assert neg.srtp_offered is srtp
    if srtp:
        assert neg.proto == "RTP/SAVP"
        assert [c.suite for c in neg.crypto] == [
            "AES_CM_128_HMAC_SHA1_80",
            "AES_CM_128_HMAC_SHA1_32",
        ]
    else:
        assert neg.crypto == []


def test_savp_without_supported_crypto_is_not_acceptable() -> None:
    no_crypto = offer("m=audio 4000 RTP/SAVP 0")
    odd_suite = offer("m=audio 4000 RTP/SAVP 0", f"a=crypto:1 F8_128_HMAC_SHA1_80 {KEY80}")
    for body in (no_crypto, odd_suite):
        with pytest.raises(NotAcceptable) as info:
            negotiate(SessionDescription.parse(body), srtp_policy="optional")
        assert "crypto" in info.value.detail


def test_unsupported_suites_are_filtered_and_suites_configurable() -> None:
    body = offer(
        "m=audio 4000 RTP/SAVP 0",
        f"a=crypto:1 AES_256_CM_HMAC_SHA1_80 {KEY80}",
        f"a=crypto:2 AEAD_AES_128_GCM {KEY80}",
        f"a=crypto:3 AES_CM_128_HMAC_SHA1_32 {KEY80}",
    )
    session = SessionDescription.parse(body)
    assert [c.tag for c in negotiate(session).crypto] == [2, 3]
    no_gcm = negotiate(session, crypto_suites={"AES_CM_128_HMAC_SHA1_32"})
    assert [c.tag for c in no_gcm.crypto] == [3]


def test_best_effort_srtp_two_streams() -> None:
    body = offer(
        "m=audio 4000 RTP/AVP 0",
        "m=audio 4002 RTP/SAVP 0",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY80}",
    )
    session = SessionDescription.parse(body)
    optional = negotiate(session, srtp_policy="optional")
    assert (optional.stream_index, optional.srtp_offered, optional.remote_port) == (1, True, 4002)
    off = negotiate(session, srtp_policy="off")
    assert (off.stream_index, off.srtp_offered) == (0, False)
    answer = build_answer(
        optional,
        local_address="198.51.100.1",
        local_port=20000,
        session_id=1,
        version=1,
        crypto_line=f"1 AES_CM_128_HMAC_SHA1_80 {KEY80}",
    )
    media = SessionDescription.parse(answer).media
    assert [(m.port, m.proto) for m in media] == [(0, "RTP/AVP"), (20000, "RTP/SAVP")]


def test_bad_policy_value() -> None:
    with pytest.raises(ValueError):
        negotiate(SessionDescription.parse(AVP), srtp_policy="maybe")


# ---- building answers and offers ----------------------------------------------------------------


def test_answer_to_sipp_offer_exact_text() -> None:
    neg = negotiate(SessionDescription.parse(SIPP_PCMU_DTMF))
    answer = build_answer(
        neg, local_address="127.0.0.1", local_port=20000, session_id=42, version=3
    )
    assert answer == sdp(
        "v=0",
        "o=spg-media 42 3 IN IP4 127.0.0.1",
        "s=spg-media",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        "m=audio 20000 RTP/AVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    )


def test_answer_without_dtmf_and_with_ipv6() -> None:
    neg = negotiate(SessionDescription.parse(SIPP_UAC))
    answer = build_answer(
        neg, local_address="2001:db8::5", local_port=20002, session_id=1, version=1
    )
    session = SessionDescription.parse(answer)
    assert session.connection == "2001:db8::5"
    assert b"IN IP6 2001:db8::5" in answer
    assert session.media[0].formats == [0]
    assert b"telephone-event" not in answer


def test_answer_rejects_other_streams_in_place_and_echoes_mid() -> None:
    body = offer(
        "m=video 5000 RTP/AVP 96 97",
        "a=rtpmap:96 H264/90000",
        "m=audio 4000 RTP/AVP 8 101",
        "a=mid:audio1",
        "a=rtpmap:101 telephone-event/8000",
        "m=audio 4002 RTP/AVP 0",
    )
    neg = negotiate(SessionDescription.parse(body))
    assert (neg.stream_index, neg.mid) == (1, "audio1")
    answer = build_answer(
        neg, local_address="198.51.100.1", local_port=20000, session_id=1, version=1
    )
    assert b"m=video 0 RTP/AVP 96 97\r\n" in answer
    assert b"m=audio 0 RTP/AVP 0\r\n" in answer
    assert b"a=mid:audio1\r\n" in answer
    media = SessionDescription.parse(answer).media
    assert [(m.media, m.port) for m in media] == [("video", 0), ("audio", 20000), ("audio", 0)]


def test_offer_text_echoed_in_the_answer_is_plain_tokens() -> None:
    # Found by fuzzing (fuzz/run.py sdp): a rejected m-line or an a=mid with a non-ASCII or
    # control character was echoed into the answer, whose ASCII encoding then raised
    # UnicodeEncodeError (the INVITE got a 500 instead of an answer or a 488).
    for bad in (
        "m=audio 0 R\u00d4P/SAVP 8",
        "m=vid\u00e9o 0 RTP/AVP 96",
        "m=audio 0 RTP/AVP 8\x07",
    ):
        with pytest.raises(SdpError):
            SessionDescription.parse(offer("m=audio 4000 RTP/AVP 0", bad))
    for mid in ("caf\u00e9", "a\rc=IN IP4 203.0.113.9", "a\x00"):
        neg = negotiate(SessionDescription.parse(offer("m=audio 4000 RTP/AVP 0", f"a=mid:{mid}")))
        assert neg.mid is None
        answer = build_answer(
            neg, local_address="198.51.100.1", local_port=20000, session_id=1, version=1
        )
        assert b"a=mid" not in answer and b"203.0.113.9" not in answer


def test_srtp_answer_carries_crypto_and_needs_it() -> None:
    neg = negotiate(SessionDescription.parse(BARESIP_SRTP))
    without_key = dataclasses.replace(neg, local_crypto=None)
    with pytest.raises(ValueError):
        build_answer(
            without_key, local_address="198.51.100.1", local_port=20000, session_id=1, version=1
        )
    for line in (
        f"1 AES_CM_128_HMAC_SHA1_80 {KEY80}",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY80}",
    ):
        answer = build_answer(
            neg,
            local_address="198.51.100.1",
            local_port=20000,
            session_id=1,
            version=1,
            crypto_line=line,
        )
        assert f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY80}\r\n".encode() in answer
        assert b"m=audio 20000 RTP/SAVP 0 101\r\n" in answer


def test_answer_uses_negotiated_ptime_and_offerer_dtmf_pt() -> None:
    body = offer(
        "m=audio 4000 RTP/AVP 8 96",
        "a=rtpmap:96 telephone-event/8000",
        "a=ptime:30",
    )
    neg = negotiate(SessionDescription.parse(body))
    answer = build_answer(
        neg, local_address="198.51.100.1", local_port=20000, session_id=1, version=1
    )
    assert b"m=audio 20000 RTP/AVP 8 96\r\n" in answer
    assert b"a=rtpmap:96 telephone-event/8000\r\n" in answer
    assert b"a=ptime:30\r\n" in answer


def test_offer_answer_round_trip_with_our_own_offer() -> None:
    our_offer = build_offer(local_address="192.0.2.50", local_port=30000, session_id=7, version=1)
    assert our_offer == sdp(
        "v=0",
        "o=spg-media 7 1 IN IP4 192.0.2.50",
        "s=spg-media",
        "c=IN IP4 192.0.2.50",
        "t=0 0",
        "m=audio 30000 RTP/AVP 0 8 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    )
    neg = negotiate(SessionDescription.parse(our_offer))
    assert (neg.codec, neg.dtmf_payload_type, neg.remote_port) == ("PCMU", 101, 30000)
    answer = build_answer(
        neg, local_address="192.0.2.60", local_port=20000, session_id=9, version=1
    )
    # the caller reads the answer the same way (testcaller does so)
    back = negotiate(SessionDescription.parse(answer))
    assert (back.remote_address, back.remote_port, back.codec, back.direction) == (
        "192.0.2.60",
        20000,
        "PCMU",
        "sendrecv",
    )


def test_build_offer_options() -> None:
    pcma = build_offer(
        local_address="192.0.2.50",
        local_port=30000,
        session_id=7,
        version=2,
        codecs=("PCMA",),
        dtmf_pt=None,
    )
    media = SessionDescription.parse(pcma).media[0]
    assert media.formats == [8] and b"telephone-event" not in pcma
    srtp = build_offer(
        local_address="192.0.2.50",
        local_port=30000,
        session_id=7,
        version=2,
        dtmf_pt=96,
        crypto_lines=[f"1 AES_CM_128_HMAC_SHA1_80 {KEY80}"],
    )
    neg = negotiate(SessionDescription.parse(srtp), srtp_policy="required")
    assert (neg.proto, neg.dtmf_payload_type, neg.crypto[0].tag) == ("RTP/SAVP", 96, 1)
    hold = build_offer(
        local_address="192.0.2.50", local_port=1, session_id=1, version=1, direction="sendonly"
    )
    assert negotiate(SessionDescription.parse(hold)).on_hold
    with pytest.raises(ValueError):
        build_offer(local_address="h", local_port=1, session_id=1, version=1, codecs=("G729",))
    with pytest.raises(ValueError):
        build_offer(local_address="h", local_port=1, session_id=1, version=1, codecs=())


def test_not_acceptable_carries_detail() -> None:
    error = NotAcceptable("no common codec")
    assert error.detail == "no common codec" and str(error) == "no common codec"


# ---- SRTP: choosing the crypto line, our key in the answer -------------------------------


def srtp_offer(*crypto: str, proto: str = "RTP/SAVP") -> bytes:
    return offer(f"m=audio 4000 {proto} 0 101", "a=rtpmap:101 telephone-event/8000", *crypto)


def answer_of(neg: NegotiatedAudio) -> bytes:
    return build_answer(
        neg, local_address="198.51.100.1", local_port=20000, session_id=1, version=1
    )


@pytest.mark.parametrize("proto", ["RTP/SAVP", "RTP/SAVPF"])
@pytest.mark.parametrize("policy", ["optional", "required"])
def test_srtp_answer_has_our_own_fresh_key_with_the_offer_tag(proto: str, policy: str) -> None:
    body = srtp_offer(f"a=crypto:5 AES_CM_128_HMAC_SHA1_80 {KEY80}", proto=proto)
    neg = negotiate(SessionDescription.parse(body), srtp_policy=policy)
    assert neg.remote_crypto is not None and neg.local_crypto is not None
    assert (neg.remote_crypto.tag, neg.remote_crypto.suite.name) == (5, "AES_CM_128_HMAC_SHA1_80")
    assert (neg.local_crypto.tag, neg.local_crypto.suite) == (5, neg.remote_crypto.suite)
    assert neg.local_crypto.key != neg.remote_crypto.key
    answer = answer_of(neg)
    assert f"m=audio 20000 {proto} 0 101\r\n".encode() in answer
    (media,) = SessionDescription.parse(answer).media
    (line,) = media.crypto
    assert line.value() == neg.crypto_line
    assert CryptoAttribute.parse(line.value()) == neg.local_crypto
    again = negotiate(SessionDescription.parse(body), srtp_policy=policy)
    assert again.local_crypto is not None and again.local_crypto.key != neg.local_crypto.key


def test_plain_answer_has_no_crypto() -> None:
    neg = negotiate(SessionDescription.parse(AVP))
    assert (neg.remote_crypto, neg.local_crypto, neg.crypto_line) == (None, None, None)
    assert b"a=crypto" not in answer_of(neg)


def test_first_acceptable_crypto_line_is_chosen() -> None:
    gcm = "inline:" + base64.b64encode(bytes(range(28))).decode()
    body = srtp_offer(
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY80} UNENCRYPTED_SRTP",
        f"a=crypto:2 F8_128_HMAC_SHA1_80 {KEY80}",
        f"a=crypto:3 AEAD_AES_128_GCM {gcm}",
        f"a=crypto:4 AES_CM_128_HMAC_SHA1_80 {KEY80}",
    )
    neg = negotiate(SessionDescription.parse(body))
    assert neg.remote_crypto is not None and neg.remote_crypto.tag == 3
    assert b"a=crypto:3 AEAD_AES_128_GCM inline:" in answer_of(neg)
    no_gcm = negotiate(SessionDescription.parse(body), crypto_suites=["AES_CM_128_HMAC_SHA1_80"])
    assert no_gcm.remote_crypto is not None and no_gcm.remote_crypto.tag == 4


@pytest.mark.parametrize(
    ("crypto", "reason"),
    [
        (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY80} UNENCRYPTED_SRTP", "UNENCRYPTED_SRTP"),
        (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY80} KDR=2", "KDR"),
        (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY80} FUTURE_PARAM", "FUTURE_PARAM"),
        ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=", "key"),
        (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY80};{KEY80}", "more than one master key"),
    ],
)
def test_only_unusable_crypto_is_not_acceptable_with_a_reason(crypto: str, reason: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate(SessionDescription.parse(srtp_offer(crypto)))
    assert "crypto" in info.value.detail and reason in info.value.detail
    assert "WVNfX19" not in info.value.detail and '"' not in info.value.detail


def test_unusable_srtp_stream_falls_back_to_the_plain_copy_when_optional() -> None:
    body = offer(
        "m=audio 4000 RTP/AVP 0",
        "m=audio 4002 RTP/SAVP 0",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY80} UNAUTHENTICATED_SRTP",
    )
    neg = negotiate(SessionDescription.parse(body), srtp_policy="optional")
    assert (neg.stream_index, neg.srtp_offered, neg.local_crypto) == (0, False, None)
    with pytest.raises(NotAcceptable):
        negotiate(SessionDescription.parse(body), srtp_policy="required")


def test_reinvite_keeps_keys_when_the_peer_keeps_its_own() -> None:
    first = negotiate(SessionDescription.parse(SAVP))
    same = negotiate(SessionDescription.parse(SAVP), previous=first)
    assert same.local_crypto is first.local_crypto  # so the SRTP context carries on
    assert first.local_crypto is not None
    rekeyed_offer = SAVP.replace(KEY80.encode(), b"inline:" + base64.b64encode(bytes(30)))
    rekeyed = negotiate(SessionDescription.parse(rekeyed_offer), previous=first)
    assert rekeyed.remote_crypto is not None and rekeyed.remote_crypto.key == bytes(30)
    assert rekeyed.local_crypto is not None and rekeyed.local_crypto.key != first.local_crypto.key
    hold = SAVP.replace(b"a=sendrecv", b"a=sendonly")
    on_hold = negotiate(SessionDescription.parse(hold), previous=first)
    assert on_hold.on_hold and on_hold.local_crypto is first.local_crypto


def test_reinvite_cannot_drop_srtp() -> None:
    first = negotiate(SessionDescription.parse(SAVP), srtp_policy="optional")
    with pytest.raises(NotAcceptable) as info:
        negotiate(SessionDescription.parse(AVP), srtp_policy="optional", previous=first)
    assert "SRTP" in info.value.detail
    plain = negotiate(SessionDescription.parse(AVP), srtp_policy="optional")
    assert negotiate(SessionDescription.parse(AVP), previous=plain).srtp_offered is False
    upgraded = negotiate(SessionDescription.parse(SAVP), previous=plain)
    assert upgraded.local_crypto is not None


def test_sdp_objects_do_not_show_keys() -> None:
    session = SessionDescription.parse(SAVP)
    neg = negotiate(session)
    assert neg.local_crypto is not None
    ours = base64.b64encode(neg.local_crypto.key).decode()
    for text in (repr(session), str(session), repr(neg), str(dataclasses.asdict(neg))):
        assert "WVNfX19" not in text and "d0RmdmcmVC" not in text and ours not in text
    assert ("crypto", "<hidden>") in session.media[0].attributes


def test_fmtp_payload_type_must_be_ascii_digits() -> None:
    # Found while writing the sdp fuzz target: isdigit() let "²" through to int(), whose
    # ValueError is no SdpError (the INVITE got a 500 instead of a 488).
    session = SessionDescription.parse(offer("m=audio 4000 RTP/AVP 0", "a=fmtp:\u00b2 0-16"))
    assert session.media[0].fmtp == {}


def test_crypto_tag_must_be_ascii_digits() -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(
            offer("m=audio 4000 RTP/SAVP 0", f"a=crypto:\u0661 AES_CM_128_HMAC_SHA1_80 {KEY80}")
        )


def test_build_offer_takes_crypto_attributes() -> None:
    offered = offer_attributes(["AEAD_AES_256_GCM"])
    body = build_offer(
        local_address="192.0.2.50", local_port=30000, session_id=7, version=1, crypto_lines=offered
    )
    (media,) = SessionDescription.parse(body).media
    assert media.proto == "RTP/SAVP"
    assert CryptoAttribute.parse(media.crypto[0].value()) == offered[0]


def test_reinvite_keeps_the_call_codec_while_it_is_offered() -> None:
    first = negotiate(SessionDescription.parse(offer("m=audio 4000 RTP/AVP 8 0")))
    assert first.codec == "PCMA"
    # the peer now lists PCMU first: the call stays on PCMA, which is still offered
    again = negotiate(SessionDescription.parse(offer("m=audio 4000 RTP/AVP 0 8")), previous=first)
    assert (again.codec, again.payload_type) == ("PCMA", 8)
    # PCMA dropped from the offer: the codec changes
    changed = negotiate(SessionDescription.parse(offer("m=audio 4000 RTP/AVP 0")), previous=first)
    assert changed.codec == "PCMU"
    # a first offer (no previous) takes the offerer's first choice
    assert negotiate(SessionDescription.parse(offer("m=audio 4000 RTP/AVP 0 8"))).codec == "PCMU"


# ---- RTCP (RFC 3605 a=rtcp, RFC 5761 a=rtcp-mux) ---------------------------------------------


def test_rtcp_goes_to_the_rtp_port_plus_one_by_default() -> None:
    neg = negotiate(SessionDescription.parse(SIPP_PCMU_DTMF))
    assert neg.remote_rtcp == ("127.0.0.1", 6001) and not neg.rtcp_mux
    assert b"rtcp" not in build_answer(neg, local_address="127.0.0.1", local_port=20000,
                                       session_id=1, version=1)  # fmt: skip


def test_rtcp_attribute_gives_port_and_address() -> None:
    neg = negotiate(SessionDescription.parse(offer("m=audio 4000 RTP/AVP 0", "a=rtcp:4005")))
    assert neg.remote_rtcp == ("192.0.2.10", 4005)
    neg = negotiate(
        SessionDescription.parse(
            offer("m=audio 4000 RTP/AVP 0", "a=rtcp:53020 IN IP4 198.51.100.7")
        )
    )
    assert neg.remote_rtcp == ("198.51.100.7", 53020)


@pytest.mark.parametrize("line", ["a=rtcp:", "a=rtcp:x", "a=rtcp:0", "a=rtcp:70000", "a=rtcp:9 IN"])
def test_an_unreadable_rtcp_attribute_is_passed_over(line: str) -> None:
    neg = negotiate(SessionDescription.parse(offer("m=audio 4000 RTP/AVP 0", line)))
    assert neg.remote_rtcp == ("192.0.2.10", 4001)


def test_rtp_port_65535_leaves_no_rtcp_port() -> None:
    neg = negotiate(SessionDescription.parse(offer("m=audio 65535 RTP/AVP 0")))
    assert neg.remote_rtcp == ("192.0.2.10", 0)


def test_rtcp_mux_offered_is_accepted_and_answered() -> None:
    neg = negotiate(
        SessionDescription.parse(offer("m=audio 4000 RTP/AVP 0", "a=rtcp:4000", "a=rtcp-mux"))
    )
    assert neg.rtcp_mux and neg.remote_rtcp == ("192.0.2.10", 4000)
    answer = build_answer(neg, local_address="127.0.0.1", local_port=20000, session_id=1, version=1)
    assert b"a=rtcp-mux\r\n" in answer
    assert SessionDescription.parse(answer).media[0].rtcp_mux


# ---- connection addresses: IP literals only -----------------------------------------------------


@pytest.mark.parametrize(
    ("session", "media"),
    [
        (("c=IN IP4 media.example.com",), ()),  # session level
        (("c=IN IP4 192.0.2.10",), ("c=IN IP4 media.example.com",)),  # media level
        (("c=IN IP6 media.example.com",), ()),
        (("c=IN IP4 localhost",), ()),
        (("c=IN IP4 127.0.0.01",), ()),  # leading zeros: not a literal (inet_aton reads octal)
        (("c=IN IP4 999.1.1.1",), ()),
    ],
)
def test_a_host_name_in_c_is_refused_never_resolved(
    session: tuple[str, ...], media: tuple[str, ...]
) -> None:
    body = offer("m=audio 4000 RTP/AVP 0", *media, session=session)
    with pytest.raises(NotAcceptable) as info:
        negotiate(SessionDescription.parse(body))
    assert "not an IP address" in info.value.detail
    assert "example" not in info.value.detail  # the Warning does not echo the caller's text


def test_a_host_name_in_a_reoffer_is_refused_too() -> None:
    first = negotiate(SessionDescription.parse(offer("m=audio 4000 RTP/AVP 0")))
    moved = offer("m=audio 4002 RTP/AVP 0", session=("c=IN IP4 moved.example.com",))
    with pytest.raises(NotAcceptable):
        negotiate(SessionDescription.parse(moved), previous=first)


def test_a_host_name_on_a_stream_we_do_not_take_is_no_reason_to_refuse() -> None:
    body = offer(
        "m=video 5000 RTP/AVP 96",
        "c=IN IP4 video.example.com",
        "m=audio 4000 RTP/AVP 0",
        "c=IN IP4 198.51.100.7",
        session=("c=IN IP4 session.example.com",),
    )
    assert negotiate(SessionDescription.parse(body)).remote_address == "198.51.100.7"


@pytest.mark.parametrize(
    ("line", "address"),
    [
        ("c=IN IP4 192.0.2.10", "192.0.2.10"),
        ("c=IN IP6 2001:db8::1", "2001:db8::1"),
        ("c=IN IP6 2001:DB8:0:0:0:0:0:1", "2001:db8::1"),  # canonical form
        ("c=IN IP4 0.0.0.0", "0.0.0.0"),
        ("c=IN IP6 ::", "::"),
    ],
)
def test_ip_literals_are_taken_in_canonical_form(line: str, address: str) -> None:
    neg = negotiate(SessionDescription.parse(offer("m=audio 4000 RTP/AVP 0", session=(line,))))
    assert neg.remote_address == address
    assert neg.remote_rtcp == (address, 4001)


def test_an_rtcp_attribute_with_a_host_name_is_passed_over() -> None:
    neg = negotiate(
        SessionDescription.parse(
            offer("m=audio 4000 RTP/AVP 0", "a=rtcp:53020 IN IP4 rtcp.example.com")
        )
    )
    assert neg.remote_rtcp == ("192.0.2.10", 4001)


def test_reading_sdp_does_not_load_the_srtp_binding() -> None:
    # SDP (and an SDES line in it) is read by sdes alone; pylibsrtp is loaded by the media.
    code = (
        "import sys\n"
        "from spg_media.sip import sdp\n"
        "from spg_media.rtp import sdes\n"
        f"body = {SIPP_UAC!r}\n"
        "neg = sdp.negotiate(sdp.SessionDescription.parse(body))\n"
        "line = sdes.CryptoAttribute.generate('AES_CM_128_HMAC_SHA1_80').sdp_value()\n"
        "sdes.CryptoAttribute.parse(line, suites=['AES_CM_128_HMAC_SHA1_80'])\n"
        "crypto = ('pylibsrtp', 'spg_media.rtp.srtp')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(crypto))\n"
        "print(neg.codec, loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "PCMU []"
