"""CPU and memory of the Whisper recogniser at Whisper small's size, without Whisper small.

No complete Whisper small is to be had from the registries this project may use (bench/RESULTS.md,
History, "Whisper small"), so its accuracy cannot be measured. Its cost can: CTranslate2's work
depends on the model's shape (layers, width, heads) and on how many tokens are decoded, not on the
weights' values. This builds, in memory, a CTranslate2 `model.bin` with Whisper base's variable
table (read from the installed base model) scaled to another size, random weights (float16, as
the published conversions), and runs the recogniser (spg_media/speech/whisper.py: encoder over
the speech plus padding, the free and the exact-length beam searches, int8, one thread) with it
on the accuracy bench's telephone utterances.

The method is checked in the same run: the same build at base's own size ("base-shape") against
the real base model on the same audio; the two should cost about the same. The build at small's
size must come to the published size of Systran/faster-whisper-small's `model.bin` (483,546,902
bytes), a check that the layout is the real one.

Run:  .venv/bin/python bench/bench_whisper_shape_cpu.py [--utterances 48] [--beams 16,8,4]
      [--pads 50]
      .venv/bin/python bench/bench_whisper_shape_cpu.py --inspect model.bin  (a file's layout)
Each configuration runs in its own process, one after the other (one core at a time).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import multiprocessing
import random
import re
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speech_accuracy import RATE, VARIANTS, VOICES, Speaker, render

from spg_media.speech import whisper


def _base_weights() -> bytes:
    return whisper.BASE.read()["model.bin"]


SYSTRAN_SMALL_BYTES = 483_546_902  # Systran/faster-whisper-small model.bin, published size
BASE = {"d_model": 512, "ffn": 2048, "heads": 8, "layers": 6}
SMALL = {"d_model": 768, "ffn": 3072, "heads": 12, "layers": 12}
_FLOAT16 = 4  # CTranslate2's DataType enum


@dataclass
class Variable:
    name: str
    dims: list[int]
    dtype: int
    payload: bytes


@dataclass
class Table:
    spec: str
    revision: int
    declared: int  # variables the header announces
    variables: list[Variable]
    aliases: list[tuple[str, str]]
    cut_in: str | None = None  # the variable the file ends inside, if it is truncated


def read_table(data: bytes, strict: bool = True) -> Table:
    """A CTranslate2 model.bin (binary version 6): spec name, revision, variables, aliases.
    A truncated file raises ValueError, or with `strict` False gives the variables it holds."""
    offset = 0

    def u32() -> int:
        nonlocal offset
        (value,) = struct.unpack_from("<I", data, offset)
        offset += 4
        return int(value)

    def string() -> str:
        nonlocal offset
        (size,) = struct.unpack_from("<H", data, offset)
        offset += 2
        text = data[offset : offset + size - 1].decode()
        offset += size
        return text

    if u32() != 6:
        raise ValueError("not a CTranslate2 model.bin of binary version 6")
    spec, revision, count = string(), u32(), u32()
    table = Table(spec, revision, count, [], [])
    for _ in range(count):
        name = string()
        rank = data[offset]
        offset += 1
        dims = [u32() for _ in range(rank)]
        dtype = data[offset]
        offset += 1
        size = u32()
        if offset + size > len(data):
            if strict:
                raise ValueError(f"{name}: the file ends inside it (truncated)")
            table.cut_in = name
            return table
        table.variables.append(Variable(name, dims, dtype, data[offset : offset + size]))
        offset += size
    table.aliases = [(string(), string()) for _ in range(u32())]
    return table


def write_table(
    spec: str, revision: int, variables: list[Variable], aliases: list[tuple[str, str]]
) -> bytes:
    def string(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    parts = [struct.pack("<I", 6), string(spec), struct.pack("<II", revision, len(variables))]
    for v in variables:
        parts += [string(v.name), bytes([len(v.dims)]), struct.pack(f"<{len(v.dims)}I", *v.dims)]
        parts += [bytes([v.dtype]), struct.pack("<I", len(v.payload)), v.payload]
    parts.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases:
        parts += [string(alias), string(target)]
    return b"".join(parts)


def shaped_model(template: bytes, size: dict[str, int], seed: int = 0) -> bytes:
    """Whisper of `size` with random weights, laid out as the base `template`."""
    table = read_table(template)
    spec, revision, variables, aliases = table.spec, table.revision, table.variables, table.aliases
    d, ffn = BASE["d_model"], BASE["ffn"]
    resize = {d: size["d_model"], 2 * d: 2 * size["d_model"], 3 * d: 3 * size["d_model"]}
    resize[ffn] = size["ffn"]
    rng = np.random.default_rng(seed)
    out: list[Variable] = []
    for v in variables:
        match = re.fullmatch(r"(encoder|decoder)/layer_(\d+)/(.*)", v.name)
        if match and match.group(2) != "0":
            continue  # layer 0 is the template of every layer
        names = (
            [f"{match.group(1)}/layer_{i}/{match.group(3)}" for i in range(size["layers"])]
            if match
            else [v.name]
        )
        for name in names:
            if not v.dims:  # a scalar: kept, but for the head count
                payload = v.payload
                if name.endswith("num_heads"):
                    payload = struct.pack("<h", size["heads"])
                out.append(Variable(name, [], v.dtype, payload))
                continue
            dims = [resize.get(n, n) for n in v.dims]
            if v.dtype != _FLOAT16:
                raise ValueError(f"{name}: expected float16 weights")
            if name.endswith("gamma"):
                values = np.ones(dims, dtype=np.float16)
            else:
                values = (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)
            out.append(Variable(name, dims, v.dtype, values.tobytes()))
    out.sort(key=lambda v: v.name)
    layer_aliases = []
    for alias, target in aliases:
        match = re.fullmatch(r"(encoder|decoder)/layer_(\d+)/(.*)", alias)
        if match is None:
            layer_aliases.append((alias, target))
        elif match.group(2) == "0":
            for i in range(size["layers"]):
                layer_aliases.append(
                    (
                        f"{match.group(1)}/layer_{i}/{match.group(3)}",
                        target.replace("layer_0", f"layer_{i}"),
                    )
                )
    return write_table(spec, revision, out, layer_aliases)


def utterances(count: int, seed: int) -> list[tuple[npt.NDArray[np.int16], int]]:
    """Card groups of four and codes of three, said by the accuracy bench's voices, clean and at
    10 dB SNR (half each): (samples, digit count)."""
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    said = []
    for i in range(count):
        length = 3 if i % 3 == 2 else 4
        digits = "".join(str(rng.randint(0, 9)) for _ in range(length))
        voice = VOICES[i % len(VOICES)] + VARIANTS[(i // 2) % len(VARIANTS)]
        speaker = Speaker(voice, rng.randint(130, 190), 0, 10.0 if i % 2 else None)
        said.append((render(" ".join(digits), speaker, nprng), length))
    return said


def _memory() -> dict[str, int]:
    """This process's resident memory now and at its peak (kB)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


