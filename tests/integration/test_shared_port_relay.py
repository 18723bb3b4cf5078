"""The shared media port behind a real media relay: SIPp callers → Kamailio (`-A
WITH_RTPENGINE`) → rtpengine → one `spg-media serve` with `rtp.shared_port = "relays"` and
rtpengine's address as `rtp.media_sources`.

Two payments at once, each with its own card keyed as in-band tones, both on the node's one
shared port (the calls
told apart by the port rtpengine sends each from), while a stranger on 127.0.0.2 floods every
port of the node's range: both approved with their own card, the stranger gets nothing back,
and the node counts what it dropped. The same with a port a call (`rtp.shared_port = "off"`)."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from harness import (
    HOST,
    RELAY_HOST,
    RTPENGINE,
    RtpEngine,
    SippResult,
    SpgNode,
    free_media_port,
    free_port,
    make_pay_scenario,
    run_sipp,
    wait_for,
    write_dtmf_wav,
)
from test_media_sources import Stranger, dropped_for_source, metric

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(RTPENGINE is None, reason="rtpengine (rtpengine-daemon) not installed"),
]

RANGE_PORTS = 8
CARDS = {"visa": "4111111111111111", "mastercard": "5555555555554444"}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("shared_port", ["relays", "off"])
def test_two_payments_on_the_shared_port_behind_rtpengine_under_a_flood(
    shared_port: str,
    sip_tools: None,
    spg_node_factory: Callable[..., SpgNode],
    kamailio_factory: Callable[..., Any],
    sipp_dir: Path,
    tmp_path: Path,
) -> None:
    low = free_media_port(count=RANGE_PORTS)
    node = spg_node_factory(
        {
            "SPG_RTP__PORT_MIN": str(low),
            "SPG_RTP__PORT_MAX": str(low + RANGE_PORTS - 1),
            "SPG_RTP__SHARED_PORT": shared_port,
            "SPG_RTP__MEDIA_SOURCES": f"{RELAY_HOST}/32",
            "SPG_IVR__FIRST_DIGIT_TIMEOUT_S": "3",
            "SPG_IVR__INTER_DIGIT_TIMEOUT_S": "2",
            "SPG_IVR__RETURN_URI": f"sip:agent@{HOST}:{free_port()}",
            "SPG_GATEWAY__CONNECTOR": "sandbox",
        }
    )
    with RtpEngine(tmp_path / "rtpengine") as relay:
        kam = kamailio_factory(
            [f"sip:{HOST}:{node.sip_port}"],
            defines={"WITH_RTPENGINE": "1", "RTPENGINE_SOCK": relay.sock},
        )
        on_shared_port: list[float] = []
        watching = threading.Event()

        def watch() -> None:
            while not watching.wait(0.2):
                with contextlib.suppress(OSError):
                    on_shared_port.append(metric(node, "spg_rtp_shared_port_calls"))

        def pay(brand: str) -> tuple[SippResult, str]:
            name = f"relay-{brand}-{uuid.uuid4().hex[:6]}"
            call_id = f"{name}@{HOST}"
            fields = [CARDS[brand] + "#", "1230", "123"]
            # keyed as tones in a stream of audio (SIPp's static RFC 4733 pcaps repeat their
            # RTP numbers for every press, which a relay does not pass as a phone's would be)
            tones = write_dtmf_wav(sipp_dir / f"{name}.wav", fields)
            xml = make_pay_scenario(
                fields, sipp_dir / f"{name}.xml", inband_wav=tones, initial_pause_ms=0
            )
            uac = run_sipp(
                xml,
                f"{HOST}:{kam.port}",
                ["-s", "pay", "-cid_str", call_id],
                70,
                workdir=sipp_dir,
                keys={"spg_transaction": f"sbx-4990-EUR-{uuid.uuid4().hex[:10]}"},
                name=name,
            )
            return uac, call_id

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with Stranger(range(low, low + RANGE_PORTS)) as stranger, ThreadPoolExecutor(2) as pool:
            results = dict(zip(CARDS, pool.map(pay, CARDS), strict=True))
        watching.set()
        watcher.join(5)
        relay_log = relay.log()
    for brand, (uac, call_id) in results.items():
        assert uac.returncode == 0, (
            uac.explain() + str(node.cdr_lines()) + node.logs()[-3000:] + relay_log[-2000:]
        )
        refer = uac.received("REFER")[0]
        assert refer.header("X-SPG-Result") == "approved"
        assert refer.header("X-SPG-Card") == f"{brand} {CARDS[brand][-4:]}"  # its own card

        def cdr(call_id: str = call_id) -> dict[str, Any] | None:
            lines = (json.loads(line) for line in node.cdr_lines())
            return next((r for r in lines if r["call_id"] == call_id), None)

        assert wait_for(lambda: cdr() is not None, 5), node.cdr_lines()[-3:]
        record = cdr()
        assert record is not None
        assert record["card"] == {"brand": brand, "last4": CARDS[brand][-4:]}
    on_the_port = 2 if shared_port == "relays" else 0  # both calls on the one port, or none
    assert max(on_shared_port, default=0) == on_the_port, on_shared_port
    quality = [json.loads(line) for line in node.logs().splitlines() if '"media quality"' in line]
    kind = "shared" if shared_port == "relays" else "own"
    assert [q["port"] for q in quality] == [kind, kind], quality
    assert stranger.sent > 1000
    assert stranger.received == 0, "the node sent media to the stranger"
    assert wait_for(lambda: dropped_for_source(node) > 0, 5)
