"""Agent-assisted payments end to end: SIPp as the customer, `spg-media serve` as the B2BUA,
SIPp as the agent (its media answered by a Python RTP recorder), and the assist API driven
with httpx as the agent's desktop would (payment, a capture per field while the customer keys,
complete), all on loopback.

One node, eight calls at once (a module fixture runs them; each test checks its part):

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
- `srtp_agent`, the reverse: the customer is SIPp over UDP with plain RTP (the sentences, RFC
  4733 pcaps), the agent is baresip over SIP/TLS with SRTP (`X-SPG-Agent:
  <sip:agent@...;transport=tls>`, the node trusting its certificate with `sip.tls_ca`).
  Approved; baresip reports no key received (it raises an event per RFC 4733 key) and what it
  decoded (its sndfile module) holds the sentences and no DTMF.
- `agent_hold`: the agent puts the call on hold and resumes it (re-INVITEs on its leg, from its
  SIPp scenario) while the card number is being keyed; the capture goes on. Approved.
- `customer_bye`: the customer hangs up while the card number is being keyed: the payment
  ends `hung-up`, nothing charged, the CDR says `"mode": "assist"`, the agent gets BYE.
- `page`: the agent's desktop is the agent page (`/assist/` on `assist.listen`) in headless
  Chromium driven by Playwright: the agent picks the call from the list, starts the payment,
  presses each field's Capture while SIPp keys it (RFC 4733 pcaps), completes and sees the
  result and reference. The page shows one mark per key, and its DOM never holds the card's
  number, expiry or code. Skipped without chromium or playwright.

On what the agent received: neither the node's in-band detector nor spandsp's `dtmf_rx` finds a
digit, no packet but audio arrived (the agent's answer offered telephone-event, so any event
forwarded would have come), each sentence is there (correlated with what the customer sent).
And over everything the calls produced (node logs at debug level, CDR, the SIP messages both
sides saw, the event streams and API answers, the agent page's DOM): no card number, expiry or
security code.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import socket
import sys
import threading
import time
import uuid
import wave
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
from baresip import (
    Account,
    Baresip,
    BaresipEvent,
    SpgTlsNode,
    baresip_missing,
    parse_sip_trace,
)
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
from test_assist_page import CHROMIUM, CHROMIUM_ARGS

from spg_media.assist.demo import mask_tones, speech
from spg_media.dtmf.inband import scan
from spg_media.rtp.g711 import decode, encode
from spg_media.testagent import RtpRecording
from spg_media.testcaller import dtmf_tone
from spg_media.tlscert import CertPair, TlsCertError, make_self_signed

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
    "agent_hold": "5555555555554444",
    "customer_bye": "5555555555554444",
    "page": "5555555555554444",
    "srtp_agent": "4111111111111111",
}
SIPP_CALLS = ("rfc4733", "inband", "agent_bye", "agent_hold", "customer_bye")
PARTIAL = {"agent_bye": 6, "customer_bye": 6}  # the calls that end after this many card keys
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
AGENT_HOLD_AT_MS = 5_000  # after the agent's ACK: hold, resume a second later (mid card number)
CUSTOMER_BYE_AT = CARD_AT + 6 * KEY_GAP + 300  # the customer hangs up after 6 card keys
# The call paid through the agent page: the fields later and further apart than above, for the
# page to show each field captured before the agent presses the next one's Capture.
PAGE_STARTS, PAGE_BYE_AT = (7_000, 14_000, 17_000), 20_500
# Two groups of calls: the first (rfc4733, inband, agent_bye, srtp) at once, the second this
# long after, once the first group's first sentence is over (it ends 3.3 s after the ACK);
# the second group's hold and BYE (AGENT_HOLD_AT_MS, CUSTOMER_BYE_AT) come before the first
# group's second sentence.
SECOND_GROUP = ("agent_hold", "customer_bye", "page", "srtp_agent")
SECOND_GROUP_AFTER_S = 3.5
SRTP_AGENT_SPEECH_AT = (800, 10_000)  # the first sentence clear of baresip's first jitter


# ---- the customer's audio and scenario -----------------------------------------------------


def key_times(
    fields: list[str], starts: tuple[int, int, int] = (CARD_AT, EXPIRY_AT, CODE_AT)
) -> list[tuple[int, str]]:
    """(ms from the ACK, key) of every key: card, expiry, code on the timeline above (or
    from `starts`)."""
    return [
        (start + i * KEY_GAP, key)
        for start, keys in zip(starts, fields, strict=False)
        for i, key in enumerate(keys)
    ]


def customer_audio(
    path: Path,
    spoken: list[np.ndarray],
    tones: list[tuple[int, str]],
    speech_at: tuple[int, int] = SPEECH_AT,
) -> Path:
    """Raw A-law (what SIPp's rtp_stream sends as it is): the sentences at `speech_at` and,
    for an in-band customer, each key's tone (100 ms) at its time."""
    audio = np.zeros(int(AUDIO_S * RATE), dtype=np.int16)
    for at_ms, samples in zip(speech_at, spoken, strict=True):
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


def agent_scenario(
    path: Path, media_port: int, hangup_after_ms: int | None, hold_at_ms: int | None = None
) -> Path:
    """Answer the node's INVITE (PCMU and telephone-event 101, media at `media_port`), then
    wait for BYE, or send one `hangup_after_ms` after the ACK. With `hold_at_ms`, the agent
    puts the call on hold (re-INVITE, sendonly) that long after the ACK and resumes it
    (sendrecv) a second later."""
    reply = (
        "[last_Via:]\n[last_From:]\n[last_To:];tag=[pid]SIPpAgent[call_number]\n"
        "[last_Call-ID:]\n[last_CSeq:]\n[last_Record-Route:]\n"
        "Contact: <sip:agent@[local_ip]:[local_port];transport=[transport]>\n"
    )

    def sdp(version: int = 1, direction: str = "sendrecv") -> str:
        return (
            f"v=0\no=agent 1 {version} IN IP4 [local_ip]\ns=agent\nc=IN IP4 [local_ip]\nt=0 0\n"
            f"m=audio {media_port} RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\n"
            f"a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\na=ptime:20\na={direction}\n"
        )

    def request(method: str, cseq: int) -> str:  # in the dialog the node's INVITE made
        return (
            f"{method} [next_url] SIP/2.0\n"
            "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\n"
            "From: [$called_to];tag=[pid]SIPpAgent[call_number]\nTo: [$caller_from]\n"
            f"[routes]\nCall-ID: [call_id]\nCSeq: {cseq} {method}\n"
            "Contact: <sip:agent@[local_ip]:[local_port];transport=[transport]>\n"
            "Max-Forwards: 70\n"
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
            + sdp(),
            retrans=True,
        ),
        '  <recv request="ACK" crlf="true"/>\n',
    ]  # fmt: skip
    cseq = 0
    if hold_at_ms is not None:
        out.append(f'  <pause milliseconds="{hold_at_ms}"/>\n')
        for direction in ("sendonly", "sendrecv"):  # hold, then resume
            cseq += 1
            out.append(
                _send(
                    request("INVITE", cseq)
                    + "Content-Type: application/sdp\nContent-Length: [len]\n\n"
                    + sdp(cseq + 1, direction),
                    retrans=True,
                )
            )
            out.append('  <recv response="100" optional="true"/>\n')
            out.append('  <recv response="200"/>\n')
            out.append(_send(request("ACK", cseq) + "Content-Length: 0\n"))
            out.append('  <pause milliseconds="1000"/>\n')
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
        out.append(_send(request("BYE", cseq + 1) + "Content-Length: 0\n", retrans=True))
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
    state_times: list[float] = field(default_factory=list)  # when each came (time.time())
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
                        self.state_times.append(time.time())
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
    agent: SippResult | None  # None: the agent was baresip
    desk: Desk
    final: dict[str, Any]
    recording: RtpRecording
    spoken: list[np.ndarray]
    sent: np.ndarray | None  # the customer's audio (keys as tones for the in-band one)
    customer_done_at: float
    phone_log: str = ""  # baresip's log and SIP trace (the customer's or the agent's)
    phone_events: list[BaresipEvent] = field(default_factory=list)
    phone_heard: np.ndarray | None = None  # what the agent's baresip decoded (sndfile)
    page_snapshots: list[str] = field(default_factory=list)  # the agent page's DOM and text
    page_marks: dict[str, int] = field(default_factory=dict)  # the most marks each field showed


