"""Lifecycle hooks: the release's own commands, run as real subprocesses (DESIGN.md, "Hooks").

Rules every hook run obeys:

* argv only, never a shell (a hook that wants one says ``["sh", "-c", ...]`` itself);
* cwd is the release directory, stdin is ``/dev/null``, stdout and stderr share one pipe;
* a clean environment (:func:`clean_env`): ``PATH`` (a fixed safe default), ``LANG=C.UTF-8``,
  ``HOME`` (the release dir unless the caller overrides it), the caller's extras, then the
  ``CUTOVER_*`` variables, which nothing can override. Nothing leaks in from the agent's environment;
* the hook leads its own session and process group, and **the whole group is killed** when the hook
  times out (SIGTERM, ``kill_grace_s``, then SIGKILL), when the runner is cancelled (SIGKILL at once),
  and when the leader exits while group members linger (they would hold the output pipe open and a
  daemonised grandchild would outlive its release). A process that leaves the group with ``setsid``
  escapes this; the runner then stops reading after a short drain and logs
  ``hook.output_pipe_held``;
* output is bounded: only the last ``output_cap_bytes`` are kept, lines passed to ``on_output`` are
  cut at :data:`MAX_LINE_BYTES`, and the total byte count is reported.

The process runner (:func:`_run_process`) is shared with the ``command`` health checks.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent.errors import HookError
from agent.manifest import Hook

__all__ = [
    "DEFAULT_OUTPUT_CAP_BYTES",
    "DEFAULT_PATH",
    "HOOK_PHASES",
    "MAX_LINE_BYTES",
    "HookContext",
    "HookFailedError",
    "HookResult",
    "clean_env",
    "run_hook",
    "run_hooks",
]

log = structlog.get_logger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_OUTPUT_CAP_BYTES = 64 * 1024
MAX_LINE_BYTES = 4096
# "checkpoint" and "restore" are the host's database commands around a migration (DESIGN.md,
# "Migrations"); they run under the same rules as the release's hooks.
HOOK_PHASES = frozenset(
    {"stage", "pre_activate", "post_activate", "post_rollback", "checkpoint", "restore"}
)
ERROR_TAIL_LINES = 20

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


@dataclass(frozen=True)
class HookContext:
    """Where and for what a hook runs; one per operation and release.

    ``extra_env`` may override ``HOME``, ``LANG`` and ``PATH`` but never a ``CUTOVER_*`` variable
    that the agent sets itself.
    """

    app: str
    version: str
    release_dir: Path
    previous_version: str | None
    shared_dir: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    path_env: str = DEFAULT_PATH
    kill_grace_s: float = 5.0
    output_cap_bytes: int = DEFAULT_OUTPUT_CAP_BYTES

    def __post_init__(self) -> None:
        if self.kill_grace_s < 0:
            raise ValueError("kill_grace_s must be >= 0")
        if self.output_cap_bytes <= 0:
            raise ValueError("output_cap_bytes must be > 0")

    def env(self, phase: str) -> dict[str, str]:
        """The complete environment of a hook run in ``phase``."""
        env = clean_env(home=self.release_dir, path_env=self.path_env, extra=self.extra_env)
        env.update(
            {
                "CUTOVER_APP": self.app,
                "CUTOVER_VERSION": self.version,
                "CUTOVER_RELEASE_DIR": str(self.release_dir),
                "CUTOVER_PREVIOUS_VERSION": self.previous_version or "",
                "CUTOVER_SHARED_DIR": str(self.shared_dir),
                "CUTOVER_PHASE": phase,
            }
        )
        return env


@dataclass(frozen=True)
class HookResult:
    """What one hook run did. ``error`` is set when the hook could not even be started."""

    name: str
    argv: list[str]
    phase: str
    exit_code: int | None
    signal: int | None
    timed_out: bool
    duration_s: float
    output_tail: str
    output_bytes: int
    error: str | None = None

    def ok(self) -> bool:
        """True when the hook ran to completion and exited 0."""
        return self.exit_code == 0 and not self.timed_out and self.error is None

    def describe(self) -> str:
        """A short human reason: ``exit code 3``, ``killed by SIGKILL``, ``timed out after 5s``."""
        if self.error is not None:
            return self.error
        if self.timed_out:
            return f"timed out after {self.duration_s:.1f}s; its process group was killed"
        if self.signal is not None:
            return f"killed by {_signal_name(self.signal)}"
        return f"exit code {self.exit_code}"

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict for the journal and operation events."""
        return {
            "name": self.name,
            "argv": list(self.argv),
            "phase": self.phase,
            "ok": self.ok(),
            "exit_code": self.exit_code,
            "signal": self.signal,
            "timed_out": self.timed_out,
            "duration_s": round(self.duration_s, 3),
            "output_tail": self.output_tail,
            "output_bytes": self.output_bytes,
            "error": self.error,
        }


class HookFailedError(HookError):
    """A hook failed; ``results`` holds every hook run so far, the failed one last."""

    def __init__(self, message: str, *, results: list[HookResult]) -> None:
        super().__init__(message)
        self.results = results

    @property
    def failed(self) -> HookResult:
        return self.results[-1]


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass(frozen=True)
class _Outcome:
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
    bounded by ``cap`` + :data:`MAX_LINE_BYTES` whatever the hook prints.
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
        log.warning("hook.kill_denied", pgid=pgid, signal=_signal_name(signum))


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


