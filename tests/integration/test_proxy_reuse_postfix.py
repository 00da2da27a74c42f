"""Downstream sessions reused across front sessions, against the real Postfix of the test bed
(master.cf.d/proxy.cf) and the real clamd.

smtplib or a raw client -> [Postfix front smtpd ->] filterd proxy -> Postfix reinjection smtpd
-> sink. What Postfix itself logged is the judge: the reinjection smtpd (syslog_name
postfix/reinject) logs one "connect from" per session and one "client=" line per message,
with the client that XFORWARD named.
"""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from filterd.testing import RawSmtpClient, smtp_session
from tests.integration.proxy_chain import Chain, start_chain
from tests.testbed.clamd import Clamd

pytestmark = pytest.mark.integration

REINJECT = r"postfix/reinject/smtpd\[\d+\]: "


@pytest.fixture
def chains() -> Iterator[list[Chain]]:
    started: list[Chain] = []
    yield started
    for chain in started:
        chain.proxy.close()


def chain_with(
    chains: list[Chain],
    make_postfix: Any,
    clamd: Clamd,
    downstream_options: Mapping[str, str] | None = None,
    **settings: Any,
) -> Chain:
    chain = start_chain(make_postfix, clamd.address, None, downstream_options, **settings)
    chains.append(chain)
    return chain


def reinject_log(chain: Chain) -> str:
    return "\n".join(
        line for line in chain.postfix.log_text().splitlines() if "postfix/reinject/" in line
    )


def connects(chain: Chain) -> int:
    """Sessions of the reinjection smtpd that carried a message (the test bed's start-up
    probe connects too, and only says QUIT)."""
    carried: set[tuple[str, int]] = set()
    current: dict[str, int] = {}  # smtpd pid -> its session number
    pattern = re.compile(r"postfix/reinject/smtpd\[(\d+)\]: (connect from|[0-9A-Za-z]+: client=)")
    for number, match in enumerate(pattern.finditer(reinject_log(chain))):
        pid, what = match.groups()
        if what == "connect from":
            current[pid] = number
        elif pid in current:
            carried.add((pid, current[pid]))
    return len(carried)


def clients(chain: Chain) -> list[str]:
    """The client of each message as the reinjection smtpd logged it: the XFORWARD one
    (`orig_client=`, Postfix 3.x logs it beside the connection's own), or "-" for none."""
    found = re.findall(REINJECT + r"[0-9A-Za-z]+: client=\S+?(?:, orig_client=(\S+))?$",
                       reinject_log(chain), re.MULTILINE)  # fmt: skip
    return [name or "-" for name in found]


def through_postfix(chain: Chain, number: int) -> None:
    """One message in its own SMTP session to the front smtpd."""
    with smtplib.SMTP("127.0.0.1", chain.postfix.smtpd_port, timeout=30) as client:
        client.ehlo("client.example")
        message = f"Subject: {number}\r\nMessage-ID: <reuse-{number}@example.org>\r\n\r\nhi\r\n"
        assert client.sendmail("a@example.org", ["b@example.net"], message) == {}


def direct(chain: Chain, xforward: bytes, sender: bytes = b"a@example.org") -> str:
    """One front session straight to filterd, as Postfix's smtpd would open it; the reply
    to the final dot."""
    client = smtp_session(chain.proxy.port, timeout=30)
    try:
        if xforward:
            assert client.command(b"XFORWARD " + xforward + b"\r\n").startswith("250")
        assert client.command(b"MAIL FROM:<" + sender + b">\r\n").startswith("250")
        assert client.command(b"RCPT TO:<b@example.net>\r\n").startswith("250")
        assert client.command(b"DATA\r\n").startswith("354")
        return client.command(b"Subject: direct\r\n\r\nhi\r\n.\r\n")
    finally:
        client.command(b"QUIT\r\n")
        client.close()


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_front_sessions_in_sequence_share_one_downstream_session(
    chains: list[Chain], make_postfix: Any, clamd: Clamd
) -> None:
    chain = chain_with(chains, make_postfix, clamd)
    for number in range(4):
        through_postfix(chain, number)
    got = chain.postfix.sink.wait_for_messages(4, 20)
    ids = sorted(m.header_values("Message-ID")[0] for m in got)
    assert ids == [f"<reuse-{number}@example.org>" for number in range(4)], "each once"
    wait_until(lambda: len(clients(chain)) == 4)
    assert connects(chain) == 1, reinject_log(chain)
    chain.postfix.wait_queue_empty()
    chain.postfix.sink.assert_quiet(0.5, expected_total=4)


