"""The SIPp load kit: full-duplex payment calls against spg-media nodes, and what they cost.

Shared by `bench_sipp_load.py` (one load) and `bench_dtmf_latency.py` (several loads). This
module owns:

- the caller's key plan (`plan_key_presses`): when a caller who waits for each prompt presses
  each key of the card, expiry and code. It drives the node's own `Journey` (sans-IO) with the
  prompt lengths the node will play (`PromptLibrary`), so the keys land after each prompt ends,
  and refuses a plan that would not reach the authorisation;
- the caller's audio (`caller_audio`): low-level line noise for the whole call, with the plan's
  keys as in-band DTMF tones or without them (the RFC 4733 caller's stream), written as raw
  8 kHz A-law (`write_alaw`) because SIPp 3.6.1's `rtp_stream` sends a file's bytes as they
  are, header included;
- reading the nodes' Prometheus text (`parse_histogram`, `histogram_delta`, `quantile`), their
  CPU and RSS from /proc, and `run_load`: nodes (and Kamailio unless direct), one unloaded call
  per kind of caller, then the load, sampled every half second.

Kinds of caller (`--media`): `rfc4733` streams noise and keys with SIPp's RFC 4733 pcaps
(PCMA + telephone-event offered; the pcaps have their own SSRC, a SIPp artefact), `inband`
streams noise holding the tones (PCMA only offered), `mixed` runs half of each (two SIPps),
`silent` is the old caller (pcaps only, no audio between them).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import json
import math
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from harness import (
    HOST,
    KAMAILIO,
    REPO,
    RTPENGINE,
    SIPP,
    KamailioProxy,
    RtpEngine,
    SpgNode,
    free_media_port,
    free_port,
    make_pay_scenario,
    sip_options,
    stop_process,
    wait_for,
)

from spg_media.payment.journey import (
    Authorize,
    Finish,
    Journey,
    JourneyConfig,
    Play,
    PromptPart,
)
from spg_media.payment.model import Operation, TransactionInfo
from spg_media.rtp.g711 import encode
from spg_media.testcaller import dtmf_tone
from spg_media.workers import calls_in_health

RATE = 8000
CARD, CVC = "4111111111111111", "123"
AMOUNT_MINOR, CURRENCY, MERCHANT = 4990, "EUR", "Sandbox Shop"  # what `sbx-4990-EUR-...` holds
MEDIA_MODES = ("rfc4733", "inband", "mixed", "silent")
DTMF_SOURCES = ("rfc4733", "inband", "info")
LATENCY_METRIC = "spg_dtmf_latency_seconds"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _answers_options(port: int) -> bool:
    """Does a worker answer SIP OPTIONS on `port` (127.0.0.1) with 200?"""
    return sip_options(HOST, port) == "SIP/2.0 200 OK"


def card_fields(today: datetime.date) -> list[str]:
    """The sandbox card, '#', an expiry two years ahead (MMYY) and the code: one string each."""
    return [CARD + "#", f"12{(today.year + 2) % 100:02d}", CVC]


# ---- the caller's key plan -------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPress:
    key: str
    at_s: float  # when the key starts, from the start of the caller's audio (the ACK)


@dataclass(frozen=True)
class KeyPlan:
    presses: tuple[KeyPress, ...]
    prompts_s: tuple[float, ...]  # the length of each prompt the journey played, in order

    @property
    def end_s(self) -> float:
        return self.presses[-1].at_s if self.presses else 0.0


def plan_key_presses(
    fields: Sequence[str],
    prompt_seconds: Callable[[tuple[PromptPart, ...]], float],
    *,
    transaction: TransactionInfo,
    today: datetime.date,
    config: JourneyConfig | None = None,
    start_s: float = 0.0,
    think_s: float = 0.8,
    key_period_s: float = 0.3,
    detect_s: float = 0.15,
) -> KeyPlan:
    """When each key of `fields` is pressed by a caller who waits for each prompt to end.

    The node's `Journey` is driven with the plan: its journey starts at `start_s` (the ACK and
    the first tick), every `Play` lasts `prompt_seconds(parts)`, the first key of a field comes
    `think_s` after its prompt ended, keys follow every `key_period_s`, and the node hears a key
    `detect_s` after it starts. Raises ValueError unless the last key hands the card over.
    """
    journey = Journey(config or JourneyConfig(), transaction, None, today)
    prompts: list[float] = []
    play_end: float | None = None
    authorized = False

    def take(actions: Iterable[object], now: float) -> None:
        nonlocal play_end, authorized
        for action in actions:
            if isinstance(action, Play):
                length = prompt_seconds(action.parts)
                prompts.append(length)
                play_end = now + length
            elif isinstance(action, Authorize):
                authorized = True
            elif isinstance(action, Finish):
                raise ValueError(f"the journey ended before the card: {action.outcome.result}")

    take(journey.start(start_s), start_s)
    presses: list[KeyPress] = []
    for entry in fields:
        if authorized:
            raise ValueError("keys left over after the authorisation")
        if play_end is None:
            raise ValueError("a field did not end: the keys do not reach the authorisation")
        take(journey.prompt_done(play_end), play_end)
        at = play_end + think_s
        play_end = None
        for key in entry:
            presses.append(KeyPress(key, round(at, 3)))
            take(journey.digit(key, at + detect_s), at + detect_s)
            at += key_period_s
    if not authorized:
        raise ValueError("the keys do not complete the card: no authorisation")
    return KeyPlan(tuple(presses), tuple(prompts))


def node_prompt_seconds(
    cache_dir: Path, lang: str = "en"
) -> Callable[[tuple[PromptPart, ...]], float]:
    """How long the node plays a Play's parts (the same renderer and cache a node uses)."""
    from spg_media.tts.prompts import PromptLibrary
    from spg_media.tts.render import PromptRenderer

    library = PromptLibrary(PromptRenderer(cache_dir))

    def seconds(parts: tuple[PromptPart, ...]) -> float:
        return float(library.audio_for(parts, lang).size) / RATE

    return seconds


