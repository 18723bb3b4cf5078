"""Whole payment calls in one process: a node, the in-process sandbox, and our test caller.

These drive the real UA over loopback UDP (no SIPp here: that is test_kamailio_sipp.py). They run
several calls at once and search everything the node emitted — every SIP message it sent, every
log record, the CDR file and the result callbacks — for the card data that was keyed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from spg_media import observability as obs
from spg_media.cdr import CallbackSender
from spg_media.config import Config, load_config
from spg_media.payment.signing import sign_handoff
from spg_media.server import Server
from spg_media.sip.message import SipRequest, SipResponse, make_response, parse_message
from spg_media.testcaller import CallerReport, TestCaller

REPO = Path(__file__).resolve().parents[2]
CARDS = {
    "4111111111111111": ("1230", "123"),
    "5555555555554444": ("0731", "737"),
    "378282246310005": ("1129", "7373"),
    "4000000000000002": ("0928", "456"),
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric_values() -> dict[str, float]:
    """The process-wide counters a payment call must move."""
    return {
        "approved": obs.CALLS_TOTAL.get(result="approved"),
        "declined": obs.CALLS_TOTAL.get(result="declined"),
        "digits": obs.DTMF_DIGITS_TOTAL.get(source="rfc4733"),
        "authorize": sum(
            obs.CONNECTOR_REQUESTS_TOTAL.get(op="authorize", outcome=o)
            for o in ("approved", "declined", "error")
        ),
        "rtp_in": obs.RTP_PACKETS_TOTAL.get(direction="in"),
        "rtp_out": obs.RTP_PACKETS_TOTAL.get(direction="out"),
        "invites_in": obs.SIP_MESSAGES_TOTAL.get(direction="in", kind="INVITE"),
        "active": obs.CALLS_ACTIVE.get(),
    }


def node_config(tmp_path: Path, **ivr: Any) -> Config:
    base = load_config(None, env={})
    return dataclasses.replace(
        base,
        sip=dataclasses.replace(base.sip, listen=(f"udp:127.0.0.1:{free_port()}",)),
        admin=dataclasses.replace(base.admin, listen=""),
        # tests run beside others on a small machine: no refusal because a neighbour is busy
        admission=dataclasses.replace(
            base.admission, max_tick_busy=0, max_tick_lag_ms=0, max_loop_lag_ms=0
        ),
        ivr=dataclasses.replace(
            base.ivr, first_digit_timeout_s=3.0, inter_digit_timeout_s=2.0, **ivr
        ),
        handoff=dataclasses.replace(base.handoff, callback_allow=("https://merchant.test/",)),
        log=dataclasses.replace(
            base.log,
            cdr_path=str(tmp_path / "cdr.jsonl"),
            journal_path=str(tmp_path / "journal.jsonl"),
        ),
        tts=dataclasses.replace(base.tts, cache_dir=str(REPO / ".spg-cache" / "prompts")),
    )


class Capture:
    """Everything the node sent on SIP and to the callback URL."""

    def __init__(self) -> None:
        self.sip: list[bytes] = []
        self.callbacks: list[bytes] = []

    def callback_transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            self.callbacks.append(request.content)
            return httpx.Response(200)

        return httpx.MockTransport(handle)


async def start_node(config: Config, capture: Capture) -> tuple[Server, int]:
    server = Server(config)
    await server.start()
    assert server.services is not None
    ua = server.services.ua
    original = ua._send

    def spy(data: bytes, address: Any) -> None:
        capture.sip.append(data)
        original(data, address)

    ua._send = spy  # type: ignore[method-assign]
    server.services.callbacks = CallbackSender(
        config.gateway.secret,
        config.handoff.callback_allow,
        transport=capture.callback_transport(),
    )
    port = int(config.sip.listen[0].rsplit(":", 1)[1])
    return server, port


async def pay(
    port: int,
    token: str,
    fields: list[str],
    *,
    wait_prompts: bool = False,
    hangup_after: int | None = None,
    inband: bool = False,
) -> CallerReport:
    caller = TestCaller(
        ("127.0.0.1", port),
        token,
        return_to="sip:agent@127.0.0.1:5999",
        extra_headers=[("X-SPG-Callback", "https://merchant.test/result")],
        inband=inband,
    )
    try:
        await caller.start()
        assert await caller.call() == 200
        await asyncio.sleep(0.3)
        for index, keys in enumerate(fields):
            if wait_prompts:
                await caller.wait_prompt_end()
            await caller.key(keys, gap_s=0.06)
            if hangup_after is not None and index + 1 >= hangup_after:
                await caller.hangup()
                return caller.report
        return await caller.wait_end(90)
    finally:
        await caller.close()


def cdr_lines(config: Config) -> list[dict[str, Any]]:
    path = Path(config.log.cdr_path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def token(text: str) -> re.Pattern[str]:
    """`text` standing alone (not inside a longer number, hex id or word)."""
    return re.compile(rf"(?<![0-9A-Za-z.]){re.escape(text)}(?![0-9A-Za-z.])")


def assert_no_card_data(blobs: list[str], cards: dict[str, tuple[str, str]]) -> None:
    for pan, (expiry, cvc) in cards.items():
        forbidden = [token(expiry), token(f"{expiry[:2]}/{expiry[2:]}"), token(cvc)]
        for blob in blobs:
            assert pan not in blob
            # nothing beyond the last four: the digits before them, starting a digit run (a
            # float on /metrics such as 10.940000000000001 holds 400000000000 by chance)
            assert not re.search(rf"(?<![\d.]){pan[:-4]}", blob)
            assert "exp_month" not in blob and "cvc" not in blob.lower()
            for pattern in forbidden:
                assert not pattern.search(blob), pattern.pattern


STANDARD_RECORD_FIELDS = set(vars(logging.LogRecord("n", 0, "p", 0, "m", None, None))) | {
    "message",
    "asctime",
}


def log_text(record: logging.LogRecord) -> str:
    """What a log line can carry: the message, its extras and any exception text."""
    extras = {k: v for k, v in vars(record).items() if k not in STANDARD_RECORD_FIELDS}
    return f"{record.getMessage()} {extras} {record.exc_text or ''}"


@pytest.mark.timeout(180)
def test_concurrent_payments_approve_decline_and_leak_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = node_config(tmp_path)
    admin = f"127.0.0.1:{free_tcp_port()}"
    config = dataclasses.replace(config, admin=dataclasses.replace(config.admin, listen=admin))
    capture = Capture()
    before = metric_values()
    admin_pages: dict[str, str] = {}

    async def scenario() -> list[CallerReport]:
        server, port = await start_node(config, capture)
        try:
            calls = [
                pay(port, f"sbx-4990-EUR-t{i}", [pan + "#", expiry, cvc])
                for i, (pan, (expiry, cvc)) in enumerate(CARDS.items())
            ]
            reports = list(await asyncio.gather(*calls))
            async with httpx.AsyncClient(base_url=f"http://{admin}") as client:
                for page in ("/metrics", "/calls", "/healthz"):
                    response = await client.get(page)
                    assert response.status_code == 200, page
                    admin_pages[page] = response.text
            return reports
        finally:
            await server.stop(grace_s=10)

    reports = asyncio.run(scenario())
    after = metric_values()
    assert after["approved"] - before["approved"] == 3
    assert after["declined"] - before["declined"] == 1
    assert after["digits"] - before["digits"] == sum(
        len(pan) + 1 + len(expiry) + len(cvc) for pan, (expiry, cvc) in CARDS.items()
    )
    assert after["authorize"] - before["authorize"] == 4
    assert after["rtp_in"] > before["rtp_in"] and after["rtp_out"] > before["rtp_out"]
    assert after["invites_in"] - before["invites_in"] >= 4  # retransmissions count too
    assert after["active"] == before["active"]
    assert 'spg_calls_total{result="approved"}' in admin_pages["/metrics"]
    results = [r.result_headers.get("X-SPG-Result") for r in reports]
    assert results == ["approved", "approved", "approved", "declined"]
    assert reports[0].result_headers["X-SPG-Card"] == "visa 1111"
    assert reports[2].result_headers["X-SPG-Card"] == "amex 0005"
    assert reports[0].result_headers["X-SPG-Reference"]
    assert all(r.ended_by == "refer" for r in reports)
    assert "x-spg-result=approved" in reports[0].refer_to

    records = cdr_lines(config)
    assert sorted(r["result"] for r in records) == ["approved", "approved", "approved", "declined"]
    assert {r["card"]["last4"] for r in records} == {"1111", "4444", "0005", "0002"}
    assert len(capture.callbacks) == 4

    blobs = [data.decode("utf-8", "replace") for data in capture.sip]
    blobs += [data.decode() for data in capture.callbacks]
    blobs += [Path(config.log.cdr_path).read_text()]
    blobs += [log_text(record) for record in caplog.records]
    blobs += list(admin_pages.values())
    assert_no_card_data(blobs, CARDS)


@pytest.mark.timeout(120)
def test_unknown_transaction_and_cancel_and_hangup(tmp_path: Path) -> None:
    config = node_config(tmp_path)
    capture = Capture()

    async def scenario() -> list[CallerReport]:
        server, port = await start_node(config, capture)
        try:
            return list(
                await asyncio.gather(
                    pay(port, "nope-123", []),
                    pay(port, "sbx-100-EUR-cancel", ["*"]),
                    pay(port, "sbx-100-EUR-hangup", ["4111"], hangup_after=1),
                )
            )
        finally:
            await server.stop(grace_s=10)

    invalid, cancelled, hung_up = asyncio.run(scenario())
    assert invalid.result_headers.get("X-SPG-Result") == "invalid-transaction"
    assert cancelled.result_headers.get("X-SPG-Result") == "cancelled"
    assert hung_up.ended_by == "caller"
    results = {r["transaction"]: r["result"] for r in cdr_lines(config)}
    assert results == {
        "nope-123": "invalid-transaction",
        "sbx-100-EUR-cancel": "cancelled",
        "sbx-100-EUR-hangup": "hung-up",
    }


@pytest.mark.timeout(120)
def test_inband_tones_alone_pay_and_leak_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No telephone-event in the offer: the card is keyed as tones in the PCMU stream."""
    caplog.set_level(logging.DEBUG)
    config = node_config(tmp_path)
    capture = Capture()
    pan, (expiry, cvc) = "5555555555554444", CARDS["5555555555554444"]
    before = obs.DTMF_DIGITS_TOTAL.get(source="inband")
    latencies = obs.DTMF_LATENCY_SECONDS.get_count(source="inband")
    latency_sum = obs.DTMF_LATENCY_SECONDS.get_sum(source="inband")

    async def scenario() -> CallerReport:
        server, port = await start_node(config, capture)
        try:
            return await pay(port, "sbx-4990-EUR-tones", [pan + "#", expiry, cvc], inband=True)
        finally:
            await server.stop(grace_s=10)

    report = asyncio.run(scenario())
    assert report.result_headers.get("X-SPG-Result") == "approved"
    assert report.result_headers["X-SPG-Card"] == "mastercard 4444"
    keyed = len(pan) + 1 + 4 + 3
    assert obs.DTMF_DIGITS_TOTAL.get(source="inband") - before == keyed
    # Every digit's latency observed, from the packet carrying its onset: a tone needs about
    # 20 ms of audio to be told from speech (the rest of the onset's packet and what follows),
    # then the next receive pass, then the call's inbox. Our caller's tones begin with a
    # packet, so each can be decided on that packet's arrival: a few milliseconds, not zero.
    assert obs.DTMF_LATENCY_SECONDS.get_count(source="inband") - latencies == keyed
    mean = (obs.DTMF_LATENCY_SECONDS.get_sum(source="inband") - latency_sum) / keyed
    assert 0.001 < mean < 0.2, mean
    [record] = cdr_lines(config)
    assert record["result"] == "approved"
    blobs = [data.decode("utf-8", "replace") for data in capture.sip]
    blobs += [Path(config.log.cdr_path).read_text()]
    blobs += [log_text(record) for record in caplog.records]
    assert_no_card_data(blobs, {pan: (expiry, cvc)})


