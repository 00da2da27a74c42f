"""The SMTP server's sequencing table (filterd.core.smtp.machine), as tables of cases: in this
state, this line gives that step; after this report, that state. Also keeps the state page
docs/reference/smtp-states.md in step with the tables.

Regenerate the page with: .venv/bin/python -m tests.core.test_smtp_machine
"""

from __future__ import annotations

from pathlib import Path

import pytest

from filterd.core import verdict as v
from filterd.core.policy import BareNewline, Policy
from filterd.core.smtp import machine as m
from filterd.core.smtp.machine import Disconnect, Event, Go, Machine, Refuse, State, Step
from tests.tables import cases
from tests.test_docs import check_generated, replace_between

PAGE: Path = Path(__file__).resolve().parents[2] / "docs" / "reference" / "smtp-states.md"
BEGIN, END = "<!-- smtp-states:begin -->", "<!-- smtp-states:end -->"
# The reports that lead from START to each state (the session's side of a real session).
ROUTE: dict[State, list[Event]] = {
    State.START: [],
    State.CONNECTED: [Event.GREETING],
    State.GREETED: [Event.GREETING, Event.HELLO],
    State.MAIL: [Event.GREETING, Event.HELLO, Event.MAIL],
    State.RCPT: [Event.GREETING, Event.HELLO, Event.MAIL, Event.RCPT],
    State.DATA: [Event.GREETING, Event.HELLO, Event.MAIL, Event.RCPT, Event.DATA],
    State.CLOSED: [Event.GREETING, Event.QUIT],
}


def machine_in(state: State, *, xforward: bool = True, policy: Policy | None = None) -> Machine:
    machine = Machine(policy or Policy(), xforward=xforward)
    for event in ROUTE[state]:
        machine.fire(event)
    assert machine.state is state, f"route to {state} ends in {machine.state}"
    return machine


def outcome(step: Step) -> str:
    """A step as one comparable word: `go <event>`, `refuse <reason>`, `close <reason>`."""
    if isinstance(step, Go):
        return f"go {step.then.name if step.then else '-'}"
    if isinstance(step, Refuse):
        return f"refuse {step.verdict.reason}" + ("" if step.counted else " (not counted)")
    return f"close {step.verdict.reason}"


