"""Body and handoff signatures: known vectors, tampering, age, malformed headers."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from spg_media.payment.signing import (
    handoff_canonical,
    parse_signature,
    sign,
    sign_handoff,
    verify,
    verify_handoff,
)

SECRET = "s3cret"
NOW = 1_700_000_000


def test_sign_matches_an_independent_hmac() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"s3cret", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert sign(SECRET, body, NOW) == f"t=1700000000,v1={expected}"


def test_sign_of_the_empty_body_signs_t_and_dot() -> None:
    expected = hmac.new(b"s3cret", b"1700000000.", hashlib.sha256).hexdigest()
    assert sign(SECRET, b"", NOW).endswith(expected)


def test_verify_accepts_its_own_signature() -> None:
    header = sign(SECRET, b"body", NOW)
    assert verify(SECRET, header, b"body", NOW)
    assert verify(SECRET, header, b"body", NOW + 300)  # the boundary is inclusive


@pytest.mark.parametrize(
    ("secret", "body"),
    [("other", b"body"), (SECRET, b"bodY"), (SECRET, b"body "), (SECRET, b"")],
)
def test_verify_rejects_a_wrong_secret_or_body(secret: str, body: bytes) -> None:
    assert not verify(secret, sign(SECRET, b"body", NOW), body, NOW)


def test_verify_rejects_old_and_future_signatures() -> None:
    header = sign(SECRET, b"x", NOW)
    assert not verify(SECRET, header, b"x", NOW + 301)
    assert not verify(SECRET, header, b"x", NOW - 301)
    assert verify(SECRET, header, b"x", NOW + 59, max_age_s=60)
    assert not verify(SECRET, header, b"x", NOW + 61, max_age_s=60)


def test_verify_rejects_a_changed_timestamp() -> None:
    digest = sign(SECRET, b"x", NOW).split("v1=")[1]
    assert not verify(SECRET, f"t={NOW + 1},v1={digest}", b"x", NOW)


def test_an_empty_secret_verifies_nothing() -> None:
    assert not verify("", sign("", b"x", NOW), b"x", NOW)


def test_verify_accepts_spaces_uppercase_hex_and_a_second_v1() -> None:
    digest = sign(SECRET, b"x", NOW).split("v1=")[1]
    assert verify(SECRET, f"t={NOW}, v1={digest.upper()}", b"x", NOW)
    # During a secret rotation a sender may put one v1 per secret; any match will do.
    assert verify(SECRET, f"t={NOW},v1={'0' * 64},v1={digest}", b"x", NOW)
    assert verify(SECRET, f"v1={digest},t={NOW},v2=whatever", b"x", NOW)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"t={NOW}",
        "v1=" + "0" * 64,
        f"t={NOW},v1=",
        f"t={NOW},v1={'0' * 63}",
        f"t={NOW},v1={'g' * 64}",
        f"t=-{NOW},v1={'0' * 64}",
        f"t={NOW}.5,v1={'0' * 64}",
        f"t={NOW},t={NOW},v1={'0' * 64}",
        f"t={NOW};v1={'0' * 64}",
        f"t={NOW},v1={'0' * 64}," + "x" * 2000,
        f"t=1{'0' * 40},v1={'0' * 64}",
    ],
)
def test_malformed_headers_are_rejected_not_raised(header: str) -> None:
    assert not verify(SECRET, header, b"x", NOW)
    assert not verify_handoff(SECRET, header, "c", "t", "", "", NOW)


def test_parse_signature() -> None:
    assert parse_signature(f"t=5,v1={'a' * 64}") == (5, ["a" * 64])
    assert parse_signature("t=5") is None


def test_handoff_canonical_string() -> None:
    assert handoff_canonical(NOW, "abc@host", "sbx-4990-EUR-1", None, "https://m/cb") == (
        b"1700000000\nabc@host\nsbx-4990-EUR-1\n\nhttps://m/cb"
    )
    assert handoff_canonical(NOW, "c", None, None, None) == b"1700000000\nc\n\n\n"


def test_handoff_signature_matches_an_independent_hmac() -> None:
    message = b"1700000000\ncall-1\nsbx-100-EUR\nsip:agent@pbx\n"
    expected = hmac.new(b"s3cret", message, hashlib.sha256).hexdigest()
    header = f"t={NOW},v1={expected}"
    assert verify_handoff(SECRET, header, "call-1", "sbx-100-EUR", "sip:agent@pbx", None, NOW, 300)
    assert sign_handoff(SECRET, NOW, "call-1", "sbx-100-EUR", "sip:agent@pbx", "") == header


@pytest.mark.parametrize(
    "changed",
    [
        {"call_id": "call-2"},
        {"transaction": "sbx-101-EUR"},
        {"return_to": "sip:evil@pbx"},
        {"callback": "https://evil/"},
    ],
)
def test_handoff_signature_covers_every_field(changed: dict[str, str]) -> None:
    fields = {
        "call_id": "call-1",
        "transaction": "sbx-100-EUR",
        "return_to": "sip:agent@pbx",
        "callback": "",
    }
    header = sign_handoff(SECRET, NOW, **fields)
    assert verify_handoff(SECRET, header, now=NOW, max_age_s=300, **fields)
    assert not verify_handoff(SECRET, header, now=NOW, max_age_s=300, **(fields | changed))


def test_handoff_signature_age_and_secret() -> None:
    header = sign_handoff(SECRET, NOW, "c", "t", None, None)
    assert verify_handoff(SECRET, header, "c", "t", None, None, NOW + 300, 300)
    assert not verify_handoff(SECRET, header, "c", "t", None, None, NOW + 301, 300)
    assert not verify_handoff("other", header, "c", "t", None, None, NOW, 300)
    assert not verify_handoff("", header, "c", "t", None, None, NOW, 300)
    # A body signature is not a handoff signature.
    assert not verify_handoff(SECRET, sign(SECRET, b"", NOW), "c", "t", None, None, NOW, 300)