def sandbox_transaction(token: str = "sbx-4990-EUR-load") -> TransactionInfo:
    """What the sandbox's lookup of a `sbx-4990-EUR-...` token tells the node."""
    return TransactionInfo(
        token, Operation.SALE, AMOUNT_MINOR, CURRENCY, order=token, merchant=MERCHANT
    )


# ---- the caller's audio ----------------------------------------------------------------------


def caller_audio(
    presses: Sequence[KeyPress],
    duration_s: float,
    *,
    tone_s: float = 0.1,
    noise_rms: float = 30.0,
    seed: int = 0,
) -> np.ndarray:
    """int16 8 kHz audio of `duration_s`: Gaussian line noise (`noise_rms` on the int16 scale,
    about -60 dBm0 by default) with each press as a DTMF tone of `tone_s` at its time
    (`testcaller.dtmf_tone`: each frequency about -15 dBm0). No presses: noise only."""
    samples = round(duration_s * RATE)
    rng = np.random.default_rng(seed)
    audio = rng.normal(0.0, noise_rms, samples)
    for press in presses:
        start = round(press.at_s * RATE)
        tone = dtmf_tone(press.key, tone_s).astype(np.float64)
        if start < 0 or start + tone.size > samples:
            raise ValueError(f"a key at {press.at_s} s is outside {duration_s} s of audio")
        audio[start : start + tone.size] += tone
    return np.clip(np.round(audio), -32768, 32767).astype(np.int16)


def write_alaw(path: Path, samples: np.ndarray) -> Path:
    """Raw 8 kHz A-law bytes, what SIPp's `rtp_stream` sends as PCMA 20 ms at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(samples, "PCMA"))
    return path


# ---- the nodes' metrics and processes --------------------------------------------------------

_SAMPLE_RE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Histogram = dict[str, dict[float, float]]  # label value -> {upper bound: cumulative count}


def parse_histogram(text: str, name: str, label: str = "source") -> Histogram:
    """The cumulative buckets of histogram `name` in Prometheus text, by the value of `label`
    (series without it under ""). Absent metric: {}."""
    out: Histogram = {}
    for line in text.splitlines():
        match = _SAMPLE_RE.match(line)
        if match is None or match["name"] != f"{name}_bucket":
            continue
        labels = dict(_LABEL_RE.findall(match["labels"] or ""))
        if "le" not in labels:
            continue
        series = out.setdefault(labels.get(label, ""), {})
        bound = math.inf if labels["le"] == "+Inf" else float(labels["le"])
        series[bound] = series.get(bound, 0.0) + float(match["value"])
    return out


def gauge_value(text: str, name: str, **labels: str) -> float | None:
    """The sum of the series of gauge/counter `name` in Prometheus text that carry `labels`,
    or None when there is none."""
    total: float | None = None
    for line in text.splitlines():
        match = _SAMPLE_RE.match(line)
        if match is None or match["name"] != name:
            continue
        if labels and not labels.items() <= dict(_LABEL_RE.findall(match["labels"] or "")).items():
            continue
        total = (total or 0.0) + float(match["value"])
    return total


def histogram_sum(parts: Iterable[Histogram]) -> Histogram:
    """Several nodes' histograms as one."""
    out: Histogram = {}
    for part in parts:
        for key, buckets in part.items():
            series = out.setdefault(key, {})
            for bound, count in buckets.items():
                series[bound] = series.get(bound, 0.0) + count
    return out


def histogram_delta(after: Histogram, before: Histogram) -> Histogram:
    """What was observed between two readings (a series absent before counts from zero)."""
    return {
        key: {b: c - before.get(key, {}).get(b, 0.0) for b, c in buckets.items()}
        for key, buckets in after.items()
    }


def quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """The q-quantile of cumulative `buckets`, interpolated inside its bucket as Prometheus'
    histogram_quantile does (a quantile in the +Inf bucket is the highest finite bound).
    None when nothing was observed."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def latency_summary(delta: Histogram) -> dict[str, dict[str, float | None] | None]:
    """Per source: count, p50, p95, p99 (seconds) of the digits observed; None for a source the
    node did not report (the metric absent, or no such series)."""
    out: dict[str, dict[str, float | None] | None] = {}
    for source in DTMF_SOURCES:
        buckets = delta.get(source)
        if buckets is None:
            out[source] = None
            continue
        count = max(buckets.values(), default=0.0)
        out[source] = {
            "count": count,
            "p50": quantile(buckets, 0.50),
            "p95": quantile(buckets, 0.95),
            "p99": quantile(buckets, 0.99),
        }
    return out


def pause_summary(delta: Histogram) -> dict[str, dict[str, float | None]]:
    """Garbage-collector pauses by generation ("0", "1", "2" = full): how many, and the
    bucket bound the longest stayed under (None: none, or past the last finite bound)."""
    out: dict[str, dict[str, float | None]] = {}
    for generation, buckets in sorted(delta.items()):
        total = max(buckets.values(), default=0.0)
        longest = min((b for b, c in buckets.items() if c >= total), default=None)
        known = total and longest is not None and not math.isinf(longest)
        out[generation] = {"count": total, "longest_under_s": longest if known else None}
    return out


def fetch_metrics(admin_port: int, timeout_s: float = 2.0) -> str:
    """A node's /metrics text ("" when it does not answer)."""
    try:
        url = f"http://{HOST}:{admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return str(answer.read().decode("utf-8", "replace"))
    except OSError:
        return ""


def fetch_calls(admin_port: int, timeout_s: float = 1.0) -> int | None:
    """A node's calls in progress, from its /healthz (None when it does not answer or says
    no count). The sampler asks twice a second: /healthz is a few numbers, where rendering
    /metrics cost the node ~1-2 % of its core at a few hundred calls."""
    url = f"http://{HOST}:{admin_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            body = answer.read()
    except urllib.error.HTTPError as refused:  # 503 while overloaded or draining: same body
        body = refused.read()
    except OSError:
        return None
    return calls_in_health(body)


def _group_pids(pgid: int) -> list[tuple[int, list[str]]]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state(0) ppid(1) pgrp(2) ... utime(11) stime(12) cutime(13) cstime(14)
        if int(fields[2]) == pgid:
            out.append((int(entry.name), fields))
    return out


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process in process group `pgid` (children reaped by
    their parent are added to its cutime/cstime, so they count too)."""
    ticks = sum(sum(int(f) for f in fields[11:15]) for _, fields in _group_pids(pgid))
    return ticks / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` alone (its reaped children included), 0 if gone."""
    for member, fields in _group_pids(pid):
        if member == pid:
            return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS
    return 0.0


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every live process in process group `pgid`."""
    total = 0
    for pid, _ in _group_pids(pgid):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) of `values`, linear between ranks; None for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q * 100))


# ---- running a load --------------------------------------------------------------------------


@dataclass
class LoadSpec:
    media: str = "rfc4733"
    calls: int = 20
    rate: float = 2.0
    nodes: int = 1
    workers: int = 1  # serve --workers of each node (worker i on its SIP port + i)
    direct: bool = False
    limit: int = 0  # SIPp -l: at most this many calls at once (0: no limit)
    think_s: float = 0.8
    baseline: bool = True  # one unloaded call of each kind first
    journey_baseline_s: float | None = None  # without: the unloaded journey measured before
    node_env: dict[str, str] = field(default_factory=dict)
    # `--pin`: the nodes on the last CPU, everything else (SIPp, Kamailio, this kit) on the
    # others, so that "calls per node core" is one core the node has to itself
    pin: bool = False
    # `--relay`: the calls' media through rtpengine (Kamailio -A WITH_RTPENGINE), the nodes
    # taking it from rtpengine's address (rtp.media_sources), one port a call on its side
    relay: bool = False
    # called with ("idle", stack) just before the load and ("drained", stack) once its calls
    # have ended, before the stack stops (`bench_load_memory.py` probes the nodes there)
    on_phase: Callable[[str, Stack], None] | None = None


@dataclass
class _Group:
    """One SIPp process placing one kind of caller's calls."""

    kind: str  # rfc4733 | inband | silent
    calls: int
    rate: float
    limit: int
    scenario: Path
    stats: Path
    proc: subprocess.Popen[bytes] | None = None
    stderr_path: Path | None = None


