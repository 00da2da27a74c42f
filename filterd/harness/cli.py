"""`filterd smuggle HOST:PORT`: probe one SMTP server for SMTP smuggling.

Exit status: 0 when no probe got a smuggled message through, 1 when one did (a probe is
EXPLOITABLE), 2 on usage errors, connection errors, or a probe that could not run (ERROR).
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
from collections.abc import Callable, Sequence

from filterd.harness import catalogue, mynetworks, report, session
from filterd.harness.catalogue import Probe, Values
from filterd.harness.probe import Result, run_probe
from filterd.harness.session import Discovery, SetupError, Target
from filterd.harness.sink import Arrivals, Sink, arrivals
from filterd.harness.verdict import Verdict, with_sink

EXIT_CLEAN, EXIT_SMUGGLED, EXIT_ERROR = 0, 1, 2

VERDICT_HELP = """\
verdicts:
  EXPLOITABLE         the fake sequence ended DATA and a smuggled transaction was accepted
                      (or the --sink received the smuggled message): exit status 1
  HYGIENE             as EXPLOITABLE, for a sequence a compliant relay dot-stuffs: it only
                      works on a direct connection, so it is RFC hygiene, not an exploit
  EOD-ACCEPTED        the fake sequence ended DATA, but the smuggled transaction was stopped
  TREATED-AS-CONTENT  the sequence stayed in the message (the real terminator got 2xx)
  REJECTED            the server refused the input (4xx/5xx or closed the connection)
  BLOCKED-BY-SYNC     the server refused unsynchronised (pipelined or early) input
  LENIENT             the server accepted protocol input a strict server refuses
  DISCARDED           plaintext sent before STARTTLS was thrown away (P08, safe)
  PASS / FAIL         controls C01 and C02
  NOT-APPLICABLE      the probe needs CHUNKING or STARTTLS and the server does not offer
                      it, or (P06) the server refuses HELO
  ERROR               the probe could not run (setup refused, no reply): exit status 2
