"""The Milter endpoint against a client that speaks like Postfix, with a fake scanner.

Each purepythonmilter 0.0.1 defect (docs/explanation/milter.md) has a test here that would fail
with the library's own session and server: state per message, quarantine, reply text,
an exception answered per message, and stopping without touching other tasks.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from filterd import app
from filterd.config import Config, MilterSettings
from filterd.core import BareNewline, Policy
from filterd.core import verdict as v
from filterd.endpoints.milter.endpoint import (
    ListenAddress,
    ListenError,
    MilterEndpoint,
    parse_listen,
)
from filterd.pipeline import Pipeline
from filterd.scan import ScanResult
from filterd.testing import FakeScanner
from tests.endpoints.milter_client import MilterClient, Reply
from tests.tables import cases

HEADERS = [("From", " a@example.test"), ("Subject", " hello")]
BODY = b"Hello,\r\nthis is a test.\r\n"
SCANNED = "filterd 0 at mx.test"


def make_pipeline(scanner: FakeScanner, policy: Policy | None = None) -> Pipeline:
    pipeline = Pipeline(policy or Policy(), scanner, hostname="mx.test")
    pipeline.scanned_by = SCANNED  # independent of the package version
    return pipeline


@asynccontextmanager
async def running(
    scanner: FakeScanner | None = None, policy: Policy | None = None, **settings: Any
) -> AsyncIterator[tuple[MilterEndpoint, FakeScanner]]:
    scanner = scanner or FakeScanner()
    listen = settings.pop("listen", "inet:127.0.0.1:0")
    config = Config(milter=MilterSettings(listen=listen, **settings))
    endpoint = MilterEndpoint(config, make_pipeline(scanner, policy))
    await endpoint.start()
    try:
        yield endpoint, scanner
    finally:
        await endpoint.close()


@asynccontextmanager
async def client_of(
    endpoint: MilterEndpoint, client: str = "192.0.2.10"
) -> AsyncIterator[MilterClient]:
    if endpoint.address.family == "unix":
        milter = await MilterClient.open_unix(endpoint.address.path)
    else:
        milter = await MilterClient.open_tcp("127.0.0.1", endpoint.port)
    try:
        await milter.negotiate()
        await milter.connect(client)
        yield milter
    finally:
        await milter.close()


def summary(replies: list[Reply]) -> list[str]:
    """Replies as readable strings: 'h X-Virus-Status: Clean', 'y 550 5.7.1 ...', 'c'."""
    out = []
    for reply in replies:
        if reply.code == "h":
            name, value = reply.data.removesuffix(b"\0").split(b"\0")
            out.append(f"h {name.decode()}:{value.decode()}")
        elif reply.code == "m":
            index = int.from_bytes(reply.data[:4], "big")
            name, value = reply.data[4:].removesuffix(b"\0").split(b"\0")
            out.append(f"m {index} {name.decode()}:{value.decode()}")
        elif reply.code in "yq":
            out.append(f"{reply.code} {reply.text}")
        else:
            out.append(reply.code)
    return out


CLEAN = [f"h X-Virus-Scanned: {SCANNED}", "h X-Virus-Status: Clean", "c"]


async def test_negotiation_asks_for_no_per_chunk_replies() -> None:
    async with running() as (endpoint, _):
        milter = await MilterClient.open_tcp("127.0.0.1", endpoint.port)
        try:
            got = await milter.negotiate()
        finally:
            await milter.close()
    assert got.version == 6
    assert got.actions & 0x01, "SMFIF_ADDHDRS"
    assert got.actions & 0x10, "SMFIF_CHGHDRS"
    assert not got.actions & 0x20, "no QUARANTINE unless configured"
    for stage in ("connect", "mail", "rcpt", "header", "body"):
        assert not got.replies_to(stage), f"{stage} should be SMFIP_NR_*"
    assert got.protocol & 0x100000, "SMFIP_HDR_LEADSPC"
    assert b"{auth_authen}" in got.macros
    assert b"i" in got.macros


async def test_clean_message_gets_headers_and_the_scanner_sees_the_message() -> None:
    async with running() as (endpoint, scanner), client_of(endpoint) as milter:
        got = await milter.message("a@example.test", ["b@example.test"], HEADERS, BODY)
    assert summary(got) == CLEAN
    want = b"From: a@example.test\r\nSubject: hello\r\n\r\n" + BODY
    assert scanner.scanned == [want], f"got {scanner.scanned!r}, want {want!r}"


async def test_null_sender_is_scanned_like_any_other() -> None:
    async with running() as (endpoint, scanner), client_of(endpoint) as milter:
        with capture_logs() as logs:
            got = await milter.message("", ["b@example.test"], HEADERS, BODY)
    assert summary(got) == CLEAN
    assert len(scanner.scanned) == 1
    assert [x["sender"] for x in logs if x["event"] == "message"] == [""]


async def test_infected_message_is_rejected_with_full_text() -> None:
    async with running() as (endpoint, _), client_of(endpoint) as milter:
        got = await milter.message("a@x.test", ["b@x.test"], HEADERS, b"VIRUS-Eicar-Test\r\n")
    assert summary(got) == ["y 550 5.7.1 Virus found: Eicar-Test"]


async def test_three_messages_on_one_connection_each_get_their_own_verdict() -> None:
    """purepythonmilter defect 1: message 1's modifications were replayed on 2 and 3."""
    spoofed = [*HEADERS, ("X-Virus-Status", " Clean")]
    async with running(infected="quarantine") as (endpoint, _), client_of(endpoint) as milter:
        first = await milter.message("a@x.test", ["b@x.test"], spoofed, BODY)
        second = await milter.message("a@x.test", ["b@x.test"], HEADERS, b"VIRUS-Two\r\n")
        third = await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
    assert summary(first) == ["m 1 X-Virus-Status:", *CLEAN]
    assert summary(second) == [
        f"h X-Virus-Scanned: {SCANNED}",
        "h X-Virus-Status: Infected (Two)",
        "q filterd: virus found: Two",
        "c",
    ]
    assert summary(third) == CLEAN, "nothing of message 1 or 2 may reach message 3"


