"""Smuggling in Milter mode: master.cf.d/milter.cf's Postfix settings plus filterd's traces.

The snippet is rendered into the private Postfix as shipped (only the listen address, the
chroot column and the milter address are adapted), so these tests check the file users copy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from filterd.testing import RawSmtpClient, last_line
from tests.integration.milter_process import FilterdMilter
from tests.tables import cases
from tests.testbed.clamd import Clamd
from tests.testbed.common import free_port
from tests.testbed.postfix import Postfix, PostfixFactory

pytestmark = pytest.mark.integration

SNIPPET = Path(__file__).resolve().parents[2] / "master.cf.d" / "milter.cf"
SMUGGLED = (
    b"MAIL FROM:<evil@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nforged\r\n"
)
# (id, the fake end of data that precedes SMUGGLED): E01, E02, E04 of
# docs/explanation/smuggling.md.
FAKE_ENDS = [("lf-dot-lf", b"\n.\n"), ("lf-dot-crlf", b"\n.\r\n"), ("cr-dot-cr", b"\r.\r")]


def snippet_services(listen: str) -> str:
    """The snippet's service lines, with the test bed's port and no chroot."""
    lines = [line for line in SNIPPET.read_text().splitlines() if line and line[0] != "#"]
    text = "\n".join(lines) + "\n{front_options}\n"
    text = re.sub(r"^smtp\s+inet\s+n\s+-\s+y", "127.0.0.1:{smtpd_port} inet n - n", text)
    return re.sub(r"smtpd_milters=\S+", f"smtpd_milters={listen}", text)


def exchange(port: int, data: bytes) -> list[str]:
    """One SMTP session sending `data` after DATA; the last line of every reply."""
    with RawSmtpClient(port, timeout=15) as conn:
        replies = [last_line(conn.reply())]
        commands = (b"EHLO client.example.test", b"MAIL FROM:<a@example.test>",
                    b"RCPT TO:<someone@example.test>", b"DATA")  # fmt: skip
        replies.extend(last_line(conn.command(command + b"\r\n")) for command in commands)
        replies.append(last_line(conn.command(data + b"\r\n.\r\n")))
        replies.append(last_line(conn.command(b"QUIT\r\n")))
    return replies


@pytest.fixture
def hardened(clamd: Clamd, make_postfix: PostfixFactory) -> Iterator[tuple[str, FilterdMilter]]:
    listen = f"inet:127.0.0.1:{free_port()}"
    filterd = FilterdMilter(listen, clamd.address, '[milter]\ntraces = "reject"\n')
    try:
        filterd.start()
        yield listen, filterd
    finally:
        filterd.close()


def start_postfix(make_postfix: PostfixFactory, listen: str) -> Postfix:
    # Loopback is in $mynetworks, the default smtpd_forbid_bare_newline_exclusions
    # (postconf(5)): empty it so the test client gets what an Internet client gets.
    return make_postfix(
        "milter",
        milter=listen,
        services=snippet_services(listen),
        main_cf={"smtpd_forbid_bare_newline_exclusions": ""},
    )


def test_snippet_renders_the_hardening() -> None:
    text = snippet_services("inet:127.0.0.1:1")
    assert "-o smtpd_forbid_bare_newline=normalize" in text
    assert "-o smtpd_forbid_unauth_pipelining=yes" in text
    assert "-o milter_default_action=tempfail" in text


@pytest.mark.parametrize("fake_end", [f[1] for f in FAKE_ENDS], ids=[f[0] for f in FAKE_ENDS])
def test_smuggled_transaction_is_never_delivered_on_its_own(
    hardened: tuple[str, FilterdMilter], make_postfix: PostfixFactory, fake_end: bytes
) -> None:
    listen, filterd = hardened
    postfix = start_postfix(make_postfix, listen)
    data = b"Subject: carrier\r\n\r\nhello" + fake_end + SMUGGLED
    replies = exchange(postfix.smtpd_port, data)
    final = replies[5]
    # Postfix keeps it one message (smtpd_forbid_bare_newline=normalize); what is left of
    # the smuggled commands is body text, a trace that filterd rejects (traces = "reject").
    assert final.startswith("550 5.7.1 "), replies
    assert '"reason": "smuggling_trace"' in filterd.log_text()
    postfix.sink.assert_quiet(0.5, expected_total=0)
    assert "forged" not in "".join(m.content.decode() for m in postfix.sink.messages)
    assert "malformed reply" not in postfix.log_text()


def test_trace_is_noted_and_the_message_delivered_by_default(
    clamd: Clamd, make_postfix: PostfixFactory
) -> None:
    listen = f"inet:127.0.0.1:{free_port()}"
    filterd = FilterdMilter(listen, clamd.address)
    try:
        filterd.start()
        postfix = start_postfix(make_postfix, listen)
        data = b"Subject: quoting a session\r\n\r\nwe saw:\r\n" + SMUGGLED
        replies = exchange(postfix.smtpd_port, data)
        assert replies[5].startswith("250 "), replies
        (got,) = postfix.sink.wait_for_messages(1)
        assert got.header_values("X-Virus-Status") == ["Clean"]
        assert b"RCPT TO:<victim@example.test>" in got.body
        assert '"trace": "smtp_command_sequence"' in filterd.log_text()
    finally:
        filterd.close()


def test_without_the_snippet_bare_lf_smuggling_is_invisible_to_the_milter(
    hardened: tuple[str, FilterdMilter], make_postfix: PostfixFactory
) -> None:
    """Why the snippet matters: Postfix 3.7's defaults (smtpd_forbid_bare_newline = no)
    end DATA at "<LF>.<LF>" and run the smuggled transaction as a second message; the
    Milter is asked about two ordinary messages and has nothing to find in either."""
    listen, _ = hardened
    postfix = make_postfix("milter", milter=listen)
    data = b"Subject: carrier\r\n\r\nhello\n.\n" + SMUGGLED
    exchange(postfix.smtpd_port, data)
    got = postfix.sink.wait_for_messages(2)
    assert sorted(m.mail_from for m in got) == ["a@example.test", "evil@example.test"]


# What Postfix 3.7.11 hands a Milter, with its defaults (smtpd_forbid_bare_newline = no,
# loopback excluded anyway): smtpd ends a queue-file record at every LF and milter8.c puts
# CRLF after each, so a bare LF reaches the Milter as a line end; cleanup turns a stray CR
# into a space unless cleanup_replace_stray_cr_lf = no (or the Postfix predates it); a line
# longer than line_length_limit (several records) arrives without a stray CR or LF.
# docs/explanation/performance.md, "Milter CPU, session 4".
# (id, main.cf, content after DATA, want findings in the log line)
POSTFIX_BODIES = [
    ("bare-lf-becomes-a-line-end", {}, b"Subject: x\r\n\r\none\ntwo\r\n", None),
    ("stray-cr-becomes-a-space", {}, b"Subject: x\r\n\r\none\rtwo\r\n", None),
    ("stray-cr-kept-without-replacing", {"cleanup_replace_stray_cr_lf": "no"},
     b"Subject: x\r\n\r\none\rtwo\r\n", ["bare_cr"]),
    ("long-line-without-stray-cr-lf", {}, b"Subject: x\r\n\r\n" + b"x" * 5000 + b"\r\n", None),
]  # fmt: skip


@pytest.mark.parametrize(("main_cf", "data", "want"), cases(POSTFIX_BODIES))
def test_what_postfix_hands_the_milter(
    clamd: Clamd,
    make_postfix: PostfixFactory,
    main_cf: dict[str, str],
    data: bytes,
    want: list[str] | None,
) -> None:
    listen = f"inet:127.0.0.1:{free_port()}"
    filterd = FilterdMilter(listen, clamd.address, '[filter]\nforbid_bare_newline = "note"\n')
    try:
        filterd.start()
        postfix = make_postfix("milter", milter=listen, main_cf=main_cf)
        replies = exchange(postfix.smtpd_port, data)
        assert replies[-2].startswith("250 "), replies
        postfix.sink.wait_for_messages(1)
        (line,) = [
            entry
            for entry in map(json.loads, filterd.log_text().splitlines())
            if entry.get("event") == "message"
        ]
    finally:
        filterd.close()
    assert line.get("findings") == want, line
