"""`filterd scan` against the real clamd: what an administrator sees for each file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from filterd.testing import eicar
from tests.tables import cases
from tests.testbed.clamd import EICAR_NAME, SECOND_NAME, Clamd, second_sample_bytes

pytestmark = pytest.mark.integration  # needs the test bed's clamd

HEAD = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: t\r\n\r\n"


def filterd_scan(clamd_address: str, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    command = [sys.executable, "-m", "filterd.cli", "scan", "--clamd", clamd_address, *args]
    done = subprocess.run(command, input=stdin, capture_output=True, timeout=60, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


# (id, file content, want exit status, want text in the verdict line)
CASES = [
    ("clean", HEAD + b"hello\r\n", 0, "ACCEPT 250 2.0.0 Ok"),
    ("clean-unix-line-ends", HEAD.replace(b"\r\n", b"\n") + b"hello\n", 0, "ACCEPT 250 2.0.0 Ok"),
    ("eicar", HEAD + eicar() + b"\r\n", 1, f"REJECT 550 5.7.1 Virus found: {EICAR_NAME}"),
    ("second-signature", HEAD + second_sample_bytes() + b"\r\n", 1,
     f"REJECT 550 5.7.1 Virus found: {SECOND_NAME}"),
    ("smuggling", HEAD + b"hi\n.\r\nmail FROM:<s@x>\r\nrcpt TO:<b@x>\r\ndata\r\nz\r\n", 1,
     ("REJECT 550 5.5.2 Error: non-standard end-of-data sequence (SMTP smuggling) "
      "(findings: bare_lf, fake_end_of_data, smuggled_command)")),
]  # fmt: skip


@pytest.mark.parametrize(("content", "status", "want"), cases(CASES))
def test_verdict_per_file(
    clamd: Clamd, tmp_path: Path, content: bytes, status: int, want: str
) -> None:
    path = tmp_path / "message.eml"
    path.write_bytes(content)
    got_status, out, err = filterd_scan(clamd.address, str(path))
    assert out == f"{path}: {want}\n", f"got {out!r} (stderr {err!r})"
    assert got_status == status


def test_several_files_and_stdin(clamd: Clamd, tmp_path: Path) -> None:
    clean = tmp_path / "clean.eml"
    clean.write_bytes(HEAD + b"hello\r\n")
    status, out, _ = filterd_scan(clamd.tcp_address, str(clean), "-", stdin=HEAD + eicar())
    lines = out.splitlines()
    assert lines[0] == f"{clean}: ACCEPT 250 2.0.0 Ok"
    assert lines[1].startswith("-: REJECT 550 5.7.1 Virus found: ")
    assert status == 1


def test_clamd_stopped_is_a_tempfail(clamd_stopped: Clamd, tmp_path: Path) -> None:
    path = tmp_path / "clean.eml"
    path.write_bytes(HEAD + b"hello\r\n")
    status, out, _ = filterd_scan(clamd_stopped.address, str(path))
    assert "TEMPFAIL 451 4.7.1" in out, out
    assert status == 1


def test_unreadable_file_is_a_usage_error(clamd: Clamd, tmp_path: Path) -> None:
    status, out, err = filterd_scan(clamd.address, str(tmp_path / "missing.eml"))
    assert status == 2
    assert "cannot read" in err
    assert out == ""
