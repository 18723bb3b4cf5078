"""The result of a call, as a record: its JSON, the CDR file, and the signed result callback.

This module owns the call record: `CallRecord` (the documented fields, and `charge_state`),
`CdrWriter` (one JSON line per call appended to `log.cdr_path`), and `CallbackSender` (the POST
of the same JSON to the handoff's `X-SPG-Callback`, signed like every platform request).

`input` says how each field the caller entered came: `dtmf` (keys), `speech` (said, with voice
entry) or `mixed` (both in one field); never what was entered.

`charge_state` says whether the platform took the payment: `charged` (approved), `not-charged`
(declined, refused, never sent, or no card read), `unknown` (the platform may have charged and
could not say in time: the result is `error`, and `spg-media reconcile` settles it later).

Card guard: a record holds a card only as `{brand, last4}` (anything else there is a bug and
raises ValueError). As a last resort, `to_json` (and so the CDR line and the callback) masks any
run of 12–19 digits that passes the Luhn check — anything that could be a PAN — down to its last
four, and logs a warning naming the field, never the value. It masks rather than refuses so that
no call's result is ever lost; it checks Luhn so that numeric platform references and Call-IDs
(most of which fail it) pass untouched.

Callback allow-list (decided here): a URL is allowed when
it matches a prefix of `handoff.callback_allow` as a URL, not as text: same scheme, same host
(case-insensitive), same effective port, and the URL's path starts with the prefix's path.
The scheme must be http or https, and http is only ever allowed when an operator listed an
http:// prefix (for loopback tests); URLs with user info (`https://good@evil/`) are refused.
No redirects are followed: a redirect could lead outside the allow-list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

import httpx

from spg_media.payment.cards import luhn_valid
from spg_media.payment.signing import SIGNATURE_HEADER, sign

if TYPE_CHECKING:
    from spg_media.payment.journey import Outcome

log = logging.getLogger("spg.cdr")

CARD_LIKE_RUN = re.compile(r"(?<![0-9])[0-9]{12,19}(?![0-9])")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
INPUT_FIELDS = frozenset({"card", "expiry", "security_code"})
INPUT_KINDS = frozenset({"dtmf", "speech", "mixed"})


@dataclass
class CallRecord:
    """One call's result, as the CDR line and the callback carry it. Times are ISO 8601 UTC
    strings, durations seconds."""

    call_id: str
    transaction: str
    order: str
    result: str
    reference: str
    authorization_code: str
    card: dict[str, str] | None  # {"brand": "visa", "last4": "1111"}, or None: no card read
    card_token: str
    attempts: int
    started_at: str
    ended_at: str
    durations: dict[str, float] = field(default_factory=dict)
    # charged | not-charged | unknown; "" takes it from the result, unknown for an error.
    charge_state: str = ""
    # "assist" for a payment taken with the agent on the call (with its payment_id); the IVR's
    # records leave both out.
    mode: str = ""
    payment_id: str = ""
    # How each field taken was entered: {"card" | "expiry" | "security_code":
    # "dtmf" | "speech" | "mixed"}; a field not taken is absent.
    input: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_outcome(cls, outcome: Outcome, **context: Any) -> CallRecord:
        """The record of a journey's or an assisted payment's `outcome`; `context` gives the
        rest (call_id, transaction, order, times, durations, charge_state, mode...)."""
        return cls(
            result=str(outcome.result),
            reference=outcome.reference,
            authorization_code=outcome.authorization_code,
            card={"brand": outcome.brand, "last4": outcome.last4} if outcome.last4 else None,
            card_token=outcome.card_token,
            attempts=outcome.attempts,
            input=dict(outcome.inputs),
            **context,
        )

    def __repr__(self) -> str:  # short, and it cannot show what the guard would refuse
        return f"CallRecord(call_id={self.call_id!r}, result={self.result!r})"

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data; ValueError if anything looks like card data."""
        card: dict[str, str] | None = None
        if self.card is not None:
            if set(self.card) != {"brand", "last4"}:
                raise ValueError("call record refused: card must be exactly {brand, last4}")
            last4 = self.card["last4"]
            if not isinstance(last4, str) or not re.fullmatch(r"[0-9]{0,4}", last4):
                raise ValueError("call record refused: card.last4 must be at most 4 digits")
            card = {"brand": str(self.card["brand"]), "last4": last4}
        inputs = dict(self.input)
        for name, kind in inputs.items():
            if name not in INPUT_FIELDS or kind not in INPUT_KINDS:
                raise ValueError(
                    "call record refused: input must map card fields to dtmf/speech/mixed"
                )
        data: dict[str, Any] = {
            "call_id": self.call_id,
            "transaction": self.transaction,
            "order": self.order,
            "result": self.result,
            "charge_state": self.charge_state or _charge_state_of(self.result),
            "reference": self.reference,
            "authorization_code": self.authorization_code,
            "card": card,
            "card_token": self.card_token,
            "attempts": int(self.attempts),
            "input": inputs,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "durations": {str(k): round(float(v), 3) for k, v in self.durations.items()},
        }
        if self.mode:
            data["mode"] = self.mode
        if self.payment_id:
            data["payment_id"] = self.payment_id
        masked: dict[str, Any] = mask_card_like(data, "")
        return masked


def _charge_state_of(result: str) -> str:
    """For a record made without one: approved charged, an error perhaps, the rest not."""
    if result == "approved":
        return "charged"
    return "unknown" if result == "error" else "not-charged"


