"""A hypothesis state machine against one ProxySession, in memory: arbitrary command lines,
raw bytes and DATA content, valid transactions mixed in, a fake next hop whose answers
change, and the fake scanner.

Invariants after every step:
- nothing escapes the session and nothing is logged as an error (a traceback is a bug);
- every reply line is a well-formed SMTP reply (`^[2-5][0-9][0-9][ -]`, CRLF-terminated,
  no stray CR or LF) and carries an RFC 3463 enhanced status code, except the greeting, the
  354 and the EHLO/HELO lines, which have none by definition (RFC 2034 §3);
- every message delivered downstream was answered with the next hop's own "queued as", no
  refused content (virus, smuggled commands) is ever delivered;
- the session always ends (EOF at the end of each run ends it).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import MutableMapping
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from structlog.testing import capture_logs

from filterd.config import ProxySettings
from filterd.core import Policy
from filterd.endpoints.proxy.connection import Connection
from filterd.endpoints.proxy.session import ProxySession, Site, Target
from filterd.pipeline import Pipeline
from filterd.testing import VIRUS_MARKER, FakeScanner
from tests.endpoints.proxy_support import FAIL, FakeTransport, HopScript, fake_connector

HOSTNAME = "filterd.example.test"
REPLY_LINE = re.compile(rb"[2-5][0-9][0-9][ -][\x20-\x7e]*")
STATUS = re.compile(rb"[2-5][0-9][0-9][ -][245]\.[0-9]{1,3}\.[0-9]{1,3}( |$)")
SMUGGLED = b"SMUGGLED-TRANSACTION"

VERBS = [b"EHLO ", b"HELO ", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"QUIT"]
VERBS += [b"XFORWARD ", b"BDAT ", b"VRFY ", b"STARTTLS", b"mail from:<", b""]
ENDS = [b"\r\n", b"\n", b"\r", b"", b"\r\r\n"]
BODIES = [
    b"Subject: clean\r\n\r\nhello\r\n",
    b"Subject: v\r\n\r\n" + VIRUS_MARKER + b"\r\n",
    b"Subject: s\r\n\r\nx\n.\r\nMAIL FROM:<" + SMUGGLED + b"@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n",
    b"Subject: s\r\n\r\nx\r\n.\rMAIL FROM:<" + SMUGGLED + b"@x>\r\n",
    b"Subject: dots\r\n\r\n..\r\n.x\r\n",
    b"",
]
HOP_STEPS = ["MAIL", "RCPT", "DATA", ".", "NOOP", "XFORWARD"]
HOP_REPLIES = [
    "250 2.0.0 Ok",
    "550 5.7.1 refused",
    "451 4.3.0 later",
    "421 4.4.2 closing",
    "554 5.5.1 no",
    FAIL,
]

command_lines = st.builds(
    lambda verb, argument, end: verb + argument + end,
    st.sampled_from(VERBS),
    st.binary(max_size=40),
    st.sampled_from(ENDS),
)


class ProxyFuzz(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.logs_context = capture_logs()
        self.logs: list[MutableMapping[str, Any]] = self.logs_context.__enter__()
        self.hop = HopScript()
        self.scanner = FakeScanner()
        self.transport = FakeTransport()
        self.conn = Connection(lambda _: None)
        self.conn.connection_made(self.transport)
        proxy_settings = ProxySettings(listen="127.0.0.1:0", hostname=HOSTNAME)
        pipeline = Pipeline(Policy(), self.scanner, hostname="-")
        site = Site(HOSTNAME, Target("127.0.0.1", 1), True, fake_connector(self.hop))
        self.session = ProxySession(self.conn, proxy_settings, pipeline, site)
        self.task = self.loop.create_task(self.session.run())
        self.settle()

    # --- driving ------------------------------------------------------------------------------

    def settle(self) -> None:
        """Run the loop until the session waits for client input or has ended."""
        for turn in range(400):
            self.loop.run_until_complete(asyncio.sleep(0 if turn < 50 else 0.005))
            if turn >= 3 and (self.task.done() or self.conn.reading):
                return
        raise AssertionError("the session neither waits for input nor ends")

    def feed(self, data: bytes) -> None:
        self.transport.unsent = 0  # the client reads everything we write
        self.conn.data_received(data)
        self.settle()

    @property
    def running(self) -> bool:
        return not self.task.done()

    # --- rules --------------------------------------------------------------------------------

    @precondition(lambda self: self.running)
    @rule(line=command_lines)
    def command(self, line: bytes) -> None:
        self.feed(line)

    @precondition(lambda self: self.running)
    @rule(data=st.binary(max_size=300))
    def raw_bytes(self, data: bytes) -> None:
        self.feed(data)

    @precondition(lambda self: self.running)
    @rule(lines=st.lists(command_lines, min_size=2, max_size=4))
    def pipelined(self, lines: list[bytes]) -> None:
        self.feed(b"".join(lines))

    @precondition(lambda self: self.running)
    @rule(
        body=st.one_of(st.sampled_from(BODIES), st.binary(max_size=200)),
        end=st.sampled_from([b".\r\n", b"\r\n.\r\n", b"\n.\n", b""]),
        size=st.sampled_from([b"", b" SIZE=100", b" SIZE=\xc2\xb2", b" SIZE=99999999999"]),
    )
    def transaction(self, body: bytes, end: bytes, size: bytes) -> None:
        for line in (b"EHLO client.example", b"MAIL FROM:<a@example.org>" + size):
            self.feed(line + b"\r\n")
        for line in (b"RCPT TO:<b@example.net>", b"DATA"):
            if self.running:
                self.feed(line + b"\r\n")
        if self.running:
            self.feed(body + end)

    @rule(step=st.sampled_from(HOP_STEPS), reply=st.sampled_from(HOP_REPLIES))
    def next_hop_answers(self, step: str, reply: str) -> None:
        if step == "." and reply.startswith("2"):
            self.hop.replies.pop(step, None)  # its own 250 says "queued as FAKEn"
        else:
            self.hop.replies[step] = reply

    @rule(step=st.sampled_from(HOP_STEPS))
    def next_hop_recovers(self, step: str) -> None:
        self.hop.replies.pop(step, None)

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def nothing_escapes(self) -> None:
        if self.task.done():
            assert self.task.exception() is None
        errors = [entry for entry in self.logs if entry.get("log_level") in ("error", "critical")]
        assert not errors, errors

    @invariant()
    def replies_are_well_formed(self) -> None:
        output = b"".join(self.transport.written)
        if not output:
            return
        assert output.endswith(b"\r\n"), output[-80:]
        previous = b""
        for line in output[:-2].split(b"\r\n"):
            assert REPLY_LINE.fullmatch(line), line
            assert STATUS.match(line) or exempt(line, previous), line
            previous = line

    @invariant()
    def nothing_refused_is_delivered(self) -> None:
        output = b"".join(self.transport.written)
        assert output.count(b"queued as FAKE") == len(self.hop.delivered)
        for body in self.hop.delivered:
            assert VIRUS_MARKER not in body
            assert SMUGGLED not in body

    def teardown(self) -> None:
        try:
            if self.running:
                self.conn.eof_received()
                self.settle()
            assert self.task.done(), "EOF must end the session"
            assert self.task.exception() is None
        finally:
            self.logs_context.__exit__(None, None, None)
            self.loop.close()


def exempt(line: bytes, previous: bytes) -> bool:
    """Replies without an enhanced status: 220 greeting, 354, the EHLO/HELO lines."""
    code = line[:3]
    if code in (b"220", b"354"):
        return True
    ehlo = line.startswith(b"250-") or previous.startswith(b"250-")
    return code == b"250" and (ehlo or line[4:] == HOSTNAME.encode())


ProxyFuzz.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestProxyFuzz = ProxyFuzz.TestCase
