"""A deliberately careless relay for chain tests: it accepts a message with aiosmtpd and
passes the received bytes on unchanged, with no dot-stuffing and no line-ending repair, the way
the GMX/Ionos and Exchange Online outbound relays passed `<LF>.<CR><LF>` on in SEC Consult's 2023
findings. Whether the next hop splits the message is then up to the next hop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiosmtpd.smtp import SMTP, Envelope, Session

from filterd.harness import session
from filterd.harness.client import Client
from filterd.harness.session import Target


@dataclass
class CarelessRelay:
    host: str
    port: int
    timeout: float = 5.0

    async def handle_DATA(self, server: SMTP, sess: Session, envelope: Envelope) -> str:  # noqa: N802 (aiosmtpd hook)
        return await asyncio.to_thread(self.forward, envelope)

    def forward(self, envelope: Envelope) -> str:
        client = Client.connect(self.host, self.port, self.timeout)
        try:
            session.open_session(client, Target(self.host, self.port, self.timeout), "relay.test")
            session.start_data(
                client, str(envelope.mail_from), str(envelope.rcpt_tos[0]), self.timeout
            )
            # aiosmtpd's content is unstuffed and ends in CRLF; "." CRLF ends it again.
            client.send(bytes(envelope.original_content or b"") + b".\r\n")
            replies = client.read(1, self.timeout)
            session.quit_session(client, self.timeout)
        finally:
            client.close()
        return f"{replies[0].code} relayed" if replies else "451 4.4.2 next hop did not answer"