# (id, state, line as read, want outcome). RFC 5321 §4.1.4 order, §4.1.1.x arguments.
SEQUENCE = [
    ("ehlo before anything", State.CONNECTED, b"EHLO client.example\r\n", "go HELLO"),
    ("helo before anything", State.CONNECTED, b"HELO client.example\r\n", "go HELLO"),
    ("mail before ehlo", State.CONNECTED, b"MAIL FROM:<a@b>\r\n", "refuse bad_sequence"),
    ("rcpt before ehlo", State.CONNECTED, b"RCPT TO:<a@b>\r\n", "refuse bad_sequence"),
    ("data before ehlo", State.CONNECTED, b"DATA\r\n", "refuse bad_sequence"),
    ("xforward before ehlo", State.CONNECTED, b"XFORWARD NAME=x\r\n", "refuse bad_sequence"),
    ("rset before ehlo", State.CONNECTED, b"RSET\r\n", "go END"),
    ("noop before ehlo", State.CONNECTED, b"NOOP\r\n", "go -"),
    ("quit before ehlo", State.CONNECTED, b"QUIT\r\n", "go QUIT"),
    ("mail after ehlo", State.GREETED, b"MAIL FROM:<a@b>\r\n", "go MAIL"),
    ("null sender", State.GREETED, b"MAIL FROM:<>\r\n", "go MAIL"),
    ("rcpt without mail", State.GREETED, b"RCPT TO:<a@b>\r\n", "refuse bad_sequence"),
    ("data without mail", State.GREETED, b"DATA\r\n", "refuse bad_sequence"),
    ("xforward outside a transaction", State.GREETED, b"XFORWARD ADDR=192.0.2.1\r\n", "go -"),
    ("second ehlo", State.GREETED, b"EHLO again.example\r\n", "go HELLO"),
    ("mail in a transaction", State.MAIL, b"MAIL FROM:<a@b>\r\n", "refuse bad_sequence"),
    ("rcpt after mail", State.MAIL, b"RCPT TO:<c@d>\r\n", "go RCPT"),
    ("data without recipient", State.MAIL, b"DATA\r\n", "refuse no_recipients"),
    ("data with argument, no recipient", State.MAIL, b"DATA x\r\n", "refuse no_recipients"),
    ("xforward in a transaction", State.MAIL, b"XFORWARD NAME=x\r\n", "refuse bad_sequence"),
    ("ehlo in a transaction resets", State.MAIL, b"EHLO c.example\r\n", "go HELLO"),
    ("rset in a transaction", State.MAIL, b"RSET\r\n", "go END"),
    ("second rcpt", State.RCPT, b"RCPT TO:<e@f>\r\n", "go RCPT"),
    ("data after rcpt", State.RCPT, b"DATA\r\n", "go DATA"),
    ("data with an argument", State.RCPT, b"DATA now\r\n", "refuse syntax"),
    ("mail after rcpt", State.RCPT, b"MAIL FROM:<a@b>\r\n", "refuse bad_sequence"),
    ("xforward after rcpt", State.RCPT, b"XFORWARD NAME=x\r\n", "refuse bad_sequence"),
    ("quit in a transaction", State.RCPT, b"QUIT\r\n", "go QUIT"),
    # Arguments (RFC 5321 §4.1.1.1-4, RFC 1870, Postfix XFORWARD_README).
    ("ehlo without a name", State.CONNECTED, b"EHLO\r\n", "refuse syntax"),
    ("helo with spaces only", State.GREETED, b"HELO   \r\n", "refuse syntax"),
    ("mail without brackets", State.GREETED, b"MAIL FROM:a@b\r\n", "refuse syntax"),
    ("mail with rcpt keyword", State.GREETED, b"MAIL TO:<a@b>\r\n", "refuse syntax"),
    ("mail size not digits", State.GREETED, b"MAIL FROM:<a@b> SIZE=x\r\n", "refuse bad_size"),
    (
        "mail size above the limit",
        State.GREETED,
        b"MAIL FROM:<a@b> SIZE=10240001\r\n",
        "refuse too_large (not counted)",
    ),
    ("mail size at the limit", State.GREETED, b"MAIL FROM:<a@b> SIZE=10240000\r\n", "go MAIL"),
    ("rcpt without brackets", State.MAIL, b"RCPT TO:c@d\r\n", "refuse syntax"),
    ("xforward unknown attribute", State.GREETED, b"XFORWARD EVIL=1\r\n", "refuse syntax"),
    ("xforward empty", State.GREETED, b"XFORWARD\r\n", "refuse syntax"),
    ("rset with an argument", State.RCPT, b"RSET x\r\n", "go END"),
    # Verbs not in the table.
    ("vrfy is not offered", State.GREETED, b"VRFY root\r\n", "refuse not_implemented"),
    ("bdat is not offered", State.RCPT, b"BDAT 10 LAST\r\n", "refuse not_implemented"),
    ("starttls is not offered", State.GREETED, b"STARTTLS\r\n", "refuse not_implemented"),
    ("help is not offered", State.GREETED, b"HELP\r\n", "refuse not_implemented"),
    ("made-up verb", State.RCPT, b"FOO bar\r\n", "refuse unknown_command"),
    # Lines (filterd.core.smtp.commands has the byte-level table).
    ("line too long", State.GREETED, None, "refuse line_too_long"),
    ("empty line", State.GREETED, b"\r\n", "refuse syntax"),
    ("cr inside", State.GREETED, b"NOOP\rQUIT\r\n", "refuse syntax"),
]


@pytest.mark.parametrize(("state", "raw", "want"), cases(SEQUENCE))
def test_command_in_state(state: State, raw: bytes | None, want: str) -> None:
    machine = machine_in(state)
    got = outcome(machine.receive(raw, waiting=False))
    assert got == want, f"in {state}: got {got!r}, want {want!r}"
    assert machine.state is state, "receiving a line never moves the machine"


