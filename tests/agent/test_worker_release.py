"""A stage job releases its package once extracted (agent/lifecycle/stagework.py
``release_package``: the daemon then removes its spool, docs/lifecycle.md §1.3), and a worker
whose job is done reports what it used as its last line and exits at once (agent/worker/child.py),
with everything it wrote in place.

Real worker processes, real signed packages, real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cutover.agent.errors import StateError
from cutover.agent.host.layout import Layout
from cutover.agent.keys import PrivateKey
from cutover.agent.lifecycle.stagework import StageJob
from cutover.agent.trust.policy import HostHistory, TrustPolicy
from cutover.agent.worker import ChildStageWork, WorkerPool
from tests.conftest import PackageFactory


def _layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "root")
    for d in layout.dirs():
        d.mkdir(parents=True, exist_ok=True)
    return layout


def _fds_on(pid: int, path: Path) -> list[str]:
    fds = Path(f"/proc/{pid}/fd")
    found = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


async def test_a_worker_releases_the_package_then_reports_and_exits_at_once(
    tmp_path: Path, make_package: PackageFactory, release_key: PrivateKey
) -> None:
    pkg = make_package("1.0.0")
    layout = _layout(tmp_path)
    pool = WorkerPool()
    work = ChildStageWork(pool, pkg)
    policy = TrustPolicy(app="demo", keys={release_key.keyid: release_key.public})
    dest = layout.incoming / "1.0.0.test"
    try:
        await work.verify(policy, HostHistory(), "1.0.0")
        pid = work.pid
        assert pid is not None and _fds_on(pid, pkg) != []  # the job holds the package open
        await work.extract(layout, dest, None, "off")
        await work.release_package()
        assert _fds_on(pid, pkg) == []  # closed: a spool removed now has no reader left
        seal = await work.make_readonly(layout, dest, hooks_ran=False)
        worker = work._worker
        assert worker is not None
        with capture_logs() as logs:
            await work.close()
    finally:
        await pool.close()
    assert worker._proc.returncode == 0  # exited on its own, not killed
    done = [e for e in logs if e["event"] == "stage_worker_done"]
    assert len(done) == 1 and done[0]["pid"] == pid and done[0]["job"] == "stage"
    assert isinstance(done[0]["cpu_s"], float) and done[0]["cpu_s"] > 0
    assert isinstance(done[0]["max_rss_mib"], float) and done[0]["max_rss_mib"] > 0
    # what it wrote before its quick exit is all there: the tree, its modes, its seal
    assert seal is not None
    assert (dest / "VERSION").read_text() == "1.0.0\n"
    assert (dest / "VERSION").stat().st_mode & 0o777 == 0o444
    assert any(layout.manifests.iterdir())


def test_a_released_package_cannot_be_extracted_again(
    tmp_path: Path, make_package: PackageFactory, release_key: PrivateKey
) -> None:
    pkg = make_package("1.0.0")
    layout = _layout(tmp_path)
    job = StageJob(pkg)
    policy = TrustPolicy(app="demo", keys={release_key.keyid: release_key.public})
    job.verify(policy, HostHistory(), "1.0.0")
    job.release_package()
    job.release_package()  # idempotent
    dest = layout.incoming / "1.0.0.test"
    with pytest.raises(StateError, match="released its package"):
        job.extract(layout, dest, None, "off")
    assert not dest.exists() and list(layout.incoming.iterdir()) == []
    assert pkg.is_file()  # the job never removes the package: only the daemon its spool
    job.close()
