"""Voice entry end to end: SIPp streams a recorded caller saying the card through Kamailio to
`spg-media serve` (ivr.input = "dtmf speech"), which recognises it and pays.

The caller is espeak-ng (en-us, 150 words a minute), rendered here, resampled with sox to
8 kHz and sent as A-law by SIPp's `rtp_stream`; keys, where the caller keys, are RFC 4733
pcaps. SIPp cannot listen, so the caller speaks over the prompts (barge-in) at fixed times and
says "yes" to each read-back. That is right only if the node hears what was said: each test
first rehearses the call offline with the node's own parts (the same voice-activity detector
over the same 20 ms frames, the same recogniser and grammars, the real journey, and the in-band
DTMF detector, which must not hear tones in the speech) and fails with what was misheard if
the rehearsal does not pay. The call's outcome is then checked in the REFER and the CDR, with
how each field came (`input`), and that neither the card nor the words said reached the CDR,
the node's debug log, its metrics or its working directory.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import HOST, KamailioProxy, SpgNode, free_port, make_pay_scenario, run_sipp
from test_kamailio_sipp import assert_no_card_data, cdr_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

VOICE, WORDS_PER_MINUTE = "en-us", 150
RATE = 8000
FRAME = 160
PAN, EXPIRY, CVC = "4111111111111111", "1230", "123"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
START_S = 0.5  # SIPp starts streaming this long after its ACK
# When an utterance reaches the journey, after its end: the detector's hangover, recognition.
DELIVERY_S = 0.9


def spoken(text: str) -> str:
    return " ".join(DIGIT_WORDS[int(c)] for c in text) if text.isdigit() else text


def render(text: str) -> np.ndarray:
    """espeak-ng saying `text`, as 8 kHz int16 (sox resamples)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "--stdout", spoken(text)],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    raw = subprocess.run(
        ["sox", "-t", "wav", "-", "-t", "raw", "-r", str(RATE), "-e", "signed", "-b", "16",
         "-c", "1", "-"],
        input=wav,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, dtype=np.int16)


@dataclass
class CallerAudio:
    samples: np.ndarray  # int16, as the node decodes it (through A-law)
    alaw: bytes
    said: list[tuple[float, float, str]]  # (start, end, text) in seconds from the first sample


def caller_audio(script: Sequence[tuple[float, str]], tail_s: float = 2.0) -> CallerAudio:
    """`script`: (silence before, what is said) in order; one A-law stream of it all."""
    from spg_media.rtp.g711 import decode_array, encode

    parts: list[np.ndarray] = []
    said: list[tuple[float, float, str]] = []
    at = 0
    for pause_s, text in script:
        parts.append(np.zeros(int(pause_s * RATE), dtype=np.int16))
        at += parts[-1].size
        voice = render(text)
        parts.append(voice)
        said.append((at / RATE, (at + voice.size) / RATE, text))
        at += voice.size
    parts.append(np.zeros(int(tail_s * RATE), dtype=np.int16))
    linear = np.concatenate(parts)
    linear = np.concatenate([linear, np.zeros((-linear.size) % FRAME, dtype=np.int16)])
    alaw = encode(linear, "PCMA")
    samples = decode_array(np.frombuffer(alaw, dtype=np.uint8), "PCMA")
    return CallerAudio(samples, alaw, said)


@dataclass
class Rehearsal:
    heard: list[str]  # each read-back, in order
    failures: list[str]  # prompts of failed attempts
    card: str  # "" when no authorisation
    inputs: dict[str, str]


