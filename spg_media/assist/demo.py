"""`spg-media demo --assist`: a whole agent-assisted payment on loopback, told from each side.

Four parties in one process: a node on built-in defaults (free ports, the in-process sandbox
platform, the assist API on 127.0.0.1 with a random token), the customer (`testcaller.py`,
a phone that talks and whose keypad tones reach the line as well as its RFC 4733 events; or
in-band tones only with `--inband`), the agent (`testagent.py`, a SIP UA that answers and
records what it hears), and the agent's desktop (httpx against the API: start a payment,
capture each field while the customer keys it, follow the Server-Sent Events, complete).

The agent's side is printed from what the agent had: the state objects of the API (marks,
brand, last four, result, reference) and the audio its UA received, which is scanned at the
end with the node's own in-band detector (`spg_media.dtmf.inband.scan`): the keys the agent
heard as mask tones, and the digits a detector finds in them (none).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

CUSTOMER_LINES = (
    "Hello, I would like to pay my invoice, please.",
    "Just a moment, I am getting my card.",
)
MASK_TONE_HZ = 440.0


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def speech(text: str) -> npt.NDArray[np.int16]:
    """`text` spoken by espeak-ng at 8 kHz (the prompts' pipeline), as the customer's voice."""
    from spg_media.tts.render import condition, default_synthesizer

    raw, rate = default_synthesizer().synthesize(text, "en", 165)
    return condition(raw, rate)


def mask_tones(audio: npt.NDArray[np.int16], rate: int = 8000) -> int:
    """How many separate bursts of the 440 Hz mask tone `audio` holds (20 ms frames where most
    of the energy is at 440 Hz, runs of them counted once)."""
    frame = rate // 50
    usable = audio.size // frame * frame
    if not usable:
        return 0
    frames = audio[:usable].astype(np.float64).reshape(-1, frame)
    t = np.arange(frame) / rate
    probe = np.exp(-2j * np.pi * MASK_TONE_HZ * t)
    at_440 = np.abs(frames @ probe) ** 2 * 2.0 / frame
    energy = np.sum(frames * frames, axis=1)
    masked = (energy > frame * 100.0**2) & (at_440 > 0.6 * energy)
    starts = masked & ~np.concatenate([[False], masked[:-1]])
    return int(starts.sum())


def speech_seconds(audio: npt.NDArray[np.int16], rate: int = 8000) -> float:
    """Seconds of `audio` that are louder than line noise and not the mask tone."""
    frame = rate // 50
    usable = audio.size // frame * frame
    frames = audio[:usable].astype(np.float64).reshape(-1, frame)
    if not len(frames):
        return 0.0
    t = np.arange(frame) / rate
    at_440 = np.abs(frames @ np.exp(-2j * np.pi * MASK_TONE_HZ * t)) ** 2 * 2.0 / frame
    energy = np.sum(frames * frames, axis=1)
    voiced = (energy > frame * 300.0**2) & (at_440 < 0.6 * energy)
    return float(voiced.sum()) / 50.0


def agent_view(state: dict[str, Any]) -> str:
    """One line of what the agent's desktop shows for a state object."""
    parts = [state["status"]]
    if state.get("capture"):
        parts.append(f"{state['capture']} {'●' * state.get('digits_entered', 0) or '-'}")
    if state.get("last4"):
        parts.append(f"{state.get('card_brand')} •••• {state['last4']}")
    if state.get("error_type"):
        parts.append(f"error {state['error_type']}")
    if state.get("required") and not state.get("capture"):
        parts.append("still required: " + ", ".join(state["required"]))
    if state.get("result"):
        parts.append(f"result {state['result']}")
    if state.get("reference"):
        parts.append(f"reference {state['reference']}")
    return " | ".join(parts)


def _field_done(name: str) -> Callable[[dict[str, Any]], bool]:
    """A state in which the capture of `name` is over: captured, or an error shown."""
    return lambda state: name not in state["required"] or "error_type" in state


class _Desktop:
    """The agent's desktop: API calls with the token, and the payment's event stream."""

    def __init__(self, base_url: str, token: str, say: Callable[[str], None]) -> None:
        import httpx

        self.client = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0
        )
        self.say = say
        self.states: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self._stream: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream
        await self.client.aclose()

    async def call_listed(self, call_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            answer = await self.client.get("/v1/calls")
            answer.raise_for_status()
            for call in answer.json():
                if call["call_id"] == call_id:
                    return dict(call)
            if time.monotonic() > deadline:
                raise TimeoutError(f"call {call_id} not listed by the API")
            await asyncio.sleep(0.1)

    async def create(self, call_id: str, transaction: str) -> dict[str, Any]:
        answer = await self.client.post(
            f"/v1/calls/{call_id}/payments",
            json={"transaction": transaction, "idempotency_key": uuid.uuid4().hex},
        )
        if answer.status_code != 201:
            raise RuntimeError(f"payment not created: {answer.status_code} {answer.text}")
        created = dict(answer.json())
        self._stream = asyncio.get_running_loop().create_task(self._follow(created["payment_id"]))
        return created

    async def _follow(self, payment_id: str) -> None:
        async with self.client.stream("GET", f"/v1/payments/{payment_id}/events") as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    state = json.loads(line[5:])
                    self.states.append(state)
                    self.say(agent_view(state))
                    self.changed.set()

    async def post(self, payment_id: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await self.client.post(f"/v1/payments/{payment_id}", json=body)
        if answer.status_code != 200:
            raise RuntimeError(f"{body}: {answer.status_code} {answer.text}")
        return dict(answer.json())

    async def until(
        self, check: Callable[[dict[str, Any]], bool], timeout_s: float
    ) -> dict[str, Any]:
        """The first state from now on (or the latest one) for which `check` holds."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        seen = 0
        while True:
            for state in self.states[seen:]:
                if check(state):
                    return state
            seen = len(self.states)
            self.changed.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError("the payment did not get there")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


async def run(args: argparse.Namespace, *, barge_in_s: float | None = None) -> str:
    """The whole demo; the payment's result ("approved", ...) or what went wrong.

    The customer listens to each prompt to its end before keying, and to the result; with
    `barge_in_s` (tests), keys that long into each prompt and hangs up that long after the
    result."""
    from spg_media.config import load_config
    from spg_media.dtmf.inband import scan
    from spg_media.payment.cards import cvc_length, detect_brand
    from spg_media.server import Server
    from spg_media.testagent import TestAgent
    from spg_media.testcaller import TestCaller

    started = time.monotonic()

    def say(who: str, text: str) -> None:
        print(f"[{time.monotonic() - started:6.2f}s] {who:<8} {text}", flush=True)

    base = load_config(None, env={})
    transport = "tls" if args.srtp else "udp"
    port = _free_port(socket.SOCK_STREAM if args.srtp else socket.SOCK_DGRAM)
    api_port = _free_port(socket.SOCK_STREAM)
    token = secrets.token_urlsafe(24)
    agent = TestAgent()
    await agent.start()
    sip, ca_file = base.sip, None
    if args.srtp:
        import tempfile

        from spg_media.tlscert import make_self_signed

        workdir = Path(tempfile.mkdtemp(prefix="spg-demo-"))
        pair = make_self_signed(workdir, name="demo", days=1)
        sip = dataclasses.replace(sip, tls_cert=str(pair.cert), tls_key=str(pair.key))
        ca_file = str(pair.cert)
    config = dataclasses.replace(
        base,
        # UDP as well under --srtp: the agent's leg goes out over it
        sip=dataclasses.replace(
            sip,
            listen=(f"{transport}:127.0.0.1:{port}",)
            + ((f"udp:127.0.0.1:{_free_port(socket.SOCK_DGRAM)}",) if args.srtp else ()),
        ),
        # SRTP where the peer offers it: the customer's leg under --srtp, the agent's plain RTP
        rtp=dataclasses.replace(base.rtp, srtp="optional" if args.srtp else base.rtp.srtp),
        admin=dataclasses.replace(base.admin, listen=""),
        ivr=dataclasses.replace(base.ivr, language=args.lang or base.ivr.language),
        assist=dataclasses.replace(
            base.assist,
            listen=f"127.0.0.1:{api_port}",
            api_token=token,
            agent_uri=agent.uri,
        ),
    )
    say("demo", f"spg-media node on {transport}:127.0.0.1:{port}, sandbox platform in-process")
    say("demo", f"assist API on http://127.0.0.1:{api_port} (random token), agent at {agent.uri}")
    if args.srtp:
        say("demo", "customer over SIP/TLS with SRTP media; the agent's leg is plain RTP")
    if args.inband:
        say("demo", "the customer keys DTMF tones in the audio (no telephone-event offered)")
    else:
        say("demo", "the customer's phone sends RFC 4733 events and its keypad tones in the audio")
    say("demo", "rendering prompts (cached after the first run)...")
    server = Server(config)
    await server.start()
    transaction = f"sbx-4990-EUR-demo-{uuid.uuid4().hex[:8]}"
    customer = TestCaller(
        ("127.0.0.1", port),
        transaction,
        request_uri=f"sip:assist@127.0.0.1:{port}",
        on_progress=lambda text: say("customer", text),
        inband=args.inband,
        transport=transport,
        srtp=args.srtp,
        tls_ca_file=ca_file,
        stream_audio=True,
    )
    desktop = _Desktop(f"http://127.0.0.1:{api_port}", token, lambda text: say("desktop", text))
    cvc = "1234"[: cvc_length(detect_brand(args.card) or "")]
    lines = [await asyncio.to_thread(speech, text) for text in CUSTOMER_LINES]
    result = "none"
    try:
        await customer.start()
        if await customer.call() != 200:
            return "refused"
        call = agent.calls[-1]
        say("agent", f"answered; INVITE had X-SPG-Assist-Call: {call.assist_call}")
        say("agent", f"  and X-SPG-Transaction: {call.transaction} ({call.codec} from the node)")
        say("customer", f'says: "{CUSTOMER_LINES[0]}"')
        await customer.say(lines[0])
        listed = await desktop.call_listed(call.assist_call)
        say("desktop", f"GET /v1/calls lists the call (from {listed['from']})")
        created = await desktop.create(call.assist_call, transaction)
        payment_id = created["payment_id"]
        amount = f"{created['amount_minor'] / 100:.2f} {created['currency']}"
        say("desktop", f"POST payments -> 201 {payment_id} for {amount}")
        fields = (
            ("payment-card-number", "card number", args.card + "#"),
            ("expiration-date", "expiry", args.expiry),
            ("security-code", "security code", cvc),
        )
        for name, words, keys in fields:
            if name == "expiration-date":
                say("customer", f'says: "{CUSTOMER_LINES[1]}"')
                await customer.say(lines[1])
            say("desktop", f"POST capture {name}")
            await desktop.post(payment_id, {"capture": name})
            shown = "*" * len(keys.rstrip("#")) + ("#" if keys.endswith("#") else "")
            if barge_in_s is None:
                await customer.wait_prompt_end()
                say("customer", f"heard the prompt, keys the {words}: {shown}")
            else:
                await customer.wait_prompt_start()
                await asyncio.sleep(barge_in_s)
                say("customer", f"keys the {words} over the prompt: {shown}")
            await customer.key(keys)
            await desktop.until(_field_done(name), 15)
        say("desktop", "POST status complete")
        await desktop.post(payment_id, {"status": "complete"})
        final = await desktop.until(lambda s: s["status"] in ("complete", "cancelled"), 60)
        result = str(final.get("result", "none"))
        if barge_in_s is None:
            await customer.wait_prompt_end(limit_s=10)
        else:
            await asyncio.sleep(barge_in_s)
        say("customer", "heard the result; the call goes on with the agent, then hangs up")
        await customer.hangup()
        await asyncio.wait_for(call.ended.wait(), 10)
        say("agent", f"call ended (BYE from the {call.ended_by})")
    finally:
        await desktop.close()
        await customer.close()
        await server.stop(grace_s=5)
        await agent.close()
    heard = call.recording.audio()
    digits = scan(heard)
    say("agent", f"heard {speech_seconds(heard):.1f} s of the customer's voice")
    say("agent", f"heard {mask_tones(heard)} key tones: {len(digits)} digits detected")
    say("agent", f"telephone-event packets received: {call.recording.other_packets}")
    say("demo", f"result: {result} (reference {final.get('reference', '-')})")
    cdr = Path(config.log.cdr_path)
    if cdr.exists():
        records = cdr.read_text().splitlines()
        if records:
            say("demo", f"CDR ({cdr}): {records[-1]}")
    return result
