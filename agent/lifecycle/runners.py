"""The hook runner and the health runner every operation is given.

Both journal and emit what they run: hook results (bounded output tails) as ``hooks.done`` /
``hooks.failed`` entries, health results as ``health.*`` events. Hooks of a step run in order and
the first failure stops the step (:func:`agent.actions.hooks.run_hooks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cutover.agent.actions import hooks as hooksmod
from cutover.agent.errors import CutoverError, HookError, HookFailedError
from cutover.agent.host.kept import load_runtime
from cutover.agent.host.state import AppState
from cutover.agent.lifecycle.context import AppContext
from cutover.agent.package.manifest import HealthSpec, Hook

__all__ = ["HealthRunner", "HookRunner", "health_summary", "log_offsets"]


class HookRunner:
    """Runs hooks of one app with the CUTOVER_* environment, journaling their results."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def context(
        self,
        version: str,
        previous: str | None,
        release_dir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> hooksmod.HookContext:
        section = self.ctx.section
        return hooksmod.HookContext(
            app=self.ctx.app,
            version=version,
            release_dir=release_dir,
            previous_version=previous,
            shared_dir=self.ctx.layout.shared,
            path_env=section.hook_path,
            output_cap_bytes=section.hook_output_cap_bytes,
            extra_env=extra_env or {},
        )

    def _on_output(self, hook: str, line: str) -> None:
        self.ctx.emit("hook.output", hook=hook, line=line)

    async def run(
        self, hooks: list[Hook], phase: str, hctx: hooksmod.HookContext
    ) -> list[dict[str, Any]]:
        """Run ``hooks`` of ``phase`` in order; returns their results (as journaled).

        Raises:
            HookError: a hook failed (journaled as ``hooks.failed`` first).
        """
        if not hooks:
            return []
        ctx = self.ctx
        ctx.emit("hooks.start", phase=phase, count=len(hooks))
        try:
            results = await hooksmod.run_hooks(hooks, phase, hctx, on_output=self._on_output)
        except HookError as exc:
            res = exc.results if isinstance(exc, HookFailedError) else []
            await ctx.log(
                "hooks.failed",
                phase=phase,
                version=hctx.version,
                error=str(exc),
                results=[r.to_json() for r in res],
            )
            raise
        out = [r.to_json() for r in results]
        await ctx.log("hooks.done", phase=phase, version=hctx.version, results=out)
        ctx.emit("hooks.done", phase=phase)
        return out

    async def post_rollback(self, state: AppState, target: str, left: str | None) -> None:
        """The target's post_rollback hooks, then the host's (nothing if its spec is unusable).

        Raises:
            HookError: a hook failed.
        """
        try:
            spec = load_runtime(self.ctx.layout, state, target)
        except CutoverError:
            return
        hctx = self.context(target, left, self.ctx.layout.release(target))
        await self.run(
            [*spec.hooks.post_rollback, *self.ctx.section.hooks.post_rollback],
            "post_rollback",
            hctx,
        )


class HealthRunner:
    """Runs one health phase (and, for ``live``, the version probe) of a release."""

    def __init__(self, ctx: AppContext, hooks: HookRunner) -> None:
        self.ctx = ctx
        self.hooks = hooks

    async def run(
        self,
        phase_name: str,
        health: HealthSpec,
        version: str,
        release_dir: Path,
        offsets: dict[str, int],
    ) -> dict[str, Any]:
        """The phase's result as recorded on the release (``status`` is pass/fail/inconclusive)."""
        phase = health.staged if phase_name == "staged" else health.live
        probe = health.version_probe if phase_name == "live" else None
        if not phase.checks and probe is None:
            return {"phase": phase_name, "status": "pass", "rounds": 0, "checks": 0}
        from cutover.agent.actions import (
            health as healthmod,  # imports aiohttp: only when checks run
        )

        ctx = self.ctx
        hctx = healthmod.HealthContext(
            release_dir=release_dir,
            version=version,
            log_offsets=offsets,
            env=self.hooks.context(version, None, release_dir).env(f"health_{phase_name}"),
        )
        ctx.emit(
            "health.start",
            phase=phase_name,
            checks=len(phase.checks),
            min_healthy_time_s=phase.min_healthy_time_s,
        )

        def on_event(r: healthmod.CheckResult) -> None:
            ctx.emit(
                "health.check", phase=phase_name, name=r.name, status=r.status, detail=r.detail
            )

        result = await healthmod.run_phase(phase_name, phase, hctx, on_event=on_event)
        out: dict[str, Any] = dict(result.to_json())
        if probe is not None and result.status == "pass":
            seen = await healthmod.probe_version(probe, hctx)
            out["version_probe"] = {"status": seen.status, "detail": seen.detail}
            ctx.emit(
                "health.check",
                phase=phase_name,
                name="version_probe",
                status=seen.status,
                detail=seen.detail,
            )
            if seen.status != "pass":
                out["status"] = seen.status
        ctx.emit("health.done", phase=phase_name, status=out["status"])
        return out


def log_offsets(health: HealthSpec, release_dir: Path) -> dict[str, int]:
    """Log sizes before the flip, so live log checks see only lines written after it."""
    if not any(c.type == "log" for c in health.live.checks):
        return {}
    from cutover.agent.actions.health import log_offsets as offsets

    return offsets(health.live.checks, release_dir)


def health_summary(result: dict[str, Any]) -> str:
    """One line naming what did not pass."""
    failing = [
        f"{c.get('name')}: {c.get('detail')}"
        for c in result.get("last", [])
        if c.get("status") != "pass"
    ]
    probe = result.get("version_probe")
    if probe and probe.get("status") != "pass":
        failing.append(f"version probe: {probe.get('detail')}")
    return "; ".join(failing) or str(result.get("status"))
