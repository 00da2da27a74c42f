"""Socket activation (sd_listen_fds(3)): the sockets systemd passes, matched by name.

Real sockets are placed at consecutive descriptors (dup2 onto a free range), the way the
service manager places them from descriptor 3; the environment is a dict of the test's own.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator

import pytest

from filterd.endpoints.activation import ActivationError, describe, passed_sockets
from tests.tables import cases

Maker = Callable[[], socket.socket]
FIRST = 900  # far above what pytest holds open


def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def unbound() -> socket.socket:
    return socket.socket()


def datagram() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def placed() -> Iterator[list[int]]:
    """Descriptors FIRST, FIRST+1, ... that the test fills; closed afterwards."""
    used: list[int] = []
    yield used
    for fd in used:
        with contextlib.suppress(OSError):  # closed already by the socket that took it
            os.close(fd)


def place(used: list[int], *socks: socket.socket) -> None:
    for offset, sock in enumerate(socks):
        os.dup2(sock.fileno(), FIRST + offset)
        used.append(FIRST + offset)
        sock.close()


def environ(count: int, names: str | None, pid: int | None = None) -> dict[str, str]:
    env = {"LISTEN_PID": str(os.getpid() if pid is None else pid), "LISTEN_FDS": str(count)}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    return env


def test_named_sockets_are_matched_and_the_variables_removed(placed: list[int]) -> None:
    first, second = listener(), listener()
    want = {"proxy": describe(first.getsockname()), "milter": describe(second.getsockname())}
    place(placed, first, second)
    env = environ(2, "proxy:milter")
    got = passed_sockets(env, first_fd=FIRST)
    assert {name: describe(sock.getsockname()) for name, sock in got.items()} == want
    assert env == {}, "LISTEN_* must not reach child processes"
    assert not os.get_inheritable(FIRST), "FD_CLOEXEC, as sd_listen_fds(3) sets it"
    for sock in got.values():
        sock.detach()


def test_variables_meant_for_another_process_are_left_alone() -> None:
    env = environ(1, "proxy", pid=os.getpid() + 1)
    assert passed_sockets(env, first_fd=FIRST) == {}
    assert "LISTEN_FDS" in env


def test_nothing_passed() -> None:
    assert passed_sockets({}, first_fd=FIRST) == {}


# (id, sockets to place, LISTEN_FDS, LISTEN_FDNAMES, words the one-line error must contain)
REFUSED = [
    ("no names", [listener], 1, None, "a socket named 'unknown' was passed"),
    ("unknown name", [listener], 1, "smtp", "named 'smtp'"),
    ("two proxies", [listener, listener], 2, "proxy:proxy", "two sockets named 'proxy'"),
    ("names do not match count", [listener], 1, "proxy:milter", "2 names for 1 sockets"),
    ("not listening", [unbound], 1, "proxy", "not a listening stream socket"),
    ("datagram", [datagram], 1, "milter", "ListenStream="),
]  # fmt: skip


@pytest.mark.parametrize(("makers", "count", "names", "want"), cases(REFUSED))
def test_unusable_sockets_are_one_line(
    placed: list[int],
    makers: list[Maker],
    count: int,
    names: str | None,
    want: str,
) -> None:
    place(placed, *(make() for make in makers))
    with pytest.raises(ActivationError) as caught:
        passed_sockets(environ(count, names), first_fd=FIRST)
    assert want in str(caught.value)
    assert "\n" not in str(caught.value)


DESCRIBED = [
    ("ipv4", ("127.0.0.1", 10024), "127.0.0.1:10024"),
    ("ipv6", ("::1", 10024, 0, 0), "[::1]:10024"),
    ("unix", "/run/filterd/milter.sock", "unix:/run/filterd/milter.sock"),
]


@pytest.mark.parametrize(("name", "want"), cases(DESCRIBED))
def test_describe(name: str | tuple[str, int], want: str) -> None:
    assert describe(name) == want
