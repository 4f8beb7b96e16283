"""The fleet commands end to end: five real agents on 127.0.0.1 driven by the real ``cutover``.

One fleet per module (started in parallel); tests run in file order and each pushes what it
needs first (pushing is idempotent), so the state they build on is explicit:

    web-1  groups web, edge      web-2  groups web, edge      web-3  groups web
    api-1  group  api            rogue-1 group edge — trusts another release key (refuses all)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cutover.agent.errors import AuthError
from tests.e2e.conftest import APP, BIN, SLOW_VERSION, Keys, sigint_as_at_a_terminal
from tests.e2e.fleet_fixture import Fleet, dead_url, results, trust_release_key, webhook_receiver
from tests.e2e.nginx_fixture import ensure_nginx, run_nginx

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GROUPS = {
    "web-1": ["web", "edge"],
    "web-2": ["web", "edge"],
    "web-3": ["web"],
    "api-1": ["api"],
    "rogue-1": ["edge"],
}
HOST_RESULT_KEYS = {
    "host", "url", "action", "status", "exit_code", "error", "message", "operation",
    "version", "current", "previous", "duration_s", "transfer",
}  # fmt: skip
SUMMARY_KEYS = {
    "ts",
    "event",
    "action",
    "app",
    "version",
    "outcome",
    "exit_code",
    "counts",
    "hosts",
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet"), keys, GROUPS)
    trust_release_key(f.agents["rogue-1"], "stranger")
    f.start()
    yield f
    f.stop()


def _current(fleet: Fleet, *names: str) -> dict[str, str | None]:
    return {n: fleet.agents[n].current() for n in names}


def test_push_to_a_group_reports_the_refusing_host_and_stages_the_others(
    fleet: Fleet, packages: dict[str, Path]
) -> None:
    rogue_before = fleet.agents["rogue-1"].snapshot()
    events = fleet.stream("push", str(packages["1.0.0"]), "--group", "edge", expect=8)

    by_host = results(events)
    assert set(by_host) == {"web-1", "web-2", "rogue-1"}
    assert by_host["web-1"]["status"] == by_host["web-2"]["status"] == "ok"
    rogue = by_host["rogue-1"]
    assert rogue["status"] == "refused" and rogue["error"] == "untrusted", json.dumps(rogue)
    assert rogue["exit_code"] == 3 and by_host["web-1"]["exit_code"] == 0
    assert "0 of the required 1 trusted signatures" in rogue["message"]
    assert rogue["operation"]  # the agent's operation id, to look it up there
    for name in ("web-1", "web-2"):
        assert (fleet.agents[name].root / "releases" / "1.0.0" / "VERSION").read_text() == "1.0.0\n"
        assert fleet.agents[name].current() is None  # push never activates
    assert fleet.agents["rogue-1"].snapshot() == rogue_before  # the refusal changed nothing

    # the NDJSON stream: per-host start, progress (bytes), phases, one result each, a summary
    summary = events[-1]
    assert set(summary) == SUMMARY_KEYS
    assert summary["outcome"] == "partial" and summary["app"] == APP
    assert summary["counts"] == {
        "ok": 2,
        "unchanged": 0,
        "refused": 1,
        "unreachable": 0,
        "failed": 0,
    }
    assert all(set(h) == HOST_RESULT_KEYS for h in summary["hosts"])
    # fresh hosts hold none of the files: the delta push sends them the full package
    size = packages["1.0.0"].stat().st_size
    assert by_host["web-1"]["transfer"] == {
        "mode": "full",
        "sent_bytes": size,
        "package_bytes": size,
        "saved_bytes": 0,
        "files_sent": None,
        "reason": "the host holds none of it",
    }
    names = [e["event"] for e in events]
    assert names.count("host.start") == names.count("host.result") == 3
    uploads = [e for e in events if e["event"] == "host.progress" and e["step"] == "upload"]
    assert {e["host"] for e in uploads} == {"web-1", "web-2", "rogue-1"}
    assert all(e["done"] == e["total"] for e in uploads if e["done"] == uploads[-1]["total"])
    phases = {(e["host"], e["phase"]) for e in events if e["event"] == "host.phase"}
    assert {("web-1", "verified"), ("web-1", "extracted"), ("web-1", "staged")} <= phases
    assert all(isinstance(e["ts"], str) for e in events)


def test_push_refused_by_every_selected_host_exits_3(
    fleet: Fleet, packages: dict[str, Path]
) -> None:
    before = fleet.agents["rogue-1"].snapshot()
    events = fleet.stream("push", str(packages["1.0.0"]), "--hosts", "rogue-1", expect=3)
    assert events[-1]["outcome"] == "refused"
    assert fleet.agents["rogue-1"].snapshot() == before


def test_re_push_is_a_no_op(fleet: Fleet, packages: dict[str, Path]) -> None:
    before = {n: fleet.agents[n].snapshot() for n in ("web-1", "web-2")}
    events = fleet.stream("push", str(packages["1.0.0"]), "--hosts", "web-1,web-2", expect=0)
    assert {h["status"] for h in events[-1]["hosts"]} == {"unchanged"}
    after = {n: fleet.agents[n].snapshot() for n in ("web-1", "web-2")}
    assert after == before  # nothing staged twice, no journal entry

    human = fleet.cutover("push", str(packages["1.0.0"]), "--hosts", "web-1,web-2")
    assert human.returncode == 0, human.stderr
    rows = [line for line in human.stdout.splitlines() if "web-" in line]
    assert len(rows) == 2 and all("unchanged" in r and "already staged" in r for r in rows)
    assert "push: ok (2/2 hosts ok, exit 0)" in human.stdout


def test_push_with_package_url_through_nginx(
    fleet: Fleet, packages: dict[str, Path], tmp_path: Path
) -> None:
    """web-1 and web-2 hold 1.0.0 already (unchanged); web-3 fetches it from nginx."""
    binary = ensure_nginx()
    store = packages["1.0.0"].parent
    with run_nginx(binary, tmp_path / "nginx", store, port=fleet.store_port) as nginx:
        url = f"{nginx.url}/{packages['1.0.0'].name}"
        events = fleet.stream("push", "--package-url", url, "--group", "web", expect=0)
        assert nginx.errors() == []
    by_host = results(events)
    assert by_host["web-3"]["status"] == "ok" and by_host["web-3"]["version"] == "1.0.0"
    assert by_host["web-1"]["status"] == by_host["web-2"]["status"] == "unchanged"
    downloads = {
        e["host"] for e in events if e["event"] == "host.phase" and e["phase"] == "downloading"
    }
    assert downloads == {"web-1", "web-2", "web-3"}
    assert not any(e["event"] == "host.progress" and e["step"] == "upload" for e in events)
    assert (fleet.agents["web-3"].root / "releases" / "1.0.0" / "VERSION").read_text() == "1.0.0\n"


def test_activate_and_rollback_across_the_group(fleet: Fleet, packages: dict[str, Path]) -> None:
    for version in ("1.0.0", "1.1.0"):
        fleet.stream("push", str(packages[version]), "--group", "web", expect=0)
    events = fleet.stream("activate", "1.0.0", "--group", "web", expect=0)
    assert {h["current"] for h in events[-1]["hosts"]} == {"1.0.0"}
    fleet.stream("activate", "1.1.0", "--group", "web", expect=0)
    assert set(_current(fleet, "web-1", "web-2", "web-3").values()) == {"releases/1.1.0"}

    again = fleet.stream("activate", "1.1.0", "--group", "web", expect=0)
    assert {h["status"] for h in again[-1]["hosts"]} == {"unchanged"}

    back = fleet.stream("rollback", "--group", "web", expect=0)
    assert {(h["status"], h["current"]) for h in back[-1]["hosts"]} == {("ok", "1.0.0")}
    assert set(_current(fleet, "web-1", "web-2", "web-3").values()) == {"releases/1.0.0"}
    assert fleet.agents["api-1"].current() is None  # outside the selection: untouched
    for name in ("web-1", "web-2", "web-3"):
        events_ = [e["event"] for e in fleet.agents[name].journal()]
        assert events_[-1] == "rollback.done"


def test_deploy_in_one_command_with_a_live_and_a_dead_webhook(
    fleet: Fleet, packages: dict[str, Path]
) -> None:
    dead = dead_url() + "/hook"
    with webhook_receiver() as receiver:
        fleet_file = fleet.write(
            webhooks=[{"url": receiver.url, "timeout_s": 5}, {"url": dead, "timeout_s": 2}]
        )
        try:
            events = fleet.stream("deploy", str(packages["1.2.0"]), "--group", "web", expect=0)
        finally:
            fleet.write()
        received = list(receiver.received)
    assert fleet_file == fleet.path
    summary = events[-1]
    assert summary["action"] == "deploy" and summary["activated"] is True
    assert summary["strategy"] == "all-at-once" and summary["outcome"] == "ok"
    steps = [e for e in events if e["event"] == "step.done"]
    assert [s["action"] for s in steps] == ["push", "activate"]
    assert set(_current(fleet, "web-1", "web-2", "web-3").values()) == {"releases/1.2.0"}

    # the live receiver got push, activate and deploy, each with a Slack-compatible text
    assert [r["body"]["event"] for r in received] == ["push", "activate", "deploy"] or sorted(
        r["body"]["event"] for r in received
    ) == ["activate", "deploy", "push"]
    for r in received:
        assert r["content_type"] == "application/json"
        body = r["body"]
        assert body["app"] == APP and body["version"] == "1.2.0" and body["outcome"] == "ok"
        assert isinstance(body["text"], str) and "1.2.0" in body["text"] and "3/3" in body["text"]
        assert {h["host"] for h in body["hosts"]} == {"web-1", "web-2", "web-3"}
    # the dead webhook is reported, never fatal; its URL's secret path is not printed
    failed = [e for e in events if e["event"] == "notify.failed"]
    assert {e["notification"] for e in failed} == {"push", "activate", "deploy"}
    assert all(e["webhook"].endswith("/…") and "/hook" not in e["webhook"] for e in failed)
    sent = [e for e in events if e["event"] == "notify.sent"]
    assert len(sent) == 3 and "secret" not in json.dumps(events)


def test_deploy_stops_before_activation_when_a_host_refuses(
    fleet: Fleet, packages: dict[str, Path]
) -> None:
    before = _current(fleet, "web-1", "web-2")
    rogue_before = fleet.agents["rogue-1"].snapshot()
    events = fleet.stream("deploy", str(packages["1.1.0"]), "--group", "edge", expect=8)
    assert events[-1]["activated"] is False
    assert [s["action"] for s in events if s["event"] == "step.done"] == ["push"]
    assert _current(fleet, "web-1", "web-2") == before  # nothing activated anywhere
    assert fleet.agents["rogue-1"].snapshot() == rogue_before


def test_rollback_with_nothing_to_roll_back_exits_1(fleet: Fleet) -> None:
    before = fleet.agents["api-1"].snapshot()
    events = fleet.stream("rollback", "--hosts", "api-1", expect=1)
    host = results(events)["api-1"]
    assert host["status"] == "failed" and host["error"] in ("invalid_state", "not_found")
    assert fleet.agents["api-1"].snapshot() == before


def test_log_merges_the_journals(fleet: Fleet) -> None:
    data = fleet.document("log", "--group", "web", "--limit", "200", expect=0)
    entries = data["entries"]
    assert data["missing"] == {} and data["exit_code"] == 0
    assert [e["ts"] for e in entries] == sorted(e["ts"] for e in entries)
    assert {e["host"] for e in entries} == {"web-1", "web-2", "web-3"}
    for name in ("web-1", "web-2", "web-3"):
        mine = [(e["event"], e["version"]) for e in entries if e["host"] == name]
        assert ("stage.done", "1.2.0") in mine and ("rollback.done", "1.0.0") in mine
        assert mine[-1] == ("activate.done", "1.2.0")
    activated = [e for e in entries if e["event"] == "activate.done" and e["version"] == "1.2.0"]
    assert all(e["actor"].startswith("api:deploy/") and e["previous"] == "1.0.0" for e in activated)
    assert all(
        set(e)
        == {
            "ts",
            "host",
            "event",
            "result",
            "version",
            "previous",
            "actor",
            "checkpoint_ref",
            "detail",
            "seq",
        }
        for e in entries
    )
    human = fleet.cutover("log", "--group", "web")
    assert human.returncode == 0 and "rolled back" in human.stdout and "activated" in human.stdout


def test_status_shows_drift_and_an_unreachable_host(fleet: Fleet) -> None:
    fleet.stream("rollback", "--hosts", "web-3", expect=0)  # web-3 back on 1.0.0: drift in web
    killed = fleet.agents["rogue-1"]
    killed.stop(signal.SIGKILL)

    data = fleet.document("status", expect=8)
    rows = {r["host"]: r for r in data["hosts"]}
    assert data["unreachable"] == ["rogue-1"] and data["drift"] is True
    assert rows["rogue-1"]["reachable"] is False and "unreachable" in rows["rogue-1"]["error"]
    assert rows["web-3"]["drift"] is True and rows["web-3"]["current"] == "1.0.0"
    assert rows["web-3"]["expected"] == "1.2.0" and rows["web-3"]["drift_groups"] == ["web"]
    assert rows["web-1"]["drift"] is False and rows["web-1"]["current"] == "1.2.0"
    assert rows["web-1"]["previous"] == "1.0.0" and rows["web-1"]["health"] == "live pass"
    assert rows["api-1"]["current"] is None and rows["api-1"]["drift"] is False

    human = fleet.cutover("status")
    assert human.returncode == 8
    assert "unreachable" in human.stdout and "drift: web runs 1.2.0" in human.stdout

    assert fleet.document("status", "--hosts", "rogue-1", expect=9)["unreachable"] == ["rogue-1"]
    other = fleet.document("status", "--app", "nosuch", "--hosts", "web-1,web-2", expect=1)
    assert other["unreachable"] == [] and set(other["errors"]) == {"web-1", "web-2"}
    assert all(e.startswith("not_found: ") for e in other["errors"].values())
    events = fleet.stream("activate", "1.2.0", "--hosts", "rogue-1", expect=9)
    assert results(events)["rogue-1"]["error"] == "unreachable"


def test_a_host_nobody_answers_for_is_unreachable(fleet: Fleet, packages: dict[str, Path]) -> None:
    extra = f'\n[hosts.ghost-1]\nurl = "{dead_url()}"\ngroups = ["ghost"]\n'
    path = fleet.write(extra_hosts=extra)
    try:
        events = fleet.stream("push", str(packages["1.0.0"]), "--group", "ghost", expect=9)
    finally:
        fleet.write()
    assert results(events)["ghost-1"]["status"] == "unreachable"
    assert path.exists()


async def test_an_upload_with_a_wrong_precomputed_digest_is_refused(
    fleet: Fleet, packages: dict[str, Path]
) -> None:
    """The digest a push computes once is only a claim: the agent checks the body against it."""
    agent = fleet.agents["web-1"]
    before = agent.snapshot()
    async with agent.client() as client:
        with pytest.raises(AuthError) as info:
            await client.upload(APP, "1.2.0", packages["1.2.0"], sha256=b"\0" * 32)
    assert info.value.code == "digest_mismatch"
    assert agent.snapshot() == before


def test_ctrl_c_exits_130_and_the_agent_finishes_its_operation(
    fleet: Fleet, packages: dict[str, Path]
) -> None:
    """The controller dying mid-command never leaves a host half-done: the agent finishes."""
    api = fleet.agents["api-1"]
    shared = api.root / "shared"
    fleet.stream("push", str(packages[SLOW_VERSION]), "--hosts", "api-1", expect=0)
    env = {**os.environ, "CUTOVER_FLEET": str(fleet.path)}
    with sigint_as_at_a_terminal():  # Ctrl-C reaches it also when pytest runs as a background job
        proc = subprocess.Popen(
            [str(BIN / "cutover"), "activate", SLOW_VERSION, "--hosts", "api-1", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while not (shared / "hook-started").exists():  # the post_activate hook is running
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        (shared / "hook-release").touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "interrupted: operations already started on agents run to their end" in err
    assert "Traceback" not in err

    deadline = time.monotonic() + 60
    while (row := fleet.document("status", "--hosts", "api-1", expect=0)["hosts"][0])["busy"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert row["current"] == SLOW_VERSION and api.current() == f"releases/{SLOW_VERSION}"
