"""Per-call RTP sessions and the shared media tick.

`MediaSession` is the sans-IO state of one call's media: it latches onto the first source that
sends RTP to its port (symmetric RTP: our packets go back there; other sources are dropped and
counted), hands telephone-event payloads to the RFC 4733 receiver, and produces the call's
outgoing packets — prompt audio cut into payloads once (`rtp.prompts`: shared by the calls that
play the same prompt), or silence — one packet per `ptime`. With an `srtp` context, incoming
packets are authenticated and decrypted BEFORE anything else looks at them (so a forged packet
can neither latch the session nor reach the DTMF receivers) and outgoing ones protected.

Who may latch: only a source at the address of the caller's SDP `c=` line (any port: a NAT may
change it), or inside one of `media_sources` (the CIDRs of a media relay in front of the node,
`rtp.media_sources`). Anyone else who finds the port is dropped and counted (`dropped_foreign`,
`spg_rtp_dropped_total{reason="source"}`) and never gets a packet from us: a stranger can
neither key digits into the call nor hear its prompts. The check is made before SRTP (a
stranger's packets cost no decryption and cannot use up a genuine packet's replay slot), for
RTCP on the RTCP port and with rtcp-mux alike. Once latched, the check is one tuple comparison.
A re-INVITE or UPDATE that moves the media (`move`) unlatches the session and filters on the new
address; one that moves nothing keeps the latch. A hold address (`c=0.0.0.0`, `::`) matches no
source: nothing new can latch (a stream already latched, the caller's own, is still taken).

`MediaEngine` is the asyncio shell: one UDP socket per session (an even port drawn at random from
the range, so that a call's port cannot be guessed) and ONE timer for all sessions. The calls
from a relay may instead share one port pair (`open_shared`, `rtp.shared_port = "relays"`;
spg_media.rtp.shared_port): keyed by their exact SDP source, read with one `recvmmsg` a pass
and written with one `sendmmsg` a tick, their SSRCs pinned. The sockets
are not the event loop's: the 20 ms tick asks one epoll which have datagrams and reads them
(`_receive`: `recvmsg`, each dated by the kernel's arrival stamp, at most READ_ROUNDS a socket a
tick), lets the calls take their digits, and sends every due packet with the socket's `sendto`;
three more receive passes run between ticks (RECEIVE_PASSES), so a datagram waits at most 5 ms.
The tick runs the in-band DTMF detector once over the audio the `inband` sessions received
(grouped into one numpy block per size, one decode per codec), and the passes between ticks
for the channels where a tone may be starting (`_detect_hot`); it hands the events to each
session's `on_dtmf` like RFC 4733 events; a start is dated by the arrival of the packet that
carried the tones' onset (`arrived_at`).

RTCP (RFC 3550 §6): each session keeps an `RtcpSession` from `attach` on, fed every RTP packet
it accepts and sends. The engine binds the odd port above each RTP port for RTCP; reports go
out from the tick when due (SRTCP for an SRTP call), to the peer's RTCP port (`rtcp_remote`:
a=rtcp or its RTP port + 1, then wherever its RTCP really comes from), or over the RTP port
with `rtcp_mux`; a BYE goes out when the session closes. RTCP on the RTCP port is taken only
from the address the call's RTP comes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import itertools
import logging
import math
import platform
import random
import select
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from spg_media.dtmf.inband import GAP_BREAK_S, InbandDetector
from spg_media.dtmf.rfc4733 import DtmfEvent, Rfc4733Receiver
from spg_media.observability import (
    RTCP_PACKETS_TOTAL,
    RTP_DROPPED_TOTAL,
    RTP_JITTER_SECONDS,
    RTP_LOST_TOTAL,
    RTP_PACKETS_TOTAL,
    RTP_SHARED_PORT_CALLS,
)
from spg_media.rtp import mmsg
from spg_media.rtp.g711 import DECODE_TABLES, decode_array, encode
from spg_media.rtp.masking import BLOCK, MASKS, ToneMasker
from spg_media.rtp.packet import RTP_HEADER_SIZE, RtpError, RtpPacket
from spg_media.rtp.prompts import CutAudio
from spg_media.rtp.rtcp import RtcpError, RtcpSession
from spg_media.rtp.shared_port import RECEIVE_BUFFER as SHARED_RECEIVE_BUFFER
from spg_media.rtp.shared_port import SharedPort
from spg_media.rtp.srtp import SrtpContext

log = logging.getLogger("spg.rtp")

SILENCE_BYTE = {"PCMU": 0xFF, "PCMA": 0xD5}
# Audio payloads kept for the in-band detector between ticks: 1 s at 20 ms, so that a tick that
# comes late (a stalled event loop, a burst from the sender) loses none and the detector gets
# the backlog in one more call. It was 10 (200 ms): a longer stall dropped the newest packets,
# uncounted. A payload past it is dropped and counted (`MediaStats.audio_dropped`).
MAX_PENDING_FRAMES = 50
RELAY_MAX_FRAMES = 10  # bridged audio kept between ticks (late relayed audio is worth nothing)
# Audio missing longer than this (by the RTP timestamps of what the detector is given) restarts
# its channel, as the detector does by its own clock for other callers (GAP_BREAK_S, 100 ms).
GAP_SAMPLES = round(GAP_BREAK_S * 8000)
# A payload queued for the in-band detector: (audio, RTP sequence number, RTP timestamp of its
# first sample not given yet, arrival on the loop's clock).
PendingAudio = tuple[bytes, int, int, float]
FED_LOG = 32  # payloads fed to the detector remembered for dating digits (a start comes 20-40 ms
# after its onset: at a 10 ms ptime, that is 4 payloads back at most)
RELAY_SLACK = 160  # samples of bridged audio queued beyond a packet before the oldest is dropped
QUIET_PEAK = 128  # bridged audio no louder than this (-45 dBm0 peak) is a pause: may be dropped
TICK_INTERVAL_S = 0.02  # the media tick's period
INBAND_FEED = 160  # samples (20 ms) each in-band channel gives the detector a tick
REORDER_WINDOW = 50  # packets: an audio packet this far behind the newest is late, not a new run
PAYLOAD_TYPE = {"PCMU": 0, "PCMA": 8}
# The G.711 codes of each codec that decode to QUIET_PEAK or less: deleting them from queued
# audio (bytes.translate, a C loop) leaves nothing exactly when the audio is quiet, the same
# answer as decoding it and taking its peak, without a numpy call a packet.
_QUIET_CODES = {
    codec: np.flatnonzero(np.abs(DECODE_TABLES[codec].astype(np.int32)) <= QUIET_PEAK)
    .astype(np.uint8)
    .tobytes()
    for codec in PAYLOAD_TYPE
}
HOLD_ADDRESSES = frozenset(("0.0.0.0", "::"))  # RFC 2543 hold: "send me nothing"
# On the shared port: how long a call's pinned SSRC must have sent nothing before another one
# may take over (10 packets at 20 ms; a flowing stream never leaves such a gap)
SSRC_HANDOVER_S = 0.2
_PLAIN_FIRST_BYTE = 0x80  # RTP version 2, no padding, no extension, no CSRCs
_PLAIN_HEADER = struct.Struct("!BHII")  # the rest of such a header: M+PT, sequence, time, SSRC
_FIRST_BYTE_V2 = _PLAIN_FIRST_BYTE
_pack_header = struct.Struct("!BBHII").pack  # a plain header, as build_rtp packs it
RECV_SIZE = 4096  # the largest datagram read: G.711 at a 200 ms ptime with SRTP fits
RECEIVE_PASSES = 4  # a tick's receive pass and three between ticks: 5 ms at most in a socket
READ_ROUNDS = 64  # per tick, datagrams read at most from one socket (a flood waits its turn)
# The shared port's datagrams read at most in a receive pass: this many a call on it, and a
# floor (a call sends one packet a 20 ms tick; a pass runs four times a tick)
SHARED_READS_PER_CALL, SHARED_READS_MIN = 8, 256
# Session ids of the calls on the shared port: above every port number, never reused
SHARED_IDS = 1 << 20
_SHARED_RTCP = -1  # the shared RTCP socket's "port" in the engine's readers
# Arrival times from the kernel (SO_TIMESTAMPNS, a struct timespec of the wall clock) where the
# constant and layout are the generic Linux ones; elsewhere a datagram is dated by the tick.
_SO_TIMESTAMPNS: int | None = (
    35 if sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64") else None
)
_TIMESPEC = struct.Struct("@qq")
# What a socket's recvmsg gives: data, ancillary items, flags, source address.
_Received = tuple[bytes, list[tuple[int, int, bytes]], int, tuple[str, int]]
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) if _SO_TIMESTAMPNS is not None else 0


@functools.cache
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


@functools.lru_cache(maxsize=4096)  # a relay's few addresses, or a flood's: either is cheap
def in_sources(address: str, cidrs: tuple[str, ...]) -> bool:
    """Is `address` (a socket's source) inside one of the networks `cidrs` (as config.py
    checked them: `rtp.media_sources`)?"""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _networks(cidrs))


def literal_address(address: str) -> str:
    """`address` as an IP literal in its canonical form; ValueError for anything else (a
    hostname would be resolved, blocking, by `sendto` in the media tick)."""
    return str(ipaddress.ip_address(address))


@functools.cache
def single_threaded_blas() -> None:
    """One BLAS thread for the process, once. The in-band detector's matrix products are small
    and run on the event loop's thread each tick; OpenBLAS's worker threads gain nothing on
    them and spin between calls (measured: about a third of a loaded node's CPU, a core's
    worth on a 2-core machine, for nothing)."""
    threadpool_limits(limits=1, user_api="blas")


@dataclass(slots=True)
class MediaStats:
    received: int = 0
    sent: int = 0
    dropped_foreign: int = 0
    dropped_malformed: int = 0
    dropped_srtp: int = 0  # refused by SRTP: forged, replayed, truncated, expired key
    dropped_ssrc: int = 0  # on the shared port: another SSRC than the stream's pinned one
    rtcp: int = 0  # RTCP compound packets received and accepted
    rtcp_sent: int = 0
    audio: int = 0
    events: int = 0
    audio_late: int = 0  # audio packets the in-band detector had already gone past (reordered)
    audio_dropped: int = 0  # audio packets past MAX_PENDING_FRAMES queued for the detector
    audio_gaps: int = 0  # times the detector's channel restarted: audio missing (RTP timestamps)
    audio_backlog: int = 0  # the most audio (samples) given at once, packets having queued


@dataclass(slots=True)
class MediaSession:
    """One call's RTP state; see the module docstring."""

    codec: str
    remote: tuple[str, int]
    dtmf_payload_type: int | None
    ptime_ms: int = 20
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    stats: MediaStats = field(default_factory=MediaStats)
    on_dtmf: Callable[[DtmfEvent], None] | None = None
    on_playback_done: Callable[[], None] | None = None
    on_audio: Callable[[bytes, float], None] | None = None
    latched: tuple[str, int] | None = None
    hold: bool = False
    inband: bool = False  # collect the caller's audio for the engine's in-band DTMF detector
    srtp: SrtpContext | None = None  # SDES-SRTP keys of the call; None for plain RTP
    rtcp_remote: tuple[str, int] | None = None  # where our RTCP goes (port 0 or None: nowhere)
    rtcp_mux: bool = False  # RTCP shares the RTP port (RFC 5761)
    media_sources: tuple[str, ...] = ()  # CIDRs (a media relay) media may also come from
    # On the shared port (set by the engine): the stream's SSRC (audio and telephone events
    # alike) is pinned and others dropped (`_pinned`), and `on_move` tells the engine to
    # re-key the call.
    pin_ssrc: bool = False
    on_move: Callable[[], None] | None = None

    # Set by __post_init__ (slots: a session's state in one compact object rather than a
    # dict of 40-odd entries; the tick reads it for every packet of every call).
    offered: tuple[str, int] = field(init=False, repr=False, compare=False)
    payload_type: int = field(init=False, repr=False, compare=False)
    samples_per_packet: int = field(init=False, repr=False, compare=False)
    _seq: int = field(init=False, repr=False, compare=False)
    _ts: int = field(init=False, repr=False, compare=False)
    _frames: Sequence[bytes] = field(init=False, repr=False, compare=False)
    _frame_index: int = field(init=False, repr=False, compare=False)
    _marker: bool = field(init=False, repr=False, compare=False)
    _silence: bytes = field(init=False, repr=False, compare=False)
    receiver: Rfc4733Receiver = field(init=False, repr=False, compare=False)
    dtmf_wake: float = field(init=False, repr=False, compare=False)
    next_send_at: float | None = field(init=False, repr=False, compare=False)
    _reported: MediaStats = field(init=False, repr=False, compare=False)
    inband_slot: int | None = field(init=False, repr=False, compare=False)
    pending_audio: list[PendingAudio] = field(init=False, repr=False, compare=False)
    fed_samples: int = field(init=False, repr=False, compare=False)
    fed_starts: deque[int] = field(init=False, repr=False, compare=False)
    fed_arrivals: deque[float] = field(init=False, repr=False, compare=False)
    fed_through: int | None = field(init=False, repr=False, compare=False)
    fed_ts: int | None = field(init=False, repr=False, compare=False)
    rtcp: RtcpSession | None = field(init=False, repr=False, compare=False)
    rtcp_due: float = field(init=False, repr=False, compare=False)
    rtcp_latched: tuple[str, int] | None = field(init=False, repr=False, compare=False)
    _wall_offset: float = field(init=False, repr=False, compare=False)
    _octets_sent: int = field(init=False, repr=False, compare=False)
    _last_sent: tuple[int, float] | None = field(init=False, repr=False, compare=False)
    relay_in: list[bytes] | None = field(init=False, repr=False, compare=False)
    relay_out: bytearray = field(init=False, repr=False, compare=False)
    pinned_ssrc: int | None = field(init=False, repr=False, compare=False)
    _pinned_seen: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The SDP's address and port: before latching, media is taken only from that address
        # (any port) or from `media_sources`.
        self.remote = (literal_address(self.remote[0]), self.remote[1])
        if self.rtcp_remote is not None:
            self.rtcp_remote = (literal_address(self.rtcp_remote[0]), self.rtcp_remote[1])
        self.offered = self.remote
        self.media_sources = tuple(self.media_sources)
        self.payload_type = PAYLOAD_TYPE[self.codec]
        self.samples_per_packet = 8 * self.ptime_ms
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._frames = ()  # the prompt playing (maybe shared: never written)
        self._frame_index = 0
        self._marker = True
        self._silence = bytes([SILENCE_BYTE[self.codec]]) * self.samples_per_packet
        self.receiver = Rfc4733Receiver()
        self.dtmf_wake = math.inf  # the receiver's next_wake (the tick asks every session)
        self.next_send_at = None
        self._reported = MediaStats()
        self.inband_slot = None  # the detector channel, while attached
        # Payloads not yet given to the detector, in order, each with its RTP sequence number,
        # timestamp (of its first sample not given yet) and arrival: one tuple a payload, as
        # the tick takes it (four parallel lists were four objects to touch a packet; a tuple
        # lives one tick, so the young collections never see many).
        self.pending_audio = []
        # What the detector was given, to date an in-band digit by the packet that carried its
        # onset: samples fed in all, and the first sample's position and the arrival of each of
        # the last payloads. Two deques of numbers, not one of pairs: a tuple a packet is an
        # object the garbage collector tracks, and FED_LOG of them a call, renewed every 20 ms,
        # were a third of what each young collection walked under load.
        self.fed_samples = 0
        self.fed_starts = deque(maxlen=FED_LOG)
        self.fed_arrivals = deque(maxlen=FED_LOG)
        self.fed_through = None  # sequence number of the last audio given to it
        # The RTP timestamp just after the last audio given to it: audio queued further on than
        # GAP_SAMPLES, and that long after it, is not the same stretch of sound (lost packets,
        # a sender's pause or restart), and the detector is told (MediaEngine._audio_gap). Its
        # own check, by the times it is given, would take a burst of late packets for a pause.
        self.fed_ts = None
        self.rtcp = None  # from start_rtcp (the engine's attach) on
        self.rtcp_due = math.inf  # when the next report is (read by the tick for every session)
        self.rtcp_latched = None  # the source of the peer's RTCP
        self._wall_offset = 0.0  # wall clock minus `now`, for RTCP's NTP timestamps
        # What a sender report says of our stream: payload octets sent, and the timestamp and
        # send time of the latest packet (counted here: a call into RTCP per packet costs more).
        self._octets_sent = 0
        self._last_sent = None
        # Bridged (agent-assisted mode, MediaEngine.bridge): the audio payloads received since
        # the last tick, for the other leg (None: not bridged), and the other leg's audio, in
        # this session's codec, waiting to be sent (a prompt playing goes first).
        self.relay_in = None
        self.relay_out = bytearray()
        self.pinned_ssrc = None  # the stream's SSRC (`pin_ssrc`), from its first packet
        self._pinned_seen = -math.inf  # when a packet of it last came

    def report_stats(self) -> None:
        """Add what changed since the last report to the process's RTP counters."""
        now, last = self.stats, self._reported
        if now.received != last.received:
            RTP_PACKETS_TOTAL.inc(now.received - last.received, direction="in")
        if now.sent != last.sent:
            RTP_PACKETS_TOTAL.inc(now.sent - last.sent, direction="out")
        if now.dropped_foreign != last.dropped_foreign:
            RTP_DROPPED_TOTAL.inc(now.dropped_foreign - last.dropped_foreign, reason="source")
        if now.dropped_malformed != last.dropped_malformed:
            RTP_DROPPED_TOTAL.inc(
                now.dropped_malformed - last.dropped_malformed, reason="malformed"
            )
        if now.dropped_srtp != last.dropped_srtp:
            RTP_DROPPED_TOTAL.inc(now.dropped_srtp - last.dropped_srtp, reason="srtp")
        if now.dropped_ssrc != last.dropped_ssrc:
            RTP_DROPPED_TOTAL.inc(now.dropped_ssrc - last.dropped_ssrc, reason="ssrc")
        if now.rtcp != last.rtcp:
            RTCP_PACKETS_TOTAL.inc(now.rtcp - last.rtcp, direction="in")
        if now.rtcp_sent != last.rtcp_sent:
            RTCP_PACKETS_TOTAL.inc(now.rtcp_sent - last.rtcp_sent, direction="out")
        self._reported = dataclasses.replace(now)

    def report_quality(self) -> None:
        """At the call's end: its incoming stream's loss and jitter to the process's metrics."""
        if self.rtcp is None:
            return
        quality = self.rtcp.summary
        if quality.lost:
            RTP_LOST_TOTAL.inc(quality.lost)
        if quality.received:
            RTP_JITTER_SECONDS.observe(quality.jitter_ms / 1000)

    # ---- receiving --------------------------------------------------------------------------

    def may_latch(self, address: str) -> bool:
        """May media from `address` latch the session (the SDP's address, or a relay's)?"""
        if address == self.offered[0]:
            return True
        return bool(self.media_sources) and in_sources(address, self.media_sources)

    def receive(self, data: bytes, source: tuple[str, int], now: float) -> None:
        # The source first, before SRTP: unprotecting a stranger's copy of a genuine packet
        # would use up its replay slot before the real one arrives.
        latched = self.latched
        if latched is None:
            if source[0] != self.offered[0] and not self.may_latch(source[0]):
                self.stats.dropped_foreign += 1
                return
        elif source != latched:
            self.stats.dropped_foreign += 1
            return
        # is_rtcp, inlined (every packet): RTP's second octet is seldom in RTCP's range
        rtcp = len(data) >= 8 and 192 <= data[1] <= 223 and data[0] >> 6 == 2
        if self.srtp is not None:
            plain = self.srtp.unprotect_rtcp(data) if rtcp else self.srtp.unprotect_rtp(data)
            if plain is None:
                self.stats.dropped_srtp += 1
                return
            data = plain
        if latched is None:
            if source != self.remote and not self.rtcp_mux and self.rtcp_latched is None:
                # Behind a NAT: its RTCP most likely leaves from the port above its RTP's.
                self.rtcp_remote = (source[0], source[1] + 1) if source[1] < 65535 else None
            self.latched = source
            self.remote = source  # symmetric RTP: answer where the caller really is
        if rtcp:
            self._take_rtcp(data, now)
            return
        if len(data) >= RTP_HEADER_SIZE and data[0] == _PLAIN_FIRST_BYTE:
            # Nearly every packet: version 2, no padding, extension or CSRCs, so all of
            # RtpPacket.parse's checks hold; read without building an RtpPacket.
            second, sequence, timestamp, ssrc = _PLAIN_HEADER.unpack_from(data, 1)
            payload_type = second & 0x7F
            marker = second > 0x7F
            payload = data[RTP_HEADER_SIZE:]
        else:
            try:
                packet = RtpPacket.parse(data)
            except RtpError:
                self.stats.dropped_malformed += 1
                return
            payload_type, sequence, timestamp = (
                packet.payload_type,
                packet.sequence,
                packet.timestamp,
            )
            ssrc, marker, payload = packet.ssrc, packet.marker, packet.payload
        stats = self.stats
        dtmf = payload_type == self.dtmf_payload_type  # (never equal when it is None)
        if self.pin_ssrc and not self._pinned(ssrc, now):
            stats.dropped_ssrc += 1
            return
        stats.received += 1
        if self.rtcp is not None:
            # audio: jitter counts (an event keeps one timestamp for a whole press)
            self.rtcp.rtp_received(ssrc, sequence, timestamp, now, not dtmf)
        if dtmf:
            stats.events += 1
            events = self.receiver.receive(payload, sequence, timestamp, marker, now)
            wake = self.receiver.next_wake()
            self.dtmf_wake = math.inf if wake is None else wake
            self._deliver(events)
        elif payload_type == self.payload_type:
            stats.audio += 1
            # (An empty payload holds no audio: queued, it would be a payload of no samples
            # that a gap after it leaves nothing to take, and the queue would stop there.)
            if self.inband and self.inband_slot is not None and payload:
                pending = self.pending_audio
                if len(pending) < MAX_PENDING_FRAMES:
                    newest = pending[-1][1] if pending else self.fed_through
                    if newest is None or (newest - sequence) & 0xFFFF >= REORDER_WINDOW:
                        # _queue_audio's usual case, inlined: the next packet, in order
                        pending.append((payload, sequence, timestamp, now))
                    else:
                        self._queue_audio(sequence, timestamp, payload, now)
                else:  # a tick over MAX_PENDING_FRAMES packets late: the newest audio is lost
                    stats.audio_dropped += 1
            if self.on_audio is not None:
                self.on_audio(payload, now)
            relay = self.relay_in
            if relay is not None and len(relay) < RELAY_MAX_FRAMES:
                relay.append(payload)

    def _pinned(self, ssrc: int, now: float) -> bool:
        """Is `ssrc` the stream's? Its audio and telephone events alike (one stream, one SSRC).
        The first packet pins it; another SSRC takes over only once the pinned one has been
        silent SSRC_HANDOVER_S (a sender's restart, a relay that gave the port to this call
        while the last call's stream was still draining), so a spoofer cannot cut in while
        the call's stream flows. A re-INVITE or UPDATE lets the pin go."""
        if ssrc == self.pinned_ssrc:
            self._pinned_seen = now
            return True
        if now - self._pinned_seen < SSRC_HANDOVER_S:
            return False
        self.pinned_ssrc = ssrc
        self._pinned_seen = now
        return True

    def receive_rtcp(self, data: bytes, source: tuple[str, int], now: float) -> None:
        """A datagram on the RTCP port: taken from the address the call's RTP comes from (before
        any RTP: from an address that may latch), SRTCP-checked for an SRTP call; its first
        accepted packet sets where our reports go."""
        if self.rtcp_latched is not None:
            foreign = source != self.rtcp_latched
        elif self.latched is not None:
            foreign = source[0] != self.latched[0]
        else:
            foreign = not self.may_latch(source[0])
        if foreign:
            self.stats.dropped_foreign += 1
            return
        if self.srtp is not None:
            plain = self.srtp.unprotect_rtcp(data)
            if plain is None:
                self.stats.dropped_srtp += 1
                return
            data = plain
        if self._take_rtcp(data, now) and self.rtcp_latched is None:
            self.rtcp_latched = source
            self.rtcp_remote = source  # symmetric RTCP (RFC 4961)

    def _take_rtcp(self, data: bytes, now: float) -> bool:
        """A plain RTCP compound packet from the peer: counted, and read for its reports."""
        if self.rtcp is not None:
            try:
                self.rtcp.receive(data, now, now + self._wall_offset)
            except RtcpError:
                self.stats.dropped_malformed += 1
                return False
        self.stats.rtcp += 1
        return True

    def move(self, remote: tuple[str, int], rtcp_remote: tuple[str, int] | None) -> None:
        """A re-INVITE or UPDATE answered: `remote` is its SDP's RTP address and port,
        `rtcp_remote` where its RTCP goes. Unchanged: the latch stays (pinned SSRCs are let
        go: a new offer may restart a stream). Moved:
        the session is unlatched and takes media only from the new address (or a relay's);
        moved to a hold address (0.0.0.0): nothing is sent there and nothing new can latch,
        while a source already latched (the caller's own stream) is still taken."""
        remote = (literal_address(remote[0]), remote[1])
        if rtcp_remote is not None:
            rtcp_remote = (literal_address(rtcp_remote[0]), rtcp_remote[1])
        self.pinned_ssrc = None  # a new offer may restart the stream
        self._pinned_seen = -math.inf
        if remote == self.offered:
            return
        self.offered = remote
        self.remote = remote
        self.rtcp_remote = rtcp_remote
        if self.on_move is not None:
            self.on_move()
        if remote[0] in HOLD_ADDRESSES:
            return
        self.latched = None
        self.rtcp_latched = None

    def start_rtcp(self, now: float, wall: float, rng: random.Random | None = None) -> None:
        """Start RTCP: statistics from now on, the first report in 1 to 3 s (`rng` draws the
        randomised intervals)."""
        self.rtcp = RtcpSession(self.ssrc, now, rng=rng)
        self.rtcp_due = self.rtcp.next_report_at()
        self._wall_offset = wall - now

    def rtcp_report(self, now: float) -> bytes | None:
        """The RTCP report due now (SRTCP for an SRTP call), or None."""
        if self.rtcp is None or now < self.rtcp_due:
            return None
        self._tell_rtcp_sent()
        packet = self.rtcp.report(now, now + self._wall_offset)
        self.rtcp_due = self.rtcp.next_report_at()
        return self._protect_rtcp(packet) if packet is not None else None

    def rtcp_bye(self, now: float) -> bytes | None:
        """The last RTCP packet of the call: a report and a BYE."""
        if self.rtcp is None:
            return None
        self._tell_rtcp_sent()
        packet = self.rtcp.bye(now, now + self._wall_offset)
        self.rtcp_due = self.rtcp.next_report_at()
        return self._protect_rtcp(packet)

    def _tell_rtcp_sent(self) -> None:
        if self.rtcp is not None and self._last_sent is not None:
            self.rtcp.sent_so_far(self.stats.sent, self._octets_sent, *self._last_sent)

    def _protect_rtcp(self, packet: bytes) -> bytes | None:
        if self.srtp is not None:
            protected = self.srtp.protect_rtcp(packet)
            if protected is None:
                return None
            packet = protected
        self.stats.rtcp_sent += 1
        return packet

    @property
    def rtcp_target(self) -> tuple[str, int] | None:
        """Where our RTCP goes now, or None."""
        target = self.remote if self.rtcp_mux else self.rtcp_remote
        if target is None or not target[1] or target[0] in HOLD_ADDRESSES:
            return None  # no port, or RFC 2543 hold: "send me nothing" (0.0.0.0 is this host)
        return target

    def _queue_audio(self, sequence: int, timestamp: int, payload: bytes, arrival: float) -> None:
        """Queue a payload for the in-band detector in RTP sequence order: a packet the network
        reordered would otherwise move 20 ms of tone into a gap (a key read twice, or cut).
        One that comes after the detector was given audio past it is dropped, as is a repeat.
        A sequence number further back than REORDER_WINDOW is a new run (a new SSRC, a
        sender's restart), not a late packet: queued as it comes."""
        pending = self.pending_audio
        newest = pending[-1][1] if pending else self.fed_through
        if newest is None or (newest - sequence) & 0xFFFF >= REORDER_WINDOW:  # the usual case
            pending.append((payload, sequence, timestamp, arrival))
            return
        fed = self.fed_through
        if any(queued[1] == sequence for queued in pending) or (
            fed is not None and (fed - sequence) & 0xFFFF < REORDER_WINDOW
        ):
            self.stats.audio_late += 1  # a repeat, or behind what the detector already has
            return
        at = len(pending)
        while at > 0 and 0 < (pending[at - 1][1] - sequence) & 0xFFFF < REORDER_WINDOW:
            at -= 1  # older than the payload at - 1: before it
        pending.insert(at, (payload, sequence, timestamp, arrival))

    def take_audio(self, count: int) -> list[bytes]:
        """The first `count` bytes (samples) queued for the detector, which must hold them, as
        the payloads (or parts) that hold them, in order: the engine joins every channel's at
        once, into a buffer it zeroes (a join here would leave a freed copy of the audio); a
        payload cut in two keeps its rest queued (ahead of anything reordered behind it)."""
        pending = self.pending_audio
        fed_starts, fed_arrivals = self.fed_starts, self.fed_arrivals
        if count > self.stats.audio_backlog:
            self.stats.audio_backlog = count
        parts: list[bytes] = []
        need = count
        used = 0
        while need:
            part, sequence, timestamp, arrival = pending[used]
            self.fed_through = sequence
            fed_starts.append(self.fed_samples)
            fed_arrivals.append(arrival)
            if len(part) <= need:
                parts.append(part)
                need -= len(part)
                self.fed_samples += len(part)
                self.fed_ts = (timestamp + len(part)) & 0xFFFFFFFF
                used += 1
            else:
                parts.append(part[:need])
                self.fed_samples += need
                self.fed_ts = (timestamp + need) & 0xFFFFFFFF
                pending[used] = (part[need:], sequence, self.fed_ts, arrival)
                need = 0
        del pending[:used]
        return parts

    def audio_gap_ahead(self) -> bool:
        """Is audio missing before the first payload queued for the detector? Its RTP timestamp
        is more than GAP_SAMPLES away (either way) from the end of what the detector was given,
        and it arrived more than GAP_BREAK_S after the last payload given: lost packets, a
        sender's pause or restart. Neither alone: packets held up and then sent in a burst
        arrive late with nothing missing, and a sender whose timestamps run on a wrong clock
        would otherwise restart the detector at every packet."""
        fed = self.fed_ts
        if fed is None or not self.fed_arrivals:
            return False
        _, _, timestamp, arrival = self.pending_audio[0]
        jump = (timestamp - fed) & 0xFFFFFFFF
        if not GAP_SAMPLES < jump < (1 << 32) - GAP_SAMPLES:
            return False
        return arrival - self.fed_arrivals[-1] > GAP_BREAK_S

    def contiguous_audio(self) -> tuple[int, int]:
        """(samples, payloads) queued from the first payload on up to the first one that audio
        is missing before (as `audio_gap_ahead` tells it, between queued payloads); all that
        is queued when none."""
        pending = self.pending_audio
        before, _, before_ts, before_arrival = pending[0]
        samples = len(before)
        for n in range(1, len(pending)):
            payload, _, timestamp, arrival = pending[n]
            jump = (timestamp - before_ts - len(before)) & 0xFFFFFFFF
            if (
                GAP_SAMPLES < jump < (1 << 32) - GAP_SAMPLES
                and arrival - before_arrival > GAP_BREAK_S
            ):
                return samples, n
            samples += len(payload)
            before, before_ts, before_arrival = payload, timestamp, arrival
        return samples, len(pending)

    def inband_counts(self) -> dict[str, int]:
        """What became of the audio queued for the in-band detector, for a call's end-of-call
        DTMF log line (the non-zero counters): packets dropped as late (reordered past what it
        had) or past MAX_PENDING_FRAMES (a tick over a second late), restarts of its channel
        on audio missing, and the most audio given at once when packets had queued (ms: 20,
        or none, when every tick came on time; 200 after a tick 200 ms late)."""
        stats = self.stats
        counts = {
            "inband_late": stats.audio_late,
            "inband_dropped": stats.audio_dropped,
            "inband_gaps": stats.audio_gaps,
            "inband_backlog_ms": stats.audio_backlog // 8,
        }
        return {name: value for name, value in counts.items() if value}

    def arrival_of_fed_sample(self, position: int) -> float | None:
        """When the packet carrying sample `position` (counted over all audio given to the
        detector) arrived; None when it is older than FED_LOG payloads or not fed yet."""
        if not 0 <= position < self.fed_samples:
            return None
        starts = self.fed_starts
        for n in range(len(starts) - 1, -1, -1):
            if starts[n] <= position:
                return self.fed_arrivals[n]
        return None

    def clear_audio(self) -> None:
        self.pending_audio.clear()

    def poll(self, now: float) -> None:
        """Timers of the DTMF receiver (a lost end packet)."""
        if now >= self.dtmf_wake:
            events = self.receiver.poll(now)
            wake = self.receiver.next_wake()
            self.dtmf_wake = math.inf if wake is None else wake
            self._deliver(events)

    def stop_inband(self) -> None:
        """No more audio for the detector (e.g. RFC 4733 events seen and `dtmf.inband = auto`)."""
        self.inband = False
        self.clear_audio()

    def _deliver(self, events: list[DtmfEvent]) -> None:
        if self.on_dtmf is not None:
            for event in events:
                self.on_dtmf(event)

    # ---- sending ----------------------------------------------------------------------------

    def play(self, audio_g711: bytes) -> None:
        """Start playing encoded audio (replacing what plays); silence is padded to a packet."""
        self.play_packets(CutAudio(audio_g711, self.samples_per_packet, self.codec))

    def play_packets(self, payloads: Sequence[bytes]) -> None:
        """Start playing a prompt already cut into this session's payloads (`rtp.prompts`:
        shared by the calls that play it, never written to)."""
        self._frames = payloads
        self._frame_index = 0
        self._marker = True
        self.relay_out.clear()  # the prompt goes first; the bridged audio queued is stale

    def relay(self, audio: bytes) -> None:
        """Queue the bridged leg's audio (in this session's codec) to be sent after what is
        queued; called in the tick before its packet is sent. Dropped while a prompt plays
        (the prompt wins). A tick that got no packet from the other leg and then one that got
        two leave audio queued beyond this tick's packet, a packet of delay from then on: it
        is dropped as soon as it is quiet (a pause), and at once beyond RELAY_SLACK."""
        if self._frame_index < len(self._frames):
            return
        out = self.relay_out
        out += audio
        over = len(out) - self.samples_per_packet
        if over <= 0:
            return
        if over > RELAY_SLACK:
            del out[: over - RELAY_SLACK]
            over = RELAY_SLACK
        if not out[:over].translate(None, _QUIET_CODES[self.codec]):  # nothing louder left
            del out[:over]

    def renegotiate(self, codec: str, ptime_ms: int) -> None:
        """A re-INVITE changed the codec or the packet time. What is left of the prompt playing
        is transcoded (G.711 to G.711 is two table lookups) and cut to the new packet size, so
        the caller hears it through and the journey's "prompt done" still comes."""
        if codec == self.codec and ptime_ms == self.ptime_ms:
            return
        rest = b"".join(self._frames[self._frame_index :])
        if rest and codec != self.codec:
            codes = np.frombuffer(rest, dtype=np.uint8)
            rest = encode(decode_array(codes, self.codec), codec)
        self.codec, self.ptime_ms = codec, ptime_ms
        self.payload_type = PAYLOAD_TYPE[codec]
        self.samples_per_packet = 8 * ptime_ms
        self._silence = bytes([SILENCE_BYTE[codec]]) * self.samples_per_packet
        self.stop()
        if rest:
            self.play(rest)
        self.clear_audio()  # those bytes are in the old codec
        self.relay_out.clear()  # ... and these
        if self.relay_in is not None:
            self.relay_in.clear()

    def stop(self) -> None:
        self._frames = []
        self._frame_index = 0

    @property
    def playing(self) -> bool:
        return self._frame_index < len(self._frames)

    def next_packet(self, due: float | None = None) -> bytes | None:
        """The next outgoing packet: prompt audio while playing, else silence (SRTP-protected
        when the call has keys; None in the never-expected case that protection fails).
        `due`: when it is meant to leave, for RTCP's sender reports."""
        n = self.samples_per_packet
        out = self.relay_out
        payload: bytes | bytearray
        if self._frame_index < len(self._frames):
            payload = self._frames[self._frame_index]
            self._frame_index += 1
            if self._frame_index == len(self._frames):
                self._frames = []
                self._frame_index = 0
                if self.on_playback_done is not None:
                    self.on_playback_done()
        elif len(out) >= n:
            payload = out[:n]  # a bytearray: the concatenation below makes the packet's bytes
            del out[:n]
        else:
            payload = self._silence
        ts = self._ts
        seq = self._seq
        # build_rtp's header, inlined (every packet of every call): sequence and timestamp are
        # kept in range here, so only the marker needs a branch.
        second = (0x80 | self.payload_type) if self._marker else self.payload_type
        packet = _pack_header(_FIRST_BYTE_V2, second, seq, ts, self.ssrc) + payload
        self._octets_sent += len(payload)
        if due is not None:
            self._last_sent = (ts, due)
        self._marker = False
        self._seq = (seq + 1) & 0xFFFF
        self._ts = (ts + n) & 0xFFFFFFFF
        self.stats.sent += 1
        if self.srtp is not None:
            return self.srtp.protect_rtp(packet)
        return packet

    def encode_prompt(self, samples: np.ndarray) -> bytes:
        return encode(samples, self.codec)


