"""A stage worker process: one job, then exit (the daemon's side: agent/worker/process.py).

Protocol: JSON lines. The worker says ``{"ready": pid}``; the daemon sends the job:

* ``{"job": "stage", "package": path}``, then commands ``verify``, ``extract``, ``release``
  (close the package), ``inventory``, ``readonly`` (agent/worker/remote.py), each answered ``{"ok": ...}`` or ``{"error": ...}``
  (extract also sends ``{"progress": bytes}`` on the way). EOF on stdin ends the job.
* ``{"job": "stream", ...}`` (agent/daemon/streaming.py), then ``{"written": n}`` lines, and
  ``{"complete": true}`` or ``{"abort": true}``; one answer. After ``complete`` and an ``ok``
  answer, the same worker may be given the upload's ``stage`` job (the spool, now the whole
  package): one process per streamed upload; its stage decides again under the lock, reusing
  only its parse of the very manifest bytes it streamed (agent/lifecycle/stagework.py).
* Once its job ends (EOF on stdin), the worker's last line is ``{"done": {"job", "cpu_s",
  "max_rss_mib", "steps"}}``: the daemon logs it as ``stage_worker_done`` while it reaps the
  worker (no structlog import here on the stage's critical path).

* A stage worker is told ``{"op": "hold", "root": root}`` before its first write (``extract``,
  or ``inventory``/``readonly`` of a tree its streaming wrote); a stream worker takes the same
  step on its job (its own lock) and says ``{"held": pid}`` before the daemon feeds it.

What it may write: the tree it is told to extract (under ``incoming/``, or the daemon's
``streaming/``), a release's inventory file and modes (after the daemon installed it). Never
the state file, the journal or the lock: those stay with the daemon, under the app lock.
Before it writes, it holds the root's worker lock shared (agent/host/workerlock.py) until it
dies, and the daemon waits for that: whoever removes such trees takes the lock exclusively
first, so even a dying daemon's worker (the app lock is dropped a moment before the kernel
sends ``PR_SET_PDEATHSIG``) is gone before recovery or the next daemon removes its tree.

It dies with the daemon: ``PR_SET_PDEATHSIG`` (SIGKILL) is armed first, then the parent pid is
checked against the one the daemon passed (a daemon killed before the prctl left the worker
re-parented), so a restarted agent's recovery never races a writer that survived.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

if TYPE_CHECKING:
    from cutover.agent.trust.policy import VerifiedRelease

__all__ = ["die_with_parent", "main"]

_PR_SET_PDEATHSIG: Final = 1
_PROGRESS_BYTES: Final = 4 << 20  # progress lines at most every 4 MiB extracted
# seconds per stage command run (verify, extract, readonly, ...), logged once at the end
steps: dict[str, float] = {}


def die_with_parent(parent: int) -> None:
    """Be SIGKILLed when the daemon dies; exit now if it already did."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    _exit_if_orphaned(parent)


def _exit_if_orphaned(parent: int) -> None:
    if os.getppid() != parent:
        os._exit(1)  # the daemon is gone: nothing to do, nobody to answer


def _log_bug(exc: Exception, doing: str) -> None:
    """A failure that is no registry error (a bug) reaches the daemon as ``internal``, its
    type and message only: its traceback is logged here, to the daemon's log stream."""
    from cutover.agent.errors import CutoverError

    if not isinstance(exc, CutoverError):
        from cutover.agent._util.lazylog import get_logger

        get_logger(__name__).exception(
            "stage_worker_failed", pid=os.getpid(), doing=doing, error=f"{type(exc).__name__}"
        )


def _hold(lock: Path, parent: int) -> None:
    """Hold ``lock`` shared until this process dies (see the module docstring)."""
    from cutover.agent.host.workerlock import hold_shared

    hold_shared(lock)
    _exit_if_orphaned(parent)  # taken after a removal that followed the daemon's death


class _Out:
    """The protocol's stdout (a private dup: stray prints go to stderr instead)."""

    def __init__(self) -> None:
        self._fh = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(2, 1)
        self._lock = threading.Lock()

    def send(self, obj: dict[str, object]) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            self._fh.write(data)


