"""Prompt audio as RTP payloads, cut once and shared by every call that plays the same prompt.

A call's `MediaSession` plays a prompt as a sequence of payloads, one per packet (`ptime`).
Cut per call, a 10 s prompt is 500 bytes objects, ~96 KiB a call while it plays: most of what
an answered call held. `PromptPackets` keeps each prompt's payloads once per language, codec
and packet size, as an immutable tuple every call playing it refers to (a session never
writes into what it plays), in a least-recently-used cache bounded in bytes.

What is shared: a prompt whose parts' values are plain strings and numbers (the fixed
phrases, the announcement of an amount and merchant), from its second use on: the first
call to play a prompt plays its own cut, and only a prompt asked for again is kept, so one
call's own prompt (a result with its reference) does not fill the cache. A prompt with a
value from the caller (`SecretDigits`: the card ending, the expiry or digits read back) is
never kept here, so no card digit outlives its call in this cache.

A prompt a call plays alone (its first use, or one never shared: the result with its
reference, a read-back of card digits) is not copied for the call either: `Spliced` plays
the prompt's clips as the library keeps them (`PromptLibrary.pieces_for`: the same array for
the same phrase, digit or letter), each encoded once per codec in `EncodedClips` (bounded in
bytes) and cut into payloads as they are sent. Such a call holds references and offsets
(~1 KiB), not its ~50 KiB of audio cut into ~300 payloads: under full-duplex SIPp load those
cuts were most of the Python memory that grew with the calls held, and, freed together when
the prompt ended, they left pymalloc's arenas partly used (RSS not returned). What the clip
cache holds is the sound of one phrase or symbol, never a sequence of a caller's digits.
`CutAudio` is the same for one block of audio (`MediaSession.play`, a rendering failure's
silence).
"""

from __future__ import annotations

import bisect
import itertools
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Protocol, overload

import numpy as np

from spg_media.rtp.g711 import SILENCE, encode

__all__ = [
    "CLIPS_BUDGET_BYTES",
    "DEFAULT_BUDGET_BYTES",
    "CutAudio",
    "EncodedClips",
    "PromptPackets",
    "Spliced",
    "packetise",
    "shared_key",
]

# What the cache may hold: the fixed prompts of two languages in both codecs, and the
# announcements of a few hundred amounts, at ~8 KiB a second of audio.
DEFAULT_BUDGET_BYTES = 16 * 2**20
# The clips of two languages' fixed phrases, digits and letters in both codecs, and the
# announcements of a few hundred amounts and merchants (one byte a sample, 8 KiB a second).
CLIPS_BUDGET_BYTES = 8 * 2**20
SEEN_KEYS = 4096  # prompts used once that are remembered (their keys only) for a second use
_PAYLOAD_OVERHEAD = 33  # a bytes object's header (CPython, 64-bit), for the budget


class PartLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def params(self) -> tuple[tuple[str, object], ...]: ...


def packetise(audio: bytes, samples_per_packet: int, codec: str) -> tuple[bytes, ...]:
    """`audio` (G.711, one byte a sample) cut into payloads of `samples_per_packet`, the last
    padded with the codec's silence."""
    n = samples_per_packet
    pad = (-len(audio)) % n
    if pad:
        audio += bytes([SILENCE[codec]]) * pad
    return tuple(audio[i : i + n] for i in range(0, len(audio), n))


class Spliced(Sequence[bytes]):
    """Encoded pieces (shared clips and silences) played one after the other as payloads of
    `samples_per_packet`, the last padded with the codec's silence: what `packetise` would
    give for their join, each payload cut (or joined across a clip's end) when asked for."""

    __slots__ = ("_count", "_ends", "_pieces", "samples_per_packet")

    def __init__(self, pieces: Iterable[bytes], samples_per_packet: int, codec: str) -> None:
        kept = [p for p in pieces if p]
        n = samples_per_packet
        pad = (-sum(map(len, kept))) % n
        if pad:
            kept.append(bytes([SILENCE[codec]]) * pad)
        self._pieces = tuple(kept)
        self._ends = tuple(itertools.accumulate(map(len, kept)))  # each piece's end
        self.samples_per_packet = n
        self._count = (self._ends[-1] if kept else 0) // n

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("packet index out of range")
        n = self.samples_per_packet
        start = index * n
        end = start + n
        pieces, ends = self._pieces, self._ends
        k = bisect.bisect_right(ends, start)  # the piece holding sample `start`
        piece = pieces[k]
        offset = start - (ends[k] - len(piece))
        if end <= ends[k]:  # nearly always: within one piece
            return piece[offset : offset + n]
        out = [piece[offset:]]
        k += 1
        while ends[k] < end:
            out.append(pieces[k])
            k += 1
        out.append(pieces[k][: end - (ends[k] - len(pieces[k]))])
        return b"".join(out)


