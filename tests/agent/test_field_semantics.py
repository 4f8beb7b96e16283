"""Issue 9 (field report), the semantics items: rollback direction and --restore (6), empty
checkpoint references (7), bad vs failed and ``clear-bad`` (8), the ``on_failure`` hook phase (9),
retention of bad releases (10), what the records show (12), ``previous`` in every result (13), and
honest statuses (14).

Real packages, real hook subprocesses, the real ``cutover-agent`` CLI where its exit code or JSON
is the contract; set-up runs in-process (helpers shared with tests/agent/test_lifecycle.py).
"""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cutover.agent.config import load_config
from cutover.agent.errors import ActivationFailedError, ExitCode
from cutover.agent.lifecycle.manager import AppManager
from cutover.controller.build import build_package
from tests.agent.test_lifecycle import (
    CHECKPOINT,
    MIGRATING,
    RESTORE,
    configure,
    deploy,
    health,
    hook,
    lines,
    mark,
    op,
    serve,  # noqa: F401 (a fixture)
    served_version,
    shared,
)
from tests.conftest import BIN, Host, PackageFactory

A, B, C, D, E = "1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0"
FAIL = 'echo "boom" >&2; exit 3'


def set_keep(host: Host, keep: int) -> None:
    text = host.config.read_text()
    assert text.count("keep = 5\n") == 1
    host.config.write_text(text.replace("keep = 5\n", f"keep = {keep}\n"))


# ---------------------------------------------------------------------------------- item 6
@pytest.fixture
def forward(host: Host, make_package: PackageFactory) -> Host:
    """A and B both migrate (checkpoint ``dump-ref-123`` before each); B was rolled back to A,
    so ``--to B`` moves forward again."""
    configure(host, keys={"checkpoint": ["sh", "-c", CHECKPOINT], "restore": ["sh", "-c", RESTORE]})
    deploy(host, make_package(A, toml=MIGRATING), A)
    deploy(host, make_package(B, toml=MIGRATING), B)
    op(host, "rollback")
    assert host.current == f"releases/{A}"
    return host


def test_rollback_forward_with_restore_is_refused_and_changes_nothing(forward: Host) -> None:
    host = forward
    before = host.snapshot()

    out = host.cli_json("rollback", "--to", B, "--restore", expect=ExitCode.FAILED)

    assert "forward" in out["message"] and "--restore" in out["message"]
    assert host.snapshot() == before
    assert not (shared(host) / "restored").exists()


def test_rollback_forward_does_not_warn_about_rolling_back(forward: Host) -> None:
    host = forward

    out = host.cli_json("rollback", "--to", B)

    assert out["current"] == B and host.current == f"releases/{B}"
    assert not any("rolling back across" in w for w in out.get("warnings", [])), out
    assert not (shared(host) / "restored").exists()
    done = [e for e in host.journal() if e["event"] == "rollback.done"]
    assert done[-1]["database_restored"] is False


# ---------------------------------------------------------------------------------- item 7
def test_checkpoint_that_prints_nothing_is_a_failed_checkpoint(
    host: Host, make_package: PackageFactory
) -> None:
    configure(host, keys={"checkpoint": ["/bin/true"]})
    deploy(host, make_package(A), A)
    toml = MIGRATING + hook("pre_activate", "pre", mark("pre_activate"))
    op(host, "stage", make_package(B, toml=toml))
    before = host.snapshot()

    out = host.cli_json("activate", B, expect=ExitCode.FAILED)

    assert "checkpoint" in out["message"] and "printed no reference" in out["message"]
    assert host.snapshot() == before
    assert host.state()["releases"][B]["checkpoint_ref"] is None
    assert not (shared(host) / "marker").exists()


# ---------------------------------------------------------------------------------- item 8
def test_failing_host_hook_marks_failed_retryable_then_activates(
    host: Host, make_package: PackageFactory
) -> None:
    """A host-local post_activate hook fails: B is reverted and marked ``failed`` (not bad); once
    the host is fixed, activating B again works."""
    flag = host.tmp / "host-broken"
    configure(
        host,
        hooks={"post_activate": [("host-reload", f'test ! -e "{flag}" || {{ {FAIL}; }}')]},
    )
    deploy(host, make_package(A), A)
    flag.write_text("1")
    op(host, "stage", make_package(B))

    out = host.cli_json("activate", B, expect=ExitCode.REVERTED)

    assert host.current == f"releases/{A}"
    rec = host.state()["releases"][B]
    assert rec["status"] == "failed" and rec["installed"] is True
    assert "host-local" in out["message"] and "retry" in out["message"]
    assert "marked bad" not in out["message"]
    reverted = [e for e in host.journal() if e["event"] == "activate.reverted"][-1]
    assert reverted["marked_bad"] is False and reverted["marked_failed"] is True

    flag.unlink()
    again = host.cli_json("activate", B)
    assert again["current"] == B and host.state()["releases"][B]["status"] == "active"


