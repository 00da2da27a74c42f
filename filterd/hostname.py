"""The name filterd gives itself when the configuration leaves it empty.

Postfix's `myhostname` first (postconf(1) -h myhostname): the proxy's greeting and EHLO and
the X-Virus-Scanned header then carry the name the mail server already uses in its own
greeting and Received: lines. Without postconf (or without a main.cf, where postconf fails),
the fully qualified name of this host (socket.getfqdn()), not the bare OS name.
"""

from __future__ import annotations

import functools
import socket

from filterd.doctor.postconf import PostconfError, run


def postfix_myhostname(config_dir: str | None = None) -> str | None:
    """`myhostname` as postconf reports it (main.cf or this Postfix's default), or None."""
    try:
        name = run(["-h", "myhostname"], config_dir).strip()
    except PostconfError:
        return None
    return name or None


@functools.cache
def default_hostname(config_dir: str | None = None) -> str:
    """Asked once per process: postconf answers in milliseconds, but not once per message."""
    return postfix_myhostname(config_dir) or socket.getfqdn()
