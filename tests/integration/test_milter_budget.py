"""The Milter's connection budget, idle limit and shutdown, through a real Postfix 3.7.

What Postfix does when filterd closes or refuses its milter connection is Postfix's
milter_default_action (the test bed sets `tempfail`): never an accept of unscanned mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from tests.integration.milter_process import FilterdMilter
from tests.scan.fake_clamd import FakeClamd
from tests.testbed.clamd import Clamd
from tests.testbed.common import free_port
from tests.testbed.postfix import Postfix, PostfixFactory
from tests.testbed.sink import SinkMessage

pytestmark = pytest.mark.integration

SENDER, RCPT = "a@example.test", "someone@example.test"
MESSAGE = b"From: a@example.test\r\nSubject: budget\r\n\r\nhello\r\n"


def send(client: smtplib.SMTP) -> tuple[int, str]:
    """Send MESSAGE; the SMTP code and text of the answer that decided it."""
    try:
        client.sendmail(SENDER, [RCPT], MESSAGE)
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = exc.recipients[RCPT]
        return code, text.decode()
    except smtplib.SMTPResponseException as exc:
        error = exc.smtp_error
        return exc.smtp_code, error.decode() if isinstance(error, bytes) else error
    return 250, ""


def smtp(postfix: Postfix) -> smtplib.SMTP:
    """An SMTP client session with Postfix's front smtpd."""
    return smtplib.SMTP("127.0.0.1", postfix.smtpd_port, timeout=30)


@contextlib.contextmanager
def held(postfix: Postfix) -> Iterator[smtplib.SMTP]:
    """A client session past EHLO: Postfix's smtpd holds its milter connection open."""
    with smtp(postfix) as client:
        client.ehlo()
        yield client


def one_tempfailed_one_delivered(
    postfix: Postfix, refused: tuple[int, str], delivered: tuple[int, str]
) -> SinkMessage:
    """The session whose milter connection filterd refused or closed got a 4xx (the test
    bed's milter_default_action = tempfail); the other one's message, and only it, arrived."""
    assert refused[0] // 100 == 4, refused
    assert delivered == (250, "")
    (got,) = postfix.sink.wait_for_messages(1)
    postfix.sink.assert_quiet(0.3, expected_total=1)
    return got


def log_lines(filterd: FilterdMilter, event: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in filterd.log_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


Launch = Callable[[str, str], tuple[FilterdMilter, Postfix]]


@pytest.fixture
def launch(make_postfix: PostfixFactory) -> Iterator[Launch]:
    """`launch(clamd_address, milter_settings)`: filterd's milter and a Postfix that uses it;
    every filterd it started is closed at the end of the test."""
    started: list[FilterdMilter] = []

    def start(clamd: str, settings: str) -> tuple[FilterdMilter, Postfix]:
        listen = f"inet:127.0.0.1:{free_port()}"
        filterd = FilterdMilter(listen, clamd, f"[milter]\n{settings}")
        filterd.start()
        started.append(filterd)
        return filterd, make_postfix("milter", milter=listen)

    yield start
    for filterd in started:
        filterd.close()


def test_a_session_over_max_connections_is_tempfailed_the_others_delivered(
    clamd: Clamd, launch: Launch
) -> None:
    # One process: with N workers each takes max_connections / N rounded up (here 1 each).
    filterd, postfix = launch(clamd.address, "max_connections = 1\n[server]\nworkers = 1\n")
    with held(postfix) as first:
        with smtp(postfix) as second:
            refused = send(second)
        delivered = send(first)
    got = one_tempfailed_one_delivered(postfix, refused, delivered)
    assert got.header_values("X-Virus-Status") == ["Clean"]
    postfix.wait_for_log(r"milter inet:127\.0\.0\.1:\d+: .*SMFIC_OPTNEG")
    warnings = log_lines(filterd, "too many milter connections; closing new ones")
    assert [line["count"] for line in warnings] == [1]


def test_an_idle_milter_connection_is_closed_and_postfix_tempfails(
    clamd: Clamd, launch: Launch
) -> None:
    filterd, postfix = launch(clamd.address, "idle_timeout = 1.0\n")
    with held(postfix) as client:
        time.sleep(2.5)  # more than idle_timeout without a milter event
        after_idle = send(client)
    with smtp(postfix) as client:
        fresh = send(client)
    one_tempfailed_one_delivered(postfix, refused=after_idle, delivered=fresh)
    assert len(log_lines(filterd, "milter connection idle; closing")) >= 1


@pytest.fixture
def slow_clamd() -> Iterator[FakeClamd]:
    """A fake clamd, in a thread with its own event loop, that says OK after 3 s."""
    loop = asyncio.new_event_loop()
    fake = FakeClamd(delay=3.0)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(fake.start_tcp(), loop).result(5)
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def wait_for_scan(fake: FakeClamd, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while fake.in_flight == 0:
        assert time.monotonic() < deadline, "the message never reached clamd"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("drain", "want"),
    [(10.0, (250, "")), (0.5, (421, "4.3.2 Error: service shutting down"))],
    ids=["finishes-within-drain", "answered-421-after-drain"],
)
def test_sigterm_with_a_message_being_scanned(
    slow_clamd: FakeClamd,
    launch: Launch,
    drain: float,
    want: tuple[int, str],
) -> None:
    filterd, postfix = launch(slow_clamd.address, f"drain_timeout = {drain}\n")
    with (
        ThreadPoolExecutor(1) as pool,
        smtp(postfix) as client,
    ):
        answer: Future[tuple[int, str]] = pool.submit(send, client)
        wait_for_scan(slow_clamd)
        filterd.stop()
        got = answer.result(30)
    assert got == want
    assert filterd.returncode == 0
    (line,) = log_lines(filterd, "message")
    if want[0] == 250:
        assert line["reason"] == "accepted"
        postfix.sink.wait_for_messages(1)
    else:
        assert (line["action"], line["reason"]) == ("tempfail", "shutting_down")
        postfix.sink.assert_quiet(0.5, expected_total=0)
        assert postfix.queue_is_empty()
