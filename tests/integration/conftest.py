"""Fixtures for the integration tests that drive real peers (SIPp, Kamailio, spg-media).

The fixtures skip (never fail) when a peer is missing: `sipp`, `kamailio`, or root
(SIPp's `play_pcap_audio` needs CAP_NET_RAW). See harness.py for the pieces themselves.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness


def _need_sip_tools() -> None:
    if harness.SIPP is None:
        pytest.skip("sipp (Debian sip-tester) is not installed")
    if harness.KAMAILIO is None:
        pytest.skip("kamailio is not installed")
    if os.geteuid() != 0:
        pytest.skip("SIPp play_pcap_audio needs root (CAP_NET_RAW)")


@pytest.fixture(scope="module")
def sip_tools() -> None:
    """Skip the test when sipp or kamailio cannot run here."""
    _need_sip_tools()


KamailioFactory = Callable[..., harness.KamailioProxy]


@pytest.fixture(scope="module")
def kamailio_factory(
    sip_tools: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KamailioFactory]:
    """Start Kamailio proxies (stopped at the end of the module): factory(nodes, **kwargs)."""
    started: list[harness.KamailioProxy] = []

    def start(
        nodes: list[str | tuple[str, int]],
        defines: dict[str, str] | None = None,
        probe_source: str = harness.HOST,
    ) -> harness.KamailioProxy:
        workdir = tmp_path_factory.mktemp("kamailio")
        proxy = harness.KamailioProxy(workdir, nodes, defines=defines, probe_source=probe_source)
        proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def sipp_dir(tmp_path: Path) -> Path:
    """Where this test's SIPp scenarios and traces go."""
    path = tmp_path / "sipp"
    path.mkdir()
    return path


SpgNodeFactory = Callable[..., harness.SpgNode]


@pytest.fixture(scope="module")
def spg_node_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SpgNodeFactory]:
    """Start `spg-media serve` nodes (stopped at the end of the module): factory(env=...)."""
    if not harness.spg_media_available():
        pytest.skip("spg_media.server is not importable yet (or .venv/bin/spg-media missing)")
    started: list[harness.SpgNode] = []

    def start(env: dict[str, str] | None = None) -> harness.SpgNode:
        node = harness.SpgNode(tmp_path_factory.mktemp("spg-node"), env)
        node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()
