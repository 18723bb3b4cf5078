"""Real SIP peers on loopback for the integration tests: Kamailio, SIPp and an spg-media node.

- `free_port()` finds a port free for both UDP and TCP on 127.0.0.1.
- `KamailioProxy` runs kamailio/kamailio.cfg in the foreground (`-DD -E`) with its ports and a
  dispatcher list chosen by the test, waits until it answers OPTIONS, stops it at the end.
- `run_sipp()` runs one SIPp call (`-m 1`) and returns its exit code, output and message trace.
- `make_pay_scenario()` writes the caller's scenario: SIPp cannot loop over a string, so the keys
  to press become one `play_pcap_audio` action (RFC 4733 pcap) per key, at fixed gaps or at
  given times, optionally over audio streamed for the whole call (or the keys as in-band tones
  in a streamed recording).
- `SpgNode` runs `spg-media serve` as a subprocess with env-var config (`SPG_SECTION__KEY`).

Only 127.0.0.0/8 addresses are used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from xml.sax.saxutils import escape

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
SIPP_DIR = Path(__file__).resolve().parent / "sipp"
KAMAILIO_CFG = REPO / "kamailio" / "kamailio.cfg"
PCAP_DIR = Path("/usr/share/sip-tester")
SIPP = shutil.which("sipp") or ("/usr/bin/sipp" if Path("/usr/bin/sipp").exists() else None)
KAMAILIO = shutil.which("kamailio") or (
    "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None
)
# the command that runs spg-media (override with SPG_MEDIA_BIN, e.g. to a wrapper)
SPG_MEDIA = Path(os.environ.get("SPG_MEDIA_BIN") or REPO / ".venv" / "bin" / "spg-media")

PCAP_NAMES = {**{d: d for d in "0123456789"}, "#": "pound", "*": "star"}


# Ports the harness hands out: below the kernel's ephemeral range (32768-60999 on Debian), where
# every outgoing connection of every test takes its port and can take one we chose before its
# process binds it, and below spg-media's RTP range (20000-29999).
HARNESS_PORTS = range(10000, 20000)
_port_choice = random.SystemRandom().choice  # not the `random` a test may seed


def free_port(host: str = HOST) -> int:
    """A port that is free for both UDP and TCP on `host` right now."""
    for attempt in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:  # the kernel's own choice only when our range seems full
                udp.bind((host, _port_choice(HARNESS_PORTS) if attempt < 80 else 0))
            except OSError:
                continue
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free UDP+TCP port")


def free_port_run(count: int, host: str = HOST) -> int:
    """The first of `count` consecutive ports free for UDP and TCP (a node's workers)."""
    for _ in range(200):
        first = free_port(host)
        if first + count - 1 > 65535:
            continue
        if all(_port_free(first + i, host) for i in range(1, count)):
            return first
    raise RuntimeError(f"no {count} consecutive free UDP+TCP ports")


def _port_free(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.bind((host, port))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, port))
        except OSError:
            return False
    return True


def free_media_port(host: str = HOST, count: int = 4) -> int:
    """An even port P with P to P+count-1 free for UDP right now. The default fits SIPp's `-mp`,
    which takes P for audio, P+2 for video and the odd ones above them for RTCP."""
    for _ in range(100):
        base = free_port(host) & ~1
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} free UDP ports in a row")


def free_ports(count: int, host: str = HOST) -> list[int]:
    """`count` distinct ports free for UDP and TCP."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


# ---- SIP OPTIONS probe ----------------------------------------------------------------------


def sip_options(host: str, port: int, timeout_s: float = 0.5, source: str = HOST) -> str | None:
    """Send one OPTIONS over UDP from `source`; the status line of the answer, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout_s)
        lport = sock.getsockname()[1]
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        msg = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {source}:{lport};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{HOST}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}@{HOST}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(msg.encode(), (host, port))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data, _ = sock.recvfrom(65535)
            except OSError:
                return None
            line = data.split(b"\r\n", 1)[0].decode("latin-1")
            if not line.startswith("SIP/2.0 1"):
                return line
    return None


