"""Settings from a TOML file and command-line flags, validated once at start.

Every section maps to one dataclass; unknown keys and wrong types are errors that name the
key, so a typo never silently falls back to a default. The filter section uses Postfix's
option words (`forbid_bare_newline = normalize | note | reject | no`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filterd.address import AddressError, parse_host_port, parse_proxy_address
from filterd.core import BareNewline, InfectedAction, OversizePolicy, Policy, Traces
from filterd.core.errors import CoreError
from filterd.logs import LogFormat
from filterd.scan.address import parse_address as parse_clamd_address
from filterd.scan.clamd import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DEADLINE,
    DEFAULT_HEALTH_BACKOFF_MAX,
    DEFAULT_HEALTH_INTERVAL,
    DEFAULT_IO_TIMEOUT,
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_SCAN_SIZE,
    DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_REPLY_TIMEOUT,
)


class ConfigError(ValueError):
    """A setting is missing, unknown or has the wrong type or value."""


@dataclass(frozen=True, slots=True)
class ClamdSettings:
    """How filterd talks to clamd; the defaults are written once, in filterd/scan/clamd.py."""

    # Debian's clamd LocalSocket; a list is a pool: scans go to the least busy healthy one.
    address: str | tuple[str, ...] = "unix:/run/clamav/clamd.ctl"
    max_scan_size: int = DEFAULT_MAX_SCAN_SIZE  # at most clamd's StreamMaxLength (default 25M)
    # per address: at most clamd's MaxThreads (default 10)
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT  # to clamd's socket
    io_timeout: float = DEFAULT_IO_TIMEOUT  # each write of the stream
    reply_timeout: float = DEFAULT_REPLY_TIMEOUT  # from the end of the stream to clamd's verdict
    # waiting for a free scan slot ("scanner busy" after it)
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT
    # The whole scan, queue wait and retries on other addresses included (under the proxy's
    # reply_deadline, 90 s by default).
    deadline: float = DEFAULT_DEADLINE
    health_interval: float = DEFAULT_HEALTH_INTERVAL  # seconds between PINGs to a healthy clamd
    # PINGs to a failed clamd start 1 s apart and double up to this many seconds
    health_backoff_max: float = DEFAULT_HEALTH_BACKOFF_MAX

    def __post_init__(self) -> None:
        if isinstance(self.address, list):  # TOML gives a list
            object.__setattr__(self, "address", tuple(self.address))
        if not isinstance(self.address, str | tuple):
            msg = f"clamd.address: expected a string or a list of strings, got {self.address!r}"
            raise ConfigError(msg)
        if not self.addresses:
            raise ConfigError("clamd.address: the list is empty; give at least one address")
        for one in self.addresses:
            if not isinstance(one, str):
                raise ConfigError(f"clamd.address: expected a string, got {one!r}")
            try:
                parse_clamd_address(one)
            except AddressError as exc:  # the scan package's own is a subclass
                raise ConfigError(f"clamd.address: {exc}") from None
        if len(set(self.addresses)) != len(self.addresses):
            raise ConfigError("clamd.address: an address is listed twice")
        for key in ("deadline", "health_interval", "health_backoff_max"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"clamd.{key}: must be positive, not {getattr(self, key)}")

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every clamd address, one or many."""
        return (self.address,) if isinstance(self.address, str) else tuple(self.address)


