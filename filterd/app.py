"""One event loop running every configured endpoint; signals, reload and a graceful stop.

Start: signal handlers and the accept-error limiter, logging, the process checks
(descriptor limit, listeners beyond loopback), then each endpoint, one `listening` line each
(on the socket systemd passed, if any: filterd.endpoints.activation); then root is given up
(`[server] user`), one `started` line gives version, configuration file and listeners, and
the service manager hears READY=1. A listener that cannot open is one StartError
(serve_cli prints it in one line, exit 2).
Reload (SIGHUP): the configuration is read again; new sessions get the new settings and
pipeline, sessions in progress finish with theirs; an invalid file keeps the running
configuration (one warning naming section.key); listeners and the user change only on restart.
Stop (SIGTERM/SIGINT): every endpoint stops accepting first, then all drain at once.
With `[server] workers` > 1, filterd.workers.supervisor runs this in each worker process
(`worker=`): the parent has opened the listeners, checked the limits and given up root, so
the worker serves the sockets it was given, says READY=1 to its parent instead of systemd, and
logs `worker ready` / `worker stopped` where the parent logs `started` / `stopped`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from filterd import __version__
from filterd.config import Config, ConfigError, exposed_listeners
from filterd.core import BareNewline
from filterd.core.budget import ContentBudget
from filterd.endpoints import Endpoint
from filterd.endpoints.activation import ActivationError, describe, passed_sockets
from filterd.endpoints.net import (
    AcceptErrorLimiter,
    DescriptorLimitError,
    descriptor_budget,
    raise_descriptor_limit,
)
from filterd.logs import configure, get_logger
from filterd.metrics import start_metrics
from filterd.notify import Notifier
from filterd.pipeline import Pipeline
from filterd.privileges import PrivilegeError, drop_to
from filterd.reload import changed_keys, keep_running, needs_restart
from filterd.scan import ClamdScanner, Scanner, check_scanners
from filterd.workers.channel import Worker

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
        session_idle=clamd.session_idle,
    )


def build_pipeline(
    config: Config, *, scanner: Scanner | None = None, budget: ContentBudget | None = None
) -> Pipeline:
    """The pipeline for `config`; a reload passes the running scanner (its clamd slots) and
    content budget when their settings did not change, so old and new sessions share them."""
    return Pipeline(
        config.filter,
        scanner or build_scanner(config),
        add_headers=config.headers.add,
        hostname=config.headers.hostname,
        budget=budget or ContentBudget(config.server.max_buffered_bytes),
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
    return [describe(sock.getsockname()) for sock in server.sockets]


def hand_over(endpoints: list[Endpoint], passed: dict[str, socket.socket], config: Config) -> None:
    """Give each endpoint the socket systemd passed under its name, to serve as is.

    The socket unit, not `listen`, then decides the address: the loopback rule of
    `[server] allow_non_loopback` is applied to the address the socket really has."""
    sections = {getattr(endpoint, "section", endpoint.name): endpoint for endpoint in endpoints}
    check_passed(passed, set(sections), config)
    for name, sock in passed.items():
        sections[name].passed = sock


def check_passed(passed: dict[str, socket.socket], sections: set[str], config: Config) -> None:
    """Each passed socket has its endpoint configured, and the loopback rule holds."""
    for name, sock in passed.items():
        if name not in sections:
            msg = (
                f"socket activation: a {name!r} socket was passed but {name}.listen is not "
                f"set; set it (to the .socket unit's address) or remove filterd-{name}.socket"
            )
            raise StartError(msg)
        address = sock.getsockname()
        if _beyond_loopback(address) and not config.server.allow_non_loopback:
            msg = (
                f"socket activation: the {name} socket listens on {describe(address)}, not "
                "loopback; filterd listens on loopback only unless [server] "
                "allow_non_loopback = true"
            )
            raise StartError(msg)


def _beyond_loopback(address: str | tuple[str, int]) -> bool:
    """A TCP address that is not loopback (::ffff:127.0.0.1 is); UNIX sockets are not."""
    if not isinstance(address, tuple):
        return False
    host = ipaddress.ip_address(address[0])
    mapped = getattr(host, "ipv4_mapped", None)
    return not (host.is_loopback or (mapped is not None and mapped.is_loopback))


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


async def start_all(endpoints: list[Endpoint], *, quiet: bool = False) -> None:
    """Start every endpoint; if one cannot listen, close those already started. `quiet`:
    no `listening` line (a worker: its parent wrote them)."""
    started: list[Endpoint] = []
    for endpoint in endpoints:
        try:
            await endpoint.start()
        except (OSError, ValueError) as exc:
            await asyncio.gather(*(done.close() for done in started), return_exceptions=True)
            if isinstance(exc, ConfigError):  # names its own key, e.g. milter.listen
                raise StartError(str(exc)) from exc
            # asyncio's bind error repeats the address in strerror: the errno's text is enough.
            reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
            section = getattr(endpoint, "section", endpoint.name)
            address = getattr(getattr(endpoint, "settings", None), "listen", "")
            msg = f"{section}.listen: cannot listen on {address!r}: {reason}"
            raise StartError(msg) from exc
        started.append(endpoint)
        if quiet:
            continue
        activated = getattr(endpoint, "passed", None) is not None  # systemd's socket
        _log.info(
            "listening", endpoint=endpoint.name, address=addresses(endpoint), activated=activated
        )


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


def started_fields(
    config_file: Path | None, endpoints: list[Endpoint], metrics: list[str] | None = None
) -> dict[str, object]:
    """The `started` line: version, the configuration file (absolute) and every listener,
    the metrics endpoint's too when `[metrics] listen` is set (`metrics`: where it is bound)."""
    listeners = {endpoint.name: addresses(endpoint) for endpoint in endpoints}
    if metrics:
        listeners["metrics"] = metrics
    return {"version": __version__, "config": config_shown(config_file), "listeners": listeners}


