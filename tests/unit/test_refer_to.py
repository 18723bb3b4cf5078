"""The Refer-To URI that sends the caller back: the result both as URI parameters and as
`?headers`, so that a PBX keeping only the URI part (Asterisk's `SIPREFERTOHDR`, FreeSWITCH's
`X-FS-Refer-Params`) still has the result and the reference."""

from __future__ import annotations

from spg_media.call import refer_to_uri
from spg_media.payment.model import Result
from spg_media.sip.uri import SipUri, unescape


def _without_headers(uri: SipUri) -> SipUri:
    """What a PBX that prints the URI as a Request-URI keeps (pjsip drops `?headers` there)."""
    return SipUri.parse(str(uri).split("?", 1)[0])


def test_result_and_reference_as_parameters_and_headers() -> None:
    uri = refer_to_uri("sip:1001@10.0.0.5:5060", Result.APPROVED, "SBX-7F3A2C")
    assert str(uri) == (
        "sip:1001@10.0.0.5:5060;x-spg-result=approved;x-spg-reference=SBX-7F3A2C"
        "?X-SPG-Result=approved&X-SPG-Reference=SBX-7F3A2C"
    )
    kept = _without_headers(uri)
    assert kept.user == "1001"
    assert kept.params == {"x-spg-result": "approved", "x-spg-reference": "SBX-7F3A2C"}


def test_target_parameters_are_kept() -> None:
    uri = refer_to_uri("sip:agents@pbx.example;transport=tcp", Result.DECLINED, "R1")
    assert _without_headers(uri).params == {
        "transport": "tcp",
        "x-spg-result": "declined",
        "x-spg-reference": "R1",
    }


def test_no_reference_no_parameter() -> None:
    uri = refer_to_uri("sip:agent@127.0.0.1", Result.CANCELLED)
    assert str(uri) == "sip:agent@127.0.0.1;x-spg-result=cancelled?X-SPG-Result=cancelled"


def test_free_text_reference_is_escaped_in_the_parameter_only() -> None:
    reference = 'ref 12;a=b?c"<d>,e%'
    uri = refer_to_uri("sip:agent@127.0.0.1", Result.APPROVED, reference)
    params_part = str(uri).split("?", 1)[0]
    assert params_part == (
        "sip:agent@127.0.0.1;x-spg-result=approved;x-spg-reference=ref%2012%3Ba%3Db%3Fc%22%3Cd%3E%2Ce%25"
    )
    reparsed = SipUri.parse(str(uri))
    assert unescape(reparsed.params["x-spg-reference"] or "") == reference
    assert reparsed.headers["X-SPG-Reference"] == reference
