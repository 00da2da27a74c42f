"""`filterd check-config [--config FILE]`: validate the configuration, like `postfix check`.

Exit 0 with one OK line, or 2 with one line naming `section.key`. Beyond the file itself it
compares two settings with the programs around filterd, where they can be asked:

    proxy.reply_deadline  <  Postfix's smtpd_proxy_timeout (postconf -h; default 100s)
    clamd.max_scan_size   <= clamd's StreamMaxLength (clamd.conf, when it describes the
                             clamd at clamd.address)

`filterd serve` runs the same checks before it starts. check-config also refuses what serve
would refuse before binding: no endpoint configured, an endpoint it cannot set up (it builds
them as serve does, without listening). `filterd doctor` goes further (each smtpd service of
master.cf, every Postfix and clamd limit).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from filterd import app
from filterd import config as config_module
from filterd.config import Config, ConfigError
from filterd.doctor import clamdconf
from filterd.doctor.limits import run_path
from filterd.doctor.postconf import PostconfError
from filterd.doctor.postconf import run as postconf
from filterd.doctor.postfix import parse_time
from filterd.scan.address import TcpAddress, UnixAddress, parse_address


@dataclass(frozen=True, slots=True)
class Facts:
    """What the programs around filterd say; None where nobody could tell."""

    smtpd_proxy_timeout: float | None = None
    stream_max_length: int | None = None  # 0: clamd sets no limit


def gather(config: Config, postconf_dir: str | None = None, clamd_conf: str | None = None) -> Facts:
    return Facts(_proxy_timeout(postconf_dir), _stream_max_length(config, clamd_conf))


def _proxy_timeout(config_dir: str | None) -> float | None:
    # Without a main.cf ("No configuration") `postconf -h` fails, but `postconf -d` still
    # gives the default this Postfix will use once it has one (100s).
    for args in (["-h"], ["-d", "-h"]):
        try:
            return parse_time(postconf([*args, "smtpd_proxy_timeout"], config_dir).strip())
        except PostconfError:
            continue
    return None  # no Postfix here


def _stream_max_length(config: Config, path: str | None) -> int | None:
    """StreamMaxLength of the local clamd, if its clamd.conf describes one of clamd.address."""
    try:
        conf = clamdconf.read(path)
        addresses = [parse_address(one) for one in config.clamd.addresses]
        if conf is None or not any(_describes(conf, address) for address in addresses):
            return None
        return conf.size("StreamMaxLength")
    except (clamdconf.ClamdConfError, ValueError):
        return None  # `filterd doctor` reports a clamd.conf it cannot read


def _describes(conf: clamdconf.ClamdConf, address: UnixAddress | TcpAddress) -> bool:
    if isinstance(address, UnixAddress):
        # Debian's clamd.conf names /var/run/clamav/clamd.ctl, the default address /run/...
        return conf.local_socket is not None and run_path(conf.local_socket) == run_path(
            address.path
        )
    return conf.tcp_port == address.port


def cross_check(config: Config, facts: Facts) -> list[str]:
    """Errors, one line each, naming the filterd key and the setting it must fit."""
    problems = []
    timeout = facts.smtpd_proxy_timeout
    deadline = config.proxy.reply_deadline
    if timeout is not None and deadline >= timeout:
        problems.append(
            f"proxy.reply_deadline: {deadline:g} is not below Postfix's smtpd_proxy_timeout "
            f"({timeout:g}s): Postfix would give up first and the sender retry a message "
            "already relayed"
        )
    limit = facts.stream_max_length
    size = config.clamd.max_scan_size
    if limit and size > limit:
        problems.append(
            f"clamd.max_scan_size: {size} is not at most clamd's StreamMaxLength ({limit}): "
            "clamd would refuse the larger messages (INSTREAM size limit exceeded)"
        )
    return problems


def check(config: Config, facts: Facts) -> None:
    """The first cross-check problem as a ConfigError (one line, exit 2)."""
    problems = cross_check(config, facts)
    if problems:
        raise ConfigError(problems[0])


def startable(config: Config) -> None:
    """What `filterd serve` refuses before it binds: the endpoints are built as it builds
    them (app.build_endpoints), and nothing listens."""
    try:
        app.build_endpoints(config, app.build_pipeline(config))
    except app.NothingToServeError:
        msg = "no endpoint configured: set [proxy] listen and/or [milter] listen"
        raise ConfigError(msg) from None
    except app.StartError as exc:
        raise ConfigError(str(exc)) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = config_module.default_path()
    parser.add_argument("--config", type=Path, help=f"filterd TOML configuration ({default})")


def run(args: argparse.Namespace) -> int:
    path = config_module.find(args.config)
    try:
        cfg = config_module.load(path)
        check(cfg, gather(cfg))
        startable(cfg)
    except ConfigError as exc:
        print(f"filterd check-config: {exc}", file=sys.stderr)
        return 2
    print(f"filterd check-config: {path or 'no file, the defaults'}: OK")
    return 0
