"""Messages per second through a real Postfix with filterd as its Milter, against no Milter.

    .venv/bin/python -m bench.milter [--messages N] [--sessions S] [--size BYTES] [--repeat R]

Needs root, Postfix and clamd (as the test bed does). It starts a private clamd, a
`filterd serve --milter` process and two private Postfix instances that are identical except
for smtpd_milters, and drives each with Postfix's own smtp-source(1): S parallel sessions,
N messages of BYTES each. Postfix hands accepted mail to its discard(8) transport, so the
figure is the before-queue path (smtpd, cleanup, the Milter, the scan), not delivery.
Each figure is the median of R runs; the last line is the ratio milter / no milter.
"""

from __future__ import annotations

import argparse

from bench.figures import print_rates
from bench.load import DISCARD, cpu_seconds, profiled, running, smtp_source
from tests.integration.milter_process import FilterdMilter
from tests.testbed.clamd import Clamd
from tests.testbed.common import free_port, private_dir, remove_dir
from tests.testbed.postfix import Postfix


def rate(postfix: Postfix, messages: int, sessions: int, size: int, reuse: bool) -> float:
    """Messages per second smtp-source gets accepted."""
    return messages / smtp_source(postfix, messages, sessions, size, one_per_session=not reuse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--unix", action="store_true", help="Milter on a UNIX socket, not TCP")
    parser.add_argument(
        "--reuse", action="store_true", help="several messages per SMTP session (no -d)"
    )
    parser.add_argument("--profile", help="py-spy raw output of one more run (bench/profile.py)")
    args = parser.parse_args()

    clamd = Clamd()
    directory = private_dir("filterd-bench-")
    listen = f"unix:{directory}/milter.sock" if args.unix else f"inet:127.0.0.1:{free_port()}"
    group = '[milter]\nsocket_group = "postfix"\n' if args.unix else ""
    filterd = FilterdMilter(listen, clamd.address, group)
    filterd.command += ["--workers", "1"]  # one process: the CPU figure reads its /proc
    plain = Postfix("plain", main_cf=DISCARD)
    milter = Postfix("milter", milter=listen, main_cf=DISCARD)
    with running(clamd, filterd, plain, milter):
        figures: dict[str, list[float]] = {"no milter": [], "filterd milter": []}
        shape = (args.messages, args.sessions, args.size, args.reuse)
        rate(milter, 50, 5, args.size, args.reuse)  # warm-up: first connections and scans
        cpu: list[float] = []
        pid = filterd.process.pid if filterd.process else None
        for _ in range(args.repeat):
            figures["no milter"].append(rate(plain, *shape))
            used = cpu_seconds(pid)
            figures["filterd milter"].append(rate(milter, *shape))
            cpu.append((cpu_seconds(pid) - used) / args.messages)
        with profiled(pid, args.profile):
            rate(milter, *shape)
        errors = filterd.log_text().count('"level": "error"')
        accepted = filterd.log_text().count('"reason": "accepted"')
    remove_dir(directory)
    transport = "UNIX socket" if args.unix else "TCP"
    per = "several messages" if args.reuse else "one message"
    print(f"{args.messages} messages of {args.size} bytes, {args.sessions} parallel sessions, "
          f"{per} per session, Milter over {transport}, median of {args.repeat}")  # fmt: skip
    print_rates(figures, cpu, filtered="filterd milter", plain="no milter")
    print(f"{'scanned':>15}: {accepted} messages accepted by filterd, {errors} errors logged")


if __name__ == "__main__":
    main()
