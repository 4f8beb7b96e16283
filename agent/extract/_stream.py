"""The strict tar stream, for the extractor (:mod:`agent.extract`) and thin payloads.

Everything here reads untrusted (decompressed) bytes and enforces, while streaming:

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
against the signed manifest. The bytes come from :mod:`agent.extract._source` (signed, then
decompressed, in blocks of up to 4 MiB); a header or a small file inside one block is handed out
as a view of it (:meth:`Stream.span`), uncopied.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Final

from cutover.agent.errors import (
    ArchiveLimitError,
    CutoverError,
    PackageFormatError,
    UnsafeArchiveError,
)
from cutover.agent.extract._source import REBUILD
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
    "KINDS",
    "REBUILD",
    "REFUSED",
    "Stream",
    "TarParser",
]

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


class Stream:
    """The decompressed tar stream as blocks and byte runs; enforces the decompressed-byte cap."""

    def __init__(self, next_chunk: Callable[[], bytes], cap: int, where: Callable[[], str]) -> None:
        self._next = next_chunk
        self._view = memoryview(b"")
        self._pos = self._len = 0
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
        self._len = len(self._view)
        self._total += self._len
        self._pos = 0
        return True

    def take(self, n: int) -> memoryview:
        """Between 1 and ``n`` next bytes, without copying."""
        if self._pos >= self._len:
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

    def span(self, n: int) -> memoryview:
        """Exactly ``n`` next bytes as one view: of the current block, uncopied, when they lie in
        it (every header, and most small files), else joined from the blocks they straddle."""
        pos = self._pos
        end = pos + n
        if end <= self._len:
            self._pos = end
            return self._view[pos:end]
        return memoryview(self.read(n))

    def skip(self, n: int) -> None:
        end = self._pos + n
        if end <= self._len:
            self._pos = end
            return
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
                header = decode_header(stream.span(BLOCK))
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
