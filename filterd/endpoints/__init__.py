"""The two endpoints: the smtpd_proxy_filter SMTP server and the Milter.

They translate their protocol into the same core events and render the same Verdict in
their own reply format. They never import each other (tests/endpoints/test_layering.py).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from filterd.config import Config
    from filterd.pipeline import Pipeline


class Endpoint(Protocol):
    """What app.py needs of an endpoint."""

    name: str
    passed: socket.socket | None  # a listening socket from systemd: start() serves it

    def reload(self, config: Config, pipeline: Pipeline) -> None:
        """New sessions use `config` and `pipeline`; sessions in progress keep theirs."""

    async def start(self) -> None:
        """Listen; return once the socket accepts connections."""

    async def close(self) -> None:
        """Stop accepting, let sessions in progress finish (bounded), then return."""
