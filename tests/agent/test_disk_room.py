"""Retention by disk, the leftovers (note3 "Review fixes"): resume partials go before releases,
running stages reserve their bytes per filesystem, and ``make_room`` survives ``kill -9``.

As in tests/agent/test_disk_retention.py the free-space probe is injected (no small real
filesystem here): it models a filesystem of ``TOTAL`` bytes whose used space is what is really
on disk under the given directories, so deleting a file really frees what it takes. Everything
else is real: the daemon's upload spool and its files, packages built and signed by our
builder, the app roots, the journal, a child process killed with SIGKILL, the real CLI.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cutover.agent.config import load_config
from cutover.agent.daemon.metrics import Metrics
from cutover.agent.daemon.uploads import ResumeLimits, UploadSpool
from cutover.agent.errors import InternalError, StorageError
from cutover.agent.host.diskspace import DiskUsage, freeable_bytes
from cutover.agent.host.room import RESERVATIONS, Room, device_of
from cutover.agent.host.workerlock import holders
from cutover.agent.lifecycle.manager import AppManager, OpResult
from cutover.agent.worker import ChildStageWork, WorkerPool
from tests.agent.test_disk_retention import TOTAL, _four_releases, _need, _release, _set
from tests.conftest import Host, PackageFactory

REPO = Path(__file__).resolve().parents[2]


class Disk:
    """A filesystem of TOTAL bytes holding exactly what is under ``dirs``."""

    def __init__(self, *dirs: Path) -> None:
        self.dirs = dirs

    def used(self) -> int:
        return sum(freeable_bytes(d) for d in self.dirs if d.exists())

    def __call__(self, path: Path) -> DiskUsage:
        return DiskUsage(TOTAL - self.used(), TOTAL)


def _manager(host: Host, disk: Disk, room: Room, root: Path | None = None) -> AppManager:
    cfg = load_config(host.config)
    section = cfg.apps[host.app]
    if root is not None:
        section = section.model_copy(update={"root": root})
    return AppManager(host.app, section, cfg.policies[host.app], actor="t", disk=disk, room=room)


def _samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(metrics.render().decode())
        for s in fam.samples
        if s.name == name
    }


def _partial(state_dir: Path, app: str, size: int, *, age_s: float = 0) -> Path:
    """A partial upload as the spool keeps it (its name, mode and folder)."""
    folder = state_dir / "resume" / app
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{os.urandom(32).hex()}_9.9.9.{'ab' * 8}.part"
    path.write_bytes(os.urandom(size))
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_partials_go_before_releases_expired_first_then_the_apps_idle_ones(
    host: Host, make_package: PackageFactory
) -> None:
    state_dir = host.tmp / "state"
    metrics = Metrics()
    spool = UploadSpool(state_dir, lambda: ResumeLimits(3600, 2, 1 << 30), metrics)
    spool.prepare()
    disk = Disk(host.root, state_dir)
    room = Room(holders=(spool.partials,), on_pruned=metrics.disk_pruned)
    for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        asyncio.run(_manager(host, disk, room).stage(_release(host, make_package, v)))
    expired = _partial(state_dir, "other", 300_000, age_s=7200)
    idle = _partial(state_dir, host.app, 300_000)
    new = _release(host, make_package, "1.4.0")
    # it fits once both partials are gone, not with the expired one gone alone
    threshold = TOTAL - disk.used() - _need(new) + expired.stat().st_blocks * 512 + 100_000
    _set(host, min_free_bytes=threshold)
    releases = sorted(p.name for p in (host.root / "releases").iterdir())

    result: OpResult = asyncio.run(_manager(host, disk, room).stage(new))
    assert result.ok and "pruned_for_space" not in result.details  # no release pruned
    assert sorted(p.name for p in (host.root / "releases").iterdir()) == [*releases, "1.4.0"]
    assert not expired.exists() and not idle.exists()
    removed = _samples(metrics, "cutover_upload_partials_removed_total")
    assert removed == {
        (("app", "other"), ("reason", "expired")): 1.0,
        (("app", host.app), ("reason", "disk")): 1.0,
    }
    assert _samples(metrics, "cutover_disk_prunes_total") == {}
    assert RESERVATIONS.outstanding(device_of(host.root)) == 0  # released at the stage's end


def test_a_release_pruned_for_space_is_counted(host: Host, make_package: PackageFactory) -> None:
    from tests.agent.test_disk_retention import Disk as RootDisk

    disk = RootDisk(host.root)
    _four_releases(host, make_package, disk)
    new = _release(host, make_package, "1.4.0")
    one = freeable_bytes(host.root / "releases" / "1.1.0")
    _set(host, min_free_bytes=TOTAL - disk.used() - _need(new) + one // 2)
    metrics = Metrics()
    result = asyncio.run(_manager(host, disk, Room(on_pruned=metrics.disk_pruned)).stage(new))
    assert result.details["pruned_for_space"] == ["1.1.0"]
    assert _samples(metrics, "cutover_disk_prunes_total") == {(("app", host.app),): 1.0}
    assert not (host.root / "releases" / "1.1.0").exists()


def test_a_partial_of_another_app_is_named_in_the_refusal_and_kept(
    host: Host, make_package: PackageFactory
) -> None:
    state_dir = host.tmp / "state"
    spool = UploadSpool(state_dir, lambda: ResumeLimits(3600, 2, 1 << 30))
    spool.prepare()
    disk = Disk(host.root, state_dir)
    room = Room(holders=(spool.partials,))
    theirs = _partial(state_dir, "other", 300_000)
    new = _release(host, make_package, "1.0.0")
    _set(host, min_free_bytes=TOTAL - disk.used() - _need(new) + 100_000)
    before = host.snapshot()
    with pytest.raises(StorageError) as caught:
        asyncio.run(_manager(host, disk, room).stage(new))
    message = caught.value.message
    assert caught.value.code == "insufficient_space"
    size = theirs.stat().st_size
    assert f"{state_dir / 'resume'} holds {size} bytes of interrupted uploads" in message, message
    assert theirs.exists() and host.snapshot() == before


def test_a_running_stage_reserves_its_bytes_so_a_second_root_on_the_filesystem_counts_them(
    host: Host, make_package: PackageFactory
) -> None:
    """Two app roots on one filesystem: B checks while A extracts. B would fit alone, but not
    with what A has still to write, so B is refused (naming the other stages' bytes)."""
    second = host.tmp / "srv" / "second"
    disk = Disk(host.root, second)
    a_pkg = _release(host, make_package, "1.0.0")
    b_pkg = _release(host, make_package, "1.1.0")
    mgr_b = _manager(host, disk, Room(), root=second)
    for d in mgr_b.layout.dirs():
        d.mkdir(parents=True, exist_ok=True)
    # B fits if A has written no more than half of what it needs, but not with all of A
    _set(host, min_free_bytes=TOTAL - disk.used() - _need(b_pkg) - _need(a_pkg) // 2)
    mgr_a, mgr_b = _manager(host, disk, Room()), _manager(host, disk, Room(), root=second)
    second_stage: list[Any] = []

    def while_a_extracts(step: str, done: int, total: int) -> None:
        if second_stage:
            return
        assert done <= _need(a_pkg) // 2  # A has written at most its first file
        try:
            second_stage.append(asyncio.run(mgr_b.stage(b_pkg)))
        except StorageError as exc:
            second_stage.append(exc)

    result = asyncio.run(mgr_a.stage(a_pkg, progress=while_a_extracts))
    assert result.ok
    (refusal,) = second_stage
    assert isinstance(refusal, StorageError) and refusal.code == "insufficient_space", refusal
    assert "other stages running on that filesystem will still write" in refusal.message
    assert not (second / "releases" / "1.1.0").exists()
    assert list((second / ".cutover" / "incoming").iterdir()) == []
    assert RESERVATIONS.outstanding(device_of(host.root)) == 0
    # once A is done its bytes are on disk, not reserved: B fits now (the same threshold)
    assert asyncio.run(mgr_b.stage(b_pkg)).ok


# A stage run by a child process with the disk model; CUTOVER_TEST_CRASH_AT kills it.
_CHILD = """
import asyncio, sys
from pathlib import Path
from cutover.agent.config import load_config
from cutover.agent.lifecycle.manager import AppManager
from tests.agent.test_disk_retention import Disk
config, app, root, package = sys.argv[1:5]
cfg = load_config(Path(config))
mgr = AppManager(app, cfg.apps[app], cfg.policies[app], actor="t", disk=Disk(Path(root)))
asyncio.run(mgr.stage(Path(package)))
"""

STEPS = ["prune.disk.trashed", "prune.disk.logged", "prune.disk.saved"]


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_while_making_room_recovers(
    host: Host, make_package: PackageFactory, step: str
) -> None:
    from tests.agent.test_disk_retention import Disk as RootDisk

    disk = RootDisk(host.root)
    _four_releases(host, make_package, disk)
    new = _release(host, make_package, "1.4.0")
    one = freeable_bytes(host.root / "releases" / "1.1.0")
    _set(host, min_free_bytes=TOTAL - disk.used() - _need(new) + one // 2)
    journal_before = len(host.journal())
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(host.config), host.app, str(host.root), str(new)],
        cwd=REPO,
        env={**os.environ, "CUTOVER_TEST_CRASH_AT": step},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    link = host.current  # intact at this instant, before any recovery
    assert link == "releases/1.3.0" and (host.root / link / "VERSION").is_file()

    status = host.cli_json("status")["apps"][0]
    assert status["current"] == "1.3.0" and status["pending"] is None
    recovered = [e for e in host.journal()[journal_before:] if e["event"] == "recovery"]
    assert recovered, host.journal()[journal_before:]
    # the pruned release is fully gone (or, had it not been trashed, fully there)
    on_disk = {p.name for p in (host.root / "releases").iterdir()}
    installed = {r["version"] for r in status["releases"] if r["installed"]}
    assert on_disk == installed and "1.1.0" not in on_disk and "1.4.0" not in on_disk
    assert list((host.root / ".cutover" / "trash").iterdir()) == []
    assert list((host.root / ".cutover" / "incoming").iterdir()) == []
    for v in installed:
        assert host.cli_json("verify", v)["ok"] is True


async def test_in_daemon_mode_the_workers_progress_counts_the_reservation_down(
    host: Host, make_package: PackageFactory
) -> None:
    """The daemon stages in a worker process (ChildStageWork): its ``{"progress": n}`` lines
    reach AppManager.stage's counter, so what another stage on the filesystem sees outstanding
    shrinks as the worker writes, and nothing stays reserved at the end, also when the worker
    is killed mid-way."""
    big = make_package("1.0.0", files={"VERSION": "1.0.0\n", "blob.bin": "x" * (12 << 20)})
    need = _need(big)
    device = device_of(host.root)
    cfg = load_config(host.config)
    pool = WorkerPool()
    pool.start()
    mgr = AppManager(
        host.app,
        cfg.apps[host.app],
        cfg.policies[host.app],
        actor="t",
        stage_work=functools.partial(ChildStageWork, pool),
    )
    seen: list[tuple[int, int]] = []  # (written so far, outstanding on the filesystem)

    def watch(step: str, done: int, total: int) -> None:
        if step == "extract":
            seen.append((done, RESERVATIONS.outstanding(device)))

    try:
        assert RESERVATIONS.outstanding(device) == 0
        result = await mgr.stage(big, progress=watch)
        assert result.ok and (host.root / "releases" / "1.0.0" / "blob.bin").is_file()
        mid = [out for done, out in seen if 0 < done < need]
        assert mid and all(0 < out < need for out in mid)  # counted down as the worker wrote
        assert [out for _, out in seen] == sorted((out for _, out in seen), reverse=True)
        assert RESERVATIONS.outstanding(device) == 0  # released at the end

        killed: list[int] = []
        doomed = make_package("1.1.0", files={"VERSION": "1.1.0\n", "blob.bin": "y" * (12 << 20)})

        def kill_the_worker(step: str, done: int, total: int) -> None:
            if step == "extract" and not killed:
                assert RESERVATIONS.outstanding(device) > 0
                (pid,) = _workers_running_for(mgr)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        with pytest.raises(InternalError) as info:
            await mgr.stage(doomed, progress=kill_the_worker)
        assert info.value.code == "stage_worker_died" and f"pid {killed[0]}" in str(info.value)
        assert RESERVATIONS.outstanding(device) == 0  # released although the worker died
        assert list((host.root / ".cutover" / "incoming").iterdir()) == []
        assert sorted(p.name for p in (host.root / "releases").iterdir()) == ["1.0.0"]
    finally:
        await pool.close()


def _workers_running_for(mgr: AppManager) -> list[int]:
    """The stage worker extracting for ``mgr`` now: the one holding its root's worker lock."""
    return holders(mgr.layout.worker_lock)
