"""SIP URIs, name-addr values, Via, CSeq and header lists: parsed values, round trips, errors."""

from __future__ import annotations

import pytest

from spg_media.sip.uri import (
    NameAddr,
    SipSyntaxError,
    SipUri,
    Via,
    parse_cseq,
    split_header_list,
    unescape,
)

# ---- SipUri -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "scheme", "user", "password", "host", "port"),
    [
        ("sip:alice@atlanta.com", "sip", "alice", None, "atlanta.com", None),
        ("SIP:alice@atlanta.com", "sip", "alice", None, "atlanta.com", None),
        ("sips:bob@biloxi.com:5061", "sips", "bob", None, "biloxi.com", 5061),
        (
            "sip:alice:secretword@atlanta.com;transport=tcp",
            "sip",
            "alice",
            "secretword",
            "atlanta.com",
            None,
        ),
        (
            "sip:+1-212-555-1212:1234@gateway.com;user=phone",
            "sip",
            "+1-212-555-1212",
            "1234",
            "gateway.com",
            None,
        ),
        ("sip:192.0.2.4", "sip", None, None, "192.0.2.4", None),
        ("sip:atlanta.com:5080", "sip", None, None, "atlanta.com", 5080),
        ("sip:[2001:db8::10]", "sip", None, None, "[2001:db8::10]", None),
        ("sip:user@[2001:db8::10]:5070", "sip", "user", None, "[2001:db8::10]", 5070),
        ("sip:[::1]:5060;transport=udp", "sip", None, None, "[::1]", 5060),
        (
            "sip:user;par=u%40example.net@example.com",
            "sip",
            "user;par=u%40example.net",
            None,
            "example.com",
            None,
        ),
        ("sip:%61lice@atlanta.com", "sip", "%61lice", None, "atlanta.com", None),
        (
            "sip:host_with_underscore.example",
            "sip",
            None,
            None,
            "host_with_underscore.example",
            None,
        ),
        ("sip:alice@atlanta.com:0", "sip", "alice", None, "atlanta.com", 0),
        ("sip:alice@atlanta.com:65535", "sip", "alice", None, "atlanta.com", 65535),
    ],
)
def test_sip_uri_parts(
    text: str, scheme: str, user: str | None, password: str | None, host: str, port: int | None
) -> None:
    uri = SipUri.parse(text)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        scheme,
        user,
        password,
        host,
        port,
    )


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.com",
        "sips:bob@biloxi.com:5061;transport=tls",
        "sip:alice:secretword@atlanta.com;transport=tcp",
        "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
        "sip:pay@spg.example;x-spg-transaction=sbx-4990-EUR-1",
        "sip:proxy.example.com;lr",
        "sip:user@[2001:db8::10]:5070;maddr=[2001:db8::20]",
        "sip:user;par=u%40example.net@example.com",
        "sip:agent@pbx;x-spg-result=approved?X-SPG-Result=approved&X-SPG-Reference=R123",
        "tel:+1-201-555-0123;phone-context=example.com",
        "tel:+358-555-1234567",
    ],
)
def test_uri_round_trip(text: str) -> None:
    assert str(SipUri.parse(text)) == text
    assert SipUri.parse(str(SipUri.parse(text))) == SipUri.parse(text)


def test_uri_params_lower_cased_names_ordered_values_kept() -> None:
    uri = SipUri.parse("sip:a@h;Transport=TCP;LR;ttl=15;maddr=239.255.255.1")
    assert list(uri.params.items()) == [
        ("transport", "TCP"),
        ("lr", None),
        ("ttl", "15"),
        ("maddr", "239.255.255.1"),
    ]
    assert uri.transport == "tcp"
    assert str(uri) == "sip:a@h;transport=TCP;lr;ttl=15;maddr=239.255.255.1"


