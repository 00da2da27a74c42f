"""The documented setups are smuggling-proof for every client, including $mynetworks.

Private Postfix instances are built from master.cf.d/proxy.cf and master.cf.d/milter.cf as
shipped: the snippet files are parsed here and every service line and `-o` line is applied,
with only the listen ports and filterd's addresses substituted (and chroot off: the private
queue directory is not a chroot jail). filterd runs in front as the documented
`filterd serve` command, with the test bed's real clamd. main.cf keeps Postfix's defaults
for the exclusions (`smtpd_forbid_bare_newline_exclusions = $mynetworks`, with 127.0.0.0/8
in $mynetworks), and the harness connects from 127.0.0.1: it is the internal relay of a
real site, not an Internet client. The delivery side is the test bed's sink.

    filterd smuggle -> Postfix front smtpd -> filterd proxy -> reinjection smtpd -> sink
    filterd smuggle -> Postfix front smtpd (+ filterd milter)                    -> sink

Each hardened run is paired with the same setup minus the snippet's
`smtpd_forbid_bare_newline_exclusions=` line, which must be exploitable: that line is what
the test is about.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from filterd.cli import main
from filterd.testing import RawSmtpClient, last_line
from tests.processes import FilterdProcess
from tests.testbed.clamd import Clamd
from tests.testbed.common import (
    free_port,
)
from tests.testbed.postfix import POSTCONF, Postfix, PostfixFactory
from tests.testbed.sink import SinkMessage

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = ROOT / "master.cf.d"
EXCLUSIONS = "smtpd_forbid_bare_newline_exclusions"
# The documented addresses of filterd's listeners and of the reinjection smtpd.
PROXY_LISTEN, DOWNSTREAM, MILTER_LISTEN = "127.0.0.1:10024", "127.0.0.1:10025", "127.0.0.1:10026"

FROM, TO, SMUGGLED_FROM = "a@example.org", "b@example.net", "smuggled@example.org"
# The probes that end DATA on a lenient Postfix and let a smuggled transaction in (measured
# against Postfix 3.7.11 built from the snippets without the exclusions line), the two
# pipelining probes, and the controls. The whole catalogue takes ~20 s per run.
PROBES = ["E01", "E02", "E06", "E14", "E19", "P01", "P02", "P03", "C01", "C02"]
WINDOW = "1.5"  # per reply: a loaded 2-core machine answers a first scan slowly


# --- the snippets, parsed ---------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """One master.cf service from a snippet: its line's fields and its `-o` overrides."""

    fields: tuple[str, ...]
    options: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return self.fields[0]


