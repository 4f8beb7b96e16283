"""Process-group-safe subprocess runner shared by hooks and ``command`` health checks.

Rules every run obeys (the callers add their own: hooks in :mod:`agent.hooks`, health commands in
:mod:`agent._checks`):

* argv only, never a shell; stdin is ``/dev/null``, stdout and stderr share one pipe; the
  environment is exactly the mapping the caller passes (build it with :func:`clean_env`, which
  inherits nothing from ``os.environ``);
* the process leads its own session and process group, and **the whole group is killed** when the
  run times out (SIGTERM, ``kill_grace_s``, then SIGKILL), when the runner is cancelled (SIGKILL at
  once), and when the leader exits while group members linger (they would hold the output pipe
  open and a daemonised grandchild would outlive its release). A process that leaves the group with
  ``setsid`` escapes this; the runner then stops reading after a short drain and logs
  ``hook.output_pipe_held``;
* a signal is only ever sent to the group while it still has a member (a zombie leader keeps the
  group id reserved), so it cannot reach a stranger that reused the id;
* output is bounded: only the last ``output_cap_bytes`` are kept, lines passed to ``on_line`` are
  cut at :data:`MAX_LINE_BYTES`, and the total byte count is reported;
* a failure to start is reported in :attr:`Outcome.spawn_error`, never raised.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cutover.agent._util.lazylog import get_logger

__all__ = [
    "DEFAULT_PATH",
    "MAX_LINE_BYTES",
    "Outcome",
    "clean_env",
    "run_process",
    "signal_name",
    "spawn_error_text",
]

log = get_logger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_LINE_BYTES = 4096

_POLL_S = 0.05  # how often a dying process group is re-examined
_DRAIN_TIMEOUT_S = 1.0  # how long to wait for EOF once every group member is gone
_REAP_TIMEOUT_S = 5.0  # how long to wait for the leader's exit status after SIGKILL


def clean_env(
    *, home: Path, path_env: str = DEFAULT_PATH, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The base environment of every hook and health command.

    Args:
        home: value of ``HOME`` unless ``extra`` sets it.
        path_env: value of ``PATH`` unless ``extra`` sets it.
        extra: variables added last; they may override the defaults above.

    Returns:
        A new dict; nothing is inherited from ``os.environ``.
    """
    env = {"PATH": path_env, "LANG": "C.UTF-8", "HOME": str(home)}
    env.update(extra or {})
    return env


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; ``signal N`` for a number Python does not name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass(frozen=True)
class Outcome:
    """How one run ended; ``spawn_error`` is set (and nothing ran) when exec failed."""

    exit_code: int | None
    signal: int | None
    timed_out: bool
    duration_s: float
    output_tail: str
    output_bytes: int
    spawn_error: OSError | None = None


