"""filterd.testing itself: the fake scanner's rule, the raw client's reply reading, EICAR."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator

import pytest

from filterd.scan import ScanResult
from filterd.testing import VIRUS_MARKER, FakeScanner, RawSmtpClient, eicar, last_line, virus_name
from tests.tables import cases

# (id, content, want the virus name or None)
NAMES = [
    ("none", b"Subject: x\r\n\r\nclean\r\n", None),
    ("ready-marker", b"body " + VIRUS_MARKER + b"\r\n", "Fake.Marker"),
    ("name-to-whitespace", b"VIRUS-Eicar-Test more words", "Eicar-Test"),
    ("first-of-two", b"VIRUS-One VIRUS-Two", "One"),
    ("at-the-very-end", b"x VIRUS-", ""),
]


@pytest.mark.parametrize(("content", "want"), cases(NAMES))
def test_virus_name(content: bytes, want: str | None) -> None:
    assert virus_name(content) == want


async def test_fake_scanner_answers_by_content_and_records() -> None:
    scanner = FakeScanner(ScanResult.error("clamd down"))
    assert await scanner.scan(b"VIRUS-X\r\n") == ScanResult.infected("X")
    assert await scanner.scan(b"clean\r\n") == ScanResult.error("clamd down")
    assert scanner.scanned == [b"VIRUS-X\r\n", b"clean\r\n"]


async def test_fake_scanner_can_raise() -> None:
    scanner = FakeScanner(RuntimeError("broken"))
    with pytest.raises(RuntimeError, match="broken"):
        await scanner.scan(b"clean")


def test_eicar_is_the_published_file() -> None:
    data = eicar()
    assert len(data) == 68
    assert data.startswith(b"X5O!P%@AP")
    want = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
    assert hashlib.sha256(data).hexdigest() == want


@pytest.fixture
def server() -> Iterator[tuple[int, list[bytes]]]:
    """A server that sends a scripted byte stream in odd pieces, records what it got, closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []
    pieces = [b"220-mx.test hello\r\n220 ", b"ready\r", b"\n", b"250 ok\r\n25", b"0 two\r\n"]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            for piece in pieces:
                conn.sendall(piece)
            received.append(conn.recv(100))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], received
    thread.join(5)
    listener.close()


def test_raw_client_reads_whole_replies_from_any_pieces(server: tuple[int, list[bytes]]) -> None:
    port, received = server
    with RawSmtpClient(port) as client:
        greeting = client.reply()
        assert greeting == "220-mx.test hello\n220 ready"
        assert last_line(greeting) == "220 ready"
        assert client.reply() == "250 ok"
        assert client.command(b"QUIT\r\n") == "250 two"
        assert client.closed()
        assert client.reply() == "", "after the close there is no reply"
    assert received == [b"QUIT\r\n"]