@dataclass(frozen=True, slots=True)
class HeaderSettings:
    add: bool = True  # X-Virus-Scanned and X-Virus-Status on accepted mail
    hostname: str = ""  # "" is this host's name; "-" leaves the host out


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The smtpd_proxy_filter endpoint (docs/explanation/proxy.md explains every default)."""

    listen: str = ""  # HOST:PORT, e.g. 127.0.0.1:10024; empty: no proxy endpoint
    downstream: str = "127.0.0.1:10025"  # HOST:PORT of the reinjection smtpd
    hostname: str = ""  # greeting and EHLO name; "" is this host's name
    max_connections: int = 100  # more get 421 4.7.0 (Postfix: smtpd_proxy_filter maxproc)
    # listen(2) queue; a short one collapses under bursts (docs/explanation/design.md).
    backlog: int = 1024
    # A whole command line, waiting included (Postfix: smtpd_timeout, smtpd_per_request_deadline).
    command_timeout: float = 300.0
    # DATA: the deadline starts here and never grows beyond it (Postfix: smtpd_timeout).
    data_timeout: float = 300.0
    # Bytes/s in DATA: each byte read earns 1/min_data_rate s (Postfix: smtpd_min_data_rate).
    min_data_rate: float = 500.0
    # Under stress when more than this fraction of max_connections is in flight.
    stress_threshold: float = 0.8
    # command_timeout under stress (Postfix: smtpd_timeout = ${stress?10}{300}).
    stress_timeout: float = 10.0
    # NOOP to the reinjection smtpd after this idle time while a client's DATA goes on.
    downstream_keepalive: float = 5.0
    downstream_timeout: float = 30.0  # per I/O with the reinjection smtpd
    reply_deadline: float = 90.0  # final "." to our reply; under smtpd_proxy_timeout (100s)
    greet_pause: float = 0.0  # seconds to watch for input before the 220 greeting
    max_line_length: int = 2048  # command lines, CRLF included (Postfix: line_length_limit)
    max_errors: int = 20  # then 421 and disconnect (Postfix: smtpd_hard_error_limit)
    xforward_hosts: str = "127.0.0.0/8 ::1/128"  # clients whose XFORWARD is trusted

    def __post_init__(self) -> None:
        numbers = {
            "max_connections": self.max_connections,
            "backlog": self.backlog,
            "command_timeout": self.command_timeout,
            "data_timeout": self.data_timeout,
            "min_data_rate": self.min_data_rate,
            "stress_timeout": self.stress_timeout,
            "downstream_keepalive": self.downstream_keepalive,
            "downstream_timeout": self.downstream_timeout,
            "reply_deadline": self.reply_deadline,
            "max_errors": self.max_errors,
        }
        for name, value in numbers.items():
            if value <= 0:
                msg = f"{name} must be positive, not {value}"
                raise ValueError(msg)
        if not 0 < self.stress_threshold <= 1:
            msg = f"stress_threshold must be a fraction in (0, 1], not {self.stress_threshold}"
            raise ValueError(msg)
        if self.greet_pause < 0:
            msg = f"greet_pause must not be negative, not {self.greet_pause}"
            raise ValueError(msg)
        # RFC 5321 §4.5.3.1.4: a command line of 512 octets must always be accepted.
        if self.max_line_length < 512:
            msg = f"max_line_length must be at least 512, not {self.max_line_length}"
            raise ValueError(msg)
        for word in self.xforward_hosts.replace(",", " ").split():
            ipaddress.ip_network(word)  # ValueError names the bad network
        for key, address in (("listen", self.listen), ("downstream", self.downstream)):
            if address:
                try:
                    parse_proxy_address(address)
                except AddressError as exc:
                    msg = f"{key} must be HOST:PORT, not {address!r} ({exc})"
                    raise ValueError(msg) from None


@dataclass(frozen=True, slots=True)
class MilterSettings:
    """The Milter endpoint (docs/explanation/milter.md)."""

    listen: str = ""  # inet:HOST:PORT or unix:PATH; empty: no milter endpoint
    socket_mode: str = "0660"  # unix:PATH only, octal; Postfix's smtpd must be able to connect
    socket_group: str = ""  # unix:PATH only; "" keeps the process's group (e.g. "postfix")
    # "" follows [filter] infected; the milter adds "quarantine": Postfix's hold queue.
    infected: str = ""
    # "" follows [filter] traces (smuggled MAIL/RCPT/DATA left as body text); no | note | reject
    # override it for the milter.
    traces: str = ""
    bypass_networks: tuple[str, ...] = ()  # client networks that are not scanned
    bypass_authenticated: bool = False  # SASL-authenticated senders ({auth_authen}) not scanned
    # Postfix: milter_content_timeout is per read; SMFIR_PROGRESS restarts it during a scan.
    progress_interval: float = 10.0
    drain_timeout: float = 10.0  # on stop, how long messages being decided may take
    # Postfix opens one connection per smtpd process using the milter (default_process_limit
    # 100): room for two such services; more are closed at once (milter_default_action).
    max_connections: int = 200
    # Seconds without a packet from the MTA, then the connection is closed: libmilter's
    # default (smfi_settimeout, 7210), far above Postfix's 300 s smtpd_timeout per command.
    idle_timeout: float = 7210.0

    def __post_init__(self) -> None:
        _one_of(
            "infected", self.infected, ("", "reject", "tempfail", "discard", "quarantine", "accept")
        )
        _one_of("traces", self.traces, ("", "no", "note", "reject"))
        if not re.fullmatch(r"0?[0-7]{3}", self.socket_mode):
            msg = f'socket_mode {self.socket_mode!r} is not an octal mode such as "0660"'
            raise ValueError(msg)
        if isinstance(self.bypass_networks, list):
            object.__setattr__(self, "bypass_networks", tuple(self.bypass_networks))
        for network in self.bypass_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except (TypeError, ValueError) as exc:
                msg = f"bypass_networks: {network!r} is not a network"
                raise ValueError(msg) from exc
        if self.progress_interval <= 0 or self.drain_timeout < 0:
            msg = "progress_interval must be positive and drain_timeout not negative"
            raise ValueError(msg)
        if self.max_connections <= 0 or self.idle_timeout <= 0:
            msg = "max_connections and idle_timeout must be positive"
            raise ValueError(msg)


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        words = ", ".join(repr(choice) for choice in choices)
        msg = f"{name}: {value!r} is not one of {words}"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: LogFormat = "auto"  # auto | json | console (auto: console on a terminal, else JSON)
    level: str = "info"  # debug | info | warning | error

    def __post_init__(self) -> None:
        _one_of("format", self.format, ("auto", "json", "console"))
        _one_of("level", self.level, ("debug", "info", "warning", "error"))


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The whole process: exposure and global budgets (docs/reference/configuration.md)."""

    # Listen on other than loopback. An exposed proxy is an open relay: the reinjection smtpd
    # sees 127.0.0.1 and applies permit_mynetworks; the Milter protocol has no authentication.
    allow_non_loopback: bool = False
    # Message content buffered by all sessions together; above it new messages get 452 4.3.1
    # (Postfix: "insufficient system resources"). At least [filter] max_message_size.
    max_buffered_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_buffered_bytes <= 0:
            msg = f"server.max_buffered_bytes: must be positive, not {self.max_buffered_bytes}"
            raise ConfigError(msg)


