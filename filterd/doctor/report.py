"""The doctor's report: grouped by where (filterd, main.cf, each smtpd service in master.cf
order, clamd, the probe), each finding with its severity and fix; or the same as JSON."""

from __future__ import annotations

import json
import shlex
import textwrap
from collections import Counter
from dataclasses import dataclass
from typing import Any

from filterd.doctor.findings import CLAMD, FILTERD, GLOBAL, PROBE, Finding, Severity
from filterd.doctor.probe import ProbeRun
from filterd.doctor.roles import Setup

WIDTH = 100


@dataclass(frozen=True, slots=True)
class Report:
    setup: Setup
    findings: tuple[Finding, ...]
    probe: ProbeRun | None = None

    @property
    def exit_code(self) -> int:
        """0: nothing at warning level or above; 1: something is."""
        return int(any(f.severity >= Severity.WARNING for f in self.findings))

    def places(self) -> list[str]:
        services = [s.key for s in self.setup.postfix.smtpd_services()]
        others = [f.where for f in self.findings if f.where not in services]
        order = [FILTERD, GLOBAL, *services, CLAMD, PROBE]
        return [p for p in order if p in services or p in others] + sorted(set(others) - set(order))

    def fixes(self) -> list[str]:
        """Every distinct fix line, worst findings first."""
        ranked = sorted(self.findings, key=lambda f: -f.severity)
        return list(dict.fromkeys(f.fix for f in ranked if f.fix))

    def counts(self) -> dict[str, int]:
        counted = Counter(f.severity for f in self.findings)
        return {s.word: counted.get(s, 0) for s in sorted(Severity, reverse=True)}


def _header(setup: Setup) -> list[str]:
    postfix = setup.postfix
    where = f", config {postfix.config_dir}" if postfix.config_dir else ""
    modes = []
    if setup.proxy_mode:
        modes.append(f"proxy {setup.filterd.proxy.listen} -> {setup.filterd.proxy.downstream}")
    if setup.milter_mode:
        modes.append(f"milter {setup.filterd.milter.listen}")
    clamd = setup.clamd.path if setup.clamd else "none found"
    return [
        f"Postfix {postfix.version}{where}",
        f"filterd: {', '.join(modes) or 'no listener configured'}",
        f"clamd: {', '.join(setup.filterd.clamd.addresses)}",
        f"clamd.conf: {clamd}",
    ]


def _finding_lines(finding: Finding) -> list[str]:
    head = f"  {finding.severity.word:<8} {finding.check}: "
    body = textwrap.wrap(finding.message, WIDTH, initial_indent=head, subsequent_indent=" " * 11)
    if finding.fix:
        body.append(f"{' ' * 11}fix: {finding.fix}")
    return body


def _count(number: int, word: str) -> str:
    return f"{number} {word}" if number == 1 or word == "info" else f"{number} {word}s"


def to_text(report: Report) -> str:
    lines = [*_header(report.setup), ""]
    for place in report.places():
        lines.append(place)
        here = [f for f in report.findings if f.where == place]
        lines += [line for f in here for line in _finding_lines(f)] or ["  ok"]
    fixes = report.fixes()
    if fixes:
        lines += ["", "fixes, worst first:"]
        lines += [f"  {fix}" for fix in fixes]
        if any(fix.startswith("postconf") for fix in fixes):
            config_dir = report.setup.postfix.config_dir
            lines.append(
                "  postfix" + (f" -c {shlex.quote(config_dir)}" if config_dir else "") + " reload"
            )
    counts = ", ".join(_count(n, word) for word, n in report.counts().items())
    lines += ["", f"{counts}: exit {report.exit_code}"]
    return "\n".join(lines)


def to_json(report: Report) -> str:
    setup = report.setup
    probe: dict[str, Any] | None = None
    if report.probe is not None:
        run = report.probe
        probe = {
            "target": run.target,
            "source_address": run.source_address,
            "error": run.error,
            "verdicts": run.verdicts,
            "summary": run.summary,
        }
    document = {
        "postfix": {
            "version": setup.postfix.version,
            "config_directory": setup.postfix.config_dir,
            "services": [s.key for s in setup.postfix.smtpd_services()],
        },
        "filterd": {
            "proxy": setup.filterd.proxy.listen,
            "downstream": setup.filterd.proxy.downstream if setup.proxy_mode else "",
            "milter": setup.filterd.milter.listen,
            "clamd": setup.filterd.clamd.address,  # a string, or a list for a pool
        },
        "clamd_config": setup.clamd.path if setup.clamd else None,
        "findings": [
            {
                "check": f.check,
                "severity": f.severity.word,
                "where": f.where,
                "message": f.message,
                "fix": f.fix,
            }
            for f in report.findings
        ],
        "probe": probe,
        "summary": report.counts(),
        "exit_code": report.exit_code,
    }
    return json.dumps(document, indent=2)
