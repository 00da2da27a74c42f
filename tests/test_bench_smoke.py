"""The hostile-load and soak benches still run: tiny sizes, no timing judged.

bench/hostile.py prints figures, not a verdict, so this checks that it finishes and prints a
row per attack asked for. bench/soak.py must reconcile (exit 0) in both modes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.soak import Tally, message_id
from tests.testbed.common import require_programs, require_root

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


@pytest.mark.integration
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


@pytest.mark.integration
def test_soak_small_reconciles_in_both_modes() -> None:
    require_root("bench/soak.py")
    require_programs("/usr/sbin/clamd", "/usr/sbin/postfix")
    result = bench("bench.soak", "--messages", "20", "--sessions", "4", timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for mode in ("proxy", "milter"):
        assert f"{mode}: sent 20 " in result.stdout, result.stdout
    assert result.stdout.count("result: reconciled") == 2, result.stdout


def reconciled_tally() -> Tally:
    """Four messages: 0 and 1 accepted and delivered once, 2 (EICAR) and 3 refused."""
    tally = Tally("proxy", kinds={0: "clean", 1: "clean", 2: "eicar", 3: "oversize"})
    tally.accepted = {0, 1}
    tally.refused = {2: "550 5.7.1", 3: "452 4.3.4"}
    tally.delivered.update([message_id("proxy", 0), message_id("proxy", 1)])
    return tally


def lost(tally: Tally) -> None:
    tally.delivered.pop(message_id("proxy", 1))


def duplicated(tally: Tally) -> None:
    tally.delivered[message_id("proxy", 0)] += 1


def refused_but_delivered(tally: Tally) -> None:
    tally.delivered[message_id("proxy", 3)] += 1


def infected_delivered(tally: Tally) -> None:
    del tally.refused[2]
    tally.accepted.add(2)
    tally.delivered[message_id("proxy", 2)] += 1


def unanswered(tally: Tally) -> None:
    del tally.refused[3]
    tally.unanswered[3] = "TimeoutError"


def smuggled_delivered(tally: Tally) -> None:
    tally.delivered["<smuggled-proxy-1@example.test>"] += 1


@pytest.mark.parametrize(
    ("break_it", "want"),
    [
        pytest.param(lost, "accepted but never delivered", id="lost"),
        pytest.param(duplicated, "delivered more than once", id="duplicated"),
        pytest.param(refused_but_delivered, "delivered but not accepted", id="refused-delivered"),
        pytest.param(infected_delivered, "EICAR messages delivered", id="eicar-delivered"),
        pytest.param(unanswered, "unanswered", id="unanswered"),
        pytest.param(smuggled_delivered, "delivered but not accepted", id="smuggled-delivered"),
    ],
)
def test_soak_reconciliation_finds_each_mismatch(
    break_it: Callable[[Tally], None], want: str
) -> None:
    assert list(reconciled_tally().problems()) == []
    tally = reconciled_tally()
    break_it(tally)
    got = list(tally.problems())
    assert len(got) == 1, got
    assert want in got[0], got
