"""DTMF carried in SIP INFO bodies.

This module owns reading a key press out of an INFO request's body, for the two formats
phones and gateways send:

* ``application/dtmf-relay`` (Cisco style)::

      Signal=5
      Duration=160

  keys case-insensitive, spaces around values tolerated (``Signal= *``), ``10``/``11`` meaning
  ``*``/``#`` as in the RFC 4733 event codes (and ``12``–``15`` meaning ``A``–``D``);
* ``application/dtmf``: the body is the key alone (``5``), or its event code.

Anything else — another content type, no signal, an unknown key, a body that is not text — is
None: the INFO is still answered 200 by the dialog, it just carries no digit. Nothing here
raises on network input.
"""

from __future__ import annotations

from typing import Final

_KEYS: Final = "0123456789*#ABCD"
_MAX_BODY: Final = 1024  # a DTMF body is a few bytes; refuse to scan anything large


def _key(value: str) -> str | None:
    value = value.strip().upper()
    if len(value) == 1 and value in _KEYS:
        return value
    if value.isdigit() and value.isascii() and len(value) <= 2:
        code = int(value)
        return _KEYS[code] if code < len(_KEYS) else None
    return None


def _duration(value: str) -> int | None:
    value = value.strip()
    if not (value.isdigit() and value.isascii()) or len(value) > 9:
        return None
    return int(value)


def parse_info_dtmf(content_type: str, body: bytes) -> tuple[str, int | None] | None:
    """(key, duration in ms or None) from an INFO body, or None when it carries no key press."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in ("application/dtmf-relay", "application/dtmf"):
        return None
    if len(body) > _MAX_BODY:
        return None
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if media_type == "application/dtmf":
        key = _key(text)
        return None if key is None else (key, None)
    key = None
    duration = None
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            continue
        name = name.strip().lower()
        if name == "signal" and key is None:
            key = _key(value)
            if key is None:
                return None
        elif name == "duration" and duration is None:
            duration = _duration(value)
    return None if key is None else (key, duration)