def rehearse(audio: CallerAudio, keys: Sequence[tuple[float, str]] = ()) -> Rehearsal:
    """The call as the node will hear it: its voice-activity detector over the same frames,
    its recogniser told the lengths the journey expects, the journey fed utterances and keys
    in the order they will reach it."""
    from spg_media.dtmf.inband import scan
    from spg_media.payment.journey import Authorize, Journey, JourneyConfig, Play
    from spg_media.payment.model import AuthorizationResult, Operation, Result, TransactionInfo
    from spg_media.speech.model import Utterance
    from spg_media.speech.recogniser import make_recogniser
    from spg_media.speech.vad import VoiceActivity

    tones = scan(audio.samples)
    assert not tones, f"the in-band detector hears {len(tones)} key(s) in the caller's speech"
    vad = VoiceActivity()
    events: list[tuple[float, str, Any]] = [(at, "key", key) for at, key in keys]
    for index in range(0, audio.samples.size, FRAME):
        now = (index + FRAME) / RATE
        for segment in vad.feed(audio.samples[index : index + FRAME], now):
            events.append((segment.ended + DELIVERY_S, "speech", segment))
    events.sort(key=lambda event: event[0])
    spoken_count = sum(1 for _, kind, _ in events if kind == "speech")
    assert spoken_count == len(audio.said), (
        f"{spoken_count} utterances detected for {len(audio.said)} said"
    )
    tx = TransactionInfo("sbx-4990-EUR-r", Operation.SALE, 4990, "EUR", "R", "Shop")
    journey = Journey(JourneyConfig(speech=True), tx, None, datetime.date.today())
    actions = journey.start(0.0)
    recogniser = make_recogniser()  # the node's: speech.recogniser's default
    expected = journey.expected_digits()
    for at, kind, item in events:
        if kind == "key":
            actions += journey.digit(item, at)
        else:
            hypotheses = recogniser.recognise(item.samples, length=expected)
            if hypotheses:
                actions += journey.speech(Utterance(hypotheses, item.started, item.ended), at)
        expected = journey.expected_digits()
    heard: list[str] = []
    failures: list[str] = []
    card = ""
    for action in actions:
        if isinstance(action, Play):
            for part in action.parts:
                params = dict(part.params)
                if part.name in ("heard", "heard_instead"):
                    heard.append("".join(params["digits"].characters()))  # type: ignore[union-attr]
                elif part.name in ("not_understood", "say_again", "no_input", "card_invalid"):
                    failures.append(part.name)
        elif isinstance(action, Authorize):
            card = "".join(str(v) for v in action.card.pan.values())
    # the platform approves, the caller hangs up: the outcome says how the fields came
    end = events[-1][0] + 1.0 if events else 1.0
    journey.authorized(AuthorizationResult(Result.APPROVED), end)
    journey.hangup(end + 0.1)
    inputs = dict(journey.outcome.inputs) if journey.outcome is not None else {}
    return Rehearsal(heard, failures, card, inputs)


def timeline(audio: CallerAudio) -> str:
    return ", ".join(f"{text!r} {start:.1f}-{end:.1f}s" for start, end, text in audio.said)


# ---- the node behind Kamailio --------------------------------------------------------------


@dataclass
class VoiceStack:
    node: SpgNode
    kam: KamailioProxy


