"""Benchmark: RFC 4733 receiver throughput and G.711 decoding, batched vs per frame.

Run:  .venv/bin/python bench/bench_rfc4733.py [--quick]

Prints, on one core:
* telephone-event packets handled per second by `Rfc4733Receiver.receive` on a realistic stream
  (each press: 7 updates then the end packet 3 times, as SIPp and most phones send), next to the
  same-run baseline of only `struct.unpack` of the same packets, and the ratio; also the full
  per-packet path with `RtpPacket.parse` in front;
* G.711 decoding of 160-byte (20 ms) frames: 1000 channels in one table lookup versus one
  `decode()` call per frame, and the ratio.

The whole run stays well under 30 s (about 5 s on a 2-core box).
"""

from __future__ import annotations

import argparse
import shlex
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spg_media.dtmf.rfc4733 import Rfc4733Receiver
from spg_media.rtp import g711
from spg_media.rtp.packet import RtpPacket, build_rtp

EVENT_PT = 101


def press_stream(presses: int) -> list[tuple[bytes, float]]:
    """RTP packets of `presses` key presses with their arrival times (20 ms apart)."""
    packets: list[tuple[bytes, float]] = []
    seq, ts, now = 1000, 160_000, 0.0
    for n in range(presses):
        event = n % 12
        for i in range(7):
            payload = struct.pack("!BBH", event, 10, 160 * i)
            packets.append((build_rtp(EVENT_PT, seq, ts, 0x1234, payload, i == 0), now))
            seq, now = (seq + 1) & 0xFFFF, now + 0.02
        end = struct.pack("!BBH", event, 0x80 | 10, 160 * 7)
        for _ in range(3):
            packets.append((build_rtp(EVENT_PT, seq, ts, 0x1234, end), now))
        seq, ts, now = (seq + 1) & 0xFFFF, (ts + 160 * 15) & 0xFFFFFFFF, now + 0.16
    return packets


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """Fastest wall time of `repeats` runs (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def bench_receiver(presses: int, repeats: int) -> None:
    stream = press_stream(presses)
    fields = []
    for data, now in stream:
        header = struct.unpack_from("!BBHI", data)
        fields.append((data[12:], header[2], header[3], bool(header[1] & 0x80), now))
    unpack = struct.Struct("!BBHIIBBH").unpack

    def baseline() -> None:
        for data, _now in stream:
            unpack(data)

    def receiver_only() -> None:
        receiver = Rfc4733Receiver()
        receive = receiver.receive
        for payload, seq, ts, marker, now in fields:
            receive(payload, seq, ts, marker, now)

    def parse_and_receive() -> None:
        receiver = Rfc4733Receiver()
        receive = receiver.receive
        for data, now in stream:
            packet = RtpPacket.parse(data)
            receive(packet.payload, packet.sequence, packet.timestamp, packet.marker, now)

    check = Rfc4733Receiver()
    starts = sum(
        1 for p, s, t, m, n in fields for e in check.receive(p, s, t, m, n) if e.kind == "start"
    )
    assert starts == presses, f"benchmark stream decoded {starts} presses, expected {presses}"

    n = len(stream)
    t_base = best_of(repeats, baseline)
    t_recv = best_of(repeats, receiver_only)
    t_full = best_of(repeats, parse_and_receive)
    print(f"RFC 4733: {presses} presses, {n} packets (7 updates + 3 end packets per press)")
    print(f"  struct.unpack only (baseline)   {n / t_base:>12,.0f} packets/s")
    print(
        f"  Rfc4733Receiver.receive          {n / t_recv:>12,.0f} packets/s"
        f"   {t_recv / t_base:5.1f}x the baseline's cost"
    )
    print(
        f"  RtpPacket.parse + receive        {n / t_full:>12,.0f} packets/s"
        f"   {t_full / t_base:5.1f}x the baseline's cost"
    )


def bench_g711(channels: int, ticks: int, repeats: int) -> None:
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, size=(ticks, channels, 160), dtype=np.uint8)
    frame_bytes = [[frames[t, c].tobytes() for c in range(channels)] for t in range(ticks)]
    batch_bytes = [b"".join(row) for row in frame_bytes]  # one tick's payloads, back to back

    def per_frame() -> None:
        for row in frame_bytes:
            for payload in row:
                g711.decode(payload, "PCMA")

    def batched_array() -> None:
        for t in range(ticks):
            g711.decode_array(frames[t], "PCMA")

    def batched_bytes() -> None:
        for joined in batch_bytes:
            g711.decode(joined, "PCMA").reshape(channels, 160)

    assert np.array_equal(
        g711.decode_array(frames[0], "PCMA")[3], g711.decode(frame_bytes[0][3], "PCMA")
    )
    total = channels * ticks
    t_frame = best_of(repeats, per_frame)
    t_array = best_of(repeats, batched_array)
    t_bytes = best_of(repeats, batched_bytes)
    print(f"G.711 decode: {channels} channels x 160 bytes, {ticks} ticks ({total} frames)")
    print(f"  per frame, decode()              {total / t_frame:>12,.0f} frames/s")
    print(
        f"  batched, one lookup per tick     {total / t_array:>12,.0f} frames/s"
        f"   {t_frame / t_array:5.1f}x faster than per frame"
    )
    print(
        f"  batched from joined bytes        {total / t_bytes:>12,.0f} frames/s"
        f"   {t_frame / t_bytes:5.1f}x faster than per frame"
    )
    per_tick_ms = t_array / ticks * 1000
    print(f"  one 20 ms tick of {channels} channels, batched: {per_tick_ms:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run, for a smoke test")
    args = parser.parse_args()
    presses, repeats, ticks = (200, 2, 5) if args.quick else (3000, 5, 50)
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, one core, best of {repeats}")
    bench_receiver(presses, repeats)
    bench_g711(1000, ticks, repeats)


if __name__ == "__main__":
    main()
