"""docs/tutorials/first-trial.md: its `# step:` blocks run as written, against real programs.

The blocks are taken from the page itself, so the page cannot drift from what is tested.
What the test changes, and why: TRIAL is a private directory (the page's default is
/srv/filterd-trial), /etc/postfix is a private copy (postconf reads MAIL_CONFIG), and the
ports 10026 and 25 are free ports, because other tests run at the same time. The Postfix
that receives the `send` step is the test bed's, built with the milter settings of
master.cf.d/milter.cf's first line.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import accepts
from tests.testbed.clamd import CLAMD
from tests.testbed.common import free_port, private_dir, remove_dir, wait_until
from tests.testbed.postfix import POSTCONF, PostfixFactory

pytestmark = pytest.mark.integration

PAGE = Path(__file__).parent.parent.parent / "docs" / "tutorials" / "first-trial.md"
_BLOCK = re.compile(r"^```sh\n# step: (\S+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
SIGNATURE = "Trial.EICAR.UNOFFICIAL"


def steps() -> dict[str, str]:
    return {match[1]: match[2] for match in _BLOCK.finditer(PAGE.read_text())}


def environment(trial: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # .venv/bin: `filterd` as the page runs it
    return {**os.environ, "TRIAL": str(trial), "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def bash(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, text=True,
                          capture_output=True, timeout=60, check=False)  # fmt: skip


def background(script: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(["bash", "-c", f"exec {script.strip()}"], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    _, err = process.communicate(timeout=15)
    return err


@pytest.fixture(scope="module")
def trial() -> Iterator[Path]:
    directory = private_dir("filterd-trial-")
    try:
        yield directory
    finally:
        remove_dir(directory)


@pytest.fixture(scope="module")
def clamd_of_the_page(trial: Path) -> Iterator[Path]:
    """The `signatures` step, then the `clamd` step running in the background."""
    if not Path(CLAMD).exists():
        pytest.skip("clamd is not installed")
    env = environment(trial)
    done = bash(steps()["signatures"], env)
    assert done.returncode == 0, done.stderr
    assert "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f" in done.stdout
    process = background(steps()["clamd"], env)
    socket_path = trial / "clamd.ctl"
    try:
        wait_until(
            lambda: pong(socket_path), timeout=30, what="the tutorial's clamd", interval=0.05
        )
        yield socket_path
    finally:
        stop(process)


def pong(path: Path) -> bool:
    """clamd answers zPING with PONG (clamd's documented command set)."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(str(path))
            sock.sendall(b"zPING\0")
            return sock.recv(16).startswith(b"PONG")
    except OSError:
        return False


def test_the_page_has_the_tested_steps() -> None:
    assert set(steps()) == {"main-cf", "signatures", "clamd", "scan", "serve", "send"}


def test_scan_step_refuses_eicar_with_the_hand_written_signature(
    trial: Path, clamd_of_the_page: Path
) -> None:
    done = bash(steps()["scan"], environment(trial))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{trial}/clean.eml: ACCEPT 250 2.0.0 Ok",
        f"{trial}/eicar.eml: REJECT 550 5.7.1 Virus found: {SIGNATURE}",
    ]


def test_main_cf_step_makes_a_postfix_configuration(tmp_path: Path) -> None:
    """No main.cf ("No configuration"): the page's commands make one postconf can read."""
    script = steps()["main-cf"].replace("/etc/postfix/", f"{tmp_path}/")
    env = {**os.environ, "MAIL_CONFIG": str(tmp_path)}
    done = bash(script, env)
    assert done.returncode == 0, done.stderr
    shown = subprocess.run([POSTCONF, "-c", str(tmp_path), "-n"], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    for line in ("myhostname = mx.example.test", "inet_interfaces = loopback-only",
                 "mydestination = $myhostname, localhost", "mynetworks = 127.0.0.0/8",
                 "maillog_file = /var/log/postfix.log", "compatibility_level = 3.6"):  # fmt: skip
        assert line in shown.splitlines(), shown


def test_serve_and_send_steps_refuse_eicar_in_the_session(
    trial: Path, clamd_of_the_page: Path, make_postfix: PostfixFactory
) -> None:
    milter_port = free_port()
    env = environment(trial)
    serve = background(steps()["serve"].replace("10026", str(milter_port)), env)
    try:
        wait_until(lambda: accepts("127.0.0.1", milter_port, timeout=1), timeout=30,
                   what="the tutorial's filterd", interval=0.05)  # fmt: skip
        postfix = make_postfix("milter", milter=f"inet:127.0.0.1:{milter_port}")
        script = steps()["send"].replace('"127.0.0.1", 25', f'"127.0.0.1", {postfix.smtpd_port}')
        done = bash(script, env)
    finally:
        err = stop(serve)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "clean accepted",
        f"eicar refused: 550 5.7.1 Virus found: {SIGNATURE}",
    ], err
    assert serve.returncode == 0, err
