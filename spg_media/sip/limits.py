"""What a SIP peer may cost the node: the sans-IO bookkeeping behind the transports' limits.

- `ConnectionTable`: the open TCP/TLS connections. It admits a new inbound one (its source
  inside `sip.trusted_sources`, fewer than `sip.max_connections` open) or names why not, and
  says which connections are due to close: a TLS handshake not done `tls_handshake_timeout_s`
  after the connection opened, a message whose head (and body) is not whole
  `header_timeout_s` after its first byte (a slowloris), or a connection that has carried no
  message for `idle_timeout_s` while no call uses it. A connection a call uses is never closed
  for idleness: phones such as baresip cannot accept a new connection for our REFER or BYE.
- `TokenBucket`: how often a stranger's INVITE is answered `403` (past it: dropped).
- `LogThrottle`: one log line per period at most, carrying the count since the last one.

All of them are fed `now` (a monotonic clock in seconds) and never read a clock or touch a
socket; `SipUserAgent` (`sip/ua.py`) is their shell.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Refusal reasons and close reasons: metric label values, a fixed set.
UNTRUSTED = "untrusted"
LIMIT = "limit"
IDLE = "idle"
HEADER = "header"
HANDSHAKE = "handshake"


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1024
    idle_timeout_s: float = 60.0
    header_timeout_s: float = 10.0
    tls_handshake_timeout_s: float = 5.0


def parse_networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


def address_in(host: str, networks: Iterable[Network]) -> bool:
    """Whether `host` (an IP literal) is inside one of `networks`; a name never is."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in net for net in networks)


class _Connection:
    __slots__ = ("handshake_until", "last_message", "message_started")

    def __init__(self, now: float, handshake_until: float | None) -> None:
        self.last_message = now  # the idle clock starts when the connection opens
        self.message_started: float | None = None  # first byte of an incomplete message
        self.handshake_until = handshake_until  # TLS not established yet: its deadline


class ConnectionTable(Generic[Key]):
    """The open connections and their deadlines; see the module docstring.

    The shell calls `admit` for an inbound connection before anything else (and closes it when
    a reason comes back), `opened` once it keeps one (inbound or one it opened itself; with
    `handshake=True` for an inbound TLS one, then `established` when its handshake is done),
    `received` after each read with what the framer made of it, `closed` when it is gone, and
    `expired(now, busy)` when `next_wake()` is due. Deadlines are checked in sweeps at most
    `resolution_s` apart, so that thousands of connections cost a pass every so often and not
    a timer each.
    """

    def __init__(
        self,
        limits: ConnectionLimits,
        trusted: Iterable[Network],
        resolution_s: float = 0.25,
    ) -> None:
        self.limits = limits
        self.trusted = list(trusted)
        self.resolution_s = resolution_s
        self._open: dict[Key, _Connection] = {}
        self._earliest: float | None = None  # no deadline comes before this
        self._last_sweep = float("-inf")

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, key: object) -> bool:
        return key in self._open

    def admit(self, host: str) -> str | None:
        """Why a new inbound connection from `host` must be closed at once, or None."""
        if not address_in(host, self.trusted):
            return UNTRUSTED
        if len(self._open) >= self.limits.max_connections:
            return LIMIT
        return None

    def opened(self, key: Key, now: float, handshake: bool = False) -> None:
        until = now + self.limits.tls_handshake_timeout_s if handshake else None
        self._open[key] = _Connection(now, until)
        self._lower(now + self.limits.idle_timeout_s)
        if until is not None:
            self._lower(until)

    def established(self, key: Key) -> None:
        """The TLS handshake of `key` is done."""
        entry = self._open.get(key)
        if entry is not None:
            entry.handshake_until = None

    def closed(self, key: Key) -> None:
        self._open.pop(key, None)

    def received(self, key: Key, now: float, messages: int, incomplete: bool) -> None:
        """A read on `key` gave `messages` whole messages; `incomplete`: bytes of another one
        are waiting for the rest."""
        entry = self._open.get(key)
        if entry is None:
            return
        if messages:
            entry.last_message = now
        if not incomplete:
            entry.message_started = None
        elif messages or entry.message_started is None:
            entry.message_started = now  # a new message began in this read
            self._lower(now + self.limits.header_timeout_s)

    def next_wake(self) -> float | None:
        """When `expired` should be called next (None: no connection open)."""
        if self._earliest is None:
            return None
        return max(self._earliest, self._last_sweep + self.resolution_s)

    def expired(self, now: float, busy: Callable[[Key], bool]) -> list[tuple[Key, str]]:
        """The connections to close now, each with its reason (`HANDSHAKE`, `HEADER` or
        `IDLE`); they are forgotten here, the shell closes them. `busy(key)`: a call uses that
        connection (it then starts a new idle period instead)."""
        self._last_sweep = now
        limits = self.limits
        due: list[tuple[Key, str]] = []
        earliest: float | None = None
        for key, entry in self._open.items():
            handshake_until = entry.handshake_until
            if handshake_until is not None:
                if now >= handshake_until:
                    due.append((key, HANDSHAKE))
                    continue
                earliest = handshake_until if earliest is None else min(earliest, handshake_until)
            started = entry.message_started
            if started is not None and now - started >= limits.header_timeout_s:
                due.append((key, HEADER))
                continue
            if now - entry.last_message >= limits.idle_timeout_s:
                if not busy(key):
                    due.append((key, IDLE))
                    continue
                entry.last_message = now
            deadline = entry.last_message + limits.idle_timeout_s
            if started is not None:
                deadline = min(deadline, started + limits.header_timeout_s)
            earliest = deadline if earliest is None else min(earliest, deadline)
        for key, _ in due:
            del self._open[key]
        self._earliest = earliest
        return due

    def _lower(self, deadline: float) -> None:
        if self._earliest is None or deadline < self._earliest:
            self._earliest = deadline


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; `take(now)` spends one if there is one."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at: float | None = None

    def take(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class LogThrottle:
    """At most one log line every `period_s`: `note(now)` counts an event and returns how many
    to report in a line written now (this one included), or None while the period runs."""

    def __init__(self, period_s: float = 10.0) -> None:
        self.period_s = period_s
        self._count = 0
        self._last: float | None = None

    def note(self, now: float) -> int | None:
        self._count += 1
        if self._last is not None and now - self._last < self.period_s:
            return None
        self._last = now
        count, self._count = self._count, 0
        return count
