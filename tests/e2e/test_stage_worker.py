"""The daemon stages in a worker process (agent/worker/) against the REAL agent: the worker is a
child of the daemon, dies with it, and a killed worker fails the stage cleanly.

A worker pauses mid-extraction at the fault point ``worker.extracting`` (after its first 4 MiB),
so "mid-extraction" is a state the test observes, never a timing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cutover.agent.errors import InternalError
from cutover.agent.host import workerlock
from cutover.agent.host.seal import seal_projection
from cutover.agent.host.workerlock import holders
from cutover.controller.client import AgentClient
from tests.e2e.conftest import (
    AGENT,
    APP,
    Agent,
    Keys,
    pause_at,
    signed_package,
    stage_worker_pids,
    wait_until,
)

pytestmark = pytest.mark.e2e

BLOB = 12 << 20  # incompressible: the extraction passes 4 MiB while writing it


def _package(tmp: Path, keys: Keys, version: str) -> Path:
    files = {
        "a/index.php": f"<?php echo '{version}';\n",
        "VERSION": f"{version}\n",
        "zz.bin": os.urandom(BLOB),
    }
    return signed_package(tmp, keys.release, version, files)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _workers_of(pid: int) -> list[int]:
    """Live stage worker processes whose parent is ``pid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            if b"cutover.agent.worker" in cmd and _ppid(int(d.name)) == pid:
                out.append(int(d.name))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return [p for p in out if _alive(p)]


def _leftovers(agent: Agent) -> dict[str, list[str]]:
    streaming = agent.meta / "streaming"
    return {
        "incoming": sorted(p.name for p in (agent.meta / "incoming").iterdir()),
        "streaming": sorted(p.name for p in streaming.iterdir()) if streaming.exists() else [],
    }


def _spare(agent: Agent) -> int:
    """The one stage worker started ahead (once it is there)."""
    wait_until(lambda: len(_workers_of(agent.pid)) == 1, "the spare started ahead")
    (spare,) = _workers_of(agent.pid)
    return spare


@pytest.fixture
async def active_agent(make_agent: Any, packages: dict[str, Path]) -> Agent:
    """An agent with 1.0.0 staged and active (streaming off, so the stage itself extracts;
    reuse off, so every byte comes from the payload)."""
    agent: Agent = make_agent(
        max_upload_bytes=64 << 20,
        stream_uploads=False,
        upload_timeout_s=120.0,
        app_toml='reuse = "off"\n',
    )
    agent.start()
    async with agent.client() as c:
        staged = await c.wait((await c.upload(APP, "1.0.0", packages["1.0.0"])).operation)
        assert staged.status == "succeeded", staged
        active = await c.wait((await c.activate(APP, "1.0.0")).operation)
        assert active.status == "succeeded", active
    return agent


@dataclass
class Paused:
    """``active_agent`` restarted so its stage workers pause mid-extraction; ``pkg`` is the
    2.0.0 package to stage (12 MiB incompressible, so the pause comes before its end)."""

    agent: Agent
    marker: Path
    pkg: Path

    async def upload(self, c: AgentClient) -> tuple[str, int]:
        """Upload 2.0.0 until its stage worker pauses: (the operation, the worker's pid)."""
        op = (await c.upload(APP, "2.0.0", self.pkg)).operation
        wait_until(self.marker.exists, "a stage worker paused mid-extraction")
        return op, stage_worker_pids(self.agent)[-1]  # the last stage's

    async def upload_on_the_spare(self, c: AgentClient) -> int:
        """:meth:`upload`, checking that the stage took the spare started ahead and that the
        next spare starts only once the stage ends; the worker's pid."""
        spare = _spare(self.agent)
        _, pid = await self.upload(c)
        assert pid == spare and _workers_of(self.agent.pid) == [pid]
        return pid


@pytest.fixture
def paused(active_agent: Agent, keys: Keys, tmp_path: Path) -> Paused:
    marker = tmp_path / "paused"
    active_agent.stop()
    active_agent.start(env=pause_at("worker.extracting", marker))
    return Paused(active_agent, marker, _package(tmp_path, keys, "2.0.0"))


