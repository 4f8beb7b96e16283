"""The package writer: a payload from a tree's entries, then the container from the models.

Used by ``cutover build`` and ``cutover sign`` (controller/build.py) and by tests; the agent only
reads. What it writes is deterministic, so the same tree and metadata give the same bytes:

* :class:`PayloadWriter` takes entries **in strictly increasing path order** (so parents come
  first and no path repeats) and writes them through the one tar codec (:mod:`agent.package.ustar`):
  uid/gid 0, mtime 0, no owner names; files ``0755`` if executable else ``0644``, directories
  ``0755``, symlinks ``0777`` (never applied: links are created from the manifest). It hashes each
  file while copying it and returns the manifest entry that describes it, then the
  :class:`~agent.package.manifest.Payload`: size and SHA-256 of the compressed stream, and the
  SHA-256 of each 4 MiB run of it (``payload.chunks``, :data:`CHUNK_BYTES`), which lets the
  extractor check each chunk before decompressing it and skip the separate digest pass.
  Compression: zstd level 3 with frame checksums, gzip level 6 with mtime 0, or none.
* :func:`write_package_file` renders the manifest and signature models (their formats' only
  writers, :func:`~agent.package.manifest.render_manifest` and
  :func:`~agent.package.signatures.render_signatures`) and writes the container atomically;
  :func:`add_signature` rewrites a package with one more signature, its manifest and payload
  bytes unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, Final, cast

import zstandard

from cutover.agent._util.fsutil import fsync_dir
from cutover.agent.errors import ConfigError, ManifestError
from cutover.agent.package.container import open_package, write_package
from cutover.agent.package.manifest import (
    DirEntry,
    FileEntry,
    Manifest,
    Payload,
    PayloadChunks,
    SymlinkEntry,
    render_manifest,
)
from cutover.agent.package.signatures import (
    SignatureEntry,
    parse_signatures,
    render_signatures,
    with_signature,
)
from cutover.agent.package.ustar import (
    DIR,
    END_OF_ARCHIVE,
    REG,
    SYM,
    archive_bytes,
    encode_member,
    member_bytes,
    padding,
)

__all__ = [
    "CHUNK_BYTES",
    "COMPRESSIONS",
    "PayloadWriter",
    "add_signature",
    "file_mode",
    "tar_size",
    "write_package_file",
]

COMPRESSIONS: Final = ("zstd", "gzip", "none")
ZSTD_LEVEL: Final = 3
GZIP_LEVEL: Final = 6
_FLUSH_BYTES: Final = 1 << 20  # small members are gathered into writes of about this size
_COPY_BYTES: Final = 1 << 20
CHUNK_BYTES: Final = 4 << 20  # compressed bytes per payload.chunks digest


def file_mode(executable: bool) -> int:
    """The normalised mode of a shipped file: only the owner's execute bit survives, as in git."""
    return 0o755 if executable else 0o644


def tar_size(
    files: Iterable[FileEntry | SymlinkEntry | DirEntry], per_entry_allowance: int = 0
) -> int:
    """Exactly how many bytes the uncompressed tar stream :class:`PayloadWriter` writes for
    ``files`` (members, end-of-archive marker, padding to a 10 KiB record).

    The extractor's decompressed-byte cap is this size, with ``per_entry_allowance`` extra bytes
    per entry counted in before the record padding (for other tar writers).
    """
    total = 0
    for e in files:
        total += per_entry_allowance
        if isinstance(e, FileEntry):
            total += member_bytes(e.path, REG, e.size)
        elif isinstance(e, SymlinkEntry):
            total += member_bytes(e.path, SYM, link=e.symlink)
        else:
            total += member_bytes(e.path, DIR)
    return archive_bytes(total)


