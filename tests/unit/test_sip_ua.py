"""The UA shell: its pure helpers, Contact forms, a TLS listener on loopback, and what strangers
and slow or idle peers can cost it (closed at accept, connection limit, deadlines, untrusted
UDP). The socket tests run on both event loops the node may use: asyncio's and uvloop's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from spg_media import observability as obs
from spg_media.config import SipConfig
from spg_media.sip import ua as ua_module
from spg_media.sip.dialog import Dialog
from spg_media.sip.invite_session import new_invite
from spg_media.sip.limits import ConnectionLimits
from spg_media.sip.message import (
    SipRequest,
    SipResponse,
    StreamFramer,
    make_response,
    parse_message,
)
from spg_media.sip.transaction import Address
from spg_media.sip.ua import Listen, SipUserAgent, _message_kind
from spg_media.sip.uri import NameAddr
from spg_media.tlscert import CertPair, OpensslMissing, make_self_signed

T = TypeVar("T")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"INVITE sip:pay@127.0.0.1 SIP/2.0\r\n", "INVITE"),
        (b"BYE sip:pay@127.0.0.1 SIP/2.0\r\n", "BYE"),
        (b"SIP/2.0 200 OK\r\n", "2xx"),
        (b"SIP/2.0 488 Not Acceptable Here\r\n", "4xx"),
        (b"FROB sip:x SIP/2.0\r\n", "other"),  # label values stay a fixed set
        (b"4111111111111111 sip:x SIP/2.0\r\n", "other"),
        (b"SIP/2.0 x\r\n", "other"),
        (b"", "other"),
    ],
)
def test_message_kind_is_a_small_fixed_set(data: bytes, kind: str) -> None:
    assert _message_kind(data) == kind


# ---- both event loops ------------------------------------------------------------------------


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> str:
    """The event loop a socket test runs on (uvloop: skipped when it is not installed)."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    return str(request.param)


def run(loop: str, coro: Coroutine[Any, Any, T]) -> T:
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


# ---- Contact per transport (RFC 3261 §12.1.1, RFC 5630) -------------------------------------


def _ua(*listen: Listen) -> SipUserAgent:
    return SipUserAgent(list(listen), "127.0.0.1")


LISTENERS = (
    Listen("udp", "127.0.0.1", 5080),
    Listen("tcp", "127.0.0.1", 5080),
    Listen("tls", "127.0.0.1", 5081),
)


@pytest.mark.parametrize(
    ("transport", "secure", "contact"),
    [
        ("udp", False, "<sip:spg@127.0.0.1:5080>"),
        ("tcp", False, "<sip:spg@127.0.0.1:5080;transport=tcp>"),
        # a sip: INVITE that came over TLS: never a sips: Contact (baresip cannot ACK one)
        ("tls", False, "<sip:spg@127.0.0.1:5081;transport=tls>"),
        # a sips: INVITE: sips: Contact, no transport parameter
        ("tls", True, "<sips:spg@127.0.0.1:5081>"),
        # sips over a non-TLS transport cannot be: plain form
        ("tcp", True, "<sip:spg@127.0.0.1:5080;transport=tcp>"),
    ],
)
def test_contact_per_transport(transport: str, secure: bool, contact: str) -> None:
    assert _ua(*LISTENERS).contact(transport, secure=secure) == contact


def test_contact_and_sent_by_use_the_tls_listener_port() -> None:
    ua = _ua(*LISTENERS)
    assert ua.sent_by("tls") == "127.0.0.1:5081"
    parsed = NameAddr.parse(ua.contact("tls")).uri
    assert parsed.transport == "tls"
    assert parsed.port == 5081


# ---- TLS on loopback: listener, answers on the same connection, requests reuse it ----------


@pytest.fixture
def pair(tmp_path: Path) -> CertPair:
    """A self-signed certificate for 127.0.0.1 (the test is skipped without openssl)."""
    try:
        return make_self_signed(tmp_path)
    except OpensslMissing:
        pytest.skip("openssl not installed")


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _msg(text: str) -> bytes:
    head, _, body = text.partition("\n\n")
    lines = [line for line in head.strip("\n").split("\n")]
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


