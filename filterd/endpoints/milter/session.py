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
- every message policy is the core's (filterd/core/message.py): the session translates
  the Milter commands into the core's events and renders the verdict; the one rendering
  rule of its own is `_within_agreement` (a hold the MTA did not agree to);
- one canonical log line per decided message (MessageRecord.fields), never a message body;
  a message the connection ends before it was answered gets one too (`action=unanswered`);
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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from purepythonmilter.protocol import commands
from purepythonmilter.protocol.exceptions import (
    ProtocolViolation,
    ProtocolViolationCommandData,
    ProtocolViolationPayload,
)

from filterd.config import MilterSettings
from filterd.core import (
    Abort,
    Connect,
    Content,
    EndOfMessage,
    EndpointRules,
    Framing,
    Mail,
    MessageCore,
    MessageRecord,
    Rcpt,
)
from filterd.core import verdict as v
from filterd.core.pieces import MIN_PIECE
from filterd.endpoints.milter import replies
from filterd.endpoints.milter.postfix import cleans_stray_cr_lf
from filterd.logs import get_logger
from filterd.pipeline import Decision, Pipeline

_log = get_logger("filterd.milter")

Progress = Callable[[], Awaitable[None]]


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
    """The milter's side of one message; replaced, never cleared, at MAIL FROM and ABORT.

    `core` holds the envelope, the content and the policy; the rest is the milter's own.
    """

    core: MessageCore
    header_names: list[str] = field(default_factory=list)
    headers: bytearray = field(default_factory=bytearray)  # header lines not yet fed
    macros: dict[str, str] = field(default_factory=dict)
    in_body: bool = False
    started: bool = False  # MAIL FROM seen: a transaction is in flight until it is answered
    failed: str = ""  # why handling failed; the message then gets 451 4.3.0


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """The endpoint's settings the session needs, checked and parsed once."""

    settings: MilterSettings
    rules: EndpointRules  # the milter's infected, traces and bypass (endpoint.milter_rules)
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
        self.message = self._new_message()
        self.busy = False  # deciding a message; the endpoint waits for it when stopping
        self.agreed: replies.Negotiated | None = None  # set by SMFIC_OPTNEG
        self._deciding: asyncio.Future[Decision] | None = None
        self._handlers: dict[type[Any], Callable[[Any], list[replies.Response] | None]] = {
            commands.Connect: self._on_connect,
            commands.MailFrom: self._on_mail,
            commands.RcptTo: self._on_rcpt,
            commands.Abort: self._on_abort,
            commands.QuitNoClose: self._on_abort,
        }
        # The commands of every packet of a message's content, and its macros: handled from
        # their data, without a purepythonmilter command object, which builds a logger
        # (logging.getLogger, under the logging module's lock) for each packet
        # (docs/explanation/performance.md, "Milter CPU, session 4").
        self._decoders: dict[type[Any], Callable[[bytes], None]] = {
            commands.BodyChunk: self._on_body,
            commands.Header: self._on_header_data,
            commands.DefineMacro: self._on_macro_data,
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
            decode = self._decoders.get(kind)
            if decode is not None:
                return self._on_data(kind, decode, data)
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

    def _on_data(
        self, kind: type[Any], decode: Callable[[bytes], None], data: bytes
    ) -> list[replies.Response] | None:
        """What `_dispatch` does for a command whose handler needs only its data."""
        decode(data)
        if self._expects_reply(kind):
            return [replies.final_reply(v.ACCEPT)]
        return None

    def _on_macro_data(self, data: bytes) -> None:
        self.pending_macros = macros_of(data)

    def _on_header_data(self, data: bytes) -> None:
        check_header(data)
        self._on_header(data)

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

    def _on_rcpt(self, command: Any) -> None:
        self.message.core.handle(Rcpt())

    def _on_abort(self, command: Any) -> None:
        # Sendmail milter protocol: SMFIC_ABORT ends the message; SMFIC_QUIT_NC also ends the
        # SMTP session, and a new one follows on this connection.
        # Postfix logs an aborted transaction itself: the message ends unlogged here.
        if isinstance(command, commands.QuitNoClose):
            self.client, self.client_ip, self.connect_macros = "", None, {}
        self._replace_message(self._new_message())

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
            self._log_message(self.message.core.failed(kind.__name__))
            self._replace_message(self._new_message())
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
        self.message.core.handle(Connect(self.client, addr))
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
        message = self._new_message(self._take_macros(), started=True)
        self._replace_message(message)
        authenticated = bool(message.macros.get("{auth_authen}"))
        size = declared_size(command.esmtp_args)
        bypassed = message.core.handle(
            Mail(command.address, authenticated=authenticated, size=size)
        )
        if not self._expects_reply(commands.MailFrom):
            return None  # the MTA cannot be answered at MAIL: the message is scanned
        if bypassed is not None:
            self._log_message(bypassed)
            # Sendmail milter protocol: SMFIR_ACCEPT after MAIL accepts this message and
            # Postfix sends no more events for it.
            return [replies.accept_message()]
        return None

    # --- content ----------------------------------------------------------------------------

    def _new_message(
        self, macros: dict[str, str] | None = None, *, started: bool = False
    ) -> Message:
        core = self.pipeline.begin("milter", Framing.MESSAGE, rules=self.options.rules)
        core.handle(Connect(self.client, self.client_ip))
        return Message(core, macros=macros or {}, started=started)

    def _on_header(self, data: bytes) -> None:
        """Header lines are gathered and fed to the core together, with the first body
        chunk or after HEADER_BATCH bytes: the inspector's verdict and content do not depend
        on the chunking (filterd/core/inspector.py), and one feed costs what one line did."""
        name, line = header_line(data)
        message = self.message
        message.header_names.append(name)
        message.headers += line
        if len(message.headers) >= HEADER_BATCH:
            self._feed_headers()

    def _feed_headers(self) -> None:
        """Give the gathered header lines to the core (before its content is read)."""
        message = self.message
        if message.headers:
            message.core.handle(Content(bytes(message.headers)))
            message.headers.clear()
            self.pipeline.fed(message.core)

    def _on_body(self, data: bytes) -> None:
        message = self.message
        core = message.core
        if not message.in_body:
            # Postfix: milter8.c does not send the empty line between header and body.
            message.headers += b"\r\n"
            message.in_body = True
        if message.headers:
            data = bytes(message.headers) + data  # one feed for the headers and the chunk
            message.headers.clear()
        core.handle(Content(data))
        self.pipeline.fed(core)  # to the scanner stream while the rest arrives

    async def _on_end_of_message(self, progress: Progress) -> list[replies.Response]:
        message = self.message
        message.macros.update(self._take_macros())
        if message.failed:
            decision = Decision(message.core.failed(message.failed))
        else:
            self._on_body(b"")  # a message without a body still gets its separator line
            message.core.handle(EndOfMessage())
            self.busy = True
            try:
                decision = await self._decide_with_progress(message.core, progress)
            finally:
                self.busy = False
        decision = self._within_agreement(decision)
        self._log_message(decision.record)
        self._replace_message(self._new_message())
        agreed = self.agreed or replies.NOTHING_AGREED  # handle() refuses EOM before OPTNEG
        return replies.end_of_message(
            decision.verdict,
            decision.headers,
            message.header_names,
            agreed,
            decision.record.virus or "",
        )

    def _within_agreement(self, decision: Decision) -> Decision:
        """A hold the MTA did not agree to becomes a tempfail, never an infected accept.

        The core decided to hold (QUARANTINE_VIRUS); whether this connection can is known
        only from its SMFIC_OPTNEG, so this rendering rule stays here.
        """
        if decision.verdict is v.QUARANTINE_VIRUS and not (self.agreed and self.agreed.quarantine):
            virus = decision.record.virus or "unknown"
            return Decision(decision.record.but(verdict=v.TEMPFAIL_VIRUS.with_detail(virus)))
        return decision

    async def _decide_with_progress(self, core: MessageCore, progress: Progress) -> Decision:
        task = asyncio.ensure_future(self._decide(core))
        self._deciding = task
        try:
            while True:
                done, _ = await asyncio.wait(
                    {task}, timeout=self.options.settings.progress_interval
                )
                if task.cancelled():  # interrupt(): filterd is stopping
                    return Decision(core.abort(Abort(v.TEMPFAIL_SHUTTING_DOWN)))
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
        self.message.core.close()  # [server] max_buffered_bytes
        self.message = message

    # --- the end of a connection ------------------------------------------------------------

    @property
    def in_progress(self) -> bool:
        """A transaction has started (MAIL FROM or content) and is not answered yet."""
        return self.message.started or self.message.core.began or bool(self.message.headers)

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
        self._feed_headers()  # the log line counts them in the size
        self._log_message(self.message.core.abort(Abort(why=why)))
        self._replace_message(self._new_message())

    async def _decide(self, core: MessageCore) -> Decision:
        # Every policy is the core's; Postfix delivers the content, so none is kept.
        return await self.pipeline.decide(core, keep_content=False)

    def _log_message(self, record: MessageRecord) -> None:
        """The canonical log line, with the milter's own field: Postfix's queue id."""
        self.pipeline.log(record.but(queue_id=self.message.macros.get("i", "")))


# Header lines gathered before they are fed to the core: the pieces of content it keeps are
# as large (filterd/core/pieces.py), so the scanner stream starts as early.
HEADER_BATCH = MIN_PIECE
_HEADER_STRINGS = 2  # SMFIC_HEADER: a name and a value, each NUL-terminated


def macros_of(data: bytes) -> dict[str, str]:
    """The macros of SMFIC_MACRO data, checked as purepythonmilter's DefineMacro checks them.

    Sendmail milter protocol: the stage's command byte, then NUL-terminated name and value
    strings, in pairs. Raises ProtocolViolationCommandData as DefineMacro does.
    """
    if not data:
        raise ProtocolViolationCommandData("SMFIC_MACRO without a stage")
    if data[:1] not in commands.DefineMacro.command_char_to_stage:
        raise ProtocolViolationCommandData("SMFIC_MACRO for an unknown stage")
    strings = data[1:]
    if not strings:
        return {}
    if strings[-1:] != b"\0":
        raise ProtocolViolationCommandData("SMFIC_MACRO data is not NUL-terminated")
    items = strings[:-1].split(b"\0")
    if len(items) % 2:
        raise ProtocolViolationCommandData("SMFIC_MACRO data is not name and value pairs")
    try:
        decoded = [item.decode("utf-8") for item in items]
    except UnicodeDecodeError as exc:
        raise ProtocolViolationCommandData("SMFIC_MACRO data is not UTF-8") from exc
    return dict(zip(decoded[::2], decoded[1::2], strict=True))


def check_header(data: bytes) -> None:
    """SMFIC_HEADER data is a name and a value, each NUL-terminated: what purepythonmilter's
    Header checks (its decoding of both to text cannot fail: it replaces what does not
    decode). Raises ProtocolViolationCommandData as Header does."""
    if data[-1:] != b"\0":
        raise ProtocolViolationCommandData("SMFIC_HEADER data is not NUL-terminated")
    if data.count(b"\0") != _HEADER_STRINGS:
        raise ProtocolViolationCommandData("SMFIC_HEADER data is not a name and a value")


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


def declared_size(esmtp_args: Mapping[str, str | None]) -> int:
    """MAIL FROM's SIZE= as Postfix passes it on (RFC 1870 §3: 1*20DIGIT); 0 if absent or
    malformed (Postfix's smtpd checked it already; here it is only a scan's size hint)."""
    for name, value in esmtp_args.items():
        if name.upper() == "SIZE" and value is not None and value.isascii() and value.isdigit():
            return int(value[:20])
    return 0
