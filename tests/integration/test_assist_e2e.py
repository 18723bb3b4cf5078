"""Agent-assisted payments end to end: SIPp as the customer, `spg-media serve` as the B2BUA,
SIPp as the agent (its media answered by a Python RTP recorder), and the assist API driven
with httpx as the agent's desktop would (payment, a capture per field while the customer keys,
complete), all on loopback.

One node, four calls at once (a module fixture runs them; each test checks its part):

- `rfc4733`: the customer talks (an espeak-ng sentence before the keys and one between the
  card number and the expiry, streamed by SIPp as PCMA) and keys RFC 4733 events (SIPp's
  pcaps); in the middle of the card number it puts the call on hold and resumes it
  (re-INVITEs on its leg). Approved; the call goes on after the result (a key sent as SIP
  INFO then is not passed on) until the customer's BYE, which ends the agent's leg too.
- `inband`: the same sentences, the keys as DTMF tones in the audio, no telephone-event
  offered. Approved.
- `agent_bye`: the agent hangs up while the card number is being keyed: the payment ends
  `hung-up`, nothing charged, the customer gets BYE.
- `srtp`: baresip as the customer over SIP/TLS with SRTP (the transaction and the agent in
  its Request-URI), keying RFC 4733 events; the agent's leg is plain RTP. Approved. Skipped
  when baresip or openssl (the test certificate) is missing.

On what the agent received: neither the node's in-band detector nor spandsp's `dtmf_rx` finds a
digit, no packet but audio arrived (the agent's answer offered telephone-event, so any event
forwarded would have come), each sentence is there (correlated with what the customer sent).
And over everything the calls produced (node logs at debug level, CDR, the SIP messages both
SIPps saw, the event streams and API answers): no card number, expiry or security code.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

import httpx
import numpy as np
import pytest
from baresip import Account, Baresip, SpgTlsNode, baresip_missing
from harness import (
    HOST,
    PCAP_DIR,
    PCAP_NAMES,
    REPO,
    SIPP,
    SippProcess,
    SippResult,
    SpgNode,
    free_port,
    run_sipp,
    spg_media_available,
)

from spg_media.assist.demo import mask_tones, speech
from spg_media.dtmf.inband import scan
from spg_media.rtp.g711 import decode, encode
from spg_media.testagent import RtpRecording
from spg_media.testcaller import dtmf_tone
from spg_media.tlscert import TlsCertError, make_self_signed

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) is not installed"),
    pytest.mark.skipif(not spg_media_available(), reason="spg-media is not importable"),
]

TOKEN = "e2e-" + uuid.uuid4().hex
# Distinctive values, so a search of logs full of numbers finds only a leak: the expiry and
# code start with 0 (no count or port is written with a leading zero).
CARDS = {
    "rfc4733": "4111111111111111",
    "inband": "5555555555554444",
    "agent_bye": "4111111111111111",
    "srtp": "4111111111111111",
}
SIPP_CALLS = ("rfc4733", "inband", "agent_bye")
EXPIRY, CVC = "0731", "098"
SENTENCES = ("Hello, I would like to pay my invoice, please.", "One moment, I am getting my card.")
RATE = 8000
# The customer's timeline, in ms from its ACK (SIPp's clock): the first sentence at once, the
# card number from CARD_AT, the second sentence at SAY_AT, the expiry from EXPIRY_AT, the
# code from CODE_AT, the customer's BYE at BYE_AT (seconds after the result).
SPEECH_AT = (300, 10_000)
CARD_AT, KEY_GAP, HOLD_AFTER = 4_000, 300, 8  # hold + resume after the 8th key
EXPIRY_AT, CODE_AT, BYE_AT = 13_000, 15_500, 21_000
AUDIO_S = 25.0
AGENT_BYE_AFTER_MS = 6_000  # after the agent's ACK; the customer keys 6 digits before


# ---- the customer's audio and scenario -----------------------------------------------------


def key_times(fields: list[str]) -> list[tuple[int, str]]:
    """(ms from the ACK, key) of every key: card, expiry, code on the timeline above."""
    starts = (CARD_AT, EXPIRY_AT, CODE_AT)
    return [
        (start + i * KEY_GAP, key)
        for start, keys in zip(starts, fields, strict=False)
        for i, key in enumerate(keys)
    ]


def customer_audio(path: Path, spoken: list[np.ndarray], tones: list[tuple[int, str]]) -> Path:
    """Raw A-law (what SIPp's rtp_stream sends as it is): the sentences at SPEECH_AT and,
    for an in-band customer, each key's tone (100 ms) at its time."""
    audio = np.zeros(int(AUDIO_S * RATE), dtype=np.int16)
    for at_ms, samples in zip(SPEECH_AT, spoken, strict=True):
        start = at_ms * RATE // 1000
        audio[start : start + samples.size] = samples
    for at_ms, key in tones:
        tone = dtmf_tone(key, 0.1)
        start = at_ms * RATE // 1000
        audio[start : start + tone.size] = tone
    path.write_bytes(encode(audio, "PCMA"))
    return path


_SDP = """v=0
o=caller 53655765 {version} IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP {formats}
a=rtpmap:8 PCMA/8000
{events}a=ptime:20
a={direction}
"""
_EVENTS = "a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\n"
_HEAD = """Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Customer" <sip:customer@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
Call-ID: [call_id]
Contact: <sip:customer@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
"""


def _send(text: str, retrans: bool = False) -> str:
    attr = ' retrans="500"' if retrans else ""
    return f"  <send{attr}>\n    <![CDATA[\n\n{text}\n    ]]>\n  </send>\n"


def customer_scenario(
    path: Path,
    *,
    events: bool,
    audio: Path | None,
    keys: list[tuple[int, str]],
    hold_after: int | None = None,
    info: bool = False,
    bye_at: int | None = None,
) -> Path:
    """INVITE sip:assist@node (X-SPG-Transaction, X-SPG-Agent from -key), 200, ACK; `audio`
    streamed from the ACK; RFC 4733 pcaps for `keys` (when `events`) at their times, with a
    hold and a resume re-INVITE after `hold_after` keys; with `info`, a SIP INFO key a
    second before BYE at `bye_at`, or (None) wait for the node's BYE."""
    formats = "8 101" if events else "8"
    sdp = {"formats": formats, "events": _EVENTS if events else ""}
    invite = (
        "INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0\n" + _HEAD
        + "To: <sip:[service]@[remote_ip]:[remote_port]>\nCSeq: 1 INVITE\n"
        "X-SPG-Transaction: [transaction]\nX-SPG-Agent: <[agent]>\n"
        "Content-Type: application/sdp\nContent-Length: [len]\n\n"
        + _SDP.format(version=1, direction="sendrecv", **sdp)
    )  # fmt: skip

    def in_dialog(method: str, cseq: int, body: str = "") -> str:
        head = (
            f"{method} [next_url] SIP/2.0\n"
            + _HEAD
            + (
                "To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]\n[routes]\n"
                f"CSeq: {cseq} {method}\n"
            )
        )
        if body:
            return head + "Content-Type: application/sdp\nContent-Length: [len]\n\n" + body
        return head + "Content-Length: 0\n"

    out = ['<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="assist customer">\n']
    out.append(_send(invite, retrans=True))
    for status in (100, 180, 183):
        out.append(f'  <recv response="{status}" optional="true"/>\n')
    out.append('  <recv response="200" rrs="true"/>\n')
    out.append(_send(in_dialog("ACK", 1)))
    if audio is not None:
        out.append(f'  <nop><action><exec rtp_stream="{escape(str(audio))},1,8"/></action></nop>\n')
    now, cseq = 0, 1

    def wait_until(at_ms: int) -> None:
        nonlocal now
        if at_ms > now:
            out.append(f'  <pause milliseconds="{at_ms - now}"/>\n')
            now = at_ms

    shift = 0  # the time the hold and the resume took, that later keys come after
    for n, (at_ms, key) in enumerate(keys if events else []):
        wait_until(at_ms + shift)
        pcap = escape(str(PCAP_DIR / f"dtmf_2833_{PCAP_NAMES[key]}.pcap"))
        out.append(f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n')
        if hold_after is not None and n + 1 == hold_after:
            wait_until(at_ms + 200)
            for direction in ("sendonly", "sendrecv"):  # hold, then resume
                cseq += 1
                body = _SDP.format(version=cseq, direction=direction, **sdp)
                out.append(_send(in_dialog("INVITE", cseq, body), retrans=True))
                out.append('  <recv response="100" optional="true"/>\n')
                out.append('  <recv response="200"/>\n')
                out.append(_send(in_dialog("ACK", cseq)))
                wait_until(now + 300)
            shift = now - at_ms
    if bye_at is not None:
        if info:  # a key as SIP INFO too (answered by the node, never passed to the agent)
            wait_until(bye_at + shift - 1000)
            cseq += 1
            head = in_dialog("INFO", cseq).replace("Content-Length: 0\n", "")
            body = "Signal=5\nDuration=160\n"
            out.append(
                _send(
                    head + "Content-Type: application/dtmf-relay\nContent-Length: [len]\n\n" + body,
                    retrans=True,
                )
            )
            out.append('  <recv response="200" crlf="true"/>\n')
        wait_until(bye_at + shift)
        out.append(_send(in_dialog("BYE", cseq + 1), retrans=True))
        out.append('  <recv response="200" crlf="true"/>\n')
    else:
        out.append('  <recv request="BYE" timeout="30000"/>\n')
        out.append(
            _send(
                "SIP/2.0 200 OK\n[last_Via:]\n[last_From:]\n[last_To:]\n[last_Call-ID:]\n"
                "[last_CSeq:]\nContent-Length: 0\n"
            )
        )
    out.append('  <timewait milliseconds="500"/>\n</scenario>\n')
    path.write_text("".join(out), encoding="latin-1")
    return path


# ---- the agent: SIPp for SIP, a Python socket for its media ---------------------------------


def agent_scenario(path: Path, media_port: int, hangup_after_ms: int | None) -> Path:
    """Answer the node's INVITE (PCMU and telephone-event 101, media at `media_port`), then
    wait for BYE, or send one `hangup_after_ms` after the ACK."""
    reply = (
        "[last_Via:]\n[last_From:]\n[last_To:];tag=[pid]SIPpAgent[call_number]\n"
        "[last_Call-ID:]\n[last_CSeq:]\n[last_Record-Route:]\n"
        "Contact: <sip:agent@[local_ip]:[local_port];transport=[transport]>\n"
    )
    sdp = (
        "v=0\no=agent 1 1 IN IP4 [local_ip]\ns=agent\nc=IN IP4 [local_ip]\nt=0 0\n"
        f"m=audio {media_port} RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\n"
        "a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\na=ptime:20\na=sendrecv\n"
    )
    out = [
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="assist agent">\n',
        '  <recv request="INVITE" crlf="true" rrs="true">\n    <action>\n'
        '      <ereg regexp="[0-9a-f]{32}" search_in="hdr" header="X-SPG-Assist-Call:" '
        'check_it="true" assign_to="assist_call"/>\n'
        '      <ereg regexp="[^\\r\\n]*" search_in="hdr" header="From:" assign_to="caller_from"/>\n'
        '      <ereg regexp="[^\\r\\n]*" search_in="hdr" header="To:" assign_to="called_to"/>\n'
        '      <log message="X-SPG-Assist-Call=[$assist_call]"/>\n    </action>\n  </recv>\n',
        _send("SIP/2.0 180 Ringing\n" + reply + "Content-Length: 0\n"),
        _send(
            "SIP/2.0 200 OK\n" + reply + "Content-Type: application/sdp\nContent-Length: [len]\n\n"
            + sdp,
            retrans=True,
        ),
        '  <recv request="ACK" crlf="true"/>\n',
    ]  # fmt: skip
    if hangup_after_ms is None:
        out.append('  <recv request="BYE" timeout="40000"/>\n')
        out.append(
            _send(
                "SIP/2.0 200 OK\n[last_Via:]\n[last_From:]\n[last_To:]\n[last_Call-ID:]\n"
                "[last_CSeq:]\nContent-Length: 0\n"
            )
        )
    else:
        out.append(f'  <pause milliseconds="{hangup_after_ms}"/>\n')
        out.append(
            _send(
                "BYE [next_url] SIP/2.0\n"
                "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\n"
                "From: [$called_to];tag=[pid]SIPpAgent[call_number]\nTo: [$caller_from]\n"
                "[routes]\nCall-ID: [call_id]\nCSeq: 1 BYE\n"
                "Contact: <sip:agent@[local_ip]:[local_port];transport=[transport]>\n"
                "Max-Forwards: 70\nContent-Length: 0\n",
                retrans=True,
            )
        )
        out.append('  <recv response="200" crlf="true"/>\n')
    out.append('  <timewait milliseconds="500"/>\n')
    out.append('  <Reference variables="assist_call,caller_from,called_to"/>\n</scenario>\n')
    path.write_text("".join(out), encoding="latin-1")
    return path


class RtpRecorder:
    """The agent's media: a UDP socket on loopback keeping every datagram the node sends."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.datagrams: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            self.datagrams.append(data)

    def stop(self) -> RtpRecording:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        recording = RtpRecording()
        for data in self.datagrams:
            recording.receive_bytes(data)
        return recording


# ---- the agent's desktop --------------------------------------------------------------------


def _captured(name: str) -> Callable[[dict[str, Any]], bool]:
    """A state in which field `name` is captured, or the payment over."""
    return lambda state: name not in state["required"] or state["status"] != "active"


@dataclass
class Desk:
    """The agent's desktop for one call: API calls with the token, the payment's events."""

    base_url: str
    transaction: str
    states: list[dict[str, Any]] = field(default_factory=list)  # from the event stream
    answers: list[str] = field(default_factory=list)  # every API answer's body
    result_at: float | None = None  # monotonic time of the final state
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.client = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20
        )

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        answer = self.client.request(method, url, **kwargs)
        self.answers.append(answer.text)
        return answer

    def call_id(self, timeout_s: float = 15.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for call in self._request("GET", "/v1/calls").json():
                if call.get("transaction") == self.transaction:
                    return str(call["call_id"])
            time.sleep(0.05)
        raise TimeoutError(f"no assisted call with transaction {self.transaction}")

    def start(self, call_id: str) -> str:
        answer = self._request(
            "POST",
            f"/v1/calls/{call_id}/payments",
            json={"transaction": self.transaction, "idempotency_key": uuid.uuid4().hex},
        )
        assert answer.status_code == 201, answer.text
        payment_id = str(answer.json()["payment_id"])
        threading.Thread(target=self._follow, args=(payment_id,), daemon=True).start()
        return payment_id

    def _follow(self, payment_id: str) -> None:
        with self.client.stream("GET", f"/v1/payments/{payment_id}/events", timeout=60) as resp:
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    state = json.loads(line[5:])
                    with self._changed:
                        self.states.append(state)
                        if state["status"] in ("complete", "cancelled"):
                            self.result_at = time.monotonic()
                        self._changed.notify_all()

    def post(self, payment_id: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = self._request("POST", f"/v1/payments/{payment_id}", json=body)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def until(self, check: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for state in self.states:
                    if check(state):
                        return state
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no such state; states: {self.states[-3:]}")
                self._changed.wait(left)

    def pay(self, fields: int) -> dict[str, Any]:
        """List the call, start a payment, capture `fields` fields in turn, then complete
        (all three) or wait for the payment's end. The final state."""
        payment_id = self.start(self.call_id())
        names = ("payment-card-number", "expiration-date", "security-code")
        for name in names[:fields]:
            self.post(payment_id, {"capture": name})
            state = self.until(_captured(name), 20)
            if state["status"] != "active":
                return state
            assert "error_type" not in state, state
        if fields == len(names):
            self.post(payment_id, {"status": "complete"})
        return self.until(lambda s: s["status"] in ("complete", "cancelled"), 30)


# ---- the three calls ------------------------------------------------------------------------


@dataclass
class CallRun:
    customer: SippResult | None  # None: the customer was baresip
    agent: SippResult
    desk: Desk
    final: dict[str, Any]
    recording: RtpRecording
    spoken: list[np.ndarray]
    sent: np.ndarray | None  # the customer's audio (keys as tones for the in-band one)
    customer_done_at: float
    phone_log: str = ""  # baresip's log and SIP trace


@dataclass
class Runs:
    node: SpgNode
    calls: dict[str, CallRun]
    seconds: float


def _one_call(
    name: str, node: SpgNode, api: str, workdir: Path, spoken: list[np.ndarray]
) -> CallRun:
    card = CARDS[name]
    fields = [card + "#", EXPIRY, CVC] if name != "agent_bye" else [card[:6]]
    keys = key_times(fields)
    workdir.mkdir(parents=True, exist_ok=True)
    transaction = f"sbx-4990-EUR-e2e-{name.replace('_', '')}-{uuid.uuid4().hex[:6]}"
    recorder = RtpRecorder()
    agent_sipp = SippProcess(
        agent_scenario(
            workdir / f"agent-{name}.xml",
            recorder.port,
            AGENT_BYE_AFTER_MS if name == "agent_bye" else None,
        ),
        workdir,
        timeout_s=60,
    )
    inband = name == "inband"
    audio = None
    if name != "agent_bye":
        audio = customer_audio(workdir / f"{name}.al", spoken, keys if inband else [])
    scenario = customer_scenario(
        workdir / f"customer-{name}.xml",
        events=not inband,
        audio=audio,
        keys=keys,
        hold_after=HOLD_AFTER if name == "rfc4733" else None,
        info=name == "rfc4733",
        bye_at=BYE_AT if name != "agent_bye" else None,
    )
    desk = Desk(api, transaction)
    with ThreadPoolExecutor(1) as pool:
        customer_future = pool.submit(
            run_sipp,
            scenario,
            f"{HOST}:{node.sip_port}",
            ["-s", "assist"],
            50,
            workdir=workdir,
            keys={"transaction": transaction, "agent": f"sip:agent@{HOST}:{agent_sipp.port}"},
            name=f"customer-{name}",
        )
        final = desk.pay(1 if name == "agent_bye" else 3)
        customer = customer_future.result()
    done_at = time.monotonic()
    agent = agent_sipp.wait(60)
    desk.client.close()
    recording = recorder.stop()
    sent = decode(audio.read_bytes(), "PCMA") if audio is not None else None
    return CallRun(customer, agent, desk, final, recording, spoken, sent, done_at)


def _baresip_call(node: SpgTlsNode, api: str, workdir: Path, cafile: Path) -> CallRun:
    """The customer is baresip over SIP/TLS with SRTP (`srtp-mand`), keying RFC 4733 events
    with `sndcode` as the desk captures each field; the agent leg is plain RTP. baresip adds
    no headers: the transaction and the agent go in the Request-URI."""
    workdir.mkdir(parents=True, exist_ok=True)
    recorder = RtpRecorder()
    agent_sipp = SippProcess(
        agent_scenario(workdir / "agent-srtp.xml", recorder.port, None), workdir, timeout_s=60
    )
    transaction = f"sbx-4990-EUR-e2e-srtp-{uuid.uuid4().hex[:6]}"
    agent = quote(f"sip:agent@{HOST}:{agent_sipp.port}", safe=":")
    phone = Baresip(
        workdir / "baresip", Account(transport="tls", mediaenc="srtp-mand"), cafile=cafile
    )
    desk = Desk(api, transaction)
    card = CARDS["srtp"]
    with phone:
        since = phone.cursor
        phone.dial(
            f"sip:assist@{HOST}:{node.tls_port};x-spg-transaction={transaction};x-spg-agent={agent}"
        )
        phone.wait_event(lambda e: e.type in ("CALL_ESTABLISHED", "CALL_CLOSED"), 15, since)
        payment_id = desk.start(desk.call_id())
        for name, keys in (
            ("payment-card-number", card + "#"),
            ("expiration-date", EXPIRY),
            ("security-code", CVC),
        ):
            desk.post(payment_id, {"capture": name})
            time.sleep(0.5)  # the customer hears the prompt start, then keys over it
            phone.sndcode(keys)
            desk.until(_captured(name), 20)
        desk.post(payment_id, {"status": "complete"})
        final = desk.until(lambda s: s["status"] in ("complete", "cancelled"), 30)
        time.sleep(2.0)  # the call goes on with the agent
        phone.hangup()
        phone.wait_event("CALL_CLOSED", 10, since)
        done_at = time.monotonic()
    desk.client.close()
    result = agent_sipp.wait(60)
    log = phone.log() + "\n".join(m.text for m in phone.sip_trace())
    return CallRun(None, result, desk, final, recorder.stop(), [], None, done_at, log)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    import os

    if os.geteuid() != 0:
        pytest.skip("SIPp play_pcap_audio needs root (CAP_NET_RAW)")
    workdir = tmp_path_factory.mktemp("assist-e2e")
    spoken = [speech(text) for text in SENTENCES]
    api_port = free_port()
    env = {
        "SPG_ASSIST__API_TOKEN": TOKEN,
        "SPG_ASSIST__LISTEN": f"{HOST}:{api_port}",
        "SPG_LOG__JOURNAL_PATH": str(workdir / "journal.jsonl"),
    }
    api = f"http://{HOST}:{api_port}"
    cert = None
    with contextlib.suppress(TlsCertError):
        cert = make_self_signed(workdir / "tls")
    node = (
        SpgTlsNode(workdir, cert.cert, cert.key, env) if cert is not None else SpgNode(workdir, env)
    )
    with node:
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            futures = {
                name: pool.submit(_one_call, name, node, api, workdir / name, spoken)
                for name in SIPP_CALLS
            }
            if cert is not None and baresip_missing() is None:
                assert isinstance(node, SpgTlsNode)
                futures["srtp"] = pool.submit(_baresip_call, node, api, workdir / "srtp", cert.cert)
            calls = {name: future.result() for name, future in futures.items()}
        seconds = time.monotonic() - started
        time.sleep(0.5)  # the CDR lines of the last payments
        yield Runs(node, calls, seconds)


# ---- the checks -----------------------------------------------------------------------------


def digits_heard(audio: np.ndarray) -> tuple[list[str], list[str] | None]:
    """The digits the node's detector and (when installed) spandsp's dtmf_rx find."""
    ours = [digit for digit, _, _ in scan(audio)]
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import spandsp  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(REPO / "bench"))
    if not spandsp.available():
        return ours, None
    return ours, [digit for digit, _, _ in spandsp.spandsp_scan(audio)]


def sentence_heard(audio: np.ndarray, sentence: np.ndarray) -> float:
    """The share of the sentence's voiced 100 ms pieces that `audio` holds (normalised
    correlation above 0.8; G.711 twice leaves about 0.99), each within 100 ms of where the
    whole sentence lines up best: the bridge's playout inserts a packet of silence when the
    customer's packets come unevenly (SIPp's stream does: a 20 ms step, 0 to 3 a call here),
    which moves what follows, and a piece holding the step correlates about 0.89."""
    from scipy.signal import correlate

    x = audio.astype(np.float64)
    s = sentence.astype(np.float64)
    best = int(np.argmax(correlate(x, s, mode="valid", method="fft")))
    piece, reach = RATE // 10, RATE // 10
    voiced = found = 0
    for start in range(0, s.size - piece, piece):
        part = s[start : start + piece]
        if np.sqrt(np.mean(part * part)) < 300:
            continue
        voiced += 1
        low = max(0, best + start - reach)
        near = x[low : best + start + reach + piece]
        if near.size < piece:
            continue
        dots = correlate(near, part, mode="valid")
        running = np.concatenate([[0.0], np.cumsum(near * near)])
        energy = running[piece:] - running[:-piece]
        score = dots / (np.sqrt(np.maximum(energy, 1e-9)) * np.linalg.norm(part))
        found += bool(score.max() > 0.8)
    return found / max(voiced, 1)


def check_agent_heard_no_key(run: CallRun) -> None:
    audio = run.recording.audio()
    assert audio.size > 15 * RATE, f"the agent heard {audio.size / RATE:.1f} s only"
    assert run.recording.other_packets == 0, run.recording.other_payload_types
    ours, theirs = digits_heard(audio)
    assert ours == [], ours
    assert theirs in ([], None), theirs
    for sentence in run.spoken:  # the customer's voice passes unchanged
        assert sentence_heard(audio, sentence) > 0.9


def test_rfc4733_customer_pays_while_talking_and_holding(runs: Runs) -> None:
    run = runs.calls["rfc4733"]
    assert run.customer.returncode == 0, run.customer.explain()
    assert run.agent.returncode == 0, run.agent.explain()
    assert run.final["status"] == "complete" and run.final["result"] == "approved", run.final
    assert run.final["card_brand"] == "visa" and run.final["last4"] == "1111"
    # hold and resume were answered on the customer's leg, the capture went on
    answers = {
        m.header("CSeq"): m.text for m in run.customer.received(200) if m.cseq_method == "INVITE"
    }
    assert sorted(answers) == ["1 INVITE", "2 INVITE", "3 INVITE"], run.customer.explain()
    assert "a=recvonly" in answers["2 INVITE"] and "a=sendrecv" in answers["3 INVITE"]
    # the call went on after the result: the agent's BYE came from the customer's, seconds later
    assert run.desk.result_at is not None
    assert run.customer_done_at - run.desk.result_at > 2.0
    assert run.agent.received("BYE") and not run.customer.received("BYE")
    # the INFO key was answered on the customer's leg and not passed on
    assert [m.cseq_method for m in run.customer.received(200)].count("INFO") >= 1
    assert not run.agent.received("INFO")
    check_agent_heard_no_key(run)


def test_inband_customer_pays_and_every_tone_is_masked(runs: Runs) -> None:
    run = runs.calls["inband"]
    assert run.customer.returncode == 0, run.customer.explain()
    assert run.agent.returncode == 0, run.agent.explain()
    assert run.final["status"] == "complete" and run.final["result"] == "approved", run.final
    assert run.final["card_brand"] == "mastercard" and run.final["last4"] == "4444"
    (ok,) = [m for m in run.customer.received(200) if m.cseq_method == "INVITE"]
    assert "telephone-event" not in ok.text
    check_agent_heard_no_key(run)
    keyed = CARDS["inband"] + "#" + EXPIRY + CVC
    assert mask_tones(run.recording.audio()) >= len(keyed)  # each key heard as the mask tone
    # ... which the detectors would have found in what the customer sent
    assert run.sent is not None
    ours, theirs = digits_heard(run.sent)
    assert "".join(ours) == keyed and theirs in (list(keyed), None)


def test_agent_hangs_up_mid_capture_and_nothing_is_charged(runs: Runs) -> None:
    run = runs.calls["agent_bye"]
    assert run.customer.returncode == 0, run.customer.explain()  # it got the node's BYE
    assert run.agent.returncode == 0, run.agent.explain()
    assert run.final["status"] == "cancelled" and run.final["result"] == "hung-up", run.final
    capturing = [s for s in run.desk.states if s.get("capture") == "payment-card-number"]
    assert max(s["digits_entered"] for s in capturing) == 6
    records = [json.loads(line) for line in runs.node.cdr_lines()]
    (record,) = [r for r in records if r["transaction"] == run.desk.transaction]
    assert record["mode"] == "assist" and record["result"] == "hung-up"
    assert record["charge_state"] == "not-charged" and record["card"] is None


def test_cdr_lines_of_the_approved_payments(runs: Runs) -> None:
    records = {json.loads(line)["transaction"]: json.loads(line) for line in runs.node.cdr_lines()}
    for name in ("rfc4733", "inband"):
        record = records[runs.calls[name].desk.transaction]
        assert record["mode"] == "assist" and record["result"] == "approved"
        assert record["charge_state"] == "charged"
        assert record["reference"] == runs.calls[name].final["reference"]


def test_no_card_data_anywhere(runs: Runs) -> None:
    node_logs = runs.node.logs()
    assert "Traceback" not in node_logs
    blobs = {"node logs": node_logs, "CDR": "\n".join(runs.node.cdr_lines())}
    for name, run in runs.calls.items():
        if run.customer is not None:
            blobs[f"{name} customer SIP"] = run.customer.messages_log + run.customer.logs
        else:
            blobs[f"{name} customer SIP"] = run.phone_log
        blobs[f"{name} agent SIP"] = run.agent.messages_log + run.agent.logs
        blobs[f"{name} events"] = json.dumps(run.desk.states)
        blobs[f"{name} API answers"] = "\n".join(run.desk.answers)
    for what, blob in blobs.items():
        assert blob, f"{what}: nothing to search"
        for card in set(CARDS.values()):
            assert card not in blob and card[:12] not in blob, what
        assert not re.search(rf"(?<![0-9.,:]){EXPIRY}(?![0-9])", blob), what
        assert not re.search(rf"(?<![0-9.,:]){CVC}(?![0-9])", blob), what
    print(f"three assisted calls at once: {runs.seconds:.1f} s")


def test_tls_srtp_customer_pays_and_the_agent_leg_is_plain_rtp(runs: Runs) -> None:
    if "srtp" not in runs.calls:
        pytest.skip("baresip or the test certificate (openssl) is missing")
    run = runs.calls["srtp"]
    assert run.agent.returncode == 0, run.agent.explain()
    assert run.final["status"] == "complete" and run.final["result"] == "approved", run.final
    assert run.final["card_brand"] == "visa" and run.final["last4"] == "1111"
    answer = re.search(r"SIP/2.0 200 OK.*?CSeq: \d+ INVITE.*?m=audio[^\r\n]*", run.phone_log, re.S)
    assert answer and "RTP/SAVP" in answer[0], "the customer's leg is not SRTP"
    (invite,) = run.agent.received("INVITE")
    assert re.search(r"^m=audio \d+ RTP/AVP ", invite.text, re.M) and "a=crypto" not in invite.text
    assert run.agent.received("BYE")  # the customer's hang-up ended the agent's leg
    audio = run.recording.audio()
    assert audio.size > 5 * RATE and run.recording.other_packets == 0
    ours, theirs = digits_heard(audio)
    assert ours == [] and theirs in ([], None)
