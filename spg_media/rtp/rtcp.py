"""RTCP for one call (RFC 3550 §6): statistics of the peer's stream, our reports, their schedule.

This module owns the RTCP side of a call's media, sans IO: the caller hands `RtcpSession` every
RTP packet it accepts from the peer (`rtp_received`) and every one it sends (`rtp_sent`), the
peer's plain compound RTCP packets (`receive`, after SRTCP), and asks for our compound packets
when they are due (`report`, `bye`). Time is always passed in: `now` is the caller's monotonic
clock in seconds, `wall` the Unix time that becomes the NTP timestamps.

What it keeps, per the RFC's appendix:

* A.1 sequence statistics (probation, wrap, dropout and restart) and A.8 interarrival jitter for
  the peer's current RTP source only: a call has one peer, and a new SSRC that proves itself
  (MIN_SEQUENTIAL packets in sequence) means it restarted or was re-routed, so the old source's
  statistics go;
* A.3 report blocks about that source, with LSR/DLSR from the peer's last sender report;
* what the peer reports about our stream (loss, jitter) and the round trip from its LSR/DLSR;
* A.7 report intervals (no timer reconsideration: with two members it changes nothing) and the
  average compound packet size they depend on;
* A.2 validity checks on what it receives: anything malformed raises `RtcpError` and changes
  nothing.

It builds SR or RR, one SDES chunk with our CNAME, and BYE; it reads SR and RR and skips (after
checking their lengths) SDES, BYE, APP, feedback, XR and any other type in the RTCP range.
"""

from __future__ import annotations

import math
import random
import secrets
import struct
from dataclasses import dataclass, field

RTCP_VERSION = 2
SR = 200
RR = 201
SDES = 202
BYE = 203
RTCP_TYPES = range(192, 224)  # RFC 5761 §4: the packet types an RTCP packet may carry
SDES_CNAME = 1

RTP_SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000  # A.1's defaults
MAX_MISORDER = 100
MIN_SEQUENTIAL = 2

RTCP_MIN_TIME = 5.0  # seconds (half of it before the first report)
RTCP_BANDWIDTH_FRACTION = 0.05  # of the session bandwidth
RTCP_SENDER_BW_FRACTION = 0.25
RTCP_RCVR_BW_FRACTION = 1 - RTCP_SENDER_BW_FRACTION
COMPENSATION = 2.71828 - 1.5  # e - 3/2, as A.7 writes it: the interval's randomisation bias
UDP_IP_OVERHEAD = 28  # bytes of IPv4 and UDP header counted in every packet's size
DEFAULT_SESSION_BANDWIDTH = 64000.0 + 16000.0  # bit/s: G.711 and its RTP/UDP/IP headers at 50 pps

NTP_UNIX_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
MAX_ROUND_TRIP = 60 * 65536  # 1/65536 s: a longer one comes from a stale or foreign LSR
MAX_REASON = 255  # bytes: a BYE reason's length is one octet

_U32 = 0xFFFFFFFF
_SHARED_RNG = random.Random()  # the report intervals' randomisation (A.7), not a secret
_WRAP = float(1 << 32)  # RTP timestamps wrap
_HALF_WRAP = float(1 << 31)
_LOST_MIN = -(1 << 23)  # the cumulative lost field is 24-bit signed
_LOST_MAX = (1 << 23) - 1

_HEADER = struct.Struct("!BBH")
_SSRC = struct.Struct("!I")
_SENDER_INFO = struct.Struct("!IIIIII")  # SSRC, NTP seconds, NTP fraction, RTP ts, packets, octets
_REPORT_BLOCK = struct.Struct("!IIIIII")  # SSRC, fraction|lost, highest seq, jitter, LSR, DLSR
_SR_SIZE = _HEADER.size + _SENDER_INFO.size
_RR_SIZE = _HEADER.size + _SSRC.size


class RtcpError(ValueError):
    """A malformed RTCP compound packet. The message names what is wrong and never contains
    the packet's bytes."""


