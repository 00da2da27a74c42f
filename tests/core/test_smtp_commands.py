"""Byte-level rules of the SMTP server's command lines (filterd.core.smtp), as tables: line
ends, syntax, paths, parameters, XFORWARD, the EHLO offer. Pure functions, no sockets."""

from __future__ import annotations

import pytest

from filterd.core import verdict as v
from filterd.core.policy import BareNewline
from filterd.core.smtp import commands, replies
from filterd.core.smtp.commands import Command
from tests.tables import cases

# (id, raw line as read, want verb or the verdict it gives)
PARSE = [
    ("crlf", b"MAIL FROM:<a@b>\r\n", "MAIL"),
    ("lower-case verb", b"mail FROM:<a@b>\r\n", "MAIL"),
    ("bare lf", b"RCPT TO:<a@b>\n", "RCPT"),
    ("no argument", b"DATA\r\n", "DATA"),
    ("x-verb", b"XFORWARD NAME=x\r\n", "XFORWARD"),
    ("empty line", b"\r\n", v.REJECT_SYNTAX),
    ("bare cr inside", b"MAIL FROM:<a@b>\rRCPT TO:<c@d>\r\n", v.REJECT_SYNTAX),
    ("cr before crlf", b"NOOP\r\r\n", v.REJECT_SYNTAX),
    ("nul inside", b"MAIL FROM:<a\x00@b>\r\n", v.REJECT_SYNTAX),
    ("no line end", b"QUIT", v.REJECT_SYNTAX),
    ("digits in verb", b"M4IL FROM:<a@b>\r\n", v.REJECT_SYNTAX),
    ("8-bit verb", b"\xc3\xa9HLO x\r\n", v.REJECT_SYNTAX),
]


@pytest.mark.parametrize(("raw", "want"), cases(PARSE))
def test_parse(raw: bytes, want: str | v.Verdict) -> None:
    got = commands.parse(raw)
    if isinstance(want, v.Verdict):
        assert got is want, f"got {got!r}, want {want.reason}"
    else:
        assert isinstance(got, Command), f"got {got!r}, want a {want} command"
        assert got.verb == want, f"got verb {got.verb}, want {want}"


def test_the_relayed_line_is_verbatim() -> None:
    raw = b"MAIL FROM:<A@Example.org> SIZE=500 RET=HDRS ENVID=AbC+2Bx BODY=8BITMIME\r\n"
    got = commands.parse(raw)
    assert isinstance(got, Command)
    assert got.line == raw[:-2], "the line relayed downstream must keep case and order"


# (id, line end, mode, want verdict or None)
LINE_ENDS = [
    ("crlf reject", False, BareNewline.REJECT, None),
    ("bare lf reject", True, BareNewline.REJECT, v.REJECT_BARE_LF),
    ("bare lf normalize", True, BareNewline.NORMALIZE, None),
    ("bare lf note", True, BareNewline.NOTE, None),
    ("bare lf no", True, BareNewline.NO, None),
]


@pytest.mark.parametrize(("bare_lf", "mode", "want"), cases(LINE_ENDS))
def test_line_end_by_mode(bare_lf: bool, mode: BareNewline, want: v.Verdict | None) -> None:
    command = Command("MAIL", b"FROM:<a@b>", b"MAIL FROM:<a@b>", bare_lf)
    got = commands.line_end_verdict(command, mode, 550)
    if want is None:
        assert got is None, f"got {got}, want no verdict"
    else:
        assert got is not None
        assert got.reason == want.reason, f"got {got.reason}, want {want.reason}"


def test_bare_lf_reject_code_is_the_policy_code() -> None:
    command = Command("MAIL", b"", b"MAIL", True)
    got = commands.line_end_verdict(command, BareNewline.REJECT, 521)
    assert got is not None
    assert got.reply.startswith("521 5.5.2 "), got.reply


# (id, argument, keyword, want address, want parameters) ; address None: refused
PATHS = [
    ("plain", b"FROM:<a@b.example>", "FROM", "a@b.example", ()),
    ("null sender", b"FROM:<>", "FROM", "", ()),
    ("space after colon", b"FROM: <a@b>", "FROM", "a@b", ()),
    ("lower keyword", b"from:<a@b>", "FROM", "a@b", ()),
    (
        "dsn parameters",
        b"FROM:<a@b> SIZE=500 RET=HDRS ENVID=AbC+2Bx BODY=8BITMIME SMTPUTF8",
        "FROM",
        "a@b",
        ("SIZE=500", "RET=HDRS", "ENVID=AbC+2Bx", "BODY=8BITMIME", "SMTPUTF8"),
    ),
    (
        "rcpt notify orcpt",
        b"TO:<b@c> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;B@Example.net",
        "TO",
        "b@c",
        ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;B@Example.net"),
    ),
    ("source route", b"TO:<@relay.example:u@x.example>", "TO", "u@x.example", ()),
    (
        "utf-8 address",
        "TO:<δοκιμή@παράδειγμα.δοκιμή>".encode(),
        "TO",
        "δοκιμή@παράδειγμα.δοκιμή",
        (),
    ),
    ("no brackets", b"FROM:a@b", "FROM", None, ()),
    ("wrong keyword", b"TO:<a@b>", "FROM", None, ()),
    ("unclosed", b"FROM:<a@b", "FROM", None, ()),
]


