#!/usr/bin/env python3
"""Write the seed corpus, fuzz/corpus/<target>/: small, valid (or nearly valid) inputs of each
kind the node meets, from which the fuzzer starts. Run it again after changing an input layout
of a target; files it does not write (regression inputs, `regress-*`) are left alone.

    python fuzz/make_corpus.py

No card data beyond the sandbox's test cards; SRTP keys are fixed made-up bytes.
"""

from __future__ import annotations

import base64
import json
import math
import random
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fuzz.harness import CORPUS_DIR  # noqa: E402
from spg_media.payment.signing import sign_handoff  # noqa: E402
from spg_media.rtp.g711 import encode  # noqa: E402
from spg_media.rtp.packet import build_rtp  # noqa: E402
from spg_media.rtp.rtcp import RtcpSession  # noqa: E402
from spg_media.sip.sdp import build_offer  # noqa: E402

CRLF = "\r\n"
SEEDS: dict[str, dict[str, bytes]] = {}


def seed(target: str, name: str, data: bytes | bytearray | str) -> None:
    SEEDS.setdefault(target, {})[name] = data.encode() if isinstance(data, str) else bytes(data)


def key_text(length: int, fill: int) -> str:
    return base64.b64encode(bytes((fill + i) % 256 for i in range(length))).decode()


KEY_80 = key_text(30, 1)
KEY_GCM = key_text(28, 7)

# ---- SIP ----------------------------------------------------------------------------------------

SDP_OFFER = build_offer(local_address="192.0.2.10", local_port=49170, session_id=1, version=1)


