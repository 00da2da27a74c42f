"""Hostile and faulty peers of the proxy (issue 9), over real sockets with a fake scanner and
a fake next hop (tests/endpoints/proxy_support.py): slow clients, stress, keepalive,
shutdown, the honest log line, a downstream 421, SIZE syntax."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from structlog.testing import capture_logs

from filterd.testing import RawSmtpClient, smtp_session
from tests.endpoints.proxy_support import (
    FAIL,
    MESSAGE,
    HopScript,
    Proxies,
    RunningProxy,
    messages,
    open_envelope,
    wait_for,
)
from tests.tables import cases


def open_data(client: RawSmtpClient) -> None:
    open_envelope(client)
    assert client.command(b"DATA\r\n").startswith("354")


def ends_or_goes_on(client: RawSmtpClient, closed: bool) -> None:
    """After a relayed 421 the client session ends (RFC 5321 §3.8); else it goes on."""
    if closed:
        assert client.closed(), "after a relayed 421 the client session ends"
    else:
        assert client.command(b"NOOP\r\n").startswith("250"), "the session goes on"


def silent(client: RawSmtpClient, window: float) -> bool:
    """Nothing arrives from the server within `window` seconds."""
    client.sock.settimeout(window)
    try:
        client.buffer += client.sock.recv(4096)
    except TimeoutError:
        return True
    return False


# --- slow clients -------------------------------------------------------------------------


def test_a_trickled_overlong_command_has_one_deadline(make_proxy: Proxies) -> None:
    """smtpd_per_request_deadline: skipping an overlong line does not restart the clock."""
    client = smtp_session(make_proxy(hop=HopScript(), command_timeout=1.0).port)
    client.send(b"NOOP " + b"x" * 3000)  # over max_line_length: now being skipped
    started = time.monotonic()
    got = ""
    while time.monotonic() - started < 6.0:
        try:
            client.send(b"x")
        except OSError:
            break
        client.sock.settimeout(0.1)
        try:
            chunk = client.sock.recv(4096)
        except TimeoutError:
            continue
        got += chunk.decode()
        if not chunk or "421" in got:
            break
    assert "421 4.4.2" in got, got
    assert time.monotonic() - started < 4.0, "the line got more than one command_timeout"


def test_a_data_trickle_times_out_with_a_log_line(make_proxy: Proxies) -> None:
    """smtpd_min_data_rate: 10 B/s against a 1000 B/s minimum runs out of a 1 s deadline,
    although no single read waits anywhere near data_timeout."""
    hop = HopScript()
    proxy = make_proxy(hop=hop, data_timeout=1.0, min_data_rate=1000.0)
    client = smtp_session(proxy.port)
    open_data(client)
    client.send(b"Subject: trickle\r\n\r\n")
    started = time.monotonic()
    with capture_logs() as logs:
        while time.monotonic() - started < 6.0 and not client.buffer:
            try:
                client.send(b"z")
            except OSError:
                break
            client.sock.settimeout(0.1)
            with contextlib.suppress(TimeoutError):
                client.buffer += client.sock.recv(4096)
        got = client.reply()
        assert client.closed()
    assert got.startswith("421 4.4.2"), got
    assert time.monotonic() - started < 4.0
    lines = messages(logs)
    assert len(lines) == 1, logs
    want = {"action": "tempfail", "reason": "timeout", "answer": got, "sender": "a@example.org"}
    assert {key: lines[0].get(key) for key in want} == want
    assert lines[0]["size"] > 0
    assert hop.dots == 0, "nothing is delivered"


def test_a_sender_above_the_minimum_rate_delivers(make_proxy: Proxies) -> None:
    """The DATA deadline grows with the bytes: 2 s of content against a 0.5 s data_timeout."""
    hop = HopScript()
    client = smtp_session(make_proxy(hop=hop, data_timeout=0.5, min_data_rate=100.0).port)
    open_data(client)
    client.send(b"Subject: slow\r\n\r\n")
    for _ in range(10):
        time.sleep(0.2)
        client.send(b"y" * 98 + b"\r\n")  # 500 B/s
    assert client.command(b".\r\n").startswith("250 2.0.0 Ok: queued as FAKE1")
    assert len(hop.delivered) == 1


def test_the_downstream_is_kept_alive_during_a_long_data(make_proxy: Proxies) -> None:
    hop = HopScript()
    client = smtp_session(make_proxy(hop=hop, downstream_keepalive=0.2).port)
    open_data(client)
    for _ in range(5):
        client.send(b"line\r\n")
        time.sleep(0.2)
    assert client.command(b".\r\n").startswith("250")
    verbs = [line.split(b" ")[0] for line in hop.lines]
    noops = verbs.count(b"NOOP")
    assert noops >= 2, verbs
    assert verbs.index(b"NOOP") > verbs.index(b"RCPT"), "NOOPs only inside the transaction"
    assert verbs[-1] == b"DATA", "the NOOPs come before DATA goes downstream"


def test_a_keepalive_failure_tempfails_at_the_end(make_proxy: Proxies) -> None:
    hop = HopScript(replies={"NOOP": FAIL})
    client = smtp_session(make_proxy(hop=hop, downstream_keepalive=0.1).port)
    open_data(client)
    time.sleep(0.4)
    with capture_logs() as logs:
        got = client.command(MESSAGE)
    assert got.startswith("451 4.3.0"), got
    assert [m["reason"] for m in messages(logs)] == ["downstream_failed"]
    assert hop.dots == 0


def test_stress_shortens_idle_sessions(make_proxy: Proxies) -> None:
    """Postfix smtpd_timeout = ${stress?10}{300}: idle clients cannot hold every slot."""
    proxy = make_proxy(
        hop=HopScript(),
        max_connections=4,
        stress_threshold=0.5,
        stress_timeout=0.3,
        command_timeout=30.0,
    )
    calm = [smtp_session(proxy.port) for _ in range(2)]
    for client in calm:
        assert silent(client, 0.6), "two of four: no stress, no timeout"
    started = time.monotonic()
    third = smtp_session(proxy.port)  # 3 > 0.5 * 4: stress
    for client in (*calm, third):
        client.timeout = 5.0
        assert client.reply().startswith("421 4.4.2")
        assert client.closed()
    assert time.monotonic() - started < 3.0
    wait_for(lambda: proxy.sessions == 0)
    fresh = smtp_session(proxy.port)
    assert silent(fresh, 0.6), "stress is over: the normal command_timeout again"


@pytest.mark.parametrize(
    ("idle", "want_newcomer", "want_evicted"),
    [(0.0, "421 4.7.0", 0), (1.3, "220 ", 1)],
    ids=["fresh-sessions-keep-their-slots", "longest-idle-session-makes-room"],
)
def test_a_full_proxy_evicts_only_a_client_idle_long_enough(
    make_proxy: Proxies, idle: float, want_newcomer: str, want_evicted: int
) -> None:
    """Clients that send nothing cannot keep real sessions out until stress_timeout."""
    proxy = make_proxy(hop=HopScript(), max_connections=3, stress_timeout=30.0)
    holders = [smtp_session(proxy.port) for _ in range(2)]
    time.sleep(idle)
    holders.append(smtp_session(proxy.port))  # the third slot, fresh: never the one evicted
    newcomer = RawSmtpClient(proxy.port)
    assert newcomer.reply().startswith(want_newcomer)
    evicted = [client.buffer for client in holders if not silent(client, 0.3)]
    assert len(evicted) == want_evicted, evicted
    assert all(reply.startswith(b"421 4.4.2") for reply in evicted), evicted


# --- shutdown -----------------------------------------------------------------------------


def close_in_thread(proxy: RunningProxy) -> threading.Thread:
    closer = threading.Thread(target=lambda: proxy.call(proxy.endpoint.close(), timeout=30))
    closer.start()
    return closer


def test_shutdown_finishes_a_committed_message(make_proxy: Proxies) -> None:
    hop = HopScript(hold=threading.Event())
    assert hop.hold is not None
    proxy = make_proxy(hop=hop)
    client = smtp_session(proxy.port)
    open_data(client)
    with capture_logs() as logs:
        client.send(MESSAGE)
        assert hop.committed.wait(5), "the final dot never went downstream"
        closer = close_in_thread(proxy)
        time.sleep(0.2)  # close() is under way and must wait for this session
        assert closer.is_alive()
        hop.hold.set()
        assert client.reply().startswith("250 2.0.0 Ok: queued as FAKE1")
        assert client.reply().startswith("421 4.3.2"), "then the session ends"
        closer.join(10)
    assert len(hop.delivered) == 1
    assert [(m["reason"], m["queue_id"]) for m in messages(logs)] == [("accepted", "FAKE1")]


def test_shutdown_answers_mid_data_at_once(make_proxy: Proxies) -> None:
    hop = HopScript()
    proxy = make_proxy(hop=hop, downstream_timeout=20.0)
    client = smtp_session(proxy.port)
    idle = smtp_session(proxy.port)
    open_data(client)
    client.send(b"Subject: half\r\n\r\nhalf a message\r\n")
    time.sleep(0.1)
    with capture_logs() as logs:
        started = time.monotonic()
        proxy.call(proxy.endpoint.close())
        assert time.monotonic() - started < 3.0, "nothing committed: no waiting"
    assert client.reply().startswith("421 4.3.2")
    assert idle.reply().startswith("421 4.3.2")
    assert hop.dots == 0
    lines = messages(logs)
    assert len(lines) == 1, lines
    want = {"action": "tempfail", "reason": "shutting_down"}
    assert {key: lines[0][key] for key in want} == want
    assert lines[0]["answer"].startswith("421 4.3.2")


def test_no_connection_is_served_after_shutdown(make_proxy: Proxies) -> None:
    proxy = make_proxy(hop=HopScript())
    proxy.call(proxy.endpoint.close())
    with pytest.raises(ConnectionRefusedError):
        RawSmtpClient(proxy.port).reply()


# --- what the log line says ---------------------------------------------------------------

MAIL_LINE, RCPT_LINE = b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.net>\r\n"
# What the client sends, in order, and each line's answer when the next hop accepts.
CLIENT_LINES = [(MAIL_LINE, "250"), (RCPT_LINE, "250"), (b"DATA\r\n", "354"), (MESSAGE, "250")]
# The client line whose answer carries each next-hop step's reply: the proxy sends DATA to
# the next hop only once it has the whole message.
ANSWERED_AT = {"MAIL": MAIL_LINE, "RCPT": RCPT_LINE, "DATA": MESSAGE, ".": MESSAGE}

Log = tuple[str, str] | None
# (id, fake next hop replies (none: all accepted), want reply prefix to the line that carries
# the next hop's reply, want (action, reason) of the message line or None, session closed)
HONEST: list[tuple[str, dict[str, str], str, Log, bool]] = [
    ("accepted", {}, "250 2.0.0 Ok: queued", ("accept", "accepted"), False),
    ("MAIL 550", {"MAIL": "550 5.7.1 sender refused"}, "550 5.7.1 sender refused",
     ("reject", "downstream_rejected"), False),
    ("MAIL 451", {"MAIL": "451 4.3.0 later"}, "451 4.3.0 later",
     ("tempfail", "downstream_tempfail"), False),
    ("MAIL 421", {"MAIL": "421 4.3.2 going down"}, "421 4.3.2 going down",
     ("tempfail", "downstream_tempfail"), True),
    ("MAIL breaks", {"MAIL": FAIL}, "451 4.3.0", ("tempfail", "downstream_failed"), False),
    ("RCPT 550: the transaction goes on", {"RCPT": "550 5.1.1 unknown user"},
     "550 5.1.1 unknown user", None, False),
    ("RCPT 421", {"RCPT": "421 4.7.0 closing"}, "421 4.7.0 closing",
     ("tempfail", "downstream_tempfail"), True),
    ("RCPT breaks", {"RCPT": FAIL}, "451 4.3.0", ("tempfail", "downstream_failed"), False),
    ("DATA 554", {"DATA": "554 5.5.1 Error: no valid recipients"}, "554 5.5.1",
     ("reject", "downstream_rejected"), False),
    ("DATA 451", {"DATA": "451 4.3.5 later"}, "451 4.3.5 later",
     ("tempfail", "downstream_tempfail"), False),
    ("DATA 250 breaks the protocol", {"DATA": "250 2.0.0 what"}, "451 4.3.0",
     ("tempfail", "downstream_failed"), False),
    ("DATA breaks", {"DATA": FAIL}, "451 4.3.0", ("tempfail", "downstream_failed"), False),
    ("end of data 550", {".": "550 5.7.1 no thanks"}, "550 5.7.1 no thanks",
     ("reject", "downstream_rejected"), False),
    ("end of data 451", {".": "451 4.3.0 queue file write error"},
     "451 4.3.0 queue file write error", ("tempfail", "downstream_tempfail"), False),
    ("end of data breaks", {".": FAIL}, "451 4.3.0", ("tempfail", "downstream_failed"), False),
    ("end of data 421", {".": "421 4.4.2 Error: timeout exceeded"},
     "421 4.4.2 Error: timeout exceeded", ("tempfail", "downstream_tempfail"), True),
]  # fmt: skip


def send_until(client: RawSmtpClient, last: bytes) -> str:
    """Send the client lines up to `last`, each before it answered as accepted; its answer."""
    for line, accepted in CLIENT_LINES:
        got = client.command(line)
        if line == last:
            return got
        assert got.startswith(accepted), f"{line!r}: got {got!r}, want {accepted}"
    raise AssertionError(last)


@pytest.mark.parametrize(
    ("script", "want_reply", "want_log", "closed"),
    cases(HONEST),
)
def test_the_log_line_says_what_the_client_was_told(
    make_proxy: Proxies, *, script: dict[str, str], want_reply: str, want_log: Log, closed: bool
) -> None:
    hop = HopScript(replies=script)
    client = smtp_session(make_proxy(hop=hop).port)
    with capture_logs() as logs:
        got = send_until(client, ANSWERED_AT[next(iter(script), ".")])
        ends_or_goes_on(client, closed)
    assert got.startswith(want_reply), f"got {got!r}, want {want_reply}"
    lines = messages(logs)
    assert len(hop.delivered) == (1 if want_log == ("accept", "accepted") else 0)
    if want_log is None:
        assert lines == [], lines
        return
    assert [(m["action"], m["reason"]) for m in lines] == [want_log]
    assert lines[0]["answer"] == got.split("\n")[0], "answer: what the client was told"
    assert lines[0]["sender"] == "a@example.org"


def test_refused_recipients_are_counted(make_proxy: Proxies) -> None:
    hop = HopScript()
    client = smtp_session(make_proxy(hop=hop).port)
    assert client.command(b"MAIL FROM:<a@example.org>\r\n").startswith("250")
    assert client.command(b"RCPT TO:<b@example.net>\r\n").startswith("250")
    hop.replies["RCPT"] = "550 5.1.1 unknown"
    assert client.command(b"RCPT TO:<c@example.net>\r\n").startswith("550")
    assert client.command(b"DATA\r\n").startswith("354")
    with capture_logs() as logs:
        assert client.command(MESSAGE).startswith("250")
    line = messages(logs)[0]
    assert (line["recipients"], line["refused_recipients"]) == (1, 1)


def test_client_gone_mid_data_is_logged(make_proxy: Proxies) -> None:
    proxy = make_proxy(hop=HopScript())
    client = smtp_session(proxy.port)
    open_data(client)
    with capture_logs() as logs:
        client.send(b"Subject: s\r\n\r\nhalf")
        client.close()
        wait_for(lambda: proxy.sessions == 0)
    lines = messages(logs)
    assert [(m["reason"], m["answer"]) for m in lines] == [("client_gone", None)]


# --- SIZE ---------------------------------------------------------------------------------

# (id, MAIL line, want reply prefix)
SIZES = [
    ("ascii digits", "MAIL FROM:<a@x> SIZE=100\r\n", "250"),
    ("superscript two", "MAIL FROM:<a@x> SIZE=\u00b2\r\n", "501 5.5.4"),
    ("arabic-indic", "MAIL FROM:<a@x> SIZE=\u0661\r\n", "501 5.5.4"),
    ("empty", "MAIL FROM:<a@x> SIZE=\r\n", "501 5.5.4"),
    ("too many digits", "MAIL FROM:<a@x> SIZE=" + "1" * 21 + "\r\n", "501 5.5.4"),
]


@pytest.mark.parametrize(("line", "want"), cases(SIZES))
def test_size_syntax(make_proxy: Proxies, line: str, want: str) -> None:
    client = smtp_session(make_proxy(hop=HopScript()).port)
    with capture_logs() as logs:
        got = client.command(line.encode())
    assert got.startswith(want), f"got {got!r}, want {want}"
    assert not [e for e in logs if e.get("log_level") == "error"], "no traceback"
    assert client.command(b"NOOP\r\n").startswith("250")


def test_connections_over_the_limit_are_refused_with_few_warnings(make_proxy: Proxies) -> None:
    """A flood of connections over max_connections costs one write each and a counted
    warning, never one log line per connection."""
    extra = 20
    with capture_logs() as logs:
        proxy = make_proxy(hop=HopScript(), max_connections=1, stress_timeout=30.0)
        kept = smtp_session(proxy.port)
        refused = [RawSmtpClient(proxy.port) for _ in range(extra)]
        replies = [client.reply() for client in refused]
        for client in refused:
            client.close()
        kept.close()
        proxy.call(proxy.endpoint.close())  # stopping reports what is still counted
    assert all(reply.startswith("421 4.7.0") for reply in replies), replies
    warnings = [e for e in logs if e["event"] == "too many connections; answering new ones 421"]
    assert 1 <= len(warnings) <= 2, warnings  # the first at once, the rest counted at close
    assert sum(entry["count"] for entry in warnings) == extra
    assert all(entry["limit"] == 1 for entry in warnings)


def test_a_client_silent_since_the_greeting_is_evicted_sooner(make_proxy: Proxies) -> None:
    proxy = make_proxy(hop=HopScript(), max_connections=2, stress_timeout=30.0)
    talker = smtp_session(proxy.port)  # said EHLO: needs a whole EVICT_AFTER of silence
    mute = RawSmtpClient(proxy.port)
    assert mute.reply().startswith("220 ")
    time.sleep(0.5)  # over EVICT_BEFORE_HELO_AFTER, under EVICT_AFTER
    newcomer = RawSmtpClient(proxy.port)
    assert newcomer.reply().startswith("220 ")
    assert mute.reply().startswith("421 4.4.2")
    assert silent(talker, 0.3), "the client that said EHLO keeps its slot"
