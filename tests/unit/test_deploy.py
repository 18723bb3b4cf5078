"""deploy/: the Prometheus config and alert rules (promtool) and the Grafana dashboard name only
metrics a node exports, or that are being added."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import spg_media.server  # noqa: F401  (registers every module's metrics)
from spg_media.observability import METRICS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMTOOL = shutil.which("promtool")

# Metrics the dashboard and alerts may name before they exist in this tree: none now.
COMING: set[str] = set()
SCRAPE_SERIES = {"up", "scrape_duration_seconds"}  # what Prometheus adds to every target

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Every series name the node's /metrics can hold."""
    names: set[str] = set()
    for family in METRICS.registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in _PROMQL_WORDS:
            names.add(word)
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(spg_x_bucket{instance=~"$instance"}'
        "[$__rate_interval]))) / on (instance) up > bool 0.5 or vector(0)"
    )
    assert metric_names(expr) == {"spg_x_bucket", "up"}


# ---- Prometheus --------------------------------------------------------------------------------

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=60
    )


@needs_promtool
def test_prometheus_config_and_rules_are_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


@needs_promtool
def test_alerts_fire_on_their_series_and_not_on_others() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_name_exported_metrics() -> None:
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    exprs = re.findall(r"expr: \|\n((?:\s{10}.*\n)+)|expr: (.+)", text)
    assert len(exprs) == 7
    known = exported_names() | COMING | SCRAPE_SERIES
    for block, line in exprs:
        names = metric_names(block or line)
        assert names, block or line
        assert names <= known, names - known


# ---- Grafana -----------------------------------------------------------------------------------


def dashboard_exprs(dashboard: dict[str, object]) -> list[str]:
    exprs: list[str] = []
    panels = list(dashboard["panels"])  # type: ignore[call-overload]
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
        exprs.extend(target["expr"] for target in panel.get("targets", []))
    return exprs


def test_dashboard_is_json_naming_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "spg-media.json").read_text())
    assert dashboard["title"] and dashboard["uid"]
    exprs = dashboard_exprs(dashboard)
    named = set().union(*(metric_names(expr) for expr in exprs))
    known = exported_names() | COMING | SCRAPE_SERIES
    assert named <= known, named - known
    for wanted in (
        "spg_calls_active",
        "spg_calls_total",
        "spg_connector_latency_seconds_bucket",
        "spg_connector_requests_total",
        "spg_dtmf_digits_total",
        "spg_dtmf_latency_seconds_bucket",
        "spg_rtp_lost_total",
        "spg_rtp_jitter_seconds_bucket",
        "spg_calls_refused_total",
        "spg_log_masked_total",
        "process_open_fds",
        "process_resident_memory_bytes",
    ):
        assert wanted in named, wanted
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for expr in exprs:
        for variable in re.findall(r"\$\{?(\w+)", expr):
            assert variable in variables or variable.startswith("__"), variable
