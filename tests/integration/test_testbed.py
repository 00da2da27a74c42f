"""Tests of the test bed itself: private clamd, private Postfix in each mode, the sink.

The clamd checks speak the clamd protocol here, on raw sockets (clamd(8)), so they do not depend
on filterd's own scanner.
"""

from __future__ import annotations

import smtplib
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from filterd.testing import RawSmtpClient, eicar
from tests.testbed.clamd import (
    EICAR_NAME,
    SECOND_NAME,
    Clamd,
    second_sample_bytes,
)
from tests.testbed.common import free_port, pid_alive, unavailable
from tests.testbed.postfix import PLAIN_SERVICES, PostfixFactory, render_master_cf
from tests.testbed.sink import Sink, SinkMessage

pytestmark = pytest.mark.integration


# --- raw clients ---------------------------------------------------------------------------------


def clamd_connect(clamd: Clamd, transport: str) -> socket.socket:
    if transport == "tcp":
        host, port = clamd.tcp_address.removeprefix("tcp:").rsplit(":", 1)
        return socket.create_connection((host, int(port)), timeout=5)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(5)
    conn.connect(clamd.address.removeprefix("unix:"))
    return conn


def read_to_nul(conn: socket.socket) -> bytes:
    reply = b""
    while not reply.endswith(b"\0"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def raw_instream(clamd: Clamd, data: bytes, transport: str = "unix") -> bytes:
    """clamd(8) INSTREAM: "zINSTREAM\\0", then <uint32 BE length><bytes> chunks, then 0."""
    with clamd_connect(clamd, transport) as conn:
        conn.sendall(b"zINSTREAM\0")
        for start in range(0, len(data), 1 << 16):
            chunk = data[start : start + (1 << 16)]
            conn.sendall(struct.pack(">I", len(chunk)) + chunk)
        conn.sendall(struct.pack(">I", 0))
        return read_to_nul(conn)


# --- clamd ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_clamd_answers_ping(clamd: Clamd, transport: str) -> None:
    with clamd_connect(clamd, transport) as conn:
        conn.sendall(b"zPING\0")
        assert read_to_nul(conn) == b"PONG\0"


@pytest.mark.parametrize(
    ("sample", "name"),
    [(eicar, EICAR_NAME), (second_sample_bytes, SECOND_NAME)],
    ids=["eicar", "second"],
)
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_clamd_finds_samples(
    clamd: Clamd, sample: Callable[[], bytes], name: str, transport: str
) -> None:
    data = sample()
    assert raw_instream(clamd, data, transport) == f"stream: {name} FOUND\0".encode()
    # Also inside a mail, and split across INSTREAM chunks at an odd place.
    mail = b"Subject: sample\r\n\r\n" + b"x" * 65530 + data + b"\r\n"
    assert raw_instream(clamd, mail, transport) == f"stream: {name} FOUND\0".encode()


def test_clamd_names_differ_and_are_unofficial() -> None:
    assert EICAR_NAME.endswith(".UNOFFICIAL")
    assert SECOND_NAME.endswith(".UNOFFICIAL")
    assert len(eicar()) == 68


def test_clamd_clean_stream(clamd: Clamd) -> None:
    assert raw_instream(clamd, b"Subject: clean\r\n\r\nnothing to see\r\n") == b"stream: OK\0"


def test_clamd_stream_max_length_is_exact(clamd: Clamd) -> None:
    limit = clamd.stream_max_length
    assert raw_instream(clamd, b"a" * limit) == b"stream: OK\0"
    reply = raw_instream(clamd, b"a" * (limit + 1))
    assert reply == b"INSTREAM size limit exceeded. ERROR\0"


def test_clamd_stop_and_restart(clamd: Clamd) -> None:
    socket_path = clamd.address.removeprefix("unix:")
    with clamd.paused():
        assert not clamd.is_running()
        # clamd removes its socket file on exit; nothing listens on the TCP port.
        with pytest.raises(FileNotFoundError):
            clamd_connect(clamd, "unix")
        with pytest.raises(ConnectionRefusedError):
            clamd_connect(clamd, "tcp")
    assert clamd.is_running()
    assert clamd.address == f"unix:{socket_path}"
    with clamd_connect(clamd, "tcp") as conn:
        conn.sendall(b"zPING\0")
        assert read_to_nul(conn) == b"PONG\0"


def test_clamd_stopped_fixture(clamd_stopped: Clamd) -> None:
    assert not clamd_stopped.is_running()
    assert not clamd_stopped.ping()


def test_clamd_is_back_after_stopped_fixture(clamd: Clamd) -> None:
    assert clamd.is_running()
    assert clamd.ping()


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_missing_programs_fail_in_ci_and_skip_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="test bed unavailable"):
        unavailable("missing /usr/sbin/clamd")


