"""One SMTP session of the proxy: the client's commands, relayed to the reinjection smtpd.

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
- Every wait is bounded: command and data timeouts, per-I/O downstream timeouts, and one
  deadline from the final dot to the reply (under Postfix's smtpd_proxy_timeout).
- Message bodies are never logged.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from filterd.config import ProxySettings
from filterd.core import Framing, Transaction, dot_stuff, pipelining
from filterd.core import verdict as v
from filterd.core.headers import prepend
from filterd.core.policy import BareNewline
from filterd.endpoints import commands
from filterd.endpoints import smtp_replies as replies
from filterd.endpoints.commands import Command
from filterd.endpoints.downstream import Downstream, DownstreamError, Reply
from filterd.endpoints.smtp_connection import ClientGoneError, Connection, LineTooLongError
from filterd.logs import get_logger
from filterd.pipeline import Decision, Pipeline

_log = get_logger("filterd.proxy")
_ids = itertools.count(1)

CHUNK = 1 << 16  # content is fed to the core in 64 KiB pieces, between reads
# Recognised but deliberately not offered (replies.ehlo says why).
NOT_OFFERED = frozenset({"STARTTLS", "AUTH", "BDAT", "VRFY", "EXPN", "TURN", "ETRN", "HELP"})
Handler = Callable[[Command], Awaitable[bool]]


class DisconnectError(Exception):
    """End the session after the reply already sent."""


@dataclass
class Envelope:
    """The mail transaction in progress (RFC 5321 §3.3), with its downstream session."""

    downstream: Downstream | None = None
    sender: str | None = None
    recipients: int = 0
    xforward: list[bytes] = field(default_factory=list)  # XFORWARD lines, relayed verbatim
    client: dict[str, str] = field(default_factory=dict)  # decoded XFORWARD attributes


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


class ProxySession:
    def __init__(
        self,
        conn: Connection,
        settings: ProxySettings,
        pipeline: Pipeline,
        site: Site,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.pipeline = pipeline
        self.policy = pipeline.policy
        self.hostname = site.hostname
        self.target = site.downstream
        self.xforward_allowed = site.xforward_allowed
        self.id = next(_ids)
        self.helo: str | None = None
        self.esmtp = False
        self.errors = 0
        self.envelope = Envelope()
        self.handlers: dict[str, Handler] = {
            "EHLO": self.on_ehlo,
            "HELO": self.on_helo,
            "XFORWARD": self.on_xforward,
            "MAIL": self.on_mail,
            "RCPT": self.on_rcpt,
            "DATA": self.on_data,
            "RSET": self.on_rset,
            "NOOP": self.on_noop,
            "QUIT": self.on_quit,
        }

    # --- the session ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the client until QUIT, a violation, a timeout or EOF. Never raises."""
        try:
            await self.serve()
        except (ClientGoneError, DisconnectError):
            pass
        except TimeoutError:  # only the command and data reads are bounded this way
            self.reply_verdict(v.TEMPFAIL_TIMEOUT)  # Postfix: smtpd_timeout
            self.event("timeout")
        except asyncio.CancelledError:
            self.reply_verdict(v.TEMPFAIL_SHUTTING_DOWN)
            raise
        except Exception:
            _log.exception("proxy session failed", session=self.id)
            self.reply_verdict(v.TEMPFAIL_INTERNAL)
        finally:
            await self.end_transaction(polite=False)
            self.conn.close()

    async def serve(self) -> None:
        await self.conn.settle(self.settings.greet_pause)
        self.check_sync(pipelining.CONNECT)  # RFC 5321 §3.1: the client waits for 220
        self.conn.send(replies.greeting(self.hostname))
        while True:
            command = await self.read_command()
            if command is None:
                continue
            handler = self.handlers.get(command.verb)
            if handler is None:
                known = command.verb in NOT_OFFERED
                self.refuse(v.REJECT_NOT_IMPLEMENTED if known else v.REJECT_UNKNOWN_COMMAND)
                continue
            if not await handler(command):
                return

    async def read_command(self) -> Command | None:
        """The next acceptable command, or None after answering a bad line."""
        limit = self.settings.max_line_length
        try:
            async with asyncio.timeout(self.settings.command_timeout):  # Postfix: smtpd_timeout
                raw = await self.conn.read_line(limit)
        except LineTooLongError:
            async with asyncio.timeout(self.settings.command_timeout):
                await self.conn.skip_line()
            self.refuse(v.REJECT_LINE_TOO_LONG)  # RFC 5321 §4.5.3.1.4
            return None
        parsed = commands.parse(raw)
        if isinstance(parsed, v.Verdict):
            self.refuse(parsed)
            return None
        mode = self.policy.forbid_bare_newline
        forced = commands.line_end_verdict(parsed, mode, self.policy.bare_newline_reject_code)
        if forced is not None:
            # Postfix smtpd_forbid_bare_newline=reject: reply, then disconnect.
            self.reply_verdict(forced)
            self.event("bare_lf_command", verb=parsed.verb)
            raise DisconnectError
        if parsed.bare_lf and mode is BareNewline.NOTE:
            self.event("bare_lf_command", verb=parsed.verb)
        self.check_sync(parsed.verb)
        return parsed

    def check_sync(self, after: str, *, waiting: bool | None = None) -> None:
        """RFC 2920 §3.1: 554 5.5.0 and disconnect when the client did not wait for us."""
        pending = self.conn.waiting if waiting is None else waiting
        violation = pipelining.check(after, waiting=pending, pipelining_offered=False)
        if violation is not None:
            self.reply_verdict(v.REJECT_PIPELINING)
            self.event("pipelining", after=violation.after, rule=violation.rule)
            raise DisconnectError

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
            raise DisconnectError

    def event(self, name: str, **fields: Any) -> None:
        _log.info("proxy session", session=self.id, what=name, peer=self.peer, **fields)

    @property
    def peer(self) -> str | None:
        return self.conn.peer[0] if self.conn.peer else None

    # --- commands -------------------------------------------------------------------------

    async def on_ehlo(self, command: Command) -> bool:
        return await self.greet(command, esmtp=True)

    async def on_helo(self, command: Command) -> bool:
        return await self.greet(command, esmtp=False)

    async def greet(self, command: Command, *, esmtp: bool) -> bool:
        if not command.argument:
            self.refuse(v.REJECT_SYNTAX)
            return True
        await self.end_transaction(polite=True)  # RFC 5321 §4.1.4: EHLO implies RSET
        self.envelope = Envelope()
        self.helo = command.argument.decode("ascii", "replace")
        self.esmtp = esmtp
        if esmtp:
            size = self.policy.max_message_size
            self.conn.send(replies.ehlo(self.hostname, size, xforward=self.xforward_allowed))
        else:
            self.conn.send(replies.helo(self.hostname))
        return True

    async def on_xforward(self, command: Command) -> bool:
        # Postfix XFORWARD_README: only for authorized clients, only outside a transaction.
        if not self.xforward_allowed:
            self.refuse(v.REJECT_NOT_IMPLEMENTED)
            return True
        if self.helo is None or self.envelope.sender is not None:
            self.refuse(v.REJECT_BAD_SEQUENCE)
            return True
        attributes = commands.xforward(command.argument)
        if attributes is None:
            self.refuse(v.REJECT_SYNTAX)
            return True
        self.envelope.client.update(attributes)
        self.envelope.xforward.append(command.line)
        self.reply_verdict(v.ACCEPT)
        return True

    async def on_mail(self, command: Command) -> bool:
        if self.helo is None or self.envelope.sender is not None:
            self.refuse(v.REJECT_BAD_SEQUENCE)  # RFC 5321 §4.1.4
            return True
        path = commands.path(command.argument, "FROM")
        if path is None:
            self.refuse(v.REJECT_SYNTAX)
            return True
        declared = commands.declared_size(path.parameters)
        if declared is not None and declared > self.policy.max_message_size:
            self.reply_verdict(v.REJECT_TOO_LARGE)  # RFC 1870 §6.1
            return True
        downstream = await self.open_downstream()
        if downstream is None:
            return True
        reply = await self.relay(downstream, command.line)
        if reply is not None and reply.code // 100 == 2:
            self.envelope.sender = path.address
        else:
            await self.end_transaction(polite=True)
        return True

    async def on_rcpt(self, command: Command) -> bool:
        downstream = self.envelope.downstream
        if downstream is None or self.envelope.sender is None:
            self.refuse(v.REJECT_BAD_SEQUENCE)
            return True
        if commands.path(command.argument, "TO") is None:
            self.refuse(v.REJECT_SYNTAX)
            return True
        reply = await self.relay(downstream, command.line)
        if reply is not None and reply.code // 100 == 2:
            self.envelope.recipients += 1
        return True

    async def on_rset(self, command: Command) -> bool:
        await self.end_transaction(polite=True)
        self.envelope = Envelope()
        self.reply_verdict(v.ACCEPT)
        return True

    async def on_noop(self, command: Command) -> bool:
        self.reply_verdict(v.ACCEPT)
        return True

    async def on_quit(self, command: Command) -> bool:
        self.conn.send(replies.bye())
        return False

    # --- downstream -----------------------------------------------------------------------

    async def open_downstream(self) -> Downstream | None:
        """Connect for a new transaction, with the client's XFORWARD; reply 451 4.4.1 if not."""
        try:
            downstream = await Downstream.connect(
                self.target.host,
                self.target.port,
                self.hostname,
                io_timeout=self.settings.downstream_timeout,
            )
        except DownstreamError as exc:
            self.reply_verdict(v.TEMPFAIL_DOWNSTREAM_UNREACHABLE)
            self.event("downstream_unreachable", error=str(exc))
            return None
        self.envelope.downstream = downstream
        if "XFORWARD" in downstream.keywords:
            for line in self.envelope.xforward:
                reply = await self.relay(downstream, line, to_client=False)
                if reply is None:
                    return None
        return downstream

    async def relay(
        self, downstream: Downstream, line: bytes, *, to_client: bool = True
    ) -> Reply | None:
        """Send one line downstream and pass its reply on; None (and 451) if it broke."""
        try:
            reply = await downstream.command(line)
        except DownstreamError as exc:
            await self.end_transaction(polite=False)
            self.reply_verdict(v.TEMPFAIL_DOWNSTREAM_FAILED)
            self.event("downstream_failed", error=str(exc))
            return None
        if to_client:
            self.conn.send(reply.wire)
        return reply

    async def end_transaction(self, *, polite: bool) -> None:
        """Close the downstream session; its transaction, if any, ends unqueued."""
        downstream, self.envelope.downstream = self.envelope.downstream, None
        self.envelope.sender = None
        self.envelope.recipients = 0
        if downstream is None:
            return
        if polite:
            await downstream.quit()
        else:
            downstream.abort()

    # --- DATA -----------------------------------------------------------------------------

    async def on_data(self, command: Command) -> bool:
        if self.envelope.downstream is None or self.envelope.sender is None:
            self.refuse(v.REJECT_BAD_SEQUENCE)
            return True
        if self.envelope.recipients == 0:
            self.refuse(v.REJECT_NO_RECIPIENTS)
            return True
        if command.argument:
            self.refuse(v.REJECT_SYNTAX)
            return True
        self.conn.send(replies.start_data())
        envelope = self.envelope
        txn = self.pipeline.begin(Framing.SMTP_DATA)
        await self.receive(txn)
        # RFC 2920 §3.1: without PIPELINING, nothing may follow the dot before our reply.
        waiting = bool(txn.inspector.trailing) or self.conn.waiting
        if pipelining.check(pipelining.END_OF_DATA, waiting=waiting, pipelining_offered=False):
            self.finish(
                Decision(v.REJECT_PIPELINING, b"", [], {"size": txn.inspector.size}), envelope
            )
            self.check_sync(pipelining.END_OF_DATA, waiting=True)
        sender, recipients = envelope.sender, envelope.recipients
        decision, reply = await self.decide_and_deliver(txn)
        envelope.sender, envelope.recipients = sender, recipients
        decision.fields["answer"] = reply.split(b"\r\n", 1)[0].decode("ascii", "replace")
        self.finish(decision, envelope)
        self.conn.send(reply)
        # After the reply, not before: the client does not wait for the downstream QUIT. A
        # downstream that never saw DATA (a reject) queues nothing either way.
        await self.end_transaction(polite=True)
        self.envelope = Envelope()  # RFC 5321 §4.1.1.4: DATA ends the transaction
        return True

    async def receive(self, txn: Transaction) -> None:
        """Feed the content to the core in chunks until the real <CRLF>.<CRLF>."""
        while not txn.done:
            try:
                async with asyncio.timeout(self.settings.data_timeout):
                    chunk = await self.conn.read_chunk(CHUNK)
            except ClientGoneError:
                self.event("client_gone_in_data", size=txn.inspector.size)
                raise
            txn.feed(chunk)

    async def decide_and_deliver(self, txn: Transaction) -> tuple[Decision, bytes]:
        """The pipeline's decision and the reply for the client, within the deadline."""
        decision: Decision | None = None
        try:
            async with asyncio.timeout(self.settings.reply_deadline):
                decision = await self.pipeline.decide(txn)
                if decision.verdict.action is not v.Action.ACCEPT:
                    return decision, replies.verdict(decision.verdict)
                return decision, await self.deliver(decision)
        except TimeoutError:
            # Postfix: smtpd_proxy_timeout. Answer before Postfix gives up on us.
            await self.end_transaction(polite=False)
            fields = decision.fields if decision is not None else {}
            late = Decision(v.TEMPFAIL_INTERNAL, b"", [], {**fields, "error": "deadline"})
            return late, replies.verdict(late.verdict)

    async def deliver(self, decision: Decision) -> bytes:
        """DATA downstream, the accepted content, and that smtpd's end-of-data reply."""
        downstream = self.envelope.downstream
        if downstream is None:  # on_data checked; keep the type checker and the reader honest
            return replies.verdict(v.TEMPFAIL_INTERNAL)
        content = dot_stuff(prepend(decision.content, decision.headers))
        try:
            reply = await downstream.command(b"DATA")
            if reply.code != 354:
                return reply.wire if reply.code >= 400 else replies.verdict(v.TEMPFAIL_INTERNAL)
            final = await downstream.send_content(content)
        except DownstreamError as exc:
            await self.end_transaction(polite=False)
            self.event("downstream_failed", error=str(exc))
            return replies.verdict(v.TEMPFAIL_DOWNSTREAM_FAILED)
        decision.fields["queue_id"] = final.queue_id
        decision.fields["downstream_reply"] = final.text[:200]
        return final.wire

    def finish(self, decision: Decision, envelope: Envelope) -> None:
        """The canonical log line for this transaction."""
        client = envelope.client
        self.pipeline.log(
            decision,
            endpoint="proxy",
            session=self.id,
            client=client.get("ADDR") or self.peer,
            client_name=client.get("NAME"),
            sender=envelope.sender,
            recipients=envelope.recipients,
        )
