"""baresip 1.0 as a real phone on loopback, driven through its `ctrl_tcp` module.

This module owns everything the baresip interop tests need besides the test logic itself:

- `Baresip`: one headless baresip (Debian `baresip`, 1.0.0) with a generated config dir
  (`baresip -f DIR`), one account, SIP on 127.0.0.1 only; `dial`, `sndcode`, `hangup` and any
  other long command over ctrl_tcp (netstring-framed JSON), and the events it reports
  (`CALL_ESTABLISHED`, `CALL_CLOSED`, `TRANSFER`, ...), awaited with `wait_event`.
- `SpgTlsNode`: `spg-media serve` (as `harness.SpgNode`) with a `tls:` listener too, on the
  certificate `spg_media.tlscert` makes.
- `Capture`: tshark on `lo` with a capture filter (root only), and `rtp_event_digits` /
  `pcap_contains` to look at what went over the wire in clear.
- `AGENT_SCENARIO`: the SIPp UAS that stands for the agent baresip is transferred back to.

Only 127.0.0.0/8 is used: baresip binds SIP, RTP and ctrl_tcp to 127.0.0.1 and is told to use
127.0.0.1 as its only network address.

Facts and pitfalls of baresip 1.0.0 (Debian 12, libre 1.1.0), found by running it:

1. There is no null audio driver. `aufile` is a *source* only (S16LE WAV whose rate and channels
   must equal the codec's: 8000 Hz mono for G.711, else the call's audio fails to start), and
   at the end of the file it raises `AUDIO_ERROR` ("end of file") and baresip hangs the call
   up: the file must outlast the call (we write 180 s of silence). `aubridge` gives a player:
   with a device name no source uses (`aubridge,nil`) it just swallows what it is given.
   `audio_alert` must be set too (ring tones go there).
2. `net_interface` takes an address, not an interface name: `net_interface lo` fails with
   "could not get network address" and baresip exits; `net_interface 127.0.0.1` works.
   Without it baresip puts the default interface's address (e.g. eth0's) in its SDP `c=`
   line even when `sip_listen` is 127.0.0.1, so RTP would leave loopback.
3. `sip_listen 127.0.0.1:P` opens UDP and TCP on P and TLS on P+1 (both must be free).
4. `ctrl_tcp_listen` defaults to 0.0.0.0:4444: always set it. ctrl_tcp serves one client at
   a time (a new connection replaces the old) and sends events only while a client is
   connected: connect before dialing. The command and its params are printed into a 256-byte
   buffer: a longer `dial` URI is cut silently. Unknown commands answer
   `{"ok": false, "data": "command not found (x)"}`. The commands (`dial`, `sndcode`,
   `hangup`, ...) belong to the `menu` module, which must be loaded (`module_app menu.so`);
   menu is also what follows a REFER (below).
5. The DNS client always binds UDP sockets on 0.0.0.0 / [::] (random ports); they are used
   only for name lookups, which we never cause (IP addresses everywhere); `dns_server
   127.0.0.1:53` keeps any lookup on loopback all the same.
6. Account URI parameters (`<sip:caller@127.0.0.1;transport=tls>`) are appended to every
   dialed URI, even one that already has them (`...;transport=tls;transport=tls`): put the
   transport in the account, not in the dialed URI.
7. baresip cannot send anything to a `sips:` Contact ("session closed: Function not
   implemented" right after the 200, before the ACK): a node answering a `sip:` INVITE that
   came over TLS must give `sip:...;transport=tls` (fixed in `spg_media/sip/ua.py`).
8. TLS: baresip 1.0 has no `sip_verify_server`; libre 1.1's TLS client accepts any server
   certificate. `sip_cafile` only adds a CA (we still set it to the test certificate).
9. `sndcode K` sends RFC 4733 telephone-event packets (payload type 101, as negotiated; log
   lines "audio: send DTMF digit: 'K'" / "... end") and then the key release. Send one key
   per command with a gap: keys of one `sndcode` string go out back to back.
10. REFER: baresip answers 202, NOTIFYs `SIP/2.0 100 Trying`, raises the `TRANSFER` event
    (class `call`, `param` = the Refer-To value), dials the target, and NOTIFYs the final
    status (`200 OK`, or e.g. `487`) when that call is answered or fails. The Refer-To's
    `?X-SPG-Result=...` URI headers are NOT turned into header fields: they stay in the
    Request-URI and the To of the new INVITE (`INVITE sip:agent@h:p;x-spg-result=approved
    ?X-SPG-Result=approved&X-SPG-Reference=R SIP/2.0`), which is why the REFER also puts
    the result in the URI parameter `x-spg-result`. The new INVITE has no Referred-By.
11. `mediaenc=srtp-mand` applies to every call of the account, the transferred one too: the
    agent must answer `RTP/SAVP` with an `a=crypto` line.
12. The `menu` module prints a status line many times a second unless `statmode_default off`.
13. baresip 1.0 cannot dial a `sips:` URI: `dial` prefixes anything not starting with `sip:`
    with `sip:` and sends `INVITE sip:sips:pay@...` over UDP. TLS is reachable only as
    `sip:` + `;transport=tls` (from the account, pitfall 6).
14. Events worth knowing: `CALL_ESTABLISHED` (param = peer URI), `CALL_RTPESTAB` (first RTP
    from the peer decoded: the node has started speaking), `CALL_MENC` (param
    `0,audio,AES_CM_128_HMAC_SHA1_80` once SRTP is up), `TRANSFER`, `CALL_CLOSED` whose param
    says why: `488 Not Acceptable Here` (refused), `Connection reset by peer` (the peer's
    BYE), `Connection reset by user` (our `hangup`), `end of file` (pitfall 1). The `id` of
    a call event is the SIP Call-ID, which is also the `call_id` of the node's CDR.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
import wave
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from harness import (
    HOST,
    SIPP_DIR,
    Daemon,
    SipText,
    SpgNode,
    free_port,
    stop_process,
)

BARESIP = shutil.which("baresip") or (
    "/usr/bin/baresip" if Path("/usr/bin/baresip").exists() else None
)
TSHARK = shutil.which("tshark") or ("/usr/bin/tshark" if Path("/usr/bin/tshark").exists() else None)
AGENT_SCENARIO = SIPP_DIR / "agent_uas.xml"

_MODULE_DIRS = ("/usr/lib/baresip/modules", "/usr/local/lib/baresip/modules")
MODULES = ("g711.so", "aufile.so", "aubridge.so", "srtp.so")
APP_MODULES = ("menu.so", "ctrl_tcp.so")


def baresip_module_dir() -> Path | None:
    """Where baresip's modules are (Debian: /usr/lib/baresip/modules), if it is installed."""
    candidates = [Path(d) for d in _MODULE_DIRS]
    candidates += sorted(Path("/usr/lib").glob("*/baresip/modules"))
    for path in candidates:
        if (path / "ctrl_tcp.so").exists():
            return path
    return None