kinds: exploitable (deliverable through compliant relays), hygiene (a compliant relay
dot-stuffs it, or it holds a real terminator), control, protocol.
variant ids of the exploitable sequences: -B smuggled BDAT, -L LF-only carrier, -LB both,
-S split write (each smuggled command after the previous reply or --pause).
"""

RUN_TOKEN = re.compile(rf"[a-z0-9]{{{catalogue.RUN_TOKEN_LENGTH}}}")


def _address(text: str) -> tuple[str, int]:
    """HOST:PORT, or [IPV6]:PORT."""
    match = re.fullmatch(r"\[([^]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return host, port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected 0 to 3600 seconds, got {text!r}")
    return value


def _run_token(text: str) -> str:
    if RUN_TOKEN.fullmatch(text) is None:
        raise argparse.ArgumentTypeError("expected 8 characters from a-z and 0-9")
    return text


def _probe_id(text: str) -> str:
    probe_id = text.upper()
    if probe_id not in catalogue.BY_ID:
        raise argparse.ArgumentTypeError(f"unknown probe {text!r} (see --list)")
    return probe_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = VERDICT_HELP
    parser.add_argument(
        "target",
        type=_address,
        nargs="?",
        metavar="HOST:PORT",
        help="the SMTP server to probe; nothing else is contacted",
    )
    parser.add_argument(
        "--from",
        dest="sender",
        metavar="ADDR",
        help="envelope sender (default postmaster@<greeting hostname>)",
    )
    parser.add_argument(
        "--to",
        dest="recipient",
        metavar="ADDR",
        help="envelope recipient (default postmaster@<greeting hostname>)",
    )
    parser.add_argument(
        "--smuggled-from",
        metavar="ADDR",
        help="sender of the smuggled transaction (default: --from)",
    )
    parser.add_argument(
        "--helo",
        default="filterd-smuggle.invalid",
        metavar="NAME",
        help="name for EHLO/HELO (default %(default)s)",
    )
    parser.add_argument(
        "--probe",
        dest="probes",
        type=_probe_id,
        nargs="+",
        action="extend",
        metavar="ID",
        help="run only these probes (default: all)",
    )
    parser.add_argument("--list", action="store_true", help="list the catalogue and exit")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=3.0,
        metavar="S",
        help="phase-1 window and per-reply deadline in seconds (default 3)",
    )
    parser.add_argument(
        "--pause",
        type=_seconds,
        default=0.5,
        metavar="S",
        help="split-write probes (-S): longest wait for a reply before each smuggled command "
        "(default 0.5)",
    )
    parser.add_argument(
        "-v",
        "--evidence",
        action="store_true",
        help="also print the settings and every probe's bytes sent and replies received",
    )
    parser.add_argument(
        "--starttls", action="store_true", help="run every probe inside TLS (STARTTLS after EHLO)"
    )
    parser.add_argument(
        "--sink",
        type=_address,
        metavar="HOST:PORT",
        help="also listen here as the final destination of a relay chain and "
        "count the messages that arrive",
    )
    parser.add_argument(
        "--sink-wait",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="how long to wait for relayed messages (default 10)",
    )
    parser.add_argument(
        "--run-id",
        type=_run_token,
        metavar="TOKEN",
        help="8 characters [a-z0-9] naming this run (default: random)",
    )


def _list() -> str:
    rows = [
        f"{p.id}  {p.kind.value:<11}  {p.sequence!r:<24}  {p.target} [{p.source}]"
        for p in catalogue.CATALOGUE
    ]
    return "\n".join(rows)


def _values(args: argparse.Namespace, found: Discovery) -> Values:
    default = f"postmaster@{found.hostname}"
    sender = args.sender or default
    return Values(
        sender=sender,
        recipient=args.recipient or default,
        smuggled_sender=args.smuggled_from or sender,
        helo=args.helo,
        run=args.run_id or secrets.token_hex(catalogue.RUN_TOKEN_LENGTH // 2),
    )


def _exit_code(results: Sequence[Result]) -> int:
    verdicts = {result.decision.verdict for result in results}
    if Verdict.EXPLOITABLE in verdicts:
        return EXIT_SMUGGLED
    return EXIT_ERROR if Verdict.ERROR in verdicts else EXIT_CLEAN


def _run_probes(probes: Sequence[Probe], target: Target, values: Values) -> list[Result]:
    # One probe at a time: at most one connection to the target is ever open.
    return [run_probe(probe, target, values) for probe in probes]


def _with_sink(
    results: list[Result], args: argparse.Namespace, values: Values, sink: Sink
) -> tuple[list[Result], dict[str, Arrivals]]:
    expected = sum(result.decision.accepted for result in results)
    messages = sink.wait_for(values.run, expected, args.sink_wait)
    counts = {r.probe.id: arrivals(messages, values.run, r.probe.id) for r in results}
    judged = [
        Result(
            r.probe,
            with_sink(r.probe, r.decision, counts[r.probe.id].smuggled),
            r.transcript,
            r.local_address,
        )
        for r in results
    ]
    return judged, counts


class RunError(Exception):
    """The run could not start; the message says why (exit status 2)."""


def _warn(text: str) -> None:
    print(f"filterd smuggle: warning: {text}", file=sys.stderr)


def _start_sink(args: argparse.Namespace) -> Sink | None:
    if args.sink is None:
        return None
    sink = Sink(*args.sink)
    try:
        sink.start()
    except (OSError, RuntimeError) as error:
        raise RunError(f"cannot listen on the sink: {error}") from error
    return sink


def execute(args: argparse.Namespace, warn: Callable[[str], None] = _warn) -> report.Run:
    """Discover the target, run the probes, judge them. `warn` gets each warning before the
    probes run. Raises RunError when the run cannot start."""
    if args.target is None:
        raise RunError("HOST:PORT is required")
    host, port = args.target
    target = Target(host, port, args.timeout, args.starttls, args.pause)
    try:
        found = session.discover(target, args.helo)
    except (OSError, SetupError) as error:
        raise RunError(f"cannot talk to {host}:{port}: {error}") from error
    if not found.hostname and not (args.sender and args.recipient):
        raise RunError("no hostname in the greeting; give --from and --to")
    values = _values(args, found)
    said = found.greeting.lines + found.ehlo.lines[:1]
    warning = mynetworks.source_warning(found.local_address, said)
    warnings = (warning,) if warning else ()
    for text in warnings:
        warn(text)
    probes = [catalogue.BY_ID[i] for i in args.probes] if args.probes else catalogue.CATALOGUE
    sink = _start_sink(args)
    try:
        results = _run_probes(probes, target, values)
        counts = None
        if sink is not None:
            results, counts = _with_sink(results, args, values, sink)
    finally:
        if sink is not None:
            sink.stop()
    return report.Run(
        target=f"{host}:{port}",
        greeting=found.greeting.show(),
        keywords=tuple(sorted(found.keywords)),
        source_address=found.local_address,
        values=values,
        timeout=args.timeout,
        pause=args.pause,
        warnings=warnings,
        results=tuple(results),
        sink=counts,
        exit_code=_exit_code(results),
    )


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(_list())
        return EXIT_CLEAN
    try:
        outcome = execute(args)
    except RunError as error:
        print(f"filterd smuggle: {error}", file=sys.stderr)
        return EXIT_ERROR
    # The warning went to stderr once; the JSON document carries it too, the table does not.
    print(report.to_json(outcome) if args.json else report.to_table(outcome, args.evidence))
    return outcome.exit_code
