"""Checks: sizes and capacities that must nest, and clamd limits that hide malware.

    Postfix message_size_limit  <=  [filter] max_message_size  <=  [clamd] max_scan_size
                                                                <=  clamd StreamMaxLength
    [clamd] max_concurrent  <=  clamd MaxThreads
    [clamd] address  ==  clamd LocalSocket (unix:) or TCPAddr/TCPSocket (tcp:), for every
                         address of a pool; a TCP address of another host is named (info):
                         the local clamd.conf says nothing about that clamd

and clamd.conf(5) AlertExceedsMax: without it, a file over MaxFileSize, MaxScanSize or
MaxRecursion is simply not scanned and the scan says clean, so an archive with one huge
member next to the malware passes (a zip with a 70 MB member plus EICAR was accepted as
clean by clamd 1.4.6 with its Debian limits).
"""

from __future__ import annotations

from filterd.core import OversizePolicy
from filterd.doctor.clamdconf import ClamdConf, ClamdConfError, describes
from filterd.doctor.findings import CLAMD, FILTERD, Finding, Severity
from filterd.doctor.postfix import Service, is_loopback
from filterd.doctor.roles import Setup
from filterd.scan.address import AddressError, TcpAddress, parse_address

_MIB = 1024 * 1024


def _mb(size: int) -> str:
    if size == 0:
        return "0 (no limit)"
    return f"{size // _MIB}M" if size % _MIB == 0 else str(size)


def _filtered(setup: Setup) -> tuple[Service, ...]:
    return setup.proxied() + setup.miltered()


def check_message_size(setup: Setup) -> list[Finding]:
    limit = setup.filterd.filter.max_message_size
    findings = []
    for service in _filtered(setup):
        text = (service.value("message_size_limit") or "").strip()
        if not text.isdigit():
            continue
        size = int(text)
        if 0 < size <= limit:
            continue
        shown = "0 (no limit)" if size == 0 else text
        message = (
            f"message_size_limit = {shown} is above [filter] max_message_size ({limit}):"
            " Postfix takes in messages that filterd then refuses with 552 5.3.4, after the"
            " client sent all of them"
        )
        fix = setup.fix(service, "message_size_limit", str(limit))
        findings.append(Finding("message-size", Severity.WARNING, service.key, message, fix))
    return findings


def check_scan_size(setup: Setup) -> list[Finding]:
    clamd = setup.filterd.clamd
    policy = setup.filterd.filter
    if policy.max_message_size <= clamd.max_scan_size:
        return []
    if policy.oversize is OversizePolicy.ACCEPT:
        what = "are accepted unscanned ([filter] oversize = accept)"
        severity = Severity.ERROR
    else:
        what = "get 452 4.3.4 on every attempt ([filter] oversize = tempfail) and never arrive"
        severity = Severity.WARNING
    message = (
        f"[filter] max_message_size ({policy.max_message_size}) is above [clamd] max_scan_size"
        f" ({clamd.max_scan_size}): messages between the two {what}"
    )
    fix = f"[clamd] max_scan_size = {policy.max_message_size} (in filterd's TOML)"
    return [Finding("scan-size", severity, FILTERD, message, fix)]


def _in_clamd_conf(
    conf: ClamdConf, check: str, severity: Severity, problem: str, line: str
) -> Finding:
    """A finding on clamd.conf: `problem` after the file's name, and the `line` to put there."""
    return Finding(check, severity, CLAMD, f"{conf.path}: {problem}", f"{line} (in {conf.path})")


