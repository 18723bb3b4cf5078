"""SDES-SRTP for one call: `a=crypto` keying (RFC 4568) and SRTP/SRTCP (RFC 3711, RFC 7714).

This module owns running SRTP with SDES keys; reading and making the `a=crypto` lines is
`spg_media.rtp.sdes` (re-exported here), which does not load pylibsrtp:

- `SUITES` / `SUPPORTED_SUITES`: which of sdes's known suites this libsrtp can run (probed
  once at import: a libsrtp built without a GCM backend drops the AEAD suites);
- `accept_answer`: the offerer's context once the answer is in;
- `SrtpContext`: both directions of a call over pylibsrtp `Session`s — `protect_rtp`,
  `protect_rtcp` for what we send, `unprotect_rtp`, `unprotect_rtcp` for what we receive,
  `drops` counting what was refused and why, `rekey` for a re-INVITE.

It is sans-IO: bytes in, bytes (or None) out, and counters; no sockets, clock or logging.

Keys are secrets like card data: the peer's key decrypts the digits the caller keys. No repr,
str, exception text or comparison output holds one; `CryptoAttribute` is deliberately not a
dataclass, so `dataclasses.asdict` of a structure holding it cannot spill the key either.

Decisions:
- Suites: AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM and
  AEAD_AES_256_GCM (RFC 7714), each only if the libsrtp inside pylibsrtp can build it.
- MKI (`|1:4`) on a key is supported although pylibsrtp cannot pass it to libsrtp: the MKI is
  not covered by the authentication (RFC 3711 §3.1), so it is checked and cut out here before
  libsrtp sees the packet (and put in after protection, for a local key that has one). It sits
  right before the authentication tag for AES-CM, and at the very end for AEAD suites, where the
  tag is part of the ciphertext (RFC 7714, and libsrtp's layout). Our own answer has no MKI.
- Lifetime (`|2^31` or decimal) is enforced on the peer's key by counting what it protected:
  past it, packets are dropped as `expired` (the peer had to re-key by then). Our key has none
  (libsrtp's own limits apply).
- Reading the line (session parameters, refusals as `CryptoAttributeError`): see `sdes`.
- Inbound failures never raise: `unprotect_*` returns None and counts the reason in
  `SrtpDrops` (`auth`, `replay`, `malformed`, `expired`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pylibsrtp

from spg_media.rtp.sdes import (
    KNOWN_SUITES,
    CryptoAttribute,
    CryptoAttributeError,
    SrtpError,
    SrtpSuite,
    answer_for,
    choose_answer,
    offer_attributes,
    select_offered,
)

__all__ = [
    "DROP_REASONS",
    "SUITES",
    "SUPPORTED_SUITES",
    "CryptoAttribute",
    "CryptoAttributeError",
    "SrtpContext",
    "SrtpDrops",
    "SrtpError",
    "SrtpSuite",
    "accept_answer",
    "answer_for",
    "choose_answer",
    "offer_attributes",
    "select_offered",
]


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


SUITES: dict[str, SrtpSuite] = {n: s for n, s in KNOWN_SUITES.items() if _libsrtp_can(s)}
"""The suites we can do, in our order of preference (used when we make an offer)."""
SUPPORTED_SUITES: tuple[str, ...] = tuple(SUITES)

DROP_REASONS = ("auth", "replay", "malformed", "expired")
_MAX_WINDOW = 0x7FFF  # the largest replay window libsrtp accepts
_RTP_VERSION_BITS = 0x80


# ---- the offerer's side -------------------------------------------------------------------------


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
