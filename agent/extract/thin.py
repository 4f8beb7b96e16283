"""Thin payloads: re-tar the regular files a host lacks out of a full package's payload.

The controller's delta push (controller/delta.py) and ``cutover build --base`` make a thin payload
(docs/package-format.md, "Delta uploads", "Thin packages") holding only the regular files whose
SHA-256 is wanted, in the full payload's order, through the package writer
(:class:`agent.package.writer.PayloadWriter`, the one tar codec): directories and symlinks are
never in it (the agent takes them from the manifest).

The full payload is read with the extractor's own strict parser (:mod:`agent.extract._stream`) after
its digest matched the manifest, under the manifest's byte cap; every file copied is hashed on
the way and must match its manifest entry, so a thin payload is only ever made of signed bytes.
Streaming: memory is bounded by the parser's 4 MiB blocks, whatever the package size.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import BinaryIO, cast

from cutover.agent.errors import DigestMismatchError, PackageFormatError
from cutover.agent.extract._source import Producer, open_decoder, payload_source
from cutover.agent.extract._stream import KINDS, REBUILD, Stream, TarParser
from cutover.agent.extract.checks import DEFAULT_LIMITS, byte_cap, verify_payload_digest
from cutover.agent.package.container import PackageParts
from cutover.agent.package.manifest import FileEntry, Manifest, Payload
from cutover.agent.package.ustar import BLOCK, REG
from cutover.agent.package.writer import PayloadWriter, file_mode

__all__ = ["ThinPayload", "write_thin_payload"]


@dataclass(frozen=True)
class ThinPayload:
    """The thin payload written: its description, and the files and file bytes it holds."""

    payload: Payload
    files: int
    bytes: int


class _Reader:
    """``size`` bytes of the tar stream, as the file object :meth:`PayloadWriter.add_file` reads."""

    def __init__(self, stream: Stream, size: int) -> None:
        self._stream = stream
        self._left = size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        if not n:
            return b""
        data = self._stream.take(n).tobytes()
        self._left -= len(data)
        return data


class _Thinner(TarParser):
    def __init__(self, manifest: Manifest, wanted: Collection[str], writer: PayloadWriter) -> None:
        super().__init__(len(manifest.files))
        self._entries = manifest.entries_by_path()
        self._wanted = wanted
        self._writer = writer
        self.files = self.bytes = 0

    def _member(
        self, stream: Stream, kind: int, raw: bytes, link: bytes, mode: int, size: int
    ) -> None:
        self.member = path = raw.decode("utf-8", "replace").rstrip("/")
        entry = self._entries.get(path)
        if kind not in KINDS or entry is None or (kind == REG) != isinstance(entry, FileEntry):
            raise self._error(
                PackageFormatError, "is not what the manifest lists", "not_in_manifest"
            )
        if not isinstance(entry, FileEntry):
            stream.skip(size + (-size % BLOCK))
            return
        if entry.sha256 not in self._wanted:
            stream.skip(size + (-size % BLOCK))
            return
        if file_mode(bool(entry.mode & 0o100)) != entry.mode or size != entry.size:
            raise self._error(
                PackageFormatError,
                f"mode {entry.mode:#o} or size {size} cannot be re-packed exactly by `cutover "
                "build`'s writer; push the full package (--no-delta)",
                "not_repackable",
            )
        written = self._writer.add_file(
            path, cast(BinaryIO, _Reader(stream, size)), size, executable=bool(entry.mode & 0o100)
        )
        if written.sha256 != entry.sha256:
            raise self._error(DigestMismatchError, "differs from the manifest", "digest_mismatch")
        stream.skip(-size % BLOCK)
        self.files += 1
        self.bytes += size


def write_thin_payload(
    fh: BinaryIO,
    parts: PackageParts,
    manifest: Manifest,
    wanted: Collection[str],
    out: BinaryIO,
    *,
    compression: str | None = None,
) -> ThinPayload:
    """Write to ``out`` the thin payload of the files of ``manifest`` whose SHA-256 is ``wanted``.

    Args:
        fh: the full package, opened for binary reading; parts: its container layout.
        manifest: its manifest (parsed; the payload digest is checked here first).
        wanted: the SHA-256 digests to ship (every file with one of them, once per path).
        out: where the compressed thin payload goes.
        compression: its codec (default: the full payload's).

    Raises:
        DigestMismatchError, PackageFormatError, ArchiveLimitError: the full package is not what
            its manifest says (rebuild it), or a file cannot be re-packed exactly.
    """
    if manifest.payload.base is not None:
        raise PackageFormatError(
            f"{manifest.app} {manifest.version} is already a thin package (base "
            f"{manifest.payload.base}); a delta needs the full package; {REBUILD}",
            code="already_thin",
        )
    verify_payload_digest(fh, parts, manifest)
    writer = PayloadWriter(out, compression or manifest.payload.compression)
    job = _Thinner(manifest, wanted, writer)
    source = payload_source(fh, parts, None)  # the whole digest matched just above
    producer = Producer(open_decoder(source, manifest.payload.compression))
    producer.start()
    try:
        job.run(Stream(producer.next, byte_cap(manifest, DEFAULT_LIMITS), job.where))
    finally:
        producer.stop()
    return ThinPayload(writer.finish(), job.files, job.bytes)
