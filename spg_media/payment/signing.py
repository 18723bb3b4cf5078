"""Request and handoff signatures: HMAC-SHA256 in the `t=<unix seconds>,v1=<hex>` form.

This module owns the two signatures of the external contract:

- body signatures: every request to the payment platform and every result
  callback carries `X-SPG-Signature: t=..,v1=HMAC-SHA256(secret, f"{t}." + body)`;
- the handoff signature: the PBX signs the transferred INVITE's
  `t\\ncall-id\\nX-SPG-Transaction\\nX-SPG-Return-To\\nX-SPG-Callback`.

Verification is pure (the caller passes `now`), compares in constant time, and answers False
for anything malformed rather than raising. An empty secret verifies nothing: a verifier
without a secret cannot tell a genuine request from a forged one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable

SIGNATURE_HEADER = "X-SPG-Signature"
DEFAULT_MAX_AGE_S = 300.0

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_MAX_HEADER_LEN = 1024  # several v1 values during a secret rotation, never kilobytes


Buffer = bytes | bytearray | memoryview


def _digest(secret: str, *parts: Buffer) -> str:
    """HMAC-SHA256 of the parts, fed one after the other: a body is never copied into a
    joined message (a card payment's body must exist in its one buffer only)."""
    mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.hexdigest()


def _body_message(t: int) -> bytes:
    """What precedes the body in the signed message: `t` and a dot."""
    return f"{t}.".encode("ascii")


def sign(secret: str, body: Buffer, t: int) -> str:
    """`t=<t>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>` for the exact body bytes."""
    return f"t={t},v1={_digest(secret, _body_message(t), body)}"


def parse_signature(header: str) -> tuple[int, list[str]] | None:
    """(t, [v1 digests]) from `t=..,v1=..[,v1=..]`, or None when the header is malformed.

    Unknown keys (a future `v2`) are ignored; exactly one `t` and at least one `v1` are needed.
    """
    if not header or len(header) > _MAX_HEADER_LEN:
        return None
    t: int | None = None
    digests: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return None
        key = key.strip()
        value = value.strip()
        if key == "t":
            if t is not None or not _TIMESTAMP.fullmatch(value):
                return None
            t = int(value)
        elif key == "v1":
            if not _HEX_DIGEST.fullmatch(value.lower()):
                return None
            digests.append(value.lower())
    if t is None or not digests:
        return None
    return t, digests


def _check(
    secret: str,
    header: str,
    message_for: Callable[[int], tuple[Buffer, ...]],
    now: float,
    max_age_s: float,
) -> bool:
    # message_for builds the signed message for the header's timestamp (t is signed too).
    if not secret:
        return False
    parsed = parse_signature(header)
    if parsed is None:
        return False
    t, digests = parsed
    # Both directions: an old signature is a replay, one from the future a skewed or forged clock.
    if abs(now - t) > max_age_s:
        return False
    expected = _digest(secret, *message_for(t))
    matched = False
    for digest in digests:  # no early exit: the time taken does not say which one matched
        matched |= hmac.compare_digest(expected, digest)
    return matched


def verify(
    secret: str,
    header: str,
    body: bytes,
    now: float,
    max_age_s: float = DEFAULT_MAX_AGE_S,
) -> bool:
    """True when `header` signs exactly `body` with `secret` and is at most `max_age_s` old."""
    return _check(secret, header, lambda t: (_body_message(t), body), now, max_age_s)


def handoff_canonical(
    t: int,
    call_id: str,
    transaction: str | None,
    return_to: str | None,
    callback: str | None,
) -> bytes:
    """`t\\ncall-id\\nX-SPG-Transaction\\nX-SPG-Return-To\\nX-SPG-Callback`, absent values empty."""
    fields = [str(t), call_id, transaction or "", return_to or "", callback or ""]
    return "\n".join(fields).encode("utf-8")


def sign_handoff(
    secret: str,
    t: int,
    call_id: str,
    transaction: str | None,
    return_to: str | None,
    callback: str | None,
) -> str:
    """The `X-SPG-Signature` a PBX puts on the transferred INVITE (for tests and test callers)."""
    canonical = handoff_canonical(t, call_id, transaction, return_to, callback)
    return f"t={t},v1={_digest(secret, canonical)}"


def verify_handoff(
    secret: str,
    header: str,
    call_id: str,
    transaction: str | None,
    return_to: str | None,
    callback: str | None,
    now: float,
    max_age_s: float = DEFAULT_MAX_AGE_S,
) -> bool:
    """True when `header` signs the handoff's canonical string and is recent enough."""
    return _check(
        secret,
        header,
        lambda t: (handoff_canonical(t, call_id, transaction, return_to, callback),),
        now,
        max_age_s,
    )