@dataclass(slots=True)
class _InbandFeed:
    """The channels that give the in-band detector the same number of samples this tick."""

    sessions: list[MediaSession] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    # the channels' payloads (or parts of them) in order: joined, a row of samples a channel
    audio: list[bytes] = field(default_factory=list)
    codecs: set[str] = field(default_factory=set)
    now: float = -math.inf  # the end of the newest audio given (its arrival)


@dataclass(slots=True)
class _Bridge:
    """Two sessions whose audio crosses (agent-assisted mode), and a masker slot for each
    direction: the customer's audio to the agent, the agent's to the customer."""

    customer_port: int
    agent_port: int
    customer: MediaSession
    agent: MediaSession
    mask_slot: int  # customer → agent
    agent_mask_slot: int  # agent → customer
    align: bool = True  # the sessions' packet times are still to be moved onto the tick's
    # (source, target, masker slot) of each direction, for the tick
    directions: tuple[tuple[MediaSession, MediaSession, int], ...] = ()

    def __post_init__(self) -> None:
        self.directions = (
            (self.customer, self.agent, self.mask_slot),
            (self.agent, self.customer, self.agent_mask_slot),
        )


@dataclass(slots=True)
class _RelayFeed:
    """The bridge directions that give the masker the same number of samples this tick."""

    slots: list[int] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # the codec each row's audio came in
    targets: list[MediaSession] = field(default_factory=list)  # the leg each row goes to


