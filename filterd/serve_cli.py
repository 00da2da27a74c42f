"""`filterd serve`: run the configured endpoints in one process and one event loop."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from filterd import config as config_module
from filterd.app import NothingToServeError, StartError, serve
from filterd.endpoints.net import DescriptorLimitError
from filterd.scan import AddressError

# Each is a problem of the set-up, told in one line (exit 2), never as a traceback.
START_ERRORS = (
    config_module.ConfigError,
    AddressError,
    NothingToServeError,
    StartError,
    DescriptorLimitError,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="filterd TOML configuration")
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
    cfg = config_module.load(args.config)
    cfg = config_module.replace(cfg, "proxy", listen=args.proxy, downstream=args.downstream)
    cfg = config_module.replace(cfg, "milter", listen=args.milter)
    clamd = tuple(args.clamd) if args.clamd else None
    return config_module.replace(cfg, "clamd", address=clamd)


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(serve(settings(args)))
    except START_ERRORS as exc:
        print(f"filterd serve: {exc}", file=sys.stderr)
        return 2
    return 0