# (id, trusted for XFORWARD, state, want) Postfix XFORWARD_README: only authorized clients.
XFORWARD = [
    ("trusted, outside a transaction", True, State.GREETED, "go -"),
    ("untrusted, outside a transaction", False, State.GREETED, "refuse not_implemented"),
    ("untrusted, before ehlo", False, State.CONNECTED, "refuse not_implemented"),
    ("untrusted, in a transaction", False, State.MAIL, "refuse not_implemented"),
]


@pytest.mark.parametrize(("trusted", "state", "want"), cases(XFORWARD))
def test_xforward_only_for_trusted_clients(trusted: bool, state: State, want: str) -> None:
    machine = machine_in(state, xforward=trusted)
    got = outcome(machine.receive(b"XFORWARD NAME=mx.example ADDR=192.0.2.1\r\n", waiting=False))
    assert got == want


def test_go_carries_what_the_session_needs() -> None:
    mail = machine_in(State.GREETED).receive(b"MAIL FROM:<A@Example.org> SIZE=5\r\n", waiting=False)
    assert isinstance(mail, Go)
    assert (mail.address, mail.command.line) == (
        "A@Example.org",
        b"MAIL FROM:<A@Example.org> SIZE=5",
    )
    xforward = machine_in(State.GREETED).receive(b"XFORWARD HELO=a+20b\r\n", waiting=False)
    assert isinstance(xforward, Go)
    assert xforward.attributes == {"HELO": "a b"}


def test_the_size_limit_is_the_policy_limit() -> None:
    small = Policy(max_message_size=100)
    got = machine_in(State.GREETED, policy=small).receive(
        b"MAIL FROM:<a@b> SIZE=101\r\n", waiting=False
    )
    assert outcome(got) == "refuse too_large (not counted)"


# (id, forbid_bare_newline, state, want outcome, want notes). Postfix smtpd_forbid_bare_newline.
BARE_LF = [
    ("reject closes", BareNewline.REJECT, State.GREETED, "close bare_lf", ["bare_lf_command"]),
    ("note runs and notes", BareNewline.NOTE, State.GREETED, "go -", ["bare_lf_command"]),
    ("normalize runs", BareNewline.NORMALIZE, State.GREETED, "go -", []),
    ("no runs", BareNewline.NO, State.GREETED, "go -", []),
]


@pytest.mark.parametrize(("mode", "state", "want", "notes"), cases(BARE_LF))
def test_bare_lf_command(mode: BareNewline, state: State, want: str, notes: list[str]) -> None:
    machine = machine_in(state, policy=Policy(forbid_bare_newline=mode))
    got = machine.receive(b"NOOP\n", waiting=False)
    assert outcome(got) == want
    assert [note.what for note in got.notes] == notes


def test_bare_lf_reject_uses_the_policy_code() -> None:
    policy = Policy(forbid_bare_newline=BareNewline.REJECT, bare_newline_reject_code=521)
    got = machine_in(State.GREETED, policy=policy).receive(b"NOOP\n", waiting=False)
    assert isinstance(got, Disconnect)
    assert got.verdict.reply.startswith("521 5.5.2 ")


def test_a_noted_bare_lf_is_kept_on_a_refusal() -> None:
    machine = machine_in(State.GREETED, policy=Policy(forbid_bare_newline=BareNewline.NOTE))
    got = machine.receive(b"RCPT TO:<a@b>\n", waiting=False)
    assert outcome(got) == "refuse bad_sequence"
    assert [note.what for note in got.notes] == ["bare_lf_command"]


# (id, state, line, want) RFC 2920 §3.1: PIPELINING is never offered, so any input waiting
# behind a command is a violation, whatever the command and the state.
SYNC = [
    ("behind ehlo", State.CONNECTED, b"EHLO c\r\n"),
    ("behind mail", State.GREETED, b"MAIL FROM:<a@b>\r\n"),
    ("behind rcpt", State.MAIL, b"RCPT TO:<a@b>\r\n"),
    ("behind a refused command", State.GREETED, b"DATA\r\n"),
    ("behind an unknown verb", State.GREETED, b"FOO\r\n"),
]