async def _run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float,
    kill_grace_s: float,
    output_cap_bytes: int,
    on_line: Callable[[str], None] | None = None,
) -> _Outcome:
    """Run ``argv`` in its own process group and make sure nothing of it outlives this call.

    Uses ``loop.subprocess_exec`` (what ``asyncio.create_subprocess_exec`` wraps) with our own
    protocol: ``Process.wait()`` only returns once the output pipe is closed, which a lingering
    grandchild can hold open forever, while ``process_exited`` fires as soon as the leader is reaped.

    Returns:
        The outcome; a failure to start (``OSError`` from exec) is reported in ``spawn_error``.
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
        return _Outcome(None, None, False, time.monotonic() - started, "", 0, spawn_error=err)
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
    return _Outcome(
        exit_code=returncode if returncode is not None and returncode >= 0 else None,
        signal=-returncode if returncode is not None and returncode < 0 else None,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
        output_tail=capture.tail_text(),
        output_bytes=capture.total,
    )


def _spawn_error_text(argv0: str, cwd: Path, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.filename is not None and str(exc.filename) == str(cwd) and exc.errno == errno.ENOENT:
        return f"cannot change to directory '{cwd}': {reason}"
    return f"cannot execute '{argv0}': {reason}"


async def run_hook(
    hook: Hook,
    phase: str,
    ctx: HookContext,
    on_output: Callable[[str, str], None] | None = None,
) -> HookResult:
    """Run one hook to completion (or timeout) and report what happened; never raises for a failure.

    Args:
        hook: the manifest's (or host config's) hook declaration.
        phase: one of :data:`HOOK_PHASES`; exported as ``CUTOVER_PHASE``.
        ctx: release, environment and limits.
        on_output: called as ``on_output(hook.name, line)`` for every output line (cut at
            :data:`MAX_LINE_BYTES`), from the event loop; exceptions it raises are logged.

    Returns:
        The :class:`HookResult`; ``ok()`` tells success.

    Raises:
        ValueError: ``phase`` is unknown.
        asyncio.CancelledError: when cancelled; the hook's process group is killed first.
    """
    if phase not in HOOK_PHASES:
        raise ValueError(f"unknown hook phase {phase!r}; expected one of {sorted(HOOK_PHASES)}")
    on_line = None if on_output is None else (lambda line: on_output(hook.name, line))
    log.info("hook.started", hook=hook.name, phase=phase, argv=hook.argv)
    outcome = await _run_process(
        hook.argv,
        cwd=ctx.release_dir,
        env=ctx.env(phase),
        timeout_s=hook.timeout_s,
        kill_grace_s=ctx.kill_grace_s,
        output_cap_bytes=ctx.output_cap_bytes,
        on_line=on_line,
    )
    error = None
    if outcome.spawn_error is not None:
        error = _spawn_error_text(hook.argv[0], ctx.release_dir, outcome.spawn_error)
    result = HookResult(
        name=hook.name,
        argv=list(hook.argv),
        phase=phase,
        exit_code=outcome.exit_code,
        signal=outcome.signal,
        timed_out=outcome.timed_out,
        duration_s=outcome.duration_s,
        output_tail=outcome.output_tail if error is None else error,
        output_bytes=outcome.output_bytes,
        error=error,
    )
    log.info(
        "hook.finished",
        hook=hook.name,
        phase=phase,
        ok=result.ok(),
        exit_code=result.exit_code,
        signal=result.signal,
        timed_out=result.timed_out,
        error=result.error,
        duration_s=round(result.duration_s, 3),
        output_bytes=result.output_bytes,
    )
    return result


def _failure_message(result: HookResult) -> str:
    head = f"hook '{result.name}' ({result.phase}): {result.describe()}"
    if result.error is not None:
        return f"{head}. Fix the hook's argv in the release (or the host config) and retry."
    lines = [line[:500] for line in result.output_tail.splitlines()[-ERROR_TAIL_LINES:]]
    shown = "\n".join(f"  | {line}" for line in lines) if lines else "  (no output)"
    return (
        f"{head}. Last output lines:\n{shown}\n"
        "The full output tail is in the journal; fix the cause and retry the operation."
    )


async def run_hooks(
    hooks: Sequence[Hook],
    phase: str,
    ctx: HookContext,
    on_output: Callable[[str, str], None] | None = None,
) -> list[HookResult]:
    """Run ``hooks`` in order, stopping at the first that fails.

    Args:
        hooks: the hooks of one phase (the release's first, then the host's).
        phase: one of :data:`HOOK_PHASES`.
        ctx: release, environment and limits.
        on_output: see :func:`run_hook`.

    Returns:
        One result per hook, all successful.

    Raises:
        HookFailedError: a hook failed; its message names the hook, the phase, the reason and the
            last output lines, and ``results`` holds every result so far, the failed one last.
    """
    results: list[HookResult] = []
    for hook in hooks:
        result = await run_hook(hook, phase, ctx, on_output)
        results.append(result)
        if not result.ok():
            raise HookFailedError(_failure_message(result), results=results)
    return results
