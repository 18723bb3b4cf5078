"""SIP messages: parsing bytes into requests and responses, and printing them back (RFC 3261 §7).

This module owns the wire form of a SIP message: the `Headers` multimap (case-insensitive names,
compact forms expanded to their long names), `SipRequest`/`SipResponse`, `parse_message` for one
datagram or one framed stream message, `StreamFramer` for cutting a TCP/TLS byte stream into
messages by Content-Length, and `make_response` (§8.2.6). It is sans-IO: bytes in, objects out.

`parse_message` never raises anything but `SipParseError`, whose `status`/`reason`/`detail` are
what a UAS answers a broken request with (every bad input has an answer). The
detail names what is wrong, never the offending text, so no header content (which could carry
anything a caller keyed) reaches logs through it. When a request is too broken to parse,
`partial_request_info` digs out the Via/From/To/Call-ID/CSeq needed to send the 400 back anyway.

A parsed message is guaranteed to have parseable Via (every one), From, To, Call-ID and CSeq (whose
method matches, for requests), so the properties (`via`, `top_via`, `from_`, `to`, `cseq`, ...)
do not fail on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from spg_media.randomid import random_hex
from spg_media.sip.uri import (
    NameAddr,
    SipSyntaxError,
    SipUri,
    Via,
    parse_cseq,
    split_header_list,
)

MAX_MESSAGE_SIZE = 65535
MAX_HEADERS = 200


class SipParseError(Exception):
    """A message that cannot be accepted, with the response a UAS should send for it."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{status} {reason}" + (f": {detail}" if detail else ""))
        self.status = status
        self.reason = reason
        self.detail = detail


def _bad(detail: str) -> SipParseError:
    return SipParseError(400, "Bad Request", detail)


# ---- header names -------------------------------------------------------------------------------

_CANONICAL_NAMES = [
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Accept-Resource-Priority",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Answer-Mode",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-ID",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Diversion",
    "Error-Info",
    "Event",
    "Expires",
    "Flow-Timer",
    "From",
    "History-Info",
    "Identity",
    "Identity-Info",
    "In-Reply-To",
    "Join",
    "Max-Breadth",
    "Max-Forwards",
    "MIME-Version",
    "Min-Expires",
    "Min-SE",
    "Organization",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "P-Charging-Vector",
    "P-Access-Network-Info",
    "P-Called-Party-ID",
    "P-Associated-URI",
    "Path",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Record-Route",
    "Refer-Sub",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Remote-Party-ID",
    "Replaces",
    "Reply-To",
    "Request-Disposition",
    "Require",
    "Resource-Priority",
    "Retry-After",
    "Route",
    "RSeq",
    "Security-Client",
    "Security-Server",
    "Security-Verify",
    "Server",
    "Service-Route",
    "Session-Expires",
    "Session-ID",
    "SIP-ETag",
    "SIP-If-Match",
    "Subject",
    "Subscription-State",
    "Supported",
    "Target-Dialog",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
]

# RFC 3261 §7.3.3 and the IANA "Header Fields" registry's compact forms.
_COMPACT_FORMS = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

# lower-case name (long or compact) -> (lower-case long name, canonical spelling)
_NAMES: dict[str, tuple[str, str]] = {
    name.lower(): (name.lower(), name) for name in _CANONICAL_NAMES
}
_NAMES.update({short: (long.lower(), long) for short, long in _COMPACT_FORMS.items()})

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1): get_all() splits them.
_LIST_HEADERS = frozenset(
    name.lower()
    for name in [
        "Accept",
        "Accept-Contact",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Call-Info",
        "Contact",
        "Content-Encoding",
        "Content-Language",
        "Error-Info",
        "History-Info",
        "In-Reply-To",
        "P-Asserted-Identity",
        "P-Associated-URI",
        "P-Preferred-Identity",
        "Path",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Reject-Contact",
        "Request-Disposition",
        "Require",
        "Route",
        "Security-Client",
        "Security-Server",
        "Security-Verify",
        "Service-Route",
        "Supported",
        "Unsupported",
        "Via",
        "Warning",
    ]
)