class _Sampler(threading.Thread):
    """Every `period_s`: the nodes' calls in progress (their /healthz) and their RSS; keeps
    the peak."""

    def __init__(self, nodes: Sequence[SpgNode], period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.nodes = nodes
        self.period_s = period_s
        self.stop_event = threading.Event()
        self.peak_active = 0
        self.rss_at_peak = 0
        self.peak_rss = 0
        self.samples: list[tuple[float, int, int]] = []  # (t, active calls, rss bytes)

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop_event.wait(self.period_s):
            active = 0
            for node in self.nodes:
                active += fetch_calls(node.admin_port) or 0
            rss = sum(group_rss_bytes(n.proc.pid) for n in self.nodes if n.proc)
            self.samples.append((round(time.monotonic() - start, 2), active, rss))
            self.peak_rss = max(self.peak_rss, rss)
            if active > self.peak_active or (active == self.peak_active and rss > self.rss_at_peak):
                self.peak_active, self.rss_at_peak = active, rss


def _sipp_command(group: _Group, target: str, timeout_s: float, errors: Path) -> list[str]:
    args = [
        str(SIPP), target,
        "-sf", str(group.scenario),
        "-m", str(group.calls),
        "-r", f"{group.rate:g}", "-rp", "1000",
        "-t", "u1",
        "-i", HOST, "-mi", HOST,
        "-p", str(free_port()), "-mp", str(free_media_port()),
        "-nostdin",
        "-timeout", f"{int(timeout_s)}s",
        "-max_recv_loops", "10000",
        # Kamailio's workers may pass the node's BYE before its 200 to SIPp's NOTIFY; that 200
        # then arrives in SIPp's final timewait: logged, not a failed call
        "-default_behaviors", "all,-abortunexp",
        "-trace_stat", "-stf", str(group.stats), "-fd", "1",
        "-trace_err", "-error_file", str(errors),
    ]  # fmt: skip
    # always a limit: SIPp's default (3 x rate x a call's length as its pauses add up) is a
    # handful of calls for a scenario whose length is in the audio it streams
    args += ["-l", str(group.limit or group.calls)]
    return args


def _sipp_stats(path: Path) -> dict[str, int]:
    rows = list(csv.DictReader(path.open(), delimiter=";")) if path.exists() else []
    last = rows[-1] if rows else {}
    return {
        "succeeded": int(last.get("SuccessfulCall(C)", 0) or 0),
        "failed": int(last.get("FailedCall(C)", 0) or 0),
        "peak_concurrent": max((int(r.get("CurrentCall", 0) or 0) for r in rows), default=0),
    }


def _run_groups(groups: Sequence[_Group], target: str, work: Path, timeout_s: float) -> float:
    """Start every group's SIPp, wait for all; the CPU seconds they used."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = usage.ru_utime + usage.ru_stime
    for n, group in enumerate(groups):
        group.stderr_path = work / f"sipp-{group.kind}-{n}.stderr"
        with group.stderr_path.open("wb") as err:
            group.proc = subprocess.Popen(
                _sipp_command(group, target, timeout_s, work / f"sipp-{group.kind}-{n}.errors"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=work,
                start_new_session=True,
            )
    deadline = time.monotonic() + timeout_s + 20
    for group in groups:
        assert group.proc is not None
        try:
            group.proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop_process(group.proc)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime - before


def _cdrs(nodes: Sequence[SpgNode]) -> list[dict[str, Any]]:
    return [json.loads(line) for node in nodes for line in node.cdr_lines()]


def _wait_idle(nodes: Sequence[SpgNode], timeout_s: float = 15.0) -> None:
    """Until no node has a call in progress (the last CDRs written)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(not fetch_calls(n.admin_port) for n in nodes):
            return
        time.sleep(0.25)


def _rtp_in(nodes: Sequence[SpgNode]) -> float:
    """RTP packets the nodes have taken from callers so far."""
    texts = [fetch_metrics(n.admin_port) for n in nodes]
    return sum(gauge_value(t, "spg_rtp_packets_total", direction="in") or 0.0 for t in texts)


def _digits(nodes: Sequence[SpgNode]) -> dict[str, float]:
    """Digits the nodes have detected so far, by source."""
    texts = [fetch_metrics(n.admin_port) for n in nodes]
    return {
        source: sum(gauge_value(t, "spg_dtmf_digits_total", source=source) or 0.0 for t in texts)
        for source in DTMF_SOURCES
    }


def _latency(nodes: Sequence[SpgNode]) -> Histogram:
    return histogram_sum(
        parse_histogram(fetch_metrics(n.admin_port), LATENCY_METRIC) for n in nodes
    )


def _gc_pauses(nodes: Sequence[SpgNode]) -> Histogram:
    return histogram_sum(
        parse_histogram(fetch_metrics(n.admin_port), "spg_gc_pause_seconds", "generation")
        for n in nodes
    )


def _journey_seconds(records: Iterable[Mapping[str, Any]]) -> list[float]:
    return [
        float(r["durations"]["journey"])
        for r in records
        if r.get("result") == "approved" and "journey" in r.get("durations", {})
    ]


def admission_defaults() -> dict[str, str]:
    """The node's own admission limits as environment variables: the test harness turns the
    load-based ones off (its nodes share a busy machine with other tests), a load run measures
    the node as it is shipped."""
    from spg_media.config import AdmissionConfig

    defaults = AdmissionConfig()
    return {
        f"SPG_ADMISSION__{f.name.upper()}": str(getattr(defaults, f.name))
        for f in dataclasses.fields(defaults)
        if f.name.startswith("max_") and f.name != "max_calls"
    }


class Stack:
    """The nodes (and Kamailio unless direct) of one run; `target` is where SIPp calls."""

    def __init__(self, spec: LoadSpec, work: Path) -> None:
        self.spec = spec
        self._affinity: set[int] | None = None  # this process's CPUs before `--pin` moved it
        # the agent the caller goes back to (nobody answers: the REFER's result is the point)
        env = {
            "SPG_LOG__LEVEL": "info",
            "SPG_IVR__RETURN_URI": f"sip:agent@{HOST}:5999",
            **admission_defaults(),
            **spec.node_env,
        }
        self.relay: RtpEngine | None = None
        defines: dict[str, str] = {}
        if spec.relay:
            # rtpengine takes 4 ports a call (RTP and RTCP, each side)
            self.relay = RtpEngine(work / "rtpengine", ports=8 * (spec.limit or spec.calls) + 400)
            defines = {"WITH_RTPENGINE": "1", "RTPENGINE_SOCK": self.relay.sock}
            env.setdefault("SPG_RTP__MEDIA_SOURCES", f"{self.relay.address}/32")
        self.nodes = [
            SpgNode(work / f"node{i}", env=env, workers=spec.workers) for i in range(spec.nodes)
        ]
        self.proxy: KamailioProxy | None = None
        if not spec.direct:
            destinations = [
                f"sip:{HOST}:{n.sip_port + w}" for n in self.nodes for w in range(spec.workers)
            ]
            self.proxy = KamailioProxy(work / "kamailio", destinations, defines=defines)

    def start(self) -> None:
        if self.spec.pin:  # the nodes (and their threads and workers) inherit the last CPU
            self._affinity = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {max(self._affinity)})
        try:
            for node in self.nodes:
                node.start(timeout_s=90)
        finally:
            if self._affinity is not None:  # what starts after (Kamailio, SIPp): the others
                os.sched_setaffinity(0, self._affinity - {max(self._affinity)})
        for node in self.nodes:
            for worker in range(1, self.spec.workers):
                port = node.sip_port + worker
                answers = functools.partial(_answers_options, port)
                if not wait_for(answers, 90):
                    raise RuntimeError(f"worker {worker} of {node.uri} did not answer OPTIONS")
        if self.relay is not None:
            self.relay.start()
        if self.proxy is not None:
            self.proxy.start()

    @property
    def target(self) -> str:
        port = self.proxy.port if self.proxy is not None else self.nodes[0].sip_port
        return f"{HOST}:{port}"

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.relay is not None:
            self.relay.stop()
        for node in self.nodes:
            node.stop()
        if self._affinity is not None:  # --pin: this process's CPUs as they were
            os.sched_setaffinity(0, self._affinity)
            self._affinity = None

    def node_cpu(self) -> float:
        return sum(group_cpu_seconds(n.proc.pid) for n in self.nodes if n.proc)

    def supervisor_cpu(self) -> float:
        """The part of `node_cpu` that is `serve --workers N`'s supervisor (N > 1; with one
        worker the node is a single process): it answers the load kit's `/metrics` polls
        (twice a second, each merging every worker's) and runs no calls."""
        if self.spec.workers <= 1:
            return 0.0
        return sum(process_cpu_seconds(n.proc.pid) for n in self.nodes if n.proc)

    def proxy_cpu(self) -> float:
        if self.proxy is None or self.proxy.proc is None:
            return 0.0
        return group_cpu_seconds(self.proxy.proc.pid)

    def relay_cpu(self) -> float:
        if self.relay is None or self.relay.proc is None:
            return 0.0
        return group_cpu_seconds(self.relay.proc.pid)

    def rss(self) -> int:
        return sum(group_rss_bytes(n.proc.pid) for n in self.nodes if n.proc)


