"""Merging RFC 4733, in-band and SIP INFO reports so that one key press is one digit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reachable import reachable

from spg_media.dtmf.merge import DtmfMerger
from spg_media.dtmf.rfc4733 import DtmfEvent


def start(digit: str, at: float, source: str, duration_ms: float | None = None) -> DtmfEvent:
    return DtmfEvent(digit, "start", at, duration_ms, source)


def end(digit: str, at: float, source: str) -> DtmfEvent:
    return DtmfEvent(digit, "end", at, None, source)


def run(merger: DtmfMerger, events: list[DtmfEvent]) -> str:
    return "".join(d for e in events if (d := merger.feed(e)) is not None)


# Each case: (mode, events in arrival order, digits delivered)
CASES: list[tuple[str, str, list[DtmfEvent], str]] = [
    (
        "rfc4733-alone",
        "auto",
        [start("1", 0.0, "rfc4733"), end("1", 0.1, "rfc4733")],
        "1",
    ),
    (
        "rfc4733-same-digit-twice-is-two-presses",
        "auto",
        [
            start("1", 0.0, "rfc4733"),
            end("1", 0.05, "rfc4733"),
            start("1", 0.06, "rfc4733"),
            end("1", 0.1, "rfc4733"),
        ],
        "11",
    ),
    (
        "inband-alone-before-any-event",
        "auto",
        [start("5", 0.0, "inband"), end("5", 0.1, "inband")],
        "5",
    ),
    (
        "inband-same-digit-twice-is-two-presses",
        "on",
        [
            start("5", 0.0, "inband"),
            end("5", 0.06, "inband"),
            start("5", 0.1, "inband"),
            end("5", 0.16, "inband"),
        ],
        "55",
    ),
    (
        "auto-inband-ignored-once-rfc4733-seen",
        "auto",
        [
            start("1", 0.0, "rfc4733"),
            end("1", 0.1, "rfc4733"),
            start("2", 1.0, "inband"),
            end("2", 1.1, "inband"),
        ],
        "1",
    ),
    (
        "off-ignores-inband-always",
        "off",
        [start("2", 0.0, "inband"), end("2", 0.1, "inband")],
        "",
    ),
    (
        "on-inband-during-rfc4733-press-is-duplicate",
        "on",
        [
            start("7", 0.0, "rfc4733"),
            start("7", 0.04, "inband"),
            end("7", 0.3, "rfc4733"),
            end("7", 0.3, "inband"),
        ],
        "7",
    ),
    (
        "on-inband-within-window-after-short-press-is-duplicate",
        "on",
        [
            start("7", 0.0, "rfc4733"),
            end("7", 0.05, "rfc4733"),
            start("7", 0.1, "inband"),
            end("7", 0.15, "inband"),
        ],
        "7",
    ),
    (
        "on-inband-of-long-press-beyond-window-but-overlapping-is-duplicate",
        "on",
        [
            start("7", 0.0, "rfc4733"),
            start("7", 0.5, "inband"),
            end("7", 0.6, "inband"),
            end("7", 0.9, "rfc4733"),
        ],
        "7",
    ),
    (
        "on-inband-first-then-rfc4733-is-duplicate",
        "on",
        [
            start("3", 0.0, "inband"),
            start("3", 0.03, "rfc4733"),
            end("3", 0.1, "rfc4733"),
            end("3", 0.12, "inband"),
        ],
        "3",
    ),
    (
        "on-different-digits-from-different-sources-both-count",
        "on",
        [
            start("3", 0.0, "inband"),
            start("4", 0.01, "rfc4733"),
            end("3", 0.1, "inband"),
            end("4", 0.1, "rfc4733"),
        ],
        "34",
    ),
    (
        "on-same-digit-other-source-after-press-and-window-is-new",
        "on",
        [
            start("9", 0.0, "rfc4733"),
            end("9", 0.1, "rfc4733"),
            start("9", 0.5, "inband"),
            end("9", 0.6, "inband"),
        ],
        "99",
    ),
    (
        "info-and-rfc4733-same-press",
        "auto",
        [start("8", 0.0, "rfc4733"), start("8", 0.02, "info", 160), end("8", 0.16, "rfc4733")],
        "8",
    ),
    (
        "info-first-then-rfc4733-within-its-duration",
        "auto",
        [start("8", 0.0, "info", 250), start("8", 0.2, "rfc4733"), end("8", 0.3, "rfc4733")],
        "8",
    ),
    (
        "info-without-duration-lasts-the-window",
        "auto",
        [start("8", 0.0, "info"), start("8", 0.1, "rfc4733"), start("8", 0.5, "rfc4733")],
        "88",
    ),
    (
        "info-twice-is-two-presses",
        "auto",
        [start("0", 0.0, "info", 100), start("0", 0.05, "info", 100)],
        "00",
    ),
    (
        "end-of-dropped-duplicate-does-not-end-the-accepted-press",
        "on",
        [
            start("6", 0.0, "rfc4733"),
            start("6", 0.02, "inband"),
            end("6", 0.05, "inband"),  # the in-band detector lost the tone early
            start("6", 0.2, "inband"),  # detector re-triggers: still the same, ongoing press
            end("6", 0.4, "rfc4733"),
        ],
        "6",
    ),
    (
        "auto-inband-press-accepted-before-rfc4733-still-ends",
        "auto",
        [
            start("2", 0.0, "inband"),
            start("1", 0.5, "rfc4733"),  # from here on in-band is ignored...
            end("2", 0.55, "inband"),  # ...but its pending press must still finish
            end("1", 0.6, "rfc4733"),
            start("2", 2.0, "rfc4733"),
            end("2", 2.1, "rfc4733"),
        ],
        "212",
    ),
    (
        "other-digit-from-other-source-never-merged",
        "on",
        [start("1", 0.0, "rfc4733"), start("2", 0.0, "inband")],
        "12",
    ),
    (
        "on-other-digit-misread-in-band-right-after-a-short-press-is-that-press",
        "on",
        [
            start("5", 0.0, "rfc4733"),
            end("5", 0.05, "rfc4733"),
            start("8", 0.02, "inband"),  # dated at its onset, during the press
            end("8", 0.06, "inband"),
        ],
        "5",
    ),
]


@pytest.mark.parametrize(
    ("mode", "events", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_merging(mode: str, events: list[DtmfEvent], expected: str) -> None:
    merger = DtmfMerger(inband_mode=mode)  # type: ignore[arg-type]
    assert run(merger, events) == expected


def test_feed_returns_digit_on_start_and_none_on_end() -> None:
    merger = DtmfMerger()
    assert merger.feed(start("#", 0.0, "rfc4733")) == "#"
    assert merger.feed(end("#", 0.1, "rfc4733")) is None


def test_counters_per_source() -> None:
    merger = DtmfMerger(inband_mode="auto")
    run(
        merger,
        [
            start("1", 0.0, "inband"),  # accepted: no event seen yet
            start("1", 0.02, "rfc4733"),  # duplicate of the in-band press
            start("1", 0.03, "info", 100),  # duplicate as well
            end("1", 0.1, "rfc4733"),
            end("1", 0.1, "inband"),
            start("2", 1.0, "inband"),  # ignored: auto mode after an event was seen
            start("3", 2.0, "rfc4733"),
        ],
    )
    assert merger.accepted == {"inband": 1, "rfc4733": 1}
    assert merger.duplicates == {"rfc4733": 1, "info": 1}
    assert merger.ignored == {"inband": 1}
    assert merger.rfc4733_seen


@pytest.mark.parametrize("window_s", [0.05, 0.12, 0.3])
def test_window_boundary(window_s: float) -> None:
    merger = DtmfMerger(inband_mode="on", window_s=window_s)
    merger.feed(start("4", 0.0, "rfc4733"))
    merger.feed(end("4", 0.01, "rfc4733"))
    assert merger.feed(start("4", window_s, "inband")) is None
    merger2 = DtmfMerger(inband_mode="on", window_s=window_s)
    merger2.feed(start("4", 0.0, "rfc4733"))
    merger2.feed(end("4", 0.01, "rfc4733"))
    assert merger2.feed(start("4", window_s + 0.001, "inband")) == "4"


def test_backdated_start_from_other_source_is_within_window() -> None:
    """A detector may date its start at the tone onset, before the event that was fed first."""
    merger = DtmfMerger(inband_mode="on")
    merger.feed(start("4", 1.0, "rfc4733"))
    merger.feed(end("4", 1.05, "rfc4733"))
    assert merger.feed(start("4", 0.95, "inband")) is None


@pytest.mark.parametrize("mode", ["yes", "", "AUTO"])
def test_bad_mode_is_refused(mode: str) -> None:
    with pytest.raises(ValueError):
        DtmfMerger(inband_mode=mode)  # type: ignore[arg-type]


def test_negative_window_is_refused() -> None:
    with pytest.raises(ValueError):
        DtmfMerger(window_s=-0.1)


@given(
    st.lists(
        st.tuples(st.sampled_from("0123456789*#"), st.floats(0.15, 2.0), st.floats(0.04, 0.5)),
        max_size=25,
    ),
    st.sampled_from(["rfc4733", "inband", "info"]),
)
def test_single_source_presses_always_count(
    presses: list[tuple[str, float, float]], source: str
) -> None:
    merger = DtmfMerger(inband_mode="on")
    events: list[DtmfEvent] = []
    t = 0.0
    for digit, gap, length in presses:
        t += gap
        events.append(start(digit, t, source, length * 1000 if source == "info" else None))
        if source != "info":
            events.append(end(digit, t + length, source))
        t += length
    assert run(merger, events) == "".join(p[0] for p in presses)


@given(
    st.lists(
        st.tuples(st.sampled_from("0123456789*#"), st.floats(0.15, 2.0), st.floats(0.04, 0.5)),
        max_size=25,
    ),
    st.floats(-0.03, 0.1),
)
def test_every_press_reported_by_all_sources_is_one_digit(
    presses: list[tuple[str, float, float]], inband_lag: float
) -> None:
    """Presses separated by real pauses, each reported by all three sources: one digit each."""
    merger = DtmfMerger(inband_mode="on")
    events: list[tuple[float, int, DtmfEvent]] = []
    t = 0.0
    for digit, gap, length in presses:
        t += gap
        events.append((t, 0, start(digit, t, "rfc4733")))
        events.append((t + length, 1, end(digit, t + length, "rfc4733")))
        lagged = t + inband_lag
        events.append((lagged, 0, start(digit, lagged, "inband")))
        events.append((lagged + length, 1, end(digit, lagged + length, "inband")))
        events.append((t + 0.01, 0, start(digit, t + 0.01, "info", length * 1000)))
        t += length
    ordered = [e for _, _, e in sorted(events, key=lambda x: (x[0], x[1]))]
    assert run(merger, ordered) == "".join(p[0] for p in presses)


def test_keyed_card_never_appears_in_reprs() -> None:
    pan = "4111111111111111"
    merger = DtmfMerger()
    delivered = ""
    printed = ""
    for n, key in enumerate(pan):
        for event in (start(key, n * 0.5, "rfc4733"), end(key, n * 0.5 + 0.1, "rfc4733")):
            digit = merger.feed(event)
            delivered += digit or ""
            printed += repr(event) + repr(merger)
    printed += repr(merger.accepted) + repr(merger.duplicates) + repr(merger.ignored)
    assert delivered == pan
    assert pan not in printed and pan[-4:] not in printed
    assert "digit=" not in printed


# ---- card data: nothing of an ended press's digit is kept ---------------------------------------


def keyed(merger: DtmfMerger, keys: str) -> str:
    """Each key as RFC 4733 (start, end), its in-band echo and an INFO, 0.4 s apart."""
    events: list[DtmfEvent] = []
    for n, key in enumerate(keys):
        t = n * 0.4
        events += [
            start(key, t, "rfc4733"),
            start(key, t + 0.03, "inband"),
            start(key, t + 0.05, "info", 100),
            end(key, t + 0.1, "rfc4733"),
            end(key, t + 0.12, "inband"),
        ]
    return run(merger, events)


def test_after_the_presses_nothing_reachable_holds_the_keys() -> None:
    """Two callers key different cards with the same timing: afterwards everything reachable
    from their mergers is the same (the old one kept the latest press of every digit)."""
    cards = ["4111111111111111#1230#737", "5555555555554444#0731#123"]
    states = []
    for keys in cards:
        merger = DtmfMerger(inband_mode="on")
        assert keyed(merger, keys) == keys
        states.append(reachable(merger))
    assert states[0] == states[1]
    assert "'4111111111111111'" not in states[0]


def test_ended_presses_are_forgotten_and_bounded() -> None:
    merger = DtmfMerger(inband_mode="on")
    keyed(merger, "0123456789" * 20)
    assert len(merger._ended) <= 4  # the last second or so of presses, not the 200 keyed
    assert merger._open == {}
    merger.feed(start("1", 100.0, "rfc4733"))
    assert len(merger._ended) == 0 and [p.digit for p in merger._open.values()] == ["1"]


def test_counts_say_where_each_digit_came_from_and_never_which_key() -> None:
    """The end-of-call DTMF line: per source, digits delivered, duplicates, ignored."""
    merger = DtmfMerger(inband_mode="auto")
    events = [
        start("7", 0.0, "inband"),  # before any RFC 4733 event: accepted
        end("7", 0.08, "inband"),
        start("3", 0.5, "rfc4733"),
        start("3", 0.51, "info", 100),  # the same press again over SIP INFO
        end("3", 0.6, "rfc4733"),
        start("9", 1.0, "inband"),  # after an RFC 4733 event: ignored in auto
    ]
    assert run(merger, events) == "73"
    counts = merger.counts()
    assert counts == {
        "accepted_inband": 1,
        "accepted_rfc4733": 1,
        "duplicates_info": 1,
        "ignored_inband": 1,
    }
