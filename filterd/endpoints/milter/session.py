"""One Milter connection's state: the SMTP session it stands for and the message in progress.

Guarantees (each fixes a purepythonmilter 0.0.1 defect, docs/explanation/milter.md):
- state is per message: MAIL FROM and ABORT start a new message, so nothing of one message
  (headers to add, a quarantine, macros such as the queue id) reaches the next one; several
  messages per connection are the normal case (Postfix sends ABORT after every message);
- every failure while handling a message answers that message with 451 4.3.0 (from the
  catalogue) and leaves the connection usable for the next message: an exception never
  reaches the connection, where it would make Postfix apply milter_default_action to the rest
  of the SMTP session;
- while the pipeline decides a message, SMFIR_PROGRESS goes out every `progress_interval`
  seconds, so milter_content_timeout (a per-read timeout in Postfix) never fires on a healthy
  but slow scan;
- one canonical log line per decided message (Pipeline.log), never a message body; a
  message the connection ends before it was answered gets one too (`action=unanswered`);
- only what was agreed in OPTNEG is used: events the MTA cannot silence are answered with
  SMFIR_CONTINUE, and modifications it did not offer are not sent;
- errors are logged by kind and size, never with the command's bytes (headers, addresses).

The session does no socket I/O itself: it turns commands into responses, and sends progress
through the callback it is given.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from purepythonmilter.protocol import commands
from purepythonmilter.protocol.exceptions import ProtocolViolation, ProtocolViolationPayload

from filterd.config import MilterSettings
from filterd.core import Framing, Traces, Transaction
from filterd.core import verdict as v
from filterd.endpoints.milter import replies
from filterd.endpoints.milter.postfix import cleans_stray_cr_lf
from filterd.logs import get_logger
from filterd.pipeline import Decision, Pipeline

_log = get_logger("filterd.milter")

Progress = Callable[[], Awaitable[None]]
Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


class CloseConnection(Exception):  # noqa: N818 (a signal to the connection, not an error)
    """SMFIC_QUIT: Postfix is done with this connection."""


# The event each command stands for, for the SMFIP_NR_* bits (replies.NO_REPLY_BITS).
_EVENTS: dict[type[Any], str] = {
    commands.Connect: "connect", commands.Helo: "helo", commands.MailFrom: "mail",
    commands.RcptTo: "rcpt", commands.Data: "data", commands.Unknown: "unknown",
    commands.EndOfHeaders: "eoh", commands.BodyChunk: "body", commands.Header: "header",
}  # fmt: skip


@dataclass(slots=True)
class Message:
    """Everything about one message; replaced, never cleared, at MAIL FROM and ABORT."""

    sender: str = ""
    recipients: int = 0
    header_names: list[str] = field(default_factory=list)
    macros: dict[str, str] = field(default_factory=dict)
    txn: Transaction | None = None
    in_body: bool = False
    started: bool = False  # MAIL FROM seen: a transaction is in flight until it is answered
    failed: str = ""  # why handling failed; the message then gets 451 4.3.0
    bypass: str = ""  # why it is not scanned


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """The endpoint's settings the session needs, checked and parsed once."""

    settings: MilterSettings
    networks: Networks
    negotiation: replies.Negotiation
    warned_versions: set[str] = field(default_factory=set)  # shared: warn once per process


