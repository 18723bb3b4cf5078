"""Random identifiers never read as a card number, so the card-number guard leaves them whole."""

from __future__ import annotations

import itertools
import secrets

import pytest

from spg_media import randomid
from spg_media.cdr import mask_card_like
from spg_media.payment.journal import new_idempotency_key
from spg_media.sip.message import new_branch, new_call_id, new_tag


def test_a_draw_with_a_long_digit_run_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4111111111111111 is Luhn-valid: the guard would cut it to ************1111
    draws = iter(["ab4111111111111111cdef0123456789ab", "ab41111111111cdef0123456789abcdef"])
    monkeypatch.setattr(secrets, "token_hex", lambda nbytes: next(draws))  # as randomid draws
    assert randomid.random_hex(16) == "ab41111111111cdef0123456789abcdef"


def test_idempotency_keys_and_sip_ids_pass_the_guard_unchanged() -> None:
    # Plain token_hex(16) gives a maskable key about once in a few hundred draws: 20,000 draws
    # would find some.
    keys = [new_idempotency_key() for _ in range(20_000)]
    assert all(len(key) == 32 and mask_card_like(key, "journal.key") == key for key in keys)
    assert not any(randomid.DIGIT_RUN.search(key) for key in keys)
    for make in itertools.islice(itertools.cycle([new_branch, new_tag]), 2_000):
        value = make()
        assert not randomid.DIGIT_RUN.search(value)
    assert not randomid.DIGIT_RUN.search(new_call_id("127.0.0.1"))
