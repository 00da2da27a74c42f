"""`filterd doctor`'s checks over parsed data: tables of case id, input, wanted findings.

No program runs here: each case builds the parsed Postfix facts (as filterd/doctor/postconf.py
would), filterd's settings and a clamd.conf text, runs every check, and compares the
(check, severity, where) triples, and for some cases the exact fix line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from filterd.config import Config, from_mapping
from filterd.doctor import clamdconf
from filterd.doctor.cli import check
from filterd.doctor.findings import Finding
from filterd.doctor.postfix import PostfixFacts, Service, Setting
from filterd.doctor.roles import Setup

# A front smtpd as master.cf.d/ hardens it, and the reinjection smtpd of master.cf.d/proxy.cf.
FRONT = {
    "smtpd_forbid_bare_newline": "normalize",
    "smtpd_forbid_bare_newline_exclusions": "",
    "smtpd_forbid_unauth_pipelining": "yes",
    "smtpd_proxy_filter": "",
    "smtpd_proxy_timeout": "100s",
    "smtpd_milters": "",
    "milter_default_action": "tempfail",
    "milter_content_timeout": "300s",
    "message_size_limit": "10240000",
    "content_filter": "",
    "receive_override_options": "",
    "smtpd_authorized_xforward_hosts": "",
    "smtpd_client_restrictions": "",
    "smtpd_helo_restrictions": "",
    "smtpd_sender_restrictions": "",
    "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
    "smtpd_recipient_restrictions": "",
    "smtpd_data_restrictions": "",
    "mynetworks": "127.0.0.0/8",
    "inet_interfaces": "all",
}
REINJECTION = {
    **FRONT,
    "smtpd_forbid_bare_newline": "reject",
    "receive_override_options": "no_unknown_recipient_checks",
    "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
    "smtpd_relay_restrictions": "",
    "smtpd_recipient_restrictions": "permit_mynetworks,reject",
}
CLEAN_CLAMD = """\
LocalSocket /var/run/clamav/clamd.ctl
MaxThreads 12
StreamMaxLength 25M
MaxFileSize 25M
AlertExceedsMax yes
"""
LOCAL = "unix:/var/run/clamav/clamd.ctl"  # CLEAN_CLAMD's LocalSocket
Tables = dict[str, dict[str, object]]
PROXY: Tables = {"proxy": {"listen": "127.0.0.1:10024", "downstream": "127.0.0.1:10025"}}
MILTER: Tables = {"milter": {"listen": "inet:127.0.0.1:10026"}}
UNIX_MILTER: Tables = {"milter": {"listen": "unix:/var/spool/postfix/filterd/milter.sock"}}


def service(name: str, base: Mapping[str, str], *, maxproc: str = "20", **values: str) -> Service:
    settings = {
        key: Setting(value, value, "master.cf" if key in values else "main.cf")
        for key, value in {**base, **values}.items()
    }
    return Service(name, "inet", maxproc=maxproc, overrides=values, settings=settings)


def proxy_front(**values: str) -> Service:
    return service("smtp", FRONT, **{"smtpd_proxy_filter": "127.0.0.1:10024", **values})


def milter_front(**values: str) -> Service:
    return service("smtp", FRONT, **{"smtpd_milters": "inet:127.0.0.1:10026", **values})


def unix_milter_front(chroot: str) -> Service:
    """A milter front smtpd reaching filterd over a UNIX socket, chrooted or not (master.cf)."""
    settings = milter_front(smtpd_milters="unix:/filterd/milter.sock").settings
    return Service("smtp", "inet", chroot=chroot, settings=settings)


def reinjection(name: str = "127.0.0.1:10025", **values: str) -> Service:
    return service(name, REINJECTION, maxproc="-", **values)


@dataclass
class Case:
    id: str
    want: set[tuple[str, str, str]]
    # the front smtpd and the reinjection smtpd of master.cf.d/proxy.cf, as documented
    services: list[Service] = field(default_factory=lambda: [proxy_front(), reinjection()])
    filterd: Tables = field(default_factory=lambda: dict(PROXY))
    clamd: str | None = CLEAN_CLAMD
    version: str = "3.7.11"
    main: dict[str, str] = field(default_factory=dict)
    fix: tuple[str, str] | None = None  # (check, exact fix line) to compare too


def setup_of(case: Case) -> Setup:
    main = {"queue_directory": "/var/spool/postfix", "non_smtpd_milters": "", **case.main}
    facts = PostfixFacts(
        case.version,
        tuple(case.services),
        {k: Setting(v, v, "main.cf") for k, v in main.items()},
    )
    conf = None if case.clamd is None else clamdconf.parse(case.clamd, "/etc/clamav/clamd.conf")
    config: Config = from_mapping(case.filterd)
    return Setup(facts, config, conf)


def triples(findings: list[Finding]) -> set[tuple[str, str, str]]:
    return {(f.check, f.severity.word, f.where) for f in findings}


NO_MILTER_LOCAL = ("non-smtpd-milters", "info", "main.cf")
CASES = [
    Case("documented-proxy", set()),
    Case("documented-milter", {NO_MILTER_LOCAL}, [milter_front()], filterd=dict(MILTER)),
    Case("no-listener-configured", {("listeners-unknown", "warning", "filterd")},
         [service("smtp", FRONT)], filterd={}),
    # --- smuggling ---
    Case("bare-newline-no", {("bare-newline", "error", "smtp/inet")},
         [proxy_front(smtpd_forbid_bare_newline="no"), reinjection()],
         fix=("bare-newline", "postconf -P 'smtp/inet/smtpd_forbid_bare_newline=normalize'")),
    Case(
        "bare-newline-no-in-main-cf",
        {("bare-newline", "error", "smtp/inet")},
        [
            service(
                "smtp",
                {**FRONT, "smtpd_forbid_bare_newline": "no"},
                smtpd_proxy_filter="127.0.0.1:10024",
            ),
            reinjection(),
        ],
        fix=("bare-newline", "postconf -e 'smtpd_forbid_bare_newline = normalize'"),
    ),
    Case("bare-newline-yes-is-normalize", set(),
         [proxy_front(smtpd_forbid_bare_newline="yes"), reinjection()]),
    Case(
        "bare-newline-unknown-to-postfix",
        {("postfix-version", "error", "main.cf")},
        [
            service(
                "smtp",
                {k: v for k, v in FRONT.items() if "bare_newline" not in k},
                smtpd_proxy_filter="127.0.0.1:10024",
            ),
            reinjection(),
        ],
        version="3.7.8",
    ),
    Case("version-yes-no-only", {("postfix-version", "warning", "main.cf")}, version="3.8.4"),
    Case("version-3.9", set(), version="3.9.1"),
    Case("version-snapshot", set(), version="3.12-20260821"),
    Case("version-unreadable", {("postfix-version", "warning", "main.cf")}, version=""),
    Case(
        "exclusions-mynetworks-on-front",
        {("bare-newline-exclusions", "error", "smtp/inet")},
        [proxy_front(smtpd_forbid_bare_newline_exclusions="127.0.0.0/8 10.0.0.0/8"), reinjection()],
        fix=(
            "bare-newline-exclusions",
            "postconf -P 'smtp/inet/smtpd_forbid_bare_newline_exclusions='",
        ),
    ),
    Case("exclusions-on-reinjection",
         {("bare-newline-exclusions", "warning", "127.0.0.1:10025/inet")},
         [proxy_front(), reinjection(smtpd_forbid_bare_newline_exclusions="127.0.0.0/8")]),
    Case("exclusions-commas-only-are-empty", set(),
         [proxy_front(smtpd_forbid_bare_newline_exclusions=" , "), reinjection()]),
    Case("reinjection-normalize-is-info", {("bare-newline", "info", "127.0.0.1:10025/inet")},
         [proxy_front(), reinjection(smtpd_forbid_bare_newline="normalize")]),
    Case("reinjection-no", {("bare-newline", "warning", "127.0.0.1:10025/inet")},
         [proxy_front(), reinjection(smtpd_forbid_bare_newline="no")]),
    Case(
        "unauth-pipelining-no",
        {
            ("unauth-pipelining", "warning", "smtp/inet"),
            ("unauth-pipelining", "info", "127.0.0.1:10025/inet"),
        },
        [
            proxy_front(smtpd_forbid_unauth_pipelining="no"),
            reinjection(smtpd_forbid_unauth_pipelining="no"),
        ],
    ),
    # --- wiring: proxy ---
    Case("proxy-filter-missing", {("proxy-filter", "error", "smtp/inet")},
         [service("smtp", FRONT), reinjection()],
         fix=("proxy-filter", "postconf -P 'smtp/inet/smtpd_proxy_filter=127.0.0.1:10024'")),
    Case("proxy-filter-elsewhere",
         {("proxy-filter", "warning", "smtp/inet"), ("proxy-filter", "error", "smtp/inet")},
         [proxy_front(smtpd_proxy_filter="127.0.0.1:10099"), reinjection()]),
    Case("proxy-filter-inet-prefix-matches", set(),
         [proxy_front(smtpd_proxy_filter="inet:127.0.0.1:10024"), reinjection()]),
    Case("proxy-timeout-below-deadline", {("proxy-timeout", "error", "smtp/inet")},
         [proxy_front(smtpd_proxy_timeout="1m"), reinjection()],
         fix=("proxy-timeout", "postconf -P 'smtp/inet/smtpd_proxy_timeout=100s'")),
    Case("proxy-timeout-equal-to-deadline", {("proxy-timeout", "error", "smtp/inet")},
         [proxy_front(smtpd_proxy_timeout="90s"), reinjection()]),
    Case("proxy-timeout-above-raised-deadline", set(),
         [proxy_front(smtpd_proxy_timeout="200s"), reinjection()],
         filterd={"proxy": {**PROXY["proxy"], "reply_deadline": 190}}),
    Case("process-limit-above-max-connections", {("process-limit", "warning", "smtp/inet")},
         filterd={"proxy": {**PROXY["proxy"], "max_connections": 10}}),
    Case(
        "process-limit-default-100",
        {("process-limit", "warning", "smtp/inet")},
        [service("smtp", FRONT, maxproc="-", smtpd_proxy_filter="127.0.0.1:10024"), reinjection()],
        filterd={"proxy": {**PROXY["proxy"], "max_connections": 50}},
        main={"default_process_limit": "100"},
    ),
    Case("reinjection-missing", {("reinjection-missing", "error", "main.cf")}, [proxy_front()]),
    Case("reinjection-on-all-interfaces", {("reinjection-exposed", "error", "10025/inet")},
         [proxy_front(), reinjection("10025")]),
    Case("reinjection-port-only-with-loopback-interfaces", set(),
         [proxy_front(), reinjection("10025", inet_interfaces="127.0.0.1")]),
    Case(
        "reinjection-loops-into-filterd",
        {("reinjection-override", "error", "127.0.0.1:10025/inet")},
        [proxy_front(), reinjection(smtpd_proxy_filter="127.0.0.1:10024")],
        fix=("reinjection-override", "postconf -P '127.0.0.1:10025/inet/smtpd_proxy_filter='"),
    ),
    Case(
        "reinjection-milters-and-content-filter",
        {("reinjection-override", "warning", "127.0.0.1:10025/inet")},
        [
            proxy_front(),
            reinjection(
                smtpd_milters="inet:127.0.0.1:8891", content_filter="amavis:[127.0.0.1]:10024"
            ),
        ],
    ),
    Case("reinjection-without-receive-override",
         {("reinjection-override", "info", "127.0.0.1:10025/inet")},
         [proxy_front(), reinjection(receive_override_options="")]),
    Case("reinjection-repeats-restrictions",
         {("reinjection-override", "info", "127.0.0.1:10025/inet")},
         [proxy_front(), reinjection(smtpd_client_restrictions="reject_rbl_client zen.example")]),
    Case("reinjection-xforward-empty", {("reinjection-xforward", "info", "127.0.0.1:10025/inet")},
         [proxy_front(), reinjection(smtpd_authorized_xforward_hosts="")]),
    Case("reinjection-xforward-network",
         {("reinjection-xforward", "warning", "127.0.0.1:10025/inet")},
         [proxy_front(), reinjection(smtpd_authorized_xforward_hosts="127.0.0.0/8 192.0.2.0/24")]),
    Case(
        "reinjection-open-restrictions",
        {("reinjection-restrictions", "warning", "127.0.0.1:10025/inet")},
        [
            proxy_front(),
            reinjection(
                smtpd_recipient_restrictions="permit_mynetworks",
                mynetworks="127.0.0.0/8 192.0.2.0/24",
            ),
        ],
    ),
    # --- wiring: milter ---
    Case(
        "milter-missing",
        {("milters", "error", "smtp/inet"), NO_MILTER_LOCAL},
        [service("smtp", FRONT, smtpd_milters="inet:127.0.0.1:8891")],
        filterd=dict(MILTER),
        fix=(
            "milters",
            "postconf -P 'smtp/inet/smtpd_milters=inet:127.0.0.1:8891, inet:127.0.0.1:10026'",
        ),
    ),
    Case("milter-unix-socket-in-chroot", {NO_MILTER_LOCAL}, [unix_milter_front(chroot="y")],
         filterd=UNIX_MILTER),
    Case("milter-unix-socket-outside-chroot-mismatch",
         {("milters", "error", "smtp/inet"), NO_MILTER_LOCAL}, [unix_milter_front(chroot="n")],
         filterd=UNIX_MILTER),
    Case("milter-local-submission-covered", set(), [milter_front()], filterd=dict(MILTER),
         main={"non_smtpd_milters": "inet:127.0.0.1:10026"}),
    Case("milter-default-action-accept",
         {("milter-default-action", "error", "smtp/inet"), NO_MILTER_LOCAL},
         [milter_front(milter_default_action="accept")], filterd=dict(MILTER),
         fix=("milter-default-action", "postconf -P 'smtp/inet/milter_default_action=tempfail'")),
    Case(
        "milter-per-milter-accept",
        {("milter-default-action", "error", "smtp/inet"), NO_MILTER_LOCAL},
        [milter_front(smtpd_milters="{ inet:127.0.0.1:10026, default_action=accept }")],
        filterd=dict(MILTER),
        fix=(
            "milter-default-action",
            (
                "postconf -P 'smtp/inet/smtpd_milters={ inet:127.0.0.1:10026,"
                " default_action=tempfail }'"
            ),
        ),
    ),
    Case(
        "milter-per-milter-tempfail-beats-accept",
        {NO_MILTER_LOCAL},
        [
            milter_front(
                smtpd_milters="{ inet:127.0.0.1:10026, default_action=tempfail }",
                milter_default_action="accept",
            )
        ],
        filterd=dict(MILTER),
    ),
    Case("milter-content-timeout-too-short",
         {("milter-timeout", "error", "smtp/inet"), NO_MILTER_LOCAL},
         [milter_front(milter_content_timeout="10s")], filterd=dict(MILTER)),
    Case(
        "milter-per-milter-content-timeout",
        {("milter-timeout", "error", "smtp/inet"), NO_MILTER_LOCAL},
        [milter_front(smtpd_milters="{ inet:127.0.0.1:10026, content_timeout=5s }")],
        filterd=dict(MILTER),
    ),
    # --- sizes and clamd ---
    Case("message-size-above-filterd", {("message-size", "warning", "smtp/inet")},
         [proxy_front(message_size_limit="52428800"), reinjection()]),
    Case("message-size-unlimited", {("message-size", "warning", "smtp/inet")},
         [proxy_front(message_size_limit="0"), reinjection()]),
    Case(
        "max-message-size-above-scan-size",
        {("scan-size", "warning", "filterd")},
        [proxy_front(message_size_limit="52428800"), reinjection()],
        filterd={
            **PROXY,
            "filter": {"max_message_size": 52428800},
            "clamd": {"max_scan_size": 20971520},
        },
    ),
    Case(
        "oversize-accept-passes-unscanned",
        {("scan-size", "error", "filterd")},
        [proxy_front(message_size_limit="52428800"), reinjection()],
        filterd={
            **PROXY,
            "filter": {"max_message_size": 52428800, "oversize": "accept"},
            "clamd": {"max_scan_size": 20971520},
        },
    ),
    Case("stream-max-length-below-scan-size", {("clamd-stream-size", "error", "clamd")},
         clamd=CLEAN_CLAMD.replace("StreamMaxLength 25M", "StreamMaxLength 10M"),
         fix=("clamd-stream-size", "StreamMaxLength 25M (in /etc/clamav/clamd.conf)")),
    Case("stream-max-length-default-100m", set(),
         clamd=CLEAN_CLAMD.replace("StreamMaxLength 25M\n", "")),
    Case("max-threads-below-concurrency", {("clamd-threads", "warning", "clamd")},
         clamd=CLEAN_CLAMD.replace("MaxThreads 12", "MaxThreads 4")),
    Case("max-threads-default-10-vs-default-10", set(),
         clamd=CLEAN_CLAMD.replace("MaxThreads 12\n", "")),
    Case("alert-exceeds-max-no", {("clamd-exceeds-max", "error", "clamd")},
         clamd=CLEAN_CLAMD.replace("AlertExceedsMax yes", "AlertExceedsMax no"),
         fix=("clamd-exceeds-max", "AlertExceedsMax yes (in /etc/clamav/clamd.conf)")),
    Case("alert-exceeds-max-default-is-no", {("clamd-exceeds-max", "error", "clamd")},
         clamd=CLEAN_CLAMD.replace("AlertExceedsMax yes\n", "")),
    Case("alert-exceeds-max-true-word", set(),
         clamd=CLEAN_CLAMD.replace("AlertExceedsMax yes", "AlertExceedsMax TRUE")),
    Case("clamd-socket-mismatch", {("clamd-address", "error", "clamd")},
         clamd=CLEAN_CLAMD.replace("/var/run/clamav/clamd.ctl", "/srv/clamd.sock")),
    Case(
        "clamd-tcp-matches",
        set(),
        filterd={**PROXY, "clamd": {"address": "tcp:127.0.0.1:3310"}},
        clamd=CLEAN_CLAMD.replace(
            "LocalSocket /var/run/clamav/clamd.ctl", "TCPSocket 3310\nTCPAddr localhost"
        ),
    ),
    Case("clamd-tcp-wrong-port", {("clamd-address", "error", "clamd")},
         filterd={**PROXY, "clamd": {"address": "tcp:127.0.0.1:3311"}},
         clamd=CLEAN_CLAMD.replace("LocalSocket /var/run/clamav/clamd.ctl", "TCPSocket 3310")),
    # --- a pool: every address is checked, not only the first ---
    Case("clamd-pool-socket-and-tcp-match", set(),
         filterd={**PROXY, "clamd": {"address": [LOCAL, "tcp:127.0.0.1:3310"]}},
         clamd=CLEAN_CLAMD + "TCPSocket 3310\nTCPAddr 127.0.0.1\n"),
    Case(
        "clamd-pool-second-mismatch",
        {("clamd-address", "error", "clamd")},
        filterd={**PROXY, "clamd": {"address": [LOCAL, "unix:/srv/other.sock"]}},
        fix=(
            "clamd-address",
            f'"{LOCAL}" instead of "unix:/srv/other.sock" in [clamd] address (in filterd\'s TOML)',
        ),
    ),
    Case("clamd-pool-remote-member", {("clamd-remote", "info", "clamd")},
         filterd={**PROXY, "clamd": {"address": [LOCAL, "tcp:10.0.5.11:3310"]}}),
    Case("clamd-remote-only", {("clamd-remote", "info", "clamd")},
         filterd={**PROXY, "clamd": {"address": "tcp:10.0.5.11:3310"}}),
    Case("clamd-example-line", {("clamd-example", "error", "clamd")},
         clamd="Example\n" + CLEAN_CLAMD),
    Case("clamd-bad-size", {("clamd-config", "warning", "clamd")},
         clamd=CLEAN_CLAMD.replace("StreamMaxLength 25M", "StreamMaxLength 25X")),
    Case("no-clamd-conf", {("clamd-config", "info", "clamd")}, clamd=None),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_check(case: Case) -> None:
    findings = check(setup_of(case))
    assert triples(findings) == case.want, [f.message for f in findings]
    if case.fix is not None:
        name, line = case.fix
        assert line in [f.fix for f in findings if f.check == name]


def test_each_address_of_a_pool_is_named() -> None:
    case = Case(
        "two-wrong",
        set(),
        filterd={**PROXY, "clamd": {"address": ["unix:/srv/a.sock", "unix:/srv/b.sock"]}},
    )
    findings = [f for f in check(setup_of(case)) if f.check == "clamd-address"]
    assert [f.message.split(",")[0] for f in findings] == [
        "filterd connects to [clamd] address unix:/srv/a.sock",
        "filterd connects to [clamd] address unix:/srv/b.sock",
    ]


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
