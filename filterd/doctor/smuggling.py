"""Checks: can a client smuggle a second message past the front smtpd?

The front smtpd, not filterd, decides where DATA ends (a Milter never sees the framing, and
behind Postfix the proxy sees Postfix's rebuilt stream), so these Postfix settings are the
line of defence for every client (docs/how-to/doctor.md):

- Postfix: smtpd_forbid_bare_newline (3.5.23/3.6.13/3.7.9/3.8.4 yes|no;
  3.5.24/3.6.14/3.7.10/3.8.5 and 3.9+ normalize|reject): with "no", a bare LF ends a line,
  so `\\n.\\r\\n` ends DATA early (CVE-2023-51764).
- Postfix: smtpd_forbid_bare_newline_exclusions (default $mynetworks): excluded clients get
  the "no" behaviour whatever the setting says.
- Postfix: smtpd_forbid_unauth_pipelining (3.5.20/3.6.10/3.7.6/3.8.1; default yes from 3.9):
  disconnects a client that sends a smuggled transaction in one burst.
"""

from __future__ import annotations

from collections.abc import Callable

from filterd.doctor.findings import GLOBAL, Finding, Severity
from filterd.doctor.postfix import (
    BARE_NEWLINE_NORMALIZE,
    BARE_NEWLINE_YES_NO,
    Service,
    Setting,
    has_feature,
    list_items,
    parse_version,
)
from filterd.doctor.roles import Problem, Setup

_STRICT = {"normalize", "note", "reject", "yes"}  # "yes" is normalize from 3.8.5/3.9 on
UPGRADE = "upgrade Postfix to 3.9 or later (or 3.8.5, 3.7.10, 3.6.14, 3.5.24)"


def check_version(setup: Setup) -> list[Finding]:
    text = setup.postfix.version
    version = parse_version(text)
    if version is None:
        message = f"cannot read mail_version {text!r}; the version checks were skipped"
        return [Finding("postfix-version", Severity.WARNING, GLOBAL, message)]
    if not has_feature(version, BARE_NEWLINE_YES_NO):
        message = (
            f"Postfix {text} has no smtpd_forbid_bare_newline: any client can end DATA with"
            " a bare LF and smuggle a second message (CVE-2023-51764); until the upgrade, set"
            " smtpd_discard_ehlo_keywords = chunking and"
            " smtpd_data_restrictions = reject_unauth_pipelining"
        )
        return [Finding("postfix-version", Severity.ERROR, GLOBAL, message, UPGRADE)]
    if not has_feature(version, BARE_NEWLINE_NORMALIZE):
        message = (
            f'Postfix {text} knows only smtpd_forbid_bare_newline = yes|no: "yes" disconnects'
            " at the first bare LF, and \\r\\n.\\r\\r\\n still ends DATA; normalize and reject"
            " came with the next patch release"
        )
        return [Finding("postfix-version", Severity.WARNING, GLOBAL, message, UPGRADE)]
    return []


def _origin(setup: Setup, service: Service, name: str) -> str:
    setting = service.get(name)
    if setting is None or setting.origin != "default":
        return ""
    return f" (the default of Postfix {setup.postfix.version})"


Judge = Callable[[Setup, Service, Setting], Problem | None]


def _each_smtpd(setup: Setup, name: str, judge: Judge) -> list[Finding]:
    """`judge` the setting `name` of every smtpd service, skipped where Postfix lacks it."""
    findings = []
    for service in setup.postfix.smtpd_services():
        setting = service.get(name)
        if setting is None:
            continue  # this Postfix lacks it: check_version says so
        problem = judge(setup, service, setting)
        if problem is not None:
            findings += setup.findings(service, [problem])
    return findings


def _bare_newline(setup: Setup, service: Service, setting: Setting) -> Problem | None:
    name = "smtpd_forbid_bare_newline"
    word = setting.expanded.strip().lower()
    where = f"{name} = {setting.expanded}{_origin(setup, service, name)}"
    if service is setup.reinjection:
        if word == "reject":
            return None
        severity = Severity.INFO if word in _STRICT else Severity.WARNING
        message = (
            f"{where} on the reinjection smtpd: filterd always sends CRLF lines, so"
            " reject turns a bare LF here (a bug) into a refusal instead of a guess"
        )
        return Problem("bare-newline", severity, message, name, "reject")
    if word in _STRICT:
        return None
    message = (
        f"{where}: a bare LF ends a line, so \\n.\\r\\n ends DATA early and the bytes"
        " after it are delivered as a second, smuggled message (CVE-2023-51764)"
    )
    return Problem("bare-newline", Severity.ERROR, message, name, "normalize")


def _exclusions(setup: Setup, service: Service, setting: Setting) -> Problem | None:
    name = "smtpd_forbid_bare_newline_exclusions"
    if not list_items(setting.expanded):
        return None
    shown = (
        setting.value
        if setting.value == setting.expanded
        else (f"{setting.value} ({setting.expanded})")
    )
    if service is setup.reinjection:
        message = (
            f"{name} = {shown}: the exclusions hold filterd's own address, so the"
            " strict smtpd_forbid_bare_newline never applies to the mail filterd"
            " relays here (the smtpd_proxy_filter hole Postfix closed in 3.12-20260816)"
        )
        return Problem("bare-newline-exclusions", Severity.WARNING, message, name, "")
    message = (
        f"{name} = {shown}{_origin(setup, service, name)}: every client in it gets"
        ' the lenient behaviour ("no"), so from those hosts \\n.\\r\\n still ends DATA'
        " early and a smuggled message gets through, whatever"
        " smtpd_forbid_bare_newline says"
    )
    return Problem("bare-newline-exclusions", Severity.ERROR, message, name, "")


def _unauth_pipelining(setup: Setup, service: Service, setting: Setting) -> Problem | None:
    name = "smtpd_forbid_unauth_pipelining"
    if setting.expanded.strip().lower() == "yes":
        return None
    where = f"{name} = {setting.expanded}{_origin(setup, service, name)}"
    if service is setup.reinjection:
        message = (
            f"{where} on the reinjection smtpd: filterd never pipelines, so a burst"
            " here is not filterd"
        )
        return Problem("unauth-pipelining", Severity.INFO, message, name, "yes")
    message = (
        f"{where}: a client may send a whole smuggled transaction (MAIL, RCPT, DATA)"
        " in one burst after a fake end of data without being disconnected"
    )
    return Problem("unauth-pipelining", Severity.WARNING, message, name, "yes")


def check_bare_newline(setup: Setup) -> list[Finding]:
    return _each_smtpd(setup, "smtpd_forbid_bare_newline", _bare_newline)


def check_exclusions(setup: Setup) -> list[Finding]:
    return _each_smtpd(setup, "smtpd_forbid_bare_newline_exclusions", _exclusions)


def check_unauth_pipelining(setup: Setup) -> list[Finding]:
    return _each_smtpd(setup, "smtpd_forbid_unauth_pipelining", _unauth_pipelining)


CHECKS = (check_version, check_bare_newline, check_exclusions, check_unauth_pipelining)