@pytest.fixture(scope="module")
def voice_stack(
    kamailio_factory: Callable[..., KamailioProxy], spg_node_factory: Callable[..., SpgNode]
) -> VoiceStack:
    for tool in ("espeak-ng", "sox"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            pytest.skip(f"{tool} is not installed")
    from spg_media.speech import speech_available

    if not speech_available("en"):
        pytest.skip("no speech model installed")
    node = spg_node_factory(
        {
            "SPG_IVR__INPUT": "dtmf speech",
            "SPG_SPEECH__MAX_CONCURRENT": "2",
            "SPG_IVR__FIRST_DIGIT_TIMEOUT_S": "6",
            "SPG_IVR__INTER_DIGIT_TIMEOUT_S": "3",
            "SPG_IVR__RETURN_URI": f"sip:agent@{HOST}:{free_port()}",
            "SPG_GATEWAY__CONNECTOR": "sandbox",
        }
    )
    kam = kamailio_factory([node.uri], defines={"DS_PING_INTERVAL": "2"})
    return VoiceStack(node, kam)


def voice_call(
    stack: VoiceStack,
    sipp_dir: Path,
    audio: CallerAudio,
    keys: Sequence[tuple[float, str]] = (),
    *,
    hangup_after_s: float | None = None,
) -> tuple[Any, str]:
    name = f"voice-{uuid.uuid4().hex[:8]}"
    stream = sipp_dir / f"{name}.alaw"
    stream.write_bytes(audio.alaw)  # raw A-law: SIPp sends its bytes as they are
    scenario: dict[str, Any] = {"initial_pause_ms": int(START_S * 1000)}
    if keys:
        scenario |= {
            "caller_audio": stream,
            "audio_loops": 1,
            "key_times_ms": [int((START_S + at) * 1000) for at, _ in keys],
        }
    else:
        scenario |= {"inband_wav": stream}  # PCMA only, streamed once
    if hangup_after_s is not None:  # after the last key (or the stream's start, without)
        scenario |= {"hangup_after_keys": True, "hangup_pause_ms": int(hangup_after_s * 1000)}
    xml = make_pay_scenario(
        "".join(key for _, key in keys), sipp_dir / f"{name}.xml",
        expect_result=None if hangup_after_s is not None else "approved",
        result_timeout_ms=60000, **scenario,
    )  # fmt: skip
    call_id = f"{name}@{HOST}"
    result = run_sipp(
        xml,
        f"{HOST}:{stack.kam.port}",
        ["-s", "pay", "-cid_str", call_id, "-default_behaviors", "all,-abortunexp"],
        90,
        workdir=sipp_dir,
        keys={"spg_transaction": f"sbx-4990-EUR-{uuid.uuid4().hex[:10]}"},
        name=name,
    )
    return result, call_id


def assert_nothing_said_kept(stack: VoiceStack, uac: Any, cdr: dict[str, Any]) -> None:
    """Neither the card nor the words said in the CDR, the SIP the node sent, its debug log,
    its metrics; no audio written in its working directory."""
    assert_no_card_data(stack, uac, cdr, PAN, EXPIRY, CVC)  # type: ignore[arg-type]
    logs = stack.node.logs()
    with urllib.request.urlopen(f"http://{HOST}:{stack.node.admin_port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    for where, text in {"node logs": logs, "metrics": metrics, "CDR": json.dumps(cdr)}.items():
        for secret in (PAN, PAN[:12], spoken(PAN[:4]), spoken(PAN[4:8]), spoken(EXPIRY)):
            assert secret not in text, f"{secret!r} in {where}"
    kept = {p.name for p in stack.node.workdir.iterdir()}
    assert kept <= {"cdr.jsonl", "journal.jsonl", "spg-media.stdout.log", "spg-media.stderr.log"}


def test_a_card_said_aloud_is_paid(voice_stack: VoiceStack, sipp_dir: Path) -> None:
    script: list[tuple[float, str]] = []
    for field in ("4111", "1111", "1111", "1111", EXPIRY, CVC):
        script += [(0.8, field), (1.2, "yes")]
    audio = caller_audio(script)
    rehearsal = rehearse(audio)
    assert rehearsal.card == PAN and not rehearsal.failures, (
        f"espeak-ng {VOICE} at {WORDS_PER_MINUTE} wpm is misheard offline: read back "
        f"{rehearsal.heard}, failures {rehearsal.failures} ({timeline(audio)})"
    )
    # The caller hangs up while the result plays (the platform's answer stands: the CDR says;
    # the REFER back is the keypad tests' business, and saves this one 10 s of prompts).
    duration_s = audio.samples.size / RATE
    uac, call_id = voice_call(voice_stack, sipp_dir, audio, hangup_after_s=duration_s + 3.0)
    assert uac.returncode == 0, uac.explain() + voice_stack.node.logs()[-4000:]
    cdr = cdr_for(voice_stack.node, call_id, timeout_s=10)
    assert cdr["result"] == "approved" and cdr["charge_state"] == "charged"
    assert cdr["attempts"] == 1 and cdr["card"] == {"brand": "visa", "last4": "1111"}
    assert cdr["input"] == {"card": "speech", "expiry": "speech", "security_code": "speech"}
    assert_nothing_said_kept(voice_stack, uac, cdr)


def test_part_of_the_card_said_and_the_rest_keyed(voice_stack: VoiceStack, sipp_dir: Path) -> None:
    audio = caller_audio([(1.0, "4111"), (1.2, "yes")], tail_s=1.0)
    start = audio.said[-1][1] + 2.5  # the "yes" taken: the rest on the keypad
    typed = PAN[4:] + "#" + EXPIRY + CVC
    keys = [(start + 0.3 * n + (1.0 if n > 12 else 0.0), key) for n, key in enumerate(typed)]
    rehearsal = rehearse(audio, keys)
    assert rehearsal.card == PAN and rehearsal.heard == ["4111"], (
        f"misheard offline: read back {rehearsal.heard}, failures {rehearsal.failures}"
    )
    assert rehearsal.inputs == {"card": "mixed", "expiry": "dtmf", "security_code": "dtmf"}
    # The caller hangs up while the result plays (the platform's answer stands): the CDR says.
    uac, call_id = voice_call(voice_stack, sipp_dir, audio, keys, hangup_after_s=3.0)
    assert uac.returncode == 0, uac.explain() + voice_stack.node.logs()[-4000:]
    cdr = cdr_for(voice_stack.node, call_id, timeout_s=10)
    assert cdr["result"] == "approved" and cdr["charge_state"] == "charged"
    assert cdr["input"] == {"card": "mixed", "expiry": "dtmf", "security_code": "dtmf"}
    assert cdr["card"] == {"brand": "visa", "last4": "1111"}
