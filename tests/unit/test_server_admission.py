"""Admission at the node's SIP edge: while it refuses, a new INVITE gets 503 with Retry-After
and takes no media port, OPTIONS say the same, and the calls in progress carry on (their
in-dialog requests answered, their digits counted).

A real node on loopback UDP (in-process sandbox, no prompts rendered ahead) and a raw UDP peer
standing in for Kamailio.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from spg_media import observability as obs
from spg_media import server as server_module
from spg_media.config import Config, load_config
from spg_media.server import Server
from spg_media.sip.message import SipResponse, parse_message

HOST = "127.0.0.1"
TOKEN = "sbx-4990-EUR-admission"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def node_config(tmp_path: Path, **admission: Any) -> Config:
    base = load_config(None, env={})
    port = free_udp_port()
    return dataclasses.replace(
        base,
        sip=dataclasses.replace(base.sip, listen=(f"udp:{HOST}:{port}",)),
        admin=dataclasses.replace(base.admin, listen=""),
        admission=dataclasses.replace(base.admission, **admission),
        log=dataclasses.replace(
            base.log,
            cdr_path=str(tmp_path / "cdr.jsonl"),
            journal_path=str(tmp_path / "journal.jsonl"),
        ),
        tts=dataclasses.replace(base.tts, cache_dir=str(tmp_path / "prompts")),
    )


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[SipResponse] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        message = parse_message(data)
        if isinstance(message, SipResponse):
            self.queue.put_nowait(message)


class Peer:
    """A UDP SIP peer on loopback (Kamailio's place): sends raw requests, reads responses."""

    def __init__(self, node_port: int) -> None:
        self.node_port = node_port
        self.port = 0
        self.inbox = _Inbox()
        self.transport: asyncio.DatagramTransport | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self.inbox, local_addr=(HOST, 0))
        self.transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def send(
        self,
        method: str,
        call_id: str,
        cseq: int,
        *,
        to_tag: str = "",
        body: str = "",
        headers: str = "",
    ) -> str:
        branch = f"z9hG4bK-{uuid.uuid4().hex[:12]}"
        to = f"<sip:pay@{HOST}:{self.node_port}>" + (f";tag={to_tag}" if to_tag else "")
        text = (
            f"{method} sip:pay@{HOST}:{self.node_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{self.port};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:pbx@{HOST}>;tag=peer\r\n"
            f"To: {to}\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: {cseq} {'INVITE' if method == 'ACK' else method}\r\n"
            f"Contact: <sip:pbx@{HOST}:{self.port}>\r\n"
            f"{headers}"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        )
        assert self.transport is not None
        self.transport.sendto(text.encode(), (HOST, self.node_port))
        return branch

    async def final(self, call_id: str, method: str, timeout_s: float = 10.0) -> SipResponse:
        """The next final response to `method` on `call_id` (others are skipped)."""
        async with asyncio.timeout(timeout_s):
            while True:
                response = await self.inbox.queue.get()
                if (
                    response.status >= 200
                    and response.call_id == call_id
                    and (response.headers.get("CSeq") or "").endswith(method)
                ):
                    return response

    def invite(self, call_id: str) -> None:
        sdp = (
            f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n"
        )
        headers = f"X-SPG-Transaction: {TOKEN}\r\nContent-Type: application/sdp\r\n"
        self.send("INVITE", call_id, 1, body=sdp, headers=headers)


@asynccontextmanager
async def node_and_peer(config: Config) -> AsyncIterator[tuple[Server, Peer]]:
    server = Server(config, prerender=False)
    await server.start()
    peer = Peer(int(config.sip.listen[0].rsplit(":", 1)[1]))
    await peer.open()
    try:
        yield server, peer
    finally:
        peer.close()
        await server.stop(grace_s=0)


def media_ports(server: Server) -> int:
    assert server.services is not None
    return len(server.services.media.sockets)


