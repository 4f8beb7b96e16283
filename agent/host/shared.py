"""Shared paths: persistent data (``shared/``) linked into every release.

Each ``shared.dirs`` entry is created under ``shared/`` if missing; each ``shared.files`` entry
must already exist there (it holds host-specific data). A shared dir a failed staging created is removed again. The release gets a relative link
``releases/<v>/<path> -> ../../shared/<path>`` (one ``../`` more per directory level).

Nothing is ever created through a symlink under ``shared/``: the app user could plant
``shared/x -> /etc`` and have the agent (or root running the CLI) create directories there. An
existing link to an existing directory (storage on another disk) is the operator's choice and is
used as it is.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cutover.agent.errors import StorageError
from cutover.agent.package.manifest import SharedPaths

__all__ = ["link_shared", "shared_link_targets"]


def shared_link_targets(shared: SharedPaths) -> dict[str, str]:
    """Path in the release -> the relative target of its link into ``shared/``."""
    return {
        rel: "../" * (rel.count("/") + 2) + f"shared/{rel}"  # up from releases/<v>/<parent...>
        for rel in [*shared.dirs, *shared.files]
    }


def link_shared(
    shared_dir: Path,
    release_dir: Path,
    shared: SharedPaths,
    version: str,
    created: list[Path] | None = None,
) -> None:
    """Create the shared dirs, check the shared files, link both into ``release_dir``.

    ``created`` gets the topmost directory of each shared dir this call created (a failed
    staging removes them again: it leaves the root as it was).

    Raises:
        StorageError: a shared file is missing, or a shared dir would be created through a link.
    """
    for rel in shared.dirs:
        _make_shared_dir(shared_dir, rel, created if created is not None else [])
    for rel in shared.files:
        if not (shared_dir / rel).exists():
            raise StorageError(
                f"shared file {shared_dir / rel} does not exist; the release {version} links "
                "it. Create it on the host (it holds host-specific data), then stage again"
            )
    for rel, target in shared_link_targets(shared).items():
        os.symlink(target, release_dir / rel)


def _make_shared_dir(shared: Path, rel: str, created: list[Path]) -> None:
    """Create ``shared/<rel>`` through O_NOFOLLOW directory fds, component by component."""
    fd = os.open(shared, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    made = False
    try:
        parts = rel.split("/")
        for i, part in enumerate(parts):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
                if not made:
                    created.append(shared.joinpath(*parts[: i + 1]))
                    made = True
            try:
                nfd = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file
                if (shared / rel).is_dir():
                    return  # an existing link to an existing directory: the operator's choice
                raise StorageError(
                    f"shared dir {shared / rel}: component {part!r} is a symlink to nothing or not "
                    f"a directory ({exc.strerror}), and the agent never creates "
                    "directories through links; create the target directory by hand"
                ) from exc
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
