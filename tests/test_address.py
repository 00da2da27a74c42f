"""HOST:PORT and [IPv6]:PORT: the one parser of TCP addresses (filterd/address.py)."""

from __future__ import annotations

import socket

import pytest

from filterd.address import (
    AddressError,
    HostPort,
    parse_host_port,
    parse_proxy_address,
    split_host_port,
)
from filterd.endpoints.net import set_nodelay
from tests.tables import cases

# Rows: id, text, want.
GOOD = [
    ("ipv4", "127.0.0.1:10024", HostPort("127.0.0.1", 10024)),
    ("name", "localhost:25", HostPort("localhost", 25)),
    ("ipv6-in-brackets", "[::1]:10025", HostPort("::1", 10025)),
    ("ipv6-full", "[2001:db8::1]:587", HostPort("2001:db8::1", 587)),
    ("port-zero-any-free-port", "127.0.0.1:0", HostPort("127.0.0.1", 0)),
    ("highest-port", "127.0.0.1:65535", HostPort("127.0.0.1", 65535)),
]

# (id, text, words the error must contain)
BAD = [
    ("empty", "", "expected HOST:PORT"),
    ("no-port", "127.0.0.1", "expected HOST:PORT"),
    ("empty-host", ":25", "empty host"),
    ("empty-brackets", "[]:25", "empty host"),
    ("ipv6-without-brackets", "::1:25", "put an IPv6 address in brackets"),
    ("empty-port", "127.0.0.1:", "port '' is not a number"),
    ("port-word", "127.0.0.1:smtp", "port 'smtp' is not a number"),
    ("port-sign", "127.0.0.1:+25", "port '+25' is not a number"),
    ("port-space", "127.0.0.1: 25", "port ' 25' is not a number"),
    ("port-underscore", "127.0.0.1:2_5", "port '2_5' is not a number"),
    ("port-superscript-digit", "127.0.0.1:\u00b2", "is not a number"),
    ("port-too-big", "127.0.0.1:65536", "out of range 0-65535"),
]


@pytest.mark.parametrize(("text", "want"), cases(GOOD))
def test_parse_host_port(text: str, want: HostPort) -> None:
    got = parse_host_port(text)
    assert got == want
    assert str(got) == text, "str() writes the address back in the same syntax"


@pytest.mark.parametrize(("text", "words"), cases(BAD))
def test_parse_host_port_errors(text: str, words: str) -> None:
    with pytest.raises(AddressError) as raised:
        parse_host_port(text)
    assert words in str(raised.value)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        pytest.param("127.0.0.1:10024", HostPort("127.0.0.1", 10024), id="plain"),
        pytest.param("inet:127.0.0.1:10024", HostPort("127.0.0.1", 10024), id="inet-prefix"),
        pytest.param("inet:[::1]:10024", HostPort("::1", 10024), id="inet-ipv6"),
    ],
)
def test_parse_proxy_address(text: str, want: HostPort) -> None:
    assert parse_proxy_address(text) == want


# (id, text, want (host, port text)): Postfix's own forms read unchecked (master(5)).
SPLIT = [
    ("host-and-port", "127.0.0.1:10025", ("127.0.0.1", "10025")),
    ("service-name-port", "127.0.0.1:smtp", ("127.0.0.1", "smtp")),
    ("port-alone", "10025", ("", "10025")),
    ("ipv6-in-brackets", "[::1]:10025", ("::1", "10025")),
    ("ipv6-as-master-5-writes-it", "::1:smtp", ("::1", "smtp")),
    ("empty-host", ":10025", ("", "10025")),
]


@pytest.mark.parametrize(("text", "want"), cases(SPLIT))
def test_split_host_port(text: str, want: tuple[str, str]) -> None:
    assert split_host_port(text) == want


def test_an_address_error_is_a_value_error() -> None:
    assert issubclass(AddressError, ValueError)


def test_set_nodelay_on_tcp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        set_nodelay(sock)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_set_nodelay_leaves_unix_sockets_and_none_alone() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        set_nodelay(sock)  # setsockopt(TCP_NODELAY) on a UNIX socket would raise OSError
    set_nodelay(None)
