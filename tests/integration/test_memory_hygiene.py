"""Card data leaves no trace in a node's memory.

SIPp callers pay 50 calls into `spg-media serve` on the `http` connector, talking to a separate
`spg-media sandbox` (as in production), keying two cards as RFC 4733 events. Then the node's
whole memory is read as an attacker with root would read it (every readable mapping through
/proc/PID/mem; see memscan.py): no complete card number, no security code next to an expiry.
The sandbox's memory, read the same way, is the check that the scan finds card data where it
is (the platform parses every request). The node also says at start-up that it cannot dump
core or be read by other processes, and its limits show it.

The same for callers who key in-band, through Kamailio and rtpengine onto the node's shared
media port (`rtp.shared_port = "relays"`): the path where every call's audio, keypad tones
among it, goes through the port's batch buffers and the in-band detector. (What audio is left
in freed memory is counted by `bench/bench_memory_scan.py --relay`, not asserted here.)

Needs root: SIPp's pcap play, and reading a process that is not dumpable.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from harness import (
    HOST,
    KAMAILIO,
    RTPENGINE,
    SIPP,
    KamailioProxy,
    RtpEngine,
    SandboxProcess,
    SpgNode,
    spg_media_available,
)
from memscan import KnownCard, scan_process

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_memory_scan import run_calls  # the bench's callers, one SIPp a card

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CARDS = [
    KnownCard("4111111111111111", "1230", "123"),
    KnownCard("378282246310005", "0929", "7890"),
]
CALLS_PER_CARD = 25


@pytest.fixture(autouse=True)
def _need_root_and_sipp() -> None:
    if SIPP is None or not spg_media_available():
        pytest.skip("needs sipp and .venv/bin/spg-media")
    if os.geteuid() != 0:
        pytest.skip("needs root (SIPp pcap play, reading a non-dumpable process)")


def test_fifty_payments_leave_no_card_in_the_nodes_memory(tmp_path: Path) -> None:
    with SandboxProcess(tmp_path / "sandbox") as sandbox:
        env = {**sandbox.node_env(), "SPG_IVR__RETURN_URI": f"sip:agent@{HOST}:5999"}
        with SpgNode(tmp_path / "node", env=env) as node:
            assert node.proc is not None and sandbox.proc is not None
            # 5 new calls a second for each card, all of a card's calls at once at most
            total = CALLS_PER_CARD * len(CARDS)
            results = run_calls(
                f"{HOST}:{node.sip_port}", total, 5.0 * len(CARDS), total, tmp_path, cards=CARDS
            )
            cdrs = [json.loads(line) for line in node.cdr_lines()]
            node_scan = scan_process(node.proc.pid, CARDS)
            sandbox_scan = scan_process(sandbox.proc.pid, CARDS)
            limits = Path(f"/proc/{node.proc.pid}/limits").read_text()
            logs = node.logs()

    assert [r.succeeded for r in results] == [CALLS_PER_CARD] * len(CARDS), results
    assert sum(1 for r in cdrs if r["result"] == "approved") == CALLS_PER_CARD * len(CARDS)
    # the scan sees card data where it is: the platform's end holds some
    assert sandbox_scan.total_numbers > 0, sandbox_scan.summary()
    assert node_scan.total_numbers == 0, node_scan.summary()
    assert node_scan.total_codes == 0, node_scan.summary()
    core_limit = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core_limit.split()[4:6] == ["0", "0"]
    assert "process hardening: core dumps off, memory unreadable by other processes" in logs
    for card in CARDS:
        assert card.number not in logs


@pytest.mark.skipif(
    KAMAILIO is None or RTPENGINE is None, reason="needs kamailio and rtpengine-daemon"
)
def test_in_band_payments_on_the_shared_port_leave_no_card_in_the_nodes_memory(
    tmp_path: Path,
) -> None:
    calls_per_card = 8
    with SandboxProcess(tmp_path / "sandbox") as sandbox, RtpEngine(tmp_path / "relay") as relay:
        env = {
            **sandbox.node_env(),
            "SPG_IVR__RETURN_URI": f"sip:agent@{HOST}:5999",
            "SPG_RTP__SHARED_PORT": "relays",
            "SPG_RTP__MEDIA_SOURCES": f"{relay.address}/32",
        }
        with (
            SpgNode(tmp_path / "node", env=env) as node,
            KamailioProxy(
                tmp_path / "kamailio",
                [f"sip:{HOST}:{node.sip_port}"],
                defines={"WITH_RTPENGINE": "1", "RTPENGINE_SOCK": relay.sock},
            ) as proxy,
        ):
            assert node.proc is not None
            # keyed in-band, 2 new calls a second for each card, all at once at most
            total = calls_per_card * len(CARDS)
            tones: dict[str, dict[str, list[bytes]]] = {}
            results = run_calls(
                f"{HOST}:{proxy.port}", total, 2.0 * len(CARDS), total, tmp_path, tones, CARDS
            )
            cdrs = [json.loads(line) for line in node.cdr_lines()]
            node_scan = scan_process(node.proc.pid, CARDS)
            logs = node.logs()

    assert [r.succeeded for r in results] == [calls_per_card] * len(CARDS), results
    assert sum(1 for r in cdrs if r["result"] == "approved") == calls_per_card * len(CARDS)
    on_shared_port = [line for line in logs.splitlines() if '"port": "shared"' in line]
    assert len(on_shared_port) == calls_per_card * len(CARDS)  # each call's media quality line
    assert node_scan.total_numbers == 0, node_scan.summary()
    assert node_scan.total_codes == 0, node_scan.summary()
    for card in CARDS:
        assert card.number not in logs
