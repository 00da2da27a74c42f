"""clamd.conf(5) as clamd 1.4.6 reads it: `Option Argument` lines, `#` comments.

Only the options the doctor compares with filterd's settings are interpreted; the defaults
are the ones clamd.conf(5) of ClamAV 1.4.6 states for an option that is not set (Debian's
generated file sets most of them explicitly).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from filterd.doctor.postfix import is_loopback
from filterd.scan.address import ClamdAddress, UnixAddress

DEBIAN_PATH = "/etc/clamav/clamd.conf"

_MIB = 1024 * 1024
# clamd.conf(5), ClamAV 1.4.6: "Default:" of each option.
DEFAULTS = {
    "MaxThreads": "10",
    "StreamMaxLength": "100M",
    "MaxFileSize": "100M",
    "MaxScanSize": "400M",
    "MaxRecursion": "17",
    "AlertExceedsMax": "no",
}


class ClamdConfError(ValueError):
    """The file cannot be read, or an option has a value clamd would refuse."""


@dataclass(frozen=True, slots=True)
class ClamdConf:
    path: str
    options: Mapping[str, tuple[str, ...]]  # every value, in file order (TCPAddr may repeat)

    def last(self, name: str) -> str | None:
        values = self.options.get(name)
        return values[-1] if values else None

    def value(self, name: str) -> str:
        return self.last(name) or DEFAULTS[name]

    def size(self, name: str) -> int:
        """A SIZE option in bytes; 0 means no limit."""
        return parse_size(self.value(name), name)

    def number(self, name: str) -> int:
        text = self.value(name)
        if not text.isdigit():
            raise ClamdConfError(f"{self.path}: {name} {text!r} is not a number")
        return int(text)

    def flag(self, name: str) -> bool:
        return parse_bool(self.value(name), name)

    @property
    def local_socket(self) -> str | None:
        return self.last("LocalSocket")

    @property
    def tcp_port(self) -> int | None:
        text = self.last("TCPSocket")
        return int(text) if text is not None and text.isdigit() else None

    @property
    def tcp_addresses(self) -> tuple[str, ...]:
        """TCPAddr values; empty means every address (INADDR_ANY)."""
        return self.options.get("TCPAddr", ())


def run_path(path: str) -> str:
    # Debian and the FHS: /var/run is a compatibility link to /run.
    return "/run/" + path.removeprefix("/var/run/") if path.startswith("/var/run/") else path


def describes(conf: ClamdConf, address: ClamdAddress) -> bool:
    """`conf` is the clamd.conf of the clamd at `address`: LocalSocket is the same path
    (/var/run being /run), or TCPSocket is the same port on a host that clamd listens on:
    one of its TCPAddr, or a loopback address when it listens on a loopback one or, with no
    TCPAddr, on every address. A TCP address of another host is never this clamd, whatever
    its port: this file says nothing about the clamd there."""
    if isinstance(address, UnixAddress):
        socket = conf.local_socket
        return socket is not None and run_path(socket) == run_path(address.path)
    if conf.tcp_port != address.port:
        return False
    wanted = address.host.lower()
    hosts = [host.lower() for host in conf.tcp_addresses]
    if wanted in hosts:
        return True
    return is_loopback(wanted) and (not hosts or any(map(is_loopback, hosts)))


def parse_size(text: str, name: str = "size") -> int:
    """clamd.conf(5) SIZE: bytes, or a number with K/k or M/m (G/g is accepted too)."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", text.strip())
    if match is None:
        raise ClamdConfError(f"{name} {text!r} is not a size such as 25M")
    number, unit = match.groups()
    return int(number) * {"": 1, "k": 1024, "m": _MIB, "g": 1024 * _MIB}[unit.lower()]


def parse_bool(text: str, name: str = "option") -> bool:
    """clamd.conf(5) BOOL: yes/no, true/false or 1/0 (clamd matches them in any case)."""
    word = text.strip().lower()
    if word in {"yes", "true", "1"}:
        return True
    if word in {"no", "false", "0"}:
        return False
    raise ClamdConfError(f"{name} {text!r} is not yes/no, true/false or 1/0")


def parse(text: str, path: str) -> ClamdConf:
    options: dict[str, list[str]] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, *rest = stripped.split(None, 1)
        argument = rest[0].strip() if rest else ""
        if len(argument) >= 2 and argument[0] == argument[-1] == '"':
            argument = argument[1:-1]
        options.setdefault(name, []).append(argument)
    return ClamdConf(path, {name: tuple(values) for name, values in options.items()})


def read(path: str | None) -> ClamdConf | None:
    """The file at `path` (it must be readable), else Debian's if it exists, else None."""
    if path is None:
        if not Path(DEBIAN_PATH).is_file():
            return None
        path = DEBIAN_PATH
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise ClamdConfError(f"{path}: {exc.strerror or exc}") from exc
    return parse(text, path)
