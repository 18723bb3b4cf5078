"""`serve --workers N`: the plan (ports, RTP slices), the dispatcher entries, the restart policy,
and what the supervisor's admin endpoint makes of its workers' answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spg_media.cli import main
from spg_media.config import Config, ConfigError, load_config
from spg_media.workers import (
    RestartPolicy,
    calls_in_health,
    dispatcher_lines,
    merge_calls,
    merge_health,
    merge_metrics,
    plan_workers,
    speech_processes_per_worker,
    worker_command,
    worker_count,
    worker_environment,
)

RUN = Path("/run/spg-test")


def config(**sections: dict[str, object]) -> Config:
    return Config().with_overrides(**sections)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from spg_media.tlscert import OpensslMissing, make_self_signed

    try:
        pair = make_self_signed(tmp_path_factory.mktemp("tls"))
    except OpensslMissing:
        pytest.skip("openssl not installed")
    return {"tls_cert": str(pair.cert), "tls_key": str(pair.key)}


def test_each_worker_gets_its_own_ports_and_a_slice_of_the_rtp_range(
    tls_files: dict[str, object],
) -> None:
    listen = ["udp:10.0.0.5:5080", "tcp:10.0.0.5:5080", "tls:10.0.0.5:5090"]
    cfg = config(
        sip={"listen": listen, **tls_files},
        rtp={"port_min": 20000, "port_max": 29999},
    )
    plans = plan_workers(cfg, 3, RUN)
    assert [p.listen for p in plans] == [
        ("udp:10.0.0.5:5080", "tcp:10.0.0.5:5080", "tls:10.0.0.5:5090"),
        ("udp:10.0.0.5:5081", "tcp:10.0.0.5:5081", "tls:10.0.0.5:5091"),
        ("udp:10.0.0.5:5082", "tcp:10.0.0.5:5082", "tls:10.0.0.5:5092"),
    ]
    slices = [(p.rtp_port_min, p.rtp_port_max) for p in plans]
    assert slices == [(20000, 23331), (23332, 26663), (26664, 29995)]
    for low, high in slices:
        assert low % 2 == 0 and high % 2 == 1  # RTP even, its RTCP the odd port above
    assert [p.admin_socket for p in plans] == [RUN / f"worker-{i}.sock" for i in range(3)]


def test_an_odd_rtp_start_is_rounded_to_even() -> None:
    plans = plan_workers(config(rtp={"port_min": 20001, "port_max": 20100}), 2, RUN)
    assert [(p.rtp_port_min, p.rtp_port_max) for p in plans] == [(20002, 20049), (20050, 20097)]


@pytest.mark.parametrize(
    ("sections", "count", "key", "words"),
    [
        ({"sip": {"listen": ["udp:127.0.0.1:65535"]}}, 2, "sip.listen", "65535-65536"),
        (
            {"sip": {"listen": ["tcp:127.0.0.1:5080", "tls:127.0.0.1:5081"]}},
            2,
            "sip.listen",
            "overlap",
        ),
        ({"rtp": {"port_min": 20000, "port_max": 20030}}, 2, "rtp.port_min", "too small"),
    ],
)
def test_workers_that_do_not_fit_are_a_config_error_naming_the_key(
    sections: dict[str, dict[str, object]],
    count: int,
    key: str,
    words: str,
    tls_files: dict[str, object],
) -> None:
    if "sip" in sections:
        sections = {"sip": {**sections["sip"], **tls_files}}
    with pytest.raises(ConfigError) as caught:
        plan_workers(config(**sections), count, RUN)
    assert caught.value.key == key
    assert words in str(caught.value)


def test_udp_and_tcp_listeners_on_the_same_port_do_not_collide() -> None:
    cfg = config(sip={"listen": ["udp:127.0.0.1:5080", "tcp:127.0.0.1:5080"]})
    assert len(plan_workers(cfg, 8, RUN)) == 8


def test_zero_workers_means_one_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2})
    assert worker_count(0) == 3
    assert worker_count(5) == 5


def test_the_dispatcher_entries_name_every_worker_and_transport(
    tls_files: dict[str, object],
) -> None:
    listen = ["udp:0.0.0.0:5080", "tls:0.0.0.0:5061"]
    cfg = config(sip={"listen": listen, "public_host": "10.1.2.3", **tls_files})
    assert dispatcher_lines(cfg, 2, setid=7)[1:] == [
        "7 sip:10.1.2.3:5080 0 0 worker=0",
        "7 sip:10.1.2.3:5061;transport=tls 0 0 worker=0",
        "7 sip:10.1.2.3:5081 0 0 worker=1",
        "7 sip:10.1.2.3:5062;transport=tls 0 0 worker=1",
    ]


def test_kamailio_dispatcher_command(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["kamailio-dispatcher", "--workers", "2"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.splitlines()[1:] == [
        "1 sip:127.0.0.1:5080 0 0 worker=0",
        "1 sip:127.0.0.1:5080;transport=tcp 0 0 worker=0",
        "1 sip:127.0.0.1:5081 0 0 worker=1",
        "1 sip:127.0.0.1:5081;transport=tcp 0 0 worker=1",
    ]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["serve", "--workers", "many"], "--workers"),
        (["serve", "--workers", "-1"], "--workers"),
        (["kamailio-dispatcher", "--setid", "x"], "--setid"),
        (["serve", "--workers", "2", "--sip", "udp:127.0.0.1:65535"], "sip.listen"),
    ],
)
def test_bad_worker_arguments_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    code = main(argv)
    _, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and words in err


def test_process_workers_key_is_checked() -> None:
    assert load_config(None, env={"SPG_PROCESS__WORKERS": "4"}).process.workers == 4
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={"SPG_PROCESS__WORKERS": "-1"})
    assert caught.value.key == "process.workers"


def test_a_worker_is_serve_with_its_own_listeners_admin_socket_and_rtp_slice() -> None:
    plan = plan_workers(config(), 2, RUN)[1]
    command = worker_command(plan, "/etc/spg-media/spg.toml")
    assert command[1:] == [
        "-m", "spg_media", "serve", "--workers", "1", "-c", "/etc/spg-media/spg.toml",
        "--sip", "udp:127.0.0.1:5081", "--sip", "tcp:127.0.0.1:5081",
        "--admin", f"unix:{RUN / 'worker-1.sock'}", "--worker-index", "1",
    ]  # fmt: skip
    env = worker_environment(plan, {"PATH": "/bin"})
    assert env["SPG_RTP__PORT_MIN"] == str(plan.rtp_port_min)
    assert env["SPG_RTP__PORT_MAX"] == str(plan.rtp_port_max)
    assert env["PATH"] == "/bin"


def test_workers_share_the_machine_s_recogniser_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """N workers, each with a recogniser process per core, would load N x cores models."""
    monkeypatch.setattr("spg_media.workers.default_worker_count", lambda: 8)
    speech = config(ivr={"input": "dtmf speech"})
    assert speech_processes_per_worker(speech, 1) == 8
    assert speech_processes_per_worker(speech, 2) == 4
    assert speech_processes_per_worker(speech, 3) == 2
    assert speech_processes_per_worker(speech, 16) == 1  # at least one each
    # a count in the config applies to each worker; no voice entry, no recognisers
    assert (
        speech_processes_per_worker(
            config(ivr={"input": "dtmf speech"}, speech={"processes": 3}), 2
        )
        is None
    )
    assert speech_processes_per_worker(config(), 2) is None
    plan = plan_workers(speech, 2, RUN)[0]
    assert worker_environment(plan, {}, 4)["SPG_SPEECH__PROCESSES"] == "4"
    assert "SPG_SPEECH__PROCESSES" not in worker_environment(plan, {}, None)
    assert load_config(None, {"SPG_SPEECH__PROCESSES": "4"}).speech.processes == 4


def test_restart_delay_doubles_while_a_worker_dies_young_and_resets_once_it_ran() -> None:
    policy = RestartPolicy()
    delays = [policy.delay(started=t, died=t + 1) for t in range(0, 80, 10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.delay(started=100, died=200) == 0.5


WORKER = """\
# HELP spg_calls_total Calls ended, by result
# TYPE spg_calls_total counter
spg_calls_total{{result="approved"}} {approved}
# HELP spg_calls_active Calls in progress
# TYPE spg_calls_active gauge
spg_calls_active {active}
# HELP spg_connector_latency_seconds Connector latency
# TYPE spg_connector_latency_seconds histogram
spg_connector_latency_seconds_bucket{{le="0.1"}} 1.0
spg_connector_latency_seconds_bucket{{le="+Inf"}} 2.0
spg_connector_latency_seconds_sum 0.7
spg_connector_latency_seconds_count 2.0
"""


def test_metrics_of_the_workers_are_merged_with_a_worker_label() -> None:
    own = "# HELP spg_workers_running W\n# TYPE spg_workers_running gauge\nspg_workers_running 2\n"
    text = merge_metrics(
        [
            ("", own),
            ("0", WORKER.format(approved=3, active=1)),
            ("1", WORKER.format(approved=5, active=0)),
        ]
    )
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("spg_workers_running", ())] == 2
    assert samples[("spg_calls_total", (("result", "approved"), ("worker", "0")))] == 3
    assert samples[("spg_calls_total", (("result", "approved"), ("worker", "1")))] == 5
    assert samples[("spg_calls_active", (("worker", "1"),))] == 0
    assert samples[("spg_connector_latency_seconds_bucket", (("le", "+Inf"), ("worker", "0")))] == 2
    assert text.count("# TYPE spg_calls_total counter") == 1  # one family, both workers


def test_calls_and_health_of_the_workers() -> None:
    assert merge_calls([(0, [{"call_id": "a"}]), (1, [{"call_id": "b"}, {"call_id": "c"}])]) == [
        {"call_id": "a", "worker": 0},
        {"call_id": "b", "worker": 1},
        {"call_id": "c", "worker": 1},
    ]
    assert merge_health([True, True])[0] == 200
    status, body = merge_health([True, None])
    assert (status, body["status"], body["worker_states"]) == (200, "degraded", ["up", "down"])
    status, body = merge_health([False, None])
    assert (status, body["status"], body["workers_up"]) == (503, "unavailable", 0)
    # the calls in progress of the workers that said (a refusing one's count too)
    assert merge_health([True, False, None], [3, 7, None])[1]["calls"] == 10
    assert merge_health([True])[1]["calls"] == 0


def test_a_workers_call_count_is_read_from_its_health_answer() -> None:
    assert calls_in_health(b'{"status": "ok", "calls": 12}\n') == 12
    for answer in (b"ok\n", b"[]", b'{"calls": "12"}', b'{"calls": true}', b"{}", b"\xff"):
        assert calls_in_health(answer) is None


def test_stop_does_not_wait_out_a_dead_workers_restart_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that keeps dying waits up to 30 s before its next start; a stop meanwhile
    returns at once instead of sleeping through that delay."""
    import asyncio
    import sys
    import time

    from spg_media import workers

    monkeypatch.setattr(
        workers, "worker_command", lambda plan, path: [sys.executable, "-c", "raise SystemExit(1)"]
    )
    monkeypatch.setattr(workers.RestartPolicy, "delay", lambda self, started, died: 30.0)

    async def body() -> float:
        supervisor = workers.Supervisor(load_config(None, env={}), None, 1)
        await supervisor.start()
        for _ in range(200):  # the worker dies and its 30 s delay begins
            if supervisor.restarts:
                break
            await asyncio.sleep(0.05)
        assert supervisor.restarts == 1
        began = time.monotonic()
        await asyncio.wait_for(supervisor.stop(), 10)
        return time.monotonic() - began

    assert asyncio.run(body()) < 5


def test_merging_the_real_exposition_keeps_every_sample_and_family() -> None:
    from spg_media import observability as obs

    obs.DTMF_LATENCY_SECONDS.observe(0.012, source="rfc4733")
    obs.CALLS_TOTAL.inc(result="approved")
    text = obs.METRICS.render_prometheus()
    merged = merge_metrics([("0", text), ("1", text)])

    def samples(exposition: str, worker: str | None) -> set[tuple[str, tuple[Any, ...], float]]:
        return {
            (s.name, tuple(sorted({**s.labels, **({"worker": worker} if worker else {})}.items())),
             s.value)
            for family in text_string_to_metric_families(exposition)
            for s in family.samples
        }  # fmt: skip

    assert samples(merged, None) == samples(text, "0") | samples(text, "1")
    names = [f.name for f in text_string_to_metric_families(text)]
    assert [f.name for f in text_string_to_metric_families(merged)] == names
    assert merged.count("# TYPE ") == text.count("# TYPE ")
