"""RTP packets (RFC 3550): parsing, serialising, a fast builder, and RTCP demultiplexing.

This module owns the RTP wire format. `RtpPacket.parse` is the complete, validating parser (CSRC
list, header extension, padding); `build_rtp` is the hot-path builder used for every outgoing
packet (one `struct.pack` and one concatenation); `is_rtcp` tells RTCP that arrives on the RTP
port (RFC 5761 multiplexing, or a peer that simply sends it there) from RTP, so it can be ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RTP_VERSION = 2
RTP_HEADER_SIZE = 12

_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
_FIRST_BYTE_V2 = RTP_VERSION << 6
_new_object = object.__new__


class RtpError(ValueError):
    """The bytes are not a well-formed RTP packet."""


@dataclass(frozen=True)
class RtpPacket:
    """One RTP packet. `payload` excludes the CSRCs, the header extension and any padding.

    `padding` records that the packet carried padding; `serialize` then pads the payload to a
    4-byte boundary (the original padding length is not kept: it carries no information).
    The payload is not in the repr: telephone events and in-band tones are keyed card digits.
    """

    version: int
    padding: bool
    extension: bool
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    csrcs: tuple[int, ...] = ()
    payload: bytes = field(default=b"", repr=False)  # may carry keyed digits: never printed
    extension_profile: int = 0
    extension_data: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one packet; raise `RtpError` for anything short or inconsistent."""
        size = len(data)
        if size < RTP_HEADER_SIZE:
            raise RtpError(f"RTP packet too short ({size} bytes)")
        first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        version = first >> 6
        if version != RTP_VERSION:
            raise RtpError(f"RTP version {version} is not 2")
        padding = bool(first & 0x20)
        extension = bool(first & 0x10)
        csrc_count = first & 0x0F
        offset = RTP_HEADER_SIZE + 4 * csrc_count
        if offset > size:
            raise RtpError("RTP CSRC list runs past the end of the packet")
        csrcs = struct.unpack_from(f"!{csrc_count}I", data, RTP_HEADER_SIZE) if csrc_count else ()
        extension_profile = 0
        extension_data = b""
        if extension:
            if offset + 4 > size:
                raise RtpError("RTP header extension runs past the end of the packet")
            extension_profile, words = _EXTENSION_HEADER.unpack_from(data, offset)
            offset += 4
            end = offset + 4 * words
            if end > size:
                raise RtpError("RTP header extension runs past the end of the packet")
            extension_data = bytes(data[offset:end])
            offset = end
        payload_end = size
        if padding:
            pad = data[-1]
            if pad == 0 or offset + pad > size:
                raise RtpError(f"RTP padding length {pad} is invalid")
            payload_end = size - pad
        # Every received packet goes through here: fill the instance's __dict__ in one call
        # instead of the frozen dataclass __init__'s twelve object.__setattr__ calls (~3x faster).
        packet = _new_object(cls)
        packet.__dict__.update(
            version=version,
            padding=padding,
            extension=extension,
            marker=bool(second & 0x80),
            payload_type=second & 0x7F,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            csrcs=tuple(csrcs),
            payload=bytes(data[offset:payload_end]),
            extension_profile=extension_profile,
            extension_data=extension_data,
        )
        return packet

    def serialize(self) -> bytes:
        if len(self.csrcs) > 15:
            raise RtpError("at most 15 CSRCs fit in an RTP header")
        if len(self.extension_data) % 4:
            raise RtpError("RTP header extension data must be a multiple of 4 bytes")
        first = (
            (self.version << 6)
            | (0x20 if self.padding else 0)
            | (0x10 if self.extension else 0)
            | len(self.csrcs)
        )
        second = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        parts = [
            _HEADER.pack(
                first,
                second,
                self.sequence & 0xFFFF,
                self.timestamp & 0xFFFFFFFF,
                self.ssrc & 0xFFFFFFFF,
            )
        ]
        if self.csrcs:
            parts.append(struct.pack(f"!{len(self.csrcs)}I", *self.csrcs))
        if self.extension:
            words = len(self.extension_data) // 4
            parts.append(_EXTENSION_HEADER.pack(self.extension_profile, words))
            parts.append(self.extension_data)
        parts.append(self.payload)
        if self.padding:
            pad = 4 - (len(self.payload) % 4)  # 1..4: the count byte itself is padding
            parts.append(bytes(pad - 1) + bytes([pad]))
        return b"".join(parts)


def build_rtp(
    payload_type: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False
) -> bytes:
    """A plain RTP packet (no CSRC, extension or padding): the per-packet send path."""
    second = (0x80 | payload_type) if marker else payload_type
    return _HEADER.pack(_FIRST_BYTE_V2, second, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def is_rtcp(data: bytes) -> bool:
    """True for an RTCP packet that arrived on the RTP port.

    RFC 5761 §4 demultiplexes on the second octet: RTCP packet types (SR 200, RR 201, SDES 202,
    BYE 203, APP 204, and the later feedback/XR types) fall in 192–223, which as RTP would be a
    marker bit with payload type 64–95 — the range RFC 5761 forbids for RTP when multiplexing.
    """
    return len(data) >= 8 and (data[0] >> 6) == RTP_VERSION and 192 <= data[1] <= 223
