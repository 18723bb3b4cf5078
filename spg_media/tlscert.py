"""A self-signed TLS certificate for SIP over TLS on loopback: tests and `spg-media demo --srtp`.

This module owns one thing: making a certificate + private key pair (PEM files) that a
`tls:127.0.0.1:PORT` listener can load (`sip.tls_cert`, `sip.tls_key`) and that a test peer can
pin (`sip_cafile` in baresip, or `ssl.SSLContext.load_verify_locations`). The certificate is
its own CA (`basicConstraints CA:TRUE`), so trusting the file itself is enough.

- Subject `CN=<common_name>` (default `127.0.0.1`); subjectAltName `IP:127.0.0.1`,
  `DNS:localhost`, plus whatever `extra_names` adds (`IP:`/`DNS:` prefixed, or guessed).
- Key: EC P-256 (fast to make: a few milliseconds, against ~100 ms for RSA-2048, and every
  TLS 1.2+ peer we test with accepts ECDSA). `key_type="rsa"` gives RSA-2048 for peers that
  do not.
- Validity: `days` (default 30) from now.
- The key file is written with mode 0600.

How: by running `openssl req -x509` (OpenSSL ≥ 1.1.1 for `-addext`; Debian 12 ships 3.0).
The `cryptography` package is not installed in the project's venv (nothing we depend on pulls
it in: `pylibsrtp` binds libsrtp through cffi alone), and adding a compiled dependency to make
one test certificate is not worth it; the `openssl` command is on every machine that has
OpenSSL, which the TLS listener needs anyway. `OpensslMissing` is raised when it is not found,
so callers (tests) can skip.

Never use these certificates for anything but loopback tests and demos.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertPair", "OpensslMissing", "TlsCertError", "make_self_signed", "openssl_binary"]

DEFAULT_NAMES = ("IP:127.0.0.1", "DNS:localhost")


class TlsCertError(RuntimeError):
    """openssl failed to make the certificate (its message, one line)."""


class OpensslMissing(TlsCertError):
    """No `openssl` command on this machine."""


@dataclass(frozen=True)
class CertPair:
    """Where the PEM files are; `cert` doubles as the CA file a peer trusts."""

    cert: Path
    key: Path


def openssl_binary() -> str | None:
    """The `openssl` command to run, or None."""
    return shutil.which("openssl") or (
        "/usr/bin/openssl" if Path("/usr/bin/openssl").exists() else None
    )


def _san_entry(name: str) -> str:
    """`IP:x` / `DNS:x` as given; a bare name becomes IP: if it parses as an address."""
    if name.startswith(("IP:", "DNS:")):
        return name
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return f"DNS:{name}"
    return f"IP:{name.strip('[]')}"


def subject_alt_names(extra_names: tuple[str, ...] = ()) -> list[str]:
    """The subjectAltName entries, defaults first, without duplicates."""
    out: list[str] = []
    for name in (*DEFAULT_NAMES, *extra_names):
        entry = _san_entry(name)
        if entry not in out:
            out.append(entry)
    return out


def make_self_signed(
    directory: Path | str,
    *,
    name: str = "spg-test",
    common_name: str = "127.0.0.1",
    extra_names: tuple[str, ...] = (),
    days: int = 30,
    key_type: str = "ec",
    timeout_s: float = 30.0,
) -> CertPair:
    """Write `<name>.crt` and `<name>.key` into `directory` (created if needed) and return them.

    Overwrites files of the same name. Raises `OpensslMissing` without openssl, `ValueError`
    on bad arguments, `TlsCertError` when openssl fails.
    """
    if days < 1:
        raise ValueError("days must be >= 1")
    if key_type not in ("ec", "rsa"):
        raise ValueError("key_type must be 'ec' or 'rsa'")
    if not common_name or any(c in common_name for c in "/=\n\r"):
        raise ValueError(f"bad common name {common_name!r}")
    openssl = openssl_binary()
    if openssl is None:
        raise OpensslMissing("openssl is not installed")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert = directory / f"{name}.crt"
    key = directory / f"{name}.key"
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    if key_type == "rsa":
        newkey = ["-newkey", "rsa:2048"]
    # The key goes to a temporary file in the same directory, made 0600 before openssl writes
    # into it, then renamed: the key is never readable by others, even for a moment.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-", suffix=".key", dir=directory)
    os.close(fd)
    tmp_key = Path(tmp_name)
    args = [
        openssl, "req", "-x509", *newkey, "-nodes",
        "-keyout", str(tmp_key), "-out", str(cert),
        "-days", str(days),
        "-subj", f"/CN={common_name}/O=spg-media test",
        "-addext", "subjectAltName=" + ",".join(subject_alt_names(extra_names)),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
        "-addext", "extendedKeyUsage=serverAuth,clientAuth",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            raise TlsCertError(f"openssl req failed ({done.returncode}): {' '.join(lines[-2:])}")
        tmp_key.chmod(0o600)
        tmp_key.replace(key)
    finally:
        tmp_key.unlink(missing_ok=True)
    return CertPair(cert=cert, key=key)
