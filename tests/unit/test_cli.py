"""The command line: bad input is one line on stderr and exit 2; dtmf-scan prints JSON lines."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from spg_media import hardening
from spg_media.cli import main
from spg_media.rtp.g711 import encode
from spg_media.testcaller import dtmf_tone
from spg_media.tlscert import OpensslMissing, make_self_signed

REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2
    assert err.startswith("spg-media: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ([], ["required"]),
        (["frobnicate"], ["invalid choice"]),
        (["serve", "--sip", "sctp:127.0.0.1:5060"], ["--sip", "transport"]),
        (["serve", "--admin", "nonsense"], ["--admin", "HOST:PORT"]),
        (["serve", "--admin", "127.0.0.1:8²"], ["--admin", "HOST:PORT"]),
        (["serve", "--sip", "udp:127.0.0.1:5²"], ["--sip", "bad port"]),
        (["demo", "--card", "４１１１１１１１１１１１１１１１"], ["--card"]),
        (["demo", "--expiry", "１２３０"], ["--expiry"]),
        (["demo", "--card", "12ab"], ["--card"]),
        (["demo", "--expiry", "123"], ["--expiry"]),
        (["demo", "--lang", "fr"], ["--lang"]),
        (["sandbox", "--listen", "x"], ["--listen"]),
        (["sandbox", "--slow-s", "soon"], ["--slow-s"]),
        (["sandbox", "--slow-s", "0"], ["--slow-s"]),
        (["sandbox", "--slow-s", "nan"], ["--slow-s"]),
        (["dtmf-scan", "/nonexistent/rec.wav"], ["no such file"]),
        (["dtmf-scan", "x.wav", "--format", "mp3"], ["--format"]),
        (["speech-scan", "/nonexistent/rec.wav"], ["no such file"]),
        (["speech-scan", "x.wav", "--lang", "es"], ["--lang", "no speech model"]),
        (["speech-scan", "x.wav", "--field", "pin"], ["--field"]),
        (["check-config"], ["-c/--config"]),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert_one_line_error(code, err, *words)
    assert out == ""


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check-config", "-c", str(REPO / "spg.example.toml"))
    assert code == 0 and "ok" in out and err == ""


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[ivr]\nmax_attempts = "three"\n', ["ivr.max_attempts"]),
        ("[rtp]\nport_min = 30000\nport_max = 20000\n", ["rtp.port"]),
        ('[gateway]\nsecret = "hunter2"\nconnector = "nope"\n', ["gateway.connector"]),
        ("[sip\n", ["line"]),
        ("[nosuchsection]\nx = 1\n", ["nosuchsection"]),
    ],
)
def test_check_config_names_the_bad_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, words: list[str]
) -> None:
    path = tmp_path / "spg.toml"
    path.write_text(text)
    code, _, err = run(capsys, "check-config", "-c", str(path))
    assert_one_line_error(code, err, *words)
    assert "hunter2" not in err  # secrets are never echoed back


def test_check_config_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "check-config", "-c", str(tmp_path / "none.toml"))
    assert_one_line_error(code, err)


def tls_config(tmp_path: Path, cert: Path, key: Path) -> Path:
    path = tmp_path / "spg.toml"
    path.write_text(
        f'[sip]\nlisten = ["tls:127.0.0.1:5061"]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    return path


def test_check_config_refuses_a_certificate_that_cannot_be_loaded(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    try:
        first = make_self_signed(tmp_path, name="first")
        second = make_self_signed(tmp_path, name="second")
    except OpensslMissing:
        pytest.skip("openssl not installed")
    code, out, _ = run(
        capsys, "check-config", "-c", str(tls_config(tmp_path, first.cert, first.key))
    )
    assert code == 0 and "ok" in out
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for cert, key in ((garbage, first.key), (first.cert, garbage), (first.cert, second.key)):
        code, _, err = run(capsys, "check-config", "-c", str(tls_config(tmp_path, cert, key)))
        assert_one_line_error(code, err, "sip.tls_cert", "cannot load")
        assert "PRIVATE KEY" not in err


def test_check_config_takes_a_tls_ca_it_can_load_and_refuses_one_it_cannot(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    try:
        pair = make_self_signed(tmp_path)
    except OpensslMissing:
        pytest.skip("openssl not installed")
    path = tmp_path / "spg.toml"
    path.write_text(f'[sip]\ntls_ca = "{pair.cert}"\n')
    code, out, _ = run(capsys, "check-config", "-c", str(path))
    assert code == 0 and "ok" in out
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for bad in (garbage, pair.key):  # not PEM; a private key, no certificate
        path.write_text(f'[sip]\ntls_ca = "{bad}"\n')
        code, _, err = run(capsys, "check-config", "-c", str(path))
        assert_one_line_error(code, err, "sip.tls_ca", "cannot load")
        assert "PRIVATE KEY" not in err


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = tmp_path / "spg.toml"
        config.write_text(f'[tts]\ncache_dir = "{REPO / ".spg-cache" / "prompts"}"\n')
        code, _, err = run(
            capsys,
            "serve",
            "-c",
            str(config),
            "--sip",
            f"udp:127.0.0.1:{port}",
            "--admin",
            "",
            "--workers",
            "1",
        )
    assert_one_line_error(code, err.splitlines()[-1] + "\n", "cannot listen")


def test_serve_that_cannot_lock_its_memory_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(lock_memory: bool) -> list[str]:
        raise hardening.HardeningError("security.lock_memory: mlockall failed: no (grant ...)")

    monkeypatch.setattr(hardening, "harden_process", refuse)
    monkeypatch.setenv("SPG_SECURITY__LOCK_MEMORY", "true")
    code, _, err = run(capsys, "serve", "--admin", "")
    assert_one_line_error(code, err, "security.lock_memory", "mlockall failed")


def alaw_wav(path: Path, samples: np.ndarray) -> Path:
    audio = encode(samples, "PCMA")
    fmt = struct.pack("<HHIIHH", 6, 1, 8000, 8000, 1, 8)
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
    body += struct.pack("<I", len(audio)) + audio
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_dtmf_scan_prints_each_digit_with_its_times(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gap = np.zeros(800, dtype=np.int16)  # 100 ms
    keys = "4*0#9"
    parts = [gap]
    for key in keys:
        parts += [dtmf_tone(key, 0.1), gap]
    path = alaw_wav(tmp_path / "rec.wav", np.concatenate(parts))
    code, out, err = run(capsys, "dtmf-scan", str(path))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert "".join(line["digit"] for line in lines) == keys
    for n, line in enumerate(lines):
        onset = 100 + n * 200  # ms
        assert set(line) == {"digit", "start_ms", "end_ms"}
        assert abs(line["start_ms"] - onset) <= 15, line
        assert abs(line["end_ms"] - (onset + 100)) <= 15, line


def test_dtmf_scan_raw_ulaw_at_another_rate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    t = np.arange(int(0.12 * 16000)) / 16000
    tone = 4000 * (np.sin(2 * np.pi * 852 * t) + np.sin(2 * np.pi * 1477 * t))
    samples = np.concatenate([np.zeros(1600), tone, np.zeros(1600)])
    path = tmp_path / "rec.bin"
    path.write_bytes(encode(samples, "PCMU"))
    code, out, err = run(capsys, "dtmf-scan", str(path), "--format", "ulaw", "--rate", "16000")
    assert code == 0, err
    assert [json.loads(line)["digit"] for line in out.splitlines()] == ["9"]


def test_dtmf_scan_of_silence_prints_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = alaw_wav(tmp_path / "quiet.wav", np.zeros(8000, dtype=np.int16))
    assert run(capsys, "dtmf-scan", str(path)) == (0, "", "")


def test_speech_scan_of_silence_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "quiet.s16"
    path.write_bytes(bytes(16000))
    code, out, err = run(capsys, "speech-scan", str(path))
    assert_one_line_error(code, err, "no speech")
    assert out == ""


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_speech_scan_prints_one_json_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "code.wav"  # the test's own rendering, removed with tmp_path
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), "1 2 3"], check=True)
    code, out, err = run(capsys, "speech-scan", str(path), "--field", "code")
    assert code == 0 and err == ""
    line = json.loads(out)
    assert set(line) == {"field", "digits", "valid", "confidence"}
    assert line["field"] == "code" and line["digits"].isdigit()
    assert 0.0 <= line["confidence"] <= 1.0
