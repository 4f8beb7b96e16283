"""Drift detection for installed releases: what is on disk versus what was signed.

:func:`find_drift` (the CLI's ``verify`` command) walks a release without following links and compares every entry with the signed
manifest (regular files: size, SHA-256, read-only mode; directories; symlink targets), the shared
links the agent created, and the inventory of files stage hooks added (recorded at staging, so a
file a hook wrote is not mistaken for tampering, and a file added later is).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from cutover.agent._util.fsutil import atomic_write
from cutover.agent.host.installer import release_mode
from cutover.agent.host.kept import load_manifest
from cutover.agent.host.layout import Layout
from cutover.agent.host.shared import shared_link_targets
from cutover.agent.host.state import AppState
from cutover.agent.package.manifest import DirEntry, FileEntry, Manifest, SymlinkEntry

__all__ = ["compare", "expected_entries", "find_drift", "inventory", "record_inventory", "walk"]

Expected = dict[str, dict[str, Any]]


def walk(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every entry below ``root`` as (relative path, lstat); never descends into links."""
    out: list[tuple[str, os.stat_result]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for e in it:
                path = f"{rel}/{e.name}" if rel else e.name
                st = e.stat(follow_symlinks=False)
                out.append((path, st))
                if stat.S_ISDIR(st.st_mode):
                    stack.append(path)
    return out


def _sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def inventory(release_dir: Path, listed: set[str]) -> Expected:
    """What is in ``release_dir`` beyond ``listed`` (files stage hooks created)."""
    extra: Expected = {}
    for path, st in walk(release_dir):
        if path in listed:
            continue
        full = release_dir / path
        if stat.S_ISLNK(st.st_mode):
            extra[path] = {"symlink": os.readlink(full)}
        elif stat.S_ISDIR(st.st_mode):
            extra[path] = {"dir": True}
        elif stat.S_ISREG(st.st_mode):
            extra[path] = {"size": st.st_size, "sha256": _sha256_file(full)}
        else:
            extra[path] = {"other": stat.S_IFMT(st.st_mode)}
    return extra


def expected_entries(manifest: Manifest, shared_links: dict[str, str], extra: Expected) -> Expected:
    """The whole expected tree: the staging inventory, the manifest, then the shared links."""
    expected: Expected = dict(extra)
    for e in manifest.files:
        if isinstance(e, FileEntry):
            expected[e.path] = {
                "size": e.size,
                "sha256": e.sha256,
                "mode": release_mode(stat.S_IFREG | e.mode),
            }
        elif isinstance(e, DirEntry):
            expected[e.path] = {"dir": True}
        elif isinstance(e, SymlinkEntry):
            expected[e.path] = {"symlink": e.symlink}
    for rel, target in shared_links.items():
        expected[rel] = {"symlink": target}
    return expected


def compare(root: Path, expected: Expected) -> list[str]:
    """Differences between the tree at ``root`` and ``expected``, one line each."""
    problems: list[str] = []
    seen: set[str] = set()
    for path, st in walk(root):
        seen.add(path)
        want = expected.get(path)
        full = root / path
        if want is None:
            problems.append(f"{path}: unexpected entry (not in the manifest)")
        elif "symlink" in want:
            if not stat.S_ISLNK(st.st_mode) or os.readlink(full) != want["symlink"]:
                problems.append(f"{path}: symlink changed")
        elif "dir" in want:
            if not stat.S_ISDIR(st.st_mode):
                problems.append(f"{path}: expected a directory")
        elif not stat.S_ISREG(st.st_mode):
            problems.append(f"{path}: expected a regular file")
        elif st.st_size != want["size"]:
            problems.append(f"{path}: size {st.st_size}, expected {want['size']}")
        elif _sha256_file(full) != want["sha256"]:
            problems.append(f"{path}: content differs from the manifest (sha256)")
        elif "mode" in want and stat.S_IMODE(st.st_mode) != want["mode"]:
            problems.append(
                f"{path}: mode {stat.S_IMODE(st.st_mode):#o}, expected {want['mode']:#o}"
            )
    problems.extend(f"{p}: missing" for p in sorted(expected.keys() - seen))
    return problems


def record_inventory(layout: Layout, release_dir: Path, manifest: Manifest) -> int:
    """Record the files stage hooks added, so drift detection can tell them from tampering.

    Returns:
        How many entries the hooks added.
    """
    listed = {e.path for e in manifest.files} | set(shared_link_targets(manifest.shared))
    extra = inventory(release_dir, listed)
    atomic_write(
        layout.inventory(manifest.version), json.dumps(extra, sort_keys=True).encode(), 0o640
    )
    return len(extra)


def find_drift(layout: Layout, state: AppState, version: str) -> list[str]:
    """Re-hash an installed release against its kept manifest; return the differences.

    Raises:
        NotFoundError: not installed. DriftError: the kept manifest itself was changed.
    """
    manifest = load_manifest(layout, state, version)
    root = layout.release(version)
    if not root.is_dir():
        return [f"{root}: release directory is missing"]
    inv_path = layout.inventory(version)
    extra: Expected = json.loads(inv_path.read_bytes()) if inv_path.exists() else {}
    return compare(root, expected_entries(manifest, shared_link_targets(manifest.shared), extra))
