"""Retention by disk (issue 12 item 6; agent/host/diskspace.py, Housekeeping.make_room).

A real small filesystem is not available, so the free-space probe is injected: it models a
filesystem of :data:`TOTAL` bytes whose used space is what is really on disk under the app root
(measured with :func:`freeable_bytes`), so pruning a release really frees what its files take.
Everything else is real: packages built and signed by our builder, the app root, the journal.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cutover.agent.config import load_config
from cutover.agent.errors import StorageError
from cutover.agent.host.diskspace import (
    BLOCK_BYTES,
    MARGIN_BYTES,
    DiskRule,
    DiskUsage,
    freeable_bytes,
    prunable_oldest_first,
    space_needed,
)
from cutover.agent.host.state import AppState, ReleaseRecord, ReleaseStatus
from cutover.agent.lifecycle.manager import AppManager, OpResult
from cutover.agent.package.container import open_package
from cutover.agent.package.manifest import parse_manifest
from tests.conftest import Host, PackageFactory

TOTAL = 64 << 20
BLOB = "x" * 200_000  # makes each release ~200 KB, so a prune frees a measurable amount


class Disk:
    """A filesystem of TOTAL bytes holding exactly what is under the app root; counts probes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.probes = 0

    def used(self) -> int:
        return freeable_bytes(self.root)

    def __call__(self, path: Path) -> DiskUsage:
        assert path == self.root
        self.probes += 1
        return DiskUsage(TOTAL - self.used(), TOTAL)


def _set(host: Host, **keys: Any) -> None:
    text = host.config.read_text()
    assert text.rstrip().splitlines()[-1].startswith(("keep", "threshold", "min_free"))
    host.config.write_text(text + "".join(f"{k} = {v}\n" for k, v in keys.items()))


def _run(host: Host, disk: Disk, name: str, *args: Any) -> OpResult:
    cfg = load_config(host.config)
    mgr = AppManager(host.app, cfg.apps[host.app], cfg.policies[host.app], actor="t", disk=disk)
    result: OpResult = asyncio.run(getattr(mgr, name)(*args))
    return result


def _need(package: Path) -> int:
    parts, fh = open_package(package)
    fh.close()
    return space_needed(parse_manifest(parts.manifest_bytes))


def _release(host: Host, make_package: PackageFactory, version: str) -> Path:
    return make_package(version, files={"VERSION": f"{version}\n", "blob.bin": BLOB + version})


def _four_releases(host: Host, make_package: PackageFactory, disk: Disk) -> None:
    """1.0.0 pinned, 1.1.0 staged, 1.2.0 previous, 1.3.0 current (keep=5: none pruned by count)."""
    for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        _run(host, disk, "stage", _release(host, make_package, v))
    _run(host, disk, "activate", "1.2.0")
    _run(host, disk, "activate", "1.3.0")
    _run(host, disk, "pin", "1.0.0")


def test_a_stage_that_would_cross_the_threshold_prunes_the_oldest_prunable_first(
    host: Host, make_package: PackageFactory
) -> None:
    disk = Disk(host.root)
    _four_releases(host, make_package, disk)
    new = _release(host, make_package, "1.4.0")
    one = freeable_bytes(host.root / "releases" / "1.1.0")
    # it fits only once one release is gone: free - need must reach the threshold
    threshold = TOTAL - disk.used() - _need(new) + one // 2
    _set(host, min_free_bytes=threshold)
    journal_before = len(host.journal())
    result = _run(host, disk, "stage", new)
    assert result.details["pruned_for_space"] == ["1.1.0"]  # not pinned 1.0.0, previous, current
    assert sorted(p.name for p in (host.root / "releases").iterdir()) == [
        "1.0.0",
        "1.2.0",
        "1.3.0",
        "1.4.0",
    ]
    assert host.current == "releases/1.3.0"
    (prune,) = [e for e in host.journal()[journal_before:] if e["event"] == "prune"]
    assert prune["removed"] == ["1.1.0"] and prune["reason"] == "disk"
    assert prune["for_version"] == "1.4.0" and prune["threshold_bytes"] == threshold
    assert prune["need_bytes"] == _need(new)
    events = [e["event"] for e in host.journal()[journal_before:]]
    assert events.index("prune") < events.index("stage.start")  # pruned before writing
    assert host.state()["releases"]["1.1.0"]["installed"] is False


