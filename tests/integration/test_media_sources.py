"""No stranger gets into a call's media, and a c= that is not an IP literal is refused.

- A stranger on 127.0.0.2 floods every RTP and RTCP port of a node (a range of four pairs, so it
  covers all of them) with RFC 4733 key presses and audio, before and during a SIPp call from
  127.0.0.1 straight to `spg-media serve`: the payment is approved with the caller's card, the
  stranger never receives a packet, and the node counts the drops
  (`spg_rtp_dropped_total{reason="source"}` on /metrics). Twice: with a port a call, and with
  the call on the shared port (`rtp.shared_port = "relays"`, SIPp's address the relay), where
  the stranger's flood lands on the one socket every call there reads.
- In process: an INVITE, re-INVITE or UPDATE whose SDP c= is a host name gets 488 with a Warning
  saying why; the call it would have moved carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import (
    HOST,
    SpgNode,
    free_media_port,
    free_port,
    make_pay_scenario,
    run_sipp,
    wait_for,
)
from test_call_inprocess import SDP_OFFER, Capture, RawPeer, node_config, start_node

from spg_media.sip.message import SipResponse

pytestmark = pytest.mark.integration

STRANGER_HOST = "127.0.0.2"
RANGE_PORTS = 8  # four RTP/RTCP pairs


class Stranger:
    """A host that is not the caller: sends RFC 4733 presses and audio to every port of the
    range every few milliseconds from one socket, and counts what comes back to it."""

    def __init__(self, ports: range, interval_s: float = 0.01) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((STRANGER_HOST, 0))
        self.sock.setblocking(False)
        self.ports = ports
        self.interval_s = interval_s
        self.sent = 0
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _packets(self, n: int) -> list[bytes]:
        """The n-th round: a whole key press (its start, then its end) and a packet of audio."""
        seq, ts = (3 * n) & 0xFFFF, (n * 1600) & 0xFFFFFFFF
        key = (5, 11, 10, 0)[n % 4]  # 5, #, *, 0
        header = struct.pack("!BBHII", 0x80, 0x80 | 101, seq, ts, 0x57A6)  # marker set
        start = header + struct.pack("!BBH", key, 10, 400)
        end = struct.pack("!BBHII", 0x80, 101, seq + 1, ts, 0x57A6) + struct.pack(
            "!BBH", key, 0x80 | 10, 800
        )
        audio = struct.pack("!BBHII", 0x80, 0, seq + 2, ts, 0x57A6) + b"\x7f" * 160
        return [start, end, audio]

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            for packet in self._packets(n):
                for port in self.ports:
                    try:
                        self.sock.sendto(packet, (HOST, port))
                        self.sent += 1
                    except OSError:
                        pass  # an ICMP unreachable from a port nobody holds yet
            self._drain()
            n += 1
            self._stop.wait(self.interval_s)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                continue  # an ICMP error reported on the socket
            self.received += 1

    def __enter__(self) -> Stranger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        time.sleep(0.2)  # anything the node sent late
        self._drain()
        self.sock.close()


def metric(node: SpgNode, sample: str) -> float:
    """The value of one sample (name and labels) on the node's /metrics, 0 when absent."""
    url = f"http://{HOST}:{node.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def dropped_for_source(node: SpgNode) -> float:
    return metric(node, 'spg_rtp_dropped_total{reason="source"}')


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shared_port", ["off", "relays"])
def test_a_stranger_flooding_every_rtp_port_gets_nothing_in_and_nothing_out(
    sip_tools: None, spg_node_factory: Callable[..., SpgNode], sipp_dir: Path, shared_port: str
) -> None:
    low = free_media_port(count=RANGE_PORTS)
    node = spg_node_factory(
        {
            "SPG_RTP__PORT_MIN": str(low),
            "SPG_RTP__PORT_MAX": str(low + RANGE_PORTS - 1),
            "SPG_RTP__SHARED_PORT": shared_port,
            "SPG_RTP__MEDIA_SOURCES": f"{HOST}/32" if shared_port == "relays" else "",
            "SPG_IVR__FIRST_DIGIT_TIMEOUT_S": "3",
            "SPG_IVR__INTER_DIGIT_TIMEOUT_S": "2",
            "SPG_IVR__RETURN_URI": f"sip:agent@{HOST}:{free_port()}",
            "SPG_GATEWAY__CONNECTOR": "sandbox",
        }
    )
    on_shared_port: list[float] = []  # spg_rtp_shared_port_calls, read during the call
    watching = threading.Event()

    def watch() -> None:
        while not watching.wait(0.2):
            with contextlib.suppress(OSError):
                on_shared_port.append(metric(node, "spg_rtp_shared_port_calls"))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    pan, expiry, cvc = "4111111111111111", "1230", "123"
    name = f"hijack-{uuid.uuid4().hex[:8]}"
    call_id = f"{name}@{HOST}"
    xml = make_pay_scenario([pan + "#", expiry, cvc], sipp_dir / f"{name}.xml")
    with Stranger(range(low, low + RANGE_PORTS)) as stranger:
        time.sleep(1.0)  # flooding before the call: waiting for the port to open
        uac = run_sipp(
            xml,
            f"{HOST}:{node.sip_port}",
            ["-s", "pay", "-cid_str", call_id],
            60,
            workdir=sipp_dir,
            keys={"spg_transaction": f"sbx-4990-EUR-{uuid.uuid4().hex[:10]}"},
            name=name,
        )
    watching.set()
    watcher.join(5)
    assert uac.returncode == 0, uac.explain() + node.logs()[-4000:]
    assert max(on_shared_port, default=0) == (1 if shared_port == "relays" else 0)
    refer = uac.received("REFER")[0]
    assert refer.header("X-SPG-Result") == "approved"
    assert refer.header("X-SPG-Card") == "visa 1111"  # the caller's card, not the stranger's keys
    records: list[dict[str, Any]] = []

    def cdr() -> bool:
        records[:] = [
            r for r in (json.loads(line) for line in node.cdr_lines()) if r["call_id"] == call_id
        ]
        return bool(records)

    assert wait_for(cdr, 5), node.cdr_lines()[-3:]
    assert records[0]["result"] == "approved"
    assert records[0]["card"] == {"brand": "visa", "last4": "1111"}
    assert stranger.sent > 1000
    assert stranger.received == 0, "the node sent media to the stranger"
    assert wait_for(lambda: dropped_for_source(node) > 0, 5)


