"""Agent-assisted calls through `spg-media serve` as a B2BUA: SIPp as the customer (UAC) →
node → SIPp as the agent (UAS, sipp/assist_agent*.xml), over UDP on loopback.

One node (its assist API on), three short calls: the customer hangs up (the agent gets BYE;
meanwhile the API lists the call under the id the agent received), the agent hangs up (the
customer gets BYE), the agent is busy (the customer gets 486). The agent scenarios check
`X-SPG-Assist-Call` and `X-SPG-Transaction` themselves; the customer scenarios need the 180
relayed and the 200. Media is not exercised here (SIPp sends none): what crosses the bridge is
the media engine's tests' business.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    HOST,
    SIPP,
    SIPP_DIR,
    SippProcess,
    SippResult,
    SpgNode,
    free_port,
    run_sipp,
    spg_media_available,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(90),
    pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) is not installed"),
    pytest.mark.skipif(not spg_media_available(), reason="spg-media is not importable"),
]


API_TOKEN = "assist-b2bua-test-token"
API_PORT = 0  # the node's assist API port, chosen when the node starts (a port picked at
# collection could be another test's by then)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpgNode]:
    global API_PORT
    API_PORT = free_port()
    workdir = tmp_path_factory.mktemp("assist-node")
    env = {"SPG_ASSIST__API_TOKEN": API_TOKEN, "SPG_ASSIST__LISTEN": f"{HOST}:{API_PORT}"}
    with SpgNode(workdir, env=env) as spg:  # assist.users = ["assist"]: sip:assist@... is bridged
        # the API starts beside the SIP listeners: wait until it answers too
        deadline = time.monotonic() + 15
        while True:
            try:
                listed_calls()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield spg


def listed_calls() -> list[dict[str, str]]:
    request = urllib.request.Request(
        f"http://{HOST}:{API_PORT}/v1/calls", headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=2) as answer:
        calls: list[dict[str, str]] = json.load(answer)
    return calls


def bridged_call(
    node: SpgNode,
    workdir: Path,
    customer: str,
    agent: str,
    during: Callable[[], Any] = lambda: None,
) -> tuple[SippResult, SippResult, Any]:
    """One call: the agent's SIPp listening, the customer's SIPp calling sip:assist@node with
    `X-SPG-Agent` naming that agent, and `during()` run meanwhile. Returns the customer's and
    the agent's results and what `during` gave."""
    agent_port = free_port()
    agent_sipp = SippProcess(SIPP_DIR / agent, workdir, agent_port, timeout_s=20)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        customer_sipp = pool.submit(
            run_sipp,
            SIPP_DIR / customer,
            f"{HOST}:{node.sip_port}",
            ["-s", "assist"],
            20,
            workdir=workdir,
            keys={"agent": f"<sip:agent@{HOST}:{agent_port}>"},
        )
        seen = during()
        return customer_sipp.result(), agent_sipp.wait(30), seen


def first_listing(timeout_s: float = 10.0) -> list[dict[str, str]]:
    """The API's first non-empty list of calls."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        calls = listed_calls()
        if calls:
            return calls
        time.sleep(0.1)
    return []


def check_bridge_set_up(customer: SippResult, agent: SippResult) -> None:
    """What every answered call shows: the headers on the agent's INVITE, two dialogs with
    their own Call-IDs and SDP, the 180 and the 200 relayed."""
    (agent_invite,) = agent.received("INVITE")
    assert re.fullmatch(r"[0-9a-f]{32}", agent_invite.header("X-SPG-Assist-Call") or "")
    assert agent_invite.header("X-SPG-Transaction") == "tx-assist-1"
    assert agent_invite.header("X-SPG-Agent") is None  # ours, not passed on
    (customer_invite,) = customer.sent("INVITE")
    assert agent_invite.header("Call-ID") != customer_invite.header("Call-ID")
    assert [m.cseq_method for m in customer.received(180)] == ["INVITE"]
    (ok,) = [m for m in customer.received(200) if m.cseq_method == "INVITE"]
    # the customer's leg answers its own offer: PCMA and its telephone-event 101 ...
    assert re.search(r"^m=audio (\d+) RTP/AVP 8 101$", ok.text, re.M), ok.text
    # ... the agent's leg was offered by the node from another port
    customer_port = re.search(r"^m=audio (\d+) ", ok.text, re.M)
    agent_port = re.search(r"^m=audio (\d+) ", agent_invite.text, re.M)
    assert customer_port and agent_port and customer_port[1] != agent_port[1]
    assert agent.received("ACK")


def test_customer_hangs_up_and_the_agent_leg_ends(node: SpgNode, tmp_path: Path) -> None:
    customer, agent, listing = bridged_call(
        node, tmp_path, "assist_customer_hangs_up.xml", "assist_agent.xml", first_listing
    )
    assert customer.returncode == 0, customer.explain()
    assert agent.returncode == 0, agent.explain()
    check_bridge_set_up(customer, agent)
    assert agent.received("BYE") and [m.cseq_method for m in customer.received(200)] == [
        "INVITE",
        "BYE",
    ]
    # while bridged, the API listed the call under the id the agent's INVITE carried
    (listed,) = listing
    assert listed["call_id"] == agent.received("INVITE")[0].header("X-SPG-Assist-Call")
    assert listed["transaction"] == "tx-assist-1"
    assert listed["agent"].startswith(f"sip:agent@{HOST}:")
    assert listed["from"].startswith("sip:customer@")
    assert listed_calls() == []  # and no more once it ended


def test_agent_hangs_up_and_the_customer_leg_ends(node: SpgNode, tmp_path: Path) -> None:
    customer, agent, _ = bridged_call(
        node, tmp_path, "assist_customer_stays.xml", "assist_agent_hangs_up.xml"
    )
    assert customer.returncode == 0, customer.explain()
    assert agent.returncode == 0, agent.explain()
    check_bridge_set_up(customer, agent)
    (bye,) = customer.received("BYE")
    assert bye.header("X-SPG-Result") is None  # an assisted call hands nothing back
    assert "Traceback" not in node.logs()


def test_a_busy_agent_is_relayed_to_the_customer(node: SpgNode, tmp_path: Path) -> None:
    customer, agent, _ = bridged_call(
        node, tmp_path, "assist_customer_refused.xml", "assist_agent_busy.xml"
    )
    assert customer.returncode == 0, customer.explain()
    assert agent.returncode == 0, agent.explain()
    assert agent.received("INVITE")[0].header("X-SPG-Transaction") == "tx-assist-1"
    assert [m.status for m in customer.received(486)] == [486]
    assert not customer.received(200)
    assert "Traceback" not in node.logs()
