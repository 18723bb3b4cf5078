"""Benchmark: what card data a node's memory holds after many payments.

Run (root: SIPp's pcap play, and reading a process that is not dumpable):
    .venv/bin/python bench/bench_memory_scan.py [--calls 1000] [--rate 10] [--limit 250]
        [--relay [--shared-port relays|off]]

An attacker who gets root on a node (or a core dump, or its swap) reads its memory. This runs
`--calls` whole payment calls (SIPp callers keying the card, expiry and security code as RFC
4733 events) into one `spg-media serve` whose connector is `http`, talking to a separate
`spg-media sandbox` process, as in production; four cards, one per SIPp process, so a find
says which calls it comes from. When every call has ended, it reads the node's whole memory
(every readable mapping of /proc/PID/maps through /proc/PID/mem) and counts complete card
numbers and security codes next to an expiry (as keyed, and as the payment request's JSON).

With `--relay` the calls come as they do from a media relay onto the node's shared media port:
SIPp → Kamailio (`-A WITH_RTPENGINE`) → rtpengine → the node with `rtp.shared_port = "relays"`
and rtpengine's address as `rtp.media_sources`. The callers then key the card, expiry and code
as in-band tones in their audio (SIPp's RFC 4733 pcaps do not pass a relay: each replays the
same sequence numbers and timestamps), at the load kit's timing (`loadkit.plan_key_presses`:
each field after its prompt ends). So the node's shared-port batch buffers and the in-band
detector have carried every key, and the scan says what is left of them: besides card numbers
and codes, it counts the callers' keypad tones themselves: a 24-sample piece of each 20 ms
frame lying wholly inside a tone, looked for as received (A-law: SIPp and rtpengine pass a
file's bytes on unchanged), decoded (16-bit PCM) and as the detector's float32 copy.
`--shared-port off` runs the same calls on a port a call (the comparison: what the node keeps
of the audio either way).

The baseline, in the same run, is the sandbox process: the platform end of the same requests,
which parses every card and keeps what Python leaves of it. The target for the node is 0 and 0.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from harness import (
    HOST,
    KAMAILIO,
    REPO,
    RTPENGINE,
    SIPP,
    KamailioProxy,
    RtpEngine,
    SandboxProcess,
    SippLoadResult,
    SpgNode,
    make_pay_scenario,
    run_sipp_load,
)
from loadkit import (
    caller_audio,
    node_prompt_seconds,
    plan_key_presses,
    sandbox_transaction,
    write_alaw,
)
from memscan import KnownCard, count_fragments, scan_process

from spg_media.rtp.g711 import decode

# Sandbox cards that approve; each SIPp process keys one of them in all its calls.
CARDS = [
    KnownCard("4111111111111111", "1230", "123"),
    KnownCard("5555555555554444", "0631", "456"),
    KnownCard("378282246310005", "0929", "7890"),  # American Express: a four-digit code
    KnownCard("6011000990139424", "1133", "321"),
]


FRAME = 160  # bytes of A-law a 20 ms packet: SIPp's rtp_stream sends the file in such pieces
TONE_S = 0.1  # how long each key's tone lasts (loadkit.caller_audio's default)
PIECE = 24  # samples of a tone frame looked for: the line noise in them makes them unique
# The forms a node holds the audio in: as received, decoded (decode_array) and as the in-band
# analysis's float32 copy of the samples
FORMS = ("A-law", "16-bit PCM", "float32")


def tone_pieces(alaw: bytes, starts_s: list[float]) -> dict[str, list[bytes]]:
    """`PIECE` samples from the middle of each `FRAME` of `alaw` that lies wholly inside a tone
    starting at one of `starts_s` (seconds from the start of the audio), in each of `FORMS`."""
    pieces: dict[str, list[bytes]] = {form: [] for form in FORMS}
    for start in starts_s:
        first = -(-round(start * 8000) // FRAME)  # the first frame starting inside the tone
        end = round((start + TONE_S) * 8000) // FRAME  # frames before this one end inside it
        for frame in range(first, end):
            middle = frame * FRAME + (FRAME - PIECE) // 2
            codes = alaw[middle : middle + PIECE]
            samples = decode(codes, "PCMA")
            pieces["A-law"].append(codes)
            pieces["16-bit PCM"].append(samples.astype("<i2").tobytes())
            pieces["float32"].append(samples.astype("<f4").tobytes())
    return pieces


def inband_caller(
    card: KnownCard, work: Path, name: str, seed: int
) -> tuple[Path, dict[str, list[bytes]]]:
    """Raw A-law audio of a caller who keys `card` as in-band tones, each field after the
    node's prompt for it has ended (line noise between), for SIPp's `rtp_stream`; and the
    pieces of its tone frames (`tone_pieces`). Each card's caller has line noise of its own
    (`seed`), so that equal keys at equal times of two cards still make different frames."""
    fields = [card.number + "#", card.expiry, card.cvc]
    plan = plan_key_presses(
        fields,
        node_prompt_seconds(REPO / ".spg-cache" / "prompts"),
        transaction=sandbox_transaction(),
        today=datetime.date.today(),
    )
    # past the keys: through the result and the goodbye (SIPp stops it when the call ends)
    path = write_alaw(work / name, caller_audio(plan.presses, plan.end_s + 60.0, seed=seed))
    return path, tone_pieces(path.read_bytes(), [press.at_s for press in plan.presses])


def run_calls(
    target: str,
    calls: int,
    rate: float,
    limit: int,
    work: Path,
    tones: dict[str, dict[str, list[bytes]]] | None = None,
    cards: Sequence[KnownCard] = CARDS,
) -> list[SippLoadResult]:
    """`calls` payment calls to `target` (host:port), split over `cards`, one SIPp process
    per card (`rate` and `limit` shared out likewise). With `tones`, the callers key in-band
    (the tones in their audio, not RFC 4733 events), and `tones` gets each card's tone pieces
    (`inband_caller`) by its masked number."""
    run = uuid.uuid4().hex[:6]
    results: list[SippLoadResult] = []
    threads = []
    share = [calls // len(cards) + (1 if i < calls % len(cards) else 0) for i in range(len(cards))]
    for index, (card, count) in enumerate(zip(cards, share, strict=True)):
        if not count:
            continue
        audio: Path | None = None
        if tones is not None:
            audio, tones[card.masked] = inband_caller(card, work, f"caller{index}.alaw", index + 1)
        scenario = make_pay_scenario(
            [card.number + "#", card.expiry, card.cvc],
            work / f"pay{index}.xml",
            headers={"X-SPG-Transaction": f"sbx-4990-EUR-mem{run}c{index}-[call_number]"},
            result_timeout_ms=120_000,
            # in-band: the whole call's audio, tones included, from the ACK on
            initial_pause_ms=0 if audio is not None else 1000,
            inband_wav=audio,
        )

        def one(scenario: Path = scenario, count: int = count) -> None:
            results.append(
                run_sipp_load(
                    scenario,
                    target,
                    count,
                    rate / len(cards),
                    workdir=work / "sipp",
                    limit=max(1, limit // len(cards)),
                    timeout_s=count / (rate / len(cards)) + 300,
                )
            )

        thread = threading.Thread(target=one)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0, help="new calls per second")
    parser.add_argument("--limit", type=int, default=250, help="calls at once at most")
    parser.add_argument(
        "--relay",
        action="store_true",
        help="through Kamailio and rtpengine onto the node's shared media port, keys in-band",
    )
    parser.add_argument(
        "--shared-port",
        choices=("relays", "off"),
        default="relays",
        help="with --relay: the node's rtp.shared_port (off: a port a call, the comparison)",
    )
    args = parser.parse_args()
    if SIPP is None:
        print("needs sipp (Debian sip-tester)", file=sys.stderr)
        return 2
    if args.relay and (KAMAILIO is None or RTPENGINE is None):
        print("--relay needs kamailio and rtpengine (Debian rtpengine-daemon)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("needs root: SIPp's pcap play and reading the node's memory", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="spg-memscan-"))
    started = time.monotonic()
    with SandboxProcess(work / "sandbox") as sandbox:
        env = {
            **sandbox.node_env(),
            "SPG_LOG__LEVEL": "info",
            "SPG_IVR__RETURN_URI": f"sip:agent@{HOST}:5999",
        }
        with contextlib.ExitStack() as stack:
            relay: RtpEngine | None = None
            if args.relay:
                # rtpengine takes 4 ports a call (RTP and RTCP, each side)
                relay = stack.enter_context(
                    RtpEngine(work / "rtpengine", ports=8 * args.limit + 400)
                )
                env["SPG_RTP__SHARED_PORT"] = args.shared_port
                env["SPG_RTP__MEDIA_SOURCES"] = f"{relay.address}/32"
            node = stack.enter_context(SpgNode(work / "node", env=env))
            target = f"{HOST}:{node.sip_port}"
            if relay is not None:
                proxy = KamailioProxy(
                    work / "kamailio",
                    [f"sip:{HOST}:{node.sip_port}"],
                    defines={"WITH_RTPENGINE": "1", "RTPENGINE_SOCK": relay.sock},
                )
                stack.enter_context(proxy)
                target = f"{HOST}:{proxy.port}"
            tones: dict[str, dict[str, list[bytes]]] | None = {} if args.relay else None
            results = run_calls(target, args.calls, args.rate, args.limit, work, tones)
            time.sleep(2.0)  # the last BYEs and CDR lines
            assert node.proc is not None and sandbox.proc is not None
            node_report = scan_process(node.proc.pid, CARDS)
            sandbox_report = scan_process(sandbox.proc.pid, CARDS)
            tones_left = None
            if tones is not None:
                tones_left = count_fragments(
                    node.proc.pid,
                    {
                        f"{masked} {form}": pieces
                        for masked, forms in tones.items()
                        for form, pieces in forms.items()
                    },
                )
            cdrs = [json.loads(line) for line in node.cdr_lines()]
            shared_calls = sum(
                1
                for line in node.logs().splitlines()
                if "media quality" in line and ('"port": "shared"' in line or "port=shared" in line)
            )
    approved = sum(1 for r in cdrs if r.get("result") == "approved")
    print(f"$ {shlex.join(sys.argv)}")
    print(
        f"{args.calls} calls at {args.rate}/s (at most {args.limit} at once), "
        f"{time.monotonic() - started:.0f} s: SIPp {sum(r.succeeded for r in results)} "
        f"succeeded, {sum(r.failed for r in results)} failed; CDRs: {approved} approved "
        f"of {len(cdrs)}"
    )
    if args.relay:
        print(f"calls on the node's shared media port (media quality lines): {shared_calls}")
    print(f"node    (spg-media serve, http connector): {node_report.summary()}")
    print(f"sandbox (the platform, baseline):          {sandbox_report.summary()}")
    for card in CARDS:
        print(
            f"  card {card.masked}: node {node_report.numbers[card.masked]} numbers, "
            f"{node_report.codes_near_expiry[card.masked]} codes; sandbox "
            f"{sandbox_report.numbers[card.masked]} numbers, "
            f"{sandbox_report.codes_near_expiry[card.masked]} codes"
        )
    clean = node_report.total_numbers == 0 and node_report.total_codes == 0
    verdict = "met" if clean else "NOT met"
    print(f"target (0 numbers, 0 codes next to an expiry in the node): {verdict}")
    if tones is not None and tones_left is not None:
        print("callers' keypad-tone frames found in the node, of those sent, by form:")
        for masked, forms in tones.items():
            found = ", ".join(f"{form} {tones_left.found[f'{masked} {form}']}" for form in forms)
            print(f"  card {masked}: {found} (of {len(forms['A-law'])})")
        places = ", ".join(f"{k}: {v}" for k, v in sorted(tones_left.where.items()))
        print(f"  where: {places or 'nowhere'}")
    return 0 if clean and approved == args.calls else 1


if __name__ == "__main__":
    sys.exit(main())
