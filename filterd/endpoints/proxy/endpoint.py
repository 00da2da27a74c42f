"""The smtpd_proxy_filter endpoint: listen, bound the sessions, stop gracefully.

Postfix's before-filter smtpd connects here once per message (SMTPD_PROXY_README) and relays
filterd's replies to its client; each session is a `ProxySession` (session.py). This module
owns only the listening socket:
- a large listen backlog (a short one collapses under bursts: docs/explanation/design.md);
- at most `max_connections` sessions: more are answered 421 4.7.0 and closed at once, so a
  flood costs one write per connection (Postfix: anvil-style limits, RFC 5321 §3.8);
- under stress (more sessions in flight than `stress_threshold` of `max_connections`),
  sessions waiting for a command get `stress_timeout` instead of `command_timeout`
  (Postfix: smtpd_timeout = ${stress?10}{300}), so idle connections cannot hold every slot;
- when every slot is taken, a new connection evicts the client that has kept its session
  waiting for a command longest (at least EVICT_AFTER seconds, EVICT_BEFORE_HELO_AFTER before
  its EHLO): it gets 421 4.4.2, as on a timeout; only when no session is that idle does the
  newcomer get 421 4.7.0;
- one pool of idle downstream sessions (pool.py) for all the sessions of this worker; a
  reload replaces it and `close()` closes it: idle downstream sessions are closed, sessions
  in use are closed when their transaction ends;
- `close()` stops accepting; a session whose final dot is already downstream finishes and
  relays the real reply (bounded by downstream_timeout), every other session is answered
  421 4.3.2 at once and its downstream gets no final dot: no message is lost or duplicated.

Why not aiosmtpd: docs/explanation/proxy.md, "Why not an aiosmtpd subclass".
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from filterd.address import parse_proxy_address
from filterd.config import Config
from filterd.core import verdict as v
from filterd.core.smtp import replies
from filterd.endpoints import inflight
from filterd.endpoints.net import Throttled
from filterd.endpoints.proxy import limits as smtp_limits
from filterd.endpoints.proxy.connection import Connection
from filterd.endpoints.proxy.downstream import Connector, Downstream, NextHop
from filterd.endpoints.proxy.pool import Bounds, DownstreamPool
from filterd.endpoints.proxy.session import ProxySession, Site, Target
from filterd.hostname import default_hostname
from filterd.logs import get_logger
from filterd.pipeline import Pipeline

_log = get_logger("filterd.proxy")
CANCEL_GRACE = 1.0  # seconds a cancelled session gets to answer 421 and log
# A session must have waited this long for its client's next command to be evicted for a
# newcomer; a Postfix before-filter smtpd relays its client's commands within milliseconds,
# and sends its EHLO at once after our greeting.
EVICT_AFTER = 1.0
EVICT_BEFORE_HELO_AFTER = 0.25  # a client that has not even said EHLO/HELO yet


def split_address(text: str) -> Target:
    """`[inet:]HOST:PORT` or `[IPv6]:PORT` (the syntax of Postfix's smtpd_proxy_filter)."""
    address = parse_proxy_address(text)
    return Target(address.host, address.port)


def _evict_after(session: ProxySession) -> float:
    return EVICT_AFTER if session.machine.greeted else EVICT_BEFORE_HELO_AFTER


class ProxyEndpoint:
    name = "proxy"
    section = "proxy"  # its [proxy] settings and its socket-activation name

    def __init__(
        self, config: Config, pipeline: Pipeline, connect: Connector = Downstream.connect
    ) -> None:
        self.listen = split_address(config.proxy.listen)
        self.refused = Throttled(_log, "too many connections; answering new ones 421",
                                 limit=config.proxy.max_connections)  # fmt: skip
        self.connect = connect
        self.pool: DownstreamPool | None = None
        self.reload(config, pipeline)
        self.sessions: dict[asyncio.Task[None], ProxySession] = {}
        self.in_flight = inflight.in_flight(self.section)  # over all workers (inflight.py)
        self.server: asyncio.Server | None = None
        self.passed: socket.socket | None = None  # a listener passed by systemd, used as is
        self.closing = False
        self.stressed = False  # for logging the start and end of a stress episode

    def reload(self, config: Config, pipeline: Pipeline) -> None:
        """Settings and pipeline for the sessions opened from now on; sessions in progress
        keep theirs. `listen` and `backlog` apply only at start (app.py says so)."""
        settings = config.proxy
        downstream = split_address(settings.downstream)
        xforward_networks = [ipaddress.ip_network(word) for word in settings.xforward_hosts]
        self.settings, self.pipeline = settings, pipeline
        self.downstream, self.xforward_networks = downstream, xforward_networks
        self.hostname = settings.hostname or default_hostname()
        self.refused.fields["limit"] = settings.max_connections
        if self.pool is not None:
            self.pool.close()  # its sessions may be to the old next hop, with the old name
        self.pool = DownstreamPool(self.open_downstream, Bounds.of(settings))

    async def open_downstream(self) -> NextHop:
        """A new session to the next hop with our EHLO name (the pool's opener)."""
        target, timeout = self.downstream, self.settings.downstream_timeout
        return await self.connect(target.host, target.port, self.hostname, timeout)

    @property
    def port(self) -> int:
        """The bound port (useful when listening on port 0)."""
        if self.server is None:
            raise RuntimeError("not started")
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.passed is not None:
            self.server = await loop.create_server(
                lambda: Connection(self.opened), sock=self.passed, backlog=self.settings.backlog
            )
            return
        self.server = await loop.create_server(
            lambda: Connection(self.opened),
            self.listen.host,
            self.listen.port,
            backlog=self.settings.backlog,
            reuse_address=True,
        )

    def opened(self, conn: Connection) -> None:
        if self.closing:
            conn.send(replies.verdict(v.TEMPFAIL_SHUTTING_DOWN))
            conn.close()
            return
        full = self.in_flight.full(len(self.sessions), self.settings.max_connections)
        if full and not self.make_room():
            conn.send(replies.verdict(v.TEMPFAIL_TOO_MANY_CONNECTIONS))
            conn.close()
            self.refused.event()
            return
        site = Site(
            self.hostname, self.downstream, self.trusts_xforward(conn), self.connect, self.pool
        )
        session = ProxySession(conn, self.settings, self.pipeline, site, self.under_stress)
        task = asyncio.get_running_loop().create_task(session.run())
        self.sessions[task] = session
        self.in_flight.publish(len(self.sessions))
        task.add_done_callback(self.ended)
        if self.under_stress():
            self.hurry_all()

    def make_room(self) -> bool:
        """Every slot is taken: evict the client idle longest among those that have kept us
        waiting for their next command at least EVICT_AFTER seconds (EVICT_BEFORE_HELO_AFTER
        before their EHLO or HELO). Clients that send nothing then cannot hold every slot
        until stress_timeout while real sessions are turned away."""
        now = asyncio.get_running_loop().time()
        idle = {session: session.idle_for(now) for session in self.sessions.values()}
        evictable = [s for s, t in idle.items() if t > 0 and t >= _evict_after(s)]
        if not evictable:
            return False
        victim = max(evictable, key=idle.__getitem__)
        victim.evict()
        _log.info("evicting the longest idle client", idle=round(idle[victim], 3))
        return True

    def ended(self, task: asyncio.Task[None]) -> None:
        self.sessions.pop(task, None)
        self.in_flight.publish(len(self.sessions))
        if self.stressed and not self.under_stress():
            self.stressed = False
            in_flight = self.in_flight.total(len(self.sessions))  # over all workers
            _log.info("proxy stress over", in_flight=in_flight)

    def under_stress(self) -> bool:
        """Postfix: ${stress?...}; here, too many sessions in flight for comfort."""
        settings = self.settings
        in_flight = self.in_flight.total(len(self.sessions))
        return smtp_limits.under_stress(
            in_flight, settings.max_connections, settings.stress_threshold
        )

    def hurry_all(self) -> None:
        """Stress: every client waiting for its next command gets stress_timeout at most."""
        if not self.stressed:
            self.stressed = True
            _log.warning(
                "proxy under stress: idle clients get stress_timeout",
                in_flight=self.in_flight.total(len(self.sessions)),  # over all workers
                stress_timeout=self.settings.stress_timeout,
            )
        for session in self.sessions.values():
            session.hurry()

    def trusts_xforward(self, conn: Connection) -> bool:
        """Postfix: smtpd_authorized_xforward_hosts, for filterd's own listener."""
        if conn.peer is None:
            return False
        try:
            address = ipaddress.ip_address(conn.peer[0])
        except ValueError:
            return False
        return any(address in network for network in self.xforward_networks)

    async def close(self) -> None:
        """Stop accepting; finish what is downstream, answer 421 4.3.2 to everything else."""
        if self.server is None:
            return
        self.closing = True
        self.server.close()
        if self.pool is not None:
            self.pool.close()
        for task, session in list(self.sessions.items()):
            # A session whose final dot is downstream relays the real reply, then says 421;
            # a cancelled one answers 421 4.3.2 at once and logs its transaction.
            if not session.shutdown():
                task.cancel()
        if self.sessions:
            # A committed session waits for one reply: one downstream I/O at most.
            grace = self.settings.downstream_timeout + CANCEL_GRACE
            _, pending = await asyncio.wait(set(self.sessions), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=CANCEL_GRACE)
        self.refused.flush()
        await self.server.wait_closed()
