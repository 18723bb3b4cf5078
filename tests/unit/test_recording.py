"""Reading recordings for dtmf-scan: every WAV encoding and raw format to 8 kHz int16."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pytest

from spg_media.dtmf.recording import RecordingError, read_recording
from spg_media.rtp.g711 import encode

RATE = 8000
TONE = np.round(8000 * np.sin(2 * np.pi * 1000 * np.arange(800) / RATE)).astype(np.int16)


def wav_bytes(
    tag: int, channels: int, rate: int, bits: int, frames: bytes, extra: bytes = b""
) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits) + extra
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", 3) + b"abc\0"  # an odd-sized chunk before the data
    body += b"data" + struct.pack("<I", len(frames)) + frames
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_pcm16_wav(tmp_path: Path) -> None:
    path = write(tmp_path, "a.wav", wav_bytes(1, 1, RATE, 16, TONE.astype("<i2").tobytes()))
    assert np.array_equal(read_recording(path), TONE)


def test_stereo_wav_reads_the_first_channel(tmp_path: Path) -> None:
    frames = np.stack([TONE, np.full_like(TONE, 1234)], axis=1).astype("<i2").tobytes()
    path = write(tmp_path, "s.wav", wav_bytes(1, 2, RATE, 16, frames))
    assert np.array_equal(read_recording(path), TONE)


@pytest.mark.parametrize("bits", [24, 32])
def test_wide_pcm_wav(tmp_path: Path, bits: int) -> None:
    scaled = TONE.astype(np.int64) << (bits - 16)
    raw = b"".join(int(v).to_bytes(bits // 8, "little", signed=True) for v in scaled)
    path = write(tmp_path, "w.wav", wav_bytes(1, 1, RATE, bits, raw))
    assert np.array_equal(read_recording(path), TONE)


def test_8bit_and_float_wav(tmp_path: Path) -> None:
    unsigned = (np.round(TONE / 256) + 128).astype(np.uint8)
    got = read_recording(write(tmp_path, "u8.wav", wav_bytes(1, 1, RATE, 8, unsigned.tobytes())))
    assert np.max(np.abs(got.astype(int) - TONE)) <= 256
    floats = (TONE / 32767).astype("<f4").tobytes()
    got = read_recording(write(tmp_path, "f.wav", wav_bytes(3, 1, RATE, 32, floats)))
    assert np.max(np.abs(got.astype(int) - TONE)) <= 1


@pytest.mark.parametrize(("tag", "codec"), [(6, "PCMA"), (7, "PCMU")])
def test_g711_wav_as_sox_and_sipp_use(tmp_path: Path, tag: int, codec: str) -> None:
    path = write(tmp_path, "g.wav", wav_bytes(tag, 1, RATE, 8, encode(TONE, codec)))
    got = read_recording(path)
    assert got.shape == TONE.shape
    assert np.max(np.abs(got.astype(int) - TONE)) < 300  # G.711 quantisation at this level


def test_extensible_wav(tmp_path: Path) -> None:
    guid_pcm = struct.pack("<H", 1) + bytes(14)
    extra = struct.pack("<HHI", 22, 16, 4) + guid_pcm
    data = wav_bytes(0xFFFE, 1, RATE, 16, TONE.astype("<i2").tobytes(), extra)
    assert np.array_equal(read_recording(write(tmp_path, "x.wav", data)), TONE)


def test_other_rates_are_resampled(tmp_path: Path) -> None:
    t = np.arange(16000) / 16000
    wide = np.round(8000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2")
    got = read_recording(write(tmp_path, "16k.wav", wav_bytes(1, 1, 16000, 16, wide.tobytes())))
    assert got.size == 8000
    spectrum = np.abs(np.fft.rfft(got.astype(float)))
    assert abs(int(np.argmax(spectrum)) - 1000) <= 1  # still 1000 Hz after resampling


def test_a_wav_header_rate_is_bounded_and_odd_rates_are_quick(tmp_path: Path) -> None:
    # Found by fuzzing (fuzz/run.py recording): the header's rate went to the resampler as it
    # was: 12,079,816,021 Hz asked for a 90 GiB filter (MemoryError), and a prime rate such as
    # 383,993 Hz took seconds for a few samples (a filter of 7.7 million taps).
    frames = TONE[:100].astype("<i2").tobytes()
    for rate in (0x7FFFFFFF, 999, 1):
        path = write(tmp_path, "r.wav", wav_bytes(1, 1, rate, 16, frames))
        with pytest.raises(RecordingError, match="sample rate") as failure:
            read_recording(path)
        assert "\n" not in str(failure.value)
        assert read_recording(path, rate=8000).size == 100  # --rate overrides a broken header
    started = time.perf_counter()
    t = np.arange(38399) / 383993
    tone = np.round(8000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2")
    got = read_recording(write(tmp_path, "odd.wav", wav_bytes(1, 1, 383993, 16, tone.tobytes())))
    assert time.perf_counter() - started < 1.0
    assert abs(got.size - 800) <= 1
    spectrum = np.abs(np.fft.rfft(got.astype(float), 8000))
    assert abs(int(np.argmax(spectrum)) - 1000) <= 2  # still 1000 Hz (within 0.1 %)


@pytest.mark.parametrize(("name", "fmt"), [("a.al", "alaw"), ("u.ul", "ulaw"), ("s.raw", "s16")])
def test_raw_formats_by_extension_and_by_option(tmp_path: Path, name: str, fmt: str) -> None:
    if fmt == "s16":
        data = TONE.astype("<i2").tobytes()
    else:
        data = encode(TONE, "PCMA" if fmt == "alaw" else "PCMU")
    by_name = read_recording(write(tmp_path, name, data))
    by_option = read_recording(write(tmp_path, "noext", data), fmt)  # type: ignore[arg-type]
    assert np.array_equal(by_name, by_option)
    assert np.max(np.abs(by_name.astype(int) - TONE)) < 300


def test_raw_rate_option(tmp_path: Path) -> None:
    path = write(tmp_path, "x.raw", np.zeros(16000, "<i2").tobytes())
    assert read_recording(path, "s16", 16000).size == 8000


@pytest.mark.parametrize(
    ("name", "data", "fmt", "message"),
    [
        ("x.bin", b"\0" * 10, None, "cannot tell the audio format"),
        ("x.wav", b"RIFF\0\0\0\0WAVEjunk", None, "fmt chunk"),
        ("y.wav", b"not a wav at all", "wav", "not a RIFF/WAVE"),
        ("z.raw", b"\0\0\0", "s16", "odd byte count"),
    ],
)
def test_bad_files_give_one_line_errors(
    tmp_path: Path, name: str, data: bytes, fmt: str | None, message: str
) -> None:
    with pytest.raises(RecordingError, match=message) as failure:
        read_recording(write(tmp_path, name, data), fmt)  # type: ignore[arg-type]
    assert "\n" not in str(failure.value)


def test_unsupported_wav_encoding_and_missing_file(tmp_path: Path) -> None:
    adpcm = wav_bytes(2, 1, RATE, 16, b"\0" * 100)  # MS ADPCM tag
    with pytest.raises(RecordingError, match="unsupported WAV encoding"):
        read_recording(write(tmp_path, "adpcm.wav", adpcm))
    with pytest.raises(RecordingError, match="no such file"):
        read_recording(tmp_path / "missing.wav")
    with pytest.raises(RecordingError, match="rate"):
        read_recording(write(tmp_path, "r.raw", b"\0\0"), "s16", 5)
