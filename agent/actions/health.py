"""The phase policy that gates a release on its health checks (docs/lifecycle.md, "Health checks").

The checks themselves (``http``, ``tcp``, ``command``, ``log``), and what ``pass``, ``fail`` and
``inconclusive`` mean for each, are in :mod:`agent._checks`; their public names are re-exported
here. In short, ``inconclusive`` means a check could not be carried out for a reason on *our* side
and says nothing about the release; an unhealthy *target* is always ``fail``.

Phase policy (:func:`run_phase`), for ``checks``, ``interval_s``, ``retries``,
``healthy_deadline_s`` and ``min_healthy_time_s``:

1. No checks: the phase passes at once (0 rounds).
2. A *round* runs every check concurrently; it passes when every check passes. Rounds start
   ``interval_s`` apart (start to start; a slow round delays the next, rounds never overlap), and no
   round starts after ``healthy_deadline_s``; a round still running at the deadline is cancelled
   and its unfinished checks fail.
3. The phase **passes** at the end of a passing round when passing rounds have run continuously
   for ``min_healthy_time_s`` (from the start of the first passing round of the streak to the start
   of this one); with 0, the first passing round is enough.
4. A non-passing round restarts the healthy streak. The phase **fails** as soon as
   ``retries + 1`` consecutive rounds did not pass, immediately when a ``log`` check fails, or
   when the deadline comes before rule 3 was met.
5. A failed phase is reported ``inconclusive`` instead of ``fail`` when the checks that kept the
   last round from passing were all inconclusive (the lifecycle decides what that means).

:func:`run_phase` never raises for an unhealthy release; it returns a :class:`PhaseResult`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from cutover.agent._util.lazylog import get_logger
from cutover.agent.actions._checks import (
    MAX_BODY_BYTES,
    MAX_LOG_READ_BYTES,
    AnyCheck,
    CheckResult,
    HealthContext,
    Status,
    UnavailableError,
    check_name,
    command_env,
    connect_error,
    http_request,
    log_offsets,
    new_session,
    run_check,
    run_one,
    snippet,
)
from cutover.agent.package.manifest import HealthPhase, HttpCheck, LogCheck, VersionProbe

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_LOG_READ_BYTES",
    "AnyCheck",
    "CheckResult",
    "HealthContext",
    "PhaseResult",
    "Status",
    "check_name",
    "command_env",
    "log_offsets",
    "probe_version",
    "run_check",
    "run_phase",
]

log = get_logger(__name__)

# Kept under its old name: tests/agent/test_health.py imports it from here.
_connect_error = connect_error


@dataclass(frozen=True)
class PhaseResult:
    """The outcome of a health phase: ``last`` holds the last round's results."""

    phase: str
    status: Status
    rounds: int
    duration_s: float
    last: list[CheckResult]
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "phase": self.phase,
            "status": self.status,
            "rounds": self.rounds,
            "duration_s": round(self.duration_s, 3),
            "detail": self.detail,
            "last": [r.to_json() for r in self.last],
        }


def _emit(on_event: Callable[[CheckResult], None] | None, result: CheckResult) -> None:
    if on_event is None:
        return
    try:
        on_event(result)
    except Exception:
        log.exception("health.event_callback_failed", check=result.name)


async def _round(
    checks: Sequence[AnyCheck],
    ctx: HealthContext,
    session: aiohttp.ClientSession | None,
    cursors: dict[int, int],
    remaining_s: float,
    on_event: Callable[[CheckResult], None] | None,
) -> list[CheckResult]:
    async def one(index: int, check: AnyCheck) -> CheckResult:
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(
                run_one(check, ctx, session, cursors, index), remaining_s
            )
        except TimeoutError:
            result = CheckResult(
                check_name(check),
                check.type,
                "fail",
                "still running at the phase's healthy deadline; cancelled",
                time.monotonic() - started,
            )
        _emit(on_event, result)
        return result

    return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(checks))))


def _summary(results: Sequence[CheckResult]) -> str:
    bad = [r for r in results if r.status != "pass"]
    return "; ".join(f"{r.name}: {r.status}: {r.detail}" for r in bad[:3]) + (
        f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
    )


def _failed_status(results: Sequence[CheckResult]) -> Status:
    return "fail" if any(r.status == "fail" for r in results) else "inconclusive"


