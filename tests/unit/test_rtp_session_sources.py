"""MediaSession: who may latch a call's media, before and after a re-INVITE moves it.

Only the address of the SDP c= line (any port), or a relay inside `media_sources`, may latch;
everyone else is dropped and counted, never hears a packet and never keys a digit. The same for
SRTP (checked before decryption), RTCP on the RTCP port and rtcp-mux.
"""

from __future__ import annotations

import random
import struct

import pytest

from spg_media import observability as obs
from spg_media.dtmf.rfc4733 import DtmfEvent
from spg_media.rtp.packet import build_rtp
from spg_media.rtp.rtcp import RtcpSession
from spg_media.rtp.session import MediaSession
from spg_media.rtp.srtp import CryptoAttribute, SrtpContext, answer_for

OFFERED = ("127.0.0.1", 40000)  # the caller's SDP: c=IN IP4 127.0.0.1, m=audio 40000
CALLER_NAT = ("127.0.0.1", 51000)  # the caller's packets, their port changed by a NAT
STRANGER = ("127.0.0.2", 40000)
RELAY_NET = "127.0.9.0/24"
RELAY = ("127.0.9.7", 30000)
WALL = 1_800_000_000.0


def session(digits: list[str] | None = None, **kwargs: object) -> MediaSession:
    def on_dtmf(event: DtmfEvent) -> None:
        if digits is not None and event.kind == "start":
            digits.append(event.digit)

    settings: dict[str, object] = {
        "remote": OFFERED,
        "rtcp_remote": (OFFERED[0], OFFERED[1] + 1),
        **kwargs,
    }
    return MediaSession(codec="PCMU", dtmf_payload_type=101, on_dtmf=on_dtmf, **settings)  # type: ignore[arg-type]


def event(key: int, seq: int, ts: int, end: bool = False) -> bytes:
    payload = struct.pack("!BBH", key, (0x80 if end else 0) | 10, 800 if end else 160)
    return build_rtp(101, seq, ts, 0x0BAD, payload, marker=not end)


def audio(seq: int) -> bytes:
    return build_rtp(0, seq, seq * 160, 0x0BAD, b"\x7f" * 160)


def rtcp_bye() -> bytes:
    return RtcpSession(0x0BAD, 0.0, rng=random.Random(1)).bye(0.1, WALL)


# ---- plain RTP ----------------------------------------------------------------------------------


def test_a_stranger_before_the_caller_neither_latches_nor_keys_a_digit() -> None:
    digits: list[str] = []
    media = session(digits)
    for n in range(20):  # a flood of presses and audio before the caller's first packet
        media.receive(event(9, n, 1000 * n), STRANGER, n * 0.001)
        media.receive(event(9, n, 1000 * n, end=True), STRANGER, n * 0.001)
        media.receive(audio(n), STRANGER, n * 0.001)
    assert media.latched is None and media.remote == OFFERED  # nothing went to the stranger
    assert media.stats.dropped_foreign == 60 and media.stats.received == 0 and digits == []
    media.receive(event(4, 500, 8000), CALLER_NAT, 0.1)  # the c= address, from any port
    assert media.latched == CALLER_NAT and media.remote == CALLER_NAT
    media.receive(event(9, 21, 99000), STRANGER, 0.11)
    assert digits == ["4"] and media.stats.dropped_foreign == 61


def test_the_drops_are_counted_by_reason_source() -> None:
    before = obs.RTP_DROPPED_TOTAL.get(reason="source")
    media = session()
    media.receive(audio(1), STRANGER, 0.0)
    media.receive(audio(2), STRANGER, 0.01)
    media.report_stats()
    assert obs.RTP_DROPPED_TOTAL.get(reason="source") - before == 2


def test_a_relay_in_media_sources_may_latch_and_so_may_the_c_address() -> None:
    relayed = session(media_sources=(RELAY_NET,))
    relayed.receive(audio(1), STRANGER, 0.0)
    relayed.receive(audio(2), RELAY, 0.01)
    assert relayed.latched == RELAY and relayed.stats.dropped_foreign == 1
    direct = session(media_sources=(RELAY_NET,))
    direct.receive(audio(1), CALLER_NAT, 0.0)
    assert direct.latched == CALLER_NAT


def test_a_hold_address_in_the_offer_latches_nothing_but_a_relay() -> None:
    held = session(remote=("0.0.0.0", 40000), rtcp_remote=("0.0.0.0", 40001))
    held.receive(audio(1), CALLER_NAT, 0.0)
    held.receive(audio(2), STRANGER, 0.0)
    assert held.latched is None and held.stats.dropped_foreign == 2
    relayed = session(
        remote=("0.0.0.0", 40000), rtcp_remote=("0.0.0.0", 40001), media_sources=(RELAY_NET,)
    )
    relayed.receive(audio(1), RELAY, 0.0)
    assert relayed.latched == RELAY


def test_a_hostname_is_never_a_remote_address() -> None:
    """A name would be resolved by sendto in the media tick (blocking it, or raising)."""
    with pytest.raises(ValueError):
        session(remote=("media.example.com", 40000))
    media = session()
    with pytest.raises(ValueError):
        media.move(("media.example.com", 40000), None)


# ---- RTCP ---------------------------------------------------------------------------------------


