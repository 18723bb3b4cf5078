"""What each prompt says, per language: wording, amounts in words, and digit-by-digit readings.

This module owns the words. `build(part, lang)` turns one prompt part of the caller's journey
(`PromptPart(name, params)`, or anything with `.name` and `.params`) into a list of segments:

- `Phrase`: a fixed sentence or phrase, synthesised once and cached by the hash of its text;
- `Symbol`: one digit or letter, played from its own pre-rendered clip;
- `Pause`: a short silence inside a part (between the month and the year of an expiry, say).

PCI rule: anything that comes from the card (the last four digits, the expiry) only ever
becomes `Symbol`s. No `Phrase` text, and so no synthesiser input, cache key or log line, is ever
built from card digits; the expiry's digits are taken one character at a time
(`SecretDigits.characters()`) only to pick the clips, and `Symbol` does not show its
character in its repr. Error messages name the prompt and the parameter, never a value.

Voice entry (`ivr.input = "dtmf speech"`) has its own prompts (`SPEECH_PROMPT_NAMES`: "key in
or say" asks, the read-back "I heard 4 1 1 1. Is that right? ...", "and the next digits?")
worded only in `SPEECH_LANGUAGES`; a language without them stays keypad-only and its prompts
never mention speech (building one there is an error). The digits read back are `Symbol`s,
as the confirmation's are.

Amounts, references and merchant names are not card data: an announcement with its amount and
merchant is one `Phrase` (its own cache entry, keyed by a hash).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

SUPPORTED_LANGUAGES: tuple[str, ...] = ("en", "es")

# Every prompt name the journey may ask for (shared contract with spg_media/payment/journey.py).
PROMPT_NAMES: tuple[str, ...] = (
    "announce_sale",
    "announce_tokenize",
    "enter_card",
    "enter_expiry",
    "enter_cvc",
    "card_invalid",
    "card_brand_not_accepted",
    "expiry_invalid",
    "expiry_past",
    "expiry_too_far",
    "cvc_invalid",
    "no_input",
    "empty_entry",
    "confirm",
    "confirm_invalid",
    "processing",
    "still_processing",
    "approved",
    "tokenized",
    "declined",
    "payment_error",
    "press_9_to_repeat",
    "too_many_attempts",
    "cancelled",
    "invalid_transaction",
    "invalid_handoff",
    "goodbye",
)

# The prompts of voice entry (`ivr.input = "dtmf speech"`), only in the languages that have
# their wording (`SPEECH_LANGUAGES`): the others stay keypad-only and never offer speech.
SPEECH_PROMPT_NAMES: tuple[str, ...] = (
    "enter_card_speech",
    "enter_expiry_speech",
    "enter_cvc_speech",
    "heard",
    "heard_instead",
    "next_digits",
    "not_understood",
    "say_again",
    "confirm_speech",
)

# The clips that can be played one by one: digits, then letters (references, currency codes).
SYMBOLS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

MAX_NUMBER = 10**12 - 1  # numbers are read in words up to 999,999,999,999
MAX_MERCHANT_CHARS = 80  # bounds the synthesis time of an announcement
MAX_REFERENCE_SYMBOLS = 40  # a reference longer than this is not something a caller can note
GROUP_PAUSE_MS = 200  # between groups of symbols: the month and the year, parts of a reference
MAX_READBACK_DIGITS = 19  # a read-back of spoken digits: at most a whole card number


class PartLike(Protocol):
    """One prompt part as the journey emits it (structurally: `journey.PromptPart`)."""

    @property
    def name(self) -> str: ...

    @property
    def params(self) -> tuple[tuple[str, object], ...]: ...


class SpellsDigits(Protocol):
    """`SecretDigits` as seen here: its digits one character at a time (to pick clips)."""

    def characters(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Phrase:
    """A fixed sentence or phrase: synthesised once, cached by the hash of its text."""

    text: str


@dataclass(frozen=True, slots=True, repr=False)
class Symbol:
    """One digit ("0"-"9") or letter ("A"-"Z") played from its own clip.

    The repr hides the character: a Symbol may carry a digit of the card's expiry.
    """

    char: str

    def __post_init__(self) -> None:
        if len(self.char) != 1 or self.char not in SYMBOLS:
            raise ValueError("a symbol is one digit or one upper-case letter A-Z")

    def __repr__(self) -> str:
        return "Symbol(<masked>)"


@dataclass(frozen=True, slots=True)
class Pause:
    """Silence inside a part, in milliseconds."""

    ms: int


Segment = Phrase | Symbol | Pause


# ---- numbers in words ----------------------------------------------------------------------

# fmt: off
_EN_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)
_EN_TENS = (
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
)
# fmt: on
_EN_SCALES = ((10**9, "billion"), (10**6, "million"), (10**3, "thousand"))


def _check_number(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError("a number to read must be an int")
    if n < 0 or n > MAX_NUMBER:
        raise ValueError(f"numbers are read from 0 to {MAX_NUMBER}")


def _en_below_1000(n: int) -> str:
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [_EN_ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_EN_TENS[tens])
        if ones:
            words.append(_EN_ONES[ones])
    elif rest:
        words.append(_EN_ONES[rest])
    return " ".join(words)


def en_number(n: int) -> str:
    """4990 -> 'four thousand nine hundred ninety' (no hyphens, no 'and': clearer over a phone)."""
    _check_number(n)
    if n == 0:
        return "zero"
    words: list[str] = []
    for value, name in _EN_SCALES:
        count, n = divmod(n, value)
        if count:
            words += [_en_below_1000(count), name]
    if n:
        words.append(_en_below_1000(n))
    return " ".join(words)


# fmt: off
_ES_BELOW_30 = (
    "cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve", "diez",
    "once", "doce", "trece", "catorce", "quince", "dieciséis", "diecisiete", "dieciocho",
    "diecinueve", "veinte", "veintiuno", "veintidós", "veintitrés", "veinticuatro",
    "veinticinco", "veintiséis", "veintisiete", "veintiocho", "veintinueve",
)
_ES_TENS = (
    "", "", "", "treinta", "cuarenta", "cincuenta", "sesenta", "setenta", "ochenta", "noventa",
)
_ES_HUNDREDS = (
    "", "ciento", "doscientos", "trescientos", "cuatrocientos", "quinientos", "seiscientos",
    "setecientos", "ochocientos", "novecientos",
)
# fmt: on


def _es_one(word: str, feminine: bool, apocope: bool) -> str:
    """'uno' agrees with the noun: 'un euro', 'una libra', 'veintiún euros', plain 'uno' alone."""
    if feminine:
        return word[:-1] + "a"  # uno -> una, veintiuno -> veintiuna
    if apocope:
        return "veintiún" if word == "veintiuno" else word[:-1]  # uno -> un
    return word


def _es_below_100(n: int, feminine: bool, apocope: bool) -> str:
    if n < 30:
        word = _ES_BELOW_30[n]
        return _es_one(word, feminine, apocope) if n in (1, 21) else word
    tens, ones = divmod(n, 10)
    if not ones:
        return _ES_TENS[tens]
    unit = _es_one("uno", feminine, apocope) if ones == 1 else _ES_BELOW_30[ones]
    return f"{_ES_TENS[tens]} y {unit}"


def _es_below_1000(n: int, feminine: bool, apocope: bool) -> str:
    if n == 100:
        return "cien"
    hundreds, rest = divmod(n, 100)
    words: list[str] = []
    if hundreds:
        word = _ES_HUNDREDS[hundreds]
        if feminine and hundreds > 1:
            word = word.removesuffix("os") + "as"  # doscientas libras
        words.append(word)
    if rest:
        words.append(_es_below_100(rest, feminine, apocope))
    return " ".join(words)


def _es_below_million(n: int, feminine: bool, apocope: bool) -> str:
    thousands, rest = divmod(n, 1000)
    words: list[str] = []
    if thousands == 1:
        words.append("mil")  # never 'un mil'
    elif thousands:
        # the multiplier of 'mil' agrees with the noun after it: 'veintiún mil euros'
        words += [_es_below_1000(thousands, feminine, apocope=True), "mil"]
    if rest:
        words.append(_es_below_1000(rest, feminine, apocope))
    return " ".join(words)


def es_number(n: int, *, feminine: bool = False, apocope: bool = False) -> str:
    """Spanish number words. `feminine` and `apocope` (before a noun) make 'un'/'una' agree.

    1_500_000_000 -> 'mil quinientos millones' (the long scale: 'mil millones', not 'billón').
    """
    _check_number(n)
    if n == 0:
        return "cero"
    millions, rest = divmod(n, 10**6)
    words: list[str] = []
    if millions:
        # 'millón' is a masculine noun: its multiplier is masculine and shortened
        count = _es_below_million(millions, feminine=False, apocope=True)
        words.append(f"{count} millón" if millions == 1 else f"{count} millones")
    if rest:
        words.append(_es_below_million(rest, feminine, apocope))
    return " ".join(words)


def number_words(n: int, lang: str) -> str:
    """A number read on its own, in words."""
    return en_number(n) if _check_language(lang) == "en" else es_number(n)


# ---- amounts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Currency:
    one: str
    many: str
    minor_one: str
    minor_many: str
    feminine: bool = False  # Spanish gender of the main unit
    minor_feminine: bool = False


_CURRENCIES: Mapping[str, Mapping[str, _Currency]] = {
    "en": {
        "EUR": _Currency("euro", "euros", "cent", "cents"),
        "USD": _Currency("dollar", "dollars", "cent", "cents"),
        "GBP": _Currency("pound", "pounds", "penny", "pence"),
    },
    "es": {
        "EUR": _Currency("euro", "euros", "céntimo", "céntimos"),
        "USD": _Currency("dólar", "dólares", "centavo", "centavos"),
        "GBP": _Currency("libra", "libras", "penique", "peniques", feminine=True),
    },
}

# ISO 4217 minor units of the currencies that do not have two (the rest are read with two).
_MINOR_DIGITS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}  # fmt: skip


def _count_and_unit(n: int, one: str, many: str, lang: str, feminine: bool) -> str:
    if lang == "en":
        return f"{en_number(n)} {one if n == 1 else many}"
    words = es_number(n, feminine=feminine, apocope=True)
    if n >= 10**6 and n % 10**6 == 0:
        return f"{words} de {many}"  # 'dos millones de euros'
    return f"{words} {one if n == 1 else many}"


def _currency_code(currency: str) -> str:
    if not isinstance(currency, str):
        raise TypeError("currency must be a str")
    return "".join(ch for ch in currency.upper() if ch in SYMBOLS)


def amount_words(amount_minor: int, currency: str, lang: str) -> str:
    """The amount in words: 4990 EUR -> 'forty nine euros and ninety cents' (en),
    'cuarenta y nueve euros con noventa céntimos' (es).

    Only for EUR, USD and GBP (see `spoken_currencies`); `amount_segments` covers any currency.
    """
    lang = _check_language(lang)
    code = _currency_code(currency)
    unit = _CURRENCIES[lang].get(code)
    if unit is None:
        raise ValueError(f"no words for currency {code!r} in {lang!r}; use amount_segments")
    _check_number(amount_minor)
    major, minor = divmod(amount_minor, 100)
    major_text = _count_and_unit(major, unit.one, unit.many, lang, unit.feminine)
    minor_text = _count_and_unit(minor, unit.minor_one, unit.minor_many, lang, unit.minor_feminine)
    if minor == 0:
        return major_text  # also 'zero euros' for a zero amount
    if major == 0:
        return minor_text
    joiner = "and" if lang == "en" else "con"
    return f"{major_text} {joiner} {minor_text}"


def spoken_currencies(lang: str) -> tuple[str, ...]:
    """Currencies named in words in `lang`; others are read as their code letters."""
    return tuple(_CURRENCIES[_check_language(lang)])


def amount_segments(amount_minor: int, currency: str, lang: str) -> list[Segment]:
    """The amount as segments: one phrase for a named currency; else the number, then the
    code letter by letter ('twelve point five zero' C H F), since espeak reads a lone 'A' in a
    sentence as the article."""
    lang = _check_language(lang)
    code = _currency_code(currency)
    if code in _CURRENCIES[lang]:
        return [Phrase(amount_words(amount_minor, code, lang))]
    _check_number(amount_minor)
    exponent = _MINOR_DIGITS.get(code, 2)
    major, minor = divmod(amount_minor, 10**exponent)
    text = number_words(major, lang)
    if exponent:
        point = "point" if lang == "en" else "coma"
        fraction = " ".join(number_words(int(d), lang) for d in f"{minor:0{exponent}d}")
        text = f"{text} {point} {fraction}"
    return [Phrase(text), *(Symbol(ch) for ch in code)]


# ---- digits, letters, references ---------------------------------------------------------------

# fmt: off
_DIGIT_WORDS = {
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "es": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
}
# fmt: on
# espeak reads a lone letter by its name; the Spanish "Y" alone would be read as the word "y".
_LETTER_OVERRIDES = {"en": {}, "es": {"Y": "i griega", "W": "uve doble"}}


def symbol_text(char: str, lang: str) -> str:
    """What the synthesiser is given for one digit or letter clip: '7' -> 'seven' / 'siete'.

    Digits go as words, so no synthesiser input ever holds a digit from a card.
    """
    lang = _check_language(lang)
    char = char.upper()
    if len(char) != 1 or char not in SYMBOLS:
        raise ValueError("a symbol is one digit or one letter A-Z")
    if char.isdigit():
        return _DIGIT_WORDS[lang][int(char)]
    return _LETTER_OVERRIDES[lang].get(char, char)


def spell(text: str) -> list[Segment]:
    """A reference read one character at a time: 'R-123' -> R, pause, 1, 2, 3.

    Letters and digits become symbols (accents dropped: 'é' -> E); a run of anything else
    between them becomes one short pause.
    """
    segments: list[Segment] = []
    symbols = 0
    for ch in unicodedata.normalize("NFKD", text).upper():
        if ch in SYMBOLS:
            if symbols == MAX_REFERENCE_SYMBOLS:
                break
            segments.append(Symbol(ch))
            symbols += 1
        elif segments and not isinstance(segments[-1], Pause) and not unicodedata.combining(ch):
            segments.append(Pause(GROUP_PAUSE_MS))
    while segments and isinstance(segments[-1], Pause):
        segments.pop()
    return segments


# ---- wording ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Wording:
    simple: Mapping[str, str]  # prompts without parameters
    paying: str  # 'You are paying' + amount
    to_merchant: str  # '{merchant}' placeholder
    sale_end: str  # the end of the announcement when there is no merchant name
    tokenize_merchant: str  # '{merchant}' placeholder
    tokenize_no_merchant: str
    cvc_back: str  # 3 digits
    cvc_front: str  # 4 digits (American Express)
    cvc_other: str  # '{digits}' placeholder
    card_ending: str
    expiry: str
    confirm_keys: str
    approved: str
    tokenized: str
    reference_is: str


_WORDING: Mapping[str, _Wording] = {
    "en": _Wording(
        simple={
            "enter_card": (
                "Please enter your card number, followed by the hash key. Press star to correct."
            ),
            "enter_expiry": (
                "Please enter the expiry date as four digits: "
                "two for the month, then two for the year."
            ),
            "card_invalid": "That card number is not valid.",
            "card_brand_not_accepted": (
                "Sorry, that type of card is not accepted. Please use a different card."
            ),
            "expiry_invalid": "That is not a valid expiry date.",
            "expiry_past": "That date has passed. The card has expired.",
            "expiry_too_far": "That date is too far in the future.",
            "cvc_invalid": "That security code is not valid.",
            "no_input": "Sorry, we did not receive your entry.",
            "empty_entry": "You pressed the hash key without entering any digits.",
            "confirm_invalid": "That key is not one of the choices.",
            "processing": "Thank you. Please hold while we process your request.",
            "still_processing": "We are still processing your payment. Please stay on the line.",
            "declined": "Sorry, your card was declined. No payment has been taken.",
            "payment_error": (
                "Sorry, we could not complete your payment because of a technical problem. "
                "Please try again later."
            ),
            "press_9_to_repeat": "To hear this again, press nine.",
            "too_many_attempts": (
                "Sorry, there have been too many unsuccessful attempts. "
                "We cannot complete your payment."
            ),
            "cancelled": "Your payment has been cancelled.",
            "invalid_transaction": (
                "Sorry, this payment cannot be taken. "
                "It may have expired, or it may already have been paid."
            ),
            "invalid_handoff": (
                "Sorry, this payment cannot be taken, because the transfer could not be verified."
            ),
            "goodbye": "Thank you for calling. Goodbye.",
        },
        paying="You are paying",
        to_merchant="to {merchant}.",
        sale_end=".",
        tokenize_merchant=(
            "{merchant} would like to save your card securely for future payments. "
            "You will not be charged now."
        ),
        tokenize_no_merchant=(
            "The merchant would like to save your card securely for future payments. "
            "You will not be charged now."
        ),
        cvc_back="Please enter the three digit security code on the back of your card.",
        cvc_front="Please enter the four digit security code on the front of your card.",
        cvc_other="Please enter the {digits} digit security code of your card.",
        card_ending="Card ending",
        expiry="expiry",
        confirm_keys="Press one to confirm, or two to start again.",
        approved="Payment approved.",
        tokenized="Your card has been saved.",
        reference_is="Your reference is",
    ),
    "es": _Wording(
        simple={
            "enter_card": (
                "Introduzca el número de su tarjeta, seguido de la tecla almohadilla. "
                "Pulse asterisco para corregir."
            ),
            "enter_expiry": (
                "Introduzca la fecha de caducidad con cuatro dígitos: "
                "dos para el mes y dos para el año."
            ),
            "card_invalid": "El número de tarjeta no es válido.",
            "card_brand_not_accepted": (
                "Lo sentimos, no aceptamos ese tipo de tarjeta. Por favor, utilice otra tarjeta."
            ),
            "expiry_invalid": "La fecha de caducidad no es válida.",
            "expiry_past": "Esa fecha ya ha pasado. La tarjeta está caducada.",
            "expiry_too_far": "Esa fecha está demasiado lejos en el futuro.",
            "cvc_invalid": "El código de seguridad no es válido.",
            "no_input": "Lo sentimos, no hemos recibido ningún dato.",
            "empty_entry": "Ha pulsado la almohadilla sin introducir ningún dígito.",
            "confirm_invalid": "Esa tecla no es una de las opciones.",
            "processing": "Gracias. Espere un momento mientras procesamos su solicitud.",
            "still_processing": "Seguimos procesando su pago. Por favor, no cuelgue.",
            "declined": (
                "Lo sentimos, su tarjeta ha sido rechazada. No se ha realizado ningún cargo."
            ),
            "payment_error": (
                "Lo sentimos, no hemos podido completar su pago por un problema técnico. "
                "Inténtelo de nuevo más tarde."
            ),
            "press_9_to_repeat": "Para volver a escucharlo, pulse nueve.",
            "too_many_attempts": (
                "Lo sentimos, ha superado el número de intentos permitidos. "
                "No podemos completar su pago."
            ),
            "cancelled": "Su pago ha sido cancelado.",
            "invalid_transaction": (
                "Lo sentimos, no es posible realizar este pago. "
                "Puede que haya caducado o que ya esté pagado."
            ),
            "invalid_handoff": (
                "Lo sentimos, no es posible realizar este pago, "
                "porque no se ha podido verificar la transferencia."
            ),
            "goodbye": "Gracias por su llamada. Adiós.",
        },
        paying="Va a pagar",
        to_merchant="a {merchant}.",
        sale_end=".",
        tokenize_merchant=(
            "{merchant} desea guardar su tarjeta de forma segura para futuros pagos. "
            "Ahora no se le cobrará nada."
        ),
        tokenize_no_merchant=(
            "El comercio desea guardar su tarjeta de forma segura para futuros pagos. "
            "Ahora no se le cobrará nada."
        ),
        cvc_back=(
            "Introduzca el código de seguridad de tres dígitos, "
            "que figura en el reverso de su tarjeta."
        ),
        cvc_front=(
            "Introduzca el código de seguridad de cuatro dígitos, "
            "que figura en el anverso de su tarjeta."
        ),
        cvc_other="Introduzca el código de seguridad de {digits} dígitos de su tarjeta.",
        card_ending="Tarjeta terminada en",
        expiry="fecha de caducidad",
        confirm_keys="Pulse uno para confirmar, o dos para volver a empezar.",
        approved="Pago aprobado.",
        tokenized="Su tarjeta se ha guardado correctamente.",
        reference_is="Su referencia es",
    ),
}


@dataclass(frozen=True, slots=True)
class _SpeechWording:
    """The wording of voice entry: "key or say" asks, the read-back and its answers."""

    simple: Mapping[str, str]  # prompts without parameters
    cvc_back: str  # 3 digits
    cvc_front: str  # 4 digits (American Express)
    cvc_other: str  # '{digits}' placeholder
    heard: str  # before the digits read back
    heard_instead: str  # before a runner-up read back after a "no"
    yes_or_no: str  # after them
    confirm_keys: str  # the confirmation's choices, by key or by voice


_SPEECH_WORDING: Mapping[str, _SpeechWording] = {
    "en": _SpeechWording(
        simple={
            "enter_card_speech": (
                "Please key in or say your card number. "
                "Say it four digits at a time, or key it followed by the hash key. "
                "To start again, press star or say start again."
            ),
            "enter_expiry_speech": (
                "Please key in or say the four digits of the expiry date: "
                "two for the month, then two for the year."
            ),
            "next_digits": "And the next digits?",
            "not_understood": "Sorry, I did not understand that.",
            "say_again": "Sorry. Please say those digits again.",
        },
        cvc_back="Please key in or say the three digit security code on the back of your card.",
        cvc_front="Please key in or say the four digit security code on the front of your card.",
        cvc_other="Please key in or say the {digits} digit security code of your card.",
        heard="I heard",
        heard_instead="Sorry. Was it",
        yes_or_no="Is that right? Say yes or press one, or no or press two.",
        confirm_keys="Say yes or press one to confirm. Say no or press two to start again.",
    ),
}

# Languages whose prompts offer speech (voice entry also needs a recognition model).
SPEECH_LANGUAGES: tuple[str, ...] = tuple(_SPEECH_WORDING)


def _check_language(lang: str) -> str:
    if lang not in SUPPORTED_LANGUAGES:
        raise ValueError(
            f"unsupported prompt language {lang!r} (supported: {', '.join(SUPPORTED_LANGUAGES)})"
        )
    return lang


def fixed_phrases(lang: str) -> list[str]:
    """Every phrase text of `lang` that does not depend on a call: what `prerender` renders."""
    w = _WORDING[_check_language(lang)]
    texts = [
        *w.simple.values(),
        w.tokenize_no_merchant,
        w.cvc_back,
        w.cvc_front,
        w.card_ending,
        w.expiry,
        w.confirm_keys,
        w.approved,
        w.tokenized,
        w.reference_is,
    ]
    spoken = _SPEECH_WORDING.get(lang)
    if spoken is not None:
        texts += [
            *spoken.simple.values(),
            spoken.cvc_back,
            spoken.cvc_front,
            spoken.heard,
            spoken.heard_instead,
            spoken.yes_or_no,
            spoken.confirm_keys,
        ]
    return list(dict.fromkeys(texts))


# ---- building a part -------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f<>{}\\]+")


def clean_merchant(name: object) -> str:
    """A merchant name fit to be spoken: no control or markup characters, bounded length."""
    if not isinstance(name, str):
        return ""
    text = " ".join(_CONTROL.sub(" ", name).split())
    return text[:MAX_MERCHANT_CHARS].rstrip()


class _Params:
    """The part's parameters, with errors that name the parameter and never show a value."""

    def __init__(self, part: PartLike) -> None:
        self._part = part.name
        try:
            self._values: dict[str, object] = dict(part.params)
        except (TypeError, ValueError):
            raise ValueError(f"prompt {self._part!r}: params must be (name, value) pairs") from None

    def get(self, key: str, default: object = None) -> object:
        return self._values.get(key, default)

    def require(self, key: str) -> object:
        if key not in self._values:
            raise ValueError(f"prompt {self._part!r}: missing parameter {key!r}")
        return self._values[key]

    def integer(self, key: str) -> int:
        value = self.require(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"prompt {self._part!r}: parameter {key!r} must be an int")
        return value

    def text(self, key: str, default: str | None = None) -> str:
        value = self.get(key, default) if default is not None else self.require(key)
        if not isinstance(value, str):
            raise ValueError(f"prompt {self._part!r}: parameter {key!r} must be a str")
        return value

    def digits(self, key: str, length: int) -> tuple[str, ...]:
        """Card digits (last4, expiry), one character each: from a str or anything with
        characters() (never joined into one string). Never echoed."""
        value = self.require(key)
        spell = getattr(value, "characters", None)
        digits = spell() if callable(spell) else tuple(value) if isinstance(value, str) else ()
        if len(digits) != length or not all("0" <= d <= "9" for d in digits):
            raise ValueError(f"prompt {self._part!r}: parameter {key!r} must be {length} digits")
        return digits

    def some_digits(self, key: str, most: int) -> tuple[str, ...]:
        """1 to `most` card digits, one character each (as `digits`). Never echoed."""
        value = self.require(key)
        spell = getattr(value, "characters", None)
        digits = spell() if callable(spell) else tuple(value) if isinstance(value, str) else ()
        if not 1 <= len(digits) <= most or not all("0" <= d <= "9" for d in digits):
            raise ValueError(f"prompt {self._part!r}: parameter {key!r} must be 1 to {most} digits")
        return digits


