"""Runs one probe against a server and judges it.

A probe opens its own connection, brings the session to its stage with synchronised steps,
writes `prefix + sequence + suffix` in one write, sends each delayed part (split-write probes)
once the previous one got its reply or the pause passed, reads for the phase-1 window, sends
the closer when DATA may still be open, reads again, and hands the replies to verdict.decide.
One probe runs at a time and every read has a deadline, so a run is bounded by the catalogue
size times a few windows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from filterd.harness import session
from filterd.harness.catalogue import Probe, Stage, Values, render
from filterd.harness.client import Client, Sent
from filterd.harness.reply import Reply
from filterd.harness.session import SetupError, Target
from filterd.harness.verdict import Decision, Observation, Verdict, decide

# After a closer whose reply came, further replies arrive at once if DATA had ended early:
# wait this long for them, or half the window when that is shorter (a fast, local target).
GRACE = 0.25


def grace(timeout: float) -> float:
    return min(GRACE, timeout / 2)


@dataclass(frozen=True)
class Result:
    probe: Probe
    decision: Decision
    transcript: tuple[Sent | Reply, ...]
    local_address: str


def _closer_due(probe: Probe, during: list[Reply], client: Client) -> bool:
    """Send the real terminator unless DATA certainly ended and no new DATA is open."""
    if not probe.closer or client.closed:
        return False
    # A 354 last means the smuggled DATA is open and waits for its terminator.
    return not during or during[-1].reply_class == 3


def _read_window(client: Client, timeout: float) -> list[Reply]:
    """Every reply within the window; stop early at a close or a 354 (DATA open again)."""
    deadline = time.monotonic() + timeout
    replies: list[Reply] = []
    while not client.closed and (remaining := deadline - time.monotonic()) > 0:
        got = client.read(1, remaining)
        replies += got
        if got and got[-1].reply_class == 3:
            break
    return replies


def _send_delayed(client: Client, probe: Probe, values: Values, pause: float) -> list[Reply]:
    """Each delayed part once the previous write got a reply, or after `pause` without one."""
    replies: list[Reply] = []
    for part in probe.delayed:
        replies += client.read(1, pause)
        client.send(render(part, probe.id, values))
    return replies


def _observe(client: Client, probe: Probe, values: Values, target: Target) -> Observation:
    timeout = target.timeout
    client.send(render(probe.prefix + probe.sequence + probe.suffix, probe.id, values))
    during = _send_delayed(client, probe, values, target.pause)
    if not (during and during[-1].reply_class == 3):
        # A 354 last means the smuggled content already went out after it: close at once.
        during += _read_window(client, timeout)
    after: list[Reply] = []
    if _closer_due(probe, during, client):
        client.send(render(probe.closer, probe.id, values))
        after = client.read(1, timeout)
        # Content earns one reply; anything more means DATA had ended after the window.
        after += client.read(len(probe.expect), grace(timeout)) if after else []
    return Observation(tuple(during), tuple(after), client.closed)


def _observe_starttls(client: Client, probe: Probe, values: Values, timeout: float) -> Observation:
    client.send(render(probe.sequence, probe.id, values))
    during = client.read(1, timeout)
    if not during or during[0].reply_class != 2:
        return Observation(tuple(during), (), client.closed)
    try:
        client.starttls(timeout)
    except OSError as error:  # ssl.SSLError is an OSError
        return Observation(tuple(during), (), True, f"TLS handshake failed: {error}")
    # RFC 3207 §4.2: nothing sent before the handshake may be acted on after it.
    unprompted = client.read(1, timeout)
    return Observation(tuple(during), tuple(unprompted), client.closed)


def _helo_session(client: Client, target: Target, values: Values) -> Decision | None:
    """A plain (non-ESMTP) session: HELO as the first command, or the first after the TLS
    handshake (RFC 3207 §4.2 resets the session), so no server sees HELO after EHLO. A server
    that refuses HELO cannot have a HELO session: the probe does not apply."""
    session.expect_reply(client, "greeting", 2, target.timeout)
    if target.starttls:
        session.ehlo(client, values.helo, target.timeout)
        session.handshake(client, target.timeout)
    client.send(b"HELO " + values.helo.encode() + b"\r\n")
    replies = client.read(1, target.timeout)
    if replies and replies[0].reply_class == 5:
        # e.g. OpenSMTPD "503 5.5.1 Invalid command: Already identified", or an ESMTP-only
        # server; a 5xx here says nothing about pipelining.
        return Decision(Verdict.NOT_APPLICABLE, f"HELO refused: {replies[0].show()}")
    if not replies or replies[0].reply_class != 2:
        raise SetupError(f"HELO: {replies[0].show() if replies else 'no reply'}")
    return None


def _reach_stage(client: Client, probe: Probe, target: Target, values: Values) -> Decision | None:
    """Bring the session to the probe's stage; a Decision when the probe cannot apply."""
    if probe.stage is Stage.AFTER_GREETING:
        session.expect_reply(client, "greeting", 2, target.timeout)
        if target.starttls:
            session.ehlo(client, values.helo, target.timeout)
            session.tls(client, values.helo, target.timeout)
        return None
    if probe.stage is Stage.AFTER_HELO:
        return _helo_session(client, target, values)
    keywords = session.open_session(client, target, values.helo)
    if probe.requires and probe.requires not in keywords:
        return Decision(Verdict.NOT_APPLICABLE, f"the server does not offer {probe.requires}")
    if probe.stage is Stage.IN_DATA:
        session.start_data(client, values.sender, values.recipient, target.timeout)
    return None


def _run(client: Client, probe: Probe, target: Target, values: Values) -> Decision:
    if probe.stage is Stage.BEFORE_GREETING:
        client.send(render(probe.sequence, probe.id, values))
        replies = client.read(len(probe.expect), target.timeout)
        return decide(probe, Observation(tuple(replies), (), client.closed))
    skipped = _reach_stage(client, probe, target, values)
    if skipped is not None:
        return skipped
    if probe.stage is Stage.STARTTLS:
        obs = _observe_starttls(client, probe, values, target.timeout)
    else:
        obs = _observe(client, probe, values, target)
    return decide(probe, obs)


def run_probe(probe: Probe, target: Target, values: Values) -> Result:
    try:
        client = Client.connect(target.host, target.port, target.timeout)
    except OSError as error:
        return Result(probe, Decision(Verdict.ERROR, f"connection failed: {error}"), (), "")
    try:
        decision = _run(client, probe, target, values)
    except SetupError as error:
        decision = Decision(Verdict.ERROR, f"setup failed at {error}")
    finally:
        if not client.closed:
            session.quit_session(client, min(target.timeout, 1.0))
        local = client.local_address
        client.close()
    return Result(probe, decision, tuple(client.transcript), local)
