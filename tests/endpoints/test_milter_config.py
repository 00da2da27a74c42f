"""[milter] settings and the Postfix version table the Milter warns from."""

from __future__ import annotations

from typing import Any

import pytest

from filterd.config import ConfigError, from_mapping
from filterd.endpoints.milter.postfix import cleans_stray_cr_lf

# (id, [milter] table, error fragment or None)
SETTINGS = [
    ("defaults", {}, None),
    ("quarantine", {"infected": "quarantine"}, None),
    ("unknown-infected", {"infected": "bounce"}, "infected: 'bounce'"),
    ("traces-reject", {"traces": "reject"}, None),
    ("traces-normalize", {"traces": "normalize"}, "traces: 'normalize'"),
    ("networks", {"bypass_networks": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]}, None),
    ("bad-network", {"bypass_networks": ["10.0.0.0/33"]}, "bypass_networks"),
    ("mode", {"socket_mode": "0600"}, None),
    ("bad-mode", {"socket_mode": "rw-rw----"}, "socket_mode"),
    ("zero-progress", {"progress_interval": 0}, "progress_interval"),
    ("unknown-key", {"listen_on": "x"}, "unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("table", "error"), [s[1:] for s in SETTINGS], ids=[s[0] for s in SETTINGS]
)
def test_milter_settings(table: dict[str, Any], error: str | None) -> None:
    if error is None:
        settings = from_mapping({"milter": table}).milter
        assert isinstance(settings.bypass_networks, tuple)
    else:
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