class _Capture(asyncio.SubprocessProtocol):
    """Consumes the merged output pipe as it arrives: keeps the tail, splits lines, counts bytes.

    Data is processed synchronously in ``pipe_data_received`` and never queued, so memory stays
    bounded by ``cap`` + :data:`MAX_LINE_BYTES` whatever the process prints.
    """

    def __init__(self, cap: int, on_line: Callable[[str], None] | None) -> None:
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()
        self.total = 0
        self._cap = cap
        self._tail = bytearray()
        self._on_line = on_line
        self._line = bytearray()
        self._line_dropped = 0

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        self.total += len(data)
        if len(data) >= self._cap:
            self._tail[:] = data[-self._cap :]
        else:
            self._tail += data
            if len(self._tail) > self._cap:
                del self._tail[: len(self._tail) - self._cap]
        if self._on_line is not None:
            self._split(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if self._on_line is not None and (self._line or self._line_dropped):
            self._emit()
        if not self.eof.done():
            self.eof.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def tail_text(self) -> str:
        return bytes(self._tail).decode("utf-8", errors="replace")

    def _split(self, data: bytes | bytearray) -> None:
        *complete, rest = bytes(data).split(b"\n")
        for piece in complete:
            self._append(piece)
            self._emit()
        self._append(rest)

    def _append(self, piece: bytes) -> None:
        room = MAX_LINE_BYTES - len(self._line)
        self._line += piece[:room]
        self._line_dropped += max(0, len(piece) - room)

    def _emit(self) -> None:
        if self._on_line is None:
            return
        text = bytes(self._line).decode("utf-8", errors="replace").removesuffix("\r")
        if self._line_dropped:
            text += f" [... {self._line_dropped} more bytes]"
        self._line.clear()
        self._line_dropped = 0
        try:
            self._on_line(text)
        except Exception:
            # A broken event sink must not break process supervision.
            log.exception("hook.output_callback_failed")


def _group_exists(pgid: int) -> bool:
    """Does process group ``pgid`` have any member (zombies count)?"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists; a member changed its credentials
    return True


def _group_running(pgid: int) -> bool:
    """Blocking: does the group hold a process that is not a zombie? (Reads /proc.)

    ``killpg(pgid, 0)`` also succeeds for zombies, which an init that does not reap (a container
    without one) keeps forever; only /proc tells them apart.
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


async def _group_settled(pgid: int) -> bool:
    return not _group_exists(pgid) or not await asyncio.to_thread(_group_running, pgid)


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        # A member changed its credentials (setuid); nothing more we can do for it.
        log.warning("hook.kill_denied", pgid=pgid, signal=signal_name(signum))


async def _terminate_group(pgid: int, capture: _Capture, grace_s: float) -> bool:
    """SIGTERM the group, wait up to ``grace_s`` for it to settle, then SIGKILL what is left.

    Returns:
        True if anything was still running when we started and had to be signalled.
    """
    signalled = not (capture.exited.done() and await _group_settled(pgid))
    if signalled:
        _killpg(pgid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while loop.time() < deadline:
            if capture.exited.done() and await _group_settled(pgid):
                break
            await asyncio.sleep(_POLL_S)
    if _group_exists(pgid):
        # Those that ignored SIGTERM, and any member /proc does not show us (hidepid). A zombie
        # member keeps the group id reserved, so this signal cannot reach a stranger.
        _killpg(pgid, signal.SIGKILL)
    if not capture.exited.done():
        try:
            await asyncio.wait_for(asyncio.shield(capture.exited), _REAP_TIMEOUT_S)
        except TimeoutError:
            log.error("hook.unkillable", pgid=pgid)  # e.g. stuck in uninterruptible I/O
    return signalled


async def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float,
    kill_grace_s: float,
    output_cap_bytes: int,
    on_line: Callable[[str], None] | None = None,
) -> Outcome:
    """Run ``argv`` in its own process group and make sure nothing of it outlives this call.

    Uses ``loop.subprocess_exec`` (what ``asyncio.create_subprocess_exec`` wraps) with our own
    protocol: ``Process.wait()`` only returns once the output pipe is closed, which a lingering
    grandchild can hold open forever, while ``process_exited`` fires as soon as the leader is reaped.

    Args:
        argv: program and arguments, exec'd directly (no shell).
        cwd: working directory of the process.
        env: its complete environment (see :func:`clean_env`).
        timeout_s: how long the leader may run before the group is terminated.
        kill_grace_s: time between SIGTERM and SIGKILL when the group must be terminated.
        output_cap_bytes: how much of the output's tail to keep.
        on_line: called with every output line (cut at :data:`MAX_LINE_BYTES`) from the event
            loop; exceptions it raises are logged.

    Returns:
        The outcome; a failure to start (``OSError`` from exec) is reported in ``spawn_error``.

    Raises:
        asyncio.CancelledError: when cancelled; the process group is killed first.
    """
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    capture = _Capture(output_cap_bytes, on_line)
    try:
        transport, _ = await loop.subprocess_exec(
            lambda: capture,
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:
        # ValueError: the environment holds a NUL byte or a name with "=" (a host config error).
        err = exc if isinstance(exc, OSError) else OSError(errno.EINVAL, f"invalid argv/env: {exc}")
        return Outcome(None, None, False, time.monotonic() - started, "", 0, spawn_error=err)
    pgid = transport.get_pid()  # start_new_session: the leader's pid is the group id
    timed_out = False
    finished = False
    try:
        try:
            await asyncio.wait_for(asyncio.shield(capture.exited), timeout_s)
        except TimeoutError:
            timed_out = True
            log.warning("hook.timeout", pid=pgid, timeout_s=timeout_s)
        lingered = await _terminate_group(pgid, capture, kill_grace_s)
        if lingered and not timed_out:
            log.warning("hook.lingering_processes_killed", pid=pgid, argv0=argv[0])
        try:
            await asyncio.wait_for(asyncio.shield(capture.eof), _DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning("hook.output_pipe_held", pid=pgid, argv0=argv[0])
        finished = True
    finally:
        if not finished:
            # Cancelled (or failed) mid-run: no time for a grace period, leave nothing behind.
            _killpg(pgid, signal.SIGKILL)
        transport.close()
    returncode = transport.get_returncode()
    return Outcome(
        exit_code=returncode if returncode is not None and returncode >= 0 else None,
        signal=-returncode if returncode is not None and returncode < 0 else None,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
        output_tail=capture.tail_text(),
        output_bytes=capture.total,
    )


def spawn_error_text(argv0: str, cwd: Path, exc: OSError) -> str:
    """Why ``argv0`` could not be started in ``cwd``, for a hook's error message."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None and str(exc.filename) == str(cwd) and exc.errno == errno.ENOENT:
        return f"cannot change to directory '{cwd}': {reason}"
    return f"cannot execute '{argv0}': {reason}"
