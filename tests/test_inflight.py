"""Sessions in flight counted over all workers (filterd/endpoints/inflight.py).

- the table: several workers' counters, what each endpoint's total and admission read, a dead
  worker's counters zeroed by the parent;
- the array is shared across fork(): what a child writes, the parent reads;
- one process (no array joined): the count is the endpoint's own sessions, as before;
- each endpoint, in process, as worker 1 of 2 while "worker 2" holds sessions: the proxy
  answers 421 4.7.0 and the milter closes unanswered when the sum is at the limit though
  this worker has none, admits below it, publishes its own count and clears it when the
  session ends; the proxy's stress reads the sum;
- against real processes, 2 workers, max_connections = 6: one worker holds 4 sessions (more
  than half) and the 4th is accepted while the total is below 6; the 7th over all is refused
  421 4.7.0 and logged with the whole limit; once that worker is killed, its sessions no
  longer count: the sessions up to the limit are admitted again, and one more is refused.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from filterd.config import Config, MilterSettings, ProxySettings
from filterd.endpoints import inflight
from filterd.endpoints.milter.endpoint import MilterEndpoint
from filterd.endpoints.proxy.endpoint import ProxyEndpoint
from filterd.testing import FakeScanner
from tests.endpoints.milter_client import MilterClient
from tests.endpoints.test_milter import make_pipeline
from tests.endpoints.test_milter_hostile import closed_by_peer
from tests.tables import cases
from tests.test_app_process import serving
from tests.test_workers_serve import owner, proxy_settings
from tests.testbed.clamd import Clamd
from tests.testbed.common import free_port
from tests.testbed.sink import Sink

LIMIT = 6  # max_connections, here and in the test with real workers

# (id, workers, writes (worker, endpoint, count), dead workers,
#  want (proxy total, milter total, proxy full at LIMIT))
TABLE = [
    ("empty", 2, [], [], (0, 0, False)),
    ("one worker holds most", 2, [(0, "proxy", 4), (1, "proxy", 1)], [], (5, 0, False)),
    ("at the limit", 2, [(0, "proxy", 4), (1, "proxy", 2)], [], (6, 0, True)),
    ("over: simultaneous admits", 3, [(0, "proxy", 3), (1, "proxy", 2), (2, "proxy", 3)], [],
     (8, 0, True)),
    ("endpoints apart", 2, [(0, "proxy", 5), (1, "milter", 7)], [], (5, 7, False)),
    ("rewritten, not added", 2, [(0, "proxy", 6), (0, "proxy", 2)], [], (2, 0, False)),
    ("dead worker zeroed", 2, [(0, "proxy", 4), (1, "proxy", 2), (1, "milter", 3)], [1],
     (4, 0, False)),
    ("every worker dead", 3, [(0, "proxy", 6), (2, "milter", 9)], [0, 2], (0, 0, False)),
]  # fmt: skip


@pytest.mark.parametrize(("workers", "writes", "dead", "want"), cases(TABLE))
def test_counts(
    workers: int,
    writes: list[tuple[int, str, int]],
    dead: list[int],
    want: tuple[int, int, bool],
) -> None:
    shared = inflight.Counts(workers)
    for index, endpoint, count in writes:
        inflight.InFlight(endpoint, shared, index).publish(count)
    for index in dead:
        shared.clear(index)
    proxy, milter, full = want
    assert (shared.total("proxy"), shared.total("milter")) == (proxy, milter)
    # Any worker reads the same total: its own count does not decide.
    for index in range(workers):
        view = inflight.InFlight("proxy", shared, index)
        assert view.total(own=0) == proxy
        assert view.full(own=0, limit=LIMIT) is full


@pytest.mark.parametrize(("own", "limit", "full"), [(0, 1, False), (5, 6, False), (6, 6, True),
                                                    (7, 6, True)])  # fmt: skip
def test_one_process_counts_its_own_sessions(own: int, limit: int, full: bool) -> None:
    alone = inflight.InFlight("proxy")
    alone.publish(own)  # nowhere to write: nothing else reads it
    assert alone.total(own) == own
    assert alone.full(own, limit) is full


def test_not_joined_is_one_process() -> None:
    assert inflight.in_flight("proxy").shared is None


def test_a_forked_worker_writes_what_the_parent_reads() -> None:
    shared = inflight.Counts(2)
    pid = os.fork()
    if pid == 0:  # the child: join as worker 2, write, exit without running pytest's teardown
        code = 1
        try:
            inflight.join(shared, 1)
            inflight.in_flight("milter").publish(3)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (shared.total("milter"), shared.total("proxy")) == (3, 0)
    shared.clear(1)
    assert shared.total("milter") == 0


# --- each endpoint as worker 1 of 2 ------------------------------------------------------


async def until(condition: Callable[[], bool]) -> None:
    """Poll every 10 ms, at most 5 s (a TimeoutError fails the test)."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 (polls state)
            await asyncio.sleep(0.01)


