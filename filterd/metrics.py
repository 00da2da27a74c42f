"""Prometheus metrics: counted at one place per fact, served over HTTP by prometheus_client.

Per-message facts are counted from the canonical log line's fields (`record_message`, called by
`Pipeline.log`), so the metrics and the log can never disagree and the sans-I/O core stays
free of instrumentation. Facts that are states, not events (sessions open per endpoint, content
memory in use, the clamd pool's slots, queue, and per-address health and counts), are read when
Prometheus scrapes (`StateCollector`), from the objects that own them. `start_metrics()` is
the one call in `app.serve()`; `[metrics] listen` empty means no HTTP server, while the
counters still count (cheap, and the tests read them directly).

prometheus_client is the ecosystem's own client (maintained by the Prometheus project); its
HTTP server runs in a daemon thread, so a slow scraper never blocks the event loop.

Several worker processes (`[server] workers` > 1, filterd.workers) use prometheus_client's
multiprocess mode, so that one scrape sums them all:
- the parent calls `use_multiprocess(directory)` before the first worker is forked: a private
  empty directory (under systemd's RuntimeDirectory, else the temporary directory), named
  by PROMETHEUS_MULTIPROC_DIR; from then on every counter and histogram value lives in a file
  per process there (the library picks its value class when it is imported, so it is picked
  again here: no metric value exists yet in the parent);
- the parent serves a `CollectorRegistry` holding only a `MultiProcessCollector`
  (`multiprocess_app`), and calls `multiprocess.mark_process_dead(pid)` for each worker that
  exits (its counts stay in the sums; its gauges leave them);
- callback gauges (`StateCollector`) cannot cross processes, so each worker writes the same
  figures into `livesum` gauges once a second (`Publisher`): they are summed over the live
  workers, and may lag by that second.
A clamd pool (issue 12) adds a `clamd` label to SCAN_ERRORS and SCAN_SECONDS, counted here from
a `clamd` field on the message line once the scanner's result carries the address.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.core import Metric as Family
from prometheus_client.registry import Collector

from filterd.address import AddressError, parse_host_port
from filterd.config import ConfigError, MetricsSettings

# Scan times of small mail are well under 5 ms (measured: docs/explanation/design.md), so the
# buckets start at 1 ms; the top ones reach the default clamd reply timeout.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Metric:
    """One exposed metric, for docs/reference/metrics.md (generated from DOCUMENTED)."""

    name: str  # as scraped (counters end in _total)
    kind: str  # counter | histogram | gauge
    labels: tuple[str, ...]
    help: str


DOCUMENTED: list[Metric] = []


def _counter(name: str, help_text: str, labels: tuple[str, ...]) -> Counter:
    DOCUMENTED.append(Metric(f"{name}_total", "counter", labels, help_text))
    return Counter(name, help_text, labels)


def _histogram(name: str, help_text: str, labels: tuple[str, ...]) -> Histogram:
    DOCUMENTED.append(Metric(name, "histogram", labels, help_text))
    return Histogram(name, help_text, labels, buckets=SECONDS_BUCKETS)


def _gauge(name: str, help_text: str, labels: tuple[str, ...]) -> Metric:
    metric = Metric(name, "gauge", labels, help_text)
    DOCUMENTED.append(metric)
    return metric


MESSAGES = _counter(
    "filterd_messages",
    "Messages answered, by endpoint, action (accept, reject, tempfail, discard, unanswered) "
    "and reason (docs/reference/verdicts.md)",
    ("endpoint", "action", "reason"),
)
VIRUSES = _counter("filterd_viruses", "Viruses found, by signature name", ("endpoint", "virus"))
FINDINGS = _counter(
    "filterd_findings",
    "Framing findings on the message line (bare_lf, bare_cr, fake_end_of_data, ...), by kind",
    ("endpoint", "finding"),
)
SCAN_ERRORS = _counter(
    "filterd_scan_errors", "Scans that failed, by the scanner's reason", ("endpoint", "error")
)
SCAN_SECONDS = _histogram(
    "filterd_scan_seconds", "Scan time in seconds, queue wait for a clamd slot included",
    ("endpoint",),
)  # fmt: skip
DECISION_SECONDS = _histogram(
    "filterd_decision_seconds", "Seconds from the end of the content to the verdict", ("endpoint",)
)
SESSIONS = _gauge(
    "filterd_sessions_open", "Sessions (proxy) or MTA connections (milter) open now", ("endpoint",)
)
BUDGET = _gauge(
    "filterd_content_budget_bytes",
    "Message content held in memory now (in_use) and its limit ([server] max_buffered_bytes)",
    ("kind",),
)
# The clamd pool (filterd/scan/clamd.py), read from ClamdScanner.slots and .stats().
CLAMD_SLOTS = _gauge(
    "filterd_clamd_slots",
    "clamd scan slots taken now (in_use) and their number (limit: [clamd] max_concurrent "
    "times the addresses of the pool)",
    ("kind",),
)
CLAMD_QUEUED = _gauge(
    "filterd_clamd_queued", "Scans waiting for a free clamd slot now (the queue length)", ()
)
CLAMD_HEALTHY = _gauge(
    "filterd_clamd_healthy",
    "1 while the clamd at this address answers (PING or scan), else 0; with several "
    "workers, 0 when any worker sees it down",
    ("clamd",),
)


def _state_counter(name: str, help_text: str, labels: tuple[str, ...]) -> Metric:
    """A counter read from the object that counts (the clamd pool), not incremented here."""
    metric = Metric(f"{name}_total", "counter", labels, help_text)
    DOCUMENTED.append(metric)
    return metric


CLAMD_SCANS = _state_counter(
    "filterd_clamd_scans", "Scan attempts sent to this clamd address, retries included",
    ("clamd",),
)  # fmt: skip
CLAMD_ERRORS = _state_counter(
    "filterd_clamd_errors",
    "Scan attempts that failed at this clamd address (connect, lost connection, timeout, "
    "clamd's ERROR)",
    ("clamd",),
)


def record_message(fields: dict[str, Any]) -> None:
    """Count one message from its canonical log line (MessageRecord.fields())."""
    endpoint = str(fields["endpoint"])
    MESSAGES.labels(endpoint, fields["action"], fields["reason"]).inc()
    if fields.get("virus"):
        VIRUSES.labels(endpoint, fields["virus"]).inc()
    for finding in fields.get("findings") or ():
        FINDINGS.labels(endpoint, finding).inc()
    if fields.get("scan_error"):
        SCAN_ERRORS.labels(endpoint, fields["scan_error"]).inc()
    if fields.get("scan_time") is not None:
        SCAN_SECONDS.labels(endpoint).observe(fields["scan_time"])
    if fields.get("elapsed") is not None:
        DECISION_SECONDS.labels(endpoint).observe(fields["elapsed"])


def sessions_open(endpoint: object) -> int:
    """Sessions (proxy) or MTA connections (milter) an endpoint holds now."""
    held: Sized | None = getattr(endpoint, "sessions", None)
    if held is None:
        held = getattr(endpoint, "connections", ())
    return len(held)


class StateCollector(Collector):
    """Read at scrape time: sessions per endpoint, content memory in use, the clamd pool."""

    def __init__(self, endpoints: Iterable[object]) -> None:
        self.endpoints = list(endpoints)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        sessions = GaugeMetricFamily(SESSIONS.name, SESSIONS.help, labels=SESSIONS.labels)
        in_use = GaugeMetricFamily(BUDGET.name, BUDGET.help, labels=BUDGET.labels)
        for endpoint in self.endpoints:
            name = str(getattr(endpoint, "name", "")).split(" ", 1)[0]
            sessions.add_metric([name], sessions_open(endpoint))
        for budget in self.owned("budget"):  # one pipeline (and budget) per process today
            in_use.add_metric(["in_use"], budget.in_use)
            in_use.add_metric(["limit"], budget.limit)
        yield sessions
        yield in_use
        yield from self.clamd()

    def owned(self, name: str) -> list[Any]:
        """The endpoints' pipelines' `name` (budget, scanner), each object once."""
        found: dict[int, Any] = {}
        for endpoint in self.endpoints:
            thing = getattr(getattr(endpoint, "pipeline", None), name, None)
            if thing is not None:
                found[id(thing)] = thing
        return list(found.values())

    def clamd(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The clamd pool's slots, queue and per-address figures (a ClamdScanner only)."""
        slots = GaugeMetricFamily(CLAMD_SLOTS.name, CLAMD_SLOTS.help, labels=CLAMD_SLOTS.labels)
        queued = GaugeMetricFamily(CLAMD_QUEUED.name, CLAMD_QUEUED.help)
        healthy = GaugeMetricFamily(
            CLAMD_HEALTHY.name, CLAMD_HEALTHY.help, labels=CLAMD_HEALTHY.labels
        )
        scans = _counter_family(CLAMD_SCANS)
        errors = _counter_family(CLAMD_ERRORS)
        for scanner in self.owned("scanner"):
            pool, stats = getattr(scanner, "slots", None), getattr(scanner, "stats", None)
            if pool is None or stats is None:
                continue  # not a clamd pool (FakeScanner)
            slots.add_metric(["in_use"], pool.in_use)
            slots.add_metric(["limit"], pool.limit)
            queued.add_metric([], pool.queued)
            for member in stats():
                healthy.add_metric([member.address], int(member.healthy))
                scans.add_metric([member.address], member.scans)
                errors.add_metric([member.address], member.errors)
        yield from (slots, queued, healthy, scans, errors)


