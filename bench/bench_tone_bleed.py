"""Tone bleed in agent-assisted mode: how much of a customer's key press reaches the agent.

Run:  .venv/bin/python bench/bench_tone_bleed.py [--digits 1000] [--speech-seconds 120]
          [--delay-clicks 150] [--delay-direction both|customer|agent] [--delay-only]
          [--mask tone|silence|noise] [--noise-dbm0 -65] [--keys-only] [--seed 2026]

1. **Keyed digits.** `--digits` key presses in 20 streams (random key, level 0 to -30 dBm0
   for the pair, twist -4 to +8 dB, each tone up to ±1.5 % off frequency, 40 to 120 ms long,
   60 to 150 ms apart); half of them right after speech (espeak-ng, 0 to 10 ms between the
   speech's end and the tone), over white noise at -65 dBm0 (`--noise-dbm0`). Each stream is
   the customer leg (PCMU) of a bridge in the real `MediaEngine` (sessions fed RTP a tick at a
   time, no sockets, the tick's in-band and relay steps called by hand, as
   tests/unit/test_media_bridge.py does);
   the agent leg (PCMA) sends what the engine gives it, mask "tone". On the agent's audio:
   the DTMF band (650-1700 Hz, 6th-order Butterworth, zero phase) in 5 ms windows slid a sample
   at a time over each key's interval, the longest stretch above -40 dBm0 and the loudest
   window; and the digits spg-media's in-band detector and spandsp's `dtmf_rx` read in it
   (in the customer's audio: all of them; in the agent's: none expected).
   Baseline, same run: masking from the moment a detector knows (no look-ahead): the delay
   from each tone's onset to the in-band detector's start event, fed 20 ms a tick: what such a
   design lets through.
2. **Speech.** `--speech-seconds` of espeak-ng speech (8 languages, many voices), with the same
   noise, through the masker: the share of its active 5 ms blocks (above -50 dBm0) that are
   masked, and how many masked stretches a minute.
3. **Added one-way delay, measured.** A `MediaEngine` on loopback with two real sessions
   bridged (uvloop, its own 20 ms tick); a sender plays the customer (50 packets/s, a click in
   one packet in 25; before each click its phase against the node's tick moves by a random
   0-20 ms, so every phase is measured), a receiver the agent, both in a child process. For
   each click: (the agent packet's arrival + the click's position in it) - (the customer
   packet's departure + its position in it). Then the other way (`--delay-direction`): the
   sender plays the agent (PCMA), the receiver the customer (PCMU); that direction is masked
   too, with the same look-ahead.

Needs espeak-ng; spandsp (libspandsp2) for its column, skipped when missing.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import spandsp
from inband_accuracy import dbm0_power, speech, to_int16, tone

from spg_media.dtmf.inband import KEYS, InbandDetector, scan
from spg_media.rtp.g711 import decode, encode
from spg_media.rtp.masking import (
    FLOOR_MIN,
    GATE_POWER,
    LOOKAHEAD,
    ToneMasker,
    screen,
    window_energy,
)
from spg_media.rtp.packet import RtpPacket, build_rtp
from spg_media.rtp.session import MediaEngine, MediaSession

RATE = 8000
FRAME = 160
STREAMS = 20
BAND = (650.0, 1700.0)
BLEED_DBM0 = -40.0
WINDOW = 40  # 5 ms
CUSTOMER = ("127.0.0.1", 40000)
AGENT = ("127.0.0.1", 40002)

Samples = npt.NDArray[np.int16]


# ---- 1. keyed digits -----------------------------------------------------------------------------


def keyed_stream(
    count: int, rng: np.random.Generator, talk: npt.NDArray[np.float64], noise_dbm0: float
) -> tuple[npt.NDArray[np.float64], list[tuple[int, int, str]]]:
    """`count` keys as described in the module docstring: the audio and (onset, end, key)."""
    parts: list[npt.NDArray[np.float64]] = [np.zeros(1600)]
    at = 1600
    keys: list[tuple[int, int, str]] = []
    for index in range(count):
        if index % 2:  # speech right before the key
            length = int(rng.integers(2400, 8000))
            start = int(rng.integers(0, talk.size - length))
            parts.append(talk[start : start + length])
            gap = int(rng.integers(0, 81))
            parts.append(np.zeros(gap))
            at += length + gap
        key = KEYS[int(rng.integers(16))]
        ms = float(rng.uniform(40, 120))
        level = float(rng.uniform(-30, 0))
        twist = float(rng.uniform(-4, 8))
        offset = (float(rng.uniform(-0.015, 0.015)), float(rng.uniform(-0.015, 0.015)))
        sound = tone(key, ms, rng, level=level, twist=twist, offset=offset)
        parts.append(sound)
        keys.append((at, at + sound.size, key))
        after = int(rng.integers(480, 1200))
        parts.append(np.zeros(after))
        at += sound.size + after
    parts.append(np.zeros(4000))
    audio = np.concatenate(parts)
    audio += rng.standard_normal(audio.size) * np.sqrt(dbm0_power(noise_dbm0))
    return audio, keys


def bridge_streams(streams: list[Samples], mask: str) -> list[Samples]:
    """Each stream as the customer leg of a bridge in one MediaEngine; the agents' audio."""
    loop = asyncio.new_event_loop()
    engine = MediaEngine("127.0.0.1", 40000, 40000 + 4 * len(streams) + 4)
    engine._loop = loop
    pairs = []
    for index in range(len(streams)):
        customer = MediaSession(codec="PCMU", remote=CUSTOMER, dtmf_payload_type=101)
        agent = MediaSession(codec="PCMA", remote=AGENT, dtmf_payload_type=101)
        engine.attach(50000 + 4 * index, customer)
        engine.attach(50002 + 4 * index, agent)
        engine.bridge(50000 + 4 * index, 50002 + 4 * index, mask)
        pairs.append((customer, agent))
    longest = max(s.size for s in streams)
    ticks = (longest + LOOKAHEAD) // FRAME + 1
    heard: list[list[Samples]] = [[] for _ in streams]
    for tick in range(ticks):
        now = tick * 0.02
        for (customer, _agent), samples in zip(pairs, streams, strict=True):
            part = samples[tick * FRAME : (tick + 1) * FRAME]
            part = np.concatenate([part, np.zeros(FRAME - part.size, dtype=np.int16)])
            packet = build_rtp(0, tick & 0xFFFF, tick * FRAME, 0x55, encode(part, "PCMU"))
            customer.receive(packet, CUSTOMER, now)
        engine._detect_inband()
        engine._relay(now)
        for index, (_customer, agent) in enumerate(pairs):
            sent = RtpPacket.parse(agent.next_packet(now) or b"")
            heard[index].append(decode(sent.payload, "PCMA"))
    for index in range(len(streams)):
        engine.close(50000 + 4 * index)
        engine.close(50002 + 4 * index)
    if engine._tick_task is not None:
        engine._tick_task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    return [np.concatenate(h) for h in heard]


