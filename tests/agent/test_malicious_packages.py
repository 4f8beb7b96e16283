"""Hostile packages, each properly signed so the attack reaches the check meant to stop it.

Every case asserts the exact error class (and reason code), that nothing outside the extraction
directory changed (a snapshot of the whole test directory, sentinel files included), and that the
extraction directory does not exist afterwards (no partial tree, no temp files).
"""

from __future__ import annotations

import hashlib
import tarfile
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cutover.agent.errors import (
    ArchiveLimitError,
    CutoverError,
    DigestMismatchError,
    DowngradeError,
    ExpiredError,
    ImmutableVersionError,
    ManifestError,
    MismatchError,
    PackageFormatError,
    SignatureError,
    UnsafeArchiveError,
)
from cutover.agent.extract.extractor import ExtractLimits
from cutover.agent.package.container import open_package
from cutover.agent.trust.policy import HostHistory
from tests.agent.conftest import (
    NOW,
    Kit,
    Member,
    compress,
    dir_,
    dir_entry,
    entries_for,
    file_entry,
    link_entry,
    raw_header,
    raw_tar,
    reg,
    snapshot,
    sym,
    tar_bytes,
)

INDEX = reg("index.php", "<?php echo 'hello';\n")
APP_DIR = dir_("app")
MODEL = reg("app/Model.php", "<?php class Model {}\n")
BASE = [APP_DIR, MODEL, INDEX]
README = reg(
    "README.md", "# ame\n"
)  # listed but left out of attack payloads: room for one evil member

Make = Callable[[Kit], "tuple[Path, dict[str, Any]] | Path"]


@dataclass(frozen=True)
class Attack:
    make: Make
    error: type[CutoverError]
    code: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def payload(members: list[Member], declared: list[Member] | None = None, **kw: Any) -> Make:
    """Payload ``members``; the manifest honestly lists ``declared`` (default: BASE + README)."""
    listed = [*BASE, README] if declared is None else declared
    return lambda kit: kit.evil(members, entries_for(listed), **kw)


_LATIN1_PAX = b"17 path=caf\xe9.php\n"  # a Latin-1 name: not UTF-8


def _outside(kit: Kit) -> str:
    return str(kit.tmp / "outside")


def _bomb_trailing_zeros(kit: Kit) -> Path:
    raw = tar_bytes(BASE) + bytes(32 << 20)  # 32 MiB of zeros after the end-of-archive marker
    return kit.package(compress(raw), entries_for(BASE))