@dataclass
class RtcpSummary:
    """What RTCP knows about the call's two streams; see `RtcpSession.summary`."""

    received: int  # RTP packets received from the peer's current source
    expected: int  # extended highest seq - base seq + 1 (0 before any packet)
    lost: int  # expected - received, clamped at >= 0
    jitter_ms: float  # RFC 3550 A.8 interarrival jitter of its audio, in ms
    peer_fraction_lost: float | None  # from the last report block the peer sent about us (0..1)
    peer_lost: int | None  # its cumulative lost count
    peer_jitter_ms: float | None
    rtt_ms: float | None  # round trip from LSR/DLSR (RFC 3550 6.4.1), last known
    reports_sent: int
    reports_received: int  # compound packets from the peer accepted by receive()


def ntp_time(wall: float) -> int:
    """The 64-bit NTP timestamp of a Unix time (era 0: it wraps in 2036, as the field does)."""
    # Scaling by 2^32 is exact in a float, so the fraction is as precise as `wall` itself.
    return (math.floor(wall * (1 << 32)) + (NTP_UNIX_OFFSET << 32)) & 0xFFFFFFFFFFFFFFFF


def ntp_middle(wall: float) -> int:
    """The middle 32 bits of the NTP timestamp of a Unix time: LSR and round trip units."""
    return (ntp_time(wall) >> 16) & _U32


def short_term_cname() -> str:
    """An RFC 7022 §4.2 short-term CNAME: 96 random bits, base64url without padding."""
    return secrets.token_urlsafe(12)