def test_failing_release_hook_marks_bad_and_clear_bad_makes_it_activatable(
    host: Host, make_package: PackageFactory
) -> None:
    deploy(host, make_package(A), A)
    op(host, "stage", make_package(B, toml=hook("post_activate", "migrate", FAIL)))

    out = host.cli_json("activate", B, expect=ExitCode.REVERTED)
    assert "marked bad" in out["message"]
    assert host.state()["releases"][B]["status"] == "bad"

    # clear-bad of a release that is not bad is refused and changes nothing
    before = host.snapshot()
    refused = host.cli_json("clear-bad", A, expect=ExitCode.FAILED)
    assert "not marked bad" in refused["message"]
    assert host.snapshot() == before

    cleared = host.cli_json("clear-bad", B)
    assert cleared["version"] == B and cleared["current"] == A
    rec = host.state()["releases"][B]
    assert rec["status"] == "staged" and rec["reason"] == ""
    entry = [e for e in host.journal() if e["event"] == "clear_bad"][-1]
    assert entry["version"] == B and entry["actor"].startswith("cli:")
    assert "activation failed" in entry["was"]
    assert host.current == f"releases/{A}"


# ---------------------------------------------------------------------------------- item 9
def test_on_failure_hooks_run_when_pre_activate_fails(
    host: Host, make_package: PackageFactory
) -> None:
    """``artisan down`` in pre_activate, then a failing step: on_failure (``up``) runs."""
    deploy(host, make_package(A), A)
    toml = (
        hook("pre_activate", "down", mark("down"))
        + hook("pre_activate", "migrate", FAIL)
        + hook("on_failure", "up", mark("up"))
    )
    op(host, "stage", make_package(B, toml=toml))
    before = host.snapshot()

    host.cli_json("activate", B, expect=ExitCode.FAILED)

    assert [ln.split()[0] for ln in lines(shared(host) / "marker")] == ["down", "up"]
    assert host.snapshot() == before
    assert any(e["event"] == "hooks.done" and e["phase"] == "on_failure" for e in host.journal())


def test_on_failure_hooks_run_after_a_revert_and_not_on_success(
    host: Host, make_package: PackageFactory
) -> None:
    configure(host, hooks={"on_failure": [("host-up", mark("host-up"))]})
    deploy(host, make_package(A, toml=hook("on_failure", "up", mark("up"))), A)
    assert not (shared(host) / "marker").exists()  # success: on_failure never runs
    toml = hook("post_activate", "migrate", FAIL) + hook("on_failure", "up", mark("up"))
    op(host, "stage", make_package(B, toml=toml))

    with pytest.raises(ActivationFailedError):
        op(host, "activate", B)

    assert host.current == f"releases/{A}"
    assert [ln.split()[:2] for ln in lines(shared(host) / "marker")] == [
        ["up", f"CUTOVER_VERSION={B}"],
        ["host-up", f"CUTOVER_VERSION={B}"],
    ]


# ---------------------------------------------------------------------------------- item 10
def test_bad_releases_are_pruned_first_and_take_no_retention_slot(
    host: Host, make_package: PackageFactory
) -> None:
    set_keep(host, 3)
    deploy(host, make_package(A), A)
    deploy(host, make_package(B), B)
    for v in (C, D):
        op(host, "stage", make_package(v, toml=hook("post_activate", "migrate", FAIL)))
        with pytest.raises(ActivationFailedError):
            op(host, "activate", v)
    deploy(host, make_package(E), E)

    releases = host.state()["releases"]
    assert {v for v, r in releases.items() if r["installed"]} == {A, B, E}
    assert sorted(p.name for p in (host.root / "releases").iterdir()) == [A, B, E]
    assert releases[C]["status"] == releases[D]["status"] == "bad"


# ---------------------------------------------------------------------------------- item 12
def test_records_show_provenance_and_every_phase(host: Host, make_package: PackageFactory) -> None:
    deploy(host, make_package(A), A)
    toml = hook("stage", "build", "true") + hook("post_activate", "reload", "true")
    op(host, "stage", make_package(B, toml=toml))

    act = host.cli_json("activate", B)
    assert act["health"] is not None and act["health"]["phase"] == "live"

    rels = {r["version"]: r for r in host.cli_json("releases")["releases"]}
    rec = rels[B]
    for key in ("build", "commit", "branch", "release_type", "signers", "notes"):
        assert key in rec, key
    assert rec["signers"]
    assert [h["phase"] for h in rec["hooks"]] == ["stage", "post_activate"]
    assert [h["phase"] for h in rec["health"]] == ["staged", "live"]
    status = host.cli_json("status")["apps"][0]
    assert "commit" in {k for r in status["releases"] for k in r}
    done = [e for e in host.journal() if e["event"] == "stage.done"][-1]
    assert done["release_type"] and done["signers"] and "commit" in done


