"""Shared payment types: card data as a secret, transactions, results.

Card data is a type: digits live in a fixed bytearray that never prints itself, is never
copied out as a string, and is wiped after use; the payment request is built from it into one
buffer of its own (`payment.card_request`).
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass, field


class SecretDigits:
    """Keypad digits that must never be logged or copied: repr/str show only a mask.

    The digits live in one bytearray of `CAPACITY` bytes, allocated once and never resized: a
    buffer that grows is copied to a larger one by the allocator, and the old one, freed
    without being cleared, would keep the digits keyed so far where a memory dump finds them.
    Nothing here returns more than four digits as a `str`; the digits leave the buffer only
    into another buffer (`write_into`, for the payment request) or as one-character strings
    (`characters`, to pick the clips of a spoken expiry), and `wipe()` zeroes the buffer.
    """

    __slots__ = ("_buf", "_len")
    CAPACITY = 24  # above the longest field keyed (a 19-digit card number)

    def __init__(self, digits: str | bytes | bytearray = b"") -> None:
        self._buf = bytearray(self.CAPACITY)
        self._len = 0
        for code in digits.encode("ascii") if isinstance(digits, str) else digits:
            if not 48 <= code <= 57:
                self.wipe()
                raise ValueError("secret digits must be decimal digits")
            self._push(code)

    def _push(self, code: int) -> None:
        if self._len >= self.CAPACITY:
            raise ValueError(f"at most {self.CAPACITY} secret digits")
        self._buf[self._len] = code
        self._len += 1

    def append(self, digit: str) -> None:
        if len(digit) != 1 or not "0" <= digit <= "9":
            raise ValueError("only one decimal digit can be appended")
        self._push(ord(digit))

    def __len__(self) -> int:
        return self._len

    def last(self, n: int) -> str:
        """The last n digits (n <= 4 for a card number)."""
        if not 0 <= n <= 4:
            raise ValueError("at most the last four digits can be shown")
        return self._buf[max(0, self._len - n) : self._len].decode("ascii") if n else ""

    def prefix(self, n: int) -> str:
        """The first n digits, for brand detection by IIN (n <= 8) and an expiry's month."""
        if not 0 <= n <= 8:
            raise ValueError("at most the first eight digits can be shown")
        return self._buf[: min(n, self._len)].decode("ascii")

    def values(self) -> list[int]:
        """The digits as small ints (0-9): Python shares those objects, so nothing is copied
        that a memory dump could read back as the number."""
        return [code - 48 for code in memoryview(self._buf)[: self._len]]

    def characters(self) -> tuple[str, ...]:
        """The digits as one-character strings, which Python shares too (for picking the
        clips of a prompt that speaks them)."""
        return tuple(chr(code) for code in memoryview(self._buf)[: self._len])

    def matches(self, digits: str) -> bool:
        """Whether these are exactly `digits` (compared in constant time)."""
        with memoryview(self._buf) as view:
            return hmac.compare_digest(view[: self._len], digits.encode("ascii", "replace"))

    def occurs_in(self, digits: str) -> bool:
        """Whether these digits appear in `digits` (compared in place, no copy made)."""
        if not self._len:
            return False
        with memoryview(self._buf) as view:
            return digits.encode("ascii", "ignore").find(view[: self._len]) >= 0

    def write_into(self, target: bytearray, offset: int) -> int:
        """Copy the digits into `target` at `offset` (which must have room: it is not grown);
        returns the offset after them."""
        end = offset + self._len
        if end > len(target):
            raise ValueError("no room for the digits in the target buffer")
        target[offset:end] = memoryview(self._buf)[: self._len]
        return end

    def copy(self) -> SecretDigits:
        twin = SecretDigits()
        twin._buf[:] = self._buf
        twin._len = self._len
        return twin

    def wipe(self) -> None:
        self._buf[:] = bytes(self.CAPACITY)
        self._len = 0

    def __repr__(self) -> str:
        return f"SecretDigits(<{self._len} digits>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SecretDigits)
            and self._len == other._len
            and hmac.compare_digest(self._buf, other._buf)
        )

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
    """Final results of a call."""

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
    """A payment at the merchant platform, as its lookup returns it."""

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
