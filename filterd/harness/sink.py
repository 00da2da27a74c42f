"""A final destination that counts what a relay chain really delivered.

When the target relays onward, only the messages that arrive at the end of the chain prove or
disprove smuggling. The sink is an aiosmtpd server (a project
dependency) that stores every message; `arrivals` counts a probe's messages by the Subject
header the catalogue gives them, looking only at the header section so that a smuggled
transaction left inside a carrier's body does not count.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

# catalogue.CARRIER / SMUGGLED_CONTENT / BDAT_CHUNK: "Subject: filterd-smuggle RUN ID ROLE".
SUBJECT = re.compile(rb"^Subject: filterd-smuggle (\S+) (\S+) (\w+)\r?$", re.MULTILINE)


@dataclass
class Store:
    messages: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 (aiosmtpd hook name)
        content = envelope.original_content or b""
        with self.lock:
            self.messages.append(bytes(content))
        return "250 2.0.0 stored by filterd smuggle sink"

    def snapshot(self) -> list[bytes]:
        with self.lock:
            return list(self.messages)


@dataclass(frozen=True)
class Arrivals:
    total: int
    smuggled: int


def _header_block(message: bytes) -> bytes:
    return re.split(rb"\r?\n\r?\n", message, maxsplit=1)[0]


def arrivals(messages: list[bytes], run: str, probe_id: str) -> Arrivals:
    """How many messages of this run and probe arrived, and how many were smuggled ones."""
    roles = [
        match.group(3)
        for message in messages
        for match in SUBJECT.finditer(_header_block(message))
        if match.group(1) == run.encode() and match.group(2) == probe_id.encode()
    ]
    return Arrivals(len(roles), roles.count(b"smuggled"))


class Sink:
    def __init__(self, host: str, port: int) -> None:
        self.store = Store()
        self.controller = Controller(self.store, hostname=host, port=port)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def wait_for(self, run: str, count: int, timeout: float) -> list[bytes]:
        """Messages of this run, once `count` of them arrived or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while True:
            mine = [m for m in self.store.snapshot() if run.encode() in _header_block(m)]
            if len(mine) >= count or time.monotonic() >= deadline:
                return mine
            time.sleep(0.05)
