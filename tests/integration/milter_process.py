"""`filterd serve --milter ...` as a separate process, the way Postfix meets it in production.

Registered with the test bed (tests/testbed/common.py), so a crashed test cannot leave it
running; `close()` sends SIGTERM, then SIGKILL if it does not stop (tests/processes.py).
"""

from __future__ import annotations

from tests.processes import FilterdProcess


class FilterdMilter(FilterdProcess):
    """The milter endpoint on `listen`, scanning with the clamd at `clamd`, JSON logs."""

    def __init__(self, listen: str, clamd: str, settings: str = "") -> None:
        super().__init__(["--milter", listen, "--clamd", clamd], listen, settings)
