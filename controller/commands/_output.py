"""Output of the fleet commands: rich tables and progress for humans, JSON for automation.

* ``--json`` on a long command (push, activate, rollback, deploy): an NDJSON stream on stdout,
  one event per line as it happens, ending with one ``summary`` line (docs/controller.md);
* ``--json`` on a short command (status, log): one JSON document on stdout;
* humans: progress on stderr (live bars per host on a terminal, one line per phase otherwise),
  tables on stdout, warnings (e.g. an undelivered webhook) on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn
from rich.table import Table

from cutover.controller.fleet.results import FleetResult, HostStatus, Transfer

__all__ = ["STATUS_STYLE", "Reporter"]

STATUS_STYLE = {
    HostStatus.OK: "green",
    HostStatus.UNCHANGED: "green",
    HostStatus.REFUSED: "red",
    HostStatus.UNREACHABLE: "magenta",
    HostStatus.FAILED: "red",
}


def _console(file: Any) -> Console:
    width = None if file.isatty() else int(os.environ.get("COLUMNS", "160"))
    return Console(file=file, highlight=False, width=width, soft_wrap=False)


class Reporter:
    """Receives every event of a command and renders it for its audience."""

    def __init__(self, *, as_json: bool, stream: bool) -> None:
        self.as_json = as_json
        self.stream = stream and as_json
        self.out = _console(sys.stdout)
        self.err = _console(sys.stderr)
        self._live: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ events
    def event(self, event: dict[str, Any]) -> None:
        if self.stream:
            sys.stdout.write(json.dumps(event, separators=(",", ":"), default=str) + "\n")
            sys.stdout.flush()
            return
        if event.get("event") == "notify.failed":
            self.warn(
                f"webhook {event['webhook']} ({event['notification']}) not delivered: {event['detail']}"
            )
            return
        if self.as_json:
            return
        if sys.stderr.isatty():
            self._live_event(event)
        else:
            self._line_event(event)

    def _line_event(self, ev: dict[str, Any]) -> None:
        name, host = ev.get("event"), ev.get("host")
        if name == "host.phase":
            detail = " ".join(f"{k}={v}" for k, v in ev.get("detail", {}).items() if k != "signers")
            self.err.print(f"  {host}: {ev['phase']} {escape(detail)}".rstrip())
        elif name == "host.progress" and ev.get("done") == ev.get("total"):
            self.err.print(f"  {host}: {ev['step']} {ev['done']} bytes")

    def _live_event(self, ev: dict[str, Any]) -> None:
        name, host = ev.get("event"), str(ev.get("host", ""))
        if self._live is None:
            self._live = Progress(
                TextColumn("{task.fields[host]:<16}"),
                TextColumn("{task.description:<28}"),
                BarColumn(),
                DownloadColumn(),
                console=self.err,
            )
            self._live.start()
        live = self._live
        if name == "host.start":
            self._tasks[host] = live.add_task(str(ev.get("action")), host=host, total=None)
            return
        task = self._tasks.get(host)
        if task is None:
            return
        if name == "host.progress":
            live.update(
                task, description=str(ev["step"]), completed=ev["done"], total=ev["total"] or None
            )
        elif name == "host.phase":
            live.update(task, description=str(ev["phase"]))
        elif name == "host.result":
            style = STATUS_STYLE[HostStatus(ev["status"])]
            total = live.tasks[task].total
            live.update(
                task,
                description=f"[{style}]{ev['status']}[/]",
                completed=total or 0,
                total=total or 0,
            )

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            self._tasks.clear()

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        if not self.as_json:
            self.err.print(f"[yellow]warning:[/] {escape(text)}")

    # ------------------------------------------------------------------ results
    def step(
        self,
        result: FleetResult,
        event: str = "summary",
        extra: dict[str, Any] | None = None,
        *,
        table_too: bool = True,
    ) -> None:
        """One fleet step's results: a ``summary``/``step.done`` line, or a table."""
        self.close()
        if self.stream:
            self.event(
                {
                    "ts": _now_iso(),
                    "event": event,
                    **result.model_dump(mode="json"),
                    **(extra or {}),
                }
            )
            return
        if self.as_json:
            return
        if table_too:
            self.out.print(self._table(result))
        ok = len(result.succeeded())
        self.out.print(
            f"{result.action}: [bold]{result.outcome.value}[/] "
            f"({ok}/{len(result.hosts)} hosts ok, exit {result.exit_code})"
        )

    @staticmethod
    def _table(result: FleetResult) -> Table:
        table = Table(
            title=f"{result.action} {result.app} {result.version or ''}".rstrip(),
            title_justify="left",
        )
        sent = any(h.transfer is not None and h.transfer.mode != "fetch" for h in result.hosts)
        for col in ("host", "result", "current", *(("sent",) if sent else ()), "reason"):
            table.add_column(col, overflow="fold")
        for h in result.hosts:
            style = STATUS_STYLE[h.status]
            code = f"{h.error}: " if h.error else ""
            row = [h.host, f"[{style}]{h.status.value}[/]", h.current or "-"]
            if sent:
                row.append(_sent(h.transfer))
            table.add_row(*row, escape(code + h.message))
        return table

    def document(self, data: dict[str, Any], human: Callable[[], None]) -> None:
        """A short command's output: one JSON document, or whatever ``human`` prints."""
        self.close()
        if self.as_json:
            print(json.dumps(data, indent=2, default=str))
        else:
            human()


def _now_iso() -> str:
    from cutover.controller.fleet.runner import now_iso  # the runner imports the agent client

    return now_iso()


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    if n < 1024**3:
        return f"{n / 1024**2:.1f} MiB"
    return f"{n / 1024**3:.1f} GiB"


def _sent(transfer: Transfer | None) -> str:
    """``1.2 MiB delta (saved 248.8 MiB)``, ``250.0 MiB full``, or ``-``."""
    if transfer is None or transfer.mode == "fetch":
        return "-"
    text = f"{_size(transfer.sent_bytes)} {transfer.mode}"
    return f"{text} (saved {_size(transfer.saved_bytes)})" if transfer.saved_bytes else text
