"""Pipeline.fed(): the content streams to the scanner while it arrives.

Two promises: the stream carries exactly the bytes `scan(content())` would have been given
(whatever the chunking, the framing, the headers added on delivery), and every path of a
message ends its stream once, giving clamd's connection and the scan slot back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.core import (
    Abort,
    Content,
    ContentBudget,
    EndOfMessage,
    Framing,
    Mail,
    MessageCore,
    Policy,
)
from filterd.core import verdict as v
from filterd.pipeline import Decision, Pipeline
from filterd.scan import ClamdScanner
from filterd.testing import FakeScanner, FakeStream
from tests.scan.conftest import StartFake, quick_pool, short_dir, start_fake
from tests.scan.fake_clamd import Mode
from tests.tables import cases

__all__ = ["short_dir", "start_fake"]  # fixtures, imported to be found

BIG = bytes(range(256)) * 1024  # 256 KiB without CR/LF runs worth noting
HEAD = b"From: a@example.test\r\nSubject: s\r\n\r\n"
# (id, content as the endpoint gets it; SMTP_DATA ones end with the final dot)
CONTENTS = [
    ("small", HEAD + b"hello\r\n"),
    ("empty-body", HEAD),
    ("dot-lines", HEAD + b"..leading dot\r\n.\r\n" * 3 + b"x\r\n"),
    ("bare-lf-normalised", HEAD + b"one\ntwo\rthree\r\n"),
    ("big-lines", HEAD + (b"y" * 998 + b"\r\n") * 600),
    ("big-binary-ish", HEAD + BIG.replace(b"\r", b"R").replace(b"\n", b"N") + b"\r\n"),
]  # fmt: skip
# (id, cut sizes the reads come in; the last repeats)
CHUNKINGS = [("whole", [1 << 30]), ("bytes-then-64k", [1, 1, 3, 65536]), ("7", [7]),
             ("4k", [4096]), ("odd", [1000, 65537, 17])]  # fmt: skip


def cut(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    start, i = 0, 0
    while start < len(data):
        size = sizes[min(i, len(sizes) - 1)]
        yield data[start : start + size]
        start, i = start + size, i + 1


def wire(content: bytes, framing: Framing) -> bytes:
    """What the endpoint reads: DATA as sent (stuffed, with the final dot) or the message."""
    if framing is Framing.MESSAGE:
        return content
    stuffed = b"\r\n" + content
    return stuffed.replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


def run(data: bytes, framing: Framing, sizes: list[int]) -> tuple[Decision, FakeScanner]:
    """`data` read in `sizes`, fed to the stream after each read, then decided."""
    scanner = FakeScanner()
    pipeline = Pipeline(Policy(), scanner)
    core = pipeline.begin("test", framing)
    for chunk in cut(data, sizes):
        core.handle(Content(chunk))
        pipeline.fed(core)
    core.handle(EndOfMessage())
    return asyncio.run(pipeline.decide(core)), scanner


def streamed(data: bytes, framing: Framing, sizes: list[int]) -> tuple[bytes, FakeScanner, bytes]:
    """(bytes the stream got, the scanner, content()) for `data` read in `sizes`."""
    decision, scanner = run(data, framing, sizes)
    assert decision.verdict is v.ACCEPT
    (stream,) = scanner.streams
    assert stream.state == "finished"
    return b"".join(stream.chunks), scanner, decision.content


def scan_would_get(data: bytes, framing: Framing) -> bytes:
    """What scan(content()) is given today: the whole normalised content, no stream."""
    core = MessageCore(Policy(), "test", framing=framing)
    core.handle(Content(data))
    core.handle(EndOfMessage())
    return core.content()


@pytest.mark.parametrize("framing", [Framing.SMTP_DATA, Framing.MESSAGE], ids=["data", "message"])
@pytest.mark.parametrize("sizes", [c[1] for c in CHUNKINGS], ids=[c[0] for c in CHUNKINGS])
@pytest.mark.parametrize("content", [c[1] for c in CONTENTS], ids=[c[0] for c in CONTENTS])
def test_the_stream_carries_what_scan_would(
    content: bytes, sizes: list[int], framing: Framing
) -> None:
    data = wire(content, framing)
    got, scanner, delivered = streamed(data, framing, sizes)
    want = scan_would_get(data, framing)
    assert got == want
    assert scanner.scanned == [want], "finish() scans exactly the streamed bytes"
    assert delivered == want, "the content delivered is the one scanned (headers aside)"


@settings(max_examples=60, deadline=None)
@given(
    body=st.binary(max_size=3000),
    sizes=st.lists(st.integers(1, 70_000), min_size=1, max_size=6),
    framing=st.sampled_from([Framing.SMTP_DATA, Framing.MESSAGE]),
)
def test_any_body_any_chunking(body: bytes, sizes: list[int], framing: Framing) -> None:
    data = wire(HEAD + body.replace(b"\r\n.\r\n", b"\r\n") + b"\r\n", framing)
    if framing is Framing.SMTP_DATA and data.find(b"\r\n.\r\n") != len(data) - 5:
        return  # the body held its own end of data
    decision, scanner = run(data, framing, sizes)
    if decision.verdict is not v.ACCEPT:  # smuggling found in the random body: no scan
        assert [s.state for s in scanner.streams] in ([], ["aborted"])
        return
    (stream,) = scanner.streams
    assert b"".join(stream.chunks) == scan_would_get(data, framing)


def test_the_size_hint_is_mail_from_size() -> None:
    scanner = FakeScanner()
    pipeline = Pipeline(Policy(), scanner)
    core = pipeline.begin("test", Framing.MESSAGE)
    core.handle(Mail("a@b", size=123_456))
    core.handle(Content(HEAD + b"x" * 70_000))
    pipeline.fed(core)
    assert [s.size_hint for s in scanner.streams] == [123_456]


def test_a_stream_opens_with_the_first_finished_piece() -> None:
    scanner = FakeScanner()
    pipeline = Pipeline(Policy(), scanner)
    core = pipeline.begin("test", Framing.MESSAGE)
    core.handle(Content(HEAD))
    pipeline.fed(core)
    assert scanner.streams == [], "a few header bytes are gathered, not streamed yet"
    core.handle(Content(b"z" * 70_000))
    pipeline.fed(core)
    (stream,) = scanner.streams
    assert sum(map(len, stream.chunks)) >= 65_536, "fed before the end of the content"


# --- every path ends the stream ------------------------------------------------------------

PIECE = b"b" * 70_000 + b"\r\n"  # over START_AT: the stream takes its slot at once


def begun(pipeline: Pipeline, framing: Framing = Framing.MESSAGE) -> MessageCore:
    core = pipeline.begin("test", framing)
    core.handle(Content(HEAD + PIECE))
    pipeline.fed(core)
    return core


async def holding(scanner: ClamdScanner) -> None:
    """Wait until the stream holds its slot (it asks for it in a task)."""
    async with asyncio.timeout(5):
        while scanner.slots.in_use == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def released(scanner: ClamdScanner) -> int:
    """Slots still in use once the cancelled tasks have run their `finally`."""
    for _ in range(50):
        if scanner.slots.in_use == 0:
            break
        await asyncio.sleep(0.01)
    return scanner.slots.in_use


async def test_decided_finishes_and_frees_the_slot(start_fake: StartFake) -> None:
    fake = await start_fake()
    scanner = quick_pool(fake.address)
    pipeline = Pipeline(Policy(), scanner)
    core = begun(pipeline)
    await holding(scanner)
    core.handle(EndOfMessage())
    decision = await pipeline.decide(core)
    assert decision.verdict is v.ACCEPT
    assert decision.record.clamd == fake.address
    (session,) = fake.scans
    assert bytes(session.data) == decision.content
    assert await released(scanner) == 0


def refuse_too_large(pipeline: Pipeline, core: MessageCore) -> None:
    core.handle(Content(b"c" * 100_000))
    pipeline.fed(core)


def end_smuggled(pipeline: Pipeline, core: MessageCore) -> None:
    core.handle(Content(b"hi\n.\r\nMAIL FROM:<s@x>\r\n.\r\n"))
    pipeline.fed(core)


def close_unanswered(pipeline: Pipeline, core: MessageCore) -> None:
    core.close()  # the client went away: the endpoint closes the message


def abort_told(pipeline: Pipeline, core: MessageCore) -> None:
    core.handle(Abort(v.TEMPFAIL_TIMEOUT))


# (id, what happens to a message whose stream holds a slot, policy, framing)
PATHS = [
    ("too-large-mid-content", refuse_too_large, Policy(max_message_size=150_000),
     Framing.SMTP_DATA),
    ("smuggling-mid-content", end_smuggled, Policy(), Framing.SMTP_DATA),
    ("client-gone", close_unanswered, Policy(), Framing.MESSAGE),
    ("aborted", abort_told, Policy(), Framing.MESSAGE),
]  # fmt: skip


@pytest.mark.parametrize(("happen", "policy", "framing"), cases(PATHS))
async def test_every_path_lets_go_of_clamd(
    start_fake: StartFake, happen: object, policy: Policy, framing: Framing
) -> None:
    fake = await start_fake(Mode.STALL)  # would hold the slot until the reply timeout
    scanner = quick_pool(fake.address, reply_timeout=30.0)
    pipeline = Pipeline(policy, scanner)
    core = begun(pipeline, framing)
    await holding(scanner)
    happen(pipeline, core)  # type: ignore[operator]
    assert await released(scanner) == 0, "the slot is given back at once"
    if core.done:
        decision = await pipeline.decide(core)
        assert decision.verdict.action is not v.Action.ACCEPT
    core.close()
    assert await released(scanner) == 0
    assert not any(session.ended for session in fake.scans), "no end of stream was sent"


async def test_budget_drop_aborts_the_stream(start_fake: StartFake) -> None:
    fake = await start_fake(Mode.STALL)
    scanner = quick_pool(fake.address, reply_timeout=30.0)
    pipeline = Pipeline(Policy(), scanner, budget=ContentBudget(200_000))
    core = begun(pipeline)
    await holding(scanner)
    core.handle(Content(b"d" * 200_000))  # over the budget: the content is dropped
    pipeline.fed(core)
    assert await released(scanner) == 0
    core.handle(EndOfMessage())
    decision = await pipeline.decide(core)
    assert decision.verdict is v.TEMPFAIL_INSUFFICIENT_RESOURCES
    core.close()


async def test_a_cancelled_decide_lets_go_of_clamd(start_fake: StartFake) -> None:
    fake = await start_fake(Mode.STALL)
    scanner = quick_pool(fake.address, reply_timeout=30.0)
    pipeline = Pipeline(Policy(), scanner)
    core = begun(pipeline)
    core.handle(EndOfMessage())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):  # the proxy's reply_deadline, a shutdown
            await pipeline.decide(core)
    assert await released(scanner) == 0
    core.close()


def test_fake_stream_states_per_path() -> None:
    """The same paths with the fake: each stream ends finished or aborted, exactly once."""
    scanner = FakeScanner()
    pipeline = Pipeline(Policy(max_message_size=150_000), scanner)
    refused = begun(pipeline, Framing.SMTP_DATA)
    refuse_too_large(pipeline, refused)
    gone = begun(pipeline)
    gone.close()
    good = begun(pipeline)
    good.handle(EndOfMessage())
    asyncio.run(pipeline.decide(good))
    good.close()
    states = [stream.state for stream in scanner.streams]
    assert states == ["aborted", "aborted", "finished"]


def test_no_stream_outlives_its_message() -> None:
    scanner = FakeScanner()
    pipeline = Pipeline(Policy(), scanner)
    core = begun(pipeline)
    core.close()
    assert pipeline._streams.get(core) is None
    stream: FakeStream = scanner.streams[0]
    assert stream.state == "aborted"
