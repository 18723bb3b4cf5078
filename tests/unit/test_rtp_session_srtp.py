"""MediaSession with SRTP keys: what reaches the call is only genuine, new, authenticated media.

Each test keys a session the way a call does (our answer line, the caller's offer line) and plays
the caller with the mirror context, then feeds forged, truncated, replayed, plain and foreign
packets in the middle of a key press and checks they are dropped, counted and harmless.
"""

from __future__ import annotations

import struct

import pytest

from spg_media import observability as obs
from spg_media.dtmf.rfc4733 import DtmfEvent
from spg_media.rtp.packet import RtpPacket, build_rtp
from spg_media.rtp.session import MediaSession
from spg_media.rtp.srtp import SUPPORTED_SUITES, CryptoAttribute, SrtpContext, answer_for

CALLER = ("127.0.0.1", 40000)
STRANGER = ("127.0.0.1", 40002)


def keyed(suite: str = "AES_CM_128_HMAC_SHA1_80") -> tuple[MediaSession, SrtpContext, list[str]]:
    """(our session, the caller's SRTP context, the digits the session delivered)."""
    offered = CryptoAttribute.generate(suite, 1)  # the caller's key
    answered = answer_for(offered)  # ours
    digits: list[str] = []

    def on_dtmf(event: DtmfEvent) -> None:
        if event.kind == "start":
            digits.append(event.digit)

    media = MediaSession(
        codec="PCMU",
        remote=("127.0.0.1", 9),
        dtmf_payload_type=101,
        on_dtmf=on_dtmf,
        srtp=SrtpContext(answered, offered),
    )
    return media, SrtpContext(offered, answered), digits


def press(caller: SrtpContext, key: int, seq: int, ts: int) -> list[bytes]:
    """A short RFC 4733 press as protected packets: two updates and the end three times."""
    packets = []
    for n, (duration, end) in enumerate(((160, False), (320, False), (480, True), (480, True))):
        flags = 0x80 | 10 if end else 10
        plain = build_rtp(
            101, seq + n, ts, 0x5150, struct.pack("!BBH", key, flags, duration), n == 0
        )
        protected = caller.protect_rtp(plain)
        assert protected is not None
        packets.append(protected)
    return packets


@pytest.mark.parametrize("suite", SUPPORTED_SUITES)
def test_genuine_packets_are_decrypted_and_delivered(suite: str) -> None:
    media, caller, digits = keyed(suite)
    for n, packet in enumerate(press(caller, 7, 100, 8000)):
        media.receive(packet, CALLER, n * 0.02)
    assert digits == ["7"]
    assert media.latched == CALLER and media.stats.dropped_srtp == 0


def test_forged_truncated_replayed_and_plain_packets_mid_press_are_dropped() -> None:
    media, caller, digits = keyed()
    first, second, end, end_again = press(caller, 4, 200, 16000)
    media.receive(first, CALLER, 0.0)
    forged = bytearray(second)
    forged[-3] ^= 0x01  # one bit of the authentication tag
    media.receive(bytes(forged), CALLER, 0.01)
    tampered = bytearray(second)
    tampered[14] ^= 0x40  # one bit of the encrypted payload: the tag no longer matches
    media.receive(bytes(tampered), CALLER, 0.012)
    media.receive(second[:11], CALLER, 0.015)  # shorter than an RTP header
    media.receive(second[:-10], CALLER, 0.016)  # no authentication tag
    media.receive(second, CALLER, 0.02)  # the genuine one still counts after all that
    media.receive(second, CALLER, 0.03)  # replay
    media.receive(first, CALLER, 0.035)  # replay of an older packet
    # An attacker's press in clear: must not become a digit.
    clear = build_rtp(101, 203, 24000, 0x5150, struct.pack("!BBH", 9, 10, 160), True)
    media.receive(clear, CALLER, 0.04)
    media.receive(end, CALLER, 0.05)
    media.receive(end_again, CALLER, 0.06)
    assert digits == ["4"]
    assert media.stats.dropped_srtp == 7
    assert media.srtp is not None
    drops = media.srtp.drops.as_dict()
    assert drops["replay"] == 2 and drops["auth"] + drops["malformed"] == 5
    assert media.stats.received == 4  # only the genuine packets, each once