async def greeting(port: int) -> tuple[bytes, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    async with asyncio.timeout(10):
        return await reader.readline(), writer


async def test_the_proxy_admits_and_stresses_by_the_sum() -> None:
    shared = inflight.Counts(2)
    settings = ProxySettings(listen="127.0.0.1:0", downstream="127.0.0.1:1",
                             max_connections=LIMIT)  # fmt: skip
    endpoint = ProxyEndpoint(Config(proxy=settings), make_pipeline(FakeScanner()))
    endpoint.in_flight = inflight.InFlight("proxy", shared, 0)
    await endpoint.start()
    try:
        shared.write(1, "proxy", LIMIT)  # the other worker holds every session
        refused, writer = await greeting(endpoint.port)
        writer.close()
        assert refused.startswith(b"421 4.7.0 "), refused
        assert shared.total("proxy") == LIMIT, "a refused connection is not counted"

        shared.write(1, "proxy", LIMIT - 1)
        served, writer = await greeting(endpoint.port)
        assert served.startswith(b"220 "), served
        assert shared.array[shared.position(0, "proxy")] == 1, "its own session, published"
        # 1 of its own is not stress (0.8 x 6); 6 over both workers is.
        assert endpoint.under_stress()
        writer.close()
        await until(lambda: shared.total("proxy") == LIMIT - 1)  # its own count back to 0
        assert not endpoint.sessions
    finally:
        await endpoint.close()


async def test_the_milter_admits_by_the_sum() -> None:
    shared = inflight.Counts(2)
    config = Config(milter=MilterSettings(listen="inet:127.0.0.1:0", max_connections=LIMIT))
    endpoint = MilterEndpoint(config, make_pipeline(FakeScanner()))
    endpoint.in_flight = inflight.InFlight("milter", shared, 0)
    await endpoint.start()
    try:
        shared.write(1, "milter", LIMIT)
        milter = await MilterClient.open_tcp("127.0.0.1", endpoint.port)
        assert await closed_by_peer(milter), "at the limit over both workers: closed"
        await milter.close()

        shared.write(1, "milter", LIMIT - 1)
        milter = await MilterClient.open_tcp("127.0.0.1", endpoint.port)
        await milter.negotiate()
        assert shared.total("milter") == LIMIT, "admitted, and its own count published"
        await milter.close()
        await until(lambda: shared.total("milter") == LIMIT - 1)  # its own count back to 0
    finally:
        await endpoint.close()


# --- two real workers ---------------------------------------------------------------------


def line(sock: socket.socket) -> bytes:
    """One whole reply; of a multiline one (EHLO), its last line."""
    got = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return got
        got += chunk
        last = got.split(b"\r\n")[-2] if got.endswith(b"\r\n") else b""
        if last[3:4] == b" ":
            return last + b"\r\n"


def command(sock: socket.socket, text: bytes) -> bytes:
    sock.sendall(text + b"\r\n")
    return line(sock)


def in_data(sock: socket.socket) -> None:
    """Hold the session busy (DATA under way), so it is never the idle one evicted."""
    assert command(sock, b"EHLO client.example.org").startswith(b"250 ")
    assert command(sock, b"MAIL FROM:<a@example.org>").startswith(b"250")
    assert command(sock, b"RCPT TO:<b@example.org>").startswith(b"250")
    assert command(sock, b"DATA").startswith(b"354")


def quit_and_wait(pids: list[int], port: int, client: socket.socket) -> None:
    """QUIT, then wait (bounded) until no worker holds the server side any more."""
    assert command(client, b"QUIT").startswith(b"221")
    deadline = time.monotonic() + 5
    while owner(pids, port, client) is not None:
        assert time.monotonic() < deadline, "a closed session stayed open"
        time.sleep(0.05)
    client.close()
    time.sleep(0.3)  # its task's done callback (the count) runs right after the close


def load_one_worker(pids: list[int], port: int) -> tuple[list[socket.socket], list[socket.socket]]:
    """Sessions held in DATA: 4 on one worker (the heavy one's), 1 on the other; more on the
    light one are ended at once. Returns (heavy's, light's)."""
    held: dict[int, list[socket.socket]] = {}
    light = None
    for _ in range(60):  # bounded: the kernel's hash sends each about half the time
        client = socket.create_connection(("127.0.0.1", port), timeout=15)
        assert line(client).startswith(b"220 "), "below the limit: served"
        pid = owner(pids, port, client)
        assert pid is not None
        assert pid in pids
        light = pid if light is None else light  # it keeps one session; the other gets 4
        if pid == light and held.get(pid):
            quit_and_wait(pids, port, client)
            continue
        in_data(client)
        held.setdefault(pid, []).append(client)
        heavy = [sessions for worker, sessions in held.items() if worker != light]
        if heavy and len(heavy[0]) == 4:
            return heavy[0], held[light]
    raise AssertionError(f"no worker got 4 sessions in 60 connections: {held}")


def test_the_limit_counts_the_sessions_of_both_workers(
    tmp_path: Path, clamd: Clamd, sink: Sink
) -> None:
    port, metrics = free_port(), free_port()
    cfg = tmp_path / "filterd.toml"
    settings = proxy_settings(clamd, sink, port, metrics)
    cfg.write_text(settings.replace("[metrics]", f"max_connections = {LIMIT}\n[metrics]", 1))
    with serving(tmp_path, "--config", str(cfg), workers=2) as served:
        (started,) = [e for e in served.wait_for("started") if e["event"] == "started"]
        pids = started["pids"]
        heavy, light = load_one_worker(pids, port)
        assert (len(heavy), len(light)) == (4, 1)
        # 5 in flight: one worker has 4, more than half of the limit (the old share was 3).
        sixth = socket.create_connection(("127.0.0.1", port), timeout=15)
        assert line(sixth).startswith(b"220 "), "6 in flight over both workers: at the limit"
        in_data(sixth)
        seventh = socket.create_connection(("127.0.0.1", port), timeout=15)
        refused = line(seventh)
        events = served.wait_for("too many connections; answering new ones 421")

        # The heavy worker dies with its sessions: the parent zeroes its count, so its
        # replacement and the other worker admit up to the limit again.
        dead = owner(pids, port, heavy[0])
        assert dead is not None
        survivors = [s for s in [*light, sixth] if owner(pids, port, s) != dead]
        os.kill(dead, signal.SIGKILL)
        served.wait_for("worker ready", count=3)
        again = []
        for _ in range(LIMIT - len(survivors)):
            client = socket.create_connection(("127.0.0.1", port), timeout=15)
            assert line(client).startswith(b"220 "), "the dead worker's sessions not counted"
            in_data(client)
            again.append(client)
        over = socket.create_connection(("127.0.0.1", port), timeout=15)
        refused_again = line(over)
        for sock in [*heavy, *light, sixth, seventh, *again, over]:
            sock.close()
        assert served.stop() == 0
    assert refused.startswith(b"421 4.7.0 "), refused
    (warning,) = [e for e in events if e["event"].startswith("too many connections")]
    assert (warning["limit"], warning["count"]) == (LIMIT, 1), warning
    assert refused_again.startswith(b"421 4.7.0 "), refused_again
