"""SIP URIs and the structured header values built on them (RFC 3261 §19.1, §20, §25.1).

This module owns the text forms that the rest of the SIP stack takes apart and puts back together:
`SipUri` (sip:, sips:, and tel: or other schemes kept opaque), `NameAddr` (the value of From, To,
Contact, Route, Record-Route, Refer-To, Referred-By), `Via`, the CSeq value, and splitting a
comma-separated header value into its elements. Every parser raises `SipSyntaxError` (a
`ValueError`) and nothing else; every value prints back as valid SIP text.

Choices worth knowing:
- IPv6 hosts keep their brackets (`host == "[2001:db8::1]"`), as the RFC 3261 grammar writes them;
  `bare_host` gives the address without them.
- URI user, password and parameter values are kept exactly as received (still %-escaped), so a
  URI prints back byte for byte; `SipUri.param()` gives a parameter %-decoded. URI header values
  (`?X-A=1`) are %-decoded and escaped again when printed.
- Parameter names are lower-cased (they are case-insensitive); their values keep their case.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote


class SipSyntaxError(ValueError):
    """A URI or header value that does not follow the SIP grammar."""


# RFC 3261 §25.1 token, and the characters a hostname may use (underscore tolerated: it is seen).
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9\-._]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# Characters that may never appear unescaped in a URI (whitespace, controls, delimiters).
_URI_FORBIDDEN_RE = re.compile(r"[\x00-\x20\x7f<>\"{}|\\^`]")
# Characters left unescaped in URI header values: unreserved and hnv-unreserved (RFC 3261 §25.1).
_COLON_LWS_RE = re.compile(r"[ \t]*:[ \t]*")
_SPLITTING_RE = re.compile(r'[",<>]')
_HVALUE_SAFE = "-_.!~*'()[]/?:+$"


def unescape(text: str) -> str:
    """%-decode URI text (invalid escapes are kept as they are)."""
    return unquote(text) if "%" in text else text


def _check_port(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise SipSyntaxError(f"bad port in {what}")
    port = int(text)
    if port > 65535:
        raise SipSyntaxError(f"port out of range in {what}")
    return port


def _parse_host_port(text: str, what: str) -> tuple[str, int | None]:
    """`host[:port]` with an IPv6 reference in brackets; the host keeps its brackets."""
    if not text:
        raise SipSyntaxError(f"missing host in {what}")
    if text[0] == "[":
        end = text.find("]")
        if end < 0:
            raise SipSyntaxError(f"unterminated IPv6 reference in {what}")
        inner = text[1:end]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise SipSyntaxError(f"bad IPv6 address in {what}") from None
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise SipSyntaxError(f"junk after IPv6 reference in {what}")
        return host, _check_port(rest[1:], what)
    host, colon, port_text = text.partition(":")
    if not host or not _HOSTNAME_RE.fullmatch(host):
        raise SipSyntaxError(f"bad host in {what}")
    if not colon:
        return host, None
    return host, _check_port(port_text, what)


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    """Split on `separator` where it is not inside a quoted string."""
    if '"' not in text:
        return text.split(separator)
    parts: list[str] = []
    start = 0
    in_quotes = False
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == separator:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if in_quotes:
        raise SipSyntaxError("unterminated quoted string")
    parts.append(text[start:])
    return parts


def _parse_header_params(text: str, what: str) -> dict[str, str | None]:
    """`;name=value;flag` of a header value (values may be quoted); names lower-cased."""
    params: dict[str, str | None] = {}
    text = text.strip()
    if not text:
        return params
    if text[0] != ";":
        raise SipSyntaxError(f"junk where parameters were expected in {what}")
    for piece in _split_outside_quotes(text[1:], ";"):
        name, eq, value = piece.partition("=")
        name = name.strip()
        if not name:
            if not piece.strip():
                continue  # ";;" or a trailing ";": seen in the wild, harmless
            raise SipSyntaxError(f"parameter without a name in {what}")
        if not _TOKEN_RE.fullmatch(name):
            raise SipSyntaxError(f"bad parameter name in {what}")
        if eq:
            value = value.strip()
            if not value:
                raise SipSyntaxError(f"empty parameter value in {what}")
            if value[0] == '"':
                if not _QUOTED_RE.fullmatch(value):
                    raise SipSyntaxError(f"bad quoted parameter value in {what}")
            elif _SPLITTING_RE.search(value):
                # Outside a quoted string these change where a printed header list splits: the
                # value would not come back as it went (a Via we copy into a response).
                raise SipSyntaxError(f"quote, comma or angle bracket in a parameter in {what}")
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


@dataclass
class SipUri:
    """A sip:, sips: or tel: URI. Other schemes are kept opaque (everything in `user`)."""

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> SipUri:
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        if not colon or not _SCHEME_RE.fullmatch(scheme):
            raise SipSyntaxError("URI without a scheme")
        if _URI_FORBIDDEN_RE.search(rest):
            raise SipSyntaxError("URI with whitespace or a forbidden character")
        scheme = scheme.lower()
        if scheme == "tel":
            number, _, param_text = rest.partition(";")
            if not number:
                raise SipSyntaxError("tel URI without a number")
            return cls("tel", number, None, "", None, _parse_uri_params(param_text), {})
        if scheme not in ("sip", "sips"):
            if not rest:
                raise SipSyntaxError("empty URI")
            return cls(scheme, rest)
        user: str | None = None
        password: str | None = None
        at = rest.find("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, has_password, pw = userinfo.partition(":")
            if not user:
                raise SipSyntaxError("empty user part in URI")
            password = pw if has_password else None
        rest, question, header_text = rest.partition("?")
        hostport, _, param_text = rest.partition(";")
        host, port = _parse_host_port(hostport, "URI")
        headers: dict[str, str] = {}
        if question:
            for piece in header_text.split("&"):
                if not piece:
                    continue
                name, eq, value = piece.partition("=")
                if not name or not eq:
                    raise SipSyntaxError("bad URI header")
                headers[unescape(name)] = unescape(value)
        return cls(scheme, user, password, host, port, _parse_uri_params(param_text), headers)

    def __str__(self) -> str:
        if self.scheme not in ("sip", "sips"):
            return f"{self.scheme}:{self.user or ''}{_format_params(self.params)}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts += [":", self.password]
            parts.append("@")
        parts.append(self.host_port())
        parts.append(_format_params(self.params))
        if self.headers:
            parts.append("?")
            parts.append(
                "&".join(
                    f"{quote(k, safe=_HVALUE_SAFE)}={quote(v, safe=_HVALUE_SAFE)}"
                    for k, v in self.headers.items()
                )
            )
        return "".join(parts)

    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def bare_host(self) -> str:
        """The host without IPv6 brackets, as socket APIs want it."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    @property
    def transport(self) -> str:
        """Lower-case `transport` parameter; else "tls" for sips:, "udp" otherwise."""
        value = self.params.get("transport")
        if value:
            return value.lower()
        return "tls" if self.scheme == "sips" else "udp"

    def param(self, name: str) -> str | None:
        """A URI parameter's value, %-decoded (None when absent or valueless)."""
        value = self.params.get(name.lower())
        return None if value is None else unescape(value)


