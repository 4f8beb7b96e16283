"""How the ``cutover-agent`` script ends (agent/cli/_main.py ``main``): a command other than
``serve`` flushes its output and ends with ``os._exit(code)``, skipping the interpreter's
teardown. The exit code is the command's whatever stdout is; 120, as Python's own exit gives,
when its output could not be written. Real processes, a real app root."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import BIN, Host, run_to_a_closed_pipe

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
    proc = run_to_a_closed_pipe(_agent(host, *_ARGS), unbuffered=False)
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


def test_a_closed_pipe_met_by_the_command_itself_exits_120_and_is_not_called_a_bug(
    host: Host,
) -> None:
    """Unbuffered output (or more than a buffer) meets the closed pipe inside the command's own
    ``print``: the reader went away, which is no bug of ours; 120, nothing on stderr about it,
    and the command changed nothing (status reads only)."""
    before = host.snapshot()
    for args in (("status",), ("--json", "status")):
        proc = run_to_a_closed_pipe(_agent(host, *args), unbuffered=True)
        assert proc.returncode == 120, (args, proc.stderr)
        assert proc.stderr == b"", proc.stderr  # no "internal error", no traceback
    assert host.snapshot() == before


def test_a_json_error_met_by_a_closed_pipe_keeps_its_exit_code(host: Host) -> None:
    """A refused command whose ``--json`` error line meets the closed pipe: its own exit code
    (5: no such release), no traceback, nothing changed."""
    before = host.snapshot()
    proc = run_to_a_closed_pipe(_agent(host, "--json", "activate", "9.9.9"), unbuffered=True)
    assert proc.returncode == 5, proc.stderr
    assert b"Traceback" not in proc.stderr, proc.stderr
    assert host.snapshot() == before
