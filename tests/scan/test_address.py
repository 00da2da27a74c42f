"""The clamd address syntax: unix:PATH and tcp:HOST:PORT."""

from __future__ import annotations

import pytest

from filterd.scan.address import (
    AddressError,
    ClamdAddress,
    TcpAddress,
    UnixAddress,
    parse_address,
)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        pytest.param("unix:/run/clamav/clamd.ctl", UnixAddress("/run/clamav/clamd.ctl"), id="unix"),
        pytest.param("unix:clamd.sock", UnixAddress("clamd.sock"), id="unix-relative"),
        pytest.param("unix:/srv/a:b", UnixAddress("/srv/a:b"), id="unix-colon-in-path"),
        pytest.param("tcp:127.0.0.1:3310", TcpAddress("127.0.0.1", 3310), id="tcp-ipv4"),
        pytest.param("tcp:localhost:1", TcpAddress("localhost", 1), id="tcp-name"),
        pytest.param("tcp:[::1]:65535", TcpAddress("::1", 65535), id="tcp-ipv6"),
    ],
)
def test_parse_address(text: str, want: ClamdAddress) -> None:
    got = parse_address(text)
    assert got == want
    assert str(got) == text


@pytest.mark.parametrize(
    ("text", "want_message"),
    [
        pytest.param("", "expected unix:PATH or tcp:HOST:PORT", id="empty"),
        pytest.param("/run/clamd.ctl", "expected unix:PATH or tcp:HOST:PORT", id="bare-path"),
        pytest.param("udp:1.2.3.4:3310", "unknown scheme 'udp'", id="unknown-scheme"),
        pytest.param("UNIX:/x", "unknown scheme 'UNIX'", id="scheme-is-case-sensitive"),
        pytest.param("unix:", "empty socket path", id="unix-empty-path"),
        pytest.param("unix:/a\0b", "NUL in socket path", id="unix-nul"),
        pytest.param("tcp:3310", "expected tcp:HOST:PORT", id="tcp-no-host"),
        pytest.param("tcp::3310", "empty host", id="tcp-empty-host"),
        pytest.param("tcp:[]:3310", "empty host", id="tcp-empty-brackets"),
        pytest.param("tcp:127.0.0.1:", "port '' is not a number", id="tcp-no-port"),
        pytest.param("tcp:127.0.0.1:x", "port 'x' is not a number", id="tcp-port-word"),
        pytest.param("tcp:127.0.0.1:+1", "port '+1' is not a number", id="tcp-port-sign"),
        pytest.param("tcp:127.0.0.1:0", "out of range", id="tcp-port-zero"),
        pytest.param("tcp:127.0.0.1:65536", "out of range", id="tcp-port-too-big"),
        pytest.param("tcp:::1:3310", "put an IPv6 address in brackets", id="tcp-bare-ipv6"),
    ],
)
def test_parse_address_errors(text: str, want_message: str) -> None:
    with pytest.raises(AddressError, match=want_message.replace("+", r"\+")):
        parse_address(text)


def test_address_error_is_a_value_error() -> None:
    assert issubclass(AddressError, ValueError)
