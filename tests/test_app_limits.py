"""The descriptor budget and the accept-error limiter, called directly."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest
from structlog.testing import capture_logs

from filterd import app, config
from filterd.endpoints import net
from tests.tables import cases

# (id, config, descriptors needed without the margin)
BUDGETS = [
    ("nothing", {}, 0),
    ("proxy", {"proxy": {"listen": "127.0.0.1:10024"}}, 2 * 100 + 10),
    ("proxy-small", {"proxy": {"listen": "127.0.0.1:10024", "max_connections": 5},
                     "clamd": {"max_concurrent": 2}}, 2 * 5 + 2),
    ("milter", {"milter": {"listen": "unix:/run/f.sock"}}, 200 + 10),
    ("milter-small", {"milter": {"listen": "unix:/run/f.sock", "max_connections": 7}}, 7 + 10),
    ("both", {"proxy": {"listen": "127.0.0.1:10024"}, "milter": {"listen": "inet:127.0.0.1:1"}},
     2 * 100 + 200 + 10),
]  # fmt: skip


@pytest.mark.parametrize(("data", "want"), cases(BUDGETS))
def test_descriptor_budget(data: dict[str, Any], want: int) -> None:
    budget = net.descriptor_budget(config.from_mapping(data))
    assert budget.total == want + net.DESCRIPTOR_MARGIN, budget.explain()


def accept_context(code: int = errno.EMFILE) -> dict[str, Any]:
    """What asyncio's selector loop passes when accept() fails for lack of resources."""
    return {
        "message": "socket.accept() out of system resource",
        "exception": OSError(code, "Too many open files"),
    }


async def test_one_line_per_interval_with_a_count() -> None:
    loop = asyncio.get_running_loop()
    limiter = net.AcceptErrorLimiter(interval=0.05)
    with capture_logs() as logs:
        for _ in range(1000):
            limiter(loop, accept_context())
        await asyncio.sleep(0.08)  # the interval ends: the count is logged
        await asyncio.sleep(0.05)  # a quiet interval: back to logging at once
        limiter(loop, accept_context(errno.ENFILE))
    limiter.cancel()
    assert [(e["event"], e.get("error"), e.get("failures")) for e in logs] == [
        ("accept failed: new connections wait in the listen queue", "EMFILE", None),
        ("accept still failing", None, 999),
        ("accept failed: new connections wait in the listen queue", "ENFILE", None),
    ]


# (id, context) of errors that are not the accept-resource kind: passed on unchanged
OTHERS = [
    ("task-exception", {"message": "Task exception was never retrieved",
                        "exception": ValueError("x")}),
    ("other-errno", {"message": "socket.accept() out of system resource",
                     "exception": OSError(errno.EPERM, "no")}),
    ("no-exception", {"message": "socket.accept() out of system resource"}),
]  # fmt: skip


@pytest.mark.parametrize("context", [c[1] for c in OTHERS], ids=[c[0] for c in OTHERS])
async def test_everything_else_goes_to_the_previous_handler(context: dict[str, Any]) -> None:
    seen: list[dict[str, Any]] = []
    limiter = net.AcceptErrorLimiter(previous=lambda loop, ctx: seen.append(ctx), interval=10)
    with capture_logs() as logs:
        limiter(asyncio.get_running_loop(), context)
    assert seen == [context]
    assert logs == []


async def test_without_a_previous_handler_asyncio_default_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(loop, "default_exception_handler", seen.append)
    context = {"message": "Task exception was never retrieved", "exception": ValueError("x")}
    net.AcceptErrorLimiter()(loop, context)
    assert seen == [context]


def test_the_pipeline_gets_the_configured_content_budget() -> None:
    wanted = config.from_mapping({"server": {"max_buffered_bytes": 50_000_000}})
    budget = app.build_pipeline(wanted).budget
    assert budget is not None
    assert budget.limit == 50_000_000