async def test_mail_from_starts_a_new_message_without_abort() -> None:
    async with running() as (endpoint, scanner), client_of(endpoint) as milter:
        await milter.mail("a@x.test")
        await milter.headers([("Subject", " first, abandoned")])
        await milter.body(b"VIRUS-Old\r\n")
        got = await milter.message("c@x.test", ["d@x.test"], HEADERS, BODY)
    assert summary(got) == CLEAN
    assert b"abandoned" not in scanner.scanned[-1]


async def test_abort_discards_the_message_in_progress() -> None:
    async with running() as (endpoint, scanner), client_of(endpoint) as milter:
        await milter.mail("a@x.test")
        await milter.headers([("X-Virus-Status", " Clean"), ("X-Virus-Status", " Clean")])
        await milter.abort()
        await milter.mail("c@x.test")
        await milter.headers(HEADERS)
        await milter.body(BODY)
        got = await milter.end_of_message()
    assert summary(got) == CLEAN, "the aborted message's headers were counted"
    assert len(scanner.scanned) == 1


# (id, policy/settings, body, want replies)
ACTIONS = [
    ("reject", {}, ["y 550 5.7.1 Virus found: X"]),
    ("tempfail", {"infected": "tempfail"}, ["y 451 4.7.1 Virus found: X"]),
    ("discard", {"infected": "discard"}, ["d"]),
    ("accept", {"infected": "accept"},
     [f"h X-Virus-Scanned: {SCANNED}", "h X-Virus-Status: Infected (X)", "c"]),
    ("quarantine", {"infected": "quarantine"},
     [f"h X-Virus-Scanned: {SCANNED}", "h X-Virus-Status: Infected (X)",
      "q filterd: virus found: X", "c"]),
]  # fmt: skip


@pytest.mark.parametrize(("settings", "want"), cases(ACTIONS))
async def test_infected_actions(settings: dict[str, Any], want: list[str]) -> None:
    """purepythonmilter defect 2: its Quarantine could not even be constructed."""
    async with running(**settings) as (endpoint, _), client_of(endpoint) as milter:
        negotiated = milter.negotiated
        got = await milter.message("a@x.test", ["b@x.test"], HEADERS, b"VIRUS-X\r\n")
    assert summary(got) == want
    assert negotiated is not None
    assert bool(negotiated.actions & 0x20) == (settings.get("infected") == "quarantine")


async def test_quarantine_is_decided_by_the_core_and_logged_once() -> None:
    """The core decides the hold (virus_quarantined); the milter renders SMFIR_QUARANTINE."""
    async with running(infected="quarantine") as (endpoint, _), client_of(endpoint) as milter:
        with capture_logs() as logs:
            got = await milter.message("a@x.test", ["b@x.test"], HEADERS, b"VIRUS-X\r\n")
            clean = await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
    assert "q filterd: virus found: X" in summary(got)
    assert not any(line.startswith("q ") for line in summary(clean)), "only the infected one"
    lines = [entry for entry in logs if entry["event"] == "message"]
    got_lines = [(m["action"], m["reply"], m["reason"], m.get("virus")) for m in lines]
    assert got_lines == [
        ("accept", "250 2.0.0 Ok", "virus_quarantined", "X"),
        ("accept", "250 2.0.0 Ok", "accepted", None),
    ]


