"""Many datagrams in one system call: Linux's `recvmmsg` and `sendmmsg`, through ctypes.

Python's socket module reads and writes one datagram a call. On one UDP socket shared by many
calls, these take a whole tick's worth at once, which saves about a quarter of the system
calls' cost per packet (`bench/bench_udp_batching.py`, bench/RESULTS.md). The node's shared
media port (`spg_media.rtp.shared_port`, `rtp.shared_port = "relays"`) reads and writes
through it; docs/design/shared-media-port.md says why and how.

`BatchReceiver` reads into preallocated buffers: each datagram comes out as its payload, its
source as the raw `sockaddr` bytes the kernel wrote (a demultiplexer looks them up as they are,
`sockaddr()` makes the same bytes from an address), and its arrival stamp from `SO_TIMESTAMPNS`
(wall-clock seconds; None if the socket has no stamps on). A datagram longer than a slot is
dropped and counted (`truncated`), never handed on cut. `BatchSender` sends (payload,
destination `sockaddr`) pairs; what the kernel refuses is counted (`errors`, the last errno
kept) and skipped, so one bad destination never holds the others back.

Linux only (`available()`); nothing here logs. The buffers are reused: they hold the last
batch's bytes (call audio, which may carry keypad tones) until the next call overwrites them,
or `wipe()` zeroes them (when the calls using a socket are done).
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import sys
from collections.abc import Callable, Sequence

SLOT = 2048  # bytes of buffer a received datagram: an RTP packet is ~200
_TIMESPEC = struct.Struct("@qq")  # struct timespec: seconds, nanoseconds
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)
_CMSG_HEADER = socket.CMSG_LEN(0)  # a control message's header, before its data
_NAME_SIZE = 28  # sizeof(struct sockaddr_in6), the larger of the two families
_MSG_DONTWAIT = 0x40
_MSG_TRUNC = 0x20
UIO_MAXIOV = 1024  # the most messages one sendmmsg/recvmmsg takes


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_MMSG_SIZE = ctypes.sizeof(_MMsgHdr)
_IOVEC_SIZE = ctypes.sizeof(_IoVec)
_IOV_LEN_OFFSET = _IoVec.iov_len.offset
_LEN_OFFSET = _MMsgHdr.msg_len.offset
_NAMELEN_OFFSET = _MsgHdr.msg_namelen.offset
_FLAGS_OFFSET = _MsgHdr.msg_flags.offset
_UINT = struct.Struct("@I")
_SIZE_T = struct.Struct("@N")
# A message's flags and length, read at once (msg_flags ends msg_hdr; msg_len follows it)
_FLAGS_AND_LEN = struct.Struct(f"@i{_LEN_OFFSET - _FLAGS_OFFSET - 4}xI")
# A control message with a timespec: cmsg_len, cmsg_level, cmsg_type, seconds, nanoseconds
_STAMP = struct.Struct(f"@Nii{_CMSG_HEADER - struct.calcsize('@Nii')}xqq")


def _libc_calls() -> tuple[Callable[..., int], Callable[..., int]] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        receive, send = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    receive.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    receive.restype = ctypes.c_int
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    send.restype = ctypes.c_int
    return receive, send


_CALLS = _libc_calls()


def available() -> bool:
    """Whether this system has `recvmmsg` and `sendmmsg` (Linux)."""
    return _CALLS is not None


def sockaddr(address: tuple[str, int]) -> bytes:
    """The raw `sockaddr_in` (16 bytes) or `sockaddr_in6` (28 bytes) of an IP literal and port,
    byte for byte as the kernel writes a datagram's source."""
    host, port = address
    if ":" in host:
        return (
            struct.pack("=H", socket.AF_INET6)
            + struct.pack("!HI", port, 0)
            + socket.inet_pton(socket.AF_INET6, host)
            + bytes(4)  # scope id
        )
    return (
        struct.pack("=H", socket.AF_INET)
        + struct.pack("!H", port)
        + socket.inet_aton(host)
        + bytes(8)
    )


