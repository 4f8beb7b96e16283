"""Shared fixtures: real keys, real packages built by our builder, a real host layout, and the
real ``cutover-agent`` CLI run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cutover.agent.keys import PrivateKey, generate_keypair
from cutover.controller.build import build_package, sign_package

BIN = Path(sys.executable).parent


def run_to_a_closed_pipe(
    argv: list[str], *, unbuffered: bool
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` with a stdout nobody reads (``cmd | head -c0``), stderr captured.

    ``unbuffered``: with ``PYTHONUNBUFFERED=1`` the command's own ``print`` meets the closed pipe;
    without it (buffered, as to any pipe) the final flush does."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    r, w = os.pipe()
    os.close(r)  # nobody reads
    try:
        return subprocess.run(
            argv, stdout=w, stderr=subprocess.PIPE, env=env, check=False, timeout=60
        )
    finally:
        os.close(w)


@dataclass
class Host:
    """One app root plus its agent config, driven through the real CLI."""

    root: Path
    config: Path
    app: str
    tmp: Path

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "cutover-agent"), "--config", str(self.config), "--json", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            check=False,
        )

    def cli_json(self, *args: str, expect: int = 0, **kw: Any) -> dict[str, Any]:
        proc = self.cli(*args, **kw)
        assert proc.returncode == expect, (
            f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
        )
        return json.loads(proc.stdout) if proc.stdout.strip() else {}

    @property
    def current(self) -> str | None:
        link = self.root / "current"
        return os.readlink(link) if link.is_symlink() else None

    def state(self) -> dict[str, Any]:
        return json.loads((self.root / ".cutover" / "state.json").read_text())

    def journal(self) -> list[dict[str, Any]]:
        path = self.root / ".cutover" / "journal.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def snapshot(self) -> dict[str, Any]:
        """Everything a rejected operation must leave untouched."""
        state = self.root / ".cutover" / "state.json"
        return {
            "current": self.current,
            "releases": sorted(p.name for p in (self.root / "releases").iterdir()),
            "state": state.read_bytes() if state.exists() else b"",
            "incoming": sorted(p.name for p in (self.root / ".cutover" / "incoming").iterdir()),
            "trash": sorted(p.name for p in (self.root / ".cutover" / "trash").iterdir()),
        }


@pytest.fixture(scope="session", autouse=True)
def _safe_umask() -> Any:
    """Files the tests create for agents must pass the agent's mode rules (agent/strictmodes.py)
    whatever the caller's umask: never group- or world-writable. Subprocesses inherit it."""
    old = os.umask(0o022)
    os.umask(old | 0o022)
    yield
    os.umask(old)


@pytest.fixture
def release_key(tmp_path: Path) -> PrivateKey:
    (tmp_path / "keys").mkdir()
    return generate_keypair(tmp_path / "keys" / "release")


PackageFactory = Callable[..., Path]


@pytest.fixture
def make_package(tmp_path: Path, release_key: PrivateKey) -> PackageFactory:
    """Build and sign a small app release: ``make_package("1.0.0", files={...}, toml="...")``."""
    counter = [0]

    def factory(
        version: str,
        files: dict[str, str] | None = None,
        toml: str = "",
        app: str = "demo",
        key: PrivateKey | None = None,
        sign: bool = True,
        chunks: bool = True,
    ) -> Path:
        counter[0] += 1
        src = tmp_path / "src" / f"{app}-{version}-{counter[0]}"
        src.mkdir(parents=True)
        content = (
            files
            if files is not None
            else {
                "index.html": f"<h1>{app} {version}</h1>\n",
                "VERSION": f"{version}\n",
                "lib/app.php": f"<?php return '{version}';\n",
                "bin/console": "#!/bin/sh\necho console\n",
            }
        )
        for rel, text in content.items():
            p = src / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            if rel.startswith("bin/"):
                p.chmod(0o755)
        (src / "cutover.toml").write_text(f'app = "{app}"\n{toml}')
        out = tmp_path / "packages" / f"{app}-{version}.cutover"
        if out.exists():
            out = tmp_path / "packages" / str(counter[0]) / out.name
        build_package(src, out, version=version, chunks=chunks)
        if sign:
            sign_package(out, key or release_key)
        return out

    return factory


@pytest.fixture
def host(tmp_path: Path, release_key: PrivateKey) -> Host:
    root = tmp_path / "srv" / "demo"
    config = tmp_path / "etc" / "agent.toml"
    h = Host(root=root, config=config, app="demo", tmp=tmp_path)
    h.cli_json(
        "init",
        "--app",
        "demo",
        "--root",
        str(root),
        "--trust-release-key",
        str(tmp_path / "keys" / "release.pub"),
    )
    return h