class _Timed:
    """The CTranslate2 model, its encoder's and beam searches' CPU counted apart."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.spent = {"encode": 0.0, "generate": 0.0}
        self.steps = 0  # tokens of the best hypotheses
        self.decodes = 0

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        result = self._model.encode(*args, **kwargs)
        self.spent["encode"] += time.process_time() - started
        return result

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        result = self._model.generate(*args, **kwargs)
        self.spent["generate"] += time.process_time() - started
        self.steps += len(result[0].sequences_ids[0]) if result[0].sequences_ids else 0
        self.decodes += 1
        return result


def measure(
    model: str, beam: int, pad: int, said: list[tuple[npt.NDArray[np.int16], int]]
) -> dict[str, Any]:
    """In a process of its own: load the recogniser with `model`, recognise every utterance
    (beam width `beam`, `pad` frames of silence after the speech)."""
    whisper.BEAM = beam
    whisper.PAD_FRAMES = pad
    if model != "base":
        # the recogniser's own loading (bytes in memory, hash check, int8, one thread), handed
        # the shaped model instead of base's weights (base's other files)
        shaped = shaped_model(_base_weights(), BASE if model == "base-shape" else SMALL)
        whisper.MODELS[model] = dataclasses.replace(
            whisper.BASE,
            name=model,
            read=lambda: {**whisper.BASE.read(), "model.bin": shaped},
            sha256={**whisper.BASE.sha256, "model.bin": hashlib.sha256(shaped).hexdigest()},
            weights_bytes=len(shaped),
        )
    size = whisper.MODELS[model].weights_bytes
    started = time.perf_counter()
    recogniser = whisper.WhisperDigitRecogniser(model=model)
    if model != "base":
        del shaped
        del whisper.MODELS[model]
    load_s = time.perf_counter() - started
    loaded = _memory()
    timed = _Timed(recogniser._model)
    recogniser._model = timed
    cpu = 0.0
    speech = 0.0
    for samples, length in said:
        before = time.process_time()
        recogniser.recognise(samples, length=length)
        cpu += time.process_time() - before
        speech += len(samples) / RATE
    after = _memory()
    return {
        "model": model,
        "beam": beam,
        "pad": pad,
        "bytes": size,
        "load_s": load_s,
        "cpu_per_s": cpu / speech,
        "encoder_share": timed.spent["encode"] / cpu,
        "steps_per_decode": timed.steps / max(timed.decodes, 1),
        "speech_s": speech,
        "rss_mb": after["VmRSS"] / 1024,
        "loaded_rss_mb": loaded["VmRSS"] / 1024,
        "peak_mb": after["VmHWM"] / 1024,
    }


def inspect(path: str) -> None:
    """How a (possibly truncated) Whisper small model.bin compares with the layout that gives
    the published size: variables held, where it ends, names the layout does not have."""
    data = Path(path).read_bytes()
    found = read_table(data, strict=False)
    layout = read_table(shaped_model(_base_weights(), SMALL))
    shapes = {v.name: (v.dims, v.dtype, len(v.payload)) for v in layout.variables}
    print(f"{path}: {len(data):,} bytes, {found.spec} revision {found.revision}")
    print(
        f"variables: {found.declared} declared ({len(layout.variables)} in the layout of "
        f"{SYSTRAN_SMALL_BYTES:,} bytes), {len(found.variables)} complete"
        + (f", the file ends inside {found.cut_in}" if found.cut_in else "")
    )
    extra = [v.name for v in found.variables if v.name not in shapes]
    other = [
        v.name
        for v in found.variables
        if v.name in shapes and (v.dims, v.dtype, len(v.payload)) != shapes[v.name]
    ]
    print(f"not in the layout: {extra or 'none'}; other shape or type: {other or 'none'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--utterances", type=int, default=48)
    parser.add_argument("--beams", default="16,8,4", help="beam widths tried at small's size")
    parser.add_argument(
        "--pads", default="50", help="padding (frames of 10 ms) also tried at small's size, beam 16"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--inspect", metavar="MODEL_BIN", help="only compare a model.bin with small's layout"
    )
    args = parser.parse_args()
    if args.inspect:
        inspect(args.inspect)
        return 0
    said = utterances(args.utterances, args.seed)
    beam, pad = whisper.BEAM, whisper.PAD_FRAMES
    runs = [("base", beam, pad), ("base-shape", beam, pad)]
    runs += [("small-shape", int(b), pad) for b in args.beams.split(",")]
    runs += [("small-shape", beam, int(p)) for p in args.pads.split(",") if p]
    started = time.perf_counter()
    rows = []
    context = multiprocessing.get_context("spawn")
    for run in runs:
        with context.Pool(1) as pool:
            rows.append(pool.apply(measure, (*run, said)))
    wall = time.perf_counter() - started
    speech = rows[0]["speech_s"]
    print(
        f"# whisper cost by size: {len(said)} utterances ({speech:.0f} s of speech, groups of 4 "
        f"and codes of 3, half at 10 dB), seed {args.seed}, {wall:.0f} s wall, 1 process at a time"
    )
    print(
        "| model | weights | beam | padding | model.bin bytes | CPU s per s of speech "
        "| of it the encoder | tokens a decode "
        "| RSS after load | RSS after run | peak RSS | load s |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        kind = "real (hash-checked)" if row["model"] == "base" else "random"
        print(
            f"| {row['model']} | {kind} | {row['beam']} | {row['pad'] / 100:.1f} s "
            f"| {row['bytes']:,} | {row['cpu_per_s']:.3f} | {row['encoder_share']:.0%} "
            f"| {row['steps_per_decode']:.1f} "
            f"| {row['loaded_rss_mb']:.0f} MB | {row['rss_mb']:.0f} MB | {row['peak_mb']:.0f} MB "
            f"| {row['load_s']:.1f} |"
        )
    small = [row for row in rows if row["model"] == "small-shape"]
    if small and small[0]["bytes"] != SYSTRAN_SMALL_BYTES:
        size = small[0]["bytes"]
        print(f"WARNING: the small-shaped model.bin is {size:,} bytes, not {SYSTRAN_SMALL_BYTES:,}")
    elif small:
        print(f"small-shaped model.bin: {SYSTRAN_SMALL_BYTES:,} bytes, the published size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
