"""The SMTP server's own protocol replies: greeting, EHLO, 354, 221. Verdicts (every refusal
and every end-of-data answer) come from filterd.core.verdict; this module only renders them.

Each reply is rendered to one bytes object, so the session writes it in one write: one TCP
segment, no Nagle delay between the lines of a multi-line reply (docs/explanation/proxy.md,
"Performance choices").
"""

from __future__ import annotations

from filterd.core.smtp.commands import XFORWARD_NAMES
from filterd.core.verdict import Verdict

CRLF = b"\r\n"


def render(code: int, lines: list[str]) -> bytes:
    """A (multi-line) reply: `250-a`, `250-b`, `250 c` (RFC 5321 §4.2.1)."""
    last = len(lines) - 1
    return b"".join(
        f"{code}{' ' if index == last else '-'}{line}".encode() + CRLF
        for index, line in enumerate(lines)
    )


def verdict(answer: Verdict) -> bytes:
    return answer.reply.encode("ascii") + CRLF


def greeting(hostname: str) -> bytes:
    return render(220, [f"{hostname} ESMTP filterd"])


def bye() -> bytes:
    return render(221, ["2.0.0 Bye"])


def start_data() -> bytes:
    return render(354, ["End data with <CR><LF>.<CR><LF>"])


def helo(hostname: str) -> bytes:
    return render(250, [hostname])


def ehlo(hostname: str, max_size: int, *, xforward: bool) -> bytes:
    """What the proxy offers (docs/explanation/proxy.md says why each is there or not).

    Never PIPELINING (Postfix's proxy client never pipelines, and not offering it makes any
    input sent ahead a violation: RFC 2920 §3.1), never CHUNKING (BDAT smuggling:
    docs/explanation/smuggling.md), never STARTTLS or AUTH (the front smtpd's job).
    """
    lines = [
        hostname,
        f"SIZE {max_size}",  # RFC 1870
        "8BITMIME",  # RFC 6152
        "SMTPUTF8",  # RFC 6531
        "DSN",  # RFC 3461: RET, ENVID, NOTIFY, ORCPT are relayed unchanged
        "ENHANCEDSTATUSCODES",  # RFC 2034
    ]
    if xforward:
        lines.append("XFORWARD " + " ".join(XFORWARD_NAMES))  # Postfix XFORWARD_README
    return render(250, lines)
