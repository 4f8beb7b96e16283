"""Fixtures for the extractor and package tests: real keys, real tar payloads (benign or
hand-crafted), real signed packages, and a snapshot of everything outside the extraction directory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import zstandard

from cutover.agent.extract.extractor import ExtractLimits, ExtractStats, extract_payload
from cutover.agent.host.content import ContentIndex
from cutover.agent.host.layout import Layout
from cutover.agent.host.state import StateFile
from cutover.agent.keys import PrivateKey, generate_keypair
from cutover.agent.package.container import open_package, write_package
from cutover.agent.package.manifest import FileEntry, canonical_json, parse_manifest
from cutover.agent.trust.policy import HostHistory, TrustPolicy, verify_release
from cutover.controller.build import sign_package
from tests.conftest import Host

APP = "ame"
VERSION = "1.0.0"
NOW = datetime(2026, 3, 8, 12, 0, tzinfo=UTC)


@dataclass
class Member:
    """One tar member as a hostile (or honest) writer would emit it."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    mode: int = 0o644
    link: str = ""
    pax: dict[str, str] = field(default_factory=dict)
    size: int | None = None  # header size, if not len(data)


def reg(name: str, data: bytes | str = b"", mode: int = 0o644) -> Member:
    return Member(name, data.encode() if isinstance(data, str) else data, mode=mode)


def dir_(name: str, mode: int = 0o755) -> Member:
    return Member(name, type=tarfile.DIRTYPE, mode=mode)


def sym(name: str, target: str) -> Member:
    return Member(name, type=tarfile.SYMTYPE, mode=0o777, link=target)


def tar_bytes(
    members: Iterable[Member],
    *,
    global_pax: dict[str, str] | None = None,
    fmt: int = tarfile.PAX_FORMAT,
) -> bytes:
    """A tar stream of ``members``, written by tarfile (which refuses nothing on write)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=fmt, pax_headers=global_pax or {}) as tar:
        for m in members:
            ti = tarfile.TarInfo(m.name)
            ti.type = m.type
            ti.mode = m.mode
            ti.size = len(m.data) if m.size is None else m.size
            ti.linkname = m.link
            ti.mtime = 0
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.pax_headers = dict(m.pax)
            tar.addfile(ti, io.BytesIO(m.data) if ti.size else None)
    return buf.getvalue()


def raw_header(name: str, typeflag: bytes, size: int = 0, mode: int = 0o644) -> bytes:
    """One ustar header block built by hand (valid checksum), for types tarfile will not emit."""
    h = bytearray(512)
    h[0 : len(name)] = name.encode()
    h[100:108] = b"%07o\x00" % mode
    h[108:124] = b"0000000\x000000000\x00"
    h[124:136] = b"%011o\x00" % size
    h[136:148] = b"00000000000\x00"
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\x00 " % sum(h)
    return bytes(h)


def raw_tar(*parts: bytes) -> bytes:
    """Concatenate headers and data (each padded to 512) and add the end-of-archive marker."""
    return b"".join(p + bytes(-len(p) % 512) for p in parts) + bytes(1024)


def compress(raw: bytes, compression: str = "zstd") -> bytes:
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw)
    if compression == "gzip":
        return gzip.compress(raw, mtime=0)
    return raw


def file_entry(path: str, data: bytes | str, mode: int = 0o644) -> dict[str, Any]:
    raw = data.encode() if isinstance(data, str) else data
    return {"path": path, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "mode": mode}


def dir_entry(path: str, mode: int = 0o755) -> dict[str, Any]:
    return {"path": path, "dir": True, "mode": mode}


def link_entry(path: str, target: str) -> dict[str, Any]:
    return {"path": path, "symlink": target}


def entries_for(members: Iterable[Member]) -> list[dict[str, Any]]:
    """The manifest entries that honestly describe ``members``."""
    out: list[dict[str, Any]] = []
    for m in members:
        if m.type == tarfile.DIRTYPE:
            out.append(dir_entry(m.name, m.mode))
        elif m.type == tarfile.SYMTYPE:
            out.append(link_entry(m.name, m.link))
        else:
            out.append(file_entry(m.name, m.data, m.mode))
    return out


Tree = dict[str, tuple[str, int, str]]  # relpath -> (kind, mode, sha256 | link target | "")


def lacking(host: Host, package: Path) -> list[str]:
    """What the agent's ``missing`` endpoint answers for ``package`` (its content index)."""
    parts, fh = open_package(package)
    fh.close()
    manifest = parse_manifest(parts.manifest_bytes)
    state = StateFile(host.root / ".cutover" / "state.json", host.app).load()
    index = ContentIndex.build(Layout(host.root), state)
    return index.missing(sorted({e.sha256 for e in manifest.files if isinstance(e, FileEntry)}))


