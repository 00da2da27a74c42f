"""The `filterd` command.

Each subcommand lives in its own module, which provides `add_arguments(parser)` and
`run(args) -> int`. The modules are imported only when their subcommand runs, so
`filterd --version` stays fast and the harness never drags in the core.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol

from filterd import __version__


class Subcommand(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("filterd.serve_cli", "run the filter endpoints"),
    "check-config": ("filterd.check_cli", "validate the configuration (exit 0, or 2 and why)"),
    "scan": ("filterd.scan_cli", "show the verdict filterd would give to .eml files"),
    "smuggle": ("filterd.harness.cli", "probe an SMTP server for SMTP smuggling"),
    "doctor": ("filterd.doctor.cli", "check the Postfix and clamd configuration against filterd"),
    "report": (
        "filterd.report",
        "summarize filterd's log lines (JSON or mail.log), like pflogsumm",
    ),
}


def _load(name: str) -> Subcommand:
    module_name, _ = SUBCOMMANDS[name]
    module: Subcommand = importlib.import_module(module_name)
    return module


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="filterd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"filterd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported to add its options.
        if name in argv:
            _load(name).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return _load(args.command).run(args)


if __name__ == "__main__":
    sys.exit(main())
