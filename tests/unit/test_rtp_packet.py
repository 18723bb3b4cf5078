"""RTP packet parsing/serialising, the fast builder and RTCP demultiplexing."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spg_media.rtp.packet import RtpError, RtpPacket, build_rtp, is_rtcp


def header(
    *,
    version: int = 2,
    padding: bool = False,
    extension: bool = False,
    cc: int = 0,
    marker: bool = False,
    pt: int = 0,
    seq: int = 1,
    ts: int = 2,
    ssrc: int = 3,
) -> bytes:
    first = (version << 6) | (padding << 5) | (extension << 4) | cc
    return struct.pack("!BBHII", first, (marker << 7) | pt, seq, ts, ssrc)


def test_parse_minimal_packet() -> None:
    data = header(marker=True, pt=101, seq=0xBEEF, ts=0xDEADBEEF, ssrc=0x12345678) + b"\x01\x0a"
    packet = RtpPacket.parse(data)
    assert packet == RtpPacket(
        version=2,
        padding=False,
        extension=False,
        marker=True,
        payload_type=101,
        sequence=0xBEEF,
        timestamp=0xDEADBEEF,
        ssrc=0x12345678,
        csrcs=(),
        payload=b"\x01\x0a",
    )
    assert packet.serialize() == data


def test_parse_empty_payload() -> None:
    packet = RtpPacket.parse(header())
    assert packet.payload == b""


def test_parse_csrcs() -> None:
    data = header(cc=2) + struct.pack("!II", 11, 22) + b"audio"
    packet = RtpPacket.parse(data)
    assert packet.csrcs == (11, 22)
    assert packet.payload == b"audio"
    assert packet.serialize() == data


def test_parse_header_extension() -> None:
    data = header(extension=True) + struct.pack("!HH", 0xBEDE, 2) + b"12345678" + b"audio"
    packet = RtpPacket.parse(data)
    assert packet.extension
    assert packet.extension_profile == 0xBEDE
    assert packet.extension_data == b"12345678"
    assert packet.payload == b"audio"
    assert packet.serialize() == data


def test_parse_csrc_extension_and_padding_together() -> None:
    data = (
        header(padding=True, extension=True, cc=1)
        + struct.pack("!I", 99)
        + struct.pack("!HH", 1, 1)
        + b"EXT!"
        + b"pay"
        + b"\x00\x00\x03"
    )
    packet = RtpPacket.parse(data)
    assert packet.csrcs == (99,)
    assert packet.extension_data == b"EXT!"
    assert packet.payload == b"pay"
    assert packet.padding


def test_padding_is_stripped_and_regenerated() -> None:
    data = header(padding=True) + b"abcde" + b"\x00\x00\x03"
    packet = RtpPacket.parse(data)
    assert packet.payload == b"abcde"
    reparsed = RtpPacket.parse(packet.serialize())
    assert reparsed == packet
    assert len(packet.serialize()) % 4 == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (header()[:11], "too short"),
        (header(version=0), "version 0"),
        (header(version=1), "version 1"),
        (header(version=3), "version 3"),
        (header(cc=3) + b"\x00" * 8, "CSRC"),
        (header(extension=True) + b"\x00\x00", "extension"),
        (header(extension=True) + struct.pack("!HH", 0, 3) + b"\x00" * 8, "extension"),
        (header(padding=True) + b"ab\x00", "padding length 0"),
        (header(padding=True) + b"ab\x09", "padding length 9"),
    ],
    ids=[
        "empty",
        "11-bytes",
        "v0",
        "v1",
        "v3",
        "csrc-past-end",
        "ext-header-past-end",
        "ext-data-past-end",
        "padding-zero",
        "padding-too-long",
    ],
)
def test_parse_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        RtpPacket.parse(data)


def test_rtp_error_is_a_value_error() -> None:
    assert issubclass(RtpError, ValueError)


def test_serialize_refuses_impossible_fields() -> None:
    too_many = RtpPacket(2, False, False, False, 0, 1, 2, 3, csrcs=tuple(range(16)))
    with pytest.raises(RtpError):
        too_many.serialize()
    bad_ext = RtpPacket(2, False, True, False, 0, 1, 2, 3, extension_data=b"abc")
    with pytest.raises(RtpError):
        bad_ext.serialize()


@pytest.mark.parametrize("marker", [False, True])
def test_build_rtp_matches_serialize(marker: bool) -> None:
    fast = build_rtp(8, 65535, 0xFFFFFFFF, 0xCAFEBABE, b"\xd5" * 160, marker)
    full = RtpPacket(2, False, False, marker, 8, 65535, 0xFFFFFFFF, 0xCAFEBABE, (), b"\xd5" * 160)
    assert fast == full.serialize()
    parsed = RtpPacket.parse(fast)
    assert parsed.marker is marker
    assert parsed.payload_type == 8


def test_build_rtp_wraps_sequence_and_timestamp() -> None:
    parsed = RtpPacket.parse(build_rtp(0, 65536 + 5, 2**32 + 7, 1, b""))
    assert (parsed.sequence, parsed.timestamp) == (5, 7)


@given(
    marker=st.booleans(),
    pt=st.integers(0, 127),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    ext=st.one_of(st.none(), st.binary(max_size=12).map(lambda b: b + bytes(-len(b) % 4))),
    payload=st.binary(max_size=200),
)
def test_roundtrip_property(
    marker: bool,
    pt: int,
    seq: int,
    ts: int,
    ssrc: int,
    csrcs: list[int],
    ext: bytes | None,
    payload: bytes,
) -> None:
    packet = RtpPacket(
        2,
        False,
        ext is not None,
        marker,
        pt,
        seq,
        ts,
        ssrc,
        tuple(csrcs),
        payload,
        extension_profile=0x1000 if ext is not None else 0,
        extension_data=ext or b"",
    )
    data = packet.serialize()
    assert RtpPacket.parse(data) == packet
    assert RtpPacket.parse(data).serialize() == data


@given(st.binary(max_size=64))
def test_parse_never_raises_anything_but_rtp_error(data: bytes) -> None:
    with contextlib.suppress(RtpError):
        RtpPacket.parse(data)


def rtcp(packet_type: int) -> bytes:
    return struct.pack("!BBHI", 0x80, packet_type, 1, 0x12345678) + b"\x00" * 20


@pytest.mark.parametrize("packet_type", [200, 201, 202, 203, 204, 205, 206, 207])
def test_is_rtcp_true_for_rtcp_packet_types(packet_type: int) -> None:
    assert is_rtcp(rtcp(packet_type))


@pytest.mark.parametrize(
    "data",
    [
        build_rtp(0, 1, 2, 3, b"\xff" * 160),
        build_rtp(8, 1, 2, 3, b"\xd5" * 160, marker=True),
        build_rtp(101, 1, 2, 3, b"\x01\x0a\x00\xa0", marker=True),
        build_rtp(127, 1, 2, 3, b"x", marker=True),  # 0xFF as second byte
        build_rtp(63, 1, 2, 3, b"x", marker=True),  # 0xBF: just below the RTCP range
        rtcp(200)[:7],  # too short to be RTCP
        b"\x40" + rtcp(200)[1:],  # version 1
        b"",
    ],
    ids=[
        "pcmu",
        "pcma-marker",
        "event-marker",
        "pt127-marker",
        "pt63-marker",
        "short",
        "v1",
        "empty",
    ],
)
def test_is_rtcp_false_for_rtp_and_junk(data: bytes) -> None:
    assert not is_rtcp(data)


def test_repr_never_shows_the_payload() -> None:
    """Telephone-event payloads carry keyed card digits: the repr must not print them."""
    secret = b"4111111111111111"
    packet = RtpPacket.parse(build_rtp(101, 1, 2, 3, secret))
    assert packet.payload == secret
    assert "4111" not in repr(packet) and "4111" not in str(packet)
    assert "payload=" not in repr(packet)
