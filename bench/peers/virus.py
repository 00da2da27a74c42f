"""Does a contender really scan? One EICAR message through its front smtpd: it must be
refused, or (clamsmtpd's `Action: drop`) answered 250 and never delivered.

A peer whose antivirus part is off (a bad value in rspamd's clamav block disables the module
with one log line) would otherwise pass the throughput runs at the speed of no scan at all.
"""

from __future__ import annotations

import smtplib
import time

from bench.peers.measure import RECIPIENT, SENDER
from bench.peers.processes import SmtpSink
from tests.testbed.clamd import eicar_bytes

HEAD = (
    f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: peers bench virus check\r\n"
    "Message-ID: <peers-virus-check@example.test>\r\n\r\n"
).encode()


def send_eicar(port: int, timeout: float = 60) -> str:
    """The reply to the end of data: "250", or the refusal's code and enhanced code."""
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as client:
        try:
            client.sendmail(SENDER, [RECIPIENT], HEAD + eicar_bytes() + b"\r\n")
        except smtplib.SMTPDataError as refusal:
            error = refusal.smtp_error
            text = error if isinstance(error, str) else error.decode(errors="replace")
            return f"{refusal.smtp_code} {text.split(' ', 1)[0]}"
    return "250"


def virus_verdict(port: int, sink: SmtpSink, wait: float = 3.0) -> tuple[bool, str]:
    """(scanned, what happened): refused, or answered 250 and not delivered within `wait` s
    (Postfix delivers to smtp-sink within milliseconds here)."""
    before = sink.received()
    reply = send_eicar(port)
    if reply != "250":
        return True, f"refused {reply}"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and sink.received() == before:
        time.sleep(0.1)
    delivered = sink.received() > before
    return not delivered, "250, delivered" if delivered else "250, dropped"