def _decode_rows(codes: npt.NDArray[np.uint8], codecs: list[str]) -> npt.NDArray[np.int16]:
    """(rows × samples) G.711 codes, each row in its own codec, as int16 samples."""
    kinds = set(codecs)
    if len(kinds) == 1:
        return decode_array(codes, codecs[0])
    block = np.empty(codes.shape, dtype=np.int16)
    for codec in kinds:
        rows = [n for n, c in enumerate(codecs) if c == codec]
        block[rows] = decode_array(codes[rows], codec)
    return block


class PortRangeExhausted(Exception):
    pass


class MediaEngine:
    """All RTP sockets of the process and the single 20 ms send tick."""

    def __init__(
        self, address: str, port_min: int, port_max: int, *, rng: random.Random | None = None
    ) -> None:
        self.address = address
        # The port pair the calls from relays share (`open_shared`), bound on first use.
        self.shared: SharedPort | None = None
        self._shared_ids = itertools.count(SHARED_IDS)
        self.port_min = port_min + (port_min % 2)
        self.port_max = port_max
        self.sessions: dict[int, MediaSession] = {}
        self.sockets: dict[int, tuple[socket.socket, socket.socket]] = {}  # RTP port: RTP, RTCP
        self._senders: dict[int, Callable[[bytes, tuple[str, int]], int]] = {}  # its RTP sendto
        # Every socket's descriptor: (its recvmsg, the session's RTP port, is it the RTCP one).
        self._readers: dict[int, tuple[Callable[[int, int], _Received], int, bool]] = {}
        # Which sockets have datagrams waiting, asked once per tick (level-triggered).
        self._epoll = hasattr(select, "epoll")  # else poll(): same calls, no maxevents
        self._poller = select.epoll() if self._epoll else select.poll()
        # Ports are drawn at random (a tests' seeded Random, else the OS's): the next call's
        # port cannot be guessed from the last one's.
        self._rng = rng if rng is not None else random.SystemRandom()
        self._tick_task: asyncio.Task[None] | None = None
        # The loop that runs the engine, taken on first use: asking for it here would fail,
        # or make a stray loop, when the engine is built outside a running loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self.inband: InbandDetector | None = None  # one detector serves every channel
        self._inband_sessions: dict[int, MediaSession] = {}  # by detector slot
        self.masker: ToneMasker | None = None  # one masker serves both legs of every bridge
        self.bridges: dict[int, _Bridge] = {}  # by the customer's port
        self._bridged_agents: dict[int, int] = {}  # agent's port: customer's port
        self.send_errors = 0  # packets the kernel would not take (a full buffer: dropped)
        # Told at the start of every tick how late it starts against its schedule (seconds,
        # and the loop's time): the node's admission control (server.LagMonitor).
        self.on_tick_lag: Callable[[float, float], None] | None = None
        # Told at the end of every tick's work how long it took (seconds of the loop's clock,
        # and the tick's start): admission's busy fraction, which rises before the lateness.
        self.on_tick_work: Callable[[float, float], None] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def open(self) -> int:
        """Bind a free even port drawn at random from the range, and the odd one above it for
        RTCP, and return the even one (the session is attached later). A pair taken (by us or
        by another process) is skipped; after a few random draws the range is walked from a
        random place, so every free pair is found while one is left."""
        self._loop = asyncio.get_running_loop()
        span = (self.port_max - 1 - self.port_min) // 2 + 1  # even ports with an odd one above
        for port in self._candidates(span):
            if port in self.sockets:
                continue
            sockets = self._bind_pair(port)
            if sockets is None:  # either taken: another pair
                continue
            rtp, rtcp = sockets
            self.sockets[port] = (rtp, rtcp)
            self._senders[port] = rtp.sendto
            for sock, for_rtcp in ((rtp, False), (rtcp, True)):
                self._readers[sock.fileno()] = (sock.recvmsg, port, for_rtcp)
                self._poller.register(sock.fileno(), select.POLLIN)
            return port
        raise PortRangeExhausted(f"no free RTP port in {self.port_min}-{self.port_max}")

    def open_shared(
        self, remote: tuple[str, int], rtcp_remote: tuple[str, int] | None
    ) -> int | None:
        """A session id on the shared port pair for a call whose media comes from exactly
        `remote` (its SDP's RTP address and port) and `rtcp_remote` (its RTCP's without
        rtcp-mux; None with it), or None: that source is another call's, the system has no
        batched socket calls, or no port pair is free. The pair is bound on first use (random,
        from the range, as `open`'s) and kept. `local_port` gives the port for the SDP."""
        if not mmsg.available():
            return None
        try:
            remote = (literal_address(remote[0]), remote[1])
            if rtcp_remote is not None:
                rtcp_remote = (literal_address(rtcp_remote[0]), rtcp_remote[1])
        except ValueError:
            return None
        if remote[0] in HOLD_ADDRESSES or not remote[1]:
            return None  # no source to key the call by
        shared = self.shared
        if shared is None:
            span = (self.port_max - 1 - self.port_min) // 2 + 1
            for port in self._candidates(span):
                if port in self.sockets:
                    continue
                sockets = self._bind_pair(port)
                if sockets is not None:
                    break
            else:
                return None
            shared = self.shared = SharedPort(sockets[0], sockets[1])
            if shared.receive_buffer < SHARED_RECEIVE_BUFFER:
                log.warning(
                    "the shared media port's receive buffer is %d KiB (net.core.rmem_max): "
                    "a stalled tick drops the calls' packets sooner; raise it to 4 MiB",
                    shared.receive_buffer // 1024,
                )
            rtcp = shared.rtcp
            self._readers[rtcp.fileno()] = (rtcp.recvmsg, _SHARED_RTCP, True)
            self._poller.register(rtcp.fileno(), select.POLLIN)
        session_id = next(self._shared_ids)
        if not shared.claim(session_id, remote, rtcp_remote):
            return None
        RTP_SHARED_PORT_CALLS.set(shared.calls)
        return session_id

    def local_port(self, session_id: int) -> int:
        """The local RTP port of a session id from `open` (the id) or `open_shared`."""
        if session_id >= SHARED_IDS and self.shared is not None:
            return self.shared.port
        return session_id

    def _rekey(self, session_id: int, session: MediaSession) -> None:
        """A call on the shared port moved its media (re-INVITE, UPDATE): keyed by the new
        source from now on, or, when that is another call's, by none (its media is dropped,
        counted as from a stranger). A move to a hold address keeps the old key: the stream
        already coming is still taken, as on a port of its own."""
        shared = self.shared
        if shared is None or session.offered[0] in HOLD_ADDRESSES:
            return
        rtcp_remote = None if session.rtcp_mux else session.rtcp_remote
        if not shared.claim(session_id, session.offered, rtcp_remote):
            shared.release(session_id)
            log.warning("media moved to a source another call on the shared port has: dropped")

    _RANDOM_DRAWS = 8  # before walking the range: enough while it is mostly free

    def _candidates(self, span: int) -> Iterator[int]:
        """RTP ports to try: random draws, then every pair once from a random place."""
        for _ in range(min(self._RANDOM_DRAWS, span)):
            yield self.port_min + 2 * self._rng.randrange(span)
        start = self._rng.randrange(span)
        for index in range(span):
            yield self.port_min + 2 * ((start + index) % span)

    def _bind_pair(self, port: int) -> list[socket.socket] | None:
        """Non-blocking sockets bound to `port` and `port + 1`, or None when either is taken."""
        sockets: list[socket.socket] = []
        try:
            for number in (port, port + 1):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind((self.address, number))
                sock.setblocking(False)
                if _SO_TIMESTAMPNS is not None:  # the kernel dates each datagram's arrival
                    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError:
            for sock in sockets:
                sock.close()
            return None
        return sockets

    def attach(self, port: int, session: MediaSession) -> None:
        """Start `session` on `port` (from `open`, or a session id from `open_shared`)."""
        session.next_send_at = self.loop.time()
        session.start_rtcp(self.loop.time(), time.time())
        if port >= SHARED_IDS and self.shared is not None:
            self._senders[port] = self.shared.queue  # into the tick's batch
            session.pin_ssrc = True
            session.on_move = functools.partial(self._rekey, port, session)
        self.sessions[port] = session
        if session.inband:
            self._start_inband(session)
        if self._tick_task is None or self._tick_task.done():
            self._tick_task = self.loop.create_task(self._tick())

    def _start_inband(self, session: MediaSession) -> None:
        if self.inband is None:
            single_threaded_blas()
            # Gaps in a channel's audio are told by `_audio_gap` from RTP timestamps, not
            # guessed from the arrival times given (see `_detect_inband`).
            self.inband = InbandDetector(gaps_from_time=False)
        session.inband = True
        if session.inband_slot is None:
            session.inband_slot = self.inband.add_channel()
            session.fed_ts = None
            self._inband_sessions[session.inband_slot] = session

    def bridge(self, customer_port: int, agent_port: int, mask: str) -> None:
        """Cross the audio of two attached sessions (agent-assisted mode). From the next tick,
        each leg's audio goes to the other's session LOOKAHEAD (30 ms) late with every keypad
        tone replaced by `mask` ("tone", "silence" or "noise"; spg_media.rtp.masking): the
        customer's keys never reach the agent, nor the agent's the customer. Each direction
        is transcoded to the other's codec and sent at the other's packet time. Only decoded
        audio crosses: RFC 4733 events and anything else never do. A prompt playing on the
        customer's session is heard instead of the agent. The customer's in-band detector
        runs whatever `dtmf.inband` said (its digits reach its `on_dtmf` as before); the
        agent's session runs none. A port already bridged is unbridged first."""
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {mask!r}")
        if customer_port == agent_port:
            raise ValueError("a session cannot be bridged to itself")
        customer = self.sessions.get(customer_port)
        agent = self.sessions.get(agent_port)
        if customer is None or agent is None:
            missing = customer_port if customer is None else agent_port
            raise KeyError(f"no media session on port {missing}")
        for port in (customer_port, agent_port):
            self._unbridge_port(port)
        if self.masker is None:
            single_threaded_blas()
            self.masker = ToneMasker()
        self._start_inband(customer)
        if agent.inband:
            agent.stop_inband()
        for session in (customer, agent):
            session.relay_in = []
            session.relay_out.clear()
        slot = self.masker.add_channel(mask)
        agent_slot = self.masker.add_channel(mask)
        self.bridges[customer_port] = _Bridge(
            customer_port, agent_port, customer, agent, slot, agent_slot
        )
        self._bridged_agents[agent_port] = customer_port

    def unbridge(self, customer_port: int) -> None:
        """Stop crossing the audio of the customer's session on `customer_port` and its agent's
        (each session sends silence, or its prompts, again). Not bridged: nothing happens."""
        bridge = self.bridges.pop(customer_port, None)
        if bridge is None:
            return
        self._bridged_agents.pop(bridge.agent_port, None)
        if self.masker is not None:
            self.masker.remove_channel(bridge.mask_slot)
            self.masker.remove_channel(bridge.agent_mask_slot)
        for session in (bridge.customer, bridge.agent):
            session.relay_in = None
            session.relay_out.clear()

    def _unbridge_port(self, port: int) -> None:
        """Unbridge whichever bridge `port` is a leg of."""
        self.unbridge(self._bridged_agents.get(port, port))

    def close(self, port: int) -> None:
        self._unbridge_port(port)
        session = self.sessions.pop(port, None)
        if session is not None:
            self._send_rtcp(port, session, session.rtcp_bye(self.loop.time()))
            session.report_stats()
            session.report_quality()
            if session.inband_slot is not None and self.inband is not None:
                self.inband.remove_channel(session.inband_slot)
                self._inband_sessions.pop(session.inband_slot, None)
                session.inband_slot = None
        self._senders.pop(port, None)
        if port >= SHARED_IDS and self.shared is not None:
            self.shared.release(port)
            RTP_SHARED_PORT_CALLS.set(self.shared.calls)
            if session is not None:
                session.on_move = None
            return
        for sock in self.sockets.pop(port, ()):
            self._readers.pop(sock.fileno(), None)
            with contextlib.suppress(OSError, ValueError):
                self._poller.unregister(sock.fileno())
            sock.close()

    def _send_rtcp(self, port: int, session: MediaSession, packet: bytes | None) -> None:
        target = session.rtcp_target
        pair = self.sockets.get(port)
        if pair is None and port >= SHARED_IDS and self.shared is not None:
            pair = (self.shared.rtp, self.shared.rtcp)
        if packet is None or target is None or pair is None:
            return
        self._sendto(pair[0] if session.rtcp_mux else pair[1], packet, target)

    def _sendto(self, sock: socket.socket, packet: bytes, target: tuple[str, int]) -> None:
        try:
            sock.sendto(packet, target)
        except OSError:  # a full buffer (a packet late is worth nothing), a vanished route
            self.send_errors += 1

    async def aclose(self) -> None:
        for port in list(self.sockets) + [p for p in self.sessions if p >= SHARED_IDS]:
            self.close(port)
        if self.shared is not None:
            fd = self.shared.rtcp.fileno()
            self._readers.pop(fd, None)
            with contextlib.suppress(OSError, ValueError):
                self._poller.unregister(fd)
            self.shared.close()
            self.shared = None
        if self._tick_task is not None:
            self._tick_task.cancel()

    def _detect_inband(self, sessions: Iterable[MediaSession] | None = None) -> None:
        """Run the in-band detector over the audio the channels received since it last ran:
        every session's (the tick), or those of `sessions` (`_detect_hot`, between ticks).

        A detector call has a fixed cost (hundreds of numpy calls, ~0.15 ms), so the tick makes
        one call for the channels that have a payload: each gives INBAND_FEED samples and what
        is over waits; channels of both codecs make one (channels × 160) block. A channel
        three packets behind (a stalled loop, a sender's faster clock) gives all it has, in a
        second call. The rest of the cost in Python is collecting bytes.

        A gap in a channel's audio (its RTP timestamps jump more than GAP_SAMPLES and its packets
        stopped that long: lost packets, a sender's pause or restart) restarts its detector
        channel before the audio after it (`_audio_gap`); the detector's own check by the times
        it is given is off here, as late packets that come in a burst after a stalled path or
        tick are no gap. So the times given (`now`: the arrival of the fed audio's end, the
        latest of a group's) only date the events, and a channel's digits depend on its audio
        (and where audio is missing) alone, however it arrives and however late the tick.
        """
        assert self.inband is not None
        usual = _InbandFeed()
        groups = {INBAND_FEED: usual}  # by samples given: INBAND_FEED, or a backlog
        for session in self.sessions.values() if sessions is None else sessions:
            slot = session.inband_slot
            if slot is None:
                continue
            if not session.inband:  # switched off mid-call: give the slot back
                self.inband.remove_channel(slot)
                self._inband_sessions.pop(slot, None)
                session.inband_slot = None
                session.clear_audio()
                continue
            pending = session.pending_audio
            if not pending:
                continue
            fed_ts = session.fed_ts
            if fed_ts is not None and pending[0][2] != fed_ts and session.audio_gap_ahead():
                self._audio_gap(session, slot)
            if len(pending) == 1:
                payload, sequence, timestamp, arrived = pending[0]
                if len(payload) == INBAND_FEED:
                    # The usual tick, one 20 ms payload: take_audio's work, inlined.
                    pending.clear()
                    usual.sessions.append(session)
                    usual.slots.append(slot)
                    usual.audio.append(payload)
                    session.fed_through = sequence
                    session.fed_ts = (timestamp + INBAND_FEED) & 0xFFFFFFFF
                    session.fed_starts.append(session.fed_samples)
                    session.fed_arrivals.append(arrived)
                    session.fed_samples += INBAND_FEED
                    usual.codecs.add(session.codec)
                    if arrived > usual.now:
                        usual.now = arrived
                    continue
            queued, payloads = session.contiguous_audio()  # G.711: a byte a sample
            if payloads < len(pending):  # a gap after them: all of them now, the gap next tick
                take = queued
                until = pending[payloads - 1][3]
            else:
                if queued < INBAND_FEED:
                    continue
                take = INBAND_FEED
                if queued >= 3 * INBAND_FEED:
                    take = queued // INBAND_FEED * INBAND_FEED
                newest = max(item[3] for item in pending)  # the latest arrival
                until = newest - (queued - take) / 8000.0  # the fed audio's end
            feed = groups.get(take)
            if feed is None:
                feed = groups[take] = _InbandFeed()
            feed.sessions.append(session)
            feed.slots.append(slot)
            feed.audio += session.take_audio(take)
            feed.codecs.add(session.codec)
            feed.now = max(feed.now, until)
        for size, feed in groups.items():
            members, slots, now = feed.sessions, feed.slots, feed.now
            if not members:
                continue
            # The channels' audio (keypad tones among it) joined into a buffer that can be
            # zeroed, and zeroed with its decoding once the detector has it: freed, they would
            # stay in the heap until reused (bench/bench_memory_scan.py --relay found them).
            joined = bytearray().join(feed.audio)
            codes = np.frombuffer(joined, dtype=np.uint8).reshape(len(members), size)
            if len(feed.codecs) == 1:  # the usual node: one codec, one lookup
                block = decode_array(codes, next(iter(feed.codecs)))
            else:
                block = np.empty((len(members), size), dtype=np.int16)
                for codec in feed.codecs:
                    rows = np.flatnonzero([m.codec == codec for m in members])
                    block[rows] = decode_array(codes[rows], codec)
            try:
                found = self.inband.process(slots, block, now)
            except Exception:  # a detector bug must not stop the media of every call
                log.exception("in-band detector failed; in-band DTMF is off for this tick")
                continue
            finally:
                codes.fill(0)
                block.fill(0)
            by_slot = dict(zip(slots, members, strict=True)) if found else {}
            for slot, event in found:
                target = by_slot.get(slot)
                if target is None:
                    continue
                if event.kind == "start":
                    # The detector dates the onset back from `now`, the end of what it was
                    # given: that sample's position, and so the packet that carried it.
                    back = round((now - event.at) * 8000.0)
                    arrival = target.arrival_of_fed_sample(target.fed_samples - back)
                    if arrival is not None:
                        event = dataclasses.replace(event, arrived_at=arrival)
                target._deliver([event])

    def _detect_hot(self) -> None:
        """Between ticks (after a receive pass): the detector for the channels where a digit
        may be starting or is going on (`InbandDetector.hot_slots`), so that the audio that
        decides a tone is not held up to 15 ms for the next tick; the other channels wait for
        it (their audio holds no tone yet: a start needs 20 ms of one). Every channel at every
        pass cost ~1.2x the CPU a packet for 520 in-band calls (three more detector calls a
        tick over scattered slots, each session looked at three more times), for the same
        latency (p99 43 ms either way at 520 SIPp callers: bench/RESULTS.md)."""
        assert self.inband is not None
        hot = self.inband.hot_slots()
        if hot.size:
            by_slot = self._inband_sessions
            self._detect_inband([by_slot[slot] for slot in hot.tolist() if slot in by_slot])

    def _audio_gap(self, session: MediaSession, slot: int) -> None:
        """The audio queued for `session`'s detector channel `slot` does not follow what it was
        given: the digit in progress ends where the audio stopped, and the channel starts
        afresh (counted: `audio_gaps`)."""
        assert self.inband is not None
        session.stats.audio_gaps += 1
        session.fed_ts = None
        ended = self.inband.flush(slot, session.pending_audio[0][3])
        session._deliver([event for _, event in ended])

    def _relay(self, now: float) -> None:
        """Cross the audio the bridged sessions received since the last tick.

        Both directions alike: whole 5 ms blocks of what a leg received (the rest waits a
        tick) go through the masker, one call a tick for the rows of every bridge and both
        directions that give the same number of samples (nearly always 160), decoded per
        codec, re-encoded in the other leg's and queued on it (the agent's audio is dropped
        while a prompt plays on the customer's session: `MediaSession.relay`).
        """
        masker = self.masker
        assert masker is not None
        sessions = self.sessions
        soon = now + 0.001
        # The usual rows (one 20 ms payload heard, 160 samples) in flat lists; any other size
        # (another packet time, a tick with two payloads or none) in a group of its own.
        slots: list[int] = []
        audio: list[bytes] = []
        sources: list[str] = []  # the codec each row's audio came in
        targets: list[MediaSession] = []
        groups: dict[int, _RelayFeed] = {}  # by samples given, other than INBAND_FEED
        for bridge in self.bridges.values():
            customer, agent = bridge.customer, bridge.agent
            if sessions.get(bridge.customer_port) is not customer:
                continue  # its tick work failed and it was stopped: nothing crosses
            if sessions.get(bridge.agent_port) is not agent:
                continue
            if bridge.align:
                # A session's packets leave from the first tick at or after they are due: one
                # due just after the tick would carry audio a tick old. Its packet time moves
                # once, when bridged (as a jitter buffer sees a sender's restart), onto the
                # tick's (a 30 ms packet time cannot stay on a 20 ms tick: moved once only).
                bridge.align = False
                for session in (customer, agent):
                    due = session.next_send_at
                    if due is not None and soon < due < now + 0.0199:
                        session.next_send_at = now
            for source, target, slot in bridge.directions:
                heard = source.relay_in
                if not heard:
                    continue
                if len(heard) == 1 and len(heard[0]) == INBAND_FEED:  # the usual tick
                    slots.append(slot)
                    audio.append(heard[0])
                    sources.append(source.codec)
                    targets.append(target)
                    heard.clear()
                    continue
                chunk = heard[0] if len(heard) == 1 else b"".join(heard)
                heard.clear()
                whole = len(chunk) - len(chunk) % BLOCK
                if whole < len(chunk):
                    heard.append(chunk[whole:])
                    chunk = chunk[:whole]
                if not whole:
                    continue
                if whole == INBAND_FEED:
                    slots.append(slot)
                    audio.append(chunk)
                    sources.append(source.codec)
                    targets.append(target)
                    continue
                feed = groups.get(whole)
                if feed is None:
                    feed = groups[whole] = _RelayFeed()
                feed.slots.append(slot)
                feed.audio.append(chunk)
                feed.sources.append(source.codec)
                feed.targets.append(target)
        if slots:
            self._cross(INBAND_FEED, slots, audio, sources, targets)
        for size, feed in groups.items():
            self._cross(size, feed.slots, feed.audio, feed.sources, feed.targets)

    def _cross(
        self,
        size: int,
        slots: list[int],
        audio: list[bytes],
        sources: list[str],
        targets: list[MediaSession],
    ) -> None:
        """Mask rows of `size` samples, each heard on one leg of a bridge in codec `sources[n]`
        through masker slot `slots[n]`, and queue each on the other leg, in that one's codec."""
        masker = self.masker
        assert masker is not None
        # (zeroed once masked, as the in-band detector's: the customer's keypad tones)
        joined = bytearray().join(audio)
        codes = np.frombuffer(joined, dtype=np.uint8).reshape(len(slots), size)
        block = _decode_rows(codes, sources)
        try:
            masked = masker.process(slots, block)
        finally:
            codes.fill(0)
            block.fill(0)
        codecs = [target.codec for target in targets]
        kinds = set(codecs)
        if len(kinds) == 1:
            encoded = encode(masked, codecs[0])
            start = 0
            for target in targets:
                out = target.relay_out
                room = target.samples_per_packet - len(out)
                if size <= room and target._frame_index >= len(target._frames):
                    # MediaSession.relay's usual case, inlined (a call a row): no prompt
                    # playing, and no more queued than its next packet takes
                    out += encoded[start : start + size]
                else:
                    target.relay(encoded[start : start + size])
                start += size
            return
        for codec in kinds:
            rows = [n for n, c in enumerate(codecs) if c == codec]
            encoded = encode(masked[rows], codec)
            for n, row in enumerate(rows):
                targets[row].relay(encoded[n * size : (n + 1) * size])

    def _receive(self, now: float) -> None:
        """Read every datagram waiting on the sessions' sockets and feed it to its session.

        Once a tick instead of a callback per datagram: the poller says which sockets have
        datagrams, one is read from each, and it is asked again, until none is left or a
        socket has given READ_ROUNDS this tick (a flood cannot hold the tick: what is over
        waits, and the kernel drops what its buffer cannot hold). A datagram is dated by the
        kernel's arrival stamp (wall clock, moved onto the loop's clock), so the RTCP jitter,
        the RFC 4733 receiver's timing and DTMF latency see when it came, not when it was read.
        """
        readers, sessions = self._readers, self.sessions
        poll, epoll = self._poller.poll, self._epoll
        wall_offset = time.time() - time.monotonic()  # kernel stamps are wall-clock times
        ancillary, unpack, stamp_size = _ANCILLARY_SIZE, _TIMESPEC.unpack, _TIMESPEC.size
        shared = self.shared
        if shared is not None and shared.calls:
            self._receive_shared(shared, now, wall_offset)
        for _ in range(READ_ROUNDS):
            ready = poll(0, len(readers) + 1) if epoll else poll(0)  # type: ignore[call-arg]
            if not ready:
                return
            for fd, _events in ready:
                reader = readers.get(fd)
                if reader is None:
                    continue
                recvmsg, port, rtcp = reader
                try:
                    data, cmsgs, _flags, source = recvmsg(RECV_SIZE, ancillary)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:  # an ICMP error queued on the socket
                    log.debug("rtp socket error on port %d: %s", port, exc)
                    continue
                if port == _SHARED_RTCP:  # the shared port's RTCP: the call by its source
                    port = shared.rtcp_keys.get(source, _SHARED_RTCP) if shared else _SHARED_RTCP
                    if port == _SHARED_RTCP:
                        if shared is not None:
                            shared.dropped += 1
                            RTP_DROPPED_TOTAL.inc(reason="source")
                        continue
                session = sessions.get(port)
                if session is None:  # not attached yet, or closed: dropped
                    continue
                arrival = now
                if cmsgs:
                    stamp = cmsgs[0][2]
                    if len(stamp) == stamp_size:
                        seconds, nanoseconds = unpack(stamp)
                        stamped = seconds + nanoseconds * 1e-9 - wall_offset
                        if stamped < now:
                            arrival = stamped
                try:
                    if rtcp:
                        session.receive_rtcp(data, source, arrival)
                    else:
                        session.receive(data, source, arrival)
                except Exception:
                    # As in _tick: a bug in one call's media stops that call's media only.
                    log.exception("media of the session on port %d failed; it is stopped", port)
                    sessions.pop(port, None)

    def _receive_shared(self, shared: SharedPort, now: float, wall_offset: float) -> None:
        """Read the shared port's waiting datagrams (one `recvmmsg` a batch, at most
        SHARED_READS_PER_CALL a call on it this pass) and feed each to the call whose exact
        source it comes from; any other is dropped and counted before it is looked at."""
        keys, sessions = shared.keys, self.sessions
        limit = SHARED_READS_MIN + SHARED_READS_PER_CALL * shared.calls
        dropped = 0
        try:
            received = shared.receiver.receive(limit)
        except OSError as exc:  # (the batched call reports errors by its count: not expected)
            log.debug("shared rtp socket error: %s", exc)
            return
        for data, source, stamp in received:
            key = keys.get(source)
            if key is None:
                dropped += 1
                continue
            session_id, address = key
            session = sessions.get(session_id)
            if session is None:  # not attached yet, or closed: dropped
                continue
            arrival = now
            if stamp is not None:
                stamped = stamp - wall_offset
                if stamped < now:
                    arrival = stamped
            try:
                session.receive(data, address, arrival)
            except Exception:
                # As in _tick: a bug in one call's media stops that call's media only.
                log.exception("media of a session on the shared port failed; it is stopped")
                sessions.pop(session_id, None)
        if dropped:
            shared.dropped += dropped
            RTP_DROPPED_TOTAL.inc(dropped, reason="source")

    def _serve(self, now: float) -> None:
        """Every session's part of a tick: its timers, its RTCP report and its due packets.

        One loop over the sessions with what every packet needs at hand (each RTP socket's
        `sendto`, the times), as it runs for every session of the node every tick."""
        senders = self._senders
        soon = now + 0.001
        stale = now - 0.1
        for port, session in list(self.sessions.items()):
            try:
                if now >= session.dtmf_wake:  # (poll's test: no call while no press is on)
                    session.poll(now)
                if now >= session.rtcp_due:
                    self._send_rtcp(port, session, session.rtcp_report(now))
                due = session.next_send_at
                if due is None or due > soon or session.hold:
                    continue
                sendto = senders.get(port)
                remote = session.remote
                step = session.ptime_ms / 1000
                sent = 0
                # Catch up after a late tick, but never burst more than 3 packets.
                while due <= soon and sent < 3:
                    packet = session.next_packet(due)
                    if sendto is not None and packet is not None:
                        try:
                            sendto(packet, remote)
                        except OSError:  # see _sendto
                            self.send_errors += 1
                    due += step
                    sent += 1
                session.next_send_at = now if due < stale else due
            except Exception:
                # A bug in one call's media must not stop every call's: that call loses its
                # media (its journey times out and it ends with a result), the others go on.
                log.exception("media of the session on port %d failed; it is stopped", port)
                self.sessions.pop(port, None)
        shared = self.shared
        if shared is not None and shared.outbox:
            errors = shared.send_errors
            shared.flush()  # the shared port's packets of this tick: one sendmmsg
            self.send_errors += shared.send_errors - errors

    async def _tick(self) -> None:
        interval = TICK_INTERVAL_S
        ticks = 0
        next_tick = self.loop.time()
        while self.sessions:
            now = self.loop.time()
            if self.on_tick_lag is not None:
                try:
                    self.on_tick_lag(now - next_tick, now)
                except Exception:  # the measurement must never stop the media
                    log.exception("tick lag observer failed")
            self._receive(now)
            if self.inband is not None:
                self._detect_inband()
            # The calls take their digits now, not after the rest of the tick's work.
            await asyncio.sleep(0)
            if self.bridges:
                try:
                    self._relay(now)
                except Exception:  # a bug here must not stop the media of every call
                    log.exception("bridged audio failed; nothing crosses this tick")
            self._serve(now)
            if self.on_tick_work is not None:
                try:
                    self.on_tick_work(self.loop.time() - now, now)
                except Exception:  # the measurement must never stop the media
                    log.exception("tick work observer failed")
            ticks += 1
            if ticks % 50 == 0:  # once a second: the counters stay current at 1/50 of the cost
                for session in self.sessions.values():
                    session.report_stats()
            next_tick += interval
            # Receive passes between the ticks too, when the loop has the time: an RFC 4733
            # press waits at most interval / RECEIVE_PASSES in its socket, for an epoll call a
            # pass (each datagram is read once whichever pass reads it).
            for k in range(1, RECEIVE_PASSES):
                wait = next_tick - interval + k * interval / RECEIVE_PASSES - self.loop.time()
                if wait > 0.001:
                    await asyncio.sleep(wait)
                    self._receive(self.loop.time())
                    if self.inband is not None:
                        self._detect_hot()
            delay = next_tick - self.loop.time()
            if delay < -0.1:
                next_tick = self.loop.time()
                delay = 0
            await asyncio.sleep(max(delay, 0))
