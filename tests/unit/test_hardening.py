"""Process hardening at start-up: no core dumps, not dumpable, memory locked when asked.

Each check runs in a child process: the protections are for the life of a process and cannot
be taken back.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from spg_media import hardening

CHILD = """
import json, resource, sys
from spg_media.hardening import dumpable, harden_process
lock = sys.argv[1] == "lock"
done = harden_process(lock)
status = dict(
    line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
)
print(json.dumps({
    "done": done,
    "dumpable": dumpable(),
    "core": resource.getrlimit(resource.RLIMIT_CORE),
    "locked_kb": int(status["VmLck"].split()[0]),
}))
"""

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux prctl")


def run_child(mode: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@linux_only
def test_no_core_dumps_and_not_dumpable() -> None:
    assert hardening.dumpable() is True  # this test process, untouched
    child = run_child("plain")
    assert child["core"] == [0, 0]
    assert child["dumpable"] is False
    assert child["locked_kb"] == 0
    assert child["done"][:2] == [
        "core dumps off",
        "memory unreadable by other processes (not dumpable)",
    ]


@linux_only
@pytest.mark.skipif(os.geteuid() != 0, reason="mlockall of a whole interpreter needs CAP_IPC_LOCK")
def test_lock_memory_locks_every_page() -> None:
    child = run_child("lock")
    assert child["locked_kb"] > 1000
    assert "memory locked (never swapped)" in child["done"]


@linux_only
def test_a_lock_that_cannot_be_had_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class RefusingLibc:
        def prctl(self, *args: int) -> int:
            return 0  # not applied to this test process

        def mlockall(self, flags: int) -> int:
            return -1

    monkeypatch.setattr(hardening, "_libc", RefusingLibc)
    monkeypatch.setattr(resource, "setrlimit", lambda *args: None)  # as hardening sets limits
    with pytest.raises(hardening.HardeningError) as caught:
        hardening.harden_process(lock_memory=True)
    message = str(caught.value)
    assert message.startswith("security.lock_memory: mlockall failed") and "\n" not in message