class Kit:
    """The files one run's callers need: the key plan, the audio, one scenario per kind."""

    def __init__(self, work: Path, think_s: float, today: datetime.date | None = None) -> None:
        self.work = work
        self.today = today or datetime.date.today()
        self.fields = card_fields(self.today)
        self.plan = plan_key_presses(
            self.fields,
            node_prompt_seconds(REPO / ".spg-cache" / "prompts"),
            transaction=sandbox_transaction(),
            today=self.today,
            think_s=think_s,
        )
        # the call's audio runs past the keys, through the result and the goodbye (SIPp stops
        # it when the call ends)
        self.audio_s = self.plan.end_s + 60.0
        self.inband_audio = write_alaw(
            work / "caller-inband.alaw", caller_audio(self.plan.presses, self.audio_s, seed=1)
        )
        self.noise_audio = write_alaw(work / "caller-noise.alaw", caller_audio((), 10.0, seed=2))

    def scenario(self, kind: str, tag: str) -> Path:
        """SIPp's scenario for one kind of caller; `tag` keeps its transactions apart."""
        if kind not in ("inband", "rfc4733", "silent"):
            raise ValueError(f"unknown kind of caller {kind!r}")
        times = [round(p.at_s * 1000) for p in self.plan.presses]
        scenario: Path = make_pay_scenario(
            self.fields,
            self.work / f"pay-{tag}.xml",
            headers={"X-SPG-Transaction": f"sbx-{AMOUNT_MINOR}-{CURRENCY}-{tag}-[call_number]"},
            result_timeout_ms=120_000,
            initial_pause_ms=0,
            # in-band: the whole call's audio, tones included, streamed once, PCMA only offered
            inband_wav=self.inband_audio if kind == "inband" else None,
            # RFC 4733: noise streamed in a loop while the pcaps key the card
            caller_audio=self.noise_audio if kind == "rfc4733" else None,
            key_times_ms=None if kind == "inband" else times,
        )
        return scenario