class _Handler:
    def __init__(self) -> None:
        self.invites: list[tuple[SipRequest, Address]] = []

    def on_invite(self, invite: SipRequest, source: Address) -> None:
        self.invites.append((invite, source))


async def _read_message(reader: asyncio.StreamReader, framer: StreamFramer) -> bytes:
    while True:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "connection closed"
        messages = framer.feed(data)
        if messages:
            assert len(messages) == 1
            return messages[0]


async def _tls_round_trip(cert: Path, key: Path) -> None:
    server_ctx = _server_context(cert, key)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ua = SipUserAgent([Listen("tls", "127.0.0.1", port)], "127.0.0.1", ssl_context=server_ctx)
    handler = _Handler()
    ua.invite_handler = handler
    await ua.start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(cert))  # verifies name and chain
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1"
        )
        local_port = writer.get_extra_info("sockname")[1]
        framer = StreamFramer()

        # OPTIONS: answered on the same connection, Via gets received/rport
        writer.write(
            _msg(
                "OPTIONS sip:127.0.0.1 SIP/2.0\n"
                "Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-tls-1;rport\n"
                "Max-Forwards: 70\nFrom: <sip:t@127.0.0.1>;tag=a\nTo: <sip:127.0.0.1>\n"
                "Call-ID: tls-1\nCSeq: 1 OPTIONS\n\n"
            )
        )
        answer = parse_message(await _read_message(reader, framer))
        assert isinstance(answer, SipResponse) and answer.status == 200
        assert f"rport={local_port}" in (answer.headers.get("Via") or "")

        # INVITE: the handler sees a TLS source (the connection it came on)
        writer.write(
            _msg(
                "INVITE sip:pay@127.0.0.1;transport=tls SIP/2.0\n"
                "Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-tls-2;rport\n"
                "Max-Forwards: 70\nFrom: <sip:t@127.0.0.1>;tag=b\nTo: <sip:pay@127.0.0.1>\n"
                "Call-ID: tls-2\nCSeq: 1 INVITE\n"
                "Contact: <sip:t@127.0.0.1:5999;transport=tls>\n\n"
            )
        )
        trying = parse_message(await _read_message(reader, framer))
        assert isinstance(trying, SipResponse) and trying.status == 100
        assert handler.invites, "INVITE not handed to the handler"
        _invite, source = handler.invites[0]
        assert source == Address("tls", "127.0.0.1", local_port)

        # a request of ours to that source reuses the connection (the peer's Contact port,
        # 5999, is not even listening) and resolves with the answer read on it
        request = parse_message(
            _msg(
                "BYE sip:t@127.0.0.1:5999;transport=tls SIP/2.0\n"
                f"Via: SIP/2.0/TLS {ua.sent_by('tls')};branch=z9hG4bK-tls-3;rport\n"
                "Max-Forwards: 70\nFrom: <sip:pay@127.0.0.1>;tag=c\nTo: <sip:t@127.0.0.1>;tag=b\n"
                "Call-ID: tls-2\nCSeq: 2 BYE\n\n"
            )
        )
        assert isinstance(request, SipRequest)
        pending = asyncio.ensure_future(ua.request(request, source))
        got = parse_message(await _read_message(reader, framer))
        assert isinstance(got, SipRequest) and got.method == "BYE"
        assert (got.headers.get("Via") or "").startswith("SIP/2.0/TLS 127.0.0.1:")
        writer.write(make_response(got, 200).to_bytes())
        final = await asyncio.wait_for(pending, 5)
        assert final.status == 200
        writer.close()
    finally:
        await ua.close()


def test_tls_listener_answers_and_reuses_the_connection(pair: CertPair, loop: str) -> None:
    run(loop, _tls_round_trip(pair.cert, pair.key))


