"""Observability: logging with last-resort card masking, and the in-process metrics registry.

Logs. `setup_logging` installs one handler on the root logger writing JSON lines
(`{ts, level, logger, msg, call_id?, ...extra, exc?}`) or plain text. A `CardDataFilter` on that
handler rewrites every record before it is written: any run of 12–19 digits (spaces or dashes
allowed between groups) in the message, the extra fields, the exception text or the stack text
becomes `************1111`. Card data should never get that far (it is a type of its own,
`SecretDigits`); when the filter does mask something it counts it in `spg_log_masked_total`, so
an operator sees that a code path leaked and the digits did not.

Metrics. `Metrics` is a registry of counters, gauges and histograms kept by prometheus_client
in a private `CollectorRegistry` and rendered in the Prometheus text format (version 0.0.4) for
the admin endpoint's `/metrics`. The process-wide registry is `METRICS` (with the library's
`process_*` and `python_*` collectors); the metrics the call layer updates are module-level
objects below, and other modules add theirs with `METRICS.counter/gauge/histogram(...)`.
Label values are refused (ValueError) when they hold a run of 6 or more digits: a label must
never be able to carry a card number, and the error text never repeats the value. Callers pass
label values from small fixed sets (a SIP method not in the known list becomes "other", say):
a metric also refuses more than 1000 label sets.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO, TypeVar

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

__all__ = [
    "CALLS_ACTIVE",
    "CALLS_TOTAL",
    "CONNECTOR_LATENCY_SECONDS",
    "CONNECTOR_REQUESTS_TOTAL",
    "DTMF_DIGITS_TOTAL",
    "LOG_MASKED_TOTAL",
    "METRICS",
    "RTP_DROPPED_TOTAL",
    "RTP_PACKETS_TOTAL",
    "SIP_MESSAGES_TOTAL",
    "SIP_PARSE_ERRORS_TOTAL",
    "CardDataFilter",
    "Counter",
    "Gauge",
    "Histogram",
    "JsonFormatter",
    "Metrics",
    "TextFormatter",
    "mask_card_numbers",
    "mask_value",
    "setup_logging",
]

# ---- masking -----------------------------------------------------------------------------------

# 12–19 digits, with up to three spaces or dashes between any two of them ("4111 1111-1111 1111"),
# not glued to further digits on either side.
_CARD_RUN = re.compile(r"(?<!\d)\d(?:[ -]{0,3}\d){11,18}(?!\d)")


def _mask_match(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "*" * (len(digits) - 4) + digits[-4:]


def mask_card_numbers(text: str) -> tuple[str, int]:
    """`text` with every card-number-like digit run replaced by its last four; and how many."""
    return _CARD_RUN.subn(_mask_match, text)


def mask_value(value: Any) -> tuple[Any, int]:
    """`value` (JSON-like: str, numbers, dicts, lists, other objects) masked; and how many runs.

    Integers long enough to be a card number come back as masked strings; other objects whose
    `str()` holds such a run come back as that string masked; everything else is unchanged.
    """
    if isinstance(value, str):
        return mask_card_numbers(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value, 0
    if isinstance(value, int):
        masked, count = mask_card_numbers(str(value))
        return (masked if count else value), count
    if isinstance(value, dict):
        total = 0
        out: dict[Any, Any] = {}
        for key, item in value.items():
            new_key, key_count = mask_value(key) if isinstance(key, str | int) else (key, 0)
            new_item, item_count = mask_value(item)
            out[new_key] = new_item
            total += key_count + item_count
        return (out if total else value), total
    if isinstance(value, list | tuple):
        results = [mask_value(item) for item in value]
        total = sum(count for _, count in results)
        if not total:
            return value, 0
        items = [item for item, _ in results]
        return (items if isinstance(value, list) else tuple(items)), total
    try:
        text = str(value)
    except Exception:  # a broken __str__ must not break logging
        return f"<unprintable {type(value).__name__}>", 0
    masked, count = mask_card_numbers(text)
    return (masked if count else value), count


# Extras that are identifiers from SIP signalling, never built from keyed digits: left as they
# are, so that a Call-ID with a long digit run ("c1e123456789010712", ~2 % of random hex ones)
# still correlates a call's lines (and does not count as a masking).
IDENTIFIER_FIELDS = frozenset({"call_id"})

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_traceback_formatter = logging.Formatter()


class CardDataFilter(logging.Filter):
    """Masks card-number-like digit runs in a record, in place; never drops a record."""

    def __init__(self, counter: Counter | None = None) -> None:
        super().__init__()
        self.counter = counter

    def filter(self, record: logging.LogRecord) -> bool:
        masked_runs = 0
        try:
            message = record.getMessage()
        except Exception:
            # Arguments that do not fit the format: keep the format only, never the arguments
            # (logging's own error report would print them).
            message = f"{record.msg} [log arguments did not match the format]"
        message, count = mask_card_numbers(message)
        masked_runs += count
        record.msg, record.args = message, None

        for key in [
            k for k in record.__dict__ if k not in _RECORD_ATTRS and k not in IDENTIFIER_FIELDS
        ]:
            value, count = mask_value(record.__dict__[key])
            if count:
                record.__dict__[key] = value
                masked_runs += count

        if record.exc_info:
            if not record.exc_text:
                record.exc_text = _traceback_formatter.formatException(record.exc_info)
            # The traceback's frames hold locals (maybe card data): keep only the masked text.
            record.exc_info = None
        if record.exc_text:
            record.exc_text, count = mask_card_numbers(record.exc_text)
            masked_runs += count
        if record.stack_info:
            record.stack_info, count = mask_card_numbers(record.stack_info)
            masked_runs += count

        if masked_runs and self.counter is not None:
            self.counter.inc()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, call_id (when given), extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extras = _extras(record)
        if "call_id" in extras:
            entry["call_id"] = extras.pop("call_id")
        for key, value in extras.items():
            entry[key if key not in entry else f"extra_{key}"] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`TS LEVEL logger: msg key=value ...` and the traceback on the following lines."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        for key, value in _extras(record).items():
            line += f" {key}={value}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def setup_logging(format: str, level: str, stream: TextIO | None = None) -> logging.Handler:
    """Route the root logger to `stream` (stderr) as `json` or `text`, masking card data.

    Calling it again replaces the handler it installed before. Returns the handler.
    """
    if format not in ("json", "text"):
        raise ValueError(f"log format must be json or text, got {format!r}")
    if level.lower() not in _LEVELS:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)}, got {level!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "spg_handler", False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.spg_handler = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    handler.addFilter(CardDataFilter(LOG_MASKED_TOTAL))
    root.addHandler(handler)
    root.setLevel(_LEVELS[level.lower()])
    # httpx/httpcore log every request URL (tokens, callback query strings) at INFO/DEBUG:
    # our connector logs what an operator needs, so keep theirs to warnings.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings go through the same masking handler
    return handler


# ---- metrics -----------------------------------------------------------------------------------
#
# prometheus_client counts and writes the text format; the classes below are a thin facade that
# adds the two rules a payment node needs (no digit runs in label values, a bounded number of
# label sets) and keeps the call style the code uses: `metric.inc(**labels)`, `metric.get()`.

# No `*_created` series: they would double every series to say when the process started.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LABEL_DIGIT_RUN = re.compile(r"\d(?:[ -]?\d){5,}")

MAX_SERIES_PER_METRIC = 1000  # label values must come from small fixed sets; this bounds a mistake
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelKey = tuple[str, ...]
_M = TypeVar("_M", bound="_Metric")


class _Metric:
    """One metric of a `Metrics` registry: name and label checks, and its label sets."""

    kind = ""
    _sample_suffix = ""  # of the sample `get` reads: "" for a gauge, "_total" for a counter

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"bad metric name {name!r}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        for label in self.labelnames:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"{name}: bad label name {label!r}")
        if len(set(self.labelnames)) != len(self.labelnames):
            raise ValueError(f"{name}: duplicate label names")
        self._lock = threading.Lock()
        # Label set -> prometheus_client child: one check per new label set, then a dict lookup.
        self._children: dict[LabelKey, Any] = {}

    def _adopt(self, metric: MetricWrapperBase) -> None:
        self._metric = metric
        if not self.labelnames:
            self._children[()] = metric  # an unlabelled series exists from the start

    def _child(self, labels: dict[str, Any], create: bool = True) -> Any:
        """The prometheus_client child of a label set (None for an unknown one if not
        `create`: a read does not take one of the label sets)."""
        if len(labels) != len(self.labelnames) or set(labels) != set(self.labelnames):
            raise ValueError(
                f"{self.name}: expected labels ({', '.join(self.labelnames)}), "
                f"got ({', '.join(sorted(labels))})"
            )
        key = tuple(str(labels[n]) for n in self.labelnames)
        child = self._children.get(key)
        if child is not None:
            return child
        for label, value in zip(self.labelnames, key, strict=True):
            if _LABEL_DIGIT_RUN.search(value):
                # The value is not repeated: it could be card data.
                raise ValueError(
                    f"{self.name}: value of label {label!r} refused "
                    "(it holds a run of 6 or more digits)"
                )
        if not create:
            return None
        with self._lock:
            child = self._children.get(key)
            if child is None:
                if len(self._children) >= MAX_SERIES_PER_METRIC:
                    raise ValueError(
                        f"{self.name}: more than {MAX_SERIES_PER_METRIC} label sets "
                        "(label values must come from a small fixed set)"
                    )
                child = self._children[key] = self._metric.labels(*key)
        return child

    def _read(self, labels: dict[str, Any], suffix: str) -> float:
        child = self._child(labels, create=False)
        if child is None:
            return 0.0
        for family in child.collect():
            for sample in family.samples:
                if sample.name == family.name + suffix:
                    return float(sample.value)
        return 0.0


class _Scalar(_Metric):
    """Counter and gauge: one number per label set."""

    def get(self, **labels: Any) -> float:
        return self._read(labels, self._sample_suffix)


class Counter(_Scalar):
    """A number that only goes up (exposed as `<name>_total`: name it so)."""

    kind = "counter"
    _sample_suffix = "_total"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Iterable[str] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(name, help, labelnames)
        self._adopt(prometheus_client.Counter(name, help, self.labelnames, registry=registry))

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease")
        self._child(labels).inc(amount)


class Gauge(_Scalar):
    """A number that goes up and down."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Iterable[str] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(name, help, labelnames)
        self._adopt(prometheus_client.Gauge(name, help, self.labelnames, registry=registry))

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        self._child(labels).inc(amount)

    def dec(self, amount: float = 1.0, **labels: Any) -> None:
        self._child(labels).dec(amount)

    def set(self, value: float, **labels: Any) -> None:
        self._child(labels).set(value)


