"""The UA shell: its pure helpers, Contact forms, and a TLS listener on loopback."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from spg_media.config import SipConfig
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


def test_tls_listener_answers_and_reuses_the_connection(pair: CertPair) -> None:
    asyncio.run(_tls_round_trip(pair.cert, pair.key))


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
