"""How the sequences of docs/explanation/smuggling.md are laid out around a message, for the
inspector tests and the property tests."""

from __future__ import annotations

from tests.smuggling_research import CONTROLS, FAKE_TERMINATORS

__all__ = ["CONTROLS", "FAKE_TERMINATORS"]

BODY = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: t\r\n\r\nline one"
# SEC Consult's layout (docs/explanation/smuggling.md): CRLF after the sequence, smuggled
# commands in lower case, then a message of its own and a real terminator.
SMUGGLED = (
    b"\r\nmail FROM:<smuggled@example.test>\r\nrcpt TO:<b@example.test>\r\ndata\r\n"
    b"From: smuggled@example.test\r\n\r\nSMUGGLED\r\n.\r\n"
)
END = b"\r\n.\r\n"


def sec_layout(sequence: bytes) -> bytes:
    """What SEC Consult's scanner sends after DATA: body, sequence, smuggled transaction."""
    return BODY + sequence + SMUGGLED


def smtpsmug_layout(sequence: bytes) -> bytes:
    """What smtpsmug sends, body and sequence, then a real terminator so that DATA can end."""
    return BODY + sequence + END