def test_a_stage_that_cannot_fit_even_after_pruning_is_refused_before_writing_anything(
    host: Host, make_package: PackageFactory
) -> None:
    disk = Disk(host.root)
    _four_releases(host, make_package, disk)
    new = _release(host, make_package, "1.4.0")
    prunable = freeable_bytes(host.root / "releases" / "1.1.0")
    threshold = TOTAL - disk.used() - _need(new) + prunable + BLOCK_BYTES
    _set(host, min_free_bytes=threshold)
    before, journal_before = host.snapshot(), host.journal()
    with pytest.raises(StorageError) as caught:
        _run(host, disk, "stage", new)
    err = caught.value
    assert err.code == "insufficient_space"
    for part in (f"needs {_need(new)} bytes", f"{threshold} must stay free", "nothing was pruned"):
        assert part in err.message, err.message
    assert "Nothing of 1.4.0 was written" in err.message and "lower the threshold" in err.message
    assert host.snapshot() == before  # no prune, no incoming/, no release, same state
    assert [e["event"] for e in host.journal()] == [e["event"] for e in journal_before]


def test_the_percentage_threshold_counts_against_the_filesystem_size(
    host: Host, make_package: PackageFactory
) -> None:
    disk = Disk(host.root)
    _run(host, disk, "stage", _release(host, make_package, "1.0.0"))
    _set(host, min_free_pct=99.9)  # 99.9 % of 64 MiB must stay free: nothing fits
    before = host.snapshot()
    with pytest.raises(StorageError) as caught:
        _run(host, disk, "stage", _release(host, make_package, "1.1.0"))
    assert f"{-(-TOTAL * 999 // 1000)} must stay free" in caught.value.message
    assert "min_free_pct=99.9" in caught.value.message
    assert host.snapshot() == before


def test_without_a_threshold_the_disk_is_never_probed(
    host: Host, make_package: PackageFactory
) -> None:
    disk = Disk(host.root)
    _run(host, disk, "stage", _release(host, make_package, "1.0.0"))
    assert disk.probes == 0


def _rec(version: str, seq: int, status: ReleaseStatus = ReleaseStatus.STAGED) -> ReleaseRecord:
    return ReleaseRecord(version=version, status=status, seq=seq, manifest_digest="0" * 64)


def test_prunable_order_is_broken_first_then_oldest_by_staging_order_never_protected() -> None:
    state = AppState(app="demo")
    for i, (v, st) in enumerate(
        [
            ("1.0.0", ReleaseStatus.STAGED),
            ("1.1.0", ReleaseStatus.BAD),
            ("1.2.0", ReleaseStatus.STAGED),
            ("1.3.0", ReleaseStatus.STAGED),
        ]
    ):
        state.releases[v] = _rec(v, i, st)
    assert prunable_oldest_first(state, {"1.3.0"}) == ["1.1.0", "1.0.0", "1.2.0"]


@pytest.mark.parametrize(
    ("rule", "usage", "need", "short"),
    [
        (DiskRule(min_free_bytes=100), DiskUsage(1000, 10_000), 800, 0),
        (DiskRule(min_free_bytes=100), DiskUsage(1000, 10_000), 901, 1),
        (DiskRule(min_free_pct=10), DiskUsage(1000, 10_000), 0, 0),
        (DiskRule(min_free_pct=10.01), DiskUsage(1000, 10_000), 0, 1),
        (DiskRule(min_free_bytes=2000, min_free_pct=10), DiskUsage(1000, 10_000), 0, 1000),
    ],
    ids=["fits", "one-byte-short", "pct-exact", "pct-rounds-up", "larger-of-both"],
)
def test_shortfall(rule: DiskRule, usage: DiskUsage, need: int, short: int) -> None:
    assert rule.shortfall(usage, need) == short


def test_space_needed_rounds_each_file_up_to_a_block(make_package: PackageFactory) -> None:
    pkg = make_package("1.0.0", files={"a": "x", "b/c": "y" * (BLOCK_BYTES + 1)})
    parts, fh = open_package(pkg)
    fh.close()
    manifest = parse_manifest(parts.manifest_bytes)
    dirs_and_links = sum(1 for e in manifest.files if not hasattr(e, "sha256"))
    # a: 1 block, b/c: 2 (one byte over), cutover.toml (the builder keeps it): 1
    assert space_needed(manifest) == MARGIN_BYTES + 4 * BLOCK_BYTES + dirs_and_links * BLOCK_BYTES
