"""Checks: does Postfix hand mail to filterd, wait for it, and refuse when it is down?

- proxy: a front smtpd's smtpd_proxy_filter is `[proxy] listen`; smtpd_proxy_timeout (a
  per-I/O timeout, default 100s) is above `[proxy] reply_deadline`; the front processes fit
  in `[proxy] max_connections`; the reinjection smtpd on `[proxy] downstream` is loopback
  only and does nothing twice (SMTPD_PROXY_README, master.cf.d/proxy.cf).
- milter: smtpd_milters holds `[milter] listen`; milter_default_action is not accept (an
  unreachable filterd would let mail in unscanned); milter_content_timeout (per read) is
  above `[milter] progress_interval`, how often filterd says it is still scanning.
"""

from __future__ import annotations

import math

from filterd.doctor.findings import FILTERD, GLOBAL, Finding, Severity, postconf_e
from filterd.doctor.postfix import (
    Service,
    is_loopback,
    list_items,
    parse_milters,
    parse_time,
)
from filterd.doctor.roles import Problem, Setup, host_and_port, same_milter

LOOPBACK_NETWORKS = "127.0.0.0/8"
REINJECTION_RESTRICTIONS = ["permit_mynetworks", "reject"]
REINJECTED = "on the reinjection smtpd"
XFORWARD = "smtpd_authorized_xforward_hosts"
# Restrictions the front smtpd already applied; on the reinjection smtpd they only refuse
# mail the client was already told is accepted (SMTPD_PROXY_README).
REPEATED_RESTRICTIONS = (
    "smtpd_client_restrictions",
    "smtpd_helo_restrictions",
    "smtpd_sender_restrictions",
    "smtpd_data_restrictions",
)


def check_listeners_known(setup: Setup) -> list[Finding]:
    if setup.proxy_mode or setup.milter_mode:
        return []
    message = (
        "filterd's configuration names no listener ([proxy] listen or [milter] listen), so"
        " nothing says which services must hand mail to filterd; only the Postfix-wide"
        " checks ran"
    )
    fix = "filterd doctor --config /etc/filterd/filterd.toml (or --proxy / --milter)"
    return [Finding("listeners-unknown", Severity.WARNING, FILTERD, message, fix)]


def _main_service(setup: Setup) -> Service | None:
    """The service a missing filter most likely belongs on: smtp/inet, else the first inet."""
    front = [s for s in setup.front() if s.type in {"inet", "pass"}]
    named = [s for s in front if host_and_port(s.name)[1] in {"smtp", "25"}]
    candidates = named or front
    return candidates[0] if candidates else None


def check_proxy_filter(setup: Setup) -> list[Finding]:
    if not setup.proxy_mode:
        return []
    listen = setup.filterd.proxy.listen
    findings = []
    proxied = setup.proxied()
    for service in setup.front():
        value = service.value("smtpd_proxy_filter") or ""
        if value and service not in proxied:
            message = (
                f"smtpd_proxy_filter = {value}: hands mail to something other than filterd's"
                f" [proxy] listen {listen}"
            )
            fix = setup.fix(service, "smtpd_proxy_filter", listen)
            findings.append(Finding("proxy-filter", Severity.WARNING, service.key, message, fix))
    if not proxied:
        target = _main_service(setup)
        message = f"no smtpd service has smtpd_proxy_filter = {listen}: no mail reaches filterd"
        fix = setup.fix(target, "smtpd_proxy_filter", listen) if target else ""
        where = target.key if target else GLOBAL
        findings.append(Finding("proxy-filter", Severity.ERROR, where, message, fix))
    return findings


def _with_filterd(current: str, listen: str) -> str:
    return f"{current}, {listen}" if current.strip() else listen


def check_milters(setup: Setup) -> list[Finding]:
    if not setup.milter_mode:
        return []
    listen = setup.filterd.milter.listen
    findings = []
    if not setup.miltered():
        target = _main_service(setup)
        message = f"no smtpd service has {listen} in smtpd_milters: no mail reaches filterd"
        fix = ""
        if target is not None:
            current = target.value("smtpd_milters") or ""
            fix = setup.fix(target, "smtpd_milters", _with_filterd(current, listen))
        where = target.key if target else GLOBAL
        findings.append(Finding("milters", Severity.ERROR, where, message, fix))
    local = setup.postfix.global_value("non_smtpd_milters")
    queue = setup.postfix.global_value("queue_directory")
    if not any(same_milter(m.address, listen, False, queue) for m in parse_milters(local)):
        message = (
            "non_smtpd_milters does not hold filterd: mail submitted on this host"
            " (sendmail(1), pickup) is queued without a scan"
        )
        fix = postconf_e(
            "non_smtpd_milters", _with_filterd(local, listen), setup.postfix.config_dir
        )
        findings.append(Finding("non-smtpd-milters", Severity.INFO, GLOBAL, message, fix))
    return findings


