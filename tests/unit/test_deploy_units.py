"""The systemd units in deploy/systemd: systemd itself accepts them, they keep the sandbox and
limits the README promises, and they give the drain time to finish before killing the node."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spg_media.config import Config
from spg_media.server import drain_grace_s

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
SERVICE = UNITS / "spg-media.service"
TEMPLATE = UNITS / "spg-media@.service"
INSTALLED = "/opt/spg-media/bin/spg-media"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def settings(path: Path) -> dict[str, list[str]]:
    """Key -> every value given to it (systemd keys may repeat), comments left out."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", ["spg-media.service", "spg-media@node1.service"])
def test_systemd_accepts_the_unit(tmp_path: Path, unit: str) -> None:
    source = TEMPLATE if "@" in unit else SERVICE
    # verify wants ExecStart's program to exist: this venv's spg-media stands for /opt's
    program = Path(sys.executable).with_name("spg-media")
    assert program.is_file()
    text = source.read_text()
    assert INSTALLED in text
    (tmp_path / unit).write_text(text.replace(INSTALLED, str(program)))
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(tmp_path / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on unknown keys and bad values too, but says so: any word is a finding
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_verify_would_see_a_mistake(tmp_path: Path) -> None:
    program = Path(sys.executable).with_name("spg-media")
    text = SERVICE.read_text().replace(INSTALLED, str(program))
    (tmp_path / "spg-media.service").write_text(text.replace("ProtectSystem=", "ProtectSistem="))
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(tmp_path / "spg-media.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "ProtectSistem" in done.stderr


@pytest.mark.parametrize("path", [SERVICE, TEMPLATE], ids=lambda p: p.name)
def test_the_unit_keeps_its_limits_and_sandbox(path: Path) -> None:
    unit = settings(path)
    expected = {
        "User": "spg-media",
        "KillSignal": "SIGTERM",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "LimitCORE": "0",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    # two sockets a call: thousands of calls need far more than the usual 1024
    assert int(unit["LimitNOFILE"][0]) >= 2 * 10_000 + Config().sip.max_connections
    assert unit["StateDirectory"][0].startswith("spg-media")
    assert unit["CacheDirectory"] == ["spg-media"]
    assert unit["ExecStart"][0].startswith(f"{INSTALLED} serve -c /etc/spg-media/")


@pytest.mark.parametrize("path", [SERVICE, TEMPLATE], ids=lambda p: p.name)
def test_systemd_waits_longer_than_the_drain(path: Path) -> None:
    # the drain, then up to 5 s for callbacks and closing, and some room to exit
    drain = drain_grace_s(Config())
    assert seconds(settings(path)["TimeoutStopSec"][0]) >= drain + 5 + 10


def test_the_template_is_the_service_but_for_its_instance() -> None:
    def comparable(path: Path) -> list[str]:
        lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
        return [
            line.replace("/etc/spg-media/%i.toml", "/etc/spg-media/spg.toml")
            .replace("StateDirectory=spg-media/%i", "StateDirectory=spg-media")
            .replace(", node %i", "")
            for line in lines
        ]

    assert comparable(TEMPLATE) == comparable(SERVICE)
