"""Issue 9's proxy faults against the real test bed: a private Postfix (master.cf.d/proxy.cf,
with reinjection-side overrides), filterd's proxy, the real clamd.

client -> Postfix :smtpd -> filterd proxy -> Postfix :reinject -> sink
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from filterd.testing import RawSmtpClient
from tests.endpoints.proxy_support import messages, wait_for
from tests.integration.proxy_chain import Chain, start_chain
from tests.integration.test_proxy_postfix import open_data
from tests.tables import cases
from tests.testbed.clamd import Clamd

pytestmark = pytest.mark.integration

CONTENT = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: fault\r\n\r\nbody\r\n"


@pytest.fixture
def chains() -> Iterator[list[Chain]]:
    started: list[Chain] = []
    try:
        yield started
    finally:
        for chain in started:
            chain.proxy.close()


def chain_with(
    chains: list[Chain], make_postfix: Any, clamd: Clamd, options: dict[str, str], **settings: Any
) -> Chain:
    chain = start_chain(make_postfix, clamd.address, downstream_options=options, **settings)
    chains.append(chain)
    return chain


def slow_data(conn: RawSmtpClient, pieces: int, pause: float) -> str:
    """The content in `pieces` writes `pause` seconds apart (4 KiB each), then the dot."""
    conn.send(CONTENT)
    for _ in range(pieces):
        time.sleep(pause)
        conn.send((b"s" * 78 + b"\r\n") * 51)  # 4080 bytes: far above 500 B/s
    conn.send(b".\r\n")
    return conn.reply()


# --- keepalive ----------------------------------------------------------------------------


def test_a_client_slower_than_the_reinjection_timeout_delivers(
    chains: list[Chain], make_postfix: Any, clamd: Clamd
) -> None:
    """The reinjection smtpd's smtpd_timeout is 2 s, the client's DATA takes about 4 s: the
    NOOPs every 0.5 s keep that session alive, and the message is delivered once."""
    chain = chain_with(
        chains, make_postfix, clamd, {"smtpd_timeout": "2s"}, downstream_keepalive=0.5
    )
    conn = RawSmtpClient(chain.postfix.smtpd_port, timeout=10)
    try:
        open_data(conn)
        reply = slow_data(conn, pieces=8, pause=0.5)
    finally:
        conn.close()
    assert reply.startswith("250 "), reply
    assert len(chain.postfix.sink.wait_for_messages(1, 15)) == 1
    chain.postfix.wait_queue_empty()
    chain.postfix.sink.assert_quiet(0.5, expected_total=1)


def test_without_keepalive_the_downstream_421_is_relayed_and_closes(
    chains: list[Chain], make_postfix: Any, clamd: Clamd
) -> None:
    """The control: no NOOP within the reinjection smtpd's 2 s, so it times out with 421.
    filterd relays that 421 to its client (here raw, to see the close) and ends the session
    (RFC 5321 §3.8); the log line says downstream_tempfail; nothing is queued."""
    chain = chain_with(
        chains, make_postfix, clamd, {"smtpd_timeout": "2s"}, downstream_keepalive=60.0
    )
    conn = RawSmtpClient(chain.proxy.port, timeout=10)
    try:
        with capture_logs() as logs:
            open_data(conn)
            reply = slow_data(conn, pieces=6, pause=0.5)
            assert conn.closed(), "after a relayed 421 filterd closes the session"
    finally:
        conn.close()
    assert reply.startswith("421 4.4.2"), reply
    lines = messages(logs)
    assert [(m["action"], m["reason"]) for m in lines] == [("tempfail", "downstream_tempfail")]
    chain.postfix.sink.assert_quiet(1.0, expected_total=0)
    assert chain.postfix.queue_is_empty()


# --- shutdown -----------------------------------------------------------------------------


def committed(chain: Chain) -> bool:
    return any(session.committed for session in chain.proxy.endpoint.sessions.values())


def in_data(chain: Chain) -> bool:
    sessions = chain.proxy.endpoint.sessions.values()
    return any(session.envelope.txn is not None for session in sessions)


def test_shutdown_after_the_final_dot_queues_exactly_once(
    chains: list[Chain], make_postfix: Any, clamd: Clamd
) -> None:
    """The reinjection smtpd sleeps 2 s after the final dot; filterd is closed meanwhile.
    The message was committed downstream: the client gets 250, one copy is delivered."""
    options = {"smtpd_end_of_data_restrictions": "sleep 2"}
    chain = chain_with(chains, make_postfix, clamd, options)
    result: dict[str, Any] = {}

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", chain.postfix.smtpd_port, timeout=30) as client:
            client.ehlo("client.example")
            result["refused"] = client.sendmail("a@example.org", ["b@example.net"], CONTENT)

    with capture_logs() as logs:
        sender = threading.Thread(target=send)
        sender.start()
        wait_for(lambda: committed(chain), timeout=10.0)
        chain.proxy.call(chain.proxy.endpoint.close(), timeout=40)
        sender.join(30)
    assert result.get("refused") == {}, result
    assert len(chain.postfix.sink.wait_for_messages(1, 15)) == 1
    chain.postfix.wait_queue_empty()
    chain.postfix.sink.assert_quiet(1.0, expected_total=1)
    lines = messages(logs)
    assert [(m["action"], m["reason"]) for m in lines] == [("accept", "accepted")]
    assert lines[0]["queue_id"], lines[0]


def test_shutdown_mid_data_answers_421_and_queues_nothing(
    chains: list[Chain], make_postfix: Any, clamd: Clamd
) -> None:
    chain = chain_with(chains, make_postfix, clamd, {}, downstream_timeout=20.0)
    conn = RawSmtpClient(chain.postfix.smtpd_port, timeout=10)
    try:
        with capture_logs() as logs:
            open_data(conn)
            conn.send(CONTENT)
            wait_for(lambda: in_data(chain), timeout=10.0)
            started = time.monotonic()
            chain.proxy.call(chain.proxy.endpoint.close(), timeout=40)
            closing_time = time.monotonic() - started
            conn.send(b"more\r\n.\r\n")
            reply = conn.reply()
    finally:
        conn.close()
    assert closing_time < 5.0, "nothing was committed: close() must not wait"
    assert reply[:1] == "4", reply
    chain.postfix.sink.assert_quiet(1.0, expected_total=0)
    assert chain.postfix.queue_is_empty()
    lines = messages(logs)
    assert [(m["action"], m["reason"]) for m in lines] == [("tempfail", "shutting_down")]
    assert lines[0]["answer"].startswith("421 4.3.2")


# --- honest log lines ---------------------------------------------------------------------

# (id, reinjection end-of-data restriction, want client code class, want (action, reason))
REFUSED = [
    ("reject", "reject", 5, ("reject", "downstream_rejected")),
    ("defer", "defer", 4, ("tempfail", "downstream_tempfail")),
]


@pytest.mark.parametrize(("restriction", "code_class", "want"), cases(REFUSED))
def test_a_downstream_refusal_is_logged_as_such(
    chains: list[Chain],
    make_postfix: Any,
    clamd: Clamd,
    *,
    restriction: str,
    code_class: int,
    want: tuple[str, str],
) -> None:
    options = {"smtpd_end_of_data_restrictions": restriction}
    chain = chain_with(chains, make_postfix, clamd, options)
    with (
        capture_logs() as logs,
        smtplib.SMTP("127.0.0.1", chain.postfix.smtpd_port, timeout=30) as client,
    ):
        client.ehlo("client.example")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("a@example.org", ["b@example.net"], CONTENT)
    assert refused.value.smtp_code // 100 == code_class, refused.value
    lines = messages(logs)
    assert [(m["action"], m["reason"]) for m in lines] == [want]
    assert lines[0]["answer"].startswith(str(refused.value.smtp_code)), lines[0]
    chain.postfix.sink.assert_quiet(0.5, expected_total=0)


def test_unicode_size_digit_is_a_syntax_error(
    chains: list[Chain], make_postfix: Any, clamd: Clamd
) -> None:
    """Straight to filterd (Postfix's front smtpd checks SIZE itself), real downstream."""
    chain = chain_with(chains, make_postfix, clamd, {})
    conn = RawSmtpClient(chain.proxy.port, timeout=10)
    try:
        conn.reply()
        conn.send(b"EHLO client.example\r\n")
        conn.reply()
        conn.send("MAIL FROM:<a@example.org> SIZE=\u00b2\r\n".encode())
        assert conn.reply().startswith("501 5.5.4"), "not a traceback and 451"
        conn.send(b"MAIL FROM:<a@example.org> SIZE=100\r\n")
        assert conn.reply().startswith("250")
    finally:
        conn.close()
