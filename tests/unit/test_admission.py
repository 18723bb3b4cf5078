"""Admission control's core: smoothing, thresholds, hysteresis and the call cap, with time as a
number (no clock, no sleeps)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time

import pytest

from spg_media.admission import (
    BUSY,
    LAG,
    MAX_CALLS,
    STALE_S,
    AdmissionControl,
    AdmissionPolicy,
    LagSignal,
)

TICK = 0.02
POLICY = AdmissionPolicy(
    max_tick_lag_s=0.02,
    max_loop_lag_s=0.05,
    resume_ratio=0.5,
    smoothing_s=1.0,
    min_refusing_s=2.0,
)


def feed_ticks(control: AdmissionControl, lag_s: float, start: float, seconds: float) -> float:
    """Media ticks every 20 ms, each `lag_s` late, from `start` for `seconds`; the time after."""
    now = start
    for _ in range(round(seconds / TICK)):
        now += TICK
        control.note_tick_lag(lag_s, now)
    return now


# ---- the smoothed lag ----------------------------------------------------------------------------


def test_a_steady_lag_is_reached_and_a_single_spike_is_smoothed_away() -> None:
    signal = LagSignal(smoothing_s=1.0)
    now = 0.0
    for _ in range(500):  # 10 s at 30 ms
        now += TICK
        signal.add(0.03, now)
    assert signal.value(now) == pytest.approx(0.03, rel=1e-3)
    quiet = LagSignal(smoothing_s=1.0)
    quiet.add(0.0, 0.0)
    quiet.add(0.2, TICK)  # one tick 200 ms late (a pause)
    assert quiet.last_sample == 0.2
    assert quiet.value(TICK) == pytest.approx(0.2 * (1 - math.exp(-TICK)), rel=1e-6)  # ~4 ms


def test_a_silent_lag_decays_to_zero() -> None:
    signal = LagSignal(smoothing_s=1.0)
    now = 0.0
    for _ in range(500):
        now += TICK
        signal.add(0.04, now)
    assert signal.value(now + STALE_S) == pytest.approx(0.04, rel=1e-3)  # not yet stale
    assert signal.value(now + STALE_S + 1.0) == pytest.approx(0.04 / math.e, rel=1e-3)
    assert signal.value(now + 30) < 1e-9
    # The next sample after a silence starts from the decayed value, not the stale one.
    signal.add(0.0, now + 30)
    assert signal.value(now + 30) < 1e-9


def test_negative_samples_count_as_zero_and_no_sample_is_zero() -> None:
    signal = LagSignal(smoothing_s=1.0)
    assert signal.value(5.0) == 0.0
    signal.add(-0.001, 1.0)
    assert signal.value(1.0) == 0.0 and signal.last_sample == 0.0


# ---- thresholds and hysteresis -------------------------------------------------------------------


def test_a_node_keeping_up_accepts() -> None:
    control = AdmissionControl(POLICY)
    now = feed_ticks(control, 0.005, 0.0, 30.0)
    control.note_loop_lag(0.01, now)
    assert control.admit(500, now) is None
    assert not control.lagging


def test_a_late_tick_alone_refuses_nothing() -> None:
    control = AdmissionControl(POLICY)
    now = feed_ticks(control, 0.001, 0.0, 5.0)
    changed = control.note_tick_lag(0.15, now + TICK)  # one tick 150 ms late
    assert not changed and control.admit(0, now + TICK) is None


def test_a_node_that_stays_behind_refuses_then_accepts_again_with_hysteresis() -> None:
    control = AdmissionControl(POLICY)
    now = feed_ticks(control, 0.0, 0.0, 2.0)
    # Ticks 40 ms late from now on: the smoothed lag crosses 20 ms after ~0.7 s.
    transitions: list[float] = []
    for _ in range(100):
        now += TICK
        if control.note_tick_lag(0.04, now):
            transitions.append(now)
    assert len(transitions) == 1
    assert 0.5 < transitions[0] - 2.0 < 1.0
    assert control.admit(0, now) == LAG
    # The lag falls to 15 ms: below the limit but above resume_ratio x limit (10 ms): refusing.
    now = feed_ticks(control, 0.015, now, 10.0)
    assert control.admit(0, now) == LAG
    # At 2 ms it passes 10 ms after ~0.5 s and accepts again.
    resumed = None
    for _ in range(100):
        now += TICK
        if control.note_tick_lag(0.002, now):
            resumed = now
            break
    assert resumed is not None
    assert control.admit(0, now) is None


def test_refusing_lasts_at_least_min_refusing_s() -> None:
    control = AdmissionControl(POLICY)
    control.note_loop_lag(0.2, 10.0)  # one callback 200 ms late with no history: ~79 ms smoothed
    assert control.lagging and control.refusing_since == 10.0
    # Loop samples at 0 every 100 ms: the smoothed lag is below 25 ms (resume_ratio x 50 ms)
    # after ~1.2 s, but the node refuses for min_refusing_s (2 s) at least.
    now, below_at = 10.0, None
    while now < 11.95:
        now += 0.1
        control.note_loop_lag(0.0, now)
        if below_at is None and control.lags(now)[1] <= 0.025:
            below_at = now
        assert control.admit(0, now) == LAG
    assert below_at is not None and below_at < 11.5
    assert control.note_loop_lag(0.0, 12.0)  # 2 s on: accepting again
    assert control.admit(0, 12.0) is None


def test_the_loop_lag_refuses_on_its_own() -> None:
    control = AdmissionControl(POLICY)
    now = 0.0
    for _ in range(50):
        now += 0.1
        control.note_loop_lag(0.08, now)
    assert control.admit(0, now) == LAG
    assert control.lags(now)[0] == 0.0  # no tick at all (no call)


def test_when_the_last_call_ends_a_stale_tick_lag_stops_refusing() -> None:
    control = AdmissionControl(POLICY)
    now = feed_ticks(control, 0.06, 0.0, 5.0)
    assert control.admit(0, now) == LAG
    # No more ticks (no calls); the loop probe says the loop is fine.
    later = now
    while later < now + 10:
        later += 0.1
        control.note_loop_lag(0.0, later)
    assert control.admit(0, later) is None


def test_a_limit_of_zero_is_not_checked() -> None:
    control = AdmissionControl(AdmissionPolicy(max_tick_lag_s=0, max_loop_lag_s=0))
    now = feed_ticks(control, 0.5, 0.0, 5.0)
    control.note_loop_lag(2.0, now)
    assert control.admit(10_000, now) is None
    assert control.lags(now)[0] > 0.4  # still measured, for the health report


def test_refusing_is_evaluated_when_asked_without_a_new_sample() -> None:
    control = AdmissionControl(POLICY)
    control.note_loop_lag(1.0, 0.0)
    assert control.admit(0, 0.0) == LAG
    assert control.admit(0, 60.0) is None  # nothing sampled since: decayed to 0


# ---- the cap ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("active", "expected"), [(0, None), (2, None), (3, MAX_CALLS), (9, MAX_CALLS)]
)
def test_max_calls_caps_the_calls_in_progress(active: int, expected: str | None) -> None:
    control = AdmissionControl(AdmissionPolicy(max_calls=3))
    assert control.admit(active, 0.0) == expected


def test_no_cap_by_default_and_lag_outranks_the_cap() -> None:
    assert AdmissionControl(AdmissionPolicy()).admit(1_000_000, 0.0) is None
    control = AdmissionControl(dataclasses.replace(POLICY, max_calls=1))
    control.note_loop_lag(1.0, 0.0)
    assert control.admit(5, 0.0) == LAG


# ---- the shell's samplers, on a real event loop -------------------------------------------------


def test_the_loop_probe_sees_a_blocked_loop() -> None:
    """The real sampler: a callback scheduled every 10 ms runs ~100 ms late when the loop is
    blocked for 100 ms, and the node refuses (a 30 ms limit, no smoothing to speak of)."""
    from spg_media.server import LagMonitor

    policy = AdmissionPolicy(max_tick_lag_s=0, max_loop_lag_s=0.03, smoothing_s=0.01)
    control = AdmissionControl(policy)
    probes: list[float] = []

    async def body() -> tuple[float, float, bool]:
        monitor = LagMonitor(
            control, on_probe=lambda: probes.append(control.loop_lag.last_sample), interval_s=0.01
        )
        monitor.start()
        try:
            await asyncio.sleep(0.2)
            calm = max(probes)
            time.sleep(0.1)  # the loop blocked: nothing runs for 100 ms
            await asyncio.sleep(0)
            await asyncio.sleep(0.005)
            return calm, max(probes), control.lagging
        finally:
            monitor.stop()

    calm, blocked, refusing = asyncio.run(body())
    assert len(probes) >= 5
    assert blocked >= 0.08  # the probe that was due in the blocked 100 ms
    assert calm < blocked
    assert refusing


def test_the_media_tick_reports_how_late_it_starts() -> None:
    """The real sampler of the media tick: with one session attached, each 20 ms tick reports its
    lateness; blocking the loop for 100 ms makes the next tick ~100 ms late."""
    from spg_media.rtp.session import MediaEngine, MediaSession

    samples: list[float] = []

    async def body() -> None:
        engine = MediaEngine("127.0.0.1", 31400, 31439)
        engine.on_tick_lag = lambda lag, now: samples.append(lag)
        session = MediaSession(
            codec="PCMU", remote=("127.0.0.1", 9), dtmf_payload_type=101, on_dtmf=lambda e: None
        )
        engine.attach(31400, session)  # no socket under it: nothing is sent
        await asyncio.sleep(0.2)
        time.sleep(0.1)
        await asyncio.sleep(0.1)
        await engine.aclose()

    asyncio.run(body())
    assert len(samples) >= 10
    assert max(samples[:5]) < 0.05  # on schedule while the loop is free (a loaded machine: slack)
    assert max(samples) >= 0.08


# ---- the busy fraction: refusing before anything is late -----------------------------------------

BUSY_POLICY = dataclasses.replace(POLICY, max_tick_busy=0.7)


def test_a_busy_tick_refuses_before_it_lags_and_says_busy() -> None:
    """Calls arriving at 25 a second, each costing the tick 0.18 % of its period: the busy
    fraction climbs; the node refuses at 0.7 smoothed, while no tick has started late."""
    control = AdmissionControl(BUSY_POLICY)
    now, calls, refused_at = 0.0, 0, None
    while now < 40 and refused_at is None:
        now += TICK
        if control.admit(calls, now) is None and round(now / TICK) % 2 == 0:
            calls += 1  # one every other tick: 25 a second
        control.note_tick_lag(0.0, now)
        if control.note_tick_busy(calls * 0.0018, now):
            refused_at = now
    assert refused_at is not None
    assert control.admit(calls, now) == BUSY and control.refusing_for == BUSY
    assert control.lags(now) == (0.0, 0.0)
    # Taken while the smoothed fraction caught up: about a second of arrivals past 0.7 of the
    # period, far from the full period where ticks would start late.
    assert 0.7 < calls * 0.0018 < 0.8


def test_a_busy_node_accepts_again_below_nine_tenths_of_the_limit() -> None:
    control = AdmissionControl(BUSY_POLICY)
    now = feed_busy(control, 0.8, 0.0, 10.0)
    assert control.admit(0, now) == BUSY
    now = feed_busy(control, 0.65, now, 10.0)  # calls ending: under the limit, over 0.63
    assert control.admit(0, now) == BUSY
    resumed = None
    for _ in range(200):
        now += TICK
        if control.note_tick_busy(0.5, now):
            resumed = now
            break
    assert resumed is not None and control.admit(0, now) is None
    assert control.busy.value(now) < 0.63


def feed_busy(control: AdmissionControl, fraction: float, start: float, seconds: float) -> float:
    now = start
    for _ in range(round(seconds / TICK)):
        now += TICK
        control.note_tick_busy(fraction, now)
    return now


def test_the_busy_fraction_is_one_at_most_and_a_limit_of_zero_is_not_checked() -> None:
    control = AdmissionControl(dataclasses.replace(BUSY_POLICY, max_tick_busy=0))
    now = feed_busy(control, 3.0, 0.0, 10.0)  # a tick that took 60 ms: a full period, no more
    assert control.admit(0, now) is None
    assert control.busy.last_sample == 1.0
    assert control.busy.value(now) == pytest.approx(1.0, abs=1e-3)


def test_the_busy_fraction_decays_when_the_ticks_stop() -> None:
    control = AdmissionControl(BUSY_POLICY)
    now = feed_busy(control, 0.9, 0.0, 5.0)
    assert control.admit(0, now) == BUSY
    assert control.admit(0, now + 10) is None  # the last call ended: no tick, no load


def test_a_lag_refusal_says_lag_even_when_busy_follows() -> None:
    control = AdmissionControl(BUSY_POLICY)
    control.note_loop_lag(1.0, 0.0)
    assert control.admit(0, 0.0) == LAG
    feed_busy(control, 1.0, 0.0, 1.9)
    assert control.admit(0, 1.9) == LAG


def test_the_media_tick_reports_how_long_its_work_takes() -> None:
    """The real sampler: the engine tells each tick's work time; a session whose serving is
    slowed by 10 ms (a stand-in for many calls) makes each tick about half busy, and the
    monitor feeds that to admission."""
    from spg_media.rtp.session import MediaEngine, MediaSession
    from spg_media.server import LagMonitor

    control = AdmissionControl(BUSY_POLICY)
    monitor = LagMonitor(control)
    works: list[float] = []

    async def body() -> None:
        engine = MediaEngine("127.0.0.1", 31440, 31479)

        def on_work(work_s: float, now: float) -> None:
            works.append(work_s)
            monitor.on_tick_work(work_s, now)

        engine.on_tick_work = on_work
        session = MediaSession(
            codec="PCMU", remote=("127.0.0.1", 9), dtmf_payload_type=101, on_dtmf=lambda e: None
        )
        engine.attach(31440, session)  # no socket under it: nothing is sent
        await asyncio.sleep(0.2)
        serve = engine._serve

        def slow_serve(now: float) -> None:
            time.sleep(0.01)
            serve(now)

        engine._serve = slow_serve  # type: ignore[method-assign]
        await asyncio.sleep(0.3)
        await engine.aclose()

    asyncio.run(body())
    assert len(works) >= 15
    assert min(works[:5]) < 0.005  # one idle session: next to nothing
    assert max(works) >= 0.01
    assert control.busy.last_sample >= 0.5