def test_ua_can_be_built_outside_a_running_loop() -> None:
    asyncio.run(asyncio.sleep(0))  # leaves no current event loop behind
    ua = _ua(*LISTENERS)
    assert ua.contact("udp") == "<sip:spg@127.0.0.1:5080>"
    with pytest.raises(RuntimeError):
        _ = ua.loop  # only inside the loop that runs it


# ---- TLS connections we open: verified, against the system's CAs or sip.tls_ca --------------


async def _outgoing_tls(cert: Path, key: Path, client: ssl.SSLContext | None) -> int:
    """A BYE of ours to a TLS peer whose certificate is `cert`: the final status we get (the
    peer answers 200; 503 when our side refuses the connection)."""
    server_ctx = _server_context(cert, key)
    received: list[bytes] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            message = await _read_message(reader, StreamFramer())
        except (AssertionError, OSError, ssl.SSLError):  # our side gave up the handshake
            return
        received.append(message)
        request = parse_message(message)
        assert isinstance(request, SipRequest)
        writer.write(make_response(request, 200).to_bytes())
        await writer.drain()

    server = await asyncio.start_server(peer, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    ua = SipUserAgent([Listen("tcp", "127.0.0.1", 0)], "127.0.0.1", client_ssl_context=client)
    await ua.start()
    try:
        request = parse_message(
            _msg(
                f"BYE sip:t@127.0.0.1:{port};transport=tls SIP/2.0\n"
                "Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-out-1;rport\n"
                "Max-Forwards: 70\nFrom: <sip:pay@127.0.0.1>;tag=c\nTo: <sip:t@127.0.0.1>;tag=b\n"
                "Call-ID: out-1\nCSeq: 2 BYE\n\n"
            )
        )
        assert isinstance(request, SipRequest)
        final = await asyncio.wait_for(ua.request(request, Address("tls", "127.0.0.1", port)), 10)
        assert bool(received) == (final.status == 200)
        return final.status
    finally:
        await ua.close()
        server.close()
        await server.wait_closed()


def test_tls_we_open_trusts_sip_tls_ca_and_not_an_unknown_certificate(
    pair: CertPair, tmp_path: Path
) -> None:
    # No sip.tls_ca: the system's CAs, which do not know a self-signed certificate.
    assert SipConfig().client_tls() is None
    assert asyncio.run(_outgoing_tls(pair.cert, pair.key, None)) == 503
    # sip.tls_ca naming it: verified (chain and address), and the BYE gets its answer.
    trusted = SipConfig(tls_ca=str(pair.cert)).client_tls()
    assert trusted is not None and trusted.verify_mode == ssl.CERT_REQUIRED
    assert asyncio.run(_outgoing_tls(pair.cert, pair.key, trusted)) == 200
    # Another CA's certificate is still refused.
    other = make_self_signed(tmp_path / "other")
    refused = SipConfig(tls_ca=str(other.cert)).client_tls()
    assert asyncio.run(_outgoing_tls(pair.cert, pair.key, refused)) == 503


def test_a_request_over_udp_without_a_udp_listener_gets_503_at_once() -> None:
    async def scenario() -> int:
        ua = SipUserAgent([Listen("tcp", "127.0.0.1", 0)], "127.0.0.1")
        await ua.start()
        try:
            request = parse_message(
                _msg(
                    "BYE sip:t@127.0.0.1:5999 SIP/2.0\n"
                    "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-noudp-1;rport\n"
                    "Max-Forwards: 70\nFrom: <sip:pay@127.0.0.1>;tag=c\n"
                    "To: <sip:t@127.0.0.1>;tag=b\nCall-ID: noudp-1\nCSeq: 2 BYE\n\n"
                )
            )
            assert isinstance(request, SipRequest)
            answer = ua.request(request, Address("udp", "127.0.0.1", 5999))
            final = await asyncio.wait_for(answer, 1)  # not timer F's 32 s
            return final.status
        finally:
            await ua.close()

    assert asyncio.run(scenario()) == 503


# ---- extensions (RFC 3261 §8.2.2.3) -------------------------------------------------------


async def _udp_exchange(messages: list[bytes]) -> tuple[list[SipResponse], _Handler]:
    """Send each message to a UA on loopback UDP; the first response to each."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ua = SipUserAgent([Listen("udp", "127.0.0.1", port)], "127.0.0.1")
    handler = _Handler()
    ua.invite_handler = handler
    await ua.start()
    answers: list[SipResponse] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.setblocking(False)
            loop = asyncio.get_running_loop()
            for message in messages:
                await loop.sock_sendto(peer, message, ("127.0.0.1", port))
                while True:
                    data = await asyncio.wait_for(loop.sock_recv(peer, 65536), 5)
                    answer = parse_message(data)
                    assert isinstance(answer, SipResponse)
                    if answer.status >= 200:
                        answers.append(answer)
                        break
    finally:
        await ua.close()
    return answers, handler


def _request(method: str, call_id: str, extra: str, to_tag: str = "") -> bytes:
    tag = f";tag={to_tag}" if to_tag else ""
    return _msg(
        f"{method} sip:pay@127.0.0.1 SIP/2.0\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-{call_id}-{method};rport\n"
        f"Max-Forwards: 70\nFrom: <sip:t@127.0.0.1>;tag=a\nTo: <sip:pay@127.0.0.1>{tag}\n"
        f"Call-ID: {call_id}\nCSeq: 1 {method}\nContact: <sip:t@127.0.0.1:5999>\n{extra}\n"
    )


def test_a_required_extension_we_lack_is_refused_with_420_naming_it() -> None:
    answers, handler = asyncio.run(
        _udp_exchange(
            [
                _request("INVITE", "req-1", "Require: timer\nRequire: 100rel, Replaces\n"),
                _request("OPTIONS", "req-2", "Require: x-frob\n"),
                _request("BYE", "req-3", "Require: timer, 100rel\n", to_tag="b"),
                _request("OPTIONS", "req-4", "Supported: timer, 100rel\n"),  # only offered
            ]
        )
    )
    assert [a.status for a in answers] == [420, 420, 420, 200]
    # timer (RFC 4028) is ours: only the others are named
    assert answers[0].headers.get_all("Unsupported") == ["100rel", "Replaces"]
    assert answers[1].headers.get_all("Unsupported") == ["x-frob"]
    assert answers[2].headers.get_all("Unsupported") == ["100rel"]
    assert not handler.invites  # the refused INVITE never became a call


# ---- connections: strangers closed at accept, a cap, deadlines --------------------------------


def _free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _options(call_id: str, port: int = 5999, transport: str = "TCP") -> bytes:
    return _msg(
        "OPTIONS sip:127.0.0.1 SIP/2.0\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch=z9hG4bK-{call_id};rport\n"
        "Max-Forwards: 70\nFrom: <sip:t@127.0.0.1>;tag=a\nTo: <sip:127.0.0.1>\n"
        f"Call-ID: {call_id}\nCSeq: 1 OPTIONS\n\n"
    )


async def _closed_within(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, float]:
    """Everything read until the peer closed the connection, and when (monotonic seconds);
    TimeoutError when it stays open `timeout` seconds."""
    got = b""
    try:
        async with asyncio.timeout(timeout):
            while data := await reader.read(65536):
                got += data
    except ConnectionResetError:
        pass
    return got, time.monotonic()


async def _client_hello() -> bytes:
    """The first flight of a TLS client (a ClientHello), as bytes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def _stranger_at_accept(cert: Path, key: Path) -> tuple[bytes, bytes, int, int]:
    """A stranger (127.0.0.2) sends a ClientHello to a TLS listener that trusts 127.0.0.1
    only: what it gets back, what an untrusted plain TCP peer gets, the trusted client's
    OPTIONS status over TLS, and how many TLS sessions the node began."""
    port = _free_tcp_port()
    plain_port = _free_tcp_port()
    ua = SipUserAgent(
        [Listen("tls", "127.0.0.1", port), Listen("tcp", "127.0.0.1", plain_port)],
        "127.0.0.1",
        trusted_sources=["127.0.0.1/32"],
        ssl_context=_server_context(cert, key),
    )
    await ua.start()
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=("127.0.0.2", 0)
        )
        writer.write(await _client_hello())
        tls_answer, _ = await _closed_within(reader, 5)
        writer.close()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", plain_port, local_addr=("127.0.0.2", 0)
        )
        writer.write(_options("stranger-tcp"))
        tcp_answer, _ = await _closed_within(reader, 5)
        writer.close()
        began = _CountingTls.made
        # a trusted client: handshake and answer as usual
        client_ctx = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        writer.write(_options("trusted-tls", transport="TLS"))
        answer = parse_message(await _read_message(reader, StreamFramer()))
        assert isinstance(answer, SipResponse)
        writer.close()
        assert _CountingTls.made == began + 1
        return tls_answer, tcp_answer, answer.status, began
    finally:
        await ua.close()


