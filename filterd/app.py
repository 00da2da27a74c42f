"""One event loop running every configured endpoint; signals and a graceful stop.

Start: signal handlers and the accept-error limiter, logging, the process checks
(descriptor limit, listeners beyond loopback), then each endpoint, one `listening` line each;
a listener that cannot open is one StartError (serve_cli prints it in one line, exit 2).
Stop (SIGTERM/SIGINT): every endpoint stops accepting first, then all drain at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
import time
from collections.abc import Callable

from filterd.config import Config, ConfigError, exposed_listeners
from filterd.core import BareNewline
from filterd.core.budget import ContentBudget
from filterd.endpoints import Endpoint
from filterd.endpoints.net import AcceptErrorLimiter, descriptor_budget, raise_descriptor_limit
from filterd.logs import configure, get_logger
from filterd.pipeline import Pipeline
from filterd.scan import ClamdScanner, check_scanners

_log = get_logger("filterd.app")

EndpointFactory = Callable[[Config, Pipeline], Endpoint]


class NothingToServeError(Exception):
    """No endpoint is configured."""


class StartError(Exception):
    """An endpoint could not be set up or could not listen (e.g. address already in use)."""


def build_scanner(config: Config) -> ClamdScanner:
    clamd = config.clamd
    return ClamdScanner(
        clamd.addresses,
        max_scan_size=clamd.max_scan_size,
        max_concurrent=clamd.max_concurrent,
        connect_timeout=clamd.connect_timeout,
        io_timeout=clamd.io_timeout,
        reply_timeout=clamd.reply_timeout,
        queue_timeout=clamd.queue_timeout,
        deadline=clamd.deadline,
        health_interval=clamd.health_interval,
        health_backoff_max=clamd.health_backoff_max,
    )


def build_pipeline(config: Config) -> Pipeline:
    return Pipeline(
        config.filter,
        build_scanner(config),
        add_headers=config.headers.add,
        hostname=config.headers.hostname,
        budget=ContentBudget(config.server.max_buffered_bytes),
    )


# (config section, module, class): a module is imported only when its section has `listen`.
_ENDPOINTS = [
    ("proxy", "filterd.endpoints.proxy.endpoint", "ProxyEndpoint"),
    ("milter", "filterd.endpoints.milter.endpoint", "MilterEndpoint"),
]


def build_endpoints(config: Config, pipeline: Pipeline) -> list[Endpoint]:
    endpoints: list[Endpoint] = []
    for section, module_name, class_name in _ENDPOINTS:
        if getattr(config, section).listen:
            factory: EndpointFactory = getattr(importlib.import_module(module_name), class_name)
            try:
                endpoints.append(factory(config, pipeline))
            except ValueError as exc:
                msg = f"{section}: {exc}"
                raise StartError(msg) from exc
    if not endpoints:
        msg = "no endpoint configured: give --proxy and/or --milter (or [proxy]/[milter] listen)"
        raise NothingToServeError(msg)
    return endpoints


def addresses(endpoint: Endpoint) -> list[str]:
    """Where an endpoint listens, as bound (the real port when the config says 0)."""
    server = getattr(endpoint, "server", None)
    if not isinstance(server, asyncio.Server):
        return []
    found = []
    for sock in server.sockets:
        name = sock.getsockname()
        found.append(f"{name[0]}:{name[1]}" if isinstance(name, tuple) else f"unix:{name}")
    return found


def stop_accepting(endpoint: Endpoint) -> None:
    """Close the listening socket now; the endpoint's close() then drains its sessions.

    Endpoints define no separate hook for this yet: asyncio.Server.close() is idempotent, so
    closing it here ahead of close() is safe.
    """
    hook = getattr(endpoint, "stop_accepting", None)
    if callable(hook):
        hook()
        return
    server = getattr(endpoint, "server", None)
    if isinstance(server, asyncio.Server):
        server.close()


async def start_all(endpoints: list[Endpoint]) -> None:
    """Start every endpoint; if one cannot listen, close those already started."""
    started: list[Endpoint] = []
    for endpoint in endpoints:
        try:
            await endpoint.start()
        except (OSError, ValueError) as exc:
            await asyncio.gather(*(done.close() for done in started), return_exceptions=True)
            if isinstance(exc, ConfigError):  # names its own key, e.g. milter.listen
                raise StartError(str(exc)) from exc
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            msg = f"{endpoint.name}: cannot listen: {reason}"
            raise StartError(msg) from exc
        started.append(endpoint)
        _log.info("listening", endpoint=endpoint.name, address=addresses(endpoint))


def check_process(config: Config) -> None:
    """Descriptor limit and exposure, before anything listens."""
    budget = descriptor_budget(config)
    limit = raise_descriptor_limit(budget)
    _log.info("file descriptors", limit=limit, needed=budget.total)
    for key, address, problem in exposed_listeners(config):
        # Allowed by [server] allow_non_loopback, else Config would have refused it.
        _log.warning("listening beyond loopback", key=key, address=address, problem=problem)
    if config.filter.forbid_bare_newline is BareNewline.NO:
        # "no" passes fake end-of-data sequences through to the next hop: comparison only.
        _log.warning("forbid_bare_newline = no: SMTP smuggling is NOT blocked")


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT; then stop accepting everywhere, then drain the sessions."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):  # first: a signal during start-up counts
        loop.add_signal_handler(signum, _set_once, received, signum)
    limiter = AcceptErrorLimiter(loop.get_exception_handler())
    loop.set_exception_handler(limiter)
    try:
        configure(config.log.format, config.log.level)
        check_process(config)
        pipeline = build_pipeline(config)
        await check_scanners(pipeline.scanner)  # PING/VERSION each clamd: one line each
        endpoints = build_endpoints(config, pipeline)
        await start_all(endpoints)
        signum = await received
        started = time.monotonic()
        _log.info("stopping", signal=signum.name, endpoints=[e.name for e in endpoints])
        for endpoint in endpoints:
            stop_accepting(endpoint)
        await asyncio.gather(*(endpoint.close() for endpoint in endpoints))
        _log.info("stopped", seconds=round(time.monotonic() - started, 3))
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        limiter.cancel()
        loop.set_exception_handler(limiter.previous)


def _set_once(future: asyncio.Future[signal.Signals], signum: signal.Signals) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):
        future.set_result(signum)