def test_quarantine_is_refused_where_nothing_can_hold() -> None:
    """[filter] is the proxy's too, and the proxy answers before anything is queued."""
    from filterd.config import ConfigError, from_mapping  # noqa: PLC0415

    with pytest.raises(ConfigError, match="quarantine"):
        from_mapping({"filter": {"infected": "quarantine"}})
    milter = from_mapping({"milter": {"infected": "quarantine"}}).milter
    assert milter.infected == "quarantine"


async def test_filter_infected_policy_applies_when_milter_has_none() -> None:
    from filterd.core import InfectedAction  # noqa: PLC0415

    policy = Policy(infected=InfectedAction.TEMPFAIL)
    async with running(policy=policy) as (endpoint, _), client_of(endpoint) as milter:
        got = await milter.message("a@x.test", ["b@x.test"], HEADERS, b"VIRUS-X\r\n")
    assert summary(got) == ["y 451 4.7.1 Virus found: X"]


async def test_spoofed_headers_are_deleted_before_ours_are_added() -> None:
    spoofed = [("X-Virus-Status", " Clean"), *HEADERS, ("x-virus-status", " Clean"),
               ("X-Virus-Scanned", " by someone else")]  # fmt: skip
    async with running(infected="accept") as (endpoint, _), client_of(endpoint) as milter:
        got = await milter.message("a@x.test", ["b@x.test"], spoofed, b"VIRUS-X\r\n")
    assert summary(got) == [
        "m 1 X-Virus-Scanned:",
        "m 2 X-Virus-Status:",
        "m 1 X-Virus-Status:",
        f"h X-Virus-Scanned: {SCANNED}",
        "h X-Virus-Status: Infected (X)",
        "c",
    ]


async def test_reply_text_doubles_percent_signs() -> None:
    """purepythonmilter defect 3: a code without text is malformed for Postfix; '%' is eaten."""
    async with running() as (endpoint, _), client_of(endpoint) as milter:
        got = await milter.message("a@x.test", ["b@x.test"], HEADERS, b"VIRUS-100%bad\r\n")
    assert summary(got) == ["y 550 5.7.1 Virus found: 100%%bad"]


async def test_scanner_unavailable_is_a_tempfail() -> None:
    scanner = FakeScanner(ScanResult.error("connection refused"))
    async with running(scanner) as (endpoint, _), client_of(endpoint) as milter:
        got = await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
    assert summary(got) == ["y 451 4.7.1 Error: virus scanner unavailable, try again later"]


async def test_malformed_command_tempfails_that_message_and_the_connection_stays() -> None:
    """purepythonmilter defect 4: an exception dropped the whole connection."""
    async with running() as (endpoint, _), client_of(endpoint) as milter:
        await milter.mail("a@x.test")
        await milter.send(b"\0\0\0\x05Lbad!")  # a header without its NUL separators
        await milter.body(BODY)
        broken = await milter.end_of_message()
        await milter.abort()
        after = await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
    assert summary(broken) == ["y 451 4.3.0 Error: internal error in mail filter"]
    assert summary(after) == CLEAN


