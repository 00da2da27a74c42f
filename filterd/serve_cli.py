"""`filterd serve`: run the endpoints.

The Milter and smtpd_proxy_filter endpoints are not built yet; until they are, this
command says so and exits non-zero instead of pretending to filter mail.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--proxy", metavar="HOST:PORT", help="smtpd_proxy_filter listener")
    parser.add_argument("--milter", metavar="inet:HOST:PORT|unix:PATH", help="Milter listener")


def run(args: argparse.Namespace) -> int:
    print(
        "filterd serve: no endpoint is implemented in this version yet "
        "(the proxy and the milter are still to come); nothing was started. "
        "`filterd --help` lists what works.",
        file=sys.stderr,
    )
    return 2
