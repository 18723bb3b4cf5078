"""docs/operations.md stays true to the code: every warning and error the code logs is in its
table of messages to alert on, and every `spg_*` metric the code registers is in its metrics
section (a message or a metric added without a line there fails here).

The code is read with `ast`, not by importing it: a message counts wherever a logger calls
`warning`, `error`, `exception` or `critical` (or `log(level, ...)` with one of those levels)
with a literal format string. `%s`, `%d`, `%.1f`, `%(name)s`... stand for values: the document
writes them as `…` (or `...`).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import spg_media
from spg_media.observability import METRICS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "spg_media"
DOC = ROOT / "docs" / "operations.md"

ALERT_METHODS = frozenset({"warning", "error", "exception", "critical"})
ALERT_LEVELS = frozenset({"WARNING", "WARN", "ERROR", "CRITICAL", "FATAL"})
METRIC_FACTORIES = frozenset({"counter", "gauge", "histogram", "Counter", "Gauge", "Histogram"})

# printf-style conversions as logging applies them: %s, %d, %5.1f, %-8s, %(name)s, %r ...
_PLACEHOLDER = re.compile(
    r"%(?:\([^)]*\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[diouxXeEfFgGcrsa]"
)


@dataclass(frozen=True)
class LogCall:
    where: str  # path:line
    level: str
    message: str | None  # the literal format string, None when it is not a literal


def normalise(text: str) -> str:
    """Placeholders as `…`, whitespace collapsed: the form the document is compared in."""
    text = _PLACEHOLDER.sub("…", text).replace("%%", "%")
    return " ".join(text.split())


def normalise_doc(text: str) -> str:
    text = text.replace("...", "…").replace("\\|", "|")
    return " ".join(text.split())


def section(text: str, heading: str) -> str:
    """The text of the `## heading...` section (up to the next second-level heading)."""
    match = re.search(rf"^## {re.escape(heading)}.*?$(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"docs/operations.md has no section '## {heading}'"
    return match.group(1)


# ---- reading the code ---------------------------------------------------------------------------


def _is_get_logger(node: ast.AST) -> bool:
    """`logging.getLogger(...)` or `getLogger(...)`."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "getLogger") or (
        isinstance(func, ast.Name) and func.id == "getLogger"
    )


