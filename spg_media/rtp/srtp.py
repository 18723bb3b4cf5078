"""SDES-SRTP for one call: `a=crypto` keying (RFC 4568) and SRTP/SRTCP (RFC 3711, RFC 7714).

This module owns everything that touches an SRTP key:

- `CryptoAttribute`: one `a=crypto` line, parsed and checked (`parse`), or made with a fresh
  random key (`generate`), written back only by `sdp_value()`;
- choosing our answer to an offer: `select_offered` (the first offered line we can do),
  `answer_for` (our own fresh key with the same tag and suite), `choose_answer` (both);
  and the offerer's side: `offer_attributes`, `accept_answer`;
- `SrtpContext`: both directions of a call over pylibsrtp `Session`s — `protect_rtp`,
  `protect_rtcp` for what we send, `unprotect_rtp`, `unprotect_rtcp` for what we receive,
  `drops` counting what was refused and why, `rekey` for a re-INVITE.

It is sans-IO: bytes in, bytes (or None) out, and counters; no sockets, clock or logging.

Keys are secrets like card data: the peer's key decrypts the digits the caller keys. No repr,
str, exception text or comparison output holds one; `CryptoAttribute` is deliberately not a
dataclass, so `dataclasses.asdict` of a structure holding it cannot spill the key either.

Decisions:
- Suites: AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM and
  AEAD_AES_256_GCM (RFC 7714), each only if the libsrtp inside pylibsrtp can build it
  (checked once at import: a libsrtp built without a GCM backend drops the AEAD suites).
- One master key per line. A second `inline:` key (`;`) is refused: it only makes sense with
  MKI-based key switching, which we do not do.
- MKI (`|1:4`) on a key is supported although pylibsrtp cannot pass it to libsrtp: the MKI is
  not covered by the authentication (RFC 3711 §3.1), so it is checked and cut out here before
  libsrtp sees the packet (and put in after protection, for a local key that has one). It sits
  right before the authentication tag for AES-CM, and at the very end for AEAD suites, where the
  tag is part of the ciphertext (RFC 7714, and libsrtp's layout). Our own answer has no MKI.
- Lifetime (`|2^31` or decimal) is enforced on the peer's key by counting what it protected:
  past it, packets are dropped as `expired` (the peer had to re-key by then). Our key has none
  (libsrtp's own limits apply).
- Session parameters: UNENCRYPTED_SRTP, UNENCRYPTED_SRTCP and UNAUTHENTICATED_SRTP are refused
  (a payment call is encrypted and authenticated, and pylibsrtp cannot switch either off); KDR
  is refused (libsrtp derives session keys once); FEC_KEY is refused; FEC_ORDER is accepted and
  moot (we negotiate no FEC); WSH sets the replay window for the peer's packets; an unknown
  parameter starting with "-" is ignored, any other is refused (RFC 4568 §6.3.7).
- A refused line raises `CryptoAttributeError` whose `reason` is short, printable text without
  key material, fit for a `Warning` header on the 488.
- Inbound failures never raise: `unprotect_*` returns None and counts the reason in
  `SrtpDrops` (`auth`, `replay`, `malformed`, `expired`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import pylibsrtp

# ---- suites -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SrtpSuite:
    """An SDES crypto suite and how libsrtp and the wire see it."""

    name: str
    profile: int  # pylibsrtp.Policy.SRTP_PROFILE_*
    key_length: int  # master key, bytes
    salt_length: int  # master salt, bytes
    rtp_tag_length: int  # authentication tag on SRTP (the GCM tag for AEAD)
    rtcp_tag_length: int  # on SRTCP: 80 bits for both AES-CM suites (RFC 4568 §6.2)
    aead: bool

    @property
    def master_length(self) -> int:
        """Bytes of key || salt in the `inline:` parameter."""
        return self.key_length + self.salt_length


def _profile(name: str) -> int | None:
    value = getattr(pylibsrtp.Policy, name, None)
    return value if isinstance(value, int) else None


def _candidate_suites() -> list[SrtpSuite]:
    table = (
        ("AES_CM_128_HMAC_SHA1_80", "SRTP_PROFILE_AES128_CM_SHA1_80", 16, 14, 10, 10, False),
        ("AES_CM_128_HMAC_SHA1_32", "SRTP_PROFILE_AES128_CM_SHA1_32", 16, 14, 4, 10, False),
        ("AEAD_AES_128_GCM", "SRTP_PROFILE_AEAD_AES_128_GCM", 16, 12, 16, 16, True),
        ("AEAD_AES_256_GCM", "SRTP_PROFILE_AEAD_AES_256_GCM", 32, 12, 16, 16, True),
    )
    suites = []
    for name, attribute, key, salt, rtp_tag, rtcp_tag, aead in table:
        profile = _profile(attribute)
        if profile is not None:
            suites.append(SrtpSuite(name, profile, key, salt, rtp_tag, rtcp_tag, aead))
    return suites


def _libsrtp_can(suite: SrtpSuite) -> bool:
    """Whether this libsrtp build can run the suite (GCM needs a crypto backend)."""
    try:
        session = pylibsrtp.Session(
            pylibsrtp.Policy(
                key=bytes(suite.master_length),
                ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                srtp_profile=suite.profile,
            )
        )
        session.protect(bytes((0x80, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1)))
    except (pylibsrtp.Error, ValueError, TypeError):
        return False
    return True


SUITES: dict[str, SrtpSuite] = {s.name: s for s in _candidate_suites() if _libsrtp_can(s)}
"""The suites we can do, in our order of preference (used when we make an offer)."""
SUPPORTED_SUITES: tuple[str, ...] = tuple(SUITES)

DROP_REASONS = ("auth", "replay", "malformed", "expired")
_MAX_MKI_LENGTH = 128  # RFC 4568 §9.2: mki-length 1..128
_MAX_TAG = 999_999_999  # tag = 1*9DIGIT
_MAX_LIFETIME_EXPONENT = 64
_MIN_WINDOW, _MAX_WINDOW = 64, 0x7FFF  # what libsrtp accepts as a replay window size
_RTP_VERSION_BITS = 0x80


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

        `suites` limits the suites accepted (default: all of `SUPPORTED_SUITES`). Raises
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
        suite = SUITES.get(suite_name.upper())
        allowed = SUPPORTED_SUITES if suites is None else {s.upper() for s in suites}
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
        chosen = suite if isinstance(suite, SrtpSuite) else SUITES.get(suite.upper())
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


def offer_attributes(suites: Sequence[str] = SUPPORTED_SUITES) -> list[CryptoAttribute]:
    """Lines for an offer we make (the test caller's): one fresh key per suite, tags 1, 2, ..."""
    return [CryptoAttribute.generate(name, tag) for tag, name in enumerate(suites, start=1)]


def accept_answer(offered: Sequence[CryptoAttribute], answer_lines: Iterable[str]) -> SrtpContext:
    """The offerer's context once the answer is in: the answered tag picks our offered key."""
    by_tag = {attribute.tag: attribute for attribute in offered}
    answer = select_offered(answer_lines)
    local = by_tag.get(answer.tag)
    if local is None or local.suite != answer.suite:
        raise CryptoAttributeError("the answer's a=crypto does not match a tag we offered")
    return SrtpContext(local, answer)


# ---- the per-call context -----------------------------------------------------------------------


@dataclass(slots=True)
class SrtpDrops:
    """Packets refused, by reason: failed authentication (forged, corrupted, wrong key or MKI),
    replayed or too old for the replay window, malformed (too short, not RTP/RTCP, too long),
    or past the key's lifetime."""

    auth: int = 0
    replay: int = 0
    malformed: int = 0
    expired: int = 0

    @property
    def total(self) -> int:
        return self.auth + self.replay + self.malformed + self.expired

    def as_dict(self) -> dict[str, int]:
        return {reason: getattr(self, reason) for reason in DROP_REASONS}

    def count(self, reason: str) -> None:
        setattr(self, reason, getattr(self, reason) + 1)


_REASON_BY_ERROR = {  # pylibsrtp.Error texts (libsrtp's srtp_err_status_t names)
    "authentication failure": "auth",
    "replay check failed (bad index)": "replay",
    "replay check failed (index too old)": "replay",
    "packet index is too old to consider": "replay",
    "can't use key any more": "expired",
    "error MKI present in packet is invalid": "auth",
}


def _reason(exc: Exception) -> str:
    """Our drop reason for what pylibsrtp raised (ValueError/TypeError: too long, not bytes)."""
    if isinstance(exc, pylibsrtp.Error):
        return _REASON_BY_ERROR.get(str(exc), "malformed")
    return "malformed"


def _rtp_header_length(packet: bytes) -> int:
    """Bytes of RTP header (fixed part, CSRCs, extension); 0 when the packet cannot hold it."""
    size = len(packet)
    if size < 12 or packet[0] & 0xC0 != _RTP_VERSION_BITS:
        return 0
    header = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        if size < header + 4:
            return 0
        header += 4 + 4 * int.from_bytes(packet[header + 2 : header + 4], "big")
    return header if header <= size else 0


def _mki_bytes(attribute: CryptoAttribute) -> bytes:
    if attribute.mki is None:
        return b""
    return attribute.mki.to_bytes(attribute.mki_length, "big")


class _Sender:
    """Our direction: protects with our key."""

    __slots__ = ("attribute", "mki", "session")

    def __init__(self, attribute: CryptoAttribute, session: pylibsrtp.Session | None = None):
        self.attribute = attribute
        self.mki = _mki_bytes(attribute)
        self.session = session or pylibsrtp.Session(
            pylibsrtp.Policy(
                key=attribute.key,
                ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                srtp_profile=attribute.suite.profile,
            )
        )

    def _with_mki(self, packet: bytes, tag: int) -> bytes:
        if self.attribute.suite.aead:
            return packet + self.mki
        return packet[:-tag] + self.mki + packet[-tag:]

    def rtp(self, packet: bytes) -> bytes | str:
        plain_header = len(packet) >= 12 and packet[0] == _RTP_VERSION_BITS  # the usual packet
        if not plain_header and _rtp_header_length(packet) == 0:
            return "malformed"
        try:
            out = self.session.protect(packet)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            return _reason(exc)
        return self._with_mki(out, self.attribute.suite.rtp_tag_length) if self.mki else out

    def rtcp(self, packet: bytes) -> bytes | str:
        if len(packet) < 8 or packet[0] & 0xC0 != _RTP_VERSION_BITS:
            return "malformed"
        try:
            out = self.session.protect_rtcp(packet)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            return _reason(exc)
        return self._with_mki(out, self.attribute.suite.rtcp_tag_length) if self.mki else out


class _Receiver:
    """The peer's direction: checks and unprotects with the peer's key."""

    __slots__ = (
        "attribute",
        "lifetime",
        "mki",
        "rtcp_trailer",
        "rtcp_used",
        "rtp_trailer",
        "rtp_used",
        "session",
    )

    def __init__(self, attribute: CryptoAttribute, session: pylibsrtp.Session | None = None):
        suite = attribute.suite
        self.attribute = attribute
        self.mki = _mki_bytes(attribute)
        # RFC 3711 §9.2: at most 2^48 SRTP and 2^31 SRTCP packets per master key anyway
        self.lifetime = attribute.lifetime if attribute.lifetime is not None else 1 << 48
        self.rtp_trailer = suite.rtp_tag_length + len(self.mki)
        self.rtcp_trailer = 4 + suite.rtcp_tag_length + len(self.mki)  # E flag + SRTCP index
        self.rtp_used = 0
        self.rtcp_used = 0
        if session is None:
            policy = pylibsrtp.Policy(
                key=attribute.key,
                ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                srtp_profile=suite.profile,
            )
            if attribute.window_size_hint is not None:
                policy.window_size = min(attribute.window_size_hint, _MAX_WINDOW)
            session = pylibsrtp.Session(policy)
        self.session = session

    def _without_mki(self, packet: bytes, tag: int) -> bytes | None:
        """The packet with its MKI cut out, or None when the MKI is not our peer key's."""
        size = len(self.mki)
        end = len(packet) if self.attribute.suite.aead else len(packet) - tag
        if packet[end - size : end] != self.mki:
            return None
        return packet[: end - size] + packet[end:]

    def rtp(self, packet: bytes) -> bytes | str:
        # fast path first: almost every packet is V=2 without padding, CSRCs or extension
        if not (len(packet) >= 12 + self.rtp_trailer and packet[0] == _RTP_VERSION_BITS):
            header = _rtp_header_length(packet)
            if header == 0 or len(packet) < header + self.rtp_trailer:
                return "malformed"
        if self.mki:
            stripped = self._without_mki(packet, self.attribute.suite.rtp_tag_length)
            if stripped is None:
                return "auth"
            packet = stripped
        if self.rtp_used >= self.lifetime:
            return "expired"
        try:
            out = self.session.unprotect(packet)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            return _reason(exc)
        self.rtp_used += 1
        return out

    def rtcp(self, packet: bytes) -> bytes | str:
        if len(packet) < 8 + self.rtcp_trailer or packet[0] & 0xC0 != _RTP_VERSION_BITS:
            return "malformed"
        if self.mki:
            stripped = self._without_mki(packet, self.attribute.suite.rtcp_tag_length)
            if stripped is None:
                return "auth"
            packet = stripped
        if self.rtcp_used >= self.lifetime:
            return "expired"
        try:
            out = self.session.unprotect_rtcp(packet)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            return _reason(exc)
        self.rtcp_used += 1
        return out


class SrtpContext:
    """SRTP for one call: `local` is our answer's line (our key, what we send), `remote` the
    peer's chosen line (its key, what we receive). Both must have the same tag and suite.

    `protect_*` return the packet to send, `unprotect_*` the plain packet; each returns None
    for a packet it refuses, counted by reason in `drops` (inbound) or `send_failures`
    (outbound: only a bug or an exhausted key gets there). `last_drop` is the reason of the
    latest refusal. Nothing here raises on packet contents.
    """

    __slots__ = (
        "_previous",
        "_receiver",
        "_sender",
        "drops",
        "last_drop",
        "send_failures",
    )

    def __init__(
        self,
        local: CryptoAttribute,
        remote: CryptoAttribute,
        *,
        drops: SrtpDrops | None = None,
        send_failures: SrtpDrops | None = None,
    ) -> None:
        if local.suite != remote.suite or local.tag != remote.tag:
            raise ValueError("local and remote a=crypto must share tag and suite")
        self._sender = _Sender(local)
        self._receiver = _Receiver(remote)
        self._previous: _Receiver | None = None
        self.drops = drops if drops is not None else SrtpDrops()
        self.send_failures = send_failures if send_failures is not None else SrtpDrops()
        self.last_drop: str | None = None

    @property
    def local(self) -> CryptoAttribute:
        return self._sender.attribute

    @property
    def remote(self) -> CryptoAttribute:
        return self._receiver.attribute

    @property
    def suite(self) -> SrtpSuite:
        return self._sender.attribute.suite

    # -- sending --

    def protect_rtp(self, packet: bytes) -> bytes | None:
        """The SRTP packet for a plain RTP packet we send (None if refused, counted)."""
        out = self._sender.rtp(packet)
        if isinstance(out, str):
            self.send_failures.count(out)
            return None
        return out

    def protect_rtcp(self, packet: bytes) -> bytes | None:
        """The SRTCP packet for a plain RTCP compound packet we send."""
        out = self._sender.rtcp(packet)
        if isinstance(out, str):
            self.send_failures.count(out)
            return None
        return out

    # -- receiving --

    def unprotect_rtp(self, packet: bytes) -> bytes | None:
        """The plain RTP packet, or None (counted in `drops`) for anything not genuine and new."""
        out = self._receiver.rtp(packet)
        if isinstance(out, bytes):
            self._previous = None  # the peer uses its new key now: the old one is done
            return out
        if out == "auth" and self._previous is not None:
            late = self._previous.rtp(packet)  # in flight under the key before a re-key
            if isinstance(late, bytes):
                return late
        self._drop(out)
        return None

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        """The plain RTCP packet, or None (counted in `drops`)."""
        out = self._receiver.rtcp(packet)
        if isinstance(out, bytes):
            return out
        if out == "auth" and self._previous is not None:
            late = self._previous.rtcp(packet)
            if isinstance(late, bytes):
                return late
        self._drop(out)
        return None

    def _drop(self, reason: str) -> None:
        self.drops.count(reason)
        self.last_drop = reason

    # -- re-INVITE --

    def rekey(self, local: CryptoAttribute, remote: CryptoAttribute) -> SrtpContext:
        """The context after a re-INVITE whose answer uses `local` and `remote`.

        Unchanged lines give back this very context. A direction whose key is unchanged keeps
        its libsrtp session (never restart a key's packet index: that would reuse keystream or
        reopen the replay window); a new peer key gets a new session, and the old one is kept
        for packets already in flight until the first packet under the new key authenticates.
        Drop counters carry over.
        """
        if local == self.local and remote == self.remote:
            return self
        if local.suite != remote.suite or local.tag != remote.tag:
            raise ValueError("local and remote a=crypto must share tag and suite")
        new = SrtpContext.__new__(SrtpContext)
        old_sender, old_receiver = self._sender, self._receiver
        # keyed on the key alone: a new tag, MKI or lifetime on the same key is the same context
        same_local = local.same_key(old_sender.attribute)
        new._sender = _Sender(local, old_sender.session if same_local else None)
        if remote.same_key(old_receiver.attribute):
            receiver = _Receiver(remote, old_receiver.session)
            receiver.rtp_used, receiver.rtcp_used = old_receiver.rtp_used, old_receiver.rtcp_used
            new._receiver, new._previous = receiver, self._previous
        else:
            new._receiver, new._previous = _Receiver(remote), old_receiver
        new.drops, new.send_failures, new.last_drop = self.drops, self.send_failures, None
        return new

    def __repr__(self) -> str:
        return f"SrtpContext(suite={self.suite.name!r}, tag={self.local.tag}, drops={self.drops})"

    __str__ = __repr__
