"""clamd scan latency: time from the last byte of a message to the verdict.

    .venv/bin/python -m bench.scan                 # both tables, 10 KB and 1 MB, UNIX and TCP
    .venv/bin/python -m bench.scan --rounds 50
    .venv/bin/python -m bench.scan --cpu 400       # only CPU per scan: 400 scans per figure

Against a private clamd of the test bed (tests/testbed/clamd.py). A message "arrives" in
64 KiB reads at `--rate` bytes/s (a fast client on a LAN: 1 MB takes ~80 ms at 12.5 MB/s).
- `scan()`: the content is complete, then scanned: the whole exchange follows the last byte.
- `stream`: each read is fed as it arrives; only the end of the stream and clamd's verdict
  follow the last byte.
The second table compares one connection per scan with one zIDSESSION connection reused for
every scan (clamd(8): IDSESSION ... END), scans in sequence, each timed from its command to
its reply. Figures are medians and 90th percentiles in milliseconds.
`--cpu N` prints instead this process's CPU time (user + system) per scan, in microseconds,
over N scans in sequence, the content complete (`scan()`) or fed at once to a stream, and
the raw exchange of the second table (a new connection vs zIDSESSION), then scan() and
stream again with `[clamd] session_idle`'s default (sessions kept open, filterd/scan/session.py).
clamd's own CPU is not in it: it is another process.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from collections.abc import Awaitable, Callable

from filterd.scan import ClamdScanner, ScanStatus, parse_address
from filterd.scan.clamd import DEFAULT_SESSION_IDLE
from filterd.scan.link import open_socket, receive_reply
from filterd.scan.wire import CHUNK_SIZE, instream_request
from tests.testbed.clamd import Clamd

SIZES = {"10 KB": 10 * 1024, "1 MB": 1024 * 1024}
READ = CHUNK_SIZE


def message(size: int) -> bytes:
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    header = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: bench\r\n\r\n"
    return (header + line * (size // len(line) + 1))[:size]


async def arrive(content: bytes, rate: float, each: Callable[[bytes], None]) -> None:
    """Hand `content` to `each` in READ-sized pieces, paced at `rate` bytes/s."""
    started = time.perf_counter()
    for start in range(0, len(content), READ):
        piece = content[start : start + READ]
        due = started + (start + len(piece)) / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        each(piece)


async def after_last_byte_scan(scanner: ClamdScanner, content: bytes, rate: float) -> float:
    pieces: list[bytes] = []
    await arrive(content, rate, pieces.append)
    started = time.perf_counter()
    result = await scanner.scan(b"".join(pieces))
    _require_clean(result.status)
    return time.perf_counter() - started


async def after_last_byte_stream(scanner: ClamdScanner, content: bytes, rate: float) -> float:
    stream = scanner.stream()
    await arrive(content, rate, stream.feed)
    started = time.perf_counter()
    result = await stream.finish()
    _require_clean(result.status)
    return time.perf_counter() - started


def _require_clean(status: ScanStatus) -> None:
    if status is not ScanStatus.CLEAN:
        raise SystemExit(f"bench: scan answered {status.value}, not clean")


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    median = statistics.median(ordered) * 1000
    return f"{median:8.2f} /{ordered[int(len(ordered) * 0.9) - 1] * 1000:6.2f}"


async def streaming_table(clamd: Clamd, rounds: int, rate: float) -> None:
    print(f"last byte -> verdict, ms (median / p90), {rounds} rounds, arrival {rate / 1e6:g} MB/s")
    print(f"{'socket':6} {'size':6} {'scan()':>16} {'stream':>16}")
    for kind, address in (("unix", clamd.address), ("tcp", clamd.tcp_address)):
        scanner = ClamdScanner(address, max_scan_size=clamd.stream_max_length)
        for label, size in SIZES.items():
            content = message(size)
            whole: list[float] = []
            fed: list[float] = []
            for _ in range(rounds):  # interleaved, so that load from elsewhere hits both
                whole.append(await after_last_byte_scan(scanner, content, rate))
                fed.append(await after_last_byte_stream(scanner, content, rate))
            print(f"{kind:6} {label:6} {summary(whole)} {summary(fed)}")


# --- zIDSESSION: one connection for many scans (measured here, not used by filterd) --------


async def instream(sock: socket.socket, content: bytes) -> bytes:
    """One INSTREAM exchange on `sock`, through filterd's own socket helpers."""
    await asyncio.get_running_loop().sock_sendall(sock, b"".join(instream_request(content)))
    return await receive_reply(sock)


async def timed(scan: Awaitable[bytes], want: bytes) -> float:
    started = time.perf_counter()
    reply = await scan
    elapsed = time.perf_counter() - started
    if reply != want:
        raise SystemExit(f"bench: clamd answered {reply!r}, not {want!r}")
    return elapsed


