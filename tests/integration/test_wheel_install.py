"""The production install path: the built wheel in a fresh venv, run outside the checkout.

The wheel is built from the repository (`pip wheel . --no-deps`), installed into a new venv
with the dependency versions of the project's own venv (a constraints file from `pip freeze`,
so pip takes them from its cache or the configured wheel directory), and its `spg-media` runs
from an empty directory with no `SPG_*` variables: `demo` ends approved, `init` writes a
config that `check-config` accepts and the Kamailio files, all from the package's data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# what a build needs none of (and a copy of the checkout would spend its time on)
CHECKOUT_ONLY = (
    ".git",
    ".venv",
    "build",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
)


def _clean_env(home: Path) -> dict[str, str]:
    """The environment of an operator's shell: no SPG_* overrides, no PYTHONPATH to the repo."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SPG_", "PYTHON", "VIRTUAL_ENV", "PIP_"))
        and name not in ("STATE_DIRECTORY", "CACHE_DIRECTORY")
    }
    env["HOME"] = str(home)
    return env


def _run(
    argv: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _pip(python: Path, *args: str, cwd: Path) -> str:
    done = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin directory of a fresh venv holding the built wheel."""
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    # pip builds a source tree in place (setuptools' build/): build a copy, as install.sh does
    source = work / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*CHECKOUT_ONLY))
    _pip(Path(sys.executable), "wheel", "--no-deps", "-q", "-w", str(dist), str(source), cwd=work)
    wheels = list(dist.glob("spg_media-*.whl"))
    assert len(wheels) == 1, wheels
    constraints = work / "constraints.txt"
    constraints.write_text(_pip(Path(sys.executable), "freeze", "--exclude-editable", cwd=work))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    _pip(venv / "bin" / "python", "install", "-q", "-c", str(constraints), str(wheels[0]),
         cwd=work)  # fmt: skip
    yield venv / "bin"


def test_the_installed_package_is_the_wheels_not_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    done = _run(
        [installed / "python", "-c", "import spg_media; print(spg_media.__file__)"],
        tmp_path,
        _clean_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    location = Path(done.stdout.strip()).resolve()
    assert location.is_relative_to(installed.parent.resolve())
    assert not location.is_relative_to(REPO)


def test_demo_from_an_empty_directory_is_approved(installed: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _run([str(installed / "spg-media"), "demo"], empty, _clean_env(tmp_path), timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "result handed back to the agent: approved" in done.stdout
    assert "4111111111111111" not in done.stdout + done.stderr
    # its records went where the README says: the directory it ran in
    assert (empty / "cdr.jsonl").is_file() and (empty / "journal.jsonl").is_file()


def test_init_writes_a_config_the_installed_node_accepts(installed: Path, tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    target = tmp_path / "etc"
    done = _run([str(installed / "spg-media"), "init", str(target)], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert (target / "kamailio" / "kamailio.cfg").read_text() == (
        REPO / "kamailio" / "kamailio.cfg"
    ).read_text()
    assert (target / "kamailio" / "dispatcher.list").is_file()
    check = _run(
        [str(installed / "spg-media"), "check-config", "-c", str(target / "spg.toml")],
        tmp_path,
        env,
    )
    assert check.returncode == 0, check.stderr
    again = _run([str(installed / "spg-media"), "init", str(target)], tmp_path, env)
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr


def test_install_script_into_temporary_directories(tmp_path: Path) -> None:
    """deploy/install.sh --no-system: the venv, the config from init, the units rewritten to
    name them (systemd accepts them as installed), and a second run keeps the config."""
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(_pip(Path(sys.executable), "freeze", "--exclude-editable", cwd=tmp_path))
    places = {
        "SPG_PREFIX": tmp_path / "opt",
        "SPG_CONFIG_DIR": tmp_path / "etc",
        "SPG_UNIT_DIR": tmp_path / "units",
    }
    env = {
        **_clean_env(tmp_path),
        **{name: str(path) for name, path in places.items()},
        "PIP_CONSTRAINT": str(constraints),  # the project venv's versions: from pip's cache
        "PYTHON": sys.executable,
    }

    def install() -> str:
        done = _run(
            [str(REPO / "deploy" / "install.sh"), "--no-system"], tmp_path, env, timeout=400
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    build_before = (REPO / "build").exists()
    install()
    assert (REPO / "build").exists() == build_before, "install.sh built inside the checkout"
    program = places["SPG_PREFIX"] / "bin" / "spg-media"
    config = places["SPG_CONFIG_DIR"] / "spg.toml"
    unit = (places["SPG_UNIT_DIR"] / "spg-media.service").read_text()
    assert f"ExecStart={program} serve -c {config}\n" in unit
    assert "/opt/spg-media" not in unit and "/etc/spg-media" not in unit
    secret_line = next(
        line for line in config.read_text().splitlines() if line.startswith("secret")
    )
    analyze = shutil.which("systemd-analyze")
    if analyze:
        for name in ("spg-media.service", "spg-media@.service"):
            installed = places["SPG_UNIT_DIR"] / name
            verified = tmp_path / name.replace("@", "@node1")
            verified.write_text(installed.read_text())
            done = _run([analyze, "verify", verified], tmp_path, env)
            assert (done.returncode, done.stderr) == (0, ""), done.stderr
    check = _run([program, "check-config", "-c", config], tmp_path, env)
    assert check.returncode == 0, check.stderr
    assert "keeping" in install()  # an upgrade: the config and its secrets stay
    assert secret_line in config.read_text().splitlines()
