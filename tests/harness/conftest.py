"""Fixtures for the harness tests: plain aiosmtpd servers on free loopback ports, and runners
for the `filterd smuggle` command that return its exit code and output."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink as DiscardingHandler

from filterd.cli import main
from filterd.harness import cli, report
from tests.testbed.common import free_port


def start_controller(handler: object) -> Controller:
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    return controller


@pytest.fixture
def aiosmtpd_server() -> Iterator[Controller]:
    """Plain aiosmtpd (the version the project pins) that accepts and discards mail."""
    controller = start_controller(DiscardingHandler())
    try:
        yield controller
    finally:
        controller.stop()


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str

    def document(self) -> dict[str, Any]:
        return cast("dict[str, Any]", json.loads(self.out))

    def probes(self) -> dict[str, dict[str, Any]]:
        return {probe["id"]: probe for probe in self.document()["probes"]}

    def verdicts(self) -> dict[str, str]:
        return {probe_id: probe["verdict"] for probe_id, probe in self.probes().items()}


def sink_args(port: int, wait: str) -> list[str]:
    """The options that make the harness the last hop of a relay chain, listening on `port`
    and waiting `wait` seconds for what arrives."""
    return ["--sink", f"127.0.0.1:{port}", "--sink-wait", wait]


Smuggle = Callable[..., Outcome]


@pytest.fixture
def smuggle(capsys: pytest.CaptureFixture[str]) -> Smuggle:
    """Run `filterd smuggle ARGS...` in-process."""

    def run(*args: str) -> Outcome:
        code = main(["smuggle", *args])
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


def smuggle_json(*args: str) -> Outcome:
    """`filterd smuggle --json ARGS...` without touching stdout, so that several runs can go
    on at once in threads; `err` holds the warnings."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    warnings: list[str] = []
    run = cli.execute(parser.parse_args([*args, "--json"]), warnings.append)
    return Outcome(run.exit_code, report.to_json(run), "\n".join(warnings))
