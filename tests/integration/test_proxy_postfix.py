"""Done-when for the proxy: real Postfix (master.cf.d/proxy.cf), filterd, real clamd.

smtplib -> Postfix :smtpd -> filterd proxy -> Postfix :reinject -> sink
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from filterd.testing import RawSmtpClient, eicar
from tests.integration.proxy_chain import Chain, field_values, start_chain
from tests.testbed.clamd import EICAR_NAME, Clamd

pytestmark = pytest.mark.integration

CONTENT = (
    b"From: a@example.org\r\nTo: b@example.net\r\nSubject: through the proxy\r\n"
    b"Message-ID: <proxy-1@example.org>\r\n\r\n"
    b"first line\r\n..starts with a dot\r\n" + b"w" * 3000 + b"\r\nlast line\r\n"
)


@pytest.fixture
def chain(make_postfix: Any, clamd: Clamd) -> Iterator[Chain]:
    running = start_chain(make_postfix, clamd.address)
    try:
        yield running
    finally:
        running.proxy.close()


def send(chain: Chain, content: bytes, **options: Any) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", chain.postfix.smtpd_port, timeout=30) as client:
        client.ehlo("client.example")
        return client.sendmail("a@example.org", ["b@example.net"], content, **options)


def test_clean_message_is_delivered_intact_with_dsn(chain: Chain) -> None:
    refused = send(
        chain,
        CONTENT,
        mail_options=["RET=HDRS", "ENVID=AbC+2Bx"],
        rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;B@Example.net"],
    )
    assert refused == {}
    got = chain.postfix.sink.wait_for_messages(1, 15)[0]
    assert got.mail_from == "a@example.org"
    assert "RET=HDRS" in got.mail_params, got.mail_params
    assert "ENVID=AbC+2Bx" in got.mail_params, got.mail_params
    assert set(got.rcpt_params[0]) >= {"NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;B@Example.net"}
    assert got.body == CONTENT.partition(b"\r\n\r\n")[2], "the body arrives byte for byte"
    assert field_values(got.content, "X-Virus-Status") == ["Clean"]
    assert field_values(got.content, "Message-ID") == ["<proxy-1@example.org>"]
    chain.postfix.wait_queue_empty()


def test_eicar_is_rejected_in_the_client_session(chain: Chain) -> None:
    message = b"Subject: eicar\r\n\r\n" + eicar() + b"\r\n"
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(chain, message)
    assert refused.value.smtp_code == 550
    error = refused.value.smtp_error
    text = error.decode() if isinstance(error, bytes) else error
    assert text.startswith("5.7.1 Virus found: "), text
    assert EICAR_NAME.split(".")[0] in text
    chain.postfix.sink.assert_quiet(1.0, expected_total=0)
    assert chain.postfix.queue_is_empty()


def open_data(conn: RawSmtpClient) -> None:
    """Past the greeting, EHLO, MAIL, RCPT and DATA; the replies are not checked."""
    conn.reply()
    commands = (b"EHLO client.example", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.net>")
    for line in (*commands, b"DATA"):
        conn.command(line + b"\r\n")


def test_lf_dot_crlf_smuggling_yields_at_most_one_message(chain: Chain) -> None:
    conn = RawSmtpClient(chain.postfix.smtpd_port, timeout=10)
    try:
        open_data(conn)
        conn.send(
            b"Subject: carrier\r\n\r\ncarrier\n.\r\n"
            b"mail FROM:<smuggled@example.org>\r\nrcpt TO:<b@example.net>\r\ndata\r\n"
            b"From: smuggled@example.org\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
        )
        replies = conn.read_until_closed(1.5)
        with contextlib.suppress(OSError):
            conn.send(b"QUIT\r\n")
    finally:
        conn.close()
    sink = chain.postfix.sink
    chain.postfix.wait_queue_empty()  # whatever was queued has reached the sink
    sink.assert_quiet(1.0, expected_total=len(sink.messages))
    senders = [m.mail_from for m in sink.messages]
    assert len(senders) <= 1, (senders, replies)
    assert "smuggled@example.org" not in senders, replies
    # With the front smtpd's normalize for every client (master.cf.d/proxy.cf), what followed
    # the fake "." is body text of the one message; it must never be a message of its own.
    assert all(field_values(m.content, "Subject") != ["smuggled"] for m in sink.messages)


def test_clamd_stopped_tempfails_and_filterd_goes_on(chain: Chain, clamd: Clamd) -> None:
    with clamd.paused():
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(chain, CONTENT)
        assert refused.value.smtp_code == 451, refused.value
        chain.postfix.sink.assert_quiet(0.5, expected_total=0)
    assert send(chain, CONTENT) == {}
    assert len(chain.postfix.sink.wait_for_messages(1, 15)) == 1


def test_client_disconnecting_mid_data(chain: Chain) -> None:
    conn = RawSmtpClient(chain.postfix.smtpd_port, timeout=10)
    try:
        open_data(conn)
        conn.send(b"Subject: half\r\n\r\nhalf a message\r\n")
    finally:
        conn.close()
    time.sleep(0.5)
    assert send(chain, CONTENT) == {}
    got = chain.postfix.sink.wait_for_messages(1, 15)
    chain.postfix.sink.assert_quiet(0.5, expected_total=1)
    assert field_values(got[0].content, "Subject") == ["through the proxy"]


def test_downstream_stopped(make_postfix: Any, clamd: Clamd) -> None:
    """filterd's next hop is down: the client is told to retry, nothing is queued."""
    running = start_chain(make_postfix, clamd.address, downstream_timeout=2.0)
    try:
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        dead.close()
        endpoint = running.proxy.endpoint
        endpoint.downstream = type(endpoint.downstream)("127.0.0.1", dead_port)
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            send(running, CONTENT)
        code, _ = refused.value.recipients["b@example.net"]
        assert 400 <= code < 500, refused.value.recipients
        running.postfix.sink.assert_quiet(0.5, expected_total=0)
        assert running.postfix.queue_is_empty()
    finally:
        running.proxy.close()
