"""Installing a verified release: extract into ``incoming/``, link shared paths, keep the
manifest, rename the whole tree into ``releases/``, normalise its modes (read-only, readable by all),
make it durable.

Files the host already holds may be taken from its other releases (``reuse``,
:func:`reuser_for`). Nothing is ever extracted under ``releases/``: payloads go to ``.cutover/incoming/<random>/``
and are renamed in whole, so a crash leaves a partial tree only in ``incoming/`` (which recovery
empties) and never a half-extracted release.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from cutover.agent._util.faults import fault_point
from cutover.agent._util.fsutil import fsync_dir, random_suffix, syncfs
from cutover.agent._util.gcpause import gc_paused
from cutover.agent.errors import StorageError
from cutover.agent.extract import extractor
from cutover.agent.extract.extractor import ExtractStats
from cutover.agent.extract.reuse import Reuser
from cutover.agent.host.content import ContentIndex
from cutover.agent.host.kept import keep_manifest
from cutover.agent.host.layout import Layout
from cutover.agent.host.seal import SealReport, seal_release
from cutover.agent.host.shared import link_shared
from cutover.agent.host.state import AppState
from cutover.agent.package.container import PackageParts
from cutover.agent.package.delta import DeltaPayload, parse_delta
from cutover.agent.package.manifest import Manifest
from cutover.agent.trust.policy import VerifiedRelease

__all__ = [
    "extract_to_incoming",
    "forget_install_marker",
    "install",
    "make_durable",
    "make_readonly",
    "release_mode",
    "reuser_for",
    "seal",
]


def extract_to_incoming(
    layout: Layout,
    fh: BinaryIO,
    parts: PackageParts,
    verified: VerifiedRelease,
    progress: Callable[[int], None] | None = None,
    *,
    state: AppState | None = None,
    reuse: str = "off",
    dest: Path | None = None,
    placed: dict[str, os.stat_result] | None = None,
) -> tuple[Path, ExtractStats]:
    """Check the payload digest, then extract it into a fresh ``incoming/`` directory.

    A delta upload's payload is checked against its ``delta.json`` (:mod:`agent.package.delta`),
    any other against the signed manifest. With ``reuse`` other than ``off`` and the app's
    ``state``, files the host already holds are taken from its releases (the content index,
    :mod:`agent.host.content`; how: :func:`reuser_for`). The extractor removes its partial tree
    on any failure. ``dest`` (under ``incoming/``) is the tree's name chosen by the caller (a
    stage worker's parent removes it if the worker is killed), else a fresh one. ``placed`` gets
    the ``lstat`` of each file hardlinked, read right after its link (for :func:`seal`).

    Returns:
        The staging directory and what the extraction wrote (and reused, by method).
    """
    manifest = verified.manifest
    if dest is None:
        dest = layout.incoming / f"{manifest.version}.{random_suffix()}"
    delta = None if parts.delta_bytes is None else parse_delta(parts.delta_bytes).payload
    if delta is not None or manifest.payload.chunks is None:  # else: chunk by chunk, in one pass
        extractor.verify_payload_digest(fh, parts, manifest, delta=delta)
    # No cyclic-GC scans while 20,000 entries are placed (a stat result kept per hardlinked
    # file, the content index's rows): nothing built here holds a reference cycle.
    with gc_paused():
        return _extract(layout, fh, parts, manifest, dest, delta, progress, state, reuse, placed)


def _extract(
    layout: Layout,
    fh: BinaryIO,
    parts: PackageParts,
    manifest: Manifest,
    dest: Path,
    delta: DeltaPayload | None,
    progress: Callable[[int], None] | None,
    state: AppState | None,
    reuse: str,
    placed: dict[str, os.stat_result] | None,
) -> tuple[Path, ExtractStats]:
    reuser = None if state is None else reuser_for(layout, state, manifest, reuse)
    try:
        stats = extractor.extract_payload(
            fh,
            parts,
            manifest,
            dest,
            progress=progress,
            already_verified=True,
            delta=delta,
            reuse=reuser,
        )
    finally:
        if reuser is not None:
            reuser.close()
    if placed is not None and reuser is not None:
        placed.update(reuser.placed())
    return dest, stats


def reuser_for(layout: Layout, state: AppState, manifest: Manifest, mode: str) -> Reuser | None:
    """The reuser of a staging of ``manifest`` under the app's ``reuse`` setting (None: off).

    ``auto`` clones when the filesystem can, else hardlinks only when the release declares no
    hook that runs inside the new tree before it is sealed (``stage``, ``pre_activate``: hooks run
    as the owner of release files, so nothing stops one writing in place into a shared inode),
    else copies. ``hardlink`` is the operator's assertion that hooks never write in place.
    """
    if mode == "off":
        return None
    index = ContentIndex.build(layout, state, exclude=manifest.version)
    if index.empty():
        return None
    hooks = manifest.hooks
    hardlink = mode == "hardlink" or (mode == "auto" and not (hooks.stage or hooks.pre_activate))
    return Reuser(layout.releases, index.sources, reflink=mode == "auto", hardlink=hardlink)


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
                mode = release_mode(st.st_mode)
                if stat.S_IMODE(st.st_mode) != mode:  # a reused (hardlinked) file already is
                    os.chmod(p, mode)
    os.chmod(release_dir, release_mode(os.lstat(release_dir).st_mode))


def seal(
    layout: Layout,
    release_dir: Path,
    verified: VerifiedRelease,
    *,
    hooks_ran: bool,
    placed: Mapping[str, os.stat_result] | None = None,
) -> SealReport | None:
    """Make the release read-only; record its seal (:mod:`agent.host.seal`) unless stage hooks
    ran in it (what they wrote was never checked: its files are hashed when reused). The
    report's ``projection`` goes into the release's state record (``seal_sha256``). ``placed``:
    what :func:`extract_to_incoming` gave (files it need not ``lstat`` again)."""
    with gc_paused():  # 20,000 seal rows built: no cyclic-GC scans meanwhile
        if not hooks_ran:
            report = seal_release(layout, release_dir, verified.manifest, verified.digest, placed)
            if report is not None:
                return report
        make_readonly(release_dir)
        return None


def make_durable(layout: Layout) -> None:
    """One ``syncfs`` for the whole release: far cheaper than an fsync per file."""
    syncfs(layout.releases)
