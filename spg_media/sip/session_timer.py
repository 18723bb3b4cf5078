"""SIP session timers (RFC 4028), the UAS side, for one call: sans-IO.

This module owns what the node says and does about a session's lifetime. `negotiate` reads the
transferred INVITE: when the caller's side supports the `timer` extension and asks for a
Session-Expires, the call gets a `SessionTimer` (the 2xx carries `Session-Expires` with the
refresher and `Require: timer`); an interval under our minimum (or the request's Min-SE) is
`TooSmall` (answer 422 with Min-SE). Otherwise no timer runs: a UAC that does not support the
extension cannot refresh, and RFC 4028 leaves it to the UAS whether to refresh alone (we do not:
a payment call is minutes long).

Who refreshes (RFC 4028 §9's table): the request's `refresher` when it names one, else the
UAC. Then:
- refresher `uac`: each re-INVITE or UPDATE from the caller's side is a refresh (`refreshed`,
  whose headers go into its 2xx). With none for `interval - min(32, interval / 3)` seconds the
  session is `expired`: the call sends BYE (§10).
- refresher `uas`: we refresh at half the interval, with an UPDATE carrying no body
  (`refresh_headers`; its answer to `refresh_answered`). A 408 or 481 answer ends the session.

Time is passed in (`now`, seconds); `next_wake` says when `due` has something to say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

MIN_SE = 90  # seconds: RFC 4028's lowest allowed minimum, and ours
REFRESHERS = ("uac", "uas")


class _Headers(Protocol):
    def get(self, name: str) -> str | None: ...

    def get_all(self, name: str) -> list[str]: ...


@dataclass(frozen=True)
class TooSmall:
    """The requested interval is under our minimum: answer 422 with `Min-SE: min_se`."""

    min_se: int

    def response_headers(self) -> list[tuple[str, str]]:
        return [("Min-SE", str(self.min_se))]


def _tags(headers: _Headers, name: str) -> set[str]:
    return {tag.strip().lower() for tag in headers.get_all(name)}


def supports_timer(headers: _Headers) -> bool:
    """The request's sender implements RFC 4028 (Supported or Require: timer)."""
    return "timer" in _tags(headers, "Supported") | _tags(headers, "Require")


def parse_session_expires(value: str) -> tuple[int, str | None] | None:
    """(delta seconds, refresher or None) of a Session-Expires value; None if unreadable."""
    delta, *params = (part.strip() for part in value.split(";"))
    if not delta.isascii() or not delta.isdigit() or len(delta) > 10:
        return None
    refresher: str | None = None
    for param in params:
        name, _, param_value = param.partition("=")
        if name.strip().lower() == "refresher":
            refresher = param_value.strip().lower()
            if refresher not in REFRESHERS:
                return None
    return int(delta), refresher


def _min_se(headers: _Headers) -> int:
    value = (headers.get("Min-SE") or "").split(";", 1)[0].strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 10 else 0


@dataclass
class SessionTimer:
    """One call's session timer; see the module docstring."""

    interval: int  # seconds
    refresher: Literal["uac", "uas"]
    last_refresh: float  # when the session was last refreshed (or established)
    ended: bool = False  # the session expired or a refresh failed: no more timer

    def response_headers(self) -> list[tuple[str, str]]:
        """For a 2xx to the INVITE or to a refresh."""
        return [
            ("Session-Expires", f"{self.interval};refresher={self.refresher}"),
            ("Require", "timer"),
        ]

    def refreshed(self, headers: _Headers, now: float) -> list[tuple[str, str]]:
        """A re-INVITE or UPDATE from the caller's side: the session goes on. Its
        Session-Expires (if any, and not under our minimum) and refresher are taken. Returns
        the headers for its 2xx."""
        self._adopt(headers, default_refresher="uac")
        self.last_refresh = now
        return self.response_headers()

    def _adopt(self, headers: _Headers, default_refresher: Literal["uac", "uas"]) -> None:
        """Take a refresh's (or its answer's) Session-Expires, unless unreadable or under our
        minimum; a refresher it does not name is `default_refresher`."""
        parsed = parse_session_expires(headers.get("Session-Expires") or "")
        if parsed is None or parsed[0] < MIN_SE:
            return
        self.interval = parsed[0]
        refresher = parsed[1] or default_refresher
        self.refresher = "uas" if refresher == "uas" else "uac"

    def next_wake(self) -> float | None:
        if self.ended:
            return None
        if self.refresher == "uas":
            return self.last_refresh + self.interval / 2
        return self.last_refresh + self.interval - min(32.0, self.interval / 3)

    def due(self, now: float) -> Literal["refresh", "expired"] | None:
        """What is due at `now`: our refresh (refresher uas), the session's end (uac), or
        nothing yet."""
        wake = self.next_wake()
        if wake is None or now < wake:
            return None
        if self.refresher == "uas":
            return "refresh"
        self.ended = True
        return "expired"

    def refresh_headers(self) -> list[tuple[str, str]]:
        """For our UPDATE refreshing the session."""
        return [
            ("Session-Expires", f"{self.interval};refresher=uas"),
            ("Supported", "timer"),
        ]

    def refresh_answered(self, status: int, headers: _Headers, now: float) -> bool:
        """The answer to our refresh; False when the session is over (408, 481)."""
        if 200 <= status < 300:
            self._adopt(headers, default_refresher=self.refresher)
            self.last_refresh = now
            return True
        if status in (408, 481):
            self.ended = True
            return False
        # Any other refusal (e.g. 405, 501: UPDATE not supported): the session is not lost for
        # it; try again after another half interval.
        self.last_refresh = now
        return True


def negotiate(
    headers: _Headers, now: float, min_se: int = MIN_SE
) -> SessionTimer | TooSmall | None:
    """The session timer a transferred INVITE asks for (see the module docstring)."""
    if not supports_timer(headers):
        return None
    value = headers.get("Session-Expires")
    if value is None:
        return None
    parsed = parse_session_expires(value)
    if parsed is None:
        return None
    interval, refresher = parsed
    floor = max(min_se, _min_se(headers))
    if interval < floor:
        return TooSmall(floor)
    return SessionTimer(interval, "uas" if refresher == "uas" else "uac", now)