class _CountingTls(ua_module._ServerTls):
    made = 0

    def __init__(self, context: ssl.SSLContext) -> None:
        type(self).made += 1
        super().__init__(context)


def test_a_stranger_is_closed_at_accept_before_any_tls_handshake(
    pair: CertPair, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ua_module, "_ServerTls", _CountingTls)
    _CountingTls.made = 0
    refused = ua_module.SIP_CONNECTIONS_REFUSED_TOTAL.get(reason="untrusted")
    tls_answer, tcp_answer, status, sessions = run(loop, _stranger_at_accept(pair.cert, pair.key))
    assert tls_answer == b""  # no ServerHello, no alert: closed unread
    assert sessions == 0  # no TLS session was even begun for the stranger
    assert tcp_answer == b""  # and no 403 either: nothing at all
    assert status == 200
    assert ua_module.SIP_CONNECTIONS_REFUSED_TOTAL.get(reason="untrusted") - refused == 2


async def _connection_cap() -> tuple[bytes, list[int], float, float]:
    port = _free_tcp_port()
    ua = SipUserAgent(
        [Listen("tcp", "127.0.0.1", port)], "127.0.0.1", limits=ConnectionLimits(max_connections=3)
    )
    await ua.start()
    before = ua_module.SIP_CONNECTIONS_OPEN.get()
    try:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await asyncio.sleep(0.1)
        open_now = ua_module.SIP_CONNECTIONS_OPEN.get() - before
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # one too many
        writer.write(_options("over"))
        over, _ = await _closed_within(reader, 5)
        writer.close()
        statuses = []
        for n, (held_reader, held_writer) in enumerate(held):  # the first three are served
            held_writer.write(_options(f"held-{n}"))
            answer = parse_message(await _read_message(held_reader, StreamFramer()))
            assert isinstance(answer, SipResponse)
            statuses.append(answer.status)
        held[0][1].close()  # one leaves: a new one is taken
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_options("after"))
        answer = parse_message(await _read_message(reader, StreamFramer()))
        assert isinstance(answer, SipResponse)
        statuses.append(answer.status)
        writer.close()
        for _, held_writer in held[1:]:
            held_writer.close()
        await asyncio.sleep(0.1)
        return over, statuses, open_now, ua_module.SIP_CONNECTIONS_OPEN.get() - before
    finally:
        await ua.close()


