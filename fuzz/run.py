#!/usr/bin/env python3
"""Fuzz one spg-media parser with atheris (coverage-guided, libFuzzer), or replay without it.

    python fuzz/run.py --list
    python fuzz/run.py TARGET [--fresh] [libFuzzer options, e.g. -runs=1000000 -seed=1]
    python fuzz/run.py --all [--jobs N] [--fresh] [libFuzzer options]   every target, N at once
    python fuzz/run.py --summary                         the table of the runs in fuzz/work
    python fuzz/run.py --replay TARGET|all [--inputs N]  corpus + N mutations, no atheris

A fuzz run reads the seed corpus fuzz/corpus/TARGET/ and keeps what it finds new in
fuzz/work/TARGET/ (not checked in; `--fresh` empties it first); a crash, an escaped exception
or a hang (an input over 100 ms, every time it is run) stops it with the input saved in
fuzz/artifacts/TARGET/. Its own counters (inputs, slowest input) go to
fuzz/work/TARGET.stats.json; libFuzzer prints coverage (cov/ft) and its final stats (with
--all, into fuzz/work/TARGET.log).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fuzz import harness  # noqa: E402  (needs the path above; imports no spg_media module)

WORK_DIR = harness.FUZZ_DIR / "work"


# Modules whose comparisons are nearly all of numpy arrays: instrumented for coverage only.
# atheris's comparison tracing keeps something of every array comparison it sees, so a target
# running the in-band detector grew ~48 KB an input (rtp_session: 295 MB of RSS after 3,000
# inputs, 153 MB with these modules' comparisons left untraced, the same coverage found).
COVERAGE_ONLY = ("spg_media.dtmf.inband", "spg_media.rtp.masking")


def _load_targets(instrument: bool) -> None:
    if instrument:
        import atheris
        from atheris.import_hook import HookManager

        # Not the "RegEx" hook: its pattern proxy has no match(text, pos), which the URI parser
        # and the standard library (tokenize, via numpy's import) call.
        atheris.enabled_hooks.add("str")
        with atheris.instrument_imports(include=["spg_media"]):
            # the packages around the coverage-only modules, and what those import from
            # spg_media: traced in full
            import spg_media.dtmf.rfc4733
            import spg_media.rtp  # noqa: F401
        with HookManager({"spg_media"}, set(), True, trace_dataflow=False):
            for name in COVERAGE_ONLY:
                importlib.import_module(name)
                package = sys.modules[name]
                for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
                    importlib.import_module(f"{name}.{module.name}")
        with atheris.instrument_imports(include=["spg_media"]):
            import fuzz.targets
    else:
        import fuzz.targets  # noqa: F401


def _has_option(options: list[str], name: str) -> bool:
    return any(option.startswith(f"-{name}=") for option in options)


def _option_value(options: list[str], name: str) -> str | None:
    for option in options:
        if option.startswith(f"-{name}="):
            return option.split("=", 1)[1]
    return None


def fuzz(name: str, options: list[str], fresh: bool, work_dir: Path) -> None:
    """Run atheris on one target; never returns (libFuzzer ends the process)."""
    _load_targets(instrument=True)
    import atheris

    target = harness.TARGETS[name]
    work = work_dir / name
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    artifacts = harness.ARTIFACT_DIR / name
    artifacts.mkdir(parents=True, exist_ok=True)
    defaults = {
        "max_len": str(target.max_len),
        "timeout": "10",  # libFuzzer's own, in whole seconds: a backstop for real loops
        "rss_limit_mb": "2048",
        "artifact_prefix": f"{artifacts}/",
        "print_final_stats": "1",
    }
    if target.dictionary is not None:
        defaults["dict"] = str(harness.DICT_DIR / target.dictionary)
    options = [f"-{k}={v}" for k, v in defaults.items() if not _has_option(options, k)] + options
    runs = _option_value(options, "runs")
    runner = harness.TimedRunner(
        target,
        artifacts=artifacts,
        stats_path=work_dir / f"{name}.stats.json",
        total=int(runs) if runs and runs.lstrip("-").isdigit() and int(runs) > 0 else None,
    )
    files = [option for option in options if not option.startswith("-")]
    if files:  # run these inputs once (libFuzzer does so when every input is a file)
        argv = [sys.argv[0], *[o for o in options if o.startswith("-")], *files]
    else:
        argv = [sys.argv[0], *options, str(work), str(target.corpus_dir)]
    print(f"fuzz/run.py: {name}: {' '.join(argv[1:])}", flush=True)
    atheris.Setup(argv, runner)
    with harness.capture_logs():  # for the whole process: libFuzzer ends it
        atheris.Fuzz()


def fuzz_all(options: list[str], fresh: bool, work_dir: Path, jobs: int) -> int:
    """Every target in its own process, `jobs` at a time, each one's output in
    WORK/TARGET.log; then the summary table. Exit status 1 if any target failed."""
    work_dir.mkdir(parents=True, exist_ok=True)
    pending = _target_names()
    running: dict[str, tuple[subprocess.Popen[bytes], IO[bytes], float]] = {}
    failed: list[str] = []
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            command = [sys.executable, __file__, name, "--work-dir", str(work_dir), *options]
            command += ["--fresh"] if fresh else []
            log: IO[bytes] = (work_dir / f"{name}.log").open("wb")
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            running[name] = (process, log, time.monotonic())
            print(f"== {name}: {' '.join(command[1:])}", flush=True)
        time.sleep(0.5)
        for name, (process, log, started) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            log.close()
            del running[name]
            print(f"== {name}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
            if code != 0:
                failed.append(name)
    print(summary(work_dir))
    if failed:
        print(f"FAILED: {', '.join(failed)} (see their logs in {work_dir})", file=sys.stderr)
    return 1 if failed else 0


_DONE_RE = re.compile(rb"^#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/", re.M)


def summary(work_dir: Path) -> str:
    """A Markdown table of the runs whose logs and stats are in `work_dir`."""
    rows = [
        "| target | inputs | execs/s | cov | ft | corpus | slowest input (CPU) | slow once "
        "| findings | wall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name in _target_names():
        log_path, stats_path = work_dir / f"{name}.log", work_dir / f"{name}.stats.json"
        if not log_path.exists() or not stats_path.exists():
            continue
        log = log_path.read_bytes()
        stats = json.loads(stats_path.read_text())
        done = _DONE_RE.findall(log)
        cov, ft, corpus = done[-1][1:] if done else (b"?", b"?", b"?")
        failures = re.findall(rb"(Uncaught Python exception|ERROR: libFuzzer: \w+[- ]?\w*)", log)
        finding = "0" if done and not failures else (failures[0].decode() if failures else "?")
        inputs, wall = int(stats["inputs"]), float(stats["wall_s"]) or 1.0
        rows.append(
            f"| {name} | {inputs:,} | {inputs / wall:,.0f} | {cov.decode()} | {ft.decode()} "
            f"| {corpus.decode()} | {stats['slowest_ms']} ms ({stats.get('slowest_cpu_ms')} ms) "
            f"| {stats['false_alarms']} | {finding} "
            f"| {wall:,.0f} s |"
        )
    return "\n".join(rows)


def replay(names: list[str], inputs: int, seed: int) -> int:
    _load_targets(instrument=False)
    for name in names:
        started = time.monotonic()
        try:
            runner = harness.replay(harness.TARGETS[name], inputs, seed)
        except harness.ReplayFailure as exc:
            print(f"FAIL {exc}", file=sys.stderr)
            return 1
        took = time.monotonic() - started
        stats = runner.stats()
        print(
            f"ok {name}: {stats['inputs']} inputs in {took:.1f} s, "
            f"slowest {stats['slowest_ms']} ms, {stats['false_alarms']} slow once"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Options starting with a single '-' (e.g. -runs=N) go to libFuzzer.",
    )
    parser.add_argument("target", nargs="?", help="a target name (see --list), or 'all'")
    parser.add_argument("--list", action="store_true", help="list the targets")
    parser.add_argument("--all", action="store_true", help="fuzz every target (see --jobs)")
    parser.add_argument("--jobs", type=int, default=1, help="targets at once with --all")
    parser.add_argument("--summary", action="store_true", help="table of the runs in --work-dir")
    parser.add_argument("--fresh", action="store_true", help="start from the seed corpus only")
    parser.add_argument(
        "--work-dir", type=Path, default=WORK_DIR, help="corpus and stats of runs (fuzz/work)"
    )
    parser.add_argument("--replay", action="store_true", help="replay without atheris")
    parser.add_argument("--inputs", type=int, default=1000, help="mutations per target (replay)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mutations (replay)")
    args, libfuzzer_options = parser.parse_known_args()
    # libFuzzer's own options (-name=value) and input files to run once (reproducing a crash)
    unknown = [
        option
        for option in libfuzzer_options
        if not (option.startswith("-") and "=" in option) and not Path(option).is_file()
    ]
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)}")
    if args.summary:
        print(summary(args.work_dir))
        return 0
    if args.list:
        _load_targets(instrument=False)
        for name, target in harness.TARGETS.items():
            print(f"{name:18} {target.doc}")
        return 0
    if args.replay:
        _load_targets(instrument=False)
        names = list(harness.TARGETS) if args.target in (None, "all") else [args.target]
        if not set(names) <= set(harness.TARGETS):
            parser.error(f"unknown target {args.target} (see --list)")
        return replay(names, args.inputs, args.seed)
    if args.all or args.target == "all":
        return fuzz_all(libfuzzer_options, args.fresh, args.work_dir, max(1, args.jobs))
    if args.target is None:
        parser.error("give a target (see --list), --all or --replay")
    if args.target not in _target_names():
        parser.error(f"unknown target {args.target} (see --list)")
    fuzz(args.target, libfuzzer_options, args.fresh, args.work_dir)
    return 0


def _target_names() -> list[str]:
    """Target names without importing the targets (they must be imported instrumented)."""
    names = []
    for path in sorted((harness.FUZZ_DIR / "targets").glob("*.py")):
        for line in path.read_text().splitlines():
            if line.startswith('@target("'):
                names.append(line.split('"')[1])
    return names


if __name__ == "__main__":
    sys.exit(main())
