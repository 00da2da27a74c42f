"""The interface the pipeline awaits: content in, `ScanResult` out.

Implementations must not raise for anything that goes wrong with the scan: a failure is
reported as `ScanStatus.ERROR`, so the caller has one place to apply its policy.
Cancellation is the exception and propagates as usual.

Two ways to scan: `scan(content)` once the content is complete, or `stream()` fed while it
arrives. A stream's `feed` never blocks and keeps a reference to each chunk (no copy: do
not change a chunk once fed); `finish()` gives the result as `scan()` would and never
raises; `abort()` gives up and releases whatever the stream holds. Call exactly one of
the two on every stream.
"""

from __future__ import annotations

from typing import Protocol

from filterd.scan.result import ScanResult


class ScanStream(Protocol):
    def feed(self, chunk: bytes) -> None: ...

    async def finish(self) -> ScanResult: ...

    def abort(self) -> None: ...


class Scanner(Protocol):
    async def scan(self, content: bytes) -> ScanResult: ...

    def stream(self, size_hint: int = 0) -> ScanStream: ...