@dataclass(frozen=True, slots=True)
class Config:
    filter: Policy = field(default_factory=Policy)
    clamd: ClamdSettings = field(default_factory=ClamdSettings)
    headers: HeaderSettings = field(default_factory=HeaderSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    milter: MilterSettings = field(default_factory=MilterSettings)
    log: LogSettings = field(default_factory=LogSettings)
    server: ServerSettings = field(default_factory=ServerSettings)

    def __post_init__(self) -> None:
        """Rules that span sections; each error names the key it is about."""
        if self.server.max_buffered_bytes < self.filter.max_message_size:
            msg = (
                f"server.max_buffered_bytes: {self.server.max_buffered_bytes} is below "
                f"filter.max_message_size ({self.filter.max_message_size}): "
                "a message of the allowed size could never be buffered"
            )
            raise ConfigError(msg)
        if not self.server.allow_non_loopback:
            for key, address, problem in exposed_listeners(self):
                msg = (
                    f"{key}: {address!r} {problem}; filterd listens on loopback only unless "
                    "[server] allow_non_loopback = true (docs/reference/configuration.md)"
                )
                raise ConfigError(msg)


def listeners(config: Config) -> list[tuple[str, str, str]]:
    """(key, address, host) of each network listener; UNIX sockets are not on the network."""
    found = []
    if config.proxy.listen:
        address = config.proxy.listen
        found.append(("proxy.listen", address, _host_of(address.removeprefix("inet:"))))
    family, _, rest = config.milter.listen.partition(":")
    if family == "inet":
        found.append(("milter.listen", config.milter.listen, _host_of(rest)))
    return found


def _host_of(host_port: str) -> str:
    """The host of HOST:PORT; "" when it does not parse (the endpoint reports why)."""
    try:
        return parse_host_port(host_port).host
    except AddressError:
        return ""


def exposed_listeners(config: Config) -> list[tuple[str, str, str]]:
    """(key, address, what is wrong) for each listener not confined to loopback."""
    exposed = []
    for key, address, host in listeners(config):
        problem = _not_loopback(host) if host else None
        if problem:
            exposed.append((key, address, problem))
    return exposed


def _not_loopback(host: str) -> str | None:
    """Why `host` is not loopback, or None. A name counts only if all its addresses are."""
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return "does not resolve (a loopback address is required)"
        addresses = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]
    for address in addresses:
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
        if not (address.is_loopback or (mapped is not None and mapped.is_loopback)):
            shown = "" if str(address) == host else f" (resolves to {address})"
            return f"is not a loopback address{shown}"
    return None


