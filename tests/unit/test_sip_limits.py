"""The transports' limits as plain objects: connection admission and deadlines, the token bucket
that rations 403s to strangers, and the log throttle. Time is a number here."""

from __future__ import annotations

from spg_media.sip.limits import (
    HANDSHAKE,
    HEADER,
    IDLE,
    LIMIT,
    UNTRUSTED,
    ConnectionLimits,
    ConnectionTable,
    LogThrottle,
    TokenBucket,
    address_in,
    parse_networks,
)

TRUSTED = parse_networks(["127.0.0.1/32", "10.0.0.0/8"])


def table(**limits: float) -> ConnectionTable[str]:
    settings = {"max_connections": 3, "idle_timeout_s": 60.0, "header_timeout_s": 10.0, **limits}
    return ConnectionTable(ConnectionLimits(**settings), TRUSTED)  # type: ignore[arg-type]


def never_busy(_key: str) -> bool:
    return False


def test_addresses_outside_the_trusted_networks_and_names_are_untrusted() -> None:
    assert address_in("10.1.2.3", TRUSTED)
    assert not address_in("127.0.0.2", TRUSTED)
    assert not address_in("pbx.example", TRUSTED)  # a name is never trusted
    assert not address_in("::1", TRUSTED)


def test_admission_refuses_strangers_and_connections_past_the_limit() -> None:
    connections = table()
    assert connections.admit("127.0.0.2") == UNTRUSTED
    for n in range(3):
        assert connections.admit("127.0.0.1") is None
        connections.opened(f"c{n}", 0.0)
    assert connections.admit("127.0.0.1") == LIMIT
    assert connections.admit("127.0.0.2") == UNTRUSTED  # the stranger's reason stays its own
    connections.closed("c1")
    assert connections.admit("10.0.0.9") is None
    assert len(connections) == 2


def test_a_head_not_whole_within_the_header_timeout_is_due() -> None:
    connections = table()
    connections.opened("slow", 0.0)
    connections.opened("quick", 0.0)
    connections.received("slow", 1.0, messages=0, incomplete=True)  # first byte at 1.0
    connections.received("quick", 1.0, messages=0, incomplete=True)
    connections.received("quick", 2.0, messages=1, incomplete=False)  # whole by 2.0
    for t in (3.0, 5.0, 9.0, 10.9):
        connections.received("slow", t, messages=0, incomplete=True)  # a byte now and then
        assert connections.expired(t, never_busy) == []
    assert connections.next_wake() == 10.9 + 0.25  # due at 11.0, one resolution after a sweep
    assert connections.expired(11.0, never_busy) == [("slow", HEADER)]
    assert "slow" not in connections and "quick" in connections


def test_the_header_clock_restarts_with_each_new_message() -> None:
    connections = table()
    connections.opened("c", 0.0)
    connections.received("c", 1.0, messages=0, incomplete=True)
    # the first message ends and a second begins in the same read at 9.0
    connections.received("c", 9.0, messages=1, incomplete=True)
    assert connections.expired(15.0, never_busy) == []
    assert connections.expired(19.0, never_busy) == [("c", HEADER)]


def test_an_idle_connection_is_due_unless_a_call_uses_it() -> None:
    connections = table()
    connections.opened("idle", 0.0)
    connections.opened("call", 0.0)
    connections.opened("chatty", 0.0)
    connections.received("chatty", 30.0, messages=1, incomplete=False)
    assert connections.next_wake() == 60.0
    assert connections.expired(60.0, lambda key: key == "call") == [("idle", IDLE)]
    # a call's connection starts a new idle period at each sweep: it is never closed while
    # the call lives, and closed a full period after the call has gone
    assert connections.next_wake() == 90.0
    assert connections.expired(90.0, lambda key: key == "call") == [("chatty", IDLE)]
    assert connections.expired(150.0, lambda key: key == "call") == []
    assert connections.expired(209.9, never_busy) == []
    assert connections.expired(210.0, never_busy) == [("call", IDLE)]
    assert connections.next_wake() is None


def test_a_tls_handshake_not_done_in_time_is_due() -> None:
    connections = table(tls_handshake_timeout_s=5.0)
    connections.opened("stuck", 0.0, handshake=True)
    connections.opened("done", 0.0, handshake=True)
    connections.opened("plain", 0.0)
    connections.received("stuck", 1.0, messages=0, incomplete=False)  # half a ClientHello
    connections.established("done")
    assert connections.next_wake() == 5.0
    assert connections.expired(4.9, never_busy) == []
    assert connections.expired(5.0, never_busy) == [("stuck", HANDSHAKE)]
    assert connections.next_wake() == 60.0  # the others idle as usual


def test_keepalives_alone_do_not_keep_a_connection_open() -> None:
    connections = table()
    connections.opened("c", 0.0)
    for t in range(10, 60, 10):  # CRLF pings: bytes, but no message
        connections.received("c", float(t), messages=0, incomplete=False)
    assert connections.expired(60.0, never_busy) == [("c", IDLE)]


def test_sweeps_are_at_least_the_resolution_apart() -> None:
    connections = ConnectionTable[str](
        ConnectionLimits(idle_timeout_s=1.0, header_timeout_s=1.0), TRUSTED, resolution_s=0.25
    )
    for n in range(100):  # deadlines 1 ms apart
        connections.opened(f"c{n}", n / 1000)
    assert connections.next_wake() == 1.0
    assert len(connections.expired(1.0, never_busy)) == 1
    assert connections.next_wake() == 1.25  # not 1.001: one pass takes many at once
    assert len(connections.expired(1.25, never_busy)) == 99


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=5.0, burst=20.0)
    assert sum(bucket.take(0.0) for _ in range(100)) == 20
    assert sum(bucket.take(1.0) for _ in range(100)) == 5  # a second later: 5 more
    assert sum(bucket.take(100.0) for _ in range(100)) == 20  # never more than the burst


def test_log_throttle_reports_the_count_once_a_period() -> None:
    throttle = LogThrottle(10.0)
    assert throttle.note(0.0) == 1  # the first one is reported at once
    assert [throttle.note(t / 10) for t in range(1, 100)] == [None] * 99
    assert throttle.note(10.0) == 100  # the 99 held back and this one
    assert throttle.note(15.0) is None
    assert throttle.note(25.0) == 2