def test_a_stranger_can_neither_latch_nor_inject() -> None:
    media, caller, digits = keyed()
    clear = build_rtp(101, 1, 160, 0x77, struct.pack("!BBH", 1, 10, 160), True)
    media.receive(clear, STRANGER, 0.0)  # forged before the caller spoke: no latch
    assert media.latched is None and media.stats.dropped_srtp == 1
    packets = press(caller, 2, 10, 800)
    media.receive(packets[0], CALLER, 0.01)
    assert media.latched == CALLER
    media.receive(packets[1], STRANGER, 0.02)  # a copy of a genuine packet from elsewhere
    assert media.stats.dropped_foreign == 1
    media.receive(packets[1], CALLER, 0.03)  # the real one is not burnt as a replay
    assert media.stats.dropped_srtp == 1 and media.stats.received == 2
    assert digits == ["2"]


def test_srtcp_is_checked_too() -> None:
    media, caller, _ = keyed()
    report = struct.pack("!BBHI", 0x80, 201, 1, 0x5150)  # an empty receiver report
    protected = caller.protect_rtcp(report)
    assert protected is not None
    media.receive(protected, CALLER, 0.0)
    assert media.stats.rtcp == 1
    media.receive(protected, CALLER, 0.01)  # replayed
    media.receive(report, CALLER, 0.02)  # in clear
    assert media.stats.rtcp == 1 and media.stats.dropped_srtp == 2


def test_outgoing_packets_are_protected_and_the_caller_can_read_them() -> None:
    media, caller, _ = keyed()
    prompt = bytes(range(1, 161))
    media.play(prompt)
    wire = media.next_packet()
    assert wire is not None and prompt not in wire
    plain = caller.unprotect_rtp(wire)
    assert plain is not None and RtpPacket.parse(plain).payload == prompt
    silence = media.next_packet()
    assert silence is not None and b"\xff" * 16 not in silence


def test_rekey_keeps_packets_in_flight_then_uses_the_new_key() -> None:
    media, caller, digits = keyed()
    assert media.srtp is not None
    old_packets = press(caller, 3, 500, 4000)
    media.receive(old_packets[0], CALLER, 0.0)
    new_offer = CryptoAttribute.generate("AES_CM_128_HMAC_SHA1_80", 1)
    media.srtp = media.srtp.rekey(media.srtp.local, new_offer)
    for n, packet in enumerate(old_packets[1:]):  # sent before the re-INVITE, arriving after
        media.receive(packet, CALLER, 0.02 * (n + 1))
    assert digits == ["3"]
    new_caller = SrtpContext(new_offer, media.srtp.local)
    for n, packet in enumerate(press(new_caller, 8, 504, 6000)):
        media.receive(packet, CALLER, 0.2 + 0.02 * n)
    assert digits == ["3", "8"]
    late = old_packets[0]  # the old key is retired once the new one authenticated
    media.receive(late, CALLER, 0.5)
    assert media.stats.dropped_srtp == 1


def test_drops_reach_the_process_counter_and_no_key_in_repr() -> None:
    media, caller, _ = keyed()
    before = obs.RTP_DROPPED_TOTAL.get(reason="srtp")
    packet = press(caller, 1, 1, 160)[0]
    media.receive(packet, CALLER, 0.0)
    media.receive(packet, CALLER, 0.01)
    media.receive(b"\x80" + b"\x00" * 30, CALLER, 0.02)
    media.report_stats()
    assert obs.RTP_DROPPED_TOTAL.get(reason="srtp") - before == 2
    assert media.srtp is not None
    for attribute in (media.srtp.local, media.srtp.remote):
        key = attribute.sdp_value().split("inline:")[1].split("|")[0]
        assert key not in repr(media) and key not in str(media.srtp)