def test_uri_headers_are_decoded_and_escaped_again() -> None:
    uri = SipUri.parse("sip:agent@pbx?X-SPG-Result=approved&Subject=a%20b%26c&X-Empty=")
    assert uri.headers == {"X-SPG-Result": "approved", "Subject": "a b&c", "X-Empty": ""}
    assert str(uri) == "sip:agent@pbx?X-SPG-Result=approved&Subject=a%20b%26c&X-Empty="
    built = SipUri("sip", "agent", None, "pbx", None, {}, {"X-Note": "a b<c>&d=e"})
    assert str(built) == "sip:agent@pbx?X-Note=a%20b%3Cc%3E%26d%3De"
    assert SipUri.parse(str(built)).headers == {"X-Note": "a b<c>&d=e"}


def test_uri_param_decoded() -> None:
    uri = SipUri.parse("sip:pay@spg;x-spg-return-to=sip%3Aagent%40pbx;x-spg-transaction=T1;flag")
    assert uri.params["x-spg-return-to"] == "sip%3Aagent%40pbx"
    assert uri.param("X-SPG-Return-To") == "sip:agent@pbx"
    assert uri.param("x-spg-transaction") == "T1"
    assert uri.param("flag") is None
    assert uri.param("absent") is None


@pytest.mark.parametrize(
    ("text", "transport"),
    [
        ("sip:a@h", "udp"),
        ("sips:a@h", "tls"),
        ("sip:a@h;transport=TCP", "tcp"),
        ("sip:a@h;transport=tls", "tls"),
        ("sips:a@h;transport=tcp", "tcp"),
    ],
)
def test_uri_transport(text: str, transport: str) -> None:
    assert SipUri.parse(text).transport == transport


def test_host_port_and_bare_host() -> None:
    assert SipUri.parse("sip:a@h.example:5070").host_port() == "h.example:5070"
    assert SipUri.parse("sip:a@h.example").host_port() == "h.example"
    v6 = SipUri.parse("sip:a@[2001:db8::1]:5070")
    assert v6.host_port() == "[2001:db8::1]:5070"
    assert v6.bare_host == "2001:db8::1"
    assert SipUri.parse("sip:a@192.0.2.1").bare_host == "192.0.2.1"


def test_tel_uri_is_opaque() -> None:
    uri = SipUri.parse("tel:+1-201-555-0123;phone-context=example.com")
    assert (uri.scheme, uri.user, uri.host, uri.port) == ("tel", "+1-201-555-0123", "", None)
    assert uri.params == {"phone-context": "example.com"}


def test_other_scheme_kept_opaque() -> None:
    uri = SipUri.parse("urn:service:sos")
    assert (uri.scheme, uri.user, uri.host) == ("urn", "service:sos", "")
    assert str(uri) == "urn:service:sos"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "alice@atlanta.com",  # no scheme
        "sip:",
        "sip:alice@",
        "sip:@atlanta.com",
        "sip:alice@atlanta.com:99999",
        "sip:alice@atlanta.com:50a0",
        "sip:alice@atlanta.com:",
        "sip:alice@2001:db8::10",  # IPv6 without brackets
        "sip:alice@[2001:db8::10",  # unterminated
        "sip:alice@[2001:db8:::zz]",  # not an address
        "sip:alice@[::1]x",
        "sip:alice smith@atlanta.com",  # unescaped space
        "sip:alice@atlanta.com>",
        'sip:"alice"@atlanta.com',
        "sip:alice@atl anta.com",
        "sip:alice@atlanta.com?X-A",  # header without =
        "sip:alice@atl!anta.com",
        "sip:alice@atlanta.com;=x",
        "tel:",
        "1sip:alice@atlanta.com",
    ],
)
def test_bad_uris_raise_syntax_error(text: str) -> None:
    with pytest.raises(SipSyntaxError):
        SipUri.parse(text)


def test_syntax_error_is_a_value_error() -> None:
    assert issubclass(SipSyntaxError, ValueError)


def test_unescape_keeps_invalid_escapes() -> None:
    assert unescape("a%40b") == "a@b"
    assert unescape("100%") == "100%"
    assert unescape("plain") == "plain"


