"""Where the core meets I/O: one message through the core, the scanner, one verdict.

The endpoints translate their protocol into the core's events (filterd/core/message.py) on a
`MessageCore` made by `Pipeline.begin()`, call `Pipeline.fed()` after each `Content` event,
then await `Pipeline.decide()` once at the end of the content, and call `MessageCore.close()`
when the message is answered and delivered (the Decision holds the content until then;
close() gives its memory back to the pipeline's `ContentBudget`).

Streaming to clamd: `fed()` opens the message's `ScanStream` with its first finished piece
of content (size hint: MAIL FROM's SIZE=) and feeds it each piece as it is finished
(`MessageCore.new_pieces()`), so the transfer to clamd is done by the final dot. The stream
sees exactly the normalised content that `scan(content())` would (tests/test_pipeline_stream.py).
Every stream ends once: `decide()` finishes it, or aborts it when the framing refuses the
message; `fed()` aborts it as soon as the content is refused mid-way (too large, smuggling,
the budget); `close()` aborts one still open (a client gone, a timeout, a shutdown, an
abort), which gives clamd's connection and the scan slot back.

`decide()` never raises: a failure anywhere answers with a tempfail and a
logged traceback, never with an accept of unscanned mail. Each message ends with
`Pipeline.log(record)`: the one canonical log line, `MessageRecord.fields()`. Message bodies
are never logged.

This is the only module that knows both the core and the scanner: the scanner's `ScanResult`
is mapped to the core's `ScanOutcome` here, once (`to_outcome`).
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from dataclasses import dataclass

from filterd import __version__, metrics
from filterd.core import (
    ContentBudget,
    EndpointRules,
    Framing,
    MessageCore,
    MessageRecord,
    Policy,
    ScanOutcome,
    ScanStatus,
    Verdict,
)
from filterd.core import verdict as v
from filterd.hostname import default_hostname
from filterd.logs import get_logger
from filterd.scan import Scanner, ScanResult, ScanStream
from filterd.scan import ScanStatus as ScannerStatus

_log = get_logger("filterd.pipeline")

# Verdicts that mean something broke, not a decision about the mail (logged as warnings).
_FAILURE_VERDICTS = (
    v.TEMPFAIL_SCANNER_UNAVAILABLE,
    v.ACCEPT_SCANNER_FAIL_OPEN,
    v.TEMPFAIL_INTERNAL,
)


def to_outcome(result: ScanResult) -> ScanOutcome:
    """The scanner's facts as the core's policy reads them (the two statuses share values)."""
    return ScanOutcome(ScanStatus(result.status.value), virus=result.virus, reason=result.reason)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the endpoint needs to answer, to deliver on accept, and to log."""

    record: MessageRecord  # the verdict and the canonical log line's facts
    content: bytes = b""  # normalised content; empty unless the verdict accepts and it was kept
    headers: tuple[tuple[str, str], ...] = ()  # to add on delivery (X-Virus-Scanned, -Status)
    dot_lines: bool = True  # a line of content may start with "." (False: sure none does)

    @property
    def verdict(self) -> Verdict:
        verdict = self.record.verdict
        if verdict is None:  # pragma: no cover - decide() always gives a verdict
            raise ValueError("a decision without a verdict")
        return verdict

    def but(self, **changes: object) -> Decision:
        """The same decision, content and headers, with `changes` to its record (another
        verdict, facts for the log line)."""
        return dataclasses.replace(self, record=self.record.but(**changes))