@dataclass
class Runs:
    node: SpgNode
    calls: dict[str, CallRun]
    seconds: float


def _one_call(
    name: str, node: SpgNode, api: str, workdir: Path, spoken: list[np.ndarray], start_at: float
) -> CallRun:
    wait_until(start_at)
    card = CARDS[name]
    fields = [card[: PARTIAL[name]]] if name in PARTIAL else [card + "#", EXPIRY, CVC]
    keys = key_times(fields)
    workdir.mkdir(parents=True, exist_ok=True)
    transaction = f"sbx-4990-EUR-e2e-{name.replace('_', '')}-{uuid.uuid4().hex[:6]}"
    recorder = RtpRecorder()
    agent_sipp = SippProcess(
        agent_scenario(
            workdir / f"agent-{name}.xml",
            recorder.port,
            AGENT_BYE_AFTER_MS if name == "agent_bye" else None,
            AGENT_HOLD_AT_MS if name == "agent_hold" else None,
        ),
        workdir,
        timeout_s=60,
    )
    inband = name == "inband"
    audio = None
    if name not in PARTIAL and name != "agent_hold":  # the calls checked for what was said
        audio = customer_audio(workdir / f"{name}.al", spoken, keys if inband else [])
    scenario = customer_scenario(
        workdir / f"customer-{name}.xml",
        events=not inband,
        audio=audio,
        keys=keys,
        hold_after=HOLD_AFTER if name == "rfc4733" else None,
        info=name == "rfc4733",
        bye_at={"agent_bye": None, "customer_bye": CUSTOMER_BYE_AT}.get(name, BYE_AT),
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
        final = desk.pay(1 if name in PARTIAL else 3)
        customer = customer_future.result()
    done_at = time.monotonic()
    agent = agent_sipp.wait(60)
    desk.client.close()
    recording = recorder.stop()
    sent = decode(audio.read_bytes(), "PCMA") if audio is not None else None
    return CallRun(customer, agent, desk, final, recording, spoken, sent, done_at)


def wait_until(monotonic_at: float) -> None:
    time.sleep(max(0.0, monotonic_at - time.monotonic()))


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
        call_id = desk.call_id()
        payment_id = desk.start(call_id)
        for name, keys in (
            ("payment-card-number", card + "#"),
            ("expiration-date", EXPIRY),
            ("security-code", CVC),
        ):
            desk.post(payment_id, {"capture": name})
            time.sleep(0.5)  # the customer hears the prompt start, then keys over it
            phone.sndcode(keys)
            try:
                desk.until(_captured(name), 20)
            except TimeoutError as exc:  # say which source gave a digit too many or too few
                phone.hangup()
                time.sleep(1.0)  # the node logs the call's DTMF counters at its end
                dtmf = [
                    line
                    for line in node.logs().splitlines()
                    if '"customer dtmf"' in line and call_id in line
                ]
                raise AssertionError(f"{exc}; node's DTMF counters: {dtmf}") from exc
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


# Installed in the agent page: the most key marks each field's row has shown (a 3-key field
# shows its marks for under a second, too briefly to be sure to see them by polling the DOM).
MARKS_WATCH = """() => {
  window.maxMarks = {};
  const rows = document.querySelectorAll("#fields tr[data-field]");
  new MutationObserver(() => {
    for (const row of rows) {
      const n = row.querySelector(".marks").textContent.length;
      window.maxMarks[row.dataset.field] = Math.max(window.maxMarks[row.dataset.field] || 0, n);
    }
  }).observe(document.getElementById("fields"),
             {subtree: true, childList: true, characterData: true});
}"""


def page_missing() -> str | None:
    """Why the agent page cannot be driven here (a skip reason), or None."""
    if not Path(CHROMIUM).exists():
        return "chromium is not installed (Debian package chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    return None


def _page_call(node: SpgNode, api: str, workdir: Path, ready: threading.Event) -> CallRun:
    """The agent's desktop is the agent page in headless Chromium (Playwright), opened and
    given the token (then `ready` is set: the other calls start once Chromium's start-up is
    over) before the customer (SIPp, RFC 4733 pcaps on `PAGE_STARTS`) calls with the second
    group (SECOND_GROUP_AFTER_S later); the
    agent picks the call from the list, starts the payment, presses each field's Capture
    before the customer keys it (the gaps of `PAGE_STARTS` leave time for the page to show
    the previous field captured), completes and sees the result. What the page showed is
    kept (its DOM and text at each step) for the card-data search."""
    from playwright.sync_api import expect, sync_playwright

    workdir.mkdir(parents=True, exist_ok=True)
    card = CARDS["page"]
    keys = key_times([card + "#", EXPIRY, CVC], PAGE_STARTS)
    transaction = f"sbx-4990-EUR-e2e-page-{uuid.uuid4().hex[:6]}"
    recorder = RtpRecorder()
    agent_sipp = SippProcess(
        agent_scenario(workdir / "agent-page.xml", recorder.port, None), workdir, timeout_s=60
    )
    scenario = customer_scenario(
        workdir / "customer-page.xml", events=True, audio=None, keys=keys, bye_at=PAGE_BYE_AT
    )
    desk = Desk(api, transaction)  # only to know the call's id and read the final state
    snapshots: list[str] = []
    with sync_playwright() as pw, ThreadPoolExecutor(1) as pool:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{api}/assist/")
            page.fill("#token", TOKEN)
            page.click("#token-save")
            expect(page.locator("#calls-section")).to_be_visible()
            ready.set()
            time.sleep(SECOND_GROUP_AFTER_S)
            customer_future = pool.submit(
                run_sipp, scenario, f"{HOST}:{node.sip_port}", ["-s", "assist"], 50,
                workdir=workdir, name="customer-page",
                keys={"transaction": transaction, "agent": f"sip:agent@{HOST}:{agent_sipp.port}"},
            )  # fmt: skip
            call_id = desk.call_id()
            call_row = page.locator(f'#calls tr[data-call-id="{call_id}"]')
            expect(call_row).to_be_visible(timeout=10_000)
            call_row.locator("button.select-call").click()
            expect(page.locator("#transaction")).to_have_value(transaction)
            page.click("#start")
            expect(page.locator("#payment-section")).to_be_visible()
            expect(page.locator("#amount")).to_have_text("49.90 EUR")
            page.evaluate(MARKS_WATCH)
            for name in ("payment-card-number", "expiration-date", "security-code"):
                row = page.locator(f'#fields tr[data-field="{name}"]')
                row.locator("button.capture").click()
                expect(row).to_have_class("keying")
                if name == "payment-card-number":  # 16 keys: the page shows them coming
                    expect(row.locator(".marks")).to_have_text(re.compile("●{4,}"), timeout=15_000)
                    snapshots.append(page.content())
                expect(row.locator(".field-status")).to_have_text("✓ captured", timeout=15_000)
                expect(page.locator("#error")).to_have_text("")
                snapshots.append(page.content())
            expect(page.locator("#card")).to_have_text("mastercard •••• 4444")
            expect(page.locator("#complete")).to_be_enabled()
            page.click("#complete")
            expect(page.locator("#result")).to_contain_text(
                "Result: approved — reference ", timeout=15_000
            )
            expect(page.locator("#status")).to_have_text("Status: complete")
            snapshots += [page.content(), page.inner_text("body")]
            payment_id = page.locator("#payment-id").inner_text()
            marks = page.evaluate("window.maxMarks")
        finally:
            browser.close()
        customer = customer_future.result()
    done_at = time.monotonic()
    final = dict(desk.client.get(f"/v1/payments/{payment_id}").json())
    desk.answers.append(json.dumps(final))
    desk.client.close()
    agent = agent_sipp.wait(60)
    run = CallRun(customer, agent, desk, final, recorder.stop(), [], None, done_at)
    run.page_snapshots = snapshots
    run.page_marks = dict(marks)
    return run


def _baresip_agent_call(
    node: SpgTlsNode, api: str, workdir: Path, cert: CertPair, start_at: float
) -> CallRun:
    """The reverse of `_baresip_call`: the customer is SIPp over UDP and plain RTP (RFC 4733
    pcaps, the sentences), the agent is baresip over SIP/TLS with SRTP (`srtp-mand`, answering
    at once), named by `X-SPG-Agent: <sip:agent@...;transport=tls>`. baresip's sndfile module
    keeps the audio it decoded; its ctrl_tcp events would show any key it received."""
    workdir.mkdir(parents=True, exist_ok=True)
    pem = workdir / "agent.pem"  # baresip's sip_certificate: certificate and key in one file
    pem.write_text(cert.cert.read_text() + cert.key.read_text())
    sounds = workdir / "sound"
    sounds.mkdir(exist_ok=True)
    phone = Baresip(
        workdir / "baresip",
        Account(user="agent", transport="tls", mediaenc="srtp-mand", answermode="auto"),
        cafile=cert.cert,
        extra_config={"sip_certificate": str(pem), "snd_path": str(sounds)},
        extra_modules=("sndfile.so",),
    )
    card = CARDS["srtp_agent"]
    keys = key_times([card + "#", EXPIRY, CVC])
    transaction = f"sbx-4990-EUR-e2e-srtpagent-{uuid.uuid4().hex[:6]}"
    spoken = [speech(text) for text in SENTENCES]
    audio = customer_audio(workdir / "srtp-agent.al", spoken, [], SRTP_AGENT_SPEECH_AT)
    scenario = customer_scenario(
        workdir / "customer-srtp-agent.xml", events=True, audio=audio, keys=keys, bye_at=BYE_AT
    )
    desk = Desk(api, transaction)
    with phone, ThreadPoolExecutor(1) as pool:
        wait_until(start_at)
        since = phone.cursor
        agent_uri = f"sip:agent@{HOST}:{phone.tls_port};transport=tls"
        customer_future = pool.submit(
            run_sipp, scenario, f"{HOST}:{node.sip_port}", ["-s", "assist"], 50,
            workdir=workdir, name="customer-srtp-agent",
            keys={"transaction": transaction, "agent": agent_uri},
        )  # fmt: skip
        final = desk.pay(3)
        customer = customer_future.result()
        phone.wait_event("CALL_CLOSED", 10, since)
        done_at = time.monotonic()
        events = phone.events[since:]
    desk.client.close()
    log = phone.log() + "\n".join(m.text for m in phone.sip_trace())
    heard = [w for w in sounds.glob("*.wav") if "dec" in w.name]
    run = CallRun(customer, None, desk, final, RtpRecording(), spoken, None, done_at, log)
    run.phone_events = events
    if len(heard) == 1:
        with wave.open(str(heard[0])) as wav:
            run.phone_heard = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return run


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
    if cert is not None:  # the agent's baresip serves TLS on the same certificate
        env["SPG_SIP__TLS_CA"] = str(cert.cert)
    node = (
        SpgTlsNode(workdir, cert.cert, cert.key, env) if cert is not None else SpgNode(workdir, env)
    )
    with node:
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            futures = {}
            if page_missing() is None:
                # Chromium first: its start-up would take the CPU the calls' media needs
                ready = threading.Event()
                futures["page"] = pool.submit(_page_call, node, api, workdir / "page", ready)
                while not ready.wait(0.1) and not futures["page"].done():
                    pass
            # The second group's call set-ups come after the first group's first sentence
            # (set-ups all at once would take the CPU when the sentence is relayed).
            now = time.monotonic()
            later = now + SECOND_GROUP_AFTER_S
            for name in SIPP_CALLS:
                at = later if name in SECOND_GROUP else now
                futures[name] = pool.submit(_one_call, name, node, api, workdir / name, spoken, at)
            if cert is not None and baresip_missing() is None:
                assert isinstance(node, SpgTlsNode)
                futures["srtp"] = pool.submit(_baresip_call, node, api, workdir / "srtp", cert.cert)
                futures["srtp_agent"] = pool.submit(
                    _baresip_agent_call, node, api, workdir / "srtp-agent", cert, later
                )
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
        import spandsp
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
    # The customer's voice passes unchanged. Not every piece: on a starved machine (the suite
    # runs beside load tests) the bridge's playout steps more than the 100 ms a piece may move,
    # and a missing voice finds about none.
    for sentence in run.spoken:
        assert sentence_heard(audio, sentence) > 0.7


def test_rfc4733_customer_pays_while_talking_and_holding(runs: Runs) -> None:
    run = runs.calls["rfc4733"]
    assert run.customer is not None and run.agent is not None  # both SIPp
    assert run.customer.returncode == 0, run.customer.explain()
    assert run.agent.returncode == 0, run.agent.explain()
    assert run.final["status"] == "complete" and run.final["result"] == "approved", run.final
    assert run.final["card_brand"] == "visa" and run.final["last4"] == "1111"
    # hold and resume were answered on the customer's leg, the capture went on
    answers = {
        str(m.header("CSeq")): m.text
        for m in run.customer.received(200)
        if m.cseq_method == "INVITE"
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
    assert run.customer is not None and run.agent is not None  # both SIPp
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
    assert run.customer is not None and run.agent is not None  # both SIPp
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
        if run.agent is not None:
            blobs[f"{name} agent SIP"] = run.agent.messages_log + run.agent.logs
        else:
            blobs[f"{name} agent SIP"] = run.phone_log
        if name == "page":
            blobs["agent page"] = "\n".join(run.page_snapshots)
        blobs[f"{name} events"] = json.dumps(run.desk.states)
        blobs[f"{name} API answers"] = "\n".join(run.desk.answers)
    for what, blob in blobs.items():
        assert blob, f"{what}: nothing to search"
        for card in set(CARDS.values()):
            assert card not in blob and card[:12] not in blob, what
        # (not inside a longer word or number: the hex ids of calls, tags and branches
        # hold any three or four digits now and then)
        assert not re.search(rf"(?<![0-9A-Za-z.,:]){EXPIRY}(?![0-9A-Za-z])", blob), what
        assert not re.search(rf"(?<![0-9A-Za-z.,:]){CVC}(?![0-9A-Za-z])", blob), what
    print(f"{len(runs.calls)} assisted calls at once: {runs.seconds:.1f} s")


def test_tls_srtp_customer_pays_and_the_agent_leg_is_plain_rtp(runs: Runs) -> None:
    if "srtp" not in runs.calls:
        pytest.skip("baresip or the test certificate (openssl) is missing")
    run = runs.calls["srtp"]
    assert run.agent is not None  # SIPp (the customer is baresip)
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


def sent_at(result: SippResult, first_line: str, cseq: str) -> float:
    """When SIPp sent the message starting with `first_line` with CSeq `cseq` (time.time())."""
    for m in re.finditer(
        r"^-+ (\S+ \S+)\n(?:UDP|TCP) message sent[^\n]*:\n\n(.*?)(?=^-{20,}|\Z)",
        result.messages_log,
        re.S | re.M,
    ):
        if m[2].startswith(first_line) and re.search(rf"^CSeq: {cseq}\s*$", m[2], re.M):
            return datetime.datetime.fromisoformat(m[1]).timestamp()
    raise AssertionError(f"SIPp sent no {first_line} {cseq}")


def test_agent_holds_and_resumes_mid_capture_and_the_payment_goes_on(runs: Runs) -> None:
    run = runs.calls["agent_hold"]
    assert run.customer is not None and run.agent is not None
    assert run.customer.returncode == 0, run.customer.explain()
    assert run.agent.returncode == 0, run.agent.explain()
    assert run.final["status"] == "complete" and run.final["result"] == "approved", run.final
    assert run.final["card_brand"] == "mastercard" and run.final["last4"] == "4444"
    # the agent's hold and resume were answered on its leg while the card number was keyed
    answers = {m.header("CSeq"): m.text for m in run.agent.received(200)}
    assert {"1 INVITE", "2 INVITE"} <= set(answers), run.agent.explain()
    assert "a=recvonly" in answers["1 INVITE"] and "a=sendrecv" in answers["2 INVITE"]
    # ... in the middle of the card number: keys counted before the hold and after the resume
    held, resumed = sent_at(run.agent, "INVITE ", "1 INVITE"), sent_at(run.agent, "ACK ", "2 ACK")
    card = [
        (at, s["digits_entered"])
        for at, s in zip(run.desk.state_times, run.desk.states, strict=True)
        if s.get("capture") == "payment-card-number"
    ]
    before = max(n for at, n in card if at < held)
    assert 0 < before < 16 and max(n for at, n in card if at > resumed) == 16, (card, held)
    # the customer's leg saw nothing of it: one INVITE answered, no re-INVITE
    assert [m.header("CSeq") for m in run.customer.received(200) if m.cseq_method == "INVITE"] == [
        "1 INVITE"
    ]
    assert run.agent.received("BYE")  # the customer's hang-up ended the agent's leg
    ours, theirs = digits_heard(run.recording.audio())
    assert ours == [] and theirs in ([], None)
    assert run.recording.other_packets == 0


def test_customer_hangs_up_mid_capture_and_nothing_is_charged(runs: Runs) -> None:
    run = runs.calls["customer_bye"]
    assert run.customer is not None and run.agent is not None
    assert run.customer.returncode == 0, run.customer.explain()
    assert run.agent.returncode == 0, run.agent.explain()  # it got the node's BYE
    assert run.agent.received("BYE") and not run.customer.received("BYE")
    assert run.final["status"] == "cancelled" and run.final["result"] == "hung-up", run.final
    capturing = [s for s in run.desk.states if s.get("capture") == "payment-card-number"]
    assert max(s["digits_entered"] for s in capturing) == 6
    records = [json.loads(line) for line in runs.node.cdr_lines()]
    (record,) = [r for r in records if r["transaction"] == run.desk.transaction]
    assert record["mode"] == "assist" and record["result"] == "hung-up"
    assert record["charge_state"] == "not-charged" and record["card"] is None


def test_agent_page_clicked_through_while_the_customer_keys(runs: Runs) -> None:
    if "page" not in runs.calls:
        pytest.skip(page_missing() or "")
    run = runs.calls["page"]
    assert run.customer is not None and run.agent is not None
    assert run.customer.returncode == 0, run.customer.explain()
    assert run.agent.returncode == 0, run.agent.explain()
    assert run.final["status"] == "complete" and run.final["result"] == "approved", run.final
    assert run.final["card_brand"] == "mastercard" and run.final["last4"] == "4444"
    assert f"reference {run.final['reference']}" in run.page_snapshots[-1]
    # one mark per key as SIPp keyed, a fixed-length field's last key included
    assert run.page_marks == {
        "payment-card-number": 16,
        "expiration-date": 4,
        "security-code": 3,
    }, run.page_marks
    records = {json.loads(line)["transaction"]: json.loads(line) for line in runs.node.cdr_lines()}
    record = records[run.desk.transaction]
    assert record["mode"] == "assist" and record["result"] == "approved"
    assert run.recording.other_packets == 0  # no key reached the agent as an event
    ours, theirs = digits_heard(run.recording.audio())
    assert ours == [] and theirs in ([], None)


def test_tls_srtp_agent_and_plain_rtp_customer(runs: Runs) -> None:
    if "srtp_agent" not in runs.calls:
        pytest.skip("baresip or the test certificate (openssl) is missing")
    run = runs.calls["srtp_agent"]
    assert run.customer is not None
    assert run.customer.returncode == 0, run.customer.explain()
    assert run.final["status"] == "complete" and run.final["result"] == "approved", run.final
    assert run.final["card_brand"] == "visa" and run.final["last4"] == "1111"
    # the customer's leg is plain RTP, the agent's SIP over TLS with SRTP
    (ok,) = [m for m in run.customer.received(200) if m.cseq_method == "INVITE"]
    assert re.search(r"^m=audio \d+ RTP/AVP ", ok.text, re.M) and "a=crypto" not in ok.text
    trace = parse_sip_trace(run.phone_log)
    (invite,) = [m for m in trace if m.text.startswith("INVITE ")]
    (answer,) = [m for m in trace if m.status == 200 and m.cseq_method == "INVITE"]
    for message in (invite, answer):  # both over TLS, both SRTP, telephone-event offered
        assert message.transport == "TLS" and "a=crypto:" in message.text, message.text
        assert re.search(r"^m=audio \d+ RTP/SAVP [0-9 ]* 101$", message.text, re.M), message.text
    types = [e.type for e in run.phone_events]
    assert "CALL_ESTABLISHED" in types and "CALL_CLOSED" in types, types
    (menc,) = [e for e in run.phone_events if e.type == "CALL_MENC"]
    assert "AES_CM_128_HMAC_SHA1_80" in menc.param
    # the agent received no key: no RFC 4733 event (baresip reports each one) ...
    assert not [e for e in run.phone_events if "DTMF" in e.type], types
    # ... and none in what it decoded, where the customer's sentences are
    assert run.phone_heard is not None, "baresip's sndfile recorded nothing"
    assert run.phone_heard.size > 15 * RATE
    ours, theirs = digits_heard(run.phone_heard)
    assert ours == [] and theirs in ([], None)
    for sentence in run.spoken:  # baresip's adaptive jitter buffer adds 20 ms steps of its own
        assert sentence_heard(run.phone_heard, sentence) > 0.7
