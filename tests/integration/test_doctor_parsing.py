"""The doctor's parsers: what postconf(1) prints, Postfix value syntax, clamd.conf(5)."""

from __future__ import annotations

import pytest

from filterd.doctor import clamdconf, postconf
from filterd.doctor.findings import postconf_e, postconf_p
from filterd.doctor.postfix import (
    BARE_NEWLINE_NORMALIZE,
    Milter,
    has_feature,
    is_loopback,
    list_items,
    parse_milters,
    parse_time,
    parse_version,
)
from filterd.doctor.roles import host_and_port, proxy_target


def test_parameters_keep_empty_values() -> None:
    text = "smtpd_milters =\nmynetworks = 127.0.0.0/8 [::1]/128\n"
    assert postconf.parse_parameters(text) == {
        "smtpd_milters": "",
        "mynetworks": "127.0.0.0/8 [::1]/128",
    }


def test_overrides_split_at_the_last_two_slashes() -> None:
    text = (
        "127.0.0.1:10025/inet/smtpd_proxy_filter =\n"
        "smtp/inet/smtpd_milters = { inet:127.0.0.1:10026, default_action=accept }\n"
    )
    assert postconf.parse_overrides(text) == {
        "127.0.0.1:10025/inet": {"smtpd_proxy_filter": ""},
        "smtp/inet": {"smtpd_milters": "{ inet:127.0.0.1:10026, default_action=accept }"},
    }


def test_master_lines() -> None:
    text = (
        "smtp       inet  n       -       y       -       20      smtpd -o a=b\n"
        "pickup     unix  n       -       n       60      1       pickup\n"
    )
    got = [(s.key, s.chroot, s.maxproc, s.command) for s in postconf.parse_master(text)]
    assert got == [("smtp/inet", "y", "20", "smtpd"), ("pickup/unix", "n", "1", "pickup")]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("", []),
        ("a, b c", ["a", "b", "c"]),
        (" , ", []),
        (
            "{ inet:h:1, default_action=accept }, unix:/x",
            ["{ inet:h:1, default_action=accept }", "unix:/x"],
        ),
    ],
)
def test_list_items(text: str, want: list[str]) -> None:
    assert list_items(text) == want


def test_milter_groups() -> None:
    got = parse_milters("inet:127.0.0.1:8891, { inet:127.0.0.1:10026, default_action=accept }")
    assert got == [
        Milter("inet:127.0.0.1:8891", {}),
        Milter("inet:127.0.0.1:10026", {"default_action": "accept"}),
    ]


@pytest.mark.parametrize(
    ("text", "want"), [("100s", 100.0), ("100", 100.0), ("2m", 120.0), ("1h", 3600.0), ("x", None)]
)
def test_time(text: str, want: float | None) -> None:
    assert parse_time(text) == want


@pytest.mark.parametrize(
    ("text", "normalize"),
    [
        ("3.7.9", False),
        ("3.7.10", True),
        ("3.7.11", True),
        ("3.8.4", False),
        ("3.8.5", True),
        ("3.4.14", False),
        ("3.9.0", True),
        ("3.10-20250101", True),
    ],
)
def test_versions(text: str, normalize: bool) -> None:
    version = parse_version(text)
    assert version is not None
    assert has_feature(version, BARE_NEWLINE_NORMALIZE) is normalize


@pytest.mark.parametrize(
    ("entry", "want"),
    [
        ("127.0.0.0/8", True),
        ("127.0.0.1", True),
        ("[::1]/128", True),
        ("localhost", True),
        ("10.0.0.0/8", False),
        ("0.0.0.0/0", False),
        ("cidr:/etc/postfix/x", False),
        ("all", False),
    ],
)
def test_loopback(entry: str, want: bool) -> None:
    assert is_loopback(entry) is want


@pytest.mark.parametrize(
    ("text", "want"), [("25M", 25 * 1024 * 1024), ("10k", 10240), ("4096", 4096), ("0", 0)]
)
def test_clamd_size(text: str, want: int) -> None:
    assert clamdconf.parse_size(text) == want


def test_clamd_file_comments_tabs_repeats_and_defaults() -> None:
    conf = clamdconf.parse(
        "# LocalSocket /nope\nTCPSocket\t3310\nTCPAddr 127.0.0.1\nTCPAddr ::1\nExample\n", "x"
    )
    assert conf.tcp_port == 3310
    assert conf.tcp_addresses == ("127.0.0.1", "::1")
    assert conf.local_socket is None
    assert conf.last("Example") == ""
    assert conf.size("StreamMaxLength") == 100 * 1024 * 1024  # clamd.conf(5) 1.4.6 default
    assert conf.number("MaxThreads") == 10
    assert conf.flag("AlertExceedsMax") is False


def test_fix_lines() -> None:
    assert postconf_e("smtpd_forbid_bare_newline_exclusions", "") == (
        "postconf -e 'smtpd_forbid_bare_newline_exclusions ='"
    )
    assert postconf_e("message_size_limit", "10240000", "/etc/postfix-out") == (
        "postconf -c /etc/postfix-out -e 'message_size_limit = 10240000'"
    )
    assert postconf_p("smtp/inet", "smtpd_proxy_filter", "127.0.0.1:10024") == (
        "postconf -P 'smtp/inet/smtpd_proxy_filter=127.0.0.1:10024'"
    )


def test_service_names_and_proxy_filters_read_as_postfix_writes_them() -> None:
    """The split itself is filterd/address.py's (tests/test_address.py); the doctor adds
    the lower-cased host and the `inet:` / `unix:` forms of smtpd_proxy_filter."""
    assert host_and_port("LocalHost:smtp") == ("localhost", "smtp")
    assert host_and_port("10025") == ("", "10025"), "a port alone: every interface"
    assert proxy_target(" inet:[::1]:10024") == "::1:10024"
    assert proxy_target("unix:/run/filterd.sock") == "unix:/run/filterd.sock"
