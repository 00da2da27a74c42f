"""One message as events in, one immutable record out: the canonical log line's source.

Both endpoints translate their protocol into the same events (hypercorn's shape: HTTP/1 and
HTTP/2 feed one stream): `Connect` (the SMTP client), `Mail`, `Rcpt`, `Content`,
`EndOfMessage` and `Abort`. `MessageCore` applies every message policy on them: bypass at
MAIL (on facts the endpoint supplies), framing and traces while the content streams in, the
scan policy (infected action including quarantine, oversize, fail-open) at the end. What it
decides is a `MessageRecord`: the verdict and every fact of the message, frozen; `fields()`
is the one canonical log line. The endpoint adds what only it knows (a downstream queue id,
what the client was told) with `MessageRecord.but()`, never by writing into a dict.

Sans-I/O: the scan itself is the caller's (filterd/pipeline.py awaits the scanner and gives
the outcome to `decided()`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from filterd.core import verdict as v
from filterd.core.budget import ContentBudget
from filterd.core.errors import InspectorError
from filterd.core.inspector import Framing
from filterd.core.policy import Address, BareNewline, EndpointRules, Policy
from filterd.core.transaction import ScanOutcome, Transaction

# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    """The SMTP client, as the endpoint knows it (Postfix's SMFIC_CONNECT; XFORWARD ADDR)."""

    client: str | None  # for the log line
    address: Address | None = None  # parsed, for bypass_networks


@dataclass(frozen=True, slots=True)
class Mail:
    """MAIL FROM accepted; starts the message."""

    sender: str | None
    authenticated: bool = False  # a SASL login (Postfix's {auth_authen} macro)
    size: int = 0  # the SIZE= it declares (RFC 1870 §3), 0 when none: a scan's size hint


@dataclass(frozen=True, slots=True)
class Rcpt:
    """One recipient accepted."""


@dataclass(frozen=True, slots=True)
class Content:
    """The next bytes of content: DATA as sent (SMTP_DATA) or header and body (MESSAGE)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The endpoint has all the content (MESSAGE framing; SMTP_DATA finds its own end)."""


@dataclass(frozen=True, slots=True)
class Abort:
    """The message ends without its decision.

    `told`: the verdict the client was given (a timeout, a shutdown, a lost next hop); None
    when it was told nothing and the MTA decides (the record says `action=unanswered` and
    `why`).
    """

    told: v.Verdict | None = None
    why: str = ""


Event = Connect | Mail | Rcpt | Content | EndOfMessage | Abort

TRACE = "smtp_command_sequence"  # the log field `trace` (filterd/core/traces.py)


# --- the record -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """Everything the canonical log line says about one message; never a body byte.

    `verdict` is what the MTA was told (None: nothing, `why` says why). Optional facts are
    left out of the log line when None. `own` holds the endpoint's own fields, in order
    (the proxy's session number, the milter's queue id), appended to the line as they are.
    """

    endpoint: str
    verdict: v.Verdict | None
    why: str = ""
    client: str | None = None
    sender: str | None = None
    recipients: int = 0
    size: int | None = None
    bypass: str | None = None
    trace: str | None = None
    trace_line: int | None = None
    findings: tuple[str, ...] | None = None
    scan_time: float | None = None
    virus: str | None = None
    scan_error: str | None = None
    clamd: str | None = None  # the clamd address that answered (or last failed); a scan ran
    elapsed: float | None = None
    error: str | None = None
    queue_id: str | None = None
    downstream_reply: str | None = None
    final_dot_sent: bool = False
    own: tuple[tuple[str, Any], ...] = ()

    def but(self, **changes: Any) -> MessageRecord:
        """The same record with `changes` (a verdict, a queue id, ...)."""
        return dataclasses.replace(self, **changes)

    def fields(self) -> dict[str, Any]:
        """The canonical log line's fields, in a fixed order."""
        verdict = self.verdict
        line: dict[str, Any] = {
            "endpoint": self.endpoint,
            "action": "unanswered" if verdict is None else verdict.action.value,
            "reply": "" if verdict is None else verdict.reply,
            "reason": self.why if verdict is None else verdict.reason,
        }
        optional: dict[str, Any] = {
            "size": self.size,
            "bypass": self.bypass,
            "trace": self.trace,
            "trace_line": self.trace_line,
            "findings": None if self.findings is None else list(self.findings),
            "scan_time": self.scan_time,
            "virus": self.virus,
            "scan_error": self.scan_error,
            "clamd": self.clamd,
            "elapsed": self.elapsed,
            "error": self.error,
            "downstream_reply": self.downstream_reply,
            "final_dot_sent": self.final_dot_sent or None,
        }
        line.update((key, value) for key, value in optional.items() if value is not None)
        line.update(client=self.client, sender=self.sender, recipients=self.recipients)
        if self.queue_id is not None:
            line["queue_id"] = self.queue_id
        line.update(self.own)
        return line


# --- the core -------------------------------------------------------------------------------


class MessageCore:
    """One message, fed events with `handle()`; decided with `decided()` or `failed()`.

    At the end of the content, `framing_verdict()` says whether the framing alone decides
    (then `decided(None)`); otherwise the caller scans `content()` and gives the outcome to
    `decided()`. `close()` gives the content's memory back (the endpoint calls it once the
    message is answered and delivered).
    """

    def __init__(
        self,
        policy: Policy,
        endpoint: str,
        *,
        rules: EndpointRules | None = None,
        framing: Framing = Framing.SMTP_DATA,
        budget: ContentBudget | None = None,
    ) -> None:
        self.policy = policy
        self.endpoint = endpoint
        self.rules = EndpointRules() if rules is None else rules
        self.framing = framing
        self.budget = budget
        self.client = Connect(None)
        self.sender: str | None = None
        self.recipients = 0
        self.bypass = ""
        self.declared_size = 0  # MAIL FROM's SIZE= (0: none), the size hint of a scan stream
        self._txn: Transaction | None = None
        self._on_close: list[Callable[[], None]] = []

    # --- events ---------------------------------------------------------------------------

    def handle(self, event: Event) -> MessageRecord | None:
        """Apply one event. A record when it decides the message: a bypass at `Mail`, or
        the end of a message at `Abort` (None if no message was open)."""
        match event:
            case Connect():
                self.client = event
            case Mail():
                return self._mail(event)
            case Rcpt():
                self.recipients += 1
            case Content():
                self.transaction.feed(event.data)
            case EndOfMessage():
                if self.framing is Framing.MESSAGE:
                    self.transaction.finish()
            case Abort():
                return self.abort(event)
        return None

    def _mail(self, event: Mail) -> MessageRecord | None:
        self.sender = event.sender
        self.declared_size = event.size
        self.bypass = self.rules.bypass(self.client.address, authenticated=event.authenticated)
        if not self.bypass:
            return None
        return self._record(v.ACCEPT_BYPASS, bypass=self.bypass)

    def abort(self, event: Abort) -> MessageRecord:
        """`handle(Abort)`, typed: the record of a message that ends without its decision."""
        size = None if self._txn is None else self._txn.size
        self.close()
        return self._record(event.told, why=event.why, size=size)

    # --- content --------------------------------------------------------------------------

    @property
    def transaction(self) -> Transaction:
        """The content's transaction, begun with the first content."""
        if self._txn is None:
            self._txn = Transaction(
                self.policy,
                self.framing,
                budget=self.budget,
                traces=self.rules.traces,
                infected=self.rules.infected,
            )
        return self._txn

    @property
    def began(self) -> bool:
        """Content has arrived."""
        return self._txn is not None

    @property
    def done(self) -> bool:
        """The content has ended."""
        return self._txn is not None and self._txn.done

    @property
    def trailing(self) -> bytes:
        """Bytes after the end of data (RFC 2920 §3.1: without PIPELINING, a violation)."""
        return b"" if self._txn is None else self._txn.trailing

    @property
    def size(self) -> int:
        return 0 if self._txn is None else self._txn.size

    @property
    def reserved(self) -> int:
        """Bytes of the budget this message holds."""
        return 0 if self._txn is None else self._txn.reserved

    def framing_verdict(self) -> v.Verdict | None:
        return self.transaction.framing_verdict()

    def content(self) -> bytes:
        return self.transaction.content()

    def new_pieces(self) -> list[bytes]:
        """The normalised content finished since the last call, as immutable pieces, each
        given once: a scanner stream can be fed them while the content still arrives (call
        it after each `Content` event; after the end it gives the rest)."""
        return [] if self._txn is None else self._txn.new_pieces()

    @property
    def refused(self) -> bool:
        """The content is no longer kept: the framing refuses the message whatever follows
        (too large, smuggling, a bare newline in reject mode), the budget dropped it, or it
        was closed. A scanner stream fed from `new_pieces()` stops here."""
        return self._txn is not None and not self._txn.keeping

    @property
    def dot_lines(self) -> bool:
        """A line of the content may start with "." (False: sure none does, so the proxy
        need not look for lines to dot-stuff)."""
        return self._txn is None or self._txn.dot_lines

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call `callback` once when the message is closed (the pipeline lets go of its
        scanner stream there): every path of a message ends in `close()`."""
        self._on_close.append(callback)

    def close(self) -> None:
        """Give the content's memory back, and run the `on_close` callbacks. Idempotent."""
        if self._txn is not None:
            self._txn.close()
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            callback()

    # --- decisions ------------------------------------------------------------------------

    def decided(
        self,
        scan: ScanOutcome | None,
        *,
        scan_time: float | None = None,
        elapsed: float | None = None,
        clamd: str | None = None,
    ) -> MessageRecord:
        """The record at the end of the content: `scan` None only if the framing decided;
        `clamd`: the address that answered the scan (or failed last)."""
        txn = self.transaction
        if not txn.done:
            raise InspectorError("decided() before the end of data")
        forced = txn.framing_verdict()
        verdict = txn.verdict(scan)
        findings = tuple(txn.findings.kinds())
        quiet = self.policy.forbid_bare_newline is BareNewline.NORMALIZE
        trace, trace_line = None, None
        if txn.trace is not None:
            if verdict is not v.REJECT_SMUGGLING_TRACE:  # that reason already says it
                trace = TRACE
            trace_line = txn.trace.line
        return self._record(
            verdict,
            size=txn.size,
            trace=trace,
            trace_line=trace_line,
            # Postfix's "note" logs its findings; "normalize" stays quiet unless they refuse.
            findings=findings if forced is not None or (findings and not quiet) else None,
            scan_time=scan_time,
            virus=None if scan is None else scan.virus,
            scan_error=None if scan is None else scan.reason,
            clamd=clamd,
            elapsed=elapsed,
        )

    def failed(self, error: str, verdict: v.Verdict = v.TEMPFAIL_INTERNAL) -> MessageRecord:
        """The record of a message whose handling failed (`error`: what failed)."""
        return self._record(verdict, error=error)

    def _record(self, verdict: v.Verdict | None, **facts: Any) -> MessageRecord:
        return MessageRecord(
            self.endpoint,
            verdict,
            client=self.client.client,
            sender=self.sender,
            recipients=self.recipients,
            **facts,
        )
