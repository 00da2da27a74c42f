"""Fixed aiosmtpd versions from PyPI, each in its own virtual environment, served as programs.

The harness's verdicts are checked against a vulnerable and a fixed release (aiosmtpd 1.4.4
ends DATA on `<LF>.<CR><LF>`, CVE-2024-27305; 1.4.6 does not), whatever version the project
itself pins. Each environment is built once under `.cache/aiosmtpd-VERSION/` in the repository
(listed in .gitignore) with `python -m venv` and pip, and reused while its marker file says it
is complete. When PyPI cannot be reached the tests skip, except under CI, where they fail
(tests/testbed/common.py `unavailable`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.testbed.common import free_port, unavailable

REPOSITORY = Path(__file__).resolve().parents[2]
CACHE = REPOSITORY / ".cache"
SERVE = Path(__file__).with_name("aiosmtpd_serve.py")
MARKER = "filterd-complete"  # written last: the environment holds the version it is named for
INSTALL_TIMEOUT = 300.0
START_TIMEOUT = 15.0


def _run(args: list[str], what: str) -> None:
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        unavailable(f"{what}: no answer in {INSTALL_TIMEOUT:g} s (is PyPI reachable?)")
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        unavailable(f"{what} failed (is PyPI reachable?):\n{tail}")


def environment(version: str) -> Path:
    """The interpreter of a virtual environment holding exactly aiosmtpd==version."""
    home = CACHE / f"aiosmtpd-{version}"
    python = home / "bin" / "python"
    if (home / MARKER).is_file() and python.exists():
        return python
    shutil.rmtree(home, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(home)], f"python -m venv {home}")
    _run(
        [str(python), "-m", "pip", "install", "--quiet", f"aiosmtpd=={version}"],
        f"pip install aiosmtpd=={version}",
    )
    (home / MARKER).write_text(version + "\n")
    return python


@dataclass
class Server:
    """One aiosmtpd program on a free loopback port; stop() ends it."""

    python: Path
    mode: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.process = subprocess.Popen(
            [str(self.python), str(SERVE), self.mode, str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            error = self.stop()
            raise RuntimeError(f"aiosmtpd {self.mode} did not start: {line!r} {error}")
        return self

    def stop(self) -> str:
        """Close its stdin (it stops its controller and exits); kill it if it does not."""
        if self.process is None:
            return ""
        process, self.process = self.process, None
        try:
            _, error = process.communicate(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            _, error = process.communicate()
        return error
