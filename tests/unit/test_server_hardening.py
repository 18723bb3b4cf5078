"""What the node sets up around its listeners: TLS without session tickets, a warning for an
admin endpoint off loopback, and an open-file limit that leaves sip.max_connections room."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import socket
import ssl
from pathlib import Path
from types import SimpleNamespace

import pytest

from spg_media import admin
from spg_media.config import load_config
from spg_media.server import Server, raise_open_file_limit, server_tls_context
from spg_media.sip.message import SipResponse, StreamFramer, parse_message
from spg_media.sip.ua import Listen, SipUserAgent
from spg_media.tlscert import CertPair, OpensslMissing, make_self_signed


@pytest.fixture
def pair(tmp_path: Path) -> CertPair:
    try:
        return make_self_signed(tmp_path)
    except OpensslMissing:
        pytest.skip("openssl not installed")


OPTIONS = (
    b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-t1\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=a\r\nTo: <sip:127.0.0.1>\r\n"
    b"Call-ID: tickets\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


async def _session_after_a_request(
    server_context: ssl.SSLContext, cert: Path, version: ssl.TLSVersion
) -> ssl.SSLSession:
    """The client's TLS session once a request over a node's TLS listener was answered."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ua = SipUserAgent([Listen("tls", "127.0.0.1", port)], "127.0.0.1", ssl_context=server_context)
    await ua.start()
    try:
        client = ssl.create_default_context(cafile=str(cert))
        client.maximum_version = version
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        writer.write(OPTIONS)
        framer = StreamFramer()
        messages: list[bytes] = []
        while not messages:  # TLS 1.3 tickets come after the handshake: read past them
            messages = framer.feed(await asyncio.wait_for(reader.read(65536), 5))
        answer = parse_message(messages[0])
        assert isinstance(answer, SipResponse) and answer.status == 200
        tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
        assert (
            tls.version()
            == {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version]
        )
        session = tls.session
        writer.close()
        assert session is not None
        return session
    finally:
        await ua.close()


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["TLSv1.3", "TLSv1.2"]
)
def test_our_tls_listeners_issue_no_session_tickets(
    pair: CertPair, version: ssl.TLSVersion
) -> None:
    ours = server_tls_context(str(pair.cert), str(pair.key))
    session = asyncio.run(_session_after_a_request(ours, pair.cert, version))
    assert not session.has_ticket
    # the check can see a ticket: the library's default server context issues them
    default = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    default.load_cert_chain(pair.cert, pair.key)
    assert asyncio.run(_session_after_a_request(default, pair.cert, version)).has_ticket


async def _start_admin(listen: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_bind(self: admin.AdminServer, host: str, port: int) -> None:
        self.host, self.port = host, port  # nothing is bound: the address is not ours

    monkeypatch.setattr(admin.AdminServer, "start", no_bind)
    base = load_config(None, env={})
    server = Server(dataclasses.replace(base, admin=dataclasses.replace(base.admin, listen=listen)))
    server.services = SimpleNamespace(calls={})  # type: ignore[assignment]
    await server._start_admin()


@pytest.mark.parametrize(
    ("listen", "warned"),
    [
        ("127.0.0.1:9180", False),
        ("[::1]:9180", False),
        ("localhost:9180", False),
        ("192.0.2.10:9180", True),
        ("0.0.0.0:9180", True),
        ("[::]:9180", True),
        ("admin.example:9180", True),
    ],
)
def test_an_admin_endpoint_off_loopback_is_warned_about(
    listen: str, warned: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with caplog.at_level(logging.WARNING, logger="spg.server"):
        asyncio.run(_start_admin(listen, monkeypatch))
    warnings = [r.getMessage() for r in caplog.records if "no authentication" in r.getMessage()]
    assert bool(warnings) == warned, warnings
    if warned:
        assert listen in warnings[0]


def test_the_open_file_limit_is_raised_for_the_connections() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        now = raise_open_file_limit(1024)
        assert now == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert now >= min(hard, 1024 + 256)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