# ---- NameAddr -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "display", "uri", "params"),
    [
        ('"Bob" <sip:bob@biloxi.com>;tag=a6c85cf', "Bob", "sip:bob@biloxi.com", {"tag": "a6c85cf"}),
        ("Bob <sip:bob@biloxi.com>", "Bob", "sip:bob@biloxi.com", {}),
        ("Bob Smith<sip:bob@biloxi.com>", "Bob Smith", "sip:bob@biloxi.com", {}),
        ("<sip:a@h>", None, "sip:a@h", {}),
        ("  <sip:a@h> ; tag = 1 ; x ", None, "sip:a@h", {"tag": "1", "x": None}),
        ('"" <sip:a@h>', None, "sip:a@h", {}),
        ('"Smith, Bob" <sip:bob@h>;tag=9', "Smith, Bob", "sip:bob@h", {"tag": "9"}),
        (r'"Bob \"the\" \\ B" <sip:bob@h>', 'Bob "the" \\ B', "sip:bob@h", {}),
        ('"<sip:not@this>" <sip:real@h>', "<sip:not@this>", "sip:real@h", {}),
        ('"Zoë Ünïcode" <sip:z@h>', "Zoë Ünïcode", "sip:z@h", {}),
        # addr-spec form: the parameters belong to the header, not the URI (§20.10)
        ("sip:a@h;tag=1", None, "sip:a@h", {"tag": "1"}),
        ("sip:a@h:5070;tag=1;expires=60", None, "sip:a@h:5070", {"tag": "1", "expires": "60"}),
        # URI parameters inside <> stay with the URI
        ("<sip:a@h;transport=tcp>;tag=2", None, "sip:a@h;transport=tcp", {"tag": "2"}),
        (
            '<sip:a@h>;+sip.instance="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";expires=60',
            None,
            "sip:a@h",
            {"+sip.instance": '"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"', "expires": "60"},
        ),
        ("<tel:+15551234>;tag=x", None, "tel:+15551234", {"tag": "x"}),
        ("<sip:[2001:db8::1]:5060>", None, "sip:[2001:db8::1]:5060", {}),
        ("<sip:a@h>;Tag=UPPER", None, "sip:a@h", {"tag": "UPPER"}),
    ],
)
def test_name_addr_parse(
    text: str, display: str | None, uri: str, params: dict[str, str | None]
) -> None:
    addr = NameAddr.parse(text)
    assert addr.display_name == display
    assert str(addr.uri) == uri
    assert addr.params == params


def test_name_addr_tag() -> None:
    assert NameAddr.parse("<sip:a@h>;tag=xyz").tag == "xyz"
    assert NameAddr.parse("<sip:a@h>").tag is None
    assert NameAddr.parse("sip:a@h;tag=bare").tag == "bare"


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ('"Bob" <sip:bob@h>;tag=1', '"Bob" <sip:bob@h>;tag=1'),
        ("Bob <sip:bob@h>", '"Bob" <sip:bob@h>'),
        ("sip:a@h;tag=1", "<sip:a@h>;tag=1"),  # always printed with <>
        ("<sip:a@h;lr>", "<sip:a@h;lr>"),
        (r'"A \"q\"" <sip:a@h>', r'"A \"q\"" <sip:a@h>'),
        ('"Smith, Bob" <sip:b@h>', '"Smith, Bob" <sip:b@h>'),
    ],
)
def test_name_addr_printing(text: str, printed: str) -> None:
    assert str(NameAddr.parse(text)) == printed
    assert NameAddr.parse(printed) == NameAddr.parse(text)


def test_name_addr_with_added_tag() -> None:
    addr = NameAddr.parse('"Bob" <sip:bob@h>')
    addr.params["tag"] = "t1"
    assert str(addr) == '"Bob" <sip:bob@h>;tag=t1'


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "<sip:a@h",  # unterminated
        '"Bob <sip:a@h>',  # unterminated quote
        '"Bob" sip:a@h',  # quoted name without <>
        "<sip:a@h> junk",
        "<sip:a@h>;=1",
        "<sip:a@h>;tag=",
        "<not a uri>",
        "Bob",
        "*",
        '<sip:a@h>;x="unterminated',
    ],
)
def test_bad_name_addr(text: str) -> None:
    with pytest.raises(SipSyntaxError):
        NameAddr.parse(text)


