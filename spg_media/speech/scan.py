"""`spg-media speech-scan`: the digits a caller says in a recording of one field.

The same pieces as a call: the VAD finds the speech (the stretches are joined with a short
pause, silence between them is not decoded), the recogniser gives its n-best, and
`best_reading` applies the field's rules. Runs in-process: a command, not the media tick.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from spg_media.speech.digits import Reading, best_reading
from spg_media.speech.model import Utterance
from spg_media.speech.recogniser import Recogniser, make_recogniser
from spg_media.speech.vad import FRAME, RATE, VoiceActivity

_GAP = np.zeros(int(0.3 * RATE), dtype=np.int16)


class NoSpeech(Exception):
    """The recording holds no speech (one line for the CLI)."""


def speech_of(samples: npt.NDArray[np.int16]) -> list[npt.NDArray[np.int16]]:
    """The stretches of speech in a whole recording at 8 kHz."""
    vad = VoiceActivity()
    found = []
    for start in range(0, len(samples), FRAME):
        chunk = samples[start : start + FRAME]
        found += vad.feed(chunk, (start + len(chunk)) / RATE)
    last = vad.flush(len(samples) / RATE)
    if last is not None:
        found.append(last)
    return [segment.samples for segment in found]


def scan_field(
    samples: npt.NDArray[np.int16], field: str, recogniser: Recogniser | None = None
) -> Reading:
    """The reading of a recording of one field said ("card", "expiry" or "code")."""
    stretches = speech_of(samples)
    if not stretches:
        raise NoSpeech("no speech found")
    joined = [_GAP]
    for stretch in stretches:
        joined += [stretch, _GAP]
    audio = np.concatenate(joined)
    hypotheses = (recogniser or make_recogniser()).recognise(audio)
    duration = len(audio) / RATE
    reading = best_reading(Utterance(hypotheses, 0.0, duration), field)
    return reading if reading is not None else Reading("", 0.0, valid=False)
