"""One agent-assisted call: the customer bridged to an agent through the node (a B2BUA).

This module owns the call side of agent-assisted mode: `is_assist_invite` (which INVITEs
enter it), `agent_target` (where the agent leg goes), and `AssistCall`, two INVITE sessions
(`sip/invite_session.py`) and two media sessions joined by `MediaEngine.bridge`:

- the customer's leg is the INVITE we received (UAS); the agent's is an INVITE of ours (UAC)
  with its own Call-ID, tags, SDP, codec, telephone-event payload type and SRTP keys, carrying
  `X-SPG-Assist-Call: <id>` (the id of the call in the assist API) and the customer's
  `X-SPG-Transaction` when there is one;
- the agent's provisional answers are relayed to the customer (their status, no SDP: the media
  is the node's), the customer is answered when the agent answers, and a failure of the agent
  leg is relayed as its status (a redirect as 480, an authentication challenge as 403: the
  node neither follows nor answers them);
- CANCEL from the customer cancels the agent leg; BYE on either leg ends the other; a
  re-INVITE or UPDATE (hold, codec change, re-keying) is answered on its own leg only;
- the customer's keys (RFC 4733, in-band, SIP INFO) go to `AssistService.digit`, never to the
  agent: only decoded, masked audio crosses (`MediaEngine.bridge`, both ways: the agent's
  keys never reach the customer either), and an INFO is answered here and not relayed;
- `play` / `stop_playback` (the `AssistCallHandle` of the assist service) speak to the
  customer only.

Everything the call decides on SIP is its sessions'; this object wires their events to each
other, to the media and to the assist service.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from spg_media.call import (
    CallServices,
    Handoff,
    dtmf_counts,
    offer_policy,
    play_prompt,
    prompt_language,
    release_callbacks,
    renegotiate_media,
)
from spg_media.dtmf.merge import DtmfMerger
from spg_media.dtmf.rfc4733 import DtmfEvent
from spg_media.dtmf.sipinfo import parse_info_dtmf
from spg_media.observability import CALLS_ACTIVE, CALLS_REJECTED_TOTAL
from spg_media.payment.journey import Play
from spg_media.randomid import random_hex
from spg_media.rtp import sdes
from spg_media.rtp.session import MediaSession
from spg_media.rtp.srtp import accept_answer
from spg_media.sip import session_timer
from spg_media.sip.invite_session import (
    Acked,
    Cancelled,
    Ended,
    Established,
    Event,
    Failed,
    InDialogRequest,
    InviteSession,
    Progress,
    Refusal,
    new_invite,
)
from spg_media.sip.leg import SessionLeg
from spg_media.sip.message import SipRequest, new_call_id, new_tag
from spg_media.sip.sdp import (
    NegotiatedAudio,
    NotAcceptable,
    SdpError,
    SessionDescription,
    build_answer,
    build_offer,
    negotiate,
)
from spg_media.sip.transaction import Address
from spg_media.sip.uri import NameAddr, SipSyntaxError, SipUri

if TYPE_CHECKING:
    from spg_media.assist.service import AssistService
    from spg_media.config import Config

log = logging.getLogger("spg.assist")

RELAYED_PROVISIONAL = frozenset((180, 181, 182, 183))


def is_assist_invite(invite: SipRequest, config: Config) -> bool:
    """An INVITE for agent-assisted mode: its Request-URI user is in `assist.users`, or it
    carries `X-SPG-Mode: assist`."""
    if (invite.headers.get("X-SPG-Mode") or "").strip().lower() == "assist":
        return True
    try:
        user = SipUri.parse(invite.uri).user or ""
    except SipSyntaxError:
        return False
    return unquote(user) in config.assist.users


def agent_target(invite: SipRequest, config: Config) -> str | None:
    """Where the agent leg goes: `X-SPG-Agent`, else the `x-spg-agent` Request-URI parameter,
    else `assist.agent_uri`; None when none is set. Raises SipSyntaxError for one that is no
    SIP URI."""
    value = invite.headers.get("X-SPG-Agent")
    if not value:
        with contextlib.suppress(SipSyntaxError):
            param = SipUri.parse(invite.uri).params.get("x-spg-agent")
            value = unquote(param) if param else None
    value = (value or "").strip() or config.assist.agent_uri
    if not value:
        return None
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    uri = SipUri.parse(value)
    if uri.scheme not in ("sip", "sips") or not uri.host:
        raise SipSyntaxError("not a sip: or sips: URI")
    return value


class AssistCall:
    """One bridged call; see the module docstring. Implements `AssistCallHandle`."""

    def __init__(
        self,
        services: CallServices,
        assist: AssistService | None,
        invite: SipRequest,
        source: Address,
    ) -> None:
        self.services = services
        self.config = services.config
        self.ua = services.ua
        self.assist = assist
        self.invite = invite
        self.source = source
        self.sip_call_id = invite.call_id  # the customer leg's Call-ID (the UA's routing key)
        self.call_id = random_hex(16)  # the assisted call's id: X-SPG-Assist-Call, the API's
        self.started_at = datetime.datetime.now(datetime.UTC)
        self.from_uri = _uri_of(invite.headers.get("From") or "")
        self.to_uri = _uri_of(invite.headers.get("To") or "")
        self.agent_uri = ""
        handoff = Handoff.from_invite(invite)
        self.transaction_hint = handoff.transaction
        self.language = prompt_language(handoff.language or "", self.config.ivr.language)
        self.phase = "setup"
        self.customer = InviteSession.as_uas(
            invite,
            local_tag=new_tag(),
            via_transport=source.transport,
            answer_offer=self._customer_offer,
            public_host=self.config.sip.public_host,
        )
        self.customer_leg = SessionLeg(self.ua, self.customer, source, self._customer_event)
        self.agent: InviteSession | None = None
        self.agent_leg: SessionLeg | None = None
        self.customer_media: MediaSession | None = None
        self.agent_media: MediaSession | None = None
        self.customer_port: int | None = None
        self.agent_port: int | None = None
        self.customer_neg: NegotiatedAudio | None = None
        self.agent_neg: NegotiatedAudio | None = None
        self._offered_keys: list[sdes.CryptoAttribute] = []
        self.session_id = random.randint(1, 2**31)
        self.customer_sdp_version = 1
        self.agent_sdp_version = 1
        mode = self.config.dtmf.inband
        self.merger = DtmfMerger(inband_mode="auto" if mode == "off" else mode)  # type: ignore[arg-type]
        self.settled = asyncio.Event()  # the customer answered or refused, or the call over
        self.done = asyncio.Event()  # the call is over
        self._customer_timer: session_timer.SessionTimer | None = None
        self.listed = False  # call_started told to the assist service
        self._play_generation = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- registration (as `Call`'s: the server claims the Call-ID when the INVITE arrives) ----

    def register(self) -> None:
        self.services.calls[self.sip_call_id] = self
        self.ua.dialogs[self.sip_call_id] = self.customer_leg

    def unregister(self) -> None:
        if self.ua.dialogs.get(self.sip_call_id) is self.customer_leg:
            del self.ua.dialogs[self.sip_call_id]
        if self.agent is not None and self.ua.dialogs.get(self.agent.invite.call_id) is (
            self.agent_leg
        ):
            del self.ua.dialogs[self.agent.invite.call_id]
        if self.services.calls.get(self.sip_call_id) is self:
            del self.services.calls[self.sip_call_id]

    # ---- the story ----------------------------------------------------------------------------

    async def run(self) -> None:
        self.register()
        CALLS_ACTIVE.inc()
        try:
            await self._run()
        except Exception:
            log.exception("assisted call failed", extra={"call_id": self.call_id})
            if self.customer.state == "early":
                self._reject(500, "internal error")
            self._end_both()
        finally:
            self._cleanup()

    async def _run(self) -> None:
        # 1. The customer's offer, the session timer and the agent target: refused at once.
        try:
            offer = SessionDescription.parse(self.invite.body) if self.invite.body else None
            if offer is None:
                raise NotAcceptable("an SDP offer is required in the INVITE")
            policy = offer_policy(self.config, offer, self.source)
            self.customer_neg = negotiate(offer, srtp_policy=policy)
        except (SdpError, NotAcceptable) as exc:
            self._reject(488, getattr(exc, "detail", None) or str(exc))
            return
        loop = asyncio.get_running_loop()
        timer = session_timer.negotiate(self.invite.headers, loop.time())
        if isinstance(timer, session_timer.TooSmall):
            self._reject(422, "session interval too small", timer.response_headers())
            return
        try:
            target = agent_target(self.invite, self.config)
        except SipSyntaxError:
            self._reject(400, "X-SPG-Agent or x-spg-agent is not a SIP URI")
            return
        if target is None:
            self._reject(480, "no agent to bridge to (assist.agent_uri is empty)")
            return
        self.agent_uri = target

        # 2. Media ports for both legs, then the agent's INVITE.
        try:
            self.customer_port = await self.services.media.open()
            self.agent_port = await self.services.media.open()
            destination = await self.ua.resolve(SipUri.parse(target))
        except Exception as exc:
            self._reject(503, f"cannot reach the agent: {type(exc).__name__}")
            return
        if self.customer.ended:  # cancelled meanwhile
            return
        self._call_agent(target, destination, timer)
        self.phase = "ringing"

        # 3. The agent answers or fails (or the customer goes), then until one side ends.
        try:
            # unanswered this long: cancelled, 480 to the customer
            async with asyncio.timeout(self.config.assist.ring_timeout_s):
                await self.settled.wait()
        except TimeoutError:
            log.info("agent did not answer", extra={"call_id": self.call_id})
            assert self.agent is not None and self.agent_leg is not None
            self.agent.cancel(loop.time())
            self.agent_leg.pump()
            self._reject(480, "the agent did not answer")
        await self.done.wait()

    def _call_agent(
        self,
        target: str,
        destination: Address,
        timer: session_timer.SessionTimer | None,
    ) -> None:
        assert self.agent_port is not None
        self._customer_timer = timer
        transport = destination.transport
        srtp_policy = self.config.rtp.srtp
        secure = transport == "tls" or srtp_policy == "required"
        if srtp_policy != "off" and secure:
            self._offered_keys = sdes.offer_attributes()
        body = build_offer(
            local_address=self.config.rtp.address,
            local_port=self.agent_port,
            session_id=self.session_id,
            version=self.agent_sdp_version,
            crypto_lines=self._offered_keys,
        )
        headers = [("X-SPG-Assist-Call", self.call_id)]
        if self.transaction_hint:
            headers.append(("X-SPG-Transaction", self.transaction_hint))
        request_uri = SipUri.parse(target)
        request_uri.headers.clear()
        from_ = NameAddr.parse(self.invite.headers.get("From") or "<sip:anonymous@invalid>")
        from_.params.pop("tag", None)
        invite = new_invite(
            request_uri=str(request_uri),
            from_=str(from_),
            to=f"<{request_uri}>",
            call_id=new_call_id(self.config.sip.public_host),
            contact=self.ua.contact(transport, secure=request_uri.scheme == "sips"),
            via_transport=transport,
            via_sent_by=self.ua.sent_by(transport),
            body=body,
            headers=headers,
            local_tag=new_tag(),
        )
        self.agent = InviteSession.as_uac(
            invite,
            via_transport=transport,
            via_sent_by=self.ua.sent_by(transport),
            answer_offer=self._agent_offer,
            public_host=self.config.sip.public_host,
        )
        self.agent_leg = SessionLeg(self.ua, self.agent, destination, self._agent_event)
        self.ua.dialogs[invite.call_id] = self.agent_leg
        log.info("calling the agent", extra={"call_id": self.call_id})
        self.agent.start()
        self.agent_leg.pump()

    # ---- the agent's leg ----------------------------------------------------------------------

    def _agent_event(self, event: Event) -> None:
        now = asyncio.get_running_loop().time()
        if isinstance(event, Progress):
            status = event.response.status
            self.customer.provisional(status if status in RELAYED_PROVISIONAL else 180)
            self.customer_leg.pump()
        elif isinstance(event, Established):
            try:
                self._agent_answered(event, now)
            except Exception:  # a bug of ours: neither leg may be left hanging
                log.exception("assisted call failed", extra={"call_id": self.call_id})
                if self.customer.state == "early":
                    self._reject(500, "internal error")
                self._end_both()
        elif isinstance(event, Failed):
            status = event.status
            if status < 400:
                status = 480  # a redirect: not followed
            elif status in (401, 407):
                status = 403  # a challenge: the node has no credentials to answer it
            log.info("agent leg failed: %d", event.status, extra={"call_id": self.call_id})
            if self.customer.state == "early":
                self._reject(status, f"agent leg: {event.status} {event.reason}"[:100])
            self._finish()
        elif isinstance(event, Ended):
            log.info("agent leg ended (%s)", event.reason, extra={"call_id": self.call_id})
            self._end_both()
        elif isinstance(event, InDialogRequest):
            pass  # the agent's INFO / NOTIFY: answered, never relayed to the customer

    def _agent_answered(self, event: Established, now: float) -> None:
        assert self.agent is not None and self.agent_leg is not None
        try:
            answer = SessionDescription.parse(event.response.body)
            neg = negotiate(answer, srtp_policy="required" if self._offered_keys else "off")
            srtp = None
            if self._offered_keys:
                srtp = accept_answer(self._offered_keys, [c.value() for c in neg.crypto])
        except (SdpError, NotAcceptable, ValueError) as exc:
            detail = getattr(exc, "detail", None) or str(exc)
            log.warning("agent's answer unusable: %s", detail, extra={"call_id": self.call_id})
            self.agent.bye()
            self.agent_leg.pump()
            self._reject(488, f"agent's answer unusable: {detail}"[:100])
            self._finish()
            return
        if self.customer.state != "early":  # the customer went meanwhile
            self.agent.bye()
            self.agent_leg.pump()
            return
        self.agent_neg = neg
        self.agent_media = MediaSession(
            codec=neg.codec,
            remote=(neg.remote_address, neg.remote_port),
            dtmf_payload_type=neg.dtmf_payload_type,
            ptime_ms=neg.ptime,
            rtcp_remote=neg.remote_rtcp,
            rtcp_mux=neg.rtcp_mux,
            media_sources=self.config.rtp.media_sources,
        )
        self.agent_media.srtp = srtp
        self.agent_media.hold = neg.on_hold
        cneg = self.customer_neg
        assert cneg is not None and self.customer_port is not None and self.agent_port is not None
        self.customer_media = MediaSession(
            codec=cneg.codec,
            remote=(cneg.remote_address, cneg.remote_port),
            dtmf_payload_type=cneg.dtmf_payload_type,
            ptime_ms=cneg.ptime,
            on_dtmf=self._on_dtmf,
            on_playback_done=self._on_playback_done,
            inband=True,
            rtcp_remote=cneg.remote_rtcp,
            rtcp_mux=cneg.rtcp_mux,
            media_sources=self.config.rtp.media_sources,
        )
        renegotiate_media(self.customer_media, cneg)  # hold and SRTP keys of the offer
        engine = self.services.media
        engine.attach(self.customer_port, self.customer_media)
        engine.attach(self.agent_port, self.agent_media)
        engine.bridge(self.customer_port, self.agent_port, self.config.assist.mask)
        secure = self.invite.uri.lower().startswith("sips:")
        self.customer.via_sent_by = self.ua.sent_by(self.source.transport)
        self.customer.accept(
            self._customer_answer(),
            now,
            contact=self.ua.contact(self.source.transport, secure=secure),
            timer=self._customer_timer,
        )
        self.customer_leg.pump()
        self.phase = "bridged"
        log.info("agent answered: call bridged", extra={"call_id": self.call_id})
        self.settled.set()
        if self.assist is not None:
            self.assist.call_started(self)
            self.listed = True

    def _agent_offer(self, request: SipRequest) -> bytes | Refusal:
        """The agent's re-INVITE / UPDATE (hold, codec change, re-keying): its leg only."""
        if self.agent_media is None or self.agent_leg is None:
            return Refusal(491, "the call is not set up yet")
        try:
            offer = SessionDescription.parse(request.body)
            policy = offer_policy(self.config, offer, self.agent_leg.last_source, self.agent_neg)
            neg = negotiate(offer, srtp_policy=policy, previous=self.agent_neg)
        except (SdpError, NotAcceptable) as exc:
            return Refusal(488, getattr(exc, "detail", None) or str(exc))
        self.agent_neg = neg
        renegotiate_media(self.agent_media, neg)
        self.agent_sdp_version += 1
        assert self.agent_port is not None
        return build_answer(
            neg,
            local_address=self.config.rtp.address,
            local_port=self.agent_port,
            session_id=self.session_id,
            version=self.agent_sdp_version,
        )

    # ---- the customer's leg -------------------------------------------------------------------

    def _customer_event(self, event: Event) -> None:
        now = asyncio.get_running_loop().time()
        if isinstance(event, Cancelled):
            log.info("customer cancelled", extra={"call_id": self.call_id})
            if self.agent is not None and self.agent_leg is not None:
                self.agent.cancel(now)
                self.agent_leg.pump()
            self._finish()
        elif isinstance(event, Ended):
            log.info("customer leg ended (%s)", event.reason, extra={"call_id": self.call_id})
            self._end_both()
        elif isinstance(event, InDialogRequest) and event.request.method == "INFO":
            request = event.request
            parsed = parse_info_dtmf(request.headers.get("Content-Type") or "", request.body)
            if parsed is not None:  # answered 200 by the session; never relayed to the agent
                key, duration_ms = parsed
                self._on_dtmf(DtmfEvent(key, "start", now, duration_ms, "info"))
        elif isinstance(event, Acked):
            pass

    def _customer_offer(self, request: SipRequest) -> bytes | Refusal:
        """The customer's re-INVITE / UPDATE: answered on its leg, the agent's untouched."""
        if self.customer_media is None:
            return Refusal(491, "the call is not set up yet")
        try:
            offer = SessionDescription.parse(request.body)
            policy = offer_policy(
                self.config, offer, self.customer_leg.last_source, self.customer_neg
            )
            neg = negotiate(offer, srtp_policy=policy, previous=self.customer_neg)
        except (SdpError, NotAcceptable) as exc:
            return Refusal(488, getattr(exc, "detail", None) or str(exc))
        self.customer_neg = neg
        renegotiate_media(self.customer_media, neg)
        self.customer_sdp_version += 1
        return self._customer_answer()

    def _customer_answer(self) -> bytes:
        assert self.customer_neg is not None and self.customer_port is not None
        return build_answer(
            self.customer_neg,
            local_address=self.config.rtp.address,
            local_port=self.customer_port,
            session_id=self.session_id,
            version=self.customer_sdp_version,
        )

    # ---- keys and prompts (AssistCallHandle) --------------------------------------------------

    def _on_dtmf(self, event: DtmfEvent) -> None:
        digit = self.merger.feed(event)
        if digit is not None and self.assist is not None and self.listed:
            self.assist.digit(self.call_id, digit, asyncio.get_running_loop().time())

    def play(self, play: Play) -> None:
        """A prompt to the customer only (the agent hears nothing of it)."""
        self._play_generation += 1
        if self.customer_media is not None:
            self.customer_media.stop()
        self._spawn(self._render_and_play(play, self._play_generation))

    def stop_playback(self) -> None:
        self._play_generation += 1
        if self.customer_media is not None:
            self.customer_media.stop()

    async def _render_and_play(self, play: Play, generation: int) -> None:
        await play_prompt(
            self.services, play, self.language, self.call_id,
            lambda: self.customer_media if generation == self._play_generation else None,
        )  # fmt: skip

    def _on_playback_done(self) -> None:
        if self.assist is not None and self.listed:
            self.assist.prompt_done(self.call_id, asyncio.get_running_loop().time())

    # ---- the end ------------------------------------------------------------------------------

    def _reject(
        self, status: int, detail: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        log.info("refusing assisted call: %d %s", status, detail, extra={"call_id": self.call_id})
        self.customer.reject(
            status,
            headers=[("Warning", f'399 {self.config.sip.public_host} "{detail[:120]}"'),
                     *(headers or [])],
        )  # fmt: skip
        self.customer_leg.pump()
        CALLS_REJECTED_TOTAL.inc(status=str(status))
        self._finish()

    def _end_both(self) -> None:
        """BYE on whichever leg is still up (the other one ended, or we end the call)."""
        for session, leg in ((self.customer, self.customer_leg), (self.agent, self.agent_leg)):
            if session is None or leg is None:
                continue
            if session.answered and not session.ended:
                session.bye()
            elif session.role == "uac" and session.state == "early":
                session.cancel(asyncio.get_running_loop().time())
            elif session.role == "uas" and session.state == "early":
                session.reject(480)
            leg.pump()
        self._finish()

    def _finish(self) -> None:
        if self.customer_port is not None:
            self.services.media.unbridge(self.customer_port)
        if self.customer_media is not None:
            self.customer_media.stop()
        self.phase = "ended"
        self.settled.set()
        self.done.set()

    def _cleanup(self) -> None:
        CALLS_ACTIVE.dec()
        for leg in (self.customer_leg, self.agent_leg):
            if leg is not None:
                leg.close()
        for task in self._tasks:
            task.cancel()
        for port in (self.customer_port, self.agent_port):
            if port is not None:
                self.services.media.close(port)
        log.info(
            "customer dtmf",
            extra={"call_id": self.call_id, **dtmf_counts(self.merger, self.customer_media)},
        )
        if self.assist is not None and self.listed:
            self.assist.call_ended(self.call_id, asyncio.get_running_loop().time())
        self.unregister()
        release_callbacks(
            [self.customer_leg, self.agent_leg],
            [self.customer, self.agent],
            [self.customer_media, self.agent_media],
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def summary(self) -> dict[str, Any]:
        """For the admin /calls page."""
        return {
            "call_id": self.sip_call_id,
            "assist_call": self.call_id,
            "mode": "assist",
            "transaction": self.transaction_hint,
            "phase": self.phase,
            "language": self.language,
            "started_at": self.started_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "signalling": self.source.transport,
            "agent_signalling": self.agent_leg.peer.transport if self.agent_leg else None,
            "media": {
                "customer_srtp": _suite(self.customer_media),
                "agent_srtp": _suite(self.agent_media),
            },
        }


def _suite(media: MediaSession | None) -> str | None:
    return media.srtp.suite.name if media is not None and media.srtp is not None else None


def _uri_of(name_addr: str) -> str:
    try:
        return str(NameAddr.parse(name_addr).uri)
    except SipSyntaxError:
        return ""
