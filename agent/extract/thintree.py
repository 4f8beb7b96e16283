"""The tree of a thin payload, in directory order: its directories, then (after the payload) the
files the host holds, its symlinks and its directory modes, each directory opened once.

A thin payload holds regular files only (:mod:`agent.extract.extractor`); the rest of the tree
comes from the signed manifest. :class:`ThinTree` sorts it once, in one pass over the manifest:
the directories in *tree order* (each directory right before its subtree: the path with ``/``
read as the lowest character, which a path can never hold otherwise), and per directory its
regular files and symlinks. Then two walks, each keeping only the fds of the current directory's
ancestors open (a stack: at most the tree's depth, whatever its size):

* :meth:`ThinTree.make_dirs`, before the payload is read: ``mkdir`` (0700) of every directory in
  its parent's fd; a directory is opened only when its subtree has directories.
* :meth:`ThinTree.finish`, after the payload's own files are written and checked: in every
  directory, the files the payload did not carry are placed from the host
  (:meth:`agent.extract.reuse.Reuser.place`: every source is checked there, never through a
  link), then its symlinks are created, and when the walk leaves a directory (every entry of its
  subtree done) it gets its manifest mode, from the fd opened by this walk.

The rules are the extractor's (its module docstring): nothing is written through a symlink
(every directory is opened ``O_NOFOLLOW | O_DIRECTORY`` relative to its parent's fd; a checked
manifest never lists a path twice, so no symlink can stand where a directory or file goes), the
modes last, the root 0700 until the end. On any failure every fd this opened is closed and the
error raised: the extractor then removes the tree.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable

from cutover.agent.extract._io import DIR_FLAGS
from cutover.agent.package.manifest import DirEntry, FileEntry, SymlinkEntry

__all__ = ["ThinTree", "tree_order"]


def tree_order(path: str) -> str:
    """The sort key of tree order: ``a``, ``a/b``, ``a/b/c``, ``a-b`` (``/`` sorts first)."""
    return path.replace("/", "\x00")


class ThinTree:
    """A manifest's directories in tree order, and each directory's files and symlinks."""

    def __init__(self, entries: Iterable[FileEntry | DirEntry | SymlinkEntry]) -> None:
        dirs: list[DirEntry] = []
        files: dict[str, list[FileEntry]] = {}
        links: dict[str, list[SymlinkEntry]] = {}
        for e in entries:  # 20,000 entries: one pass, kept lean
            if type(e) is DirEntry:
                dirs.append(e)
                continue
            parent = e.path.rpartition("/")[0]
            if type(e) is FileEntry:
                group = files.get(parent)
                if group is None:
                    files[parent] = [e]
                else:
                    group.append(e)
            elif isinstance(e, SymlinkEntry):
                links.setdefault(parent, []).append(e)
        dirs.sort(key=lambda d: tree_order(d.path))
        self.dirs = dirs
        self.files = files
        self.links = links

    def make_dirs(self, root_fd: int, enter: Callable[[DirEntry], None]) -> None:
        """Create every directory (0700) in tree order; ``enter`` runs first for each (the
        extractor's checks and counts: it raises for a directory whose parent is not listed,
        which is then not on the stack)."""
        dirs = self.dirs
        stack: list[tuple[str, int]] = [("", root_fd)]
        try:
            for i, d in enumerate(dirs):
                parent, _, leaf = d.path.rpartition("/")
                top = _top(stack, parent, None)
                enter(d)
                if top is None:
                    raise FileNotFoundError(d.path)  # enter() raised for it first
                os.mkdir(leaf, 0o700, dir_fd=top)
                after = dirs[i + 1].path if i + 1 < len(dirs) else ""
                if after.startswith(d.path) and after[len(d.path) : len(d.path) + 1] == "/":
                    stack.append((d.path, os.open(leaf, DIR_FLAGS, dir_fd=top)))
        finally:
            _close(stack)

    def finish(
        self,
        root_fd: int,
        place: Callable[[FileEntry, int, str], bool],
        link: Callable[[SymlinkEntry, int, str], None],
    ) -> None:
        """Walk the tree (created by :meth:`make_dirs`): in each directory ``place`` each file
        (False: the host had none; the caller records it, and whether the payload carried it),
        then ``link`` each symlink; a directory's manifest mode is set when the walk leaves it."""
        stack: list[tuple[str, int]] = [("", root_fd)]
        modes: list[int] = [0]  # the root's mode is the extractor's (0755, last)
        try:
            self._fill("", root_fd, place, link)
            for d in self.dirs:
                parent, _, leaf = d.path.rpartition("/")
                top = _top(stack, parent, modes)
                if top is None:
                    raise FileNotFoundError(d.path)  # make_dirs refused it already
                fd = os.open(leaf, DIR_FLAGS, dir_fd=top)
                stack.append((d.path, fd))
                modes.append(d.mode)
                self._fill(d.path, fd, place, link)
            _top(stack, "", modes)
        finally:
            _close(stack)

    def _fill(
        self,
        path: str,
        fd: int,
        place: Callable[[FileEntry, int, str], bool],
        link: Callable[[SymlinkEntry, int, str], None],
    ) -> None:
        cut = len(path) + 1 if path else 0
        for e in self.files.get(path, ()):
            place(e, fd, e.path[cut:])
        for s in self.links.get(path, ()):
            link(s, fd, s.path[cut:])


def _top(stack: list[tuple[str, int]], parent: str, modes: list[int] | None) -> int | None:
    """Leave directories until ``parent`` is on top (each left gets its mode from ``modes``, if
    given, then its fd is closed); its fd, or None if it is not on the stack."""
    while stack[-1][0] != parent:
        if len(stack) == 1:
            return None
        _, fd = stack.pop()
        try:
            if modes is not None:
                os.fchmod(fd, modes.pop())
        finally:
            os.close(fd)
    return stack[-1][1]


def _close(stack: list[tuple[str, int]]) -> None:
    """Close every fd on the stack but the root's (the extractor's); errors are ignored."""
    for _, fd in stack[1:]:
        with contextlib.suppress(OSError):
            os.close(fd)
    del stack[1:]
