"""The clamd pool in /metrics: slots in use and their limit, the queue, and per address
healthy (0/1), scans and errors; in one process and summed over two workers.

Read from ClamdScanner.slots and .stats() (filterd/scan/clamd.py): at scrape time in one
process, published once a second by each worker with `[server] workers` above 1.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from filterd import metrics
from filterd.config import MetricsSettings
from filterd.scan import ClamdScanner
from tests.test_app_process import serving
from tests.test_workers_serve import proxy_settings, scraped, send
from tests.testbed.clamd import Clamd
from tests.testbed.common import free_port
from tests.testbed.sink import Sink


class PoolEndpoint:
    def __init__(self, scanner: ClamdScanner) -> None:
        self.name = "proxy"
        self.sessions: dict[int, None] = {}
        self.pipeline = type("P", (), {"scanner": scanner, "budget": None})()


def test_one_process_scrape_reads_the_pool(clamd: Clamd) -> None:
    """A refused address listed first takes the first scan, fails and is retried on the
    real clamd; the next two go to the healthy one."""
    refused = f"tcp:127.0.0.1:{free_port()}"
    scanner = ClamdScanner([refused, clamd.address], max_concurrent=3)

    async def three_scans() -> None:
        for _ in range(3):
            result = await scanner.scan(b"Subject: clean\r\n\r\nhello\r\n")
            assert result.address == clamd.address, result

    asyncio.run(three_scans())
    registry = CollectorRegistry()
    port = free_port()
    running = metrics.start_metrics(
        MetricsSettings(f"127.0.0.1:{port}"), [PoolEndpoint(scanner)], registry
    )
    try:
        got = scraped(port)
    finally:
        running.stop()
    # each row: a sample of the scrape and the value it must have
    table = [
        ('filterd_clamd_slots{kind="in_use"}', 0),
        ('filterd_clamd_slots{kind="limit"}', 6),  # 3 per address
        ("filterd_clamd_queued", 0),
        (f'filterd_clamd_healthy{{clamd="{refused}"}}', 0),
        (f'filterd_clamd_healthy{{clamd="{clamd.address}"}}', 1),
        (f'filterd_clamd_scans_total{{clamd="{refused}"}}', 1),
        (f'filterd_clamd_scans_total{{clamd="{clamd.address}"}}', 3),
        (f'filterd_clamd_errors_total{{clamd="{refused}"}}', 1),
        (f'filterd_clamd_errors_total{{clamd="{clamd.address}"}}', 0),
    ]
    assert [(name, got.get(name)) for name, _ in table] == table


# each case: an id, and the --workers value
WORKERS = [("one-process", 1), ("two-workers", 2)]


@pytest.mark.parametrize("workers", [c[1] for c in WORKERS], ids=[c[0] for c in WORKERS])
def test_serve_scrape_after_real_messages(
    tmp_path: Path, clamd: Clamd, sink: Sink, workers: int
) -> None:
    port, listen = free_port(), free_port()
    cfg = tmp_path / "filterd.toml"
    cfg.write_text(proxy_settings(clamd, sink, port, listen))
    scans = f'filterd_clamd_scans_total{{clamd="{clamd.address}"}}'
    with serving(tmp_path, "--config", str(cfg), workers=workers) as served:
        served.wait_for("started")
        for number in range(6):
            send(port, number)
        deadline = time.monotonic() + 10  # workers publish once a second
        while (got := scraped(listen)).get(scans) != 6:
            assert time.monotonic() < deadline, got
            time.sleep(0.2)
        assert served.stop() == 0
    table = [
        ('filterd_clamd_slots{kind="in_use"}', 0),
        # the default max_concurrent, 10: the workers' shares add up to it
        ('filterd_clamd_slots{kind="limit"}', 10),
        ("filterd_clamd_queued", 0),
        (f'filterd_clamd_healthy{{clamd="{clamd.address}"}}', 1),
        (scans, 6),
        (f'filterd_clamd_errors_total{{clamd="{clamd.address}"}}', 0),
    ]
    assert [(name, got.get(name)) for name, _ in table] == table
