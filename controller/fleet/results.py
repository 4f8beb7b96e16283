"""Per-host results of a fleet command and the one rule that turns them into an exit code.

Each host ends in exactly one :class:`HostStatus`:

* ``ok`` — the agent did it; ``unchanged`` — the agent already had it (re-push, re-activate);
* ``refused`` — the agent refused the input or the request (signature, trust, downgrade, 401):
  nothing changed there; fix the package or the keys;
* ``unreachable`` — no answer (connection refused, timeout, TLS): nothing is known about it;
* ``failed`` — the agent tried and failed (hook, health check, revert, lock held, not staged).

Each host also gets an exit code (:func:`host_exit_code`): 0 when it succeeded, 3 refused,
9 unreachable, else its error's own code (7 reverted, 4 locked, 5 not found, 1 ...).

The fleet outcome (pure, :func:`outcome_of`): every host ok/unchanged -> ``ok`` (exit 0); some
succeeded and some did not -> ``partial`` (8); none succeeded: all refused -> ``refused``, all
unreachable -> ``unreachable``, anything else -> ``failed``. When none succeeded, the exit code
(:func:`fleet_exit_code`) is the hosts' common exit code if they all share one (3 every host
refused, 9 none answered, 7 every host reverted...), else 1. Only the CLI entry point turns the
code into a process exit status.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from cutover.agent.errors import CutoverError, ExitCode, RejectedError, TransportError

__all__ = [
    "FleetOutcome",
    "FleetResult",
    "HostResult",
    "HostStatus",
    "Transfer",
    "classify",
    "exit_code_of",
    "fleet_exit_code",
    "host_exit_code",
    "outcome_of",
]


class HostStatus(StrEnum):
    OK = "ok"
    UNCHANGED = "unchanged"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    FAILED = "failed"

    @property
    def succeeded(self) -> bool:
        return self in (HostStatus.OK, HostStatus.UNCHANGED)


class FleetOutcome(StrEnum):
    OK = "ok"
    PARTIAL = "partial"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    FAILED = "failed"


_EXIT = {
    FleetOutcome.OK: ExitCode.OK,
    FleetOutcome.PARTIAL: ExitCode.PARTIAL,
    FleetOutcome.REFUSED: ExitCode.REJECTED,
    FleetOutcome.UNREACHABLE: ExitCode.UNREACHABLE,
    FleetOutcome.FAILED: ExitCode.FAILED,
}


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Transfer(_Out):
    """What a stage moved to one host (docs/controller.md, "Delta push").

    ``mode``: ``delta`` (a thin payload of the contents the host lacked), ``full`` (the whole
    package: ``--no-delta``, an agent without the ``missing`` endpoint, or nothing to reuse) or
    ``fetch`` (the agent downloaded it; nothing sent). ``saved_bytes`` = ``package_bytes`` -
    ``sent_bytes``.
    """

    mode: str
    sent_bytes: int
    package_bytes: int
    saved_bytes: int
    files_sent: int | None = None  # regular files in a thin payload
    reason: str = ""  # why not delta, when delta was asked


class HostResult(_Out):
    """One host's result: the ``host.result`` event and a row of the results table."""

    host: str
    url: str
    action: str
    status: HostStatus
    exit_code: int = ExitCode.OK  # host_exit_code(): what this host alone would exit with
    error: str | None = None  # the agent's reason code (or "transport")
    message: str = ""
    operation: str | None = None
    version: str | None = None
    current: str | None = None
    previous: str | None = None
    duration_s: float = 0.0
    transfer: Transfer | None = None  # stage steps only


class FleetResult(_Out):
    """A whole fleet step: the ``summary`` event of a command."""

    action: str
    app: str
    version: str | None
    outcome: FleetOutcome
    exit_code: int
    counts: dict[str, int]
    hosts: list[HostResult]

    @classmethod
    def of(cls, action: str, app: str, version: str | None, hosts: list[HostResult]) -> FleetResult:
        outcome = outcome_of([h.status for h in hosts])
        counts = {s.value: sum(1 for h in hosts if h.status == s) for s in HostStatus}
        return cls(
            action=action,
            app=app,
            version=version,
            outcome=outcome,
            exit_code=fleet_exit_code(outcome, [h.exit_code for h in hosts]),
            counts=counts,
            hosts=hosts,
        )

    def succeeded(self) -> list[HostResult]:
        return [h for h in self.hosts if h.status.succeeded]

    def failed(self) -> list[HostResult]:
        return [h for h in self.hosts if not h.status.succeeded]


def classify(exc: CutoverError) -> HostStatus:
    """Which way a host failed, by the error's class (never by parsing its message)."""
    if isinstance(exc, TransportError):
        return HostStatus.UNREACHABLE
    if isinstance(exc, RejectedError):
        return HostStatus.REFUSED
    return HostStatus.FAILED


def outcome_of(statuses: list[HostStatus]) -> FleetOutcome:
    """The fleet outcome of per-host statuses (module docstring)."""
    good = sum(1 for s in statuses if s.succeeded)
    if statuses and good == len(statuses):
        return FleetOutcome.OK
    if good:
        return FleetOutcome.PARTIAL
    if statuses and all(s == HostStatus.REFUSED for s in statuses):
        return FleetOutcome.REFUSED
    if statuses and all(s == HostStatus.UNREACHABLE for s in statuses):
        return FleetOutcome.UNREACHABLE
    return FleetOutcome.FAILED


def exit_code_of(outcome: FleetOutcome) -> int:
    """The outcome's own code (0, 8, 3, 9, 1)."""
    return _EXIT[outcome]


def host_exit_code(status: HostStatus, exc: CutoverError | None = None) -> int:
    """0 succeeded, 3 refused, 9 unreachable; a failed host: its error's code (1 without one)."""
    if status.succeeded:
        return ExitCode.OK
    if status in (HostStatus.REFUSED, HostStatus.UNREACHABLE):
        return _EXIT[FleetOutcome(status.value)]
    return exc.exit_code if exc is not None else ExitCode.FAILED


def fleet_exit_code(outcome: FleetOutcome, host_codes: list[int]) -> int:
    """0 ok, 8 partial; when no host succeeded, their common code, else 1."""
    if outcome in (FleetOutcome.OK, FleetOutcome.PARTIAL):
        return _EXIT[outcome]
    common = set(host_codes)
    return common.pop() if len(common) == 1 else ExitCode.FAILED
