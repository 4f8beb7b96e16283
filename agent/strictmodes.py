"""Ownership and mode rules for the files the agent trusts, like OpenSSH's ``StrictModes``.

Whoever can write the agent's config or a key file it names decides which keys are trusted, so
those files must be as protected as root's own:

* the config file, every key file it names (controller keys, release keys, the TLS key and
  certificate) and **every directory above them** must not be writable by group or others, and
  must be owned by root or by the agent's user (the effective uid of the process). A directory
  with the sticky bit owned by root or the agent user (``/tmp``) is accepted above them: nobody
  else can rename or replace what it holds;
* ``state_dir`` (the nonce store: replay protection) and every app root must not be group- or
  world-writable.

Both the daemon (at start and at every live reload: a refused reload keeps the old config) and the
on-host CLI apply them through :func:`agent.config.load_config`. Every error names the path, its
mode and owner, and the ``chmod``/``chown`` to run.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from cutover.agent.errors import ConfigError

__all__ = ["check_trusted_file", "check_unshared_dir"]


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _trusted_uids() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def _describe(path: Path, st: os.stat_result) -> str:
    mode = stat.S_IMODE(st.st_mode)
    who = [w for w, bit in (("group", 0o020), ("others", 0o002)) if mode & bit]
    writable = f", writable by {' and '.join(who)}" if who else ""
    return f"{path} (mode {mode:04o}{writable}; owner {_user(st.st_uid)})"


def _chain(path: Path) -> list[Path]:
    """``path`` and every directory above it, as given and as resolved (symlinks followed)."""
    seen: dict[Path, None] = {}
    for p in (path.absolute(), Path(os.path.realpath(path))):
        for q in (p, *p.parents):
            seen.setdefault(q, None)
    return list(seen)


def check_trusted_file(path: Path, what: str) -> None:
    """Refuse ``path`` if it, or a directory above it, could be changed by another user.

    Args:
        path: a file the agent trusts (config, key file).
        what: how to name it in the error, e.g. ``"controller key"``.

    Raises:
        ConfigError: missing, or unsafe (the message says which path and what to run).
    """
    trusted = _trusted_uids()
    agent_user = _user(os.geteuid())
    for p in _chain(path):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue  # a missing file is reported by whoever reads it, with its own advice
        except OSError as exc:
            raise ConfigError(f"cannot check {what} {p}: {exc.strerror}") from exc
        is_target = p in (path.absolute(), Path(os.path.realpath(path)))
        label = what if is_target else f"directory above {what} {path}"
        if st.st_uid not in trusted:
            raise ConfigError(
                f"unsafe {label}: {_describe(p, st)} is owned by neither root nor the agent "
                f"user ({agent_user}), so that user could change which keys are trusted; run "
                f"`chown root {p}`"
            )
        mode = stat.S_IMODE(st.st_mode)
        if not mode & 0o022:
            continue
        if not is_target and stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX:
            continue  # sticky and owned by a trusted user: entries cannot be swapped
        raise ConfigError(
            f"unsafe {label}: {_describe(p, st)}; another user could replace it and with it the "
            f"trusted keys; run `chmod go-w {p}`"
        )


def check_unshared_dir(path: Path, what: str) -> None:
    """Refuse a group- or world-writable directory (a missing one is left to its creator).

    Raises:
        ConfigError: the message names the path, mode, owner and the ``chmod`` to run.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot check {what} {path}: {exc.strerror}") from exc
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise ConfigError(
            f"unsafe {what}: {_describe(path, st)}; other users could plant or remove files the "
            f"agent relies on; run `chmod go-w {path}`"
        )
