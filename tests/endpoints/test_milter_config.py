"""[milter] settings and the Postfix version table the Milter warns from."""

from __future__ import annotations

from typing import Any

import pytest

from filterd.config import ConfigError, from_mapping
from filterd.endpoints.milter.postfix import cleans_stray_cr_lf
from tests.tables import cases

# (id, [milter] table, the settings it must give: field -> value)
ACCEPTED: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("defaults", {}, {"listen": "", "infected": "", "traces": "", "socket_mode": "0660",
                      "socket_group": "", "bypass_networks": (), "bypass_authenticated": False}),
    ("quarantine", {"infected": "quarantine"}, {"infected": "quarantine"}),
    ("traces-reject", {"traces": "reject"}, {"traces": "reject"}),
    ("networks", {"bypass_networks": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]},
     {"bypass_networks": ("10.0.0.0/8", "2001:db8::/32", "192.0.2.1")}),  # a list becomes a tuple
    ("mode", {"socket_mode": "0600"}, {"socket_mode": "0600"}),
    ("group-and-listen", {"listen": "unix:/run/f.sock", "socket_group": "postfix"},
     {"listen": "unix:/run/f.sock", "socket_group": "postfix"}),
    ("progress", {"progress_interval": 2.5}, {"progress_interval": 2.5}),
]  # fmt: skip

# (id, [milter] table, error fragment)
REFUSED = [
    ("unknown-infected", {"infected": "bounce"}, "infected: 'bounce'"),
    ("traces-normalize", {"traces": "normalize"}, "traces: 'normalize'"),
    ("bad-network", {"bypass_networks": ["10.0.0.0/33"]}, "bypass_networks"),
    ("bad-mode", {"socket_mode": "rw-rw----"}, "socket_mode"),
    ("zero-progress", {"progress_interval": 0}, "progress_interval"),
    ("unknown-key", {"listen_on": "x"}, "unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(("table", "want"), cases(ACCEPTED))
def test_milter_settings(table: dict[str, Any], want: dict[str, Any]) -> None:
    settings = from_mapping({"milter": table}).milter
    got = {name: getattr(settings, name) for name in want}
    assert got == want


@pytest.mark.parametrize(("table", "error"), cases(REFUSED))
def test_milter_settings_refused(table: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        from_mapping({"milter": table})


# (v macro, want): Postfix: cleanup_replace_stray_cr_lf, RELEASE_NOTES-3.9 and patch releases.
VERSIONS = [
    ("Postfix 3.7.11", True),
    ("Postfix 3.7.10", True),
    ("Postfix 3.7.9", False),
    ("Postfix 3.8.5", True),
    ("Postfix 3.8.4", False),
    ("Postfix 3.6.14", True),
    ("Postfix 3.5.23", False),
    ("Postfix 3.9.0", True),
    ("Postfix 3.10.1", True),
    ("Postfix 3.4.30", False),
    ("Postfix 3.12-20260821", True),
    ("Sendmail 8.18.1", None),
    ("", None),
]


@pytest.mark.parametrize(("macro", "want"), VERSIONS, ids=[v[0] or "empty" for v in VERSIONS])
def test_cleans_stray_cr_lf(macro: str, want: bool | None) -> None:
    got = cleans_stray_cr_lf(macro)
    assert got is want, f"{macro!r}: got {got}, want {want}"
