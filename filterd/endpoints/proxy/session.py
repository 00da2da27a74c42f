"""One SMTP session of the proxy: the client's commands, relayed to the reinjection smtpd.

The session is the I/O loop around filterd.core.smtp: it reads a line, feeds it to the
`Machine`, and acts on the step that comes back (refuse, disconnect, or run the command:
relay it, answer it); it tells the machine what happened (the downstream's 2XX, the 354, the
end of the transaction). Which command may come when, and which argument is acceptable, is
the machine's table (docs/reference/smtp-states.md); nothing here decides it.

What this module guarantees (docs/explanation/proxy.md explains why):
- Synchronisation (RFC 2920 §3.1, RFC 5321 §3.1; Postfix smtpd_forbid_unauth_pipelining):
  PIPELINING is never offered, so input waiting before the greeting, after any command, or
  after the end-of-data dot is a violation: 554 5.5.0 and disconnect, nothing delivered.
- Framing: only <CRLF>.<CRLF> ends DATA; the core finds every fake end and smuggled command
  and the session applies its delayed-reject verdict at the real end of data.
- Nothing rejected is queued: the reinjection smtpd sees DATA only after the pipeline
  accepted, and any failure before its end-of-data reply closes that connection without the
  final dot. Nothing accepted is lost: the client gets 250 only when the reinjection smtpd
  replied 250 to the end of data, and the reply relayed is that smtpd's own.
- Every wait is bounded (limits.py has the arithmetic): one deadline per whole command
  line (Postfix: smtpd_per_request_deadline), shortened under stress (smtpd_timeout =
  ${stress?10}{300}); a DATA deadline that grows only with the bytes received at the
  minimum rate (smtpd_min_data_rate); per-I/O downstream timeouts; one deadline from the
  final dot to the reply (under Postfix's smtpd_proxy_timeout).
- The downstream session is kept alive with NOOP while a long DATA streams in, so a client
  within the limits delivers even past the reinjection smtpd's own smtpd_timeout.
- Downstream sessions come from the worker's pool (pool.py) and go back to it only after a
  clean end: the final dot answered 2XX, no command of the transaction refused (4XX/5XX),
  nothing pending. Every other end closes the connection as without a pool. A pooled
  session found dead before the reply to MAIL is replaced, unseen by the client.
- Shutdown: a message whose final dot is downstream finishes and its real reply is relayed;
  anything else is answered 421 4.3.2 at once, and its downstream gets no final dot.
- One canonical log line per transaction (filterd/core/message.py, MessageRecord), also when
  it ends by a timeout, a shutdown, a lost client or a downstream refusal; `action`/`reason`
  say what the client was told. The envelope is translated into the message core's events
  at DATA; every message policy is the core's, the session renders and delivers.
- Message bodies are never logged.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from filterd.config import ProxySettings
from filterd.core import (
    Abort,
    Connect,
    Content,
    Framing,
    Mail,
    MessageCore,
    MessageRecord,
    Rcpt,
    pipelining,
)
from filterd.core import verdict as v
from filterd.core.outgoing import data_pieces
from filterd.core.smtp import replies
from filterd.core.smtp.commands import Command
from filterd.core.smtp.machine import Disconnect, Go, Machine, Note, SequenceError, Step
from filterd.endpoints.proxy import limits as smtp_limits
from filterd.endpoints.proxy.connection import ClientGoneError, Connection, LineTooLongError
from filterd.endpoints.proxy.downstream import (
    Connector,
    Downstream,
    DownstreamError,
    NextHop,
    Reply,
    refusal,
)
from filterd.endpoints.proxy.pool import DownstreamPool, Lease
from filterd.logs import get_logger
from filterd.pipeline import Decision, Pipeline

_log = get_logger("filterd.proxy")
_ids = itertools.count(1)

CHUNK = 1 << 16  # content is fed to the core in 64 KiB pieces, between reads
Handler = Callable[[Go], Awaitable[bool]]


class DisconnectError(Exception):
    """End the session after the reply already sent (`verdict`: what the client was told)."""

    def __init__(self, verdict: v.Verdict | None = None) -> None:
        super().__init__(verdict.reason if verdict else "disconnect")
        self.verdict = verdict


@dataclass
class Envelope:
    """The mail transaction in progress (RFC 5321 §3.3), with its downstream session."""

    downstream: NextHop | None = None
    lease: Lease | None = None  # how the downstream session was lent by the pool
    mail: str | None = None  # the sender of the MAIL line relayed: the transaction is open
    size: int = 0  # the SIZE= MAIL declared (RFC 1870), 0 if none: the scan's size hint
    recipients: int = 0  # accepted by the downstream
    refused: int = 0  # recipients the downstream refused
    xforward: list[bytes] = field(default_factory=list)  # XFORWARD lines, relayed verbatim
    client: dict[str, str] = field(default_factory=dict)  # decoded XFORWARD attributes
    txn: MessageCore | None = None  # the message core, once DATA began
    broken: str | None = None  # the downstream failed during DATA (keepalive)
    refusals: int = 0  # 4XX/5XX replies downstream other than to MAIL and RCPT (XFORWARD)
    reusable: bool = False  # ended cleanly: the downstream session may go back to the pool
    logged: bool = False  # its canonical log line is written

    def restart(self) -> Envelope:
        """A new transaction in the same session: the client's XFORWARD attributes stay."""
        return Envelope(xforward=self.xforward, client=self.client)


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Site:
    """What the endpoint knows for every session: names, the next hop, trust."""

    hostname: str  # our greeting and EHLO name
    downstream: Target
    xforward_allowed: bool  # the client's address is in xforward_hosts
    connect: Connector = Downstream.connect  # tests put a fake next hop here
    pool: DownstreamPool | None = None  # the worker's pool; None: a new session per message