def bound_address(server: WSGIServer | None) -> list[str]:
    """Where the /metrics server listens, as bound (the real port when listen says 0)."""
    return [] if server is None else [describe(server.socket.getsockname())]


def config_shown(config_file: Path | None) -> str:
    """The configuration file as an absolute path (the working directory is not logged)."""
    # abspath: `..` removed, symlinks kept as given (resolve() would follow them).
    return os.path.abspath(config_file) if config_file else "defaults"  # noqa: PTH100


def status_line(endpoints: list[Endpoint]) -> str:
    """STATUS= for the service manager: what listens where."""
    listening = [f"{e.name} on {', '.join(addresses(e))}" for e in endpoints]
    return "serving " + "; ".join(listening)


# What a reload that cannot be applied raises: ConfigError, AddressError (ValueError), or the
# descriptor limit of the new budgets.
RELOAD_ERRORS = (ValueError, DescriptorLimitError)


class Reloader:
    """SIGHUP: read the configuration again and give every endpoint the new one.

    `read` blocks (serve_cli.settings runs postconf and reads clamd.conf, about a second):
    it runs in a thread (asyncio.to_thread), so sessions in progress go on meanwhile; the
    new configuration is applied on the event loop. A SIGHUP while a reload runs is kept and
    read once that one is done."""

    def __init__(self, config: Config, read: Callable[[], Config], notifier: Notifier) -> None:
        self.config = config
        self.read = read
        self.pipeline: Pipeline | None = None  # set with the endpoints
        self.notifier = notifier
        self.endpoints: list[Endpoint] = []  # set once they all listen
        self.pending = False  # a SIGHUP came during start-up, or during a reload
        self.task: asyncio.Task[None] | None = None  # the reload running
        self.stopped = False

    def request(self) -> None:
        """The SIGHUP handler, on the event loop: start a reload, or keep it for later."""
        if self.stopped:
            return
        if not self.endpoints or self.task is not None:
            self.pending = True
            return
        self.pending = False
        self.task = asyncio.get_running_loop().create_task(self.reload())
        self.task.add_done_callback(self.reloaded)

    def reloaded(self, task: asyncio.Task[None]) -> None:
        self.task = None
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:  # a bug: reported as a failing signal handler was before
            context = {"message": "reload failed", "exception": error, "task": task}
            asyncio.get_running_loop().call_exception_handler(context)
        if self.pending:
            self.request()

    async def reload(self) -> None:
        self.notifier.reloading()
        try:
            try:
                read = await asyncio.to_thread(self.read)
            except RELOAD_ERRORS as exc:
                _failed(exc)
                return
            self.apply(read)
        finally:
            self.notifier.ready(status_line(self.endpoints))

    async def cancel(self) -> None:
        """At stop: no reload from now on; one still reading is not applied (its thread
        ends on its own, and asyncio.run waits for it)."""
        self.stopped = True
        task = self.task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def apply(self, read: Config | None = None) -> None:
        """Apply the configuration `read` (None: read it here, blocking)."""
        try:
            if read is None:
                read = self.read()
            new = keep_running(self.config, read)  # the listeners and user stay as they are
            check_process(new)
            pipeline = self.rebuild(new)
            for endpoint in self.endpoints:
                endpoint.reload(new, pipeline)
        except RELOAD_ERRORS as exc:
            _failed(exc)
            return
        changed = changed_keys(self.config, read)
        self.config, self.pipeline = new, pipeline
        configure(new.log.format, new.log.level, syslog=new.log.syslog_target())
        _log.info("reloaded", changed=changed)
        later = needs_restart(changed)
        if later:
            _log.warning("reload: these settings apply only after a restart", keys=later)

    def rebuild(self, new: Config) -> Pipeline:
        """The new pipeline, keeping the scanner and the budget whose settings are unchanged."""
        old, running = self.config, self.pipeline
        if running is None:
            return build_pipeline(new)
        same_clamd = new.clamd == old.clamd
        same_budget = new.server.max_buffered_bytes == old.server.max_buffered_bytes
        return build_pipeline(
            new,
            scanner=running.scanner if same_clamd else None,
            budget=running.budget if same_budget else None,
        )


