"""The Milter's UNIX socket: what filterd replaces, what it refuses, what it removes.

Only a stale socket (connect refused: its process is gone) is replaced. A live socket, a
symlink or anything that is not a socket stops `filterd serve` with one line and exit status
2. On exit filterd removes the socket only if it is still the one it created.
"""

from __future__ import annotations

import grp
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from filterd.config import Config, MilterSettings
from filterd.endpoints.milter.endpoint import ListenError, MilterEndpoint
from filterd.testing import FakeScanner
from tests.endpoints.test_milter import (
    BODY,
    CLEAN,
    HEADERS,
    client_of,
    make_pipeline,
    running,
    summary,
)
from tests.tables import cases

# A process that listens on a UNIX socket, says so, and waits to be killed.
_LISTENER = """
import socket, sys, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.bind(sys.argv[1])
sock.listen()
print("ready", flush=True)
time.sleep(120)
"""


@contextmanager
def other_process_listening(path: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", _LISTENER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        yield process
    finally:
        process.kill()
        process.wait(10)


def connectable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def endpoint_for(path: Path) -> MilterEndpoint:
    config = Config(milter=MilterSettings(listen=f"unix:{path}"))
    return MilterEndpoint(config, make_pipeline(FakeScanner()))


async def test_a_stale_socket_left_by_a_killed_process_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "filterd.sock"
    with other_process_listening(path) as process:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert path.is_socket(), "the killed process left its socket behind"
    assert not connectable(path)
    async with running(listen=f"unix:{path}") as (endpoint, _), client_of(endpoint) as milter:
        got = await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
    assert summary(got) == CLEAN
    assert not path.exists(), "filterd removes its own socket on exit"


async def test_a_live_socket_of_another_process_is_refused_and_left_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "filterd.sock"
    with other_process_listening(path):
        endpoint = endpoint_for(path)
        with pytest.raises(ListenError) as refused:
            await endpoint.start()
        still_there = connectable(path)
    assert str(refused.value) == (
        f"milter.listen unix:{path} is in use by a running process (another filterd?);"
        " refusing to replace it"
    )
    assert still_there


# (id, how to make the path, the error's words)
NOT_SOCKETS = [
    ("regular-file", lambda p: p.write_text("data"), "exists and is not a socket"),
    ("directory", lambda p: p.mkdir(), "exists and is not a socket"),
    ("symlink-to-file", lambda p: (p.with_name("target").write_text("x"),
                                   p.symlink_to(p.with_name("target"))), "is a symlink"),
    ("dangling-symlink", lambda p: p.symlink_to(p.with_name("nowhere")), "is a symlink"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "words"), cases(NOT_SOCKETS))  # fmt: skip
async def test_anything_but_a_socket_is_refused_untouched(
    tmp_path: Path, make: object, words: str
) -> None:
    path = tmp_path / "filterd.sock"
    make(path)  # type: ignore[operator]
    before = os.lstat(path)
    endpoint = endpoint_for(path)
    with pytest.raises(ListenError, match=f"^milter.listen unix:{path} {words}"):
        await endpoint.start()
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


async def test_a_symlink_to_a_stale_socket_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(target))
    stale.close()
    path = tmp_path / "filterd.sock"
    path.symlink_to(target)
    with pytest.raises(ListenError, match="is a symlink"):
        await endpoint_for(path).start()
    assert path.is_symlink()
    assert target.is_socket()


async def test_on_exit_a_socket_that_is_no_longer_ours_is_left(tmp_path: Path) -> None:
    path = tmp_path / "filterd.sock"
    endpoint = endpoint_for(path)
    await endpoint.start()
    path.unlink()  # someone removed ours and another process listens there now
    with other_process_listening(path), capture_logs() as logs:
        await endpoint.close()
        survived = connectable(path)
    assert survived, "filterd deleted another process's socket"
    assert [x["event"] for x in logs if x["log_level"] == "warning"] == [
        "the milter socket was replaced by another; leaving it"
    ]


def other_group() -> grp.struct_group:
    """A group the socket can be given that differs from the process's own."""
    for group in grp.getgrall():
        if group.gr_gid != os.getegid() and (os.geteuid() == 0 or group.gr_gid in os.getgroups()):
            return group
    pytest.skip("no second group to give the socket")


async def test_unix_socket_gets_mode_and_group(tmp_path: Path) -> None:
    """socket_mode and socket_group are applied (read back from st_mode and st_gid, both
    different from what the process would get anyway), the socket serves, and close()
    removes it."""
    group = other_group()
    path = tmp_path / "filterd.sock"
    started = running(listen=f"unix:{path}", socket_group=group.gr_name, socket_mode="0620")
    async with started as (endpoint, _):
        info = path.stat()
        async with client_of(endpoint) as milter:
            got = await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
    assert info.st_gid == group.gr_gid, f"gid {info.st_gid}, want {group.gr_gid}"
    assert stat.S_IMODE(info.st_mode) == 0o620, oct(info.st_mode)
    assert summary(got) == CLEAN
    assert not path.exists(), "the socket is removed on close"


def serve(listen: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "filterd.cli", "serve", "--milter", listen,
               "--clamd", "tcp:127.0.0.1:9"]  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=root,
                          check=False)  # fmt: skip


@pytest.mark.parametrize("kind", ["live", "symlink"])
def test_filterd_serve_refuses_with_one_line_and_status_2(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "filterd.sock"
    if kind == "symlink":
        path.symlink_to(tmp_path / "elsewhere")
        result = serve(f"unix:{path}")
    else:
        with other_process_listening(path):
            result = serve(f"unix:{path}")
    assert result.returncode == 2, result.stderr
    # Log lines (JSON) may come first; the refusal is the last line, and the only plain one.
    plain = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    (line,) = plain
    assert line.startswith(f"filterd serve: milter.listen unix:{path} "), line
    assert "Traceback" not in result.stderr