def baresip_missing() -> str | None:
    """Why baresip cannot run here (a skip reason), or None."""
    if BARESIP is None:
        return "baresip is not installed (Debian package baresip)"
    modules = baresip_module_dir()
    if modules is None:
        return "baresip's modules (ctrl_tcp.so) are not installed"
    missing = [m for m in (*MODULES, *APP_MODULES) if not (modules / m).exists()]
    if missing:
        return f"baresip modules missing: {', '.join(missing)}"
    return None


def capture_missing() -> str | None:
    """Why a loopback capture cannot be made here (a skip reason), or None."""
    if TSHARK is None:
        return "tshark is not installed"
    if os.geteuid() != 0:
        return "capturing on lo needs root"
    return None


# ---- ports ----------------------------------------------------------------------------------


def _tcp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((HOST, port))
        except OSError:
            return False
    return True


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A port P free for UDP+TCP with P+1 free for TCP (baresip puts TLS on P+1)."""
    for _ in range(100):
        port = free_port()
        if port < 65535 and _tcp_free(port + 1):
            return port
    raise RuntimeError("no free port pair")


def free_udp_range(count: int) -> tuple[int, int]:
    """`count` consecutive UDP ports, free right now, starting at an even port."""
    for _ in range(200):
        start = free_port() & ~1
        if start + count > 65535:
            continue
        if all(_udp_free(p) for p in range(start, start + count)):
            return start, start + count - 1
    raise RuntimeError("no free UDP port range")


# ---- ctrl_tcp -------------------------------------------------------------------------------


def netstring(payload: bytes) -> bytes:
    return str(len(payload)).encode() + b":" + payload + b","


class NetstringDecoder:
    """Splits a byte stream into netstring payloads (`<len>:<payload>,`)."""

    MAX = 1 << 20

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out: list[bytes] = []
        while True:
            head, sep, rest = self.buffer.partition(b":")
            if not sep:
                if len(head) > 10:
                    raise ValueError(f"bad netstring header {head[:20]!r}")
                return out
            if not head.isdigit():
                raise ValueError(f"bad netstring header {head[:20]!r}")
            size = int(head)
            if size > self.MAX:
                raise ValueError(f"netstring of {size} bytes")
            if len(rest) < size + 1:
                return out
            if rest[size : size + 1] != b",":
                raise ValueError("netstring without its trailing comma")
            out.append(rest[:size])
            self.buffer = rest[size + 1 :]


@dataclasses.dataclass(frozen=True)
class BaresipEvent:
    """One ctrl_tcp event: `type` (e.g. CALL_ESTABLISHED), `klass` (call, other, ...)."""

    type: str
    klass: str
    param: str
    peer: str
    call_id: str
    direction: str
    at: float
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], at: float) -> BaresipEvent:
        return cls(
            type=str(obj.get("type", "")),
            klass=str(obj.get("class", "")),
            param=str(obj.get("param", "")),
            peer=str(obj.get("peeruri", "")),
            call_id=str(obj.get("id", "")),
            direction=str(obj.get("direction", "")),
            at=at,
            raw=dict(obj),
        )


@dataclasses.dataclass(frozen=True)
class CtrlResponse:
    ok: bool
    data: str


class CtrlError(RuntimeError):
    """baresip answered a command with ok=false, or not at all."""


# ---- the phone ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Account:
    """The account line: `<sip:USER@127.0.0.1[;transport=T]>;regint=0;...`.

    `mediaenc`: None (plain RTP/AVP), or one of baresip's srtp module: "srtp" (RTP/AVP with
    `a=crypto`, best effort), "srtp-mand" (RTP/SAVP, SRTP or nothing), "srtp-mandf" (the same
    with the RTP/SAVPF profile). `answermode`: "manual" (a caller: incoming calls ring) or
    "auto" (an agent: every incoming call is answered at once).
    """

    user: str = "caller"
    transport: str = "udp"
    mediaenc: str | None = None
    audio_codecs: str = "pcmu,pcma"
    answermode: str = "manual"

    def line(self) -> str:
        uri = f"sip:{self.user}@{HOST}"
        if self.transport != "udp":
            uri += f";transport={self.transport}"
        params = ["regint=0", f"answermode={self.answermode}", f"audio_codecs={self.audio_codecs}"]
        if self.mediaenc:
            params.append(f"mediaenc={self.mediaenc}")
        return f"<{uri}>;" + ";".join(params) + "\n"


def write_silence_wav(path: Path, seconds: float = 180.0, rate: int = 8000) -> Path:
    """The caller's microphone: mono S16LE silence at `rate` (aufile needs the codec's rate)."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\0\0" * int(rate * seconds))
    return path


