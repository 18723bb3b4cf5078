"""Payments under faults: `spg-media serve` on the http connector against `spg-media sandbox`
in its own process, SIPp as the caller (straight to the node, RFC 4733 pcaps).

- the slow card answers after the node's timeout: the node reconciles, finds the charge under its
  own idempotency key and reports `approved`, with exactly one charge at the platform;
- the node is killed (SIGKILL) while it waits for the slow card: the journal keeps the open
  entry, `spg-media reconcile` leaves it open while the platform may still be working on it and
  settles it as charged once the platform has charged;
- the same transaction transferred twice, both calls paying at the same moment: one charge.

Needs sipp and root (SIPp's pcap play); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    HOST,
    SIPP,
    SPG_MEDIA,
    SandboxProcess,
    SippResult,
    SpgNode,
    free_port,
    make_pay_scenario,
    run_sipp,
    spg_media_available,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

SECRET = "integration-gateway-secret"
SLOW_CARD = "4000000000000341"
EXPIRY, CVC = "1230", "123"


@pytest.fixture(autouse=True)
def _peers() -> None:
    if SIPP is None:
        pytest.skip("sipp (Debian sip-tester) is not installed")
    if os.geteuid() != 0:
        pytest.skip("SIPp play_pcap_audio needs root (CAP_NET_RAW)")
    if not spg_media_available():
        pytest.skip(".venv/bin/spg-media missing")


@contextlib.contextmanager
def platform_and_node(
    tmp_path: Path, *, slow_s: float, timeout_s: float, reconcile_s: float = 20
) -> Iterator[tuple[SandboxProcess, SpgNode, dict[str, str]]]:
    sandbox = SandboxProcess(tmp_path / "sandbox", SECRET, slow_s)
    sandbox.start()
    env = {
        **sandbox.node_env(),
        "SPG_GATEWAY__TIMEOUT_S": str(timeout_s),
        "SPG_GATEWAY__RECONCILE_S": str(reconcile_s),
        "SPG_LOG__JOURNAL_PATH": str(tmp_path / "node" / "journal.jsonl"),
        "SPG_IVR__RETURN_URI": f"sip:agent@{HOST}:{free_port()}",
    }
    node = SpgNode(tmp_path / "node", env)
    try:
        node.start()
        yield sandbox, node, env
    finally:
        node.stop()
        sandbox.stop()
        for text in (node.logs(), sandbox.log(), journal_text(node)):
            assert SLOW_CARD not in text and "4111111111111111" not in text


def journal_text(node: SpgNode) -> str:
    path = node.workdir / "journal.jsonl"
    return path.read_text() if path.exists() else ""


def journal(node: SpgNode) -> list[dict[str, Any]]:
    return [json.loads(line) for line in journal_text(node).splitlines() if line.strip()]


def pay(
    node: SpgNode, sipp_dir: Path, token: str, pan: str, expect_result: str | None
) -> tuple[SippResult, str]:
    name = f"pay-{uuid.uuid4().hex[:8]}"
    xml = make_pay_scenario(
        [pan + "#", EXPIRY, CVC], sipp_dir / f"{name}.xml", expect_result=expect_result
    )
    call_id = f"{name}@{HOST}"
    result = run_sipp(
        xml,
        f"{HOST}:{node.sip_port}",
        ["-s", "pay", "-cid_str", call_id],
        60,
        workdir=sipp_dir,
        keys={"spg_transaction": token},
        name=name,
    )
    return result, call_id


def cdr(node: SpgNode, call_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def look() -> bool:
        found[:] = [
            r for r in (json.loads(line) for line in node.cdr_lines()) if r["call_id"] == call_id
        ]
        return bool(found)

    assert wait_for(look, 10), f"no CDR line for {call_id}"
    assert len(found) == 1
    return found[0]


def reconcile(env: dict[str, str], cwd: Path) -> tuple[int, list[dict[str, Any]], str]:
    done = subprocess.run(
        [str(SPG_MEDIA), "reconcile"],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    return done.returncode, reports, done.stderr


def test_a_charge_made_after_the_timeout_is_found_and_approved_once(
    tmp_path: Path, sipp_dir: Path
) -> None:
    # The platform takes 5 s; the node waits 2 s, then asks for up to 20 s.
    with platform_and_node(tmp_path, slow_s=5, timeout_s=2) as (sandbox, node, _):
        token = f"sbx-4990-EUR-{uuid.uuid4().hex[:10]}"
        uac, call_id = pay(node, sipp_dir, token, SLOW_CARD, "approved")
        assert uac.returncode == 0, uac.explain() + node.logs()[-4000:]
        refer = uac.received("REFER")[0]
        record = cdr(node, call_id)
        platform = sandbox.transaction(token)
        lines = journal(node)
        logs = node.logs()

    assert refer.header("X-SPG-Result") == "approved"
    assert (record["result"], record["charge_state"]) == ("approved", "charged")
    assert platform["status"] == "paid" and platform["charges"] == 1
    assert record["reference"] == platform["payment"]["reference"]
    assert refer.header("X-SPG-Reference") == platform["payment"]["reference"]
    # the key the platform charged under is the node's own, random, journaled one
    key = platform["payment"]["idempotency_key"]
    assert re.fullmatch(r"[0-9a-f]{32}", key) and call_id not in key
    assert [(line["type"], line["key"]) for line in lines] == [("open", key), ("close", key)]
    assert (lines[1]["charge_state"], lines[1]["reference"]) == ("charged", record["reference"])
    assert "did not answer within 2 s, but the platform charged it" in logs


def test_a_node_killed_mid_authorisation_is_settled_by_reconcile(
    tmp_path: Path, sipp_dir: Path
) -> None:
    # A long node timeout: the node is still waiting for the platform when it is killed.
    with platform_and_node(tmp_path, slow_s=6, timeout_s=60) as (sandbox, node, env):
        token = f"sbx-1500-EUR-{uuid.uuid4().hex[:10]}"
        caller = threading.Thread(
            target=pay, args=(node, sipp_dir, token, SLOW_CARD, None), daemon=True
        )
        caller.start()
        assert wait_for(lambda: journal(node), 40), "no journal line: " + node.logs()[-3000:]
        assert node.proc is not None
        os.killpg(node.proc.pid, signal.SIGKILL)
        node.proc.wait(5)
        (opened,) = journal(node)
        assert opened["type"] == "open" and opened["token"] == token
        assert (opened["amount_minor"], opened["currency"]) == (1500, "EUR")

        # At once: the platform is still working on it, so it is neither charged nor not.
        code, reports, err = reconcile(env, node.workdir)
        assert code == 1, err
        assert [(r["key"], r["settled"], r["charge_state"]) for r in reports] == [
            (opened["key"], False, "unknown")
        ]
        assert sandbox.transaction(token)["status"] == "pending"

        # Once the platform has charged (under the dead node's key): charged, settled.
        assert wait_for(lambda: sandbox.transaction(token)["status"] == "paid", 40)
        platform = sandbox.transaction(token)
        code, reports, err = reconcile(env, node.workdir)
        assert code == 0, err
        (report,) = reports
        assert (report["key"], report["charge_state"], report["settled"]) == (
            opened["key"],
            "charged",
            True,
        )
        assert report["reference"] == platform["payment"]["reference"]
        assert platform["charges"] == 1 and platform["payment"]["idempotency_key"] == opened["key"]
        closing = journal(node)[-1]
        assert (closing["type"], closing["by"], closing["charge_state"]) == (
            "close",
            "reconcile",
            "charged",
        )
        # Nothing open any more: a second run settles nothing and says so by its exit status.
        assert reconcile(env, node.workdir)[:2] == (0, [])
        caller.join(70)


def test_one_transaction_transferred_twice_at_once_is_charged_once(
    tmp_path: Path, sipp_dir: Path
) -> None:
    # Both callers key the slow card at the same moment: both requests are at the platform
    # together; it decides one at a time.
    with platform_and_node(tmp_path, slow_s=1.5, timeout_s=8) as (sandbox, node, _):
        token = f"sbx-2500-EUR-{uuid.uuid4().hex[:10]}"
        outcomes: list[tuple[SippResult, str]] = []

        def one_call() -> None:
            outcomes.append(pay(node, sipp_dir, token, SLOW_CARD, None))

        callers = [threading.Thread(target=one_call) for _ in range(2)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(90)
        assert len(outcomes) == 2
        records = [cdr(node, call_id) for _, call_id in outcomes]
        platform = sandbox.transaction(token)
        lines = journal(node)

    for uac, _ in outcomes:
        assert uac.returncode == 0, uac.explain()
    assert sorted((r["result"], r["charge_state"]) for r in records) == [
        ("approved", "charged"),
        ("declined", "not-charged"),
    ]
    assert platform["status"] == "paid" and platform["charges"] == 1
    keys = {line["key"] for line in lines}
    assert len(keys) == 2 and platform["payment"]["idempotency_key"] in keys
    assert len(lines) == 4  # two opened, two closed
