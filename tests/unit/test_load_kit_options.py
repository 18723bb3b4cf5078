"""bench/bench_sipp_load.py's options that shape the nodes under test: `--node-env` (a setting of
the nodes, checked before anything starts) and `--pin` (the nodes on the last CPU, SIPp and the
kit on the others, and the kit's CPUs given back when the stack stops)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))  # loadkit's harness

import bench_sipp_load
import harness
import loadkit
from loadkit import LoadSpec, Stack, check_spec


def test_a_node_setting_not_of_the_spg_form_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_load(spec: LoadSpec) -> dict[str, object]:
        raise AssertionError("no load may run on a bad option")

    monkeypatch.setattr(bench_sipp_load, "run_load", no_load)
    for bad in ("ADMISSION__MAX_TICK_BUSY=0.8", "SPG_ADMISSION__MAX_TICK_BUSY"):
        monkeypatch.setattr(
            sys, "argv", ["bench_sipp_load.py", "--media", "inband", "--node-env", bad]
        )
        assert bench_sipp_load.main() == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "SPG_SECTION__KEY=VALUE" in err


def test_node_settings_reach_the_nodes_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = LoadSpec(media="inband", direct=True, node_env={"SPG_ADMISSION__MAX_TICK_BUSY": "0.8"})
    stack = Stack(spec, tmp_path)
    env = stack.nodes[0].env
    # over the shipped limit the kit sets otherwise
    assert env["SPG_ADMISSION__MAX_TICK_BUSY"] == "0.8"
    assert "SPG_ADMISSION__MAX_TICK_LAG_MS" in env


def test_pin_needs_two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(loadkit, "SIPP", "/usr/bin/sipp")
    problem = check_spec(LoadSpec(media="inband", direct=True, pin=True))
    assert problem is not None and "--pin" in problem


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_pin_starts_the_nodes_on_the_last_cpu_and_the_rest_on_the_others(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = os.sched_getaffinity(0)
    cpus = sorted(before)
    seen: list[set[int]] = []
    monkeypatch.setattr(
        harness.SpgNode, "start", lambda node, timeout_s=30.0: seen.append(os.sched_getaffinity(0))
    )
    monkeypatch.setattr(harness.SpgNode, "stop", lambda node: None)
    stack = Stack(LoadSpec(media="inband", direct=True, pin=True), tmp_path)
    try:
        stack.start()
        assert seen == [{cpus[-1]}]  # the node (a child) inherits this
        assert os.sched_getaffinity(0) == set(cpus[:-1])  # SIPp, started next, these
    finally:
        stack.stop()
    assert os.sched_getaffinity(0) == before


def test_a_pinned_run_says_so_in_its_report() -> None:
    from test_plot_results import load_run

    run = load_run("inband", 100, 98, 150.0, 45.0)
    assert "pinned" not in loadkit.report_text(run)
    assert "the nodes pinned to the last CPU" in loadkit.report_text({**run, "pinned": True})


def test_relay_puts_rtpengine_behind_kamailio_and_the_nodes_take_its_media(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--relay`: Kamailio is started with WITH_RTPENGINE and rtpengine's control socket, and the
    nodes take media from rtpengine's address (unless told otherwise); not with --direct."""
    monkeypatch.setattr(loadkit, "SIPP", "/usr/bin/sipp")
    monkeypatch.setattr(loadkit, "KAMAILIO", "/usr/sbin/kamailio")
    monkeypatch.setattr(loadkit, "RTPENGINE", "/usr/bin/rtpengine")
    monkeypatch.setattr(harness, "RTPENGINE", "/usr/bin/rtpengine")
    monkeypatch.setattr(harness, "KAMAILIO", "/usr/sbin/kamailio")
    problem = check_spec(LoadSpec(media="inband", direct=True, relay=True))
    assert problem is not None and "--relay" in problem
    assert check_spec(LoadSpec(media="inband", relay=True)) is None
    stack = Stack(LoadSpec(media="inband", relay=True, calls=10), tmp_path)
    assert stack.relay is not None and stack.proxy is not None
    assert stack.proxy.defines == {"WITH_RTPENGINE": "1", "RTPENGINE_SOCK": stack.relay.sock}
    assert stack.nodes[0].env["SPG_RTP__MEDIA_SOURCES"] == f"{harness.RELAY_HOST}/32"
    told = LoadSpec(media="inband", relay=True, node_env={"SPG_RTP__MEDIA_SOURCES": "10.0.0.0/8"})
    assert Stack(told, tmp_path / "told").nodes[0].env["SPG_RTP__MEDIA_SOURCES"] == "10.0.0.0/8"
    monkeypatch.setattr(loadkit, "RTPENGINE", None)
    problem = check_spec(LoadSpec(media="inband", relay=True))
    assert problem is not None and "rtpengine" in problem


def test_a_relayed_run_reports_rtpengines_cpu() -> None:
    from test_plot_results import load_run

    run = load_run("inband", 100, 98, 150.0, 45.0)
    assert "rtpengine" not in loadkit.report_text(run)
    relayed = {
        **run,
        "cpu_s": {**run["cpu_s"], "relay": 3.6},
        "cpu_per_call_ms": {**run["cpu_per_call_ms"], "relay": 36.0},
    }
    assert "rtpengine 36 ms" in loadkit.report_text(relayed)
