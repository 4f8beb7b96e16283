"""The manifest's file list: entry models, the path rule, and the checks over the whole tree.

Pure, like :mod:`agent.package.manifest` which holds the list. Rules (each entry, then the tree):

* safe paths (:func:`check_relpath`): relative POSIX, no ``.``/``..``/empty components, no
  backslash, control character or NUL, at most 4096 bytes and 128 levels, components <= 255 bytes;
* unique paths, also after Unicode NFKC normalisation and case-folding (:func:`fold_key`), so a
  package cannot smuggle ``A.php`` past ``a.php`` on a case-insensitive or normalising filesystem;
* every entry's parent is a listed directory (never a file or a symlink: nothing is written through
  a symlink);
* symlink targets are ``../`` repeated at most as deep as the link, then plain names: a target can
  never climb out of the release, even through other symlinks (docs/security-model.md);
* modes carry permission bits only (no setuid/setgid/sticky) and are never group- or world-writable.

**Cheap for 20,000 entries.** The entry models carry no Python validators: pydantic-core checks
the types, ``sha256`` and the path's shape (:data:`PATH_PATTERN`, the structural half of
:func:`check_relpath`) in Rust, and :func:`check_tree` runs the rest as whole-list operations
(sets, one joined string normalised and case-folded at once). :func:`check_relpath` itself runs only
on the paths that pattern cannot judge alone (non-ASCII, or long enough to reach a byte or depth
limit), on the few shared paths and symlink targets, and to word the message when the pattern
refuses a path, so it stays the one statement of the rule.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from cutover.agent.errors import ManifestError

__all__ = [
    "HEX64_PATTERN",
    "PATH_PATTERN",
    "DirEntry",
    "Entry",
    "EntryIndex",
    "FileEntry",
    "KeyedEntry",
    "SymlinkEntry",
    "check_relpath",
    "check_relpaths",
    "check_tree",
    "entry_kind",
    "fold_key",
]

MAX_PATH_BYTES: Final = 4096
MAX_NAME_BYTES: Final = 255
MAX_DEPTH: Final = 128
HEX64_PATTERN: Final = r"^[0-9a-f]{64}$"
_BAD_CHARS: Final = re.compile(r"[\x00-\x1f\x7f\\]")
_C: Final = r"[^/\x00-\x1f\x7f\\]"  # a character a path component may hold
_C_NO_DOT: Final = r"[^./\x00-\x1f\x7f\\]"
_COMPONENT: Final = rf"(?:{_C}{{3,}}|{_C_NO_DOT}{_C}?|\.{_C_NO_DOT})"  # not "", "." or ".."
# The shape check_relpath demands, without its byte and depth limits. An ASCII path this short
# cannot reach those limits (128 levels need 255 characters), so for it the pattern is the rule.
PATH_PATTERN: Final = rf"^{_COMPONENT}(?:/{_COMPONENT})*$"
# The same over the newline-joined list (no component can hold a newline): one pass in C, so the
# tree check does not depend on how the entries were made (model_construct skips the pattern).
_PATHS_SHAPE: Final = re.compile(
    rf"{_COMPONENT}(?:/{_COMPONENT})*(?:\n{_COMPONENT}(?:/{_COMPONENT})*)*"
)
_BAD_BYTES: Final = bytes([*range(0x0A), *range(0x0B, 0x20), 0x7F, 0x5C])  # _BAD_CHARS but "\n"
_SHORT: Final = MAX_NAME_BYTES - 1  # below every limit check_relpath counts in bytes or levels


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


_Path = Annotated[str, Field(pattern=PATH_PATTERN)]


def check_relpath(path: str, what: str = "path") -> str:
    """Validate a release-relative path; return it unchanged or raise :class:`ManifestError`."""
    if not path:
        raise ManifestError(f"{what} is empty")
    if _BAD_CHARS.search(path):
        raise ManifestError(f"{what} {path!r} contains a control character, NUL or backslash")
    if path.startswith("/"):
        raise ManifestError(f"{what} {path!r} is absolute; paths are relative to the release root")
    encoded = path.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_PATH_BYTES:
        raise ManifestError(f"{what} {path[:80]!r}... is longer than {MAX_PATH_BYTES} bytes")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise ManifestError(f"{what} {path[:80]!r} is deeper than {MAX_DEPTH} levels")
    for part in parts:
        if part in ("", ".", ".."):
            raise ManifestError(f"{what} {path!r} has an empty, '.' or '..' component")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise ManifestError(
                f"{what} {path!r} has a component longer than {MAX_NAME_BYTES} bytes"
            )
    try:
        encoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{what} {path!r} is not valid UTF-8") from exc
    return path


def fold_key(path: str) -> str:
    """The key under which two paths collide on a case-insensitive or normalising filesystem."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", path).casefold())