def _logger_names(tree: ast.AST) -> set[str]:
    """Names bound to a logger anywhere in a module (`log = logging.getLogger(...)`)."""
    names = {"log", "logger", "_log", "_logger", "LOG", "LOGGER"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _is_get_logger(node.value):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif (
            isinstance(node, ast.AnnAssign)
            and node.value
            and _is_get_logger(node.value)
            and isinstance(node.target, ast.Name)
        ):
            names.add(node.target.id)
    return names


def _literal(node: ast.AST | None) -> str | None:
    """A string literal (implicit concatenation is one constant already); an f-string's parts
    with its fields as `%s`; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            part.value if isinstance(part, ast.Constant) and isinstance(part.value, str) else "%s"
            for part in node.values
        )
    return None


def _level_of_log_call(node: ast.Call) -> str | None:
    """The level of `logger.log(logging.WARNING, ...)`, when it is a named level."""
    if not node.args:
        return None
    level = node.args[0]
    if isinstance(level, ast.Attribute) and level.attr in ALERT_LEVELS:
        return level.attr.lower()
    if isinstance(level, ast.Name) and level.id in ALERT_LEVELS:
        return level.id.lower()
    return None


def alertable_log_calls(source: str, where: str = "<source>") -> list[LogCall]:
    """Every warning-or-worse log call in `source`, with its format string."""
    tree = ast.parse(source)
    loggers = _logger_names(tree)
    found: list[tuple[int, LogCall]] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        receiver, method = node.func.value, node.func.attr
        is_logger = (
            (isinstance(receiver, ast.Name) and receiver.id in loggers)
            or _is_get_logger(receiver)
            or (isinstance(receiver, ast.Name) and receiver.id == "logging")  # the root logger
        )
        if not is_logger:
            continue
        if method in ALERT_METHODS:
            level, message_arg = method, (node.args[0] if node.args else None)
        elif method == "log" and (level_name := _level_of_log_call(node)):
            level, message_arg = level_name, (node.args[1] if len(node.args) > 1 else None)
        else:
            continue
        if message_arg is None:
            message_arg = next((k.value for k in node.keywords if k.arg == "msg"), None)
        found.append((node.lineno, LogCall(f"{where}:{node.lineno}", level, _literal(message_arg))))
    return [call for _, call in sorted(found, key=lambda item: item[0])]


def code_log_calls() -> list[LogCall]:
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(ROOT))
        calls += alertable_log_calls(path.read_text(encoding="utf-8"), where)
    return calls


def registered_metric_names(source: str) -> set[str]:
    """`spg_*` names passed first to `METRICS.counter/gauge/histogram(...)` or to a
    prometheus_client `Counter/Gauge/Histogram(...)`."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        name = _literal(node.args[0])
        if called in METRIC_FACTORIES and name and name.startswith("spg_"):
            names.add(name)
    return names


def code_metric_names() -> set[str]:
    names: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        names |= registered_metric_names(path.read_text(encoding="utf-8"))
    return names


# ---- the document against the code --------------------------------------------------------------


def documented_messages(doc_text: str) -> set[str]:
    """The code spans of the Logs section, normalised: a message must be one of them whole (a
    short message such as `call failed` must not pass for being part of a longer one)."""
    return {normalise_doc(span) for span in re.findall(r"`([^`\n]+)`", section(doc_text, "Logs"))}


def missing_messages(calls: list[LogCall], doc_text: str) -> list[str]:
    table = documented_messages(doc_text)
    missing = []
    for call in calls:
        assert call.message is not None, (
            f"{call.where}: log a literal format string (arguments after it), so that the "
            "message can be documented in docs/operations.md"
        )
        if normalise(call.message) not in table:
            missing.append(f"{call.where} ({call.level}): {normalise(call.message)}")
    return sorted(set(missing))


def test_every_warning_and_error_the_code_logs_is_documented() -> None:
    calls = code_log_calls()
    assert len(calls) >= 40  # the scan finds the code's log calls (about 60 today)
    assert missing_messages(calls, DOC.read_text(encoding="utf-8")) == []


def test_every_spg_metric_the_code_registers_is_documented() -> None:
    metrics = section(DOC.read_text(encoding="utf-8"), "Metrics")
    names = code_metric_names()
    assert {"spg_calls_total", "spg_sip_connections_open", "spg_workers_running"} <= names
    assert sorted(name for name in names if f"`{name}`" not in metrics) == []


def test_the_scan_sees_every_metric_the_running_registry_holds() -> None:
    # Import every module: whatever registers a metric on METRICS at import time is then in
    # the registry, and the source scan must have found it too (else the scan is blind).
    for module in pkgutil.walk_packages(spg_media.__path__, "spg_media."):
        if not module.name.endswith("__main__"):  # that one runs the command line
            importlib.import_module(module.name)
    registered = {name for name in METRICS._metrics if name.startswith("spg_")}
    assert registered and registered <= code_metric_names()


# ---- the checks can fail ------------------------------------------------------------------------

_PROBE = """
import logging
log = logging.getLogger("spg.probe")
def f(port, exc):
    log.warning("worker %d exited (%s); starting it again in %.1f s", 1, "x", 0.5)
    log.error("journal %(path)s: %d line(s)" " skipped", extra={})
    log.exception("media of the session on port %d failed", port)
    logging.getLogger("spg.other").critical(f"cannot reach {port}: {exc}")
    log.log(logging.ERROR, "level given as a number %s", port)
    log.info("an info line is no alert %s", port)
    log.warning(some_variable)
    warnings.warn("not a logger")
    parser.error("not a logger either")
"""


def test_the_scan_finds_each_form_of_log_call() -> None:
    calls = alertable_log_calls(_PROBE)
    assert [(c.level, c.message and normalise(c.message)) for c in calls] == [
        ("warning", "worker … exited (…); starting it again in … s"),
        ("error", "journal …: … line(s) skipped"),
        ("exception", "media of the session on port … failed"),
        ("critical", "cannot reach …: …"),
        ("error", "level given as a number …"),
        ("warning", None),
    ]


def test_a_message_missing_from_the_doc_is_reported() -> None:
    doc = (
        "# Ops\n\n## Logs\n\n"
        "| `spg.x` | warning | `worker ... exited (…); starting it again in … s` |\n"
        "| `spg.x` | error | `media of the session on port … failed` |\n"
        "| `spg.x` | error | `level given as a number … or not` (a longer one: no match) |\n\n"
        "## Metrics\n\n`cannot reach …: …` is in another section\n"
    )
    calls = [c for c in alertable_log_calls(_PROBE) if c.message is not None]
    assert missing_messages(calls, doc) == [
        "<source>:6 (error): journal …: … line(s) skipped",
        "<source>:8 (critical): cannot reach …: …",
        "<source>:9 (error): level given as a number …",
    ]


def test_a_log_call_without_a_literal_message_is_refused() -> None:
    calls = alertable_log_calls(_PROBE)
    with pytest.raises(AssertionError, match="literal format string"):
        missing_messages(calls, "## Logs\n")


def test_the_metric_scan_finds_both_kinds_of_registration() -> None:
    source = (
        'A = METRICS.counter("spg_probe_total", "h", ("x",))\n'
        'B = METRICS.histogram("spg_probe_seconds", "h")\n'
        'C = Gauge("spg_probe_running", "h", registry=r)\n'
        'D = METRICS.gauge("other_metric", "h")\n'
        'E = counter("spg_" + name, "h")\n'
    )
    assert registered_metric_names(source) == {
        "spg_probe_total", "spg_probe_seconds", "spg_probe_running",
    }  # fmt: skip
