"""Admission control behind Kamailio: a node that takes no new calls answers 503, the dispatcher
fails over, and the call lands on the other node; the call the full node holds keeps every digit.

Two `spg-media serve` nodes behind kamailio/kamailio.cfg as shipped, the full one first by
priority (DS_ALG 8). Node A is made full with `admission.max_calls = 1` and one SIPp payment
call: no artificial load, the same refusal path as a lagging node's.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import (
    HOST,
    KamailioProxy,
    SippResult,
    SpgNode,
    free_port,
    make_pay_scenario,
    run_sipp,
    sip_options,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

CARD = ["4111111111111111#", "1230", "123"]
NODE_ENV = {
    "SPG_IVR__FIRST_DIGIT_TIMEOUT_S": "10",
    "SPG_IVR__INTER_DIGIT_TIMEOUT_S": "5",
    "SPG_IVR__RETURN_URI": f"sip:agent@{HOST}:{free_port()}",  # the REFER the caller expects
    "SPG_GATEWAY__CONNECTOR": "sandbox",
}


def pay(kam: KamailioProxy, sipp_dir: Path, **scenario: Any) -> tuple[SippResult, str]:
    """One approved-card payment through Kamailio; SIPp's result and the Call-ID."""
    name = f"pay-{uuid.uuid4().hex[:8]}"
    xml = make_pay_scenario(CARD, sipp_dir / f"{name}.xml", expect_result="approved", **scenario)
    call_id = f"{name}@{HOST}"
    result = run_sipp(
        xml,
        f"{HOST}:{kam.port}",
        ["-s", "pay", "-cid_str", call_id, "-default_behaviors", "all,-abortunexp"],
        60.0,
        workdir=sipp_dir,
        keys={"spg_transaction": f"sbx-4990-EUR-{uuid.uuid4().hex[:10]}"},
        name=name,
    )
    return result, call_id


def results(node: SpgNode) -> dict[str, str]:
    """Call-ID -> result of every CDR line the node wrote."""
    return {
        record["call_id"]: record["result"]
        for record in (json.loads(line) for line in node.cdr_lines())
    }


def health(node: SpgNode) -> tuple[int, dict[str, Any]]:
    url = f"http://{HOST}:{node.admin_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return int(refused.code), json.loads(refused.read())


def metric(node: SpgNode, line_start: str) -> float:
    with urllib.request.urlopen(f"http://{HOST}:{node.admin_port}/metrics", timeout=2) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_full_node_refuses_with_503_and_the_call_lands_on_the_other(
    kamailio_factory: Callable[..., KamailioProxy],
    spg_node_factory: Callable[..., SpgNode],
    sipp_dir: Path,
) -> None:
    full = spg_node_factory({**NODE_ENV, "SPG_ADMISSION__MAX_CALLS": "1"})
    other = spg_node_factory(NODE_ENV)
    kam = kamailio_factory([(full.uri, 20), (other.uri, 10)], defines={"DS_ALG": "8"})

    # The first call goes to the preferred node and stays there for a while before keying.
    first: list[tuple[SippResult, str]] = []
    caller = threading.Thread(
        target=lambda: first.append(pay(kam, sipp_dir, initial_pause_ms=6000)), daemon=True
    )
    caller.start()
    try:
        assert wait_for(lambda: health(full)[0] == 503, timeout_s=15), full.logs()[-3000:]
        state = health(full)[1]
        assert state["status"] == "overloaded" and state["reason"] == "max_calls", state
        assert sip_options(HOST, full.sip_port) == "SIP/2.0 503 Service Unavailable"
        assert sip_options(HOST, other.sip_port) == "SIP/2.0 200 OK"

        second, second_id = pay(kam, sipp_dir)
        assert second.returncode == 0, second.explain() + kam.log()[-3000:]
    finally:
        caller.join(90)
    assert first, "the first call did not finish"
    first_result, first_id = first[0]
    assert first_result.returncode == 0, first_result.explain() + full.logs()[-3000:]

    # The refused INVITE: a 503 from the full node, Kamailio's failover, the call on the other.
    assert f"node {full.uri} failed (503)" in kam.log(), kam.log()[-3000:]
    assert wait_for(lambda: second_id in results(other), timeout_s=5)
    assert results(other)[second_id] == "approved"
    assert second_id not in results(full)
    assert metric(full, 'spg_calls_refused_total{reason="max_calls"}') >= 1
    # The call the full node held kept every digit: its card was approved.
    assert wait_for(lambda: first_id in results(full), timeout_s=5)
    assert results(full)[first_id] == "approved"
    # Its call over, the node takes calls again.
    assert wait_for(lambda: health(full)[0] == 200, timeout_s=5)
    assert health(full)[1]["status"] == "ok"
    assert metric(full, "spg_admission_accepting") == 1
    assert sip_options(HOST, full.sip_port) == "SIP/2.0 200 OK"
