"""Settings from a TOML file and command-line flags, validated once at start.

Every section maps to one dataclass; unknown keys and wrong types are errors that name the
key, so a typo never silently falls back to a default. The filter section uses Postfix's
option words (`forbid_bare_newline = normalize | note | reject | no`).

Every error is one line in one wording, `section.key: VALUE is not ALLOWED`, e.g.
`clamd.max_concurrent: 0 is not an integer >= 1`. The types of plain fields (bool, int, float,
str, an enum, `tuple[str, ...]` for a TOML list) are checked here from the annotations, so a
new plain field needs nothing else; a section's own rules go in its `__post_init__`, raised
with `invalid()` or the range helpers below.

Without --config, DEFAULT_PATH is read when it exists (FILTERD_CONFIG overrides the path).
"""

from __future__ import annotations

import dataclasses
import enum
import grp
import ipaddress
import logging.handlers
import math
import os
import re
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filterd.address import AddressError, parse_host_port, parse_proxy_address
from filterd.core import BareNewline, InfectedAction, Policy
from filterd.core.errors import CoreError
from filterd.logs import LogFormat, Syslog
from filterd.privileges import PrivilegeError, identity  # service block: [server] user
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
    DEFAULT_SESSION_IDLE,
)

DEFAULT_PATH = Path("/etc/filterd/filterd.toml")
PATH_VARIABLE = "FILTERD_CONFIG"  # overrides DEFAULT_PATH (tests, packages that move it)


class ConfigError(ValueError):
    """A setting is missing, unknown or has the wrong type or value."""


def invalid(where: str, value: Any, allowed: str) -> ConfigError:
    """The one wording of a bad value: `section.key: VALUE is not ALLOWED`."""
    return ConfigError(f"{where}: {shown(value)} is not {allowed}")


def shown(value: Any) -> str:
    """A value as TOML writes it where that differs from Python: true, inf, nan; a float
    field holds 500 written as 500.0 (_convert), shown as 500. Strings keep their quotes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value.is_integer():
            return str(int(value))
    return repr(value)


def positive(section: str, settings: Any, *names: str) -> None:
    """Each named field is a finite number greater than 0."""
    for name in names:
        value = getattr(settings, name)
        if not (_finite(value) and value > 0):
            raise invalid(f"{section}.{name}", value, f"{_kind(value)} > 0")


def at_least(where: str, value: float, low: float) -> None:
    if not (_finite(value) and value >= low):
        raise invalid(where, value, f"{_kind(value)} >= {low}")


def between(where: str, value: float, low: float, high: float) -> None:
    if not (_finite(value) and low <= value <= high):
        raise invalid(where, value, f"{_kind(value)} from {low} to {high}")


def _finite(value: float) -> bool:
    """inf and nan are TOML floats, but no timeout, rate or size of filterd's."""
    return not isinstance(value, float) or math.isfinite(value)