def test_version_probe_outcome_is_a_health_check_event(
    host: Host,
    make_package: PackageFactory,
    serve: Callable[..., str],  # noqa: F811
) -> None:
    async def version(_: web.Request) -> web.Response:
        return web.json_response({"app": "demo", "version": served_version(host)})

    deploy(host, make_package(A), A)
    url = serve(version)
    probe = f'[health.version_probe]\nurl = "{url}/version"\ntimeout_s = 1\ndeadline_s = 5\n'
    op(host, "stage", make_package(B, toml=probe))
    events: list[dict[str, Any]] = []
    cfg = load_config(host.config)
    mgr = AppManager(host.app, cfg.apps[host.app], cfg.policies[host.app], events=events.append)

    res = asyncio.run(mgr.activate(B))

    assert res.details["health"]["version_probe"]["status"] == "pass"
    checks = [e for e in events if e["event"] == "health.check"]
    assert [(e["name"], e["status"]) for e in checks] == [("version_probe", "pass")]


# ---------------------------------------------------------------------------------- item 13, 14
def test_every_result_prints_the_right_previous(host: Host, make_package: PackageFactory) -> None:
    pkg_b = make_package(B)
    deploy(host, make_package(A), A)
    deploy(host, pkg_b, B)

    assert host.cli_json("verify")["previous"] == A
    assert host.cli_json("pin", B)["previous"] == A
    assert host.cli_json("unpin", B)["previous"] == A
    noop = host.cli_json("stage", str(pkg_b))
    assert noop["previous"] == A
    assert "active" in noop["message"] and "staged" not in noop["message"]


def test_releases_json_says_pruned_for_a_pruned_release(
    host: Host, make_package: PackageFactory
) -> None:
    set_keep(host, 1)
    for v in (A, B, C):
        deploy(host, make_package(v), v)

    rels = {r["version"]: r for r in host.cli_json("releases")["releases"]}

    assert rels[A]["status"] == "pruned" and rels[A]["installed"] is False
    assert (rels[B]["status"], rels[C]["status"]) == ("previous", "active")


# ---------------------------------------------------------------------------------- item 16
def _on_a_tty(argv: list[str]) -> tuple[int, str, str]:
    """Run ``argv`` with stderr on a pseudo-terminal (stdout piped); its exit code, stdout and
    everything written to the terminal."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.stdout is not None
    with proc.stdout:
        stdout = proc.stdout.read()
    return proc.wait(60), stdout, b"".join(chunks).decode(errors="replace")


def test_activate_on_a_tty_shows_phases_checks_and_the_bake_countdown(
    host: Host, make_package: PackageFactory
) -> None:
    deploy(host, make_package(A), A)
    check = {"type": "command", "name": "app-up", "argv": ["true"]}
    toml = hook("post_activate", "reload", "true") + health(
        "live", check, interval_s=0.1, min_healthy_time_s=1.0
    )
    op(host, "stage", make_package(B, toml=toml))

    code, stdout, tty = _on_a_tty(
        [str(BIN / "cutover-agent"), "--config", str(host.config), "activate", B]
    )

    assert code == 0, stdout + tty
    assert f"activated demo {B}" in stdout
    assert "phase: post_activate hooks (1)" in tty
    assert "phase: live health checks (1, must stay healthy 1s)" in tty
    assert "check app-up: ok" in tty
    assert "to go (min_healthy_time 1s)" in tty
    assert "phase: live health checks: pass" in tty
    assert host.current == f"releases/{B}"


def test_build_summary_uses_human_units_and_the_bar_knows_the_total(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "cutover.toml").write_text('app = "demo"\n')
    (app / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 // 2))
    (app / "small.txt").write_text("x" * 100)
    totals: list[int] = []
    done: list[int] = []

    build_package(
        app, tmp_path / "a.cutover", version="1.0.0", progress=done.append, on_total=totals.append
    )

    assert totals == [sum(done)] == [3 * 1024 * 1024 // 2 + 100 + len('app = "demo"\n')]
    proc = subprocess.run(
        [str(BIN / "cutover"), "build", str(app), "--version", "1.0.0", "-o", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1.5 MiB ->" in proc.stdout and " bytes" not in proc.stdout
