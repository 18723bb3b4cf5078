"""SDP (RFC 4566) parsing and the audio offer/answer of RFC 3264, for G.711 with RFC 4733 events.

This module owns what spg-media says about media in SIP bodies: `SessionDescription.parse` reads
an offer or answer, `negotiate` decides what we will do with an offer (or reads the answer to our
own offer), `build_answer` and `build_offer` write SDP. `a=crypto` lines (RFC 4568) are carried
raw as `Crypto` values; checking them and making keys is `spg_media.rtp.sdes`'s business, which
`negotiate` asks for the line to use and for our answer's key. Running SRTP is not this
module's: it never loads the crypto binding (only an SRTP offer negotiated without an explicit
list of suites asks `sdes.supported_suites()`, which does).

Decisions:
- Codec: the first of the offerer's formats that is PCMU or PCMA, by rtpmap or by static payload
  type 0/8 without rtpmap. DTMF: the first `telephone-event/8000` format, whatever its number.
- ptime: the offer's `a=ptime` (20 when absent). 10–60 ms is used as offered; a value outside is
  not a reason to refuse the call (ptime is only a wish, RFC 4566 §6): it is clamped into 10–60,
  then lowered to `a=maxptime` if the offer has one below it.
- Hold: `a=sendonly`/`a=inactive`, or the RFC 2543 `c=0.0.0.0`, are reflected in `direction`,
  which is always the *offerer's* direction; `build_answer` writes the mirror one (RFC 3264 §6.1).
- Streams: the first acceptable audio stream is used; every other m-line is answered with port 0
  (rejected) in its place, so the answer has as many m-lines as the offer (RFC 3264 §6).
- SRTP policy "off": a stream that is only RTP/SAVP(F) is refused; "required": only RTP/SAVP(F)
  is accepted; "optional": either, SAVP preferred when both are offered. RTP/SAVP(F) needs an
  `a=crypto` line that `sdes.select_offered` accepts (the first such, in offer order); our
  answer line is a fresh key with its tag and suite (`NegotiatedAudio.local_crypto`).
- RTCP: sent to the offer's `a=rtcp` port and address (RFC 3605), else to the RTP port + 1 at the
  RTP address; `a=rtcp-mux` offered is accepted (RFC 5761 §5.1.1): RTCP then shares the RTP port
  both ways, and the answer says `a=rtcp-mux`.
- Addresses: the chosen stream's `c=` must be an IP literal (IPv4, or IPv6 under `IN IP6`),
  given back in canonical form; a host name is refused (488), never resolved: resolving it
  would block the media tick, and media is taken only from that address. An `a=rtcp` line
  whose address is not an IP literal is passed over, like any `a=rtcp` line we cannot read.
- Re-INVITE (`previous=`): a call that is SRTP stays SRTP (a plain re-offer is refused, whatever
  the policy), and when the peer keeps its key our answer keeps ours, so neither direction's
  SRTP context restarts (RFC 4568 §7.1.4).
- Anything we cannot do raises `NotAcceptable` (→ 488) with a reason for the Warning header.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from spg_media.rtp import sdes
from spg_media.rtp.sdes import CryptoAttribute, CryptoAttributeError


class SdpError(ValueError):
    """A body that is not SDP we can read."""


class NotAcceptable(Exception):  # named after the SIP answer: 488 Not Acceptable Here
    """Valid SDP that we cannot answer; `detail` is the text for a Warning header."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


PLAIN_PROTOS = frozenset(("RTP/AVP", "RTP/AVPF"))
SRTP_PROTOS = frozenset(("RTP/SAVP", "RTP/SAVPF"))
SRTP_POLICIES = ("off", "optional", "required")
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
_STATIC_PAYLOAD_TYPES = {0: ("PCMU", 8000), 8: ("PCMA", 8000)}
_CODEC_PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}
DEFAULT_PTIME = 20
_SECRET_ATTRIBUTES = frozenset(("crypto", "key-mgmt"))  # their values carry keys
MIN_PTIME = 10
MAX_PTIME = 60
# RFC 4566 §9 token (and proto, tokens joined by "/"): what an m= line and a=mid are made of.
# They are echoed in our answer, which must stay plain ASCII text.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_PROTO_RE = re.compile(r"[!#$%&'*+\-./0-9A-Z^_`a-z{|}~]+")


