"""Where clamd listens, in the syntax filterd's configuration uses.

    unix:/run/clamav/clamd.ctl     a UNIX-domain socket (clamd.conf: LocalSocket)
    tcp:127.0.0.1:3310             a TCP socket (clamd.conf: TCPAddr, TCPSocket)
    tcp:[::1]:3310                 IPv6 literals go in brackets, as in a URL (RFC 3986 §3.2.2)

The port is mandatory: a silent default would hide a typo in the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass


class AddressError(ValueError):
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
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        raise AddressError(f"{text!r}: expected tcp:HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise AddressError(f"{text!r}: put an IPv6 address in brackets, tcp:[::1]:3310")
    if not host:
        raise AddressError(f"{text!r}: empty host")
    return TcpAddress(host, _parse_port(text, port_text))


def _parse_port(text: str, port_text: str) -> int:
    # int() would also accept " 3310", "+3310" and "3_310".
    if not (port_text.isascii() and port_text.isdigit()):
        raise AddressError(f"{text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 < port < 65536:
        raise AddressError(f"{text!r}: port {port} is out of range 1-65535")
    return port
