"""Usage and connection errors exit 2; --list shows the catalogue."""

from __future__ import annotations

import pytest

from filterd.harness.catalogue import CATALOGUE
from filterd.harness.mynetworks import source_warning
from tests.harness.conftest import Smuggle
from tests.testbed.common import free_port


@pytest.mark.parametrize(
    "args",
    [
        ["no-port"],
        ["127.0.0.1:99999"],
        ["127.0.0.1:25", "--probe", "E99"],
        ["127.0.0.1:25", "--run-id", "UPPER"],
        ["127.0.0.1:25", "--timeout", "soon"],
        ["127.0.0.1:25", "--timeout", "-1"],
        ["127.0.0.1:25", "--pause", "later"],
    ],
    ids=" ".join,
)
def test_usage_errors_exit_2(smuggle: Smuggle, args: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        smuggle(*args)
    assert raised.value.code == 2


def test_missing_target_exits_2(smuggle: Smuggle) -> None:
    assert smuggle().code == 2


def test_connection_refused_exits_2(smuggle: Smuggle) -> None:
    outcome = smuggle(f"127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert outcome.code == 2
    assert "cannot talk to" in outcome.err


def test_list(smuggle: Smuggle) -> None:
    outcome = smuggle("--list")
    assert outcome.code == 0
    assert "E02  exploitable" in outcome.out
    assert "E02-S  exploitable" in outcome.out
    assert len(outcome.out.splitlines()) == len(CATALOGUE)


POSTFIX = ("testbed.example.test ESMTP Postfix",)


@pytest.mark.parametrize(
    ("address", "warns"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("10.1.2.3", True),
        ("192.168.0.7", True),
        ("172.16.0.1", True),
        ("fe80::1%eth0", True),
        ("::ffff:127.0.0.1", True),
        ("192.0.2.1", True),  # TEST-NET-1 counts as private in Python's table
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
        ("not-an-address", False),
    ],
)
def test_mynetworks_warning(address: str, warns: bool) -> None:
    assert (source_warning(address, POSTFIX) is not None) is warns


@pytest.mark.parametrize(
    ("said", "warns"),
    [
        (("mx.example.test ESMTP Postfix",), True),
        (("mx.example.test ESMTP Postfix (Debian/GNU)",), True),
        (("mx.example.test ESMTP",), False),
        (("mx.example.test Python SMTP 1.4.6",), False),
        (("mx.example.test ESMTP Exim 4.96",), False),
        (("mx.example.test ESMTP OpenSMTPD",), False),
        ((), False),
    ],
)
def test_mynetworks_warning_only_for_postfix(said: tuple[str, ...], warns: bool) -> None:
    assert (source_warning("127.0.0.1", said) is not None) is warns
