"""The `started` line names the configuration file as an absolute path and lists every
listener, the metrics endpoint's too, in one process and in the workers' parent."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest

from tests.test_app_process import CLAMD, ROOT, serving

# each case: an id and the --workers value
CASES = [("one-process", 1), ("two-workers", 2)]


@pytest.mark.parametrize("workers", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_config_absolute_and_metrics_listed(tmp_path: Path, workers: int) -> None:
    cfg = tmp_path / "filterd.toml"
    cfg.write_text('[log]\nformat = "json"\n[metrics]\nlisten = "127.0.0.1:0"\n')
    relative = os.path.relpath(cfg, ROOT)  # serve runs in ROOT
    assert not Path(relative).is_absolute()
    with serving(tmp_path, "--config", relative, "--proxy", "127.0.0.1:0", "--clamd", CLAMD,
                 workers=workers) as served:  # fmt: skip
        (started,) = [e for e in served.wait_for("started") if e["event"] == "started"]
        (address,) = started["listeners"].get("metrics", [None])
        assert address is not None, started
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
            scraped = reply.read().decode()
        assert served.stop() == 0
    got = (started["config"], address.startswith("127.0.0.1:"), address.endswith(":0"))
    assert got == (str(cfg), True, False)
    assert "filterd_sessions_open" in scraped


def test_no_metrics_listener_without_listen(tmp_path: Path) -> None:
    with serving(tmp_path, "--proxy", "127.0.0.1:0", "--clamd", CLAMD) as served:
        (started,) = [e for e in served.wait_for("started") if e["event"] == "started"]
        assert served.stop() == 0
    assert list(started["listeners"]) == ["proxy"]
