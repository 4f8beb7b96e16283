"""A ``cutover-agent`` command imports what it needs and nothing else (issue 12: every process
start paid ~0.3 s of imports). Each case runs the real CLI in a fresh interpreter on a real app
root and records ``sys.modules`` at exit: a behaviour check of the import set, not a timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Host, PackageFactory

# Run first in the child: records, at exit, the modules it imported and the processes it started.
_RECORDING = """
import atexit, json, os, runpy, sys

spawned = []  # processes started (audit events), e.g. ctypes.util.find_library's `ldconfig -p`
sys.addaudithook(
    lambda event, args: spawned.append(f"{event} {args!r}"[:300])
    if event in ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.fork")
    else None
)

def _record():
    with open(os.environ["CUTOVER_TEST_MODULES"], "w") as fh:
        json.dump({"modules": sorted(sys.modules), "spawned": spawned}, fh)

atexit.register(_record)
"""

# Like the `cutover-agent` script (cutover.agent.cli:main), plus the record.
_CLI = (
    _RECORDING
    + """
from cutover.agent.cli import main
sys.exit(main(sys.argv[1:]))
"""
)

# Never needed by an on-host command that succeeds: the HTTP stack (aiohttp, yarl) and the daemon,
# terminal rendering (rich: only for a progress bar on a tty), structlog (only when a line passes
# the CLI's warning level), the controller, the health checks (aiohttp) and the API models.
NEVER = (
    "aiohttp",
    "yarl",
    "rich",
    "structlog",
    "watchfiles",
    "prometheus_client",
    "cutover.controller",
    "cutover.agent.daemon",
    "cutover.agent.api_models",
    "cutover.agent.actions.health",
    "cutover.agent.progress",
)


def _modules(host: Host, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    proc, seen = _observe(host, *args)
    assert seen["spawned"] == []  # no hook runs in these cases: nothing to start a process for
    return proc, set(seen["modules"])


def _observe(
    host: Host, *args: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, list[str]]]:
    record = host.tmp / "modules.json"
    record.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", _CLI, "--config", str(host.config), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUTOVER_TEST_MODULES": str(record)},
        check=False,
    )
    return proc, json.loads(record.read_text())


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_stage_imports_verification_and_extraction_only(
    host: Host, make_package: PackageFactory
) -> None:
    proc, modules = _modules(host, "stage", str(make_package("1.0.0")))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["version"] == "1.0.0"
    assert host.state()["releases"]["1.0.0"]["status"] == "staged"
    assert (host.root / "releases" / "1.0.0" / "VERSION").read_text() == "1.0.0\n"
    assert proc.stderr == ""
    assert _loaded(modules, NEVER) == []
    # the stage's own path is there (the test would pass vacuously otherwise)
    for needed in (
        "cutover.agent.trust.policy",
        "cutover.agent.extract.extractor",
        "cutover.agent.host.installer",
    ):
        assert needed in modules
    # no other operation's module
    assert (
        _loaded(modules, ("cutover.agent.lifecycle.activate", "cutover.agent.lifecycle.rollback"))
        == []
    )


@pytest.mark.parametrize("command", [("status",), ("releases",), ("journal",)])
def test_inspection_commands_import_no_stage_or_activation(
    host: Host, make_package: PackageFactory, command: tuple[str, ...]
) -> None:
    host.cli_json("stage", str(make_package("1.0.0")))
    before = host.snapshot()
    proc, modules = _modules(host, *command)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("{")
    assert host.snapshot() == before  # an inspection changes nothing
    assert _loaded(modules, NEVER) == []
    assert (
        _loaded(
            modules,
            (
                "cutover.agent.extract",
                "cutover.agent.host.installer",
                "cutover.agent.host.seal",
                "cutover.agent.lifecycle.stage",
                "cutover.agent.lifecycle.activate",
            ),
        )
        == []
    )


def test_a_failing_command_still_logs_through_structlog(
    host: Host, make_package: PackageFactory, tmp_path: Path
) -> None:
    """The error line of a failed operation is written as before: the lazy logging set-up
    imports structlog for it (agent/_util/lazylog.py)."""
    host.cli_json("stage", str(make_package("1.0.0")))
    before = host.snapshot()
    proc, modules = _modules(host, "activate", "9.9.9")
    assert proc.returncode == 5, proc.stderr
    assert json.loads(proc.stdout)["error"] == "not_found"
    assert host.snapshot() == before
    assert "structlog" in modules
    line = json.loads(proc.stderr.splitlines()[-1])
    assert (line["event"], line["level"], line["outcome"]) == (
        "lifecycle_operation",
        "error",
        "failed",
    )


# `python -m cutover.agent.worker <daemon pid> <log format>`, plus the record.
_WORKER = (
    _RECORDING
    + """
runpy.run_module("cutover.agent.worker", run_name="__main__", alter_sys=True)
"""
)


def test_a_ready_stage_worker_holds_the_job_path_only(tmp_path: Path) -> None:
    """A stage worker says ready with verification and extraction imported (a spare is warm for
    its job) and nothing of the daemon, the config or the HTTP stack; without a job it exits 0."""
    record = tmp_path / "modules.json"
    with subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(os.getpid()), "json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CUTOVER_TEST_MODULES": str(record)},
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        assert json.loads(proc.stdout.readline()) == {"ready": proc.pid}
        proc.stdin.close()  # no job: a spare the daemon no longer needs
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 0, err
    seen = json.loads(record.read_text())
    assert seen["spawned"] == []
    modules = set(seen["modules"])
    assert _loaded(modules, NEVER) == []
    assert (
        _loaded(
            modules,
            (
                "cutover.agent.config",
                "cutover.agent.lifecycle.manager",
                "cutover.agent.actions",
                "asyncio",
            ),
        )
        == []
    )
    for needed in (
        "cutover.agent.trust.policy",
        "cutover.agent.extract.extractor",
        "cutover.agent.worker.wire",
        "cutover.agent.worker.streamjob",
    ):
        assert needed in modules