@pytest.mark.timeout(120)
def test_tls_srtp_payment_survives_forged_truncated_and_replayed_packets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TLS + SRTP: an attacker on the media path injects mid-call, the caller re-keys with a
    re-INVITE between fields; the payment is untouched and every bad packet is counted."""
    from spg_media.rtp.packet import build_rtp
    from spg_media.tlscert import make_self_signed

    caplog.set_level(logging.DEBUG)
    pair = make_self_signed(tmp_path / "tls")
    base = node_config(tmp_path)
    config = dataclasses.replace(
        base,
        sip=dataclasses.replace(
            base.sip,
            listen=(f"tls:127.0.0.1:{free_tcp_port()}",),
            tls_cert=str(pair.cert),
            tls_key=str(pair.key),
        ),
        rtp=dataclasses.replace(base.rtp, srtp="required"),
        admin=dataclasses.replace(base.admin, listen=f"127.0.0.1:{free_tcp_port()}"),
    )
    capture = Capture()
    pan, (expiry, cvc) = "4111111111111111", CARDS["4111111111111111"]
    live: list[dict[str, Any]] = []  # the admin /calls page mid-call
    before = {
        "srtp": obs.RTP_DROPPED_TOTAL.get(reason="srtp"),
        "digits": obs.DTMF_DIGITS_TOTAL.get(source="rfc4733"),
    }

    async def attack(caller: TestCaller, first_seq: int) -> int:
        """Forged, truncated, replayed and clear packets, from the caller's own port."""
        assert caller.rtp is not None and caller.remote_rtp is not None
        assert caller.srtp is not None
        sent = 0
        for n in range(5):
            clear_press = build_rtp(101, 60000 + n, 99, 0xBAD, bytes([9, 10, 0, 160]), True)
            genuine = caller.srtp.protect_rtp(
                build_rtp(0, first_seq + n, 160 * n, 0xBAD, b"\xff" * 160, False)
            )
            assert genuine is not None
            forged = bytearray(genuine)
            forged[-1] ^= 0xFF
            for packet in (clear_press, bytes(forged), genuine[:20], genuine, genuine):
                caller.rtp.sendto(packet, caller.remote_rtp)
            sent += 4  # all but the first copy of the genuine packet are refused
            await asyncio.sleep(0.02)
        return sent

    keys: list[str] = []  # every SDES key of the call, both sides, before and after re-keying

    async def scenario() -> tuple[CallerReport, int]:
        server, port = await start_node(config, capture)
        caller = TestCaller(
            ("127.0.0.1", port),
            "sbx-4990-EUR-srtp",
            return_to="sip:agent@127.0.0.1:5999",
            transport="tls",
            srtp=True,
            tls_ca_file=str(pair.cert),
            request_uri=f"sips:pay@127.0.0.1:{port}",  # a sips: dialog (RFC 3261 §12.1.1)
        )
        try:
            await caller.start()
            assert await caller.call() == 200
            assert caller.srtp_suite == "AES_CM_128_HMAC_SHA1_80"
            await asyncio.sleep(0.3)
            refused = await attack(caller, 50000)
            await caller.key(pan + "#", gap_s=0.06)
            refused += await attack(caller, 50100)
            old_keys = caller.srtp
            assert await caller.reinvite(new_keys=True) == 200  # re-keying mid-payment
            assert caller.srtp is not None and old_keys is not None
            assert not caller.srtp.remote.same_key(old_keys.remote)  # the node's key is new too
            await caller.key(expiry, gap_s=0.06)
            # the retired key no longer opens anything
            stale = old_keys.protect_rtp(build_rtp(0, 50200, 0, 0xBAD, b"\xff" * 160, False))
            assert stale is not None and caller.rtp is not None
            caller.rtp.sendto(stale, caller.remote_rtp)
            refused += 1
            async with httpx.AsyncClient(base_url=f"http://{config.admin.listen}") as client:
                live.extend((await client.get("/calls")).json())
            await caller.key(cvc, gap_s=0.06)
            for context in (old_keys, caller.srtp):
                for line in (context.local, context.remote):
                    keys.append(line.sdp_value().split("inline:")[1].split("|")[0])
            return await caller.wait_end(90), refused
        finally:
            await caller.close()
            await server.stop(grace_s=10)

    report, refused = asyncio.run(scenario())
    assert report.result_headers.get("X-SPG-Result") == "approved"
    assert report.result_headers["X-SPG-Card"] == "visa 1111"
    assert report.audio_packets > 50  # the caller decrypted the prompts
    assert obs.DTMF_DIGITS_TOTAL.get(source="rfc4733") - before["digits"] == 16 + 1 + 4 + 3
    assert obs.RTP_DROPPED_TOTAL.get(reason="srtp") - before["srtp"] == refused
    blobs = [data.decode("utf-8", "replace") for data in capture.sip]
    blobs += [Path(config.log.cdr_path).read_text()]
    blobs += [log_text(record) for record in caplog.records]
    assert_no_card_data(blobs, {pan: (expiry, cvc)})
    assert len(set(keys)) == 4
    [call] = live
    assert call["signalling"] == "tls"
    assert call["media"]["srtp"] == "AES_CM_128_HMAC_SHA1_80"
    assert sum(call["media"]["srtp_drops"].values()) == refused
    for key in keys:  # keys travel only in SDP bodies (inside TLS), never in logs or the CDR
        assert not any(key in blob for blob in blobs[len(capture.sip) :])
    assert any("RTP/SAVP" in blob and "a=crypto:" in blob for blob in blobs[:5])
    ok = next(b for b in blobs if b.startswith("SIP/2.0 200") and "1 INVITE" in b)
    node_port = config.sip.listen[0].rsplit(":", 1)[1]
    assert f"Contact: <sips:spg@127.0.0.1:{node_port}>" in ok, ok


