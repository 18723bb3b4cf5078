"""Targets for the SIP side: messages, the stream framer, URIs and header values, session-timer
headers, INFO key presses, and the transaction layer fed sequences of messages."""

from __future__ import annotations

import contextlib
import random

from fuzz.harness import Finding, Reader, expect, target
from spg_media.dtmf.sipinfo import parse_info_dtmf
from spg_media.sip import session_timer
from spg_media.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    StreamFramer,
    make_response,
    parse_message,
    partial_request_info,
)
from spg_media.sip.transaction import (
    Address,
    RequestReceived,
    State,
    TransactionLayer,
)
from spg_media.sip.uri import NameAddr, SipSyntaxError, SipUri, Via, parse_cseq, split_header_list

# parse_message's documented answers to a broken message
PARSE_STATUSES = frozenset((400, 416, 505, 513))
FRAMER_STATUSES = frozenset((400, 413, 513))


def _without_length(message: SipRequest | SipResponse) -> list[tuple[str, str]]:
    return [(n.lower(), v) for n, v in message.headers.items() if n.lower() != "content-length"]


def _check_parsed(message: SipRequest | SipResponse) -> None:
    """What parse_message guarantees of a parsed message, and that it prints back the same."""
    # "A parsed message is guaranteed to have parseable Via (every one), From, To, Call-ID and
    # CSeq (whose method matches, for requests), so the properties do not fail on it."
    vias = message.via
    expect(bool(vias), "a parsed message without a Via")
    _ = (message.top_via, message.branch, message.from_, message.to, message.call_id)
    _ = message.content_type
    number, method = message.cseq
    expect(0 <= number < 2**31, "CSeq number out of range")
    if isinstance(message, SipRequest):
        expect(method == message.method, "CSeq method differs from the request's")
    printed = message.to_bytes()
    try:
        again = parse_message(printed)
    except SipParseError as exc:
        raise Finding(f"a parsed message does not parse once printed: {exc}") from exc
    expect(type(again) is type(message), "printed message changed kind")
    expect(again.body == message.body, "printed message changed its body")
    expect(_without_length(again) == _without_length(message), "printed headers differ")
    if isinstance(message, SipRequest):
        assert isinstance(again, SipRequest)
        expect((again.method, again.uri) == (message.method, message.uri), "request line differs")
    else:
        assert isinstance(again, SipResponse)
        expect(again.status == message.status, "status differs")


@target("sip_message", dictionary="sip.dict")
def sip_message(data: bytes) -> None:
    """`parse_message` on one datagram: a message, or SipParseError with a documented status;
    a parsed message keeps the module's guarantees (every Via, From, To, CSeq parse), prints
    back to the same message, and our response to a parsed request parses. Also
    `partial_request_info` (never raises) and the error response the UA builds from it."""
    partial = partial_request_info(data)
    if partial is not None:
        expect(isinstance(partial, SipRequest), "partial_request_info returned a non-request")
        partial.to_bytes()
    try:
        message = parse_message(data)
    except SipParseError as exc:
        expect(exc.status in PARSE_STATUSES, f"undocumented status {exc.status}")
        return
    _check_parsed(message)
    if isinstance(message, SipRequest):
        response = make_response(message, 200, to_tag="fuzztag", body=b"x", content_type="a/b")
        try:
            answer = parse_message(response.to_bytes())
        except SipParseError as exc:
            raise Finding(f"our response to a parsed request does not parse: {exc}") from exc
        expect(isinstance(answer, SipResponse), "our response parsed as a request")


def _frame(chunks: list[bytes], max_size: int | None = None) -> tuple[list[bytes], int, int | None]:
    """(messages, bytes pending, error status or None) of a framer fed `chunks`."""
    framer = StreamFramer() if max_size is None else StreamFramer(max_message_size=max_size)
    messages: list[bytes] = []
    try:
        for chunk in [*chunks, b""]:  # the last, empty read shows an error held back
            messages += framer.feed(chunk)
    except SipParseError as exc:
        expect(exc.status in FRAMER_STATUSES, f"undocumented framer status {exc.status}")
        return messages, framer.pending, exc.status
    return messages, framer.pending, None