def wait_options_200(
    host: str,
    port: int,
    timeout_s: float,
    proc: subprocess.Popen[bytes],
    source: str = HOST,
) -> None:
    """Probe with OPTIONS until a 200 (or the process dies, or `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before answering OPTIONS")
        line = sip_options(host, port, source=source)
        if line and line.startswith("SIP/2.0 200"):
            return
        time.sleep(0.1)
    raise TimeoutError(f"no 200 to OPTIONS from {host}:{port} within {timeout_s} s")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time (the whole process group)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


# ---- Kamailio -------------------------------------------------------------------------------


class Daemon:
    """A test peer run in the foreground in its own session, its output in `log_path`:
    `_spawn` starts it, `stop` ends it (the process group), `log` reads what it wrote; a
    context manager around `start`, which each subclass defines (Kamailio, rtpengine, the
    sandbox platform, baresip, whose `stop` also closes its control connection)."""

    def __init__(self, workdir: Path, log_name: str) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / log_name
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def _spawn(self, args: Sequence[str]) -> subprocess.Popen[bytes]:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        return self.proc

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class KamailioProxy(Daemon):
    """kamailio/kamailio.cfg in the foreground on 127.0.0.1:`port` (UDP and TCP).

    `nodes` are dispatcher destinations (e.g. "sip:127.0.0.1:5080"), all in set 1, or
    (destination, priority) pairs (DS_ALG 8 tries the highest priority first).
    `defines` are extra `-A` defines (e.g. {"DS_PROBING_MODE": "0"}); `probe_source` is the
    address the readiness OPTIONS comes from.
    """

    def __init__(
        self,
        workdir: Path,
        nodes: Sequence[str | tuple[str, int]],
        port: int | None = None,
        defines: Mapping[str, str] | None = None,
        cfg: Path = KAMAILIO_CFG,
        probe_source: str = HOST,
    ) -> None:
        if KAMAILIO is None:
            raise RuntimeError("kamailio not installed")
        super().__init__(workdir, "kamailio.log")
        self.port = port or free_port()
        self.nodes = [(n, 0) if isinstance(n, str) else n for n in nodes]
        self.probe_source = probe_source
        self.defines = dict(defines or {})
        self.cfg = cfg

    @property
    def uri(self) -> str:
        return f"sip:{HOST}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ds_list = self.workdir / "dispatcher.list"
        ds_list.write_text(
            "".join(f"1 {node} 0 {prio} node={i}\n" for i, (node, prio) in enumerate(self.nodes))
        )
        rundir = self.workdir / "run"
        rundir.mkdir(exist_ok=True)
        defines = {"LISTEN_PORT": str(self.port), "DS_LIST": f'"{ds_list}"', **self.defines}
        args = [str(KAMAILIO), "-f", str(self.cfg), "-DD", "-E", "-m", "64", "-M", "8"]
        args += ["-Y", str(rundir), "-w", str(self.workdir)]
        for key, value in defines.items():
            args += ["-A", f"{key}={value}"]
        proc = self._spawn(args)
        try:
            wait_options_200(HOST, self.port, timeout_s, proc, self.probe_source)
        except BaseException:
            self.stop()
            raise


# ---- rtpengine --------------------------------------------------------------------------------

RTPENGINE = shutil.which("rtpengine")
RELAY_HOST = "127.0.0.3"  # rtpengine's media address: apart from the callers' (HOST)


class RtpEngine(Daemon):
    """rtpengine (Debian rtpengine-daemon) in the foreground, forwarding in userspace, its media
    on `address` (ports from a free range of `ports`), its ng control socket on
    127.0.0.1:`control_port`: the media relay Kamailio's `-A WITH_RTPENGINE` drives."""

    def __init__(self, workdir: Path, address: str = RELAY_HOST, ports: int = 400) -> None:
        if RTPENGINE is None:
            raise RuntimeError("rtpengine not installed")
        super().__init__(workdir, "rtpengine.log")
        self.address = address
        self.control_port = free_port()
        # (a range for a load test is too wide to check port by port: a fixed one on this
        # address, which nothing else binds)
        self.port_min = free_media_port(address, count=ports) if ports <= 1000 else 30000
        self.port_max = self.port_min + ports - 1

    @property
    def sock(self) -> str:
        """Kamailio's RTPENGINE_SOCK for it."""
        return f'"udp:{HOST}:{self.control_port}"'

    def start(self, timeout_s: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            # (not the system's /etc/rtpengine/rtpengine.conf; INFO: its "Startup complete")
            str(RTPENGINE), "--config-file=none", "--foreground", "--log-stderr",
            "--log-level=6", "--table=-1",
            f"--interface={self.address}", f"--listen-ng={HOST}:{self.control_port}",
            f"--port-min={self.port_min}", f"--port-max={self.port_max}",
            f"--pidfile={self.workdir / 'rtpengine.pid'}", "--num-threads=2",
        ]  # fmt: skip
        proc = self._spawn(args)
        deadline = time.monotonic() + timeout_s
        while "Startup complete" not in self.log():
            if proc.poll() is not None or time.monotonic() > deadline:
                log = self.log()
                self.stop()
                raise RuntimeError(f"rtpengine did not start: {log[-2000:]}")
            time.sleep(0.05)