# Headers that may appear once; two different values make the request ambiguous (400).
_SINGLE_HEADERS = frozenset(
    ("from", "to", "call-id", "cseq", "max-forwards", "content-length", "content-type")
)

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_SPLIT_RE = re.compile(r"\r?\n")
_VERSION_RE = re.compile(r"SIP/\d+\.\d+", re.IGNORECASE)


def _name_key(name: str) -> tuple[str, str]:
    """(lookup key, spelling to print) for a header name; unknown names keep their spelling."""
    stripped = name.strip()
    known = _NAMES.get(stripped.lower())
    if known is not None:
        return known
    if not _TOKEN_RE.fullmatch(stripped):
        raise ValueError("header name must be a token")
    return stripped.lower(), stripped


def canonical_name(name: str) -> str:
    """The long, canonically spelled form of a header name ("i" → "Call-ID")."""
    return _name_key(name)[1]


class Headers:
    """Ordered multimap of header lines. Names are case-insensitive; compact forms are expanded.

    One entry per header line as received; `get_all` splits list-valued headers (Via, Route,
    Contact, Allow, ...) on commas outside quotes and <...>.
    """

    __slots__ = ("_lines",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._lines: list[tuple[str, str, str]] = []  # (key, printed name, value)
        for name, value in items:
            self.add(name, value)

    @staticmethod
    def _clean(value: str) -> str:
        # A CR or LF in a value would let it inject header lines: fold them to spaces.
        if "\r" in value or "\n" in value:
            value = value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
        return value.strip()

    def get(self, name: str) -> str | None:
        key = _name_key(name)[0]
        for k, _, value in self._lines:
            if k == key:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        key = _name_key(name)[0]
        if key in _LIST_HEADERS:
            out: list[str] = []
            for k, _, value in self._lines:
                if k == key:
                    out.extend(split_header_list(value))
            return out
        return [value for k, _, value in self._lines if k == key]

    def set(self, name: str, value: str) -> None:
        """Replace the first line of `name` (dropping the others), or append one."""
        key, printed = _name_key(name)
        entry = (key, printed, self._clean(value))
        for i, (k, _, _) in enumerate(self._lines):
            if k == key:
                self._lines[i] = entry
                self._lines[i + 1 :] = [line for line in self._lines[i + 1 :] if line[0] != key]
                return
        self._lines.append(entry)

    def add(self, name: str, value: str) -> None:
        key, printed = _name_key(name)
        self._lines.append((key, printed, self._clean(value)))

    def remove(self, name: str) -> None:
        key = _name_key(name)[0]
        self._lines = [line for line in self._lines if line[0] != key]

    def items(self) -> list[tuple[str, str]]:
        return [(name, value) for _, name, value in self._lines]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            key = _name_key(name)[0]
        except ValueError:
            return False
        return any(k == key for k, _, _ in self._lines)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items())

    def __len__(self) -> int:
        return len(self._lines)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._lines] == [(k, v) for k, _, v in other._lines]

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> Headers:
        new = Headers()
        new._lines = list(self._lines)
        return new

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


# ---- messages -----------------------------------------------------------------------------------