def mask_card_like(value: Any, where: str) -> Any:
    """`value` with every Luhn-valid 12–19 digit run cut to its last four (warning logged)."""
    if isinstance(value, str):

        def mask(match: re.Match[str]) -> str:
            run = match.group(0)
            if not luhn_valid(run):
                return run
            log.warning("card-like number masked in call record field %s", where or "?")
            return "*" * (len(run) - 4) + run[-4:]

        return CARD_LIKE_RUN.sub(mask, value)
    if isinstance(value, dict):
        return {
            mask_card_like(key, f"a key of {where or 'the record'}"): mask_card_like(
                item, f"{where}.{key}" if where else str(key)
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_card_like(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def record_bytes(record: CallRecord) -> bytes:
    """The record as compact UTF-8 JSON: the CDR line (without newline) and the callback body."""
    return json.dumps(record.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class CdrWriter:
    """Appends one JSON line per call to a file; an empty path disables it.

    Each write opens the file in append mode, writes the whole line with one `write` and closes
    it: lines from concurrent writers never interleave, and log rotation (rename) just works.
    A few tens of microseconds, so it is fine to call from the event loop.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path) if str(path) else None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def write(self, record: CallRecord) -> None:
        """Append the record; ValueError (the card guard) or OSError go to the caller."""
        if self.path is None:
            return
        line = record_bytes(record) + b"\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                written = 0
                while written < len(line):
                    written += os.write(fd, line[written:])
            finally:
                os.close(fd)


class _BorrowedTransport(httpx.AsyncBaseTransport):
    """A transport the sender uses but does not own: closing a client does not close it."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        return None


class CallbackSender:
    """POSTs call records to allowed callback URLs, signed with the gateway secret."""

    def __init__(
        self,
        secret: str,
        allow_prefixes: Sequence[str],
        timeout_s: float = 5,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        retries: int = 2,
        backoff_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secret = secret
        self.allow_prefixes = tuple(allow_prefixes)
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.clock = clock
        self._transport = transport
        self._prefixes = [p for p in (_parse_url(prefix) for prefix in allow_prefixes) if p]

    def allowed(self, url: str) -> bool:
        """True when `url` falls under one of the allow-list prefixes (see the module doc)."""
        target = _parse_url(url)
        if target is None:
            return False
        return any(_under(target, prefix) for prefix in self._prefixes)

    async def send(self, url: str, record: CallRecord) -> bool:
        """POST the record; True on a 2xx. Retries 5xx/429 and network errors; never raises."""
        try:
            return await self._send(url, record)
        except Exception as exc:
            log.error("result callback failed: %s", type(exc).__name__)
            return False

    async def _send(self, url: str, record: CallRecord) -> bool:
        where = _origin(url)
        if not self.allowed(url):
            log.warning("result callback to %s refused: not in handoff.callback_allow", where)
            return False
        try:
            body = record_bytes(record)
        except ValueError as exc:
            log.error("result callback not sent: %s", exc)
            return False
        transport = _BorrowedTransport(self._transport) if self._transport else None
        async with httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(self.timeout_s),
            follow_redirects=False,
            # No proxy or CA bundle from the environment (HTTPS_PROXY, SSL_CERT_FILE...): what
            # the process inherited must not redirect or re-trust the merchant's results.
            trust_env=False,
        ) as client:
            for attempt in range(1 + self.retries):
                if attempt:
                    await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
                headers = {
                    "Content-Type": "application/json",
                    # Signed afresh each try, so a late retry is not rejected as too old.
                    SIGNATURE_HEADER: sign(self.secret, body, int(self.clock())),
                }
                try:
                    async with asyncio.timeout(self.timeout_s):
                        response = await client.post(url, content=body, headers=headers)
                except (httpx.TransportError, TimeoutError) as exc:
                    log.warning(
                        "result callback to %s, try %d: %s", where, attempt + 1, type(exc).__name__
                    )
                    continue
                if 200 <= response.status_code < 300:
                    log.info("result callback to %s delivered (call %s)", where, record.call_id)
                    return True
                log.warning(
                    "result callback to %s, try %d: HTTP %d",
                    where,
                    attempt + 1,
                    response.status_code,
                )
                if response.status_code not in RETRY_STATUSES:
                    return False
        log.error("result callback to %s given up (call %s)", where, record.call_id)
        return False


# ---- URL matching -------------------------------------------------------------------------------


def _parse_url(url: str) -> SplitResult | None:
    """A callback URL or prefix we are willing to compare, or None."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        return None
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url) or "\\" in url:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return None
    return parts


def _effective_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def _under(target: SplitResult, prefix: SplitResult) -> bool:
    if target.scheme != prefix.scheme:
        return False
    if (target.hostname or "").lower().rstrip(".") != (prefix.hostname or "").lower().rstrip("."):
        return False
    if _effective_port(target) != _effective_port(prefix):
        return False
    # A dot segment could climb out of the prefix's path on the receiving server.
    if any(segment in (".", "..") for segment in target.path.split("/")):
        return False
    if "%2e" in target.path.lower() or "%2f" in target.path.lower():
        return False
    return (target.path or "/").startswith(prefix.path or "/")


def _origin(url: str) -> str:
    """scheme://host[:port] for logs: the path or query could carry the merchant's secrets."""
    parts = _parse_url(url)
    if parts is None:
        return "<invalid URL>"
    return f"{parts.scheme}://{parts.netloc}"