class Baresip(Daemon):
    """One baresip process with one account, on 127.0.0.1, controlled over ctrl_tcp.

    `start()` writes `workdir/config`, `accounts` and the silence file, runs
    `baresip -f workdir -v -s` (SIP trace in `workdir/baresip.log`), connects to ctrl_tcp and
    starts a reader thread. `command()` sends one command and waits for its response;
    `wait_event()` waits for an event matching a predicate, scanning from a cursor so a test
    can wait for "the next" event of a kind.
    """

    def __init__(
        self,
        workdir: Path,
        account: Account | None = None,
        *,
        cafile: Path | None = None,
        sip_port: int | None = None,
        ctrl_port: int | None = None,
        rtp_ports: tuple[int, int] | None = None,
        extra_config: Mapping[str, str] | None = None,
        extra_modules: Sequence[str] = (),
    ) -> None:
        reason = baresip_missing()
        if reason:
            raise RuntimeError(reason)
        super().__init__(workdir, "baresip.log")
        self.account = account or Account()
        self.cafile = cafile
        self.sip_port = sip_port or free_port_pair()
        self.ctrl_port = ctrl_port or free_port()
        self.rtp_ports = rtp_ports or free_udp_range(10)
        # ports we chose may be taken (another test's ephemeral port) before baresip binds them
        self._ports_chosen = (sip_port is None, ctrl_port is None, rtp_ports is None)
        self.extra_config = dict(extra_config or {})
        self.extra_modules = tuple(extra_modules)  # e.g. sndfile.so (records each call's audio)
        self.events: list[BaresipEvent] = []
        self._responses: dict[str, CtrlResponse] = {}
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._closed = False

    @property
    def tls_port(self) -> int:
        return self.sip_port + 1

    # ---- lifecycle ------------------------------------------------------------------------

    def config_text(self) -> str:
        modules = baresip_module_dir()
        lines = {
            "poll_method": "epoll",
            "sip_listen": f"{HOST}:{self.sip_port}",
            "net_interface": HOST,
            "dns_server": f"{HOST}:53",
            "call_local_timeout": "120",
            "call_max_calls": "4",
            "audio_player": "aubridge,nil",
            "audio_alert": "aubridge,nil",
            "audio_source": f"aufile,{self.workdir / 'silence.wav'}",
            "audio_level": "no",
            "ausrc_format": "s16",
            "auplay_format": "s16",
            "auenc_format": "s16",
            "audec_format": "s16",
            "rtp_ports": f"{self.rtp_ports[0]}-{self.rtp_ports[1]}",
            "rtcp_mux": "no",
            "jitter_buffer_delay": "5-10",
            "module_path": str(modules),
            "ctrl_tcp_listen": f"{HOST}:{self.ctrl_port}",
            "statmode_default": "off",
            "ringback_disabled": "yes",
            "menu_bell": "no",
            "redial_attempts": "0",
        }
        if self.cafile is not None:
            lines["sip_cafile"] = str(self.cafile)
        lines.update(self.extra_config)
        out = [f"{key}\t{value}\n" for key, value in lines.items()]
        out += [f"module\t{m}\n" for m in (*MODULES, *self.extra_modules)]
        out += ["module_tmp\taccount.so\n"]
        out += [f"module_app\t{m}\n" for m in APP_MODULES]
        return "".join(out)

    def start(self, timeout_s: float = 10.0, attempts: int = 3) -> None:
        """Start baresip; if a port we chose was taken before it bound it, choose again."""
        for attempt in range(attempts):
            try:
                self._start_once(timeout_s)
                return
            except RuntimeError as exc:
                if "Address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                sip_chosen, ctrl_chosen, rtp_chosen = self._ports_chosen
                if not (sip_chosen or ctrl_chosen or rtp_chosen):
                    raise
                if sip_chosen:
                    self.sip_port = free_port_pair()
                if ctrl_chosen:
                    self.ctrl_port = free_port()
                if rtp_chosen:
                    self.rtp_ports = free_udp_range(10)

    def _start_once(self, timeout_s: float) -> None:
        assert BARESIP is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_silence_wav(self.workdir / "silence.wav")
        (self.workdir / "config").write_text(self.config_text())
        (self.workdir / "accounts").write_text(self.account.line())
        (self.workdir / "contacts").write_text("")
        self._spawn([BARESIP, "-f", str(self.workdir), "-v", "-s"])
        try:
            self._connect(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _connect(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"baresip exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            try:
                sock = socket.create_connection((HOST, self.ctrl_port), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"baresip's ctrl_tcp did not open in {timeout_s} s:\n{self.log()[-3000:]}"
                    ) from None
                time.sleep(0.05)
        sock.settimeout(None)
        self._sock = sock
        self._reader = threading.Thread(target=self._read_loop, name="baresip-ctrl", daemon=True)
        self._reader.start()
        # ctrl_tcp accepts before the UA is ready to dial; a harmless command proves both. No
        # answer: with baresip's log, so that `start` chooses other ports when one was taken
        # (the connection then reached someone else's listener).
        remaining = max(deadline - time.monotonic(), 5.0)
        try:
            self.command("uafind", f"sip:{self.account.user}@{HOST}", remaining, check=False)
        except CtrlError as exc:
            raise RuntimeError(f"{exc}:\n{self.log()[-3000:]}") from None

    def _read_loop(self) -> None:
        decoder = NetstringDecoder()
        assert self._sock is not None
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    break
                for payload in decoder.feed(data):
                    self._on_message(payload)
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _on_message(self, payload: bytes) -> None:
        try:
            obj = json.loads(payload)
        except ValueError:
            return
        with self._cond:
            if obj.get("event"):
                self.events.append(BaresipEvent.from_json(obj, time.monotonic()))
            elif obj.get("response"):
                token = str(obj.get("token", ""))
                self._responses[token] = CtrlResponse(bool(obj.get("ok")), str(obj.get("data", "")))
            self._cond.notify_all()

    def stop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        super().stop()  # the process (its reader then sees the end) and the log
        if self._reader is not None:
            self._reader.join(2)

    # ---- commands -------------------------------------------------------------------------

    def command(
        self, command: str, params: str | None = None, timeout_s: float = 5.0, check: bool = True
    ) -> CtrlResponse:
        """Send one long command (`{"command", "params", "token"}`); its response."""
        if self._sock is None:
            raise CtrlError("not connected")
        if len(command) + 1 + len(params or "") > 255:
            raise ValueError("ctrl_tcp cuts commands longer than 255 bytes")
        token = uuid.uuid4().hex[:12]
        message: dict[str, str] = {"command": command, "token": token}
        if params is not None:
            message["params"] = params
        self._sock.sendall(netstring(json.dumps(message).encode()))
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while token not in self._responses:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    raise CtrlError(f"no answer to {command!r} within {timeout_s} s")
                self._cond.wait(remaining)
            response = self._responses.pop(token)
        if check and not response.ok:
            raise CtrlError(f"{command} {params or ''}: {response.data.strip()}")
        return response

    def dial(self, uri: str) -> None:
        self.command("dial", uri)

    def sndcode(self, keys: str, gap_s: float = 0.25) -> None:
        """Press `keys` one by one (one `sndcode` each, `gap_s` apart: see pitfall 9)."""
        for n, key in enumerate(keys):
            if n:
                time.sleep(gap_s)
            self.command("sndcode", key)

    def hangup(self) -> None:
        """Hang up the current call (baresip 1.0's `hangup` takes no call id)."""
        self.command("hangup", check=False)

    # ---- events ---------------------------------------------------------------------------

    @property
    def cursor(self) -> int:
        """The index the next event will have: pass it to `wait_event(since=...)`."""
        with self._cond:
            return len(self.events)

    def wait_event(
        self,
        match: str | Callable[[BaresipEvent], bool],
        timeout_s: float = 10.0,
        since: int = 0,
    ) -> BaresipEvent:
        """The first event from index `since` on of type `match` (or satisfying it)."""
        predicate = (lambda e: e.type == match) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for event in self.events[since:]:
                    if predicate(event):
                        return event
                since = max(since, len(self.events))
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    seen = ", ".join(f"{e.type}({e.param[:60]})" for e in self.events)
                    raise TimeoutError(f"no {match!r} event within {timeout_s} s; seen: {seen}")
                self._cond.wait(remaining)

    def event_types(self) -> list[str]:
        with self._cond:
            return [e.type for e in self.events]

    def sip_trace(self) -> list[TracedMessage]:
        """The SIP messages of baresip's `-s` trace (sent and received), in order."""
        return parse_sip_trace(self.log())


@dataclasses.dataclass(frozen=True)
class TracedMessage(SipText):
    """One message of baresip's SIP trace: `TLS 127.0.0.1:5061 -> 127.0.0.1:40000` + text."""

    transport: str
    source: str
    destination: str
    text: str


# the trace: ESC[36;1m "#" NL "<transport> <src> -> <dst>" NL <message> ESC[;m
_TRACE_RE = re.compile(
    r"\x1b\[36;1m#\n(?P<transport>UDP|TCP|TLS) (?P<src>\S+) -> (?P<dst>\S+)\n"
    r"(?P<text>.*?)\x1b\[;m",
    re.S,
)


def parse_sip_trace(log: str) -> list[TracedMessage]:
    """The messages in a baresip `-s` log."""
    log = log.replace("\r\n", "\n")
    return [
        TracedMessage(m["transport"], m["src"], m["dst"], m["text"].strip("\n") + "\n")
        for m in _TRACE_RE.finditer(log)
    ]


def sdp_crypto_keys(text: str) -> list[str]:
    """The `inline:` key material of every `a=crypto` line in `text`."""
    return re.findall(r"a=crypto:\d+ \S+ inline:([A-Za-z0-9+/=]+)", text)


# ---- spg-media with a TLS listener -----------------------------------------------------------


class SpgTlsNode(SpgNode):
    """`spg-media serve` on UDP+TCP `sip_port` and TLS `tls_port`, with `cert`/`key`."""

    def __init__(
        self,
        workdir: Path,
        cert: Path,
        key: Path,
        env: Mapping[str, str] | None = None,
        tls_port: int | None = None,
    ) -> None:
        super().__init__(workdir, env)
        self.tls_port = tls_port or free_port()
        self.cert = cert
        self.key = key

    def extra_env(self) -> dict[str, str]:
        return {"SPG_SIP__TLS_CERT": str(self.cert), "SPG_SIP__TLS_KEY": str(self.key)}

    def extra_listeners(self) -> list[str]:
        return [f"tls:{HOST}:{self.tls_port}"]


# ---- the wire -------------------------------------------------------------------------------


class Capture:
    """tshark writing what passes on `lo` through `bpf` to `path` (needs root).

    tshark's "Capture started" comes before packets really flow, and its dumpcap loses the
    packets of a half-filled kernel block when it is stopped (pitfall of TPACKET_V3: a call
    captured and stopped right away can come out empty). So the capture also takes a
    sentinel: UDP datagrams to a free port of our own, which `start()` and `stop()` send until
    tshark prints them (`-P -l`): packets before the stop's sentinel are in the file.
    """

    def __init__(self, path: Path, bpf: str) -> None:
        reason = capture_missing()
        if reason:
            raise RuntimeError(reason)
        self.path = path
        self.bpf = bpf
        self.sentinel_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = path.with_suffix(".tshark.log")
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._err: IO[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        assert TSHARK is not None
        self._err = self.stderr_path.open("wb")
        capture_filter = f"({self.bpf}) or (udp dst port {self.sentinel_port})"
        self.proc = subprocess.Popen(
            [TSHARK, "-i", "lo", "-f", capture_filter, "-w", str(self.path), "-P", "-l"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._err,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="tshark", daemon=True)
        self._reader.start()
        try:
            self._sync(timeout_s)
        except BaseException:
            self.stop(sync=False)
            raise

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self._lines.append(raw.decode(errors="replace"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _sync(self, timeout_s: float) -> None:
        """Send sentinel datagrams until tshark shows one (so the capture is live and flushed)."""
        assert self.proc is not None
        marker = f"{self.sentinel_port} "
        deadline = time.monotonic() + timeout_s
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, self._cond:
            seen = sum(marker in line for line in self._lines)
            while True:
                sock.sendto(b"spg-capture-sentinel", (HOST, self.sentinel_port))
                self._cond.wait(0.2)
                if sum(marker in line for line in self._lines) > seen:
                    return
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = self.stderr_path.read_text(errors="replace")[-800:]
                    raise RuntimeError(f"tshark shows no packets: {log}")

    def stop(self, sync: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if sync:
                self._sync(10)
            # SIGINT to tshark alone: it stops its dumpcap child cleanly
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                stop_process(self.proc, 2)
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        if self._err is not None:
            self._err.close()
            self._err = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(sync=exc_type is None)

    def tshark(self, *args: str) -> str:
        """tshark on the capture file; its stdout."""
        assert TSHARK is not None
        done = subprocess.run(
            [TSHARK, "-r", str(self.path), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"tshark failed: {done.stderr.decode(errors='replace')[-800:]}")
        return done.stdout.decode(errors="replace")

    def count(self, display_filter: str, *options: str) -> int:
        """How many captured packets match a display filter (tshark `options` first, such as
        `-d tcp.port==N,tls`)."""
        return len(
            [
                ln
                for ln in self.tshark(
                    *options, "-Y", display_filter, "-T", "fields", "-e", "frame.number"
                ).splitlines()
                if ln.strip()
            ]
        )

    def contains(self, needle: bytes | str) -> bool:
        """Whether `needle` is anywhere in the raw capture file (headers and payloads)."""
        data = self.path.read_bytes()
        raw = needle.encode() if isinstance(needle, str) else needle
        return raw in data

    def rtp_event_digits(self, udp_ports: Sequence[int] = ()) -> str:
        """The keys readable in clear as RFC 4733 events (payload type 101) in the capture.

        RTP is found by tshark's heuristic (`rtp_udp`), telephone-event by its payload-type
        preference (101, what baresip and SIPp use); each (SSRC, timestamp) is one key press.
        With SRTP the payload is ciphertext, so whatever decodes is noise, not the keys.
        """
        args = ["-o", "rtpevent.event_payload_type_value:101", "--enable-heuristic", "rtp_udp"]
        for port in udp_ports:
            args += ["-d", f"udp.port=={port},rtp"]
        out = self.tshark(
            *args, "-Y", "rtpevent", "-T", "fields",
            "-e", "rtp.ssrc", "-e", "rtp.timestamp", "-e", "rtpevent.event_id",
        )  # fmt: skip
        names = "0123456789*#ABCD"
        seen: set[tuple[str, str]] = set()
        digits = []
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) != 3 or not parts[2].strip().isdigit():
                continue
            key = (parts[0], parts[1])
            if key in seen:
                continue
            seen.add(key)
            event = int(parts[2])
            digits.append(names[event] if event < len(names) else "?")
        return "".join(digits)
