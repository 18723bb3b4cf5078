"""A call's payment: its idempotency key, its journal lines, its charge state, its Call-ID
claimed on arrival, and its signed handoff used once.

A real node (UDP on loopback, in-process sandbox, no prompts rendered) supplies the shared
services; the authorisation is driven directly on a `Call`, with a scripted connector where the
answer must be chosen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from spg_media.call import AuthorizationAnswered, Call, SeenHandoffs
from spg_media.config import Config, ConfigError, load_config
from spg_media.payment import authorization as authorization_module
from spg_media.payment.connectors import PaymentCheck
from spg_media.payment.journey import Authorize, Outcome
from spg_media.payment.model import (
    AuthorizationResult,
    CardData,
    ChargeState,
    Result,
    SecretDigits,
    TransactionInfo,
)
from spg_media.payment.signing import sign_handoff
from spg_media.server import Server
from spg_media.sip.message import SipRequest, parse_message
from spg_media.sip.transaction import Address

TX = TransactionInfo("sbx-4990-EUR-t1", "sale", 4990, "EUR", "R-1", "Shop")  # type: ignore[arg-type]
SOURCE = Address("udp", "127.0.0.1", 5999)
HANDOFF_SECRET = "handoff-secret"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_config(tmp_path: Path, **gateway: Any) -> Config:
    base = load_config(None, env={})
    port = free_udp_port()
    return dataclasses.replace(
        base,
        sip=dataclasses.replace(
            base.sip, listen=(f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}")
        ),
        admin=dataclasses.replace(base.admin, listen=""),
        gateway=dataclasses.replace(base.gateway, **gateway),
        handoff=dataclasses.replace(base.handoff, signing_secret=HANDOFF_SECRET),
        log=dataclasses.replace(
            base.log,
            cdr_path=str(tmp_path / "cdr.jsonl"),
            journal_path=str(tmp_path / "journal.jsonl"),
        ),
        tts=dataclasses.replace(base.tts, cache_dir=str(tmp_path / "prompts")),
    )


@asynccontextmanager
async def running_node(config: Config) -> AsyncIterator[Server]:
    server = Server(config, prerender=False)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace_s=0)


def invite_bytes(
    call_id: str, branch: str, headers: str = "", port: int = 5080, transport: str = "UDP"
) -> bytes:
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
    )
    head = (
        f"INVITE sip:pay@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5999;branch=z9hG4bK-{branch}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:pbx@127.0.0.1>;tag=from1\r\n"
        f"To: <sip:pay@127.0.0.1:{port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:pbx@127.0.0.1:5999>\r\n"
        f"X-SPG-Transaction: {TX.token}\r\n"
        f"{headers}"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n"
    )
    return (head + sdp).encode()


def invite(call_id: str = "call-1@pbx", branch: str = "b1", headers: str = "") -> SipRequest:
    message = parse_message(invite_bytes(call_id, branch, headers))
    assert isinstance(message, SipRequest)
    return message


def a_card(number: str = "4111111111111111") -> CardData:
    return CardData(SecretDigits(number), 12, 2030, SecretDigits("739"), "visa")


def journal_lines(config: Config) -> list[dict[str, Any]]:
    path = Path(config.log.journal_path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


class ScriptedConnector:
    """Answers authorisations with `answer(key)` after `delay_s`; records what it was given and
    what the journal held when the request would have gone out."""

    def __init__(
        self,
        config: Config,
        answer: Callable[[str], AuthorizationResult],
        delay_s: float = 0.0,
    ) -> None:
        self.config = config
        self.answer = answer
        self.delay_s = delay_s
        self.keys: list[str] = []
        self.journal_at_send: list[list[dict[str, Any]]] = []

    async def lookup(self, token: str) -> TransactionInfo | None:
        return TX

    async def authorize(
        self, tx: TransactionInfo, card: CardData, attempt: int, idempotency_key: str
    ) -> AuthorizationResult:
        self.keys.append(idempotency_key)
        self.journal_at_send.append(journal_lines(self.config))
        await asyncio.sleep(self.delay_s)
        return self.answer(idempotency_key)

    async def check_payment(self, token: str, idempotency_key: str) -> PaymentCheck:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def with_node(
    tmp_path: Path, body: Callable[[Server, Config], Awaitable[Any]], **gateway: Any
) -> Any:
    config = node_config(tmp_path, **gateway)

    async def main() -> Any:
        async with running_node(config) as server:
            return await body(server, config)

    return asyncio.run(main())


async def authorize_on_a_call(server: Server, call_id: str = "call-1@pbx") -> Call:
    assert server.services is not None
    call = Call(server.services, invite(call_id), SOURCE)
    call.transaction = TX
    await call._authorize(Authorize(a_card(), 1))
    return call


def answer_in_inbox(call: Call) -> AuthorizationResult:
    """The connector's answer, as the journey would take it from the call's inbox."""
    item = call.inbox.get_nowait()
    assert isinstance(item, AuthorizationAnswered)
    return item.result


# ---- the idempotency key and the journal --------------------------------------------------------


def test_each_authorisation_has_its_own_random_key_journaled_before_it_is_sent(
    tmp_path: Path,
) -> None:
    approved = AuthorizationResult(Result.APPROVED, reference="R-OK", authorization_code="1")

    async def body(server: Server, config: Config) -> tuple[ScriptedConnector, list[Call]]:
        assert server.services is not None
        connector = ScriptedConnector(config, lambda key: approved)
        server.services.connector = connector
        # The same Call-ID twice (a peer chooses it): two different keys all the same.
        calls = [await authorize_on_a_call(server), await authorize_on_a_call(server)]
        return connector, calls

    connector, calls = with_node(tmp_path, body)
    first, second = connector.keys
    assert re.fullmatch(r"[0-9a-f]{32}", first) and re.fullmatch(r"[0-9a-f]{32}", second)
    assert first != second and "call-1@pbx" not in first
    # the open line was on disk before the request went out
    (opened,) = connector.journal_at_send[0]
    assert opened == {
        "type": "open",
        "key": first,
        "token": TX.token,
        "call_id": "call-1@pbx",
        "attempt": 1,
        "amount_minor": 4990,
        "currency": "EUR",
        "time": opened["time"],
    }
    lines = journal_lines(node_config(tmp_path))  # same paths
    closes = [line for line in lines if line["type"] == "close"]
    assert [(c["key"], c["result"], c["reference"], c["charge_state"]) for c in closes] == [
        (first, "approved", "R-OK", "charged"),
        (second, "approved", "R-OK", "charged"),
    ]
    assert all(call.charge_state is ChargeState.CHARGED for call in calls)
    # no card number or code in the journal (its random hex keys and times set aside: "739"
    # turns up in one key of a few hundred)
    kept = json.dumps([{k: v for k, v in x.items() if k not in ("key", "time")} for x in lines])
    assert "4111" not in kept and "739" not in kept


def test_an_unknown_charge_leaves_the_journal_entry_open_and_the_record_says_so(
    tmp_path: Path,
) -> None:
    unknown = AuthorizationResult(Result.ERROR, detail="timed out", charge_unknown=True)

    async def body(server: Server, config: Config) -> AuthorizationResult:
        assert server.services is not None
        server.services.connector = ScriptedConnector(config, lambda key: unknown)
        call = await authorize_on_a_call(server)
        result = answer_in_inbox(call)
        call._record(Outcome(Result.ERROR, brand="visa", last4="1111"))
        return result

    result = with_node(tmp_path, body)
    assert result.charge_state is ChargeState.UNKNOWN
    config = node_config(tmp_path)
    assert [line["type"] for line in journal_lines(config)] == ["open"]
    from spg_media.payment.journal import PaymentJournal

    assert len(PaymentJournal(config.log.journal_path).open_entries()) == 1
    (cdr,) = [json.loads(line) for line in Path(config.log.cdr_path).read_text().splitlines()]
    assert (cdr["result"], cdr["charge_state"]) == ("error", "unknown")


@pytest.mark.parametrize(
    ("result", "charge_state"),
    [
        (AuthorizationResult(Result.DECLINED, reference="R-NO"), "not-charged"),
        (AuthorizationResult(Result.ERROR, detail="HTTP 400"), "not-charged"),
        (AuthorizationResult(Result.APPROVED, reference="R-OK"), "charged"),
    ],
)
def test_the_record_carries_the_charge_state_of_the_authorisation(
    tmp_path: Path, result: AuthorizationResult, charge_state: str
) -> None:
    async def body(server: Server, config: Config) -> None:
        assert server.services is not None
        server.services.connector = ScriptedConnector(config, lambda key: result)
        call = await authorize_on_a_call(server)
        call._record(Outcome(result.result, reference=result.reference))

    with_node(tmp_path, body)
    cdr = json.loads(Path(tmp_path / "cdr.jsonl").read_text())
    assert cdr["charge_state"] == charge_state
    (close,) = [line for line in journal_lines(node_config(tmp_path)) if line["type"] == "close"]
    assert close["charge_state"] == charge_state


def test_a_call_without_an_authorisation_records_not_charged(tmp_path: Path) -> None:
    async def body(server: Server, config: Config) -> None:
        assert server.services is not None
        Call(server.services, invite(), SOURCE)._record(Outcome(Result.CANCELLED))

    with_node(tmp_path, body)
    assert json.loads((tmp_path / "cdr.jsonl").read_text())["charge_state"] == "not-charged"


def test_no_journal_line_no_request(tmp_path: Path) -> None:
    async def body(server: Server, config: Config) -> tuple[ScriptedConnector, Any, Call]:
        assert server.services is not None and server.services.journal is not None
        connector = ScriptedConnector(config, lambda key: AuthorizationResult(Result.APPROVED))
        server.services.connector = connector
        server.services.journal.path = tmp_path  # a directory: the line cannot be written
        call = await authorize_on_a_call(server)
        return connector, answer_in_inbox(call), call

    connector, result, call = with_node(tmp_path, body)
    assert connector.keys == []  # never sent
    assert (result.result, result.charge_state) == (Result.ERROR, ChargeState.NOT_CHARGED)
    assert call.charge_state is ChargeState.NOT_CHARGED


def test_the_calls_bound_covers_the_timeout_and_the_reconciliation_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connector may take its timeout plus its whole reconciliation window: its answer
    # must still count (a charge found late is approved, not cut off as an error).
    monkeypatch.setattr(authorization_module, "AUTHORIZATION_GRACE_S", 0.1)
    approved = AuthorizationResult(Result.APPROVED, reference="R-LATE")

    async def body(server: Server, config: Config) -> AuthorizationResult:
        assert server.services is not None
        server.services.connector = ScriptedConnector(config, lambda key: approved, 0.6)
        call = await authorize_on_a_call(server)
        result = answer_in_inbox(call)
        return result

    result = with_node(tmp_path, body, timeout_s=0.2, reconcile_s=0.6)
    assert result.result is Result.APPROVED


def test_a_connector_that_never_answers_is_cut_off_with_the_charge_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(authorization_module, "AUTHORIZATION_GRACE_S", 0.1)

    async def body(server: Server, config: Config) -> tuple[AuthorizationResult, float]:
        assert server.services is not None
        never = AuthorizationResult(Result.APPROVED)
        server.services.connector = ScriptedConnector(config, lambda key: never, 30)
        started = time.monotonic()
        call = await authorize_on_a_call(server)
        result = answer_in_inbox(call)
        return result, time.monotonic() - started

    result, elapsed = with_node(tmp_path, body, timeout_s=0.1, reconcile_s=0.2)
    assert (result.result, result.charge_state) == (Result.ERROR, ChargeState.UNKNOWN)
    assert 0.4 <= elapsed < 2
    assert [line["type"] for line in journal_lines(node_config(tmp_path))] == ["open"]


def test_the_node_refuses_to_start_without_a_writable_journal(tmp_path: Path) -> None:
    config = node_config(tmp_path)
    config = dataclasses.replace(config, log=dataclasses.replace(config.log, journal_path="/"))
    with pytest.raises(ConfigError, match=r"log\.journal_path"):
        asyncio.run(Server(config, prerender=False).start())


# ---- a Call-ID is claimed when its INVITE arrives ---------------------------------------------


def sent_statuses(sent: list[bytes]) -> list[int]:
    return [int(data.split(b" ", 2)[1]) for data in sent if data.startswith(b"SIP/2.0 ")]


def test_two_invites_with_one_call_id_in_one_read_start_one_call(tmp_path: Path) -> None:
    async def body(server: Server, config: Config) -> tuple[list[int], int, list[str]]:
        services = server.services
        assert services is not None
        sent: list[bytes] = []
        services.ua._send = lambda data, address: sent.append(data)  # type: ignore[method-assign]
        call_id = f"{uuid.uuid4().hex}@pbx"
        # What one TCP read or two back-to-back datagrams hand the UA: both before any task runs.
        services.ua.on_bytes(invite_bytes(call_id, "first"), SOURCE)
        services.ua.on_bytes(invite_bytes(call_id, "second"), SOURCE)
        started = len(server.tasks)
        return sent_statuses(sent), started, list(services.calls)

    statuses, started, calls = with_node(tmp_path, body)
    assert statuses.count(482) == 1
    assert started == 1 and len(calls) == 1


def test_two_invites_with_one_call_id_in_one_tcp_segment_start_one_call(tmp_path: Path) -> None:
    async def body(server: Server, config: Config) -> tuple[bytes, int]:
        services = server.services
        assert services is not None
        port = int(config.sip.listen[1].rsplit(":", 1)[1])
        call_id = f"{uuid.uuid4().hex}@pbx"
        both = b"".join(
            invite_bytes(call_id, branch, port=port, transport="TCP") for branch in ("1", "2")
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(both)  # one segment: one read on the node
        await writer.drain()
        received = b""
        async with asyncio.timeout(5):
            while b"482" not in received:
                received += await reader.read(65536)
        await asyncio.sleep(0.2)
        calls = len(services.calls)
        writer.close()
        return received, calls

    received, calls = with_node(tmp_path, body)
    assert b"SIP/2.0 482" in received
    assert calls == 1


def test_a_call_id_is_free_again_once_its_call_is_over(tmp_path: Path) -> None:
    async def body(server: Server, config: Config) -> tuple[bool, bool]:
        assert server.services is not None
        services = server.services
        services.ua._send = lambda data, address: None  # type: ignore[method-assign]
        services.ua.on_bytes(invite_bytes("again@pbx", "first"), SOURCE)
        claimed = "again@pbx" in services.ua.dialogs
        for task in list(server.tasks):
            task.cancel()
        await asyncio.sleep(0.05)
        return claimed, "again@pbx" in services.ua.dialogs

    assert with_node(tmp_path, body) == (True, False)


# ---- a signed handoff opens one call ----------------------------------------------------------


def signed_headers(call_id: str, t: int | None = None, return_to: str | None = None) -> str:
    stamp = int(time.time()) if t is None else t
    signature = sign_handoff(HANDOFF_SECRET, stamp, call_id, TX.token, return_to, None)
    extra = f"X-SPG-Return-To: {return_to}\r\n" if return_to else ""
    return f"X-SPG-Signature: {signature}\r\n{extra}"


def test_a_signed_handoff_cannot_be_replayed_on_another_invite(tmp_path: Path) -> None:
    async def body(server: Server, config: Config) -> list[Result | None]:
        assert server.services is not None
        services = server.services
        headers = signed_headers("signed@pbx")
        checks = []

        def check(branch: str, headers: str) -> Result | None:
            return Call(services, invite("signed@pbx", branch, headers), SOURCE)._check_handoff()

        checks = [check(branch, headers) for branch in ("first", "replayed-1", "replayed-2")]
        # A new signature (another t) for the same call is a new handoff.
        checks.append(check("fresh", signed_headers("signed@pbx", int(time.time()) - 1)))
        # Another formatting of the same signature is the same handoff.
        checks.append(check("spaced", headers.replace(",v1=", " , v1=")))
        return checks

    assert with_node(tmp_path, body) == [
        None,
        Result.INVALID_HANDOFF,
        Result.INVALID_HANDOFF,
        None,
        Result.INVALID_HANDOFF,
    ]


def test_a_replayed_handoff_is_not_trusted_to_return_the_caller(tmp_path: Path) -> None:
    async def body(server: Server, config: Config) -> list[bool]:
        assert server.services is not None
        headers = signed_headers("ret@pbx", return_to="sip:agent@127.0.0.1")
        calls = [Call(server.services, invite("ret@pbx", b, headers), SOURCE) for b in "ab"]
        for call in calls:
            call._check_handoff()
        return [call.return_to_trusted for call in calls]

    assert with_node(tmp_path, body) == [True, False]


def test_seen_handoffs_expire_with_their_signature_and_stay_bounded() -> None:
    seen = SeenHandoffs(limit=3)
    assert seen.first_use(b"a", expires_at=100.0, now=0.0)
    assert not seen.first_use(b"a", expires_at=100.0, now=99.0)
    assert seen.first_use(b"a", expires_at=300.0, now=100.5)  # expired: the signature too
    for name in (b"b", b"c", b"d", b"e"):
        assert seen.first_use(name, expires_at=200.0, now=101.0)
    assert len(seen) == 3
    assert not seen.first_use(b"e", expires_at=200.0, now=101.0)
