"""The spg-media process: builds the shared services from the config and runs calls.

`Server.start()` renders the prompts of the configured language (so the first caller does not
wait for synthesis), opens the SIP listeners, the media engine and the admin endpoint; each new
INVITE becomes a `Call` task. `stop()` drains: new INVITEs get 503 while running calls finish
(up to a grace period), then everything closes.

Admission: a new INVITE is answered `503` with `Retry-After` before anything is allocated for it
while the node drains, is too busy or lags (`admission.AdmissionControl`, fed by `LagMonitor`:
the media tick's busy fraction, its lateness and the event loop's) or holds
`admission.max_calls` calls; the calls in progress are not touched. `/healthz` and
out-of-dialog OPTIONS say the same (`health()`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spg_media import gcpolicy
from spg_media.admission import AdmissionControl, AdmissionPolicy
from spg_media.assist.bridge_call import AssistCall, is_assist_invite
from spg_media.call import Call, CallServices, voice_entry_offered
from spg_media.cdr import CallbackSender, CdrWriter
from spg_media.config import (
    LANGUAGES,
    AdmissionConfig,
    Config,
    ConfigError,
    is_loopback_host,
    parse_host_port,
    parse_listen,
)
from spg_media.observability import CALLS_REJECTED_TOTAL, METRICS
from spg_media.payment.authorization import authorization_bound_s
from spg_media.payment.connectors import make_connector
from spg_media.payment.journal import PaymentJournal
from spg_media.rtp.session import TICK_INTERVAL_S, MediaEngine
from spg_media.sip.limits import ConnectionLimits, LogThrottle
from spg_media.sip.message import SipRequest, make_response
from spg_media.sip.transaction import Address
from spg_media.sip.ua import Listen, SipUserAgent
from spg_media.speech import SpeechEngine
from spg_media.tts.prompts import PromptLibrary
from spg_media.tts.render import PromptRenderer

if TYPE_CHECKING:
    from spg_media.admin import AsgiServer
    from spg_media.assist.service import AssistService

log = logging.getLogger("spg.server")

DRAIN_S = 30.0  # what calls in progress get to finish when the node stops (`serve --drain-s`)


def drain_grace_s(config: Config, drain_s: float = DRAIN_S, keep_floor: bool = True) -> float:
    """How long calls in progress get to finish when the node stops: `drain_s`, and never less
    than an authorisation with its reconciliation may take (a call cut short in it would leave
    its charge unknown), unless `keep_floor` is False."""
    return max(drain_s, authorization_bound_s(config)) if keep_floor else drain_s


DRAIN_RETRY_AFTER_S = 5  # the Retry-After of a draining node's 503
DRAINING = "draining"  # a refusal reason beside admission.LAG and admission.MAX_CALLS
LAG_PROBE_INTERVAL_S = 0.1  # how often the event loop's lag is sampled
REFUSED_LOG_PERIOD_S = 10.0

ADMISSION_ACCEPTING = METRICS.gauge(
    "spg_admission_accepting",
    "1 while the node takes new calls; 0 while it answers them 503 (busy, lag, max_calls, "
    "draining).",
)
MEDIA_TICK_LAG_SECONDS = METRICS.gauge(
    "spg_media_tick_lag_seconds",
    "How late the 20 ms media tick starts against its schedule, smoothed (admission).",
)
MEDIA_TICK_BUSY_RATIO = METRICS.gauge(
    "spg_media_tick_busy_ratio",
    "How much of its 20 ms period the media tick's work takes, smoothed (admission).",
)
EVENT_LOOP_LAG_SECONDS = METRICS.gauge(
    "spg_event_loop_lag_seconds",
    "How late a callback scheduled on the event loop runs, smoothed (admission).",
)
CALLS_REFUSED_TOTAL = METRICS.counter(
    "spg_calls_refused_total",
    "New INVITEs answered 503 Service Unavailable, by reason (busy, lag, max_calls, draining).",
    ("reason",),
)


def admission_policy(config: AdmissionConfig) -> AdmissionPolicy:
    return AdmissionPolicy(
        max_tick_busy=config.max_tick_busy,
        max_tick_lag_s=config.max_tick_lag_ms / 1000,
        max_loop_lag_s=config.max_loop_lag_ms / 1000,
        resume_ratio=config.resume_ratio,
        smoothing_s=config.smoothing_s,
        max_calls=config.max_calls,
    )


class LagMonitor:
    """The shell of admission control: samples the event loop's lag (how late its own callback,
    scheduled every `interval_s`, runs), takes the media tick's lag and busy fraction
    (`on_tick_lag` and `on_tick_work`, which the `MediaEngine` calls every tick), feeds them to
    the `AdmissionControl`, logs when the node starts or stops refusing, and calls `on_probe`
    after every loop sample (gauges)."""

    def __init__(
        self,
        control: AdmissionControl,
        on_probe: Callable[[], None] | None = None,
        interval_s: float = LAG_PROBE_INTERVAL_S,
    ) -> None:
        self.control = control
        self.on_probe = on_probe
        self.interval_s = interval_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._schedule(self._loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        # From now, not from the last due time: a stall gives one late sample, not a burst.
        self._due = now + self.interval_s
        self._handle = self._loop.call_at(self._due, self._probe)

    def _probe(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        try:
            self._noted(self.control.note_loop_lag(now - self._due, now), now)
            if self.on_probe is not None:
                self.on_probe()
        except Exception:  # a failed measurement must not end the measuring
            log.exception("event loop lag probe failed")
        self._schedule(now)

    def on_tick_lag(self, lag_s: float, now: float) -> None:
        self._noted(self.control.note_tick_lag(lag_s, now), now)

    def on_tick_work(self, work_s: float, now: float) -> None:
        self._noted(self.control.note_tick_busy(work_s / TICK_INTERVAL_S, now), now)

    def _noted(self, changed: bool, now: float) -> None:
        if not changed:
            return
        tick, loop = self.control.lags(now)
        busy = self.control.busy.value(now)
        policy = self.control.policy
        if self.control.lagging:
            log.warning(
                "refusing new calls (503): media tick busy %.0f %%, %.1f ms late, event loop "
                "%.1f ms late (smoothed; limits admission.max_tick_busy %g, max_tick_lag_ms "
                "%g, max_loop_lag_ms %g)",
                busy * 100,
                tick * 1000,
                loop * 1000,
                policy.max_tick_busy,
                policy.max_tick_lag_s * 1000,
                policy.max_loop_lag_s * 1000,
            )
        else:
            log.info(
                "accepting new calls again: media tick busy %.0f %%, %.1f ms late, event loop "
                "%.1f ms late",
                busy * 100,
                tick * 1000,
                loop * 1000,
            )


class Server:
    """One spg-media node."""

    def __init__(
        self,
        config: Config,
        observer: Callable[[str, str, dict[str, Any]], None] | None = None,
        prerender: bool = True,
        drain_s: float = DRAIN_S,
        drain_floor: bool = True,
    ) -> None:
        self.config = config
        self.grace_s = drain_grace_s(config, drain_s, drain_floor)  # what stop() waits
        self.observer = observer
        self.prerender = prerender
        self.draining = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.services: CallServices | None = None
        self.admin: Any = None
        self.assist: AssistService | None = None  # agent-assisted payments (assist.api_token)
        self.assist_server: AsgiServer | None = None
        self.listen: list[Listen] = []
        self.admission = AdmissionControl(admission_policy(config.admission))
        self.lag_monitor = LagMonitor(self.admission, on_probe=self._update_admission_gauges)
        self._refused_log = LogThrottle(REFUSED_LOG_PERIOD_S)

    async def start(self) -> None:
        config = self.config
        journal = PaymentJournal(config.log.journal_path)
        try:  # no authorisation is sent without its journal line: refuse to start without one
            journal.check()
        except OSError as exc:
            problem = f"cannot write {config.log.journal_path}: {exc.strerror or exc}"
            raise ConfigError(f"log.journal_path: {problem}", "log.journal_path") from None
        renderer = PromptRenderer(Path(config.tts.cache_dir))
        prompts = PromptLibrary(renderer)
        if self.prerender:
            count = await asyncio.to_thread(prompts.prerender, config.ivr.language)
            log.info("prompts ready: %d clips for %s", count, config.ivr.language)
        self.listen = [
            Listen(spec.transport, spec.host, spec.port)
            for spec in (parse_listen(s) for s in config.sip.listen)
        ]
        ssl_context = None
        if any(spec.transport == "tls" for spec in self.listen):
            ssl_context = server_tls_context(config.sip.tls_cert, config.sip.tls_key)
        raise_open_file_limit(config.sip.max_connections)
        ua = SipUserAgent(
            self.listen,
            config.sip.public_host,
            config.sip.trusted_sources,
            ssl_context,
            client_ssl_context=config.sip.client_tls(),
            limits=ConnectionLimits(
                max_connections=config.sip.max_connections,
                idle_timeout_s=config.sip.idle_timeout_s,
                header_timeout_s=config.sip.header_timeout_s,
                tls_handshake_timeout_s=config.sip.tls_handshake_timeout_s,
            ),
        )
        media = MediaEngine(config.rtp.address, config.rtp.port_min, config.rtp.port_max)
        media.on_tick_lag = self.lag_monitor.on_tick_lag
        media.on_tick_work = self.lag_monitor.on_tick_work
        connector = make_connector(
            config.gateway.connector,
            config.gateway.url,
            config.gateway.secret,
            config.gateway.timeout_s,
            config.gateway.reconcile_s,
        )
        self.services = CallServices(
            config=config,
            ua=ua,
            media=media,
            prompts=prompts,
            connector=connector,
            cdr=CdrWriter(config.log.cdr_path),
            callbacks=CallbackSender(config.gateway.secret, config.handoff.callback_allow),
            observer=self.observer,
            journal=journal,
            speech=self._speech_engine(),
        )
        if config.handoff.callback_allow and not config.gateway.secret:
            log.warning(
                "result callbacks are signed with gateway.secret, which is empty: "
                "merchants cannot check them"
            )
        ua.invite_handler = self
        ua.refusing_calls = self._retry_after_if_refusing
        gcpolicy.observe()
        self.lag_monitor.start()
        self._update_admission_gauges()
        await ua.start()
        if config.admin.listen:
            await self._start_admin()
        if config.assist.listen and config.assist.api_token:
            await self._start_assist()
        elif config.assist.listen:
            log.info("assist.api_token is empty: the agent-assisted API and page are off")

    async def _start_assist(self) -> None:
        """The payment-session service of assisted calls, and its API and agent page."""
        from spg_media.admin import AsgiServer
        from spg_media.assist.api import build_app
        from spg_media.assist.service import AssistService

        assert self.services is not None
        services, assist = self.services, self.config.assist
        self.assist = AssistService(
            self.config, services.connector, services.cdr, services.callbacks, services.journal
        )
        self.assist_server = AsgiServer(
            build_app(self.assist, assist.api_token),
            streaming=True,
            label="agent-assisted API and page",
        )
        host, port = parse_host_port(assist.listen)
        if not is_loopback_host(host):
            log.warning(
                "assist.listen %s is not a loopback address: the API token and payment states "
                "travel as plain HTTP; put a TLS proxy in front",
                assist.listen,
            )
        await self.assist_server.start(host, port)

    def _speech_engine(self) -> SpeechEngine | None:
        """Voice entry's recognisers, with `ivr.input = "dtmf speech"` (started now: each
        worker loads its model once, not at a caller's first word)."""
        if self.config.ivr.input != "dtmf speech":
            return None
        recogniser = self.config.speech.recogniser
        spoken = [language for language in LANGUAGES if voice_entry_offered(language, recogniser)]
        if not spoken:
            log.warning("ivr.input is 'dtmf speech' but no language has a speech model: keys only")
            return None
        engine = SpeechEngine(
            self.config.speech.max_concurrent,
            workers=self.config.speech.processes or None,
            lock_memory=self.config.security.lock_memory,
            recogniser=recogniser,
        )
        engine.start()
        others = [language for language in LANGUAGES if language not in spoken]
        log.info(
            "voice entry: callers may say their digits in %s (keypad only: %s); "
            "%d recognitions at once in %d processes",
            ", ".join(spoken), ", ".join(others) or "none", self.config.speech.max_concurrent,
            engine.processes,
        )  # fmt: skip
        return engine

    async def _start_admin(self) -> None:
        from spg_media.admin import AdminServer

        assert self.services is not None
        services = self.services
        listen = self.config.admin.listen
        self.admin = AdminServer(
            METRICS,
            lambda: [call.summary() for call in services.calls.values()],
            self.health,
        )
        if listen.startswith("unix:"):
            await self.admin.start_unix(listen.removeprefix("unix:"))
            return
        host, _, port = listen.rpartition(":")
        if not is_loopback_host(host.strip("[]")):
            log.warning(
                "admin.listen %s is not a loopback address: /metrics, /healthz and /calls "
                "have no authentication; keep that address on a private network",
                self.config.admin.listen,
            )
        await self.admin.start(host.strip("[]"), int(port))

    # ---- admission ----------------------------------------------------------------------------

    def refusal(self) -> str | None:
        """Why a new INVITE would be refused now (DRAINING, admission.BUSY, admission.LAG,
        admission.MAX_CALLS), or None when it would be taken."""
        if self.draining:
            return DRAINING
        active = len(self.services.calls) if self.services is not None else 0
        return self.admission.admit(active, asyncio.get_running_loop().time())

    def _retry_after(self, reason: str) -> int:
        return DRAIN_RETRY_AFTER_S if reason == DRAINING else self.config.admission.retry_after_s

    def _retry_after_if_refusing(self) -> int | None:
        reason = self.refusal()
        return None if reason is None else self._retry_after(reason)

    def health(self) -> dict[str, Any]:
        """What /healthz answers: `status` ok (200) while new calls are taken, else overloaded
        or draining (503), with the reason, the smoothed busy fraction and lags."""
        reason = self.refusal()
        now = asyncio.get_running_loop().time()
        tick, loop = self.admission.lags(now)
        status = "ok" if reason is None else (DRAINING if reason == DRAINING else "overloaded")
        return {
            "status": status,
            "reason": reason,
            "calls": len(self.services.calls) if self.services is not None else 0,
            "max_calls": self.config.admission.max_calls,
            "media_tick_busy": round(self.admission.busy.value(now), 3),
            "media_tick_lag_ms": round(tick * 1000, 2),
            "event_loop_lag_ms": round(loop * 1000, 2),
        }

    def _update_admission_gauges(self) -> None:
        now = asyncio.get_running_loop().time()
        tick, loop = self.admission.lags(now)
        MEDIA_TICK_BUSY_RATIO.set(self.admission.busy.value(now))
        MEDIA_TICK_LAG_SECONDS.set(tick)
        EVENT_LOOP_LAG_SECONDS.set(loop)
        ADMISSION_ACCEPTING.set(1 if self.refusal() is None else 0)

    def _refuse(self, invite: SipRequest, reason: str) -> None:
        """503 with Retry-After: nothing was allocated for this INVITE, and nothing will be."""
        assert self.services is not None
        retry_after = str(self._retry_after(reason))
        self.services.ua.respond(
            invite,
            make_response(
                invite, 503, "Service Unavailable", headers=[("Retry-After", retry_after)]
            ),
        )
        CALLS_REJECTED_TOTAL.inc(status="503")
        CALLS_REFUSED_TOTAL.inc(reason=reason)
        ADMISSION_ACCEPTING.set(0)
        if reason == DRAINING:
            return  # the drain is logged once, when it starts
        count = self._refused_log.note(asyncio.get_running_loop().time())
        if count is not None:
            log.warning(
                "%d new INVITEs answered 503 since the last report (%s; %d calls in progress)",
                count,
                reason,
                len(self.services.calls),
            )

    def on_invite(self, invite: SipRequest, source: Address) -> None:
        assert self.services is not None
        reason = self.refusal()
        if reason is not None:
            self._refuse(invite, reason)
            return
        call: Call | AssistCall
        if is_assist_invite(invite, self.config):  # bridged to an agent, before any IVR
            call = AssistCall(self.services, self.assist, invite, source)
        else:
            call = Call(self.services, invite, source)
        # Registered now, not when its task first runs: another INVITE with this Call-ID in
        # the same read (or the same loop iteration) gets 482 instead of starting a second call.
        call.register()
        task = asyncio.get_running_loop().create_task(call.run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(lambda _: call.unregister())  # a task cancelled before it ran

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: new INVITEs get 503 while the calls in progress finish, for `grace_s` at
        most (by default `self.grace_s`: see `drain_grace_s`)."""
        if grace_s is None:
            grace_s = self.grace_s
        self.draining = True
        ADMISSION_ACCEPTING.set(0)
        if self.tasks:
            log.info("draining %d calls", len(self.tasks))
            _, pending = await asyncio.wait(set(self.tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
        self.lag_monitor.stop()
        if self.services is not None:
            background = self.services.background
            if background:
                await asyncio.wait(set(background), timeout=5)
            await self.services.ua.close()
            await self.services.media.aclose()
            if self.assist is not None:  # its streams end, its authorisations settle
                await self.assist.aclose(grace_s)
            await self.services.connector.aclose()
            if self.services.speech is not None:
                self.services.speech.close()
        if self.admin is not None:
            await self.admin.close()
        if self.assist_server is not None:
            await self.assist_server.close()


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The context of our TLS listeners: TLS 1.2 at least, and no session tickets (a ticket is
    the session's keys sealed under a key the process keeps for its whole life: one leak of it
    would open every recorded session; without tickets each connection has its own keys)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_TICKET  # TLS 1.2
    context.num_tickets = 0  # TLS 1.3
    context.load_cert_chain(cert, key)
    return context


# Beyond the SIP connections: media sockets (two a call), the admin endpoint, logs, connector.
_OTHER_FILES = 4096


def raise_open_file_limit(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard one so that `sip.max_connections`, and
    not the open-file limit, is what refuses connections; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + _OTHER_FILES
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit to %d: %s", wanted, exc)
    if soft != resource.RLIM_INFINITY and soft < max_connections + 256:
        log.warning(
            "open-file limit %d leaves little room above sip.max_connections %d: "
            "raise the hard limit (LimitNOFILE=) or lower sip.max_connections",
            soft,
            max_connections,
        )
    return soft
