"""MediaEngine.open: RTP ports drawn at random from the range, in even/odd pairs, every free pair
reachable, pairs taken by another process skipped. Loopback sockets, a seeded Random."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
from collections import Counter

import pytest

from spg_media.rtp.session import MediaEngine, PortRangeExhausted

# 20 pairs, LOW/LOW+1 ... HIGH-1/HIGH: a window of 40 ports that were all free when the test
# began (chosen again for each test: other tests and their peers run beside this one)
LOW, HIGH = 31300, 31339


def all_free(ports: range) -> bool:
    with contextlib.ExitStack() as stack:
        for port in ports:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@pytest.fixture(autouse=True)
def free_window() -> None:
    global LOW, HIGH
    rng = random.Random()
    for _ in range(200):  # below the ephemeral ports that other tests' peers are given
        low = 2 * rng.randrange(15000, 16300)
        if all_free(range(low, low + 40)):
            LOW, HIGH = low, low + 39
            return
    pytest.fail("no window of 40 free UDP ports in 30000-32639")


def bound_ports(engine: MediaEngine) -> set[int]:
    return {sock.getsockname()[1] for pair in engine.sockets.values() for sock in pair}


def test_ports_are_even_with_rtcp_above_and_not_handed_out_in_order() -> None:
    async def body() -> list[int]:
        engine = MediaEngine("127.0.0.1", LOW, HIGH, rng=random.Random(7))
        got = [await engine.open() for _ in range(6)]
        assert bound_ports(engine) == {p for port in got for p in (port, port + 1)}
        await engine.aclose()
        return got

    got = asyncio.run(body())
    assert all(LOW <= port < HIGH and port % 2 == 0 for port in got)
    assert len(set(got)) == 6
    assert got != sorted(got)  # the old engine handed out 31300, 31302, 31304, ...


def test_over_many_calls_every_pair_is_drawn_and_the_next_port_is_not_guessable() -> None:
    async def body() -> list[int]:
        engine = MediaEngine("127.0.0.1", LOW, HIGH, rng=random.Random(11))
        got = []
        for _ in range(400):  # one call at a time: open, then close
            port = await engine.open()
            got.append(port)
            engine.close(port)
        await engine.aclose()
        return got

    got = asyncio.run(body())
    counts = Counter(got)
    assert set(counts) == set(range(LOW, HIGH, 2))  # all 20 pairs
    assert min(counts.values()) >= 8  # 20 expected each: no pair starved
    following = sum(1 for a, b in itertools.pairwise(got) if b == a + 2)
    assert following < 60  # ~5 % by chance; the old engine's every one


@pytest.mark.parametrize("seed", range(5))
def test_the_last_free_pair_is_found_and_taken_ports_are_skipped(seed: int) -> None:
    """Another process holds one port of every pair but one: open() finds that pair."""
    rng = random.Random(seed)
    free_pair = LOW + 2 * rng.randrange(20)

    async def body() -> tuple[int, bool]:
        with contextlib.ExitStack() as stack:
            for pair in range(LOW, HIGH, 2):
                if pair == free_pair:
                    continue
                squatter = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                squatter.bind(("127.0.0.1", pair + rng.randrange(2)))  # its RTP or RTCP port
            engine = MediaEngine("127.0.0.1", LOW, HIGH, rng=random.Random(seed))
            port = await engine.open()
            try:
                await engine.open()
                exhausted = False
            except PortRangeExhausted:
                exhausted = True
            assert bound_ports(engine) == {free_pair, free_pair + 1}
            await engine.aclose()
            return port, exhausted

    assert asyncio.run(body()) == (free_pair, True)


def test_the_whole_range_fills_up_then_is_exhausted() -> None:
    async def body() -> tuple[list[int], bool]:
        engine = MediaEngine("127.0.0.1", LOW, HIGH, rng=random.Random(3))
        got = [await engine.open() for _ in range(20)]
        try:
            await engine.open()
            exhausted = False
        except PortRangeExhausted:
            exhausted = True
        await engine.aclose()
        return got, exhausted

    got, exhausted = asyncio.run(body())
    assert sorted(got) == list(range(LOW, HIGH, 2)) and exhausted


def test_without_a_seed_the_operating_systems_random_is_used() -> None:
    engine = MediaEngine("127.0.0.1", LOW, HIGH)
    assert isinstance(engine._rng, random.SystemRandom)
