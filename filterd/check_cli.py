"""`filterd check-config [--config FILE]`: validate the configuration, like `postfix check`.

Exit 0 with one OK line, or 2 with one line naming `section.key`. Beyond the file itself it
compares two settings with the programs around filterd, where they can be asked:

    proxy.reply_deadline  <  Postfix's smtpd_proxy_timeout (postconf -h; default 100s)
    clamd.max_scan_size   <= clamd's StreamMaxLength (clamd.conf, when it describes the
                             clamd at clamd.address)
    clamd.max_concurrent  <= clamd's MaxThreads (the same clamd.conf): the scans all
                             workers may send to one address at once (each worker gets
                             max_concurrent / N, at least 1: filterd/workers/shares.py)

`filterd serve` runs the same checks before it starts. check-config also refuses what serve
would refuse before binding: no endpoint configured, an endpoint it cannot set up (it builds
them as serve does, without listening). `filterd doctor` goes further (each smtpd service of
master.cf, every Postfix and clamd limit).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filterd import app
from filterd import config as config_module
from filterd.config import Config, ConfigError
from filterd.doctor import clamdconf
from filterd.doctor.postconf import PostconfError
from filterd.doctor.postconf import run as postconf
from filterd.doctor.postfix import parse_time
from filterd.scan.address import parse_address
from filterd.workers.shares import worker_count


@dataclass(frozen=True, slots=True)
class Facts:
    """What the programs around filterd say; None where nobody could tell."""

    smtpd_proxy_timeout: float | None = None
    stream_max_length: int | None = None  # 0: clamd sets no limit
    max_threads: int | None = None  # clamd's MaxThreads


def gather(config: Config, postconf_dir: str | None = None, clamd_conf: str | None = None) -> Facts:
    conf = _local_clamd(config, clamd_conf)
    return Facts(
        _proxy_timeout(postconf_dir),
        _limit(conf, conf.size if conf else None, "StreamMaxLength"),
        _limit(conf, conf.number if conf else None, "MaxThreads"),
    )


def _proxy_timeout(config_dir: str | None) -> float | None:
    # Without a main.cf ("No configuration") `postconf -h` fails, but `postconf -d` still
    # gives the default this Postfix will use once it has one (100s).
    for args in (["-h"], ["-d", "-h"]):
        try:
            return parse_time(postconf([*args, "smtpd_proxy_timeout"], config_dir).strip())
        except PostconfError:
            continue
    return None  # no Postfix here


def _local_clamd(config: Config, path: str | None) -> clamdconf.ClamdConf | None:
    """The local clamd.conf, if it describes one of clamd.address."""
    try:
        conf = clamdconf.read(path)
        addresses = [parse_address(one) for one in config.clamd.addresses]
    except (clamdconf.ClamdConfError, ValueError):
        return None  # `filterd doctor` reports a clamd.conf it cannot read
    if conf is None or not any(clamdconf.describes(conf, address) for address in addresses):
        return None
    return conf


def _limit(
    conf: clamdconf.ClamdConf | None, read: Callable[[str], int] | None, name: str
) -> int | None:
    """One option of the local clamd.conf in its unit, or None."""
    if conf is None or read is None:
        return None
    try:
        return read(name)
    except clamdconf.ClamdConfError:
        return None  # `filterd doctor` reports the value


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
    threads = facts.max_threads
    workers = worker_count(config)
    per_address = max(config.clamd.max_concurrent, workers)  # shares add up, at least 1 each
    if threads and per_address > threads:
        given = f"{config.clamd.max_concurrent}"
        if workers > 1:
            given += f" over {workers} workers ({per_address} scans per clamd at once)"
        problems.append(
            f"clamd.max_concurrent: {given} is not at most clamd's MaxThreads ({threads}): "
            "clamd would queue the other scans and their wait would count against "
            "reply_timeout"
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