class _HashingSink(io.RawIOBase):
    """Counts and hashes the compressed bytes on their way to the payload file: as a whole, and
    per :data:`CHUNK_BYTES` run (the manifest's ``payload.chunks``)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.chunks: list[str] = []
        self._chunk = hashlib.sha256()
        self._chunk_left = CHUNK_BYTES

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = len(view)
        self.sha256.update(view)
        self.size += n
        while view:
            part = view[: self._chunk_left]
            self._chunk.update(part)
            self._chunk_left -= len(part)
            view = view[len(part) :]
            if not self._chunk_left:
                self.chunks.append(self._chunk.hexdigest())
                self._chunk, self._chunk_left = hashlib.sha256(), CHUNK_BYTES
        self._out.write(b)
        return n

    def chunk_digests(self) -> list[str]:
        """Every chunk's digest, the last (shorter) one included; call once, at the end."""
        if self._chunk_left != CHUNK_BYTES:
            self.chunks.append(self._chunk.hexdigest())
            self._chunk_left = CHUNK_BYTES
        return self.chunks


class PayloadWriter:
    """Writes a payload tar stream, compressed, to ``out``; returns the manifest entries.

    Call :meth:`add_dir`, :meth:`add_symlink` and :meth:`add_file` in strictly increasing path
    order, then :meth:`finish` once. ``chunks=False`` leaves ``payload.chunks`` out, for agents
    that predate it (they refuse unknown manifest fields) or to reproduce an earlier build's bytes.

    Raises (from every method):
        ManifestError: a path out of order, or a file whose size differs from the one announced.
        ConfigError: an unknown compression.
    """

    def __init__(self, out: BinaryIO, compression: str, *, chunks: bool = True) -> None:
        self._sink = _HashingSink(out)
        self._compression = compression
        self._chunks = chunks
        self._raw: Any
        if compression == "zstd":
            cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
            self._raw = cctx.stream_writer(cast(BinaryIO, self._sink), closefd=False)
        elif compression == "gzip":
            self._raw = gzip.GzipFile(
                fileobj=self._sink, mode="wb", mtime=0, compresslevel=GZIP_LEVEL
            )
        elif compression == "none":
            self._raw = self._sink
        else:
            raise ConfigError(
                f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}"
            )
        self._buffer = bytearray()
        self._last: str | None = None
        self._tar_bytes = 0
        self._finished = False

    def _emit(self, data: bytes | memoryview) -> None:
        self._tar_bytes += len(data)
        if len(data) >= _FLUSH_BYTES:
            self._flush()
            self._raw.write(data)
            return
        self._buffer += data
        if len(self._buffer) >= _FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._raw.write(self._buffer)
            self._buffer = bytearray()

    def _next(self, path: str) -> None:
        if self._finished:
            raise ManifestError(f"payload entry {path!r} added after the payload was finished")
        if self._last is not None and path <= self._last:
            raise ManifestError(
                f"payload entry {path!r} comes after {self._last!r}: entries must be added in "
                "strictly increasing path order (parents first, each path once)"
            )
        self._last = path

    def add_dir(self, path: str) -> DirEntry:
        """Add directory ``path`` (mode 0755)."""
        self._next(path)
        self._emit(encode_member(path, DIR, mode=0o755))
        return DirEntry.model_construct(path=path, dir=True, mode=0o755)

    def add_symlink(self, path: str, target: str) -> SymlinkEntry:
        """Add symlink ``path`` -> ``target`` (a canonical relative target)."""
        self._next(path)
        self._emit(encode_member(path, SYM, mode=0o777, link=target))
        return SymlinkEntry.model_construct(path=path, symlink=target)

    def add_file(self, path: str, src: BinaryIO, size: int, *, executable: bool) -> FileEntry:
        """Add regular file ``path``: exactly ``size`` bytes read from ``src``, hashed on the way.

        Raises:
            ManifestError: ``src`` holds more or fewer than ``size`` bytes (it changed while
                being read).
        """
        self._next(path)
        mode = file_mode(executable)
        self._emit(encode_member(path, REG, size, mode))
        digest = hashlib.sha256()
        left = size
        while left:
            chunk = src.read(min(left, _COPY_BYTES))
            if not chunk:
                break
            digest.update(chunk)
            self._emit(chunk)
            left -= len(chunk)
        if left or src.read(1):
            raise ManifestError(f"{path} changed size while it was being packed; retry the build")
        self._emit(bytes(padding(size)))
        # Not validated here (a tamperer's test payload may need any name): the manifest's tree
        # check (agent/package/entries.py) and the agent's parse judge every path.
        return FileEntry.model_construct(path=path, size=size, sha256=digest.hexdigest(), mode=mode)

    def finish(self) -> Payload:
        """End the tar stream (end-of-archive marker, record padding), close the compressor.

        Returns:
            The payload's manifest description: compressed size, SHA-256 and codec.
        """
        if self._finished:
            raise ManifestError("the payload was finished twice")
        self._finished = True
        end = archive_bytes(self._tar_bytes) - self._tar_bytes
        self._emit(END_OF_ARCHIVE + bytes(end - len(END_OF_ARCHIVE)))
        self._flush()
        if self._raw is not self._sink:
            self._raw.close()
        return Payload(
            sha256=self._sink.sha256.hexdigest(),
            size=self._sink.size,
            compression=cast(Any, self._compression),
            chunks=(
                PayloadChunks(size=CHUNK_BYTES, sha256=self._sink.chunk_digests())
                if self._chunks
                else None
            ),
        )


