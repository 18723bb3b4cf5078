"""Voice entry wired into a call: the caller's audio reaches the call's speech input, what it
recognises reaches the journey, a call with no recognition slot (or a keypad-only language)
is asked for keys, the speech input is closed once the card is taken, and the CDR says how
each field came.

A real node on loopback (in-process sandbox) and our test caller streaming audio; the
recogniser is a stand-in that records what it is fed and hands over the utterances the test
scripts (the real one is exercised end to end in tests/integration/test_voice_entry.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from spg_media import call as call_module
from spg_media import server as server_module
from spg_media.config import Config, load_config
from spg_media.server import Server
from spg_media.speech import Hypothesis, Utterance
from spg_media.testcaller import TestCaller
from spg_media.tts.phrases import SPEECH_PROMPT_NAMES

REPO = Path(__file__).resolve().parents[2]
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PAN, EXPIRY, CVC = "4111111111111111", "1230", "123"


class FakeInput:
    """One call's speech input: counts what it is fed; the test hands utterances over."""

    def __init__(self, language: str, on_utterance: Callable[[Utterance], None]) -> None:
        self.language = language
        self.on_utterance = on_utterance
        self.fed = 0
        self.closed = False
        self.in_speech = False
        self.expected: list[int | None] = []

    def feed(self, samples: np.ndarray, now: float) -> None:
        assert samples.dtype == np.int16 and samples.ndim == 1
        if not self.closed:
            self.fed += samples.size

    def close(self) -> None:
        self.closed = True

    def expect(self, length: int | None) -> None:
        self.expected.append(length)

    def say(self, text: str) -> None:
        words = tuple(WORDS[int(c)] for c in text) if text.isdigit() else tuple(text.split())
        now = asyncio.get_running_loop().time()
        self.on_utterance(Utterance((Hypothesis(words, 0.0),), now - 0.8, now))


class FakeEngine:
    engines: ClassVar[list[FakeEngine]] = []

    def __init__(
        self,
        max_concurrent: int = 8,
        *,
        workers: int | None = None,
        lock_memory: bool = False,
        recogniser: str = "",
    ) -> None:
        self.max_concurrent = max_concurrent
        self.processes = workers or 1
        self.recogniser = recogniser
        self.inputs: list[FakeInput] = []
        self.refused = 0
        self.closed = False
        FakeEngine.engines.append(self)

    def start(self) -> None:
        pass

    def open_input(
        self, language: str, on_utterance: Callable[[Utterance], None]
    ) -> FakeInput | None:
        if sum(not i.closed for i in self.inputs) >= self.max_concurrent:
            self.refused += 1
            return None
        speech_input = FakeInput(language, on_utterance)
        self.inputs.append(speech_input)
        return speech_input

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_speech(monkeypatch: pytest.MonkeyPatch) -> type[FakeEngine]:
    FakeEngine.engines = []
    monkeypatch.setattr(server_module, "SpeechEngine", FakeEngine)
    monkeypatch.setattr(
        call_module, "speech_available", lambda language, recogniser="": language == "en"
    )
    return FakeEngine


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_config(tmp_path: Path, *, max_concurrent: int = 8) -> Config:
    base = load_config(None, env={})
    return dataclasses.replace(
        base,
        sip=dataclasses.replace(base.sip, listen=(f"udp:127.0.0.1:{free_port()}",)),
        admin=dataclasses.replace(base.admin, listen=""),
        ivr=dataclasses.replace(
            base.ivr, input="dtmf speech", first_digit_timeout_s=5.0, inter_digit_timeout_s=3.0
        ),
        speech=dataclasses.replace(base.speech, max_concurrent=max_concurrent),
        log=dataclasses.replace(
            base.log,
            cdr_path=str(tmp_path / "cdr.jsonl"),
            journal_path=str(tmp_path / "journal.jsonl"),
        ),
        tts=dataclasses.replace(base.tts, cache_dir=str(REPO / ".spg-cache" / "prompts")),
    )


