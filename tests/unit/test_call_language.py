"""The prompt language of a call: X-SPG-Language, else the transaction's, else the config's."""

from __future__ import annotations

import pytest

from spg_media.call import prompt_language


@pytest.mark.parametrize(
    ("header", "transaction", "config", "chosen"),
    [
        ("es", "en", "en", "es"),  # the header wins
        ("", "es", "en", "es"),  # then the transaction's
        ("", "", "es", "es"),  # then the configuration's
        ("fr", "es", "en", "es"),  # a language we have no prompts for is passed over
        ("es-ES", "en", "en", "es"),  # a region or script is not a different language
        ("ES", "en", "en", "es"),
        ("es_MX", "", "en", "es"),
        (" en-GB ", "es", "es", "en"),
        ("fr", "de-DE", "en", "en"),
        ("", "", "en", "en"),
    ],
)
def test_prompt_language(header: str, transaction: str, config: str, chosen: str) -> None:
    assert prompt_language(header, transaction, config) == chosen
