"""The two endpoints: the smtpd_proxy_filter SMTP server and the Milter.

They translate their protocol into the same core events and render the same Verdict in
their own reply format. They never import each other (tests/endpoints/test_layering.py).
"""

from __future__ import annotations

from typing import Protocol


class Endpoint(Protocol):
    """What app.py needs of an endpoint."""

    name: str

    async def start(self) -> None:
        """Listen; return once the socket accepts connections."""

    async def close(self) -> None:
        """Stop accepting, let sessions in progress finish (bounded), then return."""