class _MessageParts:
    """Properties shared by requests and responses, read from the headers on each access."""

    headers: Headers
    body: bytes

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipSyntaxError(f"missing {name}")
        return value

    @property
    def call_id(self) -> str:
        return self._required("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        return parse_cseq(self._required("CSeq"))

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(self._required("From"))

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(self._required("To"))

    @property
    def via(self) -> list[Via]:
        """Every Via, topmost first."""
        return [Via.parse(value) for value in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        first = self._required("Via")
        return Via.parse(split_header_list(first)[0] if "," in first else first)

    @property
    def branch(self) -> str | None:
        return self.top_via.branch

    @property
    def content_type(self) -> str | None:
        """The media type, lower-cased, without parameters ("application/sdp")."""
        value = self.headers.get("Content-Type")
        return value.split(";", 1)[0].strip().lower() if value is not None else None

    def _body_summary(self) -> str:
        # Bodies (e.g. a dtmf-relay INFO) may carry keyed digits: never show their content.
        return f"<{len(self.body)} bytes>"

    def _serialise(self, start_line: str) -> bytes:
        lines = [start_line]
        wrote_length = False
        for key, name, value in self.headers._lines:
            if key == "content-length":
                if not wrote_length:
                    lines.append(f"Content-Length: {len(self.body)}")
                    wrote_length = True
                continue
            lines.append(f"{name}: {value}")
        if not wrote_length:
            lines.append(f"Content-Length: {len(self.body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8") + self.body


@dataclass(repr=False, eq=False)
class SipRequest(_MessageParts):
    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def to_bytes(self) -> bytes:
        """The wire form, with Content-Length set to the body's length."""
        return self._serialise(f"{self.method} {self.uri} SIP/2.0")

    @property
    def request_uri(self) -> SipUri:
        return SipUri.parse(self.uri)

    def __repr__(self) -> str:
        call_id = self.headers.get("Call-ID")
        body = self._body_summary()
        return f"SipRequest({self.method} {self.uri}, call_id={call_id!r}, body={body})"


@dataclass(repr=False, eq=False)
class SipResponse(_MessageParts):
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def to_bytes(self) -> bytes:
        """The wire form, with Content-Length set to the body's length."""
        return self._serialise(f"SIP/2.0 {self.status} {self.reason}")

    def __repr__(self) -> str:
        call_id = self.headers.get("Call-ID")
        return (
            f"SipResponse({self.status} {self.reason}, call_id={call_id!r}, "
            f"body={self._body_summary()})"
        )


SipMessage = SipRequest | SipResponse


# ---- parsing ------------------------------------------------------------------------------------


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """(header section, everything after the empty line); CRLF, tolerating bare LF."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf < 0 and lf < 0:
        raise _bad("no empty line after the headers")
    if lf < 0 or 0 <= crlf < lf:
        return data[:crlf], data[crlf + 4 :]
    return data[:lf], data[lf + 2 :]


def _header_lines(head: str) -> list[str]:
    lines = head.split("\r\n")
    if head.count("\n") != len(lines) - 1:  # bare LF line ends somewhere
        lines = _LINE_SPLIT_RE.split(head)
    return lines


def _parse_headers(lines: list[str]) -> Headers:
    entries: list[tuple[str, str, str]] = []
    names = _NAMES
    for line in lines:
        if not line:
            continue
        if line[0] == " " or line[0] == "\t":  # obs-fold: continuation of the previous value
            if not entries:
                raise _bad("continuation line before any header")
            key, printed, value = entries[-1]
            entries[-1] = (key, printed, f"{value} {line.strip()}".strip())
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise _bad("header line without a colon")
        name = name.rstrip()
        lower = name.lower()
        known = names.get(lower)
        if known is None:
            if not _TOKEN_RE.fullmatch(name):
                raise _bad("bad header name")
            known = (lower, name)
        entries.append((known[0], known[1], value.strip()))
    if len(entries) > MAX_HEADERS:
        raise SipParseError(513, "Message Too Large", "too many header fields")
    headers = Headers()
    headers._lines = entries
    return headers


def _check_headers(headers: Headers) -> tuple[int, str]:
    """Mandatory headers present, single ones single, the parsed ones parseable. Returns CSeq."""
    first: dict[str, str] = {}
    vias: list[str] = []
    for key, printed, value in headers._lines:
        if key in _SINGLE_HEADERS:
            previous = first.get(key)
            if previous is not None and previous != value:
                raise _bad(f"more than one {printed} header")
            first[key] = value
        elif key == "via":
            vias.append(value)
    if not vias:
        raise _bad("missing Via")
    for key, name in (("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq")):
        if key not in first:
            raise _bad(f"missing {name}")
    try:
        for line in vias:  # every Via, so that the `via` property never fails
            values = split_header_list(line) if "," in line else [line]
            if not values:
                raise SipSyntaxError("empty Via")
            for value in values:
                Via.parse(value)
    except SipSyntaxError:
        raise _bad("malformed Via") from None
    for key, name in (("from", "From"), ("to", "To")):
        try:
            NameAddr.parse(first[key])
        except SipSyntaxError:
            raise _bad(f"malformed {name}") from None
    call_id = first["call-id"]
    if not call_id or " " in call_id or "\t" in call_id:
        raise _bad("malformed Call-ID")
    try:
        cseq = parse_cseq(first["cseq"])
    except SipSyntaxError:
        raise _bad("malformed CSeq") from None
    max_forwards = first.get("max-forwards")
    if max_forwards is not None and not (
        max_forwards.isascii() and max_forwards.isdigit() and len(max_forwards) <= 3
    ):
        raise _bad("malformed Max-Forwards")
    return cseq


def _body(headers: Headers, rest: bytes) -> bytes:
    length_text = headers.get("Content-Length")
    if length_text is None:
        return rest  # a datagram without Content-Length: the body runs to its end (§18.3)
    if not (length_text.isascii() and length_text.isdigit()):
        raise _bad("malformed Content-Length")
    length = int(length_text)
    if length > len(rest):
        raise _bad("body shorter than Content-Length")
    return rest[:length]  # extra bytes after the body in a datagram are ignored (§18.3)


def _parse_request_line(line: str) -> tuple[str, str]:
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise _bad("malformed request line")
    method, uri, version = parts
    if not _TOKEN_RE.fullmatch(method):
        raise _bad("malformed method")
    if version.upper() != "SIP/2.0":
        if _VERSION_RE.fullmatch(version):
            raise SipParseError(505, "Version Not Supported", "only SIP/2.0 is supported")
        raise _bad("malformed request line")
    scheme, colon, _ = uri.partition(":")
    if not colon:
        raise _bad("malformed Request-URI")
    scheme = scheme.lower()
    if scheme in ("sip", "sips"):
        try:
            SipUri.parse(uri)
        except SipSyntaxError:
            raise _bad("malformed Request-URI") from None
    elif scheme != "tel":
        raise SipParseError(416, "Unsupported URI Scheme", "Request-URI scheme not supported")
    return method, uri


def _parse_status_line(line: str) -> tuple[int, str]:
    parts = line.split(" ", 2)
    if len(parts) < 2 or parts[0].upper() != "SIP/2.0":
        raise _bad("malformed status line")
    code = parts[1]
    if len(code) != 3 or not code.isascii() or not code.isdigit() or not 100 <= int(code) <= 699:
        raise _bad("malformed status code")
    return int(code), parts[2] if len(parts) == 3 else ""


def parse_message(data: bytes) -> SipMessage:
    """One SIP message (a datagram, or one message cut from a stream by `StreamFramer`).

    Raises only `SipParseError`: 400 (malformed, missing mandatory header, CSeq mismatch,
    truncated body, non-UTF-8 header bytes), 505 (request with another SIP version), 416 (a
    Request-URI scheme other than sip/sips/tel), 513 (over MAX_MESSAGE_SIZE bytes or MAX_HEADERS
    header lines). For responses the status is meaningless: a bad response is dropped.
    """
    try:
        return _parse_message(data)
    except SipParseError:
        raise
    except Exception as exc:  # the promise: nothing else escapes, whatever the bytes
        raise _bad("unparseable message") from exc


def _parse_message(data: bytes) -> SipMessage:
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError(513, "Message Too Large", "message larger than the limit")
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")  # CRLFs before the start line are ignored (§7.5)
    head_bytes, rest = _split_head(data)
    try:
        head = head_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("header bytes are not UTF-8") from None
    if _CONTROL_RE.search(head):
        raise _bad("control character in the header section")
    if head.count("\r") != head.count("\r\n"):  # a lone CR could split a line downstream
        raise _bad("bare CR in the header section")
    lines = _header_lines(head)
    start = lines[0]
    if start.startswith("SIP/") or start[:4].upper() == "SIP/":
        status, reason = _parse_status_line(start)
        headers = _parse_headers(lines[1:])
        _check_headers(headers)
        return SipResponse(status, reason, headers, _body(headers, rest))
    method, uri = _parse_request_line(start)
    headers = _parse_headers(lines[1:])
    cseq = _check_headers(headers)
    if cseq[1] != method:
        raise _bad("CSeq method does not match the request method")
    return SipRequest(method, uri, headers, _body(headers, rest))


_PARTIAL_HEADERS = frozenset(("via", "from", "to", "call-id", "cseq"))


def partial_request_info(data: bytes) -> SipRequest | None:
    """Whatever Via/From/To/Call-ID/CSeq a broken request has, to answer it with an error.

    Needs a request line with a method and a parseable top Via (where the answer goes);
    returns None otherwise, or for responses.
    """
    try:
        text = data[:MAX_MESSAGE_SIZE].lstrip(b"\r\n").decode("utf-8", errors="replace")
        end = text.find("\r\n\r\n")
        if end < 0:
            end = text.find("\n\n")
        head = text if end < 0 else text[:end]
        lines = _LINE_SPLIT_RE.split(head)
        first = lines[0].split()
        if len(first) < 2 or first[0].upper().startswith("SIP/"):
            return None
        method, uri = first[0], first[1]
        if not _TOKEN_RE.fullmatch(method):
            return None
        headers = Headers()
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and len(headers):
                key, printed, value = headers._lines[-1]
                headers._lines[-1] = (key, printed, f"{value} {line.strip()}")
                continue
            name, colon, value = line.partition(":")
            known = _NAMES.get(name.strip().lower())
            if colon and known is not None and known[0] in _PARTIAL_HEADERS:
                headers._lines.append((known[0], known[1], _CONTROL_RE.sub("", value).strip()))
        vias = headers.get_all("Via")
        if not vias:
            return None
        Via.parse(vias[0])
        return SipRequest(method, uri, headers, b"")
    except Exception:  # best effort only
        return None


# ---- stream framing -----------------------------------------------------------------------------

_CONTENT_LENGTH_RE = re.compile(
    rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.I | re.M
)


class StreamFramer:
    """Cuts a TCP/TLS byte stream into messages by Content-Length (RFC 3261 §18.3).

    CRLF keep-alives between messages (RFC 5626 §4.4.1) are skipped. A message without
    Content-Length has an empty body. A Content-Length over MAX_MESSAGE_SIZE raises
    SipParseError(413), a header section that never ends SipParseError(513); the stream cannot
    be resynchronised after either, so the caller should close the connection. Messages complete
    before the error in the same data are still returned, and the error raised by the next call.

    The search for the end of a head resumes where the last read left it, and a head once
    found is not searched again while its body arrives: a peer sending a byte at a time costs
    work in proportion to what it sends (`bytes_scanned` counts the search's work).
    """

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buffer = bytearray()
        self.max_message_size = max_message_size
        self._error: SipParseError | None = None
        self._scanned = 0  # bytes at the buffer's start already searched for the head's end
        self._total: int | None = None  # the whole message's length, once its head is whole
        self.bytes_scanned = 0

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise self._error
        messages: list[bytes] = []
        try:
            self._cut(data, messages)
        except SipParseError as exc:
            if not messages:
                raise
            # Whether a complete message is handled must not depend on how TCP cut the stream.
            self._error = exc
        return messages

    def _cut(self, data: bytes, messages: list[bytes]) -> None:
        self._buffer += data
        buffer = self._buffer
        while True:
            if self._total is None:
                self._total = self._find_head(buffer)
                if self._total is None:
                    return
            total = self._total
            if len(buffer) < total:
                return
            messages.append(bytes(buffer[:total]))
            del buffer[:total]
            self._total = None
            self._scanned = 0

    def _find_head(self, buffer: bytearray) -> int | None:
        """The length of the message whose head the buffer now holds whole, or None."""
        skip = 0
        while buffer[skip : skip + 2] == b"\r\n" or buffer[skip : skip + 1] == b"\n":
            skip += 2 if buffer[skip : skip + 1] == b"\r" else 1
        if skip:
            del buffer[:skip]
            self._scanned = max(0, self._scanned - skip)
        start = max(0, self._scanned - 3)  # "\r\n\r\n" may straddle the last read
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            self.bytes_scanned += len(buffer) - start
            self._scanned = len(buffer)
            if len(buffer) > self.max_message_size:
                raise SipParseError(513, "Message Too Large", "header section too long")
            return None
        self.bytes_scanned += end + 4 - start
        self._scanned = end + 4
        match = _CONTENT_LENGTH_RE.search(bytes(buffer[:end]))
        length = 0
        if match is not None:
            text = match.group(1)
            if not text.isdigit():
                raise _bad("malformed Content-Length")
            length = int(text)
            if length > self.max_message_size:
                raise SipParseError(413, "Request Entity Too Large", "Content-Length too large")
        if end + 4 > self.max_message_size and len(buffer) < end + 4 + length:
            raise SipParseError(513, "Message Too Large", "header section too long")
        return end + 4 + length


# ---- responses and identifiers ------------------------------------------------------------------

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    430: "Flow Failed",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
}

_TAG_RE = re.compile(r";\s*tag\s*=", re.IGNORECASE)


def default_reason(status: int) -> str:
    """The RFC phrase for a status, else the generic one of its class."""
    phrase = REASON_PHRASES.get(status)
    if phrase is not None:
        return phrase
    return {1: "Trying", 2: "OK", 3: "Redirection", 4: "Client Error", 5: "Server Error"}.get(
        status // 100, "Global Failure"
    )


def _with_to_tag(to: str, tag: str) -> str:
    try:
        address = NameAddr.parse(to)
    except SipSyntaxError:
        # The request is broken (partial_request_info): add the tag textually if it has none.
        return to if _TAG_RE.search(to) else f"{to};tag={tag}"
    if address.tag is not None:
        return to
    return f"{to};tag={tag}"


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> SipResponse:
    """A response to `request` as RFC 3261 §8.2.6 builds it.

    Copies every Via line (in order), From, To (adding `;tag=to_tag` when To has no tag yet),
    Call-ID and CSeq; for 100 Trying also Timestamp (§8.2.6.1). Then `headers` in order, and
    Content-Type when given.
    """
    out = Headers()
    lines = out._lines
    for key, printed, value in request.headers._lines:
        if key == "via" or key == "from" or key == "call-id" or key == "cseq":
            lines.append((key, printed, value))
        elif key == "to":
            lines.append((key, printed, _with_to_tag(value, to_tag) if to_tag else value))
        elif key == "timestamp" and status == 100:
            lines.append((key, printed, value))
    for name, value in headers:
        out.add(name, value)
    if content_type is not None:
        out.set("Content-Type", content_type)
    return SipResponse(status, reason or default_reason(status), out, body)


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie plus 64 random bits."""
    return "z9hG4bK" + random_hex(8)


def new_tag() -> str:
    return random_hex(6)


def new_call_id(host: str) -> str:
    return f"{random_hex(12)}@{host}"
