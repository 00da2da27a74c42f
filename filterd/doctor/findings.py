"""What a check reports: a severity, where (a master.cf service or a file), what, and the fix.

A fix is a command the administrator can paste: `postconf -e 'name = value'` for main.cf,
`postconf -P 'service/type/name=value'` for a master.cf override (postconf(1)), or the line
to put in clamd.conf. Checks never build these strings by hand; they call the helpers here.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass


class Severity(enum.IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2

    @property
    def word(self) -> str:
        return self.name.lower()


GLOBAL = "main.cf"  # where a finding about no single service lives
CLAMD = "clamd"
FILTERD = "filterd"
PROBE = "probe"


@dataclass(frozen=True, slots=True)
class Finding:
    check: str  # a stable id, e.g. "bare-newline-exclusions"
    severity: Severity
    where: str  # "service/type", or GLOBAL, CLAMD, FILTERD, PROBE
    message: str  # one or two sentences: what is wrong and what it lets happen
    fix: str = ""  # a command or config line; "" when there is nothing to paste


def postconf_e(name: str, value: str, config_dir: str | None = None) -> str:
    """The main.cf edit (postconf(1) -e), written `name = value` as main.cf shows it."""
    setting = f"{name} = {value}" if value else f"{name} ="
    return f"postconf{_dir(config_dir)} -e {_quote(setting)}"


def postconf_p(service: str, name: str, value: str, config_dir: str | None = None) -> str:
    """The master.cf `-o name=value` edit for one service (postconf(1) -P, Postfix >= 2.11)."""
    return f"postconf{_dir(config_dir)} -P {_quote(f'{service}/{name}={value}')}"


def _dir(config_dir: str | None) -> str:
    return f" -c {shlex.quote(config_dir)}" if config_dir else ""


def _quote(text: str) -> str:
    """Always single-quoted, so the line reads the same whatever the value."""
    return shlex.quote(text) if "'" in text else f"'{text}'"


def worst(findings: list[Finding]) -> Severity | None:
    return max((f.severity for f in findings), default=None)