@target("sip_framer", max_len=8192, dictionary="sip.dict")
def sip_framer(data: bytes) -> None:
    """`StreamFramer.feed` on a TCP/TLS byte stream, whole and cut in random chunks (two bytes
    of the input seed the cuts): the same messages and the same error either way; every message
    cut goes through `parse_message` (SipParseError only). A framer with a small size limit is
    fed the same chunks too (SipParseError only)."""
    reader = Reader(data)
    rng = random.Random(reader.uint(2))
    stream = reader.rest()
    chunks: list[bytes] = []
    at = 0
    while at < len(stream):
        size = rng.choice((1, 2, 3, rng.randint(1, 64), rng.randint(1, 1500)))
        chunks.append(stream[at : at + size])
        at += size
    whole = _frame([stream])
    cut = _frame(chunks)
    expect(whole[0] == cut[0], "chunking changed the messages framed")
    expect(whole[2] == cut[2], "chunking changed the framing error")
    if whole[2] is None:
        expect(whole[1] == cut[1], "chunking changed the bytes held back")
    for message in whole[0]:
        with contextlib.suppress(SipParseError):
            parse_message(message)
    _frame(chunks, max_size=300)


def _check_uri(uri: SipUri) -> None:
    _ = (uri.bare_host, uri.transport, uri.host_port())
    for name in uri.params:
        uri.param(name)


@target("sip_uri", dictionary="sip.dict")
def sip_uri(data: bytes) -> None:
    """The same text as a SIP URI, a name-addr, a Via, a CSeq and a header list: each parser
    returns or raises SipSyntaxError only, and (as the module promises) every parsed value prints
    back as text that parses to a value printing the same, and that a header list (Via,
    Contact) reads as one value."""
    text = data.decode("utf-8", errors="replace")
    split_header_list(text)
    try:
        uri = SipUri.parse(text)
    except SipSyntaxError:
        pass
    else:
        _check_uri(uri)
        printed = str(uri)
        try:
            again = SipUri.parse(printed)
        except SipSyntaxError as exc:
            raise Finding(f"a parsed URI does not parse once printed: {exc}") from exc
        expect(str(again) == printed, "a URI prints differently after a round trip")
    try:
        address = NameAddr.parse(text)
    except SipSyntaxError:
        pass
    else:
        _check_uri(address.uri)
        _ = address.tag
        printed = str(address)
        try:
            again_address = NameAddr.parse(printed)
        except SipSyntaxError as exc:
            raise Finding(f"a parsed name-addr does not parse once printed: {exc}") from exc
        expect(str(again_address) == printed, "a name-addr prints differently after a round trip")
        # Contact, Route, Record-Route are lists: a printed value must stay one element
        expect(split_header_list(printed) == [printed], "a printed name-addr splits in a list")
    try:
        via = Via.parse(text)
    except SipSyntaxError:
        pass
    else:
        _ = (via.sent_by, via.bare_host, via.branch, via.received, via.rport, via.wants_rport)
        _, port = via.response_target()
        expect(0 <= port <= 65535, f"Via response target port {port}")
        printed = str(via)
        try:
            again_via = Via.parse(printed)
        except SipSyntaxError as exc:
            raise Finding(f"a parsed Via does not parse once printed: {exc}") from exc
        expect(str(again_via) == printed, "a Via prints differently after a round trip")
        expect(split_header_list(printed) == [printed], "a printed Via splits in a header list")
        via.apply_source("192.0.2.1", 5062)
        Via.parse(str(via))
    try:
        number, _ = parse_cseq(text)
    except SipSyntaxError:
        pass
    else:
        expect(0 <= number < 2**31, "CSeq number out of range")


_TIMER_HEADERS = ("Supported", "Require", "Session-Expires", "Min-SE")
_REFRESH_STATUSES = (200, 202, 405, 408, 481, 491, 501)


