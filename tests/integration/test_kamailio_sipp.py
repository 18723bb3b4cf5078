"""Payment calls through Kamailio, with SIPp as the transferring party.

Part 1 proves the harness and kamailio/kamailio.cfg with a SIPp UAS standing in for spg-media
(sipp/uas_*.xml): the call goes through, the stand-in's REFER/NOTIFY/BYE come back through the
proxy's Record-Route, failover and keepalives work, the allow-list refuses strangers.

Part 2 runs the real `spg-media serve` behind Kamailio with the sandbox connector, keying cards
as RFC 4733 pcaps; it is skipped until `spg_media.server` imports. Each checks the result in the
REFER (or BYE), the CDR line, and that no card data is in the CDR, the node's logs or any SIP
message the node sent.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import (
    HOST,
    SIPP_DIR,
    KamailioProxy,
    SippProcess,
    SippResult,
    SpgNode,
    free_port,
    make_pay_scenario,
    run_sipp,
    sip_options,
    wait_for,
    write_dtmf_wav,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

KamailioFactory = Callable[..., KamailioProxy]

# stand-in tests: no OPTIONS keepalive (a SIPp UAS aborts on an out-of-call OPTIONS)
STANDIN_DEFINES = {"DS_PROBING_MODE": "0"}


def call(
    kam: KamailioProxy,
    sipp_dir: Path,
    keys: str | Sequence[str],
    *,
    token: str,
    transport: str = "u1",
    timeout_s: float = 45.0,
    **scenario: Any,
) -> tuple[SippResult, str]:
    """One pay_uac call to Kamailio; returns SIPp's result and the call's Call-ID."""
    name = f"pay-{uuid.uuid4().hex[:8]}"
    xml = make_pay_scenario(keys, sipp_dir / f"{name}.xml", **scenario)
    call_id = f"{name}@{HOST}"
    result = run_sipp(
        xml,
        f"{HOST}:{kam.port}",
        # Kamailio's workers may pass the node's BYE before its 200 to SIPp's NOTIFY: that 200
        # then reaches SIPp in its final pause, which is no failure of the call
        ["-s", "pay", "-cid_str", call_id, "-default_behaviors", "all,-abortunexp"],
        timeout_s,
        workdir=sipp_dir,
        keys={"spg_transaction": token},
        transport=transport,
        name=name,
    )
    return result, call_id


def header(result: SippResult, method: str, name: str) -> str | None:
    got = result.received(method)
    assert got, f"no {method} received\n{result.explain()}"
    return got[0].header(name)


# ---- part 1: the harness and kamailio.cfg, with a SIPp stand-in for spg-media --------------


@pytest.fixture(scope="module")
def standin_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def proxy(kamailio_factory: KamailioFactory, standin_port: int) -> KamailioProxy:
    return kamailio_factory([f"sip:{HOST}:{standin_port}"], defines=STANDIN_DEFINES)


def test_options_to_kamailio_itself(proxy: KamailioProxy) -> None:
    assert sip_options(HOST, proxy.port) == "SIP/2.0 200 Keepalive"


def test_call_through_and_refer_back(
    proxy: KamailioProxy, standin_port: int, sipp_dir: Path
) -> None:
    uas = SippProcess(
        SIPP_DIR / "uas_refer.xml", sipp_dir, standin_port, keys={"spg_result": "approved"}
    )
    token = "sbx-4990-EUR-" + uuid.uuid4().hex[:8]
    uac, _ = call(proxy, sipp_dir, ["41#", "12"], token=token, expect_result="approved")
    node = uas.wait()
    assert uac.returncode == 0, uac.explain()
    assert node.returncode == 0, node.explain()

    # the INVITE reached the node record-routed, X-SPG-* untouched
    invite = node.received("INVITE")[0]
    assert invite.header("X-SPG-Transaction") == token
    assert invite.header("Record-Route") == f"<sip:{HOST}:{proxy.port};lr>"
    # the node's REFER came back through the proxy (its Via on top, Route consumed)
    refer = uac.received("REFER")[0]
    assert refer.header("X-SPG-Result") == "approved"
    assert refer.header("X-SPG-Card") == "visa 1111"
    assert f"{HOST}:{proxy.port}" in (refer.header("Via") or "")
    assert refer.header("Route") is None
    # 202, NOTIFY (sipfrag 200) answered 200, then the node's BYE
    assert uac.sent(202)
    notify = node.received("NOTIFY")[0]
    assert notify.header("Event") == "refer"
    assert notify.text.rstrip().endswith("SIP/2.0 200 OK")
    assert [m.cseq_method for m in uac.received(200)] == ["INVITE", "NOTIFY"]
    assert uac.received("BYE")


def test_wrong_result_fails_the_scenario(
    proxy: KamailioProxy, standin_port: int, sipp_dir: Path
) -> None:
    uas = SippProcess(
        SIPP_DIR / "uas_refer.xml",
        sipp_dir,
        standin_port,
        keys={"spg_result": "declined"},
        timeout_s=15,
    )
    uac, _ = call(proxy, sipp_dir, "1", token="sbx-1-EUR-x", expect_result="approved")
    uas.wait()
    assert uac.returncode != 0
    assert header(uac, "REFER", "X-SPG-Result") == "declined"


def test_node_ends_call_with_bye_carrying_result(
    proxy: KamailioProxy, standin_port: int, sipp_dir: Path
) -> None:
    uas = SippProcess(
        SIPP_DIR / "uas_bye.xml",
        sipp_dir,
        standin_port,
        keys={"spg_result": "invalid-transaction"},
    )
    uac, _ = call(
        proxy, sipp_dir, "", token="nope-123", expect_bye=True, expect_result="invalid-transaction"
    )
    node = uas.wait()
    assert uac.returncode == 0, uac.explain()
    assert node.returncode == 0, node.explain()
    assert header(uac, "BYE", "X-SPG-Transaction") == "nope-123"


def test_caller_hangs_up_mid_card(proxy: KamailioProxy, standin_port: int, sipp_dir: Path) -> None:
    uas = SippProcess(SIPP_DIR / "uas_caller_hangup.xml", sipp_dir, standin_port)
    uac, _ = call(proxy, sipp_dir, "4111", token="sbx-100-EUR-h", hangup_after_keys=True)
    node = uas.wait()
    assert uac.returncode == 0, uac.explain()
    assert node.returncode == 0, node.explain()
    bye = node.received("BYE")[0]
    assert bye.header("Route") is None  # consumed by the proxy


def test_tcp_caller_udp_node_double_record_route(
    proxy: KamailioProxy, standin_port: int, sipp_dir: Path
) -> None:
    uas = SippProcess(
        SIPP_DIR / "uas_refer.xml", sipp_dir, standin_port, keys={"spg_result": "approved"}
    )
    uac, _ = call(
        proxy, sipp_dir, "9", token="sbx-5-EUR-t", transport="t1", expect_result="approved"
    )
    node = uas.wait()
    assert uac.returncode == 0, uac.explain()
    assert node.returncode == 0, node.explain()
    invite = node.received("INVITE")[0].text
    rr = [line for line in invite.splitlines() if line.lower().startswith("record-route:")]
    assert len(rr) == 2 or (len(rr) == 1 and rr[0].count("<sip:") == 2), rr
    assert "r2=on" in invite and "transport=tcp" in invite.lower()
    assert uac.received("REFER") and uac.received("BYE")


def test_failover_on_timeout_and_503(sip_tools: None, tmp_path: Path, sipp_dir: Path) -> None:
    dead, draining, good = free_port(), free_port(), free_port()
    nodes: list[str | tuple[str, int]] = [
        (f"sip:{HOST}:{dead}", 30),
        (f"sip:{HOST}:{draining}", 20),
        (f"sip:{HOST}:{good}", 10),
    ]
    defines = {**STANDIN_DEFINES, "DS_ALG": "8", "FR_TIMER": "1000"}
    with KamailioProxy(tmp_path / "kamailio", nodes, defines=defines) as kam:
        busy = SippProcess(SIPP_DIR / "uas_503.xml", sipp_dir / "503", draining, timeout_s=15)
        uas = SippProcess(
            SIPP_DIR / "uas_refer.xml", sipp_dir, good, keys={"spg_result": "approved"}
        )
        started = time.monotonic()
        uac, _ = call(kam, sipp_dir, "1", token="sbx-1-EUR-f", expect_result="approved")
        assert uac.returncode == 0, uac.explain() + kam.log()[-3000:]
        assert uas.wait().returncode == 0
        assert busy.wait().returncode == 0
        assert time.monotonic() - started < 15
        log = kam.log()
    assert f"node sip:{HOST}:{dead} failed (408)" in log
    assert f"node sip:{HOST}:{draining} failed (503)" in log


def test_keepalive_pings_and_dead_node_is_skipped(sip_tools: None, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as node:
        node.bind((HOST, 0))
        node.settimeout(4)
        defines = {"DS_PING_INTERVAL": "1", "FR_TIMER": "500", "DS_PROBING_THRESHOLD": "1"}
        nodes: list[str | tuple[str, int]] = [f"sip:{HOST}:{node.getsockname()[1]}"]
        with KamailioProxy(tmp_path / "kamailio", nodes, defines=defines) as kam:
            data, _ = node.recvfrom(65535)  # an OPTIONS keepalive, not answered
            assert data.startswith(b"OPTIONS sip:")
            assert b"From: <sip:keepalive@" in data
            time.sleep(1.5)  # 408 after FR_TIMER -> the node is marked inactive
            assert wait_for(lambda: _invite_status(kam.port) == 503, timeout_s=5)


def test_allow_list_refuses_other_sources(sip_tools: None, tmp_path: Path) -> None:
    nodes: list[str | tuple[str, int]] = [f"sip:{HOST}:{free_port()}"]
    defines = {**STANDIN_DEFINES, "ALLOW_NET": '"127.0.0.2/32"'}
    with KamailioProxy(
        tmp_path / "kamailio", nodes, defines=defines, probe_source="127.0.0.2"
    ) as kam:
        assert sip_options(HOST, kam.port, source="127.0.0.2") == "SIP/2.0 200 Keepalive"
        assert sip_options(HOST, kam.port, source=HOST) == "SIP/2.0 403 Forbidden"
        assert _invite_status(kam.port) == 403


SDES_KEY = "YUJjRGVGZ2hJaktsTW5PcFFyU3R1VndYeVphYmNkZWZnaGlqa2w"


def _sdes_invite(port: int, lport: int) -> bytes:
    """An INVITE whose offer is RTP/SAVP with its SRTP key in a=crypto (what baresip's
    mediaenc=srtp-mand sends)."""
    sdp = (
        f"v=0\r\no=p 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
        "m=audio 40000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{SDES_KEY}\r\n"
    )
    return (
        f"INVITE sip:pay@{HOST}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {HOST}:{lport};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{HOST}>;tag=1\r\nTo: <sip:pay@{HOST}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:probe@{HOST}:{lport}>\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


@pytest.mark.parametrize("cleartext_allowed", [False, True])
def test_sdes_keys_in_clear_are_refused_before_any_node(
    sip_tools: None, tmp_path: Path, cleartext_allowed: bool
) -> None:
    """A caller's RTP/SAVP offer over UDP: 488 from Kamailio with a Warning, and the node never
    sees it (it could only see that Kamailio's hop was TLS or trusted). -A WITH_SDES_CLEARTEXT
    turns the check off."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as node:
        node.bind((HOST, 0))
        node.settimeout(1.5)
        defines = dict(STANDIN_DEFINES)
        if cleartext_allowed:
            defines["WITH_SDES_CLEARTEXT"] = "1"
        nodes: list[str | tuple[str, int]] = [f"sip:{HOST}:{node.getsockname()[1]}"]
        with (
            KamailioProxy(tmp_path / "kamailio", nodes, defines=defines) as kam,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller,
        ):
            caller.bind((HOST, 0))
            caller.settimeout(2)
            caller.sendto(_sdes_invite(kam.port, caller.getsockname()[1]), (HOST, kam.port))
            try:
                forwarded = node.recvfrom(65535)[0]
            except OSError:
                forwarded = b""
            answers: list[bytes] = []
            with contextlib.suppress(OSError):
                while not answers or answers[-1].startswith(b"SIP/2.0 1"):
                    answers.append(caller.recvfrom(65535)[0])
            log = kam.log()
    if cleartext_allowed:
        assert forwarded.startswith(b"INVITE ") and SDES_KEY.encode() in forwarded
        return
    assert forwarded == b"", forwarded[:200]
    final = answers[-1].decode()
    assert final.startswith("SIP/2.0 488 "), final
    assert f'Warning: 399 {HOST} "SDES keys (a=crypto) need TLS signalling' in final, final
    assert "refused SDES keys from" in log


def _invite_status(port: int) -> int | None:
    """Final status of a bare INVITE sent to Kamailio (None: no final answer in 2 s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(2)
        lport = sock.getsockname()[1]
        msg = (
            f"INVITE sip:pay@{HOST}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{lport};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{HOST}>;tag=1\r\nTo: <sip:pay@{HOST}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:probe@{HOST}:{lport}>\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(msg.encode(), (HOST, port))
        try:
            while True:
                data, _ = sock.recvfrom(65535)
                status = int(data.split(b" ", 2)[1])
                if status >= 200:
                    return status
        except OSError:
            return None


# ---- part 2: the real spg-media behind Kamailio ----------------------------------------------


@dataclass
class Stack:
    node: SpgNode
    kam: KamailioProxy
    return_uri: str


@pytest.fixture(scope="module")
def stack(kamailio_factory: KamailioFactory, spg_node_factory: Callable[..., SpgNode]) -> Stack:
    return_uri = f"sip:agent@{HOST}:{free_port()}"
    node = spg_node_factory(
        {
            "SPG_IVR__FIRST_DIGIT_TIMEOUT_S": "3",
            "SPG_IVR__INTER_DIGIT_TIMEOUT_S": "2",
            "SPG_IVR__RETURN_URI": return_uri,
            "SPG_GATEWAY__CONNECTOR": "sandbox",
        }
    )
    kam = kamailio_factory([node.uri], defines={"DS_PING_INTERVAL": "2"})
    return Stack(node, kam, return_uri)


def cdr_for(node: SpgNode, call_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def look() -> bool:
        found[:] = [
            r for r in (json.loads(line) for line in node.cdr_lines()) if r["call_id"] == call_id
        ]
        return bool(found)

    assert wait_for(look, timeout_s), f"no CDR line for {call_id}: {node.cdr_lines()[-3:]}"
    assert len(found) == 1, found
    return found[0]


def _values(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in _values(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in _values(x)]
    return [obj]


def assert_no_card_data(
    stack: Stack, uac: SippResult, cdr: dict[str, Any], pan: str, expiry: str = "", cvc: str = ""
) -> None:
    """No PAN (nor its first 12 digits), expiry or CVC in the CDR, logs, SIP sent by the UA."""
    secrets = [pan, pan[:12]] if pan else []
    sent_by_ua = "\n".join(m.text for m in uac.messages if m.direction == "received")
    places = {
        "CDR": json.dumps(cdr),
        "node logs": stack.node.logs(),
        "SIP sent by the UA": sent_by_ua,
    }
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"card number in {where}"
        spaced = re.sub(r"[ .-]", "", text)
        if pan:
            assert pan not in spaced, f"card number (with separators) in {where}"
        if cvc:
            assert not re.search(rf"(?i)(cvc|cvv|security.?code)\W{{0,6}}{cvc}\b", text), where
        if expiry:
            assert not re.search(rf"(?i)(exp\w*)\W{{0,6}}{expiry}\b", text), where
    short = {s for s in (expiry, cvc) if s}
    for value in _values(cdr):
        assert str(value) not in short, f"expiry/CVC in CDR: {value}"
    if expiry:
        assert not re.search(rf"\b{expiry}\b", sent_by_ua), "expiry in SIP sent by the UA"


def token(amount: str = "4990") -> str:
    return f"sbx-{amount}-EUR-{uuid.uuid4().hex[:10]}"


def test_spg_options_keepalive_answered(stack: Stack) -> None:
    assert sip_options(HOST, stack.node.sip_port) == "SIP/2.0 200 OK"
    assert stack.node.healthz() == 200


def test_spg_approved(stack: Stack, sipp_dir: Path) -> None:
    pan, exp, cvc = "4111111111111111", "1230", "123"
    tok = token()
    uac, call_id = call(
        stack.kam, sipp_dir, [pan + "#", exp, cvc], token=tok, expect_result="approved"
    )
    assert uac.returncode == 0, uac.explain() + stack.node.logs()[-4000:]
    refer = uac.received("REFER")[0]
    assert refer.header("X-SPG-Result") == "approved"
    assert refer.header("X-SPG-Card") == "visa 1111"
    assert refer.header("X-SPG-Transaction") == tok
    assert "agent@" in (refer.header("Refer-To") or "")
    assert [m.cseq_method for m in uac.received(200)] == ["INVITE", "NOTIFY"]
    cdr = cdr_for(stack.node, call_id)
    assert cdr["result"] == "approved"
    assert cdr["transaction"] == tok
    assert cdr["card"] == {"brand": "visa", "last4": "1111"}
    assert_no_card_data(stack, uac, cdr, pan, exp, cvc)


def test_spg_declined(stack: Stack, sipp_dir: Path) -> None:
    pan, exp, cvc = "4000000000000002", "0928", "456"
    uac, call_id = call(
        stack.kam, sipp_dir, [pan + "#", exp, cvc], token=token(), expect_result="declined"
    )
    assert uac.returncode == 0, uac.explain() + stack.node.logs()[-4000:]
    assert header(uac, "REFER", "X-SPG-Result") == "declined"
    cdr = cdr_for(stack.node, call_id)
    assert cdr["result"] == "declined"
    assert_no_card_data(stack, uac, cdr, pan, exp, cvc)


def test_spg_too_many_attempts(stack: Stack, sipp_dir: Path) -> None:
    bad = "1234567890123#"  # 13 digits, not Luhn-valid
    uac, call_id = call(
        stack.kam,
        sipp_dir,
        [bad, bad, bad],
        token=token(),
        expect_result="too-many-attempts",
        field_gap_ms=1500,
    )
    assert uac.returncode == 0, uac.explain() + stack.node.logs()[-4000:]
    assert header(uac, "REFER", "X-SPG-Result") == "too-many-attempts"
    cdr = cdr_for(stack.node, call_id)
    assert cdr["result"] == "too-many-attempts"
    assert_no_card_data(stack, uac, cdr, "1234567890123")


def test_spg_cancelled_by_star_on_empty_field(stack: Stack, sipp_dir: Path) -> None:
    uac, call_id = call(stack.kam, sipp_dir, "*", token=token(), expect_result="cancelled")
    assert uac.returncode == 0, uac.explain() + stack.node.logs()[-4000:]
    assert header(uac, "REFER", "X-SPG-Result") == "cancelled"
    assert cdr_for(stack.node, call_id)["result"] == "cancelled"


def test_spg_session_timer_through_kamailio(stack: Stack, sipp_dir: Path) -> None:
    """A caller's side that supports RFC 4028 session timers and asks for one: the 200 names
    the interval and the refresher (the caller's, as it asked) and Requires timer."""
    uac, call_id = call(
        stack.kam,
        sipp_dir,
        "*",
        token=token(),
        expect_result="cancelled",
        headers={
            "X-SPG-Transaction": "[spg_transaction]",
            "Supported": "timer, replaces",
            "Session-Expires": "1800;refresher=uac",
            "Min-SE": "90",
        },
    )
    assert uac.returncode == 0, uac.explain() + stack.node.logs()[-4000:]
    ok = next(m for m in uac.received(200) if m.cseq_method == "INVITE")
    assert ok.header("Session-Expires") == "1800;refresher=uac"
    assert ok.header("Require") == "timer"
    assert "timer" in (ok.header("Supported") or "")
    assert cdr_for(stack.node, call_id)["result"] == "cancelled"


def test_spg_invalid_transaction(stack: Stack, sipp_dir: Path) -> None:
    uac, call_id = call(
        stack.kam, sipp_dir, "", token="nope-123", expect_result="invalid-transaction"
    )
    assert uac.returncode == 0, uac.explain() + stack.node.logs()[-4000:]
    refer = uac.received("REFER")[0]
    assert refer.header("X-SPG-Result") == "invalid-transaction"
    assert refer.header("X-SPG-Card") is None
    assert cdr_for(stack.node, call_id)["result"] == "invalid-transaction"


def test_spg_caller_hangs_up_mid_card(stack: Stack, sipp_dir: Path) -> None:
    uac, call_id = call(stack.kam, sipp_dir, "41111111", token=token(), hangup_after_keys=True)
    assert uac.returncode == 0, uac.explain() + stack.node.logs()[-4000:]
    cdr = cdr_for(stack.node, call_id)
    assert cdr["result"] == "hung-up"
    assert_no_card_data(stack, uac, cdr, "41111111")


def test_spg_no_return_target_ends_with_bye(
    kamailio_factory: KamailioFactory, spg_node_factory: Callable[..., SpgNode], sipp_dir: Path
) -> None:
    node = spg_node_factory(
        {"SPG_IVR__FIRST_DIGIT_TIMEOUT_S": "3", "SPG_IVR__INTER_DIGIT_TIMEOUT_S": "2"}
    )
    kam = kamailio_factory([node.uri], defines={"DS_PING_INTERVAL": "2"})
    uac, call_id = call(
        kam, sipp_dir, "", token="nope-123", expect_bye=True, expect_result="invalid-transaction"
    )
    assert uac.returncode == 0, uac.explain() + node.logs()[-4000:]
    assert not uac.received("REFER")
    assert header(uac, "BYE", "X-SPG-Transaction") == "nope-123"
    assert cdr_for(node, call_id)["result"] == "invalid-transaction"


def test_spg_approved_with_inband_tones_only(stack: Stack, sipp_dir: Path) -> None:
    """No telephone-event offered: SIPp streams A-law audio holding the card's DTMF tones."""
    pan, exp, cvc = "4111111111111111", "1230", "123"
    wav = write_dtmf_wav(sipp_dir / "card-tones.wav", [pan + "#", exp, cvc])
    tok = token()
    uac, call_id = call(
        stack.kam,
        sipp_dir,
        [pan + "#", exp, cvc],
        token=tok,
        expect_result="approved",
        inband_wav=wav,
        initial_pause_ms=0,
    )
    assert uac.returncode == 0, uac.explain() + stack.node.logs()[-4000:]
    invite = uac.sent("INVITE")[0]
    assert "telephone-event" not in invite.text and "PCMA/8000" in invite.text
    refer = uac.received("REFER")[0]
    assert refer.header("X-SPG-Result") == "approved"
    assert refer.header("X-SPG-Card") == "visa 1111"
    cdr = cdr_for(stack.node, call_id)
    assert cdr["result"] == "approved"
    assert_no_card_data(stack, uac, cdr, pan, exp, cvc)
