"""Installing a verified release: extract into ``incoming/``, link shared paths, keep the
manifest, rename the whole tree into ``releases/``, normalise its modes (read-only, readable by all),
make it durable.

Nothing is ever extracted under ``releases/``: payloads go to ``.cutover/incoming/<random>/``
and are renamed in whole, so a crash leaves a partial tree only in ``incoming/`` (which recovery
empties) and never a half-extracted release.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from cutover.agent._util.faults import fault_point
from cutover.agent._util.fsutil import fsync_dir, random_suffix, syncfs
from cutover.agent.errors import StorageError
from cutover.agent.extract import extractor
from cutover.agent.host.kept import keep_manifest
from cutover.agent.host.layout import Layout
from cutover.agent.host.shared import link_shared
from cutover.agent.package.container import PackageParts
from cutover.agent.trust.policy import VerifiedRelease

__all__ = [
    "extract_to_incoming",
    "forget_install_marker",
    "install",
    "make_durable",
    "make_readonly",
    "release_mode",
]


def extract_to_incoming(
    layout: Layout,
    fh: BinaryIO,
    parts: PackageParts,
    verified: VerifiedRelease,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Check the payload digest, then extract it into a fresh ``incoming/`` directory.

    The extractor removes its partial tree on any failure.
    """
    dest = layout.incoming / f"{verified.manifest.version}.{random_suffix()}"
    extractor.verify_payload_digest(fh, parts, verified.manifest)
    extractor.extract_payload(
        fh, parts, verified.manifest, dest, progress=progress, already_verified=True
    )
    return dest


def install(
    layout: Layout, staging: Path, verified: VerifiedRelease, created: list[Path] | None = None
) -> tuple[Path, str]:
    """Link shared paths, keep the signed manifest (and its runtime spec), rename the tree
    into ``releases/``. ``created`` gets the shared dirs this created (see ``link_shared``).

    Returns:
        The release dir and the runtime spec's digest.

    Raises:
        StorageError: a shared path problem, or ``releases/<version>`` is in the way.
    """
    manifest = verified.manifest
    link_shared(layout.shared, staging, manifest.shared, manifest.version, created)
    runtime_digest = keep_manifest(layout, manifest, verified.manifest_bytes)
    target = layout.release(manifest.version)
    if target.exists() or target.is_symlink():
        raise StorageError(
            f"{target} exists but is not a release Cutover recorded (an earlier deploy tool's?); "
            "Cutover never removes what it did not create: move it away, or record it with "
            "`cutover-agent adopt` (docs/migrating.md), then stage again"
        )
    fault_point("stage.before_rename")
    marker = layout.install_marker(manifest.version)
    marker.mkdir(mode=0o700, exist_ok=True)  # recovery may remove releases/<v> only with it
    fsync_dir(layout.incoming)
    os.rename(staging, target)
    fsync_dir(layout.releases)
    fault_point("stage.renamed")
    return target, runtime_digest


def forget_install_marker(layout: Layout, version: str) -> None:
    """The staging of ``version`` is recorded (staged or failed): drop its install marker."""
    with contextlib.suppress(FileNotFoundError):
        layout.install_marker(version).rmdir()


def release_mode(mode: int) -> int:
    """The normalised mode of a release entry: ``0555`` for directories and for files with any
    execute bit, ``0444`` for other files. Readable by every user whatever umask wrote it."""
    if stat.S_ISDIR(mode) or mode & 0o111:
        return 0o555
    return 0o444


def make_readonly(release_dir: Path) -> None:
    """Normalise every mode in the release (never through a link): directories ``0555``,
    regular files ``0444`` or ``0555`` (:func:`release_mode`).

    Run after the stage hooks: a hook under the shipped unit's ``UMask=0027`` writes
    ``-rw-r-----`` files, which only clearing write bits would leave unreadable by the web
    server's user (docs/lifecycle.md, "Staging").
    """
    for dirpath, dirnames, filenames in os.walk(release_dir, topdown=False):
        for name in [*filenames, *dirnames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                os.chmod(p, release_mode(st.st_mode))
    os.chmod(release_dir, release_mode(os.lstat(release_dir).st_mode))


def make_durable(layout: Layout) -> None:
    """One ``syncfs`` for the whole release: far cheaper than an fsync per file."""
    syncfs(layout.releases)
