"""app.serve: stop accepting everywhere first, then drain every endpoint at the same time;
SIGHUP hands every endpoint the new configuration (or, if it does not read, nothing)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from filterd import app
from filterd.config import Config, ConfigError, MilterSettings, ProxySettings
from filterd.core import Policy


class Recorder:
    """An endpoint that records what app.serve asks of it."""

    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self.events = events

    async def start(self) -> None:
        self.events.append(f"{self.name} start")

    def reload(self, config: Config, pipeline: object) -> None:
        size = config.filter.max_message_size
        self.events.append(f"{self.name} reload {size} {type(pipeline).__name__}")

    def stop_accepting(self) -> None:
        self.events.append(f"{self.name} stop accepting")

    async def close(self) -> None:
        self.events.append(f"{self.name} drain begins")
        await asyncio.sleep(0.05)
        self.events.append(f"{self.name} drain ends")


@pytest.fixture(autouse=True)
def quiet_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "configure", lambda *args, **kwargs: None)


async def test_stop_accepting_everywhere_before_any_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    fakes = [Recorder("a", events), Recorder("b", events)]
    monkeypatch.setattr(app, "build_endpoints", lambda config, pipeline: fakes)
    serving = asyncio.create_task(app.serve(Config()))
    await until(lambda: "b start" in events)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, 5)
    assert events == [
        "a start", "b start",
        "a stop accepting", "b stop accepting",
        "a drain begins", "b drain begins",  # concurrently: b does not wait for a
        "a drain ends", "b drain ends",
    ]  # fmt: skip


async def until(condition: Callable[[], bool]) -> None:
    """Wait (10 s at most) for app.serve to reach a state; its signal handlers come first."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("app.serve did not get there in 10 s")


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_a_draining_proxy_does_not_keep_the_milter_accepting() -> None:
    """Real endpoints: while the proxy is still draining, the milter port is already closed."""
    config = Config(
        proxy=ProxySettings(listen="127.0.0.1:0", downstream="127.0.0.1:1"),
        milter=MilterSettings(listen="inet:127.0.0.1:0"),
    )
    endpoints: list[Any] = []
    real_build = app.build_endpoints
    release = asyncio.Event()

    def build(config: Config, pipeline: Any) -> list[Any]:
        endpoints.extend(real_build(config, pipeline))
        proxy_close = endpoints[0].close

        async def slow_close() -> None:  # a drain that lasts until the test has looked
            await release.wait()
            await proxy_close()

        endpoints[0].close = slow_close
        return endpoints

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app, "build_endpoints", build)
        serving = asyncio.create_task(app.serve(config))
        await until(lambda: len(endpoints) == 2 and all(e.server for e in endpoints))
        proxy, milter = endpoints
        milter_port, proxy_port = milter.port, proxy.port
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert not serving.done(), "the proxy is still draining"
        assert await refused(milter_port), "the milter must stop accepting at once"
        assert await refused(proxy_port), "and so must the proxy"
        release.set()
        await asyncio.wait_for(serving, 15)


async def test_sighup_gives_every_endpoint_the_new_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHUP: each endpoint gets the config `reload()` returns and a new pipeline; a read
    that fails is one warning naming the key, and no endpoint hears of it."""
    events: list[str] = []
    fakes = [Recorder("a", events), Recorder("b", events)]
    monkeypatch.setattr(app, "build_endpoints", lambda config, pipeline: fakes)
    files = [Config(filter=Policy(max_message_size=1000))]

    def read() -> Config:
        if not files:
            raise ConfigError("filter.max_message_size: 0 is not a positive number")
        return files.pop()

    with capture_logs() as logs:
        serving = asyncio.create_task(app.serve(Config(), reload=read))
        await until(lambda: "b start" in events)
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: "b reload 1000 Pipeline" in events)
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: any(e["event"].startswith("reload failed") for e in logs))
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(serving, 5)
    assert [e for e in events if "reload" in e] == [
        "a reload 1000 Pipeline",
        "b reload 1000 Pipeline",
    ]
    (done,) = [e for e in logs if e["event"] == "reloaded"]
    assert done["changed"] == ["filter.max_message_size"]
    (failed,) = [e for e in logs if e["event"].startswith("reload failed")]
    assert failed["log_level"] == "warning"
    assert failed["error"].startswith("filter.max_message_size:")


async def test_a_sighup_during_start_up_is_applied_once_listening(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    release = asyncio.Event()

    class Slow(Recorder):
        async def start(self) -> None:
            await release.wait()
            await super().start()

    monkeypatch.setattr(app, "build_endpoints", lambda config, pipeline: [Slow("a", events)])
    serving = asyncio.create_task(
        app.serve(Config(), reload=lambda: Config(filter=Policy(max_message_size=5)))
    )
    await asyncio.sleep(0.1)
    os.kill(os.getpid(), signal.SIGHUP)  # the endpoint is not listening yet
    await asyncio.sleep(0.1)
    assert events == []
    release.set()
    await until(lambda: "a reload 5 Pipeline" in events)
    assert events == ["a start", "a reload 5 Pipeline"]
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, 5)