def _stage(
    job: dict[str, object],
    inp: BinaryIO,
    out: _Out,
    parent: int,
    streamed: VerifiedRelease | None = None,
) -> None:
    """Run the stage job's commands; each one's seconds go to :data:`steps` (for the done
    report, which the daemon logs as ``stage_worker_done``: where a daemon's stage spends its
    time, bench/delta.py)."""
    from cutover.agent._util.faults import fault_point
    from cutover.agent.host.layout import Layout
    from cutover.agent.host.state import AppState
    from cutover.agent.lifecycle.stagework import StageJob
    from cutover.agent.worker.wire import (
        error_to_wire,
        head_to_wire,
        history_from_wire,
        policy_from_wire,
        stats_to_wire,
    )

    work = StageJob(Path(str(job["package"])), streamed)
    pending = 0
    started = 0.0

    def progress(n: int) -> None:
        nonlocal pending
        pending += n
        if pending >= _PROGRESS_BYTES:
            out.send({"progress": pending})
            pending = 0
            fault_point("worker.extracting")  # tests: kill a worker (or its daemon) mid-way

    try:
        for line in inp:
            cmd = json.loads(line)
            op = cmd["op"]
            started = time.perf_counter()
            try:
                if op == "hold":
                    _hold(Layout(Path(cmd["root"])).worker_lock, parent)
                    answer: dict[str, object] = {}
                elif op == "verify":
                    head = work.verify(
                        policy_from_wire(cmd["policy"]),
                        history_from_wire(cmd["history"]),
                        cmd["expected_version"],
                    )
                    answer = head_to_wire(head)
                elif op == "extract":
                    state = cmd["state"]
                    stats = work.extract(
                        Layout(Path(cmd["root"])),
                        Path(cmd["dest"]),
                        None if state is None else AppState.model_validate_json(state),
                        cmd["reuse"],
                        progress,
                    )
                    if pending:
                        out.send({"progress": pending})
                        pending = 0
                    answer = stats_to_wire(stats)
                elif op == "release":
                    work.release_package()
                    answer = {}
                elif op == "inventory":
                    added = work.record_inventory(
                        Layout(Path(cmd["root"])), Path(cmd["release_dir"])
                    )
                    answer = {"added": added}
                elif op == "readonly":
                    fault_point("worker.readonly")  # tests: the lock is held before it writes
                    seal = work.make_readonly(
                        Layout(Path(cmd["root"])),
                        Path(cmd["release_dir"]),
                        hooks_ran=bool(cmd["hooks_ran"]),
                    )
                    answer = {"seal": seal}
                else:
                    raise ValueError(f"unknown stage worker command {op!r}")
            except Exception as exc:  # the daemon raises it again, same class and code
                _log_bug(exc, f"stage {op}")
                out.send({"error": error_to_wire(exc)})
            else:
                out.send({"ok": answer})
            finally:
                steps[op] = round(steps.get(op, 0.0) + time.perf_counter() - started, 4)
    finally:
        work.close()


def _stream(job: dict[str, object], inp: BinaryIO, out: _Out, parent: int) -> None:
    from cutover.agent.host.layout import Layout
    from cutover.agent.worker.streamjob import SpoolFeed, pump, stream_extract
    from cutover.agent.worker.wire import error_to_wire

    try:
        _hold(Layout(Path(str(job["root"]))).stream_worker_lock, parent)
    except Exception as exc:
        out.send({"error": error_to_wire(exc)})
        return
    out.send({"held": os.getpid()})  # the daemon feeds the spool's progress only after this
    feed = SpoolFeed(Path(str(job["spool"])))
    feeding = threading.Thread(target=pump, args=(inp, feed), name="stream-feed", daemon=True)
    feeding.start()
    try:
        answer, verified = stream_extract(job, feed)
    except Exception as exc:  # the daemon logs it and lets the stage decide
        _log_bug(exc, "stream")
        out.send({"error": error_to_wire(exc)})
        return
    out.send({"ok": answer})
    feeding.join()  # until complete or abort: stdin is the pump's until then
    if not feed.complete:
        return
    line = inp.readline()  # the upload's stage job, or EOF (the daemon has no use for it)
    if line:
        stage = json.loads(line)
        if stage.get("job") != "stage":
            raise ValueError(f"a stream worker was sent {stage!r} instead of a stage job")
        _stage(stage, inp, out, parent, verified)


def _preload() -> None:
    """Import the job path (verification, extraction, the wire) before saying ready, so a spare
    worker is warm when its job comes; nothing else: no structlog until a line is logged, no
    daemon, no HTTP stack (tests/agent/test_cli_imports.py checks the set)."""
    import cutover.agent.lifecycle.stagework
    import cutover.agent.worker.streamjob
    import cutover.agent.worker.wire  # noqa: F401


def main(argv: list[str]) -> int:
    """``argv``: the program, the daemon's pid, the daemon's log format."""
    parent = int(argv[1])
    die_with_parent(parent)
    out = _Out()
    from cutover.agent._util.lazylog import configure_logging_lazily

    # what the job logs (e.g. the content index) goes where the daemon's log goes, alike;
    # structlog is imported when the first line is (agent/_util/lazylog.py)
    configure_logging_lazily(argv[2], os.environ.get("CUTOVER_LOG_LEVEL", "info"), sys.stderr)
    _preload()
    out.send({"ready": os.getpid()})
    inp = sys.stdin.buffer
    line = inp.readline()
    if not line:
        return 0  # a spare the daemon no longer needs
    job = json.loads(line)
    kind = job.get("job")
    if kind == "stage":
        _stage(job, inp, out, parent)
    elif kind == "stream":
        _stream(job, inp, out, parent)
    else:
        print(f"cutover stage worker: unknown job {job!r}", file=sys.stderr)
        return 2
    import resource

    # The daemon logs it (``stage_worker_done``) as it reaps this process: a line logged here
    # would import structlog (~0.1 s) while the daemon waits for this exit to end the stage.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.send(
        {
            "done": {
                "job": kind,
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
                "max_rss_mib": round(usage.ru_maxrss / 1024, 1),
                "steps": steps,
            }
        }
    )
    # Exit without the interpreter's teardown (freeing a 20,000-entry manifest's objects one by
    # one, ~50 ms while the daemon waits for this exit): every file this job wrote was written
    # and closed through the OS, stderr is flushed, the kernel drops the worker lock with the fd.
    sys.stderr.flush()
    os._exit(0)
