"""SDES keying (RFC 4568): the `a=crypto` attribute, read, checked and made, without SRTP itself.

This module owns the text side of SDES-SRTP: `SrtpSuite` and the suites we know
(`KNOWN_SUITES`), `CryptoAttribute` (one `a=crypto` line, parsed and checked by `parse`, or
made with a fresh random key by `generate`, written back only by `sdp_value()`), and choosing
keys: `select_offered` (the first offered line we can do), `answer_for` (our own fresh key with
the same tag and suite), `choose_answer` (both), `offer_attributes` for an offer we make.
Running SRTP with those keys is `spg_media.rtp.srtp`'s (over pylibsrtp); this module does not
import it, so SDP (`spg_media.sip.sdp`) is read without loading a crypto binding. Only
`supported_suites()`, which asks what the binding can run, loads it.

Keys are secrets like card data: the peer's key decrypts the digits the caller keys. No repr,
str, exception text or comparison output holds one; `CryptoAttribute` is deliberately not a
dataclass, so `dataclasses.asdict` of a structure holding it cannot spill the key either.

Decisions (the SRTP-side ones are in `spg_media.rtp.srtp`):
- One master key per line. A second `inline:` key (`;`) is refused: it only makes sense with
  MKI-based key switching, which we do not do.
- MKI (`|1:4`) and lifetime (`|2^31` or decimal) are read and kept on the attribute; the SRTP
  context enforces them.
- Session parameters: UNENCRYPTED_SRTP, UNENCRYPTED_SRTCP and UNAUTHENTICATED_SRTP are refused
  (a payment call is encrypted and authenticated, and pylibsrtp cannot switch either off); KDR
  is refused (libsrtp derives session keys once); FEC_KEY is refused; FEC_ORDER is accepted and
  moot (we negotiate no FEC); WSH sets the replay window for the peer's packets; an unknown
  parameter starting with "-" is ignored, any other is refused (RFC 4568 §6.3.7).
- A refused line raises `CryptoAttributeError` whose `reason` is short, printable text without
  key material, fit for a `Warning` header on the 488.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

# ---- suites -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SrtpSuite:
    """An SDES crypto suite and how libsrtp and the wire see it."""

    name: str
    profile: int  # libsrtp's srtp_profile_t
    key_length: int  # master key, bytes
    salt_length: int  # master salt, bytes
    rtp_tag_length: int  # authentication tag on SRTP (the GCM tag for AEAD)
    rtcp_tag_length: int  # on SRTCP: 80 bits for both AES-CM suites (RFC 4568 §6.2)
    aead: bool

    @property
    def master_length(self) -> int:
        """Bytes of key || salt in the `inline:` parameter."""
        return self.key_length + self.salt_length


# libsrtp's srtp_profile_t numbers (its public ABI; pylibsrtp.Policy.SRTP_PROFILE_* are these)
KNOWN_SUITES: dict[str, SrtpSuite] = {
    suite.name: suite
    for suite in (
        SrtpSuite("AES_CM_128_HMAC_SHA1_80", 1, 16, 14, 10, 10, False),
        SrtpSuite("AES_CM_128_HMAC_SHA1_32", 2, 16, 14, 4, 10, False),
        SrtpSuite("AEAD_AES_128_GCM", 7, 16, 12, 16, 16, True),
        SrtpSuite("AEAD_AES_256_GCM", 8, 32, 12, 16, 16, True),
    )
}
"""Every suite this module can read, in our order of preference (used when we make an offer).
Which of them this host's libsrtp can run is `supported_suites()`."""


def supported_suites() -> tuple[str, ...]:
    """The suites the SRTP binding can run here (probed once by `spg_media.rtp.srtp`).

    The one place this module loads the binding: asked only when an SRTP line is read or made
    without an explicit list of suites.
    """
    from spg_media.rtp import srtp  # here, not at the top: plain RTP never loads pylibsrtp

    return srtp.SUPPORTED_SUITES


_MAX_MKI_LENGTH = 128  # RFC 4568 §9.2: mki-length 1..128
_MAX_TAG = 999_999_999  # tag = 1*9DIGIT
_MAX_LIFETIME_EXPONENT = 64
_MIN_WINDOW = 64  # the smallest replay window libsrtp accepts