@pytest.mark.parametrize(("state", "raw"), cases(SYNC))
def test_input_sent_ahead_closes(state: State, raw: bytes) -> None:
    got = machine_in(state).receive(raw, waiting=True)
    assert outcome(got) == "close pipelining"
    assert [note.what for note in got.notes] == ["pipelining"]
    assert got.notes[0].fields["rule"] == "RFC 2920 §3.1 (PIPELINING not offered)"


def test_a_bad_line_is_answered_before_any_sync_check() -> None:
    # As before the machine: a line that does not parse is refused, bytes behind it or not.
    got = machine_in(State.GREETED).receive(b"\x00\r\n", waiting=True)
    assert outcome(got) == "refuse syntax"


# (id, waiting, want state after open, want outcome) RFC 5321 §3.1: input before the 220.
OPEN = [
    ("quiet client", False, State.CONNECTED, None),
    ("early talker", True, State.START, "close pipelining"),
]


@pytest.mark.parametrize(("waiting", "state", "want"), cases(OPEN))
def test_open(waiting: bool, state: State, want: str | None) -> None:
    machine = Machine(Policy(), xforward=False)
    got = machine.open(waiting=waiting)
    assert (outcome(got) if got else None) == want
    assert machine.state is state
    if got is not None:
        assert got.notes[0].fields["after"] == "CONNECT"


# TRANSITIONS, read through `fire`, as the grid it is: the state after each event (the
# columns, in Event's order) in each state (the rows); "bug" where the session never
# reports that event in that state (a SequenceError, the state unchanged). For example,
# "ended" is the reply after the dot, RSET or a new EHLO; before EHLO it changes nothing.
#               220 sent   HELO/EHLO  MAIL 2XX  RCPT 2XX  354 sent  ended      221 sent
GRID = """
    start       connected  bug        bug       bug       bug       start      bug
    connected   bug        greeted    bug       bug       bug       connected  closed
    greeted     bug        greeted    mail      bug       bug       greeted    closed
    mail        bug        greeted    bug       rcpt      bug       greeted    closed
    rcpt        bug        greeted    bug       rcpt      data      greeted    closed
    data        bug        bug        bug       bug       bug       greeted    bug
    closed      bug        bug        bug       bug       bug       closed     bug
"""


def grid_cases(grid: str) -> dict[str, tuple[State, Event, State | None]]:
    """Each cell of the grid as (state, event, want state or None for "bug"), by id."""
    cases = {}
    for row in grid.strip().splitlines():
        state, *cells = row.split()
        for event, cell in zip(Event, cells, strict=True):
            want = None if cell == "bug" else State(cell)
            cases[f"{state}-{event.name}"] = (State(state), event, want)
    return cases


CELLS = grid_cases(GRID)


@pytest.mark.parametrize(("state", "event", "want"), CELLS.values(), ids=CELLS.keys())
def test_transition(state: State, event: Event, want: State | None) -> None:
    machine = machine_in(state)
    if want is None:
        with pytest.raises(m.SequenceError):
            machine.fire(event)
        assert machine.state is state
    else:
        machine.fire(event)
        assert machine.state is want


def test_the_grid_has_every_state() -> None:
    assert [row.split()[0] for row in GRID.strip().splitlines()] == [s.value for s in State]


def test_every_state_can_end() -> None:
    # The session ends whatever is open however it stops (finally: end_transaction).
    missing = [state for state in State if Event.END not in m.TRANSITIONS[state]]
    assert missing == []


def test_every_allowed_command_fires_an_event_its_state_expects() -> None:
    broken = [
        f"{state}/{verb}"
        for state, row in m.COMMANDS.items()
        for verb, rule in row.items()
        if isinstance(rule, m.Allow) and rule.then and rule.then not in m.TRANSITIONS[state]
    ]
    assert broken == []