class CutAudio(Spliced):
    """`audio` (G.711) as the payloads `packetise` would give, each cut when it is asked for:
    a `Spliced` of one piece, padded first so that the whole prompt stays one bytes object
    (`audio`) instead of one per packet."""

    __slots__ = ("audio",)

    def __init__(self, audio: bytes, samples_per_packet: int, codec: str) -> None:
        pad = (-len(audio)) % samples_per_packet
        if pad:
            audio += bytes([SILENCE[codec]]) * pad
        self.audio = audio
        super().__init__((audio,), samples_per_packet, codec)


class EncodedClips:
    """Clips (int16 arrays the prompt library keeps and shares) encoded once per codec, by the
    array's identity (each entry holds its array, so the identity cannot be reused while the
    entry lives), least recently used dropped past `budget_bytes`; silences by length."""

    def __init__(self, budget_bytes: int = CLIPS_BUDGET_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self.size_bytes = 0
        self._entries: OrderedDict[tuple[int, str], tuple[Any, bytes]] = OrderedDict()
        self._silences: dict[tuple[int, str], bytes] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def encoded(self, clip: np.ndarray[Any, Any], codec: str) -> bytes:
        key = (id(clip), codec)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is clip:
            self._entries.move_to_end(key)
            return entry[1]
        data = encode(clip, codec)
        if len(data) > self.budget_bytes:
            return data
        if entry is not None:
            self.size_bytes -= len(entry[1])
        self._entries[key] = (clip, data)
        self._entries.move_to_end(key)
        self.size_bytes += len(data)
        while self.size_bytes > self.budget_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.size_bytes -= len(dropped)
        return data

    def silence(self, samples: int, codec: str) -> bytes:
        key = (samples, codec)
        data = self._silences.get(key)
        if data is None:
            data = bytes([SILENCE[codec]]) * samples
            if len(self._silences) < 256:  # a prompt's gaps: a handful of lengths
                self._silences[key] = data
        return data

    def splice(
        self, pieces: Iterable[np.ndarray[Any, Any] | int], codec: str, samples_per_packet: int
    ) -> Spliced:
        """`PromptLibrary.pieces_for`'s pieces as payloads: clips encoded (or found encoded),
        silences (counts of samples) as the codec's silence."""
        return Spliced(
            (
                self.silence(p, codec) if isinstance(p, int) else self.encoded(p, codec)
                for p in pieces
            ),
            samples_per_packet,
            codec,
        )


def shared_key(
    parts: Sequence[PartLike], language: str, codec: str, samples_per_packet: int
) -> Hashable | None:
    """The cache key of a prompt, or None when it must not be shared: a part's value that is
    not a plain string or number (card digits)."""
    for part in parts:
        for _, value in part.params:
            if type(value) not in (str, int):
                return None
    return (tuple(parts), language, codec, samples_per_packet)


class PromptPackets:
    """Cut prompts by `shared_key`, kept from their second use on, least recently used
    dropped past `budget_bytes`."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self.size_bytes = 0
        self._entries: OrderedDict[Hashable, tuple[tuple[bytes, ...], int]] = OrderedDict()
        self._seen: OrderedDict[Hashable, None] = OrderedDict()  # used once, not kept

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> tuple[bytes, ...] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, payloads: Sequence[bytes]) -> Sequence[bytes]:
        """Keep `payloads` under `key` if the prompt was put before (an entry there already
        is kept instead: calls that rendered the same prompt at once end up sharing one copy);
        what to play. What is kept is a tuple of payloads (the calls sharing it index it on
        every packet: no cutting), what is not is played as given (a `CutAudio` holds one
        object)."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry[0]
        if key not in self._seen:  # its first use: remembered, not kept
            self._seen[key] = None
            if len(self._seen) > SEEN_KEYS:
                self._seen.popitem(last=False)
            return payloads
        del self._seen[key]
        size = sum(len(p) + _PAYLOAD_OVERHEAD for p in payloads) + 8 * len(payloads)
        if size > self.budget_bytes:
            return payloads  # played, not kept
        kept = tuple(payloads)
        self._entries[key] = (kept, size)
        self.size_bytes += size
        while self.size_bytes > self.budget_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.size_bytes -= dropped
        return kept