def test_rtcp_port_before_any_rtp_takes_only_the_c_address_or_a_relay() -> None:
    media = session()
    media.receive_rtcp(rtcp_bye(), ("127.0.0.2", 40001), 0.0)
    assert media.stats.dropped_foreign == 1 and media.rtcp_latched is None
    media.receive_rtcp(rtcp_bye(), ("127.0.0.1", 51001), 0.01)
    assert media.stats.rtcp == 1 and media.rtcp_latched == ("127.0.0.1", 51001)
    relayed = session(media_sources=(RELAY_NET,))
    relayed.receive_rtcp(rtcp_bye(), ("127.0.9.7", 30001), 0.0)
    assert relayed.rtcp_latched == ("127.0.9.7", 30001)


def test_rtcp_mux_from_a_stranger_neither_latches_nor_counts_as_rtcp() -> None:
    media = session(rtcp_mux=True)
    media.receive(rtcp_bye(), STRANGER, 0.0)
    assert media.latched is None and media.stats.rtcp == 0
    assert media.stats.dropped_foreign == 1 and media.rtcp_target == OFFERED


# ---- SRTP ---------------------------------------------------------------------------------------


def test_srtp_a_strangers_packets_are_dropped_before_decryption() -> None:
    offered = CryptoAttribute.generate("AES_CM_128_HMAC_SHA1_80", 1)
    answered = answer_for(offered)
    digits: list[str] = []
    media = session(digits, srtp=SrtpContext(answered, offered))
    caller = SrtpContext(offered, answered)
    genuine = caller.protect_rtp(event(6, 10, 800))
    assert genuine is not None
    media.receive(genuine, STRANGER, 0.0)  # a copy of the caller's packet, from elsewhere
    media.receive(event(9, 11, 900), STRANGER, 0.0)  # in clear
    assert media.stats.dropped_foreign == 2 and media.stats.dropped_srtp == 0
    assert media.latched is None
    media.receive(genuine, CALLER_NAT, 0.01)  # its replay slot was not used up
    assert media.latched == CALLER_NAT and digits == ["6"]
    rtcp = caller.protect_rtcp(rtcp_bye())
    assert rtcp is not None
    media.receive_rtcp(rtcp, ("127.0.0.2", 40001), 0.02)
    assert media.stats.dropped_foreign == 3 and media.stats.rtcp == 0


# ---- a re-INVITE that moves the media -----------------------------------------------------------


def test_a_move_unlatches_and_filters_on_the_new_address() -> None:
    digits: list[str] = []
    media = session(digits)
    media.receive(audio(1), CALLER_NAT, 0.0)
    media.receive_rtcp(rtcp_bye(), ("127.0.0.1", 51001), 0.0)
    assert media.latched == CALLER_NAT and media.rtcp_latched is not None
    media.move(("127.0.0.3", 42000), ("127.0.0.3", 42001))  # the caller moved to 127.0.0.3
    assert media.latched is None and media.rtcp_latched is None
    assert media.remote == ("127.0.0.3", 42000) and media.rtcp_target == ("127.0.0.3", 42001)
    media.receive(event(9, 2, 5000), CALLER_NAT, 0.1)  # the old address is a stranger now
    media.receive_rtcp(rtcp_bye(), ("127.0.0.1", 51001), 0.1)
    assert media.stats.dropped_foreign == 2 and digits == []
    media.receive(event(3, 3, 6000), ("127.0.0.3", 42000), 0.2)
    assert media.latched == ("127.0.0.3", 42000) and digits == ["3"]


def test_a_reinvite_that_moves_nothing_keeps_the_latch() -> None:
    """A session refresh or codec change: the caller behind its NAT stays latched."""
    media = session()
    media.receive(audio(1), CALLER_NAT, 0.0)
    media.move(OFFERED, (OFFERED[0], OFFERED[1] + 1))
    assert media.latched == CALLER_NAT and media.remote == CALLER_NAT


def test_hold_keeps_the_callers_stream_and_latches_nothing_new() -> None:
    media = session()
    media.receive(audio(1), CALLER_NAT, 0.0)
    media.move(("0.0.0.0", 40000), ("0.0.0.0", 40001))  # re-INVITE c=0.0.0.0
    assert media.rtcp_target is None  # nothing is sent to a hold address
    media.receive(audio(2), CALLER_NAT, 0.1)  # the latched stream still counts
    media.receive(audio(3), ("127.0.0.1", 51002), 0.1)  # a new source, even at the old address
    media.receive(audio(4), STRANGER, 0.1)
    assert media.latched == CALLER_NAT
    assert media.stats.received == 2 and media.stats.dropped_foreign == 2
    media.move(OFFERED, (OFFERED[0], OFFERED[1] + 1))  # off hold: from the c= address again
    assert media.latched is None
    media.receive(audio(5), STRANGER, 0.2)
    media.receive(audio(6), CALLER_NAT, 0.2)
    assert media.latched == CALLER_NAT and media.stats.dropped_foreign == 3


def test_hold_before_any_media_latches_nothing() -> None:
    media = session()
    media.move(("0.0.0.0", 40000), ("0.0.0.0", 40001))
    media.receive(audio(1), CALLER_NAT, 0.0)
    media.receive_rtcp(rtcp_bye(), ("127.0.0.1", 51001), 0.0)
    assert media.latched is None and media.rtcp_latched is None
    assert media.stats.dropped_foreign == 2
