"""The PBX recipes of docs/integration.md, each replayed as that PBX behaves on the wire.

One whole payment per recipe (sandbox card 4111111111111111, keyed as RFC 4733 by SIPp) against
a real `spg-media serve`. Each PBX is a SIPp scenario in sipp/pbx_*.xml with that PBX's own
shapes: where the token goes (header or Request-URI parameter), its From/Contact/Referred-By/
Diversion, and how it answers the REFER that sends the caller back (202 and NOTIFY sipfrag, or a
refusal that makes the node fall back to a BYE carrying the result). The scenarios check with
`ereg` what that PBX can read (Asterisk: the Refer-To URI without its ?headers), so SIPp fails
when a recipe breaks; the tests check the CDR, and that the result the PBX read is the CDR's.

The node has no `ivr.return_uri`: where the caller goes back comes from the PBX's handoff
(Referred-By, or X-SPG-Return-To). The four calls run at the same time (one module fixture
starts them all; each test reads its own): a call is mostly prompts, and one at a time they
took four times as long.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import (
    HOST,
    REPO,
    SIPP_DIR,
    KamailioProxy,
    SippResult,
    SpgNode,
    run_sipp,
    wait_for,
)

from spg_media.sip.uri import SipUri, unescape

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

PAN, EXPIRY, CVC = "4111111111111111", "1230", "123"  # what every scenario keys
CALLCENTER_CFG = REPO / "kamailio" / "callcenter-proxy.cfg"


@pytest.fixture(scope="module")
def node(sip_tools: None, spg_node_factory: Callable[..., SpgNode]) -> SpgNode:
    return spg_node_factory(
        {
            "SPG_IVR__FIRST_DIGIT_TIMEOUT_S": "5",
            "SPG_IVR__INTER_DIGIT_TIMEOUT_S": "3",
            "SPG_GATEWAY__CONNECTOR": "sandbox",
        }
    )


def token() -> str:
    return f"sbx-4990-EUR-{uuid.uuid4().hex[:10]}"


def run_pbx(
    scenario: str,
    target: str,
    sipp_dir: Path,
    keys: Mapping[str, str],
    extra_args: Sequence[str] = (),
) -> tuple[SippResult, str]:
    """One call of sipp/`scenario` towards `target` ("host:port"); SIPp's result and Call-ID."""
    name = f"{Path(scenario).stem}-{uuid.uuid4().hex[:8]}"
    call_id = f"{name}@{HOST}"
    result = run_sipp(
        SIPP_DIR / scenario,
        target,
        ["-cid_str", call_id, *extra_args],
        60.0,
        workdir=sipp_dir,
        keys=keys,
        name=name,
    )
    return result, call_id


@dataclass
class PbxCall:
    """One recipe's call: SIPp's result, its Call-ID, the token it carried, Kamailio's log."""

    pbx: SippResult
    call_id: str
    token: str
    proxy_port: int = 0
    proxy_log: str = ""


RECIPES = ("asterisk", "freeswitch", "kamailio", "sbc")


@pytest.fixture(scope="module")
def calls(
    node: SpgNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[PbxCall]]]:
    """Every recipe's call, all started at once."""
    work = tmp_path_factory.mktemp("pbx")

    def direct(recipe: str, scenario: str) -> PbxCall:
        tok = token()
        sipp_dir = work / recipe
        sipp_dir.mkdir()
        pbx, call_id = run_pbx(
            scenario, f"{HOST}:{node.sip_port}", sipp_dir, {"spg_transaction": tok}
        )
        return PbxCall(pbx, call_id, tok)

    def through_callcenter_proxy() -> PbxCall:
        tok = token()
        sipp_dir = work / "kamailio"
        sipp_dir.mkdir()
        defines = {"SPG_URI": f'"{node.uri}"'}
        with KamailioProxy(
            work / "kamailio-proxy", [node.uri], cfg=CALLCENTER_CFG, defines=defines
        ) as kam:
            pbx, call_id = run_pbx(
                "pbx_kamailio.xml",
                f"{HOST}:{kam.port}",
                sipp_dir,
                {"spg_transaction": tok},
                # the proxy's workers may pass the node's BYE before its 200 to the last NOTIFY
                ["-default_behaviors", "all,-abortunexp"],
            )
            return PbxCall(pbx, call_id, tok, kam.port, kam.log())

    with ThreadPoolExecutor(len(RECIPES)) as pool:
        yield {
            "asterisk": pool.submit(direct, "asterisk", "pbx_asterisk.xml"),
            "freeswitch": pool.submit(direct, "freeswitch", "pbx_freeswitch.xml"),
            "kamailio": pool.submit(through_callcenter_proxy),
            "sbc": pool.submit(direct, "sbc", "pbx_sbc.xml"),
        }


def finished(calls: dict[str, Future[PbxCall]], recipe: str, node: SpgNode) -> PbxCall:
    """The recipe's call once SIPp is done; it must have passed its scenario's checks."""
    call = calls[recipe].result(timeout=120)
    assert call.pbx.returncode == 0, (
        call.pbx.explain() + node.logs()[-4000:] + call.proxy_log[-2000:]
    )
    return call


