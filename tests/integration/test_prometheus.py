"""A real Prometheus scrapes a real node: `spg-media serve` (the harness's `SpgNode`) takes one
payment call from our test caller, and Prometheus (Debian's, on loopback, scraping every second,
with deploy/prometheus/alerts.yml loaded) must show the call in `spg_calls_total` through its
HTTP API, with the node's `process_*` metrics beside it; and every query of the Grafana
dashboard (deploy/grafana/spg-media.json) must be one Prometheus accepts."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import HOST, REPO, SpgNode, free_port, stop_process, wait_for

from spg_media.testcaller import TestCaller

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PROMETHEUS = shutil.which("prometheus")
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "spg-media.json"


class PrometheusProcess:
    """Debian's prometheus on 127.0.0.1 (a free port, its storage in `workdir`), scraping
    `targets` of job spg-media every second."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.targets = targets
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {json.dumps(str(ALERTS))}\n"
            "scrape_configs:\n  - job_name: spg-media\n    static_configs:\n"
            f"      - targets: {json.dumps(self.targets)}\n"
        )
        assert PROMETHEUS is not None
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if not wait_for(lambda: self._get("/-/ready") is not None, timeout_s):
            self.stop()
            raise RuntimeError(f"prometheus did not get ready: {self.log()[-2000:]}")

    def _get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return bytes(response.read())
        except OSError:
            return None

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400 for a query it cannot parse
            answer = json.loads(exc.read())
        except OSError:
            return None
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        data = self.api("query", query=expr)
        if data is None:
            return []
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[SpgNode]:
    spg = SpgNode(
        tmp_path / "node",
        {"SPG_IVR__FIRST_DIGIT_TIMEOUT_S": "3", "SPG_IVR__INTER_DIGIT_TIMEOUT_S": "2"},
    )
    spg.start()
    yield spg
    spg.stop()


@pytest.fixture
def prometheus(tmp_path: Path, node: SpgNode) -> Iterator[PrometheusProcess]:
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    server = PrometheusProcess(tmp_path / "prometheus", [f"{HOST}:{node.admin_port}"])
    server.workdir.mkdir()
    server.start()
    yield server
    server.stop()


async def pay(port: int) -> str | None:
    caller = TestCaller((HOST, port), "sbx-4990-EUR-prom", return_to=f"sip:agent@{HOST}:5999")
    try:
        await caller.start()
        assert await caller.call() == 200
        await asyncio.sleep(0.3)
        for keys in ("4111111111111111#", "1230", "123"):
            await caller.key(keys, gap_s=0.06)
        report = await caller.wait_end(40)
        return report.result_headers.get("X-SPG-Result")
    finally:
        await caller.close()


def poll(check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


def test_prometheus_scrapes_a_payment_call_and_the_process(
    node: SpgNode, prometheus: PrometheusProcess
) -> None:
    target = f"{HOST}:{node.admin_port}"
    up = poll(lambda: [v for labels, v in prometheus.query('up{job="spg-media"}') if v == 1], 10)
    assert up, f"target {target} never up: {prometheus.api('targets')}"
    assert not prometheus.query('spg_calls_total{result="approved"} > 0')

    assert asyncio.run(pay(node.sip_port)) == "approved"

    def approved() -> list[tuple[dict[str, str], float]]:
        return prometheus.query('spg_calls_total{job="spg-media"}')

    series = poll(lambda: [s for s in approved() if s[0].get("result") == "approved"], 15)
    assert series, f"no approved call in Prometheus: {approved()}"
    [(labels, value)] = series
    assert value == 1 and labels["instance"] == target

    # The hardened node (not dumpable) still reports its own descriptors and memory.
    [(_, open_fds)] = prometheus.query("process_open_fds")
    assert open_fds > 3
    [(_, rss)] = prometheus.query("process_resident_memory_bytes")
    assert rss > 10e6
    assert prometheus.query('python_info{implementation="CPython"}')
    digits = prometheus.query('spg_dtmf_digits_total{source="rfc4733"}')
    assert digits and digits[0][1] == len("4111111111111111#" + "1230" + "123")

    # The shipped alert rules load and evaluate against the node without error.
    groups = prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 7
    assert all(rule["health"] == "ok" for rule in rules), rules
    assert not [rule for rule in rules if rule["state"] == "firing"]

    # Every dashboard query parses and runs (Grafana's variables given values).
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(dashboard["panels"])
    exprs: list[str] = []
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        exprs.extend(target["expr"] for target in panel.get("targets", []))
    assert len(exprs) > 20
    for expr in exprs:
        concrete = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        assert prometheus.api("query", query=concrete) is not None, expr