def _rebuilt_milters(setup: Setup, service: Service, option: str, value: str) -> str:
    """smtpd_milters with `option=value` in filterd's element (MILTER_README "{ ... }")."""
    listen = setup.filterd.milter.listen
    queue = setup.postfix.global_value("queue_directory")
    items = []
    for milter in parse_milters(service.value("smtpd_milters") or ""):
        options = dict(milter.options)
        if same_milter(milter.address, listen, service.chroot.lower() == "y", queue):
            options[option] = value
        if options:
            inner = ", ".join([milter.address, *(f"{k}={v}" for k, v in options.items())])
            items.append(f"{{ {inner} }}")
        else:
            items.append(milter.address)
    return ", ".join(items)


def check_default_action(setup: Setup) -> list[Finding]:
    findings = []
    for service in setup.miltered():
        for options in setup.filterd_milters(service):
            action = options.get("default_action")
            if action is not None and action.lower() == "accept":
                message = (
                    "filterd's smtpd_milters entry says default_action=accept: when filterd"
                    " is down, slow or broken, mail is queued unscanned (fail-open)"
                )
                value = _rebuilt_milters(setup, service, "default_action", "tempfail")
                fix = setup.fix(service, "smtpd_milters", value)
                findings.append(
                    Finding("milter-default-action", Severity.ERROR, service.key, message, fix)
                )
                break
            if (
                action is None
                and (service.value("milter_default_action") or "").lower() == "accept"
            ):
                message = (
                    "milter_default_action = accept: when filterd is down, slow or broken,"
                    " mail is queued unscanned (fail-open); tempfail asks the client to retry"
                )
                fix = setup.fix(service, "milter_default_action", "tempfail")
                findings.append(
                    Finding("milter-default-action", Severity.ERROR, service.key, message, fix)
                )
                break
    return findings


def check_proxy_timeout(setup: Setup) -> list[Finding]:
    deadline = setup.filterd.proxy.reply_deadline
    findings = []
    for service in setup.proxied():
        text = service.value("smtpd_proxy_timeout") or ""
        timeout = parse_time(text)
        if timeout is None:
            message = f"smtpd_proxy_timeout = {text!r} is not a Postfix time value"
            findings.append(Finding("proxy-timeout", Severity.WARNING, service.key, message))
        elif deadline >= timeout:
            message = (
                f"smtpd_proxy_timeout = {text} is not above [proxy] reply_deadline"
                f" ({deadline:g} s): Postfix gives up on filterd (451, 'timeout talking to"
                " proxy') before filterd answers a slow scan, and the client may send the"
                " message again after it was relayed (duplicates); or lower reply_deadline"
            )
            fix = setup.fix(service, "smtpd_proxy_timeout", f"{math.ceil(deadline) + 10}s")
            findings.append(Finding("proxy-timeout", Severity.ERROR, service.key, message, fix))
    return findings


def check_milter_timeout(setup: Setup) -> list[Finding]:
    interval = setup.filterd.milter.progress_interval
    findings = []
    for service in setup.miltered():
        for options in setup.filterd_milters(service):
            own = options.get("content_timeout")
            text = own if own is not None else service.value("milter_content_timeout") or ""
            timeout = parse_time(text)
            if timeout is None or interval < timeout:
                continue
            name = "content_timeout" if own is not None else "milter_content_timeout"
            message = (
                f"{name} = {text} is not above [milter] progress_interval ({interval:g} s):"
                " Postfix stops waiting for filterd in the middle of a scan and applies"
                " milter_default_action"
            )
            value = f"{math.ceil(interval) * 3}s"
            if own is not None:
                fix = setup.fix(
                    service,
                    "smtpd_milters",
                    _rebuilt_milters(setup, service, "content_timeout", value),
                )
            else:
                fix = setup.fix(service, "milter_content_timeout", value)
            findings.append(Finding("milter-timeout", Severity.ERROR, service.key, message, fix))
    return findings


def check_process_limit(setup: Setup) -> list[Finding]:
    proxied = setup.proxied()
    if not proxied:
        return []
    fallback = setup.postfix.global_value("default_process_limit", "100")
    total = 0
    for service in proxied:
        text = fallback if service.maxproc == "-" else service.maxproc
        if not text.isdigit() or int(text) == 0:
            return []  # 0 is "no limit" (master(5)); nothing to compare
        total += int(text)
    limit = setup.filterd.proxy.max_connections
    if total <= limit:
        return []
    message = (
        f"the proxied smtpd services may run {total} processes, above [proxy] max_connections"
        f" ({limit}): at a burst, the sessions over the limit get 421 4.7.0 from filterd"
    )
    fix = f"set maxproc of {', '.join(s.key for s in proxied)} to at most {limit} in master.cf"
    return [Finding("process-limit", Severity.WARNING, proxied[0].key, message, fix)]


def check_reinjection(setup: Setup) -> list[Finding]:
    if not setup.proxy_mode:
        return []
    downstream = setup.filterd.proxy.downstream
    service = setup.reinjection
    if service is None:
        message = (
            f"no smtpd service listens on [proxy] downstream {downstream}: filterd cannot"
            " relay the mail it accepts (every message gets a 4xx)"
        )
        fix = f"add the reinjection service of master.cf.d/proxy.cf as {downstream}"
        return [Finding("reinjection-missing", Severity.ERROR, GLOBAL, message, fix)]
    return [
        *_reinjection_exposure(setup, service),
        *_reinjection_overrides(setup, service),
        *_reinjection_access(setup, service),
    ]