def _failed(exc: Exception) -> None:
    _log.warning("reload failed; the running configuration stays", error=str(exc))


async def serve(
    config: Config,
    *,
    reload: Callable[[], Config] | None = None,
    config_file: Path | None = None,
    worker: Worker | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, reloading on SIGHUP with `reload()` (None: the same
    config again); then stop accepting everywhere, then drain the sessions. `worker`: run as
    one of several worker processes (filterd.workers)."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):  # first: a signal during start-up counts
        loop.add_signal_handler(signum, _set_once, received, signum)
    notifier = Notifier(channel=worker.channel) if worker else Notifier()
    reloader = Reloader(config, reload or (lambda: config), notifier)
    # A SIGHUP during start-up is kept and applied once every endpoint listens.
    loop.add_signal_handler(signal.SIGHUP, reloader.request)
    limiter = AcceptErrorLimiter(loop.get_exception_handler())
    loop.set_exception_handler(limiter)
    try:
        configure(config.log.format, config.log.level, syslog=config.log.syslog_target())
        if worker is None:
            check_process(config)  # a worker's parent checked its share
        pipeline = build_pipeline(config)
        endpoints = build_endpoints(config, pipeline)
        running = start_metrics(config.metrics, endpoints, worker=worker is not None)
        if worker is None or worker.index == 0:  # one set of clamd lines, not one per worker
            await check_scanners(pipeline.scanner)  # PING/VERSION each clamd: one line each
        if worker is None:
            await open_all(endpoints, config)
            fields = started_fields(config_file, endpoints, bound_address(running.server))
            _log.info("started", **fields)
        else:
            await open_given(endpoints, worker)
        notifier.ready(status_line(endpoints))
        reloader.pipeline, reloader.endpoints = pipeline, endpoints
        if reloader.pending:
            reloader.request()
        signum = await received
        await reloader.cancel()  # first: its READY=1 must not follow STOPPING=1
        notifier.stopping()
        await stop_all(endpoints, signum, quiet=worker is not None)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        limiter.cancel()
        loop.set_exception_handler(limiter.previous)


async def open_all(endpoints: list[Endpoint], config: Config) -> None:
    """Listen (on the sockets systemd passed, if any), then give up root."""
    try:
        hand_over(endpoints, passed_sockets(), config)
    except ActivationError as exc:
        raise StartError(str(exc)) from exc
    await start_all(endpoints)
    try:
        dropped = drop_to(config.server.user, config.server.group)
    except (PrivilegeError, OSError) as exc:
        await asyncio.gather(*(endpoint.close() for endpoint in endpoints))
        raise StartError(str(exc)) from exc
    if dropped is not None:
        _log.info("running as", user=dropped.user, uid=dropped.uid, gid=dropped.gid)


async def open_given(endpoints: list[Endpoint], worker: Worker) -> None:
    """A worker: serve the sockets the parent opened (filterd.workers.listeners)."""
    for endpoint in endpoints:
        endpoint.passed = worker.sockets[getattr(endpoint, "section", endpoint.name)]
    await start_all(endpoints, quiet=True)
    _log.info("worker ready", pid=os.getpid())


async def stop_all(
    endpoints: list[Endpoint], signum: signal.Signals, *, quiet: bool = False
) -> None:
    """Stop accepting, then drain. `quiet`: a worker, whose parent logs `stopping`."""
    started = time.monotonic()
    if not quiet:
        _log.info("stopping", signal=signum.name, endpoints=[e.name for e in endpoints])
    for endpoint in endpoints:
        stop_accepting(endpoint)
    await asyncio.gather(*(endpoint.close() for endpoint in endpoints))
    seconds = round(time.monotonic() - started, 3)
    if quiet:
        _log.info("worker stopped", seconds=seconds)
    else:
        _log.info("stopped", seconds=seconds)


def _set_once(future: asyncio.Future[signal.Signals], signum: signal.Signals) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):
        future.set_result(signum)
