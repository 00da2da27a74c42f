"""Content scanning: the `Scanner` interface, its results, and the clamd adapter.

This package reports facts and applies no policy. It must not import `filterd.core`
or the endpoints (tests/scan/test_layering.py).
"""

from __future__ import annotations

from filterd.scan.address import AddressError, ClamdAddress, TcpAddress, UnixAddress, parse_address
from filterd.scan.clamd import ClamdScanner
from filterd.scan.result import ScanResult, ScanStatus
from filterd.scan.scanner import Scanner

__all__ = [
    "AddressError",
    "ClamdAddress",
    "ClamdScanner",
    "ScanResult",
    "ScanStatus",
    "Scanner",
    "TcpAddress",
    "UnixAddress",
    "parse_address",
]
