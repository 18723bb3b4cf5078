"""ctypes binding to spandsp's DTMF receiver (`dtmf_rx`), the baseline of the in-band benchmarks.

Bench-only: needs Debian's libspandsp2 (`apt-get install libspandsp-dev` also gives the header,
/usr/include/spandsp/dtmf.h); the tests never import this. `SpandspDtmf` wraps one
`dtmf_rx_state_t` with the real-time callback, so each digit comes with its start and end as
sample positions: spandsp reports a state change when its 102-sample block that confirms it
ends, and passes the samples since its previous report, so positions are exact.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

# void (*tone_report_func_t)(void *user_data, int code, int level, int delay)
_REPORT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int)


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("spandsp") or "libspandsp.so.2"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise RuntimeError(
            "spandsp not found: apt-get install libspandsp-dev (Debian libspandsp2)"
        ) from exc
    lib.dtmf_rx_init.restype = ctypes.c_void_p
    lib.dtmf_rx_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.dtmf_rx.restype = ctypes.c_int
    lib.dtmf_rx.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    lib.dtmf_rx_free.restype = ctypes.c_int
    lib.dtmf_rx_free.argtypes = [ctypes.c_void_p]
    lib.dtmf_rx_set_realtime_callback.restype = None
    lib.dtmf_rx_set_realtime_callback.argtypes = [ctypes.c_void_p, _REPORT, ctypes.c_void_p]
    lib.dtmf_rx_parms.restype = None
    lib.dtmf_rx_parms.argtypes = [ctypes.c_void_p] + [ctypes.c_int] * 4
    lib.dtmf_rx_get.restype = ctypes.c_size_t
    lib.dtmf_rx_get.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    return lib


_lib: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def available() -> bool:
    try:
        library()
    except RuntimeError:
        return False
    return True


@dataclass
class SpandspDtmf:
    """One spandsp DTMF receiver with its defaults (twist 8/4 dB, -42 dBm0 per tone)."""

    digits: list[tuple[str, int, int]] = field(default_factory=list)  # (digit, start, end)
    reports: list[tuple[str, int]] = field(default_factory=list)  # (digit or "", decided at)

    def __post_init__(self) -> None:
        lib = library()
        self._lib = lib
        self._position = 0  # samples up to spandsp's last report
        self._current: tuple[str, int] | None = None
        self._callback = _REPORT(self._report)  # kept alive as long as the receiver
        self._state = lib.dtmf_rx_init(None, None, None)
        if not self._state:
            raise RuntimeError("dtmf_rx_init failed")
        lib.dtmf_rx_set_realtime_callback(self._state, self._callback, None)

    def _report(self, _user: object, code: int, _level: int, delay: int) -> None:
        # `delay` is the number of samples since the previous report, up to the end of the
        # block that confirmed this change: the decision point.
        self._position += delay
        if self._current is not None:
            digit, start = self._current
            self.digits.append((digit, start, self._position))
            self._current = None
        if code:
            digit = chr(code)
            self._current = (digit, self._position)
        self.reports.append((chr(code) if code else "", self._position))

    def feed(self, samples: npt.NDArray[np.int16]) -> None:
        """Run the receiver over int16 samples (any length)."""
        data = np.ascontiguousarray(samples, dtype=np.int16)
        self._lib.dtmf_rx(self._state, data.ctypes.data, data.size)

    def feed_raw(self, address: int, count: int) -> None:
        """Run over `count` int16 samples at `address` (the benchmark's hot loop)."""
        self._lib.dtmf_rx(self._state, address, count)

    def close(self) -> None:
        if self._state:
            self._lib.dtmf_rx_free(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


def spandsp_scan(samples: npt.NDArray[np.int16], chunk: int = 0) -> list[tuple[str, int, int]]:
    """Digits spandsp finds in one recording: (digit, confirmed at, ended confirmed at) in
    samples (decision points, not onsets: spandsp does not date a tone's onset). `chunk` > 0
    feeds that many samples at a time, else the whole recording in one call."""
    receiver = SpandspDtmf()
    data = np.ascontiguousarray(samples, dtype=np.int16)
    if chunk <= 0:
        receiver.feed(data)
    else:
        for i in range(0, data.size, chunk):
            receiver.feed(data[i : i + chunk])
    # Trailing silence confirms the end of a digit running to the end of the recording.
    receiver.feed(np.zeros(408, dtype=np.int16))
    receiver.close()
    return receiver.digits
