"""[clamd] address as one string or a list; the pool's own keys; --clamd given twice."""

from __future__ import annotations

import argparse

import pytest

from filterd import config as config_module
from filterd import serve_cli
from filterd.app import build_scanner
from filterd.config import ConfigError, from_mapping
from tests.tables import cases


@pytest.mark.parametrize(
    ("value", "want"),
    [
        pytest.param("tcp:127.0.0.1:3310", ("tcp:127.0.0.1:3310",), id="string"),
        pytest.param(
            ["tcp:10.0.0.1:3310", "tcp:10.0.0.2:3310"],
            ("tcp:10.0.0.1:3310", "tcp:10.0.0.2:3310"),
            id="list",
        ),
    ],
)
def test_address_string_or_list(value: object, want: tuple[str, ...]) -> None:
    got = from_mapping({"clamd": {"address": value}})
    assert got.clamd.addresses == want
    assert [s.address for s in build_scanner(got).stats()] == list(want)


ALLOWED = "is not unix:PATH or tcp:HOST:PORT"

# (id, [clamd] table, the start of the one-line error)
BAD = [
    ("empty", {"address": []}, f"clamd.address: () {ALLOWED}, or a list of them"),
    ("num", {"address": 3310}, f"clamd.address: 3310 {ALLOWED}, or a list of them"),
    ("int", {"address": ["unix:/a", 3]}, f"clamd.address: 3 {ALLOWED}"),
    ("bad", {"address": ["unix:/a", "nonsense"]}, f"clamd.address: 'nonsense' {ALLOWED}"),
    ("twice", {"address": ["unix:/a", "unix:/a"]},
     "clamd.address: ('unix:/a', 'unix:/a') is not a list without repeats"),
    ("deadline", {"deadline": 0}, "clamd.deadline: 0 is not a number > 0"),
    ("interval", {"health_interval": -1}, "clamd.health_interval: -1 is not a number > 0"),
    ("backoff", {"health_backoff_max": 0}, "clamd.health_backoff_max: 0 is not a number > 0"),
]  # fmt: skip


@pytest.mark.parametrize(("table", "message"), cases(BAD))
def test_bad_values_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping({"clamd": table})
    got = str(caught.value)
    assert got.startswith(message), f"got {got!r}, want {message!r}..."


def test_clamd_flag_may_repeat() -> None:
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args(["--clamd", "unix:/a.sock", "--clamd", "tcp:127.0.0.1:3310"])
    got = serve_cli.settings(args)
    assert got.clamd.addresses == ("unix:/a.sock", "tcp:127.0.0.1:3310")
    assert serve_cli.settings(parser.parse_args([])).clamd == config_module.ClamdSettings()
