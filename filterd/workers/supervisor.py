"""The parent of the workers (`[server] workers` > 1): it never serves a connection itself.

Start: the parent checks the limits (for one worker's share), opens every listener (or takes
the sockets systemd passed) and the metrics port, gives up root, creates the shared array of
sessions in flight (filterd/endpoints/inflight.py), then forks the workers before any event loop
exists; each runs app.serve() on the sockets it was given. Once every worker has said
READY=1 over its channel, the parent logs `started` and tells systemd READY=1: it is the
service's main process (NotifyAccess=main), the workers never speak to systemd.
Supervision: a worker that dies is logged (`worker exited`, with its status) and started
again after a pause that doubles with each quick death (RESTART_FIRST up to RESTART_MAX; a
worker that ran STABLE_AFTER seconds starts the count again); its counts of sessions in
flight are zeroed at once, since its sessions died with it. Connections that arrive meanwhile
wait in the listen queues the parent keeps open. A worker that fails before the
first READY=1 stops the start: every worker is stopped and `filterd serve` exits 2.
SIGHUP: the parent reads the configuration (an invalid file: one warning, nothing is
passed on), then sends SIGHUP to every worker, which reads it and applies its share
(`reloaded`, one line per worker); restarted workers get the new one.
SIGTERM/SIGINT: STOPPING=1, the parent closes its copies of the listeners, sends SIGTERM to
every worker (each stops accepting and drains, as a single process does), waits for all of
them (at most stop_timeout(), then SIGKILL), removes its UNIX socket and metrics files, exits.
The parent runs no thread and no event loop (it forks again on a restart): one selector
waits for signals (set_wakeup_fd), the workers' channels and the metrics port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from wsgiref.simple_server import WSGIServer

import structlog

from filterd import __version__, metrics
from filterd.app import (
    StartError,
    bound_address,
    check_passed,
    check_process,
    config_shown,
    serve,
)
from filterd.config import Config
from filterd.endpoints import inflight
from filterd.endpoints.activation import ActivationError, passed_sockets
from filterd.logs import configure, get_logger
from filterd.notify import Notifier
from filterd.privileges import PrivilegeError, drop_to
from filterd.reload import keep_running
from filterd.workers.channel import Worker, pair, states
from filterd.workers.listeners import Listener, ListenError, open_listeners
from filterd.workers.shares import overcommitted, share, worker_count

_log = get_logger("filterd.workers")

RESTART_FIRST = 0.5  # seconds before a worker that died is started again
RESTART_MAX = 30.0  # the longest pause between two restarts of one worker
STABLE_AFTER = 30.0  # a worker that ran this long had no "quick death"
STOP_MARGIN = 10.0  # seconds beyond the longest drain before stragglers get SIGKILL
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def run(
    config: Config,
    *,
    reload: Callable[[], Config] | None = None,
    config_file: Path | None = None,
) -> None:
    """`filterd serve`: one process when `[server] workers` is 1, else a supervisor."""
    count = worker_count(config)
    read = reload or (lambda: config)
    if count == 1:
        asyncio.run(serve(config, reload=read, config_file=config_file))
        return
    Supervisor(config, count, read, config_file).run()


def stop_timeout(config: Config) -> float:
    """How long the workers' drain may take: the longer endpoint's, and a margin."""
    proxy = config.proxy.downstream_timeout + 2.0  # ProxyEndpoint.close: reply + grace
    milter = config.milter.drain_timeout + 2.0  # MilterEndpoint.close: drain + answers
    return max(proxy, milter) + STOP_MARGIN


@dataclass
class Slot:
    """One worker's place: its process, channel and restart state."""

    index: int
    pid: int = 0
    channel: socket.socket | None = None  # the parent's end
    ready: bool = False
    ever_ready: bool = False
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None

    @property
    def number(self) -> int:
        return self.index + 1


