"""Who owns an app's state, and acting as that user (the CLI run as root, issue 9 item 4).

An app root belongs to one user (the agent's, e.g. ``cutover``): the owner of ``.cutover/``, or
of the root itself before ``init``. The CLI run as root on a root owned by another user drops
its privileges to that user for the whole command (:func:`drop_to`), so it never leaves
root-owned files in the app and hooks run as they would under the daemon. ``init`` needs root
for the config and the owner for the root: it acts as the owner only around the root's files
(:func:`acting_as`, effective ids, restored afterwards). Where everything is root's (a
container), nothing changes.
"""

from __future__ import annotations

import importlib
import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Owner", "acting_as", "current_user", "drop_to", "owner_of"]


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int
    name: str  # the user name, or the uid as text when /etc/passwd does not know it


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def current_user() -> str:
    return _name(os.geteuid())


def owner_of(*paths: Path) -> Owner | None:
    """The owner of the first of ``paths`` that exists (never following a link)."""
    for p in paths:
        try:
            st = os.lstat(p)
        except OSError:
            continue
        return Owner(st.st_uid, st.st_gid, _name(st.st_uid))
    return None


def _groups(owner: Owner) -> list[int]:
    try:
        return os.getgrouplist(owner.name, owner.gid)
    except (KeyError, OSError):
        return [owner.gid]


# Imported lazily by the standard library (asyncio.to_thread, subprocesses): loaded before the
# drop, since the new user may not be able to read the interpreter's files (a Python installed
# under /root, say).
_PRELOAD = (
    "concurrent.futures.thread",
    "asyncio.subprocess",
    "asyncio.unix_events",
    "encodings.idna",  # socket.getaddrinfo of a host name (health checks), str.encode("idna")
)


def drop_to(owner: Owner) -> None:
    """Become ``owner`` for good (supplementary groups, gid, uid; HOME/USER/LOGNAME for hooks).

    Raises:
        PermissionError: the process may not change its ids (not root).
    """
    for module in _PRELOAD:
        importlib.import_module(module)
    os.setgroups(_groups(owner))
    os.setgid(owner.gid)
    os.setuid(owner.uid)
    try:
        home = pwd.getpwuid(owner.uid).pw_dir
    except KeyError:
        home = "/"
    os.environ.update(HOME=home, USER=owner.name, LOGNAME=owner.name)


@contextmanager
def acting_as(owner: Owner | None) -> Iterator[None]:
    """Create files as ``owner`` inside the block (effective ids; root only; None: as is)."""
    if owner is None or os.geteuid() != 0 or owner.uid == 0:
        yield
        return
    groups = os.getgroups()
    os.setgroups(_groups(owner))
    os.setegid(owner.gid)
    os.seteuid(owner.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)
