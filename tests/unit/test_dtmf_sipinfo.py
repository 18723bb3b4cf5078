"""Key presses in SIP INFO bodies (application/dtmf-relay and application/dtmf)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spg_media.dtmf.sipinfo import parse_info_dtmf

RELAY = "application/dtmf-relay"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"Signal=5\r\nDuration=160\r\n", ("5", 160)),
        (b"Signal=5\r\nDuration=160", ("5", 160)),
        (b"Signal=5\nDuration=250\n", ("5", 250)),
        (b"Signal= *\r\nDuration= 100\r\n", ("*", 100)),
        (b"Signal=#\r\nDuration=100\r\n", ("#", 100)),
        (b"Signal=10\r\nDuration=100\r\n", ("*", 100)),
        (b"Signal=11\r\nDuration=100\r\n", ("#", 100)),
        (b"Signal=12\r\n", ("A", None)),
        (b"Signal=15\r\n", ("D", None)),
        (b"Signal=d\r\n", ("D", None)),
        (b"Signal=0\r\n", ("0", None)),
        (b"signal=9\r\nduration=80\r\n", ("9", 80)),
        (b"SIGNAL = 3 \r\nDURATION = 80 \r\n", ("3", 80)),
        (b"Duration=200\r\nSignal=7\r\n", ("7", 200)),
        (b"Signal=7\r\nDuration=abc\r\n", ("7", None)),
        (b"Signal=7\r\nDuration=-5\r\n", ("7", None)),
        (b"Signal=7\r\nDuration=\r\n", ("7", None)),
        (b"Signal=7\r\nDuration=9999999999\r\n", ("7", None)),
        (b"Signal=7\r\nVolume=10\r\nDuration=160\r\n", ("7", 160)),
        (b"junk line\r\nSignal=8\r\n", ("8", None)),
        (b"\xef\xbb\xbfSignal=8\r\n", None),  # BOM glued to the key: no "signal" line
    ],
)
def test_dtmf_relay_bodies(body: bytes, expected: tuple[str, int | None] | None) -> None:
    assert parse_info_dtmf(RELAY, body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"Duration=160\r\n",
        b"Signal=\r\nDuration=160\r\n",
        b"Signal=16\r\n",
        b"Signal=55\r\n",
        b"Signal=123\r\n",
        b"Signal=E\r\n",
        b"Signal=55 5\r\n",
        b"Signal=\xff\r\n",
        b"Signal=\xef\xbc\x95\r\n",  # a full-width 5 is not a keypad key
        b"Signal=-1\r\n",
        b"Signal 5\r\n",
        b"Signal=5" + b" " * 2000,
    ],
)
def test_dtmf_relay_without_a_valid_key_is_none(body: bytes) -> None:
    assert parse_info_dtmf(RELAY, body) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"5", ("5", None)),
        (b"5\r\n", ("5", None)),
        (b" # ", ("#", None)),
        (b"*", ("*", None)),
        (b"a", ("A", None)),
        (b"10", ("*", None)),
        (b"11", ("#", None)),
        (b"", None),
        (b"55", None),
        (b"x", None),
        (b"Signal=5", None),
        (b"\xff", None),
    ],
)
def test_application_dtmf_bodies(body: bytes, expected: tuple[str, int | None] | None) -> None:
    assert parse_info_dtmf("application/dtmf", body) == expected


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dtmf-relay",
        "Application/DTMF-Relay",
        "application/dtmf-relay; charset=utf-8",
        " application/dtmf-relay ",
    ],
)
def test_content_type_is_case_insensitive_and_may_have_parameters(content_type: str) -> None:
    assert parse_info_dtmf(content_type, b"Signal=1\r\nDuration=100") == ("1", 100)


@pytest.mark.parametrize(
    "content_type",
    [
        "",
        "text/plain",
        "application/sdp",
        "application/dtmf-relayx",
        "application/media_control+xml",
    ],
)
def test_other_content_types_are_none(content_type: str) -> None:
    assert parse_info_dtmf(content_type, b"Signal=1\r\nDuration=100") is None
    assert parse_info_dtmf(content_type, b"1") is None


@given(st.sampled_from([RELAY, "application/dtmf", "text/plain", ""]), st.binary(max_size=300))
def test_never_raises(content_type: str, body: bytes) -> None:
    result = parse_info_dtmf(content_type, body)
    if result is not None:
        key, duration = result
        assert key in "0123456789*#ABCD" and len(key) == 1
        assert duration is None or duration >= 0


@given(st.text(max_size=200))
def test_never_raises_on_text_bodies(text: str) -> None:
    parse_info_dtmf(RELAY, text.encode("utf-8", "surrogatepass"))
