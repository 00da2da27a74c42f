"""Content scanning: the `Scanner` interface, its results, and the clamd adapter.

This package reports facts and applies no policy. It must not import `filterd.core`
or the endpoints (tests/scan/test_layering.py).
"""

from __future__ import annotations

from filterd.scan.address import AddressError, ClamdAddress, TcpAddress, UnixAddress, parse_address
from filterd.scan.clamd import ClamdScanner, check_scanners
from filterd.scan.member import MemberStats
from filterd.scan.result import ScanResult, ScanStatus
from filterd.scan.scanner import Scanner, ScanStream

__all__ = [
    "AddressError",
    "ClamdAddress",
    "ClamdScanner",
    "MemberStats",
    "ScanResult",
    "ScanStatus",
    "ScanStream",
    "Scanner",
    "TcpAddress",
    "UnixAddress",
    "check_scanners",
    "parse_address",
]
