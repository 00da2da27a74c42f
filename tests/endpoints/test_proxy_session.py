"""filterd's proxy against raw clients and smtplib, with a fake scanner and the test bed's
sink as the reinjection smtpd: relay, framing rules, synchronisation, limits, failures."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from filterd import __version__
from filterd.core import BareNewline, Policy
from filterd.scan import ScanResult
from filterd.testing import VIRUS_MARKER, FakeScanner, RawSmtpClient, smtp_session
from tests.endpoints.proxy_support import HopScript, Proxies, proxies_to
from tests.tables import cases
from tests.testbed.sink import Sink

CONTENT = (
    b"From: a@example.org\r\nTo: b@example.net\r\nSubject: proxy test\r\n\r\n"
    b"first line\r\n.leading dot\r\n..two dots\r\n" + b"x" * 5000 + b"\r\nlast line\r\n"
)


@pytest.fixture
def make_proxy(sink: Sink) -> Iterator[Proxies]:
    """Unlike tests/endpoints/conftest.py's: the proxies relay to the test bed's sink."""
    yield from proxies_to(sink.port)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def transaction(client: RawSmtpClient, data: bytes) -> str:
    """MAIL, RCPT, DATA, then `data` as given (it carries its own end); the final reply."""
    assert client.command(b"MAIL FROM:<a@example.org>\r\n").startswith("250")
    assert client.command(b"RCPT TO:<b@example.net>\r\n").startswith("250")
    assert client.command(b"DATA\r\n").startswith("354")
    return client.command(data)


# --- relay --------------------------------------------------------------------------------


def test_clean_message_is_relayed_intact_with_dsn_parameters(
    make_proxy: Proxies, sink: Sink
) -> None:
    proxy = make_proxy()
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=5) as client:
        client.ehlo("client.example")
        refused = client.sendmail(
            "a@example.org",
            ["b@example.net"],
            CONTENT,
            mail_options=["RET=HDRS", "ENVID=AbC+2Bx"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;B@Example.net"],
        )
    assert refused == {}
    got = sink.wait_for_messages(1, 5)[0]
    assert got.mail_from == "a@example.org"
    assert got.mail_params[1:] == ("RET=HDRS", "ENVID=AbC+2Bx"), got.mail_params
    assert got.rcpt_params == (("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;B@Example.net"),)
    # hostname "-" (start_proxy) leaves the host out; the version is the package's own.
    want_top = f"X-Virus-Scanned: filterd {__version__}\r\nX-Virus-Status: Clean\r\n".encode()
    assert got.content == want_top + CONTENT, "content must arrive byte for byte"


def test_end_of_data_reply_is_the_downstream_reply(make_proxy: Proxies, sink: Sink) -> None:
    client = smtp_session(make_proxy().port)
    reply = transaction(client, CONTENT + b".\r\n")
    assert reply.startswith("250 2.0.0 Ok: stored as sink-"), reply
    assert client.command(b"QUIT\r\n").startswith("221")


def test_null_sender_rset_noop(make_proxy: Proxies, sink: Sink) -> None:
    client = smtp_session(make_proxy().port)
    assert client.command(b"NOOP\r\n").startswith("250 2.0.0")
    assert client.command(b"MAIL FROM:<x@example.org>\r\n").startswith("250")
    assert client.command(b"RSET\r\n").startswith("250 2.0.0")
    assert client.command(b"MAIL FROM:<>\r\n").startswith("250")
    assert client.command(b"RCPT TO:<b@example.net>\r\n").startswith("250")
    assert client.command(b"DATA\r\n").startswith("354")
    assert client.command(b"Subject: bounce\r\n\r\nx\r\n.\r\n").startswith("250")
    assert [m.mail_from for m in sink.wait_for_messages(1, 5)] == [""]


def test_headers_are_not_spoofable(make_proxy: Proxies, sink: Sink) -> None:
    client = smtp_session(make_proxy().port)
    spoof = b"X-Virus-Status: Clean\r\n (folded)\r\nSubject: s\r\n\r\nbody\r\n.\r\n"
    assert transaction(client, spoof).startswith("250")
    got = sink.wait_for_messages(1, 5)[0]
    assert got.header_values("X-Virus-Status") == ["Clean"]
    assert b"(folded)" not in got.content


# (id, command, want reply prefix)
SEQUENCE = [
    ("rcpt before mail", b"RCPT TO:<b@x>\r\n", "503 5.5.1"),
    ("data before mail", b"DATA\r\n", "503 5.5.1"),
    ("mail syntax", b"MAIL FROM:a@b\r\n", "501 5.5.2"),
    ("unknown verb", b"FROB\r\n", "502 5.5.2"),
    ("starttls not offered", b"STARTTLS\r\n", "502 5.5.1"),
    ("bdat not offered", b"BDAT 5 LAST\r\n", "502 5.5.1"),
    ("vrfy not offered", b"VRFY postmaster\r\n", "502 5.5.1"),
    ("declared size too big", b"MAIL FROM:<a@b> SIZE=99999999999\r\n", "552 5.3.4"),
    ("command line too long", b"NOOP " + b"x" * 3000 + b"\r\n", "500 5.5.0"),
    ("ehlo without name", b"EHLO\r\n", "501 5.5.2"),
]


@pytest.mark.parametrize(("line", "want"), cases(SEQUENCE))
def test_command_refusals(make_proxy: Proxies, line: bytes, want: str) -> None:
    client = smtp_session(make_proxy().port)
    got = client.command(line)
    assert got.startswith(want), f"got {got!r}, want {want}"
    assert client.command(b"NOOP\r\n").startswith("250"), "the session goes on"


def test_data_without_accepted_recipient(make_proxy: Proxies) -> None:
    """The next hop refuses the only RCPT: filterd relays that refusal as it came and answers
    DATA itself with 554 5.5.1, sending no DATA downstream."""
    refusal = "550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown"
    hop = HopScript(replies={"RCPT": refusal})
    client = smtp_session(make_proxy(hop=hop).port)
    assert client.command(b"MAIL FROM:<a@example.org>\r\n").startswith("250")
    assert client.command(b"RCPT TO:<nobody@example.net>\r\n") == refusal
    assert client.command(b"DATA\r\n") == "554 5.5.1 Error: no valid recipients"
    assert client.command(b"QUIT\r\n").startswith("221")
    assert client.closed()
    verbs = [line.split(b" ", 1)[0] for line in hop.lines]
    assert b"RCPT" in verbs, hop.lines
    assert b"DATA" not in verbs, "DATA must not reach the next hop without a recipient"
    assert hop.dots == 0


def test_data_without_any_recipient(make_proxy: Proxies) -> None:
    client = smtp_session(make_proxy().port)
    assert client.command(b"MAIL FROM:<a@b>\r\n").startswith("250")
    assert client.command(b"DATA\r\n") == "554 5.5.1 Error: no valid recipients"


def test_too_many_errors_disconnects(make_proxy: Proxies) -> None:
    client = smtp_session(make_proxy(max_errors=3).port)
    for _ in range(2):
        client.command(b"FROB\r\n")
    assert client.command(b"FROB\r\n").startswith("502")
    got = client.reply()
    assert got.startswith("421 4.7.0"), got
    assert client.closed()


# --- XFORWARD -----------------------------------------------------------------------------


def test_xforward_goes_into_the_log_line(make_proxy: Proxies, sink: Sink) -> None:
    client = smtp_session(make_proxy().port)
    line = b"XFORWARD NAME=mail.example ADDR=192.0.2.7 PORT=4711 HELO=mail.example\r\n"
    assert client.command(line).startswith("250")
    assert client.command(b"XFORWARD EVIL=1\r\n").startswith("501")
    with capture_logs() as logs:
        assert transaction(client, b"Subject: s\r\n\r\nsecret body\r\n.\r\n").startswith("250")
    lines = [entry for entry in logs if entry["event"] == "message"]
    assert len(lines) == 1, logs
    entry = lines[0]
    assert entry["client"] == "192.0.2.7"
    assert entry["client_name"] == "mail.example"
    assert entry["sender"] == "a@example.org"
    assert entry["recipients"] == 1
    assert entry["reason"] == "accepted"
    assert "secret body" not in repr(logs), "message bodies are never logged"


def test_xforward_from_an_untrusted_client(make_proxy: Proxies) -> None:
    proxy = make_proxy(xforward_hosts=("192.0.2.0/24",))
    client = RawSmtpClient(proxy.port)
    client.reply()
    assert "XFORWARD" not in client.command(b"EHLO x\r\n")
    assert client.command(b"XFORWARD ADDR=10.1.1.1\r\n").startswith("502")


# --- scan verdicts ------------------------------------------------------------------------


def test_virus_is_rejected_and_nothing_is_queued(make_proxy: Proxies, sink: Sink) -> None:
    client = smtp_session(make_proxy().port)
    reply = transaction(client, b"Subject: v\r\n\r\n" + VIRUS_MARKER + b"\r\n.\r\n")
    assert reply == "550 5.7.1 Virus found: Fake.Marker", reply
    sink.assert_quiet(0.3, expected_total=0)
    assert transaction(client, b"Subject: ok\r\n\r\nfine\r\n.\r\n").startswith("250")
    assert len(sink.wait_for_messages(1, 5)) == 1


@pytest.mark.parametrize(
    ("fail_open", "want"), [(False, "451 4.7.1"), (True, "250 2.0.0")], ids=["closed", "open"]
)
def test_scanner_error(make_proxy: Proxies, sink: Sink, fail_open: bool, want: str) -> None:
    scanner = FakeScanner(result=ScanResult.error("clamd down"))
    client = smtp_session(make_proxy(scanner=scanner, policy=Policy(fail_open=fail_open)).port)
    reply = transaction(client, b"Subject: s\r\n\r\nx\r\n.\r\n")
    assert reply.startswith(want), reply
    sink.assert_quiet(0.3, expected_total=1 if fail_open else 0)


# --- framing ------------------------------------------------------------------------------

SMUGGLED = b"\r\nmail FROM:<smuggled@example.org>\r\nrcpt TO:<b@example.net>\r\ndata\r\n"
SMUGGLED += b"From: smuggled@example.org\r\n\r\nsmuggled\r\n.\r\n"

# (id, bytes after "carrier", want reply prefix); docs/explanation/smuggling.md
FRAMING = [
    ("E01 lf.lf", b"\n.\n" + SMUGGLED, "550 5.5.2"),
    ("E02 lf.crlf", b"\n.\r\n" + SMUGGLED, "550 5.5.2"),
    ("E03 crlf.lf", b"\r\n.\n" + SMUGGLED, "550 5.5.2"),
    ("E04 cr.cr", b"\r.\r" + SMUGGLED, "550 5.5.2"),
    ("E09 nul before dot", b"\r\n\x00.\r\n" + SMUGGLED, "550 5.5.2"),
    ("E11 crlf.crcrlf", b"\r\n.\r\r\n" + SMUGGLED, "550 5.5.2"),
    ("E22 dot space", b"\r\n. \r\n" + SMUGGLED, "550 5.5.2"),
    ("C01 real end", b"\r\n.\r\n", "250 2.0.0"),
    ("C02 stuffed dot", b"\r\n..\r\nmore\r\n.\r\n", "250 2.0.0"),
]


@pytest.mark.parametrize(("tail", "want"), cases(FRAMING))
def test_framing(make_proxy: Proxies, sink: Sink, tail: bytes, want: str) -> None:
    client = smtp_session(make_proxy().port)
    reply = transaction(client, b"Subject: s\r\n\r\ncarrier" + tail)
    assert reply.startswith(want), f"got {reply!r}, want {want}"
    delivered = 1 if want.startswith("250") else 0
    sink.assert_quiet(0.3, expected_total=delivered)
    assert all(m.mail_from != "smuggled@example.org" for m in sink.messages)


def test_stuffed_dot_arrives_as_a_dot_line(make_proxy: Proxies, sink: Sink) -> None:
    client = smtp_session(make_proxy().port)
    transaction(client, b"Subject: s\r\n\r\na\r\n..\r\n...\r\nb\r\n.\r\n")
    got = sink.wait_for_messages(1, 5)[0]
    assert got.body == b"a\r\n.\r\n..\r\nb\r\n"


def test_bare_lf_in_content_is_normalised(make_proxy: Proxies, sink: Sink) -> None:
    client = smtp_session(make_proxy().port)
    assert transaction(client, b"Subject: s\r\n\r\na\nb\rc\r\n.\r\n").startswith("250")
    got = sink.wait_for_messages(1, 5)[0]
    assert got.body == b"a\r\nb c\r\n"


def test_bare_lf_in_content_rejected_in_reject_mode(make_proxy: Proxies, sink: Sink) -> None:
    policy = Policy(forbid_bare_newline=BareNewline.REJECT)
    client = smtp_session(make_proxy(policy=policy).port)
    reply = transaction(client, b"Subject: s\r\n\r\na\nb\r\n.\r\n")
    assert reply.startswith("550 5.5.2 Error: bare <LF>"), reply
    sink.assert_quiet(0.3, expected_total=0)


def test_long_lines_are_legal(make_proxy: Proxies, sink: Sink) -> None:
    client = smtp_session(make_proxy().port)
    line = b"y" * 200_000
    assert transaction(client, b"Subject: s\r\n\r\n" + line + b"\r\n.\r\n").startswith("250")
    assert sink.wait_for_messages(1, 5)[0].body == line + b"\r\n"


def test_oversize_is_rejected_after_the_real_end(make_proxy: Proxies, sink: Sink) -> None:
    client = smtp_session(make_proxy(policy=Policy(max_message_size=1000)).port)
    big = b"Subject: s\r\n\r\n" + b"z" * 5000 + b"\r\n"
    reply = transaction(client, big + b".\r\n")
    assert reply.startswith("552 5.3.4"), reply
    assert client.command(b"NOOP\r\n").startswith("250"), "delayed reject: in sync after"
    sink.assert_quiet(0.3, expected_total=0)


# --- synchronisation (RFC 2920) -----------------------------------------------------------

# (id, what to send after EHLO's reply, in one write)
PIPELINED = [
    ("P06 mail+rcpt", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"),
    ("ehlo+quit", b"EHLO x\r\nQUIT\r\n"),
    ("noop+noop", b"NOOP\r\nNOOP\r\n"),
    ("P01 smuggled transaction alone", SMUGGLED[2:]),
]


@pytest.mark.parametrize("data", [p[1] for p in PIPELINED], ids=[p[0] for p in PIPELINED])
def test_pipelining_is_refused(make_proxy: Proxies, sink: Sink, data: bytes) -> None:
    client = smtp_session(make_proxy().port)
    client.send(data)
    got = client.reply()
    while got.startswith("250"):  # replies to commands before the one that broke the rule
        got = client.reply()
    assert got.startswith("554 5.5.0"), got
    assert client.closed()
    sink.assert_quiet(0.3, expected_total=0)


def test_content_before_354_is_refused(make_proxy: Proxies, sink: Sink) -> None:
    client = smtp_session(make_proxy().port)
    client.command(b"MAIL FROM:<a@b>\r\n")
    client.command(b"RCPT TO:<c@d>\r\n")
    assert client.command(b"DATA\r\nSubject: s\r\n\r\nx\r\n.\r\n").startswith("554 5.5.0")
    assert client.closed()
    sink.assert_quiet(0.3, expected_total=0)


def test_commands_pipelined_after_the_dot(make_proxy: Proxies, sink: Sink) -> None:
    """P03: a real end of data and a next transaction in the same write."""
    client = smtp_session(make_proxy().port)
    reply = transaction(client, b"Subject: s\r\n\r\nx\r\n.\r\n" + SMUGGLED[2:])
    assert reply.startswith("554 5.5.0"), reply
    assert client.closed()
    sink.assert_quiet(0.3, expected_total=0)


def test_input_before_the_greeting(make_proxy: Proxies) -> None:
    """P04. Whether early bytes have arrived is timing: greet_pause makes it certain here."""
    proxy = make_proxy(greet_pause=0.2)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw:
        raw.sendall(b"EHLO early.example\r\n")
        client = RawSmtpClient.__new__(RawSmtpClient)
        client.sock, client.timeout, client.buffer = raw, 5.0, b""
        assert client.reply().startswith("554 5.5.0")
        assert client.closed()


@pytest.mark.parametrize(
    ("mode", "want"),
    [(BareNewline.REJECT, "550 5.5.2"), (BareNewline.NORMALIZE, "250")],
    ids=["reject", "normalize"],
)
def test_bare_lf_command(make_proxy: Proxies, mode: BareNewline, want: str) -> None:
    """P07."""
    client = smtp_session(make_proxy(policy=Policy(forbid_bare_newline=mode)).port)
    got = client.command(b"MAIL FROM:<a@example.org>\n")
    assert got.startswith(want), got
    if mode is BareNewline.REJECT:
        assert client.closed(), "Postfix's reject mode disconnects"
    else:
        assert client.command(b"NOOP\r\n").startswith("250")


# --- limits and timeouts ------------------------------------------------------------------


def test_idle_client_times_out(make_proxy: Proxies) -> None:
    client = smtp_session(make_proxy(command_timeout=0.3).port)
    assert client.reply().startswith("421 4.4.2")
    assert client.closed()


def test_slow_data_times_out_and_nothing_is_delivered(make_proxy: Proxies, sink: Sink) -> None:
    client = smtp_session(make_proxy(data_timeout=0.3).port)
    assert client.command(b"MAIL FROM:<a@b>\r\n").startswith("250")
    assert client.command(b"RCPT TO:<c@d>\r\n").startswith("250")
    assert client.command(b"DATA\r\n").startswith("354")
    client.send(b"Subject: s\r\n\r\npartial")
    assert client.reply().startswith("421 4.4.2")
    sink.assert_quiet(0.3, expected_total=0)


def test_too_many_connections(make_proxy: Proxies) -> None:
    proxy = make_proxy(max_connections=2)
    first, second = smtp_session(proxy.port), smtp_session(proxy.port)
    third = RawSmtpClient(proxy.port)
    assert third.reply().startswith("421 4.7.0")
    assert third.closed()
    first.command(b"QUIT\r\n")
    first.closed()
    deadline = time.monotonic() + 5
    while proxy.sessions > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    fourth = smtp_session(proxy.port)
    assert fourth.command(b"NOOP\r\n").startswith("250")
    second.close()


# --- failures -----------------------------------------------------------------------------


def test_downstream_unreachable(make_proxy: Proxies) -> None:
    proxy = make_proxy(downstream_port=free_port(), downstream_timeout=2.0)
    client = smtp_session(proxy.port)
    assert client.command(b"MAIL FROM:<a@b>\r\n").startswith("451 4.4.1")
    assert client.command(b"NOOP\r\n").startswith("250"), "the session goes on"
    assert smtp_session(proxy.port).command(b"QUIT\r\n").startswith("221")


def test_downstream_refuses_at_end_of_data(make_proxy: Proxies, sink: Sink) -> None:
    sink.data_reply = "451 4.3.0 sink says later"
    client = smtp_session(make_proxy().port)
    reply = transaction(client, b"Subject: s\r\n\r\nx\r\n.\r\n")
    assert reply == "451 4.3.0 sink says later", "the downstream reply is relayed"


def test_client_gone_mid_data(make_proxy: Proxies, sink: Sink) -> None:
    proxy = make_proxy()
    client = smtp_session(proxy.port)
    client.command(b"MAIL FROM:<a@b>\r\n")
    client.command(b"RCPT TO:<c@d>\r\n")
    client.command(b"DATA\r\n")
    client.send(b"Subject: s\r\n\r\nhalf a message\r\n")
    client.close()
    sink.assert_quiet(0.5, expected_total=0)
    second = smtp_session(proxy.port)
    assert transaction(second, b"Subject: s\r\n\r\nx\r\n.\r\n").startswith("250")


def test_internal_error_tempfails_and_serving_goes_on(make_proxy: Proxies, sink: Sink) -> None:
    class Broken(FakeScanner):
        async def scan(self, content: bytes) -> ScanResult:
            raise RuntimeError("bug")

    proxy = make_proxy(scanner=Broken())
    client = smtp_session(proxy.port)
    with capture_logs():
        assert transaction(client, b"Subject: s\r\n\r\nx\r\n.\r\n").startswith("451 4.3.0")
    assert client.command(b"NOOP\r\n").startswith("250")
    sink.assert_quiet(0.3, expected_total=0)


def test_reply_deadline(make_proxy: Proxies, sink: Sink) -> None:
    proxy = make_proxy(scanner=FakeScanner(delay=2.0), reply_deadline=0.3)
    client = smtp_session(proxy.port)
    started = time.monotonic()
    assert transaction(client, b"Subject: s\r\n\r\nx\r\n.\r\n").startswith("451 4.3.0")
    assert time.monotonic() - started < 1.5
    sink.assert_quiet(0.3, expected_total=0)