def _counter_family(metric: Metric) -> CounterMetricFamily:
    return CounterMetricFamily(
        metric.name.removesuffix("_total"), metric.help, labels=metric.labels
    )


MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_INTERVAL = 1.0  # seconds between two writes of a worker's gauges
_live: dict[str, Gauge] = {}  # the workers' livesum gauges, made by use_multiprocess()
# The counters read from the clamd pool: a worker adds what they grew by since it last
# published, so the counts of a worker that died stay in the sums.
_live_counters: dict[str, Counter] = {}


def use_multiprocess(directory: Path) -> None:
    """Keep every metric value in files under `directory` (the parent, before forking)."""
    os.environ[MULTIPROC_VARIABLE] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    for metric in (SESSIONS, BUDGET, CLAMD_SLOTS, CLAMD_QUEUED, CLAMD_HEALTHY):
        # Healthy is not a sum: the lowest over the live workers (0 if any sees it down).
        lowest = metric is CLAMD_HEALTHY
        _live[metric.name] = Gauge(
            metric.name, metric.help, metric.labels, registry=None,
            multiprocess_mode="livemin" if lowest else "livesum",
        )  # fmt: skip
    for metric in (CLAMD_SCANS, CLAMD_ERRORS):
        name = metric.name.removesuffix("_total")
        _live_counters[name] = Counter(name, metric.help, metric.labels, registry=None)


