"""Stopping a node: calls in progress get long enough to finish an authorisation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from spg_media import server as server_module
from spg_media.config import Config
from spg_media.server import DRAIN_S, Server


@pytest.mark.parametrize(
    ("timeout_s", "reconcile_s", "expected"),
    [(2.0, 3.0, DRAIN_S), (10.0, 20.0, 35.0), (30.0, 60.0, 95.0)],
)
def test_the_drain_outlasts_an_authorisation_in_flight(
    monkeypatch: pytest.MonkeyPatch, timeout_s: float, reconcile_s: float, expected: float
) -> None:
    config = Config().with_overrides(gateway={"timeout_s": timeout_s, "reconcile_s": reconcile_s})
    waited: list[float] = []

    async def wait(tasks: set[Any], timeout: float) -> tuple[set[Any], set[Any]]:
        waited.append(timeout)
        return set(), set(tasks)

    monkeypatch.setattr(server_module.asyncio, "wait", wait)

    async def body() -> None:
        node = Server(config, prerender=False)
        call = asyncio.get_running_loop().create_task(asyncio.sleep(60))
        node.tasks.add(call)
        await node.stop()
        assert node.draining and call.cancelling()  # not finished in time: cancelled

    asyncio.run(body())
    assert waited == [expected]
