"""The fake end-of-data variants of research/smuggling.md §3.1 and the controls of §3.2.

Bytes are copied from that table; each replaces the standard <CRLF>.<CRLF> right after the
last content byte. Shared by the inspector tests and the property tests.
"""

from __future__ import annotations

FAKE_TERMINATORS: dict[str, bytes] = {
    "E01": b"\n.\n",
    "E02": b"\n.\r\n",
    "E03": b"\r\n.\n",
    "E04": b"\r.\r",
    "E05": b"\r.\n",
    "E06": b"\n.\r",
    "E07": b"\r.\r\n",
    "E08": b"\r\n.\r",
    "E09": b"\r\n\x00.\r\n",
    "E10": b"\r\n.\x00\r\n",
    "E11": b"\r\n.\r\r\n",
    "E12": b"\r\r\n.\r\r\n",
    "E13": b"\r\r\n.\r\n",
    "E14": b"\n\n.\r\n",
    "E15": b"\r\n\x00.\r",
    "E16": b"\r\n\x00.\n",
    "E17": b"\r\n.",
    "E18": b"\x00\r\n.\r\n",
    "E19": b"\r\x00\n.\r\n",
    "E20": b"\r\n.\r\x00\n",
    "E21": b"\r\n.\r\n\x00",
    "E22": b"\r\n. \r\n",
}
CONTROLS: dict[str, bytes] = {"C01": b"\r\n.\r\n", "C02": b"\r\n..\r\n"}

BODY = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: t\r\n\r\nline one"
# SEC Consult's layout (smuggling.md §2): CRLF after the sequence, smuggled commands in lower
# case, then a message of its own and a real terminator.
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