# ---- SIPp -----------------------------------------------------------------------------------


class SipText:
    """Reading one SIP message's `text` (LF line ends): first line, method or status, headers.
    Mixed into the message records of each trace format (SIPp's here, baresip's in baresip.py)."""

    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def method(self) -> str | None:
        """The request method, or None for a response."""
        line = self.first_line
        return None if line.startswith("SIP/2.0") else line.split(" ", 1)[0]

    @property
    def status(self) -> int | None:
        parts = self.first_line.split()
        if self.first_line.startswith("SIP/2.0") and len(parts) > 1 and parts[1].isdigit():
            return int(parts[1])
        return None

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), looked for in the head only."""
        head = self.text.split("\n\n", 1)[0]
        for line in head.split("\n")[1:]:
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == name.lower():
                return value.strip()
        return None

    @property
    def cseq_method(self) -> str | None:
        cseq = self.header("CSeq")
        return cseq.split()[-1] if cseq else None


@dataclasses.dataclass
class SipMessage(SipText):
    direction: str  # "sent" or "received" (from SIPp's point of view)
    text: str

    def is_(self, what: str | int) -> bool:
        return self.method == what if isinstance(what, str) else self.status == what


_MSG_RE = re.compile(
    r"^-+ [^\n]*\n(?P<dir>UDP|TCP) message (?P<how>sent|received)[^\n]*:\n\n"
    r"(?P<body>.*?)(?=^-{20,}|\Z)",
    re.S | re.M,
)


def parse_sipp_messages(log: str) -> list[SipMessage]:
    """The messages of a `-trace_msg` log, in order."""
    out = []
    for m in _MSG_RE.finditer(log):
        body = m.group("body").strip("\n")
        out.append(SipMessage("sent" if m.group("how") == "sent" else "received", body))
    return out


@dataclasses.dataclass
class SippResult:
    returncode: int
    stdout: str
    stderr: str
    messages_log: str
    errors_log: str
    logs: str

    @property
    def messages(self) -> list[SipMessage]:
        return parse_sipp_messages(self.messages_log)

    def received(self, what: str | int) -> list[SipMessage]:
        """Messages SIPp received: requests of method `what`, or responses with status `what`."""
        return [m for m in self.messages if m.direction == "received" and m.is_(what)]

    def sent(self, what: str | int) -> list[SipMessage]:
        """Messages SIPp sent: requests of method `what`, or responses with status `what`."""
        return [m for m in self.messages if m.direction == "sent" and m.is_(what)]

    def explain(self) -> str:
        return (
            f"sipp exit {self.returncode}\n--- stderr\n{self.stderr[-3000:]}\n"
            f"--- errors\n{self.errors_log[-3000:]}\n--- logs\n{self.logs[-2000:]}\n"
            f"--- messages\n{self.messages_log[-8000:]}"
        )


def run_sipp(
    scenario_xml: Path,
    target: str,
    extra_args: Sequence[str] = (),
    timeout_s: float = 30.0,
    *,
    workdir: Path,
    local_port: int | None = None,
    media_port: int | None = None,
    keys: Mapping[str, str] | None = None,
    transport: str = "u1",
    name: str | None = None,
) -> SippResult:
    """One SIPp call (`-m 1`) with `scenario_xml` towards `target` ("host:port"; "" for a UAS).

    `keys` become `-key name value` ([name] in the scenario). Returns when SIPp exits;
    SIPp's own `-timeout` ends it after `timeout_s`, and the process is killed 5 s later.
    A SIPp that could not bind its ports at start (another process on this shared machine
    took one between our check and its bind; nothing was sent) is run again on new ports.
    """
    if SIPP is None:
        raise RuntimeError("sipp not installed")
    for attempt in range(3):
        result = _run_sipp_once(
            scenario_xml, target, extra_args, timeout_s, workdir=workdir,
            local_port=local_port, media_port=media_port, keys=keys, transport=transport,
            name=name if attempt == 0 or name is None else f"{name}-{attempt}",
        )  # fmt: skip
        if result.returncode == 0 or "Unable to bind" not in result.stderr or result.messages:
            return result
        if local_port is not None and media_port is not None:
            return result  # fixed ports: nothing to choose again
    return result


def _run_sipp_once(
    scenario_xml: Path,
    target: str,
    extra_args: Sequence[str],
    timeout_s: float,
    *,
    workdir: Path,
    local_port: int | None,
    media_port: int | None,
    keys: Mapping[str, str] | None,
    transport: str,
    name: str | None,
) -> SippResult:
    workdir.mkdir(parents=True, exist_ok=True)
    name = name or f"{scenario_xml.stem}-{uuid.uuid4().hex[:6]}"
    message_file = workdir / f"{name}.messages.log"
    error_file = workdir / f"{name}.errors.log"
    log_file = workdir / f"{name}.logs.log"
    args = [
        str(SIPP),
        *([target] if target else []),
        "-sf", str(scenario_xml),
        "-m", "1",
        "-t", transport,
        "-i", HOST,
        "-mi", HOST,
        "-p", str(local_port or free_port()),
        "-mp", str(media_port or free_media_port()),
        "-nostdin",
        "-timeout", f"{int(timeout_s)}s",
        "-timeout_error",
        "-max_recv_loops", "1000",
        "-trace_msg", "-message_file", str(message_file),
        "-trace_err", "-error_file", str(error_file),
        "-trace_logs", "-log_file", str(log_file),
    ]  # fmt: skip
    for key, value in (keys or {}).items():
        args += ["-key", key, value]
    args += list(extra_args)
    returncode, stdout, stderr = _run_sipp_process(args, workdir, timeout_s + 5)

    def read(path: Path) -> str:
        return path.read_text(errors="replace") if path.exists() else ""

    return SippResult(
        returncode=returncode,
        stdout=stdout.decode(errors="replace"),
        stderr=stderr.decode(errors="replace"),
        messages_log=read(message_file),
        errors_log=read(error_file),
        logs=read(log_file),
    )


class SippProcess:
    """A SIPp started in the background (e.g. the stand-in UAS); `wait()` gives its result."""

    def __init__(
        self,
        scenario_xml: Path,
        workdir: Path,
        port: int | None = None,
        keys: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        timeout_s: float = 30.0,
        transport: str = "u1",
    ) -> None:
        import threading

        self.port = port or free_port()
        self.result: SippResult | None = None

        def run() -> None:
            self.result = run_sipp(
                scenario_xml,
                "",
                extra_args,
                timeout_s,
                workdir=workdir,
                local_port=self.port,
                keys=keys,
                transport=transport,
            )

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        # give SIPp a moment to bind its port
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _udp_port_in_use(self.port):
            time.sleep(0.05)

    def wait(self, timeout_s: float = 40.0) -> SippResult:
        self._thread.join(timeout_s)
        if self.result is None:
            raise TimeoutError("SIPp did not finish")
        return self.result


def _run_sipp_process(
    args: Sequence[str], workdir: Path, timeout_s: float
) -> tuple[int, bytes, bytes]:
    """Run SIPp in its own session; (exit status, stdout, stderr), stopped after `timeout_s`."""
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workdir,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_process(proc, 2)
        stdout, stderr = proc.communicate()
    return proc.wait(), stdout, stderr  # reaped by communicate: its status at once


@dataclasses.dataclass
class SippLoadResult:
    """What a SIPp load run (`run_sipp_load`) ended with, from its statistics file."""

    returncode: int | None
    succeeded: int
    failed: int
    peak_concurrent: int
    stderr: str


def run_sipp_load(
    scenario_xml: Path,
    target: str,
    calls: int,
    rate: float,
    *,
    workdir: Path,
    limit: int = 0,
    timeout_s: float = 300.0,
    keys: Mapping[str, str] | None = None,
) -> SippLoadResult:
    """`calls` calls of `scenario_xml` at `rate` calls/s (at most `limit` at once when set)
    towards `target`; returns when SIPp is done (or after `timeout_s`, killed)."""
    if SIPP is None:
        raise RuntimeError("sipp not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    name = f"{scenario_xml.stem}-{uuid.uuid4().hex[:6]}"
    stats_file = workdir / f"{name}.stats.csv"
    args = [
        str(SIPP), target,
        "-sf", str(scenario_xml),
        "-m", str(calls), "-r", str(rate),
        "-t", "u1", "-i", HOST, "-mi", HOST,
        "-p", str(free_port()), "-mp", str(free_media_port()),
        "-nostdin",
        "-timeout", f"{int(timeout_s)}s",
        "-max_recv_loops", "10000",
        # the node's BYE may pass the 200 of SIPp's NOTIFY: logged, not a failed call
        "-default_behaviors", "all,-abortunexp",
        "-trace_stat", "-stf", str(stats_file), "-fd", "1",
        "-trace_err", "-error_file", str(workdir / f"{name}.errors.log"),
    ]  # fmt: skip
    if limit:
        args += ["-l", str(limit)]
    for key, value in (keys or {}).items():
        args += ["-key", key, value]
    returncode, _, stderr = _run_sipp_process(args, workdir, timeout_s + 10)
    import csv

    rows = list(csv.DictReader(stats_file.open(), delimiter=";")) if stats_file.exists() else []
    last = rows[-1] if rows else {}
    return SippLoadResult(
        returncode=returncode,
        succeeded=int(last.get("SuccessfulCall(C)", 0) or 0),
        failed=int(last.get("FailedCall(C)", 0) or 0),
        peak_concurrent=max((int(r.get("CurrentCall", 0) or 0) for r in rows), default=0),
        stderr=stderr.decode(errors="replace"),
    )


def _udp_port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


# ---- the caller's scenario ------------------------------------------------------------------

_INVITE = """\
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Caller" <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
User-Agent: SIPp pay_uac
{headers}Content-Type: application/sdp
Content-Length: [len]