def test_at_max_calls_a_new_invite_gets_503_and_the_running_call_keeps_every_digit(
    tmp_path: Path,
) -> None:
    config = node_config(tmp_path, max_calls=1, retry_after_s=7)
    info_digits = obs.DTMF_DIGITS_TOTAL.get(source="info")
    refused = server_module.CALLS_REFUSED_TOTAL.get(reason="max_calls")

    async def body() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with node_and_peer(config) as (server, peer):
            running = f"running-{uuid.uuid4().hex}"
            peer.invite(running)
            answer = await peer.final(running, "INVITE")
            assert answer.status == 200, answer.status
            tag = answer.to.tag
            assert tag
            peer.send("ACK", running, 1, to_tag=tag)
            seen["ports_with_one_call"] = media_ports(server)

            refused_id = f"refused-{uuid.uuid4().hex}"
            peer.invite(refused_id)
            refusal = await peer.final(refused_id, "INVITE")
            seen["refusal"] = (refusal.status, refusal.headers.get("Retry-After"))
            seen["ports_after_refusal"] = media_ports(server)
            assert server.services is not None
            seen["refused_claimed"] = refused_id in server.services.ua.dialogs
            seen["tasks"] = len(server.tasks)
            peer.send("OPTIONS", f"ping-{uuid.uuid4().hex}", 1)
            ping = await peer.inbox.queue.get()
            seen["options"] = (ping.status, ping.headers.get("Retry-After"))
            seen["health"] = server.health()
            seen["accepting"] = server_module.ADMISSION_ACCEPTING.get()

            # The running call: its in-dialog requests are answered and each key counted.
            statuses = []
            for cseq, key in enumerate("4111", start=2):
                peer.send(
                    "INFO",
                    running,
                    cseq,
                    to_tag=tag,
                    body=f"Signal={key}\r\nDuration=160\r\n",
                    headers="Content-Type: application/dtmf-relay\r\n",
                )
                statuses.append((await peer.final(running, "INFO")).status)
            seen["info"] = statuses
            peer.send("BYE", running, 10, to_tag=tag)
            seen["bye"] = (await peer.final(running, "BYE")).status
            async with asyncio.timeout(10):
                while server.tasks:
                    await asyncio.sleep(0.02)

            # The call over: a free place again.
            peer.send("OPTIONS", f"ping-{uuid.uuid4().hex}", 1)
            seen["options_after"] = (await peer.inbox.queue.get()).status
            seen["health_after"] = server.health()["status"]
            again = f"again-{uuid.uuid4().hex}"
            peer.invite(again)
            seen["again"] = (await peer.final(again, "INVITE")).status
        return seen

    seen = asyncio.run(body())
    assert seen["ports_with_one_call"] == 1
    assert seen["refusal"] == (503, "7")
    assert seen["ports_after_refusal"] == 1  # no port for the refused INVITE
    assert not seen["refused_claimed"] and seen["tasks"] == 1
    assert seen["options"] == (503, "7")
    assert seen["health"]["status"] == "overloaded"
    assert seen["health"]["reason"] == "max_calls"
    assert (seen["health"]["calls"], seen["health"]["max_calls"]) == (1, 1)
    assert seen["accepting"] == 0
    assert seen["info"] == [200, 200, 200, 200]
    assert obs.DTMF_DIGITS_TOTAL.get(source="info") - info_digits == 4
    assert seen["bye"] == 200
    assert server_module.CALLS_REFUSED_TOTAL.get(reason="max_calls") - refused == 1
    assert seen["options_after"] == 200
    assert seen["health_after"] == "ok"
    assert seen["again"] == 200


def test_a_lagging_node_refuses_new_invites(tmp_path: Path) -> None:
    """Lag injected into the admission core (as a loaded node's samples would be): the next
    INVITE gets 503 with the configured Retry-After, counted under reason "lag"."""
    config = node_config(tmp_path, retry_after_s=3)
    refused = server_module.CALLS_REFUSED_TOTAL.get(reason="lag")
    rejected = obs.CALLS_REJECTED_TOTAL.get(status="503")

    async def body() -> tuple[int, str | None, int, dict[str, Any], str]:
        async with node_and_peer(config) as (server, peer):
            now = asyncio.get_running_loop().time()
            server.admission.note_loop_lag(2.0, now)  # a 2 s stall
            assert server.admission.lagging
            call_id = f"lag-{uuid.uuid4().hex}"
            peer.invite(call_id)
            refusal = await peer.final(call_id, "INVITE")
            metrics = obs.METRICS.render_prometheus()
            return (
                refusal.status,
                refusal.headers.get("Retry-After"),
                media_ports(server),
                server.health(),
                metrics,
            )

    status, retry_after, ports, health, metrics = asyncio.run(body())
    assert (status, retry_after, ports) == (503, "3", 0)
    assert (health["status"], health["reason"]) == ("overloaded", "lag")
    assert health["event_loop_lag_ms"] > 50
    assert server_module.CALLS_REFUSED_TOTAL.get(reason="lag") - refused == 1
    assert obs.CALLS_REJECTED_TOTAL.get(status="503") - rejected == 1
    assert "spg_admission_accepting 0" in metrics
    assert 'spg_calls_refused_total{reason="lag"}' in metrics
    assert "spg_event_loop_lag_seconds " in metrics and "spg_media_tick_lag_seconds " in metrics


def test_a_busy_node_refuses_new_invites_before_it_lags(tmp_path: Path) -> None:
    """Media ticks whose work fills 80 % of their period (as a node near its capacity would
    report them): the next INVITE gets 503, counted under reason "busy", /healthz says so and
    the busy fraction is exported; no lag at all."""
    config = node_config(tmp_path)
    refused = server_module.CALLS_REFUSED_TOTAL.get(reason="busy")

    async def body() -> tuple[int, dict[str, Any], str]:
        async with node_and_peer(config) as (server, peer):
            now = asyncio.get_running_loop().time()
            for tick in range(100):  # two seconds of ticks, each 16 ms of work, none late
                server.lag_monitor.on_tick_lag(0.0, now - 2 + tick * 0.02)
                server.lag_monitor.on_tick_work(0.016, now - 2 + tick * 0.02)
            assert server.admission.lagging
            call_id = f"busy-{uuid.uuid4().hex}"
            peer.invite(call_id)
            refusal = await peer.final(call_id, "INVITE")
            server._update_admission_gauges()
            return refusal.status, server.health(), obs.METRICS.render_prometheus()

    status, health, metrics = asyncio.run(body())
    assert status == 503
    assert (health["status"], health["reason"]) == ("overloaded", "busy")
    assert health["media_tick_busy"] > 0.7 and health["media_tick_lag_ms"] == 0
    assert server_module.CALLS_REFUSED_TOTAL.get(reason="busy") - refused == 1
    assert 'spg_calls_refused_total{reason="busy"}' in metrics
    exported = re.search(r"^spg_media_tick_busy_ratio ([0-9.e+-]+)$", metrics, re.M)
    assert exported is not None and float(exported.group(1)) > 0.7