# ---- Via ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "transport", "host", "port", "params"),
    [
        (
            "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds",
            "UDP",
            "pc33.atlanta.com",
            None,
            {"branch": "z9hG4bK776asdhds"},
        ),
        (
            "SIP/2.0/TCP 192.0.2.1:5070;branch=z9hG4bKx;rport;received=192.0.2.9",
            "TCP",
            "192.0.2.1",
            5070,
            {"branch": "z9hG4bKx", "rport": None, "received": "192.0.2.9"},
        ),
        ("sip/2.0/udp h;branch=z9hG4bK1", "UDP", "h", None, {"branch": "z9hG4bK1"}),
        (
            "SIP / 2.0 / UDP   h.example : 5060 ; branch = z9hG4bK2 ; rport",
            "UDP",
            "h.example",
            5060,
            {"branch": "z9hG4bK2", "rport": None},
        ),
        (
            "SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bK3",
            "TLS",
            "[2001:db8::9]",
            5061,
            {"branch": "z9hG4bK3"},
        ),
        ("SIP/2.0/WSS h;branch=z9hG4bK4 (a comment)", "WSS", "h", None, {"branch": "z9hG4bK4"}),
        (
            "SIP/2.0/UDP h;Branch=z9hG4bKCase;RPORT=5",
            "UDP",
            "h",
            None,
            {"branch": "z9hG4bKCase", "rport": "5"},
        ),
    ],
)
def test_via_parse(
    text: str, transport: str, host: str, port: int | None, params: dict[str, str | None]
) -> None:
    via = Via.parse(text)
    assert (via.transport, via.host, via.port, via.params) == (transport, host, port, params)


def test_via_properties_and_printing() -> None:
    via = Via.parse("SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKabc;rport=5062;received=10.0.0.1")
    assert via.branch == "z9hG4bKabc"
    assert via.rport == 5062
    assert via.received == "10.0.0.1"
    assert via.wants_rport
    assert via.sent_by == "192.0.2.1:5062"
    assert str(via) == "SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKabc;rport=5062;received=10.0.0.1"
    assert Via.parse(str(via)) == via
    plain = Via.parse("SIP/2.0/UDP h")
    assert plain.branch is None and plain.rport is None and not plain.wants_rport
    assert str(plain) == "SIP/2.0/UDP h"


def test_a_parameter_value_that_would_split_differently_once_printed_is_refused() -> None:
    # Found by fuzzing (fuzz/run.py sip_transaction): a Via parameter holding a quote and a comma
    # (or an angle bracket) outside a quoted string was accepted, and the printed Via, copied
    # into our response, split into two values there: a response that does not parse.
    for value in ('0.0.1">x",', "1<.", "a>b", 'x"y', "a,b"):
        with pytest.raises(SipSyntaxError):
            Via.parse(f"SIP/2.0/UDP pbx.example;branch=z9hG4bK1;x={value}")
        with pytest.raises(SipSyntaxError):
            NameAddr.parse(f"<sip:a@h>;x={value}")
    for value in ('"a,<b>"', '"q \\" q"'):  # quoted: anything goes
        assert Via.parse(f"SIP/2.0/UDP h;x={value}").params["x"] == value
    with pytest.raises(SipSyntaxError):
        Via.parse('SIP/2.0/UDP h;x="a"b"')


def test_via_rport_that_is_no_port_number_is_none() -> None:
    # Found by fuzzing (fuzz/run.py sip_transaction): "²" passes isdigit() and int() refused it.
    for value in ("\u00b2", "abc", "99999", "0", "123456"):
        via = Via.parse(f"SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1;rport={value}")
        assert via.rport is None
        assert via.response_target() == ("192.0.2.1", 5070)


