"""The agent page in a real headless Chromium: an agent clicks through a whole payment.

The page is served by uvicorn on 127.0.0.1 (the node's `AsgiServer`, as `serve` runs it); the
assisted call is a fake `AssistCallHandle` whose customer keys the test injects through
`AssistService.digit`, as the bridged call does with the keys it detects. The connector is the
in-process sandbox. The browser is Debian's chromium driven by Playwright.

Checked on the way: one mark per key as the customer keys, brand and last four once the card
number is valid, an error shown for an invalid expiry, the result and reference; and the
card's number, expiry and code nowhere in the page's DOM, the API's answers, the logs, the
CDR line or the callback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from spg_media.admin import AsgiServer
from spg_media.assist.api import build_app
from spg_media.assist.service import AssistService
from spg_media.cdr import CallbackSender, CallRecord, CdrWriter, record_bytes
from spg_media.config import load_config
from spg_media.payment.connectors import make_connector
from spg_media.payment.journal import PaymentJournal
from spg_media.payment.journey import Play

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "page-token-51c2"
PAN, EXPIRY, CVC = "4111111111111111", "1230", "123"
BAD_EXPIRY = "1399"  # month 13


@dataclass
class CustomerCall:
    call_id: str = "call-page-1"
    from_uri: str = "sip:+34600111222@carrier.example"
    to_uri: str = "sip:assist@spg.example"
    agent_uri: str = "sip:agent7@pbx.example"
    started_at: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC)
    )
    transaction_hint: str | None = "sbx-4990-EUR-page1"
    language: str = "en"
    played: list[str] = field(default_factory=list)

    def play(self, play: Play) -> None:
        self.played.append(play.parts[0].name)

    def stop_playback(self) -> None:
        pass


class RecordingCallbacks(CallbackSender):
    def __init__(self) -> None:
        super().__init__("cb-secret", ["https://merchant.example/results"])
        self.bodies: list[str] = []

    async def send(self, url: str, record: CallRecord) -> bool:
        self.bodies.append(record_bytes(record).decode())
        return True


def recording(app: Any, answers: list[str]) -> Any:
    """`app`, keeping the body of every /v1 answer it sends (event streams included)."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await app(scope, receive, send)
            return
        body = bytearray()

        async def keep(message: Any) -> None:
            if message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    answers.append(body.decode())
            await send(message)

        await app(scope, receive, keep)

    return wrapped


