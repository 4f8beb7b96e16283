"""The daemon's side of a stage worker process: start it, talk JSON lines, kill it.

A worker is ``python -m cutover.agent.worker <daemon pid>`` started from the event loop thread
(:func:`asyncio.create_subprocess_exec`). It imports, arms ``PR_SET_PDEATHSIG`` (and checks its
parent is still the pid it was given), answers ``{"ready": pid}``, then does exactly one job
(agent/worker/child.py) and exits. :class:`WorkerPool` keeps one such worker started ahead, so a
stage never waits for the interpreter to import (~0.3 s of another core's time); a used worker
is never reused (a fresh address space per job, nothing carried from one package to the next).
The next spare is started when a taken worker ends, not when it is taken: its start-up never
competes for the CPU with the job (and the upload) it would follow; a job that finds no spare
(two at once) starts its own. (A stream worker that goes on with its upload's stage is one job:
agent/daemon/streaming.py.)

Every failure of the process itself is one error: :class:`~agent.errors.InternalError` with code
``stage_worker_died``, naming the pid, how it ended (or the unreadable line it sent: it is
killed then), and what it was doing. A line may be as long as a signed manifest may be
(``MAX_MANIFEST_BYTES``) plus 1 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Final

import structlog

from cutover.agent.errors import InternalError
from cutover.agent.package.manifest import MAX_MANIFEST_BYTES
from cutover.agent.worker.wire import Json, dumps, error_from_wire

__all__ = ["WORKER_DIED", "WorkerPool", "WorkerProcess"]

log = structlog.get_logger(__name__)

WORKER_DIED: Final = "stage_worker_died"
# a manifest head (notes, chunk digests: at most the signed manifest's size) fits in one line
_LINE_LIMIT: Final = MAX_MANIFEST_BYTES + (1 << 20)
_EXIT_WAIT_S: Final = 10.0  # a worker whose job is done exits at once when its stdin closes


class WorkerProcess:
    """One started worker (see the module docstring)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.doing = "starting"  # for the error if it dies
        self.on_end: Callable[[], None] | None = None  # called once, when it was reaped

    @classmethod
    async def spawn(cls, log_format: str = "json") -> WorkerProcess:
        """Start a worker (logging in the daemon's ``log_format``) and wait until it is ready
        for a job."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cutover.agent.worker",
            str(os.getpid()),
            log_format,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        worker = cls(proc)
        try:
            hello = await worker.receive()
            if hello.get("ready") != proc.pid:
                raise InternalError(f"stage worker {proc.pid} said {hello!r} instead of ready")
        except BaseException:
            await worker.kill()
            raise
        worker.doing = "waiting for a job"
        log.debug("stage_worker_ready", pid=proc.pid)
        return worker

    @property
    def alive(self) -> bool:
        return self._proc.returncode is None

    def send(self, obj: Json) -> None:
        """Queue one line to the worker (never blocks the loop: the transport buffers it)."""
        stdin = self._proc.stdin
        if stdin is None or stdin.is_closing():
            raise self._died()
        stdin.write(dumps(obj))

    async def receive(self) -> Json:
        """The worker's next line.

        Raises:
            InternalError: the worker ended, or sent what is not a protocol line (then it is
                killed first); both ``stage_worker_died``.
        """
        assert self._proc.stdout is not None  # noqa: S101 - spawned with stdout=PIPE
        try:
            line = await self._proc.stdout.readline()
        except ValueError:  # longer than the limit (the rest is not read)
            await self.kill()
            raise self._garbled(f"a line longer than {_LINE_LIMIT} bytes") from None
        if not line.endswith(b"\n"):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._proc.wait(), _EXIT_WAIT_S)
            raise self._died()
        try:
            obj = json.loads(line)
        except ValueError:  # not JSON, or not UTF-8
            obj = None
        if not isinstance(obj, dict):
            await self.kill()
            raise self._garbled(f"{line[:200]!r}")
        return obj

    async def request(
        self, obj: Json, doing: str, progress: Callable[[int], None] | None = None
    ) -> Json:
        """Send a command and return its ``ok`` answer (``progress`` gets each
        ``{"progress": bytes}`` on the way).

        Raises:
            CutoverError: the job's own error, as the registry class it was raised as.
            InternalError: the worker ended before answering (``stage_worker_died``).
        """
        self.doing = doing
        self.send(obj)
        while True:
            msg = await self.receive()
            if "progress" in msg:
                if progress is not None:
                    progress(int(msg["progress"]))
                continue
            self.doing = f"done {doing}"
            if "error" in msg:
                raise error_from_wire(msg["error"])
            ok: Json = msg["ok"]
            return ok

    async def close(self) -> None:
        """End the job: stdin closes, the worker exits; one that does not is killed."""
        stdin = self._proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        try:
            await asyncio.wait_for(self._reap(), _EXIT_WAIT_S)
        except TimeoutError:
            await self.kill()
        self._ended()

    async def _reap(self) -> None:
        """Read the worker's last lines until it exits, logging its done report
        (``stage_worker_done``: CPU seconds, peak RSS, seconds per stage command)."""
        stdout = self._proc.stdout
        with contextlib.suppress(ValueError):  # a line over the limit: not a report
            while stdout is not None and (line := await stdout.readline()):
                with contextlib.suppress(ValueError):
                    msg = json.loads(line)
                    done = msg.get("done") if isinstance(msg, dict) else None
                    if isinstance(done, dict):
                        log.info(
                            "stage_worker_done",
                            job=done.get("job"),
                            pid=self.pid,
                            cpu_s=done.get("cpu_s"),
                            max_rss_mib=done.get("max_rss_mib"),
                            steps=done.get("steps"),
                        )
        await self._proc.wait()

    async def kill(self) -> None:
        """SIGKILL the worker (if it still runs) and reap it."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        await self._proc.wait()
        self._ended()

    def _ended(self) -> None:
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end()

    def _garbled(self, what: str) -> InternalError:
        return InternalError(
            f"the stage worker process (pid {self.pid}) sent {what} while {self.doing}, which "
            "is not a line of its protocol; it was killed, and the stage stopped and removed "
            "what it had written; its log (stderr) may say why (report it: a bug), then stage "
            "the package again",
            code=WORKER_DIED,
        )

    def _died(self) -> InternalError:
        rc = self._proc.returncode
        if rc is None:
            how = "closed its pipe"
        elif rc < 0:
            how = f"was killed by {signal.Signals(-rc).name}"
        else:
            how = f"exited with status {rc}"
        return InternalError(
            f"the stage worker process (pid {self.pid}) {how} while {self.doing}; "
            "the stage stopped and removed what it had written; its log (stderr) may say why, "
            "then stage the package again",
            code=WORKER_DIED,
        )


