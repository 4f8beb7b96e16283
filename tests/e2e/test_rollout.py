"""The rollout engine end to end: five real agents on 127.0.0.1 driven by ``cutover rollout``.

One fleet for the module; tests run in file order, each on a new version (every release carries
a live check that fails on a host whose shared dir holds ``broken-<version>``, so a test breaks
exactly the hosts it names, and a log check of ``shared/errors.log`` that is *inconclusive* on a
host where that path is a directory: the agent cannot read it). With ``--canary 1 --batch 2``
the waves are ``[h1] [h2 h3] [h4 h5]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import APP, BIN, Keys, _build
from tests.e2e.fleet_fixture import Fleet, webhook_receiver

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HOSTS = ["h1", "h2", "h3", "h4", "h5"]
GROUPS = {h: ["web"] for h in HOSTS}
WAVES = ["--canary", "1", "--batch", "2"]
FAST = ["--progress-deadline", "3", "--healthy-deadline", "30"]

CHECKED = """
[[hooks.post_activate]]
name = "migrate"
once = true
argv = ["sh", "-c", "echo migrating; touch \\"$CUTOVER_SHARED_DIR/once-$CUTOVER_VERSION\\""]

[health.live]
interval_s = 0.2
retries = 0
healthy_deadline_s = 5
[[health.live.checks]]
type = "command"
name = "not-broken"
argv = ["sh", "-c", "test ! -e \\"$CUTOVER_SHARED_DIR/broken-$CUTOVER_VERSION\\" || { echo \\"broken marker for $CUTOVER_VERSION\\"; exit 1; }"]
[[health.live.checks]]
type = "log"
name = "errors-log"
path = "../../shared/errors.log"
pattern = "FATAL"
"""

SLOW = (
    'touch "$CUTOVER_SHARED_DIR/hook-started-$CUTOVER_VERSION"; i=0; '
    'while [ ! -e "$CUTOVER_SHARED_DIR/hook-release-$CUTOVER_VERSION" ] && [ $i -lt 1200 ]; '
    "do sleep 0.05; i=$((i+1)); done; echo post-activate done"
)
SLOW_HOOK = (
    "[[hooks.post_activate]]\n"
    'name = "wait-for-test"\n'
    f'argv = ["sh", "-c", {json.dumps(SLOW)}]\n'
    "timeout_s = 90\n"
)
VERSIONS = [f"3.{i}.0" for i in range(12)]


@pytest.fixture(scope="module")
def pkgs(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("rollout-packages")
    return {
        v: _build(tmp, v, keys.release, CHECKED + (SLOW_HOOK if v in ("3.4.0", "3.5.0") else ""))
        for v in VERSIONS
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("rollout-fleet"), keys, GROUPS)
    f.start()
    yield f
    for a in f.agents.values():
        if a.proc is not None and a.proc.poll() is None:
            os.kill(a.pid, signal.SIGCONT)
    f.stop()


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("controller-state")


def push(fleet: Fleet, pkg: Path) -> None:
    proc = fleet.cutover("push", str(pkg), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# The --json event schemas of docs/rollouts.md: exactly these fields (+ ts, event); optional ones
# in the second set. Every rollout of this module is checked against them.
SCHEMAS: dict[str, tuple[set[str], set[str]]] = {
    "rollout.start": (
        {"rollout", "app", "version", "waves", "next_wave", "budget", "params"},
        set(),
    ),
    "lease.acquired": ({"rollout", "hosts", "ttl_s", "stolen"}, set()),
    "lease.held": ({"rollout", "hosts", "ttl_s"}, set()),
    "wave.start": ({"rollout", "wave", "canary", "hosts", "deadline", "counts"}, set()),
    "wave.bake": ({"rollout", "hosts", "bake_s"}, set()),
    "wave.done": ({"rollout", "wave", "canary", "decision", "counts"}, set()),
    "host.failed": (
        {"rollout", "host", "code", "message", "check", "check_output", "hook_tail", "decision"},
        set(),
    ),
    "rollout.reverting": ({"rollout", "reason", "hosts"}, set()),
    "rollout.paused": ({"rollout", "wave", "reason"}, {"frozen", "inconclusive"}),
}


def check_schemas(events: list[dict[str, Any]]) -> None:
    for e in events:
        if e["event"] in SCHEMAS:
            required, optional = SCHEMAS[e["event"]]
            assert required <= set(e) - {"ts", "event"} <= required | optional, e


def rollout(fleet: Fleet, state: Path, *args: str, expect: int) -> list[dict[str, Any]]:
    proc = fleet.cutover("rollout", *args, "--state-dir", str(state), "--json", timeout=180)
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert events and events[-1]["event"] == "summary", proc.stdout
    assert events[-1]["exit_code"] == expect
    check_schemas(events)
    return events


def currents(fleet: Fleet) -> dict[str, str | None]:
    return {h: fleet.agents[h].current() for h in HOSTS}


def on(version: str) -> str:
    return f"releases/{version}"


def breaks(fleet: Fleet, host: str, version: str) -> None:
    (fleet.agents[host].root / "shared" / f"broken-{version}").touch()


def activations(fleet: Fleet, host: str, version: str) -> list[dict[str, Any]]:
    return [
        e
        for e in fleet.agents[host].journal()
        if e["event"].startswith("activate.") and e.get("version") == version
    ]


def named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


def leases_file(fleet: Fleet, host: str) -> dict[str, Any]:
    path = fleet.agents[host].state_dir / "leases.json"
    return json.loads(path.read_text())["leases"] if path.exists() else {}


SUMMARY_KEYS = {
    "ts", "event", "rollout", "app", "version", "status", "reason", "counts", "failures",
    "reverted", "hosts", "not_staged", "exit_code",
}  # fmt: skip


def test_healthy_rollout_goes_canary_then_waves_and_releases_its_leases(
    fleet: Fleet, state: Path, pkgs: dict[str, Path]
) -> None:
    push(fleet, pkgs["3.0.0"])
    events = rollout(fleet, state, "3.0.0", *WAVES, *FAST, "--bake", "0.5", expect=0)

    summary = events[-1]
    assert set(summary) == SUMMARY_KEYS
    assert summary["status"] == "rolled_out"
    assert summary["counts"] == {
        "desired": 5, "staged": 5, "activated": 5, "healthy": 5, "failed": 0,
    }  # fmt: skip
    assert [w["hosts"] for w in named(events, "wave.start")] == [["h1"], ["h2", "h3"], ["h4", "h5"]]
    assert named(events, "wave.start")[0]["canary"] is True
    assert all(w["deadline"]["action"] for w in named(events, "wave.start"))
    assert len(named(events, "wave.bake")) == 3
    # the canary's activation finished before wave 1 started
    order = [(e["event"], e.get("host")) for e in events]
    assert order.index(("host.result", "h1")) < order.index(("host.start", "h2"))
    assert currents(fleet) == {h: on("3.0.0") for h in HOSTS}
    assert named(events, "lease.acquired")[0]["hosts"] == HOSTS
    assert all(leases_file(fleet, h) == {} for h in HOSTS)  # released at the end
    # the once hook (a migration) ran on the first canary host only, and each record says so
    ran = [h for h in HOSTS if (fleet.agents[h].root / "shared" / "once-3.0.0").exists()]
    assert ran == ["h1"]
    done = {h: activations(fleet, h, "3.0.0")[-1] for h in HOSTS}
    assert {h: (d["event"], d["run_once"]) for h, d in done.items()} == {
        h: ("activate.done", h == "h1") for h in HOSTS
    }
    assert done["h2"]["once_skipped"] == ["post_activate:migrate"]


def test_failing_canary_is_reverted_and_later_waves_never_start(
    fleet: Fleet, state: Path, pkgs: dict[str, Path]
) -> None:
    push(fleet, pkgs["3.1.0"])
    breaks(fleet, "h1", "3.1.0")
    before = {h: len(fleet.agents[h].journal()) for h in HOSTS}
    events = rollout(fleet, state, "3.1.0", *WAVES, *FAST, "--max-failures", "2", expect=7)

    summary = events[-1]
    assert summary["status"] == "reverted"
    assert len(named(events, "wave.start")) == 1  # only the canary
    assert currents(fleet) == {h: on("3.0.0") for h in HOSTS}
    assert [e["event"] for e in activations(fleet, "h1", "3.1.0")][-1] == "activate.reverted"
    for h in HOSTS[1:]:
        assert activations(fleet, h, "3.1.0") == []
        assert len(fleet.agents[h].journal()) == before[h]  # nothing at all happened there
    (failure,) = summary["failures"]
    assert failure["host"] == "h1" and failure["code"] == "reverted"
    assert "not-broken" in failure["check"]
    assert "broken marker for 3.1.0" in failure["check_output"]
    assert failure["decision"] == "reverted by its agent"


def test_wave_two_failure_past_the_budget_reverts_every_touched_host_in_parallel(
    fleet: Fleet, state: Path, pkgs: dict[str, Path]
) -> None:
    push(fleet, pkgs["3.2.0"])
    breaks(fleet, "h4", "3.2.0")
    events = rollout(fleet, state, "3.2.0", *WAVES, *FAST, "--bake", "0.3", expect=7)

    assert events[-1]["status"] == "reverted"
    assert currents(fleet) == {h: on("3.0.0") for h in HOSTS}
    (reverting,) = named(events, "rollout.reverting")
    assert sorted(reverting["hosts"]) == ["h1", "h2", "h3", "h5"]
    starts = [
        i for i, e in enumerate(events) if e["event"] == "host.start" and e["action"] == "revert"
    ]
    ends = [
        i for i, e in enumerate(events) if e["event"] == "host.result" and e["action"] == "revert"
    ]
    assert len(starts) == 4 and max(starts) < min(ends)  # all started before any finished
    # no canary and no bake replayed: after the decision, only reverts
    after = events[events.index(reverting) :]
    assert not [e for e in after if e["event"] in ("wave.start", "wave.bake")]
    assert not [e for e in after if e.get("action") == "activate"]
    for h in ("h1", "h2", "h3", "h5"):
        assert [e["event"] for e in fleet.agents[h].journal()][-1] == "rollback.done"


def test_failure_inside_the_budget_isolates_the_host_and_the_rollout_completes(
    fleet: Fleet, state: Path, pkgs: dict[str, Path]
) -> None:
    push(fleet, pkgs["3.3.0"])
    breaks(fleet, "h3", "3.3.0")
    events = rollout(fleet, state, "3.3.0", *WAVES, *FAST, "--max-failures", "1", expect=8)

    summary = events[-1]
    assert summary["status"] == "partial"
    assert summary["hosts"]["h3"] == "isolated"
    assert currents(fleet) == {**{h: on("3.3.0") for h in HOSTS}, "h3": on("3.0.0")}
    assert len(named(events, "wave.start")) == 3
    (failed,) = named(events, "host.failed")
    assert failed["host"] == "h3" and "broken marker" in failed["check_output"]
    assert summary["failures"][0]["decision"] == "isolated (reverted)"


def _background(fleet: Fleet, state: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CUTOVER_FLEET": str(fleet.path), "COLUMNS": "200"}
    return subprocess.Popen(
        [str(BIN / "cutover"), "rollout", *args, "--state-dir", str(state), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the rollout ended early ({proc.returncode}): {out}\n{err}")
        time.sleep(0.05)


def test_leases_refuse_a_second_rollout_a_stale_lease_expires_and_a_killed_cli_resumes(
    fleet: Fleet, state: Path, tmp_path: Path, pkgs: dict[str, Path], keys: Keys
) -> None:
    push(fleet, pkgs["3.4.0"])  # its post_activate hook waits for the test
    first = _background(fleet, state, "3.4.0", *WAVES, *FAST, "--lease-ttl", "3")
    shared = fleet.agents["h1"].root / "shared"
    _wait_for(shared / "hook-started-3.4.0", first)  # the canary is in its post_activate hook
    rid = json.loads(first.stdout.readline())["rollout"]  # type: ignore[union-attr]

    # another controller (its own state dir) is refused by the leases, naming the holder
    before = {h: fleet.agents[h].snapshot() for h in HOSTS}
    other = fleet.cutover(
        "rollout", "3.4.0", "--state-dir", str(tmp_path / "other"), "--json", *WAVES
    )
    assert other.returncode == 4, other.stdout + other.stderr
    refusal = json.loads(other.stdout.splitlines()[-1])
    assert refusal["error"] == "locked" and rid in refusal["message"]
    assert {h: fleet.agents[h].snapshot() for h in HOSTS} == before

    # the CLI dies while the canary's hook runs; the agent finishes the activation
    first.kill()
    first.communicate()
    (shared / "hook-release-3.4.0").touch()
    for h in HOSTS[1:]:
        (fleet.agents[h].root / "shared" / "hook-release-3.4.0").touch()
    while fleet.agents["h1"].current() != on("3.4.0"):
        time.sleep(0.05)

    # nobody renews the leases any more: they expire by themselves
    time.sleep(3.5)

    async def take_and_release() -> None:
        for h in HOSTS:
            async with fleet.agents[h].client(keys.deploy) as client:
                lease = await client.lease(APP, "r-probe", "test@probe", 5)
                assert (await client.release_lease(APP, lease.id)).released

    asyncio.run(take_and_release())

    events = rollout(fleet, state, "--resume", rid, *FAST, expect=0)
    assert events[-1]["rollout"] == rid and events[-1]["status"] == "rolled_out"
    assert named(events, "rollout.start")[0]["next_wave"] == 0
    assert currents(fleet) == {h: on("3.4.0") for h in HOSTS}
    listed = fleet.cutover("rollouts", "--state-dir", str(state), "--json")
    rows = {r["id"]: r for r in json.loads(listed.stdout)["rollouts"]}
    assert rows[rid]["status"] == "rolled_out"
    assert all(r["status"] != "running" for r in rows.values())  # none left dangling


def test_an_agent_that_stops_answering_is_marked_failed_and_isolated_by_policy(
    fleet: Fleet, state: Path, pkgs: dict[str, Path]
) -> None:
    """h2 hangs (SIGSTOP) after its activation, before its wave's bake: the bake gets no answer
    for the progress deadline, h2 is marked failed, isolated within the budget, and the rollout
    goes on. Nothing races the bake's clock: h3, of the same wave, is held in its post_activate
    hook until h2 is stopped, so the bake starts only then (once, stopping h2 on seeing
    ``wave.bake`` was late under load: the 4 s bake had ended and h2 counted as healthy)."""
    push(fleet, pkgs["3.5.0"])  # its post_activate hook waits for the test, on every host
    h2, h3 = fleet.agents["h2"], fleet.agents["h3"]
    for h in HOSTS:
        if h != "h3":
            (fleet.agents[h].root / "shared" / "hook-release-3.5.0").touch()
    proc = _background(
        fleet, state, "3.5.0", *WAVES, "--progress-deadline", "2", "--healthy-deadline", "120",
        "--bake", "4", "--max-failures", "1",
    )  # fmt: skip
    lines = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(json.loads(line))
            if lines[-1]["event"] == "host.result" and lines[-1]["host"] == "h2":
                break  # h2's activation is done; its wave waits for h3
        assert lines[-1]["event"] == "host.result" and lines[-1]["status"] == "ok", lines[-1]
        _wait_for(h3.root / "shared" / "hook-started-3.5.0", proc)
        assert not named(lines, "wave.bake")[1:]  # only the canary's wave has baked yet
        os.kill(h2.pid, signal.SIGSTOP)  # h2 hangs: no answer, no refusal
        (h3.root / "shared" / "hook-release-3.5.0").touch()  # now the wave may bake
        rest, err = proc.communicate(timeout=180)
    finally:
        os.kill(h2.pid, signal.SIGCONT)
        (h3.root / "shared" / "hook-release-3.5.0").touch()
    events = lines + [json.loads(x) for x in rest.splitlines()]
    assert proc.returncode == 8, rest + err
    (failed,) = named(events, "host.failed")
    assert failed["host"] == "h2" and failed["code"] == "unresponsive"
    assert "did not answer for 2s during the bake" in failed["message"]
    assert named(events, "wave.bake")[1]["hosts"] == ["h2", "h3"]
    summary = events[-1]
    assert summary["status"] == "partial" and summary["hosts"]["h2"] == "isolated"
    others = {h: c for h, c in currents(fleet).items() if h != "h2"}
    assert others == {h: on("3.5.0") for h in others}


def test_pause_after_canary_then_promote_and_abort(
    fleet: Fleet, state: Path, pkgs: dict[str, Path]
) -> None:
    push(fleet, pkgs["3.6.0"])
    events = rollout(fleet, state, "3.6.0", *WAVES, *FAST, "--pause-after-canary", expect=10)
    rid = events[-1]["rollout"]
    assert events[-1]["status"] == "paused" and named(events, "rollout.paused")
    assert {h: leases_file(fleet, h)[APP]["rollout"] for h in HOSTS} == dict.fromkeys(HOSTS, rid)
    start = currents(fleet)
    assert start["h1"] == on("3.6.0") and all(start[h] != on("3.6.0") for h in HOSTS[1:])
    proc = fleet.cutover("promote", rid, "--state-dir", str(state), "--json", timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["status"] == "rolled_out"
    assert currents(fleet) == {h: on("3.6.0") for h in HOSTS}

    push(fleet, pkgs["3.7.0"])
    events = rollout(fleet, state, "3.7.0", *WAVES, *FAST, "--pause-after-canary", expect=10)
    rid = events[-1]["rollout"]
    assert fleet.agents["h1"].current() == on("3.7.0")
    proc = fleet.cutover("abort", rid, "--state-dir", str(state), "--json", timeout=180)
    assert proc.returncode == 7, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["status"] == "aborted"
    assert currents(fleet) == {h: on("3.6.0") for h in HOSTS}
    assert all(leases_file(fleet, h) == {} for h in HOSTS)  # an abort releases the leases
    for h in HOSTS[1:]:
        assert activations(fleet, h, "3.7.0") == []


def test_a_release_not_staged_everywhere_is_not_rolled_out(
    fleet: Fleet, state: Path, pkgs: dict[str, Path]
) -> None:
    proc = fleet.cutover("push", str(pkgs["3.8.0"]), "--hosts", "h1,h2", "--json")
    assert proc.returncode == 0
    before = {h: fleet.agents[h].snapshot() for h in HOSTS}
    events = rollout(fleet, state, "3.8.0", *WAVES, *FAST, expect=1)
    assert events[-1]["status"] == "halted"
    assert [x.split(" ")[0] for x in events[-1]["not_staged"]] == ["h3", "h4", "h5"]
    assert "cutover push" in events[-1]["reason"]
    assert {h: fleet.agents[h].snapshot() for h in HOSTS} == before


def test_deploy_with_rollout_pushes_then_rolls_out_and_webhooks_get_rollout_events(
    fleet: Fleet, state: Path, pkgs: dict[str, Path]
) -> None:
    with webhook_receiver() as hook:
        fleet.write(webhooks=[{"url": hook.url, "events": ["rollout"]}])
        try:
            proc = fleet.cutover(
                "deploy", str(pkgs["3.8.0"]), "--rollout", *WAVES, *FAST,
                "--state-dir", str(state), "--json", timeout=180,
            )  # fmt: skip
        finally:
            fleet.write()
        received = [r["body"] for r in hook.received]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    assert events[0]["event"] != "rollout.start"  # the push came first
    assert named(events, "step.done")[0]["action"] == "push"
    assert events[-1]["event"] == "summary" and events[-1]["status"] == "rolled_out"
    assert currents(fleet) == {h: on("3.8.0") for h in HOSTS}
    kinds = [b["event"] for b in received]
    assert kinds == [
        "rollout.started", "rollout.canary_healthy", "rollout.wave_done", "rollout.wave_done",
        "rollout.finished",
    ]  # fmt: skip
    assert (
        received[-1]["status"] == "rolled_out" and received[-1]["rollout"] == events[-1]["rollout"]
    )
    assert all(b["text"] and b["fleet"] for b in received)


def test_an_inconclusive_canary_pauses_with_the_reason_and_resume_retries_the_wave(
    fleet: Fleet, state: Path, pkgs: dict[str, Path]
) -> None:
    push(fleet, pkgs["3.9.0"])
    probe = fleet.agents["h1"].root / "shared" / "errors.log"
    probe.mkdir()  # the log check cannot read a directory: inconclusive (our side), not fail
    try:
        events = rollout(fleet, state, "3.9.0", *WAVES, *FAST, "--max-failures", "0", expect=10)
    finally:
        probe.rmdir()

    summary = events[-1]
    rid = summary["rollout"]
    assert summary["status"] == "paused"
    assert summary["failures"] == [] and summary["counts"]["failed"] == 0  # not a failure
    (paused,) = named(events, "rollout.paused")
    assert paused["wave"] == 0
    assert "live health inconclusive" in paused["reason"] and "errors-log" in paused["reason"]
    assert "not a regular file" in paused["reason"]
    assert f"cutover rollout --resume {rid}" in paused["reason"]
    assert paused["inconclusive"]["h1"]["check"] == "live:errors-log"
    assert not named(events, "host.failed") and not named(events, "rollout.reverting")
    assert len(named(events, "wave.start")) == 1
    # the canary's agent reverted it; no other host was touched; the leases are kept
    assert currents(fleet) == {h: on("3.8.0") for h in HOSTS}
    assert [e["event"] for e in activations(fleet, "h1", "3.9.0")][-1] == "activate.reverted"
    for h in HOSTS[1:]:
        assert activations(fleet, h, "3.9.0") == []
    assert {h: leases_file(fleet, h)[APP]["rollout"] for h in HOSTS} == dict.fromkeys(HOSTS, rid)

    # the cause is gone: resuming retries the canary, then the waves
    events = rollout(fleet, state, "--resume", rid, *FAST, expect=0)
    assert events[-1]["status"] == "rolled_out"
    assert [w["hosts"] for w in named(events, "wave.start")] == [["h1"], ["h2", "h3"], ["h4", "h5"]]
    assert currents(fleet) == {h: on("3.9.0") for h in HOSTS}
    assert all(leases_file(fleet, h) == {} for h in HOSTS)


def test_a_paused_rollout_keeps_its_leases_so_another_is_refused_and_a_steal_is_journaled(
    fleet: Fleet, state: Path, tmp_path: Path, pkgs: dict[str, Path]
) -> None:
    push(fleet, pkgs["3.10.0"])
    events = rollout(
        fleet, state, "3.10.0", *WAVES, *FAST, "--pause-after-canary", "--pause-lease", "600",
        expect=10,
    )  # fmt: skip
    rid = events[-1]["rollout"]
    (held,) = named(events, "lease.held")
    assert held["hosts"] == HOSTS and held["ttl_s"] == 600
    leases = {h: leases_file(fleet, h)[APP] for h in HOSTS}
    assert {h: (x["rollout"], x["ttl_s"]) for h, x in leases.items()} == dict.fromkeys(
        HOSTS, (rid, 600)
    )

    # another controller (its own state dir) is refused, naming the paused rollout
    before = {h: fleet.agents[h].snapshot() for h in HOSTS}
    other = tmp_path / "other-state"
    refused = fleet.cutover("rollout", "3.10.0", "--state-dir", str(other), "--json", *WAVES)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    refusal = json.loads(refused.stdout.splitlines()[-1])
    assert refusal["error"] == "locked" and rid in refusal["message"]
    assert "paused rollout keeps its leases" in refusal["message"]
    assert {h: fleet.agents[h].snapshot() for h in HOSTS} == before
    assert {h: leases_file(fleet, h)[APP]["id"] for h in HOSTS} == {
        h: x["id"] for h, x in leases.items()
    }

    # --steal takes over; every agent journals it in the app's journal, actor and previous holder
    proc = fleet.cutover(
        "rollout", "3.10.0", "--state-dir", str(other), "--json", *WAVES, *FAST, "--steal",
        timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    thief = json.loads(proc.stdout.splitlines()[-1])["rollout"]
    for h in HOSTS:
        (stolen,) = [e for e in fleet.agents[h].journal() if e["event"] == "lease.stolen"]
        assert stolen["rollout"] == thief
        assert (
            stolen["replaced"]["rollout"] == rid and stolen["replaced"]["lease"] == leases[h]["id"]
        )
        assert (
            stolen["actor"] == f"api:deploy/{stolen['keyid'][:16]}" and len(stolen["keyid"]) == 64
        )
    assert currents(fleet) == {h: on("3.10.0") for h in HOSTS}
    assert all(leases_file(fleet, h) == {} for h in HOSTS)


FREEZE = (
    f'[[apps.{APP}.freeze.dated]]\nname = "year-end"\n'
    "from = 2000-01-01T00:00:00Z\nto = 2100-01-01T00:00:00Z"
)


def _set_freeze(fleet: Fleet, keys: Keys, hosts: list[str], version: str, on: bool) -> None:
    """(Un)freeze ``hosts`` by editing their config; returns once each agent reloaded it."""
    for h in hosts:
        agent = fleet.agents[h]
        agent.settings["app_toml"] = FREEZE if on else ""
        agent.write_config()

    async def frozen(h: str) -> bool:
        async with fleet.agents[h].client(keys.deploy) as client:
            return version in (await client.app(APP)).frozen

    for h in hosts:
        while asyncio.run(frozen(h)) != on:
            time.sleep(0.05)


def test_a_freeze_met_between_waves_stops_before_the_next_wave_and_resume_continues(
    fleet: Fleet, state: Path, pkgs: dict[str, Path], keys: Keys
) -> None:
    push(fleet, pkgs["3.11.0"])
    events = rollout(fleet, state, "3.11.0", *WAVES, *FAST, "--pause-after-canary", expect=10)
    rid = events[-1]["rollout"]
    # while it is paused after the canary, a freeze window reaches the hosts of wave 2
    _set_freeze(fleet, keys, ["h4", "h5"], "3.11.0", on=True)
    try:
        before = {h: fleet.agents[h].snapshot() for h in ("h4", "h5")}
        proc = fleet.cutover("promote", rid, "--state-dir", str(state), "--json", timeout=180)
        assert proc.returncode == 10, proc.stdout + proc.stderr
        events = [json.loads(x) for x in proc.stdout.splitlines()]
        check_schemas(events)
        summary = events[-1]
        assert summary["status"] == "paused" and summary["failures"] == []
        (paused,) = named(events, "rollout.paused")
        assert paused["wave"] == 2 and sorted(paused["frozen"]) == ["h4", "h5"]
        assert "'year-end'" in paused["reason"] and "2100-01-01" in paused["reason"]
        assert f"cutover rollout --resume {rid}" in paused["reason"]
        assert [w["hosts"] for w in named(events, "wave.start")] == [["h2", "h3"]]
        assert not named(events, "host.failed") and not named(events, "rollout.reverting")
        assert currents(fleet) == {
            **{h: on("3.11.0") for h in ("h1", "h2", "h3")}, "h4": on("3.10.0"), "h5": on("3.10.0"),
        }  # fmt: skip
        assert {h: fleet.agents[h].snapshot() for h in ("h4", "h5")} == before
        assert {h: leases_file(fleet, h)[APP]["rollout"] for h in HOSTS} == dict.fromkeys(
            HOSTS, rid
        )
    finally:
        _set_freeze(fleet, keys, ["h4", "h5"], "3.11.0", on=False)

    events = rollout(fleet, state, "--resume", rid, *FAST, expect=0)
    assert events[-1]["status"] == "rolled_out"
    assert [w["hosts"] for w in named(events, "wave.start")] == [["h4", "h5"]]
    assert currents(fleet) == {h: on("3.11.0") for h in HOSTS}
    assert all(leases_file(fleet, h) == {} for h in HOSTS)
