"""Bench-only memory probe for a `spg-media serve` node under load (`bench_load_memory.py`).

Not part of the product: the load bench puts this directory first on the node's PYTHONPATH
and sets `SPG_BENCH_MEMPROBE` to a directory; Python imports this `sitecustomize` at start-up
and, only then, installs a SIGUSR1 handler. Each SIGUSR1 writes `probe-N.json` there, read by
the bench:

- the process's RSS (`VmRSS`), after a full garbage collection;
- the live Python objects by type (`gc.get_objects()`: containers only) and the asyncio
  tasks and handles of the running loop;
- unless `SPG_BENCH_MEMPROBE_FRAMES` is 0, on the first probe `tracemalloc` starts (so what
  is traced is what came after the idle point, and start-up's allocations are not in the
  way); from the second on, the traced bytes and the biggest holders by line against the
  first snapshot (`SPG_BENCH_MEMPROBE_FRAMES` frames of traceback, default 1);
  tracemalloc's own tables take RSS too, and pymalloc's arena counts
  (`sys._debugmallocstats`) are only reported with tracing off;
- then `malloc_trim(0)` (glibc) and the RSS after it: what the allocator held free but not
  returned (fragmentation / high water) against what live objects hold. The trim changes the
  node's RSS from that point on: the bench reads the load kit's RSS figures of a probed run
  with that in mind.

Nothing here reads call data: type names, sizes and source lines only.
"""

from __future__ import annotations

import contextlib
import os

_DIR = os.environ.get("SPG_BENCH_MEMPROBE")

if _DIR:
    import collections
    import ctypes
    import gc
    import json
    import signal
    import sys
    import time
    import tracemalloc
    from pathlib import Path
    from typing import Any

    _OUT = Path(_DIR)
    _state: dict[str, Any] = {"n": 0, "first": None}

    def _rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _status() -> dict[str, int]:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads", "VmData"):
                out[key] = int(value.split()[0]) * (1 if key == "Threads" else 1024)
        return out

    def _mappings() -> dict[str, Any]:
        """Resident bytes by mapping: the heap, named files, and anonymous mappings (the
        biggest few by address, with their size: glibc's thread arenas reserve 64 MiB,
        pymalloc's arenas are 1 MiB mmaps that the kernel may merge)."""
        by_name: dict[str, int] = collections.Counter()
        anon: list[tuple[int, int, str]] = []
        current: tuple[str, int, str] | None = None
        for line in Path("/proc/self/smaps").read_text().splitlines():
            first = line.split(None, 5)
            if "-" in first[0] and not first[0].endswith(":"):
                lo, hi = (int(x, 16) for x in first[0].split("-"))
                name = first[5] if len(first) > 5 else ""
                current = (name, hi - lo, first[0])
            elif first[0] == "Rss:" and current is not None:
                rss = int(first[1]) * 1024
                name, size, addr = current
                if name and not name.startswith("[anon"):
                    key = name if name.startswith("[") else ("file:" + name.rsplit("/", 1)[-1])
                    by_name[key] += rss
                else:
                    by_name["[anon]"] += rss
                    anon.append((rss, size, addr))
        anon.sort(reverse=True)
        return {
            "by_name": dict(collections.Counter(by_name).most_common(25)),
            "anon_top": [{"rss": r, "size": s, "addr": a} for r, s, a in anon[:12]],
            "anon_count": len(anon),
        }

    def _pymalloc() -> dict[str, int]:
        """pymalloc's arenas and blocks (`sys._debugmallocstats`, which writes to fd 2)."""
        import tempfile

        out: dict[str, int] = {}
        with tempfile.TemporaryFile() as tmp:
            saved = os.dup(2)
            try:
                sys.stderr.flush()
                os.dup2(tmp.fileno(), 2)
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
        for line in text.splitlines():
            name, _, value = line.rpartition("=")
            name = name.strip()
            if name.startswith("#") or name in (
                "bytes in allocated blocks",
                "bytes in available blocks",
                "bytes lost to pool headers",
                "bytes lost to quantization",
                "bytes lost to arena alignment",
                "Total",
            ):
                with contextlib.suppress(ValueError):
                    out.setdefault(name, int(value.strip().replace(",", "")))
        return out

    def _loop_counts() -> dict[str, int]:
        """The running loop's tasks, ready callbacks and timers (the handler runs in the loop's
        thread, between two bytecodes of whatever the loop was running)."""
        import asyncio

        out: dict[str, int] = {}
        loop = asyncio._get_running_loop()
        if loop is None:
            return out
        with contextlib.suppress(Exception):
            out["tasks"] = len(asyncio.all_tasks(loop))
        for name in ("_ready", "_scheduled"):
            value = getattr(loop, name, None)
            if value is not None:
                out[name] = len(value)
        return out

    def _probe(signum: int, frame: Any) -> None:
        started = time.monotonic()
        n = _state["n"]
        _state["n"] = n + 1
        gc.collect()
        report: dict[str, Any] = {"n": n, "t": time.time(), "rss": _rss()}
        counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        report["gc_objects"] = len(gc.get_objects())
        report["types"] = dict(counts.most_common(120))
        report["loop"] = _loop_counts()
        frames = int(os.environ.get("SPG_BENCH_MEMPROBE_FRAMES", "1"))
        if frames <= 0:
            pass  # no tracing: RSS, pymalloc's arenas (reported only without tracemalloc's hooks)
        elif not tracemalloc.is_tracing():
            tracemalloc.start(frames)
            _state["first"] = tracemalloc.take_snapshot()
        else:
            snap = tracemalloc.take_snapshot()
            report["traced"] = tracemalloc.get_traced_memory()[0]
            report["tracemalloc_own"] = tracemalloc.get_tracemalloc_memory()
            key = "traceback" if frames > 1 else "lineno"
            stats = snap.compare_to(_state["first"], key)
            report["top"] = [
                {
                    "where": [f"{f.filename}:{f.lineno}" for f in s.traceback][:frames],
                    "size_diff": s.size_diff,
                    "count_diff": s.count_diff,
                    "size": s.size,
                }
                for s in stats[:60]
            ]
            del snap, stats
        gc.collect()
        report["rss_before_trim"] = _rss()
        report["status"] = _status()
        report["pymalloc"] = _pymalloc()
        report["maps"] = _mappings()
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        report["rss_after_trim"] = _rss()
        report["status_after_trim"] = _status()
        report["maps_after_trim"] = _mappings()
        report["probe_s"] = round(time.monotonic() - started, 3)
        path = _OUT / f"probe-{n}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report))
        tmp.rename(path)
        print(f"memprobe: wrote {path}", file=sys.stderr)

    signal.signal(signal.SIGUSR1, _probe)
