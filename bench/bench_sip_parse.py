"""SIP parsing speed: messages per second on one core, against the floor of any parser.

Parses a typical INVITE with SDP (as SIPp or a PBX sends it) and its 200 OK with
`spg_media.sip.message.parse_message`, and as a same-run baseline only splits the same bytes into
lines and each header line at its colon (`bytes.split(b"\\r\\n")` + `partition(b":")`), which
any parser must at least do. The ratio says what the full validation (start line, mandatory
headers, Via/From/To/CSeq/Request-URI parsing, Content-Length) costs over that floor. Also times
`to_bytes()` of the parsed message and `make_response`.

Run: .venv/bin/python bench/bench_sip_parse.py   (about 10 s)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from spg_media.sip.message import SipRequest, make_response, parse_message

SDP = (
    b"v=0\r\n"
    b"o=user1 53655765 2353687637 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)

INVITE = (
    b"INVITE sip:pay@192.0.2.20:5080;x-spg-transaction=sbx-4990-EUR-1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bK-kamailio-1;rport=5060;received=192.0.2.5\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-524287-1---a7c1;rport\r\n"
    b"Record-Route: <sip:192.0.2.5;lr;ftag=as5f3a1;did=e1c.b2>\r\n"
    b"Max-Forwards: 69\r\n"
    b'From: "Customer 600100" <sip:600100@pbx.example.com>;tag=as5f3a1\r\n'
    b"To: <sip:pay@spg.example.com>\r\n"
    b"Contact: <sip:600100@192.0.2.10:5060>\r\n"
    b"Call-ID: 4a6b1c2d3e4f5a6b7c8d9e0f@192.0.2.10\r\n"
    b"CSeq: 102 INVITE\r\n"
    b"User-Agent: Asterisk PBX 18.10.0\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, SUBSCRIBE, NOTIFY, INFO\r\n"
    b"Supported: replaces, timer\r\n"
    b"Referred-By: <sip:agent7@pbx.example.com>\r\n"
    b"X-SPG-Transaction: sbx-4990-EUR-1\r\n"
    b"X-SPG-Return-To: sip:agent7@pbx.example.com\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)


def _ok() -> bytes:
    request = parse_message(INVITE)
    assert isinstance(request, SipRequest)
    answer = SDP.replace(b"192.0.2.10", b"192.0.2.20").replace(b"0 8 101", b"0 101")
    return make_response(
        request,
        200,
        to_tag="7f3e2a1b9c",
        headers=[("Contact", "<sip:spg@192.0.2.20:5080>"), ("Allow", "INVITE, ACK, BYE")],
        body=answer,
        content_type="application/sdp",
    ).to_bytes()


OK = _ok()


def baseline(data: bytes) -> int:
    """The floor: cut into lines and split each header at its colon, nothing else."""
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    count = 0
    for line in lines[1:]:
        _, _, value = line.partition(b":")
        count += len(value.strip())
    return count


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second over about `seconds`, best of three runs."""
    calls = 1000
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    calls = max(1000, int(calls * (seconds / 3) / max(elapsed, 1e-9)))
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = max(best, calls / (time.perf_counter() - start))
    return best


def main() -> None:
    print(f"$ {sys.executable} {' '.join(sys.argv)}")
    print(f"INVITE with SDP: {len(INVITE)} bytes; 200 OK with SDP: {len(OK)} bytes")
    parsed = parse_message(INVITE)
    assert isinstance(parsed, SipRequest)
    rows = [
        ("INVITE  parse_message", lambda: parse_message(INVITE), lambda: baseline(INVITE)),
        ("200 OK  parse_message", lambda: parse_message(OK), lambda: baseline(OK)),
    ]
    print(f"{'':24}{'msgs/s':>12}{'baseline/s':>14}{'ratio':>9}")
    for name, fn, base in rows:
        ours = rate(fn, 2.0)
        floor = rate(base, 1.0)
        print(f"{name:24}{ours:12,.0f}{floor:14,.0f}{floor / ours:8.1f}x")
    print(f"{'INVITE  to_bytes':24}{rate(parsed.to_bytes, 1.0):12,.0f}")
    print(f"{'INVITE  make_response':24}{rate(lambda: make_response(parsed, 100), 1.0):12,.0f}")
    print("ratio = baseline rate / parser rate: how much slower than splitting lines it is")


if __name__ == "__main__":
    main()
