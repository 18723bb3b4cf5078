"""The admin HTTP endpoint over a real loopback socket (uvicorn in the test's loop): routes,
masking, garbage, limits, no signal handlers of its own."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from spg_media import admin as admin_module
from spg_media.admin import AdminServer
from spg_media.observability import LOG_MASKED_TOTAL, Metrics

PAN = "4111111111111111"


class Node:
    """What the admin server is given: its own metrics, a calls list and a health flag."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.calls_total = self.metrics.counter("spg_calls_total", "Calls.", ("result",))
        self.calls: list[dict[str, Any]] = []
        self.healthy = True

    def calls_provider(self) -> list[dict[str, Any]]:
        return self.calls

    def health(self) -> bool:
        return self.healthy


def serve(scenario: Callable[[AdminServer, Node], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        node = Node()
        server = AdminServer(node.metrics, node.calls_provider, node.health, **kwargs)
        await server.start("127.0.0.1", 0)
        try:
            await asyncio.wait_for(scenario(server, node), 10)
        finally:
            await server.close()

    asyncio.run(main())


async def exchange(server: AdminServer, raw: bytes, half_close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(raw)
    await writer.drain()
    if half_close:
        writer.write_eof()
    data = await reader.read()
    writer.close()
    return data


async def get(server: AdminServer, path: str) -> tuple[int, dict[str, str], bytes]:
    raw = await exchange(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return parse(raw)


def parse(raw: bytes, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    assert headers["connection"].lower() == "close"
    if "content-length" in headers and not head_request:  # uvicorn's 400 ends with the close
        assert int(headers["content-length"]) == len(body)
    return status, headers, body


def test_port_zero_gets_a_real_port() -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        assert server.port > 0
        assert server.host == "127.0.0.1"

    serve(scenario)


def test_metrics_endpoint() -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        node.calls_total.inc(result="approved")
        status, headers, body = await get(server, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert body.decode() == (
            "# HELP spg_calls_total Calls.\n"
            "# TYPE spg_calls_total counter\n"
            'spg_calls_total{result="approved"} 1.0\n'
        )
        status, _, _ = await get(server, "/metrics?name[]=x")
        assert status == 200

    serve(scenario)


def test_healthz() -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        assert (await get(server, "/healthz"))[::2] == (200, b"ok\n")
        node.healthy = False
        status, _, _ = await get(server, "/healthz")
        assert status == 503

    serve(scenario)


def test_healthz_with_a_state_reports_it_as_json() -> None:
    """A node's admission state: 200 with its JSON while "status" is "ok", else 503."""

    async def scenario(server: AdminServer, node: Node) -> None:
        state: dict[str, Any] = {"status": "ok", "reason": None, "media_tick_lag_ms": 0.4}
        server.health = lambda: state
        status, headers, body = await get(server, "/healthz")
        assert (status, json.loads(body)) == (200, state)
        assert headers["content-type"] == "application/json"
        state = {"status": "overloaded", "reason": "lag", "media_tick_lag_ms": 31.5}
        status, _, body = await get(server, "/healthz")
        assert (status, json.loads(body)) == (503, state)

    serve(scenario)


def test_healthz_raising_is_unhealthy() -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        def broken() -> bool:
            raise RuntimeError("db down")

        server.health = broken
        assert (await get(server, "/healthz"))[0] == 503

    serve(scenario)


def test_calls_endpoint_returns_the_provider_list() -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        assert json.loads((await get(server, "/calls"))[2]) == []
        node.calls = [
            {"call_id": "c1", "phase": "card", "card": {"brand": "visa", "last4": "1111"}}
        ]
        status, headers, body = await get(server, "/calls")
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
        assert json.loads(body) == node.calls

    serve(scenario)


def test_calls_endpoint_masks_a_leaked_pan_and_counts_it() -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        class Leaky:
            def __str__(self) -> str:
                return f"card {PAN}"

        node.calls = [
            {"call_id": "c1", "oops": PAN, "digits": int(PAN), "obj": Leaky()},
            {"call_id": "c2", "spaced": "4111 1111 1111 1111"},
        ]
        before = LOG_MASKED_TOTAL.get()
        status, _, body = await get(server, "/calls")
        assert status == 200
        text = body.decode()
        assert PAN not in text
        assert "4111 1111" not in text
        calls = json.loads(body)
        assert calls[0]["oops"] == "************1111"
        assert calls[0]["digits"] == "************1111"
        assert calls[0]["obj"] == "card ************1111"
        assert calls[1]["spaced"] == "************1111"
        assert LOG_MASKED_TOTAL.get() == before + 1

    serve(scenario)


def test_calls_endpoint_keeps_call_ids_with_long_digit_runs() -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        call_id = "c1e123456789010712"  # 12+ decimal digits in a row, as random hex can be
        node.calls = [{"call_id": call_id, "phase": "card"}, {"call_id": "c2"}, {"no": "id"}]
        before = LOG_MASKED_TOTAL.get()
        status, _, body = await get(server, "/calls")
        assert status == 200 and json.loads(body) == node.calls
        assert LOG_MASKED_TOTAL.get() == before
        node.calls = [{"call_id": call_id, "oops": PAN}]
        calls = json.loads((await get(server, "/calls"))[2])
        assert calls == [{"call_id": call_id, "oops": "************1111"}]
        assert LOG_MASKED_TOTAL.get() == before + 1

    serve(scenario)


def test_calls_provider_failure_is_500_without_detail() -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        def broken() -> list[dict[str, Any]]:
            raise RuntimeError(f"leak {PAN}")

        server.calls_provider = broken
        status, _, body = await get(server, "/calls")
        assert status == 500
        assert PAN not in body.decode()
        assert (await get(server, "/healthz"))[0] == 200  # still serving

    serve(scenario)


@pytest.mark.parametrize(
    "path", ["/", "/metrics/", "/calls/1", "/healthz.html", "/METRICS", "metrics"]
)
def test_unknown_paths_are_404(path: str) -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        assert (await get(server, path))[0] == 404

    serve(scenario)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "OPTIONS", "get"])
def test_non_get_is_405(method: str) -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        raw = await exchange(
            server,
            f"{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".encode(),
        )
        status, headers, body = parse(raw, head_request=method == "HEAD")
        assert status == 405
        assert headers["allow"] == "GET"
        assert body == (b"" if method == "HEAD" else b"method not allowed\n")

    serve(scenario)


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /metrics\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"G\xffT /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET /metrics HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    ],
)
def test_garbage_gets_400(raw: bytes) -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        assert parse(await exchange(server, raw))[0] == 400
        assert (await get(server, "/healthz"))[0] == 200

    serve(scenario)


def test_bare_lf_and_http_1_0_are_accepted() -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        raw = await exchange(server, b"GET /healthz HTTP/1.0\nHost: x\n\n")
        assert parse(raw)[::2] == (200, b"ok\n")
        raw = await exchange(server, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert parse(raw)[::2] == (200, b"ok\n")

    serve(scenario)


def test_truncated_request_and_empty_connection_are_just_closed() -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        assert await exchange(server, b"GET /metrics HTTP/1.1\r\nHost:", half_close=True) == b""
        assert await exchange(server, b"", half_close=True) == b""
        assert (await get(server, "/healthz"))[0] == 200

    serve(scenario)


def test_oversized_request_is_400() -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        long_line = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        assert parse(await exchange(server, long_line))[0] == 400
        many = b"GET /metrics HTTP/1.1\r\n" + b"X-H: 1234567890\r\n" * 1000 + b"\r\n"
        assert parse(await exchange(server, many))[0] == 400
        empty_lines = b"\r\n" * 5000
        assert parse(await exchange(server, empty_lines))[0] == 400
        assert (await get(server, "/healthz"))[0] == 200

    serve(scenario)


def test_slow_client_gets_408() -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\n")  # and never the end of the head
        await writer.drain()
        assert parse(await reader.read())[0] == 408
        writer.close()

    serve(scenario, request_deadline_s=0.2)


def test_too_many_connections_get_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_module, "MAX_CONNECTIONS", 2)

    async def scenario(server: AdminServer, node: Node) -> None:
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        await asyncio.sleep(0.05)  # let the server accept them
        assert (await get(server, "/healthz"))[0] == 503
        for _, writer in idle:
            writer.close()
        await asyncio.sleep(0.05)
        assert (await get(server, "/healthz"))[0] == 200

    serve(scenario)


def test_close_ends_open_connections_and_frees_the_port() -> None:
    async def main() -> None:
        node = Node()
        server = AdminServer(node.metrics, node.calls_provider, node.health)
        await server.start("127.0.0.1", 0)
        port = server.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metr")
        await writer.drain()
        await asyncio.sleep(0.05)
        await asyncio.wait_for(server.close(), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        await server.close()  # twice is fine

    asyncio.run(main())


def test_many_requests_in_parallel() -> None:
    async def scenario(server: AdminServer, node: Node) -> None:
        results = await asyncio.gather(*(get(server, "/healthz") for _ in range(20)))
        assert all(status == 200 for status, _, _ in results)

    serve(scenario)


def test_it_leaves_the_signal_handlers_to_the_node() -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            node = Node()
            server = AdminServer(node.metrics, node.calls_provider, node.health)
            await server.start("127.0.0.1", 0)
            assert {sig: signal.getsignal(sig) for sig in before} == before
            signal.raise_signal(signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), 5)  # the node's handler got it
            assert (await get(server, "/healthz"))[0] == 200  # and the endpoint still serves
            await server.close()
            assert {sig: signal.getsignal(sig) for sig in before} == before
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    asyncio.run(main())


def test_a_port_in_use_is_an_os_error() -> None:
    async def main() -> None:
        node = Node()
        first = AdminServer(node.metrics, node.calls_provider, node.health)
        await first.start("127.0.0.1", 0)
        second = AdminServer(node.metrics, node.calls_provider, node.health)
        try:
            with pytest.raises(OSError):
                await second.start("127.0.0.1", first.port)
        finally:
            await first.close()

    asyncio.run(main())