def _clamd_checks(setup: Setup, conf: ClamdConf) -> list[Finding]:
    settings = setup.filterd.clamd
    stream = conf.size("StreamMaxLength")
    threads = conf.number("MaxThreads")
    # (found, check, severity, problem, fix line)
    rows = (
        (
            bool(stream) and settings.max_scan_size > stream,
            "clamd-stream-size",
            Severity.ERROR,
            (
                f"StreamMaxLength is {_mb(stream)}, below [clamd] max_scan_size"
                f" ({settings.max_scan_size}): clamd cuts larger messages off (INSTREAM size"
                " limit exceeded) and filterd can only tempfail them"
            ),
            f"StreamMaxLength {-(-settings.max_scan_size // _MIB)}M",
        ),
        (
            settings.max_concurrent > threads,
            "clamd-threads",
            Severity.WARNING,
            (
                f"MaxThreads {threads} is below [clamd] max_concurrent"
                f" ({settings.max_concurrent}): the scans over it wait in clamd's queue, where"
                " filterd's timeouts run out"
            ),
            f"MaxThreads {settings.max_concurrent}",
        ),
    )
    findings = [
        _in_clamd_conf(conf, check, severity, problem, line)
        for found, check, severity, problem, line in rows
        if found
    ]
    if not conf.flag("AlertExceedsMax"):
        problem = (
            "AlertExceedsMax is no: a file over MaxFileSize"
            f" ({_mb(conf.size('MaxFileSize'))}), MaxScanSize ({_mb(conf.size('MaxScanSize'))})"
            f" or MaxRecursion ({conf.number('MaxRecursion')}) is not scanned and the message"
            " passes as clean, so an archive with one huge member hides the malware next to"
            " it; with yes, clamd reports Heuristics.Limits.Exceeded and filterd refuses it"
        )
        line = "AlertExceedsMax yes"
        findings.append(_in_clamd_conf(conf, "clamd-exceeds-max", Severity.ERROR, problem, line))
    if conf.last("Example") is not None:
        problem = "the Example line is still there, and clamd refuses to start"
        line = "delete the Example line"
        findings.append(_in_clamd_conf(conf, "clamd-example", Severity.ERROR, problem, line))
    return findings


def _listens(conf: ClamdConf, address: str) -> bool | None:
    """clamdconf.describes, or None for an address that does not parse (Config refuses it)."""
    try:
        return describes(conf, parse_address(address))
    except AddressError:
        return None


def _address_of(conf: ClamdConf) -> str:
    if conf.local_socket:
        return f"unix:{conf.local_socket}"
    host = conf.tcp_addresses[0] if conf.tcp_addresses else "127.0.0.1"
    return str(TcpAddress(host, conf.tcp_port or 3310))


def _remote(conf: ClamdConf, address: str) -> bool:
    """A TCP address of another host: a clamd this clamd.conf does not describe."""
    try:
        parsed = parse_address(address)
    except AddressError:
        return False
    if not isinstance(parsed, TcpAddress) or is_loopback(parsed.host):
        return False
    return parsed.host.lower() not in (host.lower() for host in conf.tcp_addresses)


def _address_finding(conf: ClamdConf, address: str, *, pool: bool) -> Finding | None:
    """What is wrong with one [clamd] address, seen from the local clamd.conf."""
    if _remote(conf, address):
        message = (
            f"[clamd] address {address} is another host: {conf.path} says nothing about"
            " that clamd; check its StreamMaxLength, MaxThreads and AlertExceedsMax there"
        )
        return Finding("clamd-remote", Severity.INFO, CLAMD, message)
    if _listens(conf, address) is not False:
        return None
    where = []
    if conf.local_socket:
        where.append(f"LocalSocket {conf.local_socket}")
    if conf.tcp_port is not None:
        hosts = " ".join(conf.tcp_addresses) or "every address"
        where.append(f"TCPSocket {conf.tcp_port} on {hosts}")
    local = _address_of(conf)
    if pool:
        harm = "every scan sent there fails and is retried on another address"
        fix = f'"{local}" instead of "{address}" in [clamd] address (in filterd\'s TOML)'
    else:
        harm = "every scan fails and mail is tempfailed"
        fix = f'[clamd] address = "{local}" (in filterd\'s TOML)'
    message = (
        f"filterd connects to [clamd] address {address}, but {conf.path} listens on"
        f" {', '.join(where) or 'nothing'}: {harm}"
    )
    return Finding("clamd-address", Severity.ERROR, CLAMD, message, fix)


def check_clamd(setup: Setup) -> list[Finding]:
    conf = setup.clamd
    if conf is None:
        message = (
            "no clamd.conf was found (/etc/clamav/clamd.conf): clamd's limits were not checked"
        )
        fix = "filterd doctor --clamd-config /path/to/clamd.conf"
        return [Finding("clamd-config", Severity.INFO, CLAMD, message, fix)]
    addresses = setup.filterd.clamd.addresses  # every address of a pool, in order
    pool = len(addresses) > 1
    found = [_address_finding(conf, address, pool=pool) for address in addresses]
    findings = [finding for finding in found if finding is not None]
    try:
        findings += _clamd_checks(setup, conf)
    except ClamdConfError as exc:
        findings.append(Finding("clamd-config", Severity.WARNING, CLAMD, str(exc)))
    return findings


CHECKS = (check_message_size, check_scan_size, check_clamd)