def _reinjection_exposure(setup: Setup, service: Service) -> list[Finding]:
    host, port = host_and_port(service.name)
    if host and is_loopback(host):
        return []
    if host:
        reach = f"it listens on {host}"
    else:
        interfaces = service.value("inet_interfaces") or "all"
        if all(is_loopback(word) for word in list_items(interfaces)):
            return []
        reach = f"it listens on every address of inet_interfaces ({interfaces})"
    message = (
        f"the reinjection smtpd is not loopback only: {reach}, so anyone who reaches it can"
        " queue mail that filterd never saw"
    )
    fix = f"name the service 127.0.0.1:{port} in master.cf (and filterd's downstream with it)"
    return [Finding("reinjection-exposed", Severity.ERROR, service.key, message, fix)]


# Parameters that must be empty on the reinjection smtpd, and what each does there when set.
MUST_BE_EMPTY = (
    (
        "smtpd_proxy_filter",
        Severity.ERROR,
        "accepted mail goes through a proxy again (a loop when it is filterd)",
    ),
    ("smtpd_milters", Severity.WARNING, "accepted mail is filtered a second time"),
    ("content_filter", Severity.WARNING, "accepted mail is sent to an after-queue filter as well"),
)
REPEATED = (
    "restrictions the front smtpd already applied only refuse mail the client was told is accepted"
)


def _set_on_reinjection(
    service: Service, rows: tuple[tuple[str, Severity, str], ...]
) -> list[Problem]:
    """A problem for each (parameter, severity, why) row whose parameter is set here."""
    return [
        Problem("reinjection-override", severity, f"{name} = {value} {REINJECTED}: {why}", name, "")
        for name, severity, why in rows
        if (value := service.value(name))
    ]


def _reinjection_overrides(setup: Setup, service: Service) -> list[Finding]:
    problems = _set_on_reinjection(service, MUST_BE_EMPTY)
    options = list_items(service.value("receive_override_options") or "")
    if "no_unknown_recipient_checks" not in options:
        message = (
            "receive_override_options lacks no_unknown_recipient_checks on the reinjection"
            " smtpd: the recipients the front smtpd accepted are checked again"
        )
        value = ",".join([*options, "no_unknown_recipient_checks"])
        problems.append(
            Problem(
                "reinjection-override", Severity.INFO, message, "receive_override_options", value
            )
        )
    repeated = tuple((name, Severity.INFO, REPEATED) for name in REPEATED_RESTRICTIONS)
    problems += _set_on_reinjection(service, repeated)
    return setup.findings(service, problems)


def _reinjection_access(setup: Setup, service: Service) -> list[Finding]:
    problems = []
    xforward = list_items(service.value(XFORWARD) or "")
    if not xforward:
        message = (
            f"{XFORWARD} is empty {REINJECTED}: the queue"
            " file and the log name 127.0.0.1 instead of the real client"
        )
        problems.append(
            Problem("reinjection-xforward", Severity.INFO, message, XFORWARD, LOOPBACK_NETWORKS)
        )
    elif not all(is_loopback(word) for word in xforward):
        message = (
            f"{XFORWARD} = {' '.join(xforward)}: hosts other than loopback"
            " may forge the client name and address that the log and the queue file show"
        )
        problems.append(
            Problem("reinjection-xforward", Severity.WARNING, message, XFORWARD, LOOPBACK_NETWORKS)
        )
    restrictions = [
        list_items(service.value(name) or "")
        for name in ("smtpd_recipient_restrictions", "smtpd_relay_restrictions")
    ]
    if REINJECTION_RESTRICTIONS not in restrictions:
        message = (
            "the reinjection smtpd does not refuse everyone outside mynetworks"
            " (smtpd_recipient_restrictions is not permit_mynetworks,reject)"
        )
        value = ",".join(REINJECTION_RESTRICTIONS)
        problems.append(
            Problem(
                "reinjection-restrictions",
                Severity.WARNING,
                message,
                "smtpd_recipient_restrictions",
                value,
            )
        )
    networks = list_items(service.value("mynetworks") or "")
    if networks and not all(is_loopback(word) for word in networks):
        message = (
            f"mynetworks = {' '.join(networks)} {REINJECTED}: permit_mynetworks"
            " lets more than loopback inject mail here"
        )
        problems.append(
            Problem(
                "reinjection-restrictions",
                Severity.WARNING,
                message,
                "mynetworks",
                LOOPBACK_NETWORKS,
            )
        )
    return setup.findings(service, problems)


CHECKS = (
    check_listeners_known,
    check_proxy_filter,
    check_milters,
    check_default_action,
    check_proxy_timeout,
    check_milter_timeout,
    check_process_limit,
    check_reinjection,
)
