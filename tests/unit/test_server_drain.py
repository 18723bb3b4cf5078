"""Stopping a node: calls in progress get `serve --drain-s` (30 s by default) to finish, and
always long enough to finish an authorisation unless `--drain-exact` says otherwise."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from spg_media import cli
from spg_media.config import Config
from spg_media.server import DRAIN_S, Server, drain_grace_s


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

    monkeypatch.setattr(asyncio, "wait", wait)  # the asyncio the server waits with

    async def body() -> None:
        node = Server(config, prerender=False)
        call = asyncio.get_running_loop().create_task(asyncio.sleep(60))
        node.tasks.add(call)
        await node.stop()
        assert node.draining and call.cancelling()  # not finished in time: cancelled

    asyncio.run(body())
    assert waited == [expected]


@pytest.mark.parametrize(
    ("drain_s", "floor", "expected"),
    [
        (60.0, True, 60.0),  # longer than the default
        (5.0, True, 35.0),  # shorter: the authorisation floor (10 + 20 + 5) still holds
        (5.0, False, 5.0),  # --drain-exact: as asked, below the floor
        (0.0, False, 0.0),
    ],
)
def test_drain_s_replaces_the_30_s_minimum_and_keeps_the_floor_unless_exact(
    monkeypatch: pytest.MonkeyPatch, drain_s: float, floor: bool, expected: float
) -> None:
    config = Config()  # timeout_s 10, reconcile_s 20
    assert drain_grace_s(config, drain_s, floor) == expected
    node = Server(config, prerender=False, drain_s=drain_s, drain_floor=floor)
    assert node.grace_s == expected
    waited: list[float] = []

    async def wait(tasks: set[Any], timeout: float) -> tuple[set[Any], set[Any]]:
        waited.append(timeout)
        return set(tasks), set()

    monkeypatch.setattr(asyncio, "wait", wait)  # the asyncio the server waits with

    async def body() -> None:
        node.tasks.add(asyncio.get_running_loop().create_task(asyncio.sleep(0)))
        await node.stop()

    asyncio.run(body())
    assert waited == [expected]


# ---- serve --drain-s / --drain-exact -----------------------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, bool]]:
    """What `serve` would run its node with (no sockets, no hardening of the test process)."""
    calls: list[tuple[float, bool]] = []

    async def serve_async(config: Config, drain_s: float, drain_floor: bool) -> None:
        calls.append((drain_s, drain_floor))

    monkeypatch.setattr(cli, "_serve_async", serve_async)
    monkeypatch.setattr(cli, "_harden", lambda config: None)
    monkeypatch.setattr(cli, "_run", asyncio.run)
    return calls


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], (DRAIN_S, True)),
        (["--drain-s", "90"], (90.0, True)),
        (["--drain-s", "2.5", "--drain-exact"], (2.5, False)),
    ],
)
def test_serve_passes_the_drain_on(
    served: list[tuple[float, bool]], argv: list[str], expected: tuple[float, bool]
) -> None:
    assert cli.main(["serve", "--admin", "", "--workers", "1", *argv]) == 0
    assert served == [expected]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--drain-s", "soon"], ["--drain-s", "seconds"]),
        (["--drain-s", "-1"], ["--drain-s"]),
        (["--drain-s", "nan"], ["--drain-s"]),
        (["--drain-s", "inf"], ["--drain-s"]),
        (["--drain-exact"], ["--drain-exact", "--drain-s"]),
    ],
)
def test_bad_drain_arguments_are_one_line_and_exit_2(
    served: list[tuple[float, bool]],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    words: list[str],
) -> None:
    assert cli.main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spg-media: ") and err.count("\n") == 1, err
    assert all(word in err for word in words), err
    assert served == []
