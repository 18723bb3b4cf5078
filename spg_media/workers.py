"""Every core of a machine: `spg-media serve --workers N`, the plan and the supervisor.

A node is one Python process, and one Python process uses one core. `serve --workers N` runs N
worker processes, each a whole node (`Server`) of its own, and a supervisor that owns nothing of
a call:

- **Ports.** Worker `i` listens on each configured SIP listener's port + `i` (5080, 5081, ...):
  a proxy must be able to address a worker, and a dialog must come back to the worker that holds
  it, which a shared port (SO_REUSEPORT hashes on the sender, and every call comes from the one
  proxy) cannot promise. The RTP range is cut into N contiguous slices, one per worker.
  `spg-media kamailio-dispatcher` prints the dispatcher entries for them.
- **Files.** The CDR and the payment journal stay one file each, shared: every line is written
  with one `write` to a file opened `O_APPEND`, which Linux serialises per file, so lines of
  different workers never interleave; `spg-media reconcile` reads the one journal. The prompt
  cache is rendered once by the supervisor before the workers start (they find it warm).
- **Admin.** Each worker's admin endpoint listens on a Unix socket in a private runtime
  directory; the supervisor's endpoint (`admin.listen`) answers for all of them: `/metrics`
  merges the workers' expositions with a `worker` label (and adds the supervisor's own),
  `/calls` concatenates, `/healthz` says how many workers are up.
- **Life.** A worker that dies is started again (backoff from 0.5 s doubling to 30 s, reset
  after a minute of running); meanwhile the proxy's OPTIONS probing takes its ports out of
  rotation. SIGTERM/SIGINT to the supervisor is passed to every worker, which drains, and the
  supervisor exits when they all have.

`plan_workers`, `dispatcher_lines`, `RestartPolicy` and the merging functions are pure; the
`Supervisor` is the asyncio shell around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spg_media.config import Config, ConfigError, ListenSpec, parse_listen

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("spg.workers")

# An RTP slice needs room for a few calls at least: each call takes an even RTP port and the
# odd RTCP port above it.
MIN_RTP_PORTS_PER_WORKER = 20


def default_worker_count() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def worker_count(setting: int) -> int:
    """`process.workers` / `--workers`: 0 means one per core."""
    return setting if setting > 0 else default_worker_count()


@dataclass(frozen=True)
class WorkerPlan:
    """What worker `index` listens on and which RTP ports are its own."""

    index: int
    listen: tuple[str, ...]
    rtp_port_min: int
    rtp_port_max: int
    admin_socket: Path


def _spec_text(spec: ListenSpec, port: int) -> str:
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return f"{spec.transport}:{host}:{port}"


def plan_workers(config: Config, count: int, runtime_dir: Path) -> list[WorkerPlan]:
    """Each worker's listeners, RTP slice and admin socket; ConfigError naming the key when
    `count` workers do not fit (ports above 65535, listeners that would collide, an RTP range
    too small to cut)."""
    if count < 1:
        raise ConfigError("process.workers: must be 0 (one per core) or more", "process.workers")
    if count > 1 and config.assist.listen and config.assist.api_token:
        # One registry of assisted calls and payments, one API port: a single process.
        raise ConfigError(
            "assist.api_token: agent-assisted payments run in a single process; "
            "set process.workers = 1 (or leave assist.api_token empty)",
            "assist.api_token",
        )
    specs = [parse_listen(text) for text in config.sip.listen]
    taken: dict[tuple[str, str, int], int] = {}
    for spec in specs:
        if spec.port + count - 1 > 65535:
            raise ConfigError(
                f"sip.listen: {count} workers need ports {spec.port}-{spec.port + count - 1}",
                "sip.listen",
            )
        family = "udp" if spec.transport == "udp" else "tcp"  # tls is a TCP port too
        for index in range(count):
            key = (family, spec.host, spec.port + index)
            if key in taken and taken[key] != index:
                raise ConfigError(
                    f"sip.listen: with {count} workers the listeners' ports overlap "
                    f"({family} port {spec.port + index} of worker {index} and of worker "
                    f"{taken[key]}); space the listeners' ports at least {count} apart",
                    "sip.listen",
                )
            taken[key] = index
    rtp = config.rtp
    first = rtp.port_min + (rtp.port_min % 2)  # RTP on even ports
    span = (rtp.port_max - first + 1) // count
    span -= span % 2
    if span < MIN_RTP_PORTS_PER_WORKER:
        raise ConfigError(
            f"rtp.port_min/port_max: {rtp.port_min}-{rtp.port_max} is too small for {count} "
            f"workers ({MIN_RTP_PORTS_PER_WORKER} ports each at least)",
            "rtp.port_min",
        )
    return [
        WorkerPlan(
            index=index,
            listen=tuple(_spec_text(spec, spec.port + index) for spec in specs),
            rtp_port_min=first + index * span,
            rtp_port_max=first + (index + 1) * span - 1,
            admin_socket=runtime_dir / f"worker-{index}.sock",
        )
        for index in range(count)
    ]


def dispatcher_lines(config: Config, count: int, setid: int = 1) -> list[str]:
    """Kamailio dispatcher.list entries for `count` workers: one destination per worker and
    transport (`setid destination flags priority attrs`). A listener on a wildcard address is
    reached at `sip.public_host`."""
    lines = [
        f"# spg-media workers: {count} (spg-media kamailio-dispatcher); "
        "setid destination flags priority attrs"
    ]
    for plan in plan_workers(config, count, Path("/nonexistent")):
        for text in plan.listen:
            spec = parse_listen(text)
            host = spec.host if spec.host not in ("0.0.0.0", "::", "") else config.sip.public_host
            if ":" in host:
                host = f"[{host}]"
            transport = "" if spec.transport == "udp" else f";transport={spec.transport}"
            lines.append(f"{setid} sip:{host}:{spec.port}{transport} 0 0 worker={plan.index}")
    return lines


@dataclass
class RestartPolicy:
    """When to start a worker again after it died: 0.5 s, doubling to 30 s while it keeps
    dying young; a worker that ran for `stable_s` starts over from the shortest delay."""

    first_s: float = 0.5
    longest_s: float = 30.0
    stable_s: float = 60.0
    _next_s: float = field(default=0.0, init=False)

    def delay(self, started: float, died: float) -> float:
        if died - started >= self.stable_s or self._next_s == 0.0:
            self._next_s = self.first_s
        else:
            self._next_s = min(self._next_s * 2, self.longest_s)
        return self._next_s


# ---- what the supervisor's admin endpoint answers -------------------------------------------


def merge_metrics(parts: Sequence[tuple[str, str]]) -> str:
    """One Prometheus exposition (text format 0.0.4) from (worker label, exposition text)
    pairs: every sample gets a `worker` label ("" adds none: the supervisor's own), families of
    the same name are written once with all their samples.

    Merged as text, not parsed: the workers write their expositions with prometheus_client,
    whose format is fixed (a family is its `# HELP` and `# TYPE` lines, then its samples, a
    metric name ending at the first `{` or space). Parsing and writing again with
    prometheus_client cost the supervisor ~5 ms a scrape of two 170-line expositions; this,
    0.3 ms.
    """
    families: dict[str, tuple[list[str], list[str]]] = {}  # name -> (HELP/TYPE, samples)
    for worker, text in parts:
        label = f'worker="{worker}"' if worker else ""
        current: list[str] | None = None
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                fields = line.split(" ", 3)
                if len(fields) >= 3 and fields[1] in ("HELP", "TYPE"):
                    heads, samples = families.setdefault(fields[2], ([], []))
                    if not any(head.startswith(f"# {fields[1]} ") for head in heads):
                        heads.append(line)
                    current = samples
                continue
            if current is None:  # a sample before any family: a family of its own
                current = families.setdefault(line.split("{", 1)[0].split(" ", 1)[0], ([], []))[1]
            if label:
                brace, space = line.find("{"), line.find(" ")
                if brace != -1 and (space == -1 or brace < space):
                    inside = line[brace + 1 :]
                    sep = "" if inside.startswith("}") else ","
                    line = f"{line[: brace + 1]}{label}{sep}{inside}"
                elif space != -1:
                    line = f"{line[:space]}{{{label}}}{line[space:]}"
            current.append(line)
    out = [line for heads, samples in families.values() for line in (*heads, *samples)]
    return "\n".join(out) + "\n" if out else ""


def merge_calls(parts: Sequence[tuple[int, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """The workers' `/calls` lists as one, each call naming its worker."""
    return [{**call, "worker": index} for index, calls in parts for call in calls]


def merge_health(
    states: Sequence[bool | None], calls: Sequence[int | None] = ()
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of the supervisor's `/healthz` from each worker's state (True
    healthy, False answering but not taking calls, None not answering): 200 while at least one
    worker takes calls, 503 when none does. `calls`: each worker's calls in progress (None: it
    did not say), summed into `calls` (the calls of the workers that answered)."""
    up = sum(1 for state in states if state)
    body = {
        "status": "ok" if up == len(states) else ("degraded" if up else "unavailable"),
        "workers": len(states),
        "workers_up": up,
        "worker_states": ["up" if s else ("refusing" if s is False else "down") for s in states],
        "calls": sum(count for count in calls if count is not None),
    }
    return (200 if up else 503), body


def calls_in_health(health: bytes) -> int | None:
    """A worker's calls in progress from its `/healthz` body (None: not there)."""
    try:
        count = json.loads(health).get("calls")
    except (ValueError, AttributeError):
        return None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


# ---- the supervisor -------------------------------------------------------------------------


def runtime_directory() -> Path:
    """Where the workers' admin sockets go: systemd's RuntimeDirectory= when set, else a new
    private directory (0700) under the temporary directory."""
    given = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if given:
        path = Path(given)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix="spg-media-"))


