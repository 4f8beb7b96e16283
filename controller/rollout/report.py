"""What a rollout tells its operator: the summary, its exit code, the failure report (pure).

For every failed host the report says which check failed, its output or status, the tail of the
hooks' output as the agent journaled it, and the decision the engine took (isolated, reverted by
its agent, reverted with the fleet, left as it is). Exit codes (docs/rollouts.md):

=========  ====  ===================================================================
status     exit  meaning
=========  ====  ===================================================================
rolled_out   0   every host runs the version and stayed healthy through its bake
partial      8   done, but some hosts failed within the budget and were isolated
reverted     7   the canary failed or the budget was exceeded: every touched host reverted
halted       1   stopped without reverting (--no-auto-revert, or a host not staged)
paused      10   paused (after the canary, or on an inconclusive result): promote or abort
aborted      7   ``cutover abort``: every touched host reverted
=========  ====  ===================================================================
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from cutover.agent.errors import ExitCode
from cutover.controller.fleet.agents import AppView, JournalEntry
from cutover.controller.rollout.store import RolloutStatus

__all__ = [
    "EXIT_PAUSED",
    "Evidence",
    "HostFailure",
    "RolloutSummary",
    "failure_from",
    "rollout_exit_code",
    "summary_event",
    "webhook_body",
]

EXIT_PAUSED = 10
TAIL_LINES = 20

_EXIT = {
    RolloutStatus.ROLLED_OUT: ExitCode.OK,
    RolloutStatus.PARTIAL: ExitCode.PARTIAL,
    RolloutStatus.REVERTED: ExitCode.REVERTED,
    RolloutStatus.HALTED: ExitCode.FAILED,
    RolloutStatus.PAUSED: EXIT_PAUSED,
    RolloutStatus.ABORTED: ExitCode.REVERTED,
    RolloutStatus.RUNNING: ExitCode.FAILED,
}


def rollout_exit_code(status: RolloutStatus) -> int:
    return _EXIT[status]


class HostFailure(BaseModel):
    """One failed host in the report (``host.failed`` event; ``failures`` of the summary)."""

    model_config = ConfigDict(extra="forbid")

    host: str
    code: str = "failed"  # the agent's reason code, or unresponsive / healthy_deadline / bake
    message: str = ""
    check: str  # the check (or hook) that failed, "" when unknown
    check_output: str = ""  # its status/detail as the agent recorded it
    hook_tail: list[str] = []  # the last lines of hook output the agent journaled
    decision: str = ""  # what the engine did about it


class RolloutSummary(BaseModel):
    """The end of a run (the ``summary`` event of ``--json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rollout: str
    app: str
    version: str
    status: RolloutStatus
    reason: str
    counts: dict[str, int]
    failures: list[HostFailure]
    reverted: list[str]
    hosts: dict[str, str]
    not_staged: list[str] = []

    @property
    def exit_code(self) -> int:
        return rollout_exit_code(self.status)


@dataclass
class Evidence:
    """What one host's agent streamed during its activation: failed checks, hook output."""

    checks: list[tuple[str, str]] = field(default_factory=list)  # (phase:name, status: detail)
    output: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    def note(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        if name == "health.check" and event.get("status") != "pass":
            check = f"{event.get('phase', 'live')}:{event.get('name') or 'check'}"
            self.checks.append((check, f"{event.get('status')}: {event.get('detail', '')}"))
        elif name == "hook.output":
            self.output.append(f"{event.get('hook', '?')}: {event.get('line', '')}")


def _failed_check(view: AppView | None, version: str) -> tuple[str, str]:
    if view is None:
        return "", ""
    rec = next((r for r in view.releases if r.version == version), None)
    for phase in reversed(rec.health if rec else []):
        for res in phase.get("results", []) or []:
            if isinstance(res, dict) and res.get("status") != "pass":
                name = str(res.get("name") or res.get("type") or "check")
                return (
                    f"{phase.get('phase', 'live')}:{name}",
                    f"{res.get('status')}: {res.get('detail', '')}",
                )
        if phase.get("status") not in (None, "pass"):
            return str(phase.get("phase", "")), str(phase.get("status"))
    return "", ""


def _hook_tail(entries: list[JournalEntry] | None, version: str) -> tuple[str, list[str]]:
    failed_hook = ""
    lines: list[str] = []
    for e in entries or []:
        if e.version != version or e.event not in ("hooks.done", "hooks.failed"):
            continue
        for res in e.results:
            tail = str(res.get("output_tail", "")).splitlines()
            lines += [f"{res.get('name', '?')}: {x}" for x in tail]
            if e.event == "hooks.failed" and res.get("status", "ok") not in (
                "ok",
                "pass",
                "passed",
            ):
                failed_hook = f"hook {e.phase}:{res.get('name', '?')}"
    return failed_hook, lines[-TAIL_LINES:]


def failure_from(
    host: str,
    version: str,
    code: str,
    message: str,
    entries: list[JournalEntry] | None,
    view: AppView | None = None,
    evidence: Evidence | None = None,
) -> HostFailure:
    """The report of one failed host from what its agent streamed and holds (``entries`` None:
    it did not answer)."""
    if evidence is not None and evidence.checks:
        check, output = evidence.checks[-1]
    else:
        check, output = _failed_check(view, version)
    hook, tail = _hook_tail(entries, version)
    if evidence is not None and evidence.output and not tail:
        tail = list(evidence.output)
    if not check:
        check = hook or ("agent unreachable" if entries is None else code)
    if entries is None and not output:
        output = "the agent did not answer: no check output or hook log could be fetched"
    return HostFailure(
        host=host,
        code=code,
        message=message,
        check=check,
        check_output=output or message[:500],
        hook_tail=tail,
    )


def summary_event(summary: RolloutSummary) -> dict[str, Any]:
    return {"event": "summary", **summary.model_dump(mode="json"), "exit_code": summary.exit_code}


def webhook_body(event: dict[str, Any]) -> tuple[dict[str, Any], bool] | None:
    """The webhook message for an engine event, and whether it is a failure; None: not sent.

    Rollout webhooks (docs/rollouts.md): ``rollout.started``, ``rollout.canary_healthy``,
    ``rollout.wave_done``, ``rollout.host_failed``, ``rollout.reverted``, ``rollout.paused``,
    ``rollout.finished``.
    """
    name = event.get("event")
    rid = event.get("rollout", "")
    if name == "rollout.start":
        text = f"cutover rollout {rid}: {event['app']} {event['version']} started, waves {event['waves']}"
        return {
            "event": "rollout.started",
            "text": text,
            **_pick(event, "rollout", "app", "version", "waves"),
        }, False
    if name == "wave.done":
        kind = "rollout.canary_healthy" if event.get("canary") else "rollout.wave_done"
        text = f"cutover rollout {rid}: wave {event['wave']} done ({event['decision']})"
        return {
            "event": kind,
            "text": text,
            **_pick(event, "rollout", "wave", "decision", "counts"),
        }, False
    if name == "host.failed":
        text = f"❌ cutover rollout {rid}: {event['host']} failed: {event.get('check')}: {event.get('message', '')}"
        return {
            "event": "rollout.host_failed",
            "text": text[:1000],
            **_pick(event, "rollout", "host", "code", "check", "check_output"),
        }, True
    if name == "rollout.reverting":
        text = f"❌ cutover rollout {rid}: reverting {', '.join(event['hosts'])}: {event['reason']}"
        return {
            "event": "rollout.reverted",
            "text": text,
            **_pick(event, "rollout", "hosts", "reason"),
        }, True
    if name == "rollout.paused":
        text = f"⏸ cutover rollout {rid}: {event['reason']}"
        return {
            "event": "rollout.paused",
            "text": text,
            **_pick(event, "rollout", "wave", "reason"),
        }, False
    if name == "summary" and "rollout" in event:
        text = f"cutover rollout {rid}: {event['app']} {event['version']} {event['status']} ({event['reason']})"
        failed = event["status"] not in ("rolled_out", "paused")
        return {
            "event": "rollout.finished",
            "text": text,
            **_pick(event, "rollout", "app", "version", "status", "reason", "counts", "exit_code"),
        }, failed
    return None


def _pick(event: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: event[k] for k in keys if k in event}
