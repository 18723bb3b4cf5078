"""recvmmsg/sendmmsg through ctypes (spg_media/rtp/mmsg.py), on real sockets on loopback."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from spg_media.rtp import mmsg

pytestmark = pytest.mark.skipif(not mmsg.available(), reason="recvmmsg/sendmmsg: Linux only")


@contextlib.contextmanager
def udp(host: str = "127.0.0.1", stamps: bool = False) -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, 0))
        sock.setblocking(False)
        if stamps:
            sock.setsockopt(socket.SOL_SOCKET, mmsg._SO_TIMESTAMPNS, 1)
        yield sock
    finally:
        sock.close()


def settle() -> None:
    time.sleep(0.02)  # loopback delivers at once; a little room on a loaded machine


def test_sockaddr_round_trips_and_matches_what_the_kernel_writes() -> None:
    for address in (("127.0.0.1", 40000), ("192.0.2.10", 5), ("::1", 65535), ("2001:db8::7", 1)):
        assert mmsg.address_of(mmsg.sockaddr(address)) == address
    assert len(mmsg.sockaddr(("127.0.0.1", 1))) == 16
    assert len(mmsg.sockaddr(("::1", 1))) == 28
    with pytest.raises(ValueError):
        mmsg.address_of(b"\x01\x00" + bytes(14))  # AF_UNIX


def test_a_batch_is_read_with_sources_and_arrival_stamps() -> None:
    with udp(stamps=True) as node, udp() as first, udp() as second:
        target = node.getsockname()
        sent = [(first, b"a" * 172), (second, b"b" * 12), (first, b""), (second, b"c" * 2000)]
        before = time.time()
        for sock, payload in sent:
            sock.sendto(payload, target)
        settle()
        got = mmsg.BatchReceiver(node, batch=3).receive()  # more than a batch: read on
        assert [payload for payload, _, _ in got] == [payload for _, payload in sent]
        assert [mmsg.address_of(source) for _, source, _ in got] == [
            sock.getsockname() for sock, _ in sent
        ]
        assert got[0][1] == mmsg.sockaddr(first.getsockname())
    for _, _, stamp in got:
        assert stamp is not None and before - 1 <= stamp <= time.time() + 1


def test_nothing_waiting_gives_nothing_and_no_stamp_without_the_option() -> None:
    with udp() as node, udp() as peer:
        receiver = mmsg.BatchReceiver(node)
        assert receiver.receive() == []
        peer.sendto(b"x", node.getsockname())
        settle()
        ((payload, _, stamp),) = receiver.receive()
        assert payload == b"x" and stamp is None
        assert receiver.receive() == []


def test_a_datagram_longer_than_a_slot_is_dropped_and_counted_not_cut() -> None:
    with udp() as node, udp() as peer:
        receiver = mmsg.BatchReceiver(node, slot=64)
        peer.sendto(b"y" * 65, node.getsockname())
        peer.sendto(b"z" * 64, node.getsockname())
        settle()
        got = receiver.receive()
    assert [payload for payload, _, _ in got] == [b"z" * 64]
    assert receiver.truncated == 1


def test_receive_stops_near_its_limit() -> None:
    with udp() as node, udp() as peer:
        for n in range(10):
            peer.sendto(bytes([n]), node.getsockname())
        settle()
        receiver = mmsg.BatchReceiver(node, batch=4)
        first = receiver.receive(limit=5)  # whole batches: 8
        rest = receiver.receive()
    assert len(first) == 8 and len(rest) == 2
    assert [p for p, _, _ in first + rest] == [bytes([n]) for n in range(10)]


def test_a_batch_goes_to_many_destinations_with_its_own_lengths() -> None:
    with udp() as node, udp() as a, udp() as b:
        messages = [
            (b"1" * 172, mmsg.sockaddr(a.getsockname())),
            (b"22", mmsg.sockaddr(b.getsockname())),
            (b"", mmsg.sockaddr(a.getsockname())),
        ]
        sender = mmsg.BatchSender(node, capacity=3)
        assert sender.send(messages) == 3
        settle()
        assert a.recvfrom(4096) == (b"1" * 172, node.getsockname())
        assert a.recvfrom(4096) == (b"", node.getsockname())
        assert b.recvfrom(4096) == (b"22", node.getsockname())
        # the buffers are reused: a shorter batch after a longer one sends only its own bytes
        assert sender.send([(b"3", mmsg.sockaddr(b.getsockname()))]) == 1
        settle()
        assert b.recvfrom(4096) == (b"3", node.getsockname())
    assert sender.errors == 0


def test_a_refused_message_is_counted_and_the_rest_still_go() -> None:
    with udp() as node, udp() as peer:
        good = mmsg.sockaddr(peer.getsockname())
        unroutable = mmsg.sockaddr(("::1", 9))  # an IPv6 address on an IPv4 socket
        sender = mmsg.BatchSender(node, capacity=4)
        assert sender.send([(b"a", good), (b"b", unroutable), (b"c", good)]) == 2
        assert sender.errors == 1 and sender.last_errno != 0
        settle()
        assert [peer.recvfrom(16)[0] for _ in range(2)] == [b"a", b"c"]


def test_too_much_for_the_buffers_is_refused_before_anything_is_sent() -> None:
    with udp() as node, udp() as peer:
        to = mmsg.sockaddr(peer.getsockname())
        sender = mmsg.BatchSender(node, capacity=2, slot=8)
        with pytest.raises(ValueError):
            sender.send([(b"x", to)] * 3)
        with pytest.raises(ValueError):
            sender.send([(b"x", to), (b"y" * 9, to)])
        settle()
        with pytest.raises(BlockingIOError):
            peer.setblocking(False)
            peer.recvfrom(16)


def test_ipv6_when_the_machine_has_it() -> None:
    try:
        context = udp("::1")
        node = context.__enter__()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        with udp("::1") as peer:
            peer.sendto(b"six", node.getsockname()[:2])
            settle()
            ((payload, source, _),) = mmsg.BatchReceiver(node).receive()
            assert payload == b"six"
            assert mmsg.address_of(source) == peer.getsockname()[:2]
            assert mmsg.BatchSender(node).send([(b"back", source)]) == 1
            settle()
            assert peer.recvfrom(16)[0] == b"back"
    finally:
        context.__exit__(None, None, None)


def test_wipe_zeroes_what_the_buffers_held() -> None:
    tone = b"\xd5\x55" * 80  # stands for a caller's audio
    with udp() as node, udp() as peer:
        receiver = mmsg.BatchReceiver(node)
        sender = mmsg.BatchSender(node, capacity=1)
        peer.sendto(tone, node.getsockname())
        settle()
        assert receiver.receive()[0][0] == tone
        assert sender.send([(tone, mmsg.sockaddr(peer.getsockname()))]) == 1
        assert tone in bytes(receiver._data) and tone in bytes(sender._data)
        receiver.wipe()
        sender.wipe()
        assert not any(bytes(receiver._data)) and not any(bytes(receiver._names))
        assert not any(bytes(sender._data))
