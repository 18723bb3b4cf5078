"""Config: defaults, the example file, env overrides, and one exact message per bad value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from spg_media.config import (
    CARD_BRANDS,
    AdminConfig,
    Config,
    ConfigError,
    IvrConfig,
    ListenSpec,
    SipConfig,
    load_config,
    parse_host_port,
    parse_listen,
)

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "spg.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env or {})
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- defaults and the example file -------------------------------------------------------------


def test_defaults_are_contract_section_10() -> None:
    config = Config()
    assert config.sip.listen == ("udp:127.0.0.1:5080", "tcp:127.0.0.1:5080")
    assert config.sip.public_host == "127.0.0.1"
    assert config.sip.trusted_sources == ("127.0.0.0/8",)
    assert (config.sip.tls_cert, config.sip.tls_key) == ("", "")
    assert (config.rtp.address, config.rtp.port_min, config.rtp.port_max) == (
        "127.0.0.1",
        20000,
        29999,
    )
    assert config.rtp.srtp == "optional"
    assert config.dtmf.inband == "auto"
    ivr = config.ivr
    assert (ivr.language, ivr.first_digit_timeout_s, ivr.inter_digit_timeout_s) == ("en", 10, 5)
    assert (ivr.max_attempts, ivr.confirm, ivr.return_uri) == (3, False, "")
    assert ivr.card_brands == (
        "visa",
        "mastercard",
        "amex",
        "discover",
        "diners",
        "jcb",
        "unionpay",
        "maestro",
    )
    gateway = config.gateway
    assert (gateway.connector, gateway.url, gateway.secret, gateway.timeout_s) == (
        "sandbox",
        "",
        "",
        10,
    )
    assert (config.handoff.signing_secret, config.handoff.max_age_s) == ("", 300)
    assert config.handoff.callback_allow == ()
    assert config.admin.listen == "127.0.0.1:9180"
    assert (config.log.format, config.log.level, config.log.cdr_path) == (
        "json",
        "info",
        "cdr.jsonl",
    )
    assert config.tts.cache_dir == ".spg-cache/prompts"


def test_no_file_and_empty_env_gives_defaults() -> None:
    assert load_config(None, env={}) == Config()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), env={}) == Config()


def test_example_file_holds_every_key_with_its_default() -> None:
    example = REPO / "spg.example.toml"
    assert load_config(example, env={}) == Config()
    import tomllib

    raw = tomllib.loads(example.read_text())
    for section in dataclasses.fields(Config):
        keys = {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        assert set(raw[section.name]) == keys, section.name


def test_example_file_comments_every_key() -> None:
    for line in (REPO / "spg.example.toml").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            assert " # " in line, line


def test_timeouts_are_floats_and_ints_compare_equal(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[ivr]\nfirst_digit_timeout_s = 7\n"), env={})
    assert config.ivr.first_digit_timeout_s == 7.0
    assert isinstance(config.ivr.first_digit_timeout_s, float)


def test_file_values_are_read(tmp_path: Path) -> None:
    text = """
