"""agent.hooks: real subprocesses, real process groups, real pipes."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cutover.agent.actions.hooks import (
    DEFAULT_PATH,
    HookContext,
    HookFailedError,
    HookResult,
    run_hook,
    run_hooks,
)
from cutover.agent.errors import HookError
from cutover.agent.package.manifest import Hook

PY = sys.executable


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone (a container's init may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat.rpartition(b")")[2].split()[0] not in (b"Z", b"X")


async def _wait_gone(pids: set[int], within_s: float = 60.0) -> set[int]:
    """The pids still alive after up to ``within_s`` (signal delivery is asynchronous; the
    deadline is generous for a loaded machine and costs nothing when they go at once)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            break
        await asyncio.sleep(0.02)
    return {p for p in pids if _alive(p)}


def _pids(path: Path) -> set[int]:
    return {int(x) for x in path.read_text().split()}


@pytest.fixture
def release(tmp_path: Path) -> Path:
    d = tmp_path / "releases" / "2.0.0"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def ctx(tmp_path: Path, release: Path) -> HookContext:
    shared = tmp_path / "shared"
    shared.mkdir()
    return HookContext(
        app="demo",
        version="2.0.0",
        release_dir=release,
        previous_version="1.0.0",
        shared_dir=shared,
        extra_env={"PIDS": str(tmp_path / "pids")},
        kill_grace_s=0.5,
    )


def _script(release: Path, name: str, body: str) -> str:
    path = release / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


# A hook that spawns a child shell with its own background grandchild, a child that ignores
# SIGTERM (and passes that on to its sleep), and a plain background sleep; every pid goes to $PIDS.
FAMILY = """\
    sh -c 'sleep 1000 & echo $! >> "$PIDS"; echo $$ >> "$PIDS"; wait' &
    sh -c 'trap "" TERM; sleep 1000 & echo $! >> "$PIDS"; echo $$ >> "$PIDS"; wait' &
    sleep 1000 &
    echo $! >> "$PIDS"
    echo $$ >> "$PIDS"
    echo ready
    wait
"""


