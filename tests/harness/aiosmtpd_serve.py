"""aiosmtpd servers with the behaviours the harness tests need, in-process or as a program.

Run as a program by the interpreter of a virtual environment that holds one aiosmtpd version
(tests/harness/aiosmtpd_venv.py), it imports only the standard library and that aiosmtpd:

    python aiosmtpd_serve.py MODE PORT

It prints "ready" once it listens on 127.0.0.1:PORT and serves until its stdin closes.

Modes (handlers):
- plain:          accept and discard every message.
- no-pipelining:  stands in for OpenSMTPD, which answers "500 5.5.1 Invalid command:
                  Pipelining not supported" and disconnects when input is already waiting
                  after the line it has just read (smtp_session.c); here only at the end of
                  DATA, the one place the harness probes it.
- helo-once:      OpenSMTPD's "503 5.5.1 Invalid command: Already identified" to a HELO after
                  EHLO (or HELO).
- no-helo:        an ESMTP-only server: every HELO gets "503 5.5.1 Invalid command: HELO not
                  accepted, send EHLO".
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiosmtpd.controller import Controller


class Plain:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd hook)
        return "250 2.0.0 Ok: discarded"


def _waiting(server: Any) -> int:
    """Bytes received from the client and not read yet (aiosmtpd's StreamReader buffer)."""
    buffer = getattr(getattr(server, "_reader", None), "_buffer", b"")
    return len(buffer)


class NoPipelining(Plain):
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd hook)
        # Like OpenSMTPD, look at once, when the line that ended DATA was read: a probe's one
        # write of a few hundred bytes arrives in one piece on loopback, and a later write is
        # not pipelined input.
        if _waiting(server):
            # The reply goes out in this same task step, before the close runs.
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "500 5.5.1 Invalid command: Pipelining not supported"
        return await super().handle_DATA(server, session, envelope)


class HeloOnce(Plain):
    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:  # noqa: N802 (aiosmtpd hook)
        if session.host_name:
            return "503 5.5.1 Invalid command: Already identified"
        session.host_name = hostname
        return f"250 {server.hostname} Hello {hostname}"


class NoHelo(Plain):
    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:  # noqa: N802 (aiosmtpd hook)
        return "503 5.5.1 Invalid command: HELO not accepted, send EHLO"


HANDLERS: dict[str, type[Plain]] = {
    "plain": Plain,
    "no-pipelining": NoPipelining,
    "helo-once": HeloOnce,
    "no-helo": NoHelo,
}


def main(argv: list[str]) -> int:
    mode, port = argv[0], int(argv[1])
    controller = Controller(HANDLERS[mode](), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        print("ready", flush=True)
        sys.stdin.read()
    finally:
        controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
