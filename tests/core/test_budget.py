"""The content-memory budget, alone and as transactions charge it (filterd/core/budget.py)."""

from __future__ import annotations

import gc

import pytest

from filterd.core import ContentBudget, Framing, Policy, Transaction
from filterd.core import verdict as v
from filterd.core.errors import PolicyError
from tests.tables import cases

LINE = b"x" * 98 + b"\r\n"  # 100 bytes of clean content


# (id, operations as (call, n), want result of the last call, want in_use)
STEPS = [
    ("reserve-fits", [("reserve", 60)], True, 60),
    ("reserve-exactly-all", [("reserve", 100)], True, 100),
    ("reserve-too-much", [("reserve", 60), ("reserve", 41)], False, 60),
    ("release-then-fits", [("reserve", 60), ("release", 30), ("reserve", 70)], True, 100),
    ("reserve-zero", [("reserve", 0)], True, 0),
]  # fmt: skip


@pytest.mark.parametrize(("steps", "want", "want_in_use"), cases(STEPS))
def test_budget_steps(steps: list[tuple[str, int]], want: bool, want_in_use: int) -> None:
    budget = ContentBudget(100)
    got: bool | None = None
    for call, n in steps:
        got = getattr(budget, call)(n)
    if steps[-1][0] == "reserve":
        assert got is want
    assert budget.in_use == want_in_use
    assert budget.exhausted is (want_in_use >= 100)


@pytest.mark.parametrize(
    "misuse",
    [lambda: ContentBudget(0), lambda: ContentBudget(10).reserve(-1),
     lambda: ContentBudget(10).release(1)],
    ids=["zero-limit", "negative-reserve", "release-unreserved"],
)  # fmt: skip
def test_budget_misuse_raises_policy_error(misuse: object) -> None:
    assert callable(misuse)
    with pytest.raises(PolicyError):
        misuse()


def feed_lines(txn: Transaction, count: int) -> None:
    for _ in range(count):
        txn.feed(LINE)


def test_over_budget_transaction_tempfails_and_frees_its_bytes() -> None:
    budget = ContentBudget(1000)
    txn = Transaction(Policy(), budget=budget)
    feed_lines(txn, 20)  # 2000 bytes of content: over the budget
    assert txn.insufficient_resources
    assert budget.in_use <= 5, "the dropped content was not given back"
    assert not txn.done, "the real end of data is still awaited"
    txn.feed(b".\r\nQUIT\r\n")
    assert txn.done
    assert txn.inspector.trailing == b"QUIT\r\n"
    got = txn.verdict(None)
    assert got is v.TEMPFAIL_INSUFFICIENT_RESOURCES
    assert got.reply == "452 4.3.1 Error: insufficient system resources"
    assert txn.content() == b""
    txn.close()
    assert budget.in_use == 0


def test_budget_returns_to_zero_after_close() -> None:
    budget = ContentBudget(10_000)
    txn = Transaction(Policy(), Framing.MESSAGE, budget=budget)
    feed_lines(txn, 10)
    txn.finish()
    assert budget.in_use == txn.reserved == 1000
    assert txn.content() == LINE * 10
    assert budget.in_use == 1000, "content() must not copy the content a second time"
    txn.close()
    txn.close()  # idempotent
    assert budget.in_use == 0


def test_two_transactions_share_one_budget() -> None:
    budget = ContentBudget(1500)
    first = Transaction(Policy(), budget=budget)
    second = Transaction(Policy(), budget=budget)
    feed_lines(first, 10)  # 1000 bytes
    feed_lines(second, 4)  # 400 bytes: 1400 in use
    assert budget.in_use == 1400
    feed_lines(second, 2)  # 1600 would not fit: the second one drops its content
    assert second.insufficient_resources
    assert not first.insufficient_resources
    assert budget.in_use == 1000
    first.close()
    assert budget.in_use == 0
    third = Transaction(Policy(), budget=budget)
    feed_lines(third, 10)
    assert not third.insufficient_resources, "closed transactions gave their bytes back"


def test_a_forgotten_transaction_gives_its_bytes_back() -> None:
    budget = ContentBudget(10_000)
    txn = Transaction(Policy(), budget=budget)
    feed_lines(txn, 5)
    assert budget.in_use == 500
    del txn
    gc.collect()
    assert budget.in_use == 0, "the finalizer did not release the reservation"


def test_refused_message_holds_no_budget() -> None:
    # A fake end of data refuses the message: its content is dropped and its bytes released.
    budget = ContentBudget(10_000)
    txn = Transaction(Policy(), budget=budget)
    feed_lines(txn, 5)
    txn.feed(b"a\n.\r\nMAIL FROM:<x@y>\r\n")
    feed_lines(txn, 50)  # 5000 more bytes, none of them kept
    assert budget.in_use <= 5
    txn.feed(b".\r\n")
    assert txn.verdict(None) is v.REJECT_SMUGGLING
