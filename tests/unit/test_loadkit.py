"""The load kit's pure helpers (bench/loadkit.py): the caller's key plan and audio, and reading
the nodes' Prometheus histograms."""

from __future__ import annotations

import datetime
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import loadkit
from loadkit import (
    KeyPress,
    caller_audio,
    card_fields,
    gauge_value,
    histogram_delta,
    histogram_sum,
    latency_summary,
    parse_histogram,
    pause_summary,
    plan_key_presses,
    quantile,
    sandbox_transaction,
    write_alaw,
)

from spg_media.dtmf.inband import scan
from spg_media.payment.journey import PromptPart
from spg_media.rtp.g711 import decode, encode

TODAY = datetime.date(2026, 3, 1)


def two_seconds(parts: tuple[PromptPart, ...]) -> float:
    return 2.0


def test_plan_keys_each_field_after_its_prompt() -> None:
    fields = card_fields(TODAY)
    assert fields == ["4111111111111111#", "1228", "123"]
    plan = plan_key_presses(
        fields,
        two_seconds,
        transaction=sandbox_transaction(),
        today=TODAY,
        think_s=0.5,
        key_period_s=0.3,
        detect_s=0.1,
    )
    keys = "".join(p.key for p in plan.presses)
    assert keys == "".join(fields)
    times = [p.at_s for p in plan.presses]
    # announcement + enter card: 2 s, then 0.5 s to think
    assert times[0] == pytest.approx(2.5)
    assert times[16] == pytest.approx(2.5 + 16 * 0.3)  # '#'
    # the expiry prompt starts when '#' is heard (0.1 s later) and lasts 2 s
    assert times[17] == pytest.approx(times[16] + 0.1 + 2.0 + 0.5)
    assert times[21] == pytest.approx(times[20] + 0.1 + 2.0 + 0.5)  # the code
    # announce+card, expiry, code, processing
    assert plan.prompts_s == (2.0, 2.0, 2.0, 2.0)
    assert plan.end_s == times[-1]


def test_plan_refuses_keys_that_do_not_reach_the_authorisation() -> None:
    with pytest.raises(ValueError, match="authorisation"):
        plan_key_presses(
            ["4111111111111112#", "1228", "123"],  # not Luhn-valid: asked again
            two_seconds,
            transaction=sandbox_transaction(),
            today=TODAY,
        )
    with pytest.raises(ValueError, match="authorisation"):
        plan_key_presses(
            ["4111111111111111#", "1228"],
            two_seconds,
            transaction=sandbox_transaction(),
            today=TODAY,
        )
    with pytest.raises(ValueError, match="left over"):
        plan_key_presses(
            [*card_fields(TODAY), "9"],
            two_seconds,
            transaction=sandbox_transaction(),
            today=TODAY,
        )


def test_caller_audio_holds_exactly_the_planned_tones(tmp_path: Path) -> None:
    presses = [KeyPress("4", 0.5), KeyPress("1", 0.8), KeyPress("#", 1.1), KeyPress("7", 3.0)]
    audio = caller_audio(presses, 4.0, tone_s=0.1, seed=3)
    assert audio.dtype.name == "int16" and audio.size == 32000
    path = write_alaw(tmp_path / "caller.alaw", audio)
    assert path.stat().st_size == 32000  # raw A-law: one byte a sample, no header
    heard = scan(decode(path.read_bytes(), "PCMA"))
    assert [d for d, _, _ in heard] == ["4", "1", "#", "7"]
    for (_, start_ms, _), press in zip(heard, presses, strict=True):
        assert abs(start_ms - press.at_s * 1000) < 40
    # between the tones: low-level noise, not silence
    gap = audio[int(1.5 * 8000) : int(2.5 * 8000)].astype(float)
    assert 10 < math.sqrt((gap**2).mean()) < 60


def test_noise_alone_holds_no_digit() -> None:
    audio = caller_audio((), 10.0, seed=2)
    assert scan(decode(encode(audio, "PCMA"), "PCMA")) == []


def test_caller_audio_refuses_a_key_past_its_end() -> None:
    with pytest.raises(ValueError):
        caller_audio([KeyPress("1", 1.95)], 2.0, tone_s=0.1)


METRICS_BEFORE = """\
# TYPE spg_dtmf_latency_seconds histogram
spg_dtmf_latency_seconds_bucket{source="inband",le="0.05"} 2
spg_dtmf_latency_seconds_bucket{source="inband",le="0.1"} 4
spg_dtmf_latency_seconds_bucket{source="inband",le="+Inf"} 4
spg_dtmf_latency_seconds_sum{source="inband"} 0.2
spg_dtmf_latency_seconds_count{source="inband"} 4
spg_calls_active 3
spg_rtp_packets_total{direction="in"} 100
spg_rtp_packets_total{direction="out"} 7
"""

METRICS_AFTER = """\
spg_dtmf_latency_seconds_bucket{source="inband",le="0.05"} 2
spg_dtmf_latency_seconds_bucket{source="inband",le="0.1"} 12
spg_dtmf_latency_seconds_bucket{source="inband",le="+Inf"} 14
spg_dtmf_latency_seconds_bucket{source="rfc4733",le="0.05"} 10
spg_dtmf_latency_seconds_bucket{source="rfc4733",le="0.1"} 10
spg_dtmf_latency_seconds_bucket{source="rfc4733",le="+Inf"} 10
"""