def address_of(raw: bytes) -> tuple[str, int]:
    """The (IP literal, port) of a raw `sockaddr` from `sockaddr` or `BatchReceiver`."""
    (family,) = struct.unpack_from("=H", raw)
    (port,) = struct.unpack_from("!H", raw, 2)
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    raise ValueError(f"not an IP socket address (family {family})")


def _headers(
    count: int, slot: int
) -> tuple[
    ctypes.Array[ctypes.c_char],
    ctypes.Array[ctypes.c_char],
    ctypes.Array[_IoVec],
    ctypes.Array[_MMsgHdr],
]:
    """`count` message headers, message i with one buffer at i * `slot` of a data area and a
    name slot of _NAME_SIZE bytes at i * _NAME_SIZE of a names area."""
    data = ctypes.create_string_buffer(count * slot)
    names = ctypes.create_string_buffer(count * _NAME_SIZE)
    iovecs = (_IoVec * count)()
    headers = (_MMsgHdr * count)()
    data_base, names_base = ctypes.addressof(data), ctypes.addressof(names)
    iovec_base = ctypes.addressof(iovecs)
    for i in range(count):
        iovecs[i].iov_base = data_base + i * slot
        iovecs[i].iov_len = slot
        header = headers[i].msg_hdr
        header.msg_name = names_base + i * _NAME_SIZE
        header.msg_namelen = _NAME_SIZE
        header.msg_iov = ctypes.cast(iovec_base + i * ctypes.sizeof(_IoVec), ctypes.POINTER(_IoVec))
        header.msg_iovlen = 1
    return data, names, iovecs, headers


class BatchReceiver:
    """`recvmmsg` on one socket (non-blocking reads) into buffers made once."""

    def __init__(self, sock: socket.socket, batch: int = 64, slot: int = SLOT) -> None:
        if _CALLS is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available on this system")
        if not 1 <= batch <= UIO_MAXIOV:
            raise ValueError(f"batch must be 1..{UIO_MAXIOV}")
        self._fd = sock.fileno()
        self._batch, self._slot = batch, slot
        # the kernel writes every source of a socket at its family's size
        self._name_size = 28 if sock.family == socket.AF_INET6 else 16
        self._data, self._names, self._iovecs, self._headers = _headers(batch, slot)
        self._control = ctypes.create_string_buffer(batch * _ANCILLARY)
        self._no_control = bytes(batch * _ANCILLARY)  # cleared before each call: no old stamps
        control_base = ctypes.addressof(self._control)
        for i in range(batch):
            header = self._headers[i].msg_hdr
            header.msg_control = control_base + i * _ANCILLARY
            header.msg_controllen = _ANCILLARY
        # The kernel writes back each message's name and control lengths and flags: the
        # headers are restored from this copy before every call.
        self._pristine = bytes(self._headers)
        self._address = ctypes.addressof(self._headers)
        self._data_view = memoryview(self._data).cast("B")
        self._names_view = memoryview(self._names).cast("B")
        self._control_view = memoryview(self._control).cast("B")
        self._headers_view = memoryview(self._headers).cast("B")
        self.truncated = 0  # datagrams longer than a slot, dropped

    def wipe(self) -> None:
        """Zero the buffers (the last batch's payloads and sources)."""
        ctypes.memset(self._data, 0, ctypes.sizeof(self._data))
        ctypes.memset(self._names, 0, ctypes.sizeof(self._names))

    def receive(self, limit: int | None = None) -> list[tuple[bytes, bytes, float | None]]:
        """Every datagram waiting (at most `limit`, rounded up to whole batches), as
        (payload, raw source sockaddr, kernel arrival stamp in wall-clock seconds or None)."""
        assert _CALLS is not None
        recvmmsg = _CALLS[0]
        out: list[tuple[bytes, bytes, float | None]] = []
        batch, slot, name_size = self._batch, self._slot, self._name_size
        data, names, control, headers = (
            self._data_view,
            self._names_view,
            self._control_view,
            self._headers_view,
        )
        flags_and_length, stamp_of = _FLAGS_AND_LEN.unpack_from, _STAMP.unpack_from
        control_address, no_control = ctypes.addressof(self._control), self._no_control
        while limit is None or len(out) < limit:
            ctypes.memmove(self._address, self._pristine, len(self._pristine))
            ctypes.memmove(control_address, no_control, len(no_control))
            count = recvmmsg(self._fd, self._address, batch, _MSG_DONTWAIT, None)
            if count <= 0:
                return out  # EAGAIN: nothing more (or an error queued: read on the next call)
            for i in range(count):
                flags, length = flags_and_length(headers, i * _MMSG_SIZE + _FLAGS_OFFSET)
                if flags & _MSG_TRUNC or length > slot:
                    self.truncated += 1
                    continue
                cmsg_len, _level, _type, seconds, nanoseconds = stamp_of(control, i * _ANCILLARY)
                name = i * _NAME_SIZE
                out.append(
                    (
                        bytes(data[i * slot : i * slot + length]),
                        bytes(names[name : name + name_size]),
                        seconds + nanoseconds * 1e-9 if cmsg_len else None,
                    )
                )
            if count < batch:
                return out
        return out


