"""The hostile-load and soak benches still run: tiny sizes, no timing judged.

bench/hostile.py prints figures, not a verdict, so this checks that it finishes and prints a
row per attack asked for. bench/soak.py must reconcile (exit 0) in both modes, and so must
`bench.peers --quick`, with a row per contender that is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from _pytest.mark import ParameterSet

from bench.peers.goals import Need, bound, ceiling, needed_filter_cpu
from bench.peers.measure import (
    TICKS,
    Delivery,
    Sent,
    cpu_seconds,
    idle_seconds,
    problems,
    refusals,
)
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


Breaker = Callable[..., None]
# (bench, how a run of it is broken, the one problem it must report), one per broken run
BROKEN: list[ParameterSet] = []


def breaks(bench: str, want: str) -> Callable[[Breaker], Breaker]:
    """Register a function that breaks a reconciled run of `bench` in the way `want` names."""

    def register(break_it: Breaker) -> Breaker:
        BROKEN.append(pytest.param(bench, break_it, want, id=f"{bench}-{break_it.__name__}"))
        return break_it

    return register


def reconciled_tally() -> Tally:
    """Four messages: 0 and 1 accepted and delivered once, 2 (EICAR) and 3 refused."""
    tally = Tally("proxy", kinds={0: "clean", 1: "clean", 2: "eicar", 3: "oversize"})
    tally.accepted = {0, 1}
    tally.refused = {2: "550 5.7.1", 3: "452 4.3.4"}
    tally.delivered.update([message_id("proxy", 0), message_id("proxy", 1)])
    return tally


@breaks("soak", "accepted but never delivered")
def lost(tally: Tally) -> None:
    tally.delivered.pop(message_id("proxy", 1))


@breaks("soak", "delivered more than once")
def duplicated(tally: Tally) -> None:
    tally.delivered[message_id("proxy", 0)] += 1


@breaks("soak", "delivered but not accepted")
def refused_but_delivered(tally: Tally) -> None:
    tally.delivered[message_id("proxy", 3)] += 1


@breaks("soak", "EICAR messages delivered")
def infected_delivered(tally: Tally) -> None:
    del tally.refused[2]
    tally.accepted.add(2)
    tally.delivered[message_id("proxy", 2)] += 1


@breaks("soak", "unanswered")
def unanswered(tally: Tally) -> None:
    del tally.refused[3]
    tally.unanswered[3] = "TimeoutError"


@breaks("soak", "delivered but not accepted")
def smuggled_delivered(tally: Tally) -> None:
    tally.delivered["<smuggled-proxy-1@example.test>"] += 1


def soak_problems(break_it: Callable[[Tally], None]) -> list[str]:
    tally = reconciled_tally()
    break_it(tally)
    return list(tally.problems())


# --- bench/peers ------------------------------------------------------------------------------

PEER_PROGRAMS = {
    "clamsmtpd": "/usr/sbin/clamsmtpd",
    "clamav-milter": "/usr/sbin/clamav-milter",
}


@pytest.mark.integration
def test_peers_quick_reconciles_and_prints_every_contender() -> None:
    require_root("bench/peers")
    require_programs("/usr/sbin/clamd", "/usr/sbin/postfix", "/usr/sbin/smtp-sink")
    result = bench("bench.peers", "--quick", timeout=150)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    want = ["plain Postfix", "filterd proxy", "filterd milter"]
    want += [name for name, path in PEER_PROGRAMS.items() if os.access(path, os.X_OK)]
    for shape in ("10 KB, C=10", "1 MB, C=10", "10 KB, C=50"):
        table = result.stdout.split(f"### {shape}:", 1)[1].split("###", 1)[0]
        rows = [line for line in table.splitlines() if line.startswith("|")][2:]
        got = [row.split("|")[1].strip() for row in rows]
        assert sorted(got) == sorted(want), table
    # Every filter met the EICAR message: refused, or (clamsmtpd) dropped, never delivered.
    for name in want[1:]:
        assert f"EICAR via {name}: " in result.stdout, result.stdout
    assert "| filterd proxy / plain Postfix |" in result.stdout
    assert "### What each goal needs, on " in result.stdout
    assert "| 10 KB, C=10 | filterd milter >= 2.0x clamav-milter |" in result.stdout or (
        not os.access(PEER_PROGRAMS["clamav-milter"], os.X_OK)
    )
    assert "reconciled: yes, nothing lost or duplicated" in result.stdout


MAILLOG = """\
Dec 01 23:16:49 testbed postfix/qmgr[9]: AAA1: from=<sender@example.test>, size=10527, nrcpt=1 (queue active)
Dec 01 23:16:49 testbed postfix/smtp[7]: AAA1: to=<someone@example.test>, relay=127.0.0.1[127.0.0.1]:35667, delay=0.05, delays=0.05/0/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)
Dec 01 23:16:49 testbed postfix/qmgr[9]: AAA1: removed
Dec 01 23:16:49 testbed postfix/qmgr[9]: BBB2: from=<sender@example.test>, size=10527, nrcpt=1 (queue active)
Dec 01 23:16:49 testbed postfix/smtp[7]: BBB2: to=<someone@example.test>, relay=127.0.0.1[127.0.0.1]:35667, delay=0.05, delays=0.05/0/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)
Dec 01 23:16:49 testbed postfix/qmgr[9]: BBB2: removed
Dec 01 23:16:49 testbed postfix/peers-clamsmtpd/smtpd[5]: disconnect from localhost[127.0.0.1] helo=1 mail=1 rcpt=1 data=1 quit=1 commands=5
Dec 01 23:16:49 testbed postfix/peers-clamsmtpd/smtpd[5]: disconnect from localhost[127.0.0.1] helo=1 mail=1 rcpt=1 data=1 quit=1 commands=5
Dec 01 23:16:49 testbed postfix/peers-clamsmtpd/smtpd[6]: disconnect from localhost[127.0.0.1] helo=1 mail=1 rcpt=0/1 rset=1 quit=1 commands=4/5
Dec 01 23:16:49 testbed postfix/peers-plain/smtpd[8]: disconnect from localhost[127.0.0.1] helo=1 mail=1 rcpt=1 data=1 quit=1 commands=5
"""  # noqa: E501 (real maillog lines)


def test_peers_maillog_parse_counts_sessions_queued_sent_removed() -> None:
    got = Delivery.parse(MAILLOG, received=2, front="clamsmtpd")
    assert (got.sessions, got.accepted, dict(got.refused_at)) == (3, 2, {"RCPT": 1})
    assert (got.queued, dict(got.sent), got.removed) == (
        {"AAA1", "BBB2"},
        {"AAA1": 1, "BBB2": 1},
        {"AAA1", "BBB2"},
    )
    assert got.settled(messages=3)
    assert not got.settled(messages=4)  # a session not logged yet
    assert not Delivery.parse(MAILLOG, received=1, front="clamsmtpd").settled(messages=3)


WARNINGS = """\
Dec 02 02:13:07 testbed postfix/peers-filterd-proxy/smtpd[28485]: warning: proxy 127.0.0.1:45757 rejected "connection request": "421 4.7.0 Error: too many connections"
Dec 02 02:13:07 testbed postfix/peers-filterd-proxy/smtpd[28488]: warning: proxy 127.0.0.1:45757 rejected "connection request": "421 4.7.0 Error: too many connections"
Dec 02 02:12:51 testbed postfix/peers-clamsmtpd/smtpd[23570]: warning: timeout talking to proxy 127.0.0.1:34089
Dec 02 02:12:51 testbed postfix/reinject/smtpd[23571]: warning: timeout talking to proxy 127.0.0.1:34089
"""  # noqa: E501 (real maillog lines)


@pytest.mark.parametrize(
    ("front", "want"),
    [
        pytest.param(
            "filterd-proxy",
            {'proxy rejected "connection request": "421 4.7.0 Error: too many connections"': 2},
            id="proxy-421-address-cut",
        ),
        pytest.param("clamsmtpd", {"timeout talking to proxy": 1}, id="timeout-own-front-only"),
        pytest.param("plain", {}, id="none"),
    ],
)
def test_peers_front_warnings_say_who_refused(front: str, want: dict[str, int]) -> None:
    got = Delivery.parse(WARNINGS, received=0, front=front).warnings
    assert dict(got) == want


def test_peers_refusals_are_counted_by_reply_code() -> None:
    stderr = (
        "smtp-source: warning: data rejected: 451 4.3.0 Error: queue file write error\n"
        "smtp-source: warning: data rejected: 451 4.3.0 Error: queue file write error\n"
        "smtp-source: warning: recipient rejected: 554 5.7.1 Service unavailable\n"
    )
    assert refusals(stderr) == Counter({"451 4.3.0": 2, "554 5.7.1": 1})
    assert refusals("") == Counter()


def reconciled_run() -> tuple[Sent, Delivery]:
    """Three sessions, one refused at RCPT, two queued, delivered once each, both received."""
    sent = Sent(1.0, Counter(), 0, "")
    return sent, Delivery.parse(MAILLOG, received=2, front="clamsmtpd")


@breaks("peers", "accepted 3, Postfix queued 2")
def accepted_not_queued(sent: Sent, delivery: Delivery) -> None:
    delivery.accepted = 3  # the client got 250 three times (clamsmtpd's "drop" would do this)


@breaks("peers", "sent 3, the front smtpd logged 2")
def session_missing(sent: Sent, delivery: Delivery) -> None:
    delivery.sessions = 2


@breaks("peers", "queued but never delivered")
def queued_not_delivered(sent: Sent, delivery: Delivery) -> None:
    del delivery.sent["BBB2"]
    delivery.received = 1


@breaks("peers", "delivered more than once")
def delivered_twice(sent: Sent, delivery: Delivery) -> None:
    delivery.sent["AAA1"] += 1
    delivery.received = 3


@breaks("peers", "smtp-sink received 1, Postfix delivered 2")
def sink_missed_one(sent: Sent, delivery: Delivery) -> None:
    delivery.received = 1


@breaks("peers", "smtp-source exited 1")
def source_failed(sent: Sent, delivery: Delivery) -> None:
    sent.returncode = 1
    sent.error = "smtp-source: fatal: connect: Connection refused"


def peers_problems(break_it: Callable[[Sent, Delivery], None]) -> list[str]:
    sent, delivery = reconciled_run()
    break_it(sent, delivery)
    return problems(3, sent, delivery)


RECONCILERS: dict[str, Callable[[Breaker], list[str]]] = {
    "soak": soak_problems,
    "peers": peers_problems,
}


@pytest.mark.parametrize(("bench_name", "break_it", "want"), BROKEN)
def test_reconciliation_finds_each_mismatch(bench_name: str, break_it: Breaker, want: str) -> None:
    reconcile = RECONCILERS[bench_name]
    assert reconcile(lambda *_: None) == []
    got = reconcile(break_it)
    assert len(got) == 1, got
    assert want in got[0], got


def test_peers_cpu_seconds_counts_a_living_child() -> None:
    burn = "import time\nwhile time.process_time() < 0.3: pass\ntime.sleep(30)\n"
    before = cpu_seconds([os.getpid()])
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        deadline = time.monotonic() + 20
        while cpu_seconds([child.pid]) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cpu_seconds([os.getpid()]) - before >= 0.3
    finally:
        child.kill()
        child.wait()


def need(
    cores: int, others: float, goal: float, rate: float, filter_cpu: float, *, machine: float = 1.0
) -> Need:
    """A goal of `goal` msg/s; others' and filterd's CPU in seconds per message; the bench's
    programs kept 1 core busy, the whole machine `machine`."""
    return Need("g", goal, rate, filter_cpu, others, cores, cores_used=1.0, machine_used=machine)


# need(cores, others' CPU s/msg, goal msg/s, filterd msg/s, filterd CPU s/msg), needed, verdict
NEEDS = [
    pytest.param(need(2, 0.008, 100.0, 60.0, 0.004), 0.012,
                 "CPU would allow it: the limit is latency", id="cheap-enough-latency"),
    pytest.param(need(2, 0.008, 160.0, 60.0, 0.008), 0.0045, "filter CPU 1.8x too high",
                 id="filter-too-dear"),
    pytest.param(need(2, 0.008, 300.0, 60.0, 0.004), -0.00133,
                 "out of reach for any filter on 2 cores", id="others-alone-too-dear"),
    pytest.param(need(2, 0.008, 250.0, 60.0, 0.001), 0.0,
                 "out of reach for any filter on 2 cores", id="exactly-the-ceiling"),
    pytest.param(need(4, 0.008, 300.0, 60.0, 0.004), 0.00533,
                 "CPU would allow it: the limit is latency", id="more-cores"),
    pytest.param(need(2, 0.008, 100.0, 60.0, 0.004, machine=1.9), 0.012,
                 "CPU would allow it on an idle machine: other load took the cores",
                 id="cheap-enough-machine-busy"),
    pytest.param(need(2, 0.008, 300.0, 60.0, 0.004, machine=1.9), -0.00133,
                 "out of reach for any filter on 2 cores", id="out-of-reach-whatever-the-load"),
    pytest.param(need(2, 0.008, 100.0, 120.0, 0.02), 0.012, "met", id="met-whatever-the-cpu"),
]  # fmt: skip


@pytest.mark.parametrize(("got", "want_needed", "want_verdict"), NEEDS)
def test_peers_what_a_goal_needs(got: Need, want_needed: float, want_verdict: str) -> None:
    assert got.needed == pytest.approx(want_needed, abs=1e-5)
    assert got.verdict() == want_verdict
    assert needed_filter_cpu(got.cores, got.goal_rate, got.others) == got.needed


@pytest.mark.parametrize(
    ("cores", "others", "want"),
    [
        pytest.param(2, 0.004, 500.0, id="two-cores"),
        pytest.param(1, 0.004, 250.0, id="one-core"),
        pytest.param(2, 0.0, float("inf"), id="nothing-measured"),
    ],
)
def test_peers_ceiling(cores: int, others: float, want: float) -> None:
    assert ceiling(cores, others) == pytest.approx(want)


@pytest.mark.parametrize(
    ("used", "machine", "cores", "want"),
    [
        pytest.param(1.95, 1.95, 2, "CPU", id="saturated"),
        pytest.param(1.8, 1.8, 2, "CPU", id="at-the-threshold"),
        pytest.param(1.2, 1.3, 2, "latency", id="one-core-idle-half"),
        pytest.param(1.2, 1.2, 1, "CPU", id="one-core"),
        pytest.param(0.5, 1.9, 2, "CPU, shared", id="other-load-took-the-rest"),
        pytest.param(0.5, None, 2, "latency", id="machine-not-measured"),
    ],
)
def test_peers_bound(used: float, machine: float | None, cores: int, want: str) -> None:
    assert bound(used, cores, machine) == want


STAT = """\
cpu  300 0 150 3000 60 0 15 45 0 0
cpu0 100 0 50 1000 30 0 5 15 0 0
cpu1 100 0 50 1200 0 0 5 15 40 0
cpu2 100 0 50 800
intr 5 6 7
"""


# A cpuN line: user nice system idle iowait irq softirq steal guest guest_nice (proc(5)).
@pytest.mark.parametrize(
    ("cpus", "want_ticks"),
    [
        pytest.param({0}, 1030, id="idle-and-iowait"),
        pytest.param({0, 1}, 2230, id="two-cores-summed"),
        pytest.param({2}, 800, id="old-kernel-four-columns"),
        pytest.param({1, 7}, 1200, id="a-core-not-listed"),
        pytest.param(set(), 0, id="none"),
    ],
)
def test_peers_idle_seconds_of_the_cores_asked_for(cpus: set[int], want_ticks: int) -> None:
    assert idle_seconds(cpus, STAT) == pytest.approx(want_ticks / TICKS)