def test_agent_clicks_through_a_payment_while_the_customer_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian package chromium)")
    playwright_api = pytest.importorskip("playwright.async_api")
    caplog.set_level(logging.DEBUG)
    base = load_config(None, env={})
    config = dataclasses.replace(
        base,
        log=dataclasses.replace(
            base.log,
            cdr_path=str(tmp_path / "cdr.jsonl"),
            journal_path=str(tmp_path / "journal.jsonl"),
        ),
        handoff=dataclasses.replace(
            base.handoff, callback_allow=("https://merchant.example/results",)
        ),
    )
    doms: list[str] = []
    answers: list[str] = []
    callbacks = RecordingCallbacks()
    call = CustomerCall()

    async def scenario() -> None:
        connector = make_connector("sandbox", "", "", 5.0)
        service = AssistService(
            config, connector, CdrWriter(config.log.cdr_path), callbacks,
            PaymentJournal(config.log.journal_path),
        )  # fmt: skip
        app = recording(build_app(service, TOKEN), answers)
        server = AsgiServer(app, streaming=True, label="assist test")
        await server.start("127.0.0.1", 0)
        service.call_started(call)
        loop = asyncio.get_running_loop()
        expect = playwright_api.expect

        async def customer_keys(text: str) -> None:
            for key in text:
                service.digit(call.call_id, key, loop.time())
                await asyncio.sleep(0.03)

        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{server.port}/assist/")
                await page.fill("#token", TOKEN)
                await page.click("#token-save")
                row = page.locator(f'#calls tr[data-call-id="{call.call_id}"]')
                await expect(row).to_be_visible(timeout=10_000)
                await row.locator("button.select-call").click()
                await expect(page.locator("#transaction")).to_have_value(call.transaction_hint)
                await page.click("#start")
                await expect(page.locator("#payment-section")).to_be_visible()
                await expect(page.locator("#amount")).to_have_text("49.90 EUR")
                await expect(page.locator("#complete")).to_be_disabled()

                card_row = page.locator('#fields tr[data-field="payment-card-number"]')
                await card_row.locator("button.capture").click()
                await expect(card_row).to_have_class("keying")
                assert call.played[-1] == "enter_card"
                await customer_keys(PAN[:6])
                await expect(card_row.locator(".marks")).to_have_text("●" * 6)
                doms.append(await page.content())
                await customer_keys(PAN[6:])
                await expect(card_row.locator(".marks")).to_have_text("●" * 16)
                doms.append(await page.content())
                await customer_keys("#")
                await expect(card_row.locator(".field-status")).to_have_text("✓ captured")
                await expect(page.locator("#card")).to_have_text("visa •••• 1111")

                expiry_row = page.locator('#fields tr[data-field="expiration-date"]')
                await expiry_row.locator("button.capture").click()
                await expect(expiry_row).to_have_class("keying")
                await customer_keys(BAD_EXPIRY)
                await expect(page.locator("#error")).to_have_text("expiry not valid")
                assert call.played[-1] == "expiry_invalid"
                doms.append(await page.content())
                await customer_keys(EXPIRY)
                await expect(expiry_row.locator(".field-status")).to_have_text("✓ captured")
                # a captured field keeps a mark per key, its last (which ended it) included
                await expect(expiry_row.locator(".marks")).to_have_text("●" * 4)

                code_row = page.locator('#fields tr[data-field="security-code"]')
                await page.uncheck("#prompt")  # this one without the prompt
                await code_row.locator("button.capture").click()
                # the click returns before the page's request lands: key only once it has
                await expect(code_row).to_have_class("keying")
                await customer_keys(CVC[:2])
                await expect(code_row.locator(".marks")).to_have_text("●●")
                await customer_keys(CVC[2:] + "#")
                await expect(code_row.locator(".field-status")).to_have_text("✓ captured")
                await expect(code_row.locator(".marks")).to_have_text("●" * 3)
                await expect(page.locator("#error")).to_have_text("")
                doms.append(await page.content())

                await expect(page.locator("#complete")).to_be_enabled()
                await page.click("#complete")
                await expect(page.locator("#result")).to_contain_text(
                    "Result: approved — reference ", timeout=15_000
                )
                await expect(page.locator("#status")).to_have_text("Status: complete")
                doms.append(await page.content())
                doms.append(await page.inner_text("body"))
                assert call.played[-1] == "approved"
                assert any('"digits_entered":16' in text for text in answers)  # the stream
            finally:
                await browser.close()
                await service.aclose()
                await server.close()
                await connector.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 60))

    [record] = [json.loads(line) for line in Path(config.log.cdr_path).read_text().splitlines()]
    assert record["mode"] == "assist" and record["result"] == "approved"
    assert record["card"] == {"brand": "visa", "last4": "1111"}
    assert record["attempts"] == 2  # the bad expiry, and the authorisation
    blobs = [*doms, *answers, *callbacks.bodies, Path(config.log.cdr_path).read_text()]
    blobs += [log_text(r) for r in caplog.records]
    for blob in blobs:
        assert PAN not in blob and PAN[:12] not in blob
        assert not re.search(rf"(?<![0-9]){EXPIRY}(?![0-9])", blob)
        assert "12/30" not in blob
        assert not re.search(rf"(?<![0-9A-Za-z]){CVC}(?![0-9A-Za-z])", blob)


STANDARD_RECORD_FIELDS = set(vars(logging.LogRecord("n", 0, "p", 0, "m", None, None))) | {
    "message",
    "asctime",
}


def log_text(record: logging.LogRecord) -> str:
    """What a log line can carry: the message, its extras and any exception text (not the
    record's own timing fields, whose digits mean nothing)."""
    extras = {k: v for k, v in vars(record).items() if k not in STANDARD_RECORD_FIELDS}
    return f"{record.getMessage()} {extras} {record.exc_text or ''}"