# ---- errors -------------------------------------------------------------------------------------


class SrtpError(Exception):
    """Base of this module's errors."""


class CryptoAttributeError(SrtpError, ValueError):
    """An `a=crypto` line we cannot read or will not use; `reason` goes in the 488's Warning."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_]{1,32}")


def _safe(token: str) -> str:
    """`token` if it may be echoed in an error (a short name, never key-like), else a stand-in.

    Keys are base64 of 28+ bytes (38+ characters): a 32-character cap keeps even a key written
    where a suite or parameter name should be out of error text and Warning headers.
    """
    return token if _SAFE_TOKEN.fullmatch(token) else "(unreadable)"


# ---- a=crypto -----------------------------------------------------------------------------------


def _ascii_int(text: str, max_digits: int) -> int | None:
    if not text or len(text) > max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _decode_key(text: str, length: int) -> bytes:
    if not text.isascii() or len(text) > 4 * ((length + 2) // 3):
        raise CryptoAttributeError("bad inline key: not base64 of the suite's length")
    padded = text + "=" * (-len(text) % 4)  # some phones leave out the padding
    try:
        key = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise CryptoAttributeError("bad inline key: not base64") from None
    if len(key) != length:
        raise CryptoAttributeError(
            f"bad inline key: {len(key)} bytes where the suite needs {length}"
        )
    return key


def _parse_lifetime(text: str) -> int:
    if text.startswith("2^"):
        exponent = _ascii_int(text[2:], 3)
        if exponent is None or exponent > _MAX_LIFETIME_EXPONENT:
            raise CryptoAttributeError("bad key lifetime")
        value = 1 << exponent
    else:
        parsed = _ascii_int(text, 20)
        if parsed is None:
            raise CryptoAttributeError("bad key lifetime")
        value = parsed
    if value < 1:
        raise CryptoAttributeError("bad key lifetime: zero")
    return value


def _parse_mki(text: str) -> tuple[int, int]:
    value_text, _, length_text = text.partition(":")
    length = _ascii_int(length_text, 3)
    value = _ascii_int(value_text, 310)  # 128 bytes of MKI is at most 309 decimal digits
    if length is None or value is None or not 1 <= length <= _MAX_MKI_LENGTH:
        raise CryptoAttributeError("bad MKI: value:length with length 1..128")
    if value >= 256**length:
        raise CryptoAttributeError("bad MKI: value does not fit its length")
    return value, length


class CryptoAttribute:
    """One `a=crypto:<tag> <suite> inline:<key||salt>[|lifetime][|mki:len] [params]`, checked.

    `key` is master key || master salt. `lifetime` is in packets (None: not given), `mki` and
    `mki_length` (0: no MKI) as in the line, `window_size_hint` from WSH. `session_params` are
    the accepted parameters as written (FEC_ORDER, WSH, ignorable "-" ones), for `sdp_value`.
    """

    __slots__ = (
        "_key",
        "lifetime",
        "mki",
        "mki_length",
        "session_params",
        "suite",
        "tag",
        "window_size_hint",
    )

    def __init__(
        self,
        tag: int,
        suite: SrtpSuite,
        key: bytes,
        *,
        lifetime: int | None = None,
        mki: int | None = None,
        mki_length: int = 0,
        window_size_hint: int | None = None,
        session_params: Sequence[str] = (),
    ) -> None:
        if not 0 <= tag <= _MAX_TAG:
            raise CryptoAttributeError("bad tag: 1 to 9 digits")
        if len(key) != suite.master_length:
            raise CryptoAttributeError(
                f"bad inline key: {len(key)} bytes where the suite needs {suite.master_length}"
            )
        if (mki is None) != (mki_length == 0) or not 0 <= mki_length <= _MAX_MKI_LENGTH:
            raise CryptoAttributeError("bad MKI: value:length with length 1..128")
        if mki is not None and not 0 <= mki < 256**mki_length:
            raise CryptoAttributeError("bad MKI: value does not fit its length")
        if lifetime is not None and lifetime < 1:
            raise CryptoAttributeError("bad key lifetime: zero")
        self.tag = tag
        self.suite = suite
        self._key = bytes(key)
        self.lifetime = lifetime
        self.mki = mki
        self.mki_length = mki_length
        self.window_size_hint = window_size_hint
        self.session_params = tuple(session_params)

    # -- reading and writing --

    @classmethod
    def parse(cls, value: str, *, suites: Collection[str] | None = None) -> CryptoAttribute:
        """Read the value of an `a=crypto:` attribute (without the `a=crypto:` prefix).

        `suites` limits the suites accepted (default: `supported_suites()`). Raises
        `CryptoAttributeError` for anything unreadable, unsupported or refused.
        """
        if not isinstance(value, str):
            raise CryptoAttributeError("a=crypto is not text")
        parts = value.split()
        if len(parts) < 3:
            raise CryptoAttributeError("a=crypto needs a tag, a suite and key parameters")
        tag_text, suite_name, key_params, *params = parts
        tag = _ascii_int(tag_text, 9)
        if tag is None:
            raise CryptoAttributeError("bad tag: 1 to 9 digits")
        suite = KNOWN_SUITES.get(suite_name.upper())
        allowed = supported_suites() if suites is None else {s.upper() for s in suites}
        if suite is None or suite.name not in allowed:
            raise CryptoAttributeError(f"unsupported crypto suite {_safe(suite_name)}")
        if ";" in key_params:
            raise CryptoAttributeError("more than one master key (MKI switching) is not supported")
        method, colon, info = key_params.partition(":")
        if not colon or method.lower() != "inline":
            raise CryptoAttributeError("key method must be inline")
        key_text, *extras = info.split("|")
        if len(extras) > 2:
            raise CryptoAttributeError("bad key parameters: key|lifetime|mki at most")
        lifetime: int | None = None
        mki: tuple[int, int] | None = None
        for extra in extras:
            if ":" in extra:
                if mki is not None:
                    raise CryptoAttributeError("bad key parameters: two MKIs")
                mki = _parse_mki(extra)
            else:
                if lifetime is not None:
                    raise CryptoAttributeError("bad key parameters: two lifetimes")
                lifetime = _parse_lifetime(extra)
        key = _decode_key(key_text, suite.master_length)
        window, kept = _session_params(params)
        return cls(
            tag,
            suite,
            key,
            lifetime=lifetime,
            mki=None if mki is None else mki[0],
            mki_length=0 if mki is None else mki[1],
            window_size_hint=window,
            session_params=kept,
        )

    @classmethod
    def generate(cls, suite: str | SrtpSuite, tag: int = 1) -> CryptoAttribute:
        """Our own line with a fresh random master key and salt (never reused across calls)."""
        chosen = suite if isinstance(suite, SrtpSuite) else KNOWN_SUITES.get(suite.upper())
        if chosen is None:
            raise CryptoAttributeError(f"unsupported crypto suite {_safe(str(suite))}")
        return cls(tag, chosen, secrets.token_bytes(chosen.master_length))

    def sdp_value(self) -> str:
        """The attribute value for the SDP body, key included: the only way out for the key."""
        info = "inline:" + base64.b64encode(self._key).decode("ascii")
        if self.lifetime is not None:
            exponent = self.lifetime.bit_length() - 1
            is_power = self.lifetime == 1 << exponent
            info += f"|2^{exponent}" if is_power else f"|{self.lifetime}"
        if self.mki is not None:
            info += f"|{self.mki}:{self.mki_length}"
        return " ".join((str(self.tag), self.suite.name, info, *self.session_params))

    @property
    def key(self) -> bytes:
        """Master key || master salt."""
        return self._key

    def same_key(self, other: CryptoAttribute) -> bool:
        """Same suite and master key (the same SRTP cryptographic context, whatever the tag)."""
        return self.suite == other.suite and hmac.compare_digest(self._key, other._key)

    # -- value semantics without showing the key --

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CryptoAttribute):
            return NotImplemented
        return (
            self.same_key(other)
            and self.tag == other.tag
            and self.lifetime == other.lifetime
            and self.mki == other.mki
            and self.mki_length == other.mki_length
            and self.window_size_hint == other.window_size_hint
            and self.session_params == other.session_params
        )

    def __hash__(self) -> int:
        return hash((self.tag, self.suite.name))

    def __repr__(self) -> str:
        extras = ""
        if self.lifetime is not None:
            extras += f", lifetime={self.lifetime}"
        if self.mki is not None:
            extras += f", mki={self.mki}:{self.mki_length}"
        return f"CryptoAttribute(tag={self.tag}, suite={self.suite.name!r}, key=<hidden>{extras})"

    __str__ = __repr__  # an f-string in a log line must not print the key either

    def __copy__(self) -> CryptoAttribute:
        return self  # treated as immutable; copying must not go through pickling (below)

    def __deepcopy__(self, memo: object) -> CryptoAttribute:
        return self

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("CryptoAttribute holds a secret key and is not picklable")


_REFUSED_PARAMS = {
    "UNENCRYPTED_SRTP": "UNENCRYPTED_SRTP is refused: media must be encrypted",
    "UNENCRYPTED_SRTCP": "UNENCRYPTED_SRTCP is refused: RTCP must be encrypted",
    "UNAUTHENTICATED_SRTP": "UNAUTHENTICATED_SRTP is refused: media must be authenticated",
}


def _session_params(params: Sequence[str]) -> tuple[int | None, list[str]]:
    """(replay window hint, parameters kept) from RFC 4568 §6.3 session parameters."""
    window: int | None = None
    kept: list[str] = []
    seen: set[str] = set()
    for param in params:
        name, equals, value = param.partition("=")
        upper = name.upper()
        if upper in _REFUSED_PARAMS and not equals:
            raise CryptoAttributeError(_REFUSED_PARAMS[upper])
        if upper in seen:
            raise CryptoAttributeError(f"session parameter {_safe(name)} given twice")
        seen.add(upper)
        if upper == "KDR" and equals:
            kdr = _ascii_int(value, 2)
            if kdr is None or kdr > 24:
                raise CryptoAttributeError("bad KDR")
            raise CryptoAttributeError("KDR (key derivation rate) is not supported")
        if upper == "FEC_KEY" and equals:
            raise CryptoAttributeError("FEC_KEY is not supported")
        if upper == "FEC_ORDER" and equals:
            if value.upper() not in ("FEC_SRTP", "SRTP_FEC"):
                raise CryptoAttributeError("bad FEC_ORDER")
            kept.append(param)  # we negotiate no FEC, so the order changes nothing
        elif upper == "WSH" and equals:
            hint = _ascii_int(value, 10)
            if hint is None or hint < _MIN_WINDOW:
                raise CryptoAttributeError("bad WSH: at least 64")
            window = hint
            kept.append(param)
        elif param.startswith("-") and len(param) > 1:
            kept.append(param)  # RFC 4568 §6.3.7: a "-" parameter may be ignored
        else:
            raise CryptoAttributeError(f"unknown session parameter {_safe(name)}")
    return window, kept


# ---- choosing keys ------------------------------------------------------------------------------


def select_offered(
    lines: Iterable[str], *, suites: Collection[str] | None = None
) -> CryptoAttribute:
    """The first offered line we can use (the offerer's preference order, RFC 4568 §7.1).

    Lines we cannot use are skipped; when none is usable, `CryptoAttributeError` carries the
    reason the first one was refused.
    """
    first_reason: str | None = None
    for line in lines:
        try:
            return CryptoAttribute.parse(line, suites=suites)
        except CryptoAttributeError as exc:
            first_reason = first_reason or exc.reason
    raise CryptoAttributeError(first_reason or "no a=crypto attribute offered")


def answer_for(remote: CryptoAttribute) -> CryptoAttribute:
    """Our key for the answer: same tag and suite as the chosen offer line, a fresh random key."""
    return CryptoAttribute.generate(remote.suite, remote.tag)


def choose_answer(
    lines: Iterable[str], *, suites: Collection[str] | None = None
) -> tuple[CryptoAttribute, CryptoAttribute]:
    """(the peer's chosen line, our answer line) for the `a=crypto` values of an offer."""
    remote = select_offered(lines, suites=suites)
    return remote, answer_for(remote)


def offer_attributes(suites: Sequence[str] | None = None) -> list[CryptoAttribute]:
    """Lines for an offer we make: one fresh key per suite (default: `supported_suites()`),
    tags 1, 2, ..."""
    if suites is None:
        suites = supported_suites()
    return [CryptoAttribute.generate(name, tag) for tag, name in enumerate(suites, start=1)]