class Supervisor:
    def __init__(
        self, config: Config, count: int, read: Callable[[], Config], config_file: Path | None
    ) -> None:
        self.config = config
        self.count = count
        self.read = read
        self.config_file = config_file
        self.slots = [Slot(index) for index in range(count)]
        self.counts = inflight.Counts(count)  # before any fork: every worker inherits it
        self.listeners: list[Listener] = []
        self.notifier = Notifier()
        self.selector = selectors.DefaultSelector()
        self.wakeup, self.wakeup_writer = socket.socketpair()
        self.http: WSGIServer | None = None
        self.metrics_dir: Path | None = None
        self.announced = False  # `started` logged, READY=1 sent
        self.reloading = False
        self.pending_reload = False  # a SIGHUP during start-up
        self.stopping: signal.Signals | None = None
        self.stop_started = 0.0
        self.failed: int | None = None  # exit status of a worker that could not start
        self.signals_installed = False

    # --- start ---------------------------------------------------------------------------

    def run(self) -> None:
        config = self.config
        configure(config.log.format, config.log.level, syslog=config.log.syslog_target())
        for problem in overcommitted(config, self.count):
            _log.warning("workers share a budget unevenly", problem=problem)
        check_process(share(config, 0, self.count))  # worker 0 has the largest share
        try:
            self.open()
            self.install_signals()
            for slot in self.slots:
                self.spawn(slot)
            self.supervise()
        finally:
            self.clean_up()
        if self.failed is not None:
            msg = f"a worker could not start (exit status {self.failed}); its error is above"
            raise StartError(msg)

    def open(self) -> None:
        """Listeners and the metrics port, then root is given up, then the metrics files."""
        config = self.config
        try:
            passed = passed_sockets()
            check_passed(passed, _sections(config), config)
            self.listeners = open_listeners(config, self.count, passed)
        except (ActivationError, ListenError) as exc:
            raise StartError(str(exc)) from exc
        if config.metrics.listen:
            self.http = metrics.bind_http(config.metrics)
        for listener in self.listeners:
            _log.info("listening", endpoint=listener.name, address=listener.addresses(),
                      activated=listener.activated)  # fmt: skip
        try:
            dropped = drop_to(config.server.user, config.server.group)
        except (PrivilegeError, OSError) as exc:
            raise StartError(str(exc)) from exc
        if dropped is not None:
            _log.info("running as", user=dropped.user, uid=dropped.uid, gid=dropped.gid)
        if self.http is not None:
            self.metrics_dir = Path(tempfile.mkdtemp(prefix="filterd-metrics-", dir=_runtime()))
            metrics.use_multiprocess(self.metrics_dir)
            self.http.set_app(metrics.multiprocess_app(self.metrics_dir))
            self.selector.register(self.http.socket, selectors.EVENT_READ, self.scrape)

    def install_signals(self) -> None:
        self.wakeup.setblocking(False)
        self.wakeup_writer.setblocking(False)
        signal.set_wakeup_fd(self.wakeup_writer.fileno(), warn_on_full_buffer=False)
        for signum in _SIGNALS:
            signal.signal(signum, _noted)
        self.signals_installed = True
        self.selector.register(self.wakeup, selectors.EVENT_READ, self.signalled)

    # --- workers -------------------------------------------------------------------------

    def spawn(self, slot: Slot) -> None:
        parent_end, child_end = pair()
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        # Blocked across fork(): a signal meant for the new worker must not reach the
        # parent's handler in it (and be lost) before the worker has reset its handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code
            code = 1
            try:
                code = self.worker_main(slot, child_end, parent)
            except BaseException:  # the worker's last word, then _exit
                traceback.print_exc()
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        child_end.close()
        slot.pid, slot.channel, slot.ready = pid, parent_end, False
        slot.started, slot.restart_at = time.monotonic(), None
        self.selector.register(parent_end, selectors.EVENT_READ, lambda: self.heard(slot))
        _log.info("worker started", worker=slot.number, pid=pid)

    def worker_main(self, slot: Slot, channel: socket.socket, parent: int) -> int:
        """In the forked worker: drop the parent's state, then serve its share."""
        from filterd.serve_cli import START_ERRORS  # noqa: PLC0415 (serve_cli imports this module)

        signal.set_wakeup_fd(-1)
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        if not _stop_with_parent(parent):
            return 0  # the parent is already gone (killed): nobody to serve for
        self.selector.close()
        self.wakeup.close()
        self.wakeup_writer.close()
        for other in self.slots:
            if other.channel is not None:
                other.channel.close()
        if self.http is not None:
            self.http.socket.close()
        sockets = {}
        for listener in self.listeners:
            own = listener.for_worker(slot.index)
            for sock in listener.sockets:
                if sock is not own:
                    sock.close()  # another worker's accept queue
            sockets[listener.section] = own
        os.environ.pop("NOTIFY_SOCKET", None)  # the parent alone notifies systemd
        inflight.join(self.counts, slot.index)  # before serve() builds the endpoints
        structlog.contextvars.bind_contextvars(worker=slot.number)
        worker = Worker(slot.index, self.count, sockets, channel)
        own_config = share(self.config, slot.index, self.count)
        try:
            asyncio.run(
                serve(
                    own_config,
                    reload=lambda: share(self.read(), slot.index, self.count),
                    config_file=self.config_file,
                    worker=worker,
                )
            )
        except START_ERRORS as exc:
            print(f"filterd serve: worker {slot.number}: {exc}", file=sys.stderr)  # noqa: T201 (serve_cli's one line, from the worker)
            return 2
        return 0

    def heard(self, slot: Slot) -> None:
        """A datagram from a worker: READY=1 (started or reloaded), RELOADING=1, STOPPING=1."""
        if slot.channel is None:
            return
        while True:
            try:
                datagram = slot.channel.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not datagram:
                return
            said = states(datagram)
            if "READY" in said:
                slot.ready = slot.ever_ready = True
                self.all_ready()
            elif said & {"RELOADING", "STOPPING"}:
                slot.ready = False

    def all_ready(self) -> None:
        if not all(s.ready for s in self.slots) or self.stopping is not None:
            return
        if not self.announced:
            self.announced = True
            listeners = {item.name: item.addresses() for item in self.listeners}
            if self.http is not None:
                listeners["metrics"] = bound_address(self.http)
            _log.info("started", version=__version__, workers=self.count,
                      config=config_shown(self.config_file), listeners=listeners,
                      pids=[s.pid for s in self.slots])  # fmt: skip
            self.notifier.ready(self.status())
            if self.pending_reload:
                self.reload()
        elif self.reloading:
            self.reloading = False
            self.notifier.ready(self.status())

    def status(self) -> str:
        listening = [f"{item.name} on {', '.join(item.addresses())}" for item in self.listeners]
        return f"serving {'; '.join(listening)}; {self.count} workers"

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for slot in self.slots:
                if slot.pid == pid:
                    self.exited(slot, status)

    def exited(self, slot: Slot, status: int) -> None:
        pid = slot.pid
        if slot.channel is not None:
            self.selector.unregister(slot.channel)
            slot.channel.close()
        slot.pid, slot.channel, slot.ready = 0, None, False
        self.counts.clear(slot.index)  # its sessions are gone: not counted against the limit
        if self.metrics_dir is not None:
            metrics.worker_exited(pid, self.metrics_dir)
        how = _status(status)
        if self.stopping is not None:
            _log.info("worker exited", worker=slot.number, pid=pid, status=how)
            return
        if not slot.ever_ready and not self.announced:
            _log.error("worker could not start", worker=slot.number, pid=pid, status=how)
            self.failed = os.waitstatus_to_exitcode(status)
            self.stop(signal.SIGTERM)
            return
        lived = time.monotonic() - slot.started
        slot.quick_deaths = 0 if lived >= STABLE_AFTER else slot.quick_deaths + 1
        delay = min(RESTART_MAX, RESTART_FIRST * 2 ** max(0, slot.quick_deaths - 1))
        slot.restart_at = time.monotonic() + delay
        _log.error("worker exited", worker=slot.number, pid=pid, status=how,
                   lived=round(lived, 3), restart_in=delay)  # fmt: skip

    def restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now and self.stopping is None:
                self.spawn(slot)

    # --- signals -------------------------------------------------------------------------

    def signalled(self) -> None:
        try:
            numbers = self.wakeup.recv(512)
        except (BlockingIOError, InterruptedError):
            return
        for number in numbers:
            signum = signal.Signals(number)
            if signum == signal.SIGCHLD:
                self.reap()
            elif signum == signal.SIGHUP:
                self.reload()
            else:
                self.stop(signum)

    def reload(self) -> None:
        if self.stopping is not None:
            return
        if not self.announced:
            self.pending_reload = True
            return
        self.notifier.reloading()
        try:
            new = self.read()
        except ValueError as exc:  # ConfigError, AddressError, ...
            _log.warning("reload failed; the running configuration stays", error=str(exc))
            self.notifier.ready(self.status())
            return
        # For the workers started from now on; the listeners and the count stay as they are.
        self.config = keep_running(self.config, new)
        configure(new.log.format, new.log.level, syslog=new.log.syslog_target())
        self.reloading = True
        for slot in self.slots:
            if slot.pid:
                slot.ready = False
                os.kill(slot.pid, signal.SIGHUP)
        if not any(slot.pid for slot in self.slots):
            self.all_ready()

    def stop(self, signum: signal.Signals) -> None:
        if self.stopping is not None:
            return
        self.stopping, self.stop_started = signum, time.monotonic()
        self.notifier.stopping()
        _log.info("stopping", signal=signum.name, workers=self.count,
                  endpoints=[item.name for item in self.listeners])  # fmt: skip
        for listener in self.listeners:
            listener.close()  # the parent's copies: nothing new waits where nobody serves
        for slot in self.slots:
            slot.restart_at = None
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)

    # --- the loop ------------------------------------------------------------------------

    def supervise(self) -> None:
        while self.stopping is None or any(slot.pid for slot in self.slots):
            for key, _ in self.selector.select(self.timeout()):
                key.data()
            self.reap()  # a SIGCHLD may have come before the handler was in place
            self.restart_due()
            self.kill_stragglers()
        _log.info("stopped", seconds=round(time.monotonic() - self.stop_started, 3))

    def timeout(self) -> float | None:
        now = time.monotonic()
        times = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        if self.stopping is not None:
            times.append(self.stop_started + stop_timeout(self.config))
        return max(0.0, min(times) - now) if times else None

    def kill_stragglers(self) -> None:
        if self.stopping is None:
            return
        if time.monotonic() < self.stop_started + stop_timeout(self.config):
            return
        for slot in self.slots:
            if slot.pid:
                _log.error("worker did not stop in time; killing it", worker=slot.number,
                           pid=slot.pid)  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)

    def scrape(self) -> None:
        if self.http is not None:
            self.http.handle_request()

    def clean_up(self) -> None:
        if self.signals_installed:
            signal.set_wakeup_fd(-1)
            for signum in _SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
        for listener in self.listeners:
            listener.close()
            listener.remove()
        if self.http is not None:
            self.http.server_close()
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.selector.close()
        self.wakeup.close()
        self.wakeup_writer.close()


def _stop_with_parent(parent: int) -> bool:
    """Ask the kernel for SIGTERM when the parent dies (prctl(2) PR_SET_PDEATHSIG), so that
    a parent killed with SIGKILL leaves no worker behind holding the listeners; False when
    it has died already. Not Linux: the workers then outlive a killed parent."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    return os.getppid() == parent


def _noted(signum: int, frame: FrameType | None) -> None:
    """The signal's number reaches the selector through set_wakeup_fd."""


def _sections(config: Config) -> set[str]:
    return {section for section in ("proxy", "milter") if getattr(config, section).listen}


def _runtime() -> str:
    """systemd's RuntimeDirectory (the first, if several), else the temporary directory."""
    given = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return given or tempfile.gettempdir()


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.waitstatus_to_exitcode(status)}"