def test_connections_past_max_connections_are_closed_at_accept(loop: str) -> None:
    refused = ua_module.SIP_CONNECTIONS_REFUSED_TOTAL.get(reason="limit")
    over, statuses, open_then, open_at_end = run(loop, _connection_cap())
    assert over == b""
    assert statuses == [200, 200, 200, 200]
    assert open_then == 3 and open_at_end == 0  # the gauge follows opens and closes
    assert ua_module.SIP_CONNECTIONS_REFUSED_TOTAL.get(reason="limit") - refused == 1


class _FakeCall:
    """A dialog as the UA sees it: requests of the call and the connection it came on."""

    def __init__(self, source: Address) -> None:
        self.source = source

    def on_request(self, request: SipRequest, source: Address) -> None:
        pass

    def on_ack(self, ack: SipRequest) -> None:
        pass

    def on_cancel(self, invite: SipRequest) -> None:
        pass

    def on_ack_timeout(self) -> None:
        pass


async def _deadlines() -> dict[str, float]:
    """When (seconds after they opened) the node closed each kind of connection; inf: never
    within the test."""
    port = _free_tcp_port()
    ua = SipUserAgent(
        [Listen("tcp", "127.0.0.1", port)],
        "127.0.0.1",
        limits=ConnectionLimits(idle_timeout_s=1.0, header_timeout_s=0.6),
    )
    ua.connections.resolution_s = 0.05
    await ua.start()
    handler = _Handler()
    ua.invite_handler = handler
    start = time.monotonic()
    closed: dict[str, float] = {}
    tasks = []

    async def watch(name: str, reader: asyncio.StreamReader, timeout: float = 4.5) -> None:
        try:
            _, when = await _closed_within(reader, timeout)
            closed[name] = when - start
        except TimeoutError:
            closed[name] = float("inf")

    try:
        conns = {
            name: await asyncio.open_connection("127.0.0.1", port)
            for name in ("idle", "slow", "chatty", "call", "waiting")
        }
        for name, (reader, _) in conns.items():
            tasks.append(asyncio.ensure_future(watch(name, reader)))
        # call: an INVITE whose dialog lives (the UA routes its requests by Call-ID)
        call_writer = conns["call"][1]
        call_writer.write(
            _msg(
                "INVITE sip:pay@127.0.0.1 SIP/2.0\n"
                "Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-call-1;rport\n"
                "Max-Forwards: 70\nFrom: <sip:t@127.0.0.1>;tag=a\nTo: <sip:pay@127.0.0.1>\n"
                "Call-ID: call-1\nCSeq: 1 INVITE\nContact: <sip:t@127.0.0.1:5999;transport=tcp>\n\n"
            )
        )
        while not handler.invites:
            await asyncio.sleep(0.01)
        ua.dialogs["call-1"] = _FakeCall(handler.invites[0][1])
        # waiting: a request of ours on it has no answer yet (a client transaction pending)
        waiting_port = conns["waiting"][1].get_extra_info("sockname")[1]
        waiting = Address("tcp", "127.0.0.1", waiting_port)
        while waiting not in ua.streams:
            await asyncio.sleep(0.01)
        bye = parse_message(
            _msg(
                "BYE sip:t@127.0.0.1:5999;transport=tcp SIP/2.0\n"
                f"Via: SIP/2.0/TCP {ua.sent_by('tcp')};branch=z9hG4bK-wait-1;rport\n"
                "Max-Forwards: 70\nFrom: <sip:pay@127.0.0.1>;tag=c\nTo: <sip:t@127.0.0.1>;tag=b\n"
                "Call-ID: wait-1\nCSeq: 2 BYE\n\n"
            )
        )
        assert isinstance(bye, SipRequest)
        pending = asyncio.ensure_future(ua.request(bye, waiting))
        # slow: a head a byte at a time, never whole; chatty: a whole message every 0.4 s
        head = _options("slow")[:-10]
        for tick in range(30):
            if "slow" not in closed:
                conns["slow"][1].write(head[tick : tick + 1])
            if tick % 4 == 0 and "chatty" not in closed:
                conns["chatty"][1].write(_options(f"chatty-{tick}"))
            await asyncio.sleep(0.1)
        ua.dialogs.pop("call-1")  # the call ends: its connection idles like any other
        closed["call ended"] = time.monotonic() - start
        await asyncio.gather(*tasks)
        pending.cancel()
        for _, writer in conns.values():
            writer.close()
        return closed
    finally:
        await ua.close()


