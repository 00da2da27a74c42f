"""bench/uvloop/compare.py reads the figures bench.proxy and bench.milter print
(bench/figures.py): a change of their wording must not leave it reading nothing."""

from __future__ import annotations

import pytest

from bench.figures import print_rates
from bench.uvloop import compare
from tests.tables import cases

# (id, the contender bench.X names, its rates, CPU seconds per message, the figures read)
PRINTED = [
    ("proxy", "filterd proxy", [46.1, 52.0, 40.0], [0.00423, 0.0039, 0.0041], ("4.10", "46.1")),
    ("milter", "filterd milter", [188.8], [0.00267], ("2.67", "188.8")),
]  # fmt: skip


@pytest.mark.parametrize(("name", "rates", "cpu", "want"), cases(PRINTED))
def test_reads_the_printed_figures(
    capsys: pytest.CaptureFixture[str],
    name: str,
    rates: list[float],
    cpu: list[float],
    want: tuple[str, str],
) -> None:
    print_rates({"plain": [300.0] * len(rates), name: rates}, cpu, filtered=name, plain="plain")
    text = capsys.readouterr().out
    found_cpu, found_rate = compare._CPU.search(text), compare._RATE.search(text)
    assert found_cpu is not None
    assert found_rate is not None
    assert (found_cpu.group(1), found_rate.group(1)) == want