async def run_phase(
    phase_name: str,
    phase: HealthPhase,
    ctx: HealthContext,
    on_event: Callable[[CheckResult], None] | None = None,
) -> PhaseResult:
    """Run a health phase under the policy in the module docstring.

    Args:
        phase_name: ``staged`` or ``live`` (any label; it is only reported).
        phase: checks and policy from the manifest.
        ctx: release dir, version, log offsets (a log check without one starts at the file's size
            when the phase starts), env for command checks.
        on_event: called with every check result as it completes; exceptions it raises are logged.

    Returns:
        The :class:`PhaseResult`; a failed phase is a result, never an exception.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    checks: list[AnyCheck] = list(phase.checks)
    if not checks:
        log.info("health.phase_finished", phase=phase_name, status="pass", rounds=0)
        return PhaseResult(phase_name, "pass", 0, 0.0, [], "no checks declared")
    missing = [c for c in checks if isinstance(c, LogCheck) and c.path not in ctx.log_offsets]
    defaults = await asyncio.to_thread(log_offsets, missing, ctx.release_dir) if missing else {}
    cursors = {
        i: ctx.log_offsets.get(c.path, defaults.get(c.path, 0))
        for i, c in enumerate(checks)
        if isinstance(c, LogCheck)
    }
    deadline = started + phase.healthy_deadline_s
    log.info("health.phase_started", phase=phase_name, checks=len(checks))

    rounds = 0
    failing_rounds = 0
    healthy_since: float | None = None
    last: list[CheckResult] = []
    status: Status = "fail"
    detail = ""
    session = new_session() if any(isinstance(c, HttpCheck) for c in checks) else None
    try:
        while True:
            round_start = loop.time()
            last = await _round(checks, ctx, session, cursors, deadline - round_start, on_event)
            rounds += 1
            log_failures = [
                r
                for r, c in zip(last, checks, strict=True)
                if r.status == "fail" and isinstance(c, LogCheck)
            ]
            if log_failures:
                detail = f"log check failed (final): {_summary(log_failures)}"
                break
            if all(r.status == "pass" for r in last):
                failing_rounds = 0
                if healthy_since is None:
                    healthy_since = round_start
                if round_start - healthy_since >= phase.min_healthy_time_s:
                    status = "pass"
                    detail = f"healthy after {rounds} round(s)"
                    if phase.min_healthy_time_s:
                        detail += f", continuously for {round_start - healthy_since:.1f}s"
                    break
            else:
                healthy_since = None
                failing_rounds += 1
                if failing_rounds > phase.retries:
                    status = _failed_status(last)
                    detail = (
                        f"{failing_rounds} consecutive round(s) not healthy "
                        f"(retries={phase.retries}): {_summary(last)}"
                    )
                    break
            next_start = round_start + phase.interval_s
            if next_start >= deadline:
                if healthy_since is not None:
                    detail = (
                        f"healthy for only {round_start - healthy_since:.1f}s of the required "
                        f"{phase.min_healthy_time_s:g}s before the {phase.healthy_deadline_s:g}s "
                        "deadline"
                    )
                else:
                    status = _failed_status(last)
                    detail = (
                        f"not healthy within the {phase.healthy_deadline_s:g}s deadline: "
                        f"{_summary(last)}"
                    )
                break
            await asyncio.sleep(max(0.0, next_start - loop.time()))
    finally:
        if session is not None:
            await session.close()
    duration = loop.time() - started
    log.info(
        "health.phase_finished",
        phase=phase_name,
        status=status,
        rounds=rounds,
        duration_s=round(duration, 3),
        detail=detail,
    )
    return PhaseResult(phase_name, status, rounds, duration, last, detail)


# --- version probe --------------------------------------------------------------------------


def _version_pattern(version: str) -> re.Pattern[str]:
    # The version as a whole token: "1.2" must not be found in "1.20", "11.2" or "1.2-rc1".
    return re.compile(r"(?<![0-9.])" + re.escape(version) + r"(?![0-9A-Za-z._+-])")


async def probe_version(
    probe: VersionProbe, ctx: HealthContext, *, interval_s: float = 1.0
) -> CheckResult:
    """Poll ``probe.url`` until a 2xx body shows ``ctx.version`` (as a whole token) or time is up.

    Args:
        probe: URL, Host override, per-request timeout, overall deadline.
        ctx: ``version`` is what must appear.
        interval_s: time between the starts of two attempts.

    Returns:
        ``pass`` once seen; otherwise ``fail`` (or ``inconclusive`` when the last attempt could not
        be made, e.g. the host does not resolve) with what the last attempt saw.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + probe.deadline_s
    wanted = _version_pattern(ctx.version)
    name = f"version {probe.url}"
    attempts = 0
    status: Status = "fail"
    seen = "nothing"
    async with new_session() as session:
        while True:
            attempt_start = loop.time()
            attempts += 1
            timeout = max(0.001, min(probe.timeout_s, deadline - attempt_start))
            try:
                reply = await http_request(
                    session, "GET", probe.url, probe.host, timeout, MAX_BODY_BYTES
                )
            except UnavailableError as exc:
                status, seen = exc.status, exc.detail
            else:
                if 200 <= reply.status < 300 and wanted.search(reply.body):
                    detail = f"serves {ctx.version} (attempt {attempts})"
                    log.info("health.version_confirmed", url=probe.url, version=ctx.version)
                    return CheckResult(name, "version", "pass", detail, loop.time() - started)
                status, seen = "fail", f"status {reply.status}, body {snippet(reply.body)}"
            next_start = attempt_start + interval_s
            if next_start >= deadline:
                break
            await asyncio.sleep(max(0.0, next_start - loop.time()))
    detail = (
        f"{probe.url} did not report version {ctx.version!r} within {probe.deadline_s:g}s "
        f"({attempts} attempts); last saw {seen}"
    )
    log.warning("health.version_not_confirmed", url=probe.url, version=ctx.version, seen=seen)
    return CheckResult(name, "version", status, detail, loop.time() - started)