def worker_command(plan: WorkerPlan, config_path: str | None) -> list[str]:
    """The command line of one worker: `serve` of this interpreter, with its own listeners and
    admin socket (the RTP slice goes in the environment, see `worker_environment`)."""
    command = [sys.executable, "-m", "spg_media", "serve", "--workers", "1"]
    if config_path:
        command += ["-c", config_path]
    for spec in plan.listen:
        command += ["--sip", spec]
    command += ["--admin", f"unix:{plan.admin_socket}", "--worker-index", str(plan.index)]
    return command


def worker_environment(
    plan: WorkerPlan, base: dict[str, str], speech_processes: int | None = None
) -> dict[str, str]:
    """The worker's environment: its RTP slice, and its share of the recogniser processes
    (`speech_processes`, when the config leaves `speech.processes` to the node)."""
    env = {
        **base,
        "SPG_RTP__PORT_MIN": str(plan.rtp_port_min),
        "SPG_RTP__PORT_MAX": str(plan.rtp_port_max),
        "SPG_PROCESS__WORKERS": "1",
    }
    if speech_processes is not None:
        env["SPG_SPEECH__PROCESSES"] = str(speech_processes)
    return env


def speech_processes_per_worker(config: Config, count: int) -> int | None:
    """Each worker's recogniser processes when `speech.processes` is 0 (one per core for the
    machine, not per worker: N workers each with a process per core would load N × cores
    models); None when the config sets a count (it applies to each worker) or voice entry is
    off."""
    if config.speech.processes or config.ivr.input != "dtmf speech":
        return None
    return max(1, default_worker_count() // count)


class Supervisor:
    """Runs the workers of one machine and answers for them (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        config_path: str | None,
        count: int,
        worker_args: Sequence[str] = (),
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.count = count
        self.worker_args = list(worker_args)  # passed on to every worker (--drain-s ...)
        self.runtime_dir = runtime_directory()
        self.plans = plan_workers(config, count, self.runtime_dir)
        self.processes: dict[int, asyncio.subprocess.Process | None] = {}
        self.stopping = False
        self.restarts = 0
        # Set when a worker exits with status 2 (its config or a port: starting it again cannot
        # help): the supervisor then stops the others and exits 2 too.
        self.failed = asyncio.Event()
        self.failure = ""
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()  # wakes a worker's restart delay when the node stops
        self._clients: dict[int, httpx.AsyncClient] = {}  # the workers' admin endpoints

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def start(self) -> None:
        for plan in self.plans:
            self.processes[plan.index] = None
            self._tasks.append(asyncio.create_task(self._keep_running(plan)))
        log.info(
            "supervising %d workers: %s",
            self.count,
            "; ".join(
                f"{p.index}: {', '.join(p.listen)} rtp {p.rtp_port_min}-{p.rtp_port_max}"
                for p in self.plans
            ),
        )

    async def _keep_running(self, plan: WorkerPlan) -> None:
        policy = RestartPolicy()
        env = worker_environment(
            plan, dict(os.environ), speech_processes_per_worker(self.config, self.count)
        )
        while not self.stopping:
            with contextlib.suppress(FileNotFoundError):
                plan.admin_socket.unlink()
            started = self._now()
            process = await asyncio.create_subprocess_exec(
                *worker_command(plan, self.config_path),
                *self.worker_args,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
            )
            self.processes[plan.index] = process
            code = await process.wait()
            self.processes[plan.index] = None
            if self.stopping:
                return
            if code == 2:
                self.failure = f"worker {plan.index} could not start (exit status 2)"
                self.failed.set()
                return
            delay = policy.delay(started, self._now())
            self.restarts += 1
            log.warning(
                "worker %d exited (%s); starting it again in %.1f s",
                plan.index,
                _exit_text(code),
                delay,
                extra={"worker": plan.index, "exit_code": code},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), delay)

    def signal_workers(self, sig: int = signal.SIGTERM) -> None:
        for process in self.processes.values():
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)

    async def stop(self) -> None:
        """Drain: every worker gets SIGTERM and finishes its calls; returns when all exited."""
        self.stopping = True
        self._stopped.set()
        self.signal_workers(signal.SIGTERM)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()
        for plan in self.plans:
            with contextlib.suppress(FileNotFoundError):
                plan.admin_socket.unlink()
        with contextlib.suppress(OSError):
            self.runtime_dir.rmdir()

    # -- the aggregated admin answers --

    async def _ask(self, plan: WorkerPlan, path: str) -> tuple[int, bytes] | None:
        import httpx

        if not plan.admin_socket.exists():
            return None
        # One client a worker for the supervisor's life: a new one a request cost ~20 ms of
        # CPU (httpx builds a TLS context with the CA bundle, unused over a Unix socket), which
        # at a scrape every 0.5 s was 10 % of a core. A restarted worker's new socket is at the
        # same path: the pool's dead connection fails once (None) and the next is new.
        client = self._clients.get(plan.index)
        if client is None:
            transport = httpx.AsyncHTTPTransport(uds=str(plan.admin_socket), verify=False)
            client = httpx.AsyncClient(transport=transport, timeout=2.0)
            self._clients[plan.index] = client
        try:
            response = await client.get(f"http://worker{path}")
            return response.status_code, response.content
        except httpx.HTTPError:
            return None

    async def metrics_text(self, own: str) -> str:
        answers = await asyncio.gather(*(self._ask(p, "/metrics") for p in self.plans))
        parts = [("", own)] + [
            (str(plan.index), answer[1].decode())
            for plan, answer in zip(self.plans, answers, strict=True)
            if answer is not None and answer[0] == 200
        ]
        return merge_metrics(parts)

    async def calls(self) -> list[dict[str, Any]]:
        answers = await asyncio.gather(*(self._ask(p, "/calls") for p in self.plans))
        parts: list[tuple[int, list[dict[str, Any]]]] = []
        for plan, answer in zip(self.plans, answers, strict=True):
            if answer is not None and answer[0] == 200:
                body = json.loads(answer[1])
                parts.append((plan.index, body if isinstance(body, list) else []))
        return merge_calls(parts)

    async def health(self) -> tuple[int, dict[str, Any]]:
        answers = await asyncio.gather(*(self._ask(p, "/healthz") for p in self.plans))
        states = [None if a is None else a[0] == 200 for a in answers]
        status, body = merge_health(
            states, [None if a is None else calls_in_health(a[1]) for a in answers]
        )
        if self.stopping:
            status, body = 503, {**body, "status": "draining"}
        return status, body


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


# ---- the supervisor's admin endpoint ---------------------------------------------------------


def supervisor_admin_app(supervisor: Supervisor) -> Callable[..., Any]:
    """The ASGI app of the supervisor's `admin.listen`: GET /metrics, /calls, /healthz for all
    workers at once (see `Supervisor.metrics_text`, `calls`, `health`)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    workers_up = Gauge("spg_workers_running", "Worker processes running now", registry=registry)
    restarts = Gauge(
        "spg_worker_restarts", "Worker processes started again after they died", registry=registry
    )
    workers_up.set_function(lambda: sum(1 for p in supervisor.processes.values() if p is not None))
    restarts.set_function(lambda: supervisor.restarts)

    async def app(
        scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "http":
            return
        status, body, content_type = 404, b"not found\n", "text/plain; charset=utf-8"
        if scope["method"] != "GET":
            status, body = 405, b"method not allowed\n"
        elif scope["path"] == "/metrics":
            own = generate_latest(registry).decode()
            text = await supervisor.metrics_text(own)
            status, body = 200, text.encode()
            content_type = "text/plain; version=0.0.4; charset=utf-8"
        elif scope["path"] == "/calls":
            calls = await supervisor.calls()
            status, body = 200, (json.dumps(calls, ensure_ascii=False) + "\n").encode()
            content_type = "application/json"
        elif scope["path"] == "/healthz":
            status, health = await supervisor.health()
            body, content_type = (json.dumps(health) + "\n").encode(), "application/json"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


class SupervisorAdmin:
    """`supervisor_admin_app` served like a node's admin endpoint (`admin.AsgiServer`)."""

    def __init__(self, supervisor: Supervisor, host: str, port: int) -> None:
        from spg_media.admin import AsgiServer

        self.host, self.port = host, port
        self.server = AsgiServer(supervisor_admin_app(supervisor))

    async def start(self) -> None:
        await self.server.start(self.host, self.port)

    async def close(self) -> None:
        await self.server.close()
