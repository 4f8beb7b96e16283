"""A wait for the stage workers' lock (agent/host/workerlock.py) that is cancelled mid-wait, as
on agent shutdown or Ctrl-C of an on-host CLI, while a real worker process holds ``LOCK_SH``.

Review finding (r6): recovery ran ``asyncio.to_thread(acquire_exclusive, ...)``; cancelling it
left the thread waiting, which took ``LOCK_EX`` once the worker died and never released it
(every later stage worker of the process tree blocked on ``LOCK_SH``), or held up the process's
exit for up to 30 s. The daemon's start clearing ``streaming/`` had the same pattern.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cutover.agent.config import load_config
from cutover.agent.daemon.streaming import clear_stale, streaming_dir
from cutover.agent.host import workerlock
from cutover.agent.host.layout import Layout
from cutover.agent.lifecycle import AppManager
from tests.conftest import Host, PackageFactory

# a stage worker's side of the lock, as agent/worker/ takes it, in a process of its own
_WORKER = """
import sys
import time
from pathlib import Path
from cutover.agent.host.workerlock import hold_shared
hold_shared(Path(sys.argv[1]))
sys.stdout.write("held\\n")
sys.stdout.flush()
sys.stdin.read()  # until the test kills it
"""

# another process's non-blocking LOCK_EX: exit 0 when the lock is free at once
_TRY_EXCLUSIVE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(1)
"""

Logs = list[MutableMapping[str, Any]]


def _start_worker(lock: Path) -> subprocess.Popen[bytes]:
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert worker.stdout is not None and worker.stdout.readline() == b"held\n"
    assert workerlock.holders(lock) == [worker.pid]
    return worker


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    worker.kill()
    worker.communicate()  # reaped, its pipes closed: its LOCK_SH is gone


def _free_for_another_process(lock: Path) -> bool:
    return (
        subprocess.run([sys.executable, "-c", _TRY_EXCLUSIVE, str(lock)], check=False).returncode
        == 0
    )


def _events(logs: Logs) -> list[str]:
    return [str(e["event"]) for e in logs]


async def _until(predicate: Callable[[], bool], what: str) -> None:
    """Poll until ``predicate()`` holds (a bounded wait for an event, not a timing claim)."""
    for _ in range(1200):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def _cancel_once_waiting(task: asyncio.Task[Any], logs: Logs) -> None:
    await _until(lambda: "waiting_for_stage_worker" in _events(logs), "the wait for the worker")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.fixture
def staged(host: Host, make_package: PackageFactory) -> Host:
    """An app root with 1.0.0 staged (an operation's recovery takes ``worker.lock``)."""
    asyncio.run(_manager(host).stage(make_package("1.0.0")))
    return host


def _manager(host: Host) -> AppManager:
    cfg = load_config(host.config)
    return AppManager(host.app, cfg.apps[host.app], cfg.policies[host.app], actor="test")


def test_a_recovery_cancelled_mid_wait_leaves_the_lock_free_when_the_worker_exits(
    staged: Host,
) -> None:
    """Cancelled while the worker lives, then the worker exits at once: afterwards (every
    thread of the loop done) another process takes ``LOCK_EX`` at once; nothing changed."""
    before = staged.snapshot()
    lock = staged.root / ".cutover" / "worker.lock"
    worker = _start_worker(lock)
    worker_alive_at_cancel: list[bool] = []

    async def scenario() -> None:
        with capture_logs() as logs:
            task = asyncio.create_task(_manager(staged).activate("1.0.0"))
            await _cancel_once_waiting(task, logs)
            worker_alive_at_cancel.append(worker.poll() is None)
            await asyncio.to_thread(_stop_worker, worker)
            await asyncio.get_running_loop().shutdown_default_executor()

    try:
        asyncio.run(scenario())
    finally:
        _stop_worker(worker)
    assert worker_alive_at_cancel == [True]  # the cancellation never waited for the worker
    assert workerlock.holders(lock) == []
    assert _free_for_another_process(lock)
    assert staged.snapshot() == before
    # the next operation's recovery takes the lock at once
    with capture_logs() as logs:
        asyncio.run(_manager(staged).activate("1.0.0"))
    assert "waiting_for_stage_worker" not in _events(logs)
    assert staged.current == "releases/1.0.0"


