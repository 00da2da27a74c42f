"""The innocent client of bench/hostile.py: one small clean message per fresh SMTP session,
in a loop, in its own process (so the attacker's work in the bench process cannot delay it).

Latency is measured end to end, from connect() to the 250 that answers the final ".".
"""

from __future__ import annotations

import contextlib
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

from bench.smtpwire import SmtpError, SyncSession, stuffed

Result = tuple[float, str, str]  # seconds; "" or why it failed; its slowest step ("MAIL 3.9 s")

_STEPS = (
    ("EHLO", "EHLO innocent.example.test", 250),
    ("MAIL", "MAIL FROM:<innocent@example.test>", 250),
    ("RCPT", "RCPT TO:<someone@example.test>", 250),
    ("DATA", "DATA", 354),
)


def message(number: int) -> bytes:
    return stuffed(
        b"From: Innocent <innocent@example.test>\r\n"
        b"To: Someone <someone@example.test>\r\n"
        b"Subject: innocent " + str(number).encode() + b"\r\n"
        b"Message-ID: <innocent-" + str(number).encode() + b"@example.test>\r\n"
        b"\r\n" + b"A small clean message, sent while filterd is under attack.\r\n" * 10
    )


def talk(session: SyncSession, number: int, where: list[str], steps: dict[str, float]) -> str:
    """The transaction up to the reply to the final "."; "" or why it failed. `steps` gets
    the seconds each step took (the wait for the greeting, each command, the end of data)."""
    where[0] = "greeting"
    started = time.monotonic()
    reply = session.reply()
    steps["greeting"] = time.monotonic() - started
    if reply.code != 220:
        return f"{reply.short} at greeting"
    for step, line, wanted in _STEPS:
        where[0] = step
        started = time.monotonic()
        reply = session.command(line)
        steps[step] = time.monotonic() - started
        if reply.code != wanted:
            return f"{reply.short} at {step}"
    where[0] = "end of data"
    started = time.monotonic()
    session.send(message(number))
    reply = session.reply()
    steps["end of data"] = time.monotonic() - started
    return "" if reply.code == 250 else f"{reply.short} at end of data"


def slowest(steps: dict[str, float]) -> str:
    if not steps:
        return ""
    step = max(steps, key=steps.__getitem__)
    return f"{step} {steps[step]:.2f} s"


def once(port: int, timeout: float, number: int) -> Result:
    """One transaction; (seconds, "", slowest step) when the message got its 250."""
    started = time.monotonic()
    where = ["connect"]
    steps: dict[str, float] = {}
    session: SyncSession | None = None
    try:
        session = SyncSession("127.0.0.1", port, started + timeout)
        failure = talk(session, number, where, steps)
        elapsed = time.monotonic() - started
        if not failure:
            with contextlib.suppress(OSError, SmtpError):
                session.command("QUIT")
    except SmtpError as exc:
        failure, elapsed = f"{exc} at {where[0]}", time.monotonic() - started
    except TimeoutError:
        failure, elapsed = f"timeout at {where[0]}", time.monotonic() - started
    except OSError as exc:
        failure, elapsed = f"{type(exc).__name__} at {where[0]}", time.monotonic() - started
    finally:
        if session is not None:
            session.close()
    return elapsed, failure, slowest(steps)


def loop(port: int, stop: Event, out: Connection, timeout: float, pause: float) -> None:
    """Transactions one after another until `stop` is set; then send the results to `out`."""
    results: list[Result] = []
    number = 0
    while not stop.is_set():
        results.append(once(port, timeout, number))
        number += 1
        stop.wait(pause)
    out.send(results)
    out.close()
