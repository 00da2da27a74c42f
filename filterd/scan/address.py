"""Where clamd listens, in the syntax filterd's configuration uses.

    unix:/run/clamav/clamd.ctl     a UNIX-domain socket (clamd.conf: LocalSocket)
    tcp:127.0.0.1:3310             a TCP socket (clamd.conf: TCPAddr, TCPSocket)
    tcp:[::1]:3310                 IPv6 literals go in brackets, as in a URL (RFC 3986 §3.2.2)

The port is mandatory: a silent default would hide a typo in the configuration. HOST:PORT is
parsed by `filterd.address`, the one parser of TCP addresses.
"""

from __future__ import annotations

from dataclasses import dataclass

from filterd import address
from filterd.address import parse_host_port


class AddressError(address.AddressError):
    """The clamd address is not `unix:PATH` or `tcp:HOST:PORT`."""


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True, slots=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


ClamdAddress = UnixAddress | TcpAddress


def parse_address(text: str) -> ClamdAddress:
    scheme, sep, rest = text.partition(":")
    if not sep:
        raise AddressError(f"{text!r}: expected unix:PATH or tcp:HOST:PORT")
    if scheme == "unix":
        return _parse_unix(text, rest)
    if scheme == "tcp":
        return _parse_tcp(text, rest)
    raise AddressError(f"{text!r}: unknown scheme {scheme!r}, expected unix or tcp")


def _parse_unix(text: str, path: str) -> UnixAddress:
    if not path:
        raise AddressError(f"{text!r}: empty socket path")
    if "\0" in path:
        raise AddressError(f"{text!r}: NUL in socket path")
    return UnixAddress(path)


def _parse_tcp(text: str, rest: str) -> TcpAddress:
    try:
        parsed = parse_host_port(rest, form="tcp:HOST:PORT")
    except address.AddressError as exc:
        raise AddressError(f"{text!r}: {exc}") from None
    if parsed.port == 0:  # "any free port" means nothing to a client
        raise AddressError(f"{text!r}: port 0 is out of range 1-{address.MAX_PORT}")
    return TcpAddress(parsed.host, parsed.port)
