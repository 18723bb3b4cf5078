"""The fuzzing harness's short run (fuzz/README.md): every target on its seed corpus and a few
hundred seeded mutations of it, failing on an escaped exception, a broken promise or a hang
(an input over 100 ms every time it runs); the hang check itself; and, when atheris is
installed, one real coverage-guided run through fuzz/run.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `fuzz` is a top-level directory, not an installed package
    sys.path.insert(0, str(ROOT))

from fuzz import harness  # noqa: E402
from fuzz import targets as _targets  # noqa: E402, F401  (registers the targets)

MUTATIONS = 2000  # per target: the whole short run takes about 10 s
# ... but a target whose input runs a whole call's media (the detector up to ~100 times):
FEWER_MUTATIONS = {"rtp_session": 600, "bridge": 400}

# Every parser of outside bytes, as SECURITY.md lists them: none may silently drop out.
EXPECTED_TARGETS = {
    "sip_message",
    "sip_framer",
    "sip_uri",
    "session_timer",
    "sip_info",
    "sip_transaction",
    "sdp",
    "sdes",
    "rtp_packet",
    "rtcp",
    "rtp_session",
    "bridge",
    "rfc4733",
    "recording",
    "handoff_signature",
    "connector_json",
    "admin_head",
    "sandbox",
}


def test_every_parser_has_a_target_with_seeds_and_its_dictionary() -> None:
    assert set(harness.TARGETS) == EXPECTED_TARGETS
    for target in harness.TARGETS.values():
        assert target.doc, target.name
        seeds = harness.load_corpus(target)
        assert seeds, f"{target.name} has no seed corpus"
        assert all(len(seed) <= target.max_len for seed in seeds), target.name
        if target.dictionary is not None:
            assert harness.load_dictionary(target), target.name


@pytest.mark.parametrize("name", sorted(EXPECTED_TARGETS))
def test_short_fuzz_run(name: str) -> None:
    mutations = FEWER_MUTATIONS.get(name, MUTATIONS)
    runner = harness.replay(harness.TARGETS[name], mutations)
    assert runner.inputs >= mutations


def test_a_slow_input_is_a_hang_only_when_slow_every_time(tmp_path: Path) -> None:
    calls: list[bytes] = []

    def slow_once(data: bytes) -> None:
        calls.append(data)
        if data == b"slow" and calls.count(b"slow") == 1:
            time.sleep(0.12)

    def always_slow(data: bytes) -> None:
        if data == b"slow":
            time.sleep(0.12)

    flaky = harness.TimedRunner(harness.Target("flaky", slow_once, ""), warmup=1)
    for data in (b"a", b"slow", b"b"):
        flaky(data)
    assert flaky.false_alarms == 1 and flaky.slowest_s < harness.HANG_S

    hanging = harness.TimedRunner(
        harness.Target("hanging", always_slow, ""), warmup=1, artifacts=tmp_path
    )
    hanging(b"a")
    with pytest.raises(harness.Hang):
        hanging(b"slow")
    assert [path.read_bytes() for path in tmp_path.glob("hang-*")] == [b"slow"]


def test_replay_reports_the_failing_input() -> None:
    def broken(data: bytes) -> None:
        if data.startswith(b"v=0"):
            raise KeyError("escaped")

    target = harness.Target("broken", broken, "", dictionary="sdp.dict")
    original = harness.load_corpus
    harness.load_corpus = lambda _target: [b"v=0\r\n"]  # type: ignore[assignment]
    try:
        with pytest.raises(harness.ReplayFailure, match=r"(?s)KeyError.*763d300d0a"):
            harness.replay(target, 10)
    finally:
        harness.load_corpus = original


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_atheris_run_through_the_command_line(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(ROOT / "fuzz" / "run.py"),
        "rtp_packet",
        "--work-dir",
        str(tmp_path),
        "-runs=3000",
        "-seed=1",
        f"-artifact_prefix={tmp_path}/",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Done 3000 runs" in done.stderr
    assert " cov: " in done.stderr  # spg_media is instrumented: coverage is counted
    assert (tmp_path / "rtp_packet.stats.json").exists()


_TRACED_NAMES = """
import sys
sys.path.insert(0, sys.argv[1])
from fuzz import run
run._load_targets(instrument=True)
import spg_media.dtmf.inband.screen, spg_media.rtp.masking, spg_media.rtp.session


def traced(module):
    found = set()
    stack = [
        value.__code__
        for value in vars(module).values()
        if getattr(value, "__module__", None) == module.__name__ and hasattr(value, "__code__")
    ]
    while stack:
        code = stack.pop()
        found.update(code.co_names)
        stack.extend(const for const in code.co_consts if hasattr(const, "co_names"))
    return ",".join(sorted(found & {"_trace_branch", "_trace_cmp"}))


for module in (spg_media.dtmf.inband.screen, spg_media.rtp.masking, spg_media.rtp.session):
    print(module.__name__, traced(module))
"""


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_numpy_modules_are_instrumented_for_coverage_only() -> None:
    """atheris's comparison tracing would keep something of every numpy array comparison
    (the in-band detector's and the masker's: their fuzz runs grew ~48 KB an input): those
    modules are traced for coverage only, the rest for comparisons too."""
    done = subprocess.run(
        [sys.executable, "-c", _TRACED_NAMES, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    traced = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert traced == {
        "spg_media.dtmf.inband.screen": "_trace_branch",
        "spg_media.rtp.masking": "_trace_branch",
        "spg_media.rtp.session": "_trace_branch,_trace_cmp",
    }
