"""The real test bed: private clamd, private Postfix and an SMTP sink, for integration tests.

Fixtures live in the root `tests/conftest.py`; this package holds the machinery:
- `clamd`: `Clamd`, `eicar_bytes()`, `second_sample_bytes()`, `EICAR_NAME`, `SECOND_NAME`;
- `postfix`: `Postfix`, `PostfixFactory`, `render_master_cf()` and the service templates;
- `sink`: `Sink`, `SinkMessage`;
- `common`: free ports, bounded waits, skip-or-fail, the leftover-process safety net.
"""

from __future__ import annotations

from tests.testbed.clamd import (
    EICAR_NAME,
    SECOND_MARKER,
    SECOND_NAME,
    Clamd,
    eicar_bytes,
    second_sample_bytes,
)
from tests.testbed.common import StartupError, free_port, stop_all
from tests.testbed.postfix import (
    BASE_MASTER_CF,
    PLAIN_SERVICES,
    PROXY_SERVICES,
    Postfix,
    PostfixFactory,
    render_master_cf,
)
from tests.testbed.sink import Sink, SinkMessage

__all__ = [
    "BASE_MASTER_CF",
    "EICAR_NAME",
    "PLAIN_SERVICES",
    "PROXY_SERVICES",
    "SECOND_MARKER",
    "SECOND_NAME",
    "Clamd",
    "Postfix",
    "PostfixFactory",
    "Sink",
    "SinkMessage",
    "StartupError",
    "eicar_bytes",
    "free_port",
    "render_master_cf",
    "second_sample_bytes",
    "stop_all",
]