v=0
o=caller 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=sendrecv
"""

_ACK = """\
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Caller" <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
[routes]
Call-ID: [call_id]
CSeq: 1 ACK
Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Length: 0
"""

_BYE = """\
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Caller" <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
[routes]
Call-ID: [call_id]
CSeq: 2 BYE
Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Length: 0
"""

_REPLY = """\
SIP/2.0 {status}
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
Content-Length: 0
"""

_NOTIFY = """\
NOTIFY [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Caller" <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
[routes]
Call-ID: [call_id]
CSeq: 2 NOTIFY
Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Event: refer
Subscription-State: terminated;reason=noresource
Content-Type: message/sipfrag;version=2.0
Content-Length: [len]

SIP/2.0 200 OK
"""


def _send(text: str, retrans_ms: int | None = None) -> str:
    attr = f' retrans="{retrans_ms}"' if retrans_ms else ""
    return f"  <send{attr}>\n    <![CDATA[\n\n{text}\n    ]]>\n  </send>\n"


def _ere_escape(text: str) -> str:
    """`text` as a literal in a POSIX extended regexp (SIPp's ereg), XML-escaped."""
    return escape("".join("\\" + c if c in ".[]()*+?{}|^$\\" else c for c in text), {'"': "&quot;"})


def _result_check(expect_result: str | None) -> str:
    """Actions on the message that carries the result: record it, check it when expected."""
    parts = [
        '      <ereg regexp="[^\\r\\n]*" search_in="hdr" header="X-SPG-Result:" '
        'assign_to="spg_result"/>\n',
        '      <log message="X-SPG-Result=[$spg_result]"/>\n',
    ]
    if expect_result is not None:
        parts.append(
            f'      <ereg regexp="X-SPG-Result: *{_ere_escape(expect_result)}" search_in="msg" '
            'check_it="true" assign_to="result_ok"/>\n'
        )
    return "    <action>\n" + "".join(parts) + "    </action>\n"


def make_pay_scenario(
    keys: str | Sequence[str],
    path: Path,
    *,
    key_gap_ms: int = 300,
    field_gap_ms: int = 800,
    initial_pause_ms: int = 1000,
    expect_result: str | None = "approved",
    hangup_after_keys: bool = False,
    expect_bye: bool = False,
    headers: Mapping[str, str] | None = None,
    result_timeout_ms: int = 30000,
    hangup_pause_ms: int = 300,
    inband_wav: Path | None = None,
    caller_audio: Path | None = None,
    key_times_ms: Sequence[int] | None = None,
    audio_loops: int = -1,
) -> Path:
    """Write the caller's scenario to `path` and return it.

    INVITE (with `headers`, default `X-SPG-Transaction: [spg_transaction]`, so pass
    `keys={"spg_transaction": ...}` to run_sipp) → optional 100/180/183 → 200 → ACK; then one
    RFC 4733 pcap per key of `keys` (a string, or fields: a sequence of strings with
    `field_gap_ms` between them). Then one of:
      - default: wait for REFER, check `X-SPG-Result: <expect_result>`, 202, NOTIFY (sipfrag
        `SIP/2.0 200 OK`), its 200, then the UA's BYE → 200;
      - `expect_bye`: wait for the UA's BYE, check its `X-SPG-Result`, 200;
      - `hangup_after_keys`: send BYE, expect 200.
    `expect_result=None` records the result without checking it. SIPp exits 0 only when
    every step (and the check) succeeded.

    With `inband_wav` (an 8 kHz A-law WAV, see `write_dtmf_wav`) the INVITE offers PCMA only, no
    telephone-event, and instead of pcaps SIPp streams that file (`rtp_stream`) once: the keys
    are in-band tones in the audio and `keys` only names what the file holds.

    With `caller_audio` (8 kHz A-law) the INVITE offers PCMA and telephone-event, and SIPp
    streams that file in a loop from the ACK to the end of the call while the keys go as RFC
    4733 pcaps: a caller who talks (or hisses) the whole call, as real phones do
    (`audio_loops`: how many times, -1 for ever).
    `key_times_ms` (one per key, in order, counted from the ACK) replaces the fixed gaps: each
    key's pcap starts at its time. SIPp 3.6.1 streams a file's bytes as they are (a WAV
    header is played as a few samples of audio).
    """
    fields = [keys] if isinstance(keys, str) else list(keys)
    for field in fields:
        bad = [k for k in field if k not in PCAP_NAMES]
        if bad:
            raise ValueError(f"no DTMF pcap for keys {bad!r}")
    hdrs = dict(headers) if headers is not None else {"X-SPG-Transaction": "[spg_transaction]"}
    header_text = "".join(f"{name}: {value}\n" for name, value in hdrs.items())

    out = ['<?xml version="1.0" encoding="ISO-8859-1" ?>\n', '<scenario name="spg pay_uac">\n']
    invite = _INVITE.replace("{headers}", header_text)
    if inband_wav is not None:
        invite = invite.replace(
            "m=audio [media_port] RTP/AVP 0 101\n"
            "a=rtpmap:0 PCMU/8000\n"
            "a=rtpmap:101 telephone-event/8000\n"
            "a=fmtp:101 0-15\n",
            "m=audio [media_port] RTP/AVP 8\na=rtpmap:8 PCMA/8000\n",
        )
        assert "PCMA" in invite
    elif caller_audio is not None:
        invite = invite.replace(
            "m=audio [media_port] RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\n",
            "m=audio [media_port] RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\n",
        )
        assert "PCMA" in invite
    all_keys = [key for field in fields for key in field]
    if key_times_ms is not None and len(key_times_ms) != len(all_keys):
        raise ValueError(f"{len(key_times_ms)} key times for {len(all_keys)} keys")
    out.append(_send(invite, retrans_ms=500))
    out.append('  <recv response="100" optional="true"/>\n')
    out.append('  <recv response="180" optional="true"/>\n')
    out.append('  <recv response="183" optional="true"/>\n')
    out.append('  <recv response="200" rtd="true" rrs="true"/>\n')
    out.append(_send(_ACK))
    if initial_pause_ms:
        out.append(f'  <pause milliseconds="{initial_pause_ms}"/>\n')
    if inband_wav is not None:
        wav = escape(str(inband_wav))
        out.append(f'  <nop><action><exec rtp_stream="{wav},1,8"/></action></nop>\n')
        fields = []
    elif caller_audio is not None:
        audio = escape(str(caller_audio))
        out.append(f'  <nop><action><exec rtp_stream="{audio},{audio_loops},8"/></action></nop>\n')
    if key_times_ms is not None and fields:
        at_ms = initial_pause_ms
        for key, key_ms in zip(all_keys, key_times_ms, strict=True):
            if key_ms > at_ms:
                out.append(f'  <pause milliseconds="{key_ms - at_ms}"/>\n')
                at_ms = key_ms
            pcap = escape(str(PCAP_DIR / f"dtmf_2833_{PCAP_NAMES[key]}.pcap"))
            out.append(f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n')
        # the last key's pcap plays out before anything else happens
        out.append(f'  <pause milliseconds="{key_gap_ms}"/>\n')
        fields = []
    for n, field in enumerate(fields):
        if n and field_gap_ms:
            out.append(f'  <pause milliseconds="{field_gap_ms}"/>\n')
        for key in field:
            pcap = escape(str(PCAP_DIR / f"dtmf_2833_{PCAP_NAMES[key]}.pcap"))
            out.append(
                f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n'
                f'  <pause milliseconds="{key_gap_ms}"/>\n'
            )
    if hangup_after_keys:
        if hangup_pause_ms:
            out.append(f'  <pause milliseconds="{hangup_pause_ms}"/>\n')
        out.append(_send(_BYE, retrans_ms=500))
        out.append('  <recv response="200" crlf="true"/>\n')
    elif expect_bye:
        out.append(f'  <recv request="BYE" timeout="{result_timeout_ms}">\n')
        out.append(_result_check(expect_result))
        out.append("  </recv>\n")
        out.append(_send(_REPLY.format(status="200 OK")))
    else:
        out.append(f'  <recv request="REFER" timeout="{result_timeout_ms}" rrs="true">\n')
        out.append(_result_check(expect_result))
        out.append("  </recv>\n")
        out.append(_send(_REPLY.format(status="202 Accepted")))
        out.append(_send(_NOTIFY, retrans_ms=500))
        # the UA may send its BYE before SIPp sees the NOTIFY's 200: the 200 is checked by the
        # test in the message trace, the BYE here
        out.append('  <recv response="200" optional="true"/>\n')
        out.append('  <recv request="BYE" timeout="10000"/>\n')
        out.append(_send(_REPLY.format(status="200 OK")))
    # linger so retransmitted BYEs/200s get answered
    out.append('  <timewait milliseconds="500"/>\n')
    # SIPp refuses variables that are assigned but never read
    if expect_result is not None and not hangup_after_keys:
        out.append('  <Reference variables="result_ok"/>\n')
    out.append('  <ResponseTimeRepartition value="100, 500, 1000"/>\n')
    out.append("</scenario>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(out), encoding="latin-1")
    return path


def write_dtmf_wav(
    path: Path,
    fields: Sequence[str],
    *,
    lead_s: float = 1.0,
    tone_s: float = 0.08,
    gap_s: float = 0.08,
    field_gap_s: float = 1.0,
    tail_s: float = 2.0,
) -> Path:
    """An 8 kHz mono A-law WAV keying `fields` as DTMF tones (what SIPp's rtp_stream plays)."""
    import numpy as np

    from spg_media.rtp.g711 import encode
    from spg_media.testcaller import dtmf_tone

    def silence(seconds: float) -> Any:
        return np.zeros(int(seconds * 8000), dtype=np.int16)

    parts = [silence(lead_s)]
    for n, field in enumerate(fields):
        if n:
            parts.append(silence(field_gap_s))
        for key in field:
            parts += [dtmf_tone(key, tone_s), silence(gap_s)]
    parts.append(silence(tail_s))
    audio = encode(np.concatenate(parts), "PCMA")
    fmt = struct.pack("<HHIIHHH", 6, 1, 8000, 8000, 1, 8, 0)  # WAVE_FORMAT_ALAW, with cbSize
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(audio)) + audio + (b"\0" if len(audio) % 2 else b"")
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


# ---- spg-media ------------------------------------------------------------------------------


def spg_media_available() -> bool:
    try:
        import spg_media.server  # noqa: F401
    except Exception:
        return False
    return SPG_MEDIA.exists()


class SpgNode:
    """`spg-media serve` as a subprocess on 127.0.0.1 (UDP+TCP `sip_port`, admin `admin_port`).

    `env` adds/overrides `SPG_SECTION__KEY` variables; the CDR goes to `workdir/cdr.jsonl`.
    """

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        sip_port: int | None = None,
        admin_port: int | None = None,
        workers: int = 1,
    ) -> None:
        self.workdir = workdir
        self.workers = workers  # > 1: a supervisor, worker i on sip_port + i
        # Ports we chose may be taken by another process before the node binds them (other
        # test runs share the machine): those are chosen again, given ones are not.
        self._choose_ports = sip_port is None and admin_port is None
        self.sip_port = sip_port or (free_port_run(workers) if workers > 1 else free_port())
        self.admin_port = admin_port or free_port()
        self.cdr_path = workdir / "cdr.jsonl"
        self.stdout_path = workdir / "spg-media.stdout.log"
        self.stderr_path = workdir / "spg-media.stderr.log"
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []

    @property
    def uri(self) -> str:
        return f"sip:{HOST}:{self.sip_port}"

    def start(self, timeout_s: float = 30.0) -> None:
        for attempt in range(3):
            try:
                self._start_once(timeout_s)
                return
            except RuntimeError:
                lost_race = "cannot listen" in self.logs() and self._choose_ports
                if not lost_race or attempt == 2:
                    raise RuntimeError(f"spg-media did not start:\n{self.logs()[-2000:]}") from None
                self.sip_port = free_port_run(self.workers) if self.workers > 1 else free_port()
                self.admin_port = free_port()

    def _start_once(self, timeout_s: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "SPG_LOG__CDR_PATH": str(self.cdr_path),
            "SPG_LOG__LEVEL": "debug",
            "SPG_TTS__CACHE_DIR": str(REPO / ".spg-cache" / "prompts"),
            "SPG_RTP__ADDRESS": HOST,
            "SPG_SIP__PUBLIC_HOST": HOST,
            # the suite runs tests in parallel on a small machine: a node must not refuse a
            # test's calls because its neighbours are busy (admission by lag has its own tests)
            "SPG_ADMISSION__MAX_TICK_LAG_MS": "0",
            "SPG_ADMISSION__MAX_LOOP_LAG_MS": "0",
            "SPG_ADMISSION__MAX_TICK_BUSY": "0",
            **self.extra_env(),
            **self.env,
        }
        args = [
            str(SPG_MEDIA),
            "serve",
            "--sip", f"udp:{HOST}:{self.sip_port}",
            "--sip", f"tcp:{HOST}:{self.sip_port}",
            *[arg for spec in self.extra_listeners() for arg in ("--sip", spec)],
            "--admin", f"{HOST}:{self.admin_port}",
            "--workers", str(self.workers),
        ]  # fmt: skip
        out = self.stdout_path.open("wb")
        err = self.stderr_path.open("wb")
        self._files = [out, err]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=self.workdir,
            env=env,
            start_new_session=True,
        )
        try:
            wait_options_200(HOST, self.sip_port, timeout_s, self.proc)
        except BaseException:
            self.stop()
            raise

    def extra_env(self) -> dict[str, str]:
        """Settings a kind of node adds (before `env`, which overrides them)."""
        return {}

    def extra_listeners(self) -> list[str]:
        """`--sip` listeners beyond UDP and TCP on `sip_port`."""
        return []

    def healthz(self) -> int | None:
        import urllib.request

        try:
            url = f"http://{HOST}:{self.admin_port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return int(resp.status)
        except Exception:
            return None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout_s)
        for f in self._files:
            f.close()
        self._files = []

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace")
            for p in (self.stdout_path, self.stderr_path)
            if p.exists()
        )

    def cdr_lines(self) -> list[str]:
        if not self.cdr_path.exists():
            return []
        return [line for line in self.cdr_path.read_text().splitlines() if line.strip()]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SandboxProcess(Daemon):
    """`spg-media sandbox` as a subprocess on 127.0.0.1: the payment platform of a node whose
    connector is `http` (`node_env()` gives the node's settings for it)."""

    def __init__(self, workdir: Path, secret: str = "sandbox-secret", slow_s: float = 12.0):
        super().__init__(workdir, "sandbox.log")
        self.secret = secret
        self.slow_s = slow_s
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def node_env(self) -> dict[str, str]:
        return {
            "SPG_GATEWAY__CONNECTOR": "http",
            "SPG_GATEWAY__URL": self.url,
            "SPG_GATEWAY__SECRET": self.secret,
        }

    def start(self, timeout_s: float = 20.0) -> None:
        import urllib.request

        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            str(SPG_MEDIA), "sandbox",
            "--listen", f"{HOST}:{self.port}",
            "--secret", self.secret,
            "--slow-s", str(self.slow_s),
        ]  # fmt: skip
        self._spawn(command)

        def up() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as resp:
                    return int(resp.status) == 200
            except OSError:
                return False

        if not wait_for(up, timeout_s):
            self.stop()
            raise RuntimeError(f"the sandbox did not come up on {self.url}")

    def transaction(self, token: str) -> dict[str, Any]:
        """The platform's answer to a (signed) lookup of `token`."""
        import json
        import urllib.request

        from spg_media.payment.signing import sign

        request = urllib.request.Request(
            f"{self.url}/v1/transactions/{token}",
            headers={"X-SPG-Signature": sign(self.secret, b"", int(time.time()))},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            data: dict[str, Any] = json.loads(answer.read())
        return data


def wait_for(predicate: Callable[[], object], timeout_s: float = 5.0) -> bool:
    """Poll `predicate` until it returns something truthy, or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())