@target("session_timer", dictionary="sip.dict")
def session_timer_target(data: bytes) -> None:
    """RFC 4028 headers: lines of the input are the values of Supported, Require,
    Session-Expires and Min-SE of an INVITE, then of a refresh and of the answer to ours.
    Nothing raises; an accepted interval is never under our minimum."""
    reader = Reader(data)
    status = reader.choice(_REFRESH_STATUSES)
    lines = reader.rest().decode("utf-8", errors="replace").split("\n")
    invite, refresh = Headers(), Headers()
    for index, value in enumerate(lines[:8]):
        (invite if index < 4 else refresh).add(_TIMER_HEADERS[index % 4], value)
    for value in lines:
        parsed = session_timer.parse_session_expires(value)
        if parsed is not None:
            expect(parsed[0] >= 0, "negative Session-Expires")
            expect(parsed[1] in (None, *session_timer.REFRESHERS), "unknown refresher")
    result = session_timer.negotiate(invite, 0.0)
    if isinstance(result, session_timer.TooSmall):
        expect(result.min_se >= session_timer.MIN_SE, "422 with a Min-SE under ours")
        result.response_headers()
        return
    if result is None:
        return
    timer = result
    expect(timer.interval >= session_timer.MIN_SE, "interval under our minimum")
    expect(timer.refresher in session_timer.REFRESHERS, "unknown refresher")
    timer.response_headers()
    timer.refreshed(refresh, 10.0)
    wake = timer.next_wake()
    expect(wake is not None and wake > 10.0, "no wake-up after a refresh")
    assert wake is not None
    timer.refresh_headers()
    timer.refresh_answered(status, refresh, wake)
    timer.due(wake + timer.interval)
    expect(timer.interval >= session_timer.MIN_SE, "interval under our minimum after refreshes")


_INFO_TYPES = (
    "application/dtmf-relay",
    "application/dtmf",
    "Application/DTMF-Relay; charset=UTF-8",
    "application/dtmf;x=1",
    "text/plain",
)


@target("sip_info")
def sip_info(data: bytes) -> None:
    """`parse_info_dtmf` on an INFO body with one of the content types phones send (or a fuzzed
    one): None or one key of 0-9 * # A-D with a duration that is None or a small int; never
    raises."""
    reader = Reader(data)
    choice = reader.byte()
    if choice < 200:
        content_type = _INFO_TYPES[choice % len(_INFO_TYPES)]
    else:
        content_type = reader.chunk().decode("utf-8", errors="replace")
    result = parse_info_dtmf(content_type, reader.rest())
    if result is not None:
        key, duration = result
        expect(len(key) == 1 and key in "0123456789*#ABCD", "not a DTMF key")
        expect(duration is None or 0 <= duration < 10**9, "duration out of range")


# ---- the transaction layer ----------------------------------------------------------------------

_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "UPDATE", "REFER", "NOTIFY")
_OUR_METHODS = ("INVITE", "BYE", "OPTIONS", "REFER", "NOTIFY", "UPDATE", "INFO")
_BRANCHES = ("z9hG4bK-a", "z9hG4bK-b", "z9hG4bK-c", "z9hG4bKa", "1234", "")
_HOSTS = ("127.0.0.1", "pbx.example", "[::1]", "192.0.2.7")
_PORTS = ("", ":5060", ":5080", ":65535", ":1")
_VIA_PARAMS = (
    "",
    ";rport",
    ";rport=5062",
    ";rport=abc",
    ";rport=99999",
    ";rport=\u00b2",
    ";received=192.0.2.9",
    ";rport;received=10.0.0.1",
    ";maddr=192.0.2.1;ttl=1",
)
_STATUSES = (100, 180, 183, 200, 202, 401, 404, 408, 481, 486, 487, 500, 603)
_SOURCES = (
    Address("udp", "127.0.0.1", 5060),
    Address("udp", "192.0.2.7", 5090),
    Address("tcp", "127.0.0.1", 40000),
    Address("tls", "127.0.0.1", 40001),
)
_CALL_IDS = ("call-a@h", "call-b@h", "call-c@h")
_MAX_OPERATIONS = 32


