"""Strict tar stream parsing and decompression, for the extractor (:mod:`agent.extract`).

Everything here reads untrusted bytes and enforces, while streaming:

* **Signed bytes only reach the decompressor.** Either the whole compressed payload matched the
  signed digest before decompression began (packages without chunks), or :class:`ChunkedSource`
  hands it out chunk by chunk, each only after all of its bytes matched its signed digest
  (``payload.chunks``, code ``chunk_digest``): a tampered chunk is refused before the decompressor
  sees any byte of it, and the payload is read once.

* **Bounded decompression.** The codec must be the manifest's (:func:`check_codec`); zstd
  windows are capped at 128 MiB (the zstd CLI default), so a frame cannot demand unbounded
  memory. Decompression runs on its own thread into a bounded queue of at most 1 MiB chunks. A
  codec error is ``corrupt``; a package file that ends inside the payload is ``truncated``; any
  other failure still reaches the caller, never a hang.
* **A decompressed-byte cap.** :class:`Stream` hands out no more bytes than the caller's cap
  (``too_many_bytes``); a stream that ends inside a member is ``truncated``; after the
  end-of-archive marker only zero padding may follow (``trailing_data``).
* **A small, strict tar dialect** (never the standard library's tar module), decoded by the one
  tar codec (:mod:`agent.package.ustar`). POSIX ustar headers only (no GNU or pre-POSIX headers, no
  garbage), with valid checksums and strictly octal numeric fields (base-256 only for sizes).
  Each member may be preceded by one local pax header of at most 64 KiB, whose
  records are well formed and unique and whose only effective keys are ``path``, ``linkpath`` and
  ``size``: times, ids and owner names are ignored, ``hdrcharset`` is accepted only as UTF-8, and
  any other key (GNU sparse data included) is refused. A pax header may neither follow another one
  nor end the archive. At most ``max_members`` members are parsed.

The member-type tables (:data:`KINDS` allowed, :data:`REFUSED` named in messages) are applied per
member by :class:`TarParser`'s subclass, which also checks each name, mode, size and content
against the signed manifest.

Known limit: python-zstandard's stream reader does not report a zstd frame cut short *after* the
tar end-of-archive marker. That cannot change what is extracted (every entry is verified), and
the compressed bytes were signed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import queue
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import BinaryIO, Final, cast

import zstandard

from cutover.agent.errors import (
    ArchiveLimitError,
    CutoverError,
    DigestMismatchError,
    PackageFormatError,
    StorageError,
    UnsafeArchiveError,
)
from cutover.agent.package.container import PackageParts
from cutover.agent.package.manifest import Manifest, PayloadChunks
from cutover.agent.package.ustar import (
    BLOCK,
    DIR,
    PAX,
    REG,
    SYM,
    HeaderError,
    PaxError,
    decode_header,
    decode_pax,
)

__all__ = [
    "CHUNK",
    "KINDS",
    "REBUILD",
    "REFUSED",
    "ChunkedSource",
    "PayloadSource",
    "Producer",
    "Source",
    "Stream",
    "TarParser",
    "check_codec",
    "open_decoder",
    "payload_source",
]

CHUNK: Final = 1 << 20  # decompressed bytes per queue item, and the largest single write
DECOMPRESS_QUEUE: Final = 6  # chunks in flight from the decompressor thread
MAX_WINDOW: Final = 1 << 27
MAX_PAX_BYTES: Final = 64 * 1024
_ZERO_BLOCK: Final = bytes(BLOCK)
_MISPLACED: Final = {"gnu": "a GNU-format tar header", "not_ustar": "garbage"}
KINDS: Final = {REG: "a regular file", DIR: "a directory", SYM: "a symlink"}
REFUSED: Final = {
    ord("1"): "a hardlink",
    ord("3"): "a character device",
    ord("4"): "a block device",
    ord("6"): "a FIFO",
    ord("7"): "a contiguous file",
    ord("g"): "a global pax header",
    ord("L"): "a GNU long-name header",
    ord("K"): "a GNU long-link header",
    ord("S"): "a GNU sparse file",
    0: "an old-style (pre-POSIX) entry",
}
_IGNORED_PAX: Final = frozenset(
    {"mtime", "atime", "ctime", "uid", "gid", "uname", "gname", "comment"}
)
_UTF8_CHARSET: Final = b"ISO-IR 10646 2000 UTF-8"
REBUILD: Final = (
    "the package is corrupt, was not made by `cutover build`, or was tampered with: do not "
    "deploy it; rebuild and re-sign the release"
)


def check_codec(parts: PackageParts, manifest: Manifest, compression: str | None = None) -> None:
    """The payload member's codec is the expected one (``compression``, default the manifest's)."""
    expected = manifest.payload.compression if compression is None else compression
    if parts.payload_compression != expected:
        what = "the signed manifest's" if compression is None else "delta.json's"
        raise PackageFormatError(
            f"package member {parts.payload_name!r} does not match {what} payload "
            f"compression {expected!r}; {REBUILD}",
            code="payload_codec",
        )


class PayloadSource:
    """The payload member's bytes, read from the package file; a short read means truncation."""

    def __init__(self, fh: BinaryIO, parts: PackageParts) -> None:
        self._fh = fh
        self._left = parts.payload_size
        fh.seek(parts.payload_offset)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self._left if size < 0 else min(size, self._left)
        data = self._fh.read(n)
        if len(data) < n:
            raise PackageFormatError(
                "the package file ended inside the payload (was it changed or truncated during "
                "extraction?); upload it again",
                code="truncated",
            )
        self._left -= n
        return data


