"""HOST:PORT, the one parser every part of filterd uses for a TCP address.

    127.0.0.1:10024      an IPv4 address or a host name, then the port
    [::1]:10024          IPv6 literals go in brackets, as Postfix writes them
                         (postconf(5), smtpd_proxy_filter and milter addresses; RFC 3986 §3.2.2)

The port is mandatory and in ASCII digits (`str.isdigit` alone would take "²", and `int`
would take " 25", "+25" and "2_5"); port 0 means "any free port" to a listener, and a
caller that cannot use it refuses it. A prefix such as `inet:` or `tcp:` is the caller's:
it removes its own before calling.

This module imports nothing of filterd, so the configuration, the scanner and both
endpoints can use it without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PORT = 65535


class AddressError(ValueError):
    """Not HOST:PORT or [IPv6]:PORT; the message says why, and callers add the text."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str  # without brackets
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def split_host_port(text: str) -> tuple[str, str]:
    """The host and the port text of `HOST:PORT`, split at the last colon, a pair of
    brackets taken off the host; text without a colon is a port alone (host "").

    Nothing is checked: this is also how Postfix's own addresses read, where the port may
    be a service name and the host may be missing (master(5): "127.0.0.1:smtp",
    "::1:smtp", "10025"). filterd's own settings go through `parse_host_port`.
    """
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def parse_host_port(text: str, form: str = "HOST:PORT") -> HostPort:
    """`HOST:PORT` or `[IPv6]:PORT`; AddressError says what is wrong (`form` names the
    syntax the caller expects, for the message)."""
    if ":" not in text:
        raise AddressError(f"expected {form}")
    host, port_text = split_host_port(text)
    if ":" in host and not text.startswith(f"[{host}]:"):
        raise AddressError("put an IPv6 address in brackets, [::1]:PORT")
    if not host:
        raise AddressError("empty host")
    return HostPort(host, parse_port(port_text))


def parse_proxy_address(text: str) -> HostPort:
    """`[inet:]HOST:PORT`, the syntax of Postfix's smtpd_proxy_filter (postconf(5)); the
    proxy's listen and downstream addresses are written the same way."""
    return parse_host_port(text.removeprefix("inet:"))


def parse_port(text: str) -> int:
    """A port number 0-65535 in ASCII digits."""
    if not (text.isascii() and text.isdigit()):
        raise AddressError(f"port {text!r} is not a number")
    port = int(text)
    if port > MAX_PORT:
        raise AddressError(f"port {port} is out of range 0-{MAX_PORT}")
    return port
