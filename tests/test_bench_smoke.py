"""The hostile-load and soak benches still run: tiny sizes, no timing judged.

bench/hostile.py prints figures, not a verdict, so this checks that it finishes and prints a
row per attack asked for. bench/soak.py must reconcile (exit 0) in both modes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.testbed.common import require_programs, require_root

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_hostile_small_runs_and_prints_a_row_per_attack() -> None:
    require_programs("/usr/sbin/clamd", "/usr/sbin/smtp-sink")
    attacks = ["slow-silent", "milter-flood"]
    result = bench(
        "bench.hostile", "--small", "--only", ",".join(attacks),
        "--seconds", "1", "--quiet-seconds", "1", timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    got = [row.split("|")[1].strip() for row in rows[1:]]
    assert got == attacks, result.stdout
    assert "goal (innocent max <= 1 s, no failure):" in result.stdout


def test_soak_small_reconciles_in_both_modes() -> None:
    require_root("bench/soak.py")
    require_programs("/usr/sbin/clamd", "/usr/sbin/postfix")
    result = bench("bench.soak", "--messages", "20", "--sessions", "4", timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for mode in ("proxy", "milter"):
        assert f"{mode}: sent 20 " in result.stdout, result.stdout
    assert result.stdout.count("result: reconciled") == 2, result.stdout