def test_each_message_carries_its_own_clients_xforward(
    chains: list[Chain], make_postfix: Any, clamd: Clamd
) -> None:
    """Postfix resets the XFORWARD attributes at the end of each transaction (smtpd.c,
    mail_reset() calls smtpd_xforward_reset()) and presets them all to "unknown" at the
    first XFORWARD of the next (smtpd_xforward_preset()): a client that names fewer
    attributes, or none, never inherits the previous client's over the same session."""
    chain = chain_with(chains, make_postfix, clamd)
    sent = [
        b"NAME=one.example ADDR=192.0.2.1 PROTO=ESMTP HELO=one.example",
        b"ADDR=192.0.2.2",
        b"",
        b"NAME=four.example ADDR=192.0.2.4",
    ]
    for xforward in sent:
        assert direct(chain, xforward).startswith("250 ")
    chain.postfix.sink.wait_for_messages(4, 20)
    wait_until(lambda: len(clients(chain)) == 4)
    assert clients(chain) == [
        "one.example[192.0.2.1]",
        "unknown[192.0.2.2]",
        "-",  # no XFORWARD: only the connection's own client, nothing left over
        "four.example[192.0.2.4]",
    ]
    assert connects(chain) == 1, reinject_log(chain)


def test_a_session_the_smtpd_closed_while_idle_is_replaced(
    chains: list[Chain], make_postfix: Any, clamd: Clamd
) -> None:
    """The reinjection smtpd's smtpd_timeout (1 s) is shorter than filterd's idle time here
    (a misconfiguration the default avoids): it says 421 and closes the idle session; the
    next message goes on a new session, delivered once, and the client sees only 250."""
    chain = chain_with(
        chains, make_postfix, clamd, {"smtpd_timeout": "1s"}, downstream_idle_time=30.0
    )
    assert direct(chain, b"ADDR=192.0.2.1").startswith("250 ")
    wait_until(lambda: "timeout after END-OF-MESSAGE" in reinject_log(chain), 15)
    assert direct(chain, b"ADDR=192.0.2.2").startswith("250 ")
    assert len(chain.postfix.sink.wait_for_messages(2, 20)) == 2
    chain.postfix.wait_queue_empty()
    chain.postfix.sink.assert_quiet(0.5, expected_total=2)
    wait_until(lambda: len(clients(chain)) == 2)
    assert clients(chain) == ["unknown[192.0.2.1]", "unknown[192.0.2.2]"]  # NAME not sent
    assert connects(chain) == 2


def test_a_downstream_refusal_closes_the_session(
    chains: list[Chain], make_postfix: Any, clamd: Clamd
) -> None:
    """The reinjection smtpd refuses one message at its end of data: that session is not
    kept; the next message opens a new one."""
    refuse = {
        "smtpd_end_of_data_restrictions": "check_sender_access inline:{refuse@example.org=REJECT}"
    }
    chain = chain_with(chains, make_postfix, clamd, refuse)
    assert direct(chain, b"ADDR=192.0.2.1", b"refuse@example.org").startswith("554 ")
    assert direct(chain, b"ADDR=192.0.2.2").startswith("250 ")
    assert direct(chain, b"ADDR=192.0.2.3").startswith("250 ")
    assert len(chain.postfix.sink.wait_for_messages(2, 20)) == 2
    wait_until(lambda: len(clients(chain)) == 3)
    assert connects(chain) == 2, "refused: closed; then one session for two messages"
    chain.postfix.sink.assert_quiet(0.5, expected_total=2)


def test_with_reuse_off_each_message_has_its_own_downstream_session(
    chains: list[Chain], make_postfix: Any, clamd: Clamd
) -> None:
    chain = chain_with(chains, make_postfix, clamd, downstream_pool_size=0)
    for number in range(3):
        through_postfix(chain, number)
    chain.postfix.sink.wait_for_messages(3, 20)
    wait_until(lambda: len(clients(chain)) == 3)
    assert connects(chain) == 3


def test_a_raw_client_sees_the_same_replies_on_a_reused_session(
    chains: list[Chain], make_postfix: Any, clamd: Clamd
) -> None:
    """The second message's replies are the reinjection smtpd's own, as on a new session."""
    chain = chain_with(chains, make_postfix, clamd)
    replies = []
    for _ in range(2):
        conn = RawSmtpClient(chain.proxy.port, timeout=30)
        try:
            conn.reply()
            conn.command(b"EHLO client.example\r\n")
            replies.append(
                [
                    conn.command(b"MAIL FROM:<a@example.org>\r\n")[:9],
                    conn.command(b"RCPT TO:<b@example.net>\r\n")[:9],
                    conn.command(b"DATA\r\n")[:3],
                    conn.command(b"Subject: x\r\n\r\nhi\r\n.\r\n")[:24],
                ]
            )
            conn.command(b"QUIT\r\n")
        finally:
            conn.close()
    assert replies[0] == replies[1] == [
        "250 2.1.0", "250 2.1.5", "354", "250 2.0.0 Ok: queued as "
    ]  # fmt: skip
    assert connects(chain) == 1
