"""One media port for many calls (`rtp.shared_port = "relays"`): its sockets, who may use it,
and its batched reads and writes.

Every call normally has a UDP port of its own. The calls whose media comes from a relay or
SBC in `rtp.media_sources` may instead share one port pair (RTP on the even port, RTCP on the
odd one above), which the media tick reads with one `recvmmsg` and writes with one `sendmmsg`
for all of them (`spg_media.rtp.mmsg`): fewer system calls a packet (docs/design/
shared-media-port.md has the figures and the reasoning).

Since the port no longer tells calls apart, the source does, exactly: a call is keyed by the
(address, port) of its SDP (`c=`, `m=`), and a datagram is looked up by its raw source
`sockaddr` bytes before anything else is done with it. No match: dropped and counted
(`dropped`), never parsed, never decrypted. There is no latching to another port on the shared
port, and two calls never share a key: `claim` refuses a key in use (the caller then gives the
call a port of its own). The sessions on it pin their SSRCs (`MediaSession.pin_ssrc`), so a
blind spoofer of a relay's address must also guess 32 bits the port no longer hides.

RTCP without rtcp-mux comes to the odd port from the SDP's RTCP address (`a=rtcp`, or the RTP
port + 1), looked up the same way. With rtcp-mux it comes on the RTP key, as the RTP does.

The buffers of the batched calls hold the last batch's audio (keypad tones among it) until the
next batch overwrites it: `wipe` zeroes them when the last call on the port ends. Nothing here
logs.
"""

from __future__ import annotations

import contextlib
import socket

from spg_media.rtp.mmsg import SLOT, UIO_MAXIOV, BatchReceiver, BatchSender, sockaddr

RECEIVE_BATCH = 256  # datagrams a recvmmsg call takes (1,000 calls bring ~250 per 5 ms pass)
RECEIVE_BUFFER = 4 << 20  # SO_RCVBUF of the shared RTP socket: every call's packets queue in it
SEND_BUFFER = 4 << 20  # SO_SNDBUF: a tick sends every call's packets at once
_RAW_CACHE_MAX = 4096  # destinations whose raw sockaddr is kept (a relay's few ports a call)


class SharedPort:
    """The shared RTP and RTCP sockets, the calls' keys, and the tick's outgoing batch."""

    def __init__(self, rtp: socket.socket, rtcp: socket.socket) -> None:
        self.rtp, self.rtcp = rtp, rtcp
        self.port: int = rtp.getsockname()[1]
        for option, size in ((socket.SO_RCVBUF, RECEIVE_BUFFER), (socket.SO_SNDBUF, SEND_BUFFER)):
            # (past the kernel's ceiling, net.core.*mem_max, the ceiling applies)
            with contextlib.suppress(OSError):
                rtp.setsockopt(socket.SOL_SOCKET, option, size)
        # what the kernel granted (Linux reports twice the size it was asked for, up to
        # twice net.core.rmem_max): below RECEIVE_BUFFER, a stalled tick overflows it sooner
        self.receive_buffer: int = rtp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.receiver = BatchReceiver(rtp, RECEIVE_BATCH)
        self.sender = BatchSender(rtp, UIO_MAXIOV)
        # raw source sockaddr of RTP (and muxed RTCP): (session id, that source as an address)
        self.keys: dict[bytes, tuple[int, tuple[str, int]]] = {}
        self.rtcp_keys: dict[tuple[str, int], int] = {}  # RTCP source (odd port): session id
        self._held: dict[int, tuple[bytes, tuple[str, int] | None]] = {}  # id: its two keys
        self.outbox: list[tuple[bytes, bytes]] = []  # the tick's packets: (packet, raw dest)
        self._raw: dict[tuple[str, int], bytes] = {}
        self.dropped = 0  # datagrams from no call's source (counted by the engine's metric)
        self.send_errors = 0

    @property
    def calls(self) -> int:
        return len(self._held)

    def claim(
        self, session_id: int, remote: tuple[str, int], rtcp_remote: tuple[str, int] | None
    ) -> bool:
        """Key `session_id` by `remote` (its RTP source, IP literal and port) and `rtcp_remote`
        (its RTCP source on the odd port; None with rtcp-mux). False, and nothing changed, when
        either key is another call's: two calls never share one. A call already keyed is
        re-keyed (its old keys dropped in the same step)."""
        key = sockaddr(remote)
        owner = self.keys.get(key)
        if owner is not None and owner[0] != session_id:
            return False
        if rtcp_remote is not None and self.rtcp_keys.get(rtcp_remote, session_id) != session_id:
            return False
        self.release(session_id)
        self.keys[key] = (session_id, remote)
        if rtcp_remote is not None:
            self.rtcp_keys[rtcp_remote] = session_id
        self._held[session_id] = (key, rtcp_remote)
        return True

    def release(self, session_id: int) -> None:
        """Drop `session_id`'s keys (its media stops being taken); the buffers are wiped when it
        was the last call on the port."""
        held = self._held.pop(session_id, None)
        if held is None:
            return
        key, rtcp_remote = held
        self.keys.pop(key, None)
        if rtcp_remote is not None:
            self.rtcp_keys.pop(rtcp_remote, None)
        if not self._held:
            self.wipe()

    def holds(self, session_id: int) -> bool:
        return session_id in self._held

    def queue(self, packet: bytes, remote: tuple[str, int]) -> int:
        """Queue `packet` for `remote` in this tick's batch (sent by `flush`), as `sendto`
        would be called."""
        if len(packet) > SLOT:  # longer than a batch slot (a very long ptime): on its own
            return self.rtp.sendto(packet, remote)
        raw = self._raw.get(remote)
        if raw is None:
            if len(self._raw) >= _RAW_CACHE_MAX:
                self._raw.clear()
            raw = self._raw[remote] = sockaddr(remote)
        self.outbox.append((packet, raw))
        return len(packet)

    def flush(self) -> None:
        """Send the tick's batch: one `sendmmsg` for up to UIO_MAXIOV packets. What the kernel
        refuses is counted (`send_errors`) and skipped."""
        outbox = self.outbox
        if not outbox:
            return
        sender = self.sender
        errors = sender.errors
        try:
            for start in range(0, len(outbox), UIO_MAXIOV):
                chunk = outbox[start : start + UIO_MAXIOV]
                try:
                    sender.send(chunk)
                except ValueError:  # (a packet over a slot: `queue` sends those on their own)
                    self.send_errors += len(chunk)
        finally:  # whatever happens, the next tick starts with an empty batch
            self.send_errors += sender.errors - errors
            outbox.clear()

    def wipe(self) -> None:
        """Zero the batch buffers: the last datagrams received and sent."""
        self.receiver.wipe()
        self.sender.wipe()
        self._raw.clear()

    def close(self) -> None:
        self.wipe()
        self._held.clear()
        self.keys.clear()
        self.rtcp_keys.clear()
        for sock in (self.rtp, self.rtcp):
            sock.close()
