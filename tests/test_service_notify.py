"""sd_notify(3): what filterd tells the service manager, received on a private socket."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from filterd.notify import Notifier, socket_address
from tests.tables import cases


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's notification socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_carries_the_status(manager: socket.socket) -> None:
    Notifier({"NOTIFY_SOCKET": manager.getsockname()}).ready("serving proxy on 127.0.0.1:1")
    assert received(manager) == ["READY=1", "STATUS=serving proxy on 127.0.0.1:1"]


def test_reloading_carries_the_monotonic_time(manager: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier({"NOTIFY_SOCKET": manager.getsockname()}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = received(manager)
    assert lines[0] == "RELOADING=1"
    key, _, usec = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after  # systemd 253+ compares it with its own clock


def test_stopping(manager: socket.socket) -> None:
    Notifier({"NOTIFY_SOCKET": manager.getsockname()}).stopping()
    assert received(manager)[0] == "STOPPING=1"


def test_abstract_socket() -> None:
    name = f"filterd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("x")
        assert received(sock)[0] == "READY=1"


ADDRESSES = [
    ("path", "/run/systemd/notify", "/run/systemd/notify"),
    ("abstract", "@/org/freedesktop/systemd1/notify/1", "\0/org/freedesktop/systemd1/notify/1"),
    ("vsock", "vsock:2:1234", None),
    ("relative", "notify", None),
]


@pytest.mark.parametrize(("text", "want"), cases(ADDRESSES))
def test_socket_address(text: str, want: str | None) -> None:
    assert socket_address(text) == want


def test_without_a_service_manager_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert notifier.address is None
    notifier.ready("x")  # does nothing, raises nothing


def test_a_failed_send_is_one_warning(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with capture_logs() as logs:
        notifier.ready("x")
        notifier.stopping()
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("warning", "cannot notify the service manager")
    ]