class WorkerPool:
    """Hands out started workers, keeping one ready ahead (see the module docstring)."""

    def __init__(self, log_format: str = "json") -> None:
        self._log_format = log_format
        self._spare: asyncio.Task[WorkerProcess] | None = None
        self._closed = False

    def _refill(self) -> None:
        if not self._closed:
            self._spare = asyncio.create_task(
                WorkerProcess.spawn(self._log_format), name="stage-worker-spawn"
            )

    def start(self) -> None:
        """Start the first spare (call on the event loop)."""
        self._refill()

    async def take(self) -> WorkerProcess:
        """A ready worker of one's own (the spare, or a fresh one); the next spare is started
        once it ended (closed or killed), unless one is there by then."""
        spare, self._spare = self._spare, None
        worker: WorkerProcess | None = None
        if spare is not None:
            try:
                worker = await spare
            except Exception as exc:  # e.g. killed while idle: a fresh one is started
                log.warning("stage_worker_spare_lost", error=str(exc)[:500])
        if worker is None or not worker.alive:
            worker = await WorkerProcess.spawn(self._log_format)
        worker.on_end = self._job_ended
        return worker

    @property
    def has_spare(self) -> bool:
        """A spare is started (or starting) and not yet taken."""
        return self._spare is not None

    def _job_ended(self) -> None:
        if self._spare is None:
            self._refill()

    async def close(self) -> None:
        """Kill the spare (at shutdown)."""
        self._closed = True
        spare, self._spare = self._spare, None
        if spare is None:
            return
        spare.cancel()
        with contextlib.suppress(BaseException):
            worker = await spare
            await worker.kill()
