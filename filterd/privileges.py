"""Dropping root after the listeners are open (`[server] user` / `group`).

Started as root without systemd (under systemd, the unit's `User=` does this), filterd binds
its sockets first, then takes the configured user's identity for good: supplementary groups
from the group database (initgroups(3): a `filterd` user in group `postfix` keeps it), then
the group, then the user, in that order, since a process that gave up its uid can no longer
change its groups (setuid(2)). Nothing is done when no user is configured; a configured user
that the process cannot become (not root, and not already that user) is one PrivilegeError.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass


class PrivilegeError(ValueError):
    """The configured user or group cannot be taken: one line naming the key."""


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    uid: int
    gid: int


def identity(user: str, group: str = "") -> Identity:
    """The uid and gid that `[server] user` / `group` name (group "": the user's own)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        msg = f"server.user: no user {user!r} on this system (create it, e.g. adduser --system)"
        raise PrivilegeError(msg) from None
    if not group:
        return Identity(user, entry.pw_uid, entry.pw_gid)
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        msg = f"server.group: no group {group!r} on this system"
        raise PrivilegeError(msg) from None
    return Identity(user, entry.pw_uid, gid)


def drop_to(user: str, group: str = "") -> Identity | None:
    """Become `user` (and `group`); None when there was nothing to do."""
    if not user:
        return None
    target = identity(user, group)
    if (os.geteuid(), os.getegid()) == (target.uid, target.gid):
        return None  # already that user, e.g. started by systemd with User=
    if os.geteuid() != 0:
        msg = (
            f"server.user: filterd runs as uid {os.geteuid()}, not root, and cannot become "
            f"{user!r}; start it as root or leave server.user empty"
        )
        raise PrivilegeError(msg)
    os.initgroups(user, target.gid)
    os.setgid(target.gid)
    os.setuid(target.uid)
    return target