def test_histogram_deltas_and_quantiles() -> None:
    before = parse_histogram(METRICS_BEFORE, "spg_dtmf_latency_seconds")
    after = parse_histogram(METRICS_AFTER, "spg_dtmf_latency_seconds")
    assert before == {"inband": {0.05: 2.0, 0.1: 4.0, math.inf: 4.0}}
    delta = histogram_delta(after, before)
    assert delta["inband"] == {0.05: 0.0, 0.1: 8.0, math.inf: 10.0}
    assert delta["rfc4733"] == {0.05: 10.0, 0.1: 10.0, math.inf: 10.0}
    # 8 of 10 in (0.05, 0.1]: the median is 5/8 of the way through that bucket
    assert quantile(delta["inband"], 0.5) == pytest.approx(0.05 + 0.05 * 5 / 8)
    assert quantile(delta["inband"], 0.99) == 0.1  # in +Inf: the highest finite bound
    assert quantile(delta["rfc4733"], 0.5) == pytest.approx(0.025)
    assert quantile({0.1: 0.0, math.inf: 0.0}, 0.5) is None
    summary = latency_summary(delta)
    assert summary["info"] is None  # not reported: printed as n/a
    inband = summary["inband"]
    assert inband is not None and inband["count"] == 10.0
    assert latency_summary(parse_histogram("spg_calls_active 1\n", "x")) == {
        "rfc4733": None,
        "inband": None,
        "info": None,
    }
    both = histogram_sum([before, before])
    assert both["inband"][0.1] == 8.0


def test_gauge_value_by_labels() -> None:
    assert gauge_value(METRICS_BEFORE, "spg_calls_active") == 3.0
    assert gauge_value(METRICS_BEFORE, "spg_rtp_packets_total") == 107.0
    assert gauge_value(METRICS_BEFORE, "spg_rtp_packets_total", direction="in") == 100.0
    assert gauge_value(METRICS_BEFORE, "spg_missing") is None


def test_latency_table_per_load_with_na_for_a_missing_metric() -> None:
    import bench_dtmf_latency

    def run(limit: int, latency: dict[str, object]) -> dict[str, object]:
        return {
            "limit": limit,
            "peak_concurrent": limit - 2,
            "approved": 2 * limit,
            "calls": 2 * limit,
            "journey_s": {"median": 44.0, "baseline": 40.0},
            "dtmf_latency_s": latency,
            "baseline": {"dtmf_latency_s": latency_summary({})},
        }

    measured = {"count": 24.0, "p50": 0.031, "p95": 0.05, "p99": 0.0625}
    runs = [run(10, {"rfc4733": measured, "inband": None, "info": None}), run(30, {})]
    rows = bench_dtmf_latency.rows_of(runs, nodes=2)
    assert [r["load"] for r in rows] == ["unloaded", 10, 30]
    assert rows[1]["per_core"] == 4.0 and rows[1]["journey_ratio"] == pytest.approx(1.1)
    table = bench_dtmf_latency.markdown(rows, "$ bench --loads 10,30").splitlines()
    assert table[0] == "`bench --loads 10,30`"
    assert table[4].startswith("| unloaded | - |")
    assert table[5] == "| 10 | 4 | 20/20 | 31 | 62 | n/a | n/a | n/a | n/a |"
    assert table[6] == "| 30 | 14 | 60/60 | n/a | n/a | n/a | n/a | n/a | n/a |"


def test_pause_summary_counts_and_bounds_the_longest() -> None:
    text = "\n".join(
        [
            'spg_gc_pause_seconds_bucket{generation="0",le="0.001"} 5.0',
            'spg_gc_pause_seconds_bucket{generation="0",le="0.01"} 7.0',
            'spg_gc_pause_seconds_bucket{generation="0",le="+Inf"} 7.0',
            'spg_gc_pause_seconds_bucket{generation="2",le="0.16"} 1.0',
            'spg_gc_pause_seconds_bucket{generation="2",le="0.64"} 1.0',
            'spg_gc_pause_seconds_bucket{generation="2",le="+Inf"} 2.0',
        ]
    )
    summary = pause_summary(parse_histogram(text, "spg_gc_pause_seconds", "generation"))
    assert summary == {
        "0": {"count": 7.0, "longest_under_s": 0.01},
        "2": {"count": 2.0, "longest_under_s": None},  # one past the last finite bound
    }


def test_the_sampler_reads_a_nodes_calls_from_its_healthz_even_when_it_refuses() -> None:
    import http.server
    import threading

    answers = [
        (200, b'{"status": "ok", "calls": 7}'),
        (503, b'{"status": "overloaded", "calls": 9}'),
        (200, b"ok\n"),  # a node that gives no count
    ]

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answers.pop(0)
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert [loadkit.fetch_calls(port) for _ in range(3)] == [7, 9, None]
    finally:
        server.shutdown()
        server.server_close()
    assert loadkit.fetch_calls(port, timeout_s=0.5) is None  # nobody answers