def sip(start: str, headers: list[str], body: bytes = b"", length: bool = True) -> bytes:
    lines = [start, *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return (CRLF.join(lines) + CRLF + CRLF).encode() + body


def dialog_headers(method: str, branch: str = "z9hG4bK776asdhds", number: int = 1) -> list[str]:
    return [
        f"Via: SIP/2.0/UDP pbx.example.com:5060;branch={branch};rport",
        "Max-Forwards: 70",
        "To: <sip:pay@spg.example>",
        'From: "Agent 7" <sip:agent7@pbx.example.com>;tag=1928301774',
        "Call-ID: a84b4c76e66710@pbx.example.com",
        f"CSeq: {number} {method}",
        "Contact: <sip:agent7@pbx.example.com:5060>",
    ]


INVITE = sip(
    "INVITE sip:pay@spg.example;x-spg-transaction=sbx-4990-EUR-1 SIP/2.0",
    [
        *dialog_headers("INVITE"),
        "X-SPG-Transaction: sbx-4990-EUR-1",
        "X-SPG-Return-To: sip:agent7@pbx.example.com",
        "Referred-By: <sip:agent7@pbx.example.com>",
        "Supported: timer, replaces",
        "Session-Expires: 1800;refresher=uac",
        "Min-SE: 90",
        "Content-Type: application/sdp",
    ],
    SDP_OFFER,
)
seed("sip_message", "invite-sdp", INVITE)
seed(
    "sip_message",
    "invite-compact-folded",
    sip(
        "INVITE sips:pay@[2001:db8::1]:5061;transport=tls SIP/2.0",
        [
            "v: SIP/2.0/TLS [2001:db8::9]:5071;branch=z9hG4bKa, "
            "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKb",
            "v: SIP/2.0/TCP host.example (a comment);branch=z9hG4bKc;received=10.0.0.2",
            'f: "Smith, Bob \\"B\\"" <sip:bob@example.com?Subject=a%20b>;tag=x',
            "t: sip:pay@spg.example;user=phone",
            "i: 1234@host",
            "CSeq: 2 INVITE",
            "m: <sip:bob@10.0.0.1;transport=tcp>;q=0.7, <sips:bob@example.com>",
            "Subject: a folded",
            "\tvalue over lines",
            "k: timer",
            "c: application/sdp",
        ],
        SDP_OFFER,
    ),
)
seed(
    "sip_message",
    "response-200",
    sip(
        "SIP/2.0 200 OK",
        [*dialog_headers("INVITE"), "Record-Route: <sip:10.0.0.1;lr>", "Require: timer"],
    ),
)
seed(
    "sip_message",
    "response-100-no-length",
    sip("SIP/2.0 100 Trying", dialog_headers("INVITE"), length=False),
)
seed(
    "sip_message", "bye", sip("BYE sip:spg@10.0.0.5:5080 SIP/2.0", dialog_headers("BYE", number=2))
)
seed("sip_message", "ack", sip("ACK sip:spg@10.0.0.5:5080 SIP/2.0", dialog_headers("ACK")))
seed("sip_message", "cancel", sip("CANCEL sip:pay@spg.example SIP/2.0", dialog_headers("CANCEL")))
seed(
    "sip_message",
    "options-lf",
    sip("OPTIONS sip:spg@10.0.0.5 SIP/2.0", dialog_headers("OPTIONS")).replace(b"\r\n", b"\n"),
)
seed(
    "sip_message",
    "info-dtmf",
    sip(
        "INFO sip:spg@10.0.0.5 SIP/2.0",
        [*dialog_headers("INFO", number=3), "Content-Type: application/dtmf-relay"],
        b"Signal=5\r\nDuration=160\r\n",
    ),
)
seed(
    "sip_message",
    "notify-sipfrag",
    sip(
        "NOTIFY sip:spg@10.0.0.5 SIP/2.0",
        [
            *dialog_headers("NOTIFY", number=4),
            "Event: refer",
            "Subscription-State: active",
            "Content-Type: message/sipfrag;version=2.0",
        ],
        b"SIP/2.0 200 OK\r\n",
    ),
)
seed(
    "sip_message",
    "tel-uri",
    sip("INVITE tel:+34-91-555-0100;phone-context=x SIP/2.0", dialog_headers("INVITE")),
)
seed(
    "sip_message",
    "broken-cseq",
    sip("INVITE sip:pay@spg.example SIP/2.0", dialog_headers("INVITE")).replace(
        b"CSeq: 1 INVITE", b"CSeq: x"
    ),
)
seed(
    "sip_message",
    "broken-version",
    sip("INVITE sip:pay@spg.example SIP/3.0", dialog_headers("INVITE")),
)

FRAMER_PREFIX = b"\x12\x34"
seed(
    "sip_framer", "two-messages", FRAMER_PREFIX + INVITE + b"\r\n\r\n" + SEEDS["sip_message"]["bye"]
)
seed(
    "sip_framer",
    "keepalive-compact-length",
    b"\x00\x07\r\n\r\n" + SEEDS["sip_message"]["info-dtmf"].replace(b"Content-Length", b"l"),
)
seed("sip_framer", "partial", b"\x01\x00" + INVITE[: len(INVITE) // 2])
seed("sip_framer", "lf-only", b"\x00\x01\n\n" + SEEDS["sip_message"]["options-lf"])

for index, text in enumerate(
    [
        "sip:pay@spg.example;x-spg-transaction=sbx-4990-EUR-1",
        "sips:alice:secret@[2001:db8::1]:5061;transport=tls;lr?Subject=a%20b&X-A=1",
        "sip:sips%3Auser%40example.com@example.net;maddr=239.255.255.1;ttl=15",
        "tel:+1-201-555-0123;phone-context=example.com",
        "mailto:someone@example.com",
        '"Agent \\"7\\"" <sip:agent7@pbx.example.com>;tag=1928301774;x-a="b;c"',
        "Bob <sip:bob@biloxi.com>",
        "sip:bob@biloxi.com;tag=abc",
        "SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776asdhds;rport;received=10.0.0.1",
        "SIP / 2.0 / TCP [2001:db8::9] : 5070 ;branch=z9hG4bKb (comment)",
        "314159 INVITE",
        '<sip:a@h>;q=0.7, "x, y" <sip:b@h>, sip:c@h',
    ]
):
    seed("sip_uri", f"value-{index:02}", text)

for name, text in {
    "uac": "timer\n\nSession-Expires: 1800;refresher=uac\n90\n\n\n1800\n",
    "uas": "timer, 100rel\ntimer\n600;refresher=uas\n120;x=1\ntimer\n\n300;refresher=uac\n",
    "small": "timer\n\n60\n90\n",
}.items():
    seed("session_timer", name, b"\x00" + text.replace("Session-Expires: ", "").encode())

seed("sip_info", "relay", b"\x00Signal=5\r\nDuration=160\r\n")
seed("sip_info", "relay-star", b"\x02signal= 10\nduration = 250\n")
seed("sip_info", "dtmf", b"\x01#")
seed("sip_info", "dtmf-code", b"\x06" + b"11")
seed("sip_info", "other-type", b"\xc8\x18application/dtmf-relay;a=1Signal=A\n")


class TransactionScript:
    """Encodes operations in the layout `fuzz.targets.sip.sip_transaction` reads."""

    METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "UPDATE", "REFER", "NOTIFY")
    OURS = ("INVITE", "BYE", "OPTIONS", "REFER", "NOTIFY", "UPDATE", "INFO")

    def __init__(self) -> None:
        self.data = bytearray()

    def request(
        self,
        source: int,
        method: str,
        branch: int = 0,
        host: int = 0,
        port: int = 1,
        params: int = 1,
        free: bytes = b"",
        to_tag: int = 0,
        call: int = 0,
        number: int = 1,
    ) -> TransactionScript:
        self.data += bytes((0, source, self.METHODS.index(method), branch, host, port, params))
        self.data += bytes((len(free),)) + free + bytes((to_tag, call, number - 1))
        return self

    def answer(self, index: int, status: int) -> TransactionScript:
        statuses = (100, 180, 183, 200, 202, 401, 404, 408, 481, 486, 487, 500, 603)
        self.data += bytes((2, index, statuses.index(status)))
        return self

    def send(self, destination: int, method: str, branch: int = 0) -> TransactionScript:
        self.data += bytes((3, destination, self.OURS.index(method), branch, 0, 1, 0, 0, 0, 0, 0))
        return self

    def response(self, index: int, status: int, tag: int = 0) -> TransactionScript:
        statuses = (100, 180, 183, 200, 202, 401, 404, 408, 481, 486, 487, 500, 603)
        self.data += bytes((1, index, statuses.index(status), tag))
        return self

    def wait(self, quarters: int) -> TransactionScript:
        self.data += bytes((4, quarters))
        return self


seed(
    "sip_transaction",
    "invite-200-ack-bye",
    TransactionScript()
    .request(0, "INVITE")
    .wait(1)
    .request(0, "INVITE")
    .answer(0, 180)
    .answer(0, 200)
    .wait(2)
    .request(0, "ACK", to_tag=1)
    .request(0, "BYE", branch=1, to_tag=1, number=2)
    .answer(1, 200)
    .wait(200)
    .data,
)
seed(
    "sip_transaction",
    "invite-cancel-487",
    TransactionScript()
    .request(2, "INVITE", params=0)
    .request(2, "CANCEL", params=0)
    .answer(0, 487)
    .request(2, "ACK", params=0)
    .wait(40)
    .data,
)
seed(
    "sip_transaction",
    "our-requests",
    TransactionScript()
    .send(0, "REFER")
    .response(0, 100)
    .response(0, 202)
    .send(1, "INVITE", 1)
    .wait(3)
    .response(1, 486)
    .response(1, 486)
    .send(3, "BYE")
    .wait(255)
    .data,
)
seed(
    "sip_transaction",
    "rport-received",
    TransactionScript()
    .request(1, "OPTIONS", host=3, params=7)
    .answer(0, 200)
    .request(0, "INFO", params=6, free=b";x=1")
    .answer(1, 481)
    .wait(255)
    .data,
)

# ---- media --------------------------------------------------------------------------------------

seed("sdp", "plain", SDP_OFFER)
seed(
    "sdp",
    "savp-two-suites",
    build_offer(
        local_address="192.0.2.10",
        local_port=49170,
        session_id=2,
        version=2,
        crypto_lines=[
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_80}|2^31|1:4",
            f"2 AEAD_AES_128_GCM inline:{KEY_GCM}",
        ],
    ),
)
seed(
    "sdp",
    "video-and-audio-ipv6-mux",
    CRLF.join(
        [
            "v=0",
            "o=- 3 3 IN IP6 2001:db8::10",
            "s=-",
            "c=IN IP6 2001:db8::10",
            "t=0 0",
            "m=video 51372 RTP/AVP 99",
            "a=rtpmap:99 h263-1998/90000",
            "m=audio 49170 RTP/AVP 96 8 100",
            "a=rtpmap:96 PCMU/8000",
            "a=rtpmap:100 telephone-event/8000",
            "a=fmtp:100 0-15",
            "a=ptime:30",
            "a=maxptime:40",
            "a=rtcp-mux",
            "a=mid:a1",
            "a=sendrecv",
            "",
        ]
    ),
)
seed(
    "sdp",
    "hold-rtcp-attr",
    CRLF.join(
        [
            "v=0",
            "o=- 4 4 IN IP4 0.0.0.0",
            "s=-",
            "c=IN IP4 0.0.0.0",
            "t=0 0",
            "a=sendonly",
            "m=audio 49170/2 RTP/AVPF 0",
            "a=rtcp:53020 IN IP4 192.0.2.11",
            "m=audio 0 RTP/SAVP 8",
            "",
        ]
    ),
)
seed(
    "sdp",
    "savpf-wsh",
    SEEDS["sdp"]["plain"].replace(b"RTP/AVP", b"RTP/SAVPF")
    + f"a=crypto:5 AES_CM_128_HMAC_SHA1_32 inline:{KEY_80} WSH=256 -x\r\n".encode(),
)

RTP_PACKET = build_rtp(0, 1000, 160000, 0x01020304, bytes(range(160)))
for name, (choice, lines) in {
    "aes80-mki-lifetime": (0, [f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_80}|2^20|1:4"]),
    "aes32-params": (
        1,
        [f"2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_80} FEC_ORDER=FEC_SRTP WSH=128 -x"],
    ),
    "gcm-and-refused": (
        1,
        [
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_80} KDR=1",
            f"3 AEAD_AES_128_GCM inline:{KEY_GCM}",
        ],
    ),
    "filtered-suite": (
        2,
        [
            f"1 AEAD_AES_128_GCM inline:{KEY_GCM}",
            f"2 AES_CM_128_HMAC_SHA1_80 inline:{KEY_80}|1048576",
        ],
    ),
}.items():
    seed("sdes", name, bytes((choice,)) + "\n".join(lines).encode() + b"\0" + RTP_PACKET)

seed("rtp_packet", "pcmu", RTP_PACKET)
seed(
    "rtp_packet",
    "event-marker",
    build_rtp(101, 7, 8000, 9, struct.pack("!BBH", 5, 10, 160), marker=True),
)
seed(
    "rtp_packet",
    "csrc-extension-padding",
    bytes((0xB2, 0x08))
    + struct.pack("!HII", 5, 1, 2)
    + struct.pack("!II", 3, 4)
    + struct.pack("!HH", 0xBEDE, 1)
    + b"\x10\xaa\x00\x00"
    + b"payload"
    + b"\x00\x00\x03",
)
seed("rtp_packet", "rtcp-on-rtp-port", bytes((0x80, 0xC9, 0, 1)) + bytes(4))


def rtcp_seed(ops: list[tuple[int, int, int, int]], compound: bytes) -> bytes:
    out = bytearray((len(ops),))
    for ssrc_index, sequence, timestamp, step in ops:
        out += bytes((ssrc_index,)) + struct.pack("!HI", sequence, timestamp) + bytes((step,))
    return bytes(out) + compound


peer = RtcpSession(0x22222222, 0.0, rng=random.Random(3), cname="peer")
for i in range(5):
    peer.rtp_received(0x11111111, 500 + i, 160 * i, i * 0.02)
    peer.rtp_sent(160 * i, 160, i * 0.02)
SR = peer.report(10.0, 1_700_000_010.0) or b""
seed("rtcp", "sr-sdes", rtcp_seed([(0, 100 + i, 160 * i, 21) for i in range(4)], SR))
seed(
    "rtcp",
    "rr-bye",
    rtcp_seed([(1, 65535, 0, 20), (1, 0, 160, 21)], peer.bye(12.0, 1_700_000_012.0, "done")),
)
seed(
    "rtcp",
    "app-padded",
    rtcp_seed(
        [],
        struct.pack("!BBHI", 0x80, 201, 1, 7)
        + struct.pack("!BBHI4s", 0xA1, 204, 3, 7, b"name")
        + b"\x00\x00\x00\x04",
    ),
)

# rtp_session: records of 8 bytes (what: flags, sequence step, timestamp jump, payload size,
# content, offset, time step in quarter milliseconds, SSRC and RTCP type).
SESSION_TICK = bytes((2, 0, 0, 0, 0, 0, 0, 0))
SESSION_HOT = bytes((3, 0, 0, 0, 0, 0, 0, 0))


def session_packet(
    flags: int = 0,
    step: int = 1,
    jump: int = 0,
    size: int = 0,
    content: int = 0x20,
    offset: int = 0,
    quarter_ms: int = 80,
) -> bytes:
    return bytes((flags, step & 0xFF, jump, size, content, offset, quarter_ms, 0))


def keyed(keys: str, packets: int = 5, hot: bool = False) -> bytes:
    """Each key as `packets` 20 ms packets of its tone then three of noise, a tick after each
    (and a pass between ticks, `hot`)."""
    out = bytearray()
    for key in keys:
        index = "0123456789*#ABCD".index(key)
        for n in range(packets):
            out += session_packet(content=0x10 | index, offset=n * 8)
            out += (SESSION_HOT if hot else b"") + SESSION_TICK
        for _ in range(3):
            out += session_packet() + SESSION_TICK
    return bytes(out)


seed("rtp_session", "keyed-card", keyed("4111"))
seed("rtp_session", "keyed-with-passes", keyed("93#", hot=True))
seed(
    "rtp_session",
    "reordered-repeated-late",
    session_packet(content=0x13)
    + session_packet(step=2, content=0x13, offset=16)
    + session_packet(step=-1, content=0x13, offset=8)
    + session_packet(step=0, content=0x13, offset=8)
    + SESSION_TICK
    + session_packet(step=-120)
    + session_packet(step=3)
    + SESSION_TICK
    + session_packet(step=-2)
    + SESSION_TICK,
)
seed(
    "rtp_session",
    "stranger-then-relay-port",
    session_packet(flags=0x08, content=0x15)  # from another address
    + session_packet(flags=0x04, content=0x15)  # the offered address, another port: latched
    + session_packet(content=0x15, offset=8)  # the offered port: now a stranger's
    + session_packet(flags=0x04, content=0x15, offset=8)
    + SESSION_TICK,
)
seed(
    "rtp_session",
    "gap-burst-odd-sizes",
    keyed("5", packets=2)
    + session_packet(jump=200, quarter_ms=255)  # a pause: timestamps and arrival jump
    + b"".join(session_packet(size=n, quarter_ms=0) for n in (4, 5, 7, 8, 9, 10, 11, 12, 14))
    + SESSION_TICK
    + session_packet(size=12)  # 480 samples in one packet
    + SESSION_TICK,
)
seed(
    "rtp_session",
    "events-csrcs-rtcp",
    session_packet(flags=0x20, content=0x45)  # a telephone event for 5
    + session_packet(flags=0x20, content=0x45, offset=3)
    + session_packet(flags=0x20, content=0xC5, offset=6)  # its end
    + session_packet(flags=0x10, content=0xD7)  # three CSRCs, a tone
    + session_packet(flags=0x80)  # reads as RTCP (rtcp-mux)
    + SESSION_TICK,
)

# bridge: 8 bytes (codecs and the agent's packet time, the mask), then rtp_session's records, a
# record of kind 3 being the agent's packet.
seed("bridge", "keys-pcmu-to-pcma-tone", bytes((0b10, 0)) + bytes(6) + keyed("4111", hot=True))
seed("bridge", "keys-agent-10ms-noise", bytes((0b1001, 2)) + bytes(6) + keyed("93#", hot=True))
seed(
    "bridge",
    "reordered-odd-sizes-silence",
    bytes((0b1100, 1))
    + bytes(6)
    + keyed("7", packets=4)
    + session_packet(content=0x13)
    + session_packet(step=2, content=0x13, offset=16)
    + session_packet(step=-1, content=0x13, offset=8)
    + SESSION_TICK
    + b"".join(session_packet(size=n, content=0x13, offset=24) for n in (4, 5, 12))
    + SESSION_TICK
    + keyed("0", packets=6),
)

RFC4733_RECORD = struct.Struct("!BBHbBBB")


def press(
    event: int, first_seq_step: int, ts_mode: int, packets: int, end_repeats: int = 3
) -> bytes:
    out = bytearray()
    for i in range(packets):
        out += RFC4733_RECORD.pack(
            event,
            10,
            160 * (i + 1),
            first_seq_step if i == 0 else 1,
            ts_mode if i == 0 else 0,
            20,
            1 if i == 0 else 0,
        )
    for _ in range(end_repeats):
        out += RFC4733_RECORD.pack(event, 0x8A, 160 * packets, 1, 0, 5, 0)
    return bytes(out)


seed("rfc4733", "card-digits", press(4, 1, 200, 4) + press(1, 3, 200, 3) + press(11, 1, 220, 2))
seed(
    "rfc4733",
    "lost-end-and-reorder",
    press(7, 1, 200, 5, 0) + press(7, 2, 230, 2, 1) + RFC4733_RECORD.pack(7, 10, 320, -3, 0, 1, 0),
)
seed(
    "rfc4733",
    "long-segments",
    press(0, 1, 200, 3, 0)
    + RFC4733_RECORD.pack(0, 10, 65535, 1, 0, 200, 0)
    + RFC4733_RECORD.pack(0, 10, 160, 1, 130, 20, 0)
    + press(0, 1, 0, 2),
)
seed(
    "rfc4733",
    "short-payload-flash",
    RFC4733_RECORD.pack(16, 10, 160, 1, 200, 20, 1)
    + RFC4733_RECORD.pack(3, 10, 160, 1, 210, 20, 0x43),
)


def wav(tag: int, channels: int, rate: int, bits: int, frames: bytes, extra: bytes = b"") -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits) + extra
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", 3) + b"abc\0"
    body += b"data" + struct.pack("<I", len(frames)) + frames
    return b"RIFF" + struct.pack("<I", len(body)) + body


