"""Configuration: the TOML file, `SPG_SECTION__KEY` environment overrides, and validation.

This module owns the configuration's shape: one frozen dataclass per section, their defaults,
and the rules each key must satisfy. Every section validates itself in `__post_init__`, so a
config built by `load_config`, by `Config.with_overrides` or by `dataclasses.replace` is always
a valid one.

Every problem is a `ConfigError` whose message is one line naming the key
(`ivr.max_attempts: must be an integer >= 1, got "x"`), fit for the CLI's exit status 2.

Paths in the config (`sip.tls_cert`, `sip.tls_key`, `sip.tls_ca`, `log.cdr_path`,
`log.journal_path`, `tts.cache_dir`) are relative to the working directory of the process, as
the server opens them; except that under a service manager that names the service's directories
(systemd's `StateDirectory=` and `CacheDirectory=` set `$STATE_DIRECTORY`, `$CACHE_DIRECTORY`),
relative `log.cdr_path` and `log.journal_path` are under `$STATE_DIRECTORY` and a relative
`tts.cache_dir` under `$CACHE_DIRECTORY`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

__all__ = [
    "CARD_BRANDS",
    "AdminConfig",
    "AdmissionConfig",
    "Config",
    "ConfigError",
    "DtmfConfig",
    "GatewayConfig",
    "HandoffConfig",
    "IvrConfig",
    "ListenSpec",
    "LogConfig",
    "RtpConfig",
    "SecurityConfig",
    "SipConfig",
    "TtsConfig",
    "load_config",
    "parse_host_port",
    "parse_listen",
]

CARD_BRANDS: tuple[str, ...] = (
    "visa",
    "mastercard",
    "amex",
    "discover",
    "diners",
    "jcb",
    "unionpay",
    "maestro",
)
TRANSPORTS = ("udp", "tcp", "tls")
LANGUAGES = ("en", "es")
ENV_PREFIX = "SPG_"


class ConfigError(Exception):
    """A bad config: one line naming the key (`key` is None for file-level problems)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        # One line, whatever the input: the CLI prints it as is.
        super().__init__(" ".join(message.split()))
        self.key = key


def _key_error(key: str, problem: str) -> ConfigError:
    return ConfigError(f"{key}: {problem}", key)


def _show(value: Any, secret: bool = False) -> str:
    """A value as it would be written in TOML, short and on one line, for error messages."""
    if secret:
        return "(hidden)" if isinstance(value, str) else f"a {type(value).__name__} value (hidden)"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = json.dumps(value) if isinstance(value, str) else repr(value)
    elif isinstance(value, list | tuple):
        text = json.dumps(list(value), default=str)
    else:
        text = type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


# ---- rules: the type and range of one key, and how an environment string becomes that type ----


class _Rule:
    """What one key accepts. `check` returns the value normalised, or raises naming the key."""

    describe = "a value"

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def normalise(self, value: Any) -> Any:
        return value

    def from_env(self, text: str) -> Any:
        return text

    def check(self, key: str, value: Any, secret: bool = False) -> Any:
        if not self.accepts(value):
            raise _key_error(key, f"must be {self.describe}, got {_show(value, secret)}")
        return self.normalise(value)


class _Str(_Rule):
    describe = "a string"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str)


class _Choice(_Rule):
    def __init__(self, *options: str) -> None:
        self.options = options
        self.describe = "one of " + ", ".join(options)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.options


