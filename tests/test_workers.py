"""The rules of filterd.workers that need no process: how budgets are shared, what a worker's
channel says, how many workers `0` means."""

from __future__ import annotations

import os
import socket

import pytest

from filterd.config import Config, ConfigError, from_mapping
from filterd.notify import Notifier
from filterd.workers import shares
from filterd.workers.channel import pair, states
from filterd.workers.listeners import open_listeners
from tests.tables import cases

# (id, total, workers, each worker's part)
SPLITS = [
    ("even", 10, 2, [5, 5]),
    ("remainder to the first", 10, 3, [4, 3, 3]),
    ("one worker", 7, 1, [7]),
    ("fewer than workers: 1 each", 2, 4, [1, 1, 1, 1]),
]


@pytest.mark.parametrize(("total", "count", "want"), cases(SPLITS))  # fmt: skip
def test_split(total: int, count: int, want: list[int]) -> None:
    assert [shares.split(total, count, index) for index in range(count)] == want


def settings(**server: object) -> Config:
    data = {
        "clamd": {"max_concurrent": 10},
        "filter": {"max_message_size": 10_000_000},
        "proxy": {"max_connections": 101},
        "milter": {"max_connections": 200},
        "server": {"max_buffered_bytes": 256_000_000, **server},
    }
    return from_mapping(data)


def test_share_divides_what_guards_a_shared_resource() -> None:
    config = settings()
    got = [shares.share(config, index, 3) for index in range(3)]
    assert [c.clamd.max_concurrent for c in got] == [4, 3, 3]  # adds up to clamd's pool
    assert {c.server.max_buffered_bytes for c in got} == {85_333_333}
    # Sessions are counted over all workers (filterd/endpoints/inflight.py): the whole limit.
    assert {c.proxy.max_connections for c in got} == {101}
    assert {c.milter.max_connections for c in got} == {200}
    assert got[0].filter == config.filter, "the policy is not a budget"
    assert shares.share(config, 0, 1) is config


def test_memory_share_never_below_one_message() -> None:
    config = settings(max_buffered_bytes=30_000_000)
    assert shares.share(config, 0, 8).server.max_buffered_bytes == 10_000_000
    (problem,) = shares.overcommitted(config, 8)
    assert "server.max_buffered_bytes / 8 workers" in problem


def test_more_workers_than_clamd_slots_is_said() -> None:
    (problem,) = shares.overcommitted(settings(), 16)
    assert problem.startswith("clamd.max_concurrent 10 is below the 16 workers")
    assert shares.overcommitted(settings(), 2) == []


def test_zero_workers_is_one_per_core_up_to_the_clamd_slots() -> None:
    cores = len(os.sched_getaffinity(0))
    assert shares.worker_count(settings(workers=0)) == min(cores, 10)
    assert shares.worker_count(settings(workers=3)) == 3
    one_slot = from_mapping({"clamd": {"max_concurrent": 1}})
    assert shares.worker_count(one_slot) == 1  # never more workers than clamd slots by default


def test_negative_workers_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^server\.workers: -1 is not an integer >= 0$"):
        settings(workers=-1)


def test_a_workers_notifier_writes_to_its_parent() -> None:
    parent, child = pair()
    with parent, child:
        notifier = Notifier({"NOTIFY_SOCKET": "/nonexistent"}, channel=child)
        notifier.ready("serving")
        notifier.stopping()
        got = [parent.recv(4096) for _ in range(2)]
    assert [states(datagram) for datagram in got] == [{"READY"}, {"STOPPING"}]
    assert got[0] == b"READY=1\nSTATUS=serving"


def test_states_ignores_other_values() -> None:
    assert states(b"RELOADING=1\nMONOTONIC_USEC=12\nSTATUS=x=1") == {"RELOADING"}
    assert states(b"READY=0") == set()


def test_reuseport_sockets_share_one_port() -> None:
    config = from_mapping({"proxy": {"listen": "127.0.0.1:0"}})
    (listener,) = open_listeners(config, 3, {})
    try:
        ports = {sock.getsockname()[1] for sock in listener.sockets}
        assert len(listener.sockets) == 3
        assert len(ports) == 1
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in listener.sockets)
    finally:
        listener.close()
