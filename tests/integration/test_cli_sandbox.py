"""`spg-media sandbox` as an operator runs it: a subprocess on loopback, spoken to over HTTP.

Checks its normal run (CONTRACT §7, §9): it listens, resolves sandbox tokens, approves the test
cards, takes a repeat with the same Idempotency-Key without a second charge, and the slow card
answers only after `--slow-s`, i.e. after a connector timeout set below it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from harness import HOST, SPG_MEDIA, free_port, spg_media_available

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CARD = {"number": "4111111111111111", "exp_month": 12, "exp_year": 2030, "cvc": "123"}
SLOW = {**CARD, "number": "4000000000000341"}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    if not spg_media_available():
        pytest.skip(".venv/bin/spg-media missing")
    port = free_port()
    process = subprocess.Popen(
        [str(SPG_MEDIA), "sandbox", "--listen", f"{HOST}:{port}", "--slow-s", "1.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the sandbox did not come up")
        yield url
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=10)
        assert "4111111111111111" not in out and "4000000000000341" not in out  # no card logged


def test_standalone_sandbox_serves_the_protocol(sandbox: str) -> None:
    with httpx.Client(base_url=sandbox, timeout=5) as client:
        info = client.get("/v1/transactions/sbx-4990-EUR-cli1").json()
        assert (info["amount_minor"], info["currency"], info["status"]) == (4990, "EUR", "pending")
        assert client.get("/v1/transactions/nope").status_code == 404
        pay = {"card": CARD, "attempt": 1}
        first = client.post(
            "/v1/transactions/sbx-4990-EUR-cli1/authorize",
            json=pay,
            headers={"Idempotency-Key": "k1"},
        )
        again = client.post(
            "/v1/transactions/sbx-4990-EUR-cli1/authorize",
            json=pay,
            headers={"Idempotency-Key": "k1"},
        )
        assert first.status_code == again.status_code == 200
        assert first.json()["result"] == "approved" and first.json() == again.json()


def test_the_slow_card_answers_after_slow_s(sandbox: str) -> None:
    body = {"card": SLOW, "attempt": 1}
    path = "/v1/transactions/sbx-100-EUR-cli2/authorize"
    with httpx.Client(base_url=sandbox) as client:
        with pytest.raises(httpx.ReadTimeout):  # a connector timing out before it
            client.post(path, json=body, headers={"Idempotency-Key": "s1"}, timeout=0.5)
        started = time.monotonic()  # (that one was paid all the same: a fresh token)
        fresh = "/v1/transactions/sbx-100-EUR-cli3/authorize"
        answer = client.post(fresh, json=body, headers={"Idempotency-Key": "s2"}, timeout=5)
        assert answer.status_code == 200 and answer.json()["result"] == "approved"
        assert 1.3 <= time.monotonic() - started < 4