class _Int(_Rule):
    def __init__(self, lo: int, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi
        self.describe = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return value >= self.lo and (self.hi is None or value <= self.hi)

    def from_env(self, text: str) -> Any:
        stripped = text.strip()
        return int(stripped) if re.fullmatch(r"[+-]?\d{1,18}", stripped) else text


class _PositiveNumber(_Rule):
    describe = "a number > 0"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return math.isfinite(value) and value > 0

    def normalise(self, value: Any) -> Any:
        return float(value)

    def from_env(self, text: str) -> Any:
        try:
            return float(text.strip())
        except ValueError:
            return text


class _NonNegativeNumber(_PositiveNumber):
    describe = "a number >= 0"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return math.isfinite(value) and value >= 0


_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


class _Bool(_Rule):
    describe = "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def from_env(self, text: str) -> Any:
        return _BOOL_WORDS.get(text.strip().lower(), text)


class _StrList(_Rule):
    describe = "a list of strings"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)

    def normalise(self, value: Any) -> Any:
        return tuple(value)

    def from_env(self, text: str) -> Any:
        stripped = text.strip()
        if stripped.startswith("["):
            # A TOML array, for values that contain commas.
            try:
                return tomllib.loads(f"v = {stripped}")["v"]
            except tomllib.TOMLDecodeError:
                return text
        return [item.strip() for item in stripped.split(",") if item.strip()]


def _rule(default: Any, rule: _Rule, *, secret: bool = False) -> Any:
    return field(default=default, repr=not secret, metadata={"rule": rule, "secret": secret})


def _rule_list(default: tuple[str, ...], rule: _Rule) -> Any:
    return field(default=default, metadata={"rule": rule, "secret": False})


class _Section:
    """Base of the section dataclasses: type checks every field, then the section's own rules."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            rule: _Rule = f.metadata["rule"]
            key = f"{self.SECTION}.{f.name}"
            value = rule.check(key, getattr(self, f.name), f.metadata["secret"])
            object.__setattr__(self, f.name, value)  # frozen: normalise in place (list -> tuple)
        self._validate()

    def _validate(self) -> None:
        """Rules beyond one key's type and range."""


# ---- host, port and listen specs ---------------------------------------------------------------


class ListenSpec(NamedTuple):
    """A SIP listener: `udp|tcp|tls:HOST:PORT`; `host` has no IPv6 brackets."""

    transport: str
    host: str
    port: int


_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _host_problem(host: str) -> str | None:
    """Why `host` is not an IPv4 address, a bracketed IPv6 address or a hostname (None: it is)."""
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"bad IPv6 address {_show(host)}"
        return None
    if ":" in host:
        return f"IPv6 address must be in brackets, e.g. [::1], got {_show(host)}"
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"bad IPv4 address {_show(host)}"
        return None
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_HOSTNAME_LABEL.fullmatch(x) for x in labels):
        return f"bad host {_show(host)}"
    return None


def _port_problem(text: str) -> str | None:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        return f"bad port {_show(text)} (1-65535)"
    return None


