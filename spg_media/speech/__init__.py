"""Voice entry of card digits: offline recognition in the node, and constrained decoding.

* `model`: `Hypothesis` and `Utterance`, what a recogniser hands the dialogue.
* `digits`: sans-IO constrained decoding (`words_to_digits`, `best_reading`, `answer_of`).
* `engine`: `SpeechEngine` (one per process, a bounded pool of recognitions) and `SpeechInput`
  (one per call: voice-activity detection on the call's 8 kHz samples, then recognition of each
  stretch of speech off the event loop).

Audio is never written to disk and recognised words are never logged.
"""

from spg_media.speech.digits import Reading, answer_of, best_reading, words_to_digits
from spg_media.speech.engine import SpeechEngine, SpeechInput, speech_available, speech_languages
from spg_media.speech.model import Hypothesis, Utterance

__all__ = [
    "Hypothesis",
    "Reading",
    "SpeechEngine",
    "SpeechInput",
    "Utterance",
    "answer_of",
    "best_reading",
    "speech_available",
    "speech_languages",
    "words_to_digits",
]
