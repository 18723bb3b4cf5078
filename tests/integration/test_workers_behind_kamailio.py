"""`spg-media serve --workers 2` behind Kamailio: calls spread over both workers and are paid,
one CDR file and one admin endpoint for both, a worker killed with SIGKILL is started again and
taken back into rotation, SIGTERM drains and ends the whole node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import (
    HOST,
    SPG_MEDIA,
    KamailioProxy,
    SpgNode,
    make_pay_scenario,
    run_sipp_load,
    sip_options,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


@pytest.fixture(scope="module")
def node(sip_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpgNode]:
    spg = SpgNode(
        tmp_path_factory.mktemp("workers"),
        {
            "SPG_IVR__FIRST_DIGIT_TIMEOUT_S": "3",
            "SPG_IVR__INTER_DIGIT_TIMEOUT_S": "2",
            "SPG_IVR__RETURN_URI": f"sip:agent@{HOST}:5999",
            "SPG_GATEWAY__CONNECTOR": "sandbox",
        },
        workers=2,
    )
    spg.start(timeout_s=60)
    assert wait_for(lambda: sip_options(HOST, spg.sip_port + 1) == "SIP/2.0 200 OK", 60)
    yield spg
    spg.stop(timeout_s=30)


def admin_get(node: SpgNode, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{node.admin_port}{path}", timeout=5) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def metric(node: SpgNode, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    _, text = admin_get(node, "/metrics")
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name == name
    }


def worker_pids(node: SpgNode) -> dict[int, int]:
    """{worker index: pid} of the node's workers, from /proc."""
    assert node.proc is not None
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == node.proc.pid and b"--worker-index" in argv:
            found[int(argv[argv.index(b"--worker-index") + 1])] = int(entry.name)
    return found


def pay(kam: KamailioProxy, sipp_dir: Path, calls: int) -> None:
    """`calls` approved payments through Kamailio, all at once."""
    run = uuid.uuid4().hex[:8]
    xml = make_pay_scenario(
        ["4111111111111111#", "1230", "123"],
        sipp_dir / f"pay-{run}.xml",
        headers={"X-SPG-Transaction": f"sbx-1250-EUR-{run}-[call_number]"},
        expect_result="approved",
    )
    result = run_sipp_load(xml, f"{HOST}:{kam.port}", calls, 10.0, workdir=sipp_dir, timeout_s=90)
    assert (result.succeeded, result.failed) == (calls, 0), result.stderr[-2000:]


def test_dispatcher_entries_are_the_workers_ports(node: SpgNode) -> None:
    out = subprocess.run(
        [str(SPG_MEDIA), "kamailio-dispatcher", "--workers", "2"],
        env={**os.environ, "SPG_SIP__LISTEN": f"udp:{HOST}:{node.sip_port}"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines()[1:] == [
        f"1 sip:{HOST}:{node.sip_port} 0 0 worker=0",
        f"1 sip:{HOST}:{node.sip_port + 1} 0 0 worker=1",
    ]


def test_calls_spread_over_both_workers_and_are_paid(
    node: SpgNode,
    kamailio_factory: Callable[..., KamailioProxy],
    sipp_dir: Path,
) -> None:
    kam = kamailio_factory(
        [f"sip:{HOST}:{node.sip_port}", f"sip:{HOST}:{node.sip_port + 1}"],
        defines={"DS_PING_INTERVAL": "1"},
    )
    pay(kam, sipp_dir, 4)
    assert wait_for(lambda: len(node.cdr_lines()) >= 4, 10)
    records = [json.loads(line) for line in node.cdr_lines()]  # one file for both workers
    assert [r["result"] for r in records] == ["approved"] * 4
    ended = metric(node, "spg_calls_total")
    by_worker = {
        dict(k)["worker"]: v for k, v in ended.items() if dict(k).get("result") == "approved"
    }
    assert by_worker == {"0": 2.0, "1": 2.0}  # Kamailio's round robin over the two workers
    status, body = admin_get(node, "/healthz")
    assert status == 200 and json.loads(body)["workers_up"] == 2

    # A worker killed outright: started again, and Kamailio sends it calls once it answers.
    before = worker_pids(node)
    os.kill(before[1], signal.SIGKILL)
    assert wait_for(lambda: worker_pids(node).get(1) not in (None, before[1]), 10)
    assert wait_for(lambda: sip_options(HOST, node.sip_port + 1) == "SIP/2.0 200 OK", 60)
    assert metric(node, "spg_worker_restarts") == {(): 1.0}
    assert "worker 1 exited (killed by SIGKILL)" in node.logs()
    time.sleep(3)  # Kamailio's next OPTIONS probes (every second) see it answer again
    pay(kam, sipp_dir, 2)
    assert wait_for(lambda: len(node.cdr_lines()) >= 6, 10)
    records = [json.loads(line) for line in node.cdr_lines()]
    assert [r["result"] for r in records] == ["approved"] * 6
    restarted = metric(node, "spg_calls_total")
    assert restarted[(("result", "approved"), ("worker", "1"))] == 1.0  # its counters start anew


def test_sigterm_ends_every_worker(node: SpgNode) -> None:
    pids = worker_pids(node)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=60) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids.values())


def test_workers_end_when_their_supervisor_is_killed(
    sip_tools: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    spg = SpgNode(
        tmp_path_factory.mktemp("orphans"), {"SPG_GATEWAY__CONNECTOR": "sandbox"}, workers=2
    )
    spg.start(timeout_s=60)
    try:
        assert wait_for(lambda: len(worker_pids(spg)) == 2, 30)
        pids = worker_pids(spg).values()
        assert spg.proc is not None
        spg.proc.send_signal(signal.SIGKILL)  # the supervisor alone, not its process group
        spg.proc.wait(5)
        assert wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 40)
        assert wait_for(lambda: sip_options(HOST, spg.sip_port) is None, 5)
    finally:
        spg.stop(timeout_s=30)