def _never() -> bool:
    return False


class ProxySession:
    def __init__(
        self,
        conn: Connection,
        settings: ProxySettings,
        pipeline: Pipeline,
        site: Site,
        stressed: Callable[[], bool] = _never,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.pipeline = pipeline
        self.policy = pipeline.policy
        self.hostname = site.hostname
        self.target = site.downstream
        self.xforward_allowed = site.xforward_allowed
        self.connect = site.connect
        self.pool = site.pool or DownstreamPool(self.open_new)
        self.stressed = stressed
        self.id = next(_ids)
        self.idle: asyncio.Timeout | None = None  # the wait for the next command line
        self.idle_since = 0.0  # loop time when that wait began
        self.evicted = False  # cut short to make room for a new connection
        self.committed = False  # the final dot is downstream; its reply is awaited
        self.closing = False  # the endpoint is shutting down
        self.machine = Machine(self.policy, xforward=self.xforward_allowed)
        self.errors = 0
        self.envelope = Envelope()
        self.handlers: dict[str, Handler] = {
            "EHLO": self.on_ehlo,
            "HELO": self.on_helo,
            "XFORWARD": self.on_xforward,
            "MAIL": self.on_mail,
            "RCPT": self.on_rcpt,
            "DATA": lambda go: self.on_data(go.command),
            "RSET": self.on_rset,
            "NOOP": self.on_noop,
            "QUIT": self.on_quit,
        }

    # --- the session ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the client until QUIT, a violation, a timeout or EOF. Never raises."""
        ending: v.Verdict | None = None
        told = True
        try:
            await self.serve()
        except DisconnectError as stop:
            ending = stop.verdict
        except ClientGoneError:
            ending, told = v.TEMPFAIL_CLIENT_GONE, False
        except TimeoutError:  # only the client's command and data waits are bounded this way
            ending = v.TEMPFAIL_TIMEOUT  # Postfix: smtpd_timeout
            self.reply_verdict(ending)
            self.event("evicted" if self.evicted else "timeout")
        except asyncio.CancelledError:
            self.reply_verdict(v.TEMPFAIL_SHUTTING_DOWN)
            self.abandon(v.TEMPFAIL_SHUTTING_DOWN, told=True)
            raise
        except Exception:
            _log.exception("proxy session failed", session=self.id)
            ending = v.TEMPFAIL_INTERNAL
            self.reply_verdict(ending)
        finally:
            if ending is not None:
                self.abandon(ending, told=told)
            await self.end_transaction(polite=False)
            self.conn.close()

    async def serve(self) -> None:
        await self.conn.settle(self.settings.greet_pause)
        stop = self.machine.open(waiting=self.conn.waiting)  # RFC 5321 §3.1
        if stop is not None:
            self.disconnect(stop)
        self.conn.send(replies.greeting(self.hostname))
        while True:
            if self.closing:
                self.reply_verdict(v.TEMPFAIL_SHUTTING_DOWN)  # RFC 5321 §3.8
                raise DisconnectError(v.TEMPFAIL_SHUTTING_DOWN)
            raw = await self.read_line()
            step = self.machine.receive(raw, waiting=self.conn.waiting)
            if not await self.act(step):
                return

    async def act(self, step: Step) -> bool:
        """Do what the machine says; False when the session ends (QUIT)."""
        if isinstance(step, Disconnect):
            self.disconnect(step)
        self.note(step.notes)
        if isinstance(step, Go):
            return await self.handlers[step.verb](step)
        if step.counted:
            self.refuse(step.verdict)
        else:
            self.reply_verdict(step.verdict)
        return True

    def disconnect(self, step: Disconnect) -> NoReturn:
        """Answer the verdict, log why, end the session."""
        self.reply_verdict(step.verdict)
        self.note(step.notes)
        raise DisconnectError(step.verdict)

    async def read_line(self) -> bytes | None:
        """One whole command line within one deadline; None if it was too long (skipped).

        Postfix: smtpd_per_request_deadline. The deadline covers the whole line, the skipping
        of an overlong one included, so trickling bytes buys no time; under stress it is
        stress_timeout (Postfix: smtpd_timeout = ${stress?10}{300}), and `hurry()` shortens
        a wait already running when stress begins.
        """
        settings = self.settings
        seconds = smtp_limits.command_limit(
            settings.command_timeout, settings.stress_timeout, stressed=self.stressed()
        )
        try:
            self.idle_since = asyncio.get_running_loop().time()
            async with asyncio.timeout(seconds) as self.idle:
                try:
                    return await self.conn.read_line(settings.max_line_length)
                except LineTooLongError:
                    await self.conn.skip_line()
                    return None
        finally:
            self.idle = None

    def hurry(self) -> None:
        """The endpoint is under stress: a client waiting for its next command gets less time."""
        idle = self.idle
        when = idle.when() if idle is not None else None
        if idle is None or when is None or idle.expired():
            return
        now = asyncio.get_running_loop().time()
        idle.reschedule(smtp_limits.hurried_deadline(when, now, self.settings.stress_timeout))

    def idle_for(self, now: float) -> float:
        """How long this client has kept us waiting for its next command; 0 if it has not."""
        idle = self.idle
        if idle is None or idle.expired() or self.evicted:
            return 0.0
        return now - self.idle_since

    def evict(self) -> None:
        """Every slot is taken and this client is the one idle longest: time it out now (it
        gets 421 4.4.2 and its transaction, if any, ends unqueued and logged)."""
        idle = self.idle
        if idle is None or idle.expired():
            return
        self.evicted = True
        idle.reschedule(asyncio.get_running_loop().time())

    def shutdown(self) -> bool:
        """The endpoint stops. True if this session must finish first: its dot is downstream."""
        self.closing = True
        return self.committed

    def check_sync(self, after: str, *, waiting: bool | None = None) -> None:
        """RFC 2920 §3.1: 554 5.5.0 and disconnect when the client did not wait for us."""
        pending = self.conn.waiting if waiting is None else waiting
        stop = self.machine.sync(after, waiting=pending)
        if stop is not None:
            self.disconnect(stop)

    # --- replies and logs -----------------------------------------------------------------

    def reply_verdict(self, verdict: v.Verdict) -> None:
        self.conn.send(replies.verdict(verdict))

    def refuse(self, verdict: v.Verdict) -> None:
        """A 5XX for a bad command; Postfix smtpd_hard_error_limit ends abusive sessions."""
        self.reply_verdict(verdict)
        self.errors += 1
        if self.errors >= self.settings.max_errors:
            self.reply_verdict(v.TEMPFAIL_TOO_MANY_ERRORS)
            self.event("too_many_errors")
            raise DisconnectError(v.TEMPFAIL_TOO_MANY_ERRORS)

    def event(self, name: str, **fields: Any) -> None:
        _log.info("proxy session", session=self.id, what=name, peer=self.peer, **fields)

    def note(self, notes: tuple[Note, ...]) -> None:
        for note in notes:
            self.event(note.what, **note.fields)

    @property
    def peer(self) -> str | None:
        return self.conn.peer[0] if self.conn.peer else None

    # --- commands -------------------------------------------------------------------------

    async def on_ehlo(self, go: Go) -> bool:
        return await self.greet(go, esmtp=True)

    async def on_helo(self, go: Go) -> bool:
        return await self.greet(go, esmtp=False)

    async def greet(self, go: Go, *, esmtp: bool) -> bool:
        await self.end_transaction(polite=True)  # RFC 5321 §4.1.4: EHLO implies RSET
        self.envelope = Envelope()
        if esmtp:
            size = self.policy.max_message_size
            self.conn.send(replies.ehlo(self.hostname, size, xforward=self.xforward_allowed))
        else:
            self.conn.send(replies.helo(self.hostname))
        self.machine.accepted(go)
        return True

    async def on_xforward(self, go: Go) -> bool:
        self.envelope.client.update(go.attributes)
        self.envelope.xforward.append(go.command.line)
        self.reply_verdict(v.ACCEPT)
        return True

    async def on_mail(self, go: Go) -> bool:
        await self.end_transaction(polite=True)  # nothing is open here; be sure
        self.envelope = self.envelope.restart()
        reply = await self.open_transaction(go)
        if reply is not None and reply.code // 100 == 2:
            self.machine.accepted(go)
        elif reply is not None:
            self.log_refusal(reply)  # the transaction ends here, refused downstream
            await self.end_transaction(polite=True)
        return True

    async def on_rcpt(self, go: Go) -> bool:
        downstream = self.envelope.downstream
        if downstream is None:  # the machine allows RCPT only while MAIL is open downstream
            raise SequenceError("RCPT without a downstream session")
        reply = await self.relay(downstream, go.command.line)
        if reply is not None and reply.code // 100 == 2:
            self.envelope.recipients += 1
            self.machine.accepted(go)
        elif reply is not None:
            self.envelope.refused += 1
        return True

    async def on_rset(self, go: Go) -> bool:
        await self.end_transaction(polite=True)
        self.envelope = Envelope()
        self.reply_verdict(v.ACCEPT)
        self.machine.accepted(go)
        return True

    async def on_noop(self, go: Go) -> bool:
        self.reply_verdict(v.ACCEPT)
        return True

    async def on_quit(self, go: Go) -> bool:
        self.conn.send(replies.bye())
        self.machine.accepted(go)
        return False

    # --- downstream -----------------------------------------------------------------------

    async def open_new(self) -> NextHop:
        """A new downstream session (without a pool: one per transaction)."""
        target = self.target
        io_timeout = self.settings.downstream_timeout
        return await self.connect(target.host, target.port, self.hostname, io_timeout)

    async def open_transaction(self, go: Go) -> Reply | None:
        """A downstream session, the client's XFORWARD lines and MAIL; the reply to MAIL
        (relayed), or None when the client was answered 451 already.

        A session from the pool may have died while idle: the smtpd's idle limit (Postfix:
        smtpd_timeout) answers 421 4.4.2 and closes, a restart resets it. Up to the reply to
        MAIL nothing of this transaction is downstream, so such a session is dropped and the
        commands go again on a new one, unseen by the client. Once MAIL was accepted, a
        failure is handled as on a new session.
        """
        downstream = await self.open_downstream(fresh=False)
        lease = self.envelope.lease
        if downstream is not None and lease is not None and lease.reused:
            got = await self.try_reused(downstream, go.command.line)
            if got is not None:
                self.envelope.mail, self.envelope.size = go.address, go.size
                return self.pass_on(got)
            downstream = await self.open_downstream(fresh=True)
        if downstream is None:
            return None
        self.envelope.mail, self.envelope.size = go.address, go.size
        return await self.relay(downstream, go.command.line, ahead=self.forwarded(downstream))

    async def try_reused(self, downstream: NextHop, line: bytes) -> list[Reply] | None:
        """MAIL on a pooled session; None (and the session closed) if it turned out dead."""
        try:
            got = await self.exchange(downstream, line, self.forwarded(downstream))
        except DownstreamError:
            got = None
        if got is not None and all(reply.code != 421 for reply in got):
            return got
        self.envelope.downstream = self.envelope.lease = None
        downstream.abort()
        return None

    async def open_downstream(self, *, fresh: bool) -> NextHop | None:
        """A session for a new transaction (from the pool unless `fresh`); 451 4.4.1 if not."""
        try:
            lease = await self.pool.acquire(fresh=fresh)
        except DownstreamError as exc:
            self.reply_verdict(v.TEMPFAIL_DOWNSTREAM_UNREACHABLE)
            self.event("downstream_unreachable", error=str(exc))
            return None
        self.envelope.lease = lease
        self.envelope.downstream = lease.hop
        return lease.hop

    def forwarded(self, downstream: NextHop) -> list[bytes]:
        """The client's XFORWARD lines, to go ahead of MAIL, if the downstream takes them."""
        return self.envelope.xforward if "XFORWARD" in downstream.keywords else []

    async def relay(
        self, downstream: NextHop, line: bytes, *, ahead: list[bytes] | None = None
    ) -> Reply | None:
        """Send one line downstream and pass its reply on; None (and 451) if it broke.

        `ahead`: lines sent first in the same group (XFORWARD before MAIL); their replies
        are not relayed. RFC 5321 §3.8: a 421 means the smtpd closes the session; filterd
        relays it and closes the client's session too (`DisconnectError`), logging the open
        transaction.
        """
        try:
            got = await self.exchange(downstream, line, ahead)
        except DownstreamError as exc:
            await self.end_transaction(polite=False)
            self.reply_verdict(v.TEMPFAIL_DOWNSTREAM_FAILED)
            self.event("downstream_failed", error=str(exc))
            self.abandon(v.TEMPFAIL_DOWNSTREAM_FAILED, told=True)
            return None
        return self.pass_on(got)

    @staticmethod
    async def exchange(downstream: NextHop, line: bytes, ahead: list[bytes] | None) -> list[Reply]:
        """`ahead` and `line` in one group; every reply (DownstreamError if it broke)."""
        if ahead:
            return await downstream.commands([*ahead, line])
        return [await downstream.command(line)]

    def pass_on(self, got: list[Reply]) -> Reply:
        """Relay the last reply (the others are to lines the client did not send now)."""
        reply = got[-1]
        self.envelope.refusals += sum(1 for each in got[:-1] if each.code >= 400)
        self.conn.send(reply.wire)
        if reply.code == 421:
            raise DisconnectError(refusal(reply))
        return reply

    async def end_transaction(self, *, polite: bool) -> None:
        """Give the downstream session back to the pool after a clean end, else close it; an
        unfinished transaction, if any, ends unqueued."""
        envelope = self.envelope
        downstream, envelope.downstream = envelope.downstream, None
        lease, envelope.lease = envelope.lease, None
        self.machine.ended()
        if downstream is None:
            return
        if polite and envelope.reusable and lease is not None and self.pool.release(lease):
            return
        if polite:
            await downstream.quit()
        else:
            downstream.abort()

    async def keepalive(self) -> None:
        """NOOP to an idle downstream session while the client's DATA goes on.

        The reinjection smtpd sees nothing from filterd until the content has ended and been
        decided; a client slower than its smtpd_timeout would find it gone. RFC 5321
        §4.1.1.9: NOOP does not affect the transaction. Only filterd's own task talks to the
        downstream here, so no other command is outstanding.
        """
        downstream = self.envelope.downstream
        if downstream is None or asyncio.get_running_loop().time() < self.keepalive_due():
            return
        try:
            reply = await downstream.command(b"NOOP")
        except DownstreamError as exc:
            self.downstream_broke(str(exc))
            return
        if reply.code // 100 != 2:
            self.downstream_broke(f"NOOP: {reply.text[:200]}")

    def keepalive_due(self) -> float:
        downstream = self.envelope.downstream
        last_io = downstream.last_io if downstream is not None else None
        return smtp_limits.next_keepalive(last_io, self.settings.downstream_keepalive)

    def downstream_broke(self, error: str) -> None:
        """The downstream failed mid-DATA: read on to the end, then answer 451 4.3.0."""
        downstream, self.envelope.downstream = self.envelope.downstream, None
        if downstream is not None:
            downstream.abort()
        self.envelope.broken = error
        self.event("downstream_failed", error=error)

    # --- DATA -----------------------------------------------------------------------------

    def start_data(self) -> None:
        """354: the content follows (RFC 5321 §4.1.1.4)."""
        self.conn.send(replies.start_data())
        self.machine.data_started()

    async def on_data(self, command: Command) -> bool:
        budget = self.pipeline.budget
        if budget is not None and budget.exhausted:
            # [server] max_buffered_bytes is in use by other messages: refuse before the 354,
            # so the client sends nothing (Postfix answers 452 4.3.1 when its queue is full).
            verdict = v.TEMPFAIL_INSUFFICIENT_RESOURCES
            self.reply_verdict(verdict)
            self.event("insufficient_resources", in_use=budget.in_use, limit=budget.limit)
            # What the client was told ends this transaction: its line, and no downstream
            # session held open for a message that was not sent.
            record = self.message_core(self.envelope).abort(Abort(verdict))
            self.finish(record, self.envelope, verdict.reply)
            await self.end_transaction(polite=True)
            self.envelope = Envelope()
            return True
        self.start_data()
        envelope = self.envelope
        txn = envelope.txn = self.message_core(envelope)
        try:
            return await self.data_phase(txn, envelope)
        finally:
            txn.close()  # its share of [server] max_buffered_bytes is free again

    def message_core(self, envelope: Envelope) -> MessageCore:
        """The envelope's message core: begun at DATA, fed the envelope as the core's events."""
        if envelope.txn is not None:
            return envelope.txn
        core = self.pipeline.begin("proxy", Framing.SMTP_DATA)
        core.handle(Connect(envelope.client.get("ADDR") or self.peer))
        core.handle(Mail(envelope.mail, size=envelope.size))
        for _ in range(envelope.recipients):
            core.handle(Rcpt())
        return core

    async def data_phase(self, txn: MessageCore, envelope: Envelope) -> bool:
        """From the 354 to the reply after the final dot."""
        await self.receive(txn)
        # RFC 2920 §3.1: without PIPELINING, nothing may follow the dot before our reply.
        self.check_sync(pipelining.END_OF_DATA, waiting=bool(txn.trailing) or self.conn.waiting)
        decision, reply = await self.decide_and_deliver(txn)
        answer = reply.split(b"\r\n", 1)[0].decode("ascii", "replace")
        self.finish(decision.record, envelope, answer)
        self.conn.send(reply)
        txn.close()  # answered: its share of the budget is free before the downstream QUIT
        self.committed = False
        if reply.startswith(b"421"):
            raise DisconnectError  # RFC 5321 §3.8; the line above already logged it
        # After the reply, not before: the client does not wait for the downstream QUIT. A
        # downstream that never saw DATA (a reject) queues nothing either way.
        await self.end_transaction(polite=True)
        self.envelope = Envelope()  # RFC 5321 §4.1.1.4: DATA ends the transaction
        return True

    async def receive(self, txn: MessageCore) -> None:
        """Feed the content to the core in chunks until the real <CRLF>.<CRLF>.

        Postfix: smtpd_min_data_rate. One deadline for the whole DATA phase: it starts at
        data_timeout, each read earns `bytes / min_data_rate` seconds, and it never grows
        beyond data_timeout (smtp_limits.extend_data_deadline).
        """
        loop = asyncio.get_running_loop()
        limit, rate = self.settings.data_timeout, self.settings.min_data_rate
        deadline = loop.time() + limit
        while not txn.done:
            chunk = await self.read_data(deadline)
            deadline = smtp_limits.extend_data_deadline(
                deadline, loop.time(), len(chunk), rate, limit
            )
            txn.handle(Content(chunk))
            self.pipeline.fed(txn)  # to the scanner stream while the rest arrives

    async def read_data(self, deadline: float) -> bytes:
        """The next piece of content before `deadline`, keeping the downstream alive meanwhile."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(min(deadline, self.keepalive_due())):
                    return await self.conn.read_chunk(CHUNK)
            except TimeoutError:
                if loop.time() >= deadline:
                    raise
            await self.keepalive()

    async def decide_and_deliver(self, txn: MessageCore) -> tuple[Decision, bytes]:
        """The pipeline's decision and the reply for the client, within the deadline."""
        decision: Decision | None = None
        try:
            async with asyncio.timeout(self.settings.reply_deadline):
                decision = await self.pipeline.decide(txn)
                if decision.verdict.action is not v.Action.ACCEPT:
                    return decision, replies.verdict(decision.verdict)
                return await self.deliver(decision)
        except TimeoutError:
            # Postfix: smtpd_proxy_timeout. Answer before Postfix gives up on us.
            await self.end_transaction(polite=False)
            verdict = v.TEMPFAIL_INTERNAL
            if decision is None:
                late = Decision(txn.failed("deadline", verdict))
            else:
                late = Decision(decision.record.but(verdict=verdict, error="deadline"))
            return self.mark_committed(late), replies.verdict(verdict)

    async def deliver(self, decision: Decision) -> tuple[Decision, bytes]:
        """DATA downstream, the accepted content, and that smtpd's end-of-data reply.

        The decision that goes into the log line is the downstream's when it refuses or
        breaks (reasons downstream_rejected, downstream_tempfail, downstream_failed).
        """
        downstream = self.envelope.downstream
        if downstream is None:  # it broke during DATA (keepalive)
            return self.failed(decision, error=self.envelope.broken)
        content = data_pieces((decision.content,), decision.headers, dot_lines=decision.dot_lines)
        try:
            reply = await downstream.command(b"DATA")
            if reply.code != 354:
                return self.data_refused(decision, reply)
            await downstream.send_body(content)
            if not self.conn.open:
                # The client went away (e.g. its smtpd was stopped): nobody would hear the
                # 250, so the sender would retry a queued message. No final dot.
                raise ClientGoneError
            self.committed = True  # from here on a shutdown waits for the reply
            final = await downstream.end_data()
        except DownstreamError as exc:
            await self.end_transaction(polite=False)
            self.event("downstream_failed", error=str(exc))
            return self.failed(self.mark_committed(decision), error=str(exc)[:200])
        # The next hop's queue id ("" when its reply names none).
        delivered = decision.but(queue_id=final.queue_id or "", downstream_reply=final.text[:200])
        refused = refusal(final)
        if refused is not None:
            delivered = delivered.but(verdict=refused)
        # A clean end (pool.py): the dot answered 2XX, nothing refused, nothing pending.
        envelope = self.envelope
        spotless = not envelope.refused and not envelope.refusals
        envelope.reusable = final.code // 100 == 2 and spotless
        return delivered, final.wire

    def data_refused(self, decision: Decision, reply: Reply) -> tuple[Decision, bytes]:
        """The downstream did not answer DATA with 354: relay a refusal, else a tempfail."""
        downstream_reply = reply.text[:200]
        refused = refusal(reply)
        if refused is None:  # a 2XX/3XX other than 354 breaks the protocol
            return self.failed(decision, downstream_reply=downstream_reply)
        return decision.but(verdict=refused, downstream_reply=downstream_reply), reply.wire

    def mark_committed(self, decision: Decision) -> Decision:
        """The known window (docs/explanation/proxy.md, "Failures"): the final dot is
        downstream but its reply never came, so the message may be queued although the client
        is told 4XX; the log line says so, to reconcile a duplicate."""
        if not self.committed:
            return decision
        return decision.but(final_dot_sent=True)

    def failed(self, decision: Decision, **facts: object) -> tuple[Decision, bytes]:
        verdict = v.TEMPFAIL_DOWNSTREAM_FAILED
        return decision.but(verdict=verdict, **facts), replies.verdict(verdict)

    # --- the canonical log line -----------------------------------------------------------

    def finish(self, record: MessageRecord, envelope: Envelope, answer: str | None) -> None:
        """The canonical log line for this transaction (once), with the proxy's own fields:
        what the client was told, the session, the XFORWARD name, the refused recipients."""
        envelope.logged = True
        own = (
            ("answer", answer),
            ("session", self.id),
            ("client_name", envelope.client.get("NAME")),
            ("refused_recipients", envelope.refused),
        )
        self.pipeline.log(record.but(own=own))

    def abandon(self, verdict: v.Verdict, *, told: bool) -> None:
        """The log line of a transaction that ends without its end-of-data reply.

        `told`: the client got `verdict` (a timeout, a shutdown, a downstream failure);
        otherwise it was told nothing (it went away) and `answer` is None.
        """
        envelope = self.envelope
        if envelope.mail is None or envelope.logged:
            return
        record = self.message_core(envelope).abort(Abort(verdict))
        if self.committed:  # a shutdown that could not wait for the reply
            record = record.but(final_dot_sent=True)
        self.finish(record, envelope, verdict.reply if told else None)

    def log_refusal(self, reply: Reply) -> None:
        """The log line of a transaction that the downstream refused at MAIL."""
        verdict = refusal(reply) or v.TEMPFAIL_DOWNSTREAM_FAILED
        answer = reply.lines[0].decode("ascii", "replace")
        record = self.message_core(self.envelope).abort(Abort(verdict))
        self.finish(record, self.envelope, answer)
