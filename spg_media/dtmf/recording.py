"""Reading a recording for `spg-media dtmf-scan`: WAV or raw G.711/linear audio to 8 kHz int16.

WAV files are read from their RIFF chunks here rather than with the `wave` module, which (before
Python 3.12) refuses the A-law and μ-law WAVs that telephony tools write (`sox -e a-law`, the
files SIPp streams). Supported WAV encodings: PCM 8/16/24/32-bit, IEEE float 32/64, A-law and
μ-law, also inside WAVE_FORMAT_EXTENSIBLE. Multi-channel files are read from their first channel
(a stereo call recording usually has one party per channel). Any rate is resampled to 8000 Hz.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

from spg_media.rtp.g711 import decode_array

AudioFormat = Literal["wav", "alaw", "ulaw", "s16"]
FORMATS: tuple[AudioFormat, ...] = ("wav", "alaw", "ulaw", "s16")
TARGET_RATE = 8000
MAX_BYTES = 2 * 1024**3  # refuse absurd inputs instead of exhausting memory
MIN_RATE, MAX_RATE = 1000, 384000  # Hz, for --rate and for a WAV header's rate alike
# Largest up/down factor of the resampler: its filter grows with them, and the exact ratio of an
# odd rate (383,993 Hz: 8000/383993) took seconds for a few samples. Rates whose ratio needs
# more are resampled within 0.1 %, far inside a DTMF tone's tolerance.
MAX_RESAMPLE_FACTOR = 1000

_WAVE_PCM, _WAVE_FLOAT, _WAVE_ALAW, _WAVE_MULAW, _WAVE_EXTENSIBLE = 1, 3, 6, 7, 0xFFFE
_EXTENSION_FORMATS: dict[str, AudioFormat] = {
    ".wav": "wav",
    ".wave": "wav",
    ".al": "alaw",
    ".alaw": "alaw",
    ".ul": "ulaw",
    ".ulaw": "ulaw",
    ".mu": "ulaw",
    ".raw": "s16",
    ".s16": "s16",
    ".pcm": "s16",
    ".sln": "s16",
}


class RecordingError(Exception):
    """The file cannot be read as audio; the message is one line for the CLI."""


def guess_format(path: Path, head: bytes) -> AudioFormat:
    """The format from the content (RIFF/WAVE magic) or else the file name's extension."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    guessed = _EXTENSION_FORMATS.get(path.suffix.lower())
    if guessed is None:
        raise RecordingError(
            f"{path.name}: cannot tell the audio format; give --format {'|'.join(FORMATS)}"
        )
    return guessed


def read_recording(
    path: str | Path, audio_format: AudioFormat | None = None, rate: int | None = None
) -> npt.NDArray[np.int16]:
    """The recording's first channel as int16 samples at 8000 Hz.

    `rate` is the sample rate of raw files (default 8000); for WAV it overrides the header only
    when given.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise RecordingError(f"{path.name}: larger than {MAX_BYTES} bytes")
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecordingError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RecordingError(f"{path}: is a directory") from None
    except OSError as exc:
        raise RecordingError(f"{path}: {exc.strerror or exc}") from None
    if rate is not None and not MIN_RATE <= rate <= MAX_RATE:
        raise RecordingError(f"--rate must be {MIN_RATE}..{MAX_RATE} Hz, got {rate}")
    fmt = audio_format or guess_format(path, data[:12])
    if fmt == "wav":
        samples, file_rate = _parse_wav(data, path.name)
        source_rate = rate or file_rate
        if not MIN_RATE <= source_rate <= MAX_RATE:
            raise RecordingError(
                f"{path.name}: WAV sample rate {source_rate} Hz is not {MIN_RATE}..{MAX_RATE}; "
                "give --rate"
            )
    else:
        samples = _parse_raw(data, fmt, path.name)
        source_rate = rate or TARGET_RATE
    return _to_8k(samples, source_rate)


def _parse_raw(data: bytes, fmt: AudioFormat, name: str) -> npt.NDArray[np.float64]:
    if fmt == "s16":
        if len(data) % 2:
            raise RecordingError(f"{name}: odd byte count for 16-bit samples")
        return np.frombuffer(data, dtype="<i2").astype(np.float64)
    codec = "PCMA" if fmt == "alaw" else "PCMU"
    return decode_array(np.frombuffer(data, dtype=np.uint8), codec).astype(np.float64)


def _parse_wav(data: bytes, name: str) -> tuple[npt.NDArray[np.float64], int]:
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RecordingError(f"{name}: not a RIFF/WAVE file")
    fmt_chunk: bytes | None = None
    audio: bytes | None = None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        (chunk_size,) = struct.unpack_from("<I", data, offset + 4)
        body = data[offset + 8 : offset + 8 + chunk_size]
        if chunk_id == b"fmt ":
            fmt_chunk = body
        elif chunk_id == b"data":
            audio = body  # a truncated data chunk (recording cut short) is read as far as it goes
            break
        offset += 8 + chunk_size + (chunk_size & 1)  # chunks are word-aligned
    if fmt_chunk is None or len(fmt_chunk) < 16:
        raise RecordingError(f"{name}: WAV without a valid fmt chunk")
    if audio is None:
        raise RecordingError(f"{name}: WAV without a data chunk")
    tag, channels, file_rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt_chunk)
    if tag == _WAVE_EXTENSIBLE and len(fmt_chunk) >= 26:
        (tag,) = struct.unpack_from("<H", fmt_chunk, 24)  # first two bytes of the SubFormat GUID
    if channels < 1 or file_rate < 1 or block_align < 1:
        raise RecordingError(f"{name}: WAV header with no channels, rate or frame size")
    width = block_align // channels
    frames = len(audio) // block_align
    raw = np.frombuffer(audio[: frames * block_align], dtype=np.uint8).reshape(frames, block_align)
    first = raw[:, :width]  # the first channel's bytes of every frame
    if tag in (_WAVE_ALAW, _WAVE_MULAW) and width == 1:
        codec = "PCMA" if tag == _WAVE_ALAW else "PCMU"
        return decode_array(np.ascontiguousarray(first[:, 0]), codec).astype(np.float64), file_rate
    if tag == _WAVE_PCM and width == 1 and bits <= 8:
        return (first[:, 0].astype(np.float64) - 128.0) * 256.0, file_rate
    if tag == _WAVE_PCM and width in (2, 3, 4):
        # Little-endian signed integers of any width: place them in the top bytes of an int32.
        padded = np.zeros((frames, 4), dtype=np.uint8)
        padded[:, 4 - width :] = first
        values = padded.view("<i4").reshape(frames).astype(np.float64)
        return values / 65536.0, file_rate  # back to the int16 scale
    if tag == _WAVE_FLOAT and width in (4, 8):
        dtype = "<f4" if width == 4 else "<f8"
        values = np.ascontiguousarray(first).view(dtype).reshape(frames).astype(np.float64)
        return np.nan_to_num(values) * 32767.0, file_rate
    raise RecordingError(
        f"{name}: unsupported WAV encoding (format tag {tag}, {bits} bits); "
        "use PCM, float, A-law or μ-law"
    )


def _to_8k(samples: npt.NDArray[np.float64], rate: int) -> npt.NDArray[np.int16]:
    if rate != TARGET_RATE and samples.size:
        ratio = Fraction(TARGET_RATE, rate).limit_denominator(MAX_RESAMPLE_FACTOR)
        samples = resample_poly(samples, ratio.numerator, ratio.denominator)
    return np.clip(np.rint(samples), -32768, 32767).astype(np.int16)