def _announce_sale(w: _Wording, lang: str, params: _Params) -> list[Segment]:
    amount = params.integer("amount_minor")
    if amount < 0 or amount > MAX_NUMBER:
        raise ValueError("prompt 'announce_sale': amount_minor is out of range")
    currency = params.text("currency")
    merchant = clean_merchant(params.get("merchant", ""))
    ending = w.to_merchant.format(merchant=merchant) if merchant else w.sale_end
    amount_parts = amount_segments(amount, currency, lang)
    first = amount_parts[0]
    assert isinstance(first, Phrase)
    if len(amount_parts) == 1:  # a named currency: the whole announcement is one sentence
        joiner = "" if ending == "." else " "
        return [Phrase(f"{w.paying} {first.text}{joiner}{ending}")]
    segments: list[Segment] = [Phrase(f"{w.paying} {first.text}"), *amount_parts[1:]]
    if merchant:
        segments.append(Phrase(ending))
    return segments


def _announce_tokenize(w: _Wording, params: _Params) -> list[Segment]:
    merchant = clean_merchant(params.get("merchant", ""))
    if not merchant:
        return [Phrase(w.tokenize_no_merchant)]
    return [Phrase(w.tokenize_merchant.format(merchant=merchant))]


def _enter_cvc(w: _Wording, lang: str, params: _Params) -> list[Segment]:
    digits = params.integer("digits")
    if not 1 <= digits <= 9:
        raise ValueError("prompt 'enter_cvc': digits must be between 1 and 9")
    if digits == 3:
        return [Phrase(w.cvc_back)]
    if digits == 4:
        return [Phrase(w.cvc_front)]
    return [Phrase(w.cvc_other.format(digits=number_words(digits, lang)))]


