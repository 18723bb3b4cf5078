"""The self-signed test certificate: files, permissions, names a TLS client accepts."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest

from spg_media import tlscert
from spg_media.tlscert import (
    CertPair,
    OpensslMissing,
    TlsCertError,
    make_self_signed,
    subject_alt_names,
)

needs_openssl = pytest.mark.skipif(tlscert.openssl_binary() is None, reason="no openssl")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    if tlscert.openssl_binary() is None:
        pytest.skip("no openssl")
    return make_self_signed(tmp_path_factory.mktemp("cert"))


def _handshake(pair: CertPair, server_hostname: str) -> str:
    """A loopback TLS handshake: server with the pair, client trusting only the cert file."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.load_cert_chain(pair.cert, pair.key)  # also proves the key matches the cert
    client_ctx = ssl.create_default_context(cafile=str(pair.cert))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError) as exc:
                errors.append(exc)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            port = listener.getsockname()[1]
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                data = tls.recv(2)
                version = tls.version() or ""
        finally:
            thread.join(5)
        assert data == b"ok"
        return version


def test_files_are_written_and_the_key_is_private(pair: CertPair) -> None:
    assert pair.cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY-----" in pair.key.read_text()
    assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600
    assert not [p for p in pair.key.parent.iterdir() if p.name.startswith(".")], "temp file left"


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_a_verifying_client_accepts_it_for_loopback_names(pair: CertPair, name: str) -> None:
    version = _handshake(pair, name)
    assert version in ("TLSv1.2", "TLSv1.3")


def test_a_verifying_client_refuses_it_for_another_name(pair: CertPair) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(pair, "example.org")


@needs_openssl
def test_rsa_and_extra_names(tmp_path: Path) -> None:
    pair = make_self_signed(
        tmp_path, name="node", key_type="rsa", extra_names=("spg.test", "127.0.0.2")
    )
    assert pair.cert.name == "node.crt" and pair.key.name == "node.key"
    assert "PRIVATE KEY-----" in pair.key.read_text()
    _handshake(pair, "spg.test")


def test_subject_alt_names_defaults_first_without_duplicates() -> None:
    assert subject_alt_names() == ["IP:127.0.0.1", "DNS:localhost"]
    assert subject_alt_names(("localhost", "::1", "DNS:a.test", "10.0.0.1")) == [
        "IP:127.0.0.1",
        "DNS:localhost",
        "IP:::1",
        "DNS:a.test",
        "IP:10.0.0.1",
    ]


@pytest.mark.parametrize(
    "kwargs",
    [{"days": 0}, {"key_type": "dsa"}, {"common_name": ""}, {"common_name": "a/b=c"}],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_self_signed(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_no_openssl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tlscert, "openssl_binary", lambda: None)
    with pytest.raises(OpensslMissing):
        make_self_signed(tmp_path)


def test_openssl_failure_is_one_error_and_leaves_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    false = "/bin/false" if Path("/bin/false").exists() else "/usr/bin/false"
    monkeypatch.setattr(tlscert, "openssl_binary", lambda: false)
    with pytest.raises(TlsCertError, match="openssl req failed"):
        make_self_signed(tmp_path)
    assert not list(tmp_path.glob("*.key")) and not list(tmp_path.glob(".*"))
