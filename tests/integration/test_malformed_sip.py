"""Bad SIP gets the right answer and the node keeps serving (every bad input has an answer).

Each case is sent as raw bytes over loopback UDP to a running node; after every case an OPTIONS
must still be answered 200.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import pytest

from spg_media.config import load_config
from spg_media.server import Server

REPO = Path(__file__).resolve().parents[2]


def message(
    method: str = "OPTIONS",
    *,
    branch: str = "z9hG4bK-x1",
    call_id: str = "m-1@127.0.0.1",
    cseq_method: str | None = None,
    extra: str = "",
    body: str = "",
    content_length: int | None = None,
    version: str = "SIP/2.0",
    drop: str = "",
    to_tag: str = "",
) -> bytes:
    lines = [
        f"{method} sip:pay@127.0.0.1 {version}",
        f"Via: SIP/2.0/UDP 127.0.0.1:{{port}};branch={branch};rport",
        "Max-Forwards: 70",
        "From: <sip:t@127.0.0.1>;tag=f1",
        "To: <sip:pay@127.0.0.1>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: 1 {cseq_method or method}",
        "Contact: <sip:t@127.0.0.1:{port}>",
    ]
    if drop:
        lines = [line for line in lines if not line.startswith(drop + ":")]
    if extra:
        lines.append(extra)
    length = len(body.encode()) if content_length is None else content_length
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


SDP_HEAD = "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
BAD_SDP = SDP_HEAD + "m=audio 4000 RTP/AVP 18\r\n"
VIDEO_ONLY = SDP_HEAD + "m=video 4000 RTP/AVP 96\r\n"

CASES = [
    ("truncated body", message("OPTIONS", body="abc", content_length=500), 400),
    ("missing Call-ID", message("OPTIONS", drop="Call-ID"), 400),
    ("missing CSeq", message("OPTIONS", drop="CSeq"), 400),
    ("missing From", message("OPTIONS", drop="From"), 400),
    ("CSeq method mismatch", message("OPTIONS", cseq_method="INVITE"), 400),
    ("huge Content-Length", message("OPTIONS", content_length=10**9), 400),
    ("wrong version", message("OPTIONS", version="SIP/3.0"), 505),
    ("unknown method", message("FROB"), 405),
    ("BYE outside any dialog", message("BYE", to_tag="nope"), 481),
    (
        "INVITE with no common codec",
        message("INVITE", extra="Content-Type: application/sdp", body=BAD_SDP, call_id="m-2@x"),
        488,
    ),
    (
        "INVITE with video only",
        message("INVITE", extra="Content-Type: application/sdp", body=VIDEO_ONLY, call_id="m-3@x"),
        488,
    ),
    (
        "INVITE with broken SDP",
        message("INVITE", extra="Content-Type: application/sdp", body="garbage", call_id="m-4@x"),
        488,
    ),
    ("INVITE without SDP", message("INVITE", call_id="m-5@x"), 488),
]


async def exchange(sock: socket.socket, port: int, data: bytes, timeout: float = 1.0) -> list[int]:
    """Send one datagram, collect the final status codes answered to it within `timeout`.

    Replies carrying another Call-ID are ignored: an un-ACKed INVITE failure is rightly
    retransmitted (RFC 3261 Timer G) and may arrive while a later case is in flight.
    """
    loop = asyncio.get_running_loop()
    call_ids = [line[8:].strip() for line in data.split(b"\r\n") if line.startswith(b"Call-ID:")]
    call_id = call_ids[0] if call_ids else None
    sock.sendto(data, ("127.0.0.1", port))
    statuses: list[int] = []
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), deadline - loop.time())
        except TimeoutError:
            break
        if call_id is not None and b"Call-ID: " + call_id + b"\r\n" not in reply:
            continue
        first = reply.split(b"\r\n", 1)[0].split()
        if len(first) >= 2 and first[0] == b"SIP/2.0" and int(first[1]) >= 200:
            statuses.append(int(first[1]))
            break
    return statuses


@pytest.mark.timeout(60)
def test_malformed_requests_get_answers_and_node_keeps_serving(tmp_path: Path) -> None:
    base = load_config(None, env={})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = dataclasses.replace(
        base,
        sip=dataclasses.replace(base.sip, listen=(f"udp:127.0.0.1:{port}",)),
        admin=dataclasses.replace(base.admin, listen=""),
        log=dataclasses.replace(base.log, cdr_path=str(tmp_path / "cdr.jsonl")),
        tts=dataclasses.replace(base.tts, cache_dir=str(REPO / ".spg-cache" / "prompts")),
    )

    async def scenario() -> dict[str, list[int]]:
        server = Server(config, prerender=False)
        await server.start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        me = sock.getsockname()[1]
        answers: dict[str, list[int]] = {}
        try:
            for i, (name, data, _) in enumerate(CASES):
                data = data.replace(b"{port}", str(me).encode()).replace(
                    b"z9hG4bK-x1", f"z9hG4bK-case{i}".encode()
                )
                answers[name] = await exchange(sock, port, data)
                ping = message("OPTIONS", branch=f"z9hG4bK-ping{i}", call_id=f"ping{i}")
                answers[name + " / then OPTIONS"] = await exchange(
                    sock, port, ping.replace(b"{port}", str(me).encode())
                )
            for junk in (
                b"\x00\xff garbage \r\n\r\n",
                b"INVITE\r\n\r\n",
                b"SIP/2.0\r\n",
                b"x" * 65000,
            ):
                answers[repr(junk[:12])] = await exchange(sock, port, junk, timeout=0.3)
            answers["final OPTIONS"] = await exchange(
                sock,
                port,
                message(branch="z9hG4bK-last", call_id="last").replace(b"{port}", str(me).encode()),
            )
        finally:
            sock.close()
            await server.stop(grace_s=2)
        return answers

    answers = asyncio.run(scenario())
    for name, _, status in CASES:
        assert answers[name] == [status], name
        assert answers[name + " / then OPTIONS"] == [200], name
    assert answers["final OPTIONS"] == [200]


@pytest.mark.timeout(30)
def test_an_untrusted_source_gets_403_to_an_invite_and_nothing_else(tmp_path: Path) -> None:
    base = load_config(None, env={})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = dataclasses.replace(
        base,
        sip=dataclasses.replace(
            base.sip, listen=(f"udp:127.0.0.1:{port}",), trusted_sources=("127.0.0.2/32",)
        ),
        admin=dataclasses.replace(base.admin, listen=""),
        log=dataclasses.replace(base.log, cdr_path=str(tmp_path / "cdr.jsonl")),
    )

    async def scenario() -> dict[str, list[int]]:
        server = Server(config, prerender=False)
        await server.start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        me = str(sock.getsockname()[1]).encode()
        try:
            return {
                method: await exchange(
                    sock, port, message(method, call_id=f"u-{method}").replace(b"{port}", me)
                )
                for method in ("OPTIONS", "BYE", "INVITE")
            }
        finally:
            sock.close()
            await server.stop(grace_s=1)

    # an INVITE from a stranger is refused 403 (the external contract); all else gets nothing
    assert asyncio.run(scenario()) == {"OPTIONS": [], "BYE": [], "INVITE": [403]}