def _truncated_tar(kit: Kit) -> Path:
    big = reg("big.bin", bytes(range(256)) * 400)
    raw = tar_bytes([*BASE, big])
    return kit.package(compress(raw[: len(raw) // 2]), entries_for([*BASE, big]))


def _truncated_zstd_frame(kit: Kit) -> Path:
    big = reg("big.bin", bytes(range(256)) * 4000)
    z = compress(tar_bytes([*BASE, big]))
    return kit.package(z[: len(z) // 2], entries_for([*BASE, big]))


def _truncated_gzip(kit: Kit) -> Path:
    z = compress(tar_bytes(BASE), "gzip")
    return kit.package(z[:-12], entries_for(BASE), compression="gzip")


def _garbage_zstd(kit: Kit) -> Path:
    return kit.package(b"\x28\xb5\x2f\xfd" + b"not really zstd" * 50, entries_for(BASE))


def _bad_checksum(kit: Kit) -> Path:
    raw = bytearray(tar_bytes(BASE))
    raw[512 + 136] ^= 0x01  # second member's mtime, checksum left stale
    return kit.package(compress(bytes(raw)), entries_for(BASE))


def _trailing_garbage(kit: Kit) -> Path:
    raw = tar_bytes(BASE) + b"\x00" * 512 + b"#!/bin/sh\nrm -rf /\n" + bytes(493)
    return kit.package(compress(raw), entries_for(BASE))


def _payload_flipped(kit: Kit) -> Path:
    pkg = kit.evil(BASE)
    parts, fh = open_package(pkg)
    fh.close()
    data = bytearray(pkg.read_bytes())
    data[parts.payload_offset + parts.payload_size // 2] ^= 0xFF  # signed digest now differs
    pkg.write_bytes(bytes(data))
    return pkg


def _payload_size_lie(kit: Kit) -> Path:
    z = compress(tar_bytes(BASE))
    return kit.package(
        z,
        entries_for(BASE),
        payload={
            "sha256": hashlib.sha256(z).hexdigest(),
            "size": len(z) + 1,
            "compression": "zstd",
        },
    )


def _bad_signature(kit: Kit) -> Path:
    pkg = kit.evil(BASE)
    data = pkg.read_bytes()
    # Same length, so the container stays valid: only the signed bytes change.
    pkg.write_bytes(data.replace(b'"version":"1.0.0"', b'"version":"1.0.1"', 1))
    return pkg


def _truncated_package(kit: Kit) -> Path:
    pkg = kit.evil([*BASE, reg("blob.bin", bytes(range(256)) * 64)])
    pkg.write_bytes(pkg.read_bytes()[:-4000])
    return pkg


def _codec_lie(kit: Kit) -> Path:
    """The container names a zstd payload; the signed manifest says gzip."""
    z = compress(tar_bytes(BASE))
    return kit.package(
        z,
        entries_for(BASE),
        payload={"sha256": hashlib.sha256(z).hexdigest(), "size": len(z), "compression": "gzip"},
    )


def _count_bomb(kit: Kit) -> Path:
    junk = [reg(f"junk{i:05}", "") for i in range(5000)]
    return kit.evil([*BASE, *junk], entries_for(BASE))


def _manifest_only(entries: list[dict[str, Any]]) -> Make:
    return lambda kit: kit.evil(BASE, entries)


ATTACKS: dict[str, Attack] = {
    # -- path tricks ---------------------------------------------------------------------------
    "traversal-dotdot": Attack(
        payload([*BASE, reg("../../outside/pwned.txt", "x")]), UnsafeArchiveError, "unsafe_path"
    ),
    "traversal-nested": Attack(
        payload([APP_DIR, reg("app/../../../outside/pwned.txt", "x")]),
        UnsafeArchiveError,
        "unsafe_path",
    ),
    "absolute-path": Attack(
        lambda kit: kit.evil(
            [*BASE, reg(_outside(kit) + "/abs.txt", "x")], entries_for([*BASE, README])
        ),
        UnsafeArchiveError,
        "unsafe_path",
    ),
    "backslash-path": Attack(
        payload([*BASE, reg("..\\..\\outside\\pwned.txt", "x")]), UnsafeArchiveError, "unsafe_path"
    ),
    "control-char-path": Attack(
        payload([*BASE, reg("evil\nname.php", "x")]), UnsafeArchiveError, "unsafe_path"
    ),
    "nul-in-pax-path": Attack(
        payload([*BASE, Member("ok.php", b"x", pax={"path": "index.php\x00.evil"})]),
        UnsafeArchiveError,
        "unsafe_path",
    ),
    "pax-path-dotdot": Attack(
        payload([*BASE, Member("safe.php", b"x", pax={"path": "../../outside/pax.txt"})]),
        UnsafeArchiveError,
        "unsafe_path",
    ),
    "pax-path-onto-listed-file": Attack(
        payload([*BASE, Member("other.php", b"evil", pax={"path": "index.php"})]),
        UnsafeArchiveError,
        "duplicate",
    ),
    "unlisted-file": Attack(
        payload([*BASE, reg("app/backdoor.php", "<?php system($_GET['c']);")]),
        UnsafeArchiveError,
        "unlisted",
    ),
    "too-deep-for-host-limits": Attack(
        payload(BASE), ArchiveLimitError, "path_limit", {"limits": ExtractLimits(max_depth=1)}
    ),
    "child-before-parent": Attack(
        payload([MODEL, APP_DIR, INDEX]), UnsafeArchiveError, "parent_missing"
    ),
    # -- links, special files and modes ---------------------------------------------------------
    "symlink-escape": Attack(
        payload([*BASE, sym("link", "../../outside")], [*BASE, sym("link", "app")]),
        UnsafeArchiveError,
        "symlink_escape",
    ),
    "symlink-absolute": Attack(
        payload([*BASE, sym("link", "/etc/passwd")], [*BASE, sym("link", "app")]),
        UnsafeArchiveError,
        "symlink_escape",
    ),
    "symlink-then-write-through": Attack(
        payload(
            [APP_DIR, MODEL, sym("link", "app"), reg("link/pwned.php", "x")],
            [*BASE, sym("link", "app")],
        ),
        UnsafeArchiveError,
        "unlisted",
    ),
    "symlink-escape-then-write-through": Attack(
        payload(
            [*BASE, sym("link", "../../outside"), reg("link/pwned.txt", "x")],
            [*BASE, sym("link", "app")],
        ),
        UnsafeArchiveError,
        "symlink_escape",
    ),
    "pax-linkpath-escape": Attack(
        payload(
            [*BASE, Member("link", type=tarfile.SYMTYPE, link="app", pax={"linkpath": "../../.."})],
            [*BASE, sym("link", "app")],
        ),
        UnsafeArchiveError,
        "symlink_escape",
    ),
    "symlink-retargeted-inside": Attack(
        payload([*BASE, sym("link", "index.php")], [*BASE, sym("link", "app")]),
        DigestMismatchError,
        "symlink_mismatch",
    ),
    "hardlink-escape": Attack(
        payload(
            [*BASE, Member("h", type=tarfile.LNKTYPE, link="../../outside/sentinel.txt")],
            [*BASE, reg("h", "")],
        ),
        UnsafeArchiveError,
        "bad_type",
    ),
    "hardlink-to-listed-file": Attack(
        payload([*BASE, Member("h", type=tarfile.LNKTYPE, link="index.php")], [*BASE, reg("h")]),
        UnsafeArchiveError,
        "bad_type",
    ),
    "fifo": Attack(
        payload([*BASE, Member("pipe", type=tarfile.FIFOTYPE)], [*BASE, reg("pipe")]),
        UnsafeArchiveError,
        "bad_type",
    ),
    "char-device": Attack(
        payload([*BASE, Member("null", type=tarfile.CHRTYPE)], [*BASE, reg("null")]),
        UnsafeArchiveError,
        "bad_type",
    ),
    "block-device": Attack(
        payload([*BASE, Member("sda", type=tarfile.BLKTYPE)], [*BASE, reg("sda")]),
        UnsafeArchiveError,
        "bad_type",
    ),
    "setuid-file": Attack(
        payload([APP_DIR, MODEL, reg("index.php", INDEX.data, mode=0o4755)]),
        UnsafeArchiveError,
        "bad_mode",
        # declared honestly would be refused by the manifest; the manifest says 0644
    ),
    "setgid-directory": Attack(
        payload([dir_("app", 0o2755), MODEL, INDEX]), UnsafeArchiveError, "bad_mode"
    ),
    "mode-differs-from-manifest": Attack(
        payload([APP_DIR, MODEL, reg("index.php", INDEX.data, mode=0o755)]),
        UnsafeArchiveError,
        "mode_mismatch",
    ),
    "type-differs-from-manifest": Attack(
        payload([APP_DIR, MODEL, dir_("index.php")]), UnsafeArchiveError, "type_mismatch"
    ),
    "directory-with-data": Attack(
        payload([Member("app", b"hidden", type=tarfile.DIRTYPE, mode=0o755), MODEL, INDEX]),
        UnsafeArchiveError,
        "bad_type",
    ),
    # -- duplicates ------------------------------------------------------------------------------
    "duplicate-entry": Attack(
        payload([APP_DIR, INDEX, reg("index.php", "<?php evil();")]),
        UnsafeArchiveError,
        "duplicate",
    ),
    "duplicate-appended": Attack(
        payload([*BASE, reg("index.php", "<?php evil();")], BASE),
        ArchiveLimitError,
        "too_many_entries",
    ),
    "case-fold-duplicate": Attack(
        payload([APP_DIR, INDEX, reg("INDEX.PHP", "<?php evil();")]),
        UnsafeArchiveError,
        "fold_duplicate",
    ),
    "nfc-nfd-duplicate": Attack(
        payload(
            [reg("café.php", "a"), reg(unicodedata.normalize("NFD", "café.php"), "b")],
            [reg("café.php", "a"), reg("other.php", "b")],
        ),
        UnsafeArchiveError,
        "fold_duplicate",
    ),
    # -- tar format oddities ---------------------------------------------------------------------
    "global-pax-header": Attack(
        lambda kit: kit.evil(
            BASE, raw=tar_bytes(BASE, global_pax={"path": "../../outside/global.txt"})
        ),
        UnsafeArchiveError,
        "bad_type",
    ),
    "gnu-format-headers": Attack(
        lambda kit: kit.evil(BASE, raw=tar_bytes(BASE, fmt=tarfile.GNU_FORMAT)),
        PackageFormatError,
        "corrupt",
    ),
    "gnu-longname": Attack(
        lambda kit: kit.evil(
            BASE,
            raw=raw_tar(
                raw_header("app", b"5", mode=0o755),
                raw_header("././@LongLink", b"L", 28),
                b"../../outside/longname.txt\x00\x00",
                raw_header("index.php", b"0", len(INDEX.data)),
                INDEX.data,
            ),
        ),
        UnsafeArchiveError,
        "bad_type",
    ),
    "gnu-sparse-type": Attack(
        lambda kit: kit.evil(
            BASE, raw=raw_tar(raw_header("app", b"5", mode=0o755), raw_header("index.php", b"S"))
        ),
        UnsafeArchiveError,
        "bad_type",
    ),
    "pax-sparse-file": Attack(
        payload([APP_DIR, MODEL, Member("index.php", INDEX.data, pax={"GNU.sparse.major": "1"})]),
        UnsafeArchiveError,
        "bad_pax",
    ),
    "pax-xattr-capability": Attack(
        payload(
            [
                APP_DIR,
                MODEL,
                Member("index.php", INDEX.data, pax={"SCHILY.xattr.security.capability": "x"}),
            ]
        ),
        UnsafeArchiveError,
        "bad_pax",
    ),
    "non-utf8-name": Attack(
        lambda kit: kit.evil(
            BASE,
            [*entries_for(BASE), file_entry("cafe.php", "x")],
            raw=raw_tar(
                raw_header("app", b"5", mode=0o755),
                raw_header("././@PaxHeader", b"x", len(_LATIN1_PAX)),
                _LATIN1_PAX,
                raw_header("cafe.php", b"0", 1),
                b"x",
            ),
        ),
        UnsafeArchiveError,
        "unsafe_path",
    ),
    "pax-binary-charset": Attack(
        payload([*BASE, Member("caf\udce9.php", b"x")]), UnsafeArchiveError, "bad_pax"
    ),
    "bad-header-checksum": Attack(_bad_checksum, PackageFormatError, "corrupt"),
    "data-after-end-marker": Attack(_trailing_garbage, PackageFormatError, "trailing_data"),
    # -- bombs and truncation --------------------------------------------------------------------
    "decompression-bomb-trailing": Attack(
        _bomb_trailing_zeros, ArchiveLimitError, "too_many_bytes"
    ),
    "file-larger-than-manifest": Attack(
        payload([APP_DIR, MODEL, reg("index.php", bytes(8 << 20))]),
        DigestMismatchError,
        "size_mismatch",
    ),
    "entry-count-bomb": Attack(_count_bomb, ArchiveLimitError, "too_many_entries"),
    "more-entries-than-host-allows": Attack(
        payload(BASE),
        ArchiveLimitError,
        "too_many_entries",
        {"limits": ExtractLimits(max_entries=2)},
    ),
    "truncated-payload": Attack(_truncated_tar, PackageFormatError, "truncated"),
    "truncated-zstd-frame": Attack(_truncated_zstd_frame, PackageFormatError, "truncated"),
    "truncated-gzip": Attack(_truncated_gzip, PackageFormatError, "corrupt"),
    "garbage-zstd": Attack(_garbage_zstd, PackageFormatError, "corrupt"),
    "truncated-package": Attack(_truncated_package, PackageFormatError, "bad_package"),
    # -- content versus manifest -----------------------------------------------------------------
    "missing-file": Attack(payload([APP_DIR, INDEX]), DigestMismatchError, "missing"),
    "file-digest-mismatch": Attack(
        payload([APP_DIR, MODEL, reg("index.php", "<?php echo 'HACKD';\n"), README]),
        DigestMismatchError,
        "digest_mismatch",
    ),
    "file-size-mismatch": Attack(
        payload([APP_DIR, MODEL, reg("index.php", "<?php echo 1;\n")]),
        DigestMismatchError,
        "size_mismatch",
    ),
    "payload-digest-mismatch": Attack(_payload_flipped, DigestMismatchError, "payload_digest"),
    "payload-size-mismatch": Attack(_payload_size_lie, DigestMismatchError, "payload_size"),
    "payload-codec-lie": Attack(_codec_lie, PackageFormatError, "payload_codec"),
    # -- manifest and trust ----------------------------------------------------------------------
    "manifest-traversal": Attack(
        _manifest_only([*entries_for(BASE), file_entry("../evil.php", "x")]), ManifestError
    ),
    "manifest-symlink-escape": Attack(
        _manifest_only([*entries_for(BASE), link_entry("app/up", "../../etc")]), ManifestError
    ),
    "manifest-case-fold-duplicate": Attack(
        _manifest_only([*entries_for(BASE), file_entry("INDEX.php", "x")]), ManifestError
    ),
    "manifest-setuid": Attack(
        _manifest_only([dir_entry("app"), file_entry("app/Model.php", MODEL.data, 0o4755)]),
        ManifestError,
    ),
    "bad-signature": Attack(_bad_signature, SignatureError, "bad_signature"),
    "absent-signature": Attack(lambda kit: kit.evil(BASE, signers=[]), SignatureError, "unsigned"),
    "untrusted-signature": Attack(
        lambda kit: kit.evil(BASE, signers=[kit.other]), SignatureError, "untrusted"
    ),
    "threshold-not-met": Attack(
        lambda kit: (
            kit.evil(BASE),
            {"policy": kit.policy([kit.key, kit.other], threshold=2)},
        ),
        SignatureError,
        "threshold",
    ),
    "expired-manifest": Attack(
        lambda kit: kit.evil(BASE, expires_at=(NOW - timedelta(days=1)).isoformat()),
        ExpiredError,
    ),
    "app-mismatch": Attack(lambda kit: kit.evil(BASE, app="other"), MismatchError, "app_mismatch"),
    "version-mismatch": Attack(
        lambda kit: (kit.evil(BASE), {"expected_version": "1.0.1"}),
        MismatchError,
        "version_mismatch",
    ),
    "same-version-different-content": Attack(
        lambda kit: (kit.evil(BASE), {"history": HostHistory(known_digests={"1.0.0": "0" * 64})}),
        ImmutableVersionError,
    ),
    "downgrade": Attack(
        lambda kit: (kit.evil(BASE), {"history": HostHistory(highest_version="1.2.0")}),
        DowngradeError,
    ),
}


# With payload.chunks (the writer's default) each chunk is checked as it is read instead of the
# whole payload first: the same attacks are refused; a flipped payload byte by its chunk.
CHUNKED_CODES = {"payload_digest": "chunk_digest"}


@pytest.mark.parametrize("chunked", [False, True], ids=["whole-digest", "chunked"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_rejected_and_leaves_nothing(kit: Kit, name: str, chunked: bool) -> None:
    attack = ATTACKS[name]
    kit.chunk_size = 65536 if chunked else None
    made = attack.make(kit)
    pkg, extra = made if isinstance(made, tuple) else (made, {})
    before = snapshot(kit.tmp)

    with pytest.raises(CutoverError) as info:
        kit.stage(pkg, **{**attack.extra, **extra})

    assert type(info.value) is attack.error, f"{type(info.value).__name__}: {info.value}"
    if attack.code is not None:
        code = CHUNKED_CODES.get(attack.code, attack.code) if chunked else attack.code
        assert info.value.code == code, str(info.value)
    assert str(info.value)  # a message a person can act on
    assert not kit.dest.exists() and not kit.dest.is_symlink()
    assert list(kit.incoming.iterdir()) == []
    assert snapshot(kit.tmp) == before  # sentinels and every other path unchanged


def test_suite_is_large_enough() -> None:
    """The table covers the attack classes the design names (>= 30 cases)."""
    assert len(ATTACKS) >= 30


def test_honest_variant_of_the_fixtures_extracts(kit: Kit) -> None:
    """Control: the same BASE payload, honestly described and signed, extracts; so each
    rejection above is caused by its attack, not by the fixture."""
    stats = kit.stage(kit.evil([*BASE, sym("link", "app")]))
    assert (stats.files, stats.dirs, stats.symlinks) == (2, 1, 1)
    assert (kit.dest / "index.php").read_bytes() == INDEX.data
    assert (kit.dest / "link").readlink() == Path("app")