def _tag(phase: str, run: str, kind: str) -> str:
    """What a group's transaction tokens hold, so that its CDRs can be told apart."""
    return f"{phase}{run}{kind}"


def _of_tag(records: Iterable[Mapping[str, Any]], tag: str) -> list[Mapping[str, Any]]:
    return [r for r in records if f"-{tag}-" in str(r.get("transaction", ""))]


def _kinds(media: str) -> list[str]:
    return ["rfc4733", "inband"] if media == "mixed" else [media]


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def check_spec(spec: LoadSpec) -> str | None:
    """Why `spec` cannot run here (one line), or None."""
    if spec.media not in MEDIA_MODES:
        return f"--media must be one of {', '.join(MEDIA_MODES)}"
    if SIPP is None:
        return "needs sipp (Debian sip-tester)"
    if not spec.direct and KAMAILIO is None:
        return "needs kamailio (or --direct)"
    if spec.relay and spec.direct:
        return "--relay puts rtpengine behind Kamailio: not with --direct"
    if spec.relay and RTPENGINE is None:
        return "--relay needs rtpengine (Debian rtpengine-daemon)"
    if spec.direct and (spec.nodes != 1 or spec.workers != 1):
        return "--direct calls one node's one SIP port: use --nodes 1 --workers 1"
    if spec.workers < 1:
        return "--workers must be positive"
    if spec.pin and len(os.sched_getaffinity(0)) < 2:
        return "--pin needs two CPUs at least (one for the nodes, the rest for the callers)"
    if spec.calls < 1 or spec.rate <= 0 or spec.nodes < 1:
        return "--calls, --rate and --nodes must be positive"
    if spec.media != "inband" and os.geteuid() != 0:
        return "needs root: SIPp's play_pcap_audio sends from a raw socket (or --media inband)"
    return None