class MilterSession:
    def __init__(self, pipeline: Pipeline, options: SessionOptions, peer: str) -> None:
        self.pipeline = pipeline
        self.options = options
        self.peer = peer  # the Milter socket's peer, for logs
        self.client = ""  # the SMTP client Postfix reports at SMFIC_CONNECT
        self.client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self.connect_macros: dict[str, str] = {}
        self.pending_macros: dict[str, str] = {}
        self.message = Message()
        self.busy = False  # deciding a message; the endpoint waits for it when stopping
        self.agreed: replies.Negotiated | None = None  # set by SMFIC_OPTNEG
        self._deciding: asyncio.Future[Decision] | None = None
        self._handlers: dict[type[Any], Callable[[Any], list[replies.Response] | None]] = {
            commands.DefineMacro: self._on_macro,
            commands.Connect: self._on_connect,
            commands.MailFrom: self._on_mail,
            commands.RcptTo: self._on_rcpt,
            commands.Header: lambda command: self._on_header(command.data_raw),
            commands.BodyChunk: lambda command: self._on_body(command.data_raw),
            commands.Abort: self._on_abort,
            commands.QuitNoClose: self._on_abort,
        }

    # --- dispatch ---------------------------------------------------------------------------

    async def handle(
        self, kind: type[Any], data: bytes, progress: Progress
    ) -> list[replies.Response] | None:
        """The responses to one command, or None when the MTA expects none.

        Raises CloseConnection on SMFIC_QUIT, ProtocolViolation when the connection cannot
        go on (a broken SMFIC_OPTNEG, or any command before it). Never raises anything else.
        """
        if kind is commands.Quit:
            raise CloseConnection
        if kind is commands.OptionsNegotiate:
            return self._on_optneg(data)
        if self.agreed is None:
            # Sendmail milter protocol: the MTA starts every connection with SMFIC_OPTNEG.
            raise ProtocolViolationPayload("command before SMFIC_OPTNEG")
        try:
            command = kind(data_raw=data)
            return await self._dispatch(command, progress)
        except (Exception, ProtocolViolation) as exc:  # ProtocolViolation is a BaseException
            return self._failed(kind, exc, len(data))

    async def _dispatch(self, command: Any, progress: Progress) -> list[replies.Response] | None:
        if isinstance(command, commands.EndOfMessage):
            return await self._on_end_of_message(progress)
        handler = self._handlers.get(type(command))
        answer = handler(command) if handler is not None else None
        if answer is None and self._expects_reply(type(command)):
            # HELO, DATA, EOH, UNKNOWN when the MTA could not switch them off, or any event
            # whose SMFIP_NR_* bit it did not offer: it waits for a reply.
            return [replies.final_reply(v.ACCEPT)]
        return answer

    def _on_optneg(self, data: bytes) -> list[replies.Response]:
        commands.OptionsNegotiate(data_raw=data)  # checks length and version 6
        _, actions, protocol = struct.unpack("!III", data)
        answer, self.agreed = replies.negotiate(self.options.negotiation, actions, protocol)
        if self.agreed.dropped:
            _log.warning(
                "the MTA does not offer everything filterd asks for; not using it",
                peer=self.peer,
                dropped=list(self.agreed.dropped),
            )
        return [answer]

    def _on_macro(self, command: Any) -> None:
        self.pending_macros = dict(command.macros)

    def _on_rcpt(self, command: Any) -> None:
        self.message.recipients += 1

    def _on_abort(self, command: Any) -> None:
        # Sendmail milter protocol: SMFIC_ABORT ends the message; SMFIC_QUIT_NC also ends the
        # SMTP session, and a new one follows on this connection.
        self._replace_message(Message())
        if isinstance(command, commands.QuitNoClose):
            self.client, self.client_ip, self.connect_macros = "", None, {}

    def _failed(
        self, kind: type[Any], exc: BaseException, size: int
    ) -> list[replies.Response] | None:
        # The exception's text may quote the command's bytes (purepythonmilter puts header
        # data in its messages): log the kind, the size and, for a bug, the code path only.
        where = (
            None if isinstance(exc, ProtocolViolation) else traceback.format_tb(exc.__traceback__)
        )
        _log.error(
            "milter command failed",
            command=kind.__name__,
            error=type(exc).__name__,
            size=size,
            client=self.client,
            where=where,
        )
        if kind is commands.EndOfMessage:
            decision = Decision(v.TEMPFAIL_INTERNAL, b"", [], {"error": kind.__name__})
            self._log_message(decision)
            self._replace_message(Message())
            return [replies.final_reply(v.TEMPFAIL_INTERNAL)]
        self.message.failed = self.message.failed or kind.__name__
        if self._expects_reply(kind):
            return [replies.final_reply(v.TEMPFAIL_INTERNAL)]
        return None

    def _expects_reply(self, kind: type[Any]) -> bool:
        event = _EVENTS.get(kind)
        if event is None:
            # Macros, ABORT and QUIT_NC never get a reply; end of message always does.
            return kind is commands.EndOfMessage
        return self.agreed is not None and self.agreed.replies_to(event)

    # --- session and envelope ---------------------------------------------------------------

    def _take_macros(self) -> dict[str, str]:
        macros, self.pending_macros = self.pending_macros, {}
        return macros

    def _on_connect(self, command: Any) -> list[replies.Response] | None:
        self.connect_macros = self._take_macros()
        info = command.connection_info_args
        addr = getattr(info, "addr", None)
        self.client_ip = addr
        self.client = (
            str(addr)
            if addr is not None
            else command.data_raw.split(b"\0")[0].decode("ascii", "replace")
        )
        self._check_postfix_version(self.connect_macros.get("v", ""))
        return None

    def _check_postfix_version(self, version: str) -> None:
        if not version or version in self.options.warned_versions:
            return
        self.options.warned_versions.add(version)
        if cleans_stray_cr_lf(version) is False:
            _log.warning(
                "this Postfix passes stray CR/LF to milters and lacks smtpd_forbid_bare_newline;"
                " upgrade to 3.9, 3.8.5, 3.7.10, 3.6.14 or 3.5.24 or later",
                postfix=version,
            )

    def _on_mail(self, command: Any) -> list[replies.Response] | None:
        # MAIL FROM starts a new message even if Postfix sent no ABORT before it.
        self._replace_message(
            Message(sender=command.address, macros=self._take_macros(), started=True)
        )
        self.message.bypass = self._bypass_reason()
        if not self._expects_reply(commands.MailFrom):
            return None
        if self.message.bypass:
            decision = Decision(v.ACCEPT_BYPASS, b"", [], {"bypass": self.message.bypass})
            self._log_message(decision)
            # Sendmail milter protocol: SMFIR_ACCEPT after MAIL accepts this message and
            # Postfix sends no more events for it.
            return [replies.accept_message()]
        return None

    def _bypass_reason(self) -> str:
        settings = self.options.settings
        if self.client_ip is not None and any(
            self.client_ip in network for network in self.options.networks
        ):
            return "network"
        if settings.bypass_authenticated and self.message.macros.get("{auth_authen}"):
            return "authenticated"
        return ""

    # --- content ----------------------------------------------------------------------------

    def _transaction(self) -> Transaction:
        if self.message.txn is None:
            word = self.options.settings.traces  # "" follows [filter] traces
            traces = Traces(word) if word else None
            self.message.txn = self.pipeline.begin(Framing.MESSAGE, traces=traces)
        return self.message.txn

    def _on_header(self, data: bytes) -> None:
        name, line = header_line(data)
        self.message.header_names.append(name)
        self._transaction().feed(line)

    def _on_body(self, data: bytes) -> None:
        txn = self._transaction()
        if not self.message.in_body:
            # Postfix: milter8.c does not send the empty line between header and body.
            txn.feed(b"\r\n")
            self.message.in_body = True
        txn.feed(data)

    async def _on_end_of_message(self, progress: Progress) -> list[replies.Response]:
        message = self.message
        message.macros.update(self._take_macros())
        if message.failed:
            decision = Decision(v.TEMPFAIL_INTERNAL, b"", [], {"error": message.failed})
        else:
            self._on_body(b"")  # a message without a body still gets its separator line
            txn = self._transaction()
            txn.finish()
            self.busy = True
            try:
                decision = await self._decide_with_progress(txn, progress)
            finally:
                self.busy = False
        decision = self._within_agreement(decision)
        self._log_message(decision)
        self._replace_message(Message())
        virus = str(decision.fields.get("virus", ""))
        agreed = self.agreed or replies.NOTHING_AGREED  # handle() refuses EOM before OPTNEG
        return replies.end_of_message(
            decision.verdict, decision.headers, message.header_names, agreed, virus
        )

    def _within_agreement(self, decision: Decision) -> Decision:
        """A hold the MTA did not agree to becomes a tempfail, never an infected accept."""
        if decision.verdict is v.QUARANTINE_VIRUS and not (self.agreed and self.agreed.quarantine):
            virus = str(decision.fields.get("virus", "unknown"))
            return Decision(v.TEMPFAIL_VIRUS.with_detail(virus), b"", [], decision.fields)
        return decision

    async def _decide_with_progress(self, txn: Transaction, progress: Progress) -> Decision:
        task = asyncio.ensure_future(self._decide(txn))
        self._deciding = task
        try:
            while True:
                done, _ = await asyncio.wait(
                    {task}, timeout=self.options.settings.progress_interval
                )
                if task.cancelled():  # interrupt(): filterd is stopping
                    return Decision(v.TEMPFAIL_SHUTTING_DOWN, b"", [], {"size": txn.inspector.size})
                if done:
                    return task.result()
                # Sendmail milter protocol: SMFIR_PROGRESS; Postfix: milter8.c reads again
                # with a fresh milter_content_timeout.
                await progress()
        finally:
            self._deciding = None
            task.cancel()

    def _replace_message(self, message: Message) -> None:
        """The next message; the old one's transaction gives its buffered bytes back."""
        if self.message.txn is not None:
            self.message.txn.close()  # [server] max_buffered_bytes
        self.message = message

    # --- the end of a connection ------------------------------------------------------------

    @property
    def in_progress(self) -> bool:
        """A transaction has started (MAIL FROM or content) and is not answered yet."""
        return self.message.started or self.message.txn is not None

    def interrupt(self) -> None:
        """Stop deciding the current message; it is answered with 421 4.3.2 at once."""
        if self._deciding is not None:
            self._deciding.cancel()

    def abandon(self, why: str) -> None:
        """The connection ends with a message unanswered: log what the MTA was told.

        Nothing: it applies its milter_default_action (Postfix) to that message.
        """
        if not self.in_progress:
            return
        message = self.message
        _log.info(
            "message",
            endpoint="milter",
            action="unanswered",
            reply="",
            reason=why,
            client=self.client,
            sender=message.sender,
            recipients=message.recipients,
            queue_id=message.macros.get("i", ""),
        )
        self._replace_message(Message())

    async def _decide(self, txn: Transaction) -> Decision:
        decision = await self.pipeline.decide(txn)  # traces: the core's (filterd/core/traces.py)
        return _with_milter_actions(decision, self.options.settings.infected)

    def _log_message(self, decision: Decision) -> None:
        message = self.message
        self.pipeline.log(
            decision,
            endpoint="milter",
            client=self.client,
            sender=message.sender,
            recipients=message.recipients,
            queue_id=message.macros.get("i", ""),
        )


def header_line(data: bytes) -> tuple[str, bytes]:
    """The header's name and its line as it was in the message, from SMFIC_HEADER data.

    With SMFIP_HDR_LEADSPC the value is sent exactly as it follows the colon. A folded value
    keeps its line breaks as bare LF (Postfix keeps queue-file records without CR); they are
    given back their CR, so folding is not mistaken for a stray LF.
    """
    name, _, value = data.partition(b"\0")
    value = value.removesuffix(b"\0")
    value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return name.decode("ascii", "replace"), name + b":" + value + b"\r\n"


def _with_milter_actions(decision: Decision, infected: str) -> Decision:
    """Quarantine is a milter-only action: the pipeline accepts (with the Infected header),
    and the milter also puts the message on hold."""
    if infected == "quarantine" and decision.verdict.reason == v.ACCEPT_VIRUS.reason:
        return Decision(v.QUARANTINE_VIRUS, decision.content, decision.headers, decision.fields)
    return decision