async def compare_sessions(address: str, content: bytes, rounds: int) -> list[list[float]]:
    """[new connection times, zIDSESSION times], interleaved scan by scan."""
    where = parse_address(address)
    fresh: list[float] = []
    reused: list[float] = []

    async def new_connection() -> bytes:
        with await open_socket(where) as sock:
            return await instream(sock, content)

    loop = asyncio.get_running_loop()
    with await open_socket(where) as session:
        await loop.sock_sendall(session, b"zIDSESSION\0")
        for number in range(1, rounds + 1):
            fresh.append(await timed(new_connection(), b"stream: OK\0"))
            # clamd(8): in a session each reply starts with the request's number.
            reused.append(await timed(instream(session, content), b"%d: stream: OK\0" % number))
        await loop.sock_sendall(session, b"zEND\0")
    return [fresh, reused]


async def session_table(clamd: Clamd, rounds: int) -> None:
    print(f"\none scan, command -> reply, ms (median / p90), {rounds} scans in sequence")
    print(f"{'socket':6} {'size':6} {'new connection':>16} {'zIDSESSION':>16}")
    for kind, address in (("unix", clamd.address), ("tcp", clamd.tcp_address)):
        for label, size in SIZES.items():
            times = await compare_sessions(address, message(size), rounds)
            print(f"{kind:6} {label:6} {summary(times[0])} {summary(times[1])}")


# --- CPU per scan: what the client costs this process ---------------------------------------


async def cpu_per_scan(scans: int, one: Callable[[], Awaitable[object]]) -> float:
    """This process's CPU seconds per call of `one`, over `scans` calls in sequence."""
    await one()  # warm-up: first connection, imports
    used = time.process_time()
    for _ in range(scans):
        await one()
    return (time.process_time() - used) / scans


async def cpu_table(clamd: Clamd, scans: int) -> None:
    print(f"CPU per scan, microseconds, {scans} scans in sequence per figure")
    head = ("scan()", "stream", "raw new conn", "raw IDSESSION", "scan() session", "stream session")
    print(f"{'socket':6} {'size':6}" + "".join(f"{name:>15}" for name in head))
    for kind, address in (("unix", clamd.address), ("tcp", clamd.tcp_address)):
        scanner = ClamdScanner(address, max_scan_size=clamd.stream_max_length)
        # [clamd] session_idle's default: zIDSESSION connections kept open (scan/session.py)
        sessions = ClamdScanner(
            address, max_scan_size=clamd.stream_max_length, session_idle=DEFAULT_SESSION_IDLE
        )
        for label, size in SIZES.items():
            content = message(size)
            figures = await client_cpu(scanner, content, scans)
            figures += await raw_cpu(address, content, scans)
            figures += await client_cpu(sessions, content, scans)
            print(f"{kind:6} {label:6}" + "".join(f"{one * 1e6:15.0f}" for one in figures))


async def client_cpu(scanner: ClamdScanner, content: bytes, scans: int) -> list[float]:
    """[scan(), stream]: CPU per scan through filterd's client."""
    pieces = [content[start : start + READ] for start in range(0, len(content), READ)]

    async def whole() -> None:
        _require_clean((await scanner.scan(content)).status)

    async def fed() -> None:
        stream = scanner.stream()
        for piece in pieces:
            stream.feed(piece)
        _require_clean((await stream.finish()).status)

    return [await cpu_per_scan(scans, whole), await cpu_per_scan(scans, fed)]


async def raw_cpu(address: str, content: bytes, scans: int) -> list[float]:
    """[new connection, zIDSESSION]: CPU per raw INSTREAM exchange, no pool, no timeouts."""
    where = parse_address(address)

    async def new_connection() -> None:
        with await open_socket(where) as sock:
            await instream(sock, content)

    fresh = await cpu_per_scan(scans, new_connection)
    loop = asyncio.get_running_loop()
    with await open_socket(where) as session:
        await loop.sock_sendall(session, b"zIDSESSION\0")
        reused = await cpu_per_scan(scans, lambda: instream(session, content))
        await loop.sock_sendall(session, b"zEND\0")
    return [fresh, reused]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="scans per figure (default 30)")
    parser.add_argument("--rate", type=float, default=12.5e6, help="arrival, bytes/s")
    parser.add_argument("--cpu", type=int, default=0, help="only CPU per scan, over N scans")
    args = parser.parse_args()
    clamd = Clamd(stream_max_length=8 * 1024 * 1024)
    clamd.start()
    try:
        if args.cpu:
            asyncio.run(cpu_table(clamd, args.cpu))
            return
        asyncio.run(streaming_table(clamd, args.rounds, args.rate))
        asyncio.run(session_table(clamd, args.rounds * 10))
    finally:
        clamd.close()


if __name__ == "__main__":
    main()
