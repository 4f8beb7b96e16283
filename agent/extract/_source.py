"""The extractor's input side (:mod:`agent.extract`): signed payload bytes into the decompressor,
decompressed blocks out to the tar parser.

Everything here reads untrusted bytes and enforces, while streaming:

* **Signed bytes only reach the decompressor.** Either the whole compressed payload matched the
  signed digest before decompression began (packages without chunks), or :class:`ChunkedSource`
  hands it out chunk by chunk, each only after all of its bytes matched its signed digest
  (``payload.chunks``, code ``chunk_digest``): a tampered chunk is refused before the decompressor
  sees any byte of it, and the payload is read once.
* **Bounded decompression.** The codec must be the manifest's (:func:`check_codec`); zstd
  windows are capped at 128 MiB (the zstd CLI default), so a frame cannot demand unbounded
  memory. Decompression runs on its own thread (:class:`Producer`) into a bounded queue of
  blocks of at most :data:`BLOCK_BYTES` (4 MiB). A codec error is ``corrupt``; a package file
  that ends inside the payload is ``truncated``; any other failure still reaches the caller,
  never a hang.

Why 4 MiB blocks: the decompressor thread needs the GIL only between blocks (zstd, the file read
and SHA-256 release it), and every time it takes the GIL the extracting thread may have to wait
for it back. One 4 MiB block, read as one signed chunk and decompressed by one call, is a
quarter of the hand-overs of 1 MiB ones (bench/extract.py, docs/design.md "Extraction CPU").

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
from collections.abc import Callable
from typing import BinaryIO, Final, cast

import zstandard

from cutover.agent.errors import DigestMismatchError, PackageFormatError, StorageError
from cutover.agent.package.container import PackageParts
from cutover.agent.package.manifest import Manifest, PayloadChunks

__all__ = [
    "BLOCK_BYTES",
    "REBUILD",
    "ChunkedSource",
    "PayloadSource",
    "Producer",
    "Source",
    "check_codec",
    "open_decoder",
    "payload_source",
]

BLOCK_BYTES: Final = 4 << 20  # most decompressed bytes per queue item (one call of the decoder)
READ_BYTES: Final = 4 << 20  # compressed bytes per read of a package without chunks
DECOMPRESS_QUEUE: Final = 3  # blocks in flight from the decompressor thread
MAX_WINDOW: Final = 1 << 27
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
        self.read_size = READ_BYTES
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

    The decoder reads ``read_size`` (the chunk size) at a time, so each chunk is handed out
    whole, as the bytes object it was read into: never sliced, never copied.

    Args:
        read: returns exactly the number of payload bytes asked for (or raises ``truncated``).
        size: the payload's size (already checked against the manifest).
        chunks: the signed chunk size and digests.
    """

    def __init__(self, read: Callable[[int], bytes], size: int, chunks: PayloadChunks) -> None:
        self._read = read
        self._left = size
        self._size = self.read_size = chunks.size
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
    """A ``read(n)`` of at most ``n`` decompressed bytes (``b""`` at the end) over ``source``."""
    read_size = getattr(source, "read_size", READ_BYTES)  # a test's wrapper may not say
    if compression == "zstd":
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        reader = dctx.stream_reader(
            cast(BinaryIO, source), read_size=read_size, read_across_frames=True
        )
        return reader.read
    if compression == "gzip":
        return gzip.GzipFile(fileobj=cast(BinaryIO, source), mode="rb").read
    return source.read


class Producer:
    """Decompresses on its own thread into a bounded queue of blocks (or the error it met)."""

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
                data = self._read(BLOCK_BYTES)
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
        """The next block; ``b""`` at the end of the stream."""
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