def _write_atomically(
    path: Path,
    manifest_bytes: bytes,
    signatures_bytes: bytes,
    payload: BinaryIO,
    payload_size: int,
    compression: str,
) -> None:
    """Temp file beside ``path``, fsync, rename over ``path``, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("xb") as out:
            write_package(out, manifest_bytes, signatures_bytes, payload, payload_size, compression)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_package_file(
    path: Path, manifest: Manifest, signatures: Iterable[SignatureEntry], payload: BinaryIO
) -> bytes:
    """Write the package file ``path`` atomically from the models and the payload stream.

    Args:
        path: the package to create or replace.
        manifest: the release's manifest; ``manifest.payload`` describes ``payload``.
        signatures: the signature entries (rendered sorted, one per key; may be empty).
        payload: the compressed payload, read from its current position.

    Returns:
        The ``manifest.json`` bytes written (what signers sign).

    Raises:
        ManifestError: duplicate signers.
        PackageFormatError: ``payload`` holds fewer bytes than ``manifest.payload.size``.
        OSError: the file cannot be written.
    """
    data = render_manifest(manifest)
    _write_atomically(
        path,
        data,
        render_signatures(signatures),
        payload,
        manifest.payload.size,
        manifest.payload.compression,
    )
    return data


def add_signature(path: Path, sign: Callable[[bytes], SignatureEntry]) -> list[SignatureEntry]:
    """Add one signature to the package at ``path``, rewriting it atomically.

    The manifest and payload bytes are copied unchanged (signing never changes the manifest
    digest); an earlier signature by the same key is replaced.

    Args:
        path: the package file.
        sign: makes the signature entry for the exact ``manifest.json`` bytes it is given.

    Returns:
        The package's signatures afterwards, sorted by key id.

    Raises:
        NotFoundError: ``path`` cannot be opened.
        PackageFormatError: the container is malformed.
        ManifestError: ``signatures.json`` is malformed.
    """
    parts, fh = open_package(path)
    with fh:
        entries = with_signature(
            parse_signatures(parts.signatures_bytes), sign(parts.manifest_bytes)
        )
        fh.seek(parts.payload_offset)
        _write_atomically(
            path,
            parts.manifest_bytes,
            render_signatures(entries),
            fh,
            parts.payload_size,
            parts.payload_compression,
        )
    return sorted(entries, key=lambda e: e.keyid)
