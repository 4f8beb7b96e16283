#!/usr/bin/env python3
"""Fleet benchmark: ``cutover rollout`` of a small package to 1, 10, 50 and 100 agents.

Starts N real ``cutover-agent serve`` processes on 127.0.0.1 (each with its own root, state and
config), pushes a small signed package to all of them with ``cutover push``, then times
``cutover rollout`` (``--canary 1 --batch 25% --max-parallel 100``, no bake) as a subprocess.
Each size is printed as a ratio to the one-host rollout measured in the same run (goal: 100
hosts <= 3x one host), with the controller's peak RSS (``ru_maxrss`` of the rollout process,
from ``wait4``). Not part of ``make test``.

    .venv/bin/python bench/fleet.py [--sizes 1,10,50,100] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cutover.agent.host.layout import Layout  # noqa: E402
from cutover.agent.keys import generate_keypair  # noqa: E402
from cutover.controller.build import build_package, sign_package  # noqa: E402

BIN = Path(sys.executable).parent
AGENT = BIN / "cutover-agent"
CUTOVER = BIN / "cutover"
APP = "bench"
GOAL_RATIO = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Agent:
    def __init__(self, base: Path, keys: Path) -> None:
        base.mkdir(parents=True)
        self.port = free_port()
        self.root = base / "srv" / APP
        for d in Layout(self.root).dirs():
            d.mkdir(parents=True, exist_ok=True)
        self.config = base / "agent.toml"
        self.config.write_text(
            "[agent]\n"
            f'name = "127.0.0.1:{self.port}"\nlisten = "127.0.0.1:{self.port}"\n'
            f'state_dir = "{base / "state"}"\nlog_format = "json"\n\n'
            f'[[controller_keys]]\nname = "bench"\npath = "{keys / "deploy.pub"}"\n\n'
            f'[apps.{APP}]\nroot = "{self.root}"\nrelease_keys = ["{keys / "release.pub"}"]\n'
        )
        self.log = (base / "agent.log").open("wb")
        self.proc = subprocess.Popen(
            [str(AGENT), "--config", str(self.config), "serve"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 900  # 100 interpreters starting on 2 cores
        while True:
            try:
                url = f"http://127.0.0.1:{self.port}/v1/health"
                with urllib.request.urlopen(url, timeout=1):  # loopback
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"agent did not start: {self.config}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def package(tmp: Path, version: str, release_key: Path) -> Path:
    src = tmp / f"src-{version}"
    src.mkdir()
    (src / "index.html").write_text(f"<h1>{version}</h1>\n")
    (src / "cutover.toml").write_text(f'app = "{APP}"\n')
    out = tmp / f"{APP}-{version}.cutover"
    build_package(src, out, version=version)
    from cutover.agent.keys import load_private_key

    sign_package(out, load_private_key(release_key))
    return out


def fleet_toml(path: Path, agents: list[Agent], key: Path) -> None:
    lines = [
        f'app = "{APP}"',
        f'controller_key = "{key}"',
        "[concurrency]",
        "max_parallel = 100",
    ]
    for i, a in enumerate(agents):
        lines += [f"[hosts.h{i:03d}]", f'url = "http://127.0.0.1:{a.port}"', 'groups = ["all"]']
    path.write_text("\n".join(lines) + "\n")


def run_cli(args: list[str], fleet: Path, state: Path) -> tuple[float, float, int]:
    """(seconds, peak RSS MiB, exit code) of one ``cutover`` run."""
    env = {**os.environ, "CUTOVER_FLEET": str(fleet), "CUTOVER_STATE_DIR": str(state)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(CUTOVER), *args, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    last = json.loads(out.decode().splitlines()[-1])
    return elapsed, usage.ru_maxrss / 1024, int(last.get("exit_code", proc.returncode))


def measure(size: int, tmp: Path, keys: Path, pkgs: list[Path]) -> list[tuple[float, float]]:
    agents = [Agent(tmp / f"n{size}" / f"a{i}", keys) for i in range(size)]
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(Agent.wait_ready, agents))
        fleet = tmp / f"fleet-{size}.toml"
        fleet_toml(fleet, agents, keys / "deploy")
        out = []
        for pkg in pkgs:
            version = pkg.name.removeprefix(f"{APP}-").removesuffix(".cutover")
            _, _, code = run_cli(["push", str(pkg)], fleet, tmp / "state")
            assert code == 0, f"push to {size} hosts exited {code}"
            args = ["rollout", version, "--canary", "1", "--batch", "25%", "--max-parallel", "100"]
            seconds, rss, code = run_cli(args, fleet, tmp / "state")
            assert code == 0, f"rollout to {size} hosts exited {code}"
            out.append((seconds, rss))
        return out
    finally:
        for a in agents:
            a.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,10,50,100")
    ap.add_argument("--runs", type=int, default=1, help="rollouts per size (median)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="cutover-bench-fleet-"))
    try:
        keys = tmp / "keys"
        keys.mkdir()
        generate_keypair(keys / "deploy")
        generate_keypair(keys / "release")
        pkgs = [package(tmp, f"1.0.{i}", keys / "release") for i in range(args.runs)]
        rows = []
        for n in sizes:
            got = measure(n, tmp, keys, pkgs)
            rows.append((n, statistics.median(s for s, _ in got), max(r for _, r in got)))
            print(f"  measured {n} host(s): {rows[-1][1]:.2f}s", file=sys.stderr, flush=True)
        base = rows[0][1]
        print(f"rollout of a small package (--canary 1 --batch 25%), median of {args.runs}")
        print(f"{'hosts':>6} {'seconds':>8} {'ratio':>6} {'peak RSS MiB':>13}")
        for n, s, rss in rows:
            print(f"{n:>6} {s:>8.2f} {s / base:>6.2f} {rss:>13.1f}")
        worst = rows[-1][1] / base
        print(
            f"goal: {rows[-1][0]} hosts <= {GOAL_RATIO:g}x one host: {'met' if worst <= GOAL_RATIO else 'NOT met'} ({worst:.2f}x)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
