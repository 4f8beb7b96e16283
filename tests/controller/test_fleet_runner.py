"""The runner and the outcome rule: bounded concurrency, one result per host, errors by class.

The agents here are fakes of a *remote* peer (allowed in a unit test): the real agents are
exercised end to end in tests/e2e/test_fleet.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from cutover.agent.errors import (
    ActivationFailedError,
    AuthError,
    CutoverError,
    DowngradeError,
    ExitCode,
    SignatureError,
    TransportError,
    UnreachableError,
)
from cutover.controller.fleet.agents import AppView, JournalEntry, OpRecord, error_from_code
from cutover.controller.fleet.inventory import HostSpec
from cutover.controller.fleet.results import FleetOutcome, HostStatus, classify, outcome_of
from cutover.controller.fleet.runner import FleetRunner
from cutover.controller.fleet.steps import activate_step, stage_step

S = HostStatus


@pytest.mark.parametrize(
    ("statuses", "outcome", "code"),
    [
        pytest.param([S.OK, S.OK], FleetOutcome.OK, ExitCode.OK, id="all-ok"),
        pytest.param([S.OK, S.UNCHANGED], FleetOutcome.OK, ExitCode.OK, id="ok-and-unchanged"),
        pytest.param([S.OK, S.REFUSED], FleetOutcome.PARTIAL, ExitCode.PARTIAL, id="one-refused"),
        pytest.param([S.UNCHANGED, S.UNREACHABLE], FleetOutcome.PARTIAL, ExitCode.PARTIAL, id="one-unreachable"),
        pytest.param([S.REFUSED, S.REFUSED], FleetOutcome.REFUSED, ExitCode.REJECTED, id="all-refused"),
        pytest.param([S.UNREACHABLE], FleetOutcome.UNREACHABLE, ExitCode.UNREACHABLE, id="all-unreachable"),
        pytest.param([S.FAILED, S.FAILED], FleetOutcome.FAILED, ExitCode.FAILED, id="all-failed"),
        pytest.param([S.REFUSED, S.UNREACHABLE], FleetOutcome.FAILED, ExitCode.FAILED, id="mixed-failures"),
        pytest.param([], FleetOutcome.FAILED, ExitCode.FAILED, id="nothing"),
    ],
)  # fmt: skip
def test_outcome_rule(statuses: list[HostStatus], outcome: FleetOutcome, code: int) -> None:
    from cutover.controller.fleet.results import exit_code_of

    assert outcome_of(statuses) == outcome and exit_code_of(outcome) == code


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        pytest.param(TransportError("x"), S.UNREACHABLE, id="transport"),
        pytest.param(UnreachableError("x"), S.UNREACHABLE, id="unreachable"),
        pytest.param(SignatureError("x", code="untrusted"), S.REFUSED, id="signature"),
        pytest.param(DowngradeError("x"), S.REFUSED, id="downgrade"),
        pytest.param(AuthError("x", code="unknown_key"), S.REFUSED, id="auth"),
        pytest.param(ActivationFailedError("x"), S.FAILED, id="reverted"),
    ],
)
def test_classify_by_class(exc: CutoverError, status: HostStatus) -> None:
    assert classify(exc) == status


@pytest.mark.parametrize(
    ("code", "kind", "cls"),
    [
        pytest.param("untrusted", "bad_signature", SignatureError, id="refined-signature"),
        pytest.param("downgrade", "downgrade", DowngradeError, id="downgrade"),
        pytest.param("reverted", None, ActivationFailedError, id="class-code-without-kind"),
        pytest.param("unreachable", "unreachable", UnreachableError, id="unreachable"),
        pytest.param("something_new", None, CutoverError, id="unknown"),
    ],
)
def test_error_from_code_uses_the_registry(code: str, kind: str | None, cls: type) -> None:
    err = error_from_code(code, "m", kind=kind)
    assert isinstance(err, cls) and err.code == code


def test_a_fetch_that_failed_inside_an_operation_is_not_unreachable() -> None:
    err = error_from_code("transport", "the store refused", in_operation=True)
    assert not isinstance(err, TransportError) and classify(err) == S.FAILED


class FakeAgent:
    """A remote agent that answers after yielding to the loop (so others run meanwhile)."""

    def __init__(self, name: str, behaviour: CutoverError | str, tracker: dict[str, int]) -> None:
        self.name = name
        self.behaviour = behaviour
        self.tracker = tracker
        self.closed = False
        self.digest: bytes | None = None

    async def _op(self, on_event: Any, version: str, flag: str) -> OpRecord:
        self.tracker["now"] += 1
        self.tracker["peak"] = max(self.tracker["peak"], self.tracker["now"])
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            on_event({"event": "progress", "step": "upload", "done": 5, "total": 10})
            on_event({"event": "progress", "step": "upload", "done": 5, "total": 10})
            on_event({"event": "verify.done", "signers": ["k"], "app": "ame"})
            if isinstance(self.behaviour, CutoverError):
                raise self.behaviour
            result = {
                "message": "done",
                "version": version,
                "current": "1.0",
                flag: self.behaviour == "same",
            }
            return OpRecord(id=f"op-{self.name}", op="x", status="succeeded", result=result)
        finally:
            self.tracker["now"] -= 1

    async def upload(
        self, app: str, version: str, package: Path, sha256: bytes, on_event: Any
    ) -> OpRecord:
        self.digest = sha256
        return await self._op(on_event, version, "already_staged")

    async def fetch(self, app: str, version: str, url: str, on_event: Any) -> OpRecord:
        return await self._op(on_event, version, "already_staged")

    async def activate(self, app: str, version: str, on_event: Any) -> OpRecord:
        return await self._op(on_event, version, "already_active")

    async def rollback(self, app: str, to: str | None, on_event: Any) -> OpRecord:
        return await self._op(on_event, to or "", "already_active")

    async def app(self, app: str) -> AppView:
        raise NotImplementedError

    async def journal(self, app: str, limit: int) -> list[JournalEntry]:
        raise NotImplementedError

    async def close(self) -> None:
        self.closed = True


async def test_runner_bounds_concurrency_and_reports_every_host() -> None:
    behaviours: dict[str, CutoverError | str] = {
        "a": "new",
        "b": "same",
        "c": SignatureError("c: untrusted", code="untrusted"),
        "d": TransportError("d: connection refused"),
        "e": "new",
    }
    hosts = [HostSpec(name=n, url=f"http://{n}.example:7801") for n in behaviours]
    tracker = {"now": 0, "peak": 0}
    made: dict[str, FakeAgent] = {}

    def connect(h: HostSpec) -> FakeAgent:
        made[h.name] = FakeAgent(h.name, behaviours[h.name], tracker)
        return made[h.name]

    events: list[dict[str, Any]] = []
    runner = FleetRunner(hosts, connect, max_parallel=2, sink=events.append)  # type: ignore[arg-type]
    result = await runner.run("push", "ame", "2.0", stage_step("ame", "2.0", url="http://s/p"))

    assert tracker["peak"] == 2  # never more than max_parallel at once
    assert [h.host for h in result.hosts] == list(behaviours)  # file order kept
    assert [h.status for h in result.hosts] == [S.OK, S.UNCHANGED, S.REFUSED, S.UNREACHABLE, S.OK]
    assert result.hosts[2].error == "untrusted" and "untrusted" in result.hosts[2].message
    assert result.hosts[0].operation == "op-a" and result.hosts[0].current == "1.0"
    assert result.outcome == FleetOutcome.PARTIAL and result.exit_code == ExitCode.PARTIAL
    assert all(agent.closed for agent in made.values())
    # progress is thinned (the duplicate 5/10 dropped), phases translated, one result per host
    progress = [e for e in events if e["event"] == "host.progress" and e["host"] == "a"]
    assert len(progress) == 1 and progress[0]["done"] == 5
    assert {
        "event": "host.phase",
        "host": "a",
        "phase": "verified",
        "detail": {"signers": ["k"]},
    }.items() <= next(e for e in events if e["event"] == "host.phase" and e["host"] == "a").items()
    assert sum(1 for e in events if e["event"] == "host.result") == 5


async def test_activate_step_reports_already_active_as_unchanged() -> None:
    hosts = [HostSpec(name="a", url="http://a.example")]
    tracker = {"now": 0, "peak": 0}
    runner = FleetRunner(
        hosts,
        lambda h: FakeAgent(h.name, "same", tracker),
        max_parallel=5,
        sink=lambda e: None,  # type: ignore[arg-type,return-value]
    )
    result = await runner.run("activate", "ame", "2.0", activate_step("ame", "2.0"))
    assert result.hosts[0].status == S.UNCHANGED and result.exit_code == ExitCode.OK


async def test_a_failed_operation_is_classified_by_its_code_and_keeps_its_id() -> None:
    class Refusing(FakeAgent):
        async def upload(
            self, app: str, version: str, package: Path, sha256: bytes, on_event: Any
        ) -> OpRecord:
            return OpRecord(
                id="op-9",
                op="stage",
                status="failed",
                error={
                    "error": "downgrade",
                    "kind": "downgrade",
                    "message": "2.0 is older than 3.0",
                },
            )

    hosts = [HostSpec(name="a", url="http://a.example")]
    tracker = {"now": 0, "peak": 0}
    runner = FleetRunner(
        hosts,
        lambda h: Refusing(h.name, "new", tracker),
        max_parallel=1,
        sink=lambda e: None,  # type: ignore[arg-type,return-value]
    )
    package = Path(__file__)
    result = await runner.run("push", "ame", "2.0", stage_step("ame", "2.0", package=package))
    [host] = result.hosts
    assert (host.status, host.error, host.operation) == (S.REFUSED, "downgrade", "op-9")
    assert host.exit_code == ExitCode.REJECTED
    assert host.message == "2.0 is older than 3.0" and result.exit_code == ExitCode.REJECTED


@pytest.mark.parametrize(
    ("outcome", "codes", "expected"),
    [
        pytest.param(FleetOutcome.OK, [0, 0], ExitCode.OK, id="ok"),
        pytest.param(FleetOutcome.PARTIAL, [0, 7], ExitCode.PARTIAL, id="partial"),
        pytest.param(FleetOutcome.FAILED, [7, 7], ExitCode.REVERTED, id="every-host-reverted"),
        pytest.param(FleetOutcome.FAILED, [4, 4], ExitCode.CONFLICT, id="every-host-locked"),
        pytest.param(FleetOutcome.FAILED, [7, 1], ExitCode.FAILED, id="different-failures"),
        pytest.param(FleetOutcome.REFUSED, [3, 3], ExitCode.REJECTED, id="every-host-refused"),
        pytest.param(FleetOutcome.UNREACHABLE, [9], ExitCode.UNREACHABLE, id="none-answered"),
    ],
)
def test_fleet_exit_code_is_the_common_code_when_no_host_succeeded(
    outcome: FleetOutcome, codes: list[int], expected: int
) -> None:
    from cutover.controller.fleet.results import fleet_exit_code

    assert fleet_exit_code(outcome, codes) == expected


@pytest.mark.parametrize(
    ("status", "exc", "code"),
    [
        pytest.param(S.OK, None, 0, id="ok"),
        pytest.param(S.REFUSED, SignatureError("x"), 3, id="refused"),
        pytest.param(
            S.REFUSED,
            error_from_code("payload_too_large", "x", kind="payload_too_large"),
            3,
            id="refused-request",
        ),
        pytest.param(S.UNREACHABLE, TransportError("x"), 9, id="unreachable"),
        pytest.param(S.FAILED, ActivationFailedError("x"), 7, id="reverted"),
        pytest.param(S.FAILED, None, 1, id="failed-without-error"),
    ],
)
def test_host_exit_code(status: HostStatus, exc: CutoverError | None, code: int) -> None:
    from cutover.controller.fleet.results import host_exit_code

    assert host_exit_code(status, exc) == code


async def test_a_pushed_package_is_hashed_once_and_every_host_gets_its_digest(
    tmp_path: Path,
) -> None:
    package = tmp_path / "ame-2.0.cutover"
    package.write_bytes(b"package bytes" * 1000)
    hosts = [HostSpec(name=f"h{i}", url=f"http://h{i}.example") for i in range(5)]
    tracker = {"now": 0, "peak": 0}
    made: dict[str, FakeAgent] = {}

    def connect(h: HostSpec) -> FakeAgent:
        made[h.name] = FakeAgent(h.name, "new", tracker)
        return made[h.name]

    runner = FleetRunner(hosts, connect, max_parallel=5, sink=lambda e: None)  # type: ignore[arg-type]
    result = await runner.run("push", "ame", "2.0", stage_step("ame", "2.0", package=package))
    assert result.exit_code == ExitCode.OK
    assert {a.digest for a in made.values()} == {hashlib.sha256(package.read_bytes()).digest()}


def test_a_resumed_upload_is_a_phase_of_its_host() -> None:
    """controller/upload.py's resume, relayed by AgentPort.upload, shows in the host's progress."""
    from cutover.controller.fleet.runner import _Translator

    events: list[dict[str, Any]] = []
    _Translator("web-1", events.append)(
        {"event": "upload.resumed", "attempt": 2, "offset": 4096, "why": "connection reset"}
    )
    assert events == [
        {
            "event": "host.phase",
            "host": "web-1",
            "phase": "upload resumed",
            "detail": {"attempt": 2, "offset": 4096, "why": "connection reset"},
        }
    ]
