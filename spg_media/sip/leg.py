"""The asyncio shell of one `InviteSession`: its actions carried out through the `SipUserAgent`.

`SessionLeg` feeds the session what the UA routes to its Call-ID (`on_request`, `on_ack`,
`on_cancel`, `on_ack_timeout`: it is a `DialogHandler`, or a call forwards to it), sends what
the session asks (responses, client transactions whose answers it feeds back, ACKs), runs its
one timer on the loop, and hands the session's events to `on_event`. Nothing is decided here.

Where requests go: over TCP/TLS, on the connection of the dialog (`peer`: the one the INVITE
came on, or the one ours went out on; phones behind NAT accept no other); over UDP, to the
dialog's next hop (first route, else the remote target), resolved; our first INVITE and its
CANCEL to `peer`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from spg_media.sip.invite_session import (
    Abandon,
    Event,
    InviteSession,
    Respond,
    Send,
    SendAck,
)
from spg_media.sip.message import SipRequest, SipResponse, make_response
from spg_media.sip.transaction import Address
from spg_media.sip.ua import SipUserAgent

log = logging.getLogger("spg.sip")


class SessionLeg:
    """One leg's shell; see the module docstring."""

    def __init__(
        self,
        ua: SipUserAgent,
        session: InviteSession,
        peer: Address,
        on_event: Callable[[Event], None],
    ) -> None:
        self.ua = ua
        self.session = session
        self.peer = peer
        self.on_event = on_event
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._answers: dict[SipRequest, asyncio.Future[SipResponse]] = {}
        self.last_source: Address = peer  # where the request being handled came from

    @property
    def source(self) -> Address:
        """The UA's `DialogHandler.source`: the dialog's connection stays open while it lives."""
        return self.peer

    # ---- from the UA ----------------------------------------------------------------------

    def on_request(self, request: SipRequest, source: Address) -> None:
        self.last_source = source
        self.session.receive_request(request, self._now())
        self.pump()

    def on_ack(self, ack: SipRequest) -> None:
        self.session.receive_ack(ack, self._now())
        self.pump()

    def on_cancel(self, invite: SipRequest) -> None:
        self.session.receive_cancel(self._now())
        self.pump()

    def on_ack_timeout(self) -> None:
        self.session.ack_timeout(self._now())
        self.pump()

    # ---- to the UA ------------------------------------------------------------------------

    def pump(self) -> None:
        """Carry out what the session asks, hand over its events, and set its timer."""
        while True:
            actions = self.session.take_actions()
            events = self.session.take_events()
            if not actions and not events:
                break
            for action in actions:
                if isinstance(action, Respond):
                    self.ua.respond(action.request, action.response)
                elif isinstance(action, Send):
                    self._answers[action.request] = asyncio.get_running_loop().create_future()
                    self._spawn(self._send(action.request))
                elif isinstance(action, SendAck):
                    self._spawn(self._send_ack(action.request))
                elif isinstance(action, Abandon):
                    self.ua.abandon(action.request)
            for event in events:
                try:
                    self.on_event(event)
                except Exception:
                    log.exception("session event handler failed")
        self._schedule()

    async def answer(self, request: SipRequest | None) -> SipResponse | None:
        """The final answer to a request the session sent (`request()`, `bye()`), once the
        session has taken it; None for no request (no dialog)."""
        future = self._answers.get(request) if request is not None else None
        if future is None:
            return None
        return await asyncio.shield(future)

    def close(self) -> None:
        """The call is over: no more timer; requests in flight are left to finish."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _send(self, request: SipRequest) -> None:
        session = self.session
        try:
            first = request.method == "CANCEL" or request is session.invite
            destination = self.peer if first or self.peer.reliable else None
            if destination is None:
                assert session.dialog is not None
                destination = await self.ua.resolve(session.dialog.next_hop())
            on_provisional = None
            if request is session.invite:

                def on_provisional(response: SipResponse) -> None:
                    session.response(request, response, self._now())
                    self.pump()

            response = await self.ua.request(request, destination, on_provisional)
        except (OSError, ValueError) as exc:
            log.warning("cannot send %s: %s", request.method, exc)
            response = make_response(request, 503, "Service Unavailable")
        session.response(request, response, self._now())
        self.pump()
        future = self._answers.pop(request, None)
        if future is not None and not future.done():
            future.set_result(response)

    async def _send_ack(self, ack: SipRequest) -> None:
        session = self.session
        destination = self.peer
        if not self.peer.reliable and session.dialog is not None:
            try:
                destination = await self.ua.resolve(session.dialog.next_hop())
            except (OSError, ValueError) as exc:
                log.warning("cannot send ACK: %s", exc)
                return
        self.ua.send_ack(ack, destination)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        wake = self.session.next_wake()
        if wake is not None:
            self._timer = asyncio.get_running_loop().call_at(wake, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.session.timer_due(self._now())
        self.pump()

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()
