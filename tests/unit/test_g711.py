"""G.711 tables against the ITU-T reference algorithm (Sun g711.c / CPython audioop)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from spg_media.rtp import g711

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int32)

# ---- the reference, written out scalar by scalar as in g711.c / audioop.c ----------------------


def ref_ulaw2linear(code: int) -> int:
    u = ~code & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t <<= (u & 0x70) >> 4
    return (0x84 - t) if u & 0x80 else (t - 0x84)


def ref_alaw2linear(code: int) -> int:
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t += 0x108
        t <<= seg - 1
    return t if a & 0x80 else -t


def _search(value: int, table: tuple[int, ...]) -> int:
    for i, end in enumerate(table):
        if value <= end:
            return i
    return len(table)


def ref_linear2ulaw(sample: int) -> int:
    pcm = sample >> 2
    if pcm < 0:
        pcm = -pcm
        mask = 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, 8159) + (0x84 >> 2)
    seg = _search(pcm, (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF))
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0xF)) ^ mask


def ref_linear2alaw(sample: int) -> int:
    pcm = sample >> 3
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    seg = _search(pcm, (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF))
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (pcm >> 1) & 0xF if seg < 2 else (pcm >> seg) & 0xF
    return aval ^ mask


DECODE_REF = {"PCMU": ref_ulaw2linear, "PCMA": ref_alaw2linear}
ENCODE_REF = {"PCMU": ref_linear2ulaw, "PCMA": ref_linear2alaw}

# ---- decode ------------------------------------------------------------------------------------


def test_table_shapes_and_types() -> None:
    assert g711.ULAW_TO_LINEAR.shape == g711.ALAW_TO_LINEAR.shape == (256,)
    assert g711.ULAW_TO_LINEAR.dtype == g711.ALAW_TO_LINEAR.dtype == np.int16
    assert g711.LINEAR_TO_ULAW.shape == g711.LINEAR_TO_ALAW.shape == (65536,)
    assert g711.LINEAR_TO_ULAW.dtype == g711.LINEAR_TO_ALAW.dtype == np.uint8


def test_tables_are_read_only() -> None:
    with pytest.raises(ValueError):
        g711.ULAW_TO_LINEAR[0] = 1


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_decode_all_256_codes_match_reference(codec: str) -> None:
    decoded = g711.decode(bytes(range(256)), codec)
    assert decoded.dtype == np.int16
    assert decoded.tolist() == [DECODE_REF[codec](code) for code in range(256)]


@pytest.mark.parametrize(
    ("codec", "code", "linear"),
    [
        ("PCMU", 0xFF, 0),
        ("PCMU", 0x7F, 0),
        ("PCMU", 0x00, -32124),
        ("PCMU", 0x80, 32124),
        ("PCMA", 0xD5, 8),
        ("PCMA", 0x55, -8),
        ("PCMA", 0xAA, 32256),
        ("PCMA", 0x2A, -32256),
    ],
)
def test_decode_known_values(codec: str, code: int, linear: int) -> None:
    assert int(g711.decode(bytes([code]), codec)[0]) == linear


def test_decode_array_batches_channels() -> None:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(50, 160), dtype=np.uint8)
    batched = g711.decode_array(frames, "PCMA")
    assert batched.shape == (50, 160)
    for row in range(50):
        assert np.array_equal(batched[row], g711.decode(frames[row].tobytes(), "PCMA"))


def test_decode_empty() -> None:
    assert g711.decode(b"", "PCMU").size == 0


# ---- encode ------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_encode_every_int16_matches_reference(codec: str) -> None:
    encoded = g711.encode(ALL_SAMPLES.astype(np.int16), codec)
    ref = ENCODE_REF[codec]
    expected = bytes(ref(int(s)) for s in ALL_SAMPLES)
    assert encoded == expected


@pytest.mark.parametrize(("codec", "silence"), [("PCMU", 0xFF), ("PCMA", 0xD5)])
def test_silence(codec: str, silence: int) -> None:
    assert g711.encode(np.zeros(160, dtype=np.int16), codec) == bytes([silence]) * 160
    assert g711.SILENCE[codec] == silence


def test_ulaw_round_trip_of_every_code() -> None:
    codes = bytes(range(256))
    again = g711.encode(g711.decode(codes, "PCMU"), "PCMU")
    # Both zeros (0x7F "-0" and 0xFF "+0") decode to 0, which encodes as 0xFF.
    assert again == bytes(c if c != 0x7F else 0xFF for c in range(256))


def test_alaw_round_trip_of_every_code() -> None:
    codes = bytes(range(256))
    assert g711.encode(g711.decode(codes, "PCMA"), "PCMA") == codes


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_encode_quantises_to_an_adjacent_level(codec: str) -> None:
    levels = np.unique(g711.DECODE_TABLES[codec].astype(np.int32))
    decoded = g711.decode(g711.encode(ALL_SAMPLES.astype(np.int16), codec), codec).astype(np.int32)
    index = np.searchsorted(levels, ALL_SAMPLES)
    below = levels[np.clip(index - 1, 0, len(levels) - 1)]
    above = levels[np.clip(index, 0, len(levels) - 1)]
    assert np.all((decoded == below) | (decoded == above))


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_encode_then_decode_is_monotonic(codec: str) -> None:
    decoded = g711.decode(g711.encode(ALL_SAMPLES.astype(np.int16), codec), codec)
    assert np.all(np.diff(decoded.astype(np.int32)) >= 0)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_encode_accepts_other_dtypes_on_the_int16_scale(codec: str) -> None:
    ints = np.array([-40000, -32768, -1000, 0, 1000, 32767, 40000], dtype=np.int64)
    clipped = np.clip(ints, -32768, 32767).astype(np.int16)
    assert g711.encode(ints, codec) == g711.encode(clipped, codec)
    floats = np.array([-1000.4, 0.4, 999.6, 1e9])
    assert g711.encode(floats, codec) == g711.encode(
        np.array([-1000, 0, 1000, 32767], dtype=np.int16), codec
    )
    assert g711.encode([0, 0], codec) == bytes([g711.SILENCE[codec]]) * 2


def test_encode_flattens_2d_arrays() -> None:
    block = np.zeros((2, 3), dtype=np.int16)
    assert g711.encode(block, "PCMU") == b"\xff" * 6


@pytest.mark.parametrize("codec", ["G729", "pcmu", ""])
def test_unknown_codec_is_a_value_error(codec: str) -> None:
    with pytest.raises(ValueError, match=r"unknown G\.711 codec"):
        g711.decode(b"\x00", codec)
    with pytest.raises(ValueError, match=r"unknown G\.711 codec"):
        g711.encode(np.zeros(1, dtype=np.int16), codec)


@given(arrays(np.int16, st.integers(0, 400)), st.sampled_from(["PCMU", "PCMA"]))
def test_encode_decode_encode_is_stable(samples: np.ndarray, codec: str) -> None:
    once = g711.encode(samples, codec)
    assert len(once) == samples.size
    # A decoded level re-encodes to the code it came from.
    assert g711.encode(g711.decode(once, codec), codec) == once


def test_matches_cpython_audioop_when_available() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # removed in Python 3.13
    codes = bytes(range(256))
    pcm = ALL_SAMPLES.astype(np.int16)
    assert np.array_equal(
        g711.decode(codes, "PCMU"), np.frombuffer(audioop.ulaw2lin(codes, 2), np.int16)
    )
    assert np.array_equal(
        g711.decode(codes, "PCMA"), np.frombuffer(audioop.alaw2lin(codes, 2), np.int16)
    )
    assert g711.encode(pcm, "PCMU") == audioop.lin2ulaw(pcm.tobytes(), 2)
    assert g711.encode(pcm, "PCMA") == audioop.lin2alaw(pcm.tobytes(), 2)