class ChunkedSource:
    """Hands the payload to the decompressor only in whole chunks that matched their signed
    digests (``manifest.payload.chunks``): no byte of a chunk is handed out before all of it
    was read and hashed, so the decompressor never sees an unsigned byte.

    Args:
        read: returns exactly the number of payload bytes asked for (or raises ``truncated``).
        size: the payload's size (already checked against the manifest).
        chunks: the signed chunk size and digests.
    """

    def __init__(self, read: Callable[[int], bytes], size: int, chunks: PayloadChunks) -> None:
        self._read = read
        self._left = size
        self._size = chunks.size
        self._digests = chunks.sha256
        self._index = 0
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> None:
        n = min(self._size, self._left)
        data = self._read(n)
        actual = hashlib.sha256(data).hexdigest()
        expected = self._digests[self._index]
        if actual != expected:
            start = self._index * self._size
            raise DigestMismatchError(
                f"payload chunk {self._index + 1} of {len(self._digests)} (bytes {start}-"
                f"{start + n - 1}) has sha256 {actual[:16]}… but the signed manifest says "
                f"{expected[:16]}…; {REBUILD}",
                code="chunk_digest",
            )
        self._index += 1
        self._left -= n
        self._buf, self._pos = data, 0

    def read(self, size: int = -1) -> bytes:
        if self._pos >= len(self._buf):
            if not self._left:
                return b""
            self._next_chunk()
        if self._pos == 0 and (size < 0 or size >= len(self._buf)):
            self._pos = len(self._buf)
            return self._buf
        end = len(self._buf) if size < 0 else self._pos + size
        data = self._buf[self._pos : end]
        self._pos += len(data)
        return data


Source = PayloadSource | ChunkedSource


def payload_source(fh: BinaryIO, parts: PackageParts, chunks: PayloadChunks | None) -> Source:
    """What the decompressor reads: chunk-verified with the signed ``chunks``, else the raw
    payload (whose whole digest the caller checked first)."""
    raw = PayloadSource(fh, parts)
    if chunks is None:
        return raw
    return ChunkedSource(raw.read, parts.payload_size, chunks)


def open_decoder(source: Source, compression: str) -> Callable[[int], bytes]:
    if compression == "zstd":
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        reader = dctx.stream_reader(
            cast(BinaryIO, source), read_size=CHUNK, read_across_frames=True
        )
        return reader.read
    if compression == "gzip":
        return gzip.GzipFile(fileobj=cast(BinaryIO, source), mode="rb").read
    return source.read