class Pipeline:
    def __init__(
        self,
        policy: Policy,
        scanner: Scanner,
        *,
        add_headers: bool = True,
        hostname: str = "",
        budget: ContentBudget | None = None,
    ) -> None:
        self.policy = policy
        self.scanner = scanner
        self.add_headers = add_headers
        self.scanned_by = _scanned_by(hostname)
        self.budget = budget  # None: content memory is not bounded
        # The open scanner stream of each message (weak: a message dropped unclosed must
        # not be kept alive by this table; close() is what aborts its stream).
        self._streams: weakref.WeakKeyDictionary[MessageCore, ScanStream] = (
            weakref.WeakKeyDictionary()
        )

    def begin(
        self,
        endpoint: str,
        framing: Framing = Framing.SMTP_DATA,
        *,
        rules: EndpointRules | None = None,
    ) -> MessageCore:
        """A message charging this pipeline's budget, under the endpoint's `rules`."""
        return MessageCore(self.policy, endpoint, rules=rules, framing=framing, budget=self.budget)

    async def decide(self, message: MessageCore, *, keep_content: bool = True) -> Decision:
        """The verdict for a message whose content has ended. Never raises.

        `keep_content=False`: the endpoint does not deliver the content (the milter: Postfix
        has it), so the Decision holds none and the pieces are not joined into one copy."""
        started = time.monotonic()
        try:
            return await self._decide(message, started, keep_content)
        except Exception:
            self._abort(message)
            _log.exception("message processing failed; answering with a tempfail")
            return Decision(message.failed("internal"))

    def fed(self, message: MessageCore) -> None:
        """After each `Content` event: feed the content finished so far to the message's
        scanner stream (opened with the first piece), or abort the stream at once when the
        content was refused (nothing more would be scanned)."""
        if message.refused:
            self._abort(message)
            return
        pieces = message.new_pieces()
        if not pieces:
            return
        stream = self._streams.get(message)
        if stream is None:
            stream = self._open(message)
        for piece in pieces:
            stream.feed(piece)

    def _open(self, message: MessageCore) -> ScanStream:
        stream = self.scanner.stream(message.declared_size)
        self._streams[message] = stream
        message.on_close(lambda: self._abort(message))
        return stream

    def _abort(self, message: MessageCore) -> None:
        stream = self._streams.pop(message, None)
        if stream is not None:
            stream.abort()

    async def _scan(self, message: MessageCore) -> ScanResult:
        """The stream's result: the rest of the content fed, then finished (a message
        whose content never reached `fed()`, the empty one, streams it all here)."""
        self.fed(message)
        stream = self._streams.get(message) or self._open(message)
        try:
            result = await stream.finish()
        except BaseException:  # cancelled (a deadline, a shutdown): let go of clamd
            stream.abort()
            raise
        finally:
            self._streams.pop(message, None)
        return result

    async def _decide(self, message: MessageCore, started: float, keep_content: bool) -> Decision:
        if message.framing_verdict() is not None:
            self._abort(message)
            return Decision(message.decided(None))
        result = await self._scan(message)
        content = message.content() if keep_content else b""
        record = message.decided(
            to_outcome(result),
            scan_time=round(result.elapsed, 4),
            elapsed=round(time.monotonic() - started, 4),
            clamd=result.address,
        )
        if record.verdict is v.ACCEPT_SCANNER_FAIL_OPEN:
            _log.warning(
                "scanner failed; message accepted unscanned (fail_open)",
                size=record.size,
                scan_time=record.scan_time,
                scan_error=record.scan_error,
            )
        accepted = record.verdict is not None and record.verdict.code // 100 == 2
        headers = self._headers(result) if accepted and self.add_headers else ()
        return Decision(record, content if accepted else b"", headers, message.dot_lines)

    def _headers(self, result: ScanResult) -> tuple[tuple[str, str], ...]:
        if result.status is ScannerStatus.CLEAN:
            status = "Clean"
        elif result.status is ScannerStatus.INFECTED:
            status = f"Infected ({result.virus})"
        else:
            status = "Unscanned"
        return (("X-Virus-Scanned", self.scanned_by), ("X-Virus-Status", status))

    def log(self, record: MessageRecord) -> None:
        """The one canonical log line for a message, and the message's metrics.

        Its level follows the verdict: a scanner that failed or a failure inside filterd
        (the mail was tempfailed or let through unscanned) is a warning; the rest is info.
        """
        fields = record.fields()
        failed = record.error is not None or record.verdict in _FAILURE_VERDICTS
        if failed:
            _log.warning("message", **fields)
        else:
            _log.info("message", **fields)
        metrics.record_message(fields)


def _scanned_by(hostname: str) -> str:
    if hostname == "-":
        return f"filterd {__version__}"
    return f"filterd {__version__} at {hostname or default_hostname()}"
