"""What a refused INVITE costs a node: the 503 of admission control against an OPTIONS answer.

A node past its capacity answers every new INVITE `503` with `Retry-After` (admission control,
`spg_media/admission.py`); that answer must be cheap, or refusing would add to the load it is
meant to shed. This measures, in one process and one run, a real node's UA (`Server` started
on loopback, its sends stubbed out) handling:

- baseline: an out-of-dialog OPTIONS answered 200 (Kamailio's keepalive; parse, a server
  transaction, the response);
- a new INVITE with SDP refused 503 at `admission.max_calls` (parse, the admission check, a
  server transaction kept for the 503's retransmissions, the response; no call, task or port).

Each message has its own branch and Call-ID. Prints microseconds per message, best of 5, and
the refused INVITE's ratio to the OPTIONS.

Run: .venv/bin/python bench/bench_admission.py   (about 10 s)
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

from spg_media.call import Call
from spg_media.config import load_config
from spg_media.server import Server
from spg_media.sip.transaction import Address, TransactionLayer

COUNT = 5000
ROUNDS = 5
SOURCE = Address("udp", "127.0.0.1", 5999)
SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
)


def request(method: str, index: int, body: str = "", extra: str = "") -> bytes:
    tag = f"{method.lower()}-{index}-{time.monotonic_ns()}"
    return (
        f"{method} sip:pay@127.0.0.1:5080 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-{tag};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:pbx@127.0.0.1>;tag={index}\r\n"
        "To: <sip:pay@127.0.0.1:5080>\r\n"
        f"Call-ID: {tag}@bench\r\n"
        f"CSeq: 1 {method}\r\n"
        "Contact: <sip:pbx@127.0.0.1:5999>\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def measure() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="spg-bench-admission-") as work:
        return await measure_in(Path(work))


async def measure_in(work: Path) -> dict[str, float]:
    base = load_config(None, env={})
    config = dataclasses.replace(
        base,
        sip=dataclasses.replace(base.sip, listen=(f"udp:127.0.0.1:{free_udp_port()}",)),
        admin=dataclasses.replace(base.admin, listen=""),
        admission=dataclasses.replace(base.admission, max_calls=1),
        log=dataclasses.replace(
            base.log,
            cdr_path=str(work / "cdr.jsonl"),
            journal_path=str(work / "journal.jsonl"),
        ),
        tts=dataclasses.replace(base.tts, cache_dir=str(work / "prompts")),
    )
    server = Server(config, prerender=False)
    await server.start()
    assert server.services is not None
    ua = server.services.ua
    ua._send = lambda data, address: None  # type: ignore[method-assign]
    server.services.calls["a-call-in-progress"] = cast(Call, object())  # the node is full
    extra = "X-SPG-Transaction: sbx-4990-EUR-bench\r\nContent-Type: application/sdp\r\n"
    best: dict[str, float] = {}
    try:
        for _ in range(ROUNDS):
            for name, method, body, headers in (
                ("options", "OPTIONS", "", ""),
                ("invite_503", "INVITE", SDP, extra),
            ):
                messages = [request(method, i, body, headers) for i in range(COUNT)]
                started = time.perf_counter()
                for data in messages:
                    ua.on_bytes(data, SOURCE)
                elapsed = (time.perf_counter() - started) / COUNT * 1e6
                best[name] = min(best.get(name, elapsed), elapsed)
                ua.transactions = TransactionLayer()  # drop the kept transactions
        assert not server.tasks and not server.services.media.sockets  # nothing allocated
    finally:
        server.services.calls.clear()
        await server.stop(grace_s=0)
    return best


def main() -> int:
    best = asyncio.run(measure())
    print(f"per message, best of {ROUNDS} x {COUNT}, one core:")
    print(f"  OPTIONS answered 200 (baseline)   {best['options']:7.1f} us")
    print(f"  INVITE refused 503 (max_calls)    {best['invite_503']:7.1f} us")
    print(f"  ratio                             {best['invite_503'] / best['options']:7.2f}x")
    print(f"  refused INVITEs per second of one core: {1e6 / best['invite_503']:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