def cdr_lines(config: Config) -> list[dict[str, Any]]:
    path = Path(config.log.cdr_path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def until(predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, call_id: str, kind: str, details: dict[str, Any]) -> None:
        self.items.append((call_id, kind, details))

    def prompts(self) -> list[str]:
        return [name for _, kind, d in self.items if kind == "prompt" for name in d["parts"]]


def test_a_card_said_pays_and_the_cdr_says_speech(
    tmp_path: Path, fake_speech: type[FakeEngine], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = node_config(tmp_path)
    events = Events()

    async def scenario() -> None:
        server = Server(config, observer=events)
        await server.start()
        port = int(config.sip.listen[0].rsplit(":", 1)[1])
        caller = TestCaller(("127.0.0.1", port), "sbx-4990-EUR-voice1", inband=True)
        try:
            await caller.start()
            assert await caller.call() == 200
            engine = fake_speech.engines[0]
            assert engine.recogniser == "whisper-tiny.en"  # speech.recogniser's default
            await until(lambda: engine.inputs and engine.inputs[0].fed >= 8000)  # 1 s of audio
            speech = engine.inputs[0]
            assert speech.language == "en"
            for said in (PAN, "yes", EXPIRY, "yes", CVC, "yes"):
                before = len(events.prompts())
                speech.say(said)

                def prompted(before: int = before) -> bool:
                    return len(events.prompts()) > before

                await until(prompted)
            await until(lambda: speech.closed)  # the card is taken: no more listening
            fed = speech.fed
            await until(lambda: any(kind == "authorized" for _, kind, _ in events.items))
            await asyncio.sleep(0.3)
            assert speech.fed == fed  # nothing fed after it closed
            await caller.hangup()  # during the result: the platform's answer stands
            await until(lambda: cdr_lines(config))
        finally:
            await caller.close()
            await server.stop(grace_s=0)

    asyncio.run(scenario())
    prompts = events.prompts()
    assert "enter_card_speech" in prompts and "heard" in prompts and "enter_card" not in prompts
    assert [kind for _, kind, _ in events.items].count("speech") == 6
    # the recogniser was told the length of each: card group, then the whole card was said
    # (free grouping after the 16 digits would not fit a group of 4), the expiry, the code
    assert engine_inputs(fake_speech)[0].expected[:1] == [4]
    assert (
        4 in engine_inputs(fake_speech)[0].expected and 3 in engine_inputs(fake_speech)[0].expected
    )
    (record,) = cdr_lines(config)
    assert record["result"] == "approved"
    assert record["input"] == {"card": "speech", "expiry": "speech", "security_code": "speech"}
    text = "\n".join(r.getMessage() + str(vars(r)) for r in caplog.records)
    text += json.dumps(events.items, default=str) + json.dumps(record)
    for secret in (PAN, PAN[:12], "four one one one"):
        assert secret not in text


def engine_inputs(engine: type[FakeEngine]) -> list[FakeInput]:
    return engine.engines[0].inputs


def test_no_recognition_slot_or_a_keypad_only_language_asks_for_keys(
    tmp_path: Path, fake_speech: type[FakeEngine], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = node_config(tmp_path, max_concurrent=1)
    events = Events()

    async def scenario() -> None:
        server = Server(config, observer=events)
        await server.start()
        port = int(config.sip.listen[0].rsplit(":", 1)[1])
        callers = [
            TestCaller(
                ("127.0.0.1", port), f"sbx-4990-EUR-voice{n}", inband=True, extra_headers=headers
            )
            for n, headers in enumerate([None, None, [("X-SPG-Language", "es")]], start=2)
        ]
        try:
            for caller in callers:
                await caller.start()
                assert await caller.call() == 200
                await asyncio.sleep(0.5)
            await until(lambda: len(events.prompts()) >= 6)
            engine = fake_speech.engines[0]
            assert len(engine.inputs) == 1 and engine.refused == 1  # es never asked for one
        finally:
            for caller in callers:
                await caller.close()
            await server.stop(grace_s=0)

    asyncio.run(scenario())
    by_call: dict[str, list[str]] = {}
    for call_id, kind, details in events.items:
        if kind == "prompt":
            by_call.setdefault(call_id, []).extend(details["parts"])
    asked = sorted(tuple(names[:2]) for names in by_call.values())
    assert asked == [
        ("announce_sale", "enter_card"),
        ("announce_sale", "enter_card"),
        ("announce_sale", "enter_card_speech"),
    ]
    assert not {n for names in by_call.values() for n in names[2:]} & set(SPEECH_PROMPT_NAMES)
    assert "no recognition slot free" in caplog.text


def test_a_failing_recogniser_leaves_the_call_on_keys(
    tmp_path: Path,
    fake_speech: type[FakeEngine],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug feeding one call's audio to its recogniser: logged by type, that input closed, the
    call's media and journey go on (the caller keys)."""
    caplog.set_level(logging.INFO)
    config = node_config(tmp_path)
    events = Events()

    def broken_feed(self: FakeInput, samples: np.ndarray, now: float) -> None:
        raise RuntimeError("4111 1111 1111 1111")  # a message that must not be logged

    monkeypatch.setattr(FakeInput, "feed", broken_feed)

    async def scenario() -> None:
        server = Server(config, observer=events)
        await server.start()
        assert server.services is not None
        port = int(config.sip.listen[0].rsplit(":", 1)[1])
        caller = TestCaller(("127.0.0.1", port), "sbx-4990-EUR-voice9", inband=True)
        try:
            await caller.start()
            assert await caller.call() == 200
            engine = fake_speech.engines[0]
            await until(lambda: engine.inputs and engine.inputs[0].closed)
            await asyncio.sleep(0.5)
            (call,) = server.services.calls.values()
            assert isinstance(call, call_module.Call)
            assert call.speech_input is None and call.media is not None
            assert call.media.on_audio is None
            assert call.rtp_port in server.services.media.sessions  # the media goes on
            assert call.phase == "journey"
            await caller.hangup()
            await until(lambda: cdr_lines(config))
        finally:
            await caller.close()
            await server.stop(grace_s=0)

    asyncio.run(scenario())
    assert "voice entry failed (RuntimeError): keys only" in caplog.text
    assert "4111" not in caplog.text
    assert cdr_lines(config)[0]["result"] == "hung-up"