def multiprocess_app(directory: Path) -> Callable[..., Any]:
    """The WSGI application serving the sum of every worker's files in `directory`."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return make_wsgi_app(registry)


def worker_exited(pid: int, directory: Path) -> None:
    """A worker is gone: its gauges leave the sums (its counts stay)."""
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


class Publisher:
    """A worker's state gauges, written to its multiprocess files once a second."""

    def __init__(self, collector: StateCollector) -> None:
        self.collector = collector
        self.handle: asyncio.TimerHandle | None = None
        self.published: dict[tuple[str, tuple[str, ...]], float] = {}  # counters, as last seen

    def start(self) -> None:
        self.publish()

    def publish(self) -> None:
        for family in self.collector.collect():
            if family.type == "counter":
                self.add(family)
                continue
            gauge = _live[family.name]
            for sample in family.samples:
                labels = gauge.labels(*sample.labels.values()) if sample.labels else gauge
                labels.set(sample.value)
        loop = asyncio.get_running_loop()
        self.handle = loop.call_later(PUBLISH_INTERVAL, self.publish)

    def add(self, family: Family) -> None:
        """Add to the multiprocess counter what each count grew by since the last time; a
        count that went down belongs to a new scanner (a reload), counted from 0."""
        counter = _live_counters[family.name]
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue  # the _created sample
            key = (family.name, tuple(sample.labels.values()))
            before = self.published.get(key, 0.0)
            grown = sample.value - before if sample.value >= before else sample.value
            self.published[key] = sample.value
            child = counter.labels(*key[1])  # 0 is shown too, once an address is known
            if grown:
                child.inc(grown)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class Running:
    """What start_metrics() started: the bound port (None: no HTTP server) and how to stop."""

    def __init__(self, collector: StateCollector, registry: CollectorRegistry) -> None:
        self.collector = collector
        self.registry = registry
        self.server: WSGIServer | None = None
        self.thread: threading.Thread | None = None
        self.publisher: Publisher | None = None
        registry.register(collector)

    @property
    def port(self) -> int | None:
        return None if self.server is None else self.server.server_port

    def stop(self) -> None:
        """Stop the HTTP server and unregister the gauges; a no-op the second time."""
        if self in _running:
            _running.remove(self)
            self.registry.unregister(self.collector)
        if self.publisher is not None:
            self.publisher.stop()
        if self.server is not None and self.thread is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)
            self.server = self.thread = None


