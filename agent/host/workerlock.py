"""Stage workers against tree removal: ``flock(2)`` on ``<root>/.cutover/worker.lock`` (the
trees in ``incoming/`` and the releases a worker seals) and ``<root>/.cutover/stream-worker.lock``
(the daemon's ``streaming/`` trees).

A stage worker (agent/worker/) takes ``LOCK_SH`` on the file itself, before it writes a byte,
and never lets go: the kernel drops it only when the worker dies. Whoever removes such a tree
(recovery, the daemon's start clearing ``streaming/``) takes ``LOCK_EX`` first. The app lock
alone is not enough: a daemon killed with ``kill -9`` drops the app lock when its files are
released, a moment *before* the kernel sends its workers ``PR_SET_PDEATHSIG``, so without this
lock an on-host CLI or a restarted agent could remove a tree a dying worker still writes into.

Two files, so an operation's recovery never waits for an upload still arriving (a streaming
extraction runs outside the app lock). The exclusive side waits, bounded: a worker dies
within milliseconds of its daemon; one that holds the lock past the timeout is named (pid, from
``/proc/locks``) in the error.

The wait runs in a thread. From the event loop, go through :func:`acquire_exclusive_async` (or
pass a ``stop`` event and set it when the awaiting task is cancelled): a plain
``asyncio.to_thread(acquire_exclusive, ...)`` cancelled mid-wait (agent shutdown, Ctrl-C of an
on-host CLI) left its thread waiting; it took ``LOCK_EX`` once the worker died and nobody ever
released it, so every later stage worker of the process tree blocked on ``LOCK_SH``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, TypeVar

from cutover.agent._util.lazylog import get_logger
from cutover.agent.errors import LockedError, StorageError

__all__ = [
    "EXCLUSIVE_TIMEOUT_S",
    "WaitStoppedError",
    "acquire_exclusive",
    "acquire_exclusive_async",
    "exclusive",
    "hold_shared",
    "holders",
    "release",
    "run_stoppable",
]

log = get_logger(__name__)

T = TypeVar("T")

EXCLUSIVE_TIMEOUT_S: Final = 30.0
_POLL_S: Final = 0.01


class WaitStoppedError(Exception):
    """The wait for ``LOCK_EX`` was given up because its ``stop`` event was set (the task that
    awaited it was cancelled); nothing was taken."""


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise StorageError(
            f"cannot open the stage worker lock {path}: {exc.strerror}; "
            "check that the app root's .cutover/ exists and is writable by the agent"
        ) from exc


def hold_shared(path: Path) -> None:
    """Take ``LOCK_SH`` on ``path`` for the rest of this process's life (a worker's side;
    blocks while a removal holds it). The descriptor is left open on purpose.

    Raises:
        StorageError: the lock file cannot be opened.
    """
    fd = _open(path)
    fcntl.flock(fd, fcntl.LOCK_SH)


def holders(path: Path) -> list[int]:
    """The pids holding a flock on ``path`` (best effort, from ``/proc/locks``)."""
    try:
        st = path.stat()
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    out: list[int] = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  READ  1234 fd:01:5678 0 EOF" (a "->" marks a blocked waiter)
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        dev_ino = fields[5].split(":")
        with contextlib.suppress(ValueError, IndexError):
            if int(dev_ino[2]) == st.st_ino and int(fields[4]) not in out:
                out.append(int(fields[4]))
    return [p for p in out if p != os.getpid()]


def acquire_exclusive(
    path: Path, timeout_s: float = EXCLUSIVE_TIMEOUT_S, stop: threading.Event | None = None
) -> int:
    """Take ``LOCK_EX`` on ``path`` (blocking; call from a worker thread); returns the
    descriptor to :func:`release`. The wait ends early once ``stop`` is set.

    Raises:
        LockedError: a stage worker still held it after ``timeout_s``; nothing was removed.
        StorageError: the lock file cannot be opened.
        WaitStoppedError: ``stop`` was set before the lock was taken.
    """
    fd = _open(path)
    deadline = time.monotonic() + timeout_s
    waited = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if stop is not None and stop.is_set():
                    log.info("stage_worker_wait_stopped", lock=str(path))
                    raise WaitStoppedError(f"stopped waiting for {path}") from None
                if not waited:
                    waited = True
                    log.warning("waiting_for_stage_worker", lock=str(path), pids=holders(path))
                if time.monotonic() >= deadline:
                    pids = ", ".join(str(p) for p in holders(path)) or "unknown"
                    raise LockedError(
                        f"a stage worker (pid {pids}) still holds {path} after {timeout_s:g} s, "
                        "so the tree it writes cannot be removed yet; a worker dies with its "
                        "daemon: check that process (ps -p PID), kill it if its daemon is gone, "
                        "then retry",
                        holder={"pids": pids, "lock": str(path)},
                    ) from None
                if stop is not None:
                    stop.wait(_POLL_S)
                else:
                    time.sleep(_POLL_S)
    except BaseException:
        os.close(fd)
        raise
    if waited:
        log.info("stage_worker_gone", lock=str(path))
    return fd


def release(fd: int) -> None:
    """Drop what :func:`acquire_exclusive` took."""
    os.close(fd)


class _Handoff:
    """A descriptor taken in a thread, handed to the event loop or, if the awaiting task was
    cancelled meanwhile, released: whichever side comes second (under ``_mu``) releases it."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._mu = threading.Lock()
        self._fd: int | None = None

    def take(self, path: Path, timeout_s: float) -> int:
        fd = acquire_exclusive(path, timeout_s, self.stop)
        with self._mu:
            if self.stop.is_set():  # cancelled while the lock was being taken
                release(fd)
                raise WaitStoppedError(f"stopped waiting for {path}")
            self._fd = fd
        return fd

    def abandon(self) -> None:
        with self._mu:
            self.stop.set()
            fd, self._fd = self._fd, None
        if fd is not None:  # taken, but its result never reached the cancelled task
            release(fd)


async def acquire_exclusive_async(path: Path, timeout_s: float = EXCLUSIVE_TIMEOUT_S) -> int:
    """:func:`acquire_exclusive` from the event loop, cancellable: a cancelled wait stops its
    thread within a poll and never leaves the lock taken. Returns the descriptor to
    :func:`release`.

    Raises:
        LockedError: a stage worker still held it after ``timeout_s``; nothing was removed.
        StorageError: the lock file cannot be opened.
    """
    handoff = _Handoff()
    try:
        return await asyncio.to_thread(handoff.take, path, timeout_s)
    except asyncio.CancelledError:
        handoff.abandon()
        raise


async def run_stoppable(fn: Callable[[threading.Event], T]) -> T:
    """``fn(stop)`` in a thread, for a blocking call that waits on this lock with ``stop``
    (:func:`exclusive`): cancelling the awaiting task sets ``stop``, so the thread gives up its
    wait within a poll instead of going on alone (or holding up the process's exit)."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(fn, stop)
    except asyncio.CancelledError:
        stop.set()
        raise


@contextlib.contextmanager
def exclusive(
    path: Path, timeout_s: float = EXCLUSIVE_TIMEOUT_S, stop: threading.Event | None = None
) -> Iterator[None]:
    """:func:`acquire_exclusive` for the block (blocking; ``stop`` ends the wait early)."""
    fd = acquire_exclusive(path, timeout_s, stop)
    try:
        yield
    finally:
        release(fd)
