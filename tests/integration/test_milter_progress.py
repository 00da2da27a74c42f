"""SMFIR_PROGRESS against a real Postfix: a slow but healthy scan outlives milter_content_timeout.

clamd is replaced by the fake one (tests/scan/fake_clamd.py) that answers "OK" after a
delay longer than the Postfix timeout; it runs in a thread with its own event loop, since
the SMTP client here is the blocking smtplib.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Iterator

import pytest

from tests.integration.milter_process import FilterdMilter
from tests.scan.fake_clamd import FakeClamd
from tests.testbed.common import free_port
from tests.testbed.postfix import PostfixFactory

pytestmark = pytest.mark.integration

SCAN_DELAY = 2.5  # seconds; Postfix gives up after 1 s without a packet from the Milter
MESSAGE = b"From: a@example.test\r\nSubject: slow scan\r\n\r\nhello\r\n"


@pytest.fixture
def slow_clamd() -> Iterator[str]:
    """The address of a fake clamd that says OK after SCAN_DELAY seconds."""
    loop = asyncio.new_event_loop()
    fake = FakeClamd(delay=SCAN_DELAY)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(fake.start_tcp(), loop).result(5)
        yield fake.address
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.mark.parametrize(("interval", "delivered"), [(0.3, True), (60.0, False)],
                         ids=["progress-every-0.3s", "no-progress-in-time"])  # fmt: skip
def test_progress_keeps_postfix_waiting(
    slow_clamd: str, make_postfix: PostfixFactory, interval: float, delivered: bool
) -> None:
    listen = f"inet:127.0.0.1:{free_port()}"
    filterd = FilterdMilter(listen, slow_clamd, f"[milter]\nprogress_interval = {interval}\n")
    try:
        filterd.start()
        postfix = make_postfix("milter", milter=listen, main_cf={"milter_content_timeout": "1s"})
        with smtplib.SMTP("127.0.0.1", postfix.smtpd_port, timeout=30) as client:
            try:
                client.sendmail("a@example.test", ["someone@example.test"], MESSAGE)
                code = 250
            except smtplib.SMTPResponseException as exc:
                code = exc.smtp_code
        if delivered:
            assert code == 250
            (got,) = postfix.sink.wait_for_messages(1)
            assert got.header_values("X-Virus-Status") == ["Clean"]
        else:
            # Postfix timed out and applied milter_default_action: a tempfail, not an accept.
            assert code // 100 == 4
            postfix.wait_for_log(
                r"can't read SMFIC_BODYEOB reply packet header: Connection timed out"
            )
            postfix.sink.assert_quiet(0.3, expected_total=0)
    finally:
        filterd.close()
