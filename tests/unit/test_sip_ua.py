"""The UA shell's pure helpers."""

from __future__ import annotations

import pytest

from spg_media.sip.ua import _message_kind


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"INVITE sip:pay@127.0.0.1 SIP/2.0\r\n", "INVITE"),
        (b"BYE sip:pay@127.0.0.1 SIP/2.0\r\n", "BYE"),
        (b"SIP/2.0 200 OK\r\n", "2xx"),
        (b"SIP/2.0 488 Not Acceptable Here\r\n", "4xx"),
        (b"FROB sip:x SIP/2.0\r\n", "other"),  # label values stay a fixed set
        (b"4111111111111111 sip:x SIP/2.0\r\n", "other"),
        (b"SIP/2.0 x\r\n", "other"),
        (b"", "other"),
    ],
)
def test_message_kind_is_a_small_fixed_set(data: bytes, kind: str) -> None:
    assert _message_kind(data) == kind
