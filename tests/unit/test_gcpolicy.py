"""The node's garbage-collector settings and the metric of its pauses."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from spg_media import gcpolicy
from spg_media.config import load_config


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_every_collection_is_timed_by_generation() -> None:
    gcpolicy.observe()
    gcpolicy.observe()  # once per process, however often a node starts
    timer = gcpolicy._timer
    assert timer is not None
    assert gc.callbacks.count(timer) == 1
    # No automatic collection between the counts (another thread's allocations, such as the
    # test runner's, can start one at any time: it would be counted too)
    enabled = gc.isenabled()
    gc.disable()
    try:
        before = {g: gcpolicy.GC_PAUSE_SECONDS.get_count(generation=g) for g in "012"}
        gc.collect(0)
        gc.collect(2)
        after = {g: gcpolicy.GC_PAUSE_SECONDS.get_count(generation=g) for g in "012"}
    finally:
        if enabled:
            gc.enable()
    assert after["0"] == before["0"] + 1
    assert after["2"] == before["2"] + 1
    assert gcpolicy.GC_PAUSE_SECONDS.get_sum(generation="2") > 0


def test_apply_freezes_start_up_and_sets_the_young_threshold(restored_gc: None) -> None:
    gcpolicy.apply(12_345)
    assert gc.get_freeze_count() > 1000  # the modules, functions and classes imported so far
    assert gc.get_threshold()[0] == 12_345
    # what start-up made is no longer walked by a full collection
    assert len(gc.get_objects()) < gc.get_freeze_count()


def test_the_configured_threshold_and_its_off_switch() -> None:
    assert load_config(None, env={}).process.gc_young_threshold == 20_000
    env = {"SPG_PROCESS__GC_YOUNG_THRESHOLD": "0"}
    assert load_config(None, env=env).process.gc_young_threshold == 0
