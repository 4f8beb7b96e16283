"""The outer container (agent/package/container.py): exactly three plain ustar members, in order."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from cutover.agent.errors import PackageFormatError
from cutover.agent.package.container import PAYLOAD_NAMES, hash_payload, read_package, write_package

MANIFEST = b'{"app":"ame"}\n'
SIGS = b"[]\n"
PAYLOAD = bytes(range(256)) * 5


def _written(payload: bytes = PAYLOAD, compression: str = "zstd") -> bytes:
    out = io.BytesIO()
    write_package(out, MANIFEST, SIGS, io.BytesIO(payload), len(payload), compression)
    return out.getvalue()


def _tar(
    members: list[tuple[str, bytes]],
    fmt: int = tarfile.USTAR_FORMAT,
    kind: bytes = tarfile.REGTYPE,
    pax: dict[str, str] | None = None,
) -> bytes:
    """A container written by tarfile; ``kind`` and ``pax`` apply to the payload member."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            if name == "payload.tar.zst":
                ti.type = kind
                ti.pax_headers = pax or {}
            tar.addfile(ti, io.BytesIO(data))
    return out.getvalue()


def _read(data: bytes) -> object:
    return read_package(io.BytesIO(data), len(data))


GOOD = [("manifest.json", MANIFEST), ("signatures.json", SIGS), ("payload.tar.zst", PAYLOAD)]


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_written_package_reads_back(compression: str) -> None:
    data = _written(compression=compression)
    parts = read_package(io.BytesIO(data), len(data))
    assert (parts.manifest_bytes, parts.signatures_bytes) == (MANIFEST, SIGS)
    assert parts.payload_name == PAYLOAD_NAMES[compression]
    assert parts.payload_compression == compression
    assert data[parts.payload_offset : parts.payload_offset + parts.payload_size] == PAYLOAD
    assert hash_payload(io.BytesIO(data), parts) == hashlib.sha256(PAYLOAD).hexdigest()


def _flip(data: bytes, offset: int) -> bytes:
    b = bytearray(data)
    b[offset] ^= 0x01
    return bytes(b)


REJECTS = {  # name: (container bytes, what the message must say)
    "wrong-order": (_tar([GOOD[1], GOOD[0], GOOD[2]]), "order matters"),
    "manifest-missing": (_tar(GOOD[1:]), "expected 'manifest.json'"),
    "payload-missing": (_tar(GOOD[:2]), "ends after 2 members"),
    "extra-member": (_tar([*GOOD, ("extra.txt", b"surprise")]), "extra data"),
    "unknown-payload-name": (_tar([*GOOD[:2], ("payload.tar.xz", PAYLOAD)]), "payload.tar.xz"),
    "pax-header": (_tar(GOOD, fmt=tarfile.PAX_FORMAT, pax={"comment": "x"}), "type b'x'"),
    "gnu-header": (_tar(GOOD, fmt=tarfile.GNU_FORMAT), "not a ustar header"),
    "symlink-payload": (_tar(GOOD, kind=tarfile.SYMTYPE), "only regular files"),
    "bad-checksum": (_flip(_written(), 136), "bad header checksum"),  # first header's mtime
    "truncated-header": (_written()[:700], "truncated"),
    "truncated-payload": (_written()[: 3 * 512 + 1024 + 512], "truncated"),
    "trailing-data": (_written() + b"\x01" + bytes(1023), "extra data"),
    "empty-file": (b"", "truncated"),
}


@pytest.mark.parametrize("name", list(REJECTS))
def test_malformed_containers_are_rejected(name: str) -> None:
    data, says = REJECTS[name]
    with pytest.raises(PackageFormatError) as info:
        _read(data)
    assert says in str(info.value)


def test_zero_padding_to_a_tar_record_is_accepted() -> None:
    """GNU tar pads archives to 10 KiB records; zero blocks after the marker are fine."""
    data = _written()
    padded = data + bytes(10240 - len(data) % 10240)
    parts = read_package(io.BytesIO(padded), len(padded))
    assert parts.payload_size == len(PAYLOAD)