class Crypto:
    """One `a=crypto:<tag> <suite> <key-params> [<session-params>...]` line, uninterpreted.

    Not a dataclass, and its repr/str hide the key parameters: the inline key is a secret.
    `value()` gives the line back, key included, for `sdes.CryptoAttribute.parse`.
    """

    __slots__ = ("key_params", "session_params", "suite", "tag")

    def __init__(
        self, tag: int, suite: str, key_params: str, session_params: list[str] | None = None
    ) -> None:
        self.tag = tag
        self.suite = suite
        self.key_params = key_params
        self.session_params = list(session_params or [])

    @classmethod
    def parse(cls, value: str) -> Crypto:
        parts = value.split()
        if len(parts) < 3 or not parts[0].isascii() or not parts[0].isdigit():
            raise SdpError("bad a=crypto line")
        return cls(int(parts[0]), parts[1], parts[2], parts[3:])

    def value(self) -> str:
        """The attribute value as written, key included: for the SRTP layer, never for logs."""
        return " ".join([str(self.tag), self.suite, self.key_params, *self.session_params])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Crypto):
            return NotImplemented
        return self.value() == other.value()

    def __hash__(self) -> int:
        return hash((self.tag, self.suite))

    def __repr__(self) -> str:  # the inline key is a secret: never print it
        return f"Crypto(tag={self.tag}, suite={self.suite!r}, key_params=<hidden>)"

    __str__ = __repr__


@dataclass
class Origin:
    username: str
    session_id: str
    session_version: str
    nettype: str
    addrtype: str
    address: str


@dataclass
class MediaDescription:
    media: str
    port: int
    proto: str
    formats: list[int]  # payload types (RTP profiles); empty for other protos
    rtpmap: dict[int, tuple[str, int, str | None]] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    ptime: int | None = None
    maxptime: int | None = None
    direction: str = "sendrecv"
    connection: str | None = None
    crypto: list[Crypto] = field(default_factory=list)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    format_tokens: list[str] = field(default_factory=list)  # the m= formats as written
    port_count: int = 1
    mid: str | None = None
    rtcp_port: int | None = None  # a=rtcp (RFC 3605): where the offerer wants RTCP
    rtcp_address: str | None = None
    rtcp_mux: bool = False  # a=rtcp-mux (RFC 5761)

    def encoding(self, payload_type: int) -> tuple[str, int] | None:
        """(upper-case encoding name, clock rate) of a format, from rtpmap or the static table."""
        mapped = self.rtpmap.get(payload_type)
        if mapped is not None:
            return mapped[0].upper(), mapped[1]
        return _STATIC_PAYLOAD_TYPES.get(payload_type)


@dataclass
class SessionDescription:
    version: int = 0
    origin: Origin | None = None
    session_name: str = ""
    connection: str | None = None
    direction: str = "sendrecv"  # session-level a=sendrecv/sendonly/recvonly/inactive
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    @classmethod
    def parse(cls, body: bytes | str) -> SessionDescription:
        text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
        lines = [line.rstrip("\r") for line in text.split("\n")]
        lines = [line for line in lines if line.strip()]
        if not lines or lines[0].strip() != "v=0":
            raise SdpError("SDP must start with v=0")
        session = cls()
        current: MediaDescription | None = None
        session_direction: str | None = None
        media_directions: list[str | None] = []
        for line in lines[1:]:
            if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
                raise SdpError("SDP line is not <type>=<value>")
            kind, value = line[0], line[2:].strip()
            if kind == "m":
                current = _parse_media_line(value)
                session.media.append(current)
                media_directions.append(None)
            elif kind == "c":
                address = _parse_connection(value)
                if current is None:
                    session.connection = address
                else:
                    current.connection = address
            elif kind == "a":
                name, colon, attr_value = value.partition(":")
                attribute = (name, attr_value if colon else None)
                if name.lower() in _SECRET_ATTRIBUTES:  # keys live only in `crypto`, hidden
                    attribute = (name, "<hidden>")
                if current is None:
                    session.attributes.append(attribute)
                    if name in DIRECTIONS:
                        session_direction = name
                else:
                    current.attributes.append(attribute)
                    if name in DIRECTIONS:
                        media_directions[-1] = name
                    else:
                        _apply_media_attribute(current, name, attr_value)
            elif kind == "o" and current is None:
                parts = value.split()
                if len(parts) != 6:
                    raise SdpError("bad o= line")
                session.origin = Origin(*parts)
            elif kind == "s" and current is None:
                session.session_name = value
            # b=, t=, r=, z=, k=, i=, u=, e=, p= carry nothing we act on
        session.direction = session_direction or "sendrecv"
        for media, direction in zip(session.media, media_directions, strict=True):
            media.direction = direction or session.direction
            if media.connection is None:
                media.connection = session.connection
        return session


