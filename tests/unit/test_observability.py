"""Logging with card masking (message, args, extra, exception) and Prometheus rendering."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from spg_media import observability
from spg_media.observability import (
    LOG_MASKED_TOTAL,
    METRICS,
    CardDataFilter,
    Metrics,
    mask_card_numbers,
    mask_value,
    setup_logging,
)
from spg_media.payment.model import CardData, SecretDigits

PAN = "4111111111111111"
PAN_FORMS = (PAN, "4111 1111 1111 1111", "4111-1111-1111-1111")
MASKED = "************1111"


def assert_no_pan(text: str) -> None:
    for form in PAN_FORMS:
        assert form not in text
    assert "411111" not in text


# ---- masking -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "count"),
    [
        (f"card {PAN} keyed", f"card {MASKED} keyed", 1),
        ("card 4111 1111 1111 1111.", f"card {MASKED}.", 1),
        ("card 4111-1111-1111-1111", f"card {MASKED}", 1),
        ("card 4111 - 1111 - 1111 - 1111", f"card {MASKED}", 1),
        ("amex 378282246310005", "amex ***********0005", 1),
        ("twelve 123456789012", "twelve ********9012", 1),
        ("nineteen 4111111111111111234", "nineteen ***************1234", 1),
        ("eleven 12345678901", "eleven 12345678901", 0),
        ("twenty 41111111111111111111", "twenty 41111111111111111111", 0),
        (f"pan={PAN}x", f"pan={MASKED}x", 1),
        (f"{PAN},{PAN}", f"{MASKED},{MASKED}", 2),
        ("port 5080 at 2024-01-15 10:30", "port 5080 at 2024-01-15 10:30", 0),
        ("", "", 0),
    ],
)
def test_mask_card_numbers(text: str, expected: str, count: int) -> None:
    assert mask_card_numbers(text) == (expected, count)


def test_mask_value_walks_structures() -> None:
    value = {"a": [PAN, 1, None, True, 2.5], "b": (int(PAN),), PAN: "key", "c": {"d": "ok"}}
    masked, count = mask_value(value)
    assert count == 3
    assert masked == {
        "a": [MASKED, 1, None, True, 2.5],
        "b": (MASKED,),
        MASKED: "key",
        "c": {"d": "ok"},
    }
    clean = {"x": [1, "y"]}
    assert mask_value(clean) == (clean, 0)


def test_mask_value_objects_with_card_text() -> None:
    class Leaky:
        def __str__(self) -> str:
            return f"Leaky({PAN})"

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError(PAN)

    masked, count = mask_value(Leaky())
    assert (masked, count) == (f"Leaky({MASKED})", 1)
    masked, count = mask_value(Broken())
    assert masked == "<unprintable Broken>"
    assert count == 0
    safe = object()
    assert mask_value(safe) == (safe, 0)


# ---- logging -----------------------------------------------------------------------------------


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_root")
def test_json_lines_have_the_fields() -> None:
    stream = io.StringIO()
    setup_logging("json", "info", stream)
    logging.getLogger("spg.test").info(
        "call %s answered", "abc", extra={"call_id": "c-1", "phase": "card"}
    )
    logging.getLogger("spg.test").debug("not shown at info")
    [entry] = json_lines(stream)
    assert entry["level"] == "info"
    assert entry["logger"] == "spg.test"
    assert entry["msg"] == "call abc answered"
    assert entry["call_id"] == "c-1"
    assert entry["phase"] == "card"
    assert isinstance(entry["ts"], str)
    assert entry["ts"].endswith("Z")
    assert "exc" not in entry


@pytest.mark.usefixtures("restore_root")
def test_json_pan_in_msg_args_extra_and_exception_is_masked() -> None:
    stream = io.StringIO()
    setup_logging("json", "debug", stream)
    before = LOG_MASKED_TOTAL.get()
    log = logging.getLogger("spg.leak")
    log.info(f"in the message {PAN}")
    log.info("in the args %s and %d", "4111 1111 1111 1111", int(PAN))
    log.info("in extra", extra={"card": PAN, "nested": {"digits": [PAN]}, "n": int(PAN)})
    try:
        raise ValueError(f"bad card {PAN}")
    except ValueError:
        log.exception("in the exception")
    log.info("in the stack %s", "4111-1111-1111-1111", stack_info=True)
    output = stream.getvalue()
    assert_no_pan(output)
    entries = json_lines(stream)
    assert entries[0]["msg"] == f"in the message {MASKED}"
    assert entries[1]["msg"] == f"in the args {MASKED} and {MASKED}"
    assert entries[2]["card"] == MASKED
    assert entries[2]["nested"] == {"digits": [MASKED]}
    assert entries[2]["n"] == MASKED
    assert "ValueError: bad card ************1111" in str(entries[3]["exc"])
    assert "stack" in entries[4]
    assert LOG_MASKED_TOTAL.get() - before == 5


@pytest.mark.usefixtures("restore_root")
def test_a_call_id_with_a_long_digit_run_is_kept_but_the_message_is_still_masked() -> None:
    stream = io.StringIO()
    setup_logging("json", "info", stream)
    before = LOG_MASKED_TOTAL.get()
    call_id = "c1e123456789010712"  # a random hex Call-ID can hold 12+ decimal digits in a row
    logging.getLogger("spg.call").info("call result approved", extra={"call_id": call_id})
    assert LOG_MASKED_TOTAL.get() == before
    logging.getLogger("spg.call").info(f"oops {PAN}", extra={"call_id": call_id, "x": PAN})
    first, second = json_lines(stream)
    assert first["call_id"] == second["call_id"] == call_id
    assert second["msg"] == f"oops {MASKED}" and second["x"] == MASKED
    assert LOG_MASKED_TOTAL.get() - before == 1


@pytest.mark.usefixtures("restore_root")
def test_clean_records_do_not_count() -> None:
    stream = io.StringIO()
    setup_logging("json", "info", stream)
    before = LOG_MASKED_TOTAL.get()
    card = CardData(SecretDigits(PAN), 12, 2030, SecretDigits("123"), "visa")
    logging.getLogger("spg.clean").info("card %s, %r", card, card.pan, extra={"card": card})
    assert LOG_MASKED_TOTAL.get() == before
    [entry] = json_lines(stream)
    assert entry["msg"] == "card CardData(visa 1111), SecretDigits(<16 digits>)"
    assert entry["card"] == "CardData(visa 1111)"


@pytest.mark.usefixtures("restore_root")
def test_text_format_masks_too() -> None:
    stream = io.StringIO()
    setup_logging("text", "info", stream)
    log = logging.getLogger("spg.text")
    log.warning("pan %s", PAN, extra={"call_id": "c-9", "other": PAN})
    try:
        raise RuntimeError(PAN)
    except RuntimeError:
        log.exception("boom")
    output = stream.getvalue()
    assert_no_pan(output)
    first = output.splitlines()[0]
    assert f"WARNING spg.text: pan {MASKED}" in first
    assert "call_id=c-9" in first
    assert f"other={MASKED}" in first
    assert f"RuntimeError: {MASKED}" in output


@pytest.mark.usefixtures("restore_root")
def test_mismatched_args_never_print_the_args(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    handler = setup_logging("json", "info", stream)
    # An isolated logger: pytest's own capture handler on the root would raise on this record.
    logging.getLogger().removeHandler(handler)
    isolated = logging.getLogger("spg.isolated.bad")
    isolated.propagate = False
    isolated.addHandler(handler)
    try:
        isolated.info("two %s %s", PAN)
    finally:
        isolated.removeHandler(handler)
    captured = capsys.readouterr()
    assert_no_pan(stream.getvalue() + captured.err + captured.out)
    [entry] = json_lines(stream)
    assert entry["msg"] == "two %s %s [log arguments did not match the format]"


@pytest.mark.usefixtures("restore_root")
def test_setup_again_replaces_the_handler_and_sets_level() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("json", "info", first)
    handler = setup_logging("text", "warning", second)
    root = logging.getLogger()
    assert sum(1 for h in root.handlers if getattr(h, "spg_handler", False)) == 1
    assert handler in root.handlers
    assert root.level == logging.WARNING
    logging.getLogger("spg.x").warning("hello")
    logging.getLogger("spg.x").info("quiet")
    assert first.getvalue() == ""
    assert second.getvalue().count("hello") == 1
    assert "quiet" not in second.getvalue()


@pytest.mark.usefixtures("restore_root")
def test_warnings_go_through_the_mask() -> None:
    import warnings

    stream = io.StringIO()
    setup_logging("json", "info", stream)
    warnings.warn(f"careful {PAN}", UserWarning, stacklevel=1)
    assert_no_pan(stream.getvalue())
    assert MASKED in stream.getvalue()


def test_setup_logging_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        setup_logging("xml", "info", io.StringIO())
    with pytest.raises(ValueError):
        setup_logging("json", "verbose", io.StringIO())


def test_filter_without_counter_and_exc_info_dropped() -> None:
    try:
        raise KeyError(PAN)
    except KeyError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, "f", 1, "m %s", (PAN,), sys.exc_info())
    assert CardDataFilter().filter(record) is True
    assert record.exc_info is None  # frames (and their locals) are not kept
    assert record.exc_text is not None
    assert MASKED in record.exc_text
    assert_no_pan(record.exc_text)
    assert record.getMessage() == f"m {MASKED}"


# ---- metrics -----------------------------------------------------------------------------------


def test_render_counters_gauges_histograms() -> None:
    metrics = Metrics()
    calls = metrics.counter("t_calls_total", "Calls.", ("result",))
    active = metrics.gauge("t_active", "Active calls.")
    latency = metrics.histogram("t_latency_seconds", "Latency.", buckets=(0.1, 1.0))
    calls.inc(result="approved")
    calls.inc(2, result="declined")
    calls.inc(result="approved")
    active.inc()
    active.inc()
    active.dec()
    latency.observe(0.05)
    latency.observe(0.5)
    latency.observe(3)
    # prometheus_client's text format: values as floats, no *_created series.
    assert metrics.render_prometheus() == (
        "# HELP t_calls_total Calls.\n"
        "# TYPE t_calls_total counter\n"
        't_calls_total{result="approved"} 2.0\n'
        't_calls_total{result="declined"} 2.0\n'
        "# HELP t_active Active calls.\n"
        "# TYPE t_active gauge\n"
        "t_active 1.0\n"
        "# HELP t_latency_seconds Latency.\n"
        "# TYPE t_latency_seconds histogram\n"
        't_latency_seconds_bucket{le="0.1"} 1.0\n'
        't_latency_seconds_bucket{le="1.0"} 2.0\n'
        't_latency_seconds_bucket{le="+Inf"} 3.0\n'
        "t_latency_seconds_count 3.0\n"
        "t_latency_seconds_sum 3.55\n"
    )
    assert calls.get(result="approved") == 2
    assert active.get() == 1
    assert latency.get_count() == 3
    assert latency.get_sum() == pytest.approx(3.55)


def test_unlabelled_metrics_render_zero_and_labelled_render_header_only() -> None:
    metrics = Metrics()
    metrics.counter("t_errors_total", "Errors.")
    metrics.counter("t_by_kind_total", "By kind.", ("kind",))
    metrics.histogram("t_h", "H.", ("op",), buckets=(1,))
    assert metrics.render_prometheus() == (
        "# HELP t_errors_total Errors.\n# TYPE t_errors_total counter\nt_errors_total 0.0\n"
        "# HELP t_by_kind_total By kind.\n# TYPE t_by_kind_total counter\n"
        "# HELP t_h H.\n# TYPE t_h histogram\n"
    )
    assert Metrics().render_prometheus() == ""


def test_labelled_histogram_and_gauge_set() -> None:
    metrics = Metrics()
    hist = metrics.histogram("t_h", "H.", ("op",), buckets=(1, 0.5))
    hist.observe(0.7, op="lookup")
    gauge = metrics.gauge("t_g", "G.", ("pool",))
    gauge.set(2.5, pool="rtp")
    text = metrics.render_prometheus()
    assert 't_h_bucket{le="0.5",op="lookup"} 0.0\n' in text
    assert 't_h_bucket{le="1.0",op="lookup"} 1.0\n' in text
    assert 't_h_bucket{le="+Inf",op="lookup"} 1.0\n' in text
    assert 't_h_sum{op="lookup"} 0.7\n' in text
    assert 't_h_count{op="lookup"} 1.0\n' in text
    assert 't_g{pool="rtp"} 2.5\n' in text
    assert hist.get_count(op="lookup") == 1 and hist.get_count(op="other") == 0
    assert gauge.get(pool="rtp") == 2.5


def test_label_and_help_escaping() -> None:
    metrics = Metrics()
    counter = metrics.counter("t_esc_total", 'Help with \\ and\nnewline "quoted".', ("reason",))
    counter.inc(reason='a "quoted" \\ back\nslash')
    text = metrics.render_prometheus()
    assert '# HELP t_esc_total Help with \\\\ and\\nnewline "quoted".\n' in text
    assert 't_esc_total{reason="a \\"quoted\\" \\\\ back\\nslash"} 1.0\n' in text


@pytest.mark.parametrize(
    "value",
    [PAN, "123456", "abc-4111 11", "x12345678", "4111-1111-1111-1111", 41111111, "2024-01"],
)
def test_label_values_with_long_digit_runs_are_refused(value: object) -> None:
    metrics = Metrics()
    counter = metrics.counter("t_refuse_total", "R.", ("reason",))
    with pytest.raises(ValueError) as info:
        counter.inc(reason=value)
    assert str(value) not in str(info.value)
    assert "4111" not in str(info.value)
    assert "t_refuse_total" in str(info.value)
    assert "t_refuse_total" not in metrics.render_prometheus().split("\n", 2)[2]


@pytest.mark.parametrize(
    "value", ["12345", "sip 404", "v1.2.3", "rfc4733", "a1b2c3d4e5f6g7", "12345 x 67890"]
)
def test_short_digit_runs_are_fine(value: str) -> None:
    metrics = Metrics()
    counter = metrics.counter("t_ok_total", "OK.", ("reason",))
    counter.inc(reason=value)
    assert counter.get(reason=value) == 1


def test_metric_misuse_is_refused() -> None:
    metrics = Metrics()
    counter = metrics.counter("t_total", "T.", ("a",))
    with pytest.raises(ValueError, match="expected labels"):
        counter.inc()
    with pytest.raises(ValueError, match="expected labels"):
        counter.inc(a="x", b="y")
    with pytest.raises(ValueError, match="cannot decrease"):
        counter.inc(-1, a="x")
    with pytest.raises(ValueError, match="already registered"):
        metrics.counter("t_total", "again")
    with pytest.raises(ValueError, match="bad metric name"):
        metrics.counter("bad-name", "x")
    with pytest.raises(ValueError, match="bad label name"):
        metrics.counter("t_x", "x", ("bad-label",))
    with pytest.raises(ValueError, match="reserved"):
        metrics.histogram("t_h", "x", ("le",))
    with pytest.raises(ValueError, match="distinct"):
        metrics.histogram("t_h2", "x", buckets=(1, 1))


def test_series_per_metric_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observability, "MAX_SERIES_PER_METRIC", 3)
    counter = Metrics().counter("t_many_total", "M.", ("kind",))
    assert counter.get(kind="z") == 0  # reading does not take a label set
    for kind in ("a", "b", "c"):
        counter.inc(kind=kind)
    counter.inc(kind="a")  # known label sets still count
    with pytest.raises(ValueError, match="more than 3 label sets"):
        counter.inc(kind="d")
    assert counter.get(kind="a") == 2


def test_number_formatting() -> None:
    metrics = Metrics()
    gauge = metrics.gauge("t_num", "N.", ("k",))
    gauge.set(float("inf"), k="inf")
    gauge.set(float("nan"), k="nan")
    gauge.set(-3, k="neg")
    gauge.set(0.25, k="frac")
    gauge.set(1e20, k="big")
    text = metrics.render_prometheus()
    assert 't_num{k="inf"} +Inf\n' in text
    assert 't_num{k="nan"} NaN\n' in text
    assert 't_num{k="neg"} -3.0\n' in text
    assert 't_num{k="frac"} 0.25\n' in text
    assert 't_num{k="big"} 1e+20\n' in text


def test_process_metrics_are_registered() -> None:
    text = METRICS.render_prometheus()
    for name, kind in [
        ("spg_calls_total", "counter"),
        ("spg_calls_active", "gauge"),
        ("spg_sip_messages_total", "counter"),
        ("spg_sip_parse_errors_total", "counter"),
        ("spg_rtp_packets_total", "counter"),
        ("spg_rtp_dropped_total", "counter"),
        ("spg_dtmf_digits_total", "counter"),
        ("spg_connector_requests_total", "counter"),
        ("spg_connector_latency_seconds", "histogram"),
        ("spg_log_masked_total", "counter"),
    ]:
        assert f"# TYPE {name} {kind}\n" in text
    observability.SIP_MESSAGES_TOTAL.inc(direction="in", kind="INVITE")
    observability.CONNECTOR_REQUESTS_TOTAL.inc(op="authorize", outcome="approved")
    observability.CONNECTOR_LATENCY_SECONDS.observe(0.2)
    text = METRICS.render_prometheus()
    assert 'spg_sip_messages_total{direction="in",kind="INVITE"}' in text
    assert 'spg_connector_requests_total{op="authorize",outcome="approved"}' in text
    assert 'spg_connector_latency_seconds_bucket{le="0.25"}' in text


def test_the_node_registry_has_process_metrics_and_is_private() -> None:
    import prometheus_client

    text = METRICS.render_prometheus()
    for name in ("process_open_fds", "process_max_fds", "process_resident_memory_bytes"):
        assert f"# TYPE {name} gauge\n" in text
    assert "# TYPE process_cpu_seconds_total counter\n" in text
    assert "python_info{" in text
    assert "python_gc_objects_collected_total{" in text
    open_fds = [line for line in text.splitlines() if line.startswith("process_open_fds ")]
    assert len(open_fds) == 1 and float(open_fds[0].split()[1]) >= 3  # stdin, stdout, stderr
    # Nothing of ours in the library's global registry, nothing of its in a plain Metrics.
    assert "spg_" not in prometheus_client.generate_latest().decode()
    assert "process_" not in Metrics().render_prometheus()
    assert "_created" not in text