class Producer:
    """Decompresses on its own thread into a bounded queue of chunks (or the error it met)."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(DECOMPRESS_QUEUE)
        self._halt = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="cutover-decompress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._halt.is_set():
                data = self._read(CHUNK)
                self._put(data)
                if not data:
                    return
        except (zstandard.ZstdError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            self._put(_corrupt(exc))
        except OSError as exc:
            self._put(
                StorageError(
                    f"cannot read the package payload: {exc.strerror or exc}; check the file "
                    "and retry"
                )
            )
        except BaseException as exc:  # anything else still reaches the caller: never a hang
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._halt.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.1)
                return

    def next(self) -> bytes:
        """The next chunk; ``b""`` at the end of the stream."""
        if self._done:
            return b""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._done = not item
        return item

    def stop(self) -> None:
        self._halt.set()
        while self._thread.is_alive():  # make room so a blocked put returns at once
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.01)


def _corrupt(exc: BaseException) -> PackageFormatError:
    return PackageFormatError(
        f"payload does not decompress ({type(exc).__name__}: {exc}); {REBUILD}", code="corrupt"
    )


class Stream:
    """The decompressed tar stream as blocks and byte runs; enforces the decompressed-byte cap."""

    def __init__(self, next_chunk: Callable[[], bytes], cap: int, where: Callable[[], str]) -> None:
        self._next = next_chunk
        self._view = memoryview(b"")
        self._pos = 0
        self._cap = cap
        self._total = 0
        self._over = False
        self._excess = memoryview(b"")  # the part of the last chunk beyond the cap
        self._where = where

    def _refill(self, at_end: bool = False) -> bool:
        # The cap counts the bytes the parser consumes, so a member's own problem (a wrong size,
        # an unlisted name) is reported as such even when the stream is also over the cap.
        data = b"" if self._over else self._next()
        if self._over or (data and self._total >= self._cap):
            beyond = self._excess if self._over else memoryview(data)
            if at_end and beyond.tobytes().strip(b"\x00"):  # garbage, not a bomb of zeros
                raise PackageFormatError(
                    f"payload has data after its end-of-archive marker; {REBUILD}",
                    code="trailing_data",
                )
            raise ArchiveLimitError(
                f"payload decompresses to more than the {self._cap} bytes its manifest accounts "
                f"for (at {self._where()}): a decompression bomb or a corrupt package; {REBUILD}",
                code="too_many_bytes",
            )
        if not data:
            if at_end:
                return False
            raise PackageFormatError(
                f"payload is truncated: the tar stream ends inside {self._where()}; {REBUILD}",
                code="truncated",
            )
        self._view = memoryview(data)
        if len(data) > self._cap - self._total:  # keep what fits; asking for more is an error
            self._excess = self._view[self._cap - self._total :]
            self._view = self._view[: self._cap - self._total]
            self._over = True
        self._total += len(self._view)
        self._pos = 0
        return True

    def take(self, n: int) -> memoryview:
        """Between 1 and ``n`` next bytes, without copying."""
        if self._pos >= len(self._view):
            self._refill()
        view = self._view[self._pos : self._pos + n]
        self._pos += len(view)
        return view

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""
        first = self.take(n)
        if len(first) == n:
            return first.tobytes()
        pieces = [first.tobytes()]
        n -= len(first)
        while n:
            piece = self.take(n)
            pieces.append(piece.tobytes())
            n -= len(piece)
        return b"".join(pieces)

    def skip(self, n: int) -> None:
        while n:
            n -= len(self.take(n))

    def expect_zeros_to_end(self) -> None:
        """After the end-of-archive marker only zero padding may follow, up to the cap."""
        while True:
            if self._view[self._pos :].tobytes().strip(b"\x00"):
                raise PackageFormatError(
                    f"payload has data after its end-of-archive marker; {REBUILD}",
                    code="trailing_data",
                )
            if not self._refill(at_end=True):
                return


class TarParser(ABC):
    """Walks the headers of a :class:`Stream`, handing each member to :meth:`_member`.

    It keeps track of where it is (member index and name) for messages; the subclass decides what
    each member's name, link target, mode and data may be, and consumes the data.
    """

    def __init__(self, max_members: int) -> None:
        self._max_members = max_members
        self.index = 0
        self.member = ""

    def where(self) -> str:
        """Where the parser is, for messages (built only when one is needed)."""
        return f"member {self.index} ({self.member!r})" if self.member else f"member {self.index}"

    def _error(self, cls: type[CutoverError], what: str, code: str) -> CutoverError:
        return cls(f"payload {self.where()}: {what}; {REBUILD}", code=code)

    def run(self, stream: Stream) -> None:
        """Parse members up to the end-of-archive marker, handing each to :meth:`_member`."""
        pax: dict[str, bytes] | None = None
        while True:
            if pax is None:  # a pax header belongs to the member after it
                self.index += 1
                self.member = ""
            try:
                header = decode_header(stream.read(BLOCK))
            except HeaderError as exc:
                what = _MISPLACED.get(exc.code)
                if what is not None:
                    what += " where a POSIX ustar/pax header belongs"
                raise self._error(PackageFormatError, what or exc.what, "corrupt") from None
            if header is None:
                if pax is not None:
                    raise self._error(PackageFormatError, "a pax header ends the tar", "bad_pax")
                if stream.read(BLOCK) != _ZERO_BLOCK:
                    raise self._error(PackageFormatError, "a lone zero block", "corrupt")
                stream.expect_zeros_to_end()
                return
            name, mode, size, kind, link, _ = header
            if kind == PAX:
                if pax is not None:
                    raise self._error(UnsafeArchiveError, "two pax headers in a row", "bad_pax")
                if size > MAX_PAX_BYTES:
                    raise self._error(
                        ArchiveLimitError,
                        f"pax header of {size} bytes exceeds {MAX_PAX_BYTES}",
                        "pax_too_large",
                    )
                try:
                    pax = decode_pax(stream.read(size))
                except PaxError as exc:
                    # A repeated key is a differential between tar readers (which copy wins).
                    cls = UnsafeArchiveError if exc.code == "duplicate" else PackageFormatError
                    raise self._error(cls, exc.what, "bad_pax") from None
                stream.skip(-size % BLOCK)
                continue
            if pax is not None:
                name, link, size = self._apply_pax(pax, name, link, size)
                pax = None
            if self.index > self._max_members:
                raise self._error(
                    ArchiveLimitError,
                    f"{name[:80]!r} is beyond the {self._max_members} members the manifest lists "
                    "(an entry-count bomb, a duplicate or an unlisted file)",
                    "too_many_entries",
                )
            self._member(stream, kind, name, link, mode, size)

    def _apply_pax(
        self, pax: dict[str, bytes], name: bytes, link: bytes, size: int
    ) -> tuple[bytes, bytes, int]:
        for key, value in pax.items():
            if key == "path":
                name = value
            elif key == "linkpath":
                link = value
            elif key == "size":
                if not value.isdigit():
                    raise self._error(PackageFormatError, f"pax size {value[:40]!r}", "bad_pax")
                size = int(value)
            elif key not in _IGNORED_PAX and not (key == "hdrcharset" and value == _UTF8_CHARSET):
                what = "sparse-file data" if key.startswith("GNU.sparse") else "an unsupported key"
                raise self._error(
                    UnsafeArchiveError,
                    f"pax header carries {what} ({key[:40]!r}); only path, linkpath and size are "
                    "honoured",
                    "bad_pax",
                )
        return name, link, size

    @abstractmethod
    def _member(
        self, stream: Stream, kind: int, raw: bytes, link: bytes, mode: int, size: int
    ) -> None:
        """Handle one member; its ``size`` data bytes (then padding) come next in ``stream``."""
