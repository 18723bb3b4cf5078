"""`spg-media init` and the files shipped in the package (spg_media/data)."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, run

from spg_media.config import Config, load_config
from spg_media.shipped import (
    KAMAILIO_FILES,
    example_config,
    kamailio_file,
    starter_config,
)

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "spg_media" / "data"


# ---- the shipped files are the repository's, not copies that could drift ----------------------


def test_the_shipped_example_config_is_the_repositorys() -> None:
    assert (DATA / "spg.example.toml").resolve() == (REPO / "spg.example.toml").resolve()
    assert example_config() == (REPO / "spg.example.toml").read_text()


@pytest.mark.parametrize("name", KAMAILIO_FILES)
def test_the_shipped_kamailio_files_are_the_repositorys(name: str) -> None:
    assert (DATA / "kamailio" / name).resolve() == (REPO / "kamailio" / name).resolve()
    assert kamailio_file(name) == (REPO / "kamailio" / name).read_text()


def test_every_kamailio_file_of_the_repository_is_shipped() -> None:
    assert {p.name for p in (REPO / "kamailio").iterdir()} == set(KAMAILIO_FILES)


def test_the_package_data_globs_take_the_shipped_files() -> None:
    import tomllib

    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["spg_media"]
    shipped = {"data/spg.example.toml", *(f"data/kamailio/{name}" for name in KAMAILIO_FILES)}
    package = REPO / "spg_media"
    matched = {str(p.relative_to(package)) for g in globs for p in package.glob(g)}
    assert shipped <= matched


def test_an_unknown_kamailio_file_is_refused() -> None:
    with pytest.raises(ValueError):
        kamailio_file("../../pyproject.toml")


# ---- the starting config -----------------------------------------------------------------------


def test_the_starting_config_is_the_example_with_fresh_secrets(tmp_path: Path) -> None:
    path = tmp_path / "spg.toml"
    path.write_text(starter_config())
    config = load_config(path, env={})
    gateway, handoff = config.gateway.secret, config.handoff.signing_secret
    assert len(gateway) >= 40 and len(handoff) >= 40 and gateway != handoff
    without_secrets = dataclasses.replace(
        config,
        gateway=dataclasses.replace(config.gateway, secret=""),
        handoff=dataclasses.replace(config.handoff, signing_secret=""),
    )
    assert without_secrets == Config()
    other = tmp_path / "other.toml"
    other.write_text(starter_config())
    assert load_config(other, env={}).gateway.secret != gateway  # fresh each time


def test_the_starting_config_says_what_its_secrets_are() -> None:
    text = starter_config(token="T0KEN")
    assert text.count('"T0KEN"') == 2
    header, body = text.split(example_config().splitlines()[0], 1)
    assert header.startswith("# Written by `spg-media init`")
    assert "gateway.secret" in header and "handoff.signing_secret" in header
    assert example_config().splitlines()[0] + body.replace('"T0KEN"', '""') == example_config()


# ---- spg-media init ----------------------------------------------------------------------------


def test_init_writes_the_config_and_the_kamailio_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "new" / "node"
    code, out, err = run(capsys, "init", str(target))
    assert (code, err) == (0, "")
    config_path = target / "spg.toml"
    assert f"wrote {config_path}" in out
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600  # it holds secrets
    assert load_config(config_path, env={}).handoff.signing_secret
    for name in KAMAILIO_FILES:
        assert (target / "kamailio" / name).read_text() == kamailio_file(name)
    assert run(capsys, "check-config", "-c", str(config_path))[0] == 0


def test_init_overwrites_nothing_without_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "kamailio").mkdir()
    (tmp_path / "kamailio" / "dispatcher.list").write_text("1 sip:10.0.0.11:5080 0 0\n")
    code, out, err = run(capsys, "init", str(tmp_path))
    assert_one_line_error(code, err, "dispatcher.list", "exists", "--force")
    assert out == ""
    assert not (tmp_path / "spg.toml").exists()  # nothing written, not even the other files
    assert (tmp_path / "kamailio" / "dispatcher.list").read_text() == "1 sip:10.0.0.11:5080 0 0\n"


def test_init_force_overwrites_with_new_secrets_and_a_private_mode(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run(capsys, "init", str(tmp_path))[0] == 0
    config_path = tmp_path / "spg.toml"
    first = load_config(config_path, env={}).gateway.secret
    config_path.chmod(0o644)
    code, _, err = run(capsys, "init", str(tmp_path))
    assert_one_line_error(code, err, "spg.toml", "exists")
    code, _, err = run(capsys, "init", "--force", str(tmp_path))
    assert (code, err) == (0, "")
    assert load_config(config_path, env={}).gateway.secret != first
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_init_into_a_file_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    code, _, err = run(capsys, "init", str(plain))
    assert_one_line_error(code, err, "not a directory")
    code, _, err = run(capsys, "init", str(plain / "below"))
    assert_one_line_error(code, err, "cannot write")


def test_init_needs_a_directory(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "init")
    assert_one_line_error(code, err, "directory")
