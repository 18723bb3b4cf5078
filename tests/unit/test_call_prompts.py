"""What a call holds while it plays and waits: prompt payloads shared between calls (never one
with card digits), and its inbox.

`rtp.prompts` alone (cutting, the key, the bounded cache), then `Call._render_and_play` on
real calls of a running node (UDP on loopback, no prompts rendered at start) with a counting
stand-in for the prompt library, and the `Inbox` on a real event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_call_payment import SOURCE, invite, running_node
from test_call_payment import node_config as payment_node_config

from spg_media.call import Call, Inbox, KeyPressed, PromptDone, TimerDue
from spg_media.payment.journey import Play, PromptPart
from spg_media.payment.model import SecretDigits
from spg_media.rtp.g711 import SILENCE, encode
from spg_media.rtp.prompts import (
    CutAudio,
    EncodedClips,
    PromptPackets,
    Spliced,
    packetise,
    shared_key,
)
from spg_media.rtp.session import MediaSession

# ---- rtp.prompts ---------------------------------------------------------------------------------


def test_packetise_cuts_per_packet_and_pads_the_last_with_the_codecs_silence() -> None:
    payloads = packetise(b"\x01" * 300, 160, "PCMA")
    assert [len(p) for p in payloads] == [160, 160]
    assert payloads[1] == b"\x01" * 140 + bytes([SILENCE["PCMA"]]) * 20
    assert packetise(b"\x02" * 320, 160, "PCMU") == (b"\x02" * 160, b"\x02" * 160)
    assert packetise(b"", 160, "PCMU") == ()


def test_cut_audio_gives_packetises_payloads_from_one_object() -> None:
    audio = bytes(range(256)) * 2 + b"\x05" * 100  # 612 bytes: the last packet padded
    cut = CutAudio(audio, 160, "PCMA")
    assert len(cut) == 4 and list(cut) == list(packetise(audio, 160, "PCMA"))
    assert cut[-1] == cut[3] and cut[1:3] == list(packetise(audio, 160, "PCMA"))[1:3]
    assert b"".join(cut[2:]) == b"".join(packetise(audio, 160, "PCMA")[2:])
    with pytest.raises(IndexError):
        cut[4]
    with pytest.raises(IndexError):
        cut[-5]
    assert list(CutAudio(b"", 160, "PCMU")) == []
    # the whole prompt is one object, not one per packet
    assert isinstance(cut.audio, bytes) and len(cut.audio) == 640


def test_spliced_pieces_give_packetises_payloads_of_their_join() -> None:
    rng = np.random.default_rng(5)
    pieces = [bytes(rng.integers(0, 256, size, dtype=np.uint8)) for size in (500, 0, 37, 160, 3)]
    joined = b"".join(pieces)
    for n in (80, 160, 240):
        spliced = Spliced(pieces, n, "PCMU")
        assert list(spliced) == list(packetise(joined, n, "PCMU"))
        assert spliced[-1] == packetise(joined, n, "PCMU")[-1]
        assert spliced[1:3] == list(packetise(joined, n, "PCMU"))[1:3]
    assert len(Spliced([], 160, "PCMA")) == 0
    with pytest.raises(IndexError):
        Spliced(pieces, 160, "PCMA")[5]


def test_encoded_clips_encode_a_clip_once_and_stay_within_their_budget() -> None:
    clips = EncodedClips(budget_bytes=10_000)
    one = (np.arange(4000) % 300 * 40).astype(np.int16)
    assert clips.encoded(one, "PCMA") is clips.encoded(one, "PCMA") == encode(one, "PCMA")
    assert clips.encoded(one, "PCMU") == encode(one, "PCMU") and len(clips) == 2
    same_samples = one.copy()  # another array (another clip): its own entry
    assert clips.encoded(same_samples, "PCMA") is not clips.encoded(one, "PCMA")
    assert clips.size_bytes <= clips.budget_bytes and len(clips) == 2
    spliced = clips.splice([one, 400, one], "PCMA", 160)
    audio = encode(np.concatenate([one, np.zeros(400, np.int16), one]), "PCMA")
    assert list(spliced) == list(packetise(audio, 160, "PCMA"))
    for n in range(50):  # one-off clips come and go: the budget holds
        clips.encoded(np.full(1000, n, dtype=np.int16), "PCMU")
    assert clips.size_bytes <= clips.budget_bytes


def test_a_prompt_with_card_digits_has_no_shared_key() -> None:
    fixed = (PromptPart("enter_card"), PromptPart("announce", (("amount", 4990), ("cur", "EUR"))))
    assert shared_key(fixed, "en", "PCMA", 160) == shared_key(fixed, "en", "PCMA", 160)
    assert shared_key(fixed, "en", "PCMA", 160) != shared_key(fixed, "en", "PCMU", 160)
    assert shared_key(fixed, "en", "PCMA", 160) != shared_key(fixed, "es", "PCMA", 160)
    assert shared_key(fixed, "en", "PCMA", 160) != shared_key(fixed, "en", "PCMA", 240)
    secret = PromptPart("confirm", (("last4", "1111"), ("expiry", SecretDigits("1230"))))
    assert shared_key((PromptPart("goodbye"), secret), "en", "PCMA", 160) is None
    heard = PromptPart("heard", (("digits", SecretDigits("4111")), ("group", 1)))
    assert shared_key((heard,), "en", "PCMA", 160) is None


def keep(cache: PromptPackets, key: str, payloads: tuple[bytes, ...]) -> Sequence[bytes]:
    """A prompt's second use, which keeps it."""
    cache.put(key, payloads)
    return cache.put(key, payloads)


