"""`spg-media reconcile` settles the journal's open entries against the platform; `serve` warns
once when its connector is the sandbox.

The platform is a `SandboxApp` reached in-process (make_connector is swapped for a connector over
httpx's ASGI transport), prepared with the charges each case needs.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spg_media import cli
from spg_media.cli import main
from spg_media.payment import connectors
from spg_media.payment.connectors import HttpConnector
from spg_media.payment.journal import JournalEntry, PaymentJournal, utc_now_iso
from spg_media.payment.model import ChargeState
from spg_media.payment.sandbox import SandboxApp

SECRET = "gateway-secret"
OLD = "2020-01-01T00:00:00.000Z"
CARD = {"number": "4111111111111111", "exp_month": 12, "exp_year": 2030, "cvc": "739"}


def write_config(tmp_path: Path, connector: str = "http", url: str = "http://127.0.0.1:9") -> Path:
    path = tmp_path / "spg.toml"
    path.write_text(
        f'[gateway]\nconnector = "{connector}"\nurl = "{url}"\nsecret = "{SECRET}"\n'
        "timeout_s = 2\nreconcile_s = 3\n"
        f'[log]\njournal_path = "{tmp_path / "journal.jsonl"}"\n'
        f'cdr_path = "{tmp_path / "cdr.jsonl"}"\n'
    )
    return path


def entry(key: str, token: str, time: str = OLD) -> JournalEntry:
    return JournalEntry(key, token, f"call-{key}@pbx", 1, 100, "EUR", time)


@pytest.fixture
def platform(monkeypatch: pytest.MonkeyPatch) -> Iterator[SandboxApp]:
    """The sandbox the reconcile command talks to."""
    app = SandboxApp(secret=SECRET)

    def make(kind: str, url: str, secret: str, timeout_s: float, reconcile_s: float) -> Any:
        assert kind == "http"
        transport = httpx.ASGITransport(app=app)
        return HttpConnector(url, secret, timeout_s, transport=transport, reconcile_s=reconcile_s)

    monkeypatch.setattr(connectors, "make_connector", make)
    yield app


def pay(app: SandboxApp, token: str, key: str, number: str = "4111111111111111") -> None:
    async def main() -> None:
        from spg_media.payment.signing import sign

        body = json.dumps({"card": {**CARD, "number": number}, "attempt": 1}).encode()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sandbox"
        ) as client:
            await client.post(
                f"/v1/transactions/{token}/authorize",
                content=body,
                headers={
                    "Idempotency-Key": key,
                    "X-SPG-Signature": sign(SECRET, body, int(datetime.datetime.now().timestamp())),
                },
            )

    asyncio.run(main())


def reconcile(
    capsys: pytest.CaptureFixture[str], config: Path
) -> tuple[int, list[dict[str, Any]], str]:
    code = main(["reconcile", "-c", str(config)])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_each_open_entry_is_settled_or_left_open_with_its_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, platform: SandboxApp
) -> None:
    config = write_config(tmp_path)
    journal = PaymentJournal(tmp_path / "journal.jsonl")
    pay(platform, "sbx-100-EUR-a", "key-a")
    entries = [
        entry("key-a", "sbx-100-EUR-a"),  # paid under its key: charged
        entry("key-b", "sbx-100-EUR-a"),  # the same token, paid under another key
        entry("key-c", "sbx-100-EUR-c"),  # pending, and long ago: never charged
        entry("key-d", "sbx-100-EUR-d", utc_now_iso()),  # pending, just now: may be in flight
        entry("key-e", "unknown-token"),  # the platform does not know it: cannot tell
        entry("key-f", "sbx-100-EUR-expired-f"),
        entry("key-g", "sbx-100-EUR-g"),  # closed by the node already: not listed
    ]
    for item in entries:
        journal.begin(item)
    journal.settle("key-g", "sbx-100-EUR-g", "declined", "R", ChargeState.NOT_CHARGED)

    code, reports, err = reconcile(capsys, config)
    assert code == 1 and "4111" not in err
    by_key = {report["key"]: report for report in reports}
    assert list(by_key) == ["key-a", "key-b", "key-c", "key-d", "key-e", "key-f"]
    states = {key: (r["charge_state"], r["settled"]) for key, r in by_key.items()}
    assert states == {
        "key-a": ("charged", True),
        "key-b": ("not-charged", True),
        "key-c": ("not-charged", True),
        "key-d": ("unknown", False),
        "key-e": ("unknown", False),
        "key-f": ("not-charged", True),
    }
    assert by_key["key-a"]["reference"] == platform.charges[0].reference
    assert by_key["key-b"]["detail"] == "paid by another authorisation"
    assert "may still be processing" in by_key["key-d"]["detail"]
    assert "HTTP 404" in by_key["key-e"]["detail"]
    assert by_key["key-a"]["token"] == "sbx-100-EUR-a" and by_key["key-a"]["call_id"]
    assert "4111" not in json.dumps(reports) and "739" not in json.dumps(reports)

    closes = [
        json.loads(line)
        for line in (tmp_path / "journal.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "close" and json.loads(line)["by"] == "reconcile"
    ]
    assert [(c["key"], c["charge_state"]) for c in closes] == [
        ("key-a", "charged"),
        ("key-b", "not-charged"),
        ("key-c", "not-charged"),
        ("key-f", "not-charged"),
    ]
    assert len(platform.charges) == 1  # asking never charges

    # Run again: only what stayed open. Once the platform charges d under its key, it settles.
    pay(platform, "sbx-100-EUR-d", "key-d")
    code, reports, _ = reconcile(capsys, config)
    assert code == 1
    assert [(r["key"], r["charge_state"], r["settled"]) for r in reports] == [
        ("key-d", "charged", True),
        ("key-e", "unknown", False),
    ]


def test_all_settled_is_exit_0_and_nothing_open_prints_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, platform: SandboxApp
) -> None:
    config = write_config(tmp_path)
    assert reconcile(capsys, config)[:2] == (0, [])  # no journal yet
    pay(platform, "sbx-100-EUR-z", "key-z")
    PaymentJournal(tmp_path / "journal.jsonl").begin(entry("key-z", "sbx-100-EUR-z"))
    code, reports, _ = reconcile(capsys, config)
    assert (code, [r["charge_state"] for r in reports]) == (0, ["charged"])
    assert reconcile(capsys, config)[:2] == (0, [])


def test_an_unreachable_platform_leaves_every_entry_open(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = write_config(tmp_path, url=f"http://127.0.0.1:{port}")
    PaymentJournal(tmp_path / "journal.jsonl").begin(entry("key-u", "sbx-100-EUR-u"))
    code, reports, _ = reconcile(capsys, config)
    assert code == 1
    (report,) = reports
    assert (report["settled"], report["charge_state"]) == (False, "unknown")
    assert report["detail"] == "cannot tell: lookup failed: ConnectError"
    assert len(PaymentJournal(tmp_path / "journal.jsonl").open_entries()) == 1


def test_the_sandbox_connector_is_refused_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    PaymentJournal(tmp_path / "journal.jsonl").begin(entry("key-s", "sbx-100-EUR-s"))
    code = main(["reconcile", "-c", str(write_config(tmp_path, connector="sandbox", url=""))])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("spg-media: reconcile:") and err.count("\n") == 1
    assert "sandbox" in err and "http" in err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["reconcile", "-c", "/nonexistent/spg.toml"], ["/nonexistent/spg.toml"]),
        (["reconcile", "--frob"], ["unrecognized"]),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]
) -> None:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1
    assert all(word in err for word in words), err


# ---- serve warns about the sandbox connector ----------------------------------------------------


@pytest.mark.parametrize(
    ("connector", "url", "warned"), [("sandbox", "", True), ("http", "http://127.0.0.1:9", False)]
)
def test_serve_warns_once_when_the_connector_is_the_sandbox(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    connector: str,
    url: str,
    warned: bool,
) -> None:
    def not_serving(coro: Any) -> None:
        coro.close()  # start-up only: the node itself is not run

    monkeypatch.setattr(cli, "_run", not_serving)
    code = main(["serve", "-c", str(write_config(tmp_path, connector, url)), "--admin", ""])
    _, err = capsys.readouterr()
    assert code == 0
    warnings = [line for line in err.splitlines() if "sandbox" in line]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        record = json.loads(warnings[0])
        assert record["level"].lower() == "warning"
        assert "every Luhn-valid card is approved" in warnings[0]


def test_demo_does_not_warn_about_its_sandbox(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def demo_call(args: Any) -> str:
        return "approved"

    monkeypatch.setattr(cli, "_demo_async", demo_call)
    assert main(["demo"]) == 0
    assert "sandbox" not in capsys.readouterr().err


def test_a_card_number_echoed_in_the_platforms_reference_is_not_printed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    paid = {
        "token": "sbx-100-EUR-e",
        "operation": "sale",
        "amount_minor": 100,
        "currency": "EUR",
        "order": "o",
        "merchant": "m",
        "status": "paid",
        "payment": {
            "idempotency_key": "key-e",
            "result": "approved",
            "reference": "r4111111111111111",
        },
    }

    def make(kind: str, url: str, secret: str, timeout_s: float, reconcile_s: float) -> Any:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, json=paid))
        return HttpConnector(url, secret, timeout_s, transport=transport)

    monkeypatch.setattr(connectors, "make_connector", make)
    PaymentJournal(tmp_path / "journal.jsonl").begin(entry("key-e", "sbx-100-EUR-e"))
    code, reports, _ = reconcile(capsys, write_config(tmp_path))
    assert code == 0 and reports[0]["charge_state"] == "charged"
    assert reports[0]["reference"] == "r************1111"
    assert "4111111111111111" not in (tmp_path / "journal.jsonl").read_text()