def cdr_for(node: SpgNode, call_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def look() -> bool:
        found[:] = [r for r in map(json.loads, node.cdr_lines()) if r["call_id"] == call_id]
        return bool(found)

    assert wait_for(look, 5.0), f"no CDR line for {call_id}: {node.cdr_lines()[-3:]}"
    assert len(found) == 1, found
    return found[0]


def assert_paid(node: SpgNode, pbx: SippResult, call_id: str, tok: str) -> dict[str, Any]:
    """The CDR says approved for `tok` with the card's last four; no card data anywhere."""
    cdr = cdr_for(node, call_id)
    assert cdr["result"] == "approved", cdr
    assert cdr["transaction"] == tok
    assert cdr["card"] == {"brand": "visa", "last4": "1111"}
    assert cdr["reference"]
    sent_by_node = "\n".join(m.text for m in pbx.messages if m.direction == "received")
    for where, text in {
        "CDR": json.dumps(cdr),
        "node logs": node.logs(),
        "SIP the node sent": sent_by_node,
    }.items():
        assert PAN not in text and PAN[:12] not in text, f"card number in {where}"
        assert not re.search(rf"(?i)(cvc|cvv|security.?code)\W{{0,6}}{CVC}\b", text), where
    assert not re.search(rf"\b{EXPIRY}\b", sent_by_node), "expiry in SIP the node sent"
    return cdr


def refer_to_params(pbx: SippResult) -> tuple[SipUri, dict[str, str]]:
    """The node's Refer-To URI, and its parameters as a PBX keeping only the URI reads them."""
    refers = pbx.received("REFER")
    assert refers, f"no REFER\n{pbx.explain()}"
    value = refers[0].header("Refer-To") or ""
    uri = SipUri.parse(value.strip().removeprefix("<").removesuffix(">"))
    return uri, {k: unescape(v or "") for k, v in uri.params.items()}


# ---- Asterisk (chan_pjsip) -----------------------------------------------------------------


def test_asterisk_pjsip(node: SpgNode, calls: dict[str, Future[PbxCall]]) -> None:
    """Token as a PJSIP_HEADER(add) header, return to the agent of the phone's Referred-By;
    the result read from the Refer-To URI parameters alone (SIPp checks them), 202 + NOTIFY
    100 then 200."""
    call = finished(calls, "asterisk", node)
    pbx = call.pbx
    cdr = assert_paid(node, pbx, call.call_id, call.token)

    uri, params = refer_to_params(pbx)
    assert uri.user == "1001"  # the extension Asterisk runs: the Referred-By of the INVITE
    assert params["x-spg-result"] == "approved"
    assert params["x-spg-reference"] == cdr["reference"]
    # the NOTIFYs were answered and the node hung up only after the final one
    notifies = [m for m in pbx.sent("NOTIFY")]
    assert [n.text.rstrip().splitlines()[-1] for n in notifies] == [
        "SIP/2.0 100 Trying",
        "SIP/2.0 200 OK",
    ]
    assert pbx.received("BYE")


# ---- FreeSWITCH (mod_sofia) ------------------------------------------------------------------


def fs_refer_params(refer_to: str) -> str:
    """What mod_sofia's blind transfer puts in sip_h_X-FS-Refer-Params: the Refer-To URI's
    parameters as written (url_params of sofia-sip: after the first ';' of the host part, up to
    any '?')."""
    uri = refer_to.strip().removeprefix("<").removesuffix(">").split("?", 1)[0]
    host_part = uri.split("@", 1)[-1]
    return host_part.split(";", 1)[1] if ";" in host_part else ""


def test_freeswitch_mod_sofia(node: SpgNode, calls: dict[str, Future[PbxCall]]) -> None:
    """Token as sip_h_X-SPG-Transaction, return to the Referred-By agent; 202 with Expires,
    one NOTIFY `refer;id=N` terminated 200; the result as X-FS-Refer-Params reads it."""
    call = finished(calls, "freeswitch", node)
    pbx = call.pbx
    cdr = assert_paid(node, pbx, call.call_id, call.token)

    refer = pbx.received("REFER")[0]
    params = fs_refer_params(refer.header("Refer-To") or "")
    # what the recipe's dialplan regex reads from ${sip_h_X-FS-Refer-Params}
    assert params == f"x-spg-result=approved;x-spg-reference={cdr['reference']}", params
    assert refer.header("X-SPG-Result") == "approved"
    assert pbx.received("BYE")


# ---- Kamailio alone: the call center's proxy adds the header -----------------------------


def test_kamailio_callcenter_proxy(node: SpgNode, calls: dict[str, Future[PbxCall]]) -> None:
    """kamailio/callcenter-proxy.cfg as shipped: the caller's side follows the agent's REFER to
    sip:pay-<token>@proxy; the proxy turns the user part into X-SPG-Transaction (append_hf),
    strips the caller's own X-SPG-*, record-routes; the REFER comes back through it."""
    call = finished(calls, "kamailio", node)
    pbx = call.pbx
    # the node saw the token only as the header the proxy added (the URI user was pay-<token>)
    cdr = assert_paid(node, pbx, call.call_id, call.token)

    refer = pbx.received("REFER")[0]
    assert f"{HOST}:{call.proxy_port}" in (refer.header("Via") or "")  # back through the proxy
    uri, params = refer_to_params(pbx)
    assert uri.user == "1001"
    assert params["x-spg-reference"] == cdr["reference"]
    assert [m.cseq_method for m in pbx.received(200)] == ["INVITE", "NOTIFY", "NOTIFY"]


# ---- A generic SBC: handoff in the Request-URI, REFER refused --------------------------------


def test_generic_sbc_refer_refused(node: SpgNode, calls: dict[str, Future[PbxCall]]) -> None:
    """Token and return target as Request-URI parameters through a topology-hiding SBC that
    answers REFER 405: the node ends with a BYE carrying the X-SPG-* headers (SIPp checks them)."""
    call = finished(calls, "sbc", node)
    pbx = call.pbx
    cdr = assert_paid(node, pbx, call.call_id, call.token)

    assert pbx.sent(405)
    bye = pbx.received("BYE")[0]
    assert bye.header("X-SPG-Result") == "approved"
    assert bye.header("X-SPG-Reference") == cdr["reference"]
    assert bye.header("X-SPG-Transaction") == call.token
    assert bye.header("X-SPG-Card") == "visa 1111"
