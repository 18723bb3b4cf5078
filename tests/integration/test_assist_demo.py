"""`spg-media demo --assist`: the whole agent-assisted payment on loopback, in-process.

The demo's customer keys over each prompt (barge-in) so the run stays short; everything else is
as `spg-media demo --assist` runs it (the CLI only adds the argument parsing). Checked: the
result is approved, the agent's side reports every key as a mask tone and no digit, no
telephone-event reached the agent, the customer's speech did, and the printed story (what
each side heard and saw, the CDR line) holds no card data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from pathlib import Path

import pytest
from harness import REPO

from spg_media.assist import demo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PAN, EXPIRY, CVC = "4111111111111111", "1230", "123"


def test_demo_assist_pays_and_the_agent_hears_no_digit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = REPO / ".spg-cache"
    if cache.is_dir():  # rendered prompts of the repository: no rendering in the test
        (tmp_path / ".spg-cache").symlink_to(cache)
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(
        card=PAN, expiry=EXPIRY, lang=None, inband=False, srtp=False, assist=True
    )
    result = asyncio.run(asyncio.wait_for(demo.run(args, barge_in_s=0.6), 80))
    out = capsys.readouterr().out
    assert result == "approved", out
    assert "desktop  complete | visa •••• 1111 | result approved | reference " in out
    keys = len(PAN) + 1 + len(EXPIRY) + len(CVC)
    # every key reached the agent as the mask tone and none as a digit; a burst may count twice
    # when the bridge's playout steps inside it (a starved machine: a packet of silence)
    tones = re.search(r"agent    heard (\d+) key tones: 0 digits detected", out)
    assert tones and keys <= int(tones[1]) <= keys + 3, out
    assert "agent    telephone-event packets received: 0" in out
    voice = re.search(r"heard ([0-9.]+) s of the customer's voice", out)
    assert voice and float(voice[1]) > 3.0, out  # two sentences, about 5 s
    assert "X-SPG-Assist-Call: " in out and "BYE from the node" in out
    [record] = [json.loads(line) for line in (tmp_path / "cdr.jsonl").read_text().splitlines()]
    assert record["mode"] == "assist" and record["result"] == "approved"
    assert record["card"] == {"brand": "visa", "last4": "1111"}
    # No card data in what the demo printed: ids and the reference (random letters and digits)
    # are taken out first, so that a "123" inside one cannot look like the security code.
    text = re.sub(r"[0-9a-f]{32}|SBX[0-9A-Z]+|\"authorization_code\":\"[0-9]+\"", "-", out)
    assert PAN not in text and PAN[:12] not in text
    assert not re.search(rf"(?<![0-9]){EXPIRY}(?![0-9])", text)
    assert not re.search(rf"(?<![0-9]){CVC}(?![0-9])", text)
