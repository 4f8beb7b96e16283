"""What every on-host command shares: the actor, output, app selection, the manager, views."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

from cutover.agent._util.privileges import drop_to, owner_of
from cutover.agent.cli._invocation import _actor, _Out
from cutover.agent.config import LoadedConfig
from cutover.agent.errors import (
    ConfigError,
    NotFoundError,
)
from cutover.agent.host.layout import Layout
from cutover.agent.host.state import ReleaseRecord, ReleaseStatus
from cutover.agent.lifecycle.manager import AppManager, OpResult
from cutover.agent.trust.freeze import freeze_status


def _pick_app(cfg: LoadedConfig, name: str | None) -> str:
    if name:
        if name not in cfg.apps:
            raise NotFoundError(
                f"app {name!r} is not in {cfg.path}; configured apps: {', '.join(cfg.apps) or '(none)'}"
            )
        return name
    if len(cfg.apps) == 1:
        return next(iter(cfg.apps))
    if not cfg.apps:
        raise ConfigError(f"{cfg.path} has no apps; add one with `cutover-agent init`")
    raise ConfigError(f"{cfg.path} has several apps ({', '.join(cfg.apps)}); choose one with --app")


def _become_owner(root: Path) -> None:
    """Run as root on an app owned by another user: become that user (never leave root-owned
    files in someone else's app; hooks run as under the daemon). All-root: nothing changes."""
    layout = Layout(root)
    owner = owner_of(layout.meta, layout.root)
    if owner is not None and os.geteuid() == 0 and owner.uid != 0:
        _import_while_root()
        drop_to(owner)


# What any command may import after the privilege drop (commands, AppManager's operations, the
# lazy logging set-up import their modules when first used): as the app's owner the
# interpreter's own files may be unreadable (a Python under /root, a 0700 venv), so they are
# imported while still root. Only in this case: a command run as the app's owner imports lazily.
_IMPORT_BEFORE_DROP = (
    "cutover.agent.lifecycle.stage",
    "cutover.agent.lifecycle.stagework",
    "cutover.agent.lifecycle.activate",
    "cutover.agent.lifecycle.rollback",
    "cutover.agent.lifecycle.housekeeping",
    "cutover.agent.host.seal",
    "cutover.agent.actions.hooks",
    "cutover.agent.actions.health",
)


def _import_while_root() -> None:
    import importlib

    from cutover.agent._util.lazylog import apply_pending

    apply_pending()  # structlog, configured as the command's first log line would configure it
    for module in _IMPORT_BEFORE_DROP:
        importlib.import_module(module)


def _manager(cfg: LoadedConfig, app: str, progress_events: bool = False) -> AppManager:
    def events(ev: dict[str, Any]) -> None:
        if progress_events and ev.get("event") == "hook.output":
            print(f"  [{ev.get('hook')}] {ev.get('line')}", file=sys.stderr)

    _become_owner(cfg.apps[app].root)
    return AppManager(app, cfg.apps[app], cfg.policies[app], actor=_actor(), events=events)


def _run(coro: Coroutine[Any, Any, OpResult]) -> OpResult:
    return asyncio.run(coro)


def _print_op(out: _Out, res: OpResult) -> None:
    out.recovered(res.recovered)

    def human() -> None:
        print(res.message)
        if res.current is not None or res.op in ("activate", "rollback"):
            print(f"current: {res.current or '-'}   previous: {res.previous or '-'}")
        for w in res.details.get("warnings", []):
            print(f"warning: {w}", file=sys.stderr)
        if res.details.get("removed"):
            print("removed: " + ", ".join(res.details["removed"]))
        if res.details.get("pruned"):
            print("pruned: " + ", ".join(res.details["pruned"]))

    out.result(res.to_json(), human)


# ---------------------------------------------------------------- commands


def _state_view(cfg: LoadedConfig, app: str, *, with_results: bool = False) -> dict[str, Any]:
    mgr = _manager(cfg, app)
    state = mgr.snapshot()
    return {
        "app": app,
        "root": str(cfg.apps[app].root),
        "current": state.current,
        "previous": state.previous,
        "highest_version": state.highest_version,
        "pending": state.pending.model_dump() if state.pending else None,
        "releases": [
            _release_view(r, with_results=with_results)
            for r in sorted(state.releases.values(), key=lambda r: -r.seq)
        ],
    }


def _release_view(rec: ReleaseRecord, *, with_results: bool = True) -> dict[str, Any]:
    """One release as ``status``/``releases`` show it: a removed release says ``pruned``."""
    view = rec.model_dump(mode="json", exclude=None if with_results else {"hooks", "health"})
    if not rec.installed and rec.status not in (ReleaseStatus.FAILED, ReleaseStatus.BAD):
        view["status"] = "pruned"
    return view


def _freeze_view(cfg: LoadedConfig, app: str, now: datetime) -> dict[str, list[dict[str, object]]]:
    """Freeze windows of ``app`` in force at ``now``, and those starting within a week."""
    active, upcoming = freeze_status(cfg.apps[app].freeze, now)
    return {"active": [h.to_json() for h in active], "upcoming": [h.to_json() for h in upcoming]}