def _request_bytes(reader: Reader, method: str, transport: str) -> bytes:
    branch = reader.choice(_BRANCHES)
    via = f"SIP/2.0/{transport.upper()} {reader.choice(_HOSTS)}{reader.choice(_PORTS)}"
    via += (f";branch={branch}" if branch else "") + reader.choice(_VIA_PARAMS)
    free = reader.chunk()
    if free:  # a fuzzed parameter or value text, kept on one line
        via += free.decode("utf-8", errors="replace").replace("\r", "").replace("\n", "")
    to_tag = reader.choice(("", ";tag=t1", ";tag=t2"))
    call_id = reader.choice(_CALL_IDS)
    number = reader.byte() % 4 + 1
    lines = [
        f"{method} sip:pay@127.0.0.1 SIP/2.0",
        f"Via: {via}",
        "From: <sip:pbx@example>;tag=f1",
        f"To: <sip:pay@127.0.0.1>{to_tag}",
        f"Call-ID: {call_id}",
        f"CSeq: {number} {method}",
        "Max-Forwards: 70",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _apply_source(request: SipRequest, source: Address) -> None:
    """What the UA does before the transaction layer sees a request (RFC 3581, §18.2.1)."""
    vias = request.headers.get_all("Via")
    top = Via.parse(vias[0])
    if top.apply_source(source.host, source.port):
        request.headers.remove("Via")
        for value in [str(top), *vias[1:]]:
            request.headers.add("Via", value)


def _check_outgoing(layer: TransactionLayer) -> None:
    for out in layer.take_outgoing():
        expect(out.address.transport in ("udp", "tcp", "tls"), "unknown transport")
        expect(
            0 <= out.address.port <= 65535,
            f"a message to port {out.address.port}, which no socket can send to",
        )
        try:
            parse_message(out.data)
        except SipParseError as exc:
            raise Finding(
                f"the transaction layer sent a message that does not parse: {exc}"
            ) from exc


@target("sip_transaction", max_len=1024, dictionary="sip.dict")
def sip_transaction(data: bytes) -> None:
    """The transaction layer fed a sequence of up to 32 steps: parseable requests (methods,
    branches, Via sent-by/rport/received and CSeq from the input, plus a fuzzed Via parameter),
    responses to our requests, our answers, our own requests, time passing. Nothing raises;
    everything it sends parses and goes to a port a socket can send to; our client
    transactions all end within 64*T1."""
    reader = Reader(data)
    layer = TransactionLayer()
    now = 0.0
    received: list[SipRequest] = []
    sent: list[SipRequest] = []
    for _ in range(_MAX_OPERATIONS):
        if not reader.remaining:
            break
        operation = reader.byte() % 5
        if operation == 0:  # a request arrives
            source = reader.choice(_SOURCES)
            wire = _request_bytes(reader, reader.choice(_METHODS), source.transport)
            try:
                parsed = parse_message(wire)
            except SipParseError:
                continue
            assert isinstance(parsed, SipRequest)
            _apply_source(parsed, source)
            layer.receive_request(parsed, source, now)
        elif operation == 1 and sent:  # a response to one of our requests, or a stray one
            request = sent[reader.byte() % len(sent)]
            status = reader.choice(_STATUSES)
            response = make_response(request, status, to_tag=reader.choice(("r1", "r2")))
            try:
                parsed_response = parse_message(response.to_bytes())
            except SipParseError as exc:
                raise Finding(f"a response to our request does not parse: {exc}") from exc
            assert isinstance(parsed_response, SipResponse)
            layer.receive_response(parsed_response, now)
        elif operation == 2 and received:  # we answer a request
            request = received[reader.byte() % len(received)]
            layer.respond(
                request, make_response(request, reader.choice(_STATUSES), to_tag="u"), now
            )
        elif operation == 3:  # we send a request
            destination = reader.choice(_SOURCES)
            wire = _request_bytes(reader, reader.choice(_OUR_METHODS), destination.transport)
            try:
                ours = parse_message(wire)
            except SipParseError:
                continue
            assert isinstance(ours, SipRequest)
            ours.headers.set("Via", f"SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-o{len(sent)}")
            layer.send_request(ours, destination, now)
            sent.append(ours)
        else:  # time passes
            now += reader.byte() * 0.25
            layer.handle_timer(now)
        _check_outgoing(layer)
        for event in layer.take_events():
            if isinstance(event, RequestReceived) and len(received) < 16:
                received.append(event.request)
        wake = layer.next_wake()
        expect(wake is None or wake >= 0, "a timer in the past")
    now += 64 * layer.t1 + 1
    layer.handle_timer(now)
    _check_outgoing(layer)
    layer.take_events()
    # A ringing INVITE of ours waits for its answer as long as its TU lets it (timer B stops
    # on a provisional); the TU ends it with CANCEL and then `abandon`. Every other client
    # transaction ends by itself.
    for tx in list(layer.client.values()):
        if tx.is_invite and tx.state is State.PROCEEDING:
            layer.abandon(tx.request)
    expect(not layer.client, "a client transaction outlived 64*T1")
