"""What is checked before the extractor decompresses a single payload byte.

* :func:`verify_payload_digest`: the payload member's codec, size and SHA-256 are the signed
  manifest's (or, for a delta upload, its ``delta.json``'s: transfer integrity; the files are
  still each checked against the signed manifest while extracting). This is what makes the
  decompressor see only signed (or announced and signed-request-covered) bytes.
* :func:`link_escapes`: a symlink target that is absolute or climbs out of the release (named
  as such when a member's target differs from the manifest's).
* :func:`byte_cap`: the manifest fits the host's :class:`ExtractLimits` (entries, path length and
  depth), and how many decompressed bytes its payload may hold: exactly the tar size the package
  writer emits for it (:func:`agent.package.writer.tar_size`); for a thin payload, for the
  regular files only.

Pure apart from reading the package file: no tree is touched here.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Final

from cutover.agent.errors import ArchiveLimitError, DigestMismatchError, StorageError
from cutover.agent.extract._source import REBUILD, check_codec
from cutover.agent.package.container import PackageParts, hash_payload
from cutover.agent.package.delta import DeltaPayload
from cutover.agent.package.manifest import FileEntry, Manifest, Payload, PayloadChunks
from cutover.agent.package.writer import tar_size

__all__ = [
    "DEFAULT_LIMITS",
    "ExtractLimits",
    "byte_cap",
    "check_payload_size",
    "link_escapes",
    "payload_checks",
    "verify_payload_digest",
]


@dataclass(frozen=True)
class ExtractLimits:
    """Caps applied while extracting, on top of what the manifest itself allows.

    Attributes:
        max_entries: most members a payload may hold.
        per_entry_allowance: extra decompressed bytes tolerated per entry, beyond what the
            package writer emits (e.g. 1024 for tar writers that add pax time records to every
            entry); 0 fits ``cutover build`` and ``tar --format=ustar``.
        max_depth: most path components.
        max_path_bytes: longest path, in UTF-8 bytes.
    """

    max_entries: int = 1_000_000
    per_entry_allowance: int = 0
    max_depth: int = 128
    max_path_bytes: int = 4096


DEFAULT_LIMITS: Final = ExtractLimits()


def check_payload_size(
    parts: PackageParts, manifest: Manifest, delta: DeltaPayload | None = None
) -> None:
    """The payload member's size is the signed manifest's (or a delta upload's ``delta.json``'s).

    Raises:
        DigestMismatchError: ``payload_size``.
    """
    expected: DeltaPayload | Payload = manifest.payload if delta is None else delta
    if parts.payload_size != expected.size:
        says = "the signed manifest says" if delta is None else "its delta.json says"
        raise DigestMismatchError(
            f"payload {parts.payload_name!r} is {parts.payload_size} bytes but {says} "
            f"{expected.size}; {REBUILD}",
            code="payload_size",
        )


def payload_checks(
    fh: BinaryIO,
    parts: PackageParts,
    manifest: Manifest,
    progress: Callable[[int], None] | None = None,
    delta: DeltaPayload | None = None,
    already_verified: bool = False,
) -> PayloadChunks | None:
    """What must hold before decompression starts. With the manifest's ``payload.chunks`` (and
    not a delta upload, whose payload its ``delta.json`` describes): the size only, and the chunks
    are returned, to be checked each as it is read (:class:`agent.extract._source.ChunkedSource`:
    one pass over the payload). Otherwise the whole payload's digest (unless ``already_verified``
    on this same, privately held file), and None.

    Raises:
        DigestMismatchError, PackageFormatError, StorageError: as :func:`verify_payload_digest`.
    """
    chunks = manifest.payload.chunks if delta is None else None
    if chunks is not None:
        check_payload_size(parts, manifest)
    elif not already_verified:
        verify_payload_digest(fh, parts, manifest, progress, delta=delta)
    return chunks


def verify_payload_digest(
    fh: BinaryIO,
    parts: PackageParts,
    manifest: Manifest,
    progress: Callable[[int], None] | None = None,
    *,
    delta: DeltaPayload | None = None,
) -> None:
    """Check the compressed payload's codec, size and SHA-256 against the signed manifest.

    Must run before any payload byte is decompressed: it is what makes the decompressor see only
    signed bytes. :func:`extract_payload` calls it unless told it already ran. For a delta upload
    (``delta``: its ``delta.json`` description) the thin payload is checked against that instead:
    transfer integrity only, since every file is still checked against the signed manifest.

    Args:
        fh: the package file, opened for binary reading.
        parts: the container layout from :func:`agent.package.read_package`.
        manifest: the verified manifest (from :func:`agent.trust.verify_release`).
        progress: called with byte counts as the payload is hashed.

    Raises:
        PackageFormatError: the payload member's codec is not the manifest's, or the file ends early.
        DigestMismatchError: size or SHA-256 differs from ``manifest.payload``.
        StorageError: the package file cannot be read.
    """
    expected: DeltaPayload | Payload = manifest.payload if delta is None else delta
    check_codec(parts, manifest, expected.compression)
    check_payload_size(parts, manifest, delta)
    says = "the signed manifest says" if delta is None else "its delta.json says"
    try:
        actual = hash_payload(fh, parts, progress)
    except OSError as exc:
        raise StorageError(
            f"cannot read the package payload: {exc.strerror or exc}; check the file and retry"
        ) from exc
    if actual != expected.sha256:
        raise DigestMismatchError(
            f"payload {parts.payload_name!r} has sha256 {actual[:16]}… but {says} "
            f"{expected.sha256[:16]}…; {REBUILD}",
            code="payload_digest",
        )


def byte_cap(manifest: Manifest, limits: ExtractLimits, thin: bool = False) -> int:
    """Most decompressed bytes a payload for ``manifest`` may hold; checks the limits on it.

    Exactly the tar bytes the package writer emits for these entries
    (:func:`agent.package.writer.tar_size`), plus ``limits.per_entry_allowance`` per entry for
    chattier tar writers; for a thin payload, for the regular files only (the most it may claim).
    """
    if len(manifest.files) > limits.max_entries:
        raise ArchiveLimitError(
            f"manifest lists {len(manifest.files)} entries; this host allows at most "
            f"{limits.max_entries}: split the release or raise the limit",
            code="too_many_entries",
        )
    most_bytes, depth = limits.max_path_bytes, limits.max_depth
    for e in manifest.files:
        path = e.path  # UTF-8 takes at most 4 bytes a character: encode only the long ones
        too_long = len(path) * 4 > most_bytes and len(path.encode()) > most_bytes
        if too_long or path.count("/") >= depth:
            raise ArchiveLimitError(
                f"manifest entry {e.path[:80]!r} exceeds this host's limits of "
                f"{limits.max_path_bytes} bytes and {limits.max_depth} levels per path",
                code="path_limit",
            )
    entries = [e for e in manifest.files if isinstance(e, FileEntry)] if thin else manifest.files
    return tar_size(entries, limits.per_entry_allowance)


def link_escapes(link: str, target: str) -> bool:
    """True if symlink ``link`` -> ``target`` is absolute or resolves outside the release."""
    if not target or target.startswith("/"):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
    return resolved == ".." or resolved.startswith("../")