TONE = [
    round(
        8000 * math.sin(2 * math.pi * 941 * n / 8000)
        + 6000 * math.sin(2 * math.pi * 1336 * n / 8000)
    )
    for n in range(400)
]
PCM16 = struct.pack(f"<{len(TONE)}h", *TONE)
seed("recording", "pcm16-8k", b"\x00" + wav(1, 1, 8000, 16, PCM16))
seed("recording", "pcm16-stereo-16k", b"\x05" + wav(1, 2, 16000, 16, PCM16 + PCM16))
seed("recording", "alaw", b"\x00" + wav(6, 1, 8000, 8, encode(TONE, "PCMA")))
seed(
    "recording",
    "float32-44k",
    b"\x0a" + wav(3, 1, 44100, 32, struct.pack("<100f", *[t / 32768 for t in TONE[:100]])),
)
seed(
    "recording",
    "extensible-24bit",
    b"\x00"
    + wav(
        0xFFFE,
        1,
        11025,
        24,
        bytes(300),
        struct.pack("<HHI", 22, 24, 4) + struct.pack("<H", 1) + bytes(14),
    ),
)
seed("recording", "raw-ulaw", b"\x02" + bytes(range(256)))
seed("recording", "raw-s16-rate", b"\x53" + PCM16[:320])

