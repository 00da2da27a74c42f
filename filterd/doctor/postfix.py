"""The parsed Postfix configuration, and how Postfix reads the values the checks look at.

Nothing here runs postconf; `postconf.py` fills these types in. The value syntax follows
postconf(5): lists are separated by commas and/or whitespace, `{ ... }` groups one element
(Postfix >= 3.0), and a time value is a number with an optional s/m/h/d/w unit.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Origin = Literal["master.cf", "main.cf", "default"]

# Parameters that only make sense per service: a fix sets them with -o, never in main.cf.
PER_SERVICE_PARAMETERS = (
    "smtpd_proxy_filter",
    "smtpd_proxy_timeout",
    "content_filter",
    "receive_override_options",
    "smtpd_authorized_xforward_hosts",
    "smtpd_client_restrictions",
    "smtpd_helo_restrictions",
    "smtpd_sender_restrictions",
    "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions",
    "smtpd_data_restrictions",
    "mynetworks",
)
# Read for every smtpd service, with that service's -o overrides applied.
SMTPD_PARAMETERS = (
    "smtpd_forbid_bare_newline",
    "smtpd_forbid_bare_newline_exclusions",
    "smtpd_forbid_unauth_pipelining",
    "smtpd_milters",
    "milter_default_action",
    "milter_content_timeout",
    "message_size_limit",
    "inet_interfaces",
    *PER_SERVICE_PARAMETERS,
)
# Read once, from main.cf.
GLOBAL_PARAMETERS = (
    "mail_version",
    "non_smtpd_milters",
    "milter_default_action",
    "default_process_limit",
    "queue_directory",
)


@dataclass(frozen=True, slots=True)
class Setting:
    value: str  # as written in main.cf or the -o override
    expanded: str  # with $name references expanded for this service (postconf -x)
    origin: Origin


@dataclass(frozen=True, slots=True)
class Service:
    """One master.cf entry (master(5) columns) and, for smtpd, its effective parameters."""

    name: str
    type: str
    chroot: str = "-"
    maxproc: str = "-"
    command: str = "smtpd"
    overrides: Mapping[str, str] = field(default_factory=dict)  # the -o name=value
    settings: Mapping[str, Setting] = field(default_factory=dict)  # SMTPD_PARAMETERS

    @property
    def key(self) -> str:
        """`service/type`, as postconf -P names it."""
        return f"{self.name}/{self.type}"

    def get(self, name: str) -> Setting | None:
        """None when this Postfix does not know the parameter."""
        return self.settings.get(name)

    def value(self, name: str) -> str | None:
        setting = self.settings.get(name)
        return None if setting is None else setting.expanded


@dataclass(frozen=True, slots=True)
class PostfixFacts:
    version: str  # mail_version
    services: tuple[Service, ...]
    main: Mapping[str, Setting] = field(default_factory=dict)  # GLOBAL_PARAMETERS
    defaults: Mapping[str, str] = field(default_factory=dict)  # postconf -d, this version
    config_dir: str | None = None  # -c DIR as given, repeated in every fix line

    def smtpd_services(self) -> tuple[Service, ...]:
        return tuple(s for s in self.services if s.command == "smtpd")

    def global_value(self, name: str, fallback: str = "") -> str:
        setting = self.main.get(name)
        return fallback if setting is None else setting.expanded


# --- versions ----------------------------------------------------------------------------------

Version = tuple[int, int, int]

# First patch release of each stable line with a feature; every line after the last has it.
# Postfix: smtpd_forbid_bare_newline (yes/no only, and "yes" disconnected at the first bare LF).
BARE_NEWLINE_YES_NO = {(3, 5): 23, (3, 6): 13, (3, 7): 9, (3, 8): 4}
# Postfix: smtpd_forbid_bare_newline = normalize | reject, with the strict end of data.
BARE_NEWLINE_NORMALIZE = {(3, 5): 24, (3, 6): 14, (3, 7): 10, (3, 8): 5}
# Postfix: smtpd_forbid_unauth_pipelining (default yes only from 3.9).
UNAUTH_PIPELINING = {(3, 5): 20, (3, 6): 10, (3, 7): 6, (3, 8): 1}


def parse_version(text: str) -> Version | None:
    """`3.7.11` -> (3, 7, 11); a snapshot `3.10-20250101` counts as its line's .0."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def has_feature(version: Version, first: Mapping[tuple[int, int], int]) -> bool:
    line = version[:2]
    if line in first:
        return version[2] >= first[line]
    return line > max(first)


# --- values ------------------------------------------------------------------------------------

_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, default_unit: str = "s") -> float | None:
    """Postfix time value in seconds (postconf(5) "Time units"); None if it is not one."""
    match = re.fullmatch(r"\s*(\d+)([smhdw]?)\s*", text)
    if match is None:
        return None
    number, unit = match.groups()
    return float(int(number) * _TIME_UNITS[unit or default_unit])


def list_items(text: str) -> list[str]:
    """Elements of a Postfix list; a `{ ... }` group is one element, braces kept."""
    items: list[str] = []
    depth, current = 0, ""
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth = max(0, depth - 1)
        if depth == 0 and (char == "," or char.isspace()):
            if current:
                items.append(current)
            current = ""
            continue
        current += char
    if current:
        items.append(current)
    return items


@dataclass(frozen=True, slots=True)
class Milter:
    address: str  # inet:host:port or unix:path, as written
    options: Mapping[str, str]  # per-milter settings inside { }, e.g. default_action


def parse_milters(text: str) -> list[Milter]:
    """smtpd_milters elements (MILTER_README: "{ inet:host:port, name=value, ... }")."""
    milters = []
    for item in list_items(text):
        if item.startswith("{") and item.endswith("}"):
            words = list_items(item[1:-1])
            if not words:
                continue
            options = {}
            for word in words[1:]:
                name, _, value = word.partition("=")
                options[name.strip()] = value.strip()
            milters.append(Milter(words[0], options))
        else:
            milters.append(Milter(item, {}))
    return milters


def is_loopback(entry: str) -> bool:
    """A host or network that can only be this machine: 127.0.0.0/8, ::1, localhost."""
    text = entry.strip().lower()
    if text in {"localhost", "loopback-only"}:
        return True
    text = re.sub(r"^\[([^]]+)\]", r"\1", text)  # [::1]/128 is Postfix's IPv6 form
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return network.is_loopback