def test_a_whole_session() -> None:
    """EHLO, MAIL, RCPT refused, RCPT, DATA, the dot, RSET, QUIT: the session's reports."""
    machine = Machine(Policy(), xforward=False)
    assert machine.open(waiting=False) is None
    walk: list[tuple[bytes, bool]] = [
        (b"EHLO c.example\r\n", True),
        (b"MAIL FROM:<a@b>\r\n", True),
        (b"RCPT TO:<nobody@b>\r\n", False),  # the downstream said 550
        (b"DATA\r\n", False),  # refused by the table: no recipient yet
        (b"RCPT TO:<c@d>\r\n", True),
    ]
    seen = []
    for raw, ok in walk:
        step = machine.receive(raw, waiting=False)
        if isinstance(step, Go) and ok:
            machine.accepted(step)
        seen.append(machine.state)
    assert seen == [State.GREETED, State.MAIL, State.MAIL, State.MAIL, State.RCPT]
    assert outcome(machine.receive(b"DATA\r\n", waiting=False)) == "go DATA"
    machine.data_started()
    seen = [machine.state]
    assert machine.sync("END-OF-DATA", waiting=False) is None
    stop = machine.sync("END-OF-DATA", waiting=True)  # bytes behind the final dot
    assert stop is not None
    assert outcome(stop) == "close pipelining"
    machine.ended()  # the reply after the dot
    seen.append(machine.state)
    assert outcome(machine.receive(b"RCPT TO:<c@d>\r\n", waiting=False)) == "refuse bad_sequence"
    quit_ = machine.receive(b"QUIT\r\n", waiting=False)
    assert isinstance(quit_, Go)
    machine.accepted(quit_)
    seen.append(machine.state)
    assert seen == [State.DATA, State.GREETED, State.CLOSED]


# --- the page generated from the tables ------------------------------------------------------


def render_diagram() -> str:
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {State.START}"]
    for state, moves in m.TRANSITIONS.items():
        for event, target in moves.items():
            verbs = sorted(
                verb
                for verb, rule in m.COMMANDS[state].items()
                if isinstance(rule, m.Allow) and rule.then is event
            )
            label = event.value + (f" ({', '.join(verbs)})" if verbs else "")
            lines.append(f"    {state} --> {target}: {label}")
    lines += [f"    {State.CLOSED} --> [*]", "```"]
    return "\n".join(lines)


def render_commands() -> str:
    states = [state for state, row in m.COMMANDS.items() if row]
    rows = ["| verb | " + " | ".join(states) + " |", "|---" * (len(states) + 1) + "|"]
    verbs = dict.fromkeys(verb for state in states for verb in m.COMMANDS[state])
    for verb in verbs:
        cells = []
        for state in states:
            rule = m.COMMANDS[state][verb]
            if isinstance(rule, v.Verdict):
                cells.append(f"`{rule.code} {rule.status}` {rule.reason}")
            else:
                cells.append(f"→ {m.TRANSITIONS[state][rule.then]}" if rule.then else "runs")
        rows.append(f"| {verb} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def render_page(text: str) -> str:
    return replace_between(text, f"{render_diagram()}\n\n{render_commands()}", BEGIN, END)


def test_the_page_is_generated_from_the_tables() -> None:
    check_generated(PAGE, render_page, "tests.core.test_smtp_machine")


def test_the_page_changes_with_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check above can fail: a changed cell changes the rendered page.
    before = render_commands()
    row = dict(m.COMMANDS[State.GREETED], RCPT=m.Allow(Event.MAIL))
    monkeypatch.setitem(m.COMMANDS, State.GREETED, row)
    assert render_commands() != before
    moves = {**m.TRANSITIONS[State.DATA], Event.QUIT: State.CLOSED}
    diagram = render_diagram()
    monkeypatch.setitem(m.TRANSITIONS, State.DATA, moves)
    assert render_diagram() != diagram


if __name__ == "__main__":
    PAGE.write_text(render_page(PAGE.read_text()))