def test_the_cache_keeps_one_copy_and_drops_the_least_recently_used_past_its_budget() -> None:
    one = (b"a" * 160,) * 10  # ~2 KiB each as counted
    cache = PromptPackets(budget_bytes=5000)
    assert keep(cache, "one", one) is one
    copy = tuple(bytes(p) for p in one)
    assert cache.put("one", copy) is one  # a third rendering gets the kept copy
    keep(cache, "two", (b"b" * 160,) * 10)
    assert cache.get("one") is one  # "one" is now the most recently used
    keep(cache, "three", (b"c" * 160,) * 10)
    assert cache.get("two") is None and cache.get("one") is one and len(cache) == 2
    assert cache.size_bytes <= cache.budget_bytes
    huge = (b"d" * 160,) * 100
    assert keep(cache, "huge", huge) is huge and cache.get("huge") is None  # played, not kept


def test_a_prompt_used_once_is_not_kept() -> None:
    cache = PromptPackets()
    for n in range(3):  # one call's own prompts (results with their references)
        mine = (f"{n}".encode() * 160,)
        assert cache.put(("approved", n), mine) is mine
    assert len(cache) == 0 and cache.size_bytes == 0
    assert cache.put(("approved", 1), (b"x" * 160,)) is not None
    assert cache.get(("approved", 1)) is not None  # asked for again: kept from now on


def test_a_kept_prompt_is_a_tuple_of_payloads_and_one_played_alone_stays_one_object() -> None:
    cache = PromptPackets()
    cut = CutAudio(b"\x07" * 1600, 160, "PCMA")
    assert cache.put("goodbye", cut) is cut  # first use: played as given
    kept = cache.put("goodbye", CutAudio(b"\x07" * 1600, 160, "PCMA"))
    assert type(kept) is tuple and list(kept) == list(cut)  # shared: indexed, never cut again
    assert cache.get("goodbye") is kept
    assert cache.size_bytes == 10 * (160 + 33) + 8 * 10


# ---- calls sharing what they play ----------------------------------------------------------------


class CountingPrompts:
    """The prompt library's `audio_for` and `silence`, counting renders; fails on request."""

    def __init__(self) -> None:
        self.rendered: list[tuple[Any, ...]] = []
        self.fail = False

    def audio_for(self, parts: Sequence[Any], lang: str) -> np.ndarray:
        return np.concatenate(self._pieces(parts, lang, count=False)[:1])

    def pieces_for(self, parts: Sequence[Any], lang: str) -> list[np.ndarray | int]:
        return self._pieces(parts, lang)

    def _pieces(self, parts: Sequence[Any], lang: str, count: bool = True) -> list[Any]:
        if count:
            self.rendered.append(tuple(parts))
        if self.fail:
            raise RuntimeError("espeak-ng went away")
        return [self.clip]  # half a second: one clip the library keeps

    clip = (np.arange(4000) % 200 * 50).astype(np.int16)

    def silence(self, ms: float) -> np.ndarray:
        return np.zeros(round(8 * ms), dtype=np.int16)


def media(codec: str = "PCMA") -> MediaSession:
    return MediaSession(codec=codec, remote=("127.0.0.1", 40000), dtmf_payload_type=101)


def playing(call: Call) -> Sequence[bytes]:
    assert call.media is not None
    return call.media._frames


async def play(call: Call, *parts: PromptPart) -> None:
    call._play(Play(tuple(parts), barge_in=True))
    await asyncio.gather(*call._tasks)


def with_calls(tmp_path: Path, body: Any) -> None:
    async def main() -> None:
        async with running_node(payment_node_config(tmp_path)) as server:
            assert server.services is not None
            prompts = CountingPrompts()
            server.services.prompts = prompts  # type: ignore[assignment]
            calls = [Call(server.services, invite(f"c{n}@pbx", f"b{n}"), SOURCE) for n in range(3)]
            for call in calls:
                call.media = media()
            await body(calls, prompts)

    asyncio.run(main())


