"""The node's garbage-collector settings, and the metric of the pauses it causes.

CPython's cyclic collector stops the whole process while it runs, media tick included. A full
(generation 2) collection walks every tracked object, so its pause grows with the heap: on a
node ramping to 600 full-duplex calls, the full collections took 27, 47, 78, 111 and 195 ms
(bench/RESULTS.md), and every call up at that moment got its audio that late. Full collections
come when enough objects have been promoted to the oldest generation, which is what a node
does as calls start; in a steady state few come (a freed object takes back its allocation
from the young generation's count).

What `apply` does once the node has started (imports done, prompts rendered and cached):

- `gc.freeze()`: the objects of start-up (modules, functions, classes, prompt caches: ~85,000
  on a node) go to the permanent generation, which no collection walks again; they live as
  long as the process anyway.
- a young-generation threshold (`process.gc_young_threshold`, 20,000) instead of 700 net
  allocations: generation
  0 and 1 collections become rarer (each walks at most a few thousand young objects, a few
  milliseconds), and so do full ones, which are considered only after ten generation 1
  collections: about a thirtieth as many full pauses while calls ramp up.

Cyclic garbage (what only the collector frees) waits longer for it, so an ended call must not
be in a cycle: `call.release_callbacks` cuts the callbacks that made one (tested); nothing that
the collector would have freed stays.

`observe` times every collection into `spg_gc_pause_seconds{generation}` (`gc.callbacks`: a
start and a stop call per collection, nothing between them), so an operator sees the pauses and
`/healthz` lag figures can be read against them.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from spg_media.observability import METRICS

log = logging.getLogger("spg.server")

DEFAULT_YOUNG_THRESHOLD = 20_000  # `process.gc_young_threshold`: Python's own is 700

GC_PAUSE_SECONDS = METRICS.histogram(
    "spg_gc_pause_seconds",
    "Garbage-collector pauses (the whole process stops), by the generation collected (0, 1, 2 "
    "= full).",
    ("generation",),
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64),
)


class _PauseTimer:
    """A `gc.callbacks` entry: the time from a collection's start to its stop."""

    def __init__(self) -> None:
        self.started: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        if self.started is None:  # installed mid-collection
            return
        pause = time.perf_counter() - self.started
        self.started = None
        GC_PAUSE_SECONDS.observe(pause, generation=str(info.get("generation", "?")))


_timer: _PauseTimer | None = None


def observe() -> None:
    """Time every collection into `spg_gc_pause_seconds` (once per process)."""
    global _timer
    if _timer is None:
        _timer = _PauseTimer()
        gc.callbacks.append(_timer)


def apply(young_threshold: int = DEFAULT_YOUNG_THRESHOLD) -> None:
    """The node's settings, at the end of its start: freeze what start-up made, then collect
    young objects every `young_threshold` net allocations (see the module docstring)."""
    gc.collect()  # start-up's garbage is freed, not frozen
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(young_threshold, gen1, gen2)
    log.debug("garbage collector: %d objects frozen, thresholds %s",
              gc.get_freeze_count(), gc.get_threshold())  # fmt: skip
