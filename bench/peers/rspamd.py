"""rspamd 3.4 as a peer: one `rspamd_proxy` worker in Milter mode that scans by itself
(`self_scan`), with only its antivirus module (clamav over clamd's UNIX socket) at work.

It runs Debian's stock /etc/rspamd/rspamd.conf with its own directories given as variables
(`--var=NAME=VALUE`; the `=` form is the one rspamd 3.4 takes), and the changes in its own
local.d and override.d. The first start in a fresh directory takes about 20 s.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Final

from bench.peers.processes import RSPAMD, ChildProcess

STOCK_CONFIG: Final = "/etc/rspamd/rspamd.conf"
USER: Final = "_rspamd"

# The Milter listener, scanning by itself (self_scan is an option of its upstream); the
# normal and controller workers are not needed.
PROXY: Final = """\
bind_socket = "127.0.0.1:{port}";
milter = yes;
timeout = 120s;
count = 1;
upstream "local" {{
  default = yes;
  self_scan = yes;
}}
"""
DISABLED: Final = "enabled = false;\n"
# scan_mime_parts = false: the whole message goes to clamd, as with the other contenders.
ANTIVIRUS: Final = """\
clamav {{
  type = "clamav";
  servers = "{socket}";
  action = "reject";
  symbol = "CLAM_VIRUS";
  scan_mime_parts = false;
}}
"""
# Only the antivirus group runs. In 3.4 a rule with ip = "0.0.0.0/0" never matches, so the
# address space is given as its two halves.
SETTINGS: Final = """\
antivirus_only {
  priority = high;
  ip = ["0.0.0.0/1", "128.0.0.0/1"];
  apply {
    groups_enabled = ["antivirus"];
  }
}
"""


class Rspamd(ChildProcess):
    label = "rspamd"

    def __init__(self, port: int, clamd_socket: Path) -> None:
        super().__init__(port)
        self.local = self.directory / "conf"
        self.work = {name: self.directory / name for name in ("db", "run", "log")}
        files = {
            "override.d/worker-proxy.inc": PROXY.format(port=port),
            "override.d/worker-normal.inc": DISABLED,
            "override.d/worker-controller.inc": DISABLED,
            "local.d/antivirus.conf": ANTIVIRUS.format(socket=clamd_socket),
            "local.d/settings.conf": SETTINGS,
        }
        for name, text in files.items():
            path = self.local / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        user = pwd.getpwnam(USER)
        for path in self.work.values():
            path.mkdir()
            os.chown(path, user.pw_uid, user.pw_gid)

    def command(self) -> list[str]:
        variables = {
            "LOCAL_CONFDIR": self.local,
            "DBDIR": self.work["db"],
            "RUNDIR": self.work["run"],
            "LOGDIR": self.work["log"],
        }
        return [
            RSPAMD, "-f", "-u", USER, "-g", USER, "-c", STOCK_CONFIG,
            *(f"--var={name}={value}" for name, value in variables.items()),
        ]  # fmt: skip
