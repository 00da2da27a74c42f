"""[proxy] settings are checked once, at start, and a bad one names its key."""

from __future__ import annotations

from typing import Any

import pytest

from filterd import config
from tests.tables import cases

# (id, [proxy] table, words the error must contain; None: valid)
TABLES: list[tuple[str, dict[str, Any], str | None]] = [
    ("defaults", {}, None),
    ("listen port 0 for tests", {"listen": "127.0.0.1:0"}, None),
    ("ipv6 listen", {"listen": "[::1]:10024"}, None),
    ("listen without port", {"listen": "127.0.0.1"}, "listen"),
    ("downstream port out of range", {"downstream": "127.0.0.1:70000"}, "downstream"),
    ("zero timeout", {"command_timeout": 0}, "command_timeout"),
    ("negative deadline", {"reply_deadline": -1}, "reply_deadline"),
    ("negative greet pause", {"greet_pause": -0.1}, "greet_pause"),
    ("line limit under RFC 5321", {"max_line_length": 100}, "max_line_length"),
    ("bad xforward network", {"xforward_hosts": ["127.0.0.0/8", "nonsense"]}, "nonsense"),
    ("unknown key", {"max_conections": 5}, "max_conections"),
    ("wrong type", {"max_connections": "many"}, "max_connections"),
]


@pytest.mark.parametrize(("table", "error"), cases(TABLES))
def test_proxy_settings(table: dict[str, Any], error: str | None) -> None:
    if error is None:
        config.from_mapping({"proxy": table})
        return
    with pytest.raises(config.ConfigError) as raised:
        config.from_mapping({"proxy": table})
    assert error in str(raised.value), f"got {raised.value}, want it to name {error!r}"
