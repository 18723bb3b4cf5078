"""The payment journal: a durable line before each authorisation request, and one after it.

This module owns `log.journal_path` and the idempotency keys written to it.

Before the node sends an authorisation to the platform it appends an *open* line and makes it
durable (fsync of the file, and of its directory when the file is new); after the answer it
appends a *close* line with the result, the reference and the charge state. An authorisation
whose charge state stayed unknown (the platform could not say in time whether it charged, or
the node died while waiting) has no close line: `open_entries()` lists it, and
`spg-media reconcile` asks the platform about it and closes it.

    {"type":"open","key":"9f0c…","token":"sbx-4990-EUR-1","call_id":"…","attempt":1,
     "amount_minor":4990,"currency":"EUR","time":"2025-01-31T10:00:00.000Z"}
    {"type":"close","key":"9f0c…","token":"sbx-4990-EUR-1","result":"approved",
     "reference":"SBX12AB34CD","charge_state":"charged","by":"node","time":"…"}

No card data, ever: not the number, not its last four, not the expiry or the code. The journal
is read back by a process that has no card to compare with, so it has no use for any of it; the
CDR's guard (Luhn-valid 12-19 digit runs cut to their last four) runs over every line anyway.

Lines are whole: each is written with one O_APPEND write under a lock, so lines from the node's
threads and from a concurrent `spg-media reconcile` never interleave. A line cut short by a
crash of the machine (power loss mid-write) is skipped when read, and the first write of the
next process starts a fresh line after it. One journal per node: two nodes must not share one.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spg_media.cdr import mask_card_like
from spg_media.payment.model import ChargeState
from spg_media.randomid import random_hex

log = logging.getLogger("spg.journal")

KEY_BYTES = 16  # 128 random bits: an idempotency key no caller or peer can choose or guess
MAX_LINE_BYTES = 16 * 1024
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_CURRENCY = re.compile(r"[A-Z]{3}")


def new_idempotency_key() -> str:
    """A fresh random idempotency key (32 hex digits), one per authorisation attempt; never
    with a digit run the card-number guard would mask in the journal line."""
    return random_hex(KEY_BYTES)


def utc_now_iso() -> str:
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class JournalEntry:
    """One authorisation as its open line records it. Nothing of the card."""

    key: str
    token: str
    call_id: str
    attempt: int
    amount_minor: int
    currency: str
    time: str  # when the line was written, ISO 8601 UTC

    def age_s(self, now: datetime.datetime | None = None) -> float | None:
        """Seconds since the line was written, None when its time cannot be read."""
        try:
            opened = datetime.datetime.fromisoformat(self.time)
        except ValueError:
            return None
        if opened.tzinfo is None:
            return None
        return ((now or datetime.datetime.now(datetime.UTC)) - opened).total_seconds()

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "token": self.token,
            "call_id": self.call_id,
            "attempt": self.attempt,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "time": self.time,
        }


class PaymentJournal:
    """Appends open and close lines to one file, fsync'd; reads back the entries left open.

    The methods block on the disk (an fsync is milliseconds): the event loop calls them through
    `asyncio.to_thread`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._tail_checked = False

    def check(self) -> None:
        """OSError when the journal could not be appended to (for start-up: before any call)."""
        if self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND))
        elif not os.access(self.path.parent, os.W_OK | os.X_OK):
            raise PermissionError(13, "directory not writable", str(self.path.parent))

    def begin(self, entry: JournalEntry) -> None:
        """The open line, durable when this returns. OSError: do not send the request."""
        self._append({"type": "open", **entry.to_json()})

    def settle(
        self,
        key: str,
        token: str,
        result: str,
        reference: str,
        charge_state: ChargeState,
        *,
        by: str = "node",
    ) -> None:
        """The close line of the authorisation made with `key` (`by`: node or reconcile)."""
        self._append(
            {
                "type": "close",
                "key": key,
                "token": token,
                "result": result,
                "reference": reference,
                "charge_state": str(charge_state),
                "by": by,
                "time": utc_now_iso(),
            }
        )

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(
            mask_card_like(record, "journal"), separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                # A line a crash cut short: ours starts on a line of its own.
                if not self._tail_checked and not created and _ends_without_newline(self.path):
                    line = b"\n" + line
                self._tail_checked = True
                data = line + b"\n"
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:  # the file's name must survive a crash too
                _fsync_directory(self.path.parent)

    def open_entries(self) -> list[JournalEntry]:
        """The entries that have an open line and no close line, in the order they were opened.

        A missing file has none. Lines that cannot be read (cut short by a crash, or not ours)
        are skipped, with one warning saying how many.
        """
        opened: dict[str, JournalEntry] = {}
        skipped = 0
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return []
        with handle:
            for raw in handle:
                if not raw.strip():
                    continue
                record = _parse_line(raw)
                if record is None:
                    skipped += 1
                elif isinstance(record, JournalEntry):
                    opened.setdefault(record.key, record)
                else:
                    opened.pop(record, None)
        if skipped:
            log.warning("journal %s: %d unreadable line(s) skipped", self.path, skipped)
        return list(opened.values())


def _parse_line(raw: bytes) -> JournalEntry | str | None:
    """An open line as its entry, a close line as its key, anything else None."""
    if len(raw) > MAX_LINE_BYTES:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    key = data.get("key")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        return None
    kind = data.get("type")
    if kind == "close":
        return key
    if kind != "open":
        return None
    token, call_id, attempt = data.get("token"), data.get("call_id"), data.get("attempt")
    amount, currency, when = data.get("amount_minor"), data.get("currency"), data.get("time")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        return None
    if not isinstance(call_id, str) or type(attempt) is not int or type(amount) is not int:
        return None
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        return None
    if not isinstance(when, str):
        return None
    return JournalEntry(key, token, call_id, attempt, amount, currency, when)


def _ends_without_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the file itself is synced
    finally:
        os.close(fd)