@pytest.mark.parametrize(
    ("argument", "keyword", "address", "parameters"),
    cases(PATHS),
)
def test_path(
    argument: bytes, keyword: str, address: str | None, parameters: tuple[str, ...]
) -> None:
    got = commands.path(argument, keyword)
    if address is None:
        assert got is None, f"got {got}, want a refusal"
        return
    assert got is not None, "want a path, got a refusal"
    assert got.address == address, f"got {got.address!r}, want {address!r}"
    assert got.parameters == parameters, f"got {got.parameters}, want {parameters}"


# (id, MAIL parameters, want size, None (absent) or the verdict). RFC 1870 §3:
# size-value ::= 1*20DIGIT, ASCII digits only.
SIZES: list[tuple[str, tuple[str, ...], int | v.Verdict | None]] = [
    ("plain", ("SIZE=500",), 500),
    ("lower-case name, other parameter", ("size=7", "BODY=8BITMIME"), 7),
    ("absent", (), None),
    ("only other parameters", ("BODY=8BITMIME", "RET=HDRS"), None),
    ("twenty digits", ("SIZE=" + "9" * 20,), int("9" * 20)),
    ("leading zeros", ("SIZE=0007",), 7),
    ("letters", ("SIZE=x",), v.REJECT_BAD_SIZE),
    ("empty value", ("SIZE=",), v.REJECT_BAD_SIZE),
    ("no value", ("SIZE",), v.REJECT_BAD_SIZE),
    ("twenty-one digits", ("SIZE=" + "9" * 21,), v.REJECT_BAD_SIZE),
    ("unicode superscript two", ("SIZE=\u00b2",), v.REJECT_BAD_SIZE),
    ("arabic-indic digits", ("SIZE=\u0661\u0662",), v.REJECT_BAD_SIZE),
    ("fullwidth digit", ("SIZE=\uff11",), v.REJECT_BAD_SIZE),
    ("sign", ("SIZE=+5",), v.REJECT_BAD_SIZE),
    ("negative", ("SIZE=-5",), v.REJECT_BAD_SIZE),
    ("underscore separator", ("SIZE=1_000",), v.REJECT_BAD_SIZE),
    ("trailing newline", ("SIZE=5\n",), v.REJECT_BAD_SIZE),
]


@pytest.mark.parametrize(("parameters", "want"), cases(SIZES))
def test_declared_size(parameters: tuple[str, ...], want: int | v.Verdict | None) -> None:
    got = commands.declared_size(parameters)
    assert got == want, f"got {got!r}, want {want!r}"


# (id, argument, want attributes or None)
XFORWARD = [
    (
        "postfix",
        b"NAME=mail.example ADDR=192.0.2.1 PORT=4711 HELO=mail.example PROTO=ESMTP",
        {
            "NAME": "mail.example",
            "ADDR": "192.0.2.1",
            "PORT": "4711",
            "HELO": "mail.example",
            "PROTO": "ESMTP",
        },
    ),
    ("unavailable", b"NAME=[UNAVAILABLE]", {"NAME": "[UNAVAILABLE]"}),
    ("xtext", b"HELO=a+20b+2Bc", {"HELO": "a b+c"}),
    (
        "ipv6 and source",
        b"ADDR=IPV6:2001:db8::1 SOURCE=REMOTE",
        {"ADDR": "IPV6:2001:db8::1", "SOURCE": "REMOTE"},
    ),
    ("unknown attribute", b"NAME=x EVIL=y", None),
    ("no value", b"NAME", None),
    ("empty", b"", None),
    ("8-bit", b"NAME=\xff", None),
]


@pytest.mark.parametrize(("argument", "want"), cases(XFORWARD))
def test_xforward(argument: bytes, want: dict[str, str] | None) -> None:
    assert commands.xforward(argument) == want


def test_ehlo_offer() -> None:
    got = replies.ehlo("filterd.example", 10_240_000, xforward=True).decode()
    lines = got.split("\r\n")[:-1]
    assert lines[0] == "250-filterd.example"
    assert lines[-1].startswith("250 "), "the last line has a space after the code"
    keywords = {line[4:].split()[0] for line in lines[1:]}
    want = {"SIZE", "8BITMIME", "SMTPUTF8", "DSN", "ENHANCEDSTATUSCODES", "XFORWARD"}
    assert keywords == want, f"got {sorted(keywords)}"
    assert "250-SIZE 10240000" in lines
    for never in ("PIPELINING", "CHUNKING", "STARTTLS", "AUTH"):
        assert never not in got, f"{never} must not be offered"


def test_ehlo_without_xforward_for_untrusted_clients() -> None:
    got = replies.ehlo("h", 1, xforward=False).decode()
    assert "XFORWARD" not in got
    assert got.endswith("250 ENHANCEDSTATUSCODES\r\n")