def _count(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


async def _wait_for_lines(path: Path, n: int, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while _count(path) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never got {n} pids")
        await asyncio.sleep(0.01)


async def test_timeout_kills_the_whole_group_including_grandchildren(
    ctx: HookContext, release: Path, tmp_path: Path
) -> None:
    """At its timeout the hook's group is SIGTERMed, then SIGKILLed (the TERM-immune ones too)."""
    argv = [_script(release, "hang.sh", FAMILY)]
    result = await run_hook(Hook(name="hang", argv=argv, timeout_s=1.5), "stage", ctx)

    assert result.timed_out
    assert not result.ok()
    assert result.exit_code is None
    assert result.signal in (signal.SIGTERM, signal.SIGKILL)
    assert "ready" in result.output_tail
    pids = _pids(tmp_path / "pids")
    assert len(pids) == 6
    assert await _wait_gone(pids) == set()


async def test_cancelling_run_hook_kills_the_group(
    ctx: HookContext, release: Path, tmp_path: Path
) -> None:
    argv = [_script(release, "hang.sh", FAMILY)]
    task = asyncio.create_task(run_hook(Hook(name="hang", argv=argv), "post_activate", ctx))
    await _wait_for_lines(tmp_path / "pids", 6)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_gone(_pids(tmp_path / "pids")) == set()


async def test_lingering_child_after_a_clean_exit_is_killed_and_does_not_block(
    ctx: HookContext, tmp_path: Path
) -> None:
    """A background child holding the output pipe neither hangs the runner nor survives it."""
    hook = Hook(
        name="leaky",
        argv=["sh", "-c", 'sleep 1000 & echo $! > "$PIDS"; echo started'],
        timeout_s=60,
    )
    result = await run_hook(hook, "post_activate", ctx)

    assert result.ok()
    assert not result.timed_out
    assert result.output_tail == "started\n"
    assert await _wait_gone(_pids(tmp_path / "pids")) == set()


HUNDRED_MB = 100_000_000
FLOOD = """
import sys
out = sys.stdout.buffer
block = (b"x" * 999 + b"\\n") * 1000
for _ in range(99):
    out.write(block)
out.write(b"".join(b"%09d" % i + b"y" * 990 + b"\\n" for i in range(1000)))
"""


async def test_100mb_of_output_keeps_memory_bounded_and_the_tail(ctx: HookContext) -> None:
    last_block = b"".join(b"%09d" % i + b"y" * 990 + b"\n" for i in range(1000))
    lines = 0
    last_line = ""

    def on_output(name: str, line: str) -> None:
        nonlocal lines, last_line
        assert name == "flood"
        lines += 1
        last_line = line

    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = await run_hook(Hook(name="flood", argv=[PY, "-c", FLOOD]), "stage", ctx, on_output)
    growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kib

    assert result.ok(), result.output_tail[-300:]
    assert result.output_bytes == HUNDRED_MB
    assert len(result.output_tail) <= ctx.output_cap_bytes
    assert result.output_tail.encode() == last_block[-ctx.output_cap_bytes :]
    assert lines == HUNDRED_MB // 1000
    assert last_line == "000000999" + "y" * 990
    assert growth_kib < 50 * 1024, f"peak RSS grew by {growth_kib} KiB"


async def test_environment_is_clean_stdin_is_closed_and_cwd_is_the_release(
    ctx: HookContext, release: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    ctx = HookContext(**{**ctx.__dict__, "extra_env": {"EXTRA": "1", "CUTOVER_VERSION": "spoofed"}})
    code = (
        "import json, os, sys; print(json.dumps({'env': dict(os.environ), "
        "'stdin_target': os.readlink('/proc/self/fd/0'), 'stdin': sys.stdin.read(), "
        "'cwd': os.getcwd()}))"
    )
    result = await run_hook(Hook(name="env", argv=[PY, "-c", code]), "pre_activate", ctx)

    assert result.ok(), result.output_tail
    seen = json.loads(result.output_tail)
    assert seen["env"] == {
        "PATH": DEFAULT_PATH,
        "LANG": "C.UTF-8",
        "HOME": str(release),
        "EXTRA": "1",
        "CUTOVER_APP": "demo",
        "CUTOVER_VERSION": "2.0.0",  # extras never override the agent's own variables
        "CUTOVER_RELEASE_DIR": str(release),
        "CUTOVER_PREVIOUS_VERSION": "1.0.0",
        "CUTOVER_SHARED_DIR": str(ctx.shared_dir),
        "CUTOVER_PHASE": "pre_activate",
    }
    assert seen["stdin_target"] == "/dev/null"
    assert seen["stdin"] == ""
    assert seen["cwd"] == str(release)  # tmp_path is already resolved


async def test_no_previous_version_is_an_empty_variable(ctx: HookContext) -> None:
    ctx = HookContext(**{**ctx.__dict__, "previous_version": None})
    hook = Hook(name="prev", argv=["sh", "-c", 'printf "[%s]" "${CUTOVER_PREVIOUS_VERSION-unset}"'])
    result = await run_hook(hook, "stage", ctx)
    assert result.output_tail == "[]"


async def test_failing_hook_names_hook_phase_exit_code_and_last_lines(ctx: HookContext) -> None:
    hooks = [
        Hook(
            name="migrate", argv=["sh", "-c", "for i in $(seq 1 30); do echo line$i; done; exit 3"]
        )
    ]
    with pytest.raises(HookFailedError) as info:
        await run_hooks(hooks, "pre_activate", ctx)

    exc = info.value
    assert isinstance(exc, HookError)
    assert exc.code == "hook_failed"
    message = str(exc)
    assert message.startswith("hook 'migrate' (pre_activate): exit code 3")
    assert "| line30" in message and "| line11" in message
    assert "| line10" not in message  # only the last 20 lines
    assert [r.exit_code for r in exc.results] == [3]
    assert exc.failed.output_tail.endswith("line30\n")


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        pytest.param(["does-not-exist-xyz"], "No such file or directory", id="missing-binary"),
        pytest.param(["./not-executable.sh"], "Permission denied", id="not-executable"),
    ],
)
async def test_hook_that_cannot_start_is_a_clear_failure(
    ctx: HookContext, release: Path, argv: list[str], reason: str
) -> None:
    (release / "not-executable.sh").write_text("#!/bin/sh\n")
    hook = Hook(name="x", argv=argv)

    result = await run_hook(hook, "stage", ctx)
    assert not result.ok()
    assert result.exit_code is None and result.signal is None and not result.timed_out
    assert result.error == f"cannot execute '{argv[0]}': {reason}"

    with pytest.raises(HookFailedError) as info:
        await run_hooks([hook], "stage", ctx)
    assert str(info.value).startswith(f"hook 'x' (stage): cannot execute '{argv[0]}': {reason}")


async def test_missing_release_dir_is_a_clear_failure(ctx: HookContext, tmp_path: Path) -> None:
    ctx = HookContext(**{**ctx.__dict__, "release_dir": tmp_path / "gone"})
    result = await run_hook(Hook(name="x", argv=["true"]), "stage", ctx)
    assert not result.ok()
    assert (
        result.error
        == f"cannot change to directory '{tmp_path / 'gone'}': No such file or directory"
    )


async def test_run_hooks_stops_at_the_first_failure(ctx: HookContext, tmp_path: Path) -> None:
    hooks = [
        Hook(name="a", argv=["touch", str(tmp_path / "a")]),
        Hook(name="b", argv=["false"]),
        Hook(name="c", argv=["touch", str(tmp_path / "c")]),
    ]
    with pytest.raises(HookFailedError) as info:
        await run_hooks(hooks, "stage", ctx)

    assert [(r.name, r.ok()) for r in info.value.results] == [("a", True), ("b", False)]
    assert (tmp_path / "a").exists()
    assert not (tmp_path / "c").exists()


async def test_run_hooks_returns_every_result_when_all_pass(ctx: HookContext) -> None:
    hooks = [Hook(name=n, argv=["true"]) for n in ("a", "b")]
    results = await run_hooks(hooks, "post_rollback", ctx)
    assert [(r.name, r.phase, r.exit_code) for r in results] == [
        ("a", "post_rollback", 0),
        ("b", "post_rollback", 0),
    ]
    assert await run_hooks([], "stage", ctx) == []


async def test_hook_killed_by_a_signal_reports_it(ctx: HookContext) -> None:
    result = await run_hook(Hook(name="boom", argv=["sh", "-c", "kill -9 $$"]), "stage", ctx)
    assert result.signal == signal.SIGKILL
    assert result.exit_code is None
    assert not result.ok()
    assert result.describe() == "killed by SIGKILL"


async def test_output_lines_are_streamed_in_order_and_bounded(ctx: HookContext) -> None:
    seen: list[tuple[str, str]] = []
    script = "echo one; printf 'two\\r\\n'; head -c 10000 /dev/zero | tr '\\0' a; echo; printf tail"
    result = await run_hook(
        Hook(name="talk", argv=["sh", "-c", script]),
        "stage",
        ctx,
        lambda name, line: seen.append((name, line)),
    )
    assert result.ok()
    assert [name for name, _ in seen] == ["talk"] * 4
    lines = [line for _, line in seen]
    assert lines[:2] == ["one", "two"]
    assert lines[2] == "a" * 4096 + " [... 5904 more bytes]"
    assert lines[3] == "tail"  # a last line without a newline is delivered at EOF


async def test_a_raising_output_callback_does_not_break_the_run(ctx: HookContext) -> None:
    def broken(name: str, line: str) -> None:
        raise RuntimeError("sink down")

    result = await run_hook(Hook(name="x", argv=["echo", "hi"]), "stage", ctx, broken)
    assert result.ok()
    assert result.output_tail == "hi\n"


async def test_unknown_phase_is_refused(ctx: HookContext) -> None:
    with pytest.raises(ValueError, match="unknown hook phase"):
        await run_hook(Hook(name="x", argv=["true"]), "whenever", ctx)


def test_context_limits_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="output_cap_bytes"):
        HookContext("a", "1", tmp_path, None, tmp_path, output_cap_bytes=0)
    with pytest.raises(ValueError, match="kill_grace_s"):
        HookContext("a", "1", tmp_path, None, tmp_path, kill_grace_s=-1)


def test_result_to_json() -> None:
    result = HookResult(
        name="x",
        argv=["true"],
        phase="stage",
        exit_code=0,
        signal=None,
        timed_out=False,
        duration_s=0.12345,
        output_tail="",
        output_bytes=0,
    )
    assert result.to_json() == {
        "name": "x",
        "argv": ["true"],
        "phase": "stage",
        "ok": True,
        "exit_code": 0,
        "signal": None,
        "timed_out": False,
        "duration_s": 0.123,
        "output_tail": "",
        "output_bytes": 0,
        "error": None,
    }