class BatchSender:
    """`sendmmsg` of (payload, destination) pairs on one socket, `capacity` at most a call."""

    def __init__(self, sock: socket.socket, capacity: int = 1024, slot: int = SLOT) -> None:
        if _CALLS is None:
            raise OSError(errno.ENOSYS, "sendmmsg is not available on this system")
        self._fd = sock.fileno()
        self._capacity, self._slot = capacity, slot
        self._data, self._names, self._iovecs, self._headers = _headers(capacity, slot)
        self._data_view = memoryview(self._data).cast("B")
        self._names_view = memoryview(self._names).cast("B")
        self._iovecs_view = memoryview(self._iovecs).cast("B")
        self._headers_view = memoryview(self._headers).cast("B")
        self._address = ctypes.addressof(self._headers)
        # What each message slot holds now: written into the headers only when it changes
        # (a call's packets are mostly the same length, to the same place, tick after tick)
        self._lengths: list[int] = [slot] * capacity
        self._destinations: list[bytes] = [b""] * capacity
        self.errors = 0  # messages the kernel refused
        self.last_errno = 0

    def wipe(self) -> None:
        """Zero the payload buffer (the last batch's payloads)."""
        ctypes.memset(self._data, 0, ctypes.sizeof(self._data))

    def send(self, messages: Sequence[tuple[bytes, bytes]]) -> int:
        """Send each (payload, raw destination sockaddr); the number sent. A payload longer
        than a slot, or more messages than `capacity`: ValueError before anything is sent."""
        assert _CALLS is not None
        sendmmsg = _CALLS[1]
        count = len(messages)
        if count > self._capacity:
            raise ValueError(f"{count} messages: at most {self._capacity} a call")
        data, names, slot = self._data_view, self._names_view, self._slot
        lengths, destinations = self._lengths, self._destinations
        for i, (payload, destination) in enumerate(messages):
            length = len(payload)
            if length > slot or len(destination) > _NAME_SIZE:  # (nothing sent yet)
                raise ValueError("a payload longer than a slot, or not a socket address")
            data[i * slot : i * slot + length] = payload
            if length != lengths[i]:
                _SIZE_T.pack_into(self._iovecs_view, i * _IOVEC_SIZE + _IOV_LEN_OFFSET, length)
                lengths[i] = length
            if destination != destinations[i]:
                names[i * _NAME_SIZE : i * _NAME_SIZE + len(destination)] = destination
                _UINT.pack_into(
                    self._headers_view, i * _MMSG_SIZE + _NAMELEN_OFFSET, len(destination)
                )
                destinations[i] = destination
        sent = done = 0
        while done < count:
            chunk = min(count - done, UIO_MAXIOV)
            n = sendmmsg(self._fd, self._address + done * _MMSG_SIZE, chunk, _MSG_DONTWAIT)
            if n > 0:
                sent += n
                done += n
                continue
            # The message at `done` was refused (a full buffer, an unreachable destination,
            # an ICMP error queued on the socket): counted and skipped, the rest still go.
            self.errors += 1
            self.last_errno = ctypes.get_errno()
            done += 1
        return sent