def _parse_uri_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    if not text:
        return params
    for piece in text.split(";"):
        if not piece:
            continue
        name, eq, value = piece.partition("=")
        if not name:
            raise SipSyntaxError("URI parameter without a name")
        params[name.lower()] = value if eq else None
    return params


_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)


def _parse_quoted(text: str, start: int) -> tuple[str, int]:
    """The quoted string opening at text[start]; returns (unescaped content, index after it)."""
    match = _QUOTED_RE.match(text, start)
    if match is None:
        raise SipSyntaxError("unterminated quoted display name")
    content = match.group(1)
    if "\\" in content:
        content = _QUOTED_PAIR_RE.sub(r"\1", content)
    return content, match.end()


@dataclass
class NameAddr:
    """`"Display" <uri>;param=value`: From, To, Contact, Route, Refer-To, Referred-By values."""

    uri: SipUri
    display_name: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        if not text:
            raise SipSyntaxError("empty address")
        display: str | None = None
        if text[0] == '"':
            quoted, pos = _parse_quoted(text, 0)
            display = quoted or None
            lt = text.find("<", pos)
            if lt < 0 or text[pos:lt].strip():
                raise SipSyntaxError("quoted display name not followed by <URI>")
        else:
            lt = text.find("<")
            if lt < 0:
                # addr-spec form: parameters after the URI belong to the header (§20.10)
                uri_text, semi, param_text = text.partition(";")
                return cls(
                    SipUri.parse(uri_text), None, _parse_header_params(semi + param_text, "address")
                )
            display = text[:lt].strip() or None
            if display is not None and ('"' in display or ">" in display):
                raise SipSyntaxError("bad display name")
        gt = text.find(">", lt + 1)
        if gt < 0:
            raise SipSyntaxError("unterminated <URI>")
        uri = SipUri.parse(text[lt + 1 : gt])
        return cls(uri, display, _parse_header_params(text[gt + 1 :], "address"))

    def __str__(self) -> str:
        prefix = ""
        if self.display_name:
            escaped = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
            prefix = f'"{escaped}" '
        return f"{prefix}<{self.uri}>{_format_params(self.params)}"

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