def parse_host_port(spec: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) to (host without brackets, port); raises ConfigError."""
    host, sep, port = spec.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"expected HOST:PORT, got {_show(spec)}")
    problem = _host_problem(host) or _port_problem(port)
    if problem:
        raise ConfigError(problem)
    return host.strip("[]"), int(port)


def parse_listen(spec: str) -> ListenSpec:
    """`udp|tcp|tls:HOST:PORT` to a ListenSpec; raises ConfigError (message without a key)."""
    transport, sep, rest = spec.partition(":")
    if not sep or ":" not in rest:
        raise ConfigError(f"expected udp|tcp|tls:HOST:PORT, got {_show(spec)}")
    if transport.lower() not in TRANSPORTS:
        raise ConfigError(f"bad transport {_show(transport)} (udp, tcp or tls)")
    host, port = parse_host_port(rest)
    return ListenSpec(transport.lower(), host, port)


def is_loopback_host(host: str) -> bool:
    """localhost, *.localhost, or a loopback address (127.x, ::1); not a name or "" (any)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_problem(url: str) -> str | None:
    """Why `url` is not an https URL (http is accepted for loopback hosts only)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        return f"bad URL {_show(url)}"
    if parts.scheme not in ("https", "http") or not host or any(c.isspace() for c in url):
        return f"must be an https:// URL, got {_show(url)}"
    if parts.scheme == "http" and not is_loopback_host(host):
        return (
            f"must be an https:// URL (http:// is allowed only for 127.x, ::1 or localhost), "
            f"got {_show(url)}"
        )
    return None


# ---- the sections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SipConfig(_Section):
    SECTION: ClassVar[str] = "sip"

    listen: tuple[str, ...] = _rule_list(("udp:127.0.0.1:5080", "tcp:127.0.0.1:5080"), _StrList())
    public_host: str = _rule("127.0.0.1", _Str())
    trusted_sources: tuple[str, ...] = _rule_list(("127.0.0.0/8",), _StrList())
    tls_cert: str = _rule("", _Str())
    tls_key: str = _rule("", _Str())
    tls_ca: str = _rule("", _Str())  # CAs our own TLS connections trust ("": the system's)
    max_connections: int = _rule(1024, _Int(1))  # open TCP/TLS connections, in and out
    tls_handshake_timeout_s: float = _rule(5.0, _PositiveNumber())
    idle_timeout_s: float = _rule(60.0, _PositiveNumber())  # a connection no call is using
    header_timeout_s: float = _rule(10.0, _PositiveNumber())  # first byte to a whole message

    def _validate(self) -> None:
        if not self.listen:
            raise _key_error("sip.listen", "must name at least one listener")
        seen: dict[ListenSpec, int] = {}
        for index, spec in enumerate(self.listen):
            key = f"sip.listen[{index}]"
            try:
                parsed = parse_listen(spec)
            except ConfigError as exc:
                raise _key_error(key, str(exc)) from None
            if parsed in seen:
                raise _key_error(key, f"duplicate of sip.listen[{seen[parsed]}]")
            seen[parsed] = index
            if parsed.transport == "tls":
                for name in ("tls_cert", "tls_key"):
                    if not getattr(self, name):
                        raise _key_error(f"sip.{name}", f"required by {key} {_show(spec)}")
        problem = _host_problem(self.public_host)
        if problem:
            raise _key_error("sip.public_host", problem)
        _check_cidrs("sip.trusted_sources", self.trusted_sources)
        for name in ("tls_cert", "tls_key", "tls_ca"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise _key_error(f"sip.{name}", f"file not found: {path}")
        if self.tls_cert and self.tls_key:
            problem = _tls_pair_problem(self.tls_cert, self.tls_key)
            if problem:
                raise _key_error("sip.tls_cert", problem)
        if self.tls_ca:
            problem = _tls_ca_problem(self.tls_ca)
            if problem:
                raise _key_error("sip.tls_ca", problem)

    def client_tls(self) -> ssl.SSLContext | None:
        """The context our own TLS connections use (they verify the peer's certificate and
        name): the CAs of sip.tls_ca, or None for the system's."""
        if not self.tls_ca:
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def _check_cidrs(key: str, values: tuple[str, ...]) -> None:
    """Each value a network in CIDR form without host bits, else a ConfigError naming it."""
    for index, source in enumerate(values):
        item = f"{key}[{index}]"
        try:
            ipaddress.ip_network(source)
        except ValueError:
            try:
                loose = ipaddress.ip_network(source, strict=False)
            except ValueError:
                raise _key_error(item, f"bad CIDR {_show(source)}") from None
            raise _key_error(
                item, f"{_show(source)} has host bits set (did you mean {_show(str(loose))}?)"
            ) from None