# --- Postfix ----------------------------------------------------------------------------------


def test_plain_postfix_delivers_byte_exact(postfix_factory: PostfixFactory) -> None:
    postfix = postfix_factory("plain")
    body = b"first line\r\n.leading dot\r\n\r\n  indented \xc3\xa9\r\nlast line\r\n"
    message = (
        b"From: Sender <sender@example.test>\r\n"
        b"To: Someone <someone@example.test>\r\n"
        b"Subject: test bed\r\n"
        b"Message-ID: <testbed-1@example.test>\r\n"
        b"\r\n" + body
    )
    with smtplib.SMTP("127.0.0.1", postfix.smtpd_port, timeout=10) as client:
        refused = client.sendmail(
            "sender@example.test",
            ["someone@example.test", "other@example.test"],
            message,
            mail_options=["RET=HDRS", "ENVID=tb1"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE"],
        )
    assert refused == {}
    (got,) = postfix.sink.wait_for_messages(1)
    assert got.mail_from == "sender@example.test"
    # qmgr(8) sorts recipients, so the order on the way out may differ from the client's.
    assert sorted(got.rcpt_to) == ["other@example.test", "someone@example.test"]
    assert "RET=HDRS" in got.mail_params
    assert "ENVID=tb1" in got.mail_params
    for params in got.rcpt_params:
        assert "NOTIFY=SUCCESS,FAILURE" in params
    assert got.body == body
    assert b"\r\n..leading dot\r\n" in got.raw_data  # dot-stuffed on the wire
    # Postfix prepends exactly one Received: header; the client's headers follow unchanged.
    assert got.headers.startswith(b"Received: ")
    assert got.content.endswith(message)
    assert got.header_values("message-id") == ["<testbed-1@example.test>"]
    postfix.wait_queue_empty()
    postfix.sink.assert_quiet(0.3)
    assert postfix.queue_is_empty()
    assert "status=sent" in postfix.wait_for_log(r"to=<someone@example\.test>.*status=sent").group(
        0
    )


def test_bare_newline_reject(make_postfix: PostfixFactory) -> None:
    postfix = make_postfix(
        main_cf={
            "smtpd_forbid_bare_newline": "reject",
            # Loopback is in $mynetworks, the default exclusion list (postconf(5)).
            "smtpd_forbid_bare_newline_exclusions": "",
        }
    )
    client = RawSmtpClient(postfix.smtpd_port, timeout=10)
    try:
        assert client.reply().startswith("220 ")
        assert client.command(b"EHLO client.example.test\r\n").startswith("250")
        assert client.command(b"MAIL FROM:<sender@example.test>\r\n").startswith("250")
        assert client.command(b"RCPT TO:<someone@example.test>\r\n").startswith("250")
        assert client.command(b"DATA\r\n").startswith("354")
        reply = client.command(b"Subject: bare\r\n\r\nline one\nline two\r\n.\r\n")
    finally:
        client.close()
    assert reply.startswith("550 5.5.2"), reply
    postfix.sink.assert_quiet(0.3, expected_total=0)
    assert postfix.queue_is_empty()


def test_proxy_mode_layout(make_postfix: PostfixFactory) -> None:
    filter_port = free_port()
    postfix = make_postfix("proxy", filter_port=filter_port)
    assert postfix.filter_port == filter_port
    assert postfix.downstream_port is not None
    assert postfix.downstream_port != postfix.smtpd_port
    # Nothing listens on the filter port: the front smtpd answers the generic proxy error.
    with smtplib.SMTP("127.0.0.1", postfix.smtpd_port, timeout=10) as client:
        client.ehlo()
        assert client.mail("sender@example.test")[0] == 250
        code, text = client.rcpt("someone@example.test")
    assert (code, text[:5]) == (451, b"4.3.0"), text
    # The reinjection smtpd accepts from loopback and delivers to the sink.
    with smtplib.SMTP("127.0.0.1", postfix.downstream_port, timeout=10) as client:
        client.sendmail("sender@example.test", ["someone@example.test"], b"Subject: r\r\n\r\nx\r\n")
    (got,) = postfix.sink.wait_for_messages(1)
    assert got.body == b"x\r\n"
    assert "postfix/reinject/smtpd" in postfix.log_text()


def test_milter_mode_uses_default_action(make_postfix: PostfixFactory) -> None:
    postfix = make_postfix("milter", milter=f"inet:127.0.0.1:{free_port()}")
    assert postfix.postconf("milter_default_action") == "tempfail"
    assert postfix.postconf("milter_protocol") == "6"
    with smtplib.SMTP("127.0.0.1", postfix.smtpd_port, timeout=10) as client:
        client.ehlo()
        code, text = client.mail("sender@example.test")
    assert (code, text[:5]) == (451, b"4.7.1"), text
    postfix.sink.assert_quiet(0.2, expected_total=0)


def test_postfix_close_removes_everything(make_postfix: PostfixFactory, sink: Sink) -> None:
    postfix = make_postfix(sink=sink, smtpd_overrides={"smtpd_banner": "$myhostname ESMTP bed"})
    assert "-o { smtpd_banner = $myhostname ESMTP bed }" in postfix.master_cf()
    with RawSmtpClient(postfix.smtpd_port, timeout=10) as client:
        assert client.reply().endswith("ESMTP bed")
    # Read before close: is_running() forgets the pid once stopped, so it cannot tell.
    master_pid = int((postfix.queue_directory / "pid" / "master.pid").read_text().split()[0])
    assert pid_alive(master_pid)
    directory = Path(postfix.directory)
    postfix.close()
    assert not pid_alive(master_pid), "the master process survived close()"
    assert not directory.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", postfix.smtpd_port), timeout=2).close()
    # A sink passed in belongs to the caller: it still answers and takes a message.
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
        client.sendmail("a@example.test", ["b@example.test"], b"Subject: after\r\n\r\nx\r\n")
    assert [m.body for m in sink.wait_for_messages(1)] == [b"x\r\n"]


def test_render_master_cf_keeps_unknown_braces() -> None:
    text = render_master_cf(
        PLAIN_SERVICES + "pipe unix - n n - - pipe argv=/bin/cat ${recipient}\n",
        {"smtpd_port": 2525, "front_options": "  -o smtpd_milters="},
    )
    assert "127.0.0.1:2525 inet n - n - - smtpd\n  -o smtpd_milters=\n" in text
    assert "${recipient}" in text


def test_header_values_unfold_only_their_own_header() -> None:
    content = b"X-A: one\r\nReceived: from a\r\n\tby b\r\nSubject: two\r\n words\r\n\r\nx\r\n"
    message = SinkMessage(
        helo="h", mail_from="", mail_params=(), rcpt_to=(), rcpt_params=(),
        raw_data=content, content=content, peer=("127.0.0.1", 1), received_at=0.0,
    )  # fmt: skip
    assert message.header_values("x-a") == ["one"], "a Received: continuation joined X-A"
    assert message.header_values("Subject") == ["two words"]
