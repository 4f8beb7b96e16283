"""The one tar codec: POSIX ustar headers, local pax records, block and record padding.

Both tar layers of a package are read and written here: the outer container
(:mod:`agent.package.container`) and the payload (written by :mod:`agent.package.writer`, parsed
by :mod:`agent.extract._stream`). Each caller adds its own policy on top (the container accepts
only plain regular-file headers; the payload parser decides which member types and pax keys it
honours); this module only turns bytes into fields and back, strictly:

* **Decoding** (:func:`decode_header`): the magic must be POSIX ``ustar\\0`` + ``00`` (GNU and
  pre-POSIX headers are refused), the checksum must match (unsigned sum, checksum field read as
  spaces), and the mode, size and checksum fields must be octal digits followed only by NUL or
  space padding; a size may use the base-256 form (first byte ``0x80``) for 8 GiB and more. The
  ustar name prefix is joined to the name. Other numeric fields (ids, times) are never read.
* **Pax records** (:func:`decode_pax`): ``"<len> <key>=<value>\\n"``, each length exact, keys
  ASCII and unique; nothing else in the header data.
* **Encoding** (:func:`encode_member`): uid/gid 0, mtime 0, empty owner names, NUL device fields;
  a name or link name that is not ASCII or longer than 100 bytes travels in a local pax header
  (``path``, ``linkpath``), as does a size of 8 GiB or more (``size``); a directory's name ends
  in ``/``. This is the layout Python's standard tar module emits in pax format, so packages
  built before and after the codec existed are byte-identical. :func:`member_bytes` and :func:`archive_bytes`
  say exactly how many bytes that is, which is what the extractor's byte cap is made of.
"""

from __future__ import annotations

import re
import struct
from typing import Final, NamedTuple
from zlib import adler32

__all__ = [
    "BLOCK",
    "DIR",
    "END_OF_ARCHIVE",
    "PAX",
    "RECORD",
    "REG",
    "SYM",
    "Header",
    "HeaderError",
    "PaxError",
    "archive_bytes",
    "decode_header",
    "decode_pax",
    "encode_header",
    "encode_member",
    "member_bytes",
    "padded",
    "padding",
]

BLOCK: Final = 512
RECORD: Final = 20 * BLOCK  # tar's default record: writers pad the archive to a multiple of it
END_OF_ARCHIVE: Final = bytes(2 * BLOCK)
REG, SYM, DIR, PAX = b"025x"
MAGIC: Final = b"ustar\x0000"
GNU_MAGIC: Final = b"ustar  \x00"
NAME_BYTES: Final = 100
PAX_NAME: Final = b"././@PaxHeader"
_MAX_OCTAL_SIZE: Final = 8**11  # 11 octal digits
_ZERO_BLOCK: Final = bytes(BLOCK)
# name mode uid gid size mtime chksum typeflag linkname magic+version uname gname dev dev prefix
_HEADER: Final = struct.Struct("100s8s8s8s12s12s8sB100s8s32s32s8s8s155s12x")
_OCTAL: Final = re.compile(rb"([0-7]{1,12})[ \x00]*")


class HeaderError(ValueError):
    """A header block that is not valid ustar; ``code`` is ``not_ustar``, ``gnu``,
    ``checksum`` or ``number``. Callers translate it into their own error, with context."""

    def __init__(self, what: str, code: str) -> None:
        super().__init__(what)
        self.what = what
        self.code = code


class PaxError(ValueError):
    """Pax header data that is malformed (``code`` ``malformed``) or repeats a key
    (``duplicate``). Callers translate it, as for :class:`HeaderError`."""

    def __init__(self, what: str, code: str) -> None:
        super().__init__(what)
        self.what = what
        self.code = code


class Header(NamedTuple):
    """The fields of one header block that a reader may act on."""

    name: bytes  # prefix joined with "/", up to the first NUL
    mode: int
    size: int
    kind: int  # the type flag byte
    link: bytes
    prefixed: bool  # the ustar name prefix was used


_new_header: Final = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path


def padding(size: int) -> int:
    """Zero bytes that follow ``size`` data bytes to reach a block boundary."""
    return -size % BLOCK


def padded(size: int) -> int:
    """``size`` rounded up to a whole number of blocks."""
    return size + -size % BLOCK


def _number(field: bytes, what: str, base256: bool) -> int:
    """A numeric field: octal digits then NUL/space padding (``int()`` alone is laxer)."""
    digits = field.rstrip(b" \x00")
    if digits.isdigit():  # ASCII 0-9 only, none before them: int() then refuses only 8 and 9
        try:
            return int(digits, 8)
        except ValueError:
            pass
    match = _OCTAL.fullmatch(field)
    if match is not None:
        return int(match[1], 8)
    if base256 and field[0] == 0x80:  # base-256 (GNU/star), for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    raise HeaderError(f"the {what} field {field!r} is not an octal number", "number")


def _byte_sum(block: bytes | memoryview) -> int:
    """The unsigned sum of a block's 512 bytes, in C: each half's Adler-32 ``A`` is 1 + the sum
    of its bytes modulo 65521, and 256 bytes sum to at most 65280, so nothing wraps."""
    return (adler32(block[:256]) & 0xFFFF) + (adler32(block[256:]) & 0xFFFF) - 2


