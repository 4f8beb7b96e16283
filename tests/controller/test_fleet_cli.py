"""Fleet commands refuse bad input before contacting any host: exit 2, a JSON error document
under --json, a one-line message (no traceback) for humans."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cutover.agent.keys import generate_keypair
from cutover.controller.cli import main
from cutover.controller.rollout import RolloutStore
from tests.conftest import BIN


def cutover(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("CUTOVER_FLEET", "CUTOVER_KEY")}
    return subprocess.run(
        [str(BIN / "cutover"), *args],
        capture_output=True,
        text=True,
        env={**full, **(env or {})},
        check=False,
    )


@pytest.fixture
def fleet_file(tmp_path: Path) -> Path:
    generate_keypair(tmp_path / "ops")
    path = tmp_path / "fleet.toml"
    path.write_text(
        'app = "ame"\ncontroller_key = "ops"\n\n[hosts.web-1]\nurl = "http://127.0.0.1:9"\ngroups = ["web"]\n'
    )
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["status", "--group", "db"], "no group 'db'; groups: web", id="unknown-group"),
        pytest.param(["activate", "1.0", "--hosts", "web-9"], "unknown host(s) 'web-9'", id="unknown-host"),
        pytest.param(["push"], "give a PACKAGE file or --package-url URL", id="no-package"),
        pytest.param(["push", "--package-url", "ftp://x/ame-1.cutover"], "use an http:// or https:// URL", id="bad-url"),
        pytest.param(["push", "--package-url", "https://s3.example/presigned?sig=1"], "pass --version V", id="url-without-version"),
        pytest.param(["rollback", "--to", "../etc"], "--to '../etc'", id="bad-version"),
        pytest.param(["log", "--limit", "0"], "--limit must be from 1", id="bad-limit"),
        pytest.param(["status", "--max-parallel", "0"], "--max-parallel must be at least 1", id="bad-parallel"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_before_any_host_is_contacted(
    fleet_file: Path, argv: list[str], message: str
) -> None:
    proc = cutover(*argv, "--fleet", str(fleet_file), "--json")
    assert proc.returncode == 2, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {"error", "message", "exit_code"} and doc["exit_code"] == 2
    assert message in doc["message"]
    human = cutover(*argv, "--fleet", str(fleet_file))
    assert human.returncode == 2 and human.stdout == ""
    assert human.stderr.startswith("error: ") and "Traceback" not in human.stderr


def test_fleet_file_comes_from_the_environment_and_errors_name_host_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.toml"
    bad.write_text('[hosts.web-1]\nurl = "http://127.0.0.1:9"\ngroup = ["web"]\n')
    proc = cutover("status", env={"CUTOVER_FLEET": str(bad)})
    assert proc.returncode == 2
    assert (
        f"fleet file {bad}: host 'web-1': key 'group': Extra inputs are not permitted"
        in proc.stderr
    )


def test_a_controller_key_is_required(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('app = "ame"\n[hosts.web-1]\nurl = "http://127.0.0.1:9"\n')
    proc = cutover("status", "--fleet", str(path))
    assert (
        proc.returncode == 2
        and "no controller key: pass --key FILE, set CUTOVER_KEY" in proc.stderr
    )
    generate_keypair(tmp_path / "k")
    proc = cutover(
        "status", "--fleet", str(path), "--json", env={"CUTOVER_KEY": str(tmp_path / "k")}
    )
    assert proc.returncode == 9  # the key is found; the only host does not answer
    assert json.loads(proc.stdout)["unreachable"] == ["web-1"]


def test_a_missing_package_file_exits_5_like_the_agent_cli(fleet_file: Path) -> None:
    proc = cutover("push", "missing.cutover", "--fleet", str(fleet_file), "--json")
    assert proc.returncode == 5
    assert "cannot open package missing.cutover" in json.loads(proc.stdout)["message"]


@pytest.mark.parametrize(
    "argv",
    [
        ["rollout"],
        ["rollout", "1.0.0", "--resume", "r-x"],
        ["rollout", "1.0.0", "--canary", "0"],
        ["rollout", "1.0.0", "--batch", "150%"],
        ["rollout", "1.0.0", "--max-failures", "many"],
        ["rollout", "1.0.0", "--progress-deadline", "0"],
        ["rollout", "1.0.0", "--lease-ttl", "1"],
        ["rollout", "1.0.0", "--pause-lease", "7200"],
        ["promote", "r-x", "--pause-lease", "1"],
        ["rollout", "../etc"],
    ],
    ids=[
        "no-version", "version-and-resume", "zero-canary", "percent-over-100", "bad-budget",
        "zero-deadline", "lease-ttl-too-short", "pause-lease-past-an-hour",
        "promote-pause-lease-too-short", "bad-version",
    ],
)  # fmt: skip
def test_rollout_usage_errors_exit_2_before_any_host(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = tmp_path / "fleet.toml"
    key = tmp_path / "k"
    generate_keypair(key)
    fleet.write_text(
        f'app = "ame"\ncontroller_key = "{key}"\n[hosts.a]\nurl = "http://127.0.0.1:9"\n'
    )
    state = tmp_path / "state"
    code = main([*argv, "--fleet", str(fleet), "--state-dir", str(state), "--json"])
    assert code == 2
    out = json.loads(capsys.readouterr().out)
    assert out["exit_code"] == 2 and out["error"] == "bad_config"
    assert (
        not (state / "rollouts.db").exists() or not RolloutStore(state).list()
    )  # nothing recorded
