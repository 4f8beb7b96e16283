"""Progress of a CLI operation on a terminal (rich, on stderr): never part of ``--json`` output.

* :func:`stage_bar`: the extraction bar of ``stage`` (bytes, time remaining).
* :class:`ActivationProgress`: what an activation is doing, from its lifecycle events — the
  phase (checkpoint, hooks, flip, health), each check's result when it changes, and for a live
  phase with ``min_healthy_time_s`` the bake countdown (how long the checks have been passing
  and how long is left), redrawn while nothing else happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

__all__ = ["ActivationProgress", "stage_bar"]


def stage_bar() -> Callable[[str, int, int], None]:
    """An ``update(step, done, total)`` callback drawing one bar per step; ``step="done"`` stops."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(step: str, done: int, total: int) -> None:
        if step == "done":
            bar.stop()
            return
        if step not in tasks:
            if not tasks:
                bar.start()
            tasks[step] = bar.add_task(step, total=total or None)
        bar.update(tasks[step], completed=done)

    return update


class ActivationProgress:
    """An event sink (``__call__``) that shows an activation's progress on a terminal.

    Lines that stay: phase changes and check results (only when a check's status changes). The
    live line at the bottom: the current phase and, while a ``min_healthy_time_s`` bake runs,
    ``healthy for 12s, 48s to go`` (the streak restarts when a check stops passing, as the agent's
    own policy does).
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.phase = "starting"
        self.bake_s = 0.0
        self.healthy_since: float | None = None
        self.checks: dict[str, str] = {}
        self.live = Live(self, console=self.console, refresh_per_second=4, transient=True)

    def __enter__(self) -> ActivationProgress:
        self.live.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.live.stop()

    def __rich__(self) -> Text:
        line = f"… {self.phase}"
        if self.bake_s and self.healthy_since is not None:
            held = time.monotonic() - self.healthy_since
            left = max(0.0, self.bake_s - held)
            line += (
                f": healthy for {held:.0f}s, {left:.0f}s to go (min_healthy_time {self.bake_s:g}s)"
            )
        return Text(line)

    def _say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def __call__(self, ev: dict[str, Any]) -> None:
        self._handle(ev)
        if self.live.is_started:
            self.live.refresh()  # every event redraws the live line; the timer redraws between

    def _handle(self, ev: dict[str, Any]) -> None:
        name = ev.get("event")
        if name == "hook.output":
            self._say(f"  [{ev.get('hook')}] {ev.get('line')}")
        elif name == "hooks.start":
            self.phase = f"{ev.get('phase')} hooks"
            self._say(f"phase: {ev.get('phase')} hooks ({ev.get('count')})")
        elif name == "checkpoint.done":
            self._say(f"checkpoint: {ev.get('ref')}")
        elif name == "flip":
            self.phase = f"flipped to {ev.get('version')}"
            self._say(f"flip: current -> {ev.get('version')} (was {ev.get('previous') or '-'})")
        elif name == "health.start":
            self.phase = f"{ev.get('phase')} health checks"
            self.bake_s = float(ev.get("min_healthy_time_s") or 0.0)
            self.healthy_since, self.checks = None, {}
            bake = f", must stay healthy {self.bake_s:g}s" if self.bake_s else ""
            self._say(f"phase: {ev.get('phase')} health checks ({ev.get('checks')}{bake})")
        elif name == "health.check":
            self._check(str(ev.get("name")), str(ev.get("status")), str(ev.get("detail", "")))
        elif name == "health.done":
            self.phase = f"{ev.get('phase')} health: {ev.get('status')}"
            self.bake_s, self.healthy_since = 0.0, None
            self._say(f"phase: {ev.get('phase')} health checks: {ev.get('status')}")
        elif name in ("revert.start", "revert.done"):
            self.phase = "reverting" if name == "revert.start" else "reverted"
            self._say(f"{self.phase}: {ev.get('reason') or ev.get('current') or ''}".rstrip(": "))

    def _check(self, name: str, status: str, detail: str) -> None:
        if self.checks.get(name) != status:
            mark = {"pass": "ok", "fail": "FAIL"}.get(status, status)
            self._say(f"  check {name}: {mark} {detail}".rstrip())
        self.checks[name] = status
        if status != "pass":
            self.healthy_since = None
        elif self.healthy_since is None and all(s == "pass" for s in self.checks.values()):
            self.healthy_since = time.monotonic()