def _confirm(w: _Wording, params: _Params, keys: str | None = None) -> list[Segment]:
    # PCI: the digits below only select clips; no Phrase is ever built from them.
    last4 = params.digits("last4", 4)
    expiry = params.digits("expiry", 4)
    return [
        Phrase(w.card_ending),
        *(Symbol(d) for d in last4),
        Phrase(w.expiry),
        Symbol(expiry[0]),
        Symbol(expiry[1]),
        Pause(GROUP_PAUSE_MS),
        Symbol(expiry[2]),
        Symbol(expiry[3]),
        Phrase(keys or w.confirm_keys),
    ]


def _heard(sw: _SpeechWording, params: _Params, lead: str) -> list[Segment]:
    """Spoken digits read back after `lead`: "I heard 4 1 1 1. Is that right? Say yes or
    press one...", or a runner-up after a "no": "Sorry. Was it 4 1 1 7? ..."

    In groups of `group` digits (4 for a card number, 2 for an expiry) with a short pause
    between them. PCI: the digits only select clips, as in the confirmation.
    """
    digits = params.some_digits("digits", MAX_READBACK_DIGITS)
    group = params.get("group", 4)
    if isinstance(group, bool) or not isinstance(group, int) or not 1 <= group <= 19:
        raise ValueError("prompt 'heard': group must be an int from 1 to 19")
    segments: list[Segment] = [Phrase(lead)]
    for index, digit in enumerate(digits):
        if index and index % group == 0:
            segments.append(Pause(GROUP_PAUSE_MS))
        segments.append(Symbol(digit))
    segments.append(Phrase(sw.yes_or_no))
    return segments


