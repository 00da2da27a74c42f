"""Read the real Postfix configuration through postconf(1), never by parsing the files.

postconf knows every default of the installed version, the master.cf syntax and `$name`
expansion, so the doctor asks it:

    postconf -h mail_version              the version (which features exist)
    postconf -n                           what main.cf sets explicitly
    postconf -M                           the master.cf services
    postconf -P                           their -o overrides
    postconf -d NAME...                   this version's defaults
    postconf [-x] -o NAME=VALUE... NAME... one smtpd service's effective values: main.cf
                                          with that service's overrides applied (-o),
                                          as written and expanded (-x)

`-c DIR` is passed through, as postconf itself takes it. A parameter this Postfix does not
know is missing from the output (postconf only warns on stderr), which is how an old version
shows up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from filterd.doctor.postfix import (
    GLOBAL_PARAMETERS,
    SMTPD_PARAMETERS,
    Origin,
    PostfixFacts,
    Service,
    Setting,
)

TIMEOUT = 30.0  # seconds per postconf run; it answers in milliseconds
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class PostconfError(RuntimeError):
    """postconf is missing or failed; the message is one line."""


def find_postconf() -> str:
    """postconf on PATH, else in the sbin directories a plain user's PATH often lacks."""
    found = shutil.which("postconf") or shutil.which("postconf", path=os.pathsep.join(_SBIN))
    if found is None:
        raise PostconfError("postconf not found (is Postfix installed?)")
    return found


def run(args: Sequence[str], config_dir: str | None, program: str | None = None) -> str:
    command = [program or find_postconf()]
    if config_dir is not None:
        command += ["-c", config_dir]
    command += list(args)
    try:
        result = subprocess.run(  # noqa: S603 - fixed program, arguments are not a shell line
            command, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostconfError(f"{command[0]}: {exc}") from exc
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        fatal = next((line for line in lines if "fatal:" in line), lines[-1] if lines else "")
        raise PostconfError(fatal or f"postconf exited with status {result.returncode}")
    return result.stdout


# --- parsers (pure) ----------------------------------------------------------------------------


def parse_parameters(text: str) -> dict[str, str]:
    """`name = value` lines (postconf, postconf -n, -d); an empty value prints as `name =`."""
    values = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip():
            values[name.strip()] = value.strip()
    return values


def parse_overrides(text: str) -> dict[str, dict[str, str]]:
    """postconf -P: `service/type/name = value` -> {"service/type": {name: value}}."""
    overrides: dict[str, dict[str, str]] = {}
    for key, value in parse_parameters(text).items():
        service, sep, name = key.rpartition("/")
        if sep and "/" in service:
            overrides.setdefault(service, {})[name] = value
    return overrides


def parse_master(text: str) -> list[Service]:
    """postconf -M: one service per line, the eight master(5) columns, arguments last."""
    services = []
    for line in text.splitlines():
        fields = line.split(None, 7)
        if len(fields) < 8 or line.lstrip().startswith("#"):
            continue
        name, kind, _private, _unpriv, chroot, _wakeup, maxproc, rest = fields
        command = rest.split()[0]
        services.append(Service(name, kind, chroot=chroot, maxproc=maxproc, command=command))
    return services


def settings(
    raw: Mapping[str, str],
    expanded: Mapping[str, str],
    overrides: Mapping[str, str],
    explicit: Mapping[str, str],
) -> dict[str, Setting]:
    """Join what postconf printed without and with -x, and say where each value comes from."""
    result = {}
    for name, value in raw.items():
        origin: Origin = "default"
        if name in overrides:
            origin = "master.cf"
        elif name in explicit:
            origin = "main.cf"
        result[name] = Setting(value, expanded.get(name, value), origin)
    return result


# --- reading -----------------------------------------------------------------------------------


def read(config_dir: str | None = None, program: str | None = None) -> PostfixFacts:
    """Everything the checks need, from about eight postconf runs plus two per smtpd service."""
    if config_dir is not None and not Path(config_dir, "main.cf").is_file():
        raise PostconfError(f"{config_dir}: no readable main.cf there")
    program = program or find_postconf()

    def postconf(*args: str) -> str:
        return run(args, config_dir, program)

    explicit = parse_parameters(postconf("-n"))
    overrides = parse_overrides(postconf("-P"))
    main = settings(
        parse_parameters(postconf(*GLOBAL_PARAMETERS)),
        parse_parameters(postconf("-x", *GLOBAL_PARAMETERS)),
        {},
        explicit,
    )
    defaults = parse_parameters(postconf("-d", *SMTPD_PARAMETERS, *GLOBAL_PARAMETERS))
    services = []
    for entry in parse_master(postconf("-M")):
        own = overrides.get(entry.key, {})
        found = {}
        if entry.command == "smtpd":
            options = [arg for name, value in own.items() for arg in ("-o", f"{name}={value}")]
            found = settings(
                parse_parameters(postconf(*options, *SMTPD_PARAMETERS)),
                parse_parameters(postconf("-x", *options, *SMTPD_PARAMETERS)),
                own,
                explicit,
            )
        services.append(
            Service(
                entry.name,
                entry.type,
                chroot=entry.chroot,
                maxproc=entry.maxproc,
                command=entry.command,
                overrides=own,
                settings=found,
            )
        )
    version = main["mail_version"].value if "mail_version" in main else ""
    return PostfixFacts(version, tuple(services), main, defaults, config_dir)
