"""The payment journal: durable open and close lines, no card data, read back after a crash."""

from __future__ import annotations

import datetime
import json
import os
import re
import threading
from pathlib import Path

import pytest

from spg_media.payment.journal import (
    JournalEntry,
    PaymentJournal,
    new_idempotency_key,
    utc_now_iso,
)
from spg_media.payment.model import ChargeState


def entry(key: str = "k" * 32, token: str = "sbx-4990-EUR-1", **changes: object) -> JournalEntry:
    values: dict[str, object] = {
        "key": key,
        "token": token,
        "call_id": "a84b4c76e66710@pbx.example",
        "attempt": 1,
        "amount_minor": 4990,
        "currency": "EUR",
        "time": "2025-01-31T10:00:00.000Z",
    }
    values.update(changes)
    return JournalEntry(**values)  # type: ignore[arg-type]


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_idempotency_keys_are_128_random_bits() -> None:
    keys = {new_idempotency_key() for _ in range(1000)}
    assert len(keys) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", key) for key in keys)


def test_the_open_line_has_the_authorisation_and_nothing_of_the_card(tmp_path: Path) -> None:
    journal = PaymentJournal(tmp_path / "journal.jsonl")
    journal.begin(entry())
    assert lines(journal.path) == [
        {
            "type": "open",
            "key": "k" * 32,
            "token": "sbx-4990-EUR-1",
            "call_id": "a84b4c76e66710@pbx.example",
            "attempt": 1,
            "amount_minor": 4990,
            "currency": "EUR",
            "time": "2025-01-31T10:00:00.000Z",
        }
    ]


def test_open_and_close_lines_are_fsynced_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    journal = PaymentJournal(tmp_path / "new" / "journal.jsonl")
    journal.begin(entry())
    assert len(synced) == 2  # the file, and its directory: the file is new
    journal.settle("k" * 32, "sbx-4990-EUR-1", "approved", "R1", ChargeState.CHARGED)
    assert len(synced) == 3


def test_open_entries_are_those_without_a_close_line_in_order(tmp_path: Path) -> None:
    journal = PaymentJournal(tmp_path / "journal.jsonl")
    for key in ("a" * 32, "b" * 32, "c" * 32, "d" * 32):
        journal.begin(entry(key))
    journal.settle("b" * 32, "sbx-4990-EUR-1", "approved", "R1", ChargeState.CHARGED)
    journal.settle("d" * 32, "sbx-4990-EUR-1", "declined", "R2", ChargeState.NOT_CHARGED)
    assert [e.key for e in journal.open_entries()] == ["a" * 32, "c" * 32]
    closing = lines(journal.path)[-1]
    assert closing["type"] == "close" and closing["charge_state"] == "not-charged"
    assert (closing["result"], closing["reference"], closing["by"]) == ("declined", "R2", "node")
    assert journal.open_entries()[0] == entry("a" * 32)


def test_a_missing_journal_has_no_open_entries(tmp_path: Path) -> None:
    assert PaymentJournal(tmp_path / "none.jsonl").open_entries() == []


def test_a_line_cut_short_by_a_crash_is_skipped_and_the_next_write_starts_afresh(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.jsonl"
    PaymentJournal(path).begin(entry("a" * 32))
    with path.open("ab") as handle:  # a crash in the middle of the next line
        handle.write(b'{"type":"open","key":"' + b"b" * 32 + b'","tok')
    after_restart = PaymentJournal(path)
    assert [e.key for e in after_restart.open_entries()] == ["a" * 32]
    after_restart.begin(entry("c" * 32))
    after_restart.settle("a" * 32, "sbx-4990-EUR-1", "approved", "R", ChargeState.CHARGED)
    assert [e.key for e in PaymentJournal(path).open_entries()] == ["c" * 32]
    assert path.read_bytes().endswith(b"\n")


@pytest.mark.parametrize(
    "junk",
    [
        b"not json",
        b"[" * 50_000 + b"]" * 50_000,  # nested past the decoder's recursion limit
        b'{"type":"open"}',
        b'{"type":"open","key":"k","token":"has space","call_id":"c","attempt":1,'
        b'"amount_minor":1,"currency":"EUR","time":"t"}',
        b'{"type":"weird","key":"k"}',
        b"\xff\xfe",
        b"42",
    ],
)
def test_lines_that_are_not_entries_are_skipped(tmp_path: Path, junk: bytes) -> None:
    path = tmp_path / "journal.jsonl"
    journal = PaymentJournal(path)
    journal.begin(entry("a" * 32))
    with path.open("ab") as handle:
        handle.write(junk + b"\n")
    journal.begin(entry("b" * 32))
    assert [e.key for e in journal.open_entries()] == ["a" * 32, "b" * 32]


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    node, reconcile = PaymentJournal(path), PaymentJournal(path)  # two writers, one file

    def write(journal: PaymentJournal, prefix: str) -> None:
        for index in range(100):
            key = f"{prefix}{index:031d}"
            journal.begin(entry(key))
            journal.settle(key, "sbx-4990-EUR-1", "approved", "R", ChargeState.CHARGED)

    threads = [
        threading.Thread(target=write, args=(journal, prefix))
        for journal, prefix in ((node, "a"), (node, "b"), (reconcile, "c"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(lines(path)) == 600
    assert node.open_entries() == []


def test_a_card_number_in_a_field_is_masked(tmp_path: Path) -> None:
    journal = PaymentJournal(tmp_path / "journal.jsonl")
    journal.begin(entry(call_id="4111111111111111@pbx"))
    journal.settle("k" * 32, "t", "approved", "ref-5555555555554444", ChargeState.CHARGED)
    text = journal.path.read_text()
    assert "4111111111111111" not in text and "5555555555554444" not in text
    assert "************1111@pbx" in text


def test_check_refuses_a_journal_it_cannot_append_to(tmp_path: Path) -> None:
    PaymentJournal(tmp_path / "new.jsonl").check()  # a new file in a writable directory
    assert not (tmp_path / "new.jsonl").exists()  # checking creates nothing
    (tmp_path / "old.jsonl").write_text("")
    PaymentJournal(tmp_path / "old.jsonl").check()
    with pytest.raises(OSError):
        PaymentJournal(tmp_path).check()  # a directory


def test_entry_age() -> None:
    opened = entry(time=utc_now_iso())
    age = opened.age_s()
    assert age is not None and 0 <= age < 5
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=60)
    assert 59 < (opened.age_s(later) or 0) < 65
    assert entry(time="yesterday").age_s() is None
    assert entry(time="2025-01-31T10:00:00").age_s() is None  # no zone: not ours