def test_via_apply_source_rport_rfc3581() -> None:
    via = Via.parse("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;rport")
    assert via.apply_source("192.0.2.7", 40000) is True
    assert via.params == {"branch": "z9hG4bK1", "rport": "40000", "received": "192.0.2.7"}
    assert via.response_target() == ("192.0.2.7", 40000)
    assert str(via) == "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;rport=40000;received=192.0.2.7"


def test_via_apply_source_same_host_no_rport_changes_nothing() -> None:
    via = Via.parse("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK1")
    assert via.apply_source("192.0.2.7", 5070) is False
    assert via.params == {"branch": "z9hG4bK1"}
    assert via.response_target() == ("192.0.2.7", 5070)


def test_via_apply_source_rport_same_host_adds_received() -> None:
    via = Via.parse("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK1;rport")
    assert via.apply_source("192.0.2.7", 5070) is True
    assert via.params == {"branch": "z9hG4bK1", "rport": "5070", "received": "192.0.2.7"}


def test_via_apply_source_ipv6_compares_without_brackets() -> None:
    via = Via.parse("SIP/2.0/UDP [::1]:5070;branch=z9hG4bK1")
    assert via.apply_source("::1", 5070) is False
    assert via.response_target() == ("::1", 5070)


def test_via_response_target_default_port() -> None:
    assert Via.parse("SIP/2.0/UDP h;branch=z9hG4bK1").response_target() == ("h", 5060)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 UDP h",
        "SIP/3.0/UDP h;branch=z9hG4bK1",
        "HTTP/2.0/UDP h",
        "SIP/2.0/UDP h:port",
        "SIP/2.0/UDP h;branch=",
        "SIP/2.0/UDP 2001:db8::1;branch=z9hG4bK1",
        "SIP/2.0/U@P h",
        "SIP/2.0/UDP h junk;branch=x",
    ],
)
def test_bad_via(text: str) -> None:
    with pytest.raises(SipSyntaxError):
        Via.parse(text)


# ---- CSeq and lists -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1 INVITE", (1, "INVITE")),
        ("  4711   BYE ", (4711, "BYE")),
        ("0 ACK", (0, "ACK")),
        ("2147483647 OPTIONS", (2147483647, "OPTIONS")),
        ("1\tNEWMETHOD", (1, "NEWMETHOD")),
    ],
)
def test_parse_cseq(text: str, value: tuple[int, str]) -> None:
    assert parse_cseq(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "INVITE",
        "1",
        "1 INVITE extra",
        "-1 INVITE",
        "x INVITE",
        "2147483648 INVITE",
        "1 INV@TE",
        "99999999999 BYE",
        "١ INVITE",
    ],
)
def test_bad_cseq(text: str) -> None:
    with pytest.raises(SipSyntaxError):
        parse_cseq(text)


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("INVITE, ACK,BYE", ["INVITE", "ACK", "BYE"]),
        ("single", ["single"]),
        ("", []),
        (" , a ,, b ,", ["a", "b"]),
        ('"Smith, Bob" <sip:b@h>, <sip:c@h>', ['"Smith, Bob" <sip:b@h>', "<sip:c@h>"]),
        ("<sip:a@h;x=1,2>, <sip:b@h>", ["<sip:a@h;x=1,2>", "<sip:b@h>"]),
        (r'"a \" , b" <sip:a@h>, <sip:b@h>', [r'"a \" , b" <sip:a@h>', "<sip:b@h>"]),
        (
            "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b:5070;branch=z9hG4bK2",
            ["SIP/2.0/UDP a;branch=z9hG4bK1", "SIP/2.0/TCP b:5070;branch=z9hG4bK2"],
        ),
        (
            '<sip:a@h>;+sip.instance="<urn:x,y>", <sip:b@h>',
            ['<sip:a@h>;+sip.instance="<urn:x,y>"', "<sip:b@h>"],
        ),
    ],
)
def test_split_header_list(value: str, items: list[str]) -> None:
    assert split_header_list(value) == items