def test_calls_playing_the_same_prompt_share_its_payloads(tmp_path: Path) -> None:
    async def body(calls: list[Call], prompts: CountingPrompts) -> None:
        ask = (PromptPart("announce", (("amount", 4990),)), PromptPart("enter_card"))
        await play(calls[0], *ask)  # its first use: rendered, not kept
        await play(calls[1], *ask)  # its second: kept
        await play(calls[2], *ask)  # shared, not rendered
        assert len(prompts.rendered) == 2
        assert playing(calls[1]) is playing(calls[2])
        audio = encode(prompts.audio_for(ask, "en"), "PCMA")
        for call in calls:  # what a call of its own would play
            assert b"".join(playing(call)) == audio
        # Another codec is another cut of it.
        calls[0].media = media("PCMU")
        await play(calls[0], *ask)
        assert b"".join(playing(calls[0])) == encode(prompts.audio_for(ask, "en"), "PCMU")

    with_calls(tmp_path, body)


def test_a_prompt_with_card_digits_is_rendered_for_its_call_only(tmp_path: Path) -> None:
    async def body(calls: list[Call], prompts: CountingPrompts) -> None:
        confirm = PromptPart("confirm", (("last4", "1111"), ("expiry", SecretDigits("1230"))))
        for call in calls:
            await play(call, confirm)
        assert len(prompts.rendered) == 3
        assert playing(calls[0]) is not playing(calls[1])
        assert len(calls[0].services.prompt_packets) == 0
        # a call's own prompt holds the shared encoded clip (cut as it is sent), no copy
        own = playing(calls[0])
        assert isinstance(own, Spliced) and len(own) == 25
        assert b"".join(own) == encode(prompts.audio_for((confirm,), "en"), "PCMA")
        clips = calls[0].services.prompt_clips
        assert len(clips) == 1
        assert own._pieces[0] is clips.encoded(prompts.clip, "PCMA")
        assert playing(calls[1])._pieces[0] is own._pieces[0]  # type: ignore[attr-defined]

    with_calls(tmp_path, body)


def test_a_failed_rendering_plays_silence_and_is_not_kept(tmp_path: Path) -> None:
    async def body(calls: list[Call], prompts: CountingPrompts) -> None:
        await play(calls[0], PromptPart("goodbye"))  # seen once
        prompts.fail = True
        await play(calls[1], PromptPart("goodbye"))  # would be kept, but failed
        assert set(b"".join(playing(calls[1]))) == {SILENCE["PCMA"]}
        prompts.fail = False
        await play(calls[2], PromptPart("goodbye"))
        assert len(prompts.rendered) == 3
        assert set(b"".join(playing(calls[2]))) != {SILENCE["PCMA"]}

    with_calls(tmp_path, body)


def test_a_shared_prompt_superseded_before_it_starts_is_not_played(tmp_path: Path) -> None:
    async def body(calls: list[Call], prompts: CountingPrompts) -> None:
        await play(calls[0], PromptPart("goodbye"))
        await play(calls[0], PromptPart("goodbye"))  # now shared
        calls[1]._play(Play((PromptPart("goodbye"),), barge_in=True))
        calls[1]._play_generation += 1  # a StopPlayback before its task ran
        await asyncio.gather(*calls[1]._tasks)
        assert calls[1].media is not None and not calls[1].media.playing

    with_calls(tmp_path, body)


# ---- the inbox -----------------------------------------------------------------------------------


def test_the_inbox_gives_items_in_order_and_none_at_its_deadline() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        inbox = Inbox()
        inbox.put_nowait(PromptDone(1))
        inbox.put_nowait(TimerDue())
        assert len(inbox) == 2
        assert await inbox.get() == PromptDone(1)
        assert inbox.get_nowait() == TimerDue()
        with pytest.raises(asyncio.QueueEmpty):
            inbox.get_nowait()
        start = loop.time()
        assert await inbox.get_until(start + 0.05) is None
        assert loop.time() >= start + 0.05
        # A deadline already passed: the timer first, the item stays for the next read.
        inbox.put_nowait(PromptDone(2))
        assert await inbox.get_until(loop.time() - 1) is None
        assert await inbox.get_until(loop.time() + 10) == PromptDone(2)
        # An item put while the reader waits wakes it before its deadline.
        key = KeyPressed("5", "rfc4733", 0.0)
        loop.call_later(0.01, inbox.put_nowait, key)
        start = loop.time()
        assert await inbox.get_until(start + 5) == key
        assert loop.time() - start < 1
        # A cancelled wait loses nothing.
        waiting = asyncio.ensure_future(inbox.get())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        inbox.put_nowait(PromptDone(3))
        assert await asyncio.wait_for(inbox.get(), 1) == PromptDone(3)

    asyncio.run(main())