def band_power(audio: Samples) -> npt.NDArray[np.float64]:
    """Power in the DTMF band of every 5 ms window (window i covers samples i..i+39)."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(6, BAND, btype="bandpass", fs=RATE, output="sos")
    band = sosfiltfilt(sos, audio.astype(np.float64))
    squares = np.concatenate([[0.0], np.cumsum(band**2)])
    return np.asarray((squares[WINDOW:] - squares[:-WINDOW]) / WINDOW)


def onset_to_detection(stream: Samples, keys: list[tuple[int, int, str]]) -> list[float]:
    """For each key the detector reads: ms from its onset to the start event, fed 20 ms a
    call (what a mask that starts when a detector knows would let through)."""
    detector = InbandDetector()
    slot = detector.add_channel()
    reported: list[float] = []  # sample position at which each start was reported
    for begin in range(0, stream.size - FRAME + 1, FRAME):
        chunk = stream[None, begin : begin + FRAME]
        for _slot, event in detector.process([slot], chunk, (begin + FRAME) / RATE):
            if event.kind == "start":
                reported.append(begin + FRAME)
    delays = []
    for onset, end, _key in keys:
        found = [r for r in reported if onset < r <= end + 400]
        if found:
            delays.append((found[0] - onset) / RATE * 1000)
    return delays


def run_keyed(args: argparse.Namespace, talk: npt.NDArray[np.float64]) -> None:
    rng = np.random.default_rng(args.seed)
    per_stream = -(-args.digits // STREAMS)
    streams: list[Samples] = []
    all_keys: list[list[tuple[int, int, str]]] = []
    remaining = args.digits
    for _ in range(STREAMS):
        audio, keys = keyed_stream(min(per_stream, remaining), rng, talk, args.noise_dbm0)
        remaining -= len(keys)
        streams.append(to_int16(audio))
        all_keys.append(keys)
    customer_audio = [decode(encode(s, "PCMU"), "PCMU") for s in streams]  # what is keyed
    started = time.perf_counter()
    heard = bridge_streams(streams, args.mask)
    elapsed = time.perf_counter() - started
    # The agent's audio, realigned: the sans-IO path delays it by exactly the look-ahead
    # (checked here on the speech before the keys, by cross-correlation).
    lags = []
    for said, got in zip(customer_audio, heard, strict=True):
        probe = said[1600:9600].astype(np.float64)
        scores = [np.dot(probe, got[1600 + lag : 9600 + lag]) for lag in range(0, 480)]
        lags.append(int(np.argmax(scores)))
    threshold = dbm0_power(BLEED_DBM0)
    longest_ms = 0.0
    loudest = -np.inf
    over = 0
    for keys, got in zip(all_keys, heard, strict=True):
        aligned = got[LOOKAHEAD:]
        power = band_power(aligned)
        for onset, end, _key in keys:
            windows = power[onset : end - WINDOW + 1]
            loudest = max(loudest, float(windows.max()))
            above = np.concatenate([[False], windows > threshold, [False]]).astype(np.int8)
            edges = np.flatnonzero(np.diff(above))
            if edges.size:
                over += 1
                run = int(np.max(edges[1::2] - edges[::2]))
                longest_ms = max(longest_ms, (run + WINDOW - 1) / RATE * 1000)
    digits = sum(len(k) for k in all_keys)
    in_ours = sum(len(scan(s)) for s in customer_audio)
    out_ours = sum(len(scan(h[LOOKAHEAD:])) for h in heard)
    have_spandsp = spandsp.available()
    if have_spandsp:
        in_sp = sum(len(spandsp.spandsp_scan(s)) for s in customer_audio)
        out_sp = sum(len(spandsp.spandsp_scan(h)) for h in heard)
    delays = sorted(d for s, k in zip(customer_audio, all_keys, strict=True)
                    for d in onset_to_detection(s, k))  # fmt: skip
    print(f"## Keyed digits: {digits} keys in {STREAMS} bridged calls, mask {args.mask!r}, "
          f"white noise at {args.noise_dbm0:g} dBm0")  # fmt: skip
    print(f"(bridged through MediaEngine in {elapsed:.1f} s; look-ahead delay found by "
          f"cross-correlation: {sorted(set(lags))} samples, expected {LOOKAHEAD})")  # fmt: skip
    print()
    print("| measure | masked (this tree) | baseline: mask from detection |")
    print("|---|---|---|")
    det50 = delays[len(delays) // 2] if delays else float("nan")
    det_max = delays[-1] if delays else float("nan")
    print(
        f"| longest stretch of DTMF-band energy > {BLEED_DBM0:g} dBm0 at the agent | "
        f"{longest_ms:.1f} ms ({over} of {digits} keys with any) | "
        f"{det50:.1f} ms median, {det_max:.1f} ms max (onset to start event, "
        f"{len(delays)} of {digits} keys detected) |"
    )
    loud = 10 * np.log10(loudest / dbm0_power(0.0)) if loudest > 0 else -np.inf
    print(f"| loudest 5 ms of DTMF band during a key at the agent | {loud:.1f} dBm0 | — |")
    print(f"| digits read in the customer's audio / the agent's: spg-media `scan` | "
          f"{in_ours} / {out_ours} | — |")  # fmt: skip
    if have_spandsp:
        print(f"| ... spandsp `dtmf_rx` | {in_sp} / {out_sp} | — |")
    else:
        print("| ... spandsp `dtmf_rx` | not installed | — |")
    print()


# ---- 2. speech -----------------------------------------------------------------------------------


def run_speech(args: argparse.Namespace, talk: npt.NDArray[np.float64]) -> None:
    noise = np.random.default_rng(args.seed).standard_normal(talk.size)
    noisy = talk + noise * np.sqrt(dbm0_power(args.noise_dbm0))
    samples = decode(encode(to_int16(noisy), "PCMU"), "PCMU")
    masker = ToneMasker()
    slot = masker.add_channel("silence")
    usable = samples.size - samples.size % FRAME
    padded = np.concatenate([samples[:usable], np.zeros(LOOKAHEAD + FRAME, dtype=np.int16)])
    chunks = range(0, padded.size - FRAME + 1, FRAME)
    out = np.concatenate([masker.process([slot], padded[None, i : i + FRAME])[0] for i in chunks])
    out = out[LOOKAHEAD : LOOKAHEAD + usable]
    blocks_in = samples[:usable].reshape(-1, WINDOW).astype(np.float64)
    blocks_out = out.reshape(-1, WINDOW)
    active = np.mean(blocks_in**2, axis=1) > dbm0_power(-50.0)
    changed = np.any(blocks_out != samples[:usable].reshape(-1, WINDOW), axis=1)
    stretches = int(np.sum(np.diff(np.concatenate([[0], changed.astype(np.int8)])) == 1))
    minutes = usable / RATE / 60
    unchanged = np.array_equal(out[~np.repeat(changed, WINDOW)],
                               samples[:usable][~np.repeat(changed, WINDOW)])  # fmt: skip
    print(f"## Speech: {usable / RATE:.0f} s of espeak-ng speech (8 languages) through the masker, "
          f"white noise at {args.noise_dbm0:g} dBm0")  # fmt: skip
    print()
    print("| active 5 ms blocks | masked | share | masked stretches a minute | rest bit-exact |")
    print("|---|---|---|---|---|")
    print(
        f"| {int(active.sum())} | {int((changed & active).sum())} | "
        f"{(changed & active).sum() / max(active.sum(), 1) * 100:.2f} % | "
        f"{stretches / minutes:.1f} | {'yes' if unchanged else 'NO'} |"
    )
    print()
    # The masker's cheap first stage (masking.screen): how many of the speech's windows above
    # the energy gate it passes on to the full 40-probe test (the floor: the line's quietest)
    view = np.lib.stride_tricks.sliding_window_view(samples[:usable], 4 * WINDOW)[::WINDOW]
    windows = view.astype(np.float32)
    energy = window_energy(windows)
    loud = energy >= GATE_POWER
    floor = max(float(energy.min()), FLOOR_MIN)
    passed = screen(windows[loud], energy[loud] - np.minimum(floor, 0.5 * energy[loud]))
    print(f"The masker's screen passed {passed.mean() * 100:.1f} % of the speech's "
          f"{int(loud.sum())} windows above the energy gate to the full test.")  # fmt: skip
    print()


# ---- 3. added delay over sockets -----------------------------------------------------------------


def clicker(
    sender: socket.socket,
    receiver: socket.socket,
    conn: Connection,
    clicks: int,
    codecs: tuple[str, str],
) -> None:
    """The child process: plays the leg that talks (sender, in codecs[0]) to the node's port it
    is told, and the other leg (receiver, in codecs[1]); sends back each click's added delay,
    ms."""
    send_codec, receive_codec = codecs
    talker_port = conn.recv()
    receiver.settimeout(0.5)
    sent: list[tuple[float, int]] = []  # departure of the click's packet, its position
    arrived: list[tuple[float, int]] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                data = receiver.recv(2048)
            except OSError:
                continue
            at = time.monotonic()
            samples = decode(RtpPacket.parse(data).payload, receive_codec)
            loud = np.flatnonzero(np.abs(samples) > 8000)
            if loud.size:
                arrived.append((at, int(loud[0])))

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    rng = np.random.default_rng(1)
    start = time.monotonic()
    for n in range(clicks * 25 + 50):
        if n % 25 == 0:  # a new phase against the node's tick before each click
            start += float(rng.uniform(0, 0.02))
        due = start + n * 0.02
        time.sleep(max(0.0, due - time.monotonic()))
        samples = np.zeros(FRAME, dtype=np.int16)
        if n % 25 == 10:
            position = int(rng.integers(0, FRAME - 4))
            samples[position : position + 3] = 20000
        payload = encode(samples, send_codec)
        pt = 0 if send_codec == "PCMU" else 8
        sender.sendto(build_rtp(pt, n & 0xFFFF, n * FRAME, 0x99, payload),
                      ("127.0.0.1", talker_port))  # fmt: skip
        if n % 25 == 10:
            sent.append((time.monotonic(), position))
    time.sleep(0.3)
    stop.set()
    reader.join()
    delays = []
    for t_sent, p_sent in sent:  # each click: the first packet carrying it after it left
        later = [(t, p) for t, p in arrived if 0 <= t - t_sent < 0.5]
        if later:
            t_got, p_got = later[0]
            delays.append(((t_got + p_got / RATE) - (t_sent + p_sent / RATE)) * 1000)
    conn.send((delays, len(sent) - len(delays)))


def run_delay(args: argparse.Namespace, direction: str) -> None:
    """The added one-way delay of `direction` ("customer": customer → agent, or "agent")."""
    import multiprocessing

    import uvloop

    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    ours, theirs = multiprocessing.Pipe()
    # Forked before the node's loop starts: the callers' threads never share its GIL.
    from_agent = direction == "agent"
    codecs = ("PCMA", "PCMU") if from_agent else ("PCMU", "PCMA")
    child = multiprocessing.get_context("fork").Process(
        target=clicker, args=(sender, receiver, theirs, args.delay_clicks, codecs)
    )
    child.start()
    outcome: list[tuple[list[float], int]] = []

    async def main() -> None:
        base = 30000 + 2 * int(np.random.default_rng().integers(0, 5000))
        engine = MediaEngine("127.0.0.1", base, base + 200)
        customer_port = await engine.open()
        agent_port = await engine.open()
        customer_peer, agent_peer = (receiver, sender) if from_agent else (sender, receiver)
        engine.attach(
            customer_port,
            MediaSession(codec="PCMU", remote=customer_peer.getsockname(), dtmf_payload_type=101),
        )
        engine.attach(
            agent_port,
            MediaSession(codec="PCMA", remote=agent_peer.getsockname(), dtmf_payload_type=101),
        )
        engine.bridge(customer_port, agent_port, "tone")
        ours.send(agent_port if from_agent else customer_port)
        outcome.append(await asyncio.to_thread(ours.recv))
        await engine.aclose()

    try:
        uvloop.run(main())
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
        sender.close()
        receiver.close()
    results, lost = outcome[0]
    missing = [lost]
    results.sort()
    print("slowest:", [round(r, 1) for r in results[-12:]])
    way = "agent → customer" if from_agent else "customer → agent"
    print(f"## Added one-way delay, {way}, over loopback ({len(results)} clicks, "
          f"{missing[0]} not received)")  # fmt: skip
    print()
    print("| p50 | p99 | max | of which the look-ahead |")
    print("|---|---|---|---|")
    print(
        f"| {results[len(results) // 2]:.1f} ms | {results[int(len(results) * 0.99)]:.1f} ms | "
        f"{results[-1]:.1f} ms | {LOOKAHEAD / RATE * 1000:.0f} ms |"
    )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", type=int, default=1000)
    parser.add_argument("--speech-seconds", type=float, default=120.0)
    parser.add_argument("--delay-clicks", type=int, default=150)
    parser.add_argument("--mask", default="tone", choices=("tone", "silence", "noise"))
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--noise-dbm0", type=float, default=-65.0, help="the line's noise")
    parser.add_argument("--keys-only", action="store_true", help="part 1 only")
    parser.add_argument("--delay-only", action="store_true", help="part 3 only")
    parser.add_argument(
        "--delay-direction", default="both", choices=("both", "customer", "agent"),
        help="part 3: customer → agent, agent → customer, or both",
    )  # fmt: skip
    args = parser.parse_args()
    if not args.delay_only:
        talk = speech(max(args.speech_seconds, 60.0), seed=args.seed)
        run_keyed(args, talk)
        if args.keys_only:
            return
        run_speech(args, talk[: int(args.speech_seconds * RATE)])
    if args.delay_clicks:
        for direction in ("customer", "agent"):
            if args.delay_direction in ("both", direction):
                run_delay(args, direction)


if __name__ == "__main__":
    main()
