"""[server] and the rules that span sections: loopback-only listeners, the content budget.

Every error names the key (`section.key`) it is about.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from filterd import config
from tests.config_support import Case, check_load, load_test
from tests.tables import cases

ALLOW = "[server]\nallow_non_loopback = true\n"
PROXY = "[proxy]\nlisten = "
MILTER = "[milter]\nlisten = "
NOT_LOOPBACK = "is not a loopback address"

# (id, TOML text, error text that must appear, or None when valid)
CASES: list[Case] = [
    ("defaults", "[server]", None),
    ("proxy-ipv4-loopback", f'{PROXY}"127.0.0.1:10024"', None),
    ("proxy-other-127", f'{PROXY}"127.0.0.53:10024"', None),
    ("proxy-ipv6-loopback", f'{PROXY}"[::1]:10024"', None),
    ("proxy-mapped-loopback", f'{PROXY}"[::ffff:127.0.0.1]:10024"', None),
    ("proxy-localhost", f'{PROXY}"localhost:10024"', None),
    ("proxy-any-ipv4", f'{PROXY}"0.0.0.0:10024"', f"proxy.listen: '0.0.0.0:10024' {NOT_LOOPBACK}"),
    ("proxy-any-ipv6", f'{PROXY}"[::]:10024"', f"proxy.listen: '[::]:10024' {NOT_LOOPBACK}"),
    ("proxy-lan", f'{PROXY}"192.0.2.10:10024"', f"'192.0.2.10:10024' {NOT_LOOPBACK}"),
    ("proxy-lan-ipv6", f'{PROXY}"[2001:db8::1]:10024"', f"'[2001:db8::1]:10024' {NOT_LOOPBACK}"),
    ("proxy-unresolvable", f'{PROXY}"nosuchhost.invalid:10024"',
     "proxy.listen: 'nosuchhost.invalid:10024' does not resolve"),
    ("proxy-says-how-to-allow", f'{PROXY}"0.0.0.0:10024"', "[server] allow_non_loopback = true"),
    ("milter-loopback", f'{MILTER}"inet:127.0.0.1:10026"', None),
    ("milter-unix", f'{MILTER}"unix:/run/filterd/milter.sock"', None),
    ("milter-any", f'{MILTER}"inet:0.0.0.0:10026"',
     f"milter.listen: 'inet:0.0.0.0:10026' {NOT_LOOPBACK}"),
    ("milter-any-ipv6", f'{MILTER}"inet:[::]:10026"', f"'inet:[::]:10026' {NOT_LOOPBACK}"),
    ("allowed-proxy", f'{ALLOW}{PROXY}"0.0.0.0:10024"', None),
    ("allowed-milter", f'{ALLOW}{MILTER}"inet:[::]:10026"', None),
    ("allow-is-bool", '[server]\nallow_non_loopback = "yes"',
     "server.allow_non_loopback: 'yes' is not true or false"),
    ("budget-bytes", "[server]\nmax_buffered_bytes = 536870912", None),
    ("budget-is-int", '[server]\nmax_buffered_bytes = "256M"',
     "server.max_buffered_bytes: '256M' is not an integer"),
    ("budget-zero", "[server]\nmax_buffered_bytes = 0",
     "server.max_buffered_bytes: 0 is not an integer > 0"),
    ("budget-below-message-size", "[server]\nmax_buffered_bytes = 1000000",
     "server.max_buffered_bytes: 1000000 is below filter.max_message_size (10240000)"),
    ("budget-equal-message-size",
     "[server]\nmax_buffered_bytes = 2000\n[filter]\nmax_message_size = 2000", None),
    ("server-unknown-key", "[server]\nallow_any = true", "server.allow_any: unknown key"),
]  # fmt: skip


test_load = load_test(CASES)


def test_defaults() -> None:
    got = config.Config().server
    assert got.allow_non_loopback is False
    assert got.max_buffered_bytes == 268435456


def fake_resolver(answers: dict[str, list[str]]) -> Any:
    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in answers[host]]

    return getaddrinfo


# (id, addresses the name resolves to, error or None)
NAMES = [
    ("all-loopback", ["127.0.0.1", "::1"], None),
    ("lan", ["192.0.2.7"],
     "proxy.listen: 'mx.example:10024' is not a loopback address (resolves to 192.0.2.7)"),
    ("one-of-two-lan", ["127.0.0.1", "192.0.2.7"], "resolves to 192.0.2.7"),
]  # fmt: skip


@pytest.mark.parametrize(("answers", "error"), cases(NAMES))
def test_a_name_counts_only_if_every_address_is_loopback(
    monkeypatch: pytest.MonkeyPatch, answers: list[str], error: str | None
) -> None:
    """asyncio binds every address a name resolves to, so one LAN address exposes filterd."""
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver({"mx.example": answers}))
    data = {"proxy": {"listen": "mx.example:10024"}}
    check_load(lambda: config.from_mapping(data), error)


def test_a_command_line_address_is_checked_too() -> None:
    """`--proxy 0.0.0.0:10024` merges through config.replace, which must refuse it as well."""
    with pytest.raises(config.ConfigError, match=r"proxy\.listen: '0\.0\.0\.0:10024'"):
        config.replace(config.Config(), "proxy", listen="0.0.0.0:10024")


def test_exposed_listeners_names_what_is_allowed() -> None:
    cfg = config.from_mapping(
        {
            "server": {"allow_non_loopback": True},
            "proxy": {"listen": "0.0.0.0:10024"},
            "milter": {"listen": "inet:127.0.0.1:10026"},
        }
    )
    got = config.exposed_listeners(cfg)
    assert got == [("proxy.listen", "0.0.0.0:10024", NOT_LOOPBACK)]
