"""What a call plays: the prompt parts of one Play joined into one 8 kHz int16 array.

This module owns assembling audio from clips. `PromptLibrary.audio_for(parts, lang)` asks
`phrases.build` for each part's segments, gets each segment's clip from the `PromptRenderer`
(phrases by the hash of their text, digits and letters from their shared clips) and joins them
with short gaps. Card digits arrive here only as `Symbol`s, so the confirmation prompt is
a concatenation of the same ten digit clips every call uses.

`prerender(lang)` renders every fixed phrase and every digit and letter clip of a language, for
`spg-media prompts` and at server start, so that a call only ever synthesises its announcement.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spg_media.tts.phrases import (
    SUPPORTED_LANGUAGES,
    SYMBOLS,
    PartLike,
    Pause,
    Phrase,
    Segment,
    Symbol,
    build,
    fixed_phrases,
)
from spg_media.tts.render import EDGE_SILENCE_MS, SAMPLE_RATE, PromptRenderer, Samples

__all__ = ["PartLike", "PromptLibrary", "silence"]

# Silence added between clips, on top of the EDGE_SILENCE_MS that each clip keeps at both ends.
SYMBOL_GAP_MS = 0  # digits of one group: 100 ms apart, about how a person reads them out
SEGMENT_GAP_MS = 50  # between a phrase and what follows it in the same part
PART_GAP_MS = 250 - 2 * EDGE_SILENCE_MS  # ~250 ms of silence between parts


def silence(ms: float) -> Samples:
    """`ms` milliseconds of 8 kHz int16 silence."""
    return np.zeros(_samples(ms), dtype=np.int16)


def _samples(ms: float) -> int:
    return max(0, round(SAMPLE_RATE * ms / 1000))


class PromptLibrary:
    """Prompt parts -> one int16 8 kHz array, from the renderer's cached clips."""

    def __init__(self, renderer: PromptRenderer) -> None:
        self.renderer = renderer

    def silence(self, ms: float) -> Samples:
        return silence(ms)

    def audio_for(self, parts: Sequence[PartLike], lang: str) -> Samples:
        """The whole Play: each part's segments, ~250 ms of silence between parts."""
        pieces = [
            np.zeros(piece, dtype=np.int16) if isinstance(piece, int) else piece
            for piece in self.pieces_for(parts, lang)
        ]
        if not pieces:
            return silence(0)
        return np.concatenate(pieces)

    def pieces_for(self, parts: Sequence[PartLike], lang: str) -> list[Samples | int]:
        """What `audio_for` joins, in order: the renderer's clips (the very arrays it keeps
        and hands every call: the same object for the same phrase or symbol) and, as a count
        of samples, the silences between them. A call that keeps these instead of their join
        holds references to shared clips, not its own copy of the audio."""
        _check_language(lang)
        pieces: list[Samples | int] = []
        for index, part in enumerate(parts):
            if index:
                pieces.append(_samples(PART_GAP_MS))
            pieces += self._segments_audio(build(part, lang), lang)
        return pieces

    def _segments_audio(self, segments: Sequence[Segment], lang: str) -> list[Samples | int]:
        pieces: list[Samples | int] = []
        previous: Segment | None = None
        for segment in segments:
            if isinstance(segment, Pause):
                pieces.append(_samples(segment.ms))
                previous = segment
                continue
            if previous is not None and not isinstance(previous, Pause):
                both_symbols = isinstance(previous, Symbol) and isinstance(segment, Symbol)
                pieces.append(_samples(SYMBOL_GAP_MS if both_symbols else SEGMENT_GAP_MS))
            if isinstance(segment, Phrase):
                pieces.append(self.renderer.render_text(segment.text, lang))
            else:
                pieces.append(self.renderer.render_digit(segment.char, lang))
            previous = segment
        return pieces

    def prerender(self, lang: str) -> int:
        """Render (or load) every fixed phrase and digit/letter clip of `lang`; the count."""
        _check_language(lang)
        count = 0
        for text in fixed_phrases(lang):
            self.renderer.render_text(text, lang)
            count += 1
        for char in SYMBOLS:
            self.renderer.render_digit(char, lang)
            count += 1
        return count


def _check_language(lang: str) -> None:
    if lang not in SUPPORTED_LANGUAGES:
        raise ValueError(
            f"unsupported prompt language {lang!r} (supported: {', '.join(SUPPORTED_LANGUAGES)})"
        )
