"""The outer package container: ``<app>-<version>.cutover``.

An uncompressed POSIX ustar archive holding exactly three regular members, in this order:
``manifest.json``, ``signatures.json``, ``payload.tar.zst`` (or ``.tar.gz`` / ``.tar``), then the
end-of-archive marker. A *delta upload* (docs/package-format.md) has one more member between the
signatures and the payload, ``delta.json`` (:mod:`agent.package.delta`), describing a thin
payload. This reader accepts nothing else (no pax or GNU headers, no other types, no extra
members), so there is no ambiguity about which bytes were signed. Sizes use octal, or the
base-256 form for payloads over 8 GiB. Headers are encoded and decoded by the one tar codec,
:mod:`agent.package.ustar`; this module adds the container's rules on top.

Reading returns the manifest and signature bytes plus the payload's offset and size in the file;
the payload is then hashed and streamed straight from the file (see :mod:`agent.extract`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cutover.agent.errors import NotFoundError, PackageFormatError
from cutover.agent.package.delta import DELTA_NAME, MAX_DELTA_BYTES
from cutover.agent.package.manifest import MAX_MANIFEST_BYTES
from cutover.agent.package.signatures import MAX_SIGNATURES_BYTES
from cutover.agent.package.ustar import (
    BLOCK,
    END_OF_ARCHIVE,
    REG,
    HeaderError,
    decode_header,
    encode_header,
    padding,
)

__all__ = [
    "PAYLOAD_NAMES",
    "PackageParts",
    "hash_payload",
    "open_package",
    "read_head",
    "read_package",
    "write_package",
]

PAYLOAD_NAMES = {"zstd": "payload.tar.zst", "gzip": "payload.tar.gz", "none": "payload.tar"}
_PAYLOAD_BY_NAME = {v: k for k, v in PAYLOAD_NAMES.items()}
_MAX_PADDING = 64 * 1024  # zero blocks a tar record may add after the end-of-archive marker
_HEADER_PROBLEMS = {
    "checksum": "has a bad header checksum",
    "number": "has a malformed numeric field",
    "gnu": "is not a ustar header (GNU format)",
    "not_ustar": "is not a ustar header",
}


@dataclass(frozen=True)
class PackageParts:
    manifest_bytes: bytes
    signatures_bytes: bytes
    payload_name: str
    payload_compression: str
    payload_offset: int
    payload_size: int
    delta_bytes: bytes | None = None  # ``delta.json`` of a delta upload, else None


def _read_header(fh: BinaryIO, index: int) -> tuple[str, int]:
    raw = fh.read(BLOCK)
    if len(raw) < BLOCK:
        raise PackageFormatError(f"package is truncated: member {index + 1} is missing")
    try:
        header = decode_header(raw)
    except HeaderError as exc:
        detail = f" ({exc.what})" if exc.code == "number" else ""
        raise PackageFormatError(
            f"package: member {index + 1} {_HEADER_PROBLEMS[exc.code]}{detail}"
        ) from exc
    if header is None:
        raise PackageFormatError(f"package ends after {index} members; expected 3")
    if header.kind not in (REG, 0):
        raise PackageFormatError(
            f"package: member {index + 1} has type {bytes([header.kind])!r}; only regular files "
            "allowed"
        )
    if header.prefixed:
        raise PackageFormatError(f"package: member {index + 1} uses a ustar name prefix")
    return header.name.decode("ascii", "replace"), header.size


def read_head(fh: BinaryIO) -> PackageParts:
    """Parse the container's headers and its small members (manifest, signatures, a delta
    upload's ``delta.json``), from an open file positioned at 0, leaving it at the payload's
    first byte. The end is not checked: this is what can be decided before the payload has
    arrived (a streaming stage, docs/operations.md); :func:`read_package` checks the rest once the
    whole file is there.

    Raises:
        PackageFormatError: the members are not the expected ones, in order, within their caps.
    """
    small: list[bytes] = []
    expected = ("manifest.json", "signatures.json")
    caps = (MAX_MANIFEST_BYTES, MAX_SIGNATURES_BYTES)
    for i in range(2):
        name, size = _read_header(fh, i)
        if name != expected[i]:
            raise PackageFormatError(
                f"package member {i + 1} is {name!r}; expected {expected[i]!r} (order matters)"
            )
        small.append(_read_small(fh, name, size, caps[i]))
    name, size = _read_header(fh, 2)
    delta: bytes | None = None
    if name == DELTA_NAME:
        delta = _read_small(fh, name, size, MAX_DELTA_BYTES)
        name, size = _read_header(fh, 3)
    count = 3 if delta is None else 4
    if name not in _PAYLOAD_BY_NAME:
        raise PackageFormatError(
            f"package member {count} is {name!r}; expected one of {sorted(_PAYLOAD_BY_NAME)}"
        )
    offset = fh.tell()
    return PackageParts(small[0], small[1], name, _PAYLOAD_BY_NAME[name], offset, size, delta)


def read_package(fh: BinaryIO, file_size: int) -> PackageParts:
    """Parse the container from an open file positioned at 0.

    Raises:
        PackageFormatError: anything but the exact three-member layout (four with ``delta.json``), or truncation.
    """
    parts = read_head(fh)
    name, offset, size = parts.payload_name, parts.payload_offset, parts.payload_size
    if offset + size > file_size:
        raise PackageFormatError(
            f"package is truncated: {name} declares {size} bytes but the file ends "
            f"{file_size - offset} bytes in"
        )
    fh.seek(size + padding(size), os.SEEK_CUR)
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
            "package does not end with the end-of-archive marker after its payload "
            "(truncated, or extra data appended)"
        )
    return parts


def _read_small(fh: BinaryIO, name: str, size: int, cap: int) -> bytes:
    if size > cap:
        raise PackageFormatError(f"package: {name} is {size} bytes; limit {cap}")
    data = fh.read(size)
    if len(data) != size:
        raise PackageFormatError(f"package is truncated inside {name}")
    fh.seek(padding(size), os.SEEK_CUR)
    return data


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
        what = _not_a_package(fh.read(BLOCK))
        if what is not None:
            raise PackageFormatError(
                f"{path} is not a Cutover package: {what}. A Cutover package is the .cutover file "
                "`cutover build` writes and `cutover sign` signs (docs/package-format.md)"
            )
        fh.seek(0)
        return read_package(fh, os.fstat(fh.fileno()).st_size), fh
    except BaseException:
        fh.close()
        raise


_COMPRESSED = {
    b"\x1f\x8b": "it is gzip-compressed (a .tar.gz?)",
    b"\x28\xb5\x2f\xfd": "it is zstd-compressed (a .tar.zst?)",
    b"\xfd7zXZ\x00": "it is xz-compressed (a .tar.xz?)",
    b"BZh": "it is bzip2-compressed (a .tar.bz2?)",
    b"PK\x03\x04": "it is a zip archive",
}


def _not_a_package(head: bytes) -> str | None:
    """Why the file's first block cannot start a Cutover container (None: it may)."""
    if not head:
        return "the file is empty"
    for magic, what in _COMPRESSED.items():
        if head.startswith(magic):
            return what
    if len(head) < BLOCK:
        return f"it is {len(head)} bytes long, shorter than one tar header"
    if head[257:262] != b"ustar":
        return "it is not a tar archive (a Cutover package is an uncompressed ustar container)"
    if not head.startswith(b"manifest.json\x00"):
        name = head[:100].split(b"\x00", 1)[0].decode("utf-8", "replace")
        return f"it is a tar archive whose first member is {name!r}, not manifest.json"
    return None


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
    delta_bytes: bytes | None = None,
) -> None:
    """Write the container to ``out``, streaming ``payload_size`` bytes from ``payload``
    (``delta_bytes``: a delta upload's ``delta.json``, written before the payload)."""
    members = [("manifest.json", manifest_bytes), ("signatures.json", signatures_bytes)]
    if delta_bytes is not None:
        members.append((DELTA_NAME, delta_bytes))
    for name, data in members:
        out.write(encode_header(name.encode(), REG, len(data)))
        out.write(data + bytes(padding(len(data))))
    out.write(encode_header(PAYLOAD_NAMES[compression].encode(), REG, payload_size))
    copied = 0
    while copied < payload_size:
        chunk = payload.read(min(1 << 20, payload_size - copied))
        if not chunk:
            raise PackageFormatError("payload source ended early while writing the package")
        out.write(chunk)
        copied += len(chunk)
    out.write(bytes(padding(payload_size)) + END_OF_ARCHIVE)