async def test_exception_in_the_decision_tempfails_and_the_connection_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0
    import filterd.endpoints.milter.session as session_module  # noqa: PLC0415

    original = session_module.MilterSession._within_agreement

    def explode_once(self: Any, decision: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug")
        return original(self, decision)

    monkeypatch.setattr(session_module.MilterSession, "_within_agreement", explode_once)
    async with running() as (endpoint, _), client_of(endpoint) as milter:
        with capture_logs() as logs:
            broken = await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
            after = await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
    assert summary(broken) == ["y 451 4.3.0 Error: internal error in mail filter"]
    assert summary(after) == CLEAN
    lines = [entry for entry in logs if entry["event"] == "message"]
    assert [line["reason"] for line in lines] == ["internal_error", "accepted"]


async def test_progress_is_sent_while_the_scan_runs() -> None:
    scanner = FakeScanner(delay=0.35)
    async with (
        running(scanner, progress_interval=0.1) as (endpoint, _),
        client_of(endpoint) as milter,
    ):
        got = await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
    codes = summary(got)
    assert codes[-3:] == CLEAN
    assert set(codes[:-3]) == {"p"}, codes
    assert len(codes[:-3]) >= 2, codes


# (id, settings, client address, MAIL macros, want the message scanned)
BYPASS = [
    ("network", {"bypass_networks": ("10.0.0.0/8",)}, "10.1.2.3", {}, False),
    ("network-other", {"bypass_networks": ("10.0.0.0/8",)}, "192.0.2.1", {}, True),
    ("authenticated", {"bypass_authenticated": True}, "192.0.2.1", {"{auth_authen}": "joe"}, False),
    ("not-authenticated", {"bypass_authenticated": True}, "192.0.2.1", {}, True),
    ("auth-not-enabled", {}, "192.0.2.1", {"{auth_authen}": "joe"}, True),
]  # fmt: skip


@pytest.mark.parametrize(("settings", "client", "pairs", "scanned"), cases(BYPASS))
async def test_bypass(
    settings: dict[str, Any], client: str, pairs: dict[str, str], scanned: bool
) -> None:
    async with running(**settings) as (endpoint, scanner), client_of(endpoint, client) as milter:
        with capture_logs() as logs:
            got = await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY, pairs)
    assert bool(scanner.scanned) == scanned
    want = CLEAN if scanned else ["a"]
    assert summary(got) == want
    reasons = [entry["reason"] for entry in logs if entry["event"] == "message"]
    assert reasons == (["accepted"] if scanned else ["bypass"])


SMUGGLED_BODY = b"hi\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nZ\r\n"


@pytest.mark.parametrize(
    ("word", "want", "logged"),
    [
        ("note", CLEAN, "smtp_command_sequence"),
        ("reject", [f"y {v.REJECT_SMUGGLING_TRACE.reply}"], None),
        ("no", CLEAN, None),
    ],
    ids=["note", "reject", "no"],
)  # fmt: skip
async def test_smuggling_traces(word: str, want: list[str], logged: str | None) -> None:
    async with running(traces=word) as (endpoint, _), client_of(endpoint) as milter:
        with capture_logs() as logs:
            got = await milter.message("a@x.test", ["b@x.test"], HEADERS, SMUGGLED_BODY)
    assert summary(got) == want
    line = next(entry for entry in logs if entry["event"] == "message")
    assert line.get("trace") == logged


# (id, forbid_bare_newline, body, want replies)
STRAY = [
    ("bare-lf-reject", BareNewline.REJECT, b"a\nb\r\n", ["y 550 5.5.2 Error: bare <LF> received"]),
    ("bare-cr-reject", BareNewline.REJECT, b"a\rb\r\n", ["y 550 5.5.2 Error: bare <CR> received"]),
    ("bare-lf-normalize", BareNewline.NORMALIZE, b"a\nb\r\n", CLEAN),
    ("fake-dot-visible", BareNewline.NORMALIZE, b"a\n.\nMAIL FROM:<e@x>\r\n",
     ["y 550 5.5.2 Error: non-standard end-of-data sequence (SMTP smuggling)"]),
]  # fmt: skip


@pytest.mark.parametrize(("mode", "body", "want"), cases(STRAY))
async def test_stray_cr_lf_that_postfix_did_not_clean(
    mode: BareNewline, body: bytes, want: list[str]
) -> None:
    async with (
        running(policy=Policy(forbid_bare_newline=mode)) as (endpoint, _),
        client_of(endpoint) as milter,
    ):
        got = await milter.message("a@x.test", ["b@x.test"], HEADERS, body)
    assert summary(got) == want


async def test_folded_header_is_not_a_bare_lf() -> None:
    policy = Policy(forbid_bare_newline=BareNewline.REJECT)
    folded = [("Subject", " a long\n\tsubject")]  # Postfix keeps folding as a bare LF
    async with running(policy=policy) as (endpoint, scanner), client_of(endpoint) as milter:
        got = await milter.message("a@x.test", ["b@x.test"], folded, BODY)
    assert summary(got) == CLEAN
    assert scanner.scanned[0].startswith(b"Subject: a long\r\n\tsubject\r\n\r\n")


async def test_one_log_line_per_message_without_the_body() -> None:
    async with running() as (endpoint, _), client_of(endpoint) as milter:
        with capture_logs() as logs:
            await milter.message("a@x.test", ["b@x.test", "c@x.test"], HEADERS, BODY)
            await milter.message("a@x.test", ["b@x.test"], HEADERS, b"VIRUS-Y\r\n")
    lines = [entry for entry in logs if entry["event"] == "message"]
    assert [(x["endpoint"], x["reason"], x["recipients"]) for x in lines] == [
        ("milter", "accepted", 2),
        ("milter", "virus", 1),
    ]
    assert lines[0]["queue_id"] == "ABC123"
    assert lines[0]["client"] == "192.0.2.10"
    assert lines[0]["sender"] == "a@x.test"
    assert all(b"this is a test" not in repr(x).encode() for x in logs)