def run_load(spec: LoadSpec, work: Path | None = None) -> dict[str, Any]:
    """One run: start the stack, an unloaded call of each kind, then the load. Everything
    measured, as a JSON-able dict (see `bench_sipp_load.py` for what each figure is)."""
    work = work or Path(tempfile.mkdtemp(prefix="spg-load-"))
    run = uuid.uuid4().hex[:6]
    kit = Kit(work, spec.think_s)
    kinds = _kinds(spec.media)
    stack = Stack(spec, work)
    result: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "media": spec.media,
        "calls": spec.calls,
        "rate": spec.rate,
        "limit": spec.limit,
        "nodes": spec.nodes,
        "workers": spec.workers,
        "path": "direct" if spec.direct else "kamailio",
        "cpus": os.cpu_count(),
        "pinned": spec.pin,
        "relay": spec.relay,
        "work": str(work),
        "plan": {
            "keys": len(kit.plan.presses),
            "first_key_s": kit.plan.presses[0].at_s,
            "last_key_s": kit.plan.end_s,
            "prompts_s": [round(s, 2) for s in kit.plan.prompts_s],
        },
    }
    try:
        stack.start()
        target = stack.target

        # one unloaded call of each kind, one after the other: the baseline
        baseline: dict[str, Any] = {}
        if spec.baseline:
            lat_before = _latency(stack.nodes)
            cdr_seen = len(_cdrs(stack.nodes))
            # one call of each kind, all at once (at most two calls: still unloaded)
            base_groups = [
                _Group(kind, 1, 1.0, 0, kit.scenario(kind, _tag("base", run, kind)),
                       work / f"base-{kind}.csv")
                for kind in kinds
            ]  # fmt: skip
            _run_groups(base_groups, target, work, kit.audio_s + 60)
            _wait_idle(stack.nodes)
            records = _cdrs(stack.nodes)[cdr_seen:]
            for group in base_groups:
                mine = _of_tag(records, _tag("base", run, group.kind))
                journey = _journey_seconds(mine)
                baseline[group.kind] = {
                    "succeeded": _sipp_stats(group.stats)["succeeded"],
                    "results": dict(Counter(str(r.get("result")) for r in mine)),
                    "journey_s": journey[0] if journey else None,
                }
            baseline["dtmf_latency_s"] = latency_summary(
                histogram_delta(_latency(stack.nodes), lat_before)
            )
        result["baseline"] = baseline

        # the load
        time.sleep(1.0)
        if spec.on_phase is not None:
            spec.on_phase("idle", stack)
        idle_rss = stack.rss()
        cdr_seen = len(_cdrs(stack.nodes))
        lat_before = _latency(stack.nodes)
        gc_before = _gc_pauses(stack.nodes)
        rtp_before = _rtp_in(stack.nodes)
        digits_before = _digits(stack.nodes)
        cpu_before = {
            "spg": stack.node_cpu(),
            "supervisor": stack.supervisor_cpu(),
            "kamailio": stack.proxy_cpu(),
            "relay": stack.relay_cpu(),
        }
        groups = []
        n = len(kinds)
        shares = zip(kinds, _split(spec.calls, n), _split(spec.limit, n), strict=True)
        for kind, calls, limit in shares:
            if calls:
                scenario = kit.scenario(kind, _tag("load", run, kind))
                rate = spec.rate * calls / spec.calls
                groups.append(_Group(kind, calls, rate, limit, scenario, work / f"load-{kind}.csv"))
        sampler = _Sampler(stack.nodes)
        sampler.start()
        started = time.monotonic()
        timeout_s = spec.calls / spec.rate + kit.audio_s + 120
        sipp_cpu = _run_groups(groups, target, work, timeout_s)
        wall = time.monotonic() - started
        _wait_idle(stack.nodes)
        sampler.stop_event.set()
        sampler.join(5)
        cpu_after = {
            "spg": stack.node_cpu(),
            "supervisor": stack.supervisor_cpu(),
            "kamailio": stack.proxy_cpu(),
            "relay": stack.relay_cpu(),
        }
        latency = latency_summary(histogram_delta(_latency(stack.nodes), lat_before))
        gc_pauses = pause_summary(histogram_delta(_gc_pauses(stack.nodes), gc_before))
        rtp_in = _rtp_in(stack.nodes) - rtp_before
        digits = {k: v - digits_before[k] for k, v in _digits(stack.nodes).items()}
        records = _cdrs(stack.nodes)[cdr_seen:]
        if spec.on_phase is not None:
            spec.on_phase("drained", stack)
    finally:
        stack.stop()

    sipp = {g.kind: _sipp_stats(g.stats) for g in groups}
    succeeded = sum(s["succeeded"] for s in sipp.values())
    results = Counter(str(r.get("result")) for r in records)
    cpu = {
        "spg": cpu_after["spg"] - cpu_before["spg"],
        # of which the supervisor's (0 with one worker): compare workers by "spg_workers"
        "spg_supervisor": cpu_after["supervisor"] - cpu_before["supervisor"],
        "sipp": sipp_cpu,
        "kamailio": cpu_after["kamailio"] - cpu_before["kamailio"],
        "relay": cpu_after["relay"] - cpu_before["relay"],
    }
    finished = max(len(records), 1)
    journey = _journey_seconds(records)
    call_s = sum(float(r.get("durations", {}).get("ivr", 0.0)) for r in records)
    median = statistics.median(journey) if journey else None
    spg_ms = cpu["spg"] / finished * 1000
    base_journeys = [b["journey_s"] for k, b in baseline.items() if k in kinds and b["journey_s"]]
    result.update(
        {
            "wall_s": round(wall, 1),
            "sipp": sipp,
            "sipp_succeeded": succeeded,
            "sipp_failed": sum(s["failed"] for s in sipp.values()),
            "cdr_total": len(records),
            "cdr_results": dict(results),
            "cdr_results_by_kind": {
                g.kind: dict(
                    Counter(
                        str(r.get("result")) for r in _of_tag(records, _tag("load", run, g.kind))
                    )
                )
                for g in groups
            },
            "approved": results.get("approved", 0),
            "peak_concurrent": sampler.peak_active,
            "peak_concurrent_sipp": sum(s["peak_concurrent"] for s in sipp.values()),
            "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
            "cpu_per_call_ms": {k: round(v / finished * 1000, 1) for k, v in cpu.items()},
            "calls_per_core": round(median * 1000 / spg_ms) if median and spg_ms else None,
            "journey_s": {
                "median": median,
                "p95": percentile(journey, 0.95),
                "baseline": (
                    statistics.mean(base_journeys) if base_journeys else spec.journey_baseline_s
                ),
            },
            "dtmf_latency_s": latency,
            "gc_pauses": gc_pauses,
            "digits_by_source": digits,
            # the callers' packets per second of call (50 for 20 ms audio the whole call)
            "rtp_in_per_call_s": round(rtp_in / call_s, 1) if call_s else None,
            "rss": {
                "idle_mb": round(idle_rss / 2**20, 1),
                "at_peak_mb": round(sampler.rss_at_peak / 2**20, 1),
                "max_mb": round(sampler.peak_rss / 2**20, 1),
                "per_call_kb": (
                    round((sampler.rss_at_peak - idle_rss) / 1024 / sampler.peak_active, 1)
                    if sampler.peak_active
                    else None
                ),
            },
            "samples": sampler.samples,
        }
    )
    result["ok"] = succeeded == spec.calls and results.get("approved", 0) == spec.calls
    if not result["ok"]:
        tails = {}
        for g in groups:
            if g.stderr_path is not None and g.stderr_path.exists():
                tails[g.kind] = g.stderr_path.read_text(errors="replace")[-400:]
        result["sipp_stderr_tail"] = tails
    return result


# ---- printing --------------------------------------------------------------------------------


def fmt_s(value: float | None, unit_ms: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.0f} ms" if unit_ms else f"{value:.1f} s"


def latency_text(summary: Mapping[str, Any]) -> list[str]:
    lines = []
    for source in DTMF_SOURCES:
        entry = summary.get(source)
        if entry is None:
            lines.append(f"  {source:8} n/a")
            continue
        lines.append(
            f"  {source:8} {int(entry['count']):5d} digits  p50 {fmt_s(entry['p50'], True)}  "
            f"p95 {fmt_s(entry['p95'], True)}  p99 {fmt_s(entry['p99'], True)}"
        )
    return lines


