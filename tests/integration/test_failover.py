"""Failover under load: two nodes behind Kamailio (the shipped kamailio.cfg, OPTIONS probing every
second), both on the http connector to one `spg-media sandbox` process, SIPp callers paying.
Node B is killed with SIGKILL while its callers are in the middle of their payments (one of them
waiting for the platform). Then:

- every new call placed after Kamailio's probing window is paid, on node A;
- the calls that were on node B end with no charge made or recorded twice: the platform charged
  each transaction at most once, every charge is either in A's CDR or settled by
  `spg-media reconcile` on B's journal, and what A approved was charged exactly once.

Needs sipp, kamailio and root (SIPp's pcap play); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import (
    HOST,
    SPG_MEDIA,
    KamailioProxy,
    SandboxProcess,
    SippLoadResult,
    SpgNode,
    free_port,
    make_pay_scenario,
    run_sipp_load,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SECRET = "failover-gateway-secret"
SLOW_CARD = "4000000000000341"  # the sandbox charges it after slow_s: B is killed while it waits
FIRST_WAVE = 8
SECOND_WAVE = 6


def journal(node: SpgNode) -> list[dict[str, Any]]:
    path = node.workdir / "journal.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wave(kam: KamailioProxy, sipp_dir: Path, run: str, calls: int) -> SippLoadResult:
    xml = make_pay_scenario(
        [SLOW_CARD + "#", "1230", "123"],
        sipp_dir / f"pay-{run}.xml",
        headers={"X-SPG-Transaction": f"sbx-2500-EUR-{run}-[call_number]"},
        result_timeout_ms=50_000,
    )
    return run_sipp_load(xml, f"{HOST}:{kam.port}", calls, 2.0, workdir=sipp_dir, timeout_s=150)


def test_a_node_killed_under_load(
    sip_tools: None,
    tmp_path: Path,
    sipp_dir: Path,
    kamailio_factory: Callable[..., KamailioProxy],
) -> None:
    sandbox = SandboxProcess(tmp_path / "sandbox", SECRET, slow_s=4)
    sandbox.start()
    nodes: dict[str, SpgNode] = {}
    envs: dict[str, dict[str, str]] = {}
    try:
        for name in ("a", "b"):
            envs[name] = {
                **sandbox.node_env(),
                "SPG_GATEWAY__TIMEOUT_S": "10",
                "SPG_GATEWAY__RECONCILE_S": "5",
                "SPG_LOG__JOURNAL_PATH": str(tmp_path / name / "journal.jsonl"),
                "SPG_IVR__RETURN_URI": f"sip:agent@{HOST}:{free_port()}",
                "SPG_IVR__FIRST_DIGIT_TIMEOUT_S": "3",
                "SPG_IVR__INTER_DIGIT_TIMEOUT_S": "2",
            }
            nodes[name] = SpgNode(tmp_path / name, envs[name])
            nodes[name].start()
        a, b = nodes["a"], nodes["b"]
        kam = kamailio_factory([a.uri, b.uri], defines={"DS_PING_INTERVAL": "1"})

        first_run = uuid.uuid4().hex[:8]
        results: dict[str, SippLoadResult] = {}
        caller = threading.Thread(
            target=lambda: results.update(first=wave(kam, sipp_dir, first_run, FIRST_WAVE)),
            daemon=True,
        )
        caller.start()
        # Killed while it waits for the platform on one payment, its other callers mid-entry.
        assert wait_for(lambda: journal(b), 90), "B never authorised: " + b.logs()[-3000:]
        assert b.proc is not None
        os.killpg(b.proc.pid, signal.SIGKILL)
        b.proc.wait(5)
        opened_on_b = [line for line in journal(b) if line["type"] == "open"]

        # Kamailio's probing (every second, two misses) takes B out; then every call is A's.
        wait_for(lambda: False, 4)
        second_run = uuid.uuid4().hex[:8]
        results["second"] = wave(kam, sipp_dir, second_run, SECOND_WAVE)
        caller.join(150)

        second = results["second"]
        assert (second.succeeded, second.failed) == (SECOND_WAVE, 0), second.stderr[-2000:]
        first = results["first"]
        assert first.succeeded + first.failed == FIRST_WAVE
        assert first.failed >= 1  # B's callers, left without their REFER

        # What B left open is settled against the platform once it has charged.
        code = 1
        reports: list[dict[str, Any]] = []
        for _ in range(20):
            done = subprocess.run(
                [str(SPG_MEDIA), "reconcile"],
                env={**os.environ, **envs["b"]},
                cwd=b.workdir,
                capture_output=True,
                text=True,
                timeout=60,
            )
            code = done.returncode
            reports = [json.loads(line) for line in done.stdout.splitlines()]
            if code == 0:
                break
            wait_for(lambda: False, 1)
        assert code == 0, reports
        assert {r["key"] for r in reports} <= {line["key"] for line in opened_on_b}
        # B's charges: closed in its journal before it died, or found by reconcile after.
        token_of = {line["key"]: line["token"] for line in journal(b) if line["type"] == "open"}
        charged_by_b = {
            token_of[line["key"]]
            for line in journal(b)
            if line["type"] == "close" and line["charge_state"] == "charged"
        }

        approved_by_a = {
            r["transaction"]: r for r in map(json.loads, a.cdr_lines()) if r["result"] == "approved"
        }
        assert len(approved_by_a) >= SECOND_WAVE
        tokens = [f"sbx-2500-EUR-{first_run}-{i}" for i in range(1, FIRST_WAVE + 1)]
        tokens += [f"sbx-2500-EUR-{second_run}-{i}" for i in range(1, SECOND_WAVE + 1)]
        for token in tokens:
            platform = sandbox.transaction(token)
            assert platform.get("charges", 0) <= 1, (token, platform)
            if token in approved_by_a:
                assert platform["status"] == "paid" and platform["charges"] == 1
                assert platform["payment"]["reference"] == approved_by_a[token]["reference"]
            elif platform["status"] == "paid":  # charged for a caller of B: B's journal knows
                assert token in charged_by_b, (token, reports)
        for text in (a.logs(), b.logs(), sandbox.log()):
            assert SLOW_CARD not in text
    finally:
        for node in nodes.values():
            node.stop()
        sandbox.stop()