class _Source:
    """RFC 3550 A.1's state for one RTP source of the peer, with A.8's jitter (in RTP units)."""

    __slots__ = (  # read and written for every RTP packet of every call: fixed offsets
        "bad_seq",
        "base_seq",
        "cycles",
        "expected_prior",
        "heard_since_report",
        "jitter",
        "max_seq",
        "probation",
        "received",
        "received_prior",
        "ssrc",
        "transit",
    )

    def __init__(self, ssrc: int, sequence: int) -> None:
        self.ssrc = ssrc
        self._init_seq(sequence)
        self.max_seq = (sequence - 1) & 0xFFFF
        self.probation = MIN_SEQUENTIAL
        self.transit: float | None = None  # arrival - timestamp of the last packet, RTP units
        self.jitter = 0.0
        self.heard_since_report = False

    def _init_seq(self, sequence: int) -> None:
        self.base_seq = sequence
        self.max_seq = sequence
        self.bad_seq = RTP_SEQ_MOD + 1  # so sequence == bad_seq is false
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    @property
    def valid(self) -> bool:
        return self.probation == 0

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1 if self.valid else 0

    def receive(self, sequence: int, timestamp: int, arrival: float, audio: bool) -> None:
        self.heard_since_report = True
        accepted = self._update_seq(sequence)
        # Jitter from every packet but one A.1 set aside as a jump (its timestamp would be
        # as far off as its sequence number); packets on probation count.
        if audio and (accepted or self.probation):
            self._update_jitter(timestamp, arrival)

    def _update_seq(self, sequence: int) -> bool:
        """A.1's update_seq: False for a packet not (yet) counted."""
        udelta = (sequence - self.max_seq) & 0xFFFF
        if self.probation:
            # Modulo 2^16: A.1's C compares with max_seq + 1 as an int, so never matches 0.
            if sequence == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = sequence
                if self.probation == 0:
                    self._init_seq(sequence)
                    self.received += 1
                    return True
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = sequence
            return False
        if udelta < MAX_DROPOUT:  # in order, with a permissible gap
            if sequence < self.max_seq:
                self.cycles += RTP_SEQ_MOD  # wrapped
            self.max_seq = sequence
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:  # a very large jump
            if sequence != self.bad_seq:
                self.bad_seq = (sequence + 1) & 0xFFFF
                return False
            # Two sequential packets after a jump: the sender restarted without a new SSRC.
            self._init_seq(sequence)
            self.transit = None  # its timestamps started over too
        # else: a duplicate or a reordered packet, counted (so lost can go below zero)
        self.received += 1
        return True

    def _update_jitter(self, timestamp: int, arrival: float) -> None:
        transit = arrival - timestamp
        if self.transit is not None:
            # Signed modulo 2^32: the sender's timestamps wrap, our arrival times do not.
            delta = (transit - self.transit + (1 << 31)) % (1 << 32) - (1 << 31)
            self.jitter += (abs(delta) - self.jitter) / 16
        self.transit = transit

    def report_block(self, last_sr: int, delay_since_last_sr: int) -> bytes:
        """A.3's report block about this source; starts the next interval's loss count."""
        expected = self.expected
        lost = min(max(expected - self.received, _LOST_MIN), _LOST_MAX)
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior = expected
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval <= 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = min((lost_interval << 8) // expected_interval, 255)
        self.heard_since_report = False
        return _REPORT_BLOCK.pack(
            self.ssrc,
            (fraction << 24) | (lost & 0xFFFFFF),
            self.extended_max & _U32,
            min(int(self.jitter), _U32),
            last_sr,
            delay_since_last_sr,
        )


@dataclass(frozen=True)
class _ReportBlock:
    """A report block the peer sent, as read off the wire."""

    ssrc: int
    fraction_lost: int  # in 1/256
    cumulative_lost: int
    jitter: int  # RTP timestamp units
    last_sr: int
    delay_since_last_sr: int  # 1/65536 s


@dataclass
class _Compound:
    """What a valid compound packet says that matters here."""

    sender_reports: list[tuple[int, int]] = field(default_factory=list)  # (SSRC, NTP middle)
    report_blocks: list[tuple[int, _ReportBlock]] = field(default_factory=list)  # (reporter, ..)


def _signed24(value: int) -> int:
    return value - (1 << 24) if value & 0x800000 else value


def _parse_compound(data: bytes) -> _Compound:
    """Check a compound packet as A.2 does and read its SRs and RRs; raise `RtcpError`."""
    size = len(data)
    if size < _RR_SIZE:
        raise RtcpError(f"RTCP compound packet too short ({size} bytes)")
    if size % 4:
        raise RtcpError(f"RTCP compound packet of {size} bytes is not whole 32-bit words")
    compound = _Compound()
    offset = 0
    index = 0
    while offset < size:
        first, packet_type, words = _HEADER.unpack_from(data, offset)
        version = first >> 6
        if version != RTCP_VERSION:
            raise RtcpError(f"RTCP packet {index} has version {version}, not 2")
        if index == 0 and packet_type not in (SR, RR):
            raise RtcpError(f"RTCP compound packet starts with type {packet_type}, not SR or RR")
        if packet_type not in RTCP_TYPES:
            raise RtcpError(f"RTCP packet {index} has type {packet_type}, outside 192-223")
        end = offset + 4 * (words + 1)
        if end > size:
            raise RtcpError(
                f"RTCP packet {index} length ({end - offset} bytes) runs past the end of the"
                f" compound packet ({size - offset} bytes left)"
            )
        body_end = end
        if first & 0x20:
            if end != size:
                raise RtcpError(f"RTCP packet {index} has padding but is not the last packet")
            padding = data[end - 1]
            if padding == 0 or padding > end - offset - _HEADER.size:
                raise RtcpError(f"RTCP packet {index} padding length {padding} is invalid")
            body_end = end - padding
        if packet_type in (SR, RR):
            _read_report(data, offset, body_end, packet_type, first & 0x1F, index, compound)
        offset = end
        index += 1
    return compound


def _read_report(
    data: bytes, offset: int, end: int, packet_type: int, count: int, index: int, into: _Compound
) -> None:
    """An SR's or RR's sender and report blocks (anything after them is a profile extension)."""
    blocks_at = offset + (_SR_SIZE if packet_type == SR else _RR_SIZE)
    if blocks_at + count * _REPORT_BLOCK.size > end:
        raise RtcpError(f"RTCP packet {index} is too short for its {count} report blocks")
    (reporter,) = _SSRC.unpack_from(data, offset + _HEADER.size)
    if packet_type == SR:
        _, seconds, fraction, _, _, _ = _SENDER_INFO.unpack_from(data, offset + _HEADER.size)
        into.sender_reports.append((reporter, ((seconds << 16) | (fraction >> 16)) & _U32))
    for at in range(blocks_at, blocks_at + count * _REPORT_BLOCK.size, _REPORT_BLOCK.size):
        ssrc, lost_word, _, jitter, last_sr, delay = _REPORT_BLOCK.unpack_from(data, at)
        block = _ReportBlock(
            ssrc, lost_word >> 24, _signed24(lost_word & 0xFFFFFF), jitter, last_sr, delay
        )
        into.report_blocks.append((reporter, block))


def _header(packet_type: int, count: int, body: bytes) -> bytes:
    """An RTCP header for a body of whole words (version 2, no padding, length = words - 1)."""
    return _HEADER.pack((RTCP_VERSION << 6) | count, packet_type, len(body) // 4) + body


def _sdes_cname(ssrc: int, cname: bytes) -> bytes:
    """An SDES packet with one chunk: the SSRC, its CNAME, and the null octets that end the
    item list and pad the chunk to a 32-bit boundary (at least one)."""
    items = bytes([SDES_CNAME, len(cname)]) + cname
    chunk = _SSRC.pack(ssrc) + items + bytes(4 - len(items) % 4)
    return _header(SDES, 1, chunk)


def _bye(ssrc: int, reason: str) -> bytes:
    body = _SSRC.pack(ssrc)
    if reason:
        # Cut at a character boundary: a partial UTF-8 sequence is not text.
        text = reason.encode(errors="replace")[:MAX_REASON].decode(errors="ignore").encode()
        body += bytes([len(text)]) + text
        body += bytes(-len(body) % 4)
    return _header(BYE, 1, body)


class RtcpSession:
    """RTCP for one call; see the module docstring."""

    __slots__ = (  # rtp_received runs for every RTP packet of every call: fixed offsets
        "_avg_rtcp_size",
        "_candidate",
        "_initial",
        "_last_sent",
        "_next_report_at",
        "_octets_sent",
        "_packets_sent",
        "_peer_fraction_lost",
        "_peer_heard",
        "_peer_jitter_ms",
        "_peer_lost",
        "_peer_sent_at",
        "_peer_sr",
        "_report_times",
        "_reports_received",
        "_reports_sent",
        "_rng",
        "_rtcp_bandwidth",
        "_rtt_ms",
        "_sdes",
        "_source",
        "clock_rate",
        "cname",
        "ssrc",
    )

    def __init__(
        self,
        ssrc: int,
        now: float,
        clock_rate: int = 8000,
        cname: str | None = None,
        rng: random.Random | None = None,
        session_bandwidth: float = DEFAULT_SESSION_BANDWIDTH,
    ) -> None:
        if not 0 <= ssrc <= _U32:
            raise ValueError("SSRC must be a 32-bit unsigned integer")
        if clock_rate <= 0 or session_bandwidth <= 0:
            raise ValueError("clock rate and session bandwidth must be positive")
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.cname = short_term_cname() if cname is None else cname
        cname_bytes = self.cname.encode()
        if not 1 <= len(cname_bytes) <= 255:
            raise ValueError("a CNAME is 1 to 255 bytes of UTF-8")
        self._sdes = _sdes_cname(ssrc, cname_bytes)
        # One generator for every session by default (its 2.5 KiB of state a call was the
        # biggest thing an RTCP session held): it only spreads the report times.
        self._rng = _SHARED_RNG if rng is None else rng
        self._rtcp_bandwidth = RTCP_BANDWIDTH_FRACTION * session_bandwidth / 8  # bytes/s
        # The peer's RTP: its current source, and another SSRC on probation to replace it.
        self._source: _Source | None = None
        self._candidate: _Source | None = None
        self._peer_heard = False
        self._peer_sent_at: float | None = None  # its last RTP packet or SR
        self._peer_sr: tuple[int, float] | None = None  # (NTP middle bits, arrival) of its last SR
        # What the peer says about our stream.
        self._peer_fraction_lost: float | None = None
        self._peer_lost: int | None = None
        self._peer_jitter_ms: float | None = None
        self._rtt_ms: float | None = None
        # Our RTP.
        self._packets_sent = 0
        self._octets_sent = 0
        self._last_sent: tuple[int, float] | None = None  # (RTP timestamp, now) of the latest
        # The schedule.
        self._report_times: list[float] = []  # of our last two reports
        self._reports_sent = 0
        self._reports_received = 0
        self._initial = True
        # RFC 3550 6.3.2: start at the probable size of our first compound packet. A gateway
        # sends audio (prompts or silence) from the start and hears the caller: an SR with
        # one report block.
        self._avg_rtcp_size = float(
            _SR_SIZE + _REPORT_BLOCK.size + len(self._sdes) + UDP_IP_OVERHEAD
        )
        self._next_report_at = now + self._interval()

    # ---- RTP seen -------------------------------------------------------------------------

    def rtp_received(
        self, ssrc: int, sequence: int, timestamp: int, now: float, audio: bool = True
    ) -> None:
        """An RTP packet accepted from the peer. `audio=False` for telephone events: they keep
        one timestamp for a whole key press, which would read as jitter."""
        self._peer_heard = True
        self._peer_sent_at = now
        arrival = now * self.clock_rate
        source = self._source
        if (
            source is not None
            and source.ssrc == ssrc
            and not source.probation
            and sequence == (source.max_seq + 1) & 0xFFFF
        ):
            # Nearly every packet: the next one of the current source. `_Source.receive`
            # inlined, as this runs for every packet of every call.
            if not sequence:
                source.cycles += RTP_SEQ_MOD
            source.max_seq = sequence
            source.received += 1
            source.heard_since_report = True
            if self._candidate is not None:
                self._candidate = None
            if audio:
                transit = arrival - timestamp
                last = source.transit
                if last is not None:
                    # Signed modulo 2^32, as in _update_jitter: the timestamps may wrap between
                    # the two while the arrivals move on (|transit - last| can pass 2^32).
                    delta = (transit - last + _HALF_WRAP) % _WRAP - _HALF_WRAP
                    if delta < 0:
                        delta = -delta
                    source.jitter += (delta - source.jitter) * 0.0625  # 1/16
                source.transit = transit
            return
        if source is None or (source.ssrc != ssrc and not source.valid):
            # The first source, or one that replaces a source that never proved itself.
            source = self._source = _Source(ssrc, sequence)
            self._candidate = None
        elif source.ssrc != ssrc:
            # Another SSRC takes over once it passes probation on its own: a stray packet, or
            # two sources interleaved, leave the current one alone.
            candidate = self._candidate
            if candidate is None or candidate.ssrc != ssrc:
                candidate = self._candidate = _Source(ssrc, sequence)
            candidate.receive(sequence, timestamp, arrival, audio)
            if candidate.valid:
                self._source, self._candidate = candidate, None
            return
        self._candidate = None
        source.receive(sequence, timestamp, arrival, audio)

    def rtp_sent(self, timestamp: int, payload_bytes: int, now: float) -> None:
        """An RTP packet we sent (`payload_bytes`: its payload only, as the SR counts)."""
        self._packets_sent += 1
        self._octets_sent += payload_bytes
        self._last_sent = (timestamp, now)

    def sent_so_far(self, packets: int, octets: int, timestamp: int, at: float) -> None:
        """All we have sent, as the caller counted it: instead of `rtp_sent` per packet, given
        before each report (packets, payload octets, and the latest packet's timestamp and
        send time)."""
        self._packets_sent = packets
        self._octets_sent = octets
        self._last_sent = (timestamp, at)

    # ---- RTCP received --------------------------------------------------------------------

    def receive(self, data: bytes, now: float, wall: float) -> None:
        """A plain compound RTCP packet from the peer; `RtcpError` (and no change) if malformed."""
        compound = _parse_compound(data)
        self._reports_received += 1
        self._peer_heard = True
        self._avg_rtcp_size += (len(data) + UDP_IP_OVERHEAD - self._avg_rtcp_size) / 16
        for reporter, middle in compound.sender_reports:
            if reporter != self.ssrc:  # our own report looped back is not the peer's
                self._peer_sr = (middle, now)
                self._peer_sent_at = now
        arrived = ntp_middle(wall)
        for reporter, block in compound.report_blocks:
            if block.ssrc != self.ssrc or reporter == self.ssrc:
                continue
            self._peer_fraction_lost = block.fraction_lost / 256
            self._peer_lost = block.cumulative_lost
            self._peer_jitter_ms = block.jitter / self.clock_rate * 1000
            if block.last_sr:
                round_trip = (arrived - block.last_sr - block.delay_since_last_sr) & _U32
                if round_trip <= MAX_ROUND_TRIP:
                    self._rtt_ms = round_trip * 1000 / 65536

    # ---- RTCP sent ------------------------------------------------------------------------

    def next_report_at(self) -> float:
        """When `report` next returns a packet (infinity after `bye`)."""
        return self._next_report_at

    def report(self, now: float, wall: float) -> bytes | None:
        """The compound packet to send now, or None if none is due yet."""
        if now < self._next_report_at:
            return None
        packet = self._compound(now, wall)
        self._next_report_at = now + self._interval()
        return packet

    def bye(self, now: float, wall: float, reason: str = "") -> bytes:
        """The last compound packet, whatever the schedule: a report, SDES and BYE. No report
        is due after it."""
        packet = self._compound(now, wall, _bye(self.ssrc, reason))
        self._next_report_at = math.inf
        return packet

    def _compound(self, now: float, wall: float, bye: bytes = b"") -> bytes:
        source = self._source
        blocks = b""
        if source is not None and source.valid and source.heard_since_report:
            if self._peer_sr is None:
                last_sr = delay = 0
            else:
                last_sr, sr_arrival = self._peer_sr
                delay = min(max(round((now - sr_arrival) * 65536), 0), _U32)
            blocks = source.report_block(last_sr, delay)
        count = len(blocks) // _REPORT_BLOCK.size
        if self._we_sent() and self._last_sent is not None:
            sent_timestamp, sent_at = self._last_sent
            ntp = ntp_time(wall)
            rtp_timestamp = sent_timestamp + round((now - sent_at) * self.clock_rate)
            sender_info = _SENDER_INFO.pack(
                self.ssrc,
                ntp >> 32,
                ntp & _U32,
                rtp_timestamp & _U32,
                self._packets_sent & _U32,
                self._octets_sent & _U32,
            )
            report = _header(SR, count, sender_info + blocks)
        else:
            report = _header(RR, count, _SSRC.pack(self.ssrc) + blocks)
        packet = report + self._sdes + bye
        self._reports_sent += 1
        self._report_times = [*self._report_times[-1:], now]
        self._initial = False
        self._avg_rtcp_size += (len(packet) + UDP_IP_OVERHEAD - self._avg_rtcp_size) / 16
        return packet

    # ---- the schedule (RFC 3550 6.3, A.7) -------------------------------------------------

    def _window_start(self) -> float:
        """Start of "the last two report intervals": our report before the last one."""
        return self._report_times[-2] if len(self._report_times) >= 2 else -math.inf

    def _we_sent(self) -> bool:
        return self._last_sent is not None and self._last_sent[1] >= self._window_start()

    def _peer_sends(self) -> bool:
        return self._peer_sent_at is not None and self._peer_sent_at >= self._window_start()

    def _interval(self) -> float:
        """A.7's rtcp_interval, in seconds, from the session's state now."""
        members = 2 if self._peer_heard else 1
        we_sent = self._we_sent()
        senders = int(we_sent) + int(self._peer_sends())
        bandwidth = self._rtcp_bandwidth
        n = members
        if senders <= members * RTCP_SENDER_BW_FRACTION:
            # Few senders: they share a quarter of the RTCP bandwidth, receivers the rest.
            if we_sent:
                bandwidth *= RTCP_SENDER_BW_FRACTION
                n = senders
            else:
                bandwidth *= RTCP_RCVR_BW_FRACTION
                n -= senders
        interval = self._avg_rtcp_size * n / bandwidth
        minimum = RTCP_MIN_TIME / 2 if self._initial else RTCP_MIN_TIME
        interval = max(interval, minimum)
        return interval * (self._rng.random() + 0.5) / COMPENSATION

    # ---- what is known --------------------------------------------------------------------

    @property
    def summary(self) -> RtcpSummary:
        source = self._source
        received = source.received if source is not None and source.valid else 0
        expected = source.expected if source is not None else 0
        jitter = source.jitter if source is not None else 0.0
        return RtcpSummary(
            received=received,
            expected=expected,
            lost=max(expected - received, 0),
            jitter_ms=jitter / self.clock_rate * 1000,
            peer_fraction_lost=self._peer_fraction_lost,
            peer_lost=self._peer_lost,
            peer_jitter_ms=self._peer_jitter_ms,
            rtt_ms=self._rtt_ms,
            reports_sent=self._reports_sent,
            reports_received=self._reports_received,
        )