def _parse_connection(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError("bad c= line")
    return parts[2].split("/", 1)[0]  # drop a multicast TTL / address count


def _ip_literal(address: str) -> str | None:
    """`address` in canonical form when it is an IP literal, else None (a host name)."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def _parse_int(text: str, what: str, low: int, high: int) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise SdpError(f"bad {what}")
    value = int(text)
    if not low <= value <= high:
        raise SdpError(f"{what} out of range")
    return value


def _parse_media_line(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError("m= line needs media, port, proto and formats")
    media, port_text, proto, tokens = parts[0], parts[1], parts[2], parts[3:]
    if not (
        _TOKEN_RE.fullmatch(media)
        and _PROTO_RE.fullmatch(proto)
        and all(_TOKEN_RE.fullmatch(token) for token in tokens)
    ):
        raise SdpError("m= line with characters outside the SDP token set")
    port_text, slash, count_text = port_text.partition("/")
    port = _parse_int(port_text, "m= port", 0, 65535)
    port_count = _parse_int(count_text, "m= port count", 1, 65535) if slash else 1
    formats: list[int] = []
    if "RTP/" in proto.upper():
        formats = [_parse_int(token, "payload type", 0, 127) for token in tokens]
    return MediaDescription(
        media=media,
        port=port,
        proto=proto,
        formats=formats,
        format_tokens=tokens,
        port_count=port_count,
    )


def _parse_ptime(text: str) -> int:
    try:
        value = float(text.strip())
    except ValueError:
        raise SdpError("bad ptime") from None
    if not 0 < value < 10000:
        raise SdpError("ptime out of range")
    return round(value)


def _apply_media_attribute(media: MediaDescription, name: str, value: str) -> None:
    if name == "rtpmap":
        pt_text, _, encoding = value.partition(" ")
        pieces = encoding.strip().split("/")
        if len(pieces) < 2 or not pieces[0]:
            raise SdpError("bad a=rtpmap")
        payload_type = _parse_int(pt_text, "rtpmap payload type", 0, 127)
        clock = _parse_int(pieces[1], "rtpmap clock rate", 1, 10_000_000)
        media.rtpmap[payload_type] = (pieces[0], clock, pieces[2] if len(pieces) > 2 else None)
    elif name == "fmtp":
        pt_text, _, params = value.partition(" ")
        if pt_text.isascii() and pt_text.isdigit():  # "²" is a digit to isdigit(), not to int()
            media.fmtp[int(pt_text)] = params.strip()
    elif name == "ptime":
        media.ptime = _parse_ptime(value)
    elif name == "maxptime":
        media.maxptime = _parse_ptime(value)
    elif name == "crypto":
        media.crypto.append(Crypto.parse(value))
    elif name == "mid":
        mid = value.strip()
        media.mid = mid if _TOKEN_RE.fullmatch(mid) else None  # not a tag we can echo: none
    elif name == "rtcp":
        # Only a hint (without it: the RTP port + 1), so a line we cannot read is passed over
        # rather than refusing the call for it.
        port_text, _, address = value.strip().partition(" ")
        try:
            port = _parse_int(port_text, "a=rtcp port", 1, 65535)
            rtcp_address = _parse_connection(address) if address.strip() else None
        except SdpError:
            return
        if rtcp_address is not None:
            rtcp_address = _ip_literal(rtcp_address)
            if rtcp_address is None:  # a host name: never resolved
                return
        media.rtcp_address = rtcp_address
        media.rtcp_port = port
    elif name == "rtcp-mux":
        media.rtcp_mux = True


@dataclass
class NegotiatedAudio:
    """What we do with an audio offer (or what an answer to our offer says)."""

    remote_address: str
    remote_port: int
    codec: str  # "PCMU" | "PCMA"
    payload_type: int
    dtmf_payload_type: int | None
    ptime: int
    direction: str  # the offerer's: sendrecv | sendonly | recvonly | inactive
    srtp_offered: bool
    crypto: list[Crypto]  # offered crypto lines with a supported suite, in offer order
    proto: str = "RTP/AVP"
    mid: str | None = None
    stream_index: int = 0  # which m-line of the offer this is
    # every m-line of the offer as (media, proto, formats), to reject the others in the answer
    offered_streams: list[tuple[str, str, str]] = field(default_factory=list)
    # SRTP (None for plain RTP): the offer's line we use (the peer's key, for what we receive)
    # and our answer's line (our key, same tag and suite, for what we send). Their reprs hide
    # the keys. `srtp.SrtpContext(neg.local_crypto, neg.remote_crypto)` runs the media.
    remote_crypto: CryptoAttribute | None = None
    local_crypto: CryptoAttribute | None = None
    # Where the peer takes RTCP: a=rtcp, else the RTP port + 1 (0: nowhere, the RTP port
    # being 65535); rtcp_mux: on its RTP port, as we take it on ours.
    remote_rtcp_address: str = ""
    remote_rtcp_port: int = 0
    rtcp_mux: bool = False

    @property
    def remote_rtcp(self) -> tuple[str, int]:
        """Where we send RTCP (until the peer's own RTCP shows where it really is)."""
        if self.rtcp_mux:
            return self.remote_address, self.remote_port
        return self.remote_rtcp_address or self.remote_address, self.remote_rtcp_port

    @property
    def answer_direction(self) -> str:
        """Our direction in the answer (RFC 3264 §6.1)."""
        return _ANSWER_DIRECTION[self.direction]

    @property
    def on_hold(self) -> bool:
        """The offerer does not want to receive media from us."""
        return self.direction in ("sendonly", "inactive")

    @property
    def crypto_line(self) -> str | None:
        """Our `a=crypto` value for the answer (key included), or None for plain RTP."""
        return None if self.local_crypto is None else self.local_crypto.sdp_value()


_Candidate = tuple[int, str, int | None, list[Crypto], CryptoAttribute | None]


def _audio_candidate(
    media: MediaDescription,
    srtp_policy: str,
    crypto_suites: Collection[str] | None,
    keep_codec: str | None = None,
) -> _Candidate | str:
    """(payload type, codec, dtmf pt, supported crypto lines, chosen crypto) for a stream, or
    why it is unusable. The offerer's first codec we know is chosen, except that `keep_codec`
    (a re-INVITE's current codec) is kept whenever it is still offered."""
    proto = media.proto.upper()
    remote: CryptoAttribute | None = None
    if proto in SRTP_PROTOS:
        if srtp_policy == "off":
            return f"{media.proto} offered and SRTP is off"
        if crypto_suites is None:
            crypto_suites = sdes.supported_suites()
        suites = {suite.upper() for suite in crypto_suites}
        usable = [c for c in media.crypto if c.suite.upper() in suites]
        if not usable:
            return f"{media.proto} without a supported a=crypto suite"
        try:
            remote = sdes.select_offered([c.value() for c in usable], suites=suites)
        except CryptoAttributeError as exc:
            return f"no acceptable a=crypto: {exc.reason}"
    elif proto in PLAIN_PROTOS:
        if srtp_policy == "required":
            return f"{media.proto} offered and SRTP is required"
        usable = []
    else:
        return f"unsupported transport {media.proto}"
    chosen: tuple[int, str] | None = None
    for payload_type in media.formats:
        encoding = media.encoding(payload_type)
        if encoding is None:
            continue
        name, clock = encoding
        if name in _CODEC_PAYLOAD_TYPES and clock == 8000:
            channels = media.rtpmap.get(payload_type, ("", 0, None))[2]
            if channels in (None, "1"):
                if chosen is None:
                    chosen = (payload_type, name)
                if keep_codec is None or name == keep_codec:
                    chosen = (payload_type, name)
                    break
    if chosen is None:
        return "no common codec (PCMU, PCMA)"
    dtmf: int | None = None
    for payload_type in media.formats:
        mapped = media.rtpmap.get(payload_type)
        if mapped is not None and mapped[0].lower() == "telephone-event" and mapped[1] == 8000:
            dtmf = payload_type
            break
    return chosen[0], chosen[1], dtmf, usable, remote


def _ptime(media: MediaDescription) -> int:
    ptime = media.ptime if media.ptime is not None else DEFAULT_PTIME
    ptime = min(max(ptime, MIN_PTIME), MAX_PTIME)
    if media.maxptime is not None and media.maxptime < ptime:
        ptime = max(media.maxptime, MIN_PTIME)
    return ptime


def negotiate(
    offer: SessionDescription,
    *,
    srtp_policy: str = "optional",
    crypto_suites: Collection[str] | None = None,
    previous: NegotiatedAudio | None = None,
) -> NegotiatedAudio:
    """Choose the audio stream, codec, DTMF payload type, ptime and SRTP keys for an offer
    (RFC 3264 §6, RFC 4568 §7).

    Raises NotAcceptable (answer 488 with its `detail` in a Warning) when there is no active
    audio stream we can take under `srtp_policy` ("off" | "optional" | "required") and
    `crypto_suites` (default: what this host's libsrtp can run). For an
    SRTP stream the result carries `remote_crypto` and a fresh `local_crypto`. On a re-INVITE,
    pass the call's current result as `previous`: an SRTP call then stays SRTP, our key is
    kept when the peer keeps its own, and the codec is kept while it is still offered.
    """
    if srtp_policy not in SRTP_POLICIES:
        raise ValueError(f"srtp_policy must be one of {SRTP_POLICIES}")
    if previous is not None and previous.remote_crypto is not None and srtp_policy != "required":
        srtp_policy = "required"  # never fall back to plain RTP in the middle of an SRTP call
    reasons: list[str] = []
    choice: tuple[int, MediaDescription, _Candidate] | None = None
    for index, media in enumerate(offer.media):
        if media.media.lower() != "audio" or media.port == 0:
            continue  # port 0: a stream the offerer itself disabled
        result = _audio_candidate(
            media, srtp_policy, crypto_suites, previous.codec if previous is not None else None
        )
        if isinstance(result, str):
            reasons.append(result)
            continue
        is_srtp = media.proto.upper() in SRTP_PROTOS
        if choice is None:
            choice = (index, media, result)
        elif is_srtp and choice[1].proto.upper() not in SRTP_PROTOS:
            choice = (index, media, result)  # prefer the protected copy of the stream
        if is_srtp:
            break
    if choice is None:
        if not any(m.media.lower() == "audio" for m in offer.media):
            raise NotAcceptable("no audio stream offered")
        if not reasons:
            raise NotAcceptable("no active audio stream (port 0)")
        raise NotAcceptable(reasons[0])
    index, media, (payload_type, codec, dtmf, crypto, remote_crypto) = choice
    if not media.connection:
        raise NotAcceptable("no connection address (c=) for the audio stream")
    connection = _ip_literal(media.connection)
    if connection is None:
        raise NotAcceptable("c= address is not an IP address (host names are not resolved)")
    direction = media.direction
    if connection in ("0.0.0.0", "::"):  # RFC 2543 hold: "do not send to me"
        direction = {"sendrecv": "sendonly", "recvonly": "inactive"}.get(direction, direction)
    local_crypto: CryptoAttribute | None = None
    if remote_crypto is not None:
        if (
            previous is not None
            and previous.local_crypto is not None
            and previous.remote_crypto == remote_crypto
        ):
            local_crypto = previous.local_crypto  # the peer kept its key: we keep ours
        else:
            local_crypto = sdes.answer_for(remote_crypto)
    return NegotiatedAudio(
        remote_address=connection,
        remote_port=media.port,
        codec=codec,
        payload_type=payload_type,
        dtmf_payload_type=dtmf,
        ptime=_ptime(media),
        direction=direction,
        srtp_offered=media.proto.upper() in SRTP_PROTOS,
        crypto=crypto,
        proto=media.proto,
        mid=media.mid,
        stream_index=index,
        offered_streams=[(m.media, m.proto, " ".join(m.format_tokens)) for m in offer.media],
        remote_crypto=remote_crypto,
        local_crypto=local_crypto,
        remote_rtcp_address=media.rtcp_address or connection,
        remote_rtcp_port=media.rtcp_port or (media.port + 1 if media.port < 65535 else 0),
        rtcp_mux=media.rtcp_mux,
    )


def _address_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _crypto_attribute(line: str | CryptoAttribute) -> str:
    if isinstance(line, CryptoAttribute):
        return "a=crypto:" + line.sdp_value()
    line = line.strip()
    if line.startswith("a="):
        line = line[2:]
    if not line.startswith("crypto:"):
        line = "crypto:" + line
    return "a=" + line


def build_answer(
    neg: NegotiatedAudio,
    *,
    local_address: str,
    local_port: int,
    session_id: int,
    version: int,
    crypto_line: str | None = None,
) -> bytes:
    """The SDP answer for a negotiated offer: one audio stream, other m-lines rejected (port 0).

    For an SRTP offer the answer carries our `a=crypto`: `neg.local_crypto` unless
    `crypto_line` ("1 AES_CM_128_HMAC_SHA1_80 inline:..." with or without "a=crypto:") is
    given; with neither, ValueError, since an RTP/SAVP answer without keys is useless.
    """
    if crypto_line is None:
        crypto_line = neg.crypto_line
    if neg.srtp_offered and not crypto_line:
        raise ValueError("an SRTP offer needs a crypto line in the answer")
    addrtype = _address_type(local_address)
    lines = [
        "v=0",
        f"o=spg-media {session_id} {version} IN {addrtype} {local_address}",
        "s=spg-media",
        f"c=IN {addrtype} {local_address}",
        "t=0 0",
    ]
    streams = neg.offered_streams or [("audio", neg.proto, "")]
    for index, (media, proto, formats) in enumerate(streams):
        if index != neg.stream_index:
            lines.append(f"m={media} 0 {proto} {formats}".rstrip())
            continue
        payload_types = [str(neg.payload_type)]
        if neg.dtmf_payload_type is not None:
            payload_types.append(str(neg.dtmf_payload_type))
        lines.append(f"m=audio {local_port} {neg.proto} {' '.join(payload_types)}")
        if neg.mid is not None:
            lines.append(f"a=mid:{neg.mid}")
        lines.append(f"a=rtpmap:{neg.payload_type} {neg.codec}/8000")
        if neg.dtmf_payload_type is not None:
            lines.append(f"a=rtpmap:{neg.dtmf_payload_type} telephone-event/8000")
            lines.append(f"a=fmtp:{neg.dtmf_payload_type} 0-16")
        lines.append(f"a=ptime:{neg.ptime}")
        lines.append(f"a={neg.answer_direction}")
        if neg.rtcp_mux:
            lines.append("a=rtcp-mux")
        if crypto_line and neg.srtp_offered:
            lines.append(_crypto_attribute(crypto_line))
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def build_offer(
    *,
    local_address: str,
    local_port: int,
    session_id: int,
    version: int,
    codecs: Sequence[str] = ("PCMU", "PCMA"),
    dtmf_pt: int | None = 101,
    crypto_lines: Sequence[str | CryptoAttribute] = (),
    ptime: int = DEFAULT_PTIME,
    direction: str = "sendrecv",
) -> bytes:
    """An audio offer (our test caller's): RTP/SAVP when crypto lines are given (strings, or
    `CryptoAttribute`s such as `sdes.offer_attributes()`)."""
    unknown = [c for c in codecs if c.upper() not in _CODEC_PAYLOAD_TYPES]
    if unknown or not codecs:
        raise ValueError("codecs must be PCMU and/or PCMA")
    if direction not in DIRECTIONS:
        raise ValueError("bad direction")
    addrtype = _address_type(local_address)
    payload_types = [_CODEC_PAYLOAD_TYPES[c.upper()] for c in codecs]
    formats = [str(pt) for pt in payload_types]
    if dtmf_pt is not None:
        formats.append(str(dtmf_pt))
    proto = "RTP/SAVP" if crypto_lines else "RTP/AVP"
    lines = [
        "v=0",
        f"o=spg-media {session_id} {version} IN {addrtype} {local_address}",
        "s=spg-media",
        f"c=IN {addrtype} {local_address}",
        "t=0 0",
        f"m=audio {local_port} {proto} {' '.join(formats)}",
    ]
    for codec, payload_type in zip(codecs, payload_types, strict=True):
        lines.append(f"a=rtpmap:{payload_type} {codec.upper()}/8000")
    if dtmf_pt is not None:
        lines.append(f"a=rtpmap:{dtmf_pt} telephone-event/8000")
        lines.append(f"a=fmtp:{dtmf_pt} 0-16")
    lines.append(f"a=ptime:{ptime}")
    lines.append(f"a={direction}")
    lines.extend(_crypto_attribute(line) for line in crypto_lines)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")
