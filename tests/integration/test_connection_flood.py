"""2000 TCP/TLS connections held against a node while a payment call runs over UDP.

The flood, from this process: idle connections, connections sending one byte of a message head
a second, TLS handshakes stopped halfway, and connections from 127.0.0.2, outside the node's
`sip.trusted_sources`; each is opened again a second after the node closes it, for as long as
the call runs. The node (`spg-media serve`, short deadlines, `sip.max_connections` below the
flood) must approve SIPp's payment, never hold more connections than its cap, and once the
flood stops opening new ones its open file count (/proc/PID/fd) must come back to what it was
before, within the idle timeout, while this process still holds its ends.

Needs root (SIPp's pcap play), sipp and openssl; skipped otherwise.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import resource
import ssl
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from baresip import SpgTlsNode
from harness import HOST, free_port, make_pay_scenario, run_sipp

from spg_media.tlscert import CertPair, TlsCertError, make_self_signed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

STRANGER = "127.0.0.2"
KINDS = ("idle", "slow", "half-tls", "untrusted-tcp", "untrusted-tls")
CONNECTIONS = 2000
MAX_CONNECTIONS = 1000  # below the 1200 trusted ones: some are refused at the cap
IDLE_S, HEADER_S, HANDSHAKE_S = 6.0, 3.0, 2.0
CARD, EXPIRY, CVC = "4111111111111111", "1230", "123"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    try:
        return make_self_signed(tmp_path_factory.mktemp("tls"))
    except TlsCertError as exc:
        pytest.skip(f"no test certificate: {exc}")


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room in this process for the flood's sockets (the hard limit allows it here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3 * CONNECTIONS + 1024
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def client_hello() -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=HOST)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class Flood:
    """`CONNECTIONS` connections, an equal share of each kind, each reopened a second after
    the node closes it until `stop()`; counts what the node did to them."""

    def __init__(self, node: SpgTlsNode) -> None:
        self.node = node
        self.reopen = True
        self.opened: collections.Counter[str] = collections.Counter()
        self.closed_after: dict[str, list[float]] = collections.defaultdict(list)
        self.failed = 0
        self.hello = client_hello()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for n in range(CONNECTIONS):
            self.tasks.append(asyncio.ensure_future(self._hold(KINDS[n % len(KINDS)])))

    def stop(self) -> None:
        self.reopen = False

    async def _hold(self, kind: str) -> None:
        tls = kind in ("half-tls", "untrusted-tls")
        port = self.node.tls_port if tls else self.node.sip_port
        source = STRANGER if kind.startswith("untrusted") else HOST
        while True:
            try:
                reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
            except OSError:
                self.failed += 1
            else:
                self.opened[kind] += 1
                started = time.monotonic()
                with contextlib.suppress(ConnectionError, OSError):
                    await self._until_closed(kind, reader, writer)
                self.closed_after[kind].append(time.monotonic() - started)
                writer.close()
            if not self.reopen:
                return
            await asyncio.sleep(1.0)

    async def _until_closed(
        self, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if kind == "half-tls":
            writer.write(self.hello[: len(self.hello) // 2])
        elif kind == "untrusted-tls":
            writer.write(self.hello)
        elif kind == "untrusted-tcp":
            writer.write(b"OPTIONS sip:x SIP/2.0\r\n")
        head = b"OPTIONS sip:pay@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK"
        sent = 0
        while True:
            if kind == "slow":  # a byte a second, a head that never ends
                writer.write(head[sent % len(head) : sent % len(head) + 1])
                sent += 1
            try:
                data = await asyncio.wait_for(reader.read(65536), 1.0)
            except TimeoutError:
                continue
            if not data:
                return  # the node closed it
            raise AssertionError(f"{kind}: the node answered {data[:60]!r}")


def metric_values(node: SpgTlsNode) -> dict[str, float]:
    """The node's spg_sip_connections_* series from its admin endpoint."""
    with urllib.request.urlopen(f"http://{HOST}:{node.admin_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("spg_sip_connections_"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def pay_over_udp(node: SpgTlsNode, workdir: Path) -> tuple[int, str]:
    """SIPp keys a card to the node over UDP; its exit code and what it says."""
    xml = make_pay_scenario([CARD + "#", EXPIRY, CVC], workdir / "pay.xml")
    result = run_sipp(
        xml,
        f"{HOST}:{node.sip_port}",
        ["-s", "pay", "-cid_str", f"flood-{uuid.uuid4().hex[:8]}@{HOST}"],
        60,
        workdir=workdir,
        keys={"spg_transaction": f"sbx-4990-EUR-{uuid.uuid4().hex[:10]}"},
    )
    return result.returncode, result.explain()


def test_a_payment_goes_through_2000_held_connections_and_the_files_come_back(
    sip_tools: None, cert: CertPair, many_files: None, tmp_path: Path
) -> None:
    env = {
        "SPG_LOG__LEVEL": "info",
        "SPG_SIP__TRUSTED_SOURCES": f"{HOST}/32",
        "SPG_SIP__MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "SPG_SIP__IDLE_TIMEOUT_S": str(IDLE_S),
        "SPG_SIP__HEADER_TIMEOUT_S": str(HEADER_S),
        "SPG_SIP__TLS_HANDSHAKE_TIMEOUT_S": str(HANDSHAKE_S),
        "SPG_IVR__RETURN_URI": f"sip:agent@{HOST}:{free_port()}",
    }
    node = SpgTlsNode(tmp_path / "node", cert.cert, cert.key, env)
    node.start()
    try:
        assert node.proc is not None
        pid = node.proc.pid
        time.sleep(1.0)
        idle_files = open_files(pid)

        async def scenario() -> tuple[int, str, int, float, Flood]:
            flood = Flood(node)
            flood.start()
            peak = 0

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, open_files(pid))
                    await asyncio.sleep(0.2)

            sampler = asyncio.ensure_future(sample())
            await asyncio.sleep(3.0)  # the flood is at its height when the call comes
            code, explain = await asyncio.to_thread(pay_over_udp, node, tmp_path / "sipp")
            flood.stop()  # from now on, nothing new: the node must shed what is held
            stopped = time.monotonic()
            back = float("inf")
            deadline = stopped + IDLE_S + 3.0
            while time.monotonic() < deadline:
                if open_files(pid) <= idle_files:
                    back = time.monotonic() - stopped
                    break
                await asyncio.sleep(0.1)
            sampler.cancel()
            _done, pending = await asyncio.wait(flood.tasks, timeout=5)
            for task in pending:
                task.cancel()
            assert not pending, f"{len(pending)} connections still open on the flood's side"
            return code, explain, peak, back, flood

        code, explain, peak, back, flood = asyncio.run(scenario())
        metrics = metric_values(node)
    finally:
        node.stop()
    print(
        f"\nflood: {dict(flood.opened)} connections opened, {flood.failed} failed; node files: "
        f"{idle_files} idle, {peak} at most, back to idle {back:.1f} s after the flood stopped; "
        f"{metrics}"
    )
    logs = node.logs()
    assert code == 0, explain + logs[-3000:]  # approved (the scenario checks X-SPG-Result)
    assert CARD not in logs
    assert sum(flood.opened.values()) >= CONNECTIONS, flood.opened
    assert all(flood.opened[kind] for kind in KINDS), flood.opened
    # never more connections than the cap (plus the call's media and the node's own files)
    assert peak <= idle_files + MAX_CONNECTIONS + 16, (peak, idle_files)
    # back after the idle deadline, not never: the slack is for the sweep (every 0.25 s) and
    # closing 2000 sockets on a busy machine (a CI run once took 7.14 s)
    assert back <= IDLE_S + 4.0, f"open files not back to {idle_files} in time"
    # strangers were closed at accept; each kind went at its own deadline
    assert max(flood.closed_after["untrusted-tcp"]) < 1.0
    assert max(flood.closed_after["untrusted-tls"]) < 1.0
    assert max(flood.closed_after["half-tls"]) < HANDSHAKE_S + 1.5
    assert max(flood.closed_after["slow"]) < HEADER_S + 1.5
    assert max(flood.closed_after["idle"]) < IDLE_S + 1.5
    # counted: strangers and connections past the cap refused at accept, the rest timed out
    assert metrics['spg_sip_connections_refused_total{reason="untrusted"}'] >= CONNECTIONS * 2 / 5
    assert metrics['spg_sip_connections_refused_total{reason="limit"}'] > 0
    for reason in ("idle", "header", "handshake"):
        assert metrics[f'spg_sip_connections_closed_total{{reason="{reason}"}}'] > 0, reason
    assert metrics["spg_sip_connections_open"] == 0
    assert "over sip.max_connections" in logs  # and said so, a line every 10 s at most
