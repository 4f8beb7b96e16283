"""How a rollout looks to a human: the live table, event lines, the summary and failure report.

On a terminal (stderr is a tty) a live table shows Desired / Staged / Activated / Healthy /
Failed, the wave and the deadline in force; otherwise one line per rollout event goes to stderr.
The end is a table of hosts and, for each failed host, the failed check, its output, the tail
of its hooks' output and the decision taken (stdout). ``--json`` writes none of this: the events
are the NDJSON stream (controller/commands/_output.py).
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from cutover.controller.commands._output import Reporter
from cutover.controller.rollout.report import RolloutSummary
from cutover.controller.rollout.store import RolloutRecord, RolloutStatus

__all__ = ["RolloutView", "rollouts_table"]

_STYLE = {
    RolloutStatus.ROLLED_OUT: "green",
    RolloutStatus.PARTIAL: "yellow",
    RolloutStatus.REVERTED: "red",
    RolloutStatus.HALTED: "red",
    RolloutStatus.PAUSED: "cyan",
    RolloutStatus.ABORTED: "red",
    RolloutStatus.RUNNING: "",
}


class RolloutView:
    """Event sink for a rollout: NDJSON through the reporter, or the human rendering."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self._counts: dict[str, int] = {}
        self._wave = "-"
        self._deadline = "-"
        self._rollout = ""
        self._live: Live | None = None

    def event(self, ev: dict[str, Any]) -> None:
        r = self.reporter
        if r.as_json:
            r.event(ev)
            return
        name = ev.get("event", "")
        if name == "notify.failed":
            r.event(ev)
            return
        if not str(name).startswith(("rollout.", "wave.", "lease.", "host.failed")):
            if name == "host.result" and ev.get("action") == "revert":
                r.err.print(f"  {ev['host']}: revert {ev['status']}")
            return
        self._update(ev)
        if sys.stderr.isatty():
            if self._live is None:
                self._live = Live(self._table(), console=r.err, refresh_per_second=4)
                self._live.start()
            self._live.update(self._table())
        else:
            r.err.print(escape(self._line(ev)))

    def _update(self, ev: dict[str, Any]) -> None:
        self._rollout = ev.get("rollout", self._rollout)
        self._counts = ev.get("counts", self._counts)
        if ev["event"] == "wave.start":
            self._wave = f"{ev['wave']}{' (canary)' if ev['canary'] else ''}"
            d = ev["deadline"]
            self._deadline = (
                f"healthy {d['healthy_deadline_s']:g}s, progress {d['progress_deadline_s']:g}s "
                f"-> {d['action']}"
            )
        elif ev["event"] == "wave.bake":
            self._deadline = f"bake {ev['bake_s']:g}s -> a host that fails it counts as failed"

    def _line(self, ev: dict[str, Any]) -> str:
        name = ev["event"]
        if name == "rollout.start":
            return f"rollout {ev['rollout']}: {ev['app']} {ev['version']}, waves {ev['waves']}, budget {ev['budget']}"
        if name == "wave.start":
            return f"wave {self._wave}: {', '.join(ev['hosts'])}; deadline: {self._deadline}"
        if name == "wave.bake":
            return f"  bake {ev['bake_s']:g}s: {', '.join(ev['hosts'])}"
        if name == "wave.done":
            return f"wave {ev['wave']} done: {ev['decision']} {self._fmt_counts()}"
        if name == "host.failed":
            return f"  FAILED {ev['host']}: {ev['check']}: {ev['message']}"
        if name == "rollout.reverting":
            return f"reverting {', '.join(ev['hosts']) or 'nothing'}: {ev['reason']}"
        if name == "rollout.paused":
            return f"paused: {ev['reason']}"
        if name in ("lease.renew_failed", "lease.release_failed", "lease.hold_failed"):
            return f"  {ev['host']}: {name}: {ev['detail']}"
        if name == "lease.acquired":
            return f"leased {len(ev['hosts'])} host(s) for {ev['rollout']} (ttl {ev['ttl_s']:g}s)"
        if name == "lease.held":
            return (
                f"paused: {len(ev['hosts'])} host(s) stay leased to {ev['rollout']} for "
                f"{ev['ttl_s']:g}s (no other rollout until promote, --resume or abort)"
            )
        return str(ev)

    def _fmt_counts(self) -> str:
        c = self._counts
        return " ".join(
            f"{k}={c.get(k, 0)}" for k in ("desired", "staged", "activated", "healthy", "failed")
        )

    def _table(self) -> Table:
        t = Table(title=f"rollout {self._rollout}", title_justify="left")
        for col in ("Desired", "Staged", "Activated", "Healthy", "Failed", "Wave", "Deadline"):
            t.add_column(col)
        c = self._counts
        t.add_row(
            *(str(c.get(k, 0)) for k in ("desired", "staged", "activated", "healthy")),
            f"[red]{c.get('failed', 0)}[/]" if c.get("failed") else "0",
            self._wave,
            escape(self._deadline),
        )
        return t

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        self.reporter.close()

    def summary(self, s: RolloutSummary) -> None:
        self.close()
        r = self.reporter
        if r.as_json:
            return
        hosts = Table(title=f"rollout {s.rollout}: {s.app} {s.version}", title_justify="left")
        for col in ("host", "state"):
            hosts.add_column(col)
        for host, state in s.hosts.items():
            hosts.add_row(host, state)
        parts: list[Any] = [hosts]
        if s.failures:
            report = Table(title="failure report", title_justify="left")
            for col in (
                "host",
                "failed check",
                "output / status",
                "hook output (tail)",
                "decision",
            ):
                report.add_column(col, overflow="fold")
            for f in s.failures:
                report.add_row(
                    f.host,
                    escape(f.check),
                    escape(f.check_output or f.message),
                    escape("\n".join(f.hook_tail[-5:]) or "-"),
                    escape(f.decision or "-"),
                )
            parts.append(report)
        r.out.print(Group(*parts))
        style = _STYLE[s.status]
        r.out.print(
            f"rollout {s.rollout}: [bold {style}]{s.status.value}[/] ({escape(s.reason)}; exit {s.exit_code})"
        )


def rollouts_table(records: list[RolloutRecord]) -> Table:
    t = Table(title="rollouts", title_justify="left")
    for col in ("id", "app", "version", "status", "wave", "hosts", "failed", "updated", "reason"):
        t.add_column(col, overflow="fold")
    for rec in records:
        waves = len(rec.waves)
        failed = sum(1 for s in rec.hosts.values() if s in ("failed", "isolated"))
        t.add_row(
            rec.id,
            rec.app,
            rec.version,
            f"[{_STYLE[rec.status]}]{rec.status.value}[/]"
            if _STYLE[rec.status]
            else rec.status.value,
            f"{min(rec.wave, waves)}/{waves}",
            str(len(rec.hosts)),
            str(failed),
            rec.updated,
            escape(rec.reason),
        )
    return t
