"""`filterd scan FILE...`: the verdict filterd would give each message, without sending it.

Each file is one message as stored (not dot-stuffed), run through the same inspector and
scanner as the endpoints. A file with no CR at all is in local (Unix) format and its LF line
ends are read as CRLF, as Postfix's sendmail and pickup do for locally submitted mail; a file
with any CR is taken byte for byte, so bare LFs and CRs in it are findings.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from filterd import config as config_module
from filterd.app import build_pipeline
from filterd.core import Content, EndOfMessage, Framing
from filterd.core.verdict import Action
from filterd.logs import configure
from filterd.pipeline import Decision, Pipeline
from filterd.scan import AddressError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help=".eml file, or - for stdin")
    parser.add_argument("--config", type=Path, help="filterd TOML configuration")
    parser.add_argument("--clamd", metavar="unix:PATH|tcp:HOST:PORT", help="clamd address")
    parser.add_argument(
        "--forbid-bare-newline",
        choices=["normalize", "note", "reject", "no"],
        help="as Postfix's smtpd_forbid_bare_newline (default: normalize)",
    )


def read_message(name: str) -> bytes:
    data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    if b"\r" not in data:
        data = data.replace(b"\n", b"\r\n")  # local (Unix) format, see the module docstring
    return data


async def judge(pipeline: Pipeline, message: bytes) -> Decision:
    core = pipeline.begin("scan", Framing.MESSAGE)
    core.handle(Content(message))
    core.handle(EndOfMessage())
    return await pipeline.decide(core)


def describe(decision: Decision) -> str:
    verdict = decision.verdict
    line = f"{verdict.action.value.upper()} {verdict.reply}"
    findings = decision.record.findings
    return f"{line} (findings: {', '.join(findings)})" if findings else line


async def scan_files(pipeline: Pipeline, names: list[str]) -> int:
    status = 0
    for name in names:
        try:
            message = read_message(name)
        except OSError as exc:
            print(f"{name}: ERROR cannot read: {exc.strerror or exc}", file=sys.stderr)
            status = 2
            continue
        decision = await judge(pipeline, message)
        print(f"{name}: {describe(decision)}")
        if decision.verdict.action is not Action.ACCEPT and status == 0:
            status = 1
    return status


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_module.load(config_module.find(args.config))
        cfg = config_module.replace(cfg, "clamd", address=args.clamd)
        cfg = config_module.replace(cfg, "filter", forbid_bare_newline=args.forbid_bare_newline)
        configure("console", "warning")  # the verdict lines are the output
        pipeline = build_pipeline(cfg)
    except (config_module.ConfigError, AddressError, ValueError) as exc:
        print(f"filterd scan: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(scan_files(pipeline, args.files))
