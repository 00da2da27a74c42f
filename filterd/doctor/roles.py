"""Which master.cf service does what for filterd, from filterd's own listener settings.

- the reinjection service: the smtpd on `[proxy] downstream`, where filterd relays
  accepted mail (SMTPD_PROXY_README's after-filter smtpd);
- front services: every other smtpd; the proxied ones hand mail to `[proxy] listen`
  (smtpd_proxy_filter), the miltered ones to `[milter] listen` (smtpd_milters).

Addresses are compared as written, after Postfix's optional `inet:` prefix and IPv6 brackets
are taken off: "localhost" and "127.0.0.1" are different listeners to Postfix's resolver.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import NamedTuple

from filterd.address import split_host_port
from filterd.config import Config
from filterd.doctor.clamdconf import ClamdConf
from filterd.doctor.findings import Finding, Severity, postconf_e, postconf_p
from filterd.doctor.postfix import (
    PER_SERVICE_PARAMETERS,
    PostfixFacts,
    Service,
    is_loopback,
    parse_milters,
)


def host_and_port(text: str) -> tuple[str, str]:
    """`host:port`, `[v6]:port` or a bare `port` (master.cf inet service names), read as
    Postfix writes them (filterd/address.py), the host lower-cased for comparing."""
    host, port = split_host_port(text)
    return host.lower(), port


def proxy_target(value: str) -> str:
    """smtpd_proxy_filter as host:port (postconf(5): host:port, inet:host:port, unix:path)."""
    value = value.strip()
    if value.startswith("unix:"):
        return value
    host, port = host_and_port(value.removeprefix("inet:"))
    return f"{host}:{port}"


def same_milter(postfix_address: str, listen: str, chroot: bool, queue_directory: str) -> bool:
    """Does a smtpd_milters element name filterd's `[milter] listen`?

    A chrooted smtpd resolves a unix: path inside the queue directory (MILTER_README).
    """
    if postfix_address.startswith("unix:") and listen.startswith("unix:"):
        path = postfix_address.removeprefix("unix:")
        wanted = PurePosixPath(listen.removeprefix("unix:"))
        if chroot:
            return PurePosixPath(queue_directory, path.lstrip("/")) == wanted
        return PurePosixPath(path) == wanted
    if postfix_address.startswith("inet:") and listen.startswith("inet:"):
        return proxy_target(postfix_address) == proxy_target(listen)
    return False


def is_chrooted(service: Service) -> bool:
    # master(5): the chroot column's default "-" is "n" since Postfix 3.0.
    return service.chroot.lower() == "y"


def listens_on(service: Service, address: str) -> bool:
    """Could this inet service be the one listening on `address` (HOST:PORT)?"""
    if service.type != "inet":
        return False
    host, port = host_and_port(service.name)
    want_host, want_port = host_and_port(address)
    if port != want_port:
        return False
    return not host or host == want_host or (is_loopback(host) and is_loopback(want_host))


class Problem(NamedTuple):
    """What a check found on one service; the fix sets `parameter` to `value` there."""

    check: str
    severity: Severity
    message: str
    parameter: str
    value: str


@dataclass(frozen=True, slots=True)
class Setup:
    """Everything the checks look at; built once, never changed."""

    postfix: PostfixFacts
    filterd: Config
    clamd: ClamdConf | None = None

    @property
    def proxy_mode(self) -> bool:
        return bool(self.filterd.proxy.listen)

    @property
    def milter_mode(self) -> bool:
        return bool(self.filterd.milter.listen)

    @property
    def reinjection(self) -> Service | None:
        if not self.proxy_mode:
            return None
        candidates = [
            s for s in self.postfix.smtpd_services() if listens_on(s, self.filterd.proxy.downstream)
        ]
        # An exact name beats a port-only one ("127.0.0.1:10025" over "10025").
        candidates.sort(key=lambda s: host_and_port(s.name)[0] == "")
        return candidates[0] if candidates else None

    def front(self) -> tuple[Service, ...]:
        reinjection = self.reinjection
        return tuple(s for s in self.postfix.smtpd_services() if s is not reinjection)

    def proxied(self) -> tuple[Service, ...]:
        if not self.proxy_mode:
            return ()
        listen = proxy_target(self.filterd.proxy.listen)
        return tuple(
            s for s in self.front() if proxy_target(s.value("smtpd_proxy_filter") or "") == listen
        )

    def filterd_milters(self, service: Service) -> list[dict[str, str]]:
        """The per-milter options of each smtpd_milters element that is filterd."""
        if not self.milter_mode:
            return []
        queue = self.postfix.global_value("queue_directory")
        return [
            dict(milter.options)
            for milter in parse_milters(service.value("smtpd_milters") or "")
            if same_milter(milter.address, self.filterd.milter.listen, is_chrooted(service), queue)
        ]

    def miltered(self) -> tuple[Service, ...]:
        return tuple(s for s in self.front() if self.filterd_milters(s))

    def fix(self, service: Service, name: str, value: str) -> str:
        """The postconf line that sets `name` for this service, where it belongs."""
        setting = service.get(name)
        per_service = name in PER_SERVICE_PARAMETERS or service is self.reinjection
        if per_service or (setting is not None and setting.origin == "master.cf"):
            return postconf_p(service.key, name, value, self.postfix.config_dir)
        return postconf_e(name, value, self.postfix.config_dir)

    def findings(self, service: Service, problems: Iterable[Problem]) -> list[Finding]:
        """The findings on `service`, each with the postconf line that fixes it (`fix`)."""
        return [
            Finding(check, severity, service.key, message, self.fix(service, parameter, value))
            for check, severity, message, parameter, value in problems
        ]
