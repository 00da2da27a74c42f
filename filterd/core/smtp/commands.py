"""SMTP command lines, as bytes: split, checked, and the few arguments the server reads.

The proxy relays MAIL and RCPT lines to the reinjection smtpd byte for byte (Postfix passes
them on as the client wrote them: docs/explanation/proxy.md, "Why not an aiosmtpd subclass"),
so nothing here rewrites a line: it only decides whether a line is acceptable and pulls out
what the log and the size check need. The sequencing of commands is machine.py's.

Guarantees:
- a command line ends in CRLF, or in a bare LF that the caller judges by the
  forbid_bare_newline mode (RFC 5321 §2.3.8; Postfix smtpd_forbid_bare_newline);
- a CR or NUL anywhere else in the line makes it a syntax error, so no stray line break can
  be relayed downstream inside a command;
- parsing never raises: a bad line is a `Verdict`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from filterd.core import verdict as v
from filterd.core.policy import BareNewline

CRLF = b"\r\n"
# RFC 5321 §4.1.1: a verb is letters (X-verbs such as XFORWARD included).
_VERB = re.compile(rb"[A-Za-z]{1,16}")
# RFC 3461 §4 xtext: "+" and two upper-case hex digits stand for one octet.
_XTEXT = re.compile(r"\+([0-9A-F]{2})")
# RFC 1870 §3: size-value ::= 1*20DIGIT (ASCII; `\d` would match any Unicode digit).
_SIZE = re.compile(r"[0-9]{1,20}")
# XFORWARD_README: attribute names Postfix sends.
XFORWARD_NAMES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")


@dataclass(frozen=True, slots=True)
class Command:
    verb: str  # upper case
    argument: bytes  # everything after the verb and its space, verbatim
    line: bytes  # the line without its line end, verbatim: what is relayed downstream
    bare_lf: bool  # ended by LF alone, not CRLF


def parse(raw: bytes) -> Command | v.Verdict:
    """One command line as read, line end included (the caller reads up to an LF)."""
    if raw.endswith(CRLF):
        line, bare_lf = raw[:-2], False
    elif raw.endswith(b"\n"):
        line, bare_lf = raw[:-1], True
    else:
        return v.REJECT_SYNTAX  # no line end at all: the caller hit end of input
    if b"\r" in line or b"\n" in line or b"\x00" in line:
        return v.REJECT_SYNTAX
    verb, _, argument = line.partition(b" ")
    if _VERB.fullmatch(verb) is None:
        return v.REJECT_SYNTAX
    return Command(verb.decode("ascii").upper(), argument.strip(b" "), line, bare_lf)


def line_end_verdict(command: Command, mode: BareNewline, reject_code: int) -> v.Verdict | None:
    """The verdict a bare-LF line end forces, or None. Postfix: smtpd_forbid_bare_newline.

    normalize/note take LF as a line end, as Postfix does in those modes; `no` too. Only
    reject refuses the command (and the session ends, as in Postfix).
    """
    if command.bare_lf and mode is BareNewline.REJECT:
        return v.REJECT_BARE_LF.with_code(reject_code)
    return None


@dataclass(frozen=True, slots=True)
class Path:
    """A MAIL FROM or RCPT TO argument: the address (no brackets) and its ESMTP parameters."""

    address: str
    parameters: tuple[str, ...]


def path(argument: bytes, keyword: str) -> Path | None:
    """Parse `FROM:<a@b> SIZE=1` / `TO:<c@d> NOTIFY=NEVER` (RFC 5321 §4.1.2), or None.

    A space after the colon is tolerated, as Postfix does. The address is for the log and the
    parameters for the SIZE check; the relayed line stays the client's own.
    """
    text = argument.decode("utf-8", "replace")  # RFC 6531: SMTPUTF8 addresses are UTF-8
    prefix = keyword + ":"
    if text[: len(prefix)].upper() != prefix:
        return None
    rest = text[len(prefix) :].lstrip(" ")
    if not rest.startswith("<"):
        return None
    end = rest.find(">")
    if end < 0:
        return None
    parameters = tuple(rest[end + 1 :].split())
    address = rest[1:end]
    if ":" in address and address.startswith("@"):
        address = address.split(":", 1)[1]  # RFC 5321 §4.1.2: source route, ignored
    return Path(address, parameters)


def declared_size(parameters: tuple[str, ...]) -> int | v.Verdict | None:
    """The SIZE=n a client declares in MAIL FROM; None if absent, a verdict if malformed.

    RFC 1870 §3: `size-value ::= 1*20DIGIT`, ASCII digits only (str.isdigit also takes "²",
    which int() then refuses); anything else is 501 5.5.4, as Postfix answers.
    """
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.upper() == "SIZE":
            return int(value) if _SIZE.fullmatch(value) else v.REJECT_BAD_SIZE
    return None


def xforward(argument: bytes) -> dict[str, str] | None:
    """`NAME=mail.example ADDR=192.0.2.1 ...` as a dict with xtext decoded; None if malformed.

    XFORWARD_README: attributes are NAME=value pairs, values are xtext (RFC 3461 §4), and
    `[UNAVAILABLE]` means not known.
    """
    try:
        text = argument.decode("ascii")
    except UnicodeDecodeError:
        return None
    attributes: dict[str, str] = {}
    for pair in text.split():
        name, equals, value = pair.partition("=")
        name = name.upper()
        if not equals or name not in XFORWARD_NAMES:
            return None
        attributes[name] = _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), value)
    return attributes or None