_ENUMS: dict[type, Any] = {
    BareNewline: BareNewline.parse,
    InfectedAction: InfectedAction,
    OversizePolicy: OversizePolicy,
    Traces: Traces,
}


def load(path: Path | None) -> Config:
    """Read a TOML file (None: all defaults)."""
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        msg = f"{path}: {exc}"
        raise ConfigError(msg) from exc
    return from_mapping(data)


def from_mapping(data: dict[str, Any]) -> Config:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = set(data) - set(sections)
    if unknown:
        msg = f"unknown section(s): {', '.join(sorted(unknown))}"
        raise ConfigError(msg)
    values = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            msg = f"[{name}] must be a table"
            raise ConfigError(msg)
        section_type = typing.get_type_hints(Config)[name]
        values[name] = build(section_type, table, name)
    return Config(**values)


def build(cls: type[Any], table: dict[str, Any], section: str) -> Any:
    """An instance of the dataclass `cls` from a TOML table, checked key by key."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(table) - known
    if unknown:
        msg = f"[{section}] unknown key(s): {', '.join(sorted(unknown))}"
        raise ConfigError(msg)
    values = {key: _convert(hints[key], value, f"{section}.{key}") for key, value in table.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise  # already names section.key
    except (CoreError, ValueError) as exc:
        msg = f"[{section}] {exc}"
        raise ConfigError(msg) from exc


def _convert(hint: Any, value: Any, where: str) -> Any:
    if hint in _ENUMS:
        if not isinstance(value, str):
            msg = f"{where}: expected a word, got {value!r}"
            raise ConfigError(msg)
        try:
            return _ENUMS[hint](value)
        except (CoreError, ValueError) as exc:
            msg = f"{where}: {exc}"
            raise ConfigError(msg) from exc
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is not None:
        return value  # containers are checked by the dataclass that owns them
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        msg = f"{where}: expected {hint.__name__}, got {value!r}"
        raise ConfigError(msg)
    return value


def replace(config: Config, section: str, **changes: Any) -> Config:
    """The config with some keys of one section changed (command-line flags win)."""
    changes = {key: value for key, value in changes.items() if value is not None}
    if not changes:
        return config
    current = getattr(config, section)
    merged = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
    merged.update(changes)
    return dataclasses.replace(config, **{section: build(type(current), merged, section)})