def parse_snippet(text: str) -> list[Service]:
    """master(5) syntax: a service line at column 0, its `-o name=value` lines indented."""
    services: list[tuple[tuple[str, ...], list[tuple[str, str]]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            services.append((tuple(line.split()), []))
            continue
        flag, _, option = line.strip().partition(" ")
        name, equals, value = option.strip().partition("=")
        if flag != "-o" or not equals or not services:
            raise AssertionError(f"unexpected line in a master.cf.d snippet: {line!r}")
        services[-1][1].append((name, value))
    return [Service(fields, tuple(options)) for fields, options in services]


def render(
    services: list[Service],
    ports: dict[str, str],
    addresses: dict[str, str],
    without: Collection[str],
) -> str:
    """master.cf text: listen ports and filterd's addresses replaced, chroot off, and the
    front service's `without` options left out."""
    lines = []
    for service in services:
        fields = list(service.fields)
        fields[0] = ports[service.name]
        fields[4] = "n"  # chroot: the private queue directory has no /etc copies in it
        lines.append(" ".join(fields))
        for name, value in service.options:
            if service.name == "smtp" and name in without:
                continue
            lines.append(f"  -o {name}={addresses.get(value, value)}")
    return "\n".join(lines) + "\n"


def snippet(mode: str) -> list[Service]:
    return parse_snippet((SNIPPETS / f"{mode}.cf").read_text())


def front(mode: str) -> Service:
    (service,) = [s for s in snippet(mode) if s.name == "smtp"]
    return service


# --- the setups ----------------------------------------------------------------------------------


@dataclass
class Setup:
    postfix: Postfix
    filterd: FilterdProcess


@pytest.fixture
def documented(make_postfix: PostfixFactory, clamd: Clamd) -> Iterator[Any]:
    """`documented(mode, without=())`: filterd as documented, then Postfix from the snippet."""
    started: list[FilterdProcess] = []

    def start(mode: str, without: Collection[str] = ()) -> Setup:
        filter_port, smtpd_port = free_port(), free_port()
        ports = {"smtp": f"127.0.0.1:{smtpd_port}"}
        if mode == "proxy":
            downstream_port = free_port()
            ports[DOWNSTREAM] = f"127.0.0.1:{downstream_port}"
            addresses = {PROXY_LISTEN: f"127.0.0.1:{filter_port}"}
            args = ["--proxy", f"127.0.0.1:{filter_port}"]
            args += ["--downstream", f"127.0.0.1:{downstream_port}"]
        else:
            listen = f"inet:127.0.0.1:{filter_port}"
            addresses = {f"inet:{MILTER_LISTEN}": listen}
            args = ["--milter", listen]
        filterd = FilterdProcess([*args, "--clamd", clamd.address], f"inet:127.0.0.1:{filter_port}")
        started.append(filterd)
        filterd.start()
        master_cf = render(snippet(mode), ports, addresses, without)
        kwargs: dict[str, Any] = {"services": master_cf, "smtpd_port": smtpd_port}
        if mode == "proxy":
            kwargs.update(filter_port=filter_port, downstream_port=downstream_port)
            postfix = make_postfix("proxy", **kwargs)
        else:
            postfix = make_postfix("milter", milter=addresses[f"inet:{MILTER_LISTEN}"], **kwargs)
        return Setup(postfix, filterd)

    try:
        yield start
    finally:
        for filterd in started:
            filterd.close()


@dataclass(frozen=True)
class Outcome:
    code: int
    document: dict[str, Any]
    err: str

    def probe(self, probe_id: str) -> dict[str, Any]:
        probes: list[dict[str, Any]] = self.document["probes"]
        (probe,) = [p for p in probes if p["id"] == probe_id]
        return probe

    def verdicts(self) -> dict[str, str]:
        return {p["id"]: p["verdict"] for p in self.document["probes"]}


def smuggle(port: int, capsys: pytest.CaptureFixture[str]) -> Outcome:
    """`filterd smuggle 127.0.0.1:PORT` in-process, from 127.0.0.1 (inside $mynetworks)."""
    import json  # noqa: PLC0415 (only here)

    capsys.readouterr()
    code = main(
        ["smuggle", f"127.0.0.1:{port}", "--json", "--timeout", WINDOW, "--probe", *PROBES,
         "--from", FROM, "--to", TO, "--smuggled-from", SMUGGLED_FROM]
    )  # fmt: skip
    captured = capsys.readouterr()
    return Outcome(code, json.loads(captured.out), captured.err)


def delivered(postfix: Postfix) -> list[SinkMessage]:
    """Everything that reached the sink once Postfix's queue is empty and the sink is quiet."""
    postfix.wait_queue_empty(20)
    postfix.sink.assert_quiet(0.5, expected_total=len(postfix.sink.messages))
    return postfix.sink.messages


def smuggled(messages: list[SinkMessage]) -> list[SinkMessage]:
    """Messages of their own with the smuggled sender or a smuggled probe message's subject."""
    return [
        message
        for message in messages
        if message.mail_from == SMUGGLED_FROM
        or any(subject.endswith(" smuggled") for subject in message.header_values("Subject"))
    ]


def assert_mynetworks_client(postfix: Postfix) -> None:
    """The harness's address is exempt by main.cf: only the snippet can close the hole."""
    assert postfix.postconf(EXCLUSIONS) == "$mynetworks"
    assert "127.0.0.0/8" in postfix.postconf("mynetworks")


def effective_overrides(postfix: Postfix, service: str) -> dict[str, str]:
    """`postconf -P`: the -o overrides master(8) really applies to `service/inet`."""
    result = subprocess.run(
        [POSTCONF, "-c", str(postfix.config_directory), "-P"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    prefix = f"{service}/inet/"
    overrides = {}
    for line in result.stdout.splitlines():
        # "service/type/name = value", or "service/type/name =" for an empty value.
        key, _, value = line.partition(" =")
        if key.startswith(prefix):
            overrides[key.removeprefix(prefix)] = value.strip()
    return overrides


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["proxy", "milter"])
def test_snippets_parse_and_render(mode: str) -> None:
    services = snippet(mode)
    options = dict(front(mode).options)
    assert options[EXCLUSIONS] == "", "the front smtpd empties the exclusions"
    assert options["smtpd_forbid_bare_newline"] in {"normalize", "reject"}
    assert options["smtpd_forbid_unauth_pipelining"] == "yes"
    want = {"proxy": {"smtp", DOWNSTREAM}, "milter": {"smtp"}}[mode]
    assert {s.name for s in services} == want
    text = (SNIPPETS / f"{mode}.cf").read_text()
    assert "{" not in text, "the test bed would read braces as placeholders"
    listen = PROXY_LISTEN if mode == "proxy" else f"inet:{MILTER_LISTEN}"
    filter_option = "smtpd_proxy_filter" if mode == "proxy" else "smtpd_milters"
    assert options[filter_option] == listen, "the address this test substitutes"


@pytest.mark.parametrize("mode", ["proxy", "milter"])
def test_documented_setup_is_not_exploitable_from_mynetworks(
    documented: Any, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    setup = documented(mode)
    assert_mynetworks_client(setup.postfix)
    port = setup.postfix.smtpd_port

    outcome = smuggle(port, capsys)
    messages = delivered(setup.postfix)

    assert outcome.code == 0, outcome.verdicts()
    # CHUNKING is offered and P02's smuggled BDAT stays content of the one message.
    assert "CHUNKING" in outcome.document["keywords"]
    assert outcome.probe("P02")["verdict"] in {"TREATED-AS-CONTENT", "REJECTED"}
    assert outcome.probe("P01")["verdict"] == "BLOCKED-BY-SYNC"
    assert outcome.probe("C01")["verdict"] == outcome.probe("C02")["verdict"] == "PASS"
    assert not smuggled(messages), [m.header_values("Subject") for m in smuggled(messages)]
    assert len(messages) >= 2, "the controls at least were delivered: the sink is reachable"
    # master(8) applied the snippet's lines to the front smtpd (postconf -P).
    applied = effective_overrides(setup.postfix, f"127.0.0.1:{port}")
    assert applied.get(EXCLUSIONS) == "", applied
    assert applied.get("smtpd_forbid_unauth_pipelining") == "yes", applied


@pytest.mark.parametrize("mode", ["proxy", "milter"])
def test_without_the_exclusions_line_the_same_setup_is_exploitable(
    documented: Any, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    """Why the line is there: Postfix's default exempts $mynetworks, and the front smtpd
    ends DATA at "<LF>.<CR><LF>" for such a client; the smuggled BDAT is then queued."""
    setup = documented(mode, without={EXCLUSIONS})
    front_service = f"127.0.0.1:{setup.postfix.smtpd_port}"
    assert EXCLUSIONS not in effective_overrides(setup.postfix, front_service)
    assert_mynetworks_client(setup.postfix)

    outcome = smuggle(setup.postfix.smtpd_port, capsys)
    messages = delivered(setup.postfix)

    assert outcome.code == 1, outcome.verdicts()
    assert outcome.probe("P02")["verdict"] == "EXPLOITABLE", outcome.probe("P02")["reason"]
    got = smuggled(messages)
    assert [m.mail_from for m in got] == [SMUGGLED_FROM], [m.header_values("Subject") for m in got]
    assert got[0].header_values("Subject")[0].endswith("P02 smuggled")


def test_reinjection_smtpd_is_not_exploitable_from_loopback(
    documented: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reinjection listener's own overrides (strict for 127.0.0.1 too), probed directly."""
    setup = documented("proxy")
    downstream = setup.postfix.downstream_port
    assert downstream is not None
    applied = effective_overrides(setup.postfix, f"127.0.0.1:{downstream}")
    assert applied["smtpd_forbid_bare_newline"] == "reject", applied
    assert applied[EXCLUSIONS] == "", applied

    outcome = smuggle(downstream, capsys)
    messages = delivered(setup.postfix)

    assert outcome.code == 0, outcome.verdicts()
    fakes = [p for p in PROBES if p.startswith("E")]
    assert {outcome.verdicts()[p] for p in fakes} == {"REJECTED"}, outcome.verdicts()
    assert not smuggled(messages)


# A fake end of data inside a BDAT chunk: the chunk is counted in bytes, so none of these can
# end it; the front smtpd must dot-stuff the "." line when it turns BDAT into DATA for the
# proxy, and cleanup gives the Milter the message as one.
SMUGGLED_COMMANDS = (
    b"mail FROM:<smuggled@example.org>\r\nrcpt TO:<b@example.net>\r\ndata\r\n"
    b"From: <smuggled@example.org>\r\nSubject: chunk smuggled\r\n\r\nsmuggled\r\n"
)
IN_CHUNK = {
    "lf-dot-crlf": b"\n.\r\n",
    "crlf-dot-crlf": b"\r\n.\r\n",
    "crlf-dot-cr-crlf": b"\r\n.\r\r\n",
    "cr-dot-cr": b"\r.\r",
}


def bdat_session(port: int, chunk: bytes) -> list[str]:
    """EHLO, MAIL, RCPT, `BDAT n LAST` with `chunk`, QUIT; the last reply line of each."""
    with RawSmtpClient(port, timeout=15) as conn:
        replies = [last_line(conn.reply())]
        commands = (b"EHLO client.example", f"MAIL FROM:<{FROM}>".encode(),
                    f"RCPT TO:<{TO}>".encode())  # fmt: skip
        replies.extend(last_line(conn.command(command + b"\r\n")) for command in commands)
        replies.append(last_line(conn.command(b"BDAT %d LAST\r\n" % len(chunk) + chunk)))
        replies.append(last_line(conn.command(b"QUIT\r\n")))
    return replies


@pytest.mark.parametrize("mode", ["proxy", "milter"])
def test_fake_ends_inside_a_bdat_chunk_stay_one_message(documented: Any, mode: str) -> None:
    setup = documented(mode)
    answers = {}
    for name, fake_end in IN_CHUNK.items():
        chunk = b"Subject: chunk carrier " + name.encode() + b"\r\n\r\ncarrier" + fake_end
        answers[name] = bdat_session(setup.postfix.smtpd_port, chunk + SMUGGLED_COMMANDS)[4]
    messages = delivered(setup.postfix)

    assert not smuggled(messages), answers
    assert all(re.match(r"[25]\d\d ", answer) for answer in answers.values()), answers
    assert len(messages) == sum(answer.startswith("250 ") for answer in answers.values())