def test_slow_heads_and_idle_connections_are_closed_but_not_a_calls(loop: str) -> None:
    before = {
        reason: ua_module.SIP_CONNECTIONS_CLOSED_TOTAL.get(reason=reason)
        for reason in ("idle", "header")
    }
    closed = run(loop, _deadlines())
    # (uvloop's clock is libuv's, cached to the millisecond: a little slack below)
    assert 0.55 <= closed["slow"] < 1.0, closed  # the head's deadline, well before idle
    assert 0.95 <= closed["idle"] < 1.4, closed
    # a message every 0.4 s until 2.8 s: open until it had been quiet a whole idle period
    assert closed["chatty"] >= 3.7, closed
    assert closed["waiting"] == float("inf"), closed  # our BYE waits for its answer there
    # the call's connection outlived three idle periods, and was closed within one of its end
    assert 3.0 <= closed["call ended"] < closed["call"] < closed["call ended"] + 1.2, closed
    assert ua_module.SIP_CONNECTIONS_CLOSED_TOTAL.get(reason="header") - before["header"] == 1
    assert ua_module.SIP_CONNECTIONS_CLOSED_TOTAL.get(reason="idle") - before["idle"] == 3


async def _half_handshake(cert: Path, key: Path) -> float:
    port = _free_tcp_port()
    ua = SipUserAgent(
        [Listen("tls", "127.0.0.1", port)],
        "127.0.0.1",
        ssl_context=_server_context(cert, key),
        limits=ConnectionLimits(tls_handshake_timeout_s=0.5, idle_timeout_s=30),
    )
    await ua.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        hello = await _client_hello()
        started = time.monotonic()
        writer.write(hello[: len(hello) // 2])  # half a ClientHello, then nothing
        _, when = await _closed_within(reader, 5)
        writer.close()
        await asyncio.sleep(0.05)
        assert not ua.streams
        return when - started
    finally:
        await ua.close()


def test_a_tls_handshake_that_does_not_finish_in_time_is_closed(pair: CertPair, loop: str) -> None:
    before = ua_module.SIP_CONNECTIONS_CLOSED_TOTAL.get(reason="handshake")
    took = run(loop, _half_handshake(pair.cert, pair.key))
    assert 0.3 <= took < 1.5, took  # the node's clock started at accept, a little earlier
    assert ua_module.SIP_CONNECTIONS_CLOSED_TOTAL.get(reason="handshake") - before == 1


# ---- untrusted UDP: dropped and counted; an INVITE gets a rationed 403 ----------------------


async def _strangers_on_udp() -> tuple[list[int], int]:
    """From 127.0.0.2 (untrusted): an OPTIONS, a response, junk, then 30 INVITEs at once. The
    statuses received back, and how many packets came back in all."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ua = SipUserAgent([Listen("udp", "127.0.0.1", port)], "127.0.0.1", ["127.0.0.1/32"])
    handler = _Handler()
    ua.invite_handler = handler
    await ua.start()
    loop = asyncio.get_running_loop()
    received: list[bytes] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.bind(("127.0.0.2", 0))
            stranger.setblocking(False)
            me = stranger.getsockname()[1]
            packets = [
                _request("OPTIONS", "s-1", "").replace(b"5999", str(me).encode()),
                b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-x\r\n"
                b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: r\r\nCSeq: 1 BYE\r\n"
                b"Content-Length: 0\r\n\r\n",
                b"\x16\x03\x01 not SIP at all",
                *[
                    _request("INVITE", f"s-inv-{n}", "").replace(b"5999", str(me).encode())
                    for n in range(30)
                ],
            ]
            for packet in packets:
                await loop.sock_sendto(stranger, packet, ("127.0.0.1", port))
            while True:
                try:
                    received.append(await asyncio.wait_for(loop.sock_recv(stranger, 65536), 0.5))
                except TimeoutError:
                    break
    finally:
        await ua.close()
    assert not handler.invites
    statuses = []
    for data in received:
        answer = parse_message(data)
        assert isinstance(answer, SipResponse)
        assert answer.cseq[1] == "INVITE"
        statuses.append(answer.status)
    return statuses, len(received)


def test_strangers_on_udp_get_nothing_but_a_rationed_403_to_invites(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dropped = ua_module.SIP_DROPPED_TOTAL.get(reason="untrusted")
    forbidden = obs.CALLS_REJECTED_TOTAL.get(status="403")
    with caplog.at_level(logging.INFO, logger="spg.sip"):
        statuses, count = asyncio.run(_strangers_on_udp())
    # the bucket's burst of 403s (INVITEs only), then nothing: no answer to OPTIONS, none to
    # the response or the junk
    assert statuses == [403] * int(ua_module.FORBIDDEN_BURST)
    assert count == ua_module.FORBIDDEN_BURST
    assert obs.CALLS_REJECTED_TOTAL.get(status="403") - forbidden == ua_module.FORBIDDEN_BURST
    assert ua_module.SIP_DROPPED_TOTAL.get(reason="untrusted") - dropped == 3 + 30 - 20
    # 33 packets, one log line (the next would come 10 s later with the count since)
    lines = [r for r in caplog.records if "trusted_sources" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.WARNING


# ---- our INVITE: provisional answers, and the ACK of a 2xx sent again ----------------------


async def _our_invite() -> tuple[list[int], SipResponse, list[str]]:
    """The UA sends an INVITE to a raw UDP peer that rings, answers 200, then (its ACK lost)
    sends the 200 again: the requester hears the 180, gets the 200, and the peer gets the same
    ACK twice."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ua = SipUserAgent([Listen("udp", "127.0.0.1", port)], "127.0.0.1")
    await ua.start()
    loop = asyncio.get_running_loop()
    heard: list[int] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.setblocking(False)
            peer_port = peer.getsockname()[1]
            invite = new_invite(
                request_uri=f"sip:agent@127.0.0.1:{peer_port}", from_="<sip:spg@127.0.0.1>",
                to="<sip:agent@127.0.0.1>", call_id="ours-1", contact=ua.contact("udp"),
                via_transport="udp", via_sent_by=ua.sent_by("udp"), body=b"", local_tag="t1",
            )  # fmt: skip
            asked = loop.create_task(
                ua.request(
                    invite,
                    Address("udp", "127.0.0.1", peer_port),
                    lambda response: heard.append(response.status),
                )
            )
            received = parse_message(await asyncio.wait_for(loop.sock_recv(peer, 65536), 5))
            assert isinstance(received, SipRequest) and received.method == "INVITE"
            for status in (180, 200):
                answer = make_response(
                    received, status, to_tag="agent",
                    headers=[("Contact", f"<sip:agent@127.0.0.1:{peer_port}>")],
                )  # fmt: skip
                await loop.sock_sendto(peer, answer.to_bytes(), ("127.0.0.1", port))
            final = await asyncio.wait_for(asked, 5)
            dialog = Dialog.as_uac(invite, final)
            ack = dialog.new_request("ACK", "udp", ua.sent_by("udp"), cseq=invite.cseq[0])
            ua.send_ack(ack, Address("udp", "127.0.0.1", peer_port))
            acks = [(await asyncio.wait_for(loop.sock_recv(peer, 65536), 5)).decode()]
            await loop.sock_sendto(peer, answer.to_bytes(), ("127.0.0.1", port))  # 200 again
            acks.append((await asyncio.wait_for(loop.sock_recv(peer, 65536), 5)).decode())
    finally:
        await ua.close()
    return heard, final, acks


def test_our_invite_hears_its_provisional_answers_and_a_2xx_again_is_acked_again() -> None:
    heard, final, acks = asyncio.run(_our_invite())
    assert heard == [180] and final.status == 200
    assert acks[0].startswith("ACK sip:agent@127.0.0.1:") and acks[1] == acks[0]