def _speech_part(name: str, lang: str, params: _Params) -> list[Segment]:
    sw = _SPEECH_WORDING.get(lang)
    if sw is None:
        # The journey never asks: a language without voice entry stays keypad-only.
        raise ValueError(f"prompt {name!r} has no wording in {lang!r}: keypad-only language")
    if name in sw.simple:
        return [Phrase(sw.simple[name])]
    if name == "enter_cvc_speech":
        digits = params.integer("digits")
        if not 1 <= digits <= 9:
            raise ValueError("prompt 'enter_cvc_speech': digits must be between 1 and 9")
        if digits == 3:
            return [Phrase(sw.cvc_back)]
        if digits == 4:
            return [Phrase(sw.cvc_front)]
        return [Phrase(sw.cvc_other.format(digits=number_words(digits, lang)))]
    if name == "heard":
        return _heard(sw, params, sw.heard)
    if name == "heard_instead":
        return _heard(sw, params, sw.heard_instead)
    assert name == "confirm_speech"
    return _confirm(_WORDING[lang], params, keys=sw.confirm_keys)


def _result_with_reference(first: str, w: _Wording, params: _Params) -> list[Segment]:
    reference = spell(params.text("reference", default=""))
    if not reference:
        return [Phrase(first)]
    return [Phrase(first), Phrase(w.reference_is), *reference]


def build(part: PartLike, lang: str) -> list[Segment]:
    """The segments that say one prompt part in `lang`."""
    w = _WORDING[_check_language(lang)]
    name = part.name
    if name == "declined":  # a decline has a reference too, read like an approval's
        return _result_with_reference(w.simple[name], w, _Params(part))
    if name in w.simple:
        return [Phrase(w.simple[name])]
    params = _Params(part)
    if name in SPEECH_PROMPT_NAMES:
        return _speech_part(name, lang, params)
    if name == "announce_sale":
        return _announce_sale(w, lang, params)
    if name == "announce_tokenize":
        return _announce_tokenize(w, params)
    if name == "enter_cvc":
        return _enter_cvc(w, lang, params)
    if name == "confirm":
        return _confirm(w, params)
    if name == "approved":
        return _result_with_reference(w.approved, w, params)
    if name == "tokenized":
        return _result_with_reference(w.tokenized, w, params)
    raise ValueError(f"unknown prompt {name!r}")