class FileEntry(_Model):
    path: _Path
    size: int = Field(ge=0)
    sha256: str = Field(pattern=HEX64_PATTERN)
    mode: int


class SymlinkEntry(_Model):
    path: _Path
    symlink: str


class DirEntry(_Model):
    path: _Path
    # Must be true (check_tree). A strict bool, not Literal[True], which pydantic lets 1 match.
    dir: bool
    mode: int = 0o755


def entry_kind(value: Any) -> str | None:
    """Which entry model a raw JSON object (or a model) is: by the keys it carries."""
    if isinstance(value, dict):
        if "symlink" in value:
            return "symlink"
        if "dir" in value:
            return "dir"
        return "file"
    if isinstance(value, SymlinkEntry):
        return "symlink"
    if isinstance(value, DirEntry):
        return "dir"
    if isinstance(value, FileEntry):
        return "file"
    return None


# Tried in order, in Rust. Under strict types and extra="forbid" the three key sets exclude each
# other, so this accepts exactly what the keyed union below does (:func:`entry_kind`); that one
# words the error for an entry this one refused (agent.package.manifest.parse_manifest).
Entry = Annotated[FileEntry | SymlinkEntry | DirEntry, Field(union_mode="left_to_right")]
KeyedEntry = Annotated[
    Annotated[FileEntry, Tag("file")]
    | Annotated[SymlinkEntry, Tag("symlink")]
    | Annotated[DirEntry, Tag("dir")],
    Discriminator(entry_kind),
]


def _check_mode(mode: int, what: str) -> int:
    if mode & ~0o777:
        raise ManifestError(
            f"{what}: mode {mode:#o} has setuid, setgid or sticky bits; not allowed"
        )
    if mode & 0o022:
        raise ManifestError(f"{what}: mode {mode:#o} is group- or world-writable; not allowed")
    if not mode & 0o400:
        raise ManifestError(f"{what}: mode {mode:#o} is not readable by its owner")
    return mode


def _check_dir_mode(mode: int, what: str) -> None:
    _check_mode(mode, what)
    if not mode & 0o100:
        raise ManifestError(f"{what}: mode {mode:#o} is not searchable")


def _check_symlink_target(entry: SymlinkEntry) -> None:
    target = entry.symlink
    if not target or target.startswith("/") or _BAD_CHARS.search(target):
        raise ManifestError(
            f"symlink {entry.path!r} -> {target!r}: target must be a non-empty relative path "
            "without control characters or backslashes"
        )
    parts = target.split("/")
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    rest = parts[ups:]
    if any(p in ("", ".", "..") for p in rest):
        raise ManifestError(
            f"symlink {entry.path!r} -> {target!r}: '..' may only lead the target, and no empty "
            "or '.' components are allowed"
        )
    if ups > entry.path.count("/"):
        raise ManifestError(f"symlink {entry.path!r} -> {target!r} points outside the release")
    if rest:
        check_relpath("/".join(rest), f"symlink {entry.path!r} target")


@dataclass(frozen=True)
class EntryIndex:
    """What the tree check learnt, for checks that relate other paths to the tree."""

    dirs: frozenset[str]
    folded: frozenset[str]


_path = attrgetter("path")


def _fold_all(paths: list[str], joined: str) -> list[str]:
    """:func:`fold_key` of every path, computed on the joined list at once.

    Equal to folding one by one: no valid path holds a newline, NFKC never composes across one
    (it is a starter that combines with nothing), and case-folding maps each character alone.
    Checked anyway: should a newline ever appear, fold one by one.
    """
    folded = fold_key(joined).split("\n")
    return folded if len(folded) == len(paths) else [fold_key(p) for p in paths]