@dataclass
class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=z9hG4bK...;rport;received=...`."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Via:
        pieces = text.split("/", 2)
        if len(pieces) != 3:
            raise SipSyntaxError("Via without SIP/2.0/transport")
        name, version, rest = pieces[0].strip(), pieces[1].strip(), pieces[2].lstrip()
        if name.upper() != "SIP" or version != "2.0":
            raise SipSyntaxError("Via with a protocol other than SIP/2.0")
        split = rest.split(None, 1)
        if len(split) != 2:
            raise SipSyntaxError("Via without sent-by")
        transport, rest = split
        if not _TOKEN_RE.fullmatch(transport):
            raise SipSyntaxError("bad transport in Via")
        rest = rest.strip()
        if rest.endswith(")"):  # a trailing (comment) is allowed by the grammar; drop it
            open_paren = rest.rfind("(")
            if open_paren >= 0:
                rest = rest[:open_paren].rstrip()
        semi = rest.find(";")
        sent_by, param_text = (rest, "") if semi < 0 else (rest[:semi], rest[semi:])
        sent_by = sent_by.strip()
        if " " in sent_by or "\t" in sent_by:  # LWS is allowed around the colon only
            sent_by = _COLON_LWS_RE.sub(":", sent_by)
        host, port = _parse_host_port(sent_by, "Via")
        return cls(transport.upper(), host, port, _parse_header_params(param_text, "Via"))

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{_format_params(self.params)}"

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def bare_host(self) -> str:
        return self.host[1:-1] if self.host.startswith("[") else self.host

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The filled-in rport value (None when absent, still empty, or not a port number)."""
        value = self.params.get("rport")
        if not value or not value.isascii() or not value.isdigit() or len(value) > 5:
            return None  # the sender wrote it: "abc", "99999" or "²" is no port to answer to
        port = int(value)
        return port if 0 < port <= 65535 else None

    @property
    def wants_rport(self) -> bool:
        """The sender asked for RFC 3581 symmetric response routing (`;rport`)."""
        return "rport" in self.params

    def apply_source(self, source_host: str, source_port: int) -> bool:
        """Record where the request really came from (RFC 3261 §18.2.1, RFC 3581 §4).

        Adds `received` when the sent-by host differs from the packet's source address, and fills
        an empty `rport` (adding `received` then too). Returns True if anything changed.
        """
        changed = False
        if self.bare_host != source_host and self.params.get("received") != source_host:
            self.params["received"] = source_host
            changed = True
        if "rport" in self.params and not self.params["rport"]:
            self.params["rport"] = str(source_port)
            self.params.setdefault("received", source_host)
            changed = True
        return changed

    def response_target(self, default_port: int = 5060) -> tuple[str, int]:
        """Where a response over UDP goes: received/rport when present, else sent-by."""
        host = self.params.get("received") or self.bare_host
        return host, self.rport or self.port or default_port


def parse_cseq(text: str) -> tuple[int, str]:
    """`CSeq: 4711 INVITE` → (4711, "INVITE"); the number must fit in 31 bits (§8.1.1.5)."""
    parts = text.split()
    if len(parts) != 2:
        raise SipSyntaxError("CSeq must be a number and a method")
    number, method = parts
    if not number.isascii() or not number.isdigit() or len(number) > 10:
        raise SipSyntaxError("CSeq number is not a number")
    value = int(number)
    if value >= 2**31:
        raise SipSyntaxError("CSeq number out of range")
    if not _TOKEN_RE.fullmatch(method):
        raise SipSyntaxError("bad CSeq method")
    return value, method


def split_header_list(value: str) -> list[str]:
    """Split a header value on commas outside quoted strings and <...>; empty elements dropped."""
    if "," not in value:
        stripped = value.strip()
        return [stripped] if stripped else []
    items: list[str] = []
    start = 0
    in_quotes = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif in_angle:
            if ch == ">":
                in_angle = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            in_angle = True
        elif ch == ",":
            item = value[start:i].strip()
            if item:
                items.append(item)
            start = i + 1
        i += 1
    item = value[start:].strip()
    if item:
        items.append(item)
    return items
