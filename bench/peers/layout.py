"""One private Postfix for every contender: a front smtpd per contender on its own port, the
same everywhere except the one option that hooks the filter in, and one reinjection smtpd
(master.cf.d/proxy.cf's) that both proxies relay to.

The fronts share one master(8), one cleanup and qmgr, one queue and one smtp-sink, so a
contender's figure differs from another's only by its filter. Each front logs under its own
`syslog_name` (postfix/peers-NAME), so its lines can be told apart in the maillog.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from tests.integration.proxy_chain import snippet_services
from tests.testbed.postfix import Postfix, render_options
from tests.testbed.sink import Sink

Hook = Literal["plain", "proxy", "milter"]

# Every front smtpd gets the smuggling options of master.cf.d/proxy.cf's front service, so
# plain Postfix and the milter fronts do the same work per line as the proxy fronts.
COMMON_FRONT_OPTIONS: Final = {
    "smtpd_forbid_bare_newline": "normalize",
    "smtpd_forbid_bare_newline_exclusions": "",
    "smtpd_forbid_unauth_pipelining": "yes",
}

MAIN_CF: Final = {
    # A Milter that fails tempfails the message (never an unscanned accept).
    "milter_default_action": "tempfail",
    "milter_protocol": "6",
    # The fronts answer 50 parallel sessions; Postfix's default process limit is 100.
    "default_process_limit": "100",
    # Reconciliation counts messages by queue ID: short IDs are built from the queue file's
    # inode and can come back within one run; long ones are never reused (postconf(5)).
    "enable_long_queue_ids": "yes",
}

_REINJECT = re.compile(r"^127\.0\.0\.1:\{downstream_port\} inet .*", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Front:
    """One contender's front smtpd: its port, how the filter is hooked in, the filter."""

    name: str  # a short word, used in syslog_name: "plain", "filterd-proxy", ...
    port: int
    hook: Hook
    filter: str = ""  # "127.0.0.1:PORT" (proxy) or "inet:127.0.0.1:PORT" (milter)

    def options(self) -> dict[str, str]:
        options = {"syslog_name": f"postfix/peers-{self.name}", **COMMON_FRONT_OPTIONS}
        if self.hook == "proxy":
            # As master.cf.d/proxy.cf: Postfix's default timeout, restated.
            options.update(smtpd_proxy_filter=self.filter, smtpd_proxy_timeout="100s")
        elif self.hook == "milter":
            options["smtpd_milters"] = self.filter
        return options

    def service(self) -> str:
        return f"127.0.0.1:{self.port} inet n - n - - smtpd\n{render_options(self.options())}\n"


def reinjection_service(downstream_port: int) -> str:
    """The reinjection smtpd of master.cf.d/proxy.cf, on `downstream_port`."""
    match = _REINJECT.search(snippet_services())
    if match is None:
        raise AssertionError("master.cf.d/proxy.cf no longer has its reinjection service")
    lines = [line for line in match.group(0).splitlines() if not line.startswith("#")]
    return "\n".join(lines).replace("{downstream_port}", str(downstream_port)) + "\n"


def services(fronts: Sequence[Front], downstream_port: int) -> str:
    return "".join(front.service() for front in fronts) + reinjection_service(downstream_port)


def one_postfix(
    fronts: Sequence[Front], downstream_port: int, sink: Sink, main_cf: Mapping[str, str]
) -> Postfix:
    """The test bed's Postfix in "plain" mode with our own services in place of its one smtpd.

    Its readiness check greets the first front only; `bench.peers` checks the others.
    """
    return Postfix(
        "plain",
        sink=sink,
        main_cf={**MAIN_CF, **main_cf},
        smtpd_port=fronts[0].port,
        services=services(fronts, downstream_port),
    )