def _shape_ok(joined: str, count: int) -> bool:
    """``_PATHS_SHAPE.fullmatch(joined)`` for ``count`` newline-joined paths, by byte operations
    in C instead of a backtracking match (~5x faster on 20,000 paths): no byte a component may
    not hold, no newline inside a path, and, with every separator made a newline and one added at
    each end, no empty, ``.`` or ``..`` component (``\n\n``, ``\n.\n``, ``\n..\n``). UTF-8
    keeps every ASCII byte for its character only. ``test_manifest_rules`` checks it agrees with
    the pattern."""
    data = joined.encode("utf-8", "surrogatepass")
    if len(data.translate(None, _BAD_BYTES)) != len(data) or data.count(b"\n") != count - 1:
        return False
    marked = b"\n" + data.replace(b"/", b"\n") + b"\n"
    return b"\n\n" not in marked and b"\n.\n" not in marked and b"\n..\n" not in marked


def check_relpaths(paths: list[str]) -> str:
    """:func:`check_relpath` of every path, fast (a few passes in C over the joined list for the
    usual short ASCII paths, :func:`_shape_ok`); returns them newline-joined.

    Raises:
        ManifestError: the first path that is not a safe relative path.
    """
    joined = "\n".join(paths)
    if paths and not _shape_ok(joined, len(paths)):
        for p in paths:
            check_relpath(p)  # raises for the first path of the wrong shape
        raise ManifestError("a path in the file list is not a safe relative path")
    if not joined.isascii() or max(map(len, paths), default=0) > _SHORT:
        for p in paths:  # what the pattern cannot judge alone (bytes, levels, UTF-8)
            if len(p) > _SHORT or not p.isascii():
                check_relpath(p)
    return joined


def check_tree(files: Sequence[FileEntry | SymlinkEntry | DirEntry]) -> EntryIndex:
    """Check the tree rules of the module docstring over ``files`` (whose shape pydantic checked).

    Raises:
        ManifestError: the first rule broken, naming the entry.
    """
    paths = list(map(_path, files))
    joined = check_relpaths(paths)
    if len(set(paths)) != len(paths):
        seen: set[str] = set()
        for p in paths:
            if p in seen:
                raise ManifestError(f"path {p!r} is listed twice")
            seen.add(p)
    folded = _fold_all(paths, joined)
    folded_set = frozenset(folded)
    if len(folded_set) != len(folded):
        first: dict[str, str] = {}
        for p, key in zip(paths, folded, strict=True):
            if key in first:
                raise ManifestError(
                    f"paths {first[key]!r} and {p!r} collide under case-folding or Unicode "
                    "normalisation"
                )
            first[key] = p
    dirs: list[DirEntry] = []
    links: list[SymlinkEntry] = []
    file_modes: set[int] = set()
    for e in files:
        if isinstance(e, FileEntry):
            file_modes.add(e.mode)
        elif isinstance(e, DirEntry):
            dirs.append(e)
        else:
            links.append(e)
    for mode in file_modes:  # a handful of distinct modes: check each once
        try:
            _check_mode(mode, "")
        except ManifestError:
            bad = next(e for e in files if isinstance(e, FileEntry) and e.mode == mode)
            _check_mode(mode, f"file {bad.path!r}")
    for d in dirs:
        if d.dir is not True:
            raise ManifestError(f'directory {d.path!r}: "dir" must be true')
        _check_dir_mode(d.mode, f"directory {d.path!r}")
    for link in links:
        _check_symlink_target(link)
    dir_paths = frozenset(d.path for d in dirs)
    parents = {p.rpartition("/")[0] for p in paths}
    parents.discard("")
    if not parents <= dir_paths:
        for p in paths:
            parent = p.rpartition("/")[0]
            if parent and parent not in dir_paths:
                raise ManifestError(
                    f"path {p!r}: its parent {parent!r} is not listed as a directory"
                )
    return EntryIndex(dirs=dir_paths, folded=folded_set)