_running: list[Running] = []  # the one started by this process's serve(), if any


def start_metrics(
    settings: MetricsSettings,
    endpoints: Iterable[object],
    registry: CollectorRegistry = REGISTRY,
    *,
    worker: bool = False,
) -> Running:
    """Register the state gauges and, if `settings.listen` is set, serve /metrics there.

    A process that ends needs not stop it (the server runs in a daemon thread); a second
    start in one process (tests run serve() several times) replaces the first. `worker`: one
    of several workers, whose parent serves /metrics; it publishes its gauges instead.
    """
    while _running:
        _running[-1].stop()
    running = Running(StateCollector(endpoints), registry)
    _running.append(running)
    if worker:
        if _live:  # the parent called use_multiprocess()
            running.publisher = Publisher(running.collector)
            running.publisher.start()
        return running
    if not settings.listen:
        return running
    try:
        where = parse_host_port(settings.listen)
        running.server, running.thread = start_http_server(
            where.port, addr=where.host, registry=registry
        )
    except (AddressError, OSError) as exc:
        running.stop()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        msg = f"metrics.listen: cannot listen on {settings.listen!r}: {reason}"
        raise ConfigError(msg) from exc
    return running


class _QuietHandler(WSGIRequestHandler):
    """One scrape at a time in the parent: a client that sends nothing is dropped after
    `timeout` seconds, and requests are not written to stderr."""

    timeout = 5.0

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        return


def bind_http(settings: MetricsSettings) -> WSGIServer:
    """The parent's /metrics server, bound (before root is given up) but not yet serving:
    `set_app(multiprocess_app(...))` once the directory exists, then `handle_request()`
    whenever its socket is readable. No thread: the parent forks workers later."""
    try:
        where = parse_host_port(settings.listen)
        family = socket.getaddrinfo(where.host, where.port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("MetricsServer", (WSGIServer,), {"address_family": family})
        return make_server(where.host, where.port, _no_app, server_class, _QuietHandler)
    except (AddressError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        msg = f"metrics.listen: cannot listen on {settings.listen!r}: {reason}"
        raise ConfigError(msg) from exc


def _no_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting\n"]
