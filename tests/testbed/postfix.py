"""A private Postfix instance for tests: own config, queue and data directories, loopback only.

Nothing here reads or writes /etc/postfix or a system queue: every command gets `-c DIR`
(postfix(1), postqueue(1), postconf(1)), and running as root lets a non-default config
directory be used without listing it in `alternate_config_directories` (postconf(5)), which
matters because this machine has no /etc/postfix/main.cf at all.

Modes:
- plain:  an smtpd on a free loopback port; everything accepted is relayed to a sink.
- milter: plain plus `smtpd_milters`.
- proxy:  a front smtpd with `smtpd_proxy_filter` and a reinjection smtpd (SMTPD_PROXY_README).

The master.cf service entries are data (`PLAIN_SERVICES`, `PROXY_SERVICES`) with `{name}`
placeholders, so the project's own `master.cf.d/` snippets can be rendered in their place with
`render_master_cf`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, TypedDict, Unpack

from tests.testbed.common import (
    StartupError,
    free_port,
    pid_alive,
    private_dir,
    read_log,
    register,
    remove_dir,
    require_programs,
    require_root,
    tail,
    unavailable,
    unregister,
    wait_until,
)
from tests.testbed.sink import Sink

Mode = Literal["plain", "milter", "proxy"]

POSTFIX: Final = "/usr/sbin/postfix"
POSTQUEUE: Final = "/usr/sbin/postqueue"
POSTCONF: Final = "/usr/sbin/postconf"
MYHOSTNAME: Final = "testbed.example.test"

# master(5) internal services; chroot "n" everywhere since the queue is a private temp dir.
BASE_MASTER_CF: Final = """\
# service  type  private unpriv  chroot  wakeup  maxproc command + args
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
# Postfix: maillog_file needs the postlog service (there is no syslog here).
postlog    unix-dgram n  -       n       -       1       postlogd
"""

# The smtpd that test clients talk to. {front_options} receives the rendered `-o` overrides.
PLAIN_SERVICES: Final = """\
127.0.0.1:{smtpd_port} inet n - n - - smtpd
{front_options}
"""

# SMTPD_PROXY_README layout, as in master.cf.d/proxy.cf.
PROXY_SERVICES: Final = """\
# Before-filter smtpd: the one clients talk to; each message goes through the filter.
127.0.0.1:{smtpd_port} inet n - n - - smtpd
  -o smtpd_proxy_filter=127.0.0.1:{filter_port}
{front_options}
# After-filter (reinjection) smtpd: the filter relays accepted mail here.
127.0.0.1:{downstream_port} inet n - n - - smtpd
  -o syslog_name=postfix/reinject
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
  -o smtpd_client_restrictions=
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_relay_restrictions=
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o smtpd_data_restrictions=
  -o mynetworks=127.0.0.0/8
  -o receive_override_options=no_unknown_recipient_checks
  -o smtpd_proxy_filter=
  -o smtpd_milters=
{downstream_options}
"""

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def render_options(overrides: Mapping[str, str]) -> str:
    """`-o name=value` lines for master.cf; values with spaces use the `{ name = value }` form."""
    lines = []
    for name, value in overrides.items():
        if re.search(r"\s", value) or value.startswith("{"):
            # master(5), Postfix >= 3.0: "-o { name = value }" allows whitespace in the value.
            lines.append(f"  -o {{ {name} = {value} }}")
        else:
            lines.append(f"  -o {name}={value}")
    return "\n".join(lines)


def render_master_cf(
    services: str, values: Mapping[str, object], base: str = BASE_MASTER_CF
) -> str:
    """`base` plus `services` with every `{name}` whose name is in `values` replaced.

    Unknown `{...}` are left alone, so Postfix's own `${recipient}`-style macros survive.
    Empty lines (e.g. an empty `{front_options}`) are dropped: master.cf continuation lines
    must follow their service line directly.
    """

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        return str(values[key]) if key in values else match.group(0)

    text = _PLACEHOLDER.sub(substitute, services)
    lines = [line for line in (base + text).splitlines() if line.strip()]
    return "\n".join(lines) + "\n"


def render_main_cf(settings: Mapping[str, str]) -> str:
    return "".join(f"{name} = {value}\n" for name, value in settings.items())


class Postfix:
    """One private Postfix instance (master daemon plus its services)."""

    def __init__(
        self,
        mode: Mode = "plain",
        *,
        sink: Sink | None = None,
        main_cf: Mapping[str, str] | None = None,
        smtpd_overrides: Mapping[str, str] | None = None,
        downstream_overrides: Mapping[str, str] | None = None,
        milter: str | None = None,
        milter_default_action: str = "tempfail",
        filter_port: int | None = None,
        smtpd_port: int | None = None,
        downstream_port: int | None = None,
        services: str | None = None,
    ) -> None:
        if mode not in ("plain", "milter", "proxy"):
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "milter" and not milter:
            raise ValueError("milter mode needs milter='inet:127.0.0.1:PORT' or 'unix:PATH'")
        self.mode: Final = mode
        self.milter = milter
        self.milter_default_action = milter_default_action
        self.main_cf_overrides = dict(main_cf or {})
        self.smtpd_overrides = dict(smtpd_overrides or {})
        self.downstream_overrides = dict(downstream_overrides or {})
        self.services = services
        self._fixed_ports = (smtpd_port, downstream_port, filter_port)
        self.smtpd_port = smtpd_port or 0
        self.downstream_port: int | None = None
        self.filter_port: int | None = None
        self._owns_sink = sink is None
        self.sink = sink if sink is not None else Sink()
        self.directory = private_dir("filterd-postfix-")
        self.config_directory = self.directory / "etc"
        self.queue_directory = self.directory / "spool"
        self.data_directory = self.directory / "data"
        self.maillog_path = self.directory / "log" / "maillog"
        self._master_pid: int | None = None
        self._closed = False

    @property
    def name(self) -> str:
        return f"postfix[{self.mode}, {self.directory}]"

    # --- configuration ------------------------------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        """The main.cf settings: test bed defaults, then the mode's, then the caller's."""
        settings: dict[str, str] = {
            # Postfix: compatibility_level (postconf(5)); 3.6 silences the backwards-compat notes.
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_directory),
            "data_directory": str(self.data_directory),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": MYHOSTNAME,
            "mydomain": "example.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            # No postmaster notices (e.g. a transcript per proxy failure): the sink must see
            # only the tests' own mail (notify_classes, postconf(5)).
            "notify_classes": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            # Everything is relayed to the sink; brackets suppress MX lookups (postconf(5)).
            "relayhost": self.sink.relayhost,
            "default_transport": "smtp",
            "relay_transport": "smtp",
            "smtp_dns_support_level": "disabled",
            # Keep the queued content as the client sent it: no header rewriting or added
            # Message-ID/Date for "local" clients (local_header_rewrite_clients, postconf(5)),
            # and no folding of long lines on the way to the sink (smtp_line_length_limit).
            "local_header_rewrite_clients": "",
            "smtp_line_length_limit": "0",
            # Fast delivery: no inflow throttling, quick retries if the sink was down.
            "in_flow_delay": "0",
            "smtp_connection_cache_on_demand": "yes",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            # Postfix: maillog_file, maillog_file_prefixes (postconf(5), MAILLOG_README).
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": str(self.directory),
        }
        if self.mode == "milter":
            assert self.milter is not None
            settings.update(
                {
                    "smtpd_milters": self.milter,
                    "milter_default_action": self.milter_default_action,
                    "milter_protocol": "6",
                }
            )
        settings.update(self.main_cf_overrides)
        return settings

    def master_cf(self) -> str:
        services = self.services or (PROXY_SERVICES if self.mode == "proxy" else PLAIN_SERVICES)
        values: dict[str, object] = {
            "smtpd_port": self.smtpd_port,
            "front_options": render_options(self.smtpd_overrides),
            "downstream_options": render_options(self.downstream_overrides),
        }
        if self.downstream_port is not None:
            values["downstream_port"] = self.downstream_port
        if self.filter_port is not None:
            values["filter_port"] = self.filter_port
        return render_master_cf(services, values)

    def _choose_ports(self) -> None:
        smtpd_port, downstream_port, filter_port = self._fixed_ports
        self.smtpd_port = smtpd_port or free_port()
        if self.mode == "proxy":
            self.downstream_port = downstream_port or free_port()
            self.filter_port = filter_port or free_port()

    def _write_config(self) -> None:
        for path in (self.config_directory, self.queue_directory, self.maillog_path.parent):
            path.mkdir(exist_ok=True)
            path.chmod(0o755)
        self.data_directory.mkdir(exist_ok=True)
        # The postfix user owns data_directory (postconf(5) data_directory).
        user = pwd.getpwnam("postfix")
        os.chown(self.data_directory, user.pw_uid, user.pw_gid)
        files = {"main.cf": render_main_cf(self.main_cf()), "master.cf": self.master_cf()}
        past = time.time() - 60
        for name, text in files.items():
            path = self.config_directory / name
            path.write_text(text)
            # Postfix re-reads a "hot" config file (mtime within the last second, it may be
            # mid-edit), pausing 300 ms each time (dict_load_file_xt, util/dict.c): a freshly
            # written main.cf cost every Postfix command up to 2 s. Backdate it.
            os.utime(path, (past, past))

    # --- lifecycle ----------------------------------------------------------------------------

    def listening_ports(self) -> list[int]:
        ports = [self.smtpd_port]
        if self.downstream_port is not None:
            ports.append(self.downstream_port)
        return ports

    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Start Postfix and wait until every smtpd answers with a 220 greeting.

        Ports picked by the test bed can be taken by someone else between the pick and the
        bind; then it picks new ones and tries again (up to `attempts` times).
        """
        if self._closed:
            raise StartupError("this Postfix instance was closed")
        if self.is_running():
            return
        require_programs(POSTFIX, POSTQUEUE, POSTCONF)
        require_root("a private Postfix")
        try:
            pwd.getpwnam("postfix")
        except KeyError:
            unavailable("no 'postfix' user (install the postfix package)")
        self.sink.start()
        register(self)
        smtpd_port, downstream_port, _ = self._fixed_ports
        fixed = {port for port in (smtpd_port, downstream_port) if port}
        for attempt in range(1, attempts + 1):
            self._choose_ports()
            busy = [port for port in self.listening_ports() if not _bindable(port)]
            if busy and fixed.intersection(busy):
                raise StartupError(f"127.0.0.1 port(s) {sorted(busy)} already in use")
            if busy:
                continue  # lost the race for a port we picked: pick again
            self._write_config()
            try:
                self._start_once(timeout)
            except StartupError:
                self.stop()
                if attempt == attempts or fixed.issuperset(self.listening_ports()):
                    raise
            else:
                return
        raise StartupError(f"no free ports after {attempts} attempts")

    def _start_once(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        result = self._run(POSTFIX, "start", timeout=timeout)
        if result.returncode != 0:
            raise StartupError(
                f"postfix start failed ({result.returncode}): {result.stdout}{result.stderr}\n"
                f"{tail(self.maillog_path)}"
            )
        self._master_pid = self._read_master_pid()
        # In milter mode every SMTP connection also opens a milter session, so readiness is
        # checked without one: the listening socket in /proc/net/tcp (proc(5)). Elsewhere a
        # 220 greeting proves that master(8) can spawn a working smtpd.
        probe = _listening if self.mode == "milter" else _greets
        try:
            for port in self.listening_ports():
                wait_until(
                    functools.partial(probe, port),
                    timeout=max(0.1, deadline - time.monotonic()),
                    what=f"Postfix smtpd on 127.0.0.1:{port}",
                )
        except StartupError as exc:
            raise StartupError(f"{exc}\n{tail(self.maillog_path)}") from None

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.queue_directory / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def is_running(self) -> bool:
        pid = self._master_pid
        return pid is not None and pid_alive(pid)

    def stop(self, timeout: float = 10.0) -> None:
        """`postfix stop`, wait for the master to exit, SIGKILL its process group if needed."""
        pid = self._master_pid or self._read_master_pid()
        if pid is None or not pid_alive(pid):
            self._master_pid = None
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._run(POSTFIX, "stop", timeout=timeout)
        try:
            wait_until(lambda: not pid_alive(pid), timeout=timeout, what="the master to exit")
        except StartupError:
            # master(8) is a session and process group leader; its children share the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(StartupError):
                wait_until(lambda: not pid_alive(pid), timeout=timeout, what="SIGKILL")
        self._master_pid = None

    def close(self) -> None:
        """Stop Postfix (and the sink it owns) and remove the instance's directory."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            if self._owns_sink:
                self.sink.close()
            unregister(self)
            if not self.is_running():
                remove_dir(self.directory)

    def reload(self) -> None:
        """Rewrite main.cf/master.cf from the current settings and `postfix reload`."""
        self._write_config()
        self._check(POSTFIX, "reload")

    # --- queue and log ------------------------------------------------------------------------

    def postqueue(self, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        return self._check(POSTQUEUE, *args, timeout=timeout)

    def queue(self) -> list[dict[str, Any]]:
        """Queued messages, one dict per message (`postqueue -j`, postqueue(1))."""
        output = self.postqueue("-j").stdout
        return [json.loads(line) for line in output.splitlines() if line.strip()]

    def queue_is_empty(self) -> bool:
        return not self.queue()

    def wait_queue_empty(self, timeout: float = 10.0) -> None:
        """Wait until nothing is queued (delivery removes a message shortly after the sink 250)."""
        try:
            wait_until(self.queue_is_empty, timeout=timeout, what="an empty queue", interval=0.05)
        except StartupError as exc:
            raise AssertionError(f"{exc}; still queued: {self.queue()}") from None

    def queue_text(self) -> str:
        """The human-readable queue listing (`postqueue -p`)."""
        return self.postqueue("-p").stdout

    def flush(self) -> None:
        """Attempt delivery of all queued mail now (`postqueue -f`)."""
        self.postqueue("-f")

    def log_text(self) -> str:
        """The whole Postfix maillog so far."""
        return read_log(self.maillog_path)

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until the maillog matches regex `pattern` (postlogd writes asynchronously)."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text())
            if match is not None:
                return match
            if time.monotonic() >= deadline:
                raise AssertionError(f"maillog did not match {pattern!r} within {timeout:g}s")
            time.sleep(0.05)

    def postconf(self, name: str) -> str:
        """The effective value of one main.cf parameter (`postconf -h`)."""
        return self._check(POSTCONF, "-h", name).stdout.strip()

    # --- helpers ------------------------------------------------------------------------------

    def _run(
        self, program: str, *args: str, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MAIL_CONFIG": str(self.config_directory)}
        return subprocess.run(
            [program, "-c", str(self.config_directory), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    def _check(
        self, program: str, *args: str, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        result = self._run(program, *args, timeout=timeout)
        if result.returncode != 0:
            name = Path(program).name
            raise AssertionError(
                f"{name} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # master(8) sets SO_REUSEADDR too, so TIME_WAIT leftovers do not count as busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _listening(port: int) -> bool:
    """True when a TCP socket listens on 127.0.0.1:port (proc(5), /proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    try:
        table = Path("/proc/net/tcp").read_text()
    except OSError:
        return _greets(port)
    # Columns: sl local_address rem_address st ...; state 0A is LISTEN.
    return any(
        fields[1] == wanted and fields[3] == "0A"
        for fields in (line.split() for line in table.splitlines()[1:])
        if len(fields) > 3
    )


def _greets(port: int) -> bool:
    """True when an SMTP server on 127.0.0.1:port sends a 220 greeting (RFC 5321 §4.2)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as conn:
            conn.settimeout(2.0)
            greeting = conn.recv(512)
            with contextlib.suppress(OSError):
                conn.sendall(b"QUIT\r\n")
            return greeting.startswith(b"220")
    except OSError:
        return False


class PostfixOptions(TypedDict, total=False):
    """The keyword arguments of `Postfix` (see its constructor), as the factory passes them."""

    sink: Sink | None
    main_cf: Mapping[str, str] | None
    smtpd_overrides: Mapping[str, str] | None
    downstream_overrides: Mapping[str, str] | None
    milter: str | None
    milter_default_action: str
    filter_port: int | None
    smtpd_port: int | None
    downstream_port: int | None
    services: str | None


class PostfixFactory:
    """Creates started `Postfix` instances and closes all of them at `close_all()`."""

    def __init__(self) -> None:
        self.instances: list[Postfix] = []

    def __call__(self, mode: Mode = "plain", **options: Unpack[PostfixOptions]) -> Postfix:
        instance = Postfix(mode, **options)
        self.instances.append(instance)
        instance.start()
        return instance

    def close_all(self) -> None:
        """Close every instance (even if some fail to stop), newest first."""
        errors: list[str] = []
        while self.instances:
            instance = self.instances.pop()
            try:
                instance.close()
            except Exception as exc:  # collect, then report once: every instance must go
                errors.append(f"{instance.name}: {exc!r}")
        if errors:
            raise RuntimeError("could not close: " + "; ".join(errors))