# ---- c= host names: 488 with a Warning, for the INVITE and for a re-offer ------------------------

HOSTNAME_OFFER = SDP_OFFER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 media.example.com")


@pytest.mark.timeout(60)
def test_a_host_name_in_c_gets_488_with_a_warning_and_the_call_carries_on(tmp_path: Path) -> None:
    config = node_config(tmp_path)
    capture = Capture()

    async def scenario() -> tuple[SipResponse, SipResponse, SipResponse, SipResponse]:
        server, port = await start_node(config, capture)
        try:
            with RawPeer(port, "c-hostname-invite") as peer:
                await peer.send(peer.request("INVITE", [], HOSTNAME_OFFER))
                refused = await peer.final("INVITE")
            with RawPeer(port, "c-hostname-reoffer") as peer:
                assert (await peer.invite([])).status == 200
                peer.cseq = 2
                reoffer = HOSTNAME_OFFER.replace("o=t 1 1", "o=t 1 2")
                await peer.send(peer.request("INVITE", [], reoffer))
                reinvite = await peer.final("INVITE")
                await peer.send(peer.request("ACK", [], cseq=2))
                peer.cseq = 3
                await peer.send(peer.request("UPDATE", [], reoffer.replace("o=t 1 2", "o=t 1 3")))
                update = await peer.final("UPDATE")
                peer.cseq = 4
                await peer.send(peer.request("BYE", []))
                bye = await peer.final("BYE")
                return refused, reinvite, update, bye
        finally:
            await server.stop(grace_s=5)

    refused, reinvite, update, bye = asyncio.run(scenario())
    for answer in (refused, reinvite, update):
        assert answer.status == 488, answer
        warning = answer.headers.get("Warning") or ""
        assert "not an IP address" in warning and "example.com" not in warning, warning
    assert bye.status == 200  # the dialog survived the refused re-offers
