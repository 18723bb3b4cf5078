"""Searching a live process's memory for card data, as an attacker with root would.

`scan_process(pid, cards)` reads every readable mapping of `/proc/PID/maps` through
`/proc/PID/mem` (heap, anonymous memory, stacks, file-backed pages: all of it) and counts, for
each known card, the complete card numbers found and the security codes found next to an
expiry, in the forms they take in this project: as keyed (`MMYY` then the code, with or
without the `#` after the expiry), and as the payment request's JSON (`"exp_year":2030,
"cvc":"123"`, in either order, with or without spaces). Needs root (or CAP_SYS_PTRACE) for a
process that is not dumpable.

`count_fragments(pid, fragments)` counts other byte strings the same way: the benchmark looks
for pieces of the callers' keypad-tone audio, which a node must not keep either.

Used by the memory-hygiene integration test and by `bench/bench_memory_scan.py`. What it
returns names where each find lies, never the digits: a report is safe to print and to keep.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

_CHUNK = 64 * 1024 * 1024  # read big mappings in pieces, overlapping by _OVERLAP
_OVERLAP = 256


@dataclasses.dataclass(frozen=True)
class KnownCard:
    """A card keyed in the calls: the number, the expiry as keyed (MMYY) and the code."""

    number: str
    expiry: str
    cvc: str

    @property
    def masked(self) -> str:
        return f"*{self.number[-4:]}"

    def number_patterns(self) -> list[bytes]:
        return [self.number.encode("ascii")]

    def code_near_expiry(self) -> re.Pattern[bytes]:
        month, year = self.expiry[:2], self.expiry[2:]
        mm, yy, cvc = (re.escape(x.encode()) for x in (month, year, self.cvc))
        month_number = re.escape(str(int(month)).encode())
        full_year = re.escape(f"20{year}".encode())
        keyed = rb"%s%s#?%s(?!\d)" % (mm, yy, cvc)
        # JSON as the request carries it: expiry fields then the code, or the code first
        year_then_code = rb'"exp_year"\s*:\s*%s\s*,\s*"cvc"\s*:\s*"%s"' % (full_year, cvc)
        code_then_year = rb'"cvc"\s*:\s*"%s"\s*,\s*"exp_(?:month|year)"\s*:\s*(?:%s|%s)\b' % (
            cvc,
            full_year,
            month_number,
        )
        return re.compile(rb"(?:%s)|(?:%s)|(?:%s)" % (keyed, year_then_code, code_then_year))


@dataclasses.dataclass
class ScanReport:
    """What a scan found: counts per card (by its last four) and per kind of mapping."""

    bytes_scanned: int = 0
    mappings: int = 0
    unreadable: int = 0
    numbers: Counter[str] = dataclasses.field(default_factory=Counter)  # masked card -> count
    codes_near_expiry: Counter[str] = dataclasses.field(default_factory=Counter)
    where: Counter[str] = dataclasses.field(default_factory=Counter)  # "[heap] number" -> n

    @property
    def total_numbers(self) -> int:
        return sum(self.numbers.values())

    @property
    def total_codes(self) -> int:
        return sum(self.codes_near_expiry.values())

    def summary(self) -> str:
        places = ", ".join(f"{k}: {v}" for k, v in sorted(self.where.items())) or "none"
        return (
            f"{self.bytes_scanned / 2**20:.0f} MiB in {self.mappings} mappings "
            f"({self.unreadable} unreadable): {self.total_numbers} complete card numbers, "
            f"{self.total_codes} security codes next to an expiry; where: {places}"
        )


@dataclasses.dataclass(frozen=True)
class _Mapping:
    start: int
    end: int
    perms: str
    name: str

    @property
    def kind(self) -> str:
        if not self.name:
            return "anonymous"
        if self.name.startswith("["):
            return self.name.split(":")[0] + ("]" if ":" in self.name else "")
        return "file"


def _mappings(pid: int) -> list[_Mapping]:
    found = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in parts[0].split("-"))
        found.append(_Mapping(start, end, parts[1], parts[5] if len(parts) > 5 else ""))
    return found


def _chunks(mem: int, mapping: _Mapping) -> Iterator[bytes]:
    import os

    offset = mapping.start
    while offset < mapping.end:
        size = min(_CHUNK, mapping.end - offset)
        yield os.pread(mem, size, offset)
        if offset + size >= mapping.end:
            return
        offset += size - _OVERLAP


def _readable_chunks(pid: int) -> Iterator[tuple[_Mapping, bytes | None]]:
    """Each readable mapping's contents in overlapping chunks; (mapping, None) once for a
    mapping that cannot be read."""
    import os

    mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for mapping in _mappings(pid):
            if "r" not in mapping.perms or mapping.name in ("[vvar]", "[vsyscall]"):
                continue
            try:
                for data in _chunks(mem, mapping):
                    yield mapping, data
            except OSError:
                yield mapping, None
    finally:
        os.close(mem)


@dataclasses.dataclass
class FragmentReport:
    """What `count_fragments` found: per label, how many of its strings occur (each counted
    once); and per kind of mapping, how many finds lie there."""

    found: Counter[str] = dataclasses.field(default_factory=Counter)
    where: Counter[str] = dataclasses.field(default_factory=Counter)


def count_fragments(pid: int, fragments: Mapping[str, Iterable[bytes]]) -> FragmentReport:
    """For each label, how many of its byte strings (each at least 4 bytes) occur in process
    `pid`'s readable memory (each string counted once however often it occurs; strings longer
    than the chunks' overlap may be missed across a chunk boundary), and where.

    Thousands of strings over hundreds of MiB: every offset's first four bytes are looked up
    at once (numpy) among the strings' first four, and only those offsets compared whole."""
    import numpy as np

    by_prefix: dict[int, list[tuple[str, bytes]]] = {}
    for label, strings in fragments.items():
        for string in set(strings):
            if len(string) < 4:
                raise ValueError("fragments of at least 4 bytes")
            by_prefix.setdefault(int.from_bytes(string[:4], "little"), []).append((label, string))
    prefixes = np.array(sorted(by_prefix), dtype=np.uint32)
    found: set[tuple[str, bytes]] = set()
    report = FragmentReport()
    for mapping, data in _readable_chunks(pid):
        if data is None or len(data) < 4:
            continue
        raw = np.frombuffer(data, dtype=np.uint8)
        words = raw[:-3].astype(np.uint32)
        for shift in (1, 2, 3):  # each offset's four bytes as one little-endian word
            words |= raw[shift : raw.size - 3 + shift].astype(np.uint32) << np.uint32(8 * shift)
        places = np.searchsorted(prefixes, words)
        places[places == prefixes.size] = 0
        for offset in np.flatnonzero(prefixes[places] == words).tolist():
            for label, string in by_prefix[int(words[offset])]:
                if (label, string) not in found and data.startswith(string, offset):
                    found.add((label, string))
                    report.where[mapping.kind] += 1
    report.found.update(label for label, _string in found)
    return report


def scan_process(pid: int, cards: Iterable[KnownCard]) -> ScanReport:
    """Count the card data of `cards` in every readable mapping of process `pid`."""
    cards = list(cards)
    number_patterns = [(card, p) for card in cards for p in card.number_patterns()]
    code_patterns = [(card, card.code_near_expiry()) for card in cards]
    report = ScanReport()
    seen: _Mapping | None = None
    for mapping, data in _readable_chunks(pid):
        if mapping is not seen:
            report.mappings += 1
            seen = mapping
        if data is None:
            report.unreadable += 1
            continue
        report.bytes_scanned += len(data)
        for card, pattern in number_patterns:
            hits = data.count(pattern)
            if hits:
                report.numbers[card.masked] += hits
                report.where[f"{mapping.kind} number"] += hits
        for card, regex in code_patterns:
            hits = sum(1 for _ in regex.finditer(data))
            if hits:
                report.codes_near_expiry[card.masked] += hits
                report.where[f"{mapping.kind} code"] += hits
    return report
