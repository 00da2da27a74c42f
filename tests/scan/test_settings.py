"""[clamd] address as one string or a list; the pool's own keys; --clamd given twice."""

from __future__ import annotations

import argparse

import pytest

from filterd import config as config_module
from filterd import serve_cli
from filterd.app import build_scanner
from filterd.config import ConfigError, from_mapping


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


@pytest.mark.parametrize(
    ("table", "message"),
    [
        pytest.param({"address": []}, "clamd.address: the list is empty", id="empty"),
        pytest.param({"address": 3310}, "clamd.address: expected a string or a list", id="num"),
        pytest.param({"address": ["unix:/a", 3]}, "clamd.address: expected a string", id="int"),
        pytest.param({"address": ["unix:/a", "nonsense"]}, "clamd.address: 'nonsense'", id="bad"),
        pytest.param({"address": ["unix:/a", "unix:/a"]}, "listed twice", id="twice"),
        pytest.param({"deadline": 0}, "clamd.deadline: must be positive", id="deadline"),
        pytest.param({"health_interval": -1}, "clamd.health_interval", id="interval"),
        pytest.param({"health_backoff_max": 0}, "clamd.health_backoff_max", id="backoff"),
    ],
)
def test_bad_values_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping({"clamd": table})


def test_clamd_flag_may_repeat() -> None:
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args(["--clamd", "unix:/a.sock", "--clamd", "tcp:127.0.0.1:3310"])
    got = serve_cli.settings(args)
    assert got.clamd.addresses == ("unix:/a.sock", "tcp:127.0.0.1:3310")
    assert serve_cli.settings(parser.parse_args([])).clamd == config_module.ClamdSettings()
