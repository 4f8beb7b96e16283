"""Issue 14, item 3: the agent refuses unsafe modes and owners of the files it trusts (StrictModes)
at start and at live reload, keeping the old config, with an error naming the path, the mode, the
owner and the chmod/chown to run; ``init`` writes safe modes whatever the umask.

Each test works on its own copy of the keys (the session's key files stay untouched). A second
real user (``nobody``) owns the files of the owner cases; the tests run as root.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cutover.agent.errors import AuthError
from tests.e2e.conftest import BIN, Agent, Keys

pytestmark = pytest.mark.e2e

NOBODY = pwd.getpwnam("nobody").pw_uid

Unsafe = Callable[[Agent], Path]  # makes something unsafe, returns the path the error must name


def _chmod(mode: int, pick: Callable[[Agent], Path]) -> Unsafe:
    def apply(agent: Agent) -> Path:
        p = pick(agent)
        p.chmod(mode)
        return p

    return apply


def _chown_nobody(pick: Callable[[Agent], Path]) -> Unsafe:
    def apply(agent: Agent) -> Path:
        p = pick(agent)
        os.chown(p, NOBODY, -1)
        return p

    return apply


CASES = [
    pytest.param(_chmod(0o666, lambda a: a.config), "chmod go-w", id="config-0666"),
    pytest.param(_chmod(0o664, lambda a: a.config), "chmod go-w", id="config-group-writable"),
    pytest.param(_chmod(0o777, lambda a: a.config.parent), "chmod go-w", id="config-dir-0777"),
    pytest.param(_chown_nobody(lambda a: a.config), "chown root", id="config-owned-by-nobody"),
    pytest.param(
        _chmod(0o666, lambda a: a.keys.pub("deploy")), "chmod go-w", id="controller-key-0666"
    ),
    pytest.param(
        _chmod(0o646, lambda a: a.keys.pub("release")), "chmod go-w", id="release-key-0646"
    ),
    pytest.param(_chmod(0o777, lambda a: a.keys.dir), "chmod go-w", id="key-dir-0777"),
    pytest.param(
        _chown_nobody(lambda a: a.keys.pub("read")), "chown root", id="key-owned-by-nobody"
    ),
    pytest.param(_chown_nobody(lambda a: a.keys.dir), "chown root", id="key-dir-owned-by-nobody"),
    pytest.param(_chmod(0o777, lambda a: a.state_dir), "chmod go-w", id="state-dir-0777"),
    pytest.param(_chmod(0o775, lambda a: a.root), "chmod go-w", id="app-root-group-writable"),
]


@pytest.fixture
def own_keys(tmp_path: Path, keys: Keys) -> Keys:
    d = tmp_path / "own-keys"
    shutil.copytree(keys.dir, d)
    d.chmod(0o755)
    return dataclasses.replace(keys, dir=d)


def _agent(tmp_path: Path, keys: Keys) -> Agent:
    agent = Agent(tmp_path / "agent", keys)
    agent.state_dir.mkdir(mode=0o750)
    return agent


def _mode_and_owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mode & 0o7777, st.st_uid


@pytest.mark.parametrize(("unsafe", "advice"), CASES)
def test_unsafe_file_refuses_start(
    tmp_path: Path, own_keys: Keys, unsafe: Unsafe, advice: str
) -> None:
    agent = _agent(tmp_path, own_keys)
    before = agent.snapshot()
    path = unsafe(agent)
    mode, uid = _mode_and_owner(path)
    with pytest.raises(RuntimeError, match="agent exited with 2"):
        agent.start()
    log = agent.log_text()
    assert str(path) in log and f"mode {mode:04o}" in log, log
    assert f"owner {pwd.getpwuid(uid).pw_name}" in log and f"`{advice} {path}`" in log, log
    assert agent.snapshot() == before
    assert not (agent.state_dir / "nonces.log").exists()  # nothing was started


@pytest.mark.parametrize(("unsafe", "advice"), CASES)
async def test_unsafe_file_refuses_reload_and_keeps_the_old_config(
    tmp_path: Path, own_keys: Keys, unsafe: Unsafe, advice: str
) -> None:
    """The reload would also drop the ``other`` key: refused, so ``other`` still works."""
    agent = _agent(tmp_path, own_keys)
    agent.start()
    try:
        async with agent.client(own_keys.other_deploy) as other:
            await other.apps()
            agent.write_config(controller_keys=("deploy", "read"))
            agent.config.chmod(0o644)
            path = unsafe(agent)
            os.kill(agent.pid, signal.SIGHUP)
            await _wait_for_event(agent, "config_reload_failed", str(path))
            failed = [e for e in agent.log_events() if e.get("event") == "config_reload_failed"]
            assert any(f"`{advice} {path}`" in e["error"] for e in failed), failed
            assert not any(e.get("event") == "config_reloaded" for e in agent.log_events())
            await other.apps()  # the old config, which trusts it, is still in force
    finally:
        assert agent.stop() == 0


async def test_world_writable_key_swapped_for_an_attackers_is_not_taken_in(
    tmp_path: Path, own_keys: Keys
) -> None:
    """The tester's attack: a 0666 ops key rewritten in place with the attacker's public key."""
    agent = _agent(tmp_path, own_keys)
    agent.start()
    try:
        ops = own_keys.pub("deploy")
        ops.chmod(0o666)
        ops.write_bytes(own_keys.pub("stranger").read_bytes())  # picked up by the file watcher
        await _wait_for_event(agent, "config_reload_failed", str(ops))
        async with agent.client(own_keys.stranger) as attacker:
            with pytest.raises(AuthError) as refused:
                await attacker.apps()
        assert refused.value.code == "unknown_key"
        async with agent.client(own_keys.deploy) as deploy:
            await deploy.apps()  # the key loaded before the swap is still the one in force
    finally:
        assert agent.stop() == 0


async def _wait_for_event(agent: Agent, event: str, needle: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(
        e.get("event") == event and needle in str(e.get("error", "")) for e in agent.log_events()
    ):
        assert time.monotonic() < deadline, agent.log_text()
        await asyncio.sleep(0.1)


def test_init_writes_safe_modes_under_a_permissive_umask(tmp_path: Path, own_keys: Keys) -> None:
    config = tmp_path / "etc" / "cutover" / "agent.toml"
    root = tmp_path / "srv" / "demo"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "cutover-agent"), "--config", str(config), *args],
            capture_output=True,
            text=True,
            check=False,
            preexec_fn=lambda: os.umask(0),
        )

    made = cli(
        "init",
        "--app",
        "demo",
        "--root",
        str(root),
        "--trust-release-key",
        str(own_keys.pub("release")),
    )
    assert made.returncode == 0, made.stderr
    for p in (config, config.parent, config.parent.parent, root, root / "releases"):
        assert not p.stat().st_mode & 0o022, (p, oct(p.stat().st_mode))
    assert config.stat().st_mode & 0o777 == 0o640
    status = cli("status")
    assert status.returncode == 0, status.stderr