# ---- web ----------------------------------------------------------------------------------------

NOW = 1_700_000_000
ZERO_SIGNATURE = f"t={NOW},v1={'0' * 64}"
HANDOFF = (
    "a84b4c76e66710@pbx.example.com",
    "sbx-4990-EUR-1",
    "sip:agent7@pbx.example.com",
    "https://merchant.example/cb",
)
seed(
    "handoff_signature",
    "genuine",
    "\0".join([sign_handoff("fuzz-secret", NOW, *HANDOFF), *HANDOFF]),
)
seed(
    "handoff_signature",
    "rotation",
    "\0".join([f"t={NOW},v1={'ab' * 32},v1={'CD' * 32},v2=x", HANDOFF[0], "", "", ""]),
)
seed("handoff_signature", "stale", "\0".join([sign_handoff("fuzz-secret", 1, *HANDOFF), *HANDOFF]))

for name, answer in {
    "approved": {
        "result": "approved",
        "reference": "SBX1A2B3C4D",
        "authorization_code": "123456",
        "card_token": "tok_abc",
    },
    "declined": {
        "result": "declined",
        "reference": "SBX9Z8Y7X6W",
        "decline_code": "insufficient_funds",
    },
    "lookup-sale": {
        "token": "sbx-4990-EUR-1",
        "operation": "sale",
        "amount_minor": 4990,
        "currency": "EUR",
        "order": "order-1",
        "merchant": "Hotel Sol",
        "status": "pending",
        "language": "es",
        "return_uri": None,
    },
    "lookup-tokenize": {
        "token": "sbx-4990-EUR-1",
        "operation": "tokenize",
        "amount_minor": 0,
        "currency": "USD",
        "order": "o",
        "merchant": "m",
        "status": "paid",
    },
}.items():
    seed("connector_json", name, json.dumps(answer))
