"""Started as root, filterd gives up root after binding (`[server] user` / `group`); as
another user, the milter's `socket_group` works when that user is a member of the group.

Real processes: the identity is read from /proc/PID/status; a non-root start goes through
util-linux `setpriv`, the way `su`/systemd's User= would start it.
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tables import cases
from tests.test_app_process import ROOT, error_lines, serving

CLAMD = "tcp:127.0.0.1:1"
SERVE = [sys.executable, "-m", "filterd.cli", "serve"]
SETPRIV = shutil.which("setpriv")
NOBODY = 65534
POSTFIX = "postfix"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change identity")


def has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may use (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="filterd-priv-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def identity(pid: int) -> dict[str, list[int]]:
    """Uid, Gid and Groups of a process: proc(5) /proc/PID/status."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"Uid", "Gid", "Groups"}:
            found[key] = [int(word) for word in value.split()]
    return found


def config(path: Path, server: str = "", milter: str = "") -> Path:
    cfg = path / "filterd.toml"
    cfg.write_text(f'[log]\nformat = "json"\n[server]\n{server}\n[milter]\n{milter}\n')
    cfg.chmod(0o644)
    return cfg


def as_nobody(*groups: str) -> list[str]:
    assert SETPRIV is not None
    extra = [f"--groups={','.join(groups)}"] if groups else ["--clear-groups"]
    return [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", *extra, *SERVE]


@pytest.fixture(scope="module")
def nobody_runs_filterd() -> None:
    """Skip unless uid 65534 can import filterd from this checkout: under a directory only
    root may enter (/root, `mktemp -d`) it cannot, whatever filterd does."""
    assert SETPRIV is not None
    probe = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             sys.executable, "-c", "import filterd.cli"]  # fmt: skip
    got = run(probe)
    if got.returncode != 0:
        pytest.skip(f"uid {NOBODY} cannot read the checkout at {ROOT}: clone it where every "
                    f"user may read it to run this ({got.stderr.strip()[-200:]})")  # fmt: skip


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, check=False, cwd=ROOT
    )


def test_root_drops_to_the_configured_user(shared_dir: Path) -> None:
    cfg = config(shared_dir, 'user = "nobody"')
    with serving(shared_dir, "--config", str(cfg), "--proxy", "127.0.0.1:0",
                 "--clamd", CLAMD) as served:  # fmt: skip
        events = served.wait_for("started")
        got = identity(served.process.pid)
        assert served.stop() == 0
    assert got["Uid"] == [NOBODY] * 4, "real, effective, saved and filesystem uid"
    assert got["Gid"] == [NOBODY] * 4
    assert got["Groups"] == [NOBODY], "initgroups(nobody): no supplementary group of root's"
    (line,) = [e for e in events if e["event"] == "running as"]
    assert (line["user"], line["uid"]) == ("nobody", NOBODY)


@pytest.mark.skipif(not has_group(POSTFIX), reason="no postfix group")
def test_root_drops_to_the_configured_group(shared_dir: Path) -> None:
    cfg = config(shared_dir, f'user = "nobody"\ngroup = "{POSTFIX}"')
    with serving(shared_dir, "--config", str(cfg), "--proxy", "127.0.0.1:0",
                 "--clamd", CLAMD) as served:  # fmt: skip
        served.wait_for("started")
        got = identity(served.process.pid)
        assert served.stop() == 0
    assert got["Gid"] == [grp.getgrnam(POSTFIX).gr_gid] * 4


# (id, [server] keys, the one line of the refusal)
REFUSED = [
    ("no such user", 'user = "no-such-filterd-user"',
     "server.user: no user 'no-such-filterd-user' on this system"),
    ("no such group", 'user = "nobody"\ngroup = "no-such-filterd-group"',
     "server.group: no group 'no-such-filterd-group' on this system"),
    ("group alone", 'group = "nogroup"', "server.group: 'nogroup' is given without server.user"),
]  # fmt: skip


@pytest.mark.parametrize(("keys", "want"), cases(REFUSED))
def test_a_user_that_cannot_be_taken_is_one_line(shared_dir: Path, keys: str, want: str) -> None:
    got = run([*SERVE, "--config", str(config(shared_dir, keys)), "--proxy", "127.0.0.1:0",
               "--clamd", CLAMD])  # fmt: skip
    assert got.returncode == 2, got.stderr
    (line,) = error_lines(got.stderr)
    assert want in line, line


@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")
@pytest.mark.usefixtures("nobody_runs_filterd")
def test_not_root_and_another_user_configured_is_one_line(shared_dir: Path) -> None:
    cfg = config(shared_dir, 'user = "root"')
    got = run([*as_nobody(), "--config", str(cfg), "--proxy", "127.0.0.1:0", "--clamd", CLAMD])
    assert got.returncode == 2, got.stderr
    (line,) = error_lines(got.stderr)
    assert "server.user: filterd runs as uid 65534, not root, and cannot become 'root'" in line
    assert "Traceback" not in got.stderr


@pytest.mark.skipif(SETPRIV is None or not has_group(POSTFIX), reason="setpriv, postfix group")
@pytest.mark.usefixtures("nobody_runs_filterd")
def test_socket_group_as_a_member_of_it(shared_dir: Path) -> None:
    sock = shared_dir / "milter.sock"
    cfg = config(shared_dir, milter=f'listen = "unix:{sock}"\nsocket_group = "{POSTFIX}"')
    with serving(shared_dir, "--config", str(cfg), "--clamd", CLAMD,
                 wrapper=as_nobody(POSTFIX)) as served:  # fmt: skip
        served.wait_for("started")
        owner = sock.stat()
        assert served.stop() == 0
    assert (owner.st_uid, owner.st_gid) == (NOBODY, grp.getgrnam(POSTFIX).gr_gid)
    assert owner.st_mode & 0o777 == 0o660


@pytest.mark.skipif(SETPRIV is None or not has_group(POSTFIX), reason="setpriv, postfix group")
@pytest.mark.usefixtures("nobody_runs_filterd")
def test_socket_group_of_a_non_member_is_one_line(shared_dir: Path) -> None:
    sock = shared_dir / "milter.sock"
    cfg = config(shared_dir, milter=f'listen = "unix:{sock}"\nsocket_group = "{POSTFIX}"')
    got = run([*as_nobody(), "--config", str(cfg), "--clamd", CLAMD])
    assert got.returncode == 2, got.stderr
    (line,) = error_lines(got.stderr)
    assert line == (
        f"filterd serve: milter.socket_group: 'nobody' is not a member of group '{POSTFIX}', "
        f"so it cannot give it the socket; add it (adduser nobody {POSTFIX}) or start filterd "
        "as root"
    )
    assert not sock.exists(), "no socket Postfix could not use is left behind"
