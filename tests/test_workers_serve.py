"""`[server] workers = 2` against real processes: the test bed's clamd and SMTP sink, real
`filterd serve` processes, real signals.

- both workers accept: which process holds each accepted connection is read from /proc (the
  socket's inode among the worker's descriptors), and the message lines name both workers;
- one scrape of the parent's /metrics sums the messages of both workers;
- a worker killed with SIGKILL in the middle of a run is logged and started again, and every
  message of the run reaches the sink (a client that lost its session sends again, as
  Postfix would after a 4XX or a dropped connection);
- SIGHUP reaches every worker (a `reloaded` line from each, and the new limit in both);
- SIGTERM drains every worker: messages in flight on both finish with their real answer;
- socket activation: both workers serve the one socket systemd passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import smtplib
import socket
import threading
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.endpoints.milter_client import MilterClient
from tests.test_app_process import Served, serving
from tests.testbed.clamd import Clamd
from tests.testbed.common import free_port
from tests.testbed.sink import Sink

ACTIVATE = shutil.which("systemd-socket-activate")
HEADERS = [("From", "a@example.org"), ("Subject", "workers")]
BODY = b"x" * 78 + b"\r\n"
MESSAGE = BODY * 62  # 4960 bytes


def owner(pids: list[int], server_port: int, client: socket.socket) -> int | None:
    """The pid among `pids` holding the server side of `client`'s TCP connection."""
    client_port = client.getsockname()[1]
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            if (local, remote) == (server_port, client_port):
                inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if str(fd.readlink()) == f"socket:[{inode}]":
                        return pid
    return None


def owners(pids: list[int], port: int, clients: list[socket.socket]) -> set[int | None]:
    """Accepting takes a moment: read until every connection has its owner (bounded)."""
    deadline = time.monotonic() + 5
    while True:
        found = {owner(pids, port, client) for client in clients}
        if None not in found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def message_lines(served: Served) -> list[dict[str, Any]]:
    return [e for e in served.events() if e["event"] == "message"]


def send(port: int, number: int, tries: int = 1) -> int:
    """One message with its own Message-ID through the proxy; sent again (up to `tries`
    times) when the session breaks or is refused. The number of failed attempts."""
    failed = 0
    for _ in range(tries):
        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = "a@example.org", "b@example.org", "workers"
        mail["Message-ID"] = f"<workers-{number}@example.org>"
        mail.set_content("hello\n")
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
                client.send_message(mail)
        except (OSError, smtplib.SMTPException):
            failed += 1
            time.sleep(0.2)
            continue
        return failed
    raise AssertionError(f"message {number} never accepted")


