"""The `spg-media` command line.

Every command turns bad arguments or config into one line on stderr and exit status 2, never a
traceback. `demo` runs a whole payment call on loopback: a node on built-in defaults (free ports),
the in-process sandbox platform, and our test caller keying a card as RFC 4733 events (or as
in-band tones with `--inband`; over SIP/TLS with SRTP media and a throwaway self-signed
certificate with `--srtp`). `dtmf-scan` prints the digits found in a recording, `speech-scan`
the digits a caller says in one (the same recogniser and constraints as a call). `reconcile`
settles the payment journal's open entries against the platform after a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from spg_media.config import Config, ConfigError, load_config, parse_listen

if TYPE_CHECKING:
    from spg_media.payment.journal import JournalEntry, PaymentJournal


class UsageError(Exception):
    """A bad argument: reported as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spg-media", description="Secure payment gateway for phone calls.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the SIP user agent")
    serve.add_argument("-c", "--config", help="TOML config file")
    serve.add_argument(
        "--sip", action="append", default=[], help="listen spec udp|tcp|tls:HOST:PORT"
    )
    serve.add_argument("--admin", help="admin HTTP HOST:PORT ('' disables)")
    serve.add_argument(
        "--workers",
        help="worker processes, each on its own SIP ports (listener port + index) and slice of "
        "the RTP range: 0 = one per core (default: process.workers), 1 = one process",
    )
    serve.add_argument(
        "--drain-s",
        help="on SIGTERM/SIGINT, how long calls in progress get to finish (default 30); never "
        "less than an authorisation with its reconciliation may take (gateway.timeout_s + "
        "gateway.reconcile_s + 5) unless --drain-exact",
    )
    serve.add_argument(
        "--drain-exact",
        action="store_true",
        help="drain for --drain-s even when shorter than an authorisation may take (a call cut "
        "short then may leave its charge unknown: run spg-media reconcile)",
    )
    # How the supervisor tells a worker which it is (its log lines carry the number).
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)

    dispatcher = sub.add_parser(
        "kamailio-dispatcher",
        help="Kamailio dispatcher.list entries for the workers of `serve`",
    )
    dispatcher.add_argument("-c", "--config", help="TOML config file")
    dispatcher.add_argument("--workers", help="worker count (default: process.workers)")
    dispatcher.add_argument("--setid", default="1", help="dispatcher set id (default 1)")

    init = sub.add_parser(
        "init", help="write a starting spg.toml and the Kamailio configuration to a directory"
    )
    init.add_argument("directory", help="where to write (created if missing)")
    init.add_argument("--force", action="store_true", help="overwrite files that exist")

    demo = sub.add_parser("demo", help="a complete payment call on loopback")
    demo.add_argument("--inband", action="store_true", help="key the card as in-band tones")
    demo.add_argument("--srtp", action="store_true", help="run the call over TLS + SRTP")
    demo.add_argument("--card", help="card number to key (default: a sandbox card that approves)")
    demo.add_argument("--expiry", default="1230", help="expiry MMYY to key")
    demo.add_argument("--lang", default=None, help="prompt language (en, es)")
    demo.add_argument(
        "--assist",
        action="store_true",
        help="an agent-assisted payment: the customer bridged to an agent whose desktop drives "
        "the assist API; shows what the agent hears and sees",
    )

    sandbox = sub.add_parser("sandbox", help="the sandbox payment platform alone")
    sandbox.add_argument("--listen", default="127.0.0.1:8480", help="HOST:PORT")
    sandbox.add_argument("--secret", default="", help="request signing secret")
    sandbox.add_argument(
        "--slow-s",
        default="12",
        help="seconds the slow test card (4000000000000341) takes to charge and answer: above "
        "the node's gateway.timeout_s, the node finds the charge by reconciliation if it is "
        "within gateway.reconcile_s after that (default 12)",
    )

    prompts = sub.add_parser("prompts", help="render and cache every prompt")
    prompts.add_argument("--lang", action="append", help="language (repeatable); default all")
    prompts.add_argument("-c", "--config", help="TOML config file (for tts.cache_dir)")

    scan = sub.add_parser("dtmf-scan", help="DTMF digits in a recording, one JSON line each")
    scan.add_argument("file", help="the recording (WAV, or raw with --format)")
    scan.add_argument(
        "--format",
        choices=("wav", "alaw", "ulaw", "s16"),
        help="audio format (default: from the content or the file extension)",
    )
    scan.add_argument("--rate", type=int, help="sample rate in Hz of a raw file (default 8000)")

    speech = sub.add_parser(
        "speech-scan", help="the digits a caller says in a recording, as one JSON line"
    )
    speech.add_argument("file", help="the recording of one field said (WAV, or raw with --format)")
    speech.add_argument(
        "--field",
        choices=("card", "expiry", "code"),
        default="card",
        help="what is said: card number, expiry MMYY or security code (default card)",
    )
    speech.add_argument("--lang", default="en", help="language spoken (default en)")
    speech.add_argument(
        "--format",
        choices=("wav", "alaw", "ulaw", "s16"),
        help="audio format (default: from the content or the file extension)",
    )
    speech.add_argument("--rate", type=int, help="sample rate in Hz of a raw file (default 8000)")

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("-c", "--config", required=True, help="TOML config file")

    reconcile = sub.add_parser(
        "reconcile", help="settle the payment journal's open entries against the platform"
    )
    reconcile.add_argument("-c", "--config", help="TOML config file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _build_parser().parse_args(argv)
        handler = {
            "serve": _serve,
            "kamailio-dispatcher": _kamailio_dispatcher,
            "init": _init,
            "demo": _demo,
            "sandbox": _sandbox,
            "prompts": _prompts,
            "dtmf-scan": _dtmf_scan,
            "speech-scan": _speech_scan,
            "check-config": _check_config,
            "reconcile": _reconcile,
        }[args.command]
        return handler(args)
    except (UsageError, ConfigError) as exc:
        print(f"spg-media: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _load(path: str | None) -> Config:
    return load_config(path)


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise UsageError(f"{what}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


# ---- dtmf-scan --------------------------------------------------------------------------------


def _dtmf_scan(args: argparse.Namespace) -> int:
    from spg_media.dtmf.inband import scan
    from spg_media.dtmf.recording import RecordingError, read_recording

    try:
        samples = read_recording(args.file, args.format, args.rate)
    except RecordingError as exc:
        raise UsageError(str(exc)) from None
    for digit, start_ms, end_ms in scan(samples):
        line = {"digit": digit, "start_ms": round(start_ms), "end_ms": round(end_ms)}
        print(json.dumps(line), flush=True)
    return 0


# ---- speech-scan ------------------------------------------------------------------------------


def _speech_scan(args: argparse.Namespace) -> int:
    from spg_media.dtmf.recording import RecordingError, read_recording
    from spg_media.speech.recogniser import LANGUAGES, language_supported
    from spg_media.speech.scan import NoSpeech, scan_field

    if not language_supported(args.lang):
        raise UsageError(
            f"--lang: no speech model for {args.lang!r} (installed: {', '.join(LANGUAGES)})"
        )
    try:
        samples = read_recording(args.file, args.format, args.rate)
    except RecordingError as exc:
        raise UsageError(str(exc)) from None
    try:
        reading = scan_field(samples, args.field)
    except NoSpeech as exc:
        raise UsageError(f"{Path(args.file).name}: {exc}") from None
    line = {
        "field": args.field,
        "digits": reading.digits,
        "valid": reading.valid,
        "confidence": round(reading.confidence, 3),
    }
    print(json.dumps(line), flush=True)
    return 0


# ---- serve ------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    for spec in args.sip:
        try:
            parse_listen(spec)
        except ConfigError as exc:
            raise UsageError(f"--sip: {exc}") from None
    sip = dataclasses.replace(config.sip, listen=tuple(args.sip)) if args.sip else config.sip
    admin = config.admin
    if args.admin is not None:
        if args.admin and not args.admin.startswith("unix:"):
            _host_port(args.admin, "--admin")
        admin = dataclasses.replace(config.admin, listen=args.admin)
    config = dataclasses.replace(config, sip=sip, admin=admin)
    count = _worker_count(args.workers, config)
    drain_s = _drain_seconds(args)
    from spg_media.observability import setup_logging

    handler = setup_logging(config.log.format, config.log.level)
    if args.worker_index is not None:
        handler.addFilter(_WorkerField(args.worker_index))
        from spg_media.hardening import end_with_parent

        # A worker ends with its supervisor: else it would keep its ports and take calls that
        # no supervisor watches (and a restarted supervisor could not bind them).
        if not end_with_parent():
            raise UsageError("worker: its supervisor is gone")
    _harden(config)
    if config.gateway.connector == "sandbox" and args.worker_index is None:
        logging.getLogger("spg.server").warning(
            'gateway.connector is "sandbox": every Luhn-valid card is approved and nothing is '
            'charged; set gateway.connector = "http" to take real payments'
        )
    if count == 1:
        _run(_serve_async(config, drain_s, not args.drain_exact))
    else:
        drain = ["--drain-s", str(args.drain_s)] if args.drain_s is not None else []
        drain += ["--drain-exact"] if args.drain_exact else []
        _run(_supervise_async(config, args.config, count, drain))
    return 0


def _worker_count(given: str | None, config: Config) -> int:
    from spg_media.workers import plan_workers, worker_count

    if given is None:
        setting = config.process.workers
    elif given.isascii() and given.isdigit() and int(given) <= 256:
        setting = int(given)
    else:
        raise UsageError(f"--workers: expected 0 (one per core) to 256, got {given!r}")
    # The agent-assisted API keeps its calls and payments in one process: "one per core"
    # means one then (an explicit count above 1 is refused by plan_workers).
    assisted = bool(config.assist.listen and config.assist.api_token)
    count = 1 if setting == 0 and assisted else worker_count(setting)
    if count > 1:
        plan_workers(config, count, Path("/nonexistent"))  # ports and RTP slices fit: else exit 2
    return count


class _WorkerField(logging.Filter):
    """Adds `worker` to every record of a worker process, so merged logs say whose line it is."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


async def _supervise_async(
    config: Config, config_path: str | None, count: int, worker_args: list[str]
) -> None:
    from spg_media.tts.prompts import PromptLibrary
    from spg_media.tts.render import PromptRenderer
    from spg_media.workers import Supervisor

    logger = logging.getLogger("spg.server")
    # Rendered once here, so N workers starting together do not each synthesise every prompt.
    prompts = PromptLibrary(PromptRenderer(Path(config.tts.cache_dir)))
    rendered = await asyncio.to_thread(prompts.prerender, config.ivr.language)
    logger.info("prompts ready: %d clips for %s", rendered, config.ivr.language)
    supervisor = Supervisor(config, config_path, count, worker_args)
    await supervisor.start()
    admin = None
    if config.admin.listen:
        admin = await _start_supervisor_admin(supervisor, config.admin.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(supervisor.failed.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    logger.info("stopping: the workers drain their calls")
    await supervisor.stop()
    if admin is not None:
        await admin.close()
    if supervisor.failure:
        raise UsageError(supervisor.failure)


async def _start_supervisor_admin(supervisor: Any, listen: str) -> Any:
    from spg_media.config import is_loopback_host, parse_host_port
    from spg_media.workers import SupervisorAdmin

    host, port = parse_host_port(listen)
    if not is_loopback_host(host):
        logging.getLogger("spg.server").warning(
            "admin.listen %s is not a loopback address: /metrics, /healthz and /calls "
            "have no authentication; keep that address on a private network",
            listen,
        )
    admin = SupervisorAdmin(supervisor, host, port)
    try:
        await admin.start()
    except (OSError, SystemExit) as exc:
        await supervisor.stop()
        raise UsageError(f"cannot listen on admin.listen {listen}: {exc}") from None
    return admin


def _init(args: argparse.Namespace) -> int:
    from spg_media.shipped import StarterError, write_starter_files

    try:
        written = write_starter_files(args.directory, force=args.force)
    except StarterError as exc:
        raise UsageError(str(exc)) from None
    for path in written:
        print(f"wrote {path}")
    print(f"next: edit {written[0]}, then spg-media check-config -c {written[0]}")
    return 0


def _kamailio_dispatcher(args: argparse.Namespace) -> int:
    from spg_media.workers import dispatcher_lines

    config = _load(args.config)
    count = _worker_count(args.workers, config)
    if not (args.setid.isascii() and args.setid.isdigit()):
        raise UsageError(f"--setid: expected a number, got {args.setid!r}")
    print("\n".join(dispatcher_lines(config, count, int(args.setid))))
    return 0


def _drain_seconds(args: argparse.Namespace) -> float:
    from spg_media.server import DRAIN_S

    if args.drain_s is None:
        if args.drain_exact:
            raise UsageError("--drain-exact: needs --drain-s SECONDS")
        return DRAIN_S
    try:
        seconds = float(args.drain_s)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86400:  # also refuses nan and inf
        raise UsageError(f"--drain-s: must be seconds from 0 to 86400, not {args.drain_s!r}")
    return seconds


def _harden(config: Config) -> None:
    """No core dumps, no reading of this process's memory by others, no swap if asked: before
    the first call, so card data is never where those would find it."""
    from spg_media.hardening import HardeningError, harden_process

    try:
        protections = harden_process(config.security.lock_memory)
    except HardeningError as exc:
        raise UsageError(str(exc)) from None
    logging.getLogger("spg.server").info("process hardening: %s", ", ".join(protections))


async def _serve_async(config: Config, drain_s: float, drain_floor: bool) -> None:
    from spg_media.payment.authorization import authorization_bound_s
    from spg_media.server import Server

    server = Server(config, drain_s=drain_s, drain_floor=drain_floor)
    try:
        await server.start()
    except OSError as exc:  # a port in use or an address not ours: the operator's to fix
        with contextlib.suppress(Exception):
            await server.stop(grace_s=0)
        raise UsageError(f"cannot listen: {exc.strerror or exc}") from None
    if config.process.gc_young_threshold:
        from spg_media import gcpolicy

        gcpolicy.apply(config.process.gc_young_threshold)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    log = logging.getLogger("spg.server")
    log.info("spg-media serving on %s", ", ".join(config.sip.listen))
    log.info("on SIGTERM, calls in progress get up to %g s to finish", server.grace_s)
    if server.grace_s < authorization_bound_s(config):
        log.warning(
            "--drain-exact %g s is shorter than an authorisation with its reconciliation may take "
            "(%g s): a call stopped in one may leave its charge unknown (spg-media reconcile)",
            server.grace_s,
            authorization_bound_s(config),
        )
    await stop.wait()
    await server.stop()


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# ---- demo -------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    if args.srtp:
        from spg_media.tlscert import openssl_binary

        if openssl_binary() is None:
            raise UsageError("--srtp: needs the openssl command to make the demo's certificate")
    if args.card is None:
        # Imported here, not at the top: a node that serves must not load the sandbox's test
        # card numbers into its memory (a scan for card data would find them there).
        from spg_media.payment.sandbox import DEMO_CARD

        args.card = DEMO_CARD
    if not (args.card.isascii() and args.card.isdigit()) or not 12 <= len(args.card) <= 19:
        raise UsageError("--card: expected 12 to 19 digits")
    if not (args.expiry.isascii() and args.expiry.isdigit()) or len(args.expiry) != 4:
        raise UsageError("--expiry: expected MMYY")
    if args.lang is not None and args.lang not in ("en", "es"):
        raise UsageError(f"--lang: unsupported language {args.lang!r} (en, es)")
    from spg_media.observability import setup_logging

    setup_logging("text", "warning")
    if args.assist:
        from spg_media.assist import demo

        return 0 if asyncio.run(demo.run(args)) == "approved" else 1
    result = asyncio.run(_demo_async(args))
    return 0 if result in ("approved", "declined") else 1


def _free_port(kind: socket.SocketKind = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _demo_async(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="spg-demo-") as workdir:
        return await _demo_call(args, Path(workdir))


async def _demo_call(args: argparse.Namespace, workdir: Path) -> str:
    from spg_media.server import Server
    from spg_media.testcaller import TestCaller

    base = load_config(None, env={})
    transport = "tls" if args.srtp else "udp"
    port = _free_port(socket.SOCK_STREAM if args.srtp else socket.SOCK_DGRAM)
    ca_file: str | None = None
    tls_cert, tls_key = base.sip.tls_cert, base.sip.tls_key
    if args.srtp:
        from spg_media.tlscert import make_self_signed

        # A throwaway self-signed certificate: the caller trusts exactly this one.
        pair = make_self_signed(workdir, name="demo", days=1)
        tls_cert, tls_key = str(pair.cert), str(pair.key)
        ca_file = tls_cert
    sip = dataclasses.replace(
        base.sip,
        listen=(f"{transport}:127.0.0.1:{port}",),
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    config = dataclasses.replace(
        base,
        sip=sip,
        rtp=dataclasses.replace(base.rtp, srtp="required" if args.srtp else base.rtp.srtp),
        admin=dataclasses.replace(base.admin, listen=""),
        ivr=dataclasses.replace(base.ivr, language=args.lang or base.ivr.language),
    )
    started = time.monotonic()

    def say(who: str, text: str) -> None:
        print(f"[{time.monotonic() - started:6.2f}s] {who:<8} {text}", flush=True)

    def observe(_call_id: str, kind: str, details: dict[str, Any]) -> None:
        if kind == "prompt":
            say("spg", "says: " + " + ".join(details["parts"]))
        elif kind == "digit":
            say("spg", f"heard key {details['digit']}")
        elif kind == "authorized":
            say("spg", f"platform answered: {details['result']} {details['reference']}".rstrip())
        elif kind == "result":
            say("spg", f"result: {details['result']}")
        elif kind == "refer":
            say("spg", f"REFER caller back to {details['target']}")
        elif kind == "answered":
            say("spg", f"answered the transferred call (language {details['language']})")

    say("demo", f"spg-media node on {transport}:127.0.0.1:{port}, sandbox platform in-process")
    if args.srtp:
        say("demo", "SIP over TLS (self-signed demo certificate), media as SRTP (SDES keys)")
    if args.inband:
        say("demo", "the caller keys DTMF tones in the audio (no telephone-event offered)")
    say("demo", "rendering prompts (cached after the first run)...")
    server = Server(config, observer=observe)
    await server.start()
    token = f"sbx-4990-EUR-demo-{uuid.uuid4().hex[:8]}"
    agent_port = _free_port()
    caller = TestCaller(
        ("127.0.0.1", port),
        token,
        return_to=f"sip:agent@127.0.0.1:{agent_port}",
        on_progress=lambda text: say("caller", text),
        inband=args.inband,
        transport=transport,
        srtp=args.srtp,
        tls_ca_file=ca_file,
    )
    from spg_media.payment.cards import cvc_length, detect_brand

    # The code's length by the card rules (4 digits for American Express); "" for no brand.
    cvc = "1234"[: cvc_length(detect_brand(args.card) or "")]
    try:
        await caller.start()
        if await caller.call() != 200:
            return "refused"
        for field, keys in (
            ("card number", args.card + "#"),
            ("expiry", args.expiry),
            ("code", cvc),
        ):
            await caller.wait_prompt_end()
            say(
                "caller",
                f"keys the {field}: "
                + "*" * len(keys.rstrip("#"))
                + ("#" if keys.endswith("#") else ""),
            )
            await caller.key(keys)
        report = await caller.wait_end(60)
    finally:
        await caller.close()
        await server.stop(grace_s=5)
    result = report.result_headers.get("X-SPG-Result", "none")
    say("demo", f"result handed back to the agent: {result}")
    for name, value in report.result_headers.items():
        say("demo", f"  {name}: {value}")
    cdr = Path(config.log.cdr_path)
    if cdr.exists():
        lines = cdr.read_text().splitlines()
        if lines:
            say("demo", f"CDR ({cdr}): {lines[-1]}")
    return result


# ---- sandbox, prompts, check-config -----------------------------------------------------------


def _sandbox(args: argparse.Namespace) -> int:
    host, port = _host_port(args.listen, "--listen")
    try:
        slow_s = float(args.slow_s)
    except ValueError:
        slow_s = -1.0
    if not 0 < slow_s <= 3600:
        raise UsageError(
            f"--slow-s: must be seconds, above 0 and at most 3600, not {args.slow_s!r}"
        )
    from spg_media.observability import setup_logging
    from spg_media.payment.sandbox import serve_sandbox

    setup_logging("text", "info")
    print(f"spg-media sandbox platform on http://{host}:{port}", flush=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_sandbox(host, port, args.secret, slow_delay_s=slow_s))
    except OSError as exc:
        raise UsageError(
            f"--listen: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from spg_media.call import voice_entry_offered
    from spg_media.tts.phrases import SUPPORTED_LANGUAGES
    from spg_media.tts.prompts import PromptLibrary
    from spg_media.tts.render import PromptRenderer

    config = _load(args.config)
    languages = args.lang or list(SUPPORTED_LANGUAGES)
    for lang in languages:
        if lang not in SUPPORTED_LANGUAGES:
            raise UsageError(
                f"--lang: unsupported language {lang!r} ({', '.join(SUPPORTED_LANGUAGES)})"
            )
    library = PromptLibrary(PromptRenderer(Path(config.tts.cache_dir)))
    for lang in languages:
        started = time.monotonic()
        count = library.prerender(lang)
        print(
            json.dumps(
                {
                    "lang": lang,
                    "clips": count,
                    "seconds": round(time.monotonic() - started, 2),
                    "cache_dir": config.tts.cache_dir,
                    # callers may say their digits in it (ivr.input = "dtmf speech"): a speech
                    # model is installed and the prompts offer it; else keypad only
                    "speech": voice_entry_offered(lang, config.speech.recogniser),
                }
            )
        )
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    """One JSON line per open journal entry; 0 when all are settled, 1 when some stay open."""
    config = _load(args.config)
    if config.gateway.connector != "http":
        raise UsageError(
            'reconcile: gateway.connector is "sandbox": the in-process sandbox kept its payments '
            "in the memory of the node that made them, so there is nothing to ask; set "
            'gateway.connector = "http" (for the sandbox: gateway.url of `spg-media sandbox`)'
        )
    from spg_media.observability import setup_logging
    from spg_media.payment.journal import PaymentJournal

    setup_logging(config.log.format, "warning")
    journal = PaymentJournal(config.log.journal_path)
    try:
        entries = journal.open_entries()
    except OSError as exc:
        raise UsageError(
            f"log.journal_path: cannot read {config.log.journal_path}: {exc.strerror or exc}"
        ) from None
    if not entries:
        return 0
    from spg_media.cdr import mask_card_like

    reports = _run(_settle_entries(config, journal, entries))
    for report in reports:
        # The platform's reference is printed: guarded like the CDR against an echoed card.
        print(json.dumps(mask_card_like(report, "reconcile"), separators=(",", ":")), flush=True)
    return 0 if all(report["settled"] for report in reports) else 1


async def _settle_entries(
    config: Config, journal: PaymentJournal, entries: list[JournalEntry]
) -> list[dict[str, Any]]:
    from spg_media.payment.connectors import ConnectorError, make_connector
    from spg_media.payment.model import ChargeState

    gateway = config.gateway
    connector = make_connector(
        gateway.connector, gateway.url, gateway.secret, gateway.timeout_s, gateway.reconcile_s
    )
    # A pending transaction is only called not charged once the node that sent it would have
    # given up on it: until then the platform may still be working on the request.
    settle_after_s = gateway.timeout_s + gateway.reconcile_s
    reports = []
    try:
        for entry in entries:
            report: dict[str, Any] = {
                **entry.to_json(),
                "charge_state": str(ChargeState.UNKNOWN),
                "reference": "",
                "settled": False,
                "detail": "",
            }
            try:
                check = await connector.check_payment(entry.token, entry.key)
            except ConnectorError as exc:
                report["detail"] = f"cannot tell: {exc}"
                reports.append(report)
                continue
            state: ChargeState | None = None
            if check.state == "charged" and check.result is not None:
                state = ChargeState.CHARGED
                report["reference"] = check.result.reference
                report["detail"] = "paid under this entry's idempotency key"
            elif check.state == "not-charged":
                state = ChargeState.NOT_CHARGED
                report["detail"] = check.reason
            elif check.state == "pending":
                age = entry.age_s()
                if age is not None and age >= settle_after_s:
                    state = ChargeState.NOT_CHARGED
                    report["detail"] = "the transaction is still pending: this one never charged"
                else:
                    report["detail"] = (
                        "the transaction is pending and the authorisation recent: the platform "
                        f"may still be processing it; run again after {settle_after_s:g} s"
                    )
            else:
                report["detail"] = f"cannot tell: {check.reason}"
            if state is not None:
                result = "approved" if state is ChargeState.CHARGED else "error"
                try:
                    await asyncio.to_thread(
                        journal.settle, entry.key, entry.token, result, report["reference"],
                        state, by="reconcile",
                    )  # fmt: skip
                except OSError as exc:  # known now, but the entry stays open
                    report["detail"] += f"; closing line not written: {exc.strerror or exc}"
                else:
                    report["settled"] = True
                report["charge_state"] = str(state)
            reports.append(report)
    finally:
        await connector.aclose()
    return reports


def _check_config(args: argparse.Namespace) -> int:
    from spg_media.speech import speech_languages
    from spg_media.tts.phrases import SUPPORTED_LANGUAGES

    config = _load(args.config)
    listeners = len(config.sip.listen)
    spoken = ", ".join(speech_languages(SUPPORTED_LANGUAGES, config.speech.recogniser)) or "none"
    shared = "; relays' calls on one shared media port" if config.rtp.shared_port != "off" else ""
    print(
        f"{args.config}: ok ({listeners} SIP listeners, connector {config.gateway.connector}; "
        f"speech model for: {spoken}{shared})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