@pytest.mark.parametrize(
    ("version", "warned"),
    [("Postfix 3.7.9", True), ("Postfix 3.7.11", False), ("Postfix 3.10.1", False)],
)
async def test_old_postfix_version_is_warned_about_once(version: str, warned: bool) -> None:
    async with running() as (endpoint, _):
        with capture_logs() as logs:
            for _ in range(2):
                milter = await MilterClient.open_tcp("127.0.0.1", endpoint.port)
                await milter.negotiate()
                await milter.connect(pairs={"v": version})
                await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
                await milter.close()
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == (1 if warned else 0)


async def test_framing_error_closes_only_that_connection() -> None:
    async with running() as (endpoint, _):
        bad = await MilterClient.open_tcp("127.0.0.1", endpoint.port)
        await bad.send(b"\xff\xff\xff\xffO")  # a length over 64 KiB: cannot resynchronise
        assert await bad.reader.read() == b""
        await bad.close()
        async with client_of(endpoint) as milter:
            got = await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
    assert summary(got) == CLEAN


async def test_unix_socket_replaces_a_stale_socket_but_not_a_file(tmp_path: Path) -> None:
    path = tmp_path / "filterd.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening, closed: the file stays, connect is refused
    stale.close()
    async with running(listen=f"unix:{path}") as (endpoint, _), client_of(endpoint) as milter:
        got = await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
    assert summary(got) == CLEAN
    path.write_text("not a socket")
    endpoint = MilterEndpoint(
        Config(milter=MilterSettings(listen=f"unix:{path}")), make_pipeline(FakeScanner())
    )
    with pytest.raises(ValueError, match="not a socket"):
        await endpoint.start()
    assert path.read_text() == "not a socket"


# (id, listen, the address it means)
LISTEN_OK = [
    ("inet-ipv4", "inet:127.0.0.1:10026", ListenAddress("inet", host="127.0.0.1", port=10026)),
    ("inet-ipv6", "inet:[::1]:10026", ListenAddress("inet", host="::1", port=10026)),
    ("inet-any-port", "inet:127.0.0.1:0", ListenAddress("inet", host="127.0.0.1", port=0)),
    ("unix", "unix:/run/f.sock", ListenAddress("unix", path="/run/f.sock")),
]
# (id, listen): each is refused with a message naming both syntaxes
LISTEN_BAD = [
    ("no-family", "127.0.0.1:10026"),
    ("inet-no-port", "inet:127.0.0.1"),
    ("inet-ipv6-without-brackets", "inet:::1:10026"),
    ("inet-port-too-big", "inet:127.0.0.1:65536"),
    ("inet-port-not-ascii", "inet:127.0.0.1:\u00b2"),
    ("unix-no-path", "unix:"),
    ("unknown-family", "local:/run/f.sock"),
]


@pytest.mark.parametrize(("text", "want"), cases(LISTEN_OK))
def test_parse_listen(text: str, want: ListenAddress) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", [c[1] for c in LISTEN_BAD], ids=[c[0] for c in LISTEN_BAD])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ListenError, match="is not inet:HOST:PORT or unix:PATH"):
        parse_listen(text)


async def test_close_waits_for_a_message_being_decided() -> None:
    scanner = FakeScanner(delay=0.3)
    async with running(scanner) as (endpoint, _):
        milter = await MilterClient.open_tcp("127.0.0.1", endpoint.port)
        await milter.negotiate()
        await milter.connect()
        pending = asyncio.create_task(milter.message("a@x.test", ["b@x.test"], HEADERS, BODY))
        await asyncio.sleep(0.1)
        await endpoint.close()
        got = await pending
        await milter.close()
    assert summary(got) == CLEAN


async def test_sigterm_stops_only_filterd(monkeypatch: pytest.MonkeyPatch) -> None:
    """purepythonmilter defect 5: its run_server cancels every task in the loop on SIGTERM."""
    monkeypatch.setattr(app, "configure", lambda *args, **kwargs: None)
    bystander = asyncio.create_task(asyncio.sleep(30), name="not filterd's")
    config = Config(milter=MilterSettings(listen="inet:127.0.0.1:0"))
    serving = asyncio.create_task(app.serve(config))
    await asyncio.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, 5)
    assert not bystander.done(), "SIGTERM must not cancel tasks filterd does not own"
    bystander.cancel()
