"""The interface the pipeline awaits: content in, `ScanResult` out.

Implementations must not raise for anything that goes wrong with the scan: a failure is
reported as `ScanStatus.ERROR`, so the caller has one place to apply its policy.
Cancellation is the exception and propagates as usual.
"""

from __future__ import annotations

from typing import Protocol

from filterd.scan.result import ScanResult


class Scanner(Protocol):
    async def scan(self, content: bytes) -> ScanResult: ...
