"""Voice-activity detection on a call's 8 kHz samples: sans-IO, numpy, a few µs per 20 ms frame.

`VoiceActivity.feed(samples, now)` returns the stretches of speech that ended within these
samples (with a short lead-in kept from before the onset), so that recognition runs only on
speech and silence costs one energy sum per frame. The threshold follows the noise floor (a
slow minimum tracker): a frame is speech when it is `SPEECH_OVER_FLOOR_DB` above the floor and
above an absolute level; speech starts after `ONSET_FRAMES` such frames and ends after
`HANGOVER_S` without one (pauses between digits are shorter than that, a caller's pause after
a group is longer). A stretch longer than `MAX_SPEECH_S` is cut there: the work per utterance
is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

RATE = 8000
FRAME = 160  # 20 ms
SPEECH_OVER_FLOOR_DB = 9.0
MIN_SPEECH_DBFS = -50.0
ONSET_FRAMES = 3  # 60 ms: a click or a packet of noise does not start an utterance
HANGOVER_S = 0.6
LEAD_IN_S = 0.2  # kept from before the onset: the detector is late on soft consonants
MIN_SPEECH_S = 0.15  # shorter bursts are noise
MAX_SPEECH_S = 12.0
# Floor tracking: down at once, up slowly (+1 dB a second), so speech does not raise it.
FLOOR_RISE_DB_PER_FRAME = 0.02
_FULL_SCALE_ENERGY = 32768.0**2


@dataclass(frozen=True)
class SpeechSegment:
    samples: npt.NDArray[np.int16] = field(repr=False)
    started: float  # time of the onset
    ended: float  # time the speech ended (before the hangover)


class VoiceActivity:
    """Finds stretches of speech in a stream of int16 8 kHz samples."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, dtype=np.int16)  # samples short of a whole frame
        self._floor_db = -70.0
        self._lead: list[npt.NDArray[np.int16]] = []
        self._speech: list[npt.NDArray[np.int16]] = []
        self._loud_run = 0
        self._in_speech = False
        self._quiet_frames = 0
        self._started = 0.0
        self._voiced_frames = 0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def feed(self, samples: npt.NDArray[np.int16], now: float) -> list[SpeechSegment]:
        """`samples` end at time `now`; returns the stretches of speech that ended in them."""
        data = np.concatenate((self._pending, samples)) if self._pending.size else samples
        whole = data.size // FRAME * FRAME
        self._pending = data[whole:].copy()
        if whole == 0:
            return []
        frames = data[:whole].reshape(-1, FRAME)
        energy = np.mean(frames.astype(np.float64) ** 2, axis=1) / _FULL_SCALE_ENERGY
        level_db = 10.0 * np.log10(energy + 1e-12)
        # time at the end of each frame
        first_end = now - (data.size - FRAME) / RATE
        out: list[SpeechSegment] = []
        for index, db in enumerate(level_db):
            frame_end = first_end + index * FRAME / RATE
            segment = self._frame(frames[index], float(db), frame_end)
            if segment is not None:
                out.append(segment)
        return out

    def _frame(
        self, frame: npt.NDArray[np.int16], db: float, frame_end: float
    ) -> SpeechSegment | None:
        loud = db >= max(self._floor_db + SPEECH_OVER_FLOOR_DB, MIN_SPEECH_DBFS)
        if db < self._floor_db:
            self._floor_db = db
        elif not loud:
            self._floor_db += FLOOR_RISE_DB_PER_FRAME
        if not self._in_speech:
            self._lead.append(frame)
            lead_frames = int(LEAD_IN_S * RATE / FRAME) + ONSET_FRAMES
            if len(self._lead) > lead_frames:
                del self._lead[0]
            self._loud_run = self._loud_run + 1 if loud else 0
            if self._loud_run >= ONSET_FRAMES:
                self._in_speech = True
                self._speech = list(self._lead)
                self._lead = []
                self._quiet_frames = 0
                self._voiced_frames = ONSET_FRAMES
                self._started = frame_end - ONSET_FRAMES * FRAME / RATE
            return None
        self._speech.append(frame)
        if loud:
            self._quiet_frames = 0
            self._voiced_frames += 1
        else:
            self._quiet_frames += 1
        too_long = len(self._speech) * FRAME >= MAX_SPEECH_S * RATE
        if self._quiet_frames * FRAME >= HANGOVER_S * RATE or too_long:
            return self._finish(frame_end)
        return None

    def _finish(self, frame_end: float) -> SpeechSegment | None:
        # keep 200 ms of the trailing quiet: the recogniser wants to hear the end
        keep_quiet = min(self._quiet_frames, int(0.2 * RATE / FRAME))
        drop = self._quiet_frames - keep_quiet
        frames = self._speech[: len(self._speech) - drop] if drop else self._speech
        ended = frame_end - self._quiet_frames * FRAME / RATE
        voiced = self._voiced_frames * FRAME / RATE
        self._in_speech = False
        self._speech = []
        self._loud_run = 0
        self._quiet_frames = 0
        if voiced < MIN_SPEECH_S:
            return None
        return SpeechSegment(np.concatenate(frames), self._started, ended)

    def flush(self, now: float) -> SpeechSegment | None:
        """End any speech in progress (the caller stopped sending audio)."""
        if not self._in_speech:
            return None
        return self._finish(now)
