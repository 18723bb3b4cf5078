"""Prompt wording: numbers and amounts in words, references spelled, every prompt in en and es,
and the PCI rule that card digits only ever become digit clips."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from spg_media.payment.model import SecretDigits
from spg_media.tts import phrases
from spg_media.tts.phrases import (
    GROUP_PAUSE_MS,
    MAX_NUMBER,
    PROMPT_NAMES,
    SPEECH_LANGUAGES,
    SPEECH_PROMPT_NAMES,
    SUPPORTED_LANGUAGES,
    SYMBOLS,
    Pause,
    Phrase,
    Segment,
    Symbol,
    amount_segments,
    amount_words,
    build,
    clean_merchant,
    en_number,
    es_number,
    fixed_phrases,
    spell,
    symbol_text,
)


@dataclass(frozen=True)
class Part:
    """Stands in for journey.PromptPart (same shape)."""

    name: str
    params: tuple[tuple[str, object], ...] = ()


def part(name: str, **params: object) -> Part:
    return Part(name, tuple(params.items()))


def texts(segments: list[Segment]) -> list[str]:
    return [s.text for s in segments if isinstance(s, Phrase)]


def chars(segments: list[Segment]) -> str:
    return "".join(
        s.char if isinstance(s, Symbol) else " " for s in segments if not isinstance(s, Phrase)
    )


SAMPLE_PARAMS: dict[str, dict[str, object]] = {
    "announce_sale": {"amount_minor": 4990, "currency": "EUR", "merchant": "Hotel Sol"},
    "announce_tokenize": {"merchant": "Hotel Sol"},
    "enter_cvc": {"digits": 3},
    "confirm": {"last4": "4242", "expiry": SecretDigits("0731")},
    "approved": {"reference": "R123"},
    "tokenized": {"reference": "T9"},
    "declined": {"reference": "D7"},
}


# ---- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (1, "one"),
        (7, "seven"),
        (10, "ten"),
        (11, "eleven"),
        (15, "fifteen"),
        (19, "nineteen"),
        (20, "twenty"),
        (21, "twenty one"),
        (49, "forty nine"),
        (99, "ninety nine"),
        (100, "one hundred"),
        (101, "one hundred one"),
        (110, "one hundred ten"),
        (999, "nine hundred ninety nine"),
        (1000, "one thousand"),
        (1001, "one thousand one"),
        (4990, "four thousand nine hundred ninety"),
        (12345, "twelve thousand three hundred forty five"),
        (100000, "one hundred thousand"),
        (1000000, "one million"),
        (1000001, "one million one"),
        (2500000, "two million five hundred thousand"),
        (
            999999999,
            "nine hundred ninety nine million nine hundred ninety nine thousand "
            "nine hundred ninety nine",
        ),
        (1000000000, "one billion"),
        (MAX_NUMBER, en_number(999) + " billion " + en_number(999999999)),
    ],
)
def test_english_numbers(n: int, words: str) -> None:
    assert en_number(n) == words


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "cero"),
        (1, "uno"),
        (15, "quince"),
        (16, "dieciséis"),
        (20, "veinte"),
        (21, "veintiuno"),
        (22, "veintidós"),
        (23, "veintitrés"),
        (26, "veintiséis"),
        (30, "treinta"),
        (31, "treinta y uno"),
        (49, "cuarenta y nueve"),
        (90, "noventa"),
        (100, "cien"),
        (101, "ciento uno"),
        (115, "ciento quince"),
        (200, "doscientos"),
        (500, "quinientos"),
        (700, "setecientos"),
        (999, "novecientos noventa y nueve"),
        (1000, "mil"),
        (1001, "mil uno"),
        (2000, "dos mil"),
        (21000, "veintiún mil"),
        (100000, "cien mil"),
        (101000, "ciento un mil"),
        (1000000, "un millón"),
        (1000001, "un millón uno"),
        (2000000, "dos millones"),
        (21000000, "veintiún millones"),
        (
            999999999,
            "novecientos noventa y nueve millones novecientos noventa y nueve mil "
            "novecientos noventa y nueve",
        ),
        (1000000000, "mil millones"),
        (1500000000, "mil quinientos millones"),
    ],
)
def test_spanish_numbers(n: int, words: str) -> None:
    assert es_number(n) == words


@pytest.mark.parametrize(
    ("n", "feminine", "apocope", "words"),
    [
        (1, False, True, "un"),
        (1, True, True, "una"),
        (21, False, True, "veintiún"),
        (21, True, True, "veintiuna"),
        (31, True, False, "treinta y una"),
        (200, True, True, "doscientas"),
        (1500, True, True, "mil quinientas"),
        (201000, True, True, "doscientas una mil"),
        (2000000, True, True, "dos millones"),  # 'millones' is masculine whatever follows
        (200000000, True, True, "doscientos millones"),
    ],
)
def test_spanish_agreement(n: int, feminine: bool, apocope: bool, words: str) -> None:
    assert es_number(n, feminine=feminine, apocope=apocope) == words


@pytest.mark.parametrize("bad", [-1, MAX_NUMBER + 1])
def test_numbers_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError):
        en_number(bad)
    with pytest.raises(ValueError):
        es_number(bad)


def test_numbers_reject_non_integers() -> None:
    with pytest.raises(TypeError):
        en_number(True)
    with pytest.raises(TypeError):
        es_number(1.5)  # type: ignore[arg-type]


# ---- amounts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "currency", "en", "es"),
    [
        (
            4990,
            "EUR",
            "forty nine euros and ninety cents",
            "cuarenta y nueve euros con noventa céntimos",
        ),
        (0, "EUR", "zero euros", "cero euros"),
        (1, "EUR", "one cent", "un céntimo"),
        (5, "EUR", "five cents", "cinco céntimos"),
        (100, "EUR", "one euro", "un euro"),
        (101, "EUR", "one euro and one cent", "un euro con un céntimo"),
        (2100, "EUR", "twenty one euros", "veintiún euros"),
        (10000, "EUR", "one hundred euros", "cien euros"),
        (100000000, "EUR", "one million euros", "un millón de euros"),
        (
            250000000,
            "EUR",
            "two million five hundred thousand euros",
            "dos millones quinientos mil euros",
        ),
        (100000000000, "EUR", "one billion euros", "mil millones de euros"),
        (
            1999,
            "USD",
            "nineteen dollars and ninety nine cents",
            "diecinueve dólares con noventa y nueve centavos",
        ),
        (100, "USD", "one dollar", "un dólar"),
        (3101, "USD", "thirty one dollars and one cent", "treinta y un dólares con un centavo"),
        (100, "GBP", "one pound", "una libra"),
        (1, "GBP", "one penny", "un penique"),
        (250, "GBP", "two pounds and fifty pence", "dos libras con cincuenta peniques"),
        (2100, "GBP", "twenty one pounds", "veintiuna libras"),
        (20000, "GBP", "two hundred pounds", "doscientas libras"),
        (2100000, "GBP", "twenty one thousand pounds", "veintiuna mil libras"),
        (
            99999999999,
            "GBP",
            en_number(999999999) + " pounds and ninety nine pence",
            es_number(999999999, feminine=True, apocope=True)
            + " libras con noventa y nueve peniques",
        ),
        (
            4990,
            "eur",
            "forty nine euros and ninety cents",
            "cuarenta y nueve euros con noventa céntimos",
        ),
    ],
)
def test_amount_words(minor: int, currency: str, en: str, es: str) -> None:
    assert amount_words(minor, currency, "en") == en
    assert amount_words(minor, currency, "es") == es
    assert amount_segments(minor, currency, "en") == [Phrase(en)]


@pytest.mark.parametrize(
    ("minor", "currency", "lang", "text", "code"),
    [
        (1250, "CHF", "en", "twelve point five zero", "CHF"),
        (1205, "CHF", "es", "doce coma cero cinco", "CHF"),
        (0, "SEK", "en", "zero point zero zero", "SEK"),
        (1250, "JPY", "en", "one thousand two hundred fifty", "JPY"),
        (1250, "JPY", "es", "mil doscientos cincuenta", "JPY"),
        (12345, "KWD", "en", "twelve point three four five", "KWD"),
        (500, "cad", "en", "five point zero zero", "CAD"),
    ],
)
def test_other_currencies_read_as_code_letters(
    minor: int, currency: str, lang: str, text: str, code: str
) -> None:
    segments = amount_segments(minor, currency, lang)
    assert segments[0] == Phrase(text)
    assert segments[1:] == [Symbol(c) for c in code]
    with pytest.raises(ValueError, match="amount_segments"):
        amount_words(minor, currency, lang)


def test_announce_sale_is_one_sentence_with_amount_and_merchant() -> None:
    sale = part("announce_sale", amount_minor=4990, currency="EUR", merchant="Hotel Sol")
    assert build(sale, "en") == [
        Phrase("You are paying forty nine euros and ninety cents to Hotel Sol.")
    ]
    assert build(sale, "es") == [
        Phrase("Va a pagar cuarenta y nueve euros con noventa céntimos a Hotel Sol.")
    ]


def test_announce_sale_without_merchant_and_with_zero_amount() -> None:
    sale = part("announce_sale", amount_minor=0, currency="USD", merchant="")
    assert build(sale, "en") == [Phrase("You are paying zero dollars.")]
    assert build(part("announce_sale", amount_minor=100, currency="GBP"), "es") == [
        Phrase("Va a pagar una libra.")
    ]


def test_announce_sale_other_currency_spells_code_between_phrases() -> None:
    sale = part("announce_sale", amount_minor=1250, currency="CHF", merchant="Uhren AG")
    assert build(sale, "en") == [
        Phrase("You are paying twelve point five zero"),
        Symbol("C"),
        Symbol("H"),
        Symbol("F"),
        Phrase("to Uhren AG."),
    ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"currency": "EUR"}, "amount_minor"),
        ({"amount_minor": "49.90", "currency": "EUR"}, "amount_minor"),
        ({"amount_minor": True, "currency": "EUR"}, "amount_minor"),
        ({"amount_minor": -1, "currency": "EUR"}, "amount_minor"),
        ({"amount_minor": MAX_NUMBER + 1, "currency": "EUR"}, "amount_minor"),
        ({"amount_minor": 100}, "currency"),
        ({"amount_minor": 100, "currency": 978}, "currency"),
    ],
)
def test_announce_sale_bad_params(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(part("announce_sale", **params), "en")


def test_merchant_is_cleaned() -> None:
    assert clean_merchant("  Hotel\n\tSol <b>{x}</b>  ") == "Hotel Sol b x /b"
    assert clean_merchant(None) == ""
    assert len(clean_merchant("x" * 500)) == phrases.MAX_MERCHANT_CHARS
    tokenize = build(part("announce_tokenize", merchant="\x00\x07"), "en")
    assert tokenize == [Phrase(phrases._WORDING["en"].tokenize_no_merchant)]


# ---- references, digits, letters ----------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "spelled"),
    [
        ("R123", "R123"),
        ("r123", "R123"),
        ("AB-12", "AB 12"),
        ("AB--/ 12", "AB 12"),
        ("-X-", "X"),
        ("Ñ1é", "N1E"),
        ("", ""),
        ("---", ""),
        ("9" * 60, "9" * phrases.MAX_REFERENCE_SYMBOLS),
    ],
)
def test_spell(reference: str, spelled: str) -> None:
    segments = spell(reference)
    assert chars(segments) == spelled
    assert all(s.ms == GROUP_PAUSE_MS for s in segments if isinstance(s, Pause))


@pytest.mark.parametrize(
    ("name", "first_en", "first_es"),
    [
        ("approved", "Payment approved.", "Pago aprobado."),
        ("tokenized", "Your card has been saved.", "Su tarjeta se ha guardado correctamente."),
        (
            "declined",
            "Sorry, your card was declined. No payment has been taken.",
            "Lo sentimos, su tarjeta ha sido rechazada. No se ha realizado ningún cargo.",
        ),
    ],
)
def test_result_reads_reference_one_by_one(name: str, first_en: str, first_es: str) -> None:
    segments = build(part(name, reference="R123"), "en")
    assert segments == [
        Phrase(first_en),
        Phrase("Your reference is"),
        Symbol("R"),
        Symbol("1"),
        Symbol("2"),
        Symbol("3"),
    ]
    assert texts(build(part(name, reference="R123"), "es")) == [first_es, "Su referencia es"]
    assert build(part(name, reference=""), "en") == [Phrase(first_en)]
    assert build(part(name), "es") == [Phrase(first_es)]


@pytest.mark.parametrize(
    ("char", "en", "es"),
    [
        ("0", "zero", "cero"),
        ("1", "one", "uno"),
        ("2", "two", "dos"),
        ("3", "three", "tres"),
        ("4", "four", "cuatro"),
        ("5", "five", "cinco"),
        ("6", "six", "seis"),
        ("7", "seven", "siete"),
        ("8", "eight", "ocho"),
        ("9", "nine", "nueve"),
        ("R", "R", "R"),
        ("r", "R", "R"),
        ("Y", "Y", "i griega"),
        ("W", "W", "uve doble"),
    ],
)
def test_symbol_text(char: str, en: str, es: str) -> None:
    assert symbol_text(char, "en") == en
    assert symbol_text(char, "es") == es


@pytest.mark.parametrize("bad", ["", "12", "#", "*", "é", " "])
def test_symbol_rejects_non_symbols(bad: str) -> None:
    with pytest.raises(ValueError):
        symbol_text(bad, "en")
    with pytest.raises(ValueError):
        Symbol(bad)


def test_every_symbol_text_has_no_decimal_digit() -> None:
    for lang in SUPPORTED_LANGUAGES:
        for char in SYMBOLS:
            assert not any(c.isdigit() for c in symbol_text(char, lang))


# ---- every prompt, both languages ------------------------------------------------------------


def test_prompt_names_are_the_shared_list() -> None:
    assert set(PROMPT_NAMES) == {
        "announce_sale", "announce_tokenize", "enter_card", "enter_expiry", "enter_cvc",
        "card_invalid", "card_brand_not_accepted", "expiry_invalid", "expiry_past",
        "expiry_too_far", "cvc_invalid", "no_input", "empty_entry", "confirm", "confirm_invalid",
        "processing", "still_processing",
        "approved", "tokenized", "declined", "payment_error", "press_9_to_repeat",
        "too_many_attempts", "cancelled", "invalid_transaction", "invalid_handoff", "goodbye",
    }  # fmt: skip
    assert len(PROMPT_NAMES) == 27


@pytest.mark.parametrize("lang", SUPPORTED_LANGUAGES)
@pytest.mark.parametrize("name", PROMPT_NAMES)
def test_every_prompt_builds(name: str, lang: str) -> None:
    segments = build(part(name, **SAMPLE_PARAMS.get(name, {})), lang)
    assert segments
    assert isinstance(segments[0], Phrase)
    for text in texts(segments):
        assert text.strip() == text and text
        assert "{" not in text and "}" not in text


@pytest.mark.parametrize("name", PROMPT_NAMES)
def test_each_prompt_has_its_own_wording_per_language(name: str) -> None:
    params = SAMPLE_PARAMS.get(name, {})
    en, es = (texts(build(part(name, **params), lang)) for lang in ("en", "es"))
    assert en != es


def test_failures_each_have_their_own_message() -> None:
    failures = [
        "card_invalid", "card_brand_not_accepted", "expiry_invalid", "expiry_past",
        "expiry_too_far", "cvc_invalid", "no_input", "empty_entry", "declined", "payment_error",
        "too_many_attempts", "cancelled", "invalid_transaction", "invalid_handoff",
        "confirm_invalid",
    ]  # fmt: skip
    for lang in SUPPORTED_LANGUAGES:
        messages = [texts(build(part(name), lang))[0] for name in failures]
        assert len(set(messages)) == len(messages)


@pytest.mark.parametrize(
    ("name", "lang", "text"),
    [
        ("card_invalid", "en", "That card number is not valid."),
        ("expiry_past", "en", "That date has passed. The card has expired."),
        (
            "enter_card",
            "en",
            "Please enter your card number, followed by the hash key. Press star to correct.",
        ),
        ("press_9_to_repeat", "en", "To hear this again, press nine."),
        ("goodbye", "es", "Gracias por su llamada. Adiós."),
        ("card_invalid", "es", "El número de tarjeta no es válido."),
    ],
)
def test_sample_wording(name: str, lang: str, text: str) -> None:
    assert build(part(name), lang) == [Phrase(text)]


def test_security_code_prompt_depends_on_length() -> None:
    three, four, five = (texts(build(part("enter_cvc", digits=n), "en"))[0] for n in (3, 4, 5))
    assert "three digit" in three and "back" in three
    assert "four digit" in four and "front" in four
    assert "five digit" in five
    assert "cuatro dígitos" in texts(build(part("enter_cvc", digits=4), "es"))[0]
    for bad in (0, 10, "3", None):
        with pytest.raises(ValueError, match="digits"):
            build(part("enter_cvc", digits=bad), "en")


def test_unknown_language_is_named() -> None:
    with pytest.raises(ValueError, match="'fr'"):
        build(part("goodbye"), "fr")
    with pytest.raises(ValueError, match="'de'"):
        amount_words(100, "EUR", "de")
    with pytest.raises(ValueError, match="'pt'"):
        fixed_phrases("pt")
    with pytest.raises(ValueError, match="'xx'"):
        symbol_text("1", "xx")


def test_unknown_prompt_is_named() -> None:
    with pytest.raises(ValueError, match="'sing_a_song'"):
        build(part("sing_a_song"), "en")


def test_malformed_params() -> None:
    with pytest.raises(ValueError, match="pairs"):
        build(Part("confirm", (("last4",),)), "en")  # type: ignore[arg-type]


def test_fixed_phrases_cover_every_parameterless_prompt() -> None:
    for lang in SUPPORTED_LANGUAGES:
        fixed = set(fixed_phrases(lang))
        for name in PROMPT_NAMES:
            if name in SAMPLE_PARAMS and name != "confirm":
                continue
            for text in texts(build(part(name, **SAMPLE_PARAMS.get(name, {})), lang)):
                assert text in fixed
        for digits in (3, 4):
            assert texts(build(part("enter_cvc", digits=digits), lang))[0] in fixed
        assert texts(build(part("approved", reference="R1"), lang))[1] in fixed
        assert not any(c.isdigit() for text in fixed for c in text)


# ---- PCI: card digits only as clips ------------------------------------------------------------


@pytest.mark.parametrize("lang", SUPPORTED_LANGUAGES)
def test_confirm_reads_card_digits_only_as_symbols(lang: str) -> None:
    expiry = SecretDigits("1230")
    segments = build(part("confirm", last4="1111", expiry=expiry), lang)
    assert chars(segments).replace(" ", "") == "11111230"
    assert Pause(GROUP_PAUSE_MS) in segments  # month and year are two groups
    for text in texts(segments):
        assert not any(c.isdigit() for c in text)
    assert "1111" not in repr(segments) and "1230" not in repr(segments)
    assert repr(Symbol("7")) == "Symbol(<masked>)"
    assert "".join(expiry.characters()) == "1230"  # only read, not wiped or changed


def test_confirm_wording_en() -> None:
    segments = build(part("confirm", last4="1111", expiry=SecretDigits("1230")), "en")
    assert texts(segments) == [
        "Card ending",
        "expiry",
        "Press one to confirm, or two to start again.",
    ]


@pytest.mark.parametrize(
    ("last4", "expiry", "bad"),
    [
        ("111", SecretDigits("1230"), "last4"),
        ("11a1", SecretDigits("1230"), "last4"),
        (1111, SecretDigits("1230"), "last4"),
        ("1111", SecretDigits("123"), "expiry"),
        ("1111", SecretDigits("12301"), "expiry"),
        ("1111", None, "expiry"),
    ],
)
def test_confirm_bad_digits_never_echoed(last4: object, expiry: object, bad: str) -> None:
    with pytest.raises(ValueError) as caught:
        build(part("confirm", last4=last4, expiry=expiry), "en")
    message = str(caught.value)
    assert bad in message
    for secret in ("111", "1230", "123", "11a1"):
        assert secret not in message


def test_confirm_missing_expiry() -> None:
    with pytest.raises(ValueError, match="missing parameter 'expiry'"):
        build(part("confirm", last4="1111"), "en")


# ---- voice entry ------------------------------------------------------------------------------

SPEECH_SAMPLE_PARAMS: dict[str, dict[str, object]] = {
    "enter_cvc_speech": {"digits": 3},
    "heard": {"digits": SecretDigits("4111")},
    "heard_instead": {"digits": SecretDigits("4117")},
    "confirm_speech": {"last4": "4242", "expiry": SecretDigits("0731")},
}


def test_speech_prompts_only_where_speech_is_worded() -> None:
    assert SPEECH_LANGUAGES == ("en",)
    assert not set(SPEECH_PROMPT_NAMES) & set(PROMPT_NAMES)


@pytest.mark.parametrize("name", SPEECH_PROMPT_NAMES)
def test_every_speech_prompt_builds_in_english(name: str) -> None:
    segments = build(part(name, **SPEECH_SAMPLE_PARAMS.get(name, {})), "en")
    assert segments and isinstance(segments[0], Phrase)
    for text in texts(segments):
        assert text.strip() == text and "{" not in text and not any(c.isdigit() for c in text)


@pytest.mark.parametrize("name", SPEECH_PROMPT_NAMES)
def test_keypad_only_language_has_no_speech_prompt(name: str) -> None:
    with pytest.raises(ValueError, match="keypad-only"):
        build(part(name, **SPEECH_SAMPLE_PARAMS.get(name, {})), "es")


def test_keypad_only_language_never_mentions_speech() -> None:
    for text in fixed_phrases("es"):
        assert "diga" not in text.lower() and "decir" not in text.lower(), text


def test_key_or_say_wording() -> None:
    ask = texts(build(part("enter_card_speech"), "en"))[0]
    assert "key in or say" in ask and "four digits at a time" in ask and "hash" in ask
    assert "start again" in ask
    for digits, where in ((3, "back"), (4, "front")):
        text = texts(build(part("enter_cvc_speech", digits=digits), "en"))[0]
        assert "key in or say" in text and where in text
    assert "five digit" in texts(build(part("enter_cvc_speech", digits=5), "en"))[0]
    confirm = build(part("confirm_speech", **SPEECH_SAMPLE_PARAMS["confirm_speech"]), "en")
    assert "say yes or press one" in texts(confirm)[-1].lower()


def test_read_back_in_groups_as_digit_clips_only() -> None:
    heard = SecretDigits("4111111111111111")
    segments = build(part("heard", digits=heard), "en")
    assert texts(segments) == [
        "I heard",
        "Is that right? Say yes or press one, or no or press two.",
    ]
    assert chars(segments).split() == ["4111", "1111", "1111", "1111"]
    assert segments.count(Pause(GROUP_PAUSE_MS)) == 3
    assert "4111" not in repr(segments)
    assert len(heard) == 16  # only read
    expiry = build(part("heard", digits=SecretDigits("1230"), group=2), "en")
    assert chars(expiry).split() == ["12", "30"]
    assert chars(build(part("heard", digits="123"), "en")).split() == ["123"]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"digits": ""},
        {"digits": "12a"},
        {"digits": SecretDigits("1" * 20)},
        {"digits": "1234", "group": 0},
        {"digits": "1234", "group": "4"},
    ],
)
def test_read_back_refuses_bad_params_without_showing_them(params: dict[str, object]) -> None:
    with pytest.raises(ValueError) as error:
        build(part("heard", **params), "en")
    assert "1234" not in str(error.value) and "12a" not in str(error.value)


def test_fixed_phrases_cover_the_speech_prompts() -> None:
    fixed = set(fixed_phrases("en"))
    for name in SPEECH_PROMPT_NAMES:
        for text in texts(build(part(name, **SPEECH_SAMPLE_PARAMS.get(name, {})), "en")):
            assert text in fixed, text
    assert texts(build(part("enter_cvc_speech", digits=4), "en"))[0] in fixed
