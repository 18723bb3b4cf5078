"""The commands as an operator runs them, each a subprocess on loopback.

- `demo`: the README's first command, a whole payment call on built-in defaults, ends approved
  and shows no card digit beyond the last four;
- `prompts`: renders every prompt of a language into the cache directory it is given;
- `sandbox`: listens, resolves sandbox tokens, approves the test cards, takes a repeat with the
  same Idempotency-Key without a second charge, and its slow card answers only after `--slow-s`
  (i.e. after a connector timeout set below it).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import HOST, SPG_MEDIA, free_port, spg_media_available

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

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


@pytest.fixture(scope="module")
def spg() -> str:
    if not spg_media_available():
        pytest.skip(".venv/bin/spg-media missing")
    return str(SPG_MEDIA)


def test_demo_pays_on_built_in_defaults_and_shows_no_card(spg: str, tmp_path: Path) -> None:
    repo = SPG_MEDIA.parents[2]
    env = {**os.environ, "SPG_TTS__CACHE_DIR": str(repo / ".spg-cache" / "prompts")}
    done = subprocess.run(
        [spg, "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "X-SPG-Result: approved" in out and "X-SPG-Card: visa 1111" in out
    assert "4111111111111111" not in out and "411111111111" not in out
    cdr = [json.loads(line) for line in (tmp_path / "cdr.jsonl").read_text().splitlines()]
    assert [record["result"] for record in cdr] == ["approved"]


def test_prompts_renders_every_prompt_into_the_cache(spg: str, tmp_path: Path) -> None:
    cache = tmp_path / "prompts"
    env = {**os.environ, "SPG_TTS__CACHE_DIR": str(cache)}
    done = subprocess.run(
        [spg, "prompts", "--lang", "es"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["lang"] == "es" and report["clips"] > 40 and report["cache_dir"] == str(cache)
    assert report["speech"] is False  # no speech model for Spanish: keypad only
    assert len([p for p in cache.rglob("*") if p.is_file()]) >= report["clips"]
