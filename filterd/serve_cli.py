"""`filterd serve`: run the configured endpoints (in `[server] workers` processes)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from filterd import check_cli
from filterd import config as config_module
from filterd.app import NothingToServeError, StartError
from filterd.endpoints.net import DescriptorLimitError
from filterd.scan import AddressError
from filterd.workers import supervisor

# Each is a problem of the set-up, told in one line (exit 2), never as a traceback.
START_ERRORS = (
    config_module.ConfigError,
    AddressError,
    NothingToServeError,
    StartError,
    DescriptorLimitError,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setup_arguments(parser)
    parser.add_argument(
        "--workers", type=int, metavar="N", help="worker processes (0: one per core)"
    )


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    """The file and the flags that make the configuration (`filterd doctor` reads them too)."""
    default = config_module.default_path()
    parser.add_argument("--config", type=Path, help=f"filterd TOML configuration ({default})")
    parser.add_argument("--proxy", metavar="HOST:PORT", help="smtpd_proxy_filter listener")
    parser.add_argument("--downstream", metavar="HOST:PORT", help="reinjection smtpd")
    parser.add_argument("--milter", metavar="inet:HOST:PORT|unix:PATH", help="Milter listener")
    parser.add_argument(
        "--clamd",
        metavar="unix:PATH|tcp:HOST:PORT",
        action="append",
        help="clamd address; give it again for a pool",
    )


def settings(args: argparse.Namespace) -> config_module.Config:
    """The file (--config, else the default path when it exists), the flags over it, then
    the checks against Postfix and clamd (check_cli)."""
    cfg = config_module.load(config_module.find(args.config))
    cfg = config_module.replace(cfg, "proxy", listen=args.proxy, downstream=args.downstream)
    cfg = config_module.replace(cfg, "milter", listen=args.milter)
    clamd = tuple(args.clamd) if args.clamd else None
    cfg = config_module.replace(cfg, "clamd", address=clamd)
    # filterd doctor reads settings() too, with no --workers of its own.
    cfg = config_module.replace(cfg, "server", workers=getattr(args, "workers", None))
    check_cli.check(cfg, check_cli.gather(cfg))
    return cfg


def run(args: argparse.Namespace) -> int:
    try:
        supervisor.run(  # [server] workers = 1: app.serve() in this process
            settings(args),
            reload=lambda: settings(args),
            config_file=config_module.find(args.config),
        )
    except START_ERRORS as exc:
        print(f"filterd serve: {exc}", file=sys.stderr)
        return 2
    return 0