def report_text(result: Mapping[str, Any]) -> str:
    """What `bench_sipp_load.py` prints for one run."""
    out = []
    plan = result["plan"]
    out.append(
        f"{result['calls']} calls ({result['media']}) at {result['rate']:g}/s "
        f"{'direct to' if result['path'] == 'direct' else 'through Kamailio to'} "
        f"{result['nodes']} node(s), {result['wall_s']:.0f} s wall; caller keys "
        f"{plan['keys']} digits from {plan['first_key_s']:.1f} s to {plan['last_key_s']:.1f} s"
        + (
            "; the nodes pinned to the last CPU, the callers on the others"
            if result.get("pinned")
            else ""
        )
    )
    results = ", ".join(f"{k} {v}" for k, v in sorted(result["cdr_results"].items())) or "none"
    out.append(
        f"SIPp: {result['sipp_succeeded']} succeeded, {result['sipp_failed']} failed; "
        f"node CDRs: {result['cdr_total']} ({results})"
    )
    by_kind = result.get("cdr_results_by_kind", {})
    if len(by_kind) > 1:
        out.append("  by caller: " + "; ".join(
            f"{kind}: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
            for kind, counts in by_kind.items()
        ))  # fmt: skip
    out.append(
        f"peak concurrent calls {result['peak_concurrent']} (node /healthz; SIPp says "
        f"{result['peak_concurrent_sipp']})"
    )
    cpu, per = result["cpu_s"], result["cpu_per_call_ms"]
    out.append(
        f"CPU seconds: spg-media {cpu['spg']:.1f}, SIPp {cpu['sipp']:.1f}, "
        f"Kamailio {cpu['kamailio']:.1f}; per call: spg-media {per['spg']:.0f} ms, "
        f"SIPp {per['sipp']:.0f} ms, Kamailio {per['kamailio']:.0f} ms"
        + (f", rtpengine {per['relay']:.0f} ms" if per.get("relay") else "")
    )
    if cpu.get("spg_supervisor"):
        out.append(
            f"  of spg-media's: the supervisor {cpu['spg_supervisor']:.1f} s "
            f"({per['spg_supervisor']:.0f} ms a call), the workers "
            f"{cpu['spg'] - cpu['spg_supervisor']:.1f} s "
            f"({per['spg'] - per['spg_supervisor']:.0f} ms a call)"
        )
    if per["sipp"]:
        out.append(f"spg / SIPp per call: {per['spg'] / per['sipp']:.1f}x")
    if result["calls_per_core"]:
        out.append(f"concurrent calls per node core (journey / CPU per call): "
                   f"{result['calls_per_core']}")  # fmt: skip
    j = result["journey_s"]
    ratio = f" ({j['median'] / j['baseline']:.2f}x)" if j["median"] and j["baseline"] else ""
    out.append(
        f"journey: median {fmt_s(j['median'])}, p95 {fmt_s(j['p95'])}; one unloaded call "
        f"{fmt_s(j['baseline'])}{ratio}"
    )
    digits = result["digits_by_source"]
    out.append("digits detected: " + ", ".join(f"{k} {v:.0f}" for k, v in digits.items()))
    out.append("digit latency under load (node histogram deltas):")
    out += latency_text(result["dtmf_latency_s"])
    base = result.get("baseline", {}).get("dtmf_latency_s")
    if base:
        out.append("digit latency of the unloaded call(s):")
        out += latency_text(base)
    pauses = result.get("gc_pauses")
    if pauses:
        names = {"0": "young", "1": "middle", "2": "full"}

        def pause(figures: Mapping[str, float | None]) -> str:
            longest = figures["longest_under_s"]
            under = f" (each < {longest * 1000:g} ms)" if longest is not None else ""
            return f"{figures['count']:.0f}{under}"

        out.append("garbage collections during the load: " + ", ".join(
            f"{names.get(g, g)} {pause(f)}" for g, f in pauses.items()
        ))  # fmt: skip
    if result["rtp_in_per_call_s"] is not None:
        out.append(f"caller RTP into the nodes: {result['rtp_in_per_call_s']:.1f} packets/s a call")
    rss = result["rss"]
    per_call = f"{rss['per_call_kb']:.0f} KiB" if rss["per_call_kb"] is not None else "n/a"
    out.append(
        f"node RSS: idle {rss['idle_mb']:.0f} MiB, at peak {rss['at_peak_mb']:.0f} MiB; "
        f"per active call {per_call}"
    )
    if not result["ok"]:
        out.append(f"NOT ALL APPROVED; SIPp stderr: {result.get('sipp_stderr_tail')}")
        out.append(f"work files kept in {result['work']}")
    return "\n".join(out)


def command_line() -> str:
    """The command that is running, to print with its results."""
    exe = sys.executable
    if exe.startswith(str(REPO) + os.sep):
        exe = os.path.relpath(exe)
    return "$ " + shlex.join([exe, *sys.argv])