def test_a_cancelled_wait_stops_its_thread_while_the_worker_still_runs(staged: Host) -> None:
    """The thread gives up its wait on cancellation: the loop's threads all end (as
    ``asyncio.run`` waits for them at a CLI's exit) while the worker still holds its lock."""
    before = staged.snapshot()
    lock = staged.root / ".cutover" / "worker.lock"
    worker = _start_worker(lock)
    try:
        with capture_logs() as logs:

            async def scenario() -> None:
                task = asyncio.create_task(_manager(staged).activate("1.0.0"))
                await _cancel_once_waiting(task, logs)
                await asyncio.get_running_loop().shutdown_default_executor()

            asyncio.run(scenario())
        assert worker.poll() is None  # still holding: the threads ended without it
        assert workerlock.holders(lock) == [worker.pid]
        events = _events(logs)
        assert "stage_worker_wait_stopped" in events and "stage_worker_gone" not in events
        assert staged.snapshot() == before
    finally:
        _stop_worker(worker)
    assert _free_for_another_process(lock)


def test_the_daemon_start_clearing_streaming_stops_waiting_when_cancelled(tmp_path: Path) -> None:
    """clear_stale's wait (the daemon's start, through run_stoppable) ends on cancellation:
    nothing removed, the thread gone while the worker lives, the lock free after it exits."""
    layout = Layout(tmp_path / "root")
    for d in layout.dirs():
        d.mkdir(parents=True, exist_ok=True)
    tree = streaming_dir(layout) / "op-1"
    tree.mkdir(parents=True)
    (tree / "f").write_bytes(b"x")
    worker = _start_worker(layout.stream_worker_lock)
    try:
        with capture_logs() as logs:

            async def scenario() -> None:
                task = asyncio.create_task(
                    workerlock.run_stoppable(functools.partial(clear_stale, layout))
                )
                await _cancel_once_waiting(task, logs)
                await asyncio.get_running_loop().shutdown_default_executor()

            asyncio.run(scenario())
        assert worker.poll() is None
        assert "stage_worker_wait_stopped" in _events(logs)
        assert (tree / "f").read_bytes() == b"x"  # nothing removed
    finally:
        _stop_worker(worker)
    assert _free_for_another_process(layout.stream_worker_lock)
    assert sorted(p.name for p in layout.incoming.iterdir()) == []


def _hold_the_loop_until_taken(lock: Path) -> None:
    """Block (the event loop, when called from it) until some thread holds ``lock`` (bounded)."""
    for _ in range(1200):
        if not _free_for_another_process(lock):
            return
        time.sleep(0.05)
    raise AssertionError("the thread never took the lock")


def test_a_lock_taken_as_its_wait_is_cancelled_is_released_not_leaked(tmp_path: Path) -> None:
    """The thread takes ``LOCK_EX`` but the awaiting task is cancelled before it resumes (the
    descriptor never reaches it): ``_Handoff.abandon`` releases it. The loop is held while the
    thread takes the lock, so this order is a state the test makes, never a timing."""
    lock = tmp_path / "worker.lock"
    lock.touch(mode=0o600)

    async def scenario() -> None:
        task = asyncio.create_task(workerlock.acquire_exclusive_async(lock))
        await asyncio.sleep(0)  # the task starts and hands the wait to its thread
        _hold_the_loop_until_taken(lock)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.get_running_loop().shutdown_default_executor()

    asyncio.run(scenario())
    assert _free_for_another_process(lock)  # (holders() leaves this process out)
