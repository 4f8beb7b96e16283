#!/usr/bin/env python3
"""Agent API benchmark: request latency under a concurrent upload+stage, and memory while
receiving a 1 GiB package. Real ``cutover-agent serve`` processes on 127.0.0.1.

    .venv/bin/python bench/api.py [--rate 50] [--idle-s 3] [--reps 3] [--keep] [--no-rss]
                                  [--trace FILE]

1. Latency. A signed ``GET /v1/apps`` is sent at a steady rate (open loop: each request is
   scheduled on a fixed clock, latency counts from its scheduled time, so a stalled agent cannot
   hide behind a stalled client). Baseline: the agent idle, measured in the same run. Then again
   while a 250 MiB release (``/work/shared/bench/make_corpus.py OUT --files 20000 --total-mb 250
   --seed 1``, zstd) is uploaded and staged on the same agent by a separate process. Repeated
   ``--reps`` times on a fresh agent (idle and loaded interleaved); the goal is judged on the
   median p99, because this shared 2-core machine is noisy (bench/README.md).
   Each repetition also says where the CPU went: the agent process's own CPU time over the
   loaded phase (event loop, spool writes, install) and its stage workers' (agent/worker/, from
   their ``stage_worker_done`` log lines: the streaming extraction and the stage's verification),
   with the workers' peak RSS.
2. Memory. A fresh agent receives and stages a ~1 GiB package (incompressible payload,
   ``compression = none``, 8 files). Peak RSS (``VmHWM`` of /proc/PID/status) after receiving,
   after staging, against the agent's idle RSS.

Goals: p99 <= 50 ms under load; peak RSS <= 100 MiB. Packages and keys are cached under
bench/out/ (first run: a minute or two to build). ``CUTOVER_AGENT_BIN`` runs another agent
executable (e.g. an installed one). Timing claims live here, never in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _agents import Agent  # noqa: E402

from cutover.agent.keys import PrivateKey, generate_keypair, load_private_key  # noqa: E402
from cutover.controller.build import build_package, sign_package  # noqa: E402
from cutover.controller.client import AgentClient  # noqa: E402

OUT = ROOT / "bench" / "out"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "bench" / "make_corpus.py"
MiB = 1 << 20
GOAL_P99_MS = 50.0
GOAL_RSS_MIB = 100.0


# ---------------------------------------------------------------------- inputs (cached)
def key(name: str) -> PrivateKey:
    path = OUT / "keys" / name
    if path.exists():
        return load_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return generate_keypair(path)


def _package(name: str, make_tree: Callable[[Path], None], version: str, compression: str) -> Path:
    out = OUT / f"{name}-{version}.cutover"
    stamp = out.with_suffix(".chunked.signed")  # built since payload.chunks existed
    if out.exists() and stamp.exists():
        return out
    tree = OUT / f"tree-{name}"
    if not (tree / "cutover.toml").exists():
        shutil.rmtree(tree, ignore_errors=True)
        t0 = time.monotonic()
        make_tree(tree)
        (tree / "cutover.toml").write_text(f'app = "{name}"\n')
        print(f"  built tree {tree.name} in {time.monotonic() - t0:.1f} s", flush=True)
    out.unlink(missing_ok=True)
    t0 = time.monotonic()
    build_package(tree, out, version=version, compression=compression)
    sign_package(out, key("release"))
    stamp.touch()
    print(
        f"  built {out.name} ({out.stat().st_size / MiB:.0f} MiB) in {time.monotonic() - t0:.1f} s"
    )
    return out


def corpus_tree(tree: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(CORPUS),
            str(tree),
            "--files",
            "20000",
            "--total-mb",
            "250",
            "--seed",
            "1",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def big_tree(tree: Path) -> None:
    tree.mkdir(parents=True)
    for i in range(8):
        with (tree / f"blob{i}.bin").open("wb") as fh:
            for _ in range(128):
                fh.write(os.urandom(MiB))


# ---------------------------------------------------------------------- agent process
def start_agent(base: Path, app: str) -> Agent:
    """A ready agent serving ``app`` (bench/_agents.py), taking packages up to 2 GiB."""
    agent = Agent(
        base,
        app,
        deploy_pub=OUT / "keys" / "deploy.pub",
        release_pub=OUT / "keys" / "release.pub",
        agent_settings="max_upload_bytes = 2147483648\n",
    )
    agent.wait_ready(20)
    return agent


def agent_cpu_s(agent: Agent) -> float:
    """The agent process's own CPU time so far (utime + stime; not its workers')."""
    fields = Path(f"/proc/{agent.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_lines(agent: Agent) -> list[dict[str, object]]:
    """The ``stage_worker_done`` log lines of its stage workers (agent/worker/child.py)."""
    out = []
    for line in agent.log_path.read_bytes().splitlines():
        if b"stage_worker_done" in line:
            out.append(json.loads(line))
    return out


# ---------------------------------------------------------------------- measurements
TRACE: list[tuple[float, float]] = []  # (wall clock at scheduled send, latency ms), for --trace


async def probe(url: str, rate: float, stop: asyncio.Event, min_s: float) -> list[float]:
    """Signed GET /v1/apps at ``rate``/s until ``stop`` (and at least ``min_s``); latencies in ms."""
    latencies: list[float] = []
    offset = time.time() - time.perf_counter()
    interval = 1 / rate
    async with AgentClient(url, key("deploy")) as client:
        await client.apps()  # warm the connection

        async def one(scheduled: float) -> None:
            await client.apps()
            latencies.append((time.perf_counter() - scheduled) * 1000)
            TRACE.append((scheduled + offset, latencies[-1]))

        tasks = []
        start = time.perf_counter()
        n = 0
        while not (stop.is_set() and time.perf_counter() - start >= min_s):
            scheduled = start + n * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
            n += 1
        await asyncio.gather(*tasks)
    return latencies


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def upload_in_subprocess(
    url: str, app: str, version: str, package: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "_upload", url, app, version, str(package)],
        stdout=subprocess.PIPE,
    )


async def _upload_worker(url: str, app: str, version: str, package: Path) -> None:
    async with AgentClient(url, key("deploy"), upload_timeout_s=3600) as c:
        t0 = time.perf_counter()
        accepted = await c.upload(app, version, package)
        t1 = time.perf_counter()
        record = await c.wait(accepted.operation)
        t2 = time.perf_counter()
    print(
        json.dumps(
            {
                "upload_s": t1 - t0,
                "stage_s": t2 - t1,
                "status": record.status,
                "error": record.error.to_json() if record.error else None,
            }
        )
    )


def child_result(proc: subprocess.Popen[bytes]) -> dict[str, object]:
    out, _ = proc.communicate(timeout=3600)
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    if result["status"] != "succeeded":
        raise RuntimeError(f"operation failed: {result}")
    return result


async def latency_bench(base: Path, package: Path, rate: float, idle_s: float) -> dict[str, object]:
    """One repetition on a fresh agent: idle baseline, then the same probe during upload+stage."""
    agent = start_agent(base, "bench")
    try:
        idle = await probe(agent.url, rate, _set(asyncio.Event()), idle_s)
        stop = asyncio.Event()
        cpu0 = agent_cpu_s(agent)
        proc = upload_in_subprocess(agent.url, "bench", "1.0.0", package)
        waiter = asyncio.create_task(asyncio.to_thread(child_result, proc))
        waiter.add_done_callback(lambda _: stop.set())
        loaded = await probe(agent.url, rate, stop, 1.0)
        timing = await waiter
        agent_cpu = agent_cpu_s(agent) - cpu0  # receiving, spooling, serving the probe, installing
    finally:
        agent.stop()
    done = worker_lines(agent)
    where = {
        "agent_cpu_s": agent_cpu,
        "worker_cpu_s": sum(float(str(w["cpu_s"])) for w in done),
        "worker_jobs": ",".join(str(w["job"]) for w in done),
        "worker_rss_mib": max((float(str(w["max_rss_mib"])) for w in done), default=0.0),
    }
    return {"idle": idle, "loaded": loaded, **timing, **where}


def _set(ev: asyncio.Event) -> asyncio.Event:
    ev.set()
    return ev


async def rss_bench(base: Path, package: Path) -> dict[str, float]:
    agent = start_agent(base, "big")
    try:
        await asyncio.sleep(0.5)
        idle_rss = agent.status("VmRSS")
        async with AgentClient(agent.url, key("deploy"), upload_timeout_s=3600) as c:
            t0 = time.perf_counter()
            accepted = await c.upload("big", "1.0.0", package)
            upload_s = time.perf_counter() - t0
            hwm_received = agent.status("VmHWM")
            record = await c.wait(accepted.operation)
            stage_s = time.perf_counter() - t0 - upload_s
        if not record.succeeded:
            raise RuntimeError(f"staging failed: {record.error}")
        hwm_staged = agent.status("VmHWM")
    finally:
        agent.stop()
    workers = worker_lines(agent)
    return {
        "worker_rss": max((float(str(w["max_rss_mib"])) for w in workers), default=0.0),
        "idle_rss": idle_rss,
        "hwm_received": hwm_received,
        "hwm_staged": hwm_staged,
        "upload_s": upload_s,
        "stage_s": stage_s,
        "size_mib": (await asyncio.to_thread(package.stat)).st_size / MiB,
    }


def main() -> int:
    os.umask(os.umask(0o022) | 0o022)  # agents refuse group/world-writable configs and roots
    if len(sys.argv) > 1 and sys.argv[1] == "_upload":
        asyncio.run(_upload_worker(sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5])))
        return 0
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rate", type=float, default=50.0, help="GET /v1/apps per second (default 50)")
    ap.add_argument(
        "--idle-s", type=float, default=3.0, help="idle baseline duration (default 3 s)"
    )
    ap.add_argument("--reps", type=int, default=3, help="latency repetitions (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the agents' roots and logs")
    ap.add_argument(
        "--no-rss", action="store_true", help="skip the 1 GiB memory measurement (latency only)"
    )
    ap.add_argument(
        "--trace", type=Path, help="write (time, latency ms) of every probe as JSON lines"
    )
    args = ap.parse_args()

    print("preparing inputs (cached in bench/out/)", flush=True)
    key("deploy")
    corpus = _package("bench", corpus_tree, "1.0.0", "zstd")
    big = None if args.no_rss else _package("big", big_tree, "1.0.0", "none")
    base = Path(tempfile.mkdtemp(prefix="api-", dir=OUT))
    reps: list[dict[str, object]] = []
    try:
        for i in range(args.reps):  # fresh agent and root each time: no deletes between reps
            reps.append(
                asyncio.run(latency_bench(base / f"latency{i}", corpus, args.rate, args.idle_s))
            )
        rss = None if big is None else asyncio.run(rss_bench(base / "rss", big))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")
    if args.trace:
        args.trace.write_text("".join(f"[{t:.3f}, {ms:.2f}]\n" for t, ms in TRACE))

    print()
    print(f"signed GET /v1/apps at {args.rate:g}/s (open loop, latency from scheduled send time),")
    print(
        f"idle baseline then during upload+stage of a {corpus.stat().st_size / MiB:.0f} MiB package "
        "(20,000 files, zstd); a fresh agent per repetition"
    )
    p99s = []
    for i, rep in enumerate(reps, 1):
        idle, loaded = rep["idle"], rep["loaded"]
        assert isinstance(idle, list) and isinstance(loaded, list)
        p50_i, p99_i, p50_l, p99_l = pct(idle, 50), pct(idle, 99), pct(loaded, 50), pct(loaded, 99)
        p99s.append(p99_l)
        print(
            f"  rep {i}: idle   n={len(idle):4d} p50 {p50_i:6.2f} ms p99 {p99_i:7.2f} ms | "
            f"loaded n={len(loaded):4d} p50 {p50_l:6.2f} ms p99 {p99_l:7.2f} ms max {max(loaded):7.2f} ms"
            f" | p99 x{p99_l / p99_i:.1f} | upload {rep['upload_s']:.1f} s stage {rep['stage_s']:.1f} s"
        )
        print(
            f"         where the CPU went: agent process {rep['agent_cpu_s']:.2f} s (loop, spool, "
            f"install), stage workers {rep['worker_cpu_s']:.2f} s ({rep['worker_jobs'] or 'none'};"
            f" peak RSS {rep['worker_rss_mib']:.0f} MiB)"
        )
    p99 = statistics.median(p99s)
    verdict = "OK" if p99 <= GOAL_P99_MS else "MISSED"
    print(
        f"  goal p99 <= {GOAL_P99_MS:g} ms under load (median of reps): {p99:.1f} ms -> {verdict}"
    )
    if rss is None:
        return 0
    print()
    print(f"peak RSS of the agent receiving a {rss['size_mib']:.0f} MiB package (compression none)")
    print(f"  idle RSS                    {rss['idle_rss']:7.1f} MiB")
    print(
        f"  VmHWM after receiving       {rss['hwm_received']:7.1f} MiB   (upload {rss['upload_s']:.1f} s, {rss['size_mib'] / rss['upload_s']:.0f} MiB/s)"
    )
    print(
        f"  VmHWM after staging         {rss['hwm_staged']:7.1f} MiB   (stage {rss['stage_s']:.1f} s)"
    )
    print(
        f"  stage workers' peak RSS     {rss['worker_rss']:7.1f} MiB   (separate processes, "
        "one job each: not in the agent's VmHWM, reported so the total is visible)"
    )
    print(f"  ratio peak/idle: x{rss['hwm_staged'] / rss['idle_rss']:.2f}")
    verdict = "OK" if rss["hwm_staged"] <= GOAL_RSS_MIB else "MISSED"
    print(f"  goal peak RSS <= {GOAL_RSS_MIB:g} MiB: {rss['hwm_staged']:.1f} MiB -> {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
