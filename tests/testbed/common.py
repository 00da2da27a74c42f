"""Helpers shared by the test bed: ports, private directories, bounded waits, availability.

Every process the test bed starts is registered here, so that one call (`stop_all`, run by the
root conftest at session finish and by `atexit`) can stop whatever a crashed test left behind.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, Protocol

import pytest

# AF_UNIX paths are limited to 108 bytes (unix(7)); clamd's socket lives in our temp dir.
_MAX_SOCKET_DIR = 80


class StartupError(RuntimeError):
    """A test bed program did not start, or did not become ready before its deadline."""


class Stoppable(Protocol):
    """Anything the test bed starts: it can be stopped twice without harm."""

    @property
    def name(self) -> str: ...

    def close(self) -> None: ...


_live: dict[int, Stoppable] = {}
_live_lock = threading.Lock()


def register(thing: Stoppable) -> None:
    with _live_lock:
        _live[id(thing)] = thing


def unregister(thing: Stoppable) -> None:
    with _live_lock:
        _live.pop(id(thing), None)


def stop_all() -> list[str]:
    """Close every registered program; returns the names of those that were still alive."""
    with _live_lock:
        things = list(_live.values())
    leftovers: list[str] = []
    for thing in reversed(things):
        # A safety net must try every item, so a failure is reported, not raised.
        try:
            thing.close()
        except Exception as exc:
            leftovers.append(f"{thing.name} (close failed: {exc!r})")
        else:
            leftovers.append(thing.name)
        unregister(thing)
    return leftovers


atexit.register(stop_all)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a bind race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def private_dir(prefix: str) -> Path:
    """A fresh temp dir that the postfix and clamav users can traverse (mkdtemp makes 0700)."""
    base = Path(tempfile.gettempdir())
    if len(str(base)) > _MAX_SOCKET_DIR:
        base = Path("/tmp")  # noqa: S108 - short path for AF_UNIX sockets
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    path.chmod(0o755)
    return path


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll `predicate` until it is true; raise StartupError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise StartupError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # proc(5): the state follows the parenthesised command name, which may contain spaces.
    state = stat.rpartition(")")[2].split()[0]
    return state not in {"Z", "X"}


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} is missing)"
    return "\n".join(text.splitlines()[-lines:])


# --- availability -----------------------------------------------------------------------------


def in_ci() -> bool:
    """CI must never skip silently: any non-empty CI value except an explicit false counts."""
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def unavailable(reason: str) -> NoReturn:
    """Skip the test outside CI; fail it in CI (a silently skipped integration suite is a lie)."""
    hint = " (run scripts/bootstrap to install it)"
    if in_ci():
        pytest.fail(f"test bed unavailable in CI: {reason}{hint}", pytrace=False)
    pytest.skip(f"test bed unavailable: {reason}{hint}")


def require_programs(*paths: str) -> None:
    missing = [p for p in paths if not os.access(p, os.X_OK)]
    if missing:
        unavailable("missing " + ", ".join(missing))


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        unavailable(f"{what} needs root (it runs master(8) and chowns data_directory)")


def read_log(path: Path) -> str:
    """A log file's text so far, or "" before the daemon has written one."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
