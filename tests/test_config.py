"""Configuration: every bad key, type or word is an error that names it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from filterd import config
from filterd.core import BareNewline, InfectedAction
from tests.config_support import Case, load_test

# (id, TOML text, error text that must appear, or None when valid)
CASES: list[Case] = [
    ("empty", "", None),
    ("postfix-words", '[filter]\nforbid_bare_newline = "reject"\nbare_newline_reject_code = 521',
     None),
    ("postfix-yes", '[filter]\nforbid_bare_newline = "YES"', None),
    ("int-for-float", "[clamd]\nreply_timeout = 30", None),
    ("unknown-section", "[filtre]\nx = 1", "[filtre]: unknown section"),
    ("unknown-key", "[clamd]\nadress = 'unix:/x'", "clamd.adress: unknown key; known: address,"),
    ("wrong-type", "[clamd]\nmax_concurrent = 'ten'",
     "clamd.max_concurrent: 'ten' is not an integer"),
    ("bool-is-not-int", "[clamd]\nmax_concurrent = true",
     "clamd.max_concurrent: true is not an integer"),
    ("bad-word", '[filter]\nforbid_bare_newline = "strict"', "'strict' is not one of"),
    ("reject-code-not-5xx", "[filter]\nbare_newline_reject_code = 450",
     "filter.bare_newline_reject_code: 450 is not an integer from 500 to 599"),
    ("bad-toml", "[filter", "Expected"),
    ("section-not-table", "filter = 1", "filter: 1 is not a table"),
    ("log-level-word", '[log]\nlevel = "loud"', "log.level: 'loud' is not one of"),
]  # fmt: skip


test_load = load_test(CASES)


def test_values_arrive() -> None:
    data: dict[str, Any] = {
        "filter": {"forbid_bare_newline": "note", "infected": "discard"},
        "clamd": {"address": "tcp:127.0.0.1:3310", "reply_timeout": 30},
    }
    got = config.from_mapping(data)
    assert got.filter.forbid_bare_newline is BareNewline.NOTE
    assert got.filter.infected is InfectedAction.DISCARD
    assert got.clamd.address == "tcp:127.0.0.1:3310"
    assert got.clamd.reply_timeout == 30.0


def test_command_line_wins_and_none_keeps() -> None:
    base = config.from_mapping({"proxy": {"listen": "127.0.0.1:10024"}})
    got = config.replace(base, "proxy", listen=None, downstream="127.0.0.1:10026")
    assert got.proxy.listen == "127.0.0.1:10024"
    assert got.proxy.downstream == "127.0.0.1:10026"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"nope\.toml"):
        config.load(tmp_path / "nope.toml")
