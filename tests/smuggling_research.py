"""The fake ends of data (E01-E22) and controls (C01, C02) of docs/explanation/smuggling.md.

Copied byte for byte from that table, once, for every test that needs them: the core's
inspector tests and the harness's catalogue tests judge their code against the same source.
Each sequence replaces the standard <CRLF>.<CRLF> right after the last content byte.
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
RESEARCH_BYTES: dict[str, bytes] = {**FAKE_TERMINATORS, **CONTROLS}
