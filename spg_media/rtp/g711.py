"""G.711 μ-law (PCMU) and A-law (PCMA) as numpy lookup tables.

This module owns the G.711 conversion. Decoding is one fancy-indexing lookup in a 256-entry
int16 table, so a whole tick of channels (channels × 160 bytes) decodes in a single numpy call
(the media tick batches every channel). Encoding uses 65536-entry uint8 tables indexed by the
int16 sample reinterpreted as uint16, so it is a lookup as well; prompts are encoded once per
codec at render time.

The tables are built at import from the ITU-T G.711 reference algorithm as implemented in the
classic Sun `g711.c` and CPython's `audioop` (`ulaw2lin`/`lin2ulaw`, `alaw2lin`/`lin2alaw` with
16-bit samples), so they agree with both bit for bit.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

CODECS: Final = ("PCMU", "PCMA")
SILENCE: Final = {"PCMU": 0xFF, "PCMA": 0xD5}

Int16Array = npt.NDArray[np.int16]
UInt8Array = npt.NDArray[np.uint8]


def _build_ulaw_decode() -> Int16Array:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    linear = np.where(code & 0x80, 0x84 - magnitude, magnitude - 0x84)
    return linear.astype(np.int16)


def _build_alaw_decode() -> Int16Array:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (code & 0x70) >> 4
    mantissa = (code & 0x0F) << 4
    magnitude = np.where(
        segment == 0,
        mantissa + 8,
        (mantissa + 0x108) << np.maximum(segment - 1, 0),
    )
    linear = np.where(code & 0x80, magnitude, -magnitude)
    return linear.astype(np.int16)


def _segment(values: npt.NDArray[np.int32], segment_ends: tuple[int, ...]) -> npt.NDArray[np.intp]:
    """Index of the first segment end >= value (8 when above them all), like g711.c's search()."""
    return np.searchsorted(np.array(segment_ends, dtype=np.int32), values, side="left")


def _build_ulaw_encode() -> UInt8Array:
    samples = np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)
    pcm = samples >> 2  # g711 μ-law works on 14-bit magnitudes
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    pcm = np.minimum(np.abs(pcm), 8159) + (0x84 >> 2)
    segment = _segment(pcm, (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF))
    code = np.where(
        segment >= 8,
        0x7F,
        (segment << 4) | ((pcm >> (np.minimum(segment, 7) + 1)) & 0x0F),
    )
    # Index i holds the code of the int16 whose bit pattern is i (the sample viewed as uint16).
    return (code ^ mask).astype(np.uint8)


def _build_alaw_encode() -> UInt8Array:
    samples = np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)
    pcm = samples >> 3  # g711 A-law works on 13-bit magnitudes
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    pcm = np.where(pcm >= 0, pcm, -pcm - 1)
    segment = _segment(pcm, (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF))
    shift = np.where(segment < 2, 1, np.minimum(segment, 7))
    code = np.where(segment >= 8, 0x7F, (segment << 4) | ((pcm >> shift) & 0x0F))
    return (code ^ mask).astype(np.uint8)


ULAW_TO_LINEAR: Final[Int16Array] = _build_ulaw_decode()
ALAW_TO_LINEAR: Final[Int16Array] = _build_alaw_decode()
LINEAR_TO_ULAW: Final[UInt8Array] = _build_ulaw_encode()
LINEAR_TO_ALAW: Final[UInt8Array] = _build_alaw_encode()
for _table in (ULAW_TO_LINEAR, ALAW_TO_LINEAR, LINEAR_TO_ULAW, LINEAR_TO_ALAW):
    _table.flags.writeable = False  # shared by every call: nobody may patch them

DECODE_TABLES: Final[dict[str, Int16Array]] = {"PCMU": ULAW_TO_LINEAR, "PCMA": ALAW_TO_LINEAR}
ENCODE_TABLES: Final[dict[str, UInt8Array]] = {"PCMU": LINEAR_TO_ULAW, "PCMA": LINEAR_TO_ALAW}


def _unknown_codec(codec: str) -> ValueError:
    return ValueError(f"unknown G.711 codec {codec!r} (expected PCMU or PCMA)")


def _decode_table(codec: str) -> Int16Array:
    table = DECODE_TABLES.get(codec)
    if table is None:
        raise _unknown_codec(codec)
    return table


def _encode_table(codec: str) -> UInt8Array:
    table = ENCODE_TABLES.get(codec)
    if table is None:
        raise _unknown_codec(codec)
    return table


# The table lookups below use np.take rather than indexing with the code array: the same
# values, in about half the time for a tick's (400 × 160) block (indexing's general path).


def decode(payload: bytes, codec: str) -> Int16Array:
    """G.711 bytes to int16 samples."""
    return np.take(_decode_table(codec), np.frombuffer(payload, dtype=np.uint8))


def decode_array(codes: npt.NDArray[np.uint8], codec: str) -> Int16Array:
    """Decode an array of G.711 codes of any shape, e.g. (channels × 160) for a whole tick."""
    return np.take(_decode_table(codec), codes)


def encode(samples: npt.ArrayLike, codec: str) -> bytes:
    """Linear 16-bit samples to G.711 bytes.

    Values are on the int16 scale whatever the dtype: floats are rounded, and anything outside
    the int16 range is clipped (rather than wrapped, which would turn a loud peak into a click).
    """
    table = _encode_table(codec)
    array = np.asarray(samples)
    if array.dtype != np.int16:
        if array.dtype.kind == "f":
            array = np.rint(array)
        array = np.clip(array, -32768, 32767).astype(np.int16)
    return np.take(table, array.reshape(-1).view(np.uint16)).tobytes()
