"""Shared payment types: card data as a secret, transactions, results.

Card data is a type (DESIGN principle 4): digits live in a bytearray that never prints
itself, can be wiped, and becomes a `str` only through `reveal()`, which only the
connector's request building may call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class SecretDigits:
    """Keypad digits that must never be logged: repr/str show only a mask."""

    __slots__ = ("_buf",)

    def __init__(self, digits: str | bytes | bytearray = b"") -> None:
        raw = digits.encode("ascii") if isinstance(digits, str) else bytes(digits)
        if raw and not raw.isdigit():
            raise ValueError("secret digits must be decimal digits")
        self._buf = bytearray(raw)

    def append(self, digit: str) -> None:
        if len(digit) != 1 or not digit.isdigit():
            raise ValueError("only one decimal digit can be appended")
        self._buf.append(ord(digit))

    def __len__(self) -> int:
        return len(self._buf)

    def last(self, n: int) -> str:
        """The last n digits (n <= 4 for a PAN)."""
        return self._buf[-n:].decode("ascii") if n else ""

    def prefix(self, n: int) -> str:
        """The first n digits, for brand detection by IIN (n <= 8)."""
        return self._buf[:n].decode("ascii")

    def occurs_in(self, digits: str) -> bool:
        """Whether these digits appear in `digits` (compared in place, no copy made)."""
        return len(self._buf) > 0 and self._buf in digits.encode("ascii", "ignore")

    def reveal(self) -> str:
        """The digits as a string: only for the payment request and card rules."""
        return self._buf.decode("ascii")

    def copy(self) -> SecretDigits:
        return SecretDigits(self._buf)

    def wipe(self) -> None:
        for i in range(len(self._buf)):
            self._buf[i] = 0
        self._buf.clear()

    def __repr__(self) -> str:
        return f"SecretDigits(<{len(self._buf)} digits>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretDigits) and self._buf == other._buf

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> str:  # refuse pickling: it would copy the digits out
        raise TypeError("SecretDigits cannot be pickled")


@dataclass(repr=False)
class CardData:
    """A card as keyed by the caller. `brand` and `last4` are safe to show."""

    pan: SecretDigits
    exp_month: int
    exp_year: int  # four digits, e.g. 2030
    cvc: SecretDigits
    brand: str

    @property
    def last4(self) -> str:
        return self.pan.last(4)

    def masked(self) -> str:
        """'visa 1111': the only form of a card allowed in headers, logs and CDRs."""
        return f"{self.brand} {self.last4}"

    def wipe(self) -> None:
        self.pan.wipe()
        self.cvc.wipe()
        self.exp_month = 0
        self.exp_year = 0

    def __repr__(self) -> str:
        return f"CardData({self.masked()})"

    __str__ = __repr__


class Result(enum.StrEnum):
    """Final results of a call (CONTRACT §5)."""

    APPROVED = "approved"
    DECLINED = "declined"
    ERROR = "error"
    TOO_MANY_ATTEMPTS = "too-many-attempts"
    CANCELLED = "cancelled"
    INVALID_TRANSACTION = "invalid-transaction"
    INVALID_HANDOFF = "invalid-handoff"
    HUNG_UP = "hung-up"


class ChargeState(enum.StrEnum):
    """Whether the platform took the payment, as far as the node knows (CDR, callback, journal).

    `charged`: the platform approved it (a tokenisation: stored the card); `not-charged`: it
    declined, refused the request, or shows the transaction unpaid or paid by another
    authorisation; `unknown`: it may have charged and could not be asked in time (the journal
    entry stays open for `spg-media reconcile`).
    """

    CHARGED = "charged"
    NOT_CHARGED = "not-charged"
    UNKNOWN = "unknown"


class Operation(enum.StrEnum):
    SALE = "sale"
    SALE_TOKENIZE = "sale+tokenize"
    TOKENIZE = "tokenize"


@dataclass(frozen=True)
class TransactionInfo:
    """A payment at the merchant platform, as its lookup returns it (CONTRACT §7)."""

    token: str
    operation: Operation
    amount_minor: int
    currency: str
    order: str
    merchant: str
    status: str = "pending"  # pending | paid | expired
    language: str | None = None
    return_uri: str | None = None


@dataclass(frozen=True)
class AuthorizationResult:
    """What the platform answered to an authorisation (or `error` when it could not)."""

    result: Result  # APPROVED, DECLINED or ERROR
    reference: str = ""
    authorization_code: str = ""
    card_token: str = ""
    decline_code: str = ""
    detail: str = field(default="", compare=False)  # operator-facing, never card data
    # ERROR only: the request may have reached the platform and whether it charged is not known.
    charge_unknown: bool = False

    @property
    def charge_state(self) -> ChargeState:
        if self.result is Result.APPROVED:
            return ChargeState.CHARGED
        return ChargeState.UNKNOWN if self.charge_unknown else ChargeState.NOT_CHARGED
