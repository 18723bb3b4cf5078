"""RFC 4028 session timers, UAS side: what the INVITE asks, who refreshes, when it expires."""

from __future__ import annotations

import pytest

from spg_media.sip.message import Headers
from spg_media.sip.session_timer import (
    MIN_SE,
    SessionTimer,
    TooSmall,
    negotiate,
    parse_session_expires,
)


def headers(*pairs: tuple[str, str]) -> Headers:
    result = Headers()
    for name, value in pairs:
        result.add(name, value)
    return result


TIMER = ("Supported", "timer, replaces")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("1800", (1800, None)),
        ("1800;refresher=uac", (1800, "uac")),
        (" 90 ; refresher = UAS ", (90, "uas")),
        ("1800;foo=bar;refresher=uas", (1800, "uas")),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1800;refresher=proxy", None),
        ("99999999999", None),
    ],
)
def test_parse_session_expires(value: str, parsed: tuple[int, str | None] | None) -> None:
    assert parse_session_expires(value) == parsed


def test_no_timer_unless_the_uac_supports_it_and_asks() -> None:
    assert negotiate(headers(("Session-Expires", "1800")), 0.0) is None  # cannot refresh
    assert negotiate(headers(TIMER), 0.0) is None  # did not ask
    assert negotiate(headers(TIMER, ("Session-Expires", "x")), 0.0) is None


@pytest.mark.parametrize(
    ("pairs", "refresher"),
    [
        ([TIMER, ("Session-Expires", "1800")], "uac"),  # none named: the UAC refreshes
        ([TIMER, ("Session-Expires", "1800;refresher=uac")], "uac"),
        ([TIMER, ("Session-Expires", "1800;refresher=uas")], "uas"),  # named: as asked
        ([("Require", "timer"), ("x", "1800;refresher=uas")], "uas"),  # compact form
    ],
)
def test_the_refresher_follows_rfc_4028_section_9(
    pairs: list[tuple[str, str]], refresher: str
) -> None:
    timer = negotiate(headers(*pairs), 10.0)
    assert isinstance(timer, SessionTimer)
    assert (timer.interval, timer.refresher, timer.last_refresh) == (1800, refresher, 10.0)
    assert timer.response_headers() == [
        ("Session-Expires", f"1800;refresher={refresher}"),
        ("Require", "timer"),
    ]


def test_an_interval_under_the_minimum_is_422_with_min_se() -> None:
    small = negotiate(headers(TIMER, ("Session-Expires", "60")), 0.0)
    assert small == TooSmall(MIN_SE) and small.response_headers() == [("Min-SE", "90")]
    # the request's own Min-SE counts too
    assert negotiate(headers(TIMER, ("Session-Expires", "100"), ("Min-SE", "120")), 0.0) == (
        TooSmall(120)
    )
    assert isinstance(negotiate(headers(TIMER, ("Session-Expires", "90")), 0.0), SessionTimer)


def test_uac_refresher_refreshes_keep_the_session_and_silence_expires_it() -> None:
    timer = SessionTimer(90, "uac", 0.0)
    assert timer.next_wake() == 60.0  # 90 - min(32, 90 / 3)
    assert timer.due(59.9) is None
    headers_2xx = timer.refreshed(headers(("Session-Expires", "120;refresher=uac")), 50.0)
    assert headers_2xx == [("Session-Expires", "120;refresher=uac"), ("Require", "timer")]
    assert timer.next_wake() == 50.0 + 120 - 32
    assert timer.due(137.9) is None
    assert timer.due(138.0) == "expired"
    assert timer.next_wake() is None and timer.due(500.0) is None  # once


def test_a_refresh_below_the_minimum_keeps_the_interval() -> None:
    timer = SessionTimer(1800, "uac", 0.0)
    timer.refreshed(headers(("Session-Expires", "30")), 5.0)
    assert (timer.interval, timer.last_refresh) == (1800, 5.0)


def test_uas_refresher_refreshes_at_half_the_interval() -> None:
    timer = SessionTimer(100, "uas", 0.0)
    assert timer.next_wake() == 50.0 and timer.due(49.0) is None
    assert timer.due(50.0) == "refresh"
    assert timer.refresh_headers() == [
        ("Session-Expires", "100;refresher=uas"),
        ("Supported", "timer"),
    ]
    assert timer.refresh_answered(200, headers(("Session-Expires", "200;refresher=uas")), 50.5)
    assert timer.next_wake() == 150.5
    assert timer.refresh_answered(501, headers(), 151.0)  # UPDATE not supported: try later
    assert timer.next_wake() == 251.0
    assert not timer.refresh_answered(481, headers(), 252.0)  # the dialog is gone
    assert timer.next_wake() is None


def test_the_peer_may_hand_the_refreshes_over() -> None:
    timer = SessionTimer(100, "uas", 0.0)
    timer.refreshed(headers(("Session-Expires", "100;refresher=uac")), 10.0)
    assert timer.refresher == "uac" and timer.next_wake() == 10.0 + 100 - 32
