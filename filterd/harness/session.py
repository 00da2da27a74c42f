"""The ordinary, synchronised parts of an SMTP session that every probe needs.

Each step waits for its reply before the next command (RFC 5321 §4.3.2; no pipelining here),
so that only the probe's own bytes can ever be unsynchronised.
"""

from __future__ import annotations

from dataclasses import dataclass

from filterd.harness.client import Client
from filterd.harness.reply import Reply


class SetupError(Exception):
    """An ordinary step failed, so the probe cannot run; the message names the step."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    timeout: float  # phase-1 window and deadline for each reply
    starttls: bool = False
    pause: float = 0.5  # split-write probes: the longest wait before each delayed part


@dataclass(frozen=True)
class Discovery:
    greeting: Reply
    ehlo: Reply
    local_address: str

    @property
    def keywords(self) -> frozenset[str]:
        return keywords_of(self.ehlo)

    @property
    def hostname(self) -> str:
        """The name the server gives in its greeting (RFC 5321 §4.3.1: "220 domain ...")."""
        words = self.greeting.lines[0].split() if self.greeting.lines else []
        return words[0] if words else ""


def expect_reply(client: Client, what: str, reply_class: int, timeout: float) -> Reply:
    replies = client.read(1, timeout)
    if not replies:
        closed = "connection closed" if client.closed else "no reply"
        raise SetupError(f"{what}: {closed}")
    if replies[0].reply_class != reply_class:
        raise SetupError(f"{what}: {replies[0].show()}")
    return replies[0]


def command(client: Client, line: bytes, reply_class: int, timeout: float) -> Reply:
    client.send(line + b"\r\n")
    return expect_reply(client, line.decode("utf-8", "backslashreplace"), reply_class, timeout)


def keywords_of(ehlo_reply: Reply) -> frozenset[str]:
    """EHLO keywords, upper-cased (RFC 5321 §4.1.1.1: the lines after the first)."""
    return frozenset(line.split()[0].upper() for line in ehlo_reply.lines[1:] if line.split())


def ehlo(client: Client, helo: str, timeout: float) -> frozenset[str]:
    return keywords_of(command(client, b"EHLO " + helo.encode(), 2, timeout))


def handshake(client: Client, timeout: float) -> None:
    """STARTTLS and the TLS handshake; the session starts afresh (RFC 3207 §4.2)."""
    command(client, b"STARTTLS", 2, timeout)
    try:
        client.starttls(timeout)
    except OSError as error:  # ssl.SSLError is an OSError
        raise SetupError(f"TLS handshake: {error}") from error


def tls(client: Client, helo: str, timeout: float) -> frozenset[str]:
    """STARTTLS, handshake, then EHLO again (RFC 3207 §4.2: forget what was learnt before)."""
    handshake(client, timeout)
    return ehlo(client, helo, timeout)


def open_session(client: Client, target: Target, helo: str) -> frozenset[str]:
    """Greeting, then EHLO (and STARTTLS when asked). Returns the EHLO keywords."""
    expect_reply(client, "greeting", 2, target.timeout)
    keywords = ehlo(client, helo, target.timeout)
    if target.starttls:
        if "STARTTLS" not in keywords:
            raise SetupError("--starttls: the server does not offer STARTTLS")
        keywords = tls(client, helo, target.timeout)
    return keywords


def start_data(client: Client, sender: str, recipient: str, timeout: float) -> None:
    command(client, f"MAIL FROM:<{sender}>".encode(), 2, timeout)
    command(client, f"RCPT TO:<{recipient}>".encode(), 2, timeout)
    command(client, b"DATA", 3, timeout)


def quit_session(client: Client, timeout: float) -> None:
    """QUIT and read its reply; the outcome no longer matters."""
    client.send(b"QUIT\r\n")
    client.read(1, timeout)


def discover(target: Target, helo: str) -> Discovery:
    """One plain session: greeting, EHLO, QUIT. Raises OSError or SetupError."""
    client = Client.connect(target.host, target.port, target.timeout)
    try:
        greeting = expect_reply(client, "greeting", 2, target.timeout)
        reply = command(client, b"EHLO " + helo.encode(), 2, target.timeout)
        local = client.local_address
        quit_session(client, target.timeout)
    finally:
        client.close()
    return Discovery(greeting, reply, local)