async def test_the_stage_runs_in_a_child_and_its_kill_fails_the_stage_cleanly(
    paused: Paused,
) -> None:
    agent = paused.agent
    before = agent.snapshot()
    async with agent.client(upload_timeout_s=120) as c:
        op, pid = await paused.upload(c)
        # the work runs in a child of the daemon, not in the daemon: the daemon still serves
        assert pid != agent.pid and _alive(pid) and _ppid(pid) == agent.pid
        assert (await c.app(APP)).busy
        assert any((agent.meta / "incoming").iterdir())  # its partial tree, in incoming/ only
        os.kill(pid, signal.SIGKILL)
        record = await c.wait(op)
    assert record.status == "failed", record
    with pytest.raises(InternalError) as info:
        record.raise_for_error()
    assert info.value.code == "stage_worker_died"
    assert f"pid {pid}" in str(info.value) and "SIGKILL" in str(info.value)
    assert "extracting" in str(info.value)
    after = agent.snapshot()
    assert after["current"] == before["current"] == "releases/1.0.0"
    assert after["releases"] == before["releases"] == ["1.0.0"]
    assert after["incoming"] == [] and after["uploads"] == []
    assert _leftovers(agent) == {"incoming": [], "streaming": []}
    (failed,) = [e for e in agent.journal() if e["event"] == "stage.failed"]
    assert failed["version"] == "2.0.0" and failed["code"] == "stage_worker_died"
    assert f"pid {pid}" in failed["error"]

    # the next stage works (a fresh worker; this one is not paused)
    agent.stop()
    agent.start()
    async with agent.client(upload_timeout_s=120) as c:
        again = await c.wait((await c.upload(APP, "2.0.0", paused.pkg)).operation)
    assert again.status == "succeeded", again
    assert (agent.root / "releases" / "2.0.0" / "zz.bin").stat().st_size == BLOB
    assert _leftovers(agent) == {"incoming": [], "streaming": []}


async def test_kill_9_of_the_daemon_kills_its_workers_and_the_restart_recovers(
    paused: Paused,
) -> None:
    agent = paused.agent
    async with agent.client(upload_timeout_s=120) as c:
        pid = await paused.upload_on_the_spare(c)  # the daemon's only worker
        assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_until(lambda: not _alive(pid), "every worker died with the daemon")
    assert any((agent.meta / "incoming").iterdir())  # the dead worker's partial tree

    agent.start()  # recovery under the lock; no writer survived to race it
    async with agent.client() as c:
        app = await c.app(APP)
    assert app.current == "1.0.0" and not app.busy
    assert agent.current() == "releases/1.0.0"
    assert (agent.root / "current" / "VERSION").read_text() == "1.0.0\n"
    assert sorted(p.name for p in (agent.root / "releases").iterdir()) == ["1.0.0"]
    assert _leftovers(agent) == {"incoming": [], "streaming": []}
    assert agent.snapshot()["uploads"] == []


async def test_a_cancelled_stage_kills_its_worker(paused: Paused) -> None:
    """A stage still running when the drain times out is cancelled: its worker is killed and
    nothing of it stays."""
    agent = paused.agent
    async with agent.client(upload_timeout_s=120) as c:
        pid = await paused.upload_on_the_spare(c)  # the daemon's only worker
    assert agent.stop() == 0  # SIGTERM: the drain (2 s) times out, the stage is cancelled
    assert not _alive(pid)  # killed and reaped before the daemon exited
    assert agent.current() == "releases/1.0.0"
    assert sorted(p.name for p in (agent.root / "releases").iterdir()) == ["1.0.0"]
    assert _leftovers(agent) == {"incoming": [], "streaming": []}
    (failed,) = [e for e in agent.journal() if e["event"] == "stage.failed"]
    assert failed["version"] == "2.0.0" and failed["code"] == "cancelled"


def test_kill_9_of_an_idle_daemon_kills_its_spare_worker(make_agent: Any) -> None:
    agent: Agent = make_agent()
    agent.start()
    spare = _spare(agent)
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_until(lambda: not _alive(spare), "the spare died with the daemon")
    assert not _alive(spare)


async def test_the_next_spare_starts_once_the_stage_ended(
    make_agent: Any, packages: dict[str, Path]
) -> None:
    """The spare taken by a stage is replaced after the stage, not while it runs: the
    replacement's pid is not the stage's, and it is a child of the daemon."""
    agent: Agent = make_agent(stream_uploads=False)
    agent.start()
    spare = _spare(agent)
    async with agent.client() as c:
        staged = await c.wait((await c.upload(APP, "1.0.0", packages["1.0.0"])).operation)
    assert staged.status == "succeeded", staged
    assert stage_worker_pids(agent) == [spare]
    wait_until(lambda: _workers_of(agent.pid) not in ([], [spare]), "the next spare")
    assert spare not in _workers_of(agent.pid) and len(_workers_of(agent.pid)) == 1


def _shared_package(tmp: Path, keys: Keys, version: str) -> Path:
    """A release whose ``lib/`` is the same in every version (reused by a delta stage)."""
    files: dict[str, str | bytes] = {
        f"lib/m{i}.php": f"<?php // module {i}\n" + "x" * 4000 * i for i in range(8)
    }
    files["VERSION"] = f"{version}\n"
    return signed_package(tmp, keys.release, version, files, tag="shared")


