"""The name filterd gives itself when the configuration leaves it empty.

Postfix's `myhostname` first (postconf(1) -h myhostname): the proxy's greeting and EHLO and
the X-Virus-Scanned header then carry the name the mail server already uses in its own
greeting and Received: lines. Without a main.cf (a Postfix installed with "No
configuration"), `postconf -h` fails but `postconf -d -h myhostname` still gives the name
this Postfix would use (its own default). Without postconf, the fully qualified name of this
host (socket.getfqdn()). `localhost` is never chosen (Debian's /etc/hosts makes getfqdn()
answer `localhost.localdomain` or `localhost` on many machines): the bare OS name
(socket.gethostname()) is then the last resort.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable

from filterd.doctor.postconf import PostconfError, run

NOT_A_NAME = frozenset({"", "localhost", "localhost.localdomain"})


def postfix_myhostname(config_dir: str | None = None, *, default: bool = False) -> str | None:
    """`myhostname` as postconf reports it from main.cf (`default`: this Postfix's own
    default, which needs no main.cf), or None."""
    args = ["-d", "-h", "myhostname"] if default else ["-h", "myhostname"]
    try:
        name = run(args, config_dir).strip()
    except PostconfError:
        return None
    return name or None


def choose(candidates: list[Callable[[], str | None]]) -> str:
    """The first candidate that is a real name (not localhost), else socket.gethostname()."""
    for candidate in candidates:
        name = candidate()
        if name is not None and name.lower().rstrip(".") not in NOT_A_NAME:
            return name
    return socket.gethostname()


@functools.cache
def default_hostname(config_dir: str | None = None) -> str:
    """Asked once per process: postconf answers in milliseconds, but not once per message."""
    return choose(
        [
            lambda: postfix_myhostname(config_dir),
            lambda: postfix_myhostname(config_dir, default=True),
            socket.getfqdn,
        ]
    )
