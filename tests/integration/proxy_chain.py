"""The proxy chain for integration tests: a private Postfix configured with the project's
master.cf.d/proxy.cf, filterd's proxy in between, the real clamd behind it.

    client -> Postfix front smtpd -> filterd proxy -> Postfix reinjection smtpd -> sink
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filterd.config import ProxySettings
from filterd.core import Policy
from filterd.pipeline import Pipeline
from filterd.scan import ClamdScanner
from tests.endpoints.proxy_support import RunningProxy
from tests.testbed.common import free_port
from tests.testbed.postfix import Postfix, render_options

SNIPPET = Path(__file__).resolve().parents[2] / "master.cf.d" / "proxy.cf"


def snippet_services(downstream_options: Mapping[str, str] | None = None) -> str:
    """master.cf.d/proxy.cf with the test bed's ports, and chroot off (private queue dir).

    `downstream_options` become extra `-o` lines of the reinjection smtpd (e.g. a short
    smtpd_timeout); they come before the snippet's own, so use only options it does not set.
    """
    text = SNIPPET.read_text()
    front = re.compile(r"^smtp +inet +n +- +y +- +20 +smtpd$", re.MULTILINE)
    after = re.compile(r"^127\.0\.0\.1:10025 +inet +n +- +n +- +- +smtpd$", re.MULTILINE)
    text, fronts = front.subn("127.0.0.1:{smtpd_port} inet n - n - 20 smtpd", text)
    reinject = "127.0.0.1:{downstream_port} inet n - n - - smtpd"
    if downstream_options:
        reinject += "\n" + render_options(downstream_options)
    text, afters = after.subn(lambda _: reinject, text)
    text = text.replace(
        "smtpd_proxy_filter=127.0.0.1:10024", "smtpd_proxy_filter=127.0.0.1:{filter_port}"
    )
    if fronts != 1 or afters != 1 or "{filter_port}" not in text:
        raise AssertionError("master.cf.d/proxy.cf no longer has the expected service lines")
    return text


@dataclass
class Chain:
    postfix: Postfix
    proxy: RunningProxy


def start_proxy_for_chain(
    scanner: Any, downstream_port: int, policy: Policy | None = None, **settings: Any
) -> RunningProxy:
    proxy_settings = ProxySettings(
        listen="127.0.0.1:0",
        downstream=f"127.0.0.1:{downstream_port}",
        hostname="filterd.example.test",
        **settings,
    )
    return RunningProxy(Pipeline(policy or Policy(), scanner, hostname="-"), proxy_settings)


def start_chain(
    make_postfix: Any,
    clamd_address: str,
    policy: Policy | None = None,
    downstream_options: Mapping[str, str] | None = None,
    **settings: Any,
) -> Chain:
    """filterd first (its port goes into master.cf), then Postfix."""
    downstream_port = free_port()
    scanner = ClamdScanner(clamd_address)
    proxy = start_proxy_for_chain(scanner, downstream_port, policy, **settings)
    try:
        postfix = make_postfix(
            mode="proxy",
            services=snippet_services(downstream_options),
            filter_port=proxy.port,
            downstream_port=downstream_port,
        )
    except BaseException:
        proxy.close()
        raise
    return Chain(postfix, proxy)


def field_values(content: bytes, name: str) -> list[str]:
    """Values of header field `name`, unfolded (RFC 5322 §2.2.3).

    Not SinkMessage.header_values: that one appends a continuation line to the last wanted
    field even when the line belongs to another field in between (a Received: header).
    """
    head = content.partition(b"\r\n\r\n")[0]
    values: list[str] = []
    current: str | None = None
    for line in head.split(b"\r\n"):
        text = line.decode(errors="replace")
        if text[:1] in (" ", "\t"):
            if current is not None:
                values[-1] += " " + text.strip()
            continue
        key, _, value = text.partition(":")
        current = key.strip().lower() if key.strip().lower() == name.lower() else None
        if current is not None:
            values.append(value.strip())
    return values