seed("connector_json", "nested", "[" * 20 + "]" * 20)
# Deeper than the interpreter's recursion limit: a depth no coverage feedback leads the fuzzer
# to (the json scanner is C), so it is a seed.
seed("connector_json", "nested-deep", "[" * 1500 + "]" * 1500)

seed(
    "admin_head", "metrics", b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9180\r\nAccept: */*\r\n\r\n"
)
seed("admin_head", "calls-query", b"\r\nGET /calls?x=1#y HTTP/1.0\r\n\r\n")
seed("admin_head", "healthz-lf", b"GET /healthz HTTP/1.1\nUser-Agent: curl\n\n")
seed("admin_head", "post", b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}


def http(method: str, path: str, headers: dict[str, str], body: bytes | str = b"") -> bytes:
    block = "\n".join(f"{k}: {v}" for k, v in headers.items())
    raw = body.encode() if isinstance(body, str) else body
    return b"\x1f".join((method.encode(), path.encode(), block.encode(), raw))


AUTHORIZE = "/v1/transactions/sbx-4990-EUR-1/authorize"
# the failing, slow and declined test cards, and a number failing Luhn
TEST_NUMBERS = ("4000000000000119", "4000000000000341", "4000000000000002", "4111111111111112")
pay = json.dumps({"card": CARD, "attempt": 1})
seed(
    "sandbox",
    "lookup-pay-repeat",
    b"\x00"
    + b"\x1e".join(
        [
            http("GET", "/v1/transactions/sbx-4990-EUR-1", {}),
            http(
                "POST",
                AUTHORIZE,
                {"Idempotency-Key": "k1", "Content-Type": "application/json"},
                pay,
            ),
            http("POST", AUTHORIZE, {"Idempotency-Key": "k1"}, pay),
            http("POST", AUTHORIZE, {"Idempotency-Key": "k2"}, pay),
        ]
    ),
)
seed(
    "sandbox",
    "signed-create-and-pay",
    b"\x03"
    + b"\x1e".join(
        [
            http(
                "POST", "/v1/transactions", {}, json.dumps({"amount_minor": 100, "currency": "eur"})
            ),
            http(
                "POST",
                "/v1/transactions/sbx-0-EUR-tok/authorize",
                {"Idempotency-Key": "k"},
                json.dumps(
                    {"card": dict(CARD, number="371449635398431", cvc="1234"), "attempt": 2}
                ),
            ),
            http("GET", "/healthz", {}),
        ]
    ),
)
seed(
    "sandbox",
    "test-cards",
    b"\x00"
    + b"\x1e".join(
        http(
            "POST",
            AUTHORIZE.replace("4990", str(100 + i)),
            {"Idempotency-Key": f"k{i}"},
            json.dumps({"card": dict(CARD, number=number), "attempt": 1}),
        )
        for i, number in enumerate(TEST_NUMBERS)
    ),
)
seed(
    "sandbox",
    "nested-deep-body",
    b"\x00" + http("POST", AUTHORIZE, {"Idempotency-Key": "k"}, b'{"card":' * 1000),
)
seed(
    "sandbox",
    "unsigned-to-signed-and-junk",
    b"\x01"
    + b"\x1e".join(
        [
            http(
                "GET", "/v1/transactions/sbx-1-EUR-expired-1", {"x-spg-signature": ZERO_SIGNATURE}
            ),
            http("DELETE", "/v1/transactions/%2e%2e/authorize", {}),
            http("POST", "/v1/x", {}, "{"),
        ]
    ),
)


def main() -> None:
    for target, files in SEEDS.items():
        directory = CORPUS_DIR / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (directory / name).write_bytes(data)
        print(f"{target}: {len(files)} seeds")


if __name__ == "__main__":
    main()
