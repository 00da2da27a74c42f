"""The default name: Postfix's myhostname when postconf answers, else this host's FQDN."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from filterd import hostname
from filterd.doctor import postconf


def require_postconf() -> None:
    try:
        postconf.find_postconf()
    except postconf.PostconfError:
        pytest.skip("postconf is not installed")


def test_myhostname_of_a_postfix_config_dir(tmp_path: Path) -> None:
    """postconf -c DIR, as for the test bed's private Postfix."""
    require_postconf()
    (tmp_path / "main.cf").write_text("myhostname = mx.example.test\n")
    assert hostname.postfix_myhostname(str(tmp_path)) == "mx.example.test"
    assert hostname.default_hostname(str(tmp_path)) == "mx.example.test"


def test_without_main_cf_the_fqdn(tmp_path: Path) -> None:
    """A Postfix installed with "No configuration" has no main.cf: postconf fails."""
    require_postconf()
    assert hostname.postfix_myhostname(str(tmp_path)) is None
    assert hostname.default_hostname(str(tmp_path)) == socket.getfqdn()


def test_without_postconf_the_fqdn(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: object) -> str:
        raise postconf.PostconfError("postconf not found (is Postfix installed?)")

    monkeypatch.setattr(hostname, "run", missing)
    assert hostname.postfix_myhostname() is None
    assert hostname.default_hostname.__wrapped__() == socket.getfqdn()
