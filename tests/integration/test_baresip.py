"""baresip, a real third-party phone, pays through spg-media and is returned to an agent.

baresip 1.0 (driven over ctrl_tcp, see baresip.py) cannot add custom headers, so it dials the
node with the handoff in the Request-URI: `x-spg-transaction` and
`x-spg-return-to` (the agent, a SIPp UAS on another loopback port). It keys the card with
`sndcode` (RFC 4733 events), the sandbox approves, and the node REFERs baresip to the agent:
the agent must get baresip's INVITE, carrying the result in the Request-URI.

- plain UDP signalling, plain RTP;
- SIP over TLS (`tls:` listener with the certificate of `spg_media.tlscert`), plain RTP; with
  root and tshark the call is captured: the signalling shows nothing in clear, while the
  plain RTP does show the keys as RFC 4733 events (the detector's positive control, and the
  reason SRTP exists);
- an SRTP (`mediaenc=srtp-mand`) offer over TLS: the SDES key and the handoff never appear
  on the wire (root and tshark);
- a whole payment over TLS + SRTP (no key, digit or handoff readable on the wire), and
  `rtp.srtp = required` refusing a plain offer with 488 while still taking an SRTP one;
- the same through kamailio/kamailio.cfg run with `-A WITH_TLS` (TLS on both legs, the node
  trusting Kamailio's certificate with `sip.tls_ca`): nothing in clear on either leg.

Skipped (never failed) when baresip, sipp or spg-media (or, for the last, kamailio's tls
module) are missing.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from baresip import (
    AGENT_SCENARIO,
    Account,
    Baresip,
    BaresipEvent,
    Capture,
    SpgTlsNode,
    baresip_missing,
    capture_missing,
    sdp_crypto_keys,
)
from harness import (
    HOST,
    KAMAILIO,
    RELAY_HOST,
    RTPENGINE,
    SIPP,
    KamailioProxy,
    RtpEngine,
    SippProcess,
    SippResult,
    free_port,
    spg_media_available,
    wait_for,
)

from spg_media.cdr import mask_card_like
from spg_media.config import load_config
from spg_media.tlscert import CertPair, TlsCertError, make_self_signed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CARD, EXPIRY, CVC = "4111111111111111", "1230", "123"
# the SDES key (30 bytes) of the agent's SRTP answer (SIPp has no SRTP: never used for media)
AGENT_KEY = base64.b64encode(bytes(range(30))).decode()
# TLS 1.3 hides the record type: application data is then the opaque type 23
TLS_APP_DATA = "tls.record.content_type == 23 || tls.record.opaque_type == 23"


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools() -> None:
    reason = baresip_missing()
    if reason:
        pytest.skip(reason)
    if SIPP is None:
        pytest.skip("sipp (Debian sip-tester) is not installed")
    if not spg_media_available():
        pytest.skip("spg_media.server is not importable (or .venv/bin/spg-media missing)")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    try:
        return make_self_signed(tmp_path_factory.mktemp("tls"))
    except TlsCertError as exc:
        pytest.skip(f"no test certificate: {exc}")


def _start_node(
    tmp_path_factory: pytest.TempPathFactory, cert: CertPair, env: dict[str, str] | None = None
) -> SpgTlsNode:
    node = SpgTlsNode(tmp_path_factory.mktemp("spg-node"), cert.cert, cert.key, env)
    node.start()
    return node


@pytest.fixture(scope="module")
def node(
    tools: None, cert: CertPair, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SpgTlsNode]:
    """One node for the module: UDP+TCP and TLS listeners, sandbox connector."""
    started = _start_node(tmp_path_factory, cert)
    yield started
    started.stop()


# ---- helpers --------------------------------------------------------------------------------


def token() -> str:
    return f"sbx-4990-EUR-{uuid.uuid4().hex[:8]}"


def pay_uri(
    node: SpgTlsNode,
    transport: str,
    txn: str,
    agent_port: int | None = None,
    port: int | None = None,
) -> str:
    """The URI baresip dials: the handoff as Request-URI parameters, to the
    node's port for `transport` or to `port` (a proxy in front).

    No `;transport=` here: it comes from the account (baresip pitfall 6). `@` is not allowed
    in a URI parameter value, so the return URI's is escaped.
    """
    port = port or (node.tls_port if transport == "tls" else node.sip_port)
    uri = f"sip:pay@{HOST}:{port};x-spg-transaction={txn}"
    if agent_port is not None:
        uri += f";x-spg-return-to=sip:agent%40{HOST}:{agent_port}"
    return uri


def dial(phone: Baresip, uri: str, timeout_s: float = 15.0) -> BaresipEvent:
    """Dial and return CALL_ESTABLISHED, or CALL_CLOSED when the call is refused."""
    since = phone.cursor
    phone.dial(uri)
    return phone.wait_event(
        lambda e: e.type in ("CALL_ESTABLISHED", "CALL_CLOSED"), timeout_s, since
    )


def start_agent(workdir: Path, srtp: bool = False) -> SippProcess:
    keys = (
        {
            "agent_profile": "RTP/SAVP",
            "agent_attr": f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{AGENT_KEY}",
        }
        if srtp
        else {"agent_profile": "RTP/AVP", "agent_attr": "a=sendrecv"}
    )
    return SippProcess(AGENT_SCENARIO, workdir, keys=keys, timeout_s=100)


def explain(phone: Baresip, node: SpgTlsNode, agent: SippResult | None = None) -> str:
    text = f"--- baresip events\n{phone.event_types()}\n--- baresip log\n{phone.log()[-6000:]}"
    text += f"\n--- node log\n{node.logs()[-4000:]}"
    if agent is not None:
        text += f"\n--- agent\n{agent.explain()}"
    return text


def cdr_for(node: SpgTlsNode, call_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    found: dict[str, Any] = {}
    # baresip's Call-ID is random hex: now and then it holds a Luhn-valid run of 12+ digits,
    # which the CDR masks as it would a card number (spg_media/cdr.py)
    recorded = mask_card_like(call_id, "call_id")

    def look() -> bool:
        for line in node.cdr_lines():
            record = json.loads(line)
            if record.get("call_id") == recorded:
                found.update(record)
                return True
        return False

    assert wait_for(look, timeout_s), f"no CDR line for {call_id}: {node.cdr_lines()}"
    return found


@dataclass
class Payment:
    call_id: str
    txn: str
    transfer: BaresipEvent
    agent: SippResult
    cdr: dict[str, Any]


def pay(
    phone: Baresip, node: SpgTlsNode, transport: str, agent: SippProcess, port: int | None = None
) -> Payment:
    """One whole payment: dial (the node, or `port`: a proxy in front), key the card, follow
    the REFER to the agent, hang up there."""
    txn = token()
    since = phone.cursor
    first = dial(phone, pay_uri(node, transport, txn, agent.port, port))
    assert first.type == "CALL_ESTABLISHED", f"call refused: {first.param}\n{explain(phone, node)}"
    call_id = first.call_id
    # The node is speaking (the announcement) once RTP arrives; keys may barge in from then on.
    phone.wait_event(lambda e: e.type == "CALL_RTPESTAB" and e.call_id == call_id, 10, since)
    phone.sndcode(CARD + "#")
    time.sleep(0.6)  # pace between fields like a person; type-ahead is allowed
    phone.sndcode(EXPIRY)
    time.sleep(0.6)
    phone.sndcode(CVC)
    try:
        transfer = phone.wait_event("TRANSFER", 60, since)
        agent_call = phone.wait_event(
            lambda e: e.type == "CALL_ESTABLISHED" and e.peer.startswith("sip:agent@"), 15, since
        )
        phone.wait_event(lambda e: e.type == "CALL_CLOSED" and e.call_id == call_id, 15, since)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{explain(phone, node)}") from None
    phone.hangup()  # the caller ends the call with the agent
    phone.wait_event(lambda e: e.type == "CALL_CLOSED" and e.call_id == agent_call.call_id, 10)
    result = agent.wait(30)
    return Payment(call_id, txn, transfer, result, cdr_for(node, call_id))


def pay_captured(
    phone: Baresip, node: SpgTlsNode, agent: SippProcess, pcap: Path
) -> tuple[Payment, Capture | None]:
    """`pay` over TLS while tshark captures the node's TLS port and the media between the
    phone's RTP ports and the node's (no capture, None, without root or tshark). Only the media
    between the two: the phone's RTP ports are ten free ports of the ephemeral range, where the
    tests running beside this one have their plain SIP (a REFER's X-SPG-Result once came into
    the capture from another test's port that fell in that range). The filter is written once
    baresip runs: its ports are final only then (it chooses others when one was taken)."""
    capture = None
    with phone:
        if capture_missing() is None:
            low, high = phone.rtp_ports
            rtp = load_config(None, env={}).rtp  # the test nodes keep the default RTP range
            capture = Capture(
                pcap,
                f"tcp port {node.tls_port} or (udp portrange {low}-{high}"
                f" and udp portrange {rtp.port_min}-{rtp.port_max})",
            )
            capture.start()
        try:
            payment = pay(phone, node, "tls", agent)
        finally:
            if capture is not None:
                capture.stop()
    return payment, capture


def check_approved(payment: Payment, phone: Baresip, node: SpgTlsNode) -> None:
    """CDR approved, REFER to the agent with the result, the agent got baresip's INVITE."""
    cdr = payment.cdr
    assert cdr["result"] == "approved", cdr
    assert cdr["transaction"] == payment.txn
    assert cdr["card"] == {"brand": "visa", "last4": "1111"}
    assert cdr["reference"], cdr
    refer_to = payment.transfer.param
    assert f"sip:agent@{HOST}:" in refer_to, refer_to
    assert "x-spg-result=approved" in refer_to and "X-SPG-Result=approved" in refer_to, refer_to
    assert f"X-SPG-Reference={cdr['reference']}" in refer_to, refer_to

    agent = payment.agent
    assert agent.returncode == 0, explain(phone, node, agent)
    invites = agent.received("INVITE")
    assert len(invites) == 1, explain(phone, node, agent)
    request_uri = invites[0].first_line.split(" ")[1]
    # baresip keeps the Refer-To's ?headers in the Request-URI (pitfall 10); the parameter is
    # what an agent or PBX can rely on
    assert request_uri.startswith(f"sip:agent@{HOST}:"), request_uri
    assert ";x-spg-result=approved" in request_uri, request_uri
    assert f"<sip:{phone.account.user}@{HOST}>" in (invites[0].header("From") or "")
    assert agent.received("BYE"), "the caller's BYE did not reach the agent"

    # no card data in the node's logs or CDR (the node must never print it)
    logs = node.logs() + "\n".join(node.cdr_lines())
    assert CARD not in logs and CARD[:12] not in logs


# ---- plain UDP ------------------------------------------------------------------------------


def test_udp_plain_rtp_payment_approved_and_returned_to_agent(
    node: SpgTlsNode, tmp_path: Path
) -> None:
    agent = start_agent(tmp_path / "agent")
    with Baresip(tmp_path / "baresip", Account(transport="udp")) as phone:
        payment = pay(phone, node, "udp", agent)
        check_approved(payment, phone, node)
        # baresip's own word that each key went out as an RFC 4733 event (the wire shows it in
        # the TLS test's capture)
        log = phone.log()
        for key in CARD + "#" + EXPIRY + CVC:
            assert f"audio: send DTMF digit: '{key}'" in log


# ---- TLS signalling -------------------------------------------------------------------------


def test_tls_plain_rtp_payment_approved_and_returned_to_agent(
    node: SpgTlsNode, cert: CertPair, tmp_path: Path
) -> None:
    agent = start_agent(tmp_path / "agent")
    phone = Baresip(tmp_path / "baresip", Account(transport="tls"), cafile=cert.cert)
    payment, capture = pay_captured(phone, node, agent, tmp_path / "tls.pcapng")
    check_approved(payment, phone, node)

    # the dialog ran over TLS both ways, on baresip's own connection (connection reuse), and
    # our Contact was sip:...;transport=tls (baresip cannot use a sips: Contact, pitfall 7)
    node_addr = f"{HOST}:{node.tls_port}"
    trace = phone.sip_trace()
    ok = [
        m for m in trace if m.source == node_addr and m.status == 200 and m.cseq_method == "INVITE"
    ]
    assert ok and ok[0].transport == "TLS", "no 200 OK to the INVITE over TLS in baresip's trace"
    assert ok[0].header("Contact") == f"<sip:spg@{node_addr};transport=tls>", ok[0].text
    refers = [m for m in trace if m.method == "REFER"]
    assert len(refers) == 1, [m.first_line for m in trace]
    # sent to the address baresip's INVITE came from: its own connection, not a new one
    invite = next(m for m in trace if m.method == "INVITE" and m.destination == node_addr)
    assert (refers[0].transport, refers[0].destination) == ("TLS", invite.source), refers[0]
    assert refers[0].header("X-SPG-Result") == "approved"
    assert (refers[0].header("Via") or "").startswith(f"SIP/2.0/TLS {node_addr};")

    if capture is not None:
        assert capture.count("tls.handshake.type == 1") >= 1, "the capture saw no TLS handshake"
        assert capture.count(TLS_APP_DATA) >= 4
        for clear in (
            "INVITE sip:",
            "REFER sip:",
            "x-spg-transaction",
            payment.txn,
            "X-SPG-Result",
        ):
            assert not capture.contains(clear), f"{clear!r} in clear on the wire"
        # positive control of the digit detector: plain RTP carries the keys readable by anyone
        digits = capture.rtp_event_digits()
        assert CARD + "#" + EXPIRY + CVC in digits, digits


def test_tls_srtp_offer_shows_no_key_or_handoff_on_the_wire(
    node: SpgTlsNode, cert: CertPair, tmp_path: Path
) -> None:
    """baresip's SDES offer over TLS: the inline key travels only inside TLS."""
    reason = capture_missing()
    if reason:
        pytest.skip(reason)
    txn = token()
    phone = Baresip(
        tmp_path / "baresip", Account(transport="tls", mediaenc="srtp-mand"), cafile=cert.cert
    )
    with Capture(tmp_path / "offer.pcapng", f"port {node.tls_port}") as capture, phone:
        first = dial(phone, pay_uri(node, "tls", txn))
        if first.type == "CALL_ESTABLISHED":
            phone.hangup()
            phone.wait_event(lambda e: e.type == "CALL_CLOSED" and e.call_id == first.call_id)
    invite = next(m for m in phone.sip_trace() if m.method == "INVITE")
    keys = sdp_crypto_keys(invite.text)
    assert keys, f"baresip sent no a=crypto key:\n{invite.text}"
    assert "RTP/SAVP" in invite.text
    assert capture.count(TLS_APP_DATA) >= 2  # the INVITE and an answer
    for clear in (*keys, "a=crypto", "RTP/SAVP", "INVITE sip:", txn, "x-spg-transaction"):
        assert not capture.contains(clear), f"{clear!r} in clear on the wire"


# ---- SRTP -----------------------------------------------------------------------------------


def test_tls_srtp_payment_approved_with_nothing_in_clear(
    node: SpgTlsNode, cert: CertPair, tmp_path: Path
) -> None:
    agent = start_agent(tmp_path / "agent", srtp=True)
    phone = Baresip(
        tmp_path / "baresip", Account(transport="tls", mediaenc="srtp-mand"), cafile=cert.cert
    )
    payment, capture = pay_captured(phone, node, agent, tmp_path / "srtp.pcapng")
    check_approved(payment, phone, node)
    answer = next(
        m
        for m in phone.sip_trace()
        if m.source == f"{HOST}:{node.tls_port}" and m.status == 200 and m.cseq_method == "INVITE"
    )
    assert "RTP/SAVP" in answer.text and "a=crypto:" in answer.text, answer.text
    secure = [e for e in phone.events if e.type == "CALL_MENC" and e.call_id == payment.call_id]
    assert secure and "audio" in secure[0].param, "baresip never reported SRTP as secure"
    if capture is not None:
        assert capture.count("udp") > 100, "the capture saw no media"
        digits = capture.rtp_event_digits()
        assert CARD[:8] not in digits, f"card digits readable in the RTP: {digits}"
        keys = sdp_crypto_keys("\n".join(m.text for m in phone.sip_trace()))
        for clear in (*keys, "a=crypto", payment.txn, "X-SPG-Result"):
            assert not capture.contains(clear), f"{clear!r} in clear on the wire"


# ---- RTCP ------------------------------------------------------------------------------------


def _rtcp_member(phone: Baresip) -> dict[str, Any] | None:
    """baresip's RTCP view of us (`audio_debug`): RTP/RTCP ports it sends to, our SR's packet
    count (psent) and its round trip from our report blocks' LSR/DLSR; None until it has both."""
    text = phone.command("audio_debug").data
    remote = re.search(r"remote: [\d.]+:(\d+)/[\d.]+:(\d+)", text)
    member = re.search(r"member 0x[0-9a-f]+: .*RTT=([\d.]+)ms\s+IP=\S+ psent=(\d+)", text)
    if remote is None or member is None or float(member[1]) <= 0 or int(member[2]) <= 0:
        return None
    return {"rtp": int(remote[1]), "rtcp": int(remote[2]), "psent": int(member[2])}


def _quality(node: SpgTlsNode, call_id: str) -> dict[str, Any] | None:
    for line in node.logs().splitlines():
        if '"media quality"' in line and call_id in line:
            entry: dict[str, Any] = json.loads(line)
            return entry
    return None


@pytest.mark.parametrize(
    ("mediaenc", "mux"), [(None, "no"), ("srtp-mand", "no"), ("srtp-mand", "yes")]
)
def test_rtcp_reports_go_both_ways(
    node: SpgTlsNode, cert: CertPair, tmp_path: Path, mediaenc: str | None, mux: str
) -> None:
    """baresip reads our reports (SRTCP on an SRTP call; on the RTP port with rtcp-mux) and we
    read its: each side's round trip needs the other's report about its own. SRTP calls
    signal over TLS (SDES keys are refused over UDP)."""
    transport = "tls" if mediaenc else "udp"
    account = Account(transport=transport, mediaenc=mediaenc)
    with Baresip(
        tmp_path / "baresip", account, cafile=cert.cert, extra_config={"rtcp_mux": mux}
    ) as phone:
        first = dial(phone, pay_uri(node, transport, token()))
        assert first.type == "CALL_ESTABLISHED", explain(phone, node)
        ports: dict[str, Any] = {}

        def reported() -> bool:
            ports.update(_rtcp_member(phone) or {})
            return bool(ports)

        # reports every 2-6 s each way: a round trip within ~13 s
        assert wait_for(reported, 25), explain(phone, node)
        assert ports["rtcp"] == ports["rtp"] + (0 if mux == "yes" else 1), ports
        phone.hangup()
        phone.wait_event(lambda e: e.type == "CALL_CLOSED" and e.call_id == first.call_id, 10)
    assert wait_for(lambda: _quality(node, first.call_id), 5), node.logs()[-2000:]
    quality = _quality(node, first.call_id) or {}
    assert quality["rtcp_received"] >= 1 and quality["rtcp_sent"] >= 2, quality
    assert quality["peer_lost"] == 0 and quality["received"] > 100, quality  # its word on us


def test_srtp_required_refuses_plain_offer_with_488(
    tools: None,
    cert: CertPair,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    strict = _start_node(tmp_path_factory, cert, {"SPG_RTP__SRTP": "required"})
    try:
        with Baresip(tmp_path / "baresip", Account(transport="tls"), cafile=cert.cert) as phone:
            first = dial(phone, pay_uri(strict, "tls", token()))
            assert first.type == "CALL_CLOSED", explain(phone, strict)
            assert first.param.startswith("488"), first.param
            answer = next(m for m in phone.sip_trace() if m.status == 488)
            assert answer.header("Warning"), answer.text
        # a secure offer to the same node still works
        with Baresip(
            tmp_path / "baresip-srtp",
            Account(transport="tls", mediaenc="srtp-mand"),
            cafile=cert.cert,
        ) as phone:
            first = dial(phone, pay_uri(strict, "tls", token()))
            assert first.type == "CALL_ESTABLISHED", explain(phone, strict)
            phone.hangup()
    finally:
        strict.stop()


def test_sdes_keys_over_udp_are_refused_with_488_and_taken_over_tls(
    node: SpgTlsNode, cert: CertPair, tmp_path: Path
) -> None:
    """baresip's SRTP offer (`srtp-mand`: RTP/SAVP with its key in a=crypto) over UDP put the
    key on the wire in clear: 488 with a Warning saying why. The same phone over TLS pays."""
    with Baresip(tmp_path / "baresip-udp", Account(transport="udp", mediaenc="srtp-mand")) as phone:
        first = dial(phone, pay_uri(node, "udp", token()))
        assert first.type == "CALL_CLOSED", explain(phone, node)
        assert first.param.startswith("488"), first.param
        answer = next(m for m in phone.sip_trace() if m.status == 488)
        warning = answer.header("Warning") or ""
        assert warning.startswith(f'399 {HOST} "SDES keys'), answer.text
        assert "TLS" in warning, answer.text
        invite = next(m for m in phone.sip_trace() if m.method == "INVITE")
        assert "RTP/SAVP" in invite.text and sdp_crypto_keys(invite.text)
    agent = start_agent(tmp_path / "agent", srtp=True)
    phone = Baresip(
        tmp_path / "baresip-tls", Account(transport="tls", mediaenc="srtp-mand"), cafile=cert.cert
    )
    with phone:
        payment = pay(phone, node, "tls", agent)
    check_approved(payment, phone, node)
    answer = next(
        m
        for m in phone.sip_trace()
        if m.source == f"{HOST}:{node.tls_port}" and m.status == 200 and m.cseq_method == "INVITE"
    )
    assert "RTP/SAVP" in answer.text and "a=crypto:" in answer.text, answer.text


# ---- Kamailio in front, TLS on both legs ------------------------------------------------------


def _kamailio_tls_missing() -> str | None:
    if KAMAILIO is None:
        return "kamailio is not installed"
    if not list(Path("/usr/lib").glob("*/kamailio/modules/tls.so")):
        return "kamailio's tls module is not installed (Debian kamailio-tls-modules)"
    return None


@dataclass
class TlsFront:
    proxy: KamailioProxy
    node: SpgTlsNode
    port: int  # the proxy's tls listener


@pytest.fixture(scope="module")
def tls_front(
    tools: None, cert: CertPair, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsFront]:
    """kamailio/kamailio.cfg with -A WITH_TLS in front of a node reached over TLS; the node
    trusts the proxy's certificate (sip.tls_ca) for the connections it opens to it."""
    reason = _kamailio_tls_missing()
    if reason:
        pytest.skip(reason)
    node = _start_node(tmp_path_factory, cert, {"SPG_SIP__TLS_CA": str(cert.cert)})
    front = _kamailio_with_tls(
        tmp_path_factory, cert, node, f"sip:{HOST}:{node.tls_port};transport=tls"
    )
    yield front
    front.proxy.stop()
    node.stop()


def _kamailio_with_tls(
    tmp_path_factory: pytest.TempPathFactory, cert: CertPair, node: SpgTlsNode, destination: str
) -> TlsFront:
    """kamailio/kamailio.cfg with -A WITH_TLS (callers on its tls listener) dispatching to
    `destination`, the node (stopped when the proxy cannot start)."""
    work = tmp_path_factory.mktemp("kamailio-tls")
    tls_cfg = work / "tls.cfg"
    tls_cfg.write_text(
        "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n"
        f"require_certificate = no\ncertificate = {cert.cert}\nprivate_key = {cert.key}\n\n"
        "[client:default]\nmethod = TLSv1.2+\nverify_certificate = yes\n"
        f"require_certificate = yes\nca_list = {cert.cert}\n"
    )
    port = free_port()
    defines = {"WITH_TLS": "1", "TLS_PORT": str(port), "TLS_CFG": f'"{tls_cfg}"'}
    proxy = KamailioProxy(work, [destination], defines=defines)
    try:
        proxy.start()
    except BaseException:
        node.stop()
        raise
    return TlsFront(proxy, node, port)


def test_kamailio_tls_front_srtp_payment_with_nothing_in_clear(
    tls_front: TlsFront, cert: CertPair, tmp_path: Path
) -> None:
    """baresip (TLS + SRTP) pays through Kamailio's tls listener, Kamailio reaching the node
    over TLS: approved, the REFER comes back through Kamailio on baresip's own connection, and
    neither leg shows an SDES key, a digit, the handoff or the result in clear."""
    node, front = tls_front.node, tls_front.port
    agent = start_agent(tmp_path / "agent", srtp=True)
    phone = Baresip(
        tmp_path / "baresip", Account(transport="tls", mediaenc="srtp-mand"), cafile=cert.cert
    )
    capture = None
    if capture_missing() is None:
        low, high = phone.rtp_ports
        # both TLS legs, and the proxy's and the node's plain ports (nothing may go there)
        ports = f"port {front} or port {tls_front.proxy.port} or port {node.tls_port}"
        ports += f" or port {node.sip_port} or portrange {low}-{high}"
        capture = Capture(tmp_path / "front.pcapng", ports)
        capture.start()
    try:
        with phone:
            payment = pay(phone, node, "tls", agent, port=front)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- kamailio\n{tls_front.proxy.log()[-4000:]}") from None
    finally:
        if capture is not None:
            capture.stop()
    check_approved(payment, phone, node)

    proxy_addr = f"{HOST}:{front}"
    trace = phone.sip_trace()
    invite = next(m for m in trace if m.method == "INVITE" and m.destination == proxy_addr)
    assert invite.transport == "TLS"
    refers = [m for m in trace if m.method == "REFER"]
    assert len(refers) == 1, [m.first_line for m in trace]
    # through the proxy, over TLS, on the connection baresip's INVITE opened
    assert (refers[0].transport, refers[0].source) == ("TLS", proxy_addr), refers[0].text
    assert refers[0].header("X-SPG-Result") == "approved"
    assert f"SIP/2.0/TLS {proxy_addr};" in refers[0].text, refers[0].text  # the proxy's Via
    assert f"SIP/2.0/TLS {HOST}:{node.tls_port};" in refers[0].text, refers[0].text  # the node's
    if capture is not None:
        # Both legs are TLS: each carries TLS application data. (Told by the records, decoded
        # as TLS on the leg's port, not by handshakes: Kamailio's connection to the node may be
        # older than the capture, opened by its OPTIONS probes or an earlier test's call, and
        # reused; one CI run saw a single handshake.)
        for port in (front, node.tls_port):
            records = f"tcp.port == {port} and ({TLS_APP_DATA})"
            assert capture.count(records, "-d", f"tcp.port=={port},tls") >= 1, f"no TLS on {port}"
        digits = capture.rtp_event_digits()
        assert CARD[:8] not in digits, f"card digits readable in the RTP: {digits}"
        keys = sdp_crypto_keys("\n".join(m.text for m in trace))
        assert keys
        for clear in (*keys, "a=crypto", "INVITE sip:", payment.txn, "X-SPG-Result"):
            assert not capture.contains(clear), f"{clear!r} in clear on the wire"


# ---- Kamailio in front, TLS to callers, a private link to the node ----------------------------


@pytest.fixture(scope="module")
def private_link(
    tools: None, cert: CertPair, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsFront]:
    """kamailio/kamailio.cfg with -A WITH_TLS for callers, forwarding to a node over plain UDP
    (a private link): the node takes SDES keys in clear from Kamailio's address only,
    `rtp.sdes_cleartext_sources`. (On loopback that address is every test peer's too.)"""
    reason = _kamailio_tls_missing()
    if reason:
        pytest.skip(reason)
    node = _start_node(tmp_path_factory, cert, {"SPG_RTP__SDES_CLEARTEXT_SOURCES": f"{HOST}/32"})
    front = _kamailio_with_tls(tmp_path_factory, cert, node, f"sip:{HOST}:{node.sip_port}")
    yield front
    front.proxy.stop()
    node.stop()


def test_kamailio_private_link_srtp_payment_and_cleartext_keys_refused_at_the_edge(
    private_link: TlsFront, cert: CertPair, tmp_path: Path
) -> None:
    """baresip (TLS + SRTP) pays through Kamailio, which reaches the node over UDP: the node
    takes the keys because they come from Kamailio's address. The same offer sent to Kamailio
    over UDP is refused there (488 and its Warning), and never reaches the node."""
    node, front = private_link.node, private_link.port
    agent = start_agent(tmp_path / "agent", srtp=True)
    phone = Baresip(
        tmp_path / "baresip", Account(transport="tls", mediaenc="srtp-mand"), cafile=cert.cert
    )
    try:
        with phone:
            payment = pay(phone, node, "tls", agent, port=front)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- kamailio\n{private_link.proxy.log()[-4000:]}") from None
    check_approved(payment, phone, node)
    refers = [m for m in phone.sip_trace() if m.method == "REFER"]
    assert len(refers) == 1, [m.first_line for m in phone.sip_trace()]
    assert refers[0].transport == "TLS"  # Kamailio to baresip
    assert f"SIP/2.0/UDP {HOST}:{node.sip_port};" in refers[0].text, refers[0].text  # the node's

    before = len(node.cdr_lines())
    with Baresip(tmp_path / "baresip-udp", Account(transport="udp", mediaenc="srtp-mand")) as phone:
        first = dial(phone, pay_uri(node, "udp", token(), port=private_link.proxy.port))
        assert first.type == "CALL_CLOSED", explain(phone, node)
        assert first.param.startswith("488"), first.param
        answer = next(m for m in phone.sip_trace() if m.status == 488)
        assert answer.source == f"{HOST}:{private_link.proxy.port}", answer.text
        assert "SDES keys (a=crypto) need TLS signalling" in (answer.header("Warning") or "")
    assert "refused SDES keys from" in private_link.proxy.log()
    assert len(node.cdr_lines()) == before


# ---- behind a media relay: the shared media port ---------------------------------------------


@pytest.mark.skipif(RTPENGINE is None, reason="rtpengine (rtpengine-daemon) not installed")
def test_kamailio_rtpengine_front_payment_keyed_as_rfc4733_on_the_shared_port(
    cert: CertPair, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """baresip pays through Kamailio (`-A WITH_RTPENGINE`) with its media through rtpengine,
    keying RFC 4733 events as a phone does, to a node whose calls from rtpengine share one
    media port: approved, the call on the shared port, every key taken."""
    node = _start_node(
        tmp_path_factory,
        cert,
        {"SPG_RTP__SHARED_PORT": "relays", "SPG_RTP__MEDIA_SOURCES": f"{RELAY_HOST}/32"},
    )
    relay = RtpEngine(tmp_path / "rtpengine")
    proxy = KamailioProxy(
        tmp_path / "kamailio",
        [f"sip:{HOST}:{node.sip_port}"],
        defines={"WITH_RTPENGINE": "1", "RTPENGINE_SOCK": relay.sock},
    )
    try:
        relay.start()
        proxy.start()
        agent = start_agent(tmp_path / "agent")
        with Baresip(tmp_path / "baresip", Account(transport="udp")) as phone:
            try:
                payment = pay(phone, node, "udp", agent, port=proxy.port)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- rtpengine\n{relay.log()[-3000:]}") from None
            check_approved(payment, phone, node)
        quality = [
            json.loads(line)
            for line in node.logs().splitlines()
            if '"media quality"' in line and payment.call_id in line
        ]
        assert [q["port"] for q in quality] == ["shared"], quality
        dtmf = next(
            json.loads(line)
            for line in node.logs().splitlines()
            if '"msg": "dtmf"' in line and payment.call_id in line
        )
        assert dtmf["accepted_rfc4733"] == len(CARD + "#" + EXPIRY + CVC), dtmf
    finally:
        proxy.stop()
        relay.stop()
        node.stop()


# ---- the harness ----------------------------------------------------------------------------


def test_baresip_takes_other_ports_when_the_chosen_one_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port chosen free can be taken (another test's ephemeral port) before baresip binds it;
    the harness chooses again instead of failing the test."""
    import socket

    import baresip as harness_baresip

    if baresip_missing():
        pytest.skip(str(baresip_missing()))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((HOST, 0))
        squatter.listen()
        taken = int(squatter.getsockname()[1])
        chosen = iter([taken])
        real = harness_baresip.free_port_pair
        monkeypatch.setattr(harness_baresip, "free_port_pair", lambda: next(chosen, None) or real())
        with Baresip(tmp_path / "baresip", Account(transport="udp")) as phone:
            assert phone.sip_port != taken
            assert phone.command("uafind", f"sip:{phone.account.user}@{HOST}", check=False)
