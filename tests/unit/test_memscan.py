"""The memory scanner the memory-hygiene test and `bench/bench_memory_scan.py` trust: it must find
card data and byte fragments a live process holds, and nothing it does not hold. The scanned
process is a child that computes its data itself, so the scanner's own copies of what it looks
for are in another process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from memscan import KnownCard, count_fragments, scan_process

# The child builds the card data and the fragments from pieces, so its source code (which it
# also holds in memory) does not contain them whole.
CHILD = """
import sys
import numpy as np
card = "4111" + "1111" * 3
keyed = "12" + "30" + "#" + "123"
noise = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
held = [card.encode(), keyed.encode(), noise]
print("ready", flush=True)
sys.stdin.readline()
"""


def fragments(seed: int) -> list[bytes]:
    """24-byte pieces of the child's noise (seed 7) or of noise it never made (another seed)."""
    import numpy as np

    noise = np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return [noise[i : i + 24] for i in range(100, 4000, 400)]


@pytest.fixture
def child() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc.pid
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=10)


def test_the_card_a_process_holds_is_found_and_another_is_not(child: int) -> None:
    held = KnownCard("4111111111111111", "1230", "123")
    other = KnownCard("5555555555554444", "0631", "456")
    report = scan_process(child, [held, other])
    assert report.numbers[held.masked] >= 1
    assert report.codes_near_expiry[held.masked] >= 1
    assert report.numbers[other.masked] == 0 and report.codes_near_expiry[other.masked] == 0
    assert report.bytes_scanned > 0 and report.mappings > 0
    assert "4111111111111111" not in report.summary()


def test_fragments_a_process_holds_are_counted_once_each_and_others_not_at_all(
    child: int,
) -> None:
    report = count_fragments(child, {"held": fragments(7), "never": fragments(8)})
    assert report.found["held"] == len(fragments(7))
    assert report.found["never"] == 0
    assert sum(report.where.values()) == len(fragments(7))