def decode_header(block: bytes | memoryview) -> Header | None:
    """Decode one 512-byte header block; ``None`` for an all-zero block (end of archive).

    ``block`` may be a view into a larger buffer (the payload parser passes one, uncopied).

    Raises:
        HeaderError: not POSIX ustar, a bad checksum, or a malformed numeric field.
    """
    # Runs once per member of every payload: the common case is kept inline (bench/extract.py).
    name, mode, _, _, size, _, chksum, kind, link, magic, _, _, _, _, prefix = _HEADER.unpack(block)
    if magic != MAGIC:
        if block == _ZERO_BLOCK:
            return None
        if magic == GNU_MAGIC:
            raise HeaderError("a GNU-format tar header (only POSIX ustar is read)", "gnu")
        raise HeaderError("not a POSIX ustar header", "not_ustar")
    if _number(chksum, "checksum", False) != _byte_sum(block) - sum(chksum) + 256:
        raise HeaderError("bad header checksum", "checksum")
    length = _number(size, "size", True)
    bits = _number(mode, "mode", False)
    name = name.partition(b"\x00")[0]
    prefixed = prefix[0] != 0
    if prefixed:
        name = prefix.partition(b"\x00")[0] + b"/" + name
    return _new_header(Header, (name, bits, length, kind, link.partition(b"\x00")[0], prefixed))


def decode_pax(data: bytes) -> dict[str, bytes]:
    """Parse pax records strictly: exact lengths, ASCII keys, no duplicates, no slack.

    Raises:
        PaxError: a malformed record, or a key that appears twice.
    """
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 20)
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        end = pos + length
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if length <= 0 or end > len(data) or data[end - 1] != 0x0A or not eq or not key.isascii():
            raise PaxError(f"malformed pax record at byte {pos}", "malformed")
        name = key.decode("ascii")
        if name in records:
            raise PaxError(f"pax key {name!r} appears twice", "duplicate")
        records[name] = value
        pos = end
    return records


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def encode_header(
    name: bytes, kind: int, size: int = 0, mode: int = 0o644, link: bytes = b""
) -> bytes:
    """One ustar header block: uid/gid 0, mtime 0, no owner names, NUL device fields.

    ``name`` and ``link`` are cut to 100 bytes (a pax record carries the full value); a size
    of 8 GiB or more is written in base-256.
    """
    size_field = _octal(size, 12) if size < _MAX_OCTAL_SIZE else b"\x80" + size.to_bytes(11, "big")
    block = bytearray(
        _HEADER.pack(
            name[:NAME_BYTES],
            _octal(mode, 8),
            _octal(0, 8),
            _octal(0, 8),
            size_field,
            _octal(0, 12),
            b" " * 8,
            kind,
            link[:NAME_BYTES],
            MAGIC,
            b"",
            b"",
            b"",
            b"",
            b"",
        )
    )
    block[148:155] = b"%06o\x00" % sum(block)
    return bytes(block)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = len(key) + len(value) + 3  # " " + "=" + "\n"
    length = previous = 0
    while True:  # the length counts its own digits
        length = body + len(str(previous))
        if length == previous:
            return b"%d %s=%s\n" % (length, key, value)
        previous = length


def _pax_records(name: bytes, link: bytes, size: int) -> bytes:
    records = b""
    if len(name) > NAME_BYTES or not name.isascii():
        records += _pax_record(b"path", name)
    if len(link) > NAME_BYTES or not link.isascii():
        records += _pax_record(b"linkpath", link)
    if size >= _MAX_OCTAL_SIZE:
        records += _pax_record(b"size", b"%d" % size)
    return records


def _ascii(field: bytes) -> bytes:
    """What the ustar field holds when a pax record carries the real value: ``?`` for non-ASCII."""
    return field if field.isascii() else field.decode().encode("ascii", "replace")


def _member_name(path: str, kind: int) -> bytes:
    name = path.encode()
    return name + b"/" if kind == DIR else name


def encode_member(path: str, kind: int, size: int = 0, mode: int = 0o644, link: str = "") -> bytes:
    """The header blocks of one payload member (its pax header first, if it needs one).

    The member's data, then :func:`padding` zero bytes, follow these blocks.
    """
    name, target = _member_name(path, kind), link.encode()
    records = _pax_records(name, target, size)
    head = b""
    if records:
        head = (
            encode_header(PAX_NAME, PAX, len(records), 0) + records + bytes(padding(len(records)))
        )
    return head + encode_header(
        _ascii(name), kind, size if size < _MAX_OCTAL_SIZE else 0, mode, _ascii(target)
    )


def member_bytes(path: str, kind: int, size: int = 0, link: str = "") -> int:
    """Exactly how many bytes :func:`encode_member` and the padded data take for this member."""
    short = len(path) < NAME_BYTES and len(link) <= NAME_BYTES and size < _MAX_OCTAL_SIZE
    if short and path.isascii() and link.isascii():  # no pax header: the common case, computed
        return BLOCK + size + -size % BLOCK  # for every entry of every manifest (the byte cap)
    records = _pax_records(_member_name(path, kind), link.encode(), size)
    return (BLOCK + padded(len(records)) if records else 0) + BLOCK + padded(size)


def archive_bytes(members_bytes: int) -> int:
    """Size of a tar stream whose members take ``members_bytes``: the end-of-archive marker,
    then zero padding to a whole :data:`RECORD`."""
    total = members_bytes + len(END_OF_ARCHIVE)
    return total + -total % RECORD
