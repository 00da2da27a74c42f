"""`filterd doctor`: check the live Postfix and clamd configuration against filterd's.

Exit status: 0 when nothing at warning level or above was found, 1 when something was,
2 when the doctor could not run (postconf missing or failing, an unreadable config
directory or clamd.conf, a bad filterd TOML); that is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from filterd import config as config_module
from filterd import serve_cli
from filterd.address import AddressError, parse_host_port
from filterd.doctor import clamdconf, limits, postconf, smuggling, wiring
from filterd.doctor import probe as probe_module
from filterd.doctor.findings import Finding
from filterd.doctor.report import Report, to_json, to_text
from filterd.doctor.roles import Setup

EXIT_CANNOT_RUN = 2
CHECKS = (*smuggling.CHECKS, *wiring.CHECKS, *limits.CHECKS)


def _address(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT, by the one parser of filterd/address.py."""
    try:
        parsed = parse_host_port(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return parsed.host, parsed.port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        dest="postfix_dir",
        metavar="DIR",
        help="Postfix configuration directory, passed to postconf -c (default: postconf's)",
    )
    serve_cli.add_setup_arguments(parser)  # --config, --proxy, ...: as filterd serve reads them
    parser.add_argument(
        "--clamd-config",
        metavar="PATH",
        help=f"clamd.conf to check (default: {clamdconf.DEBIAN_PATH} when it exists)",
    )
    parser.add_argument(
        "--probe",
        type=_address,
        metavar="HOST:PORT",
        help="also run the smuggling harness against this live front port (sends test mail)",
    )
    parser.add_argument(
        "--probe-timeout",
        type=float,
        default=3.0,
        metavar="S",
        help="the harness's per-reply window (default %(default)s)",
    )
    parser.add_argument(
        "--probe-only", nargs="+", default=[], metavar="ID", help="run only these probes"
    )
    parser.add_argument("--postconf", metavar="PATH", help="the postconf program to run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def gather(args: argparse.Namespace) -> Setup:
    filterd = serve_cli.settings(args)  # the settings `filterd serve` would run with
    facts = postconf.read(args.postfix_dir, args.postconf)
    return Setup(facts, filterd, clamdconf.read(args.clamd_config))


def check(setup: Setup) -> list[Finding]:
    return [finding for run_check in CHECKS for finding in run_check(setup)]


def run(args: argparse.Namespace) -> int:
    try:
        unknown = [i for i in args.probe_only if not probe_module.known(i)]
        if unknown:
            raise ValueError(f"unknown probe(s): {' '.join(unknown)}")
        setup = gather(args)
    except (
        config_module.ConfigError,
        postconf.PostconfError,
        clamdconf.ClamdConfError,
        ValueError,
    ) as exc:
        print(f"filterd doctor: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    findings = check(setup)
    outcome = None
    if args.probe is not None:
        host, port = args.probe
        outcome = probe_module.run(host, port, args.probe_timeout, args.probe_only)
        findings += probe_module.findings(outcome)
    report = Report(setup, tuple(findings), outcome)
    print(to_json(report) if args.json else to_text(report))
    return report.exit_code