def scraped(port: int) -> dict[str, float]:
    """`name{labels}` -> value of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def proxy_settings(clamd: Clamd, sink: Sink, port: int, metrics: int) -> str:
    return (
        f'[log]\nformat = "json"\n[clamd]\naddress = "{clamd.address}"\n'
        f'[proxy]\nlisten = "127.0.0.1:{port}"\ndownstream = "127.0.0.1:{sink.port}"\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
    )


def test_two_workers_share_the_proxy_sum_their_metrics_and_survive_a_kill(
    tmp_path: Path, clamd: Clamd, sink: Sink
) -> None:
    port, metrics = free_port(), free_port()
    cfg = tmp_path / "filterd.toml"
    cfg.write_text(proxy_settings(clamd, sink, port, metrics))
    with serving(tmp_path, "--config", str(cfg), workers=2) as served:
        (started,) = [e for e in served.wait_for("started") if e["event"] == "started"]
        pids = started["pids"]
        assert len(set(pids)) == 2, started
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
        assert owners(pids, port, held) == set(pids), "both workers accept"
        for client in held:
            client.close()

        for number in range(20):
            send(port, number)
        lines = message_lines(served)
        assert {line["worker"] for line in lines} == {1, 2}, lines
        got = scraped(metrics)
        accepted = 'filterd_messages_total{action="accept",endpoint="proxy",reason="accepted"}'
        assert got[accepted] == 20, got
        # The state gauges: each worker's share, summed over the live workers.
        assert got['filterd_content_budget_bytes{kind="limit"}'] == 2 * (256 * 1024 * 1024 // 2)
        sessions = 'filterd_sessions_open{endpoint="proxy"}'
        deadline = time.monotonic() + 5  # written once a second by each worker
        while scraped(metrics)[sessions] != 0:
            assert time.monotonic() < deadline, "the sessions gauge never came back to 0"
            time.sleep(0.2)

        # A worker killed mid-run: every message still arrives, and the worker comes back.
        failures = 0

        def run() -> None:
            nonlocal failures
            for number in range(100, 140):
                failures += send(port, number, tries=20)

        sender = threading.Thread(target=run)
        sender.start()
        while len(sink.messages) < 30:
            time.sleep(0.01)
        os.kill(pids[0], signal.SIGKILL)
        sender.join(120)
        events = served.wait_for("worker ready", count=3)
        assert served.stop() == 0
    (died,) = [e for e in events if e["event"] == "worker exited"]
    assert (died["pid"], died["status"], died["level"]) == (pids[0], "killed by SIGKILL", "error")
    assert died["restart_in"] > 0
    again = [e for e in events if e["event"] == "worker ready"][-1]
    assert again["worker"] == died["worker"]
    assert again["pid"] not in pids
    ids = [m.header_values("Message-ID")[0] for m in sink.messages]
    want = {f"<workers-{n}@example.org>" for n in [*range(20), *range(100, 140)]}
    assert set(ids) == want, "no message lost"
    assert len(ids) - len(want) <= failures, "a duplicate only where a session broke"


def milter_settings(clamd: Clamd, port: int, max_message_size: int) -> str:
    return (
        f'[log]\nformat = "json"\n[clamd]\naddress = "{clamd.address}"\n'
        f'[milter]\nlisten = "inet:127.0.0.1:{port}"\n'
        f"[filter]\nmax_message_size = {max_message_size}\n"
        "[server]\nmax_buffered_bytes = 1000000\n"
    )


async def in_flight(port: int) -> tuple[MilterClient, socket.socket]:
    """A milter connection with a message begun: MAIL, RCPT and headers sent."""
    client = await MilterClient.open_tcp("127.0.0.1", port)
    await client.negotiate()
    await client.connect()
    await client.mail("a@example.org")
    await client.rcpt("b@example.org")
    await client.headers(HEADERS)
    sock = client.writer.get_extra_info("socket")
    return client, sock


async def finish(client: MilterClient) -> str:
    await client.body(MESSAGE)
    replies = await client.end_of_message(wait=15)
    await client.close()
    return replies[-1].code


async def one_message(port: int) -> str:
    client = await MilterClient.open_tcp("127.0.0.1", port)
    await client.negotiate()
    await client.connect()
    replies = await client.message("a@example.org", ["b@example.org"], HEADERS, MESSAGE)
    await client.close()
    final = replies[-1]
    return final.code + (f" {final.text}" if final.code == "y" else "")


async def test_sighup_reaches_every_worker_and_sigterm_drains_them_all(
    tmp_path: Path, clamd: Clamd
) -> None:
    port = free_port()
    cfg = tmp_path / "filterd.toml"
    cfg.write_text(milter_settings(clamd, port, 100_000))
    with serving(tmp_path, "--config", str(cfg), workers=2) as served:
        (started,) = [e for e in served.wait_for("started") if e["event"] == "started"]
        pids = started["pids"]
        cfg.write_text(milter_settings(clamd, port, 1000))
        served.process.send_signal(signal.SIGHUP)
        events = served.wait_for("reloaded", count=2)
        reloaded = [e for e in events if e["event"] == "reloaded"]
        assert {e["worker"] for e in reloaded} == {1, 2}
        assert all(e["changed"] == ["filter.max_message_size"] for e in reloaded)
        replies = [await one_message(port) for _ in range(16)]
        assert all(reply.startswith("y 552 5.3.4") for reply in replies), replies
        assert {line["worker"] for line in message_lines(served)} == {1, 2}

        # Messages in flight on both workers when SIGTERM comes: each finishes.
        flying = [await in_flight(port) for _ in range(4)]
        while owners(pids, port, [sock for _, sock in flying]) != set(pids):
            assert len(flying) < 40, "the kernel gave every connection to one worker"
            flying.append(await in_flight(port))
        before = len(message_lines(served))
        served.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)  # both workers have begun to drain
        assert served.process.poll() is None
        answers = await asyncio.gather(*(finish(client) for client, _ in flying))
        assert served.process.wait(30) == 0
    assert set(answers) == {"y"}, answers  # the new limit (1000) still applies: 552
    drained = message_lines(served)[before:]
    assert len(drained) == len(flying)
    assert {line["worker"] for line in drained} == {1, 2}
    names = [e["event"] for e in served.events()]
    assert names.count("worker stopped") == 2
    assert names[-1] == "stopped"


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed")
def test_socket_activation_with_two_workers(tmp_path: Path) -> None:
    """Both workers accept from the one socket systemd passed (a shared accept queue)."""
    from tests.integration.test_systemd import Activated  # noqa: PLC0415 (an integration helper)

    port = free_port()
    cfg = tmp_path / "filterd.toml"
    cfg.write_text(
        '[log]\nformat = "json"\n[clamd]\naddress = "tcp:127.0.0.1:1"\n'
        f'[proxy]\nlisten = "127.0.0.1:{port}"\ndownstream = "127.0.0.1:1"\n'
        "[server]\nworkers = 2\n"
    )
    served = Activated(tmp_path, [f"127.0.0.1:{port}"], "proxy", "--config", str(cfg))
    try:
        first = socket.create_connection(("127.0.0.1", port), timeout=15)  # starts filterd
        served.until(lambda text: '"event": "started"' in text)
        (started,) = [e for e in served.events() if e["event"] == "started"]
        pids = started["pids"]
        held = [first]
        while owners(pids, port, held) != set(pids):
            assert len(held) < 60, "one worker took every connection"
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        for client in held:
            client.settimeout(5)
            assert client.recv(100).startswith(b"220 ")
            client.close()
    finally:
        assert served.close() == 0, served.text()
    (listening,) = [e for e in served.events() if e["event"] == "listening"]
    assert listening["activated"] is True


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for its new parent counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "State:\tZ" in status


def test_workers_end_with_a_killed_parent(tmp_path: Path) -> None:
    """SIGKILL to the parent (no chance to stop them): the workers stop by themselves and
    the port is free again."""
    port = free_port()
    args = ["--proxy", f"127.0.0.1:{port}", "--downstream", "127.0.0.1:1",
            "--clamd", "tcp:127.0.0.1:1"]  # fmt: skip
    cfg = tmp_path / "filterd.toml"
    cfg.write_text('[log]\nformat = "json"\n')
    with serving(tmp_path, "--config", str(cfg), *args, workers=2) as served:
        (started,) = [e for e in served.wait_for("started") if e["event"] == "started"]
        served.process.kill()
        served.process.wait(10)
        deadline = time.monotonic() + 15
        while not all(gone(pid) for pid in started["pids"]):
            assert time.monotonic() < deadline, "a worker outlived its parent"
            time.sleep(0.05)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))  # nobody holds the listener any more
