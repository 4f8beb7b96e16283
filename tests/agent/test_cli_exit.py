"""How the ``cutover-agent`` script ends (agent/cli/_main.py ``main``): a command other than
``serve`` flushes its output and ends with ``os._exit(code)``, skipping the interpreter's
teardown. The exit code is the command's whatever stdout is; 120, as Python's own exit gives,
when its output could not be written. Real processes, a real app root."""

from __future__ import annotations

import json
import os
import subprocess

from tests.conftest import BIN, Host

_ARGS = ("--json", "status")


def _agent(host: Host, *args: str) -> list[str]:
    return [str(BIN / "cutover-agent"), "--config", str(host.config), *args]


def test_output_to_a_pipe_arrives_whole_before_the_quick_exit(host: Host) -> None:
    """A pipe is block-buffered: the result is flushed before ``os._exit``, never lost."""
    proc = subprocess.run(_agent(host, *_ARGS), capture_output=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["apps"][0]["app"] == "demo"


def test_a_pipe_closed_by_its_reader_exits_120_without_a_traceback(host: Host) -> None:
    """Buffered output (no ``PYTHONUNBUFFERED``) meets the closed pipe at the final flush."""
    r, w = os.pipe()
    os.close(r)  # e.g. `cutover-agent status --json | head -c0`: nobody reads
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    try:
        proc = subprocess.run(
            _agent(host, *_ARGS), stdout=w, stderr=subprocess.PIPE, env=env, check=False, timeout=60
        )
    finally:
        os.close(w)
    assert proc.returncode == 120
    assert b"Traceback" not in proc.stderr, proc.stderr


def test_a_command_started_without_stdout_exits_with_its_own_code(host: Host) -> None:
    """Started with descriptor 1 closed (``>&-``, some cron or service setups), Python has no
    ``sys.stdout`` (None): there is nothing to flush, and the command's code is the exit code."""
    proc = subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", *_agent(host, *_ARGS)],
        stderr=subprocess.PIPE,
        check=False,
        timeout=60,
    )
    assert b"Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0