# ---- raw SIP: calls that end before their journey, session timers, UPDATE ------------------------

SDP_OFFER = (
    "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
)


class RawPeer:
    """A caller's SIP side as raw UDP on loopback: what it sends is written out here."""

    def __init__(self, node_port: int, call_id: str, extra: Sequence[str] = ()) -> None:
        self.node = ("127.0.0.1", node_port)
        self.call_id = call_id
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.to_tag = ""
        self.cseq = 1
        self.extra = list(extra)  # header lines on every request

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, method: str, extra: list[str], body: str = "", cseq: int = 0) -> bytes:
        tag = f";tag={self.to_tag}" if self.to_tag else ""
        branch_method = "INVITE" if method == "CANCEL" else method  # a CANCEL is its INVITE's
        lines = [
            f"{method} sip:pay@127.0.0.1:{self.node[1]};x-spg-transaction=sbx-100-EUR-"
            f"{self.call_id} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK-{self.call_id}-"
            f"{branch_method}-{cseq or self.cseq}",
            "Max-Forwards: 70",
            f"From: <sip:caller@127.0.0.1>;tag=c-{self.call_id}",
            f"To: <sip:pay@127.0.0.1>{tag}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq or self.cseq} {method}",
            f"Contact: <sip:caller@127.0.0.1:{self.port}>",
            *self.extra,
            *extra,
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, self.node)

    async def receive(self, timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        while True:
            message = parse_message(
                await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
            )
            if isinstance(message, SipResponse) and message.status < 200:
                continue
            return message

    async def final(self, method: str, timeout: float = 10) -> SipResponse:
        """The next final response to a `method` request (others are passed over)."""
        while True:
            message = await self.receive(timeout)
            if isinstance(message, SipResponse) and message.cseq[1] == method:
                return message

    async def answer(self, request: SipRequest, status: int) -> None:
        await self.send(make_response(request, status).to_bytes())

    async def invite(self, extra: list[str]) -> SipResponse:
        await self.send(self.request("INVITE", extra, SDP_OFFER))
        answer = await self.receive(10)
        assert isinstance(answer, SipResponse)
        if answer.status == 200:
            self.to_tag = answer.to.tag or ""
            await self.send(self.request("ACK", [], cseq=1))
        return answer

    async def expect(self, method: str, timeout: float) -> SipRequest:
        message = await self.receive(timeout)
        assert isinstance(message, SipRequest) and message.method == method, message
        return message


@pytest.mark.timeout(60)
def test_calls_ended_before_their_journey_are_recorded_hung_up(tmp_path: Path) -> None:
    """A CANCEL while the transaction is looked up, and a BYE before the ACK: each call is
    still a CDR line and a callback (`hung-up`)."""
    config = node_config(tmp_path)
    capture = Capture()

    async def scenario() -> tuple[str, str, str]:
        server, port = await start_node(config, capture)
        assert server.services is not None
        services = server.services
        connector = services.connector
        looking = asyncio.Event()
        release = asyncio.Event()

        class SlowLookup:
            """The platform takes its time over the lookup (until released)."""

            async def lookup(self, token: str) -> Any:
                looking.set()
                await release.wait()
                return await connector.lookup(token)

            def __getattr__(self, name: str) -> Any:
                return getattr(connector, name)

        services.connector = SlowLookup()
        callback = ["X-SPG-Callback: https://merchant.test/result"]
        try:
            with (
                RawPeer(port, "gone1", callback) as first,
                RawPeer(port, "gone2", callback) as second,
            ):
                await first.send(first.request("INVITE", [], SDP_OFFER))
                await asyncio.wait_for(looking.wait(), 5)
                await first.send(first.request("CANCEL", []))
                cancel = (await first.final("CANCEL")).to_bytes().decode()
                release.set()
                invite = (await first.final("INVITE")).to_bytes().decode()

                # the second caller: answered, then gone before its ACK
                await second.send(second.request("INVITE", [], SDP_OFFER))
                ok = await second.final("INVITE")
                answered = ok.to_bytes().decode()
                second.to_tag = ok.to.tag or ""
                await second.send(second.request("BYE", [], cseq=2))
                await second.final("BYE")
                for _ in range(100):
                    if len(cdr_lines(config)) == 2 and len(capture.callbacks) == 2:
                        break
                    await asyncio.sleep(0.05)
                return cancel, invite, answered
        finally:
            await server.stop(grace_s=5)

    cancel, invite, answered = asyncio.run(scenario())
    assert cancel.startswith("SIP/2.0 200") and invite.startswith("SIP/2.0 487"), invite
    assert answered.startswith("SIP/2.0 200")
    results = {r["call_id"]: r["result"] for r in cdr_lines(config)}
    assert results == {"gone1": "hung-up", "gone2": "hung-up"}
    assert sorted(json.loads(c)["result"] for c in capture.callbacks) == ["hung-up", "hung-up"]


@pytest.mark.timeout(120)
def test_signed_handoffs_pay_and_bad_signatures_end_invalid_handoff(tmp_path: Path) -> None:
    """`handoff.signing_secret` set: a good X-SPG-Signature pays; a stale, a forged or a
    missing one ends `invalid-handoff`, and the caller is not sent to the X-SPG-Return-To it
    failed to vouch for."""
    secret = "pbx-and-node-share-this"
    config = node_config(tmp_path)
    config = dataclasses.replace(
        config, handoff=dataclasses.replace(config.handoff, signing_secret=secret)
    )
    return_to = "sip:agent@127.0.0.1:5999"
    callback = "https://merchant.test/result"
    capture = Capture()

    def signer(key: str, age_s: float) -> Callable[[str], str]:
        def sign(call_id: str) -> str:
            txn = f"sbx-4990-EUR-sig-{key}"
            return sign_handoff(
                key if key == "forged" else secret,
                int(time.time() - age_s),
                call_id,
                txn,
                return_to,
                callback,
            )

        return sign

    async def one(key: str, age_s: float | None, fields: list[str]) -> CallerReport:
        caller = TestCaller(
            ("127.0.0.1", port_box[0]),
            f"sbx-4990-EUR-sig-{key}",
            return_to=return_to,
            extra_headers=[("X-SPG-Callback", callback)],
            handoff_signature=None if age_s is None else signer(key, age_s),
        )
        try:
            await caller.start()
            assert await caller.call() == 200
            await asyncio.sleep(0.3)
            for keys in fields:
                await caller.key(keys, gap_s=0.06)
            return await caller.wait_end(90)
        finally:
            await caller.close()

    port_box: list[int] = []

    async def scenario() -> list[CallerReport]:
        server, port = await start_node(config, capture)
        port_box.append(port)
        try:
            return list(
                await asyncio.gather(
                    one("good", 1.0, ["4111111111111111#", "1230", "123"]),
                    one("stale", 3600.0, []),
                    one("forged", 1.0, []),
                    one("none", None, []),
                )
            )
        finally:
            await server.stop(grace_s=10)

    good, stale, forged, unsigned = asyncio.run(scenario())
    assert good.result_headers.get("X-SPG-Result") == "approved"
    assert good.ended_by == "refer" and good.refer_to.startswith(f"<{return_to};")
    for report in (stale, forged, unsigned):
        assert report.result_headers.get("X-SPG-Result") == "invalid-handoff"
        assert report.ended_by == "bye"  # not REFERred to the unverified Return-To
    results = {r["transaction"]: r["result"] for r in cdr_lines(config)}
    assert results == {
        "sbx-4990-EUR-sig-good": "approved",
        "sbx-4990-EUR-sig-stale": "invalid-handoff",
        "sbx-4990-EUR-sig-forged": "invalid-handoff",
        "sbx-4990-EUR-sig-none": "invalid-handoff",
    }


async def cancel_at_once(port: int, token: str, **options: Any) -> CallerReport:
    """A call whose caller keys '*' on the empty card field: `cancelled`, a result at once."""
    caller = TestCaller(("127.0.0.1", port), token, **options)
    try:
        await caller.start()
        assert await caller.call() == 200
        await asyncio.sleep(0.3)
        await caller.key("*")
        return await caller.wait_end(80)
    finally:
        await caller.close()


@pytest.mark.timeout(150)
def test_a_failed_transfer_back_ends_with_a_bye_carrying_the_result(tmp_path: Path) -> None:
    """REFER refused, REFER unanswered (it times out), NOTIFY reporting failure:
    each time a BYE carries the same X-SPG-* headers the REFER did."""
    config = node_config(tmp_path)
    capture = Capture()

    async def one(port: int, mode: str) -> CallerReport:
        return await cancel_at_once(
            port,
            f"sbx-100-EUR-transfer-{mode}",
            return_to="sip:agent@127.0.0.1:5999",
            transfer=mode,
        )

    async def scenario() -> list[CallerReport]:
        server, port = await start_node(config, capture)
        try:
            return list(await asyncio.gather(*(one(port, m) for m in ("refuse", "fail", "silent"))))
        finally:
            await server.stop(grace_s=10)

    for report in asyncio.run(scenario()):
        assert report.refer_to.startswith("<sip:agent@127.0.0.1:5999;x-spg-result=cancelled")
        assert report.bye_headers, report  # ended by our BYE, not by the transfer
        assert report.bye_headers.get("X-SPG-Result") == "cancelled"
        assert report.bye_headers == report.result_headers  # the same as the REFER's


@pytest.mark.timeout(120)
def test_where_the_caller_is_returned(tmp_path: Path) -> None:
    """X-SPG-Return-To, as a header or a Request-URI parameter (the header wins),
    else the Referred-By of the transferred INVITE."""
    config = node_config(tmp_path)
    capture = Capture()

    async def one(port: int, name: str, **options: Any) -> CallerReport:
        return await cancel_at_once(port, f"sbx-100-EUR-return-{name}", **options)

    async def scenario() -> list[CallerReport]:
        server, port = await start_node(config, capture)
        uri = f"sip:pay@127.0.0.1:{port};x-spg-return-to=sip:queue@127.0.0.1:5997"
        try:
            return list(
                await asyncio.gather(
                    one(port, "param", request_uri=uri),
                    one(port, "both", request_uri=uri, return_to="sip:agent@127.0.0.1:5999"),
                    one(
                        port,
                        "referred",
                        extra_headers=[("Referred-By", "<sip:agent7@127.0.0.1:5996>")],
                    ),
                )
            )
        finally:
            await server.stop(grace_s=10)

    param, both, referred = asyncio.run(scenario())
    assert param.refer_to.startswith("<sip:queue@127.0.0.1:5997;x-spg-result=cancelled")
    assert both.refer_to.startswith("<sip:agent@127.0.0.1:5999;x-spg-result=cancelled")
    assert referred.refer_to.startswith("<sip:agent7@127.0.0.1:5996;x-spg-result=cancelled")


@pytest.mark.timeout(60)
def test_session_timers_refresh_expire_and_refuse_too_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With intervals of seconds (our minimum lowered to 2 for the test): as refresher (uas)
    the node UPDATEs at half the interval and ends the call when a refresh gets 481; with the
    caller refreshing (uac), a refresh is answered with the interval and silence ends the call
    by BYE; an interval under the minimum gets 422 with Min-SE."""
    from spg_media.sip import session_timer

    monkeypatch.setattr(session_timer, "MIN_SE", 2)
    monkeypatch.setattr(
        session_timer, "negotiate", functools.partial(session_timer.negotiate, min_se=2)
    )
    config = node_config(tmp_path)
    capture = Capture()
    timer_headers = ["Supported: timer", "Allow: INVITE, ACK, BYE, CANCEL, UPDATE"]

    async def we_refresh(port: int) -> list[str]:
        with RawPeer(port, "st-uas") as peer:
            answer = await peer.invite([*timer_headers, "Session-Expires: 4;refresher=uas"])
            assert answer.status == 200 and answer.headers.get("Require") == "timer"
            seen = [answer.headers.get("Session-Expires") or ""]
            started = time.monotonic()
            first = await peer.expect("UPDATE", 4)
            seen.append(
                f"{round(time.monotonic() - started)}s {first.headers.get('Session-Expires')}"
            )
            assert not first.body  # a refresh, no offer
            await peer.answer(first, 200)
            second = await peer.expect("UPDATE", 4)
            await peer.answer(second, 481)
            await peer.answer(await peer.expect("BYE", 4), 200)
            return seen

    async def they_refresh(port: int) -> list[str]:
        with RawPeer(port, "st-uac") as peer:
            answer = await peer.invite([*timer_headers, "Session-Expires: 6"])
            seen = [answer.headers.get("Session-Expires") or ""]
            await asyncio.sleep(1)
            peer.cseq = 2
            await peer.send(peer.request("UPDATE", ["Session-Expires: 6;refresher=uac"]))
            refreshed = await peer.receive(4)
            assert isinstance(refreshed, SipResponse) and refreshed.status == 200
            seen.append(refreshed.headers.get("Session-Expires") or "")
            started = time.monotonic()
            await peer.answer(await peer.expect("BYE", 8), 200)  # 6 - min(32, 6 / 3) s later
            seen.append(f"{round(time.monotonic() - started)}s")
            return seen

    async def too_small(port: int) -> SipResponse:
        with RawPeer(port, "st-small") as peer:
            return await peer.invite([*timer_headers, "Session-Expires: 1"])

    async def scenario() -> tuple[list[str], list[str], SipResponse]:
        server, port = await start_node(config, capture)
        try:
            return await asyncio.gather(we_refresh(port), they_refresh(port), too_small(port))
        finally:
            await server.stop(grace_s=5)

    ours, theirs, small = asyncio.run(scenario())
    assert ours == ["4;refresher=uas", "2s 4;refresher=uas"]
    assert theirs == ["6;refresher=uac", "6;refresher=uac", "4s"]
    assert small.status == 422 and small.headers.get("Min-SE") == "2"
    results = {r["call_id"]: r["result"] for r in cdr_lines(config)}
    assert results == {"st-uas": "hung-up", "st-uac": "hung-up"}


@pytest.mark.timeout(60)
def test_an_update_with_an_offer_gets_an_answer(tmp_path: Path) -> None:
    """RFC 3311: an UPDATE may carry an SDP offer (here: hold); its 2xx carries the answer."""
    config = node_config(tmp_path)
    capture = Capture()

    async def scenario() -> tuple[SipResponse, SipResponse]:
        server, port = await start_node(config, capture)
        try:
            with RawPeer(port, "upd-offer") as peer:
                assert (await peer.invite([])).status == 200
                peer.cseq = 2
                hold = SDP_OFFER.replace("o=t 1 1", "o=t 1 2") + "a=sendonly\r\n"
                await peer.send(peer.request("UPDATE", [], hold))
                held = await peer.receive(5)
                peer.cseq = 3
                await peer.send(peer.request("UPDATE", []))  # no offer: a refresh
                refreshed = await peer.receive(5)
                assert isinstance(held, SipResponse) and isinstance(refreshed, SipResponse)
                return held, refreshed
        finally:
            await server.stop(grace_s=5)

    held, refreshed = asyncio.run(scenario())
    assert held.status == 200 and b"a=recvonly" in held.body and b"m=audio" in held.body
    assert refreshed.status == 200 and not refreshed.body


@pytest.mark.timeout(60)
def test_a_failure_of_ours_still_answers_the_invite_and_records_the_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Something in the node raises (here the connector, with an exception it should never
    raise): the INVITE gets 500, the call an `error` record, and the node carries on."""
    config = node_config(tmp_path)
    capture = Capture()

    async def scenario() -> tuple[SipResponse, CallerReport]:
        server, port = await start_node(config, capture)
        assert server.services is not None
        services = server.services
        connector = services.connector

        class Broken:
            calls = 0

            async def lookup(self, token: str) -> Any:
                Broken.calls += 1
                if Broken.calls == 1:
                    raise RuntimeError("a bug")
                return await connector.lookup(token)

            def __getattr__(self, name: str) -> Any:
                return getattr(connector, name)

        services.connector = Broken()
        try:
            with RawPeer(port, "bug-1") as peer:
                failed = await peer.invite([])
                after = await pay(port, "sbx-100-EUR-after-bug", ["*"])  # the next call is fine
                return failed, after
        finally:
            await server.stop(grace_s=5)

    failed, after = asyncio.run(scenario())
    assert failed.status == 500
    assert after.result_headers.get("X-SPG-Result") == "cancelled"
    results = {r["call_id"]: r["result"] for r in cdr_lines(config)}
    assert results["bug-1"] == "error"
    assert "call failed" in caplog.text


@pytest.mark.timeout(60)
def test_callbacks_allowed_with_no_signing_key_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="spg.server")

    async def start(secret: str) -> None:
        config = node_config(tmp_path)  # callbacks allowed to https://merchant.test/
        config = dataclasses.replace(
            config, gateway=dataclasses.replace(config.gateway, secret=secret)
        )
        server, _ = await start_node(config, Capture())
        await server.stop(grace_s=1)

    asyncio.run(start(""))
    assert "signed with gateway.secret, which is empty" in caplog.text
    caplog.clear()
    asyncio.run(start("merchant-and-node-share-this"))
    assert "gateway.secret" not in caplog.text