class Histogram(_Metric):
    """Observations counted in fixed buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Iterable[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(name, help, labelnames)
        if "le" in self.labelnames:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct numbers")
        self.buckets = tuple(bounds)
        self._adopt(
            prometheus_client.Histogram(
                name, help, self.labelnames, registry=registry, buckets=self.buckets
            )
        )

    def observe(self, value: float, **labels: Any) -> None:
        self._child(labels).observe(value)

    def get_count(self, **labels: Any) -> int:
        return int(self._read(labels, "_count"))

    def get_sum(self, **labels: Any) -> float:
        return self._read(labels, "_sum")


class Metrics:
    """A registry: creates metrics once by name and renders them all for Prometheus.

    Each `Metrics` has its own prometheus_client `CollectorRegistry` (`registry`), never the
    library's global one. `process_metrics=True` adds the library's process (`process_*`: open
    file descriptors, resident memory, CPU), platform (`python_info`) and garbage collector
    (`python_gc_*`) collectors.
    """

    def __init__(self, process_metrics: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def _add(self, name: str, make: Callable[[], _M]) -> _M:
        with self._lock:
            if name in self._metrics:
                raise ValueError(f"metric {name!r} is already registered")
            metric = make()
            self._metrics[name] = metric
            return metric

    def counter(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Counter:
        return self._add(name, lambda: Counter(name, help, labelnames, self.registry))

    def gauge(
        self,
        name: str,
        help: str,
        labelnames: Iterable[str] = (),
    ) -> Gauge:
        return self._add(name, lambda: Gauge(name, help, labelnames, self.registry))

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Iterable[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        return self._add(name, lambda: Histogram(name, help, labelnames, buckets, self.registry))

    def get(self, name: str) -> _Metric | None:
        return self._metrics.get(name)

    def render_prometheus(self) -> str:
        """All metrics in the Prometheus text exposition format 0.0.4."""
        return generate_latest(self.registry).decode("utf-8")


# ---- the process's metrics ---------------------------------------------------------------------

METRICS = Metrics(process_metrics=True)

CALLS_TOTAL = METRICS.counter("spg_calls_total", "Calls ended, by result.", ("result",))
CALLS_ACTIVE = METRICS.gauge("spg_calls_active", "Calls in progress.")
CALLS_REJECTED_TOTAL = METRICS.counter(
    "spg_calls_rejected_total",
    "INVITEs refused before answering, by SIP status (488 no common media, 503 draining...).",
    ("status",),
)
SIP_MESSAGES_TOTAL = METRICS.counter(
    "spg_sip_messages_total",
    "SIP messages by direction (in, out) and kind (request method or response status class).",
    ("direction", "kind"),
)
SIP_PARSE_ERRORS_TOTAL = METRICS.counter(
    "spg_sip_parse_errors_total", "Received SIP messages that could not be parsed."
)
RTP_PACKETS_TOTAL = METRICS.counter(
    "spg_rtp_packets_total", "RTP packets by direction (in, out).", ("direction",)
)
RTP_DROPPED_TOTAL = METRICS.counter(
    "spg_rtp_dropped_total",
    "Received RTP packets dropped, by reason (e.g. wrong source, malformed, srtp).",
    ("reason",),
)
RTP_SHARED_PORT_CALLS = METRICS.gauge(
    "spg_rtp_shared_port_calls",
    "Calls whose media is on the shared port (rtp.shared_port); the others have a port each.",
)
RTCP_PACKETS_TOTAL = METRICS.counter(
    "spg_rtcp_packets_total",
    "RTCP compound packets by direction (in: accepted from callers, out: our reports).",
    ("direction",),
)
RTP_LOST_TOTAL = METRICS.counter(
    "spg_rtp_lost_total",
    "RTP packets callers sent that never arrived (RTCP reception statistics, at call end).",
)
RTP_JITTER_SECONDS = METRICS.histogram(
    "spg_rtp_jitter_seconds",
    "Interarrival jitter of each call's incoming RTP at its end (RFC 3550 A.8).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32),
)
DTMF_DIGITS_TOTAL = METRICS.counter(
    "spg_dtmf_digits_total", "DTMF digits detected, by source (rfc4733, inband, info).", ("source",)
)
DTMF_LATENCY_SECONDS = METRICS.histogram(
    "spg_dtmf_latency_seconds",
    "From a key press reaching the node to the caller's journey taking its digit, by source: "
    "rfc4733 from its first packet's arrival, inband from the arrival of the packet carrying "
    "the tones' onset, info from the request's arrival.",
    ("source",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.2),
)
CONNECTOR_REQUESTS_TOTAL = METRICS.counter(
    "spg_connector_requests_total",
    "Payment platform requests by operation (lookup, authorize) and outcome.",
    ("op", "outcome"),
)
CONNECTOR_LATENCY_SECONDS = METRICS.histogram(
    "spg_connector_latency_seconds",
    "Payment platform request latency in seconds.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
LOG_MASKED_TOTAL = METRICS.counter(
    "spg_log_masked_total",
    "Log records or admin responses in which a card-number-like digit run was masked as a "
    "last resort (should stay 0).",
)