def snapshot(root: Path) -> Tree:
    """Everything under ``root``: kind, permission bits, and content digest or link target."""
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, "")
            else:
                out[rel] = ("file", mode, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


class Kit:
    """Builds signed packages around chosen payloads and stages them like the agent does."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        (tmp / "keys").mkdir()
        self.key = generate_keypair(tmp / "keys" / "release")
        self.other = generate_keypair(tmp / "keys" / "other")
        self.pkgs = tmp / "pkgs"
        self.pkgs.mkdir()
        self.incoming = tmp / "incoming"  # the agent's private staging area
        self.incoming.mkdir(mode=0o700)
        self.dest = self.incoming / "release"
        outside = tmp / "outside"  # what an escaping member would try to reach
        outside.mkdir()
        (outside / "sentinel.txt").write_text("do not touch\n")
        (outside / "subdir").mkdir()
        self._n = 0
        # payload.chunks of this many compressed bytes in every package made (None: no chunks,
        # the whole-payload digest path of packages built before chunks existed)
        self.chunk_size: int | None = None

    def package(
        self,
        payload: bytes,
        entries: list[dict[str, Any]],
        /,
        *,
        compression: str = "zstd",
        signers: list[PrivateKey] | None = None,
        **fields: Any,
    ) -> Path:
        """A package holding ``payload`` (already compressed) and a manifest listing ``entries``.

        ``fields`` override manifest fields (``app``, ``version``, ``payload``, ``expires_at``...).
        """
        doc: dict[str, Any] = {
            "format": 1,
            "app": APP,
            "version": VERSION,
            "created_at": "2026-03-07T12:00:00Z",
            "payload": {
                "sha256": hashlib.sha256(payload).hexdigest(),
                "size": len(payload),
                "compression": compression,
            },
            "files": entries,
        }
        if self.chunk_size is not None:
            doc["payload"]["chunks"] = {
                "size": self.chunk_size,
                "sha256": [
                    hashlib.sha256(payload[i : i + self.chunk_size]).hexdigest()
                    for i in range(0, len(payload), self.chunk_size)
                ],
            }
        doc.update(fields)
        manifest = canonical_json(doc)
        self._n += 1
        path = self.pkgs / f"{self._n}.cutover"
        with path.open("xb") as out:
            write_package(out, manifest, b"[]\n", io.BytesIO(payload), len(payload), compression)
        for key in [self.key] if signers is None else signers:
            sign_package(path, key)
        return path

    def evil(
        self,
        members: list[Member],
        declared: list[dict[str, Any]] | None = None,
        *,
        compression: str = "zstd",
        raw: bytes | None = None,
        **fields: Any,
    ) -> Path:
        """A signed package whose payload is ``members`` (or ``raw`` tar bytes) and whose
        manifest lists ``declared`` (default: an honest description of ``members``)."""
        tar = tar_bytes(members) if raw is None else raw
        return self.package(
            compress(tar, compression),
            entries_for(members) if declared is None else declared,
            compression=compression,
            **fields,
        )

    def policy(self, keys: list[PrivateKey] | None = None, threshold: int = 1) -> TrustPolicy:
        trusted = [k.public for k in (keys if keys is not None else [self.key])]
        return TrustPolicy(APP, {k.keyid: k for k in trusted}, threshold)

    def stage(
        self,
        pkg: Path,
        *,
        policy: TrustPolicy | None = None,
        history: HostHistory | None = None,
        expected_version: str | None = VERSION,
        limits: ExtractLimits | None = None,
        now: datetime = NOW,
    ) -> ExtractStats:
        """What the agent does with an upload: container, signatures, policy, then extraction
        (which checks the payload digest first)."""
        parts, fh = open_package(pkg)
        with fh:
            verified = verify_release(
                parts.manifest_bytes,
                parts.signatures_bytes,
                policy or self.policy(),
                expected_version=expected_version,
                history=history or HostHistory(),
                now=now,
            )
            return extract_payload(
                fh, parts, verified.manifest, self.dest, limits=limits or ExtractLimits()
            )


@pytest.fixture
def kit(tmp_path: Path) -> Kit:
    return Kit(tmp_path)
