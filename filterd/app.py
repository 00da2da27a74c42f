"""One event loop running every configured endpoint; signals and a graceful stop."""

from __future__ import annotations

import asyncio
import importlib
import signal
from collections.abc import Callable

from filterd.config import Config
from filterd.core import BareNewline
from filterd.endpoints import Endpoint
from filterd.logs import configure, get_logger
from filterd.pipeline import Pipeline
from filterd.scan import ClamdScanner

_log = get_logger("filterd.app")

EndpointFactory = Callable[[Config, Pipeline], Endpoint]


class NothingToServeError(Exception):
    """No endpoint is configured."""


def build_scanner(config: Config) -> ClamdScanner:
    clamd = config.clamd
    return ClamdScanner(
        clamd.address,
        max_scan_size=clamd.max_scan_size,
        max_concurrent=clamd.max_concurrent,
        connect_timeout=clamd.connect_timeout,
        io_timeout=clamd.io_timeout,
        reply_timeout=clamd.reply_timeout,
        queue_timeout=clamd.queue_timeout,
    )


def build_pipeline(config: Config) -> Pipeline:
    return Pipeline(
        config.filter,
        build_scanner(config),
        add_headers=config.headers.add,
        hostname=config.headers.hostname,
    )


# (config section, module, class): a module is imported only when its section has `listen`.
_ENDPOINTS = [
    ("proxy", "filterd.endpoints.smtp", "ProxyEndpoint"),
    ("milter", "filterd.endpoints.milter", "MilterEndpoint"),
]


def build_endpoints(config: Config, pipeline: Pipeline) -> list[Endpoint]:
    endpoints: list[Endpoint] = []
    for section, module_name, class_name in _ENDPOINTS:
        if getattr(config, section).listen:
            factory: EndpointFactory = getattr(importlib.import_module(module_name), class_name)
            endpoints.append(factory(config, pipeline))
    if not endpoints:
        msg = "no endpoint configured: give --proxy and/or --milter (or [proxy]/[milter] listen)"
        raise NothingToServeError(msg)
    return endpoints


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then stop accepting and let sessions finish."""
    configure(config.log.format, config.log.level)
    pipeline = build_pipeline(config)
    endpoints = build_endpoints(config, pipeline)
    if config.filter.forbid_bare_newline is BareNewline.NO:
        # "no" passes fake end-of-data sequences through to the next hop: comparison only.
        _log.warning("forbid_bare_newline = no: SMTP smuggling is NOT blocked")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    for endpoint in endpoints:
        await endpoint.start()
        _log.info("listening", endpoint=endpoint.name)
    await stop.wait()
    _log.info("stopping", endpoints=[endpoint.name for endpoint in endpoints])
    await asyncio.gather(*(endpoint.close() for endpoint in endpoints))