def _tls_pair_problem(cert: str, key: str) -> str | None:
    """Why a TLS listener could not load this certificate and key, or None (a bad PEM or a key
    that does not match must stop the start with a clear line, not a traceback)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        return f"cannot load with sip.tls_key: {exc.reason or 'not a PEM certificate and key'}"
    except OSError as exc:
        return f"cannot load with sip.tls_key: {exc.strerror or exc}"
    return None


def _tls_ca_problem(path: str) -> str | None:
    """Why this file cannot serve as the CAs to trust, or None."""
    try:
        context = ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:
        return f"cannot load: {exc.reason or 'not PEM certificates'}"
    except OSError as exc:
        return f"cannot load: {exc.strerror or exc}"
    if not context.get_ca_certs():
        return "cannot load: no CA certificate in it"
    return None


@dataclass(frozen=True)
class RtpConfig(_Section):
    SECTION: ClassVar[str] = "rtp"

    address: str = _rule("127.0.0.1", _Str())
    port_min: int = _rule(20000, _Int(1024, 65535))
    port_max: int = _rule(29999, _Int(1024, 65535))
    srtp: str = _rule("optional", _Choice("off", "optional", "required"))
    # Where media may come from before a call has latched: CIDRs of a media relay in front
    # (empty: only the address of the caller's SDP c= line).
    media_sources: tuple[str, ...] = _rule_list((), _StrList())
    # "relays": the calls whose SDP address is in media_sources share one port pair, read
    # and written in batches (fewer system calls a packet); "off": every call a port of its own.
    shared_port: str = _rule("off", _Choice("off", "relays"))
    # Sources whose SDES keys may arrive over cleartext SIP (UDP/TCP): a private link from
    # your own Kamailio. Empty: RTP/SAVP offers are taken over TLS only.
    sdes_cleartext_sources: tuple[str, ...] = _rule_list((), _StrList())

    def _validate(self) -> None:
        _check_cidrs("rtp.media_sources", self.media_sources)
        if self.shared_port == "relays" and not self.media_sources:
            raise _key_error(
                "rtp.shared_port",
                '"relays" shares a port among the calls from rtp.media_sources, which is empty',
            )
        _check_cidrs("rtp.sdes_cleartext_sources", self.sdes_cleartext_sources)
        try:
            address = ipaddress.ip_address(self.address)
        except ValueError:
            raise _key_error(
                "rtp.address", f"must be an IP address, got {_show(self.address)}"
            ) from None
        if address.version != 4:  # the media engine opens IPv4 sockets only
            raise _key_error(
                "rtp.address", f"must be an IPv4 address (media is IPv4), got {_show(self.address)}"
            )
        if self.port_max <= self.port_min:
            raise _key_error(
                "rtp.port_max", f"must be above rtp.port_min ({self.port_min}), got {self.port_max}"
            )
        # RTP takes an even port and RTCP the odd one above it (an odd port_min is rounded up).
        first_even = self.port_min + self.port_min % 2
        if first_even + 1 > self.port_max:
            raise _key_error(
                "rtp.port_max",
                f"range {self.port_min}-{self.port_max} holds no even RTP port with its RTCP port",
            )


@dataclass(frozen=True)
class DtmfConfig(_Section):
    SECTION: ClassVar[str] = "dtmf"

    inband: str = _rule("auto", _Choice("auto", "on", "off"))


@dataclass(frozen=True)
class IvrConfig(_Section):
    SECTION: ClassVar[str] = "ivr"

    language: str = _rule("en", _Choice(*LANGUAGES))
    first_digit_timeout_s: float = _rule(10.0, _PositiveNumber())
    inter_digit_timeout_s: float = _rule(5.0, _PositiveNumber())
    max_attempts: int = _rule(3, _Int(1))
    confirm: bool = _rule(False, _Bool())
    return_uri: str = _rule("", _Str())
    card_brands: tuple[str, ...] = _rule_list(CARD_BRANDS, _StrList())
    # "dtmf": keys only; "dtmf speech": callers may also say their digits (recognised offline in
    # the node, for languages with a speech model; the others stay keypad-only)
    input: str = _rule("dtmf", _Choice("dtmf", "dtmf speech"))

    def _validate(self) -> None:
        uri = self.return_uri
        if uri and (
            not re.match(r"(?i)sips?:[^\s<>]+$", uri) or uri.split(":", 1)[1].startswith("@")
        ):
            raise _key_error(
                "ivr.return_uri", f'must be a sip: or sips: URI or "", got {_show(uri)}'
            )
        if not self.card_brands:
            raise _key_error("ivr.card_brands", "must name at least one brand")
        for index, brand in enumerate(self.card_brands):
            key = f"ivr.card_brands[{index}]"
            if brand not in CARD_BRANDS:
                raise _key_error(key, f"unknown brand {_show(brand)} ({', '.join(CARD_BRANDS)})")
            if brand in self.card_brands[:index]:
                raise _key_error(key, f"duplicate brand {_show(brand)}")


@dataclass(frozen=True)
class GatewayConfig(_Section):
    SECTION: ClassVar[str] = "gateway"

    connector: str = _rule("sandbox", _Choice("sandbox", "http"))
    url: str = _rule("", _Str())
    secret: str = _rule("", _Str(), secret=True)
    timeout_s: float = _rule(10.0, _PositiveNumber())
    # After a timeout, reset or 5xx on an authorisation: how long to keep asking the platform
    # whether it charged, before the result stays error with the charge state unknown.
    reconcile_s: float = _rule(20.0, _PositiveNumber())

    def _validate(self) -> None:
        if self.connector == "http":
            if not self.url:
                raise _key_error("gateway.url", 'required when gateway.connector is "http"')
            if not self.secret:
                raise _key_error(
                    "gateway.secret",
                    'required when gateway.connector is "http" (every request is signed)',
                )
        if self.url:
            problem = _url_problem(self.url)
            if problem:
                raise _key_error("gateway.url", problem)


@dataclass(frozen=True)
class HandoffConfig(_Section):
    SECTION: ClassVar[str] = "handoff"

    signing_secret: str = _rule("", _Str(), secret=True)
    max_age_s: float = _rule(300.0, _PositiveNumber())
    callback_allow: tuple[str, ...] = _rule_list((), _StrList())

    def _validate(self) -> None:
        for index, prefix in enumerate(self.callback_allow):
            problem = _url_problem(prefix)
            if problem:
                raise _key_error(f"handoff.callback_allow[{index}]", problem)


@dataclass(frozen=True)
class AdminConfig(_Section):
    SECTION: ClassVar[str] = "admin"

    # HOST:PORT; "" disables the admin endpoint; unix:PATH is how a worker of `serve --workers`
    # answers its supervisor
    listen: str = _rule("127.0.0.1:9180", _Str())

    def _validate(self) -> None:
        if self.listen.startswith("unix:"):
            if len(self.listen) == len("unix:"):
                raise _key_error("admin.listen", "unix: needs a socket path")
        elif self.listen:
            try:
                parse_host_port(self.listen)
            except ConfigError as exc:
                raise _key_error("admin.listen", f'{exc} ("" disables)') from None


@dataclass(frozen=True)
class AdmissionConfig(_Section):
    """When the node refuses new calls (503 with Retry-After) rather than degrade the calls it
    has: its media tick's smoothed busy fraction, or its smoothed media-tick and event-loop
    lags, past their limits, or a call cap."""

    SECTION: ClassVar[str] = "admission"

    max_tick_busy: float = _rule(0.7, _NonNegativeNumber())  # 0: not checked; at most 1
    max_tick_lag_ms: float = _rule(20.0, _NonNegativeNumber())  # 0: not checked
    max_loop_lag_ms: float = _rule(50.0, _NonNegativeNumber())  # 0: not checked
    resume_ratio: float = _rule(0.5, _PositiveNumber())  # accept again below ratio x limit
    smoothing_s: float = _rule(1.0, _PositiveNumber())
    retry_after_s: int = _rule(5, _Int(1, 3600))
    max_calls: int = _rule(0, _Int(0))  # 0: no cap

    def _validate(self) -> None:
        if self.max_tick_busy > 1:
            raise _key_error(
                "admission.max_tick_busy",
                f"must be a number >= 0 and <= 1, got {self.max_tick_busy}",
            )
        if self.resume_ratio > 1:
            raise _key_error(
                "admission.resume_ratio", f"must be a number > 0 and <= 1, got {self.resume_ratio}"
            )


@dataclass(frozen=True)
class LogConfig(_Section):
    SECTION: ClassVar[str] = "log"

    format: str = _rule("json", _Choice("json", "text"))
    level: str = _rule("info", _Choice("debug", "info", "warning", "error"))
    cdr_path: str = _rule("cdr.jsonl", _Str())
    # Authorisations in flight: a line before each request to the platform and one after its
    # answer (no card data), fsync'd, for `spg-media reconcile` after a crash.
    journal_path: str = _rule("journal.jsonl", _Str())

    def _validate(self) -> None:
        for key in ("cdr_path", "journal_path"):
            path = getattr(self, key)
            if not path:
                raise _key_error(f"log.{key}", "must be a file path")
            parent = Path(path).parent
            if not parent.is_dir():
                raise _key_error(f"log.{key}", f"directory not found: {parent}")


@dataclass(frozen=True)
class TtsConfig(_Section):
    SECTION: ClassVar[str] = "tts"

    cache_dir: str = _rule(".spg-cache/prompts", _Str())  # rendered prompts, created on demand

    def _validate(self) -> None:
        if not self.cache_dir:
            raise _key_error("tts.cache_dir", "must be a directory path")


@dataclass(frozen=True)
class SecurityConfig(_Section):
    SECTION: ClassVar[str] = "security"

    # mlockall(MCL_CURRENT | MCL_FUTURE) at start: card data never reaches swap. Needs
    # CAP_IPC_LOCK or a large enough RLIMIT_MEMLOCK; a failure stops the start.
    lock_memory: bool = _rule(False, _Bool())


@dataclass(frozen=True)
class AssistConfig(_Section):
    """Agent-assisted mode: calls bridged to an agent while the node masks the keys pressed
    (the customer's toward the agent, and the agent's toward the customer)."""

    SECTION: ClassVar[str] = "assist"

    # Request-URI users that enter assisted mode (as does an INVITE with X-SPG-Mode: assist)
    users: tuple[str, ...] = _rule_list(("assist",), _StrList())
    # where the agent leg goes when neither X-SPG-Agent nor the x-spg-agent URI parameter says
    agent_uri: str = _rule("", _Str())
    # HOST:PORT of the payment-session API and the agent page; "" disables assisted mode's API
    listen: str = _rule("127.0.0.1:9280", _Str())
    api_token: str = _rule("", _Str(), secret=True)  # bearer token of the API; required to serve it
    mask: str = _rule("tone", _Choice("tone", "silence", "noise"))  # what replaces a key's tone
    # an agent leg unanswered this long is cancelled and the customer gets 480
    ring_timeout_s: float = _rule(120.0, _PositiveNumber())

    def _validate(self) -> None:
        uri = self.agent_uri
        if uri and (
            not re.match(r"(?i)sips?:[^\s<>]+$", uri) or uri.split(":", 1)[1].startswith("@")
        ):
            raise _key_error(
                "assist.agent_uri", f'must be a sip: or sips: URI or "", got {_show(uri)}'
            )
        if self.listen:
            try:
                parse_host_port(self.listen)
            except ConfigError as exc:
                raise _key_error("assist.listen", f'{exc} ("" disables)') from None


@dataclass(frozen=True)
class SpeechConfig(_Section):
    """Voice entry of card digits (with ivr.input = "dtmf speech")."""

    SECTION: ClassVar[str] = "speech"

    # recognitions running at once in this process; a caller past it is asked for keys only
    max_concurrent: int = _rule(8, _Int(1, 1024))
    # the recogniser: "whisper-tiny.en" (Whisper tiny.en, the default), "whisper-base" (Whisper
    # base: more CPU, more digit errors on the speech bench) or "pocketsphinx" (lighter, far less
    # accurate); all are installed with the package
    recogniser: str = _rule(
        "whisper-tiny.en", _Choice("whisper-tiny.en", "whisper-base", "pocketsphinx")
    )
    # recogniser processes of this node process (each loads the model, 200-520 MB): 0 = one per
    # core, shared out among the workers of `serve --workers N`
    processes: int = _rule(0, _Int(0, 256))


@dataclass(frozen=True)
class ProcessConfig(_Section):
    SECTION: ClassVar[str] = "process"

    # Worker processes of `serve` (each a whole node on its own SIP ports and RTP slice, under
    # one supervisor): 0 = one per core, 1 = a single process with no supervisor.
    workers: int = _rule(0, _Int(0, 256))
    # Python's garbage collector in `serve` (spg_media/gcpolicy.py): start-up's objects frozen
    # and a young generation collected every this many net allocations; 0 = Python's defaults.
    gc_young_threshold: int = _rule(20_000, _Int(0, 10_000_000))


_SECTIONS: dict[str, type[_Section]] = {
    cls.SECTION: cls
    for cls in (
        SipConfig,
        RtpConfig,
        DtmfConfig,
        IvrConfig,
        GatewayConfig,
        HandoffConfig,
        AdminConfig,
        AdmissionConfig,
        LogConfig,
        TtsConfig,
        SecurityConfig,
        AssistConfig,
        SpeechConfig,
        ProcessConfig,
    )
}


@dataclass(frozen=True)
class Config:
    """The whole configuration; every section is already valid."""

    sip: SipConfig = field(default_factory=SipConfig)
    rtp: RtpConfig = field(default_factory=RtpConfig)
    dtmf: DtmfConfig = field(default_factory=DtmfConfig)
    ivr: IvrConfig = field(default_factory=IvrConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    handoff: HandoffConfig = field(default_factory=HandoffConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    log: LogConfig = field(default_factory=LogConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    assist: AssistConfig = field(default_factory=AssistConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)

    def with_overrides(self, **section_changes: Mapping[str, Any]) -> Config:
        """A validated copy with keys changed: `with_overrides(admin={"listen": ""})`."""
        changes: dict[str, _Section] = {}
        for section, keys in section_changes.items():
            _check_known(section, list(keys))
            changes[section] = dataclasses.replace(getattr(self, section), **keys)
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


# ---- loading -----------------------------------------------------------------------------------


def _all_keys() -> list[str]:
    return [
        f"{name}.{f.name}"
        for name, cls in _SECTIONS.items()
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    ]


def _unknown(key: str, origin: str = "") -> ConfigError:
    section, dot, name = key.partition(".")
    if dot and section in _SECTIONS:
        # Its own section's keys by name (with the shared "sip." prefix any key looked close),
        # then the same name in another section (a key put in the wrong table).
        own = [f.name for f in dataclasses.fields(_SECTIONS[section])]  # type: ignore[arg-type]
        close = [f"{section}.{m}" for m in difflib.get_close_matches(name, own, n=1, cutoff=0.6)]
        if not close:
            elsewhere = {k.partition(".")[2]: k for k in _all_keys() if k.split(".")[0] != section}
            close = [elsewhere[m] for m in difflib.get_close_matches(name, elsewhere, 1, 0.8)]
    else:
        candidates = _all_keys() if dot else list(_SECTIONS)
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    hint = f" (did you mean {_show(close[0])}?)" if close else ""
    where = f" (from {origin})" if origin else ""
    return ConfigError(f"unknown key {_show(key)}{hint}{where}", key)


def _check_known(section: str, keys: list[str], origin: str = "") -> None:
    if section not in _SECTIONS:
        raise _unknown(section, origin)
    names = {f.name for f in dataclasses.fields(_SECTIONS[section])}  # type: ignore[arg-type]
    for key in keys:
        if key not in names:
            raise _unknown(f"{section}.{key}", origin)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        text = str(exc)
        where = re.search(r"\(at line (\d+), column \d+\)$", text)
        detail = re.sub(r"\s*\(at [^)]*\)$", "", text)
        line = f" at line {where.group(1)}" if where else ""
        if "(at end of document)" in text:
            line = " at end of file"
        raise ConfigError(f"{path}: TOML syntax error{line}: {detail}") from None


def _env_overrides(env: Mapping[str, str]) -> dict[tuple[str, str], tuple[str, str]]:
    """{(section, key): (text, variable name)} from SPG_SECTION__KEY variables."""
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX) or "__" not in name:
            continue  # other SPG_ variables are not config keys
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        _check_known(section, [key], origin=name)
        found[(section, key)] = (env[name], name)
    return found


# The keys whose relative paths go under a directory the service manager made for the service:
# a service's working directory is / (read-only under ProtectSystem=strict), and its records
# (CDR, journal) and its prompt cache have their own places (/var/lib/..., /var/cache/...).
SERVICE_DIRECTORIES: dict[tuple[str, str], str] = {
    ("log", "cdr_path"): "STATE_DIRECTORY",
    ("log", "journal_path"): "STATE_DIRECTORY",
    ("tts", "cache_dir"): "CACHE_DIRECTORY",
}


def _place_in_service_directories(
    values: dict[str, dict[str, Any]], env: Mapping[str, str], origins: dict[str, str]
) -> None:
    """Put the relative paths of SERVICE_DIRECTORIES (from the file, an override or the
    default) under `$STATE_DIRECTORY` / `$CACHE_DIRECTORY` when those are set (an error about
    such a path then names the variable too)."""
    for (section, key), variable in SERVICE_DIRECTORIES.items():
        # systemd lists one directory per StateDirectory= entry, colon-separated: ours is first
        base = env.get(variable, "").split(":")[0]
        if not base:
            continue
        default = next(
            f.default
            for f in dataclasses.fields(_SECTIONS[section])  # type: ignore[arg-type]
            if f.name == key
        )
        value = values.get(section, {}).get(key, default)
        if isinstance(value, str) and value and not os.path.isabs(value):
            values.setdefault(section, {})[key] = os.path.join(base, value)
            name = f"{section}.{key}"
            origins[name] = f"{origins[name]} under {variable}" if name in origins else variable


def load_config(path: str | Path | None, env: Mapping[str, str] = os.environ) -> Config:
    """The config from `path` (None: defaults only), then `SPG_SECTION__KEY` overrides from env."""
    raw: dict[str, Any] = _read_toml(Path(path)) if path is not None else {}
    values: dict[str, dict[str, Any]] = {}
    for section, table in raw.items():
        if section in _SECTIONS and not isinstance(table, dict):
            raise _key_error(section, f"must be a table ([{section}])")
        if not isinstance(table, dict):
            raise _unknown(section)
        _check_known(section, list(table))
        values[section] = dict(table)

    origins: dict[str, str] = {}
    for (section, key), (text, variable) in _env_overrides(env).items():
        f = next(f for f in dataclasses.fields(_SECTIONS[section]) if f.name == key)  # type: ignore[arg-type]
        rule: _Rule = f.metadata["rule"]
        values.setdefault(section, {})[key] = rule.from_env(text)
        origins[f"{section}.{key}"] = variable

    _place_in_service_directories(values, env, origins)

    sections: dict[str, _Section] = {}
    for section, cls in _SECTIONS.items():
        try:
            sections[section] = cls(**values.get(section, {}))
        except ConfigError as exc:
            source = next(
                (
                    v
                    for k, v in origins.items()
                    if exc.key and (exc.key == k or exc.key.startswith(k + "["))
                ),
                None,
            )
            if source:
                raise ConfigError(f"{exc} (from {source})", exc.key) from None
            raise
    return Config(**sections)  # type: ignore[arg-type]
