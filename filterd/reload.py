"""What a reload (SIGHUP) changes: the keys that differ, and those that wait for a restart.

A reload gives new sessions the new settings; some keys are used only when the process
starts, and app.py logs them instead of pretending to apply them:
- the listeners (`listen`, `backlog`, the UNIX socket's mode and group): the sockets stay
  open across a reload, so that no connection is refused while it happens;
- an endpoint turned on or off (its `listen` set or emptied);
- `[server] user` / `group`: root is given up once, at start;
- `[server] allow_non_loopback`: checked against the listeners, which do not move;
- `[metrics] listen`: the metrics HTTP server is started once;
- `[server] workers`: the worker processes are forked once.
The configuration kept as the running one after a reload has the new values of every other
key but the running (applied) values of these (`keep_running`), so that a restart-only key
changed and then changed back is not reported again as waiting for a restart.
"""

from __future__ import annotations

import dataclasses

from filterd.config import Config

RESTART_KEYS = frozenset(
    {
        "proxy.listen",
        "proxy.backlog",
        "milter.listen",
        "milter.socket_mode",
        "milter.socket_group",
        "server.user",
        "server.group",
        "server.allow_non_loopback",
        "server.workers",
        "metrics.listen",
    }
)


def changed_keys(old: Config, new: Config) -> list[str]:
    """`section.key` of every setting whose value differs, in the order of the dataclasses."""
    changed = []
    for section in dataclasses.fields(Config):
        before, after = getattr(old, section.name), getattr(new, section.name)
        keys = [key.name for key in dataclasses.fields(before)]
        changed += [
            f"{section.name}.{key}" for key in keys if getattr(before, key) != getattr(after, key)
        ]
    return changed


def needs_restart(changed: list[str]) -> list[str]:
    """The changed keys that a reload cannot apply."""
    return [key for key in changed if key in RESTART_KEYS]


def keep_running(running: Config, new: Config) -> Config:
    """`new` with the restart-only keys at their running values: what really runs."""
    sections: dict[str, dict[str, object]] = {}
    for key in RESTART_KEYS:
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = getattr(getattr(running, section), name)
    changes = {
        section: dataclasses.replace(getattr(new, section), **values)
        for section, values in sections.items()
    }
    return dataclasses.replace(new, **changes)
