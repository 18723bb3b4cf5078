"""Admission control: whether the node takes new calls, from its own load and its call count.

A node past its capacity must not degrade every call it has (stretched prompts, lost digits):
it refuses new ones instead — `503 Service Unavailable` with `Retry-After`, so Kamailio's
dispatcher tries another node — while the calls in progress run on untouched. This module is
the decision, sans-IO: it is fed load samples with `now` and says whether a new call may come in.
The shell that samples is `server.LagMonitor`; `server.Server.on_invite` asks `admit`.

One signal that leads, and two lags that follow:

- the media tick's busy fraction: how long each 20 ms tick of `rtp.session.MediaEngine` takes
  to do its work (read every socket, run the in-band detector, send every call's packet), in
  the loop's clock, over its 20 ms period. It grows with every call taken, and with whatever
  slows the work down (another process on the core), before any tick starts late: refusing
  at `max_tick_busy` keeps a margin of the period for the calls admitted while the smoothed
  value catches up (a burst of INVITEs), where the lags show only once the period is already
  full and the calls in progress late.
- the media tick's lag: how late each 20 ms tick of `rtp.session.MediaEngine` starts against its
  schedule. The tick sends every call's audio and runs the in-band detector: a late tick is
  late audio and late digits. It runs only while there are calls.
- the event loop's lag: how late a callback scheduled every 100 ms runs. Everything else (SIP,
  RTP reads, the connector) waits as long.

The lags are in seconds. Each signal is smoothed by an exponentially weighted mean over time
(time constant `smoothing_s`, samples at any interval), so one late tick (a collector pause)
refuses nothing and a node that stays behind refuses. A signal with no sample for `STALE_S`
decays towards 0 as if sampled at 0: the tick stops when the last call ends, and its last lag
must not keep the node refusing.

Hysteresis, so the node does not flap: it starts refusing when a smoothed signal passes its
limit, and accepts again only once every smoothed lag is below `resume_ratio` of its limit, the
busy fraction below `BUSY_RESUME_RATIO` of its limit (a busy fraction stays up while the calls
it comes from last: a wider band would hold the node refusing for the length of a call), and it
has refused for `min_refusing_s` at least. A limit of 0 is not checked.

The cap: with `max_calls` > 0, an INVITE is refused while that many calls are in progress (no
hysteresis: a call that ends is a free place).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "BUSY",
    "BUSY_RESUME_RATIO",
    "LAG",
    "MAX_CALLS",
    "STALE_S",
    "AdmissionControl",
    "AdmissionPolicy",
    "LagSignal",
]

# Refusal reasons: metric label values and log words, a fixed set (the server adds "draining").
BUSY = "busy"
LAG = "lag"
MAX_CALLS = "max_calls"

# A node refusing for its busy fraction accepts again below this fraction of `max_tick_busy`.
BUSY_RESUME_RATIO = 0.9

# Longer than any regular sampling interval (ticks every 20 ms, the loop probe every 100 ms):
# past it without a sample, a lag counts as 0.
STALE_S = 0.5


@dataclass(frozen=True)
class AdmissionPolicy:
    """The limits (from `[admission]` in the config); seconds and counts."""

    max_tick_busy: float = 0.7  # the media tick's smoothed busy fraction, 0-1; 0: not checked
    max_tick_lag_s: float = 0.02  # 0: not checked
    max_loop_lag_s: float = 0.05  # 0: not checked
    resume_ratio: float = 0.5  # accept again below this fraction of every limit
    smoothing_s: float = 1.0  # time constant of the smoothing
    min_refusing_s: float = 2.0  # refuse at least this long once started
    max_calls: int = 0  # 0: no cap


class LagSignal:
    """One lag (or the busy fraction), smoothed over time: `add(sample, now)`, `value(now)`."""

    def __init__(self, smoothing_s: float) -> None:
        self.smoothing_s = smoothing_s
        self.last_sample = 0.0  # the latest raw sample, for the health report and tests
        self._value = 0.0
        self._at: float | None = None

    def add(self, sample: float, now: float) -> None:
        sample = max(sample, 0.0)  # a callback run a hair early is not negative lag
        self.last_sample = sample
        if self._at is None:  # no history: as if the lag had been 0 until STALE_S ago
            self._value, span = 0.0, STALE_S
        else:
            self._value = self.value(now)  # decayed over a silence past STALE_S
            span = min(max(now - self._at, 0.0), STALE_S)
        # The sample stood for the lag over the span since the previous one.
        keep = math.exp(-span / self.smoothing_s)
        self._value = sample + (self._value - sample) * keep
        self._at = now

    def value(self, now: float) -> float:
        """The smoothed lag at `now`; decaying towards 0 once no sample came for STALE_S."""
        if self._at is None:
            return 0.0
        silent = now - self._at - STALE_S
        if silent <= 0:
            return self._value
        return self._value * math.exp(-silent / self.smoothing_s)


class AdmissionControl:
    """The node's admission state: fed lags, asked `admit(active_calls, now)`.

    `note_tick_busy` / `note_tick_lag` / `note_loop_lag` / `evaluate` return True when the state
    changed (started or stopped refusing), for the shell to log it and update its gauges.
    """

    def __init__(self, policy: AdmissionPolicy) -> None:
        self.policy = policy
        self.busy = LagSignal(policy.smoothing_s)
        self.tick_lag = LagSignal(policy.smoothing_s)
        self.loop_lag = LagSignal(policy.smoothing_s)
        self.refusing_since: float | None = None  # refusing for load (busy or lag) since then
        self.refusing_for: str | None = None  # BUSY or LAG: what started the refusing

    def note_tick_busy(self, fraction: float, now: float) -> bool:
        """One media tick's busy fraction: the time its work took over its period."""
        self.busy.add(min(fraction, 1.0), now)
        return self.evaluate(now)

    def note_tick_lag(self, lag_s: float, now: float) -> bool:
        self.tick_lag.add(lag_s, now)
        return self.evaluate(now)

    def note_loop_lag(self, lag_s: float, now: float) -> bool:
        self.loop_lag.add(lag_s, now)
        return self.evaluate(now)

    def _over(self, now: float, lag_ratio: float, busy_ratio: float) -> str | None:
        """What is above its limit times its ratio (BUSY first, then LAG), or None."""
        policy = self.policy
        if policy.max_tick_busy > 0 and self.busy.value(now) > busy_ratio * policy.max_tick_busy:
            return BUSY
        lagging = any(
            limit > 0 and signal.value(now) > lag_ratio * limit
            for signal, limit in (
                (self.tick_lag, policy.max_tick_lag_s),
                (self.loop_lag, policy.max_loop_lag_s),
            )
        )
        return LAG if lagging else None

    def evaluate(self, now: float) -> bool:
        """Move between accepting and refusing for load; True when it moved."""
        if self.refusing_since is None:
            reason = self._over(now, 1.0, 1.0)
            if reason is not None:
                self.refusing_since, self.refusing_for = now, reason
                return True
            return False
        if now - self.refusing_since < self.policy.min_refusing_s:
            return False
        if self._over(now, self.policy.resume_ratio, BUSY_RESUME_RATIO) is not None:
            return False
        self.refusing_since = self.refusing_for = None
        return True

    @property
    def lagging(self) -> bool:
        """Refusing for load, busy or lag (as of the last `evaluate`)."""
        return self.refusing_since is not None

    def admit(self, active_calls: int, now: float) -> str | None:
        """None when a new call may come in; else why not (`BUSY`, `LAG`, `MAX_CALLS`)."""
        self.evaluate(now)
        if self.refusing_since is not None:
            return self.refusing_for or LAG
        if self.policy.max_calls and active_calls >= self.policy.max_calls:
            return MAX_CALLS
        return None

    def lags(self, now: float) -> tuple[float, float]:
        """The smoothed (tick, loop) lags at `now`, in seconds."""
        return self.tick_lag.value(now), self.loop_lag.value(now)