@pytest.mark.timeout(120)
def test_an_ended_call_is_freed_without_the_garbage_collector(tmp_path: Path) -> None:
    """`serve` runs full garbage collections rarely (gcpolicy.py): an ended call must not wait
    for one, with all it holds, in a reference cycle (its SIP leg, INVITE session and media
    session hold its methods as callbacks until it ends)."""
    import gc

    config = node_config(tmp_path)
    capture = Capture()
    node_types = {"Call", "MediaSession", "InviteSession", "SessionLeg", "Rfc4733Receiver"}

    async def scenario() -> tuple[list[CallerReport], set[str]]:
        server, port = await start_node(config, capture)
        try:
            gc.collect()
            gc.disable()  # what the calls leave in cycles stays until the collection below
            reports = list(
                await asyncio.gather(
                    pay(port, "sbx-100-EUR-gc-cancel", ["*"]),
                    pay(port, "sbx-100-EUR-gc-hangup", ["4111"], hangup_after=1),
                )
            )
            await asyncio.sleep(1.0)  # the calls' tasks finish and let go
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = {type(o).__name__ for o in gc.garbage} & node_types
            return reports, left
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
            await server.stop(grace_s=10)

    (cancelled, hung_up), left = asyncio.run(scenario())
    assert cancelled.result_headers.get("X-SPG-Result") == "cancelled"
    assert hung_up.ended_by == "caller"
    assert left == set()
