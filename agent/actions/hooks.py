"""Lifecycle hooks: the release's own commands, run as real subprocesses (docs/lifecycle.md, "Hooks").

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

The process runner itself lives in :mod:`agent._process` (shared with the ``command`` health
checks); this module adds the hook environment, the result record and the stop-at-first-failure
policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cutover.agent._util.lazylog import get_logger
from cutover.agent.actions._process import (
    DEFAULT_PATH,
    MAX_LINE_BYTES,
    clean_env,
    run_process,
    signal_name,
    spawn_error_text,
)
from cutover.agent.errors import HookFailedError
from cutover.agent.package.manifest import Hook

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

log = get_logger(__name__)

DEFAULT_OUTPUT_CAP_BYTES = 64 * 1024
# "checkpoint" and "restore" are the host's database commands around a migration (docs/lifecycle.md,
# "Migrations"); they run under the same rules as the release's hooks.
HOOK_PHASES = frozenset(
    {
        "stage",
        "pre_activate",
        "post_activate",
        "post_rollback",
        "on_failure",
        "checkpoint",
        "restore",
    }
)
ERROR_TAIL_LINES = 20


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
            return f"killed by {signal_name(self.signal)}"
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
    outcome = await run_process(
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
        error = spawn_error_text(hook.argv[0], ctx.release_dir, outcome.spawn_error)
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
