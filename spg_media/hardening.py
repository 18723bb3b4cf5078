"""Keeping a node's memory, where card data passes, out of other hands (Linux).

This module owns the process-wide protections a node applies at start-up, before it takes
a call (`harden_process`):

- `RLIMIT_CORE` 0/0: no core file is ever written, and the limit cannot be raised again;
- `prctl(PR_SET_DUMPABLE, 0)`: no core dump by any route (systemd-coredump, apport), and
  `/proc/PID/mem`, `/proc/PID/environ` and ptrace are closed to every process without
  CAP_SYS_PTRACE, the same user's included (a debugger or py-spy on a node needs root);
- with `[security] lock_memory`, `mlockall(MCL_CURRENT | MCL_FUTURE)`: no page of the process is
  ever written to swap (needs CAP_IPC_LOCK, or an RLIMIT_MEMLOCK above the node's memory).

Elsewhere than Linux the first holds and the others are reported as not available.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import signal
import sys

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
MCL_CURRENT = 1
MCL_FUTURE = 2


class HardeningError(Exception):
    """Something asked for could not be done: one line saying what and why."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _errno_text() -> str:
    return os.strerror(ctypes.get_errno())


def harden_process(lock_memory: bool = False) -> list[str]:
    """Apply the protections; returns one phrase per protection in place (for the log line).
    Raises HardeningError when lock_memory is asked for and cannot be had."""
    done = []
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    done.append("core dumps off")
    if sys.platform.startswith("linux"):
        libc = _libc()
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise HardeningError(f"prctl(PR_SET_DUMPABLE, 0) failed: {_errno_text()}")
        done.append("memory unreadable by other processes (not dumpable)")
        if lock_memory:
            if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
                raise HardeningError(
                    f"security.lock_memory: mlockall failed: {_errno_text()} (grant "
                    "CAP_IPC_LOCK or raise RLIMIT_MEMLOCK, e.g. LimitMEMLOCK=infinity)"
                )
            done.append("memory locked (never swapped)")
        else:
            done.append("memory not locked (security.lock_memory = false)")
    elif lock_memory:
        raise HardeningError("security.lock_memory: only available on Linux")
    return done


def dumpable() -> bool | None:
    """Whether this process is dumpable (None where it cannot be asked)."""
    if not sys.platform.startswith("linux"):
        return None
    return bool(_libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


PR_SET_PDEATHSIG = 1


def end_with_parent() -> bool:
    """Ask Linux to send us SIGTERM when our parent (a worker's supervisor) dies, so no worker
    outlives it holding its ports; False when the parent is already gone."""
    parent = os.getppid()
    if parent == 1:
        return False  # orphaned already
    if sys.platform == "linux" and _libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return False
    return os.getppid() == parent  # it may have died before the prctl took effect
