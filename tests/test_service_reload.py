"""SIGHUP: a real `filterd serve` reads its file again; new sessions get the new settings,
a session open across the reload finishes with the old ones, a broken file changes nothing.

The setting changed is `[filter] max_message_size`: a 5000-byte message is scanned by the
test bed's clamd and accepted under the old limit (100000) and refused 552 5.3.4 under the
new one (1000), so each session's reply shows which configuration it runs with.
"""

from __future__ import annotations

import signal
import tomllib
from pathlib import Path

import pytest
import structlog

from filterd import app
from filterd.config import Config, from_mapping
from filterd.notify import Notifier
from filterd.reload import changed_keys, keep_running, needs_restart
from filterd.testing import RawSmtpClient
from filterd.workers import supervisor
from tests.endpoints.milter_client import MilterClient
from tests.tables import cases
from tests.test_app_process import serving
from tests.testbed.clamd import Clamd
from tests.testbed.common import free_port

BODY = b"x" * 78 + b"\r\n"
MESSAGE = BODY * 62  # 4960 bytes: under the first limit, over the second
HEADERS = [("From", "a@example.org"), ("Subject", "reload")]


def settings(clamd: Clamd, port: int, max_message_size: int) -> str:
    return (
        f'[log]\nformat = "json"\n[clamd]\naddress = "{clamd.address}"\n'
        f'[milter]\nlisten = "inet:127.0.0.1:{port}"\n'
        f"[filter]\nmax_message_size = {max_message_size}\n"
        f"[server]\nmax_buffered_bytes = 1000000\n"
    )


async def opened(port: int) -> MilterClient:
    client = await MilterClient.open_tcp("127.0.0.1", port)
    await client.negotiate()
    await client.connect()
    return client


async def send(client: MilterClient) -> str:
    """One message; the code of the final reply ('a' accept, 'c' continue: accepted with
    header changes, 'y' a reply code with its text)."""
    replies = await client.message("a@example.org", ["b@example.org"], HEADERS, MESSAGE)
    final = replies[-1]
    return final.code + (f" {final.text}" if final.code == "y" else "")


# (text appended to the [server] table of the new file, what the warning must say)
BROKEN = [
    ('user = "no-such-user-here"\n', "server.user: no user 'no-such-user-here'"),
    ("[filter\n", "filterd.toml"),  # not TOML: the file is named
]


async def test_sighup_applies_to_new_sessions_only(tmp_path: Path, clamd: Clamd) -> None:
    port = free_port()
    cfg = tmp_path / "filterd.toml"
    cfg.write_text(settings(clamd, port, 100_000))
    with serving(tmp_path, "--config", str(cfg)) as served:
        served.wait_for("started")
        before = await opened(port)  # open across the reload
        cfg.write_text(settings(clamd, port, 1000))
        served.process.send_signal(signal.SIGHUP)
        events = served.wait_for("reloaded")
        (done,) = [e for e in events if e["event"] == "reloaded"]
        assert done["changed"] == ["filter.max_message_size"]
        after = await opened(port)
        assert (await send(after)).startswith("y 552 5.3.4"), "a new session: the new limit"
        assert await send(before) in {"a", "c"}, "the session opened before: the old limit"
        await after.close()
        await before.close()

        for count, (broken, want) in enumerate(BROKEN, start=1):
            cfg.write_text(settings(clamd, port, 1000) + broken)
            served.process.send_signal(signal.SIGHUP)
            events = served.wait_for("reload failed; the running configuration stays", count)
            failed = [e for e in events if e["event"].startswith("reload failed")][-1]
            assert failed["level"] == "warning"
            assert want in str(failed["error"])
            kept = await opened(port)
            assert (await send(kept)).startswith("y 552 5.3.4"), "the running config stays"
            await kept.close()
        assert served.stop() == 0
    assert [e["event"] for e in served.events()].count("reloaded") == 1


def test_listener_changes_wait_for_a_restart(tmp_path: Path) -> None:
    """The proxy's greeting name changes at once; its new address is logged, not applied."""
    port, other = free_port(), free_port()
    cfg = tmp_path / "filterd.toml"

    def write(listen: int, hostname: str) -> None:
        cfg.write_text(
            f'[log]\nformat = "json"\n[clamd]\naddress = "tcp:127.0.0.1:1"\n'
            f'[proxy]\nlisten = "127.0.0.1:{listen}"\ndownstream = "127.0.0.1:1"\n'
            f'hostname = "{hostname}"\n'
        )

    write(port, "before.example")
    with serving(tmp_path, "--config", str(cfg)) as served:
        served.wait_for("started")
        write(other, "after.example")
        served.process.send_signal(signal.SIGHUP)
        events = served.wait_for("reload: these settings apply only after a restart")
        (later,) = [e for e in events if e["event"].startswith("reload: these")]
        assert later["keys"] == ["proxy.listen"]
        with RawSmtpClient(port) as client:
            assert client.reply().startswith("220 after.example ")
        assert served.stop() == 0


