"""The outer package container: ``<app>-<version>.cutover``.

An uncompressed POSIX ustar archive holding exactly three regular members, in this order:
``manifest.json``, ``signatures.json``, ``payload.tar.zst`` (or ``.tar.gz`` / ``.tar``), then the
end-of-archive marker. This reader accepts nothing else (no pax or GNU headers, no other types,
no extra members), so there is no ambiguity about which bytes were signed. Sizes use octal, or the
base-256 form for payloads over 8 GiB.

Reading returns the manifest and signature bytes plus the payload's offset and size in the file;
the payload is then hashed and streamed straight from the file (see agent.archive).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cutover.agent.errors import NotFoundError, PackageFormatError
from cutover.agent.package.manifest import MAX_MANIFEST_BYTES, MAX_SIGNATURES_BYTES

__all__ = [
    "PAYLOAD_NAMES",
    "PackageParts",
    "copy_payload",
    "hash_payload",
    "open_package",
    "read_package",
    "write_package",
]

BLOCK = 512
PAYLOAD_NAMES = {"zstd": "payload.tar.zst", "gzip": "payload.tar.gz", "none": "payload.tar"}
_PAYLOAD_BY_NAME = {v: k for k, v in PAYLOAD_NAMES.items()}
_FIXED_MTIME = 0  # deterministic packages
_MAX_PADDING = 64 * 1024  # zero blocks a tar record may add after the end-of-archive marker


@dataclass(frozen=True)
class PackageParts:
    manifest_bytes: bytes
    signatures_bytes: bytes
    payload_name: str
    payload_compression: str
    payload_offset: int
    payload_size: int


def _parse_number(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # base-256 (GNU/star) for large sizes
        if field[0] != 0x80:
            raise PackageFormatError(f"package: {what} uses a negative base-256 number")
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\x00 ").lstrip(b" ")
    if not text:
        return 0
    if not all(0x30 <= c <= 0x37 for c in text):
        raise PackageFormatError(f"package: {what} is not an octal number")
    return int(text, 8)


def _header(name: str, size: int, mode: int = 0o644) -> bytes:
    h = bytearray(BLOCK)
    nb = name.encode()
    h[0 : len(nb)] = nb
    h[100:108] = b"%07o\x00" % mode
    h[108:116] = b"0000000\x00"
    h[116:124] = b"0000000\x00"
    if size < 8**11:
        h[124:136] = b"%011o\x00" % size
    else:
        h[124:136] = b"\x80" + size.to_bytes(11, "big")
    h[136:148] = b"%011o\x00" % _FIXED_MTIME
    h[148:156] = b" " * 8
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\x00 " % sum(h)
    return bytes(h)


def _read_header(fh: BinaryIO, index: int) -> tuple[str, int]:
    raw = fh.read(BLOCK)
    if len(raw) < BLOCK:
        raise PackageFormatError(f"package is truncated: member {index + 1} of 3 is missing")
    if raw == b"\x00" * BLOCK:
        raise PackageFormatError(f"package ends after {index} members; expected 3")
    stored = _parse_number(raw[148:156], "header checksum")
    if stored != sum(raw[:148]) + 256 + sum(raw[156:]):
        raise PackageFormatError(f"package: member {index + 1} has a bad header checksum")
    if raw[257:265] != b"ustar\x0000":
        raise PackageFormatError(f"package: member {index + 1} is not a ustar header")
    if raw[156:157] not in (b"0", b"\x00"):
        raise PackageFormatError(
            f"package: member {index + 1} has type {raw[156:157]!r}; only regular files allowed"
        )
    if raw[345:500].strip(b"\x00"):
        raise PackageFormatError(f"package: member {index + 1} uses a ustar name prefix")
    name = raw[0:100].split(b"\x00", 1)[0].decode("ascii", "replace")
    return name, _parse_number(raw[124:136], "member size")


def _padding(size: int) -> int:
    return (BLOCK - size % BLOCK) % BLOCK


def read_package(fh: BinaryIO, file_size: int) -> PackageParts:
    """Parse the container from an open file positioned at 0.

    Raises:
        PackageFormatError: anything but the exact three-member layout, or truncation.
    """
    parts: list[tuple[str, int, int]] = []
    small: list[bytes] = []
    expected = ("manifest.json", "signatures.json")
    caps = (MAX_MANIFEST_BYTES, MAX_SIGNATURES_BYTES)
    for i in range(3):
        name, size = _read_header(fh, i)
        offset = fh.tell()
        if i < 2:
            if name != expected[i]:
                raise PackageFormatError(
                    f"package member {i + 1} is {name!r}; expected {expected[i]!r} (order matters)"
                )
            if size > caps[i]:
                raise PackageFormatError(f"package: {name} is {size} bytes; limit {caps[i]}")
            data = fh.read(size)
            if len(data) != size:
                raise PackageFormatError(f"package is truncated inside {name}")
            small.append(data)
            fh.seek(_padding(size), os.SEEK_CUR)
        else:
            if name not in _PAYLOAD_BY_NAME:
                raise PackageFormatError(
                    f"package member 3 is {name!r}; expected one of {sorted(_PAYLOAD_BY_NAME)}"
                )
            if offset + size > file_size:
                raise PackageFormatError(
                    f"package is truncated: {name} declares {size} bytes but the file ends "
                    f"{file_size - offset} bytes in"
                )
            fh.seek(size + _padding(size), os.SEEK_CUR)
        parts.append((name, offset, size))
    trailer = fh.read(2 * BLOCK)
    # tar pads to its record size (GNU: 10 KiB): allow zero padding, nothing else, after the marker.
    rest = fh.read(_MAX_PADDING + 1)
    if (
        len(trailer) < 2 * BLOCK
        or trailer.strip(b"\x00")
        or rest.strip(b"\x00")
        or len(rest) > _MAX_PADDING
    ):
        raise PackageFormatError(
            "package does not end with the end-of-archive marker after its third member "
            "(truncated, or extra data appended)"
        )
    name, offset, size = parts[2]
    return PackageParts(small[0], small[1], name, _PAYLOAD_BY_NAME[name], offset, size)


def open_package(path: Path) -> tuple[PackageParts, BinaryIO]:
    """Open a package file and parse its container; the caller closes the returned file.

    Raises:
        NotFoundError: the file cannot be opened.
        PackageFormatError: the container is malformed.
    """
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise NotFoundError(f"cannot open package {path}: {exc.strerror}") from exc
    try:
        return read_package(fh, os.fstat(fh.fileno()).st_size), fh
    except BaseException:
        fh.close()
        raise


def hash_payload(
    fh: BinaryIO, parts: PackageParts, progress: Callable[[int], None] | None = None
) -> str:
    """SHA-256 of the payload member, read from the package file."""
    fh.seek(parts.payload_offset)
    h = hashlib.sha256()
    left = parts.payload_size
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while left:
        n = fh.readinto(view[: min(left, len(buf))])  # type: ignore[attr-defined]
        if not n:
            raise PackageFormatError("package is truncated inside the payload")
        h.update(view[:n])
        left -= n
        if progress is not None:
            progress(n)
    return h.hexdigest()


def write_package(
    out: BinaryIO,
    manifest_bytes: bytes,
    signatures_bytes: bytes,
    payload: BinaryIO,
    payload_size: int,
    compression: str,
) -> None:
    """Write the container to ``out``, streaming ``payload_size`` bytes from ``payload``."""
    out.write(_header("manifest.json", len(manifest_bytes)))
    out.write(manifest_bytes + b"\x00" * _padding(len(manifest_bytes)))
    out.write(_header("signatures.json", len(signatures_bytes)))
    out.write(signatures_bytes + b"\x00" * _padding(len(signatures_bytes)))
    out.write(_header(PAYLOAD_NAMES[compression], payload_size))
    copied = 0
    while copied < payload_size:
        chunk = payload.read(min(1 << 20, payload_size - copied))
        if not chunk:
            raise PackageFormatError("payload source ended early while writing the package")
        out.write(chunk)
        copied += len(chunk)
    out.write(b"\x00" * (_padding(payload_size) + 2 * BLOCK))


def copy_payload(src: BinaryIO, parts: PackageParts, dst: BinaryIO) -> None:
    """Copy just the payload member's bytes from a package to ``dst``."""
    src.seek(parts.payload_offset)
    left = parts.payload_size
    while left:
        chunk = src.read(min(1 << 20, left))
        if not chunk:
            raise PackageFormatError("package is truncated inside the payload")
        dst.write(chunk)
        left -= len(chunk)
