#!/usr/bin/env python3
"""Fleet benchmark: ``cutover rollout`` of a small package to 1, 10, 50 and 100 agents.

Starts N real ``cutover-agent serve`` processes on 127.0.0.1 (each with its own root, state and
config), pushes a small signed package to all of them with ``cutover push``, then times
``cutover rollout`` (``--canary 1 --batch 25% --max-parallel 100``, no bake) as a subprocess.
Each size is printed as a ratio to the one-host rollout measured in the same run (goal: 100
hosts <= 3x one host), with the controller's peak RSS (``ru_maxrss`` of the rollout process,
from ``wait4``). Not part of ``make test``.

Where the time goes is read from the rollout's own ``--json`` event stream (each event has a
``ts``): interpreter start to the first event, leases, the staged check, each wave (activations,
then the decision), and the end (releasing the leases, the summary). ``--profile DIR`` also runs
each rollout under ``cProfile`` (one ``.prof`` per size in DIR; the top entries by cumulative
time are printed).

    .venv/bin/python bench/fleet.py [--sizes 1,10,50,100] [--runs 1] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _agents import Agent  # noqa: E402

from cutover.agent.keys import generate_keypair  # noqa: E402
from cutover.controller.build import build_package, sign_package  # noqa: E402

BIN = Path(sys.executable).parent
CUTOVER = BIN / "cutover"
APP = "bench"
GOAL_RATIO = 3.0


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


class Run:
    """One ``cutover`` run: its wall time, peak RSS, exit code and ``--json`` events."""

    def __init__(
        self, started: float, seconds: float, rss_mib: float, code: int, events: list[Any]
    ) -> None:
        self.started, self.seconds, self.rss_mib = started, seconds, rss_mib
        self.code, self.events = code, events
        self.cpu_s = 0.0  # the controller's user + system CPU
        self.agents_cpu_s = 0.0  # every agent's user + system CPU during the run
        self.agents_idle_cpu_s = 0.0  # the same agents' CPU over as long a time, idle

    def failures(self) -> list[str]:
        return [
            f"{e.get('host')}: {e.get('error')}: {str(e.get('message', ''))[:200]}"
            for e in self.events
            if e.get("event") == "host.result" and e.get("status") not in ("ok", "unchanged")
        ]

    def phases(self) -> list[tuple[str, float]]:
        """(phase, seconds) from the event stream's timestamps (the first from process start)."""

        def at(e: dict[str, Any]) -> float:
            return datetime.fromisoformat(str(e["ts"]).replace("Z", "+00:00")).timestamp()

        sizes = {e["wave"]: len(e["hosts"]) for e in self.events if e.get("event") == "wave.start"}
        marks: list[tuple[str, float]] = []
        for e in self.events:
            name = e.get("event")
            if name == "rollout.start":
                marks.append(("start", at(e)))
            elif name == "lease.acquired":
                marks.append(("leases", at(e)))
            elif name == "wave.start" and e.get("wave") == 0:
                marks.append(("staged check", at(e)))
            elif name == "wave.done":
                marks.append((f"wave {e['wave']} ({sizes.get(e['wave'], '?')})", at(e)))
            elif name == "summary":
                marks.append(("end", at(e)))
        out, prev = [], self.started
        for label, t in marks:
            out.append((label, t - prev))
            prev = t
        return out


def run_cli(args: list[str], fleet: Path, state: Path, profile: Path | None = None) -> Run:
    """One ``cutover`` run (under cProfile into ``profile`` if given)."""
    env = {**os.environ, "CUTOVER_FLEET": str(fleet), "CUTOVER_STATE_DIR": str(state)}
    prefix = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else []
    wall = time.time()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*prefix, str(CUTOVER), *args, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    events = [json.loads(x) for x in out.decode().splitlines() if x.startswith("{")]
    code = int(events[-1].get("exit_code", proc.returncode)) if events else proc.returncode
    run = Run(wall, elapsed, usage.ru_maxrss / 1024, code, events)
    run.cpu_s = usage.ru_utime + usage.ru_stime
    return run


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (from /proc/PID/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def measure(size: int, tmp: Path, keys: Path, pkgs: list[Path], profile: Path | None) -> list[Run]:
    agents = [
        Agent(
            tmp / f"n{size}" / f"a{i}",
            APP,
            deploy_pub=keys / "deploy.pub",
            release_pub=keys / "release.pub",
        )
        for i in range(size)
    ]
    try:
        with ThreadPoolExecutor(16) as pool:  # 100 interpreters starting on 2 cores
            list(pool.map(lambda a: a.wait_ready(900), agents))
        fleet = tmp / f"fleet-{size}.toml"
        fleet_toml(fleet, agents, keys / "deploy")
        out = []
        for pkg in pkgs:
            version = pkg.name.removeprefix(f"{APP}-").removesuffix(".cutover")
            push = run_cli(["push", str(pkg)], fleet, tmp / "state")
            if push.code != 0:
                raise RuntimeError(f"push to {size} hosts exited {push.code}: {push.failures()}")
            args = ["rollout", version, "--canary", "1", "--batch", "25%", "--max-parallel", "100"]
            prof = profile / f"rollout-{size:03d}-{version}.prof" if profile else None
            before = cpu_seconds([a.proc.pid for a in agents])
            run = run_cli(args, fleet, tmp / "state", prof)
            run.agents_cpu_s = cpu_seconds([a.proc.pid for a in agents]) - before
            before = cpu_seconds([a.proc.pid for a in agents])
            time.sleep(run.seconds)  # what the same agents burn doing nothing for as long
            run.agents_idle_cpu_s = cpu_seconds([a.proc.pid for a in agents]) - before
            if run.code != 0:
                raise RuntimeError(f"rollout to {size} hosts exited {run.code}: {run.failures()}")
            out.append(run)
        return out
    finally:
        for a in agents:
            a.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,10,50,100")
    ap.add_argument("--runs", type=int, default=1, help="rollouts per size (median)")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="cProfile each rollout into DIR")
    args = ap.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    sizes = [int(x) for x in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="cutover-bench-fleet-"))
    try:
        keys = tmp / "keys"
        keys.mkdir()
        generate_keypair(keys / "deploy")
        generate_keypair(keys / "release")
        pkgs = [package(tmp, f"1.0.{i}", keys / "release") for i in range(args.runs)]
        rows = []
        breakdown = []
        for n in sizes:
            got = measure(n, tmp, keys, pkgs, args.profile)
            rows.append((n, statistics.median(r.seconds for r in got), max(r.rss_mib for r in got)))
            last = got[-1]
            breakdown.append(
                (n, last.phases(), last.cpu_s, last.agents_cpu_s, last.agents_idle_cpu_s)
            )
            print(f"  measured {n} host(s): {rows[-1][1]:.2f}s", file=sys.stderr, flush=True)
        print("where the time goes (last rollout of each size, from its --json event timestamps)")
        for n, phases, cpu, agents_cpu, idle_cpu in breakdown:
            print(f"  {n:>3} host(s): " + ", ".join(f"{label} {s:.2f}s" for label, s in phases))
            print(
                f"             CPU: controller {cpu:.2f}s, the {n} agent(s) {agents_cpu:.2f}s "
                f"(idle for as long: {idle_cpu:.2f}s) on {os.cpu_count()} cores"
            )
        if args.profile:
            for prof in sorted(args.profile.glob("rollout-*.prof")):
                print(f"cProfile {prof.name}: top 15 by cumulative time")
                pstats.Stats(str(prof)).sort_stats("cumulative").print_stats(15)
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