def one_of(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise invalid(where, value, _choices(choices))


def _choices(choices: tuple[str, ...]) -> str:
    return "one of " + ", ".join(repr(choice) for choice in choices)


def _kind(value: float) -> str:
    if isinstance(value, int):
        return "an integer"
    return "a number" if _finite(value) else "a finite number"


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
    # seconds a zIDSESSION connection to clamd is kept open for the next scan, under clamd's
    # ReadTimeout (default 120); 0: a new connection per scan
    session_idle: float = DEFAULT_SESSION_IDLE

    def __post_init__(self) -> None:
        if isinstance(self.address, list):  # TOML gives a list
            object.__setattr__(self, "address", tuple(self.address))
        allowed = "unix:PATH or tcp:HOST:PORT"
        if not isinstance(self.address, str | tuple) or not self.addresses:
            raise invalid("clamd.address", self.address, f"{allowed}, or a list of them")
        for one in self.addresses:
            _check_clamd_address(one, allowed)
        if len(set(self.addresses)) != len(self.addresses):
            raise invalid("clamd.address", self.address, "a list without repeats")
        numbers = ("max_scan_size", "max_concurrent", "connect_timeout", "io_timeout")
        positive("clamd", self, *numbers, "reply_timeout", "queue_timeout")
        positive("clamd", self, "deadline", "health_interval", "health_backoff_max")
        at_least("clamd.session_idle", self.session_idle, 0)

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every clamd address, one or many."""
        return (self.address,) if isinstance(self.address, str) else tuple(self.address)


def _check_clamd_address(one: object, allowed: str) -> None:
    if not isinstance(one, str):
        raise invalid("clamd.address", one, allowed)
    try:
        parse_clamd_address(one)
    except AddressError as exc:
        why = str(exc).removeprefix(f"{one!r}: ")  # the value is shown once
        detail = "" if why == f"expected {allowed}" else f" ({why})"
        raise invalid("clamd.address", one, allowed + detail) from None


@dataclass(frozen=True, slots=True)
class HeaderSettings:
    add: bool = True  # X-Virus-Scanned and X-Virus-Status on accepted mail
    # "" is Postfix's myhostname (postconf, its default without main.cf), else the FQDN,
    # never localhost (filterd/hostname.py); "-" leaves the host out
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The smtpd_proxy_filter endpoint (docs/explanation/proxy.md explains every default)."""

    listen: str = ""  # HOST:PORT, e.g. 127.0.0.1:10024; empty: no proxy endpoint
    downstream: str = "127.0.0.1:10025"  # HOST:PORT of the reinjection smtpd
    # greeting and EHLO name; "" as [headers] hostname (Postfix's myhostname, filterd/hostname.py)
    hostname: str = ""
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
    # clients whose XFORWARD is trusted (Postfix: smtpd_authorized_xforward_hosts), a list
    xforward_hosts: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # Idle sessions with the reinjection smtpd kept for the next message, per worker; 0: a new
    # session per message (docs/explanation/proxy.md, "Reusing downstream sessions").
    downstream_pool_size: int = 20
    # Seconds a kept session may stay idle; far under the reinjection smtpd's smtpd_timeout (10s
    # under stress), as Postfix's smtp_connection_cache_time_limit (2s); 0: no reuse.
    downstream_idle_time: float = 2.0
    # Messages per downstream session, then QUIT (Postfix: max_use, 100); 0 or 1: no reuse.
    downstream_max_messages: int = 100

    def __post_init__(self) -> None:
        numbers = ("max_connections", "backlog", "command_timeout", "data_timeout")
        positive("proxy", self, *numbers, "min_data_rate", "stress_timeout")
        positive("proxy", self, "downstream_keepalive", "downstream_timeout", "reply_deadline")
        positive("proxy", self, "max_errors")
        if not 0 < self.stress_threshold <= 1:  # refuses inf and nan too
            raise invalid("proxy.stress_threshold", self.stress_threshold, "a number > 0, <= 1")
        at_least("proxy.greet_pause", self.greet_pause, 0)
        at_least("proxy.downstream_pool_size", self.downstream_pool_size, 0)
        at_least("proxy.downstream_max_messages", self.downstream_max_messages, 0)
        # Idle longer than Postfix's default smtpd_timeout (300s) only meets its 421.
        between("proxy.downstream_idle_time", self.downstream_idle_time, 0, 300)
        # RFC 5321 §4.5.3.1.4: a command line of 512 octets must always be accepted.
        at_least("proxy.max_line_length", self.max_line_length, 512)
        _set_networks(self, "proxy.xforward_hosts", "xforward_hosts")
        for key in ("listen", "downstream"):
            address = getattr(self, key)
            if address:
                try:
                    parse_proxy_address(address)
                except AddressError as exc:
                    raise invalid(f"proxy.{key}", address, f"HOST:PORT ({exc})") from None


def _set_networks(settings: Any, where: str, name: str, *, strict: bool = True) -> None:
    """A list of networks, kept as a tuple; a string (the old form) says how to write it."""
    value = getattr(settings, name)
    if isinstance(value, str):
        example = "[" + ", ".join(f'"{word}"' for word in value.replace(",", " ").split()) + "]"
        raise invalid(where, value, f"a list; write a TOML list: {name} = {example}")
    networks = tuple(value)
    object.__setattr__(settings, name, networks)
    for network in networks:
        try:
            if not isinstance(network, str):
                raise TypeError(network)
            ipaddress.ip_network(network, strict=strict)
        except (TypeError, ValueError):
            raise invalid(where, network, "a network such as 192.0.2.0/24") from None


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
        _check_milter_listen(self.listen)
        infected = ("", "reject", "tempfail", "discard", "quarantine", "accept")
        one_of("milter.infected", self.infected, infected)
        one_of("milter.traces", self.traces, ("", "no", "note", "reject"))
        if not re.fullmatch(r"0?[0-7]{3}", self.socket_mode):
            raise invalid("milter.socket_mode", self.socket_mode, 'an octal mode such as "0660"')
        if self.socket_group:
            try:
                grp.getgrnam(self.socket_group)
            except KeyError:
                raise invalid(
                    "milter.socket_group", self.socket_group, "a group on this host"
                ) from None
        _set_networks(self, "milter.bypass_networks", "bypass_networks", strict=False)
        positive("milter", self, "progress_interval", "max_connections", "idle_timeout")
        at_least("milter.drain_timeout", self.drain_timeout, 0)


def _check_milter_listen(text: str) -> None:
    """Postfix's milter address syntax: inet:HOST:PORT or unix:PATH (the endpoint parses it)."""
    family, _, rest = text.partition(":")
    if not text or (family == "unix" and rest):
        return
    allowed = "inet:HOST:PORT or unix:PATH"
    if family != "inet":
        raise invalid("milter.listen", text, allowed)
    try:
        parse_host_port(rest)
    except AddressError as exc:
        raise invalid("milter.listen", text, f"{allowed} ({exc})") from None


@dataclass(frozen=True, slots=True)
class LogSettings:
    """Log lines (docs/reference/log-fields.md lists their fields)."""

    format: LogFormat = "auto"  # auto | json | console (auto: console on a terminal, else JSON)
    level: str = "info"  # debug | info | warning | error
    # Send lines to syslog instead of stderr, as `filterd[PID]: {JSON}`: with facility mail
    # they land in /var/log/mail.log beside Postfix's lines (`filterd report` reads them).
    syslog: bool = False
    syslog_address: str = "/dev/log"  # the local syslog socket (a UNIX datagram socket)
    syslog_facility: str = "mail"  # a syslog(3) facility name: mail, daemon, local0 ... local7

    def __post_init__(self) -> None:
        one_of("log.format", self.format, ("auto", "json", "console"))
        one_of("log.level", self.level, ("debug", "info", "warning", "error"))
        facilities = tuple(sorted(logging.handlers.SysLogHandler.facility_names))
        one_of("log.syslog_facility", self.syslog_facility, facilities)
        if not self.syslog_address.startswith("/"):
            raise invalid("log.syslog_address", self.syslog_address, "an absolute socket path")

    def syslog_target(self) -> Syslog | None:
        """Where syslog lines go, or None when syslog is off."""
        return Syslog(self.syslog_address, self.syslog_facility) if self.syslog else None


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The Prometheus endpoint (docs/reference/metrics.md lists the metrics)."""

    # HOST:PORT of the HTTP endpoint serving /metrics; empty: no metrics endpoint. Loopback
    # only unless [server] allow_non_loopback = true.
    listen: str = ""

    def __post_init__(self) -> None:
        if self.listen:
            try:
                parse_host_port(self.listen)
            except AddressError as exc:
                raise invalid("metrics.listen", self.listen, f"HOST:PORT ({exc})") from None


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The whole process: exposure and global budgets (docs/reference/configuration.md)."""

    # Listen on other than loopback. An exposed proxy is an open relay: the reinjection smtpd
    # sees 127.0.0.1 and applies permit_mynetworks; the Milter protocol has no authentication.
    allow_non_loopback: bool = False
    # Message content buffered by all sessions together; above it new messages get 452 4.3.1
    # (Postfix: "insufficient system resources"). At least [filter] max_message_size.
    max_buffered_bytes: int = 256 * 1024 * 1024
    # Started as root: the user to run as once the listeners are open (its supplementary
    # groups too); "" keeps the identity filterd was started with (systemd: User=).
    user: str = ""
    group: str = ""  # with user: the group to run as; "" is the user's own group
    # Processes serving the listeners together (docs/explanation/design.md, "All cores"):
    # 0 is one per core this process may run on (at most [clamd] max_concurrent); 1 is one
    # process with no supervisor. [clamd] max_concurrent and max_buffered_bytes are divided
    # among them; [proxy] / [milter] max_connections count the sessions of all of them.
    workers: int = 0

    def __post_init__(self) -> None:
        positive("server", self, "max_buffered_bytes")
        at_least("server.workers", self.workers, 0)  # workers block
        # The user and group must exist (filterd.privileges takes them after binding).
        if self.group and not self.user:
            msg = f"server.group: {self.group!r} is given without server.user"
            raise ConfigError(msg)
        if self.user:
            try:
                identity(self.user, self.group)
            except PrivilegeError as exc:
                raise ConfigError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Config:
    filter: Policy = field(default_factory=Policy)
    clamd: ClamdSettings = field(default_factory=ClamdSettings)
    headers: HeaderSettings = field(default_factory=HeaderSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    milter: MilterSettings = field(default_factory=MilterSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
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
    if config.metrics.listen:
        found.append(("metrics.listen", config.metrics.listen, _host_of(config.metrics.listen)))
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


def default_path() -> Path:
    return Path(os.environ.get(PATH_VARIABLE) or DEFAULT_PATH)


def find(given: Path | None) -> Path | None:
    """The file to read: the one given, else the default one if it exists, else None."""
    if given is not None:
        return given
    path = default_path()
    return path if path.exists() else None


def load(path: Path | None) -> Config:
    """Read a TOML file (None: all defaults)."""
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        msg = f"{path}: cannot read: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        msg = f"{path}: not valid TOML: {exc}"
        raise ConfigError(msg) from exc
    return from_mapping(data)


def from_mapping(data: dict[str, Any]) -> Config:
    sections = [f.name for f in dataclasses.fields(Config)]
    for name, table in data.items():
        if name not in sections:
            msg = f"[{name}]: unknown section; known: {', '.join(sections)}"
            raise ConfigError(msg)
        if not isinstance(table, dict):
            raise invalid(name, table, f"a table; write [{name}] and its keys below it")
    hints = typing.get_type_hints(Config)
    values = {name: build(hints[name], table, name) for name, table in data.items()}
    return Config(**values)


def build(cls: type[Any], table: dict[str, Any], section: str) -> Any:
    """An instance of the dataclass `cls` from a TOML table, checked key by key."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in table:
        if key not in known:
            msg = f"{section}.{key}: unknown key; known: {', '.join(known)}"
            raise ConfigError(msg)
    if cls is Policy:
        _check_filter(table)
    values = {key: _convert(hints[key], value, f"{section}.{key}") for key, value in table.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise  # already names section.key
    except (CoreError, ValueError) as exc:
        raise ConfigError(_name_the_key(section, known, str(exc))) from exc


def _name_the_key(section: str, known: list[str], message: str) -> str:
    """`key: ...` or `key ...` from a class that does not know its section becomes
    `section.key: ...`."""
    first, sep, rest = message.partition(" ")
    key = first.removesuffix(":")
    if sep and key in known:
        return f"{section}.{key}: {rest}"
    return f"[{section}] {message}"


def _check_filter(values: dict[str, Any]) -> None:
    """[filter] is filterd.core's Policy: its bounds, told in this module's wording first."""
    infected = values.get("infected", "reject")
    words = tuple(
        action.value for action in InfectedAction if action is not InfectedAction.QUARANTINE
    )
    if infected not in words:
        # The proxy answers before anything is queued: only the milter can hold a message.
        hold = " (quarantine: in [milter] infected only)" if infected == "quarantine" else ""
        raise invalid("filter.infected", infected, _choices(words) + hold)
    if "bare_newline_reject_code" in values:
        code = values["bare_newline_reject_code"]
        between("filter.bare_newline_reject_code", code, 500, 599)
    if "max_message_size" in values:
        at_least("filter.max_message_size", values["max_message_size"], 1)


def _convert(hint: Any, value: Any, where: str) -> Any:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        parse = BareNewline.parse if hint is BareNewline else hint  # also Postfix's "yes"
        return _word(parse, tuple(hint), value, where)
    if typing.get_origin(hint) is tuple and isinstance(value, list | tuple):
        return tuple(_convert(typing.get_args(hint)[0], item, where) for item in value)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is not None:
        # A string for a list, and other containers: the owning class checks (_set_networks).
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise invalid(where, value, _TYPE_WORDS.get(hint, f"a {hint.__name__}"))
    return value


_TYPE_WORDS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
}


def _word(parse: Any, members: tuple[Any, ...], value: Any, where: str) -> Any:
    """An option word, e.g. infected = "reject"; the error lists every allowed word."""
    try:
        if not isinstance(value, str):
            raise TypeError(value)
        return parse(value)
    except (CoreError, TypeError, ValueError):
        choices = tuple(str(member.value) for member in members)
        raise invalid(where, value, _choices(choices)) from None


def replace(config: Config, section: str, **changes: Any) -> Config:
    """The config with some keys of one section changed (command-line flags win)."""
    changes = {key: value for key, value in changes.items() if value is not None}
    if not changes:
        return config
    current = getattr(config, section)
    merged = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
    merged.update(changes)
    return dataclasses.replace(config, **{section: build(type(current), merged, section)})