[sip]
listen = ["udp:[::1]:5070", "tcp:pbx.example.com:5070"]
public_host = "spg.example.com"
trusted_sources = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
[rtp]
address = "192.0.2.10"
port_min = 30001
port_max = 30010
srtp = "required"
[ivr]
language = "es"
confirm = true
return_uri = "sip:queue@pbx.example.com"
card_brands = ["visa", "amex"]
[gateway]
connector = "http"
url = "https://pay.example.com/api"
secret = "s3cret"
timeout_s = 2.5
[handoff]
callback_allow = ["https://shop.example/spg/", "http://127.0.0.1:9000/"]
[admin]
listen = ""
"""
    config = load_config(write(tmp_path, text), env={})
    assert config.sip.listen == ("udp:[::1]:5070", "tcp:pbx.example.com:5070")
    assert config.sip.trusted_sources[2] == "192.0.2.7"
    assert config.rtp.srtp == "required"
    assert config.ivr.card_brands == ("visa", "amex")
    assert config.ivr.confirm is True
    assert config.gateway.timeout_s == 2.5
    assert config.admin.listen == ""


def test_secrets_not_in_repr() -> None:
    config = Config().with_overrides(
        gateway={"secret": "gw-SECRET-value"}, handoff={"signing_secret": "hs-SECRET-value"}
    )
    assert "SECRET" not in repr(config)


# ---- env overrides -----------------------------------------------------------------------------


def test_env_overrides_strings_ints_floats() -> None:
    config = load_config(
        None,
        env={
            "SPG_SIP__PUBLIC_HOST": "spg.example.com",
            "SPG_IVR__MAX_ATTEMPTS": "5",
            "SPG_IVR__INTER_DIGIT_TIMEOUT_S": "2.5",
            "SPG_RTP__PORT_MIN": " 40000 ",
            "SPG_RTP__PORT_MAX": "40100",
        },
    )
    assert config.sip.public_host == "spg.example.com"
    assert config.ivr.max_attempts == 5
    assert config.ivr.inter_digit_timeout_s == 2.5
    assert (config.rtp.port_min, config.rtp.port_max) == (40000, 40100)


def test_env_overrides_lists() -> None:
    env = {"SPG_SIP__LISTEN": "udp:127.0.0.1:5080, tcp:127.0.0.1:5080,"}
    assert load_config(None, env=env).sip.listen == ("udp:127.0.0.1:5080", "tcp:127.0.0.1:5080")
    env = {"SPG_HANDOFF__CALLBACK_ALLOW": '["https://a.example/x,y", "https://b.example/"]'}
    assert load_config(None, env=env).handoff.callback_allow == (
        "https://a.example/x,y",
        "https://b.example/",
    )
    assert load_config(None, env={"SPG_HANDOFF__CALLBACK_ALLOW": ""}).handoff.callback_allow == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("no", False),
        ("TRUE", True),
        (" No ", False),
    ],
)
def test_env_booleans(text: str, expected: bool) -> None:
    assert load_config(None, env={"SPG_IVR__CONFIRM": text}).ivr.confirm is expected


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[ivr]\nmax_attempts = 4\nlanguage = "es"\n')
    config = load_config(path, env={"SPG_IVR__MAX_ATTEMPTS": "6"})
    assert (config.ivr.max_attempts, config.ivr.language) == (6, "es")


def test_env_keys_are_case_insensitive_and_other_variables_ignored() -> None:
    env = {"spg_ivr__language": "es", "SPG_CONFIG": "x", "SPGX__A": "1", "PATH": "/bin"}
    assert load_config(None, env=env).ivr.language == "es"


def test_default_env_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPG_IVR__MAX_ATTEMPTS", "9")
    assert load_config(None).ivr.max_attempts == 9


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"SPG_IVR__MAX_ATTEMPTS": "x"},
            'ivr.max_attempts: must be an integer >= 1, got "x" (from SPG_IVR__MAX_ATTEMPTS)',
        ),
        (
            {"SPG_IVR__CONFIRM": "maybe"},
            'ivr.confirm: must be true or false, got "maybe" (from SPG_IVR__CONFIRM)',
        ),
        (
            {"SPG_IVR__FIRST_DIGIT_TIMEOUT_S": "soon"},
            'ivr.first_digit_timeout_s: must be a number > 0, got "soon" '
            "(from SPG_IVR__FIRST_DIGIT_TIMEOUT_S)",
        ),
        (
            {"SPG_IVR__FIRST_DIGIT_TIMEOUT_S": "nan"},
            "ivr.first_digit_timeout_s: must be a number > 0, got nan "
            "(from SPG_IVR__FIRST_DIGIT_TIMEOUT_S)",
        ),
        (
            {"SPG_SIP__LISTEN": "udp:127.0.0.1:5080,sctp:127.0.0.1:5080"},
            'sip.listen[1]: bad transport "sctp" (udp, tcp or tls) (from SPG_SIP__LISTEN)',
        ),
        (
            {"SPG_IVR__MAX_ATEMPTS": "5"},
            'unknown key "ivr.max_atempts" (did you mean "ivr.max_attempts"?) '
            "(from SPG_IVR__MAX_ATEMPTS)",
        ),
        ({"SPG_FOO__BAR": "1"}, 'unknown key "foo" (from SPG_FOO__BAR)'),
    ],
)
def test_env_errors(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert str(info.value) == expected


# ---- file-level errors -------------------------------------------------------------------------


def test_file_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("spg.toml", env={})
    assert str(info.value) == "file not found: spg.toml"


def test_toml_syntax_error_names_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, '[sip]\npublic_host = "a"\nlisten = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_config("spg.toml", env={})
    assert str(info.value).startswith("spg.toml: TOML syntax error at line 3: ")
    assert "(at line" not in str(info.value)


def test_toml_syntax_error_at_end_of_file(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[sip]\nlisten = [\n")
    assert message.startswith(f"{tmp_path / 'spg.toml'}: TOML syntax error at ")


def test_directory_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, env={})
    path = tmp_path / "bin.toml"
    path.write_bytes(b'a = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[ivr]\nmax_atempts = 3\n",
            'unknown key "ivr.max_atempts" (did you mean "ivr.max_attempts"?)',
        ),
        ("[sip]\nport_min = 3\n", 'unknown key "sip.port_min" (did you mean "rtp.port_min"?)'),
        ("[sipp]\nlisten = []\n", 'unknown key "sipp" (did you mean "sip"?)'),
        ("[zzz]\n", 'unknown key "zzz"'),
        ("listen = 3\n", 'unknown key "listen"'),
        ("[sip.extra]\na = 1\n", 'unknown key "sip.extra"'),
        ("sip = 3\n", "sip: must be a table ([sip])"),
    ],
)
def test_unknown_keys(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text) == expected


# ---- every validation message ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # sip
        ("[sip]\nlisten = []", "sip.listen: must name at least one listener"),
        (
            '[sip]\nlisten = "udp:127.0.0.1:5080"',
            'sip.listen: must be a list of strings, got "udp:127.0.0.1:5080"',
        ),
        ("[sip]\nlisten = [5080]", "sip.listen: must be a list of strings, got [5080]"),
        (
            '[sip]\nlisten = ["udp:127.0.0.1:5080", "sctp:127.0.0.1:5080"]',
            'sip.listen[1]: bad transport "sctp" (udp, tcp or tls)',
        ),
        (
            '[sip]\nlisten = ["udp:127.0.0.1"]',
            'sip.listen[0]: expected udp|tcp|tls:HOST:PORT, got "udp:127.0.0.1"',
        ),
        ('[sip]\nlisten = ["udp:127.0.0.1:0"]', 'sip.listen[0]: bad port "0" (1-65535)'),
        ('[sip]\nlisten = ["udp:127.0.0.1:65536"]', 'sip.listen[0]: bad port "65536" (1-65535)'),
        ('[sip]\nlisten = ["udp:127.0.0.1:x"]', 'sip.listen[0]: bad port "x" (1-65535)'),
        ('[sip]\nlisten = ["udp:256.0.0.1:5060"]', 'sip.listen[0]: bad IPv4 address "256.0.0.1"'),
        (
            '[sip]\nlisten = ["udp:::1:5060"]',
            'sip.listen[0]: IPv6 address must be in brackets, e.g. [::1], got "::1"',
        ),
        ('[sip]\nlisten = ["udp:[::g]:5060"]', 'sip.listen[0]: bad IPv6 address "[::g]"'),
        ('[sip]\nlisten = ["udp:bad_host:5060"]', 'sip.listen[0]: bad host "bad_host"'),
        ('[sip]\nlisten = ["udp::5060"]', 'sip.listen[0]: expected HOST:PORT, got ":5060"'),
        (
            '[sip]\nlisten = ["udp:127.0.0.1:5080", "UDP:127.0.0.1:5080"]',
            "sip.listen[1]: duplicate of sip.listen[0]",
        ),
        (
            '[sip]\nlisten = ["tls:127.0.0.1:5061"]',
            'sip.tls_cert: required by sip.listen[0] "tls:127.0.0.1:5061"',
        ),
        ('[sip]\npublic_host = ""', 'sip.public_host: bad host ""'),
        (
            '[sip]\npublic_host = "::1"',
            'sip.public_host: IPv6 address must be in brackets, e.g. [::1], got "::1"',
        ),
        ('[sip]\npublic_host = "-bad.example"', 'sip.public_host: bad host "-bad.example"'),
        (
            '[sip]\ntrusted_sources = ["10.0.0.0/33"]',
            'sip.trusted_sources[0]: bad CIDR "10.0.0.0/33"',
        ),
        ('[sip]\ntrusted_sources = ["any"]', 'sip.trusted_sources[0]: bad CIDR "any"'),
        ('[rtp]\nmedia_sources = ["relay"]', 'rtp.media_sources[0]: bad CIDR "relay"'),
        (
            '[rtp]\nshared_port = "relays"',
            'rtp.shared_port: "relays" shares a port among the calls from rtp.media_sources,'
            " which is empty",
        ),
        ('[rtp]\nshared_port = "all"', 'rtp.shared_port: must be one of off, relays, got "all"'),
        (
            '[rtp]\nsdes_cleartext_sources = ["10.0.0.0/8", "10.1.2.3/16"]',
            'rtp.sdes_cleartext_sources[1]: "10.1.2.3/16" has host bits set'
            ' (did you mean "10.1.0.0/16"?)',
        ),
        ("[sip]\nmax_connections = 0", "sip.max_connections: must be an integer >= 1, got 0"),
        ("[sip]\nidle_timeout_s = 0", "sip.idle_timeout_s: must be a number > 0, got 0"),
        ("[gateway]\nreconcile_s = -1", "gateway.reconcile_s: must be a number > 0, got -1"),
        ("[security]\nlock_memory = 1", "security.lock_memory: must be true or false, got 1"),
        (
            '[sip]\ntrusted_sources = ["127.0.0.0/8", "10.1.2.3/8"]',
            'sip.trusted_sources[1]: "10.1.2.3/8" has host bits set (did you mean "10.0.0.0/8"?)',
        ),
        (
            '[sip]\ntls_cert = "/nonexistent/cert.pem"',
            "sip.tls_cert: file not found: /nonexistent/cert.pem",
        ),
        (
            '[sip]\ntls_key = "/nonexistent/key.pem"',
            "sip.tls_key: file not found: /nonexistent/key.pem",
        ),
        (
            '[sip]\ntls_ca = "/nonexistent/ca.pem"',
            "sip.tls_ca: file not found: /nonexistent/ca.pem",
        ),
        # rtp
        (
            '[rtp]\naddress = "rtp.example.com"',
            'rtp.address: must be an IP address, got "rtp.example.com"',
        ),
        (
            '[rtp]\naddress = "::1"',
            'rtp.address: must be an IPv4 address (media is IPv4), got "::1"',
        ),
        ("[rtp]\nport_min = 80", "rtp.port_min: must be an integer from 1024 to 65535, got 80"),
        (
            "[rtp]\nport_max = 70000",
            "rtp.port_max: must be an integer from 1024 to 65535, got 70000",
        ),
        (
            '[rtp]\nport_min = "20000"',
            'rtp.port_min: must be an integer from 1024 to 65535, got "20000"',
        ),
        (
            "[rtp]\nport_min = 20000.0",
            "rtp.port_min: must be an integer from 1024 to 65535, got 20000.0",
        ),
        ("[rtp]\nport_min = true", "rtp.port_min: must be an integer from 1024 to 65535, got true"),
        (
            "[rtp]\nport_min = 30000\nport_max = 30000",
            "rtp.port_max: must be above rtp.port_min (30000), got 30000",
        ),
        (
            "[rtp]\nport_min = 30000\nport_max = 20000",
            "rtp.port_max: must be above rtp.port_min (30000), got 20000",
        ),
        (
            "[rtp]\nport_min = 30001\nport_max = 30002",
            "rtp.port_max: range 30001-30002 holds no even RTP port with its RTCP port",
        ),
        (
            '[rtp]\nsrtp = "mandatory"',
            'rtp.srtp: must be one of off, optional, required, got "mandatory"',
        ),
        ("[rtp]\nsrtp = false", "rtp.srtp: must be one of off, optional, required, got false"),
        # dtmf
        ('[dtmf]\ninband = "yes"', 'dtmf.inband: must be one of auto, on, off, got "yes"'),
        ("[dtmf]\ninband = true", "dtmf.inband: must be one of auto, on, off, got true"),
        # ivr
        ('[ivr]\nlanguage = "fr"', 'ivr.language: must be one of en, es, got "fr"'),
        (
            "[ivr]\nfirst_digit_timeout_s = 0",
            "ivr.first_digit_timeout_s: must be a number > 0, got 0",
        ),
        (
            "[ivr]\ninter_digit_timeout_s = -1.5",
            "ivr.inter_digit_timeout_s: must be a number > 0, got -1.5",
        ),
        (
            "[ivr]\ninter_digit_timeout_s = inf",
            "ivr.inter_digit_timeout_s: must be a number > 0, got inf",
        ),
        ('[ivr]\nmax_attempts = "x"', 'ivr.max_attempts: must be an integer >= 1, got "x"'),
        ("[ivr]\nmax_attempts = 0", "ivr.max_attempts: must be an integer >= 1, got 0"),
        ('[ivr]\nconfirm = "yes"', 'ivr.confirm: must be true or false, got "yes"'),
        ("[ivr]\nconfirm = 1", "ivr.confirm: must be true or false, got 1"),
        (
            '[ivr]\nreturn_uri = "agent@pbx"',
            'ivr.return_uri: must be a sip: or sips: URI or "", got "agent@pbx"',
        ),
        (
            '[ivr]\nreturn_uri = "sip:a b@pbx"',
            'ivr.return_uri: must be a sip: or sips: URI or "", got "sip:a b@pbx"',
        ),
        ("[ivr]\ncard_brands = []", "ivr.card_brands: must name at least one brand"),
        (
            '[ivr]\ncard_brands = ["visa", "amexx"]',
            'ivr.card_brands[1]: unknown brand "amexx" '
            "(visa, mastercard, amex, discover, diners, jcb, unionpay, maestro)",
        ),
        ('[ivr]\ncard_brands = ["visa", "visa"]', 'ivr.card_brands[1]: duplicate brand "visa"'),
        # gateway
        (
            '[gateway]\nconnector = "stripe"',
            'gateway.connector: must be one of sandbox, http, got "stripe"',
        ),
        (
            '[gateway]\nconnector = "http"\nsecret = "s"',
            'gateway.url: required when gateway.connector is "http"',
        ),
        (
            '[gateway]\nconnector = "http"\nurl = "https://pay.example.com"',
            'gateway.secret: required when gateway.connector is "http" (every request is signed)',
        ),
        (
            '[gateway]\nconnector = "http"\nsecret = "s"\nurl = "http://pay.example.com"',
            "gateway.url: must be an https:// URL (http:// is allowed only for 127.x, ::1 or "
            'localhost), got "http://pay.example.com"',
        ),
        (
            '[gateway]\nurl = "ftp://pay.example.com"',
            'gateway.url: must be an https:// URL, got "ftp://pay.example.com"',
        ),
        (
            '[gateway]\nurl = "pay.example.com"',
            'gateway.url: must be an https:// URL, got "pay.example.com"',
        ),
        (
            '[gateway]\nurl = "https://pay.example.com:99999/"',
            'gateway.url: bad URL "https://pay.example.com:99999/"',
        ),
        ("[gateway]\nsecret = 12345", "gateway.secret: must be a string, got a int value (hidden)"),
        ("[gateway]\ntimeout_s = 0", "gateway.timeout_s: must be a number > 0, got 0"),
        # handoff
        (
            "[handoff]\nsigning_secret = true",
            "handoff.signing_secret: must be a string, got a bool value (hidden)",
        ),
        ("[handoff]\nmax_age_s = -5", "handoff.max_age_s: must be a number > 0, got -5"),
        (
            '[handoff]\ncallback_allow = ["https://ok.example/", "shop.example"]',
            'handoff.callback_allow[1]: must be an https:// URL, got "shop.example"',
        ),
        (
            '[handoff]\ncallback_allow = ["http://shop.example/"]',
            "handoff.callback_allow[0]: must be an https:// URL (http:// is allowed only for "
            '127.x, ::1 or localhost), got "http://shop.example/"',
        ),
        (
            '[handoff]\ncallback_allow = "https://a/"',
            'handoff.callback_allow: must be a list of strings, got "https://a/"',
        ),
        # admin
        ('[admin]\nlisten = "9180"', 'admin.listen: expected HOST:PORT, got "9180" ("" disables)'),
        ('[admin]\nlisten = "127.0.0.1:0"', 'admin.listen: bad port "0" (1-65535) ("" disables)'),
        ("[admin]\nlisten = 9180", "admin.listen: must be a string, got 9180"),
        # log
        ('[log]\nformat = "xml"', 'log.format: must be one of json, text, got "xml"'),
        (
            '[log]\nlevel = "verbose"',
            'log.level: must be one of debug, info, warning, error, got "verbose"',
        ),
        ('[log]\ncdr_path = ""', "log.cdr_path: must be a file path"),
        ('[log]\njournal_path = ""', "log.journal_path: must be a file path"),
        (
            '[log]\ncdr_path = "/nonexistent/dir/cdr.jsonl"',
            "log.cdr_path: directory not found: /nonexistent/dir",
        ),
        # tts
        ('[tts]\ncache_dir = ""', "tts.cache_dir: must be a directory path"),
        # admission
        (
            "[admission]\nmax_tick_lag_ms = -1",
            "admission.max_tick_lag_ms: must be a number >= 0, got -1",
        ),
        (
            '[admission]\nmax_loop_lag_ms = "50"',
            'admission.max_loop_lag_ms: must be a number >= 0, got "50"',
        ),
        (
            "[admission]\nmax_loop_lag_ms = nan",
            "admission.max_loop_lag_ms: must be a number >= 0, got nan",
        ),
        ("[admission]\nresume_ratio = 0", "admission.resume_ratio: must be a number > 0, got 0"),
        (
            "[admission]\nresume_ratio = 1.5",
            "admission.resume_ratio: must be a number > 0 and <= 1, got 1.5",
        ),
        ("[admission]\nsmoothing_s = 0", "admission.smoothing_s: must be a number > 0, got 0"),
        (
            "[admission]\nretry_after_s = 0",
            "admission.retry_after_s: must be an integer from 1 to 3600, got 0",
        ),
        (
            "[admission]\nretry_after_s = 2.5",
            "admission.retry_after_s: must be an integer from 1 to 3600, got 2.5",
        ),
        ("[admission]\nmax_calls = -1", "admission.max_calls: must be an integer >= 0, got -1"),
        (
            "[admission]\nmax_call = 5",
            'unknown key "admission.max_call" (did you mean "admission.max_calls"?)',
        ),
    ],
)
def test_validation_messages(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text + "\n") == expected


def test_admission_defaults_and_env() -> None:
    admission = Config().admission
    assert (admission.max_tick_lag_ms, admission.max_loop_lag_ms) == (20.0, 50.0)
    assert (admission.resume_ratio, admission.smoothing_s) == (0.5, 1.0)
    assert (admission.retry_after_s, admission.max_calls) == (5, 0)
    env = {"SPG_ADMISSION__MAX_CALLS": "200", "SPG_ADMISSION__MAX_TICK_LAG_MS": "0"}
    loaded = load_config(None, env=env).admission
    assert (loaded.max_calls, loaded.max_tick_lag_ms) == (200, 0.0)


def test_error_key_attribute(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[sip]\nlisten = ["x:1.2.3.4:5"]\n'), env={})
    assert info.value.key == "sip.listen[0]"


def test_long_values_are_shortened_and_stay_on_one_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[ivr]\nlanguage = "' + "x" * 500 + '\\nsecond"\n')
    assert len(message) < 160
    assert message.endswith('..."') or "..." in message


def test_secret_values_never_echoed(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[gateway]\nsecret = 4111111111111111\n")
    assert "4111" not in message


# ---- TLS files, valid cases --------------------------------------------------------------------


def test_tls_listener_with_a_loadable_certificate(tmp_path: Path) -> None:
    from spg_media.tlscert import OpensslMissing, make_self_signed

    try:
        pair = make_self_signed(tmp_path)
    except OpensslMissing:
        pytest.skip("openssl not installed")
    cert, key = pair.cert, pair.key
    text = f'[sip]\nlisten = ["tls:127.0.0.1:5061"]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    config = load_config(write(tmp_path, text), env={})
    assert config.sip.listen == ("tls:127.0.0.1:5061",)


def test_tls_listener_needs_key_too(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("cert")
    text = f'[sip]\nlisten = ["tls:127.0.0.1:5061"]\ntls_cert = "{cert}"\n'
    assert error_of(tmp_path, text) == 'sip.tls_key: required by sip.listen[0] "tls:127.0.0.1:5061"'


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8480",
        "http://127.5.6.7/",
        "http://localhost:8480/api",
        "http://[::1]:8480",
        "https://pay.example.com/v2/",
    ],
)
def test_http_allowed_for_loopback(url: str) -> None:
    config = Config().with_overrides(gateway={"connector": "http", "url": url, "secret": "s"})
    assert config.gateway.url == url


def test_odd_port_min_with_room_is_fine() -> None:
    config = Config().with_overrides(rtp={"port_min": 30001, "port_max": 30003})
    assert (config.rtp.port_min, config.rtp.port_max) == (30001, 30003)


# ---- parse_listen, parse_host_port -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("udp:127.0.0.1:5080", ListenSpec("udp", "127.0.0.1", 5080)),
        ("TCP:0.0.0.0:5060", ListenSpec("tcp", "0.0.0.0", 5060)),
        ("tls:[2001:db8::1]:5061", ListenSpec("tls", "2001:db8::1", 5061)),
        ("udp:sip.example.com:1", ListenSpec("udp", "sip.example.com", 1)),
        ("udp:localhost:65535", ListenSpec("udp", "localhost", 65535)),
    ],
)
def test_parse_listen(spec: str, expected: ListenSpec) -> None:
    assert parse_listen(spec) == expected
    parsed = parse_listen(spec)
    assert (parsed.transport, parsed.host, parsed.port) == tuple(expected)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", 'expected udp|tcp|tls:HOST:PORT, got ""'),
        ("udp", 'expected udp|tcp|tls:HOST:PORT, got "udp"'),
        ("sctp:1.2.3.4:5", 'bad transport "sctp" (udp, tcp or tls)'),
        ("udp:1.2.3:5060", 'bad IPv4 address "1.2.3"'),
        ("udp:[::1:5060", 'IPv6 address must be in brackets, e.g. [::1], got "[::1"'),
        ("udp:host name:5060", 'bad host "host name"'),
        ("udp:" + "a" * 64 + ":5060", f'bad host "{"a" * 64}"'),
    ],
)
def test_parse_listen_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_listen(spec)
    assert str(info.value) == message


def test_parse_host_port() -> None:
    assert parse_host_port("[::1]:9180") == ("::1", 9180)
    assert parse_host_port("admin.local:80") == ("admin.local", 80)
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        parse_host_port("admin.local")


# ---- overrides for the CLI ---------------------------------------------------------------------


def test_with_overrides_validates_and_keeps_the_rest() -> None:
    base = Config()
    config = base.with_overrides(sip={"listen": ["udp:127.0.0.1:6000"]}, admin={"listen": ""})
    assert config.sip.listen == ("udp:127.0.0.1:6000",)
    assert config.admin.listen == ""
    assert config.rtp == base.rtp
    assert base.sip.listen == ("udp:127.0.0.1:5080", "tcp:127.0.0.1:5080")  # unchanged
    with pytest.raises(ConfigError) as info:
        base.with_overrides(sip={"listen": ["sctp:127.0.0.1:6000"]})
    assert str(info.value) == 'sip.listen[0]: bad transport "sctp" (udp, tcp or tls)'
    with pytest.raises(ConfigError, match=r'unknown key "admin\.lisen"'):
        base.with_overrides(admin={"lisen": ""})
    with pytest.raises(ConfigError, match='unknown key "adm"'):
        base.with_overrides(adm={"listen": ""})


def test_dataclasses_replace_validates_too() -> None:
    base = Config()
    sip = dataclasses.replace(base.sip, listen=("tcp:127.0.0.1:7000",))
    assert dataclasses.replace(base, sip=sip).sip.listen == ("tcp:127.0.0.1:7000",)
    with pytest.raises(ConfigError, match=r"^admin\.listen: "):
        dataclasses.replace(base.admin, listen="nonsense")
    with pytest.raises(ConfigError, match=r"^ivr\.max_attempts: "):
        IvrConfig(max_attempts=0)


def test_sections_are_frozen_and_lists_become_tuples() -> None:
    sip = SipConfig(listen=["udp:127.0.0.1:5080"])  # type: ignore[arg-type]
    assert sip.listen == ("udp:127.0.0.1:5080",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sip.public_host = "x"  # type: ignore[misc]
    assert AdminConfig(listen="").listen == ""
    assert set(IvrConfig().card_brands) == set(CARD_BRANDS)


# ---- under a service manager: records in $STATE_DIRECTORY, prompt cache in $CACHE_DIRECTORY ----


def test_without_service_directories_paths_stay_relative_to_the_working_directory() -> None:
    config = load_config(None, env={})
    assert (config.log.cdr_path, config.log.journal_path) == ("cdr.jsonl", "journal.jsonl")
    assert config.tts.cache_dir == ".spg-cache/prompts"


def test_service_directories_hold_the_records_and_the_prompt_cache(tmp_path: Path) -> None:
    state, cache = tmp_path / "lib", tmp_path / "cache"
    state.mkdir()
    cache.mkdir()
    # systemd's own form: one directory per StateDirectory= entry, colon-separated
    env = {"STATE_DIRECTORY": f"{state}:{tmp_path / 'other'}", "CACHE_DIRECTORY": str(cache)}
    config = load_config(None, env=env)
    assert config.log.cdr_path == str(state / "cdr.jsonl")
    assert config.log.journal_path == str(state / "journal.jsonl")
    assert config.tts.cache_dir == str(cache / ".spg-cache" / "prompts")
    # the example file's relative values and overrides go there too; absolute paths are kept
    (state / "records").mkdir()
    text = '[log]\ncdr_path = "records/cdr.jsonl"\njournal_path = "journal.jsonl"\n'
    config = load_config(write(tmp_path, text), env={**env, "SPG_TTS__CACHE_DIR": "tts"})
    assert config.log.cdr_path == str(state / "records" / "cdr.jsonl")
    assert config.log.journal_path == str(state / "journal.jsonl")
    assert config.tts.cache_dir == str(cache / "tts")
    absolute = f'[log]\ncdr_path = "{tmp_path}/cdr.jsonl"\n[tts]\ncache_dir = "/var/tmp/p"\n'
    config = load_config(write(tmp_path, absolute), env=env)
    assert (config.log.cdr_path, config.tts.cache_dir) == (f"{tmp_path}/cdr.jsonl", "/var/tmp/p")
    assert load_config(REPO / "spg.example.toml", env=env) == load_config(None, env=env)


def test_only_its_own_variable_moves_a_path(tmp_path: Path) -> None:
    config = load_config(None, env={"CACHE_DIRECTORY": str(tmp_path), "STATE_DIRECTORY": ""})
    assert config.log.cdr_path == "cdr.jsonl"
    assert config.tts.cache_dir == str(tmp_path / ".spg-cache" / "prompts")


def test_a_missing_state_directory_is_named(tmp_path: Path) -> None:
    message = error_of(tmp_path, "", env={"STATE_DIRECTORY": "/nonexistent/spg"})
    assert message == ("log.cdr_path: directory not found: /nonexistent/spg (from STATE_DIRECTORY)")
    message = error_of(
        tmp_path,
        "",
        env={"STATE_DIRECTORY": str(tmp_path), "SPG_LOG__JOURNAL_PATH": "gone/journal.jsonl"},
    )
    assert message == (
        f"log.journal_path: directory not found: {tmp_path}/gone "
        "(from SPG_LOG__JOURNAL_PATH under STATE_DIRECTORY)"
    )