# (id, TOML of the new file, keys that changed, those that need a restart)
DIFFS = [
    ("nothing", "", [], []),
    ("policy", "[filter]\nmax_message_size = 5\n", ["filter.max_message_size"], []),
    ("listener", '[proxy]\nlisten = "127.0.0.1:9"\n', ["proxy.listen"], ["proxy.listen"]),
    ("socket", '[milter]\nsocket_mode = "0600"\n', ["milter.socket_mode"], ["milter.socket_mode"]),
    ("user", '[server]\nuser = "nobody"\n', ["server.user"], ["server.user"]),
]  # fmt: skip


@pytest.mark.parametrize(("toml", "changed", "restart"), cases(DIFFS))
def test_changed_keys(toml: str, changed: list[str], restart: list[str]) -> None:
    got = changed_keys(Config(), from_mapping(tomllib.loads(toml)))
    assert got == changed
    assert needs_restart(got) == restart


# (id, running TOML, TOML read on SIGHUP, key, the value kept as running)
KEPT = [
    ("listen-waits", '[proxy]\nlisten = "127.0.0.1:9"\n', '[proxy]\nlisten = "127.0.0.1:8"\n',
     "proxy.listen", "127.0.0.1:9"),
    ("endpoint-not-turned-on", "", '[milter]\nlisten = "inet:127.0.0.1:8"\n',
     "milter.listen", ""),
    ("workers-wait", "[server]\nworkers = 2\n", "[server]\nworkers = 3\n", "server.workers", 2),
    ("policy-applies", '[proxy]\nlisten = "127.0.0.1:9"\n',
     '[proxy]\nlisten = "127.0.0.1:8"\nmax_errors = 3\n', "proxy.max_errors", 3),
]  # fmt: skip


@pytest.mark.parametrize(("before", "after", "key", "want"), cases(KEPT))
def test_keep_running(before: str, after: str, key: str, want: object) -> None:
    running = from_mapping(tomllib.loads(before))
    kept = keep_running(running, from_mapping(tomllib.loads(after)))
    section, name = key.split(".")
    assert getattr(getattr(kept, section), name) == want


def proxy_config(listen: int, max_errors: int = 20) -> Config:
    return from_mapping({"proxy": {"listen": f"127.0.0.1:{listen}", "max_errors": max_errors}})


class Quiet:
    """An endpoint that takes every reload."""

    def reload(self, config: Config, pipeline: object) -> None:
        self.config = config


def test_a_listen_changed_back_is_not_reported_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """app.Reloader: 10024 runs; 10026 is read (restart needed), then 10024 again (nothing)."""
    monkeypatch.setattr(app, "configure", lambda *args, **kwargs: None)
    files = [proxy_config(10026), proxy_config(10024)]
    reloader = app.Reloader(proxy_config(10024), lambda: files.pop(0), Notifier({}))
    reloader.endpoints = [Quiet()]  # type: ignore[list-item]
    got = []
    for _ in range(2):
        with structlog.testing.capture_logs() as logs:
            reloader.apply()
        later = [e["keys"] for e in logs if e["event"].startswith("reload: these settings")]
        got.append((reloader.config.proxy.listen, later))
    assert got == [("127.0.0.1:10024", [["proxy.listen"]]), ("127.0.0.1:10024", [])]


def test_the_workers_parent_keeps_the_running_listen(monkeypatch: pytest.MonkeyPatch) -> None:
    """supervisor.Supervisor.reload: restarted workers get the new policy, the old listen."""
    monkeypatch.setattr(supervisor, "configure", lambda *args, **kwargs: None)
    parent = supervisor.Supervisor(
        proxy_config(10024), 2, lambda: proxy_config(10026, max_errors=3), None
    )
    parent.notifier = Notifier({})
    parent.announced = True
    try:
        parent.reload()
        got = (parent.config.proxy.listen, parent.config.proxy.max_errors)
    finally:
        parent.clean_up()
    assert got == ("127.0.0.1:10024", 3)