@pytest.mark.parametrize("stream_uploads", [True, False])
async def test_a_daemon_staged_release_is_sealed_and_the_next_stage_reuses_it_unhashed(
    make_agent: Any, keys: Keys, tmp_path: Path, stream_uploads: bool
) -> None:
    """The worker seals what it makes read-only (docs/lifecycle.md §1.2); the next stage's
    worker reports the sealed reuse across the pipe (agent/worker/wire.py)."""
    agent: Agent = make_agent(stream_uploads=stream_uploads, upload_timeout_s=120.0)
    agent.start()
    async with agent.client(upload_timeout_s=120) as c:
        first = await c.wait(
            (await c.upload(APP, "1.0.0", _shared_package(tmp_path, keys, "1.0.0"))).operation
        )
        assert first.status == "succeeded", first
        seal = json.loads((agent.meta / "manifests" / "1.0.0.seal.json").read_bytes())
        assert seal["version"] == "1.0.0"
        assert len(seal["files"]) == 10 and all(row[4] > 0 for row in seal["files"])
        state = json.loads((agent.meta / "state.json").read_bytes())
        rows = [tuple(row) for row in seal["files"]]  # the worker's digest, carried to the state
        assert state["releases"]["1.0.0"]["seal_sha256"] == seal_projection(rows)  # type: ignore[arg-type]
        second = await c.wait(
            (await c.upload(APP, "2.0.0", _shared_package(tmp_path, keys, "2.0.0"))).operation
        )
        assert second.status == "succeeded", second
    state = json.loads((agent.meta / "state.json").read_bytes())
    content = state["releases"]["2.0.0"]["content"]
    assert content["reuse_sealed_files"] == 9  # lib/ and cutover.toml: all but VERSION
    assert "reuse_hashed_files" not in content
    assert content["hardlink_files"] == 9
    for i in range(8):
        a, b = (
            os.lstat(agent.root / "releases" / v / "lib" / f"m{i}.php") for v in ("1.0.0", "2.0.0")
        )
        assert (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    assert (agent.meta / "manifests" / "2.0.0.seal.json").is_file()
    assert _leftovers(agent) == {"incoming": [], "streaming": []}


# A stage worker as the kernel may leave one for a moment after kill -9 of its daemon: it holds
# the worker lock (the same call as agent/worker/child.py) and keeps writing into its tree.
_SURVIVOR = """
import itertools, pathlib, sys, time
from cutover.agent.host.workerlock import hold_shared
lock, dest, ready = map(pathlib.Path, sys.argv[1:])
hold_shared(lock)
dest.mkdir()
for i in itertools.count():
    (dest / f"f{i}").write_bytes(b"x")
    if i == 0:
        ready.write_text("writing")
    time.sleep(0.002)  # a pace, not a synchronisation: the test waits for events
"""


def _survivor(lock: Path, dest: Path, ready: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", _SURVIVOR, str(lock), str(dest), str(ready)])


def _cli_status(agent: Agent, stderr: Path) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as err:
        return subprocess.Popen(
            [str(AGENT), "--config", str(agent.config), "--json", "status"],
            stdout=subprocess.PIPE,
            stderr=err,
        )


async def test_recovery_waits_until_a_worker_that_outlived_its_daemon_is_gone(
    active_agent: Agent, tmp_path: Path
) -> None:
    agent = active_agent
    assert agent.stop() == 0  # the on-host CLI takes the app lock, as after a kill -9
    before = agent.snapshot()
    dest = agent.meta / "incoming" / "2.0.0.survivor"
    ready = tmp_path / "writing"
    writer = _survivor(agent.meta / "worker.lock", dest, ready)
    try:
        wait_until(ready.exists, "the surviving worker writes into incoming/")
        assert holders(agent.meta / "worker.lock") == [writer.pid]
        err = tmp_path / "cli.err"
        cli = _cli_status(agent, err)
        wait_until(lambda: "waiting_for_stage_worker" in err.read_text(), "recovery waits")
        assert str(writer.pid) in err.read_text()  # the log names the holder
        seen = len(list(dest.iterdir()))
        wait_until(lambda: len(list(dest.iterdir())) > seen, "the worker writes on meanwhile")
        assert cli.poll() is None  # recovery has not removed its tree while it writes
    finally:
        writer.kill()
        writer.wait()
    out, _ = cli.communicate(timeout=120)
    assert cli.returncode == 0, err.read_text()
    (view,) = json.loads(out)["apps"]
    assert "removed partial staging 2.0.0.survivor from incoming/" in view["recovered"]
    assert not dest.exists() and _leftovers(agent) == {"incoming": [], "streaming": []}
    after = agent.snapshot()
    assert after["current"] == before["current"] == "releases/1.0.0"
    assert after["releases"] == before["releases"] == ["1.0.0"]


async def test_the_cli_right_after_kill_9_of_the_daemon_waits_for_its_worker(
    paused: Paused, tmp_path: Path
) -> None:
    agent = paused.agent
    async with agent.client(upload_timeout_s=120) as c:
        _, pid = await paused.upload(c)
        # it holds the worker lock from before it wrote: recovery cannot pass it while it lives
        assert holders(agent.meta / "worker.lock") == [pid]
        assert any((agent.meta / "incoming").iterdir())
        assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    cli = _cli_status(agent, tmp_path / "cli.err")  # at once: the worker may still be dying
    out, _ = cli.communicate(timeout=120)
    assert cli.returncode == 0, (tmp_path / "cli.err").read_text()
    (view,) = json.loads(out)["apps"]
    assert any(a.startswith("removed partial staging 2.0.0.") for a in view["recovered"])
    assert holders(agent.meta / "worker.lock") == []
    wait_until(lambda: not _alive(pid), "the worker died with the daemon")
    assert _leftovers(agent) == {"incoming": [], "streaming": []}
    assert agent.current() == "releases/1.0.0"
    assert sorted(p.name for p in (agent.root / "releases").iterdir()) == ["1.0.0"]


@pytest.mark.parametrize("stream_uploads", [False, True], ids=["stage-extracts", "streamed"])
async def test_an_operation_right_after_a_stage_never_waits_for_a_worker_lock(
    make_agent: Any, packages: dict[str, Path], stream_uploads: bool
) -> None:
    """A worker holds its lock only while its job may write into the app root: when the daemon
    reports a stage done, the stage's workers (the streaming one, the stage's own) are gone and
    their locks free; the spare started ahead holds nothing. So the next operation's recovery
    takes the lock at once (agent/host/workerlock.py), never after a bounded wait."""
    agent: Agent = make_agent(stream_uploads=stream_uploads, app_toml='reuse = "off"\n')
    agent.start()
    locks = (agent.meta / "worker.lock", agent.meta / "stream-worker.lock")
    async with agent.client() as c:
        staged = await c.wait((await c.upload(APP, "1.0.0", packages["1.0.0"])).operation)
        assert staged.status == "succeeded", staged
        # at once, as the controller's next request would come
        assert [holders(lock) for lock in locks] == [[], []]
        used = stage_worker_pids(agent)
        assert used and not any(_alive(pid) for pid in used)
        for lock in locks:  # free now: a non-blocking try, no wait at all
            workerlock.release(workerlock.acquire_exclusive(lock, timeout_s=0))
        wait_until(lambda: _workers_of(agent.pid), "the spare worker started ahead")
        assert [holders(lock) for lock in locks] == [[], []]  # the idle spare holds nothing
        active = await c.wait((await c.activate(APP, "1.0.0")).operation)
        assert active.status == "succeeded", active
    events = [e.get("event") for e in agent.log_events()]
    assert "waiting_for_stage_worker" not in events and "stage_worker_gone" not in events
    assert agent.current() == "releases/1.0.0"
    assert _leftovers(agent) == {"incoming": [], "streaming": []}


@pytest.mark.parametrize("stream_uploads", [False, True], ids=["stage-extracts", "streamed"])
async def test_the_worker_holds_its_lock_while_it_seals_a_release(
    make_agent: Any, keys: Keys, tmp_path: Path, stream_uploads: bool
) -> None:
    """Review finding (r5): a streamed upload's worker goes on as its stage's worker and never
    extracts again, so it was never told to hold the worker lock, and wrote the release's modes
    and seal holding none: a kill -9'd daemon's recovery could remove that tree under it. Paused
    just before ``readonly``, the stage's worker must hold ``worker.lock``."""
    marker = tmp_path / "paused"
    agent: Agent = make_agent(
        max_upload_bytes=64 << 20, stream_uploads=stream_uploads, upload_timeout_s=120.0
    )
    agent.start(env=pause_at("worker.readonly", marker))
    before = agent.snapshot()
    pkg = _package(tmp_path, keys, "2.0.0")
    async with agent.client(upload_timeout_s=120) as c:
        op = (await c.upload(APP, "2.0.0", pkg)).operation
        wait_until(marker.exists, "the stage's worker paused before making the release read-only")
        pid = stage_worker_pids(agent)[-1]
        assert _alive(pid) and _ppid(pid) == agent.pid
        assert pid in holders(agent.meta / "worker.lock")
        os.kill(pid, signal.SIGKILL)
        record = await c.wait(op)
    assert record.status == "failed", record
    with pytest.raises(InternalError) as info:
        record.raise_for_error()
    assert info.value.code == "stage_worker_died" and f"pid {pid}" in str(info.value)
    after = agent.snapshot()
    assert after["current"] == before["current"]
    assert after["releases"] == before["releases"] and after["incoming"] == []
    assert _leftovers(agent) == {"incoming": [], "streaming": []}
