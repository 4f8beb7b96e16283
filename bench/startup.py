#!/usr/bin/env python3
"""Benchmark: start-up cost of our processes (issue 12 judges delta and full stages whole-process).

    .venv/bin/python bench/startup.py [--runs 15] [--baseline main]

Times fresh processes of this tree against a baseline git ref (default ``main``; exported with
``git archive`` into a temporary directory and run from there with ``PYTHONPATH``, same
interpreter, same venv), interleaved A/B within each round so load drifts hit both alike:

* ``python -c pass``: the interpreter's own floor (no project code);
* ``cutover-agent --version``: interpreter + the CLI's entry imports;
* ``cutover-agent --json status``: a root holding one staged release (recovery, state, output);
* ``cutover-agent --json stage``: a 3-file signed package on a fresh root (verify, extract,
  durable install): here start-up dominates, which is the point;
* stage worker to ready: ``python -m cutover.agent.worker`` until it says ``{"ready": pid}``
  (a spare worker's start-up; then stdin is closed and it exits);
* ``cutover --version`` and ``cutover inspect --json``: the controller's local commands.

Each row: median wall seconds and median CPU seconds (user + system of the child, from wait4),
baseline vs ours and their ratio. Then, per case, the modules each variant imported (counted at
exit) and which heavy ones (aiohttp, rich, structlog, yarl, ...). No goal of its own: the
``imports`` row of bench/delta.py and ``ours: imports`` of bench/extract.py are where the saving
shows in the issue's ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PY = sys.executable
HEAVY = (
    "aiohttp",
    "yarl",
    "rich",
    "structlog",
    "watchfiles",
    "prometheus_client",
    "importlib.metadata",
    "cutover.agent.daemon",
    "cutover.controller.client",
)

# The entry points as their console scripts call them, plus an optional record of sys.modules.
_RECORD = """
import atexit, json, os, sys
if os.environ.get("BENCH_MODULES"):
    def _record():
        with open(os.environ["BENCH_MODULES"], "w") as fh:
            json.dump(sorted(sys.modules), fh)
    atexit.register(_record)
"""
AGENT = _RECORD + "from cutover.agent.cli import main\nsys.exit(main(sys.argv[1:]))\n"
CONTROLLER = _RECORD + "from cutover.controller.cli import main\nsys.exit(main(sys.argv[1:]))\n"
WORKER = _RECORD + (
    "import runpy\nrunpy.run_module('cutover.agent.worker', run_name='__main__', alter_sys=True)\n"
)


class Variant:
    """One code tree: ours (the installed editable tree) or a baseline exported from git."""

    def __init__(self, name: str, pythonpath: Path | None, pycache: Path | None) -> None:
        """``pycache``: byte-compile into this prefix (the warm-up writes it); None: compile
        the project's modules from source at every start (``PYTHONDONTWRITEBYTECODE=1``)."""
        self.name = name
        self.env = {**os.environ}
        self.env.pop("PYTHONPATH", None)
        if pythonpath is not None:
            self.env["PYTHONPATH"] = str(pythonpath)
        if pycache is None:
            self.env["PYTHONDONTWRITEBYTECODE"] = "1"
            self.env.pop("PYTHONPYCACHEPREFIX", None)
        else:
            self.env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.env["PYTHONPYCACHEPREFIX"] = str(pycache)

    def run(self, argv: list[str], record: Path | None = None) -> tuple[float, float, str]:
        """(wall s, child CPU s, stdout) of one fresh process."""
        env = {**self.env, **({"BENCH_MODULES": str(record)} if record else {})}
        with tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err)
            assert proc.stdout is not None
            out = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            proc.stdout.close()
            if proc.returncode != 0:
                err.seek(0)
                raise RuntimeError(f"{self.name}: {argv} exited {proc.returncode}: {err.read()!r}")
        return wall, usage.ru_utime + usage.ru_stime, out.decode()

    def worker_ready(self, record: Path | None = None) -> tuple[float, float, str]:
        """(wall s to ``ready``, child CPU s for the whole run, the ready line)."""
        env = {**self.env, **({"BENCH_MODULES": str(record)} if record else {})}
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [PY, "-c", WORKER, str(os.getpid()), "json"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline().decode()
        wall = time.perf_counter() - t0
        proc.stdin.close()  # no job: a spare the daemon no longer needs
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        proc.stdout.close()
        if '"ready"' not in line:
            raise RuntimeError(f"{self.name}: stage worker said {line!r}")
        return wall, usage.ru_utime + usage.ru_stime, line


def export_baseline(ref: str, into: Path) -> Path:
    """``git archive REF agent controller`` laid out as the ``cutover`` namespace."""
    src = into / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "agent", "controller"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    ns = into / "path" / "cutover"
    ns.mkdir(parents=True)
    (ns / "agent").symlink_to(src / "agent")
    (ns / "controller").symlink_to(src / "controller")
    return into / "path"


def prepare(work: Path) -> dict[str, Path]:
    """A release key, a 3-file signed package, and the trusted public key."""
    from cutover.agent.keys import generate_keypair
    from cutover.controller.build import build_package, sign_package

    tree = work / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "index.html").write_text("<h1>bench</h1>\n")
    (tree / "VERSION").write_text("1.0.0\n")
    (tree / "bin" / "run").write_text("#!/bin/sh\necho run\n")
    (tree / "bin" / "run").chmod(0o755)
    (tree / "cutover.toml").write_text('app = "bench"\n')
    key = generate_keypair(work / "release")
    pkg = work / "bench-1.0.0.cutover"
    build_package(tree, pkg, version="1.0.0")
    sign_package(pkg, key)
    return {"pkg": pkg, "pub": work / "release.pub"}


class Roots:
    """Fresh app roots (made untimed with our CLI; both variants read the same formats)."""

    def __init__(self, work: Path, pub: Path) -> None:
        self.work, self.pub, self.n = work, pub, 0

    def fresh(self) -> Path:
        self.n += 1
        base = self.work / f"r{self.n}"
        config = base / "agent.toml"
        subprocess.run(
            [
                PY,
                "-c",
                AGENT,
                "--config",
                str(config),
                "init",
                "--app",
                "bench",
                "--root",
                str(base / "srv"),
                "--trust-release-key",
                str(self.pub),
            ],
            check=True,
            capture_output=True,
        )
        return config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=15, help="interleaved rounds (default 15)")
    ap.add_argument("--baseline", default="main", help="git ref to compare with (default main)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="cutover-startup-") as tmp:
        work = Path(tmp)
        files = prepare(work)
        baseline = export_baseline(args.baseline, work / "base")
        roots = Roots(work, files["pub"])
        status_config = roots.fresh()
        subprocess.run(
            [PY, "-c", AGENT, "--config", str(status_config), "--json", "stage", str(files["pkg"])],
            check=True,
            capture_output=True,
        )
        for mode in ("source", "compiled"):
            pycache = work / "pycache" if mode == "compiled" else None
            base = Variant(f"baseline ({args.baseline})", baseline, pycache)
            ours = Variant("ours", None, pycache)
            measure(args, mode, base, ours, roots, status_config, files["pkg"], work)
    return 0


def measure(
    args: argparse.Namespace,
    mode: str,
    base: Variant,
    ours: Variant,
    roots: Roots,
    status_config: Path,
    pkg: Path,
    work: Path,
) -> None:
    def stage(v: Variant, record: Path | None = None) -> tuple[float, float, str]:
        config = roots.fresh()
        return v.run(
            [PY, "-c", AGENT, "--config", str(config), "--json", "stage", str(pkg)], record
        )

    cases: dict[str, Callable[[Variant, Path | None], tuple[float, float, str]]] = {
        "python -c pass": lambda v, r: v.run([PY, "-c", "pass"]),
        "cutover-agent --version": lambda v, r: v.run([PY, "-c", AGENT, "--version"], r),
        "cutover-agent --json status": lambda v, r: v.run(
            [PY, "-c", AGENT, "--config", str(status_config), "--json", "status"], r
        ),
        "cutover-agent --json stage (3 files)": stage,
        "stage worker: start to ready": lambda v, r: v.worker_ready(r),
        "cutover --version": lambda v, r: v.run([PY, "-c", CONTROLLER, "--version"], r),
        "cutover inspect --json": lambda v, r: v.run(
            [PY, "-c", CONTROLLER, "inspect", "--json", str(pkg)], r
        ),
    }
    modules: dict[tuple[str, str], list[str]] = {}
    for name, case in cases.items():  # warm-up (writes the pycache in compiled mode) + modules
        for v in (base, ours):
            record = work / "modules.json"
            record.unlink(missing_ok=True)
            case(v, record)
            if record.exists():
                modules[(name, v.name)] = json.loads(record.read_text())
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    load_before = os.getloadavg()[0]
    for i in range(args.runs):
        for name, case in cases.items():
            for v in (base, ours) if i % 2 == 0 else (ours, base):
                wall, cpu, _ = case(v, None)
                times.setdefault((name, v.name), []).append((wall, cpu))
    load_after = os.getloadavg()[0]

    what = {
        "source": "the project's modules compiled from source at each start (no .pyc: "
        "PYTHONDONTWRITEBYTECODE=1, as in this repository's checkouts)",
        "compiled": "everything byte-compiled beforehand (.pyc, as `pip install` leaves it)",
    }[mode]
    print(f"\nstart-up, {what}")
    print(f"{args.runs} interleaved rounds; load {load_before:.2f} -> {load_after:.2f}")
    print(
        f"{'':<40} {'wall: base':>10} {'ours':>7} {'ratio':>6}   "
        f"{'cpu: base':>9} {'ours':>7} {'ratio':>6}"
    )
    for name in cases:
        b, o = times[(name, base.name)], times[(name, ours.name)]
        bw, ow = statistics.median(t[0] for t in b), statistics.median(t[0] for t in o)
        bc, oc = statistics.median(t[1] for t in b), statistics.median(t[1] for t in o)
        print(
            f"{name:<40} {bw:10.3f} {ow:7.3f} {ow / bw:5.2f}x   {bc:9.3f} {oc:7.3f} {oc / bc:5.2f}x"
        )
    if mode != "source":
        return
    print("modules imported (baseline -> ours), and the heavy ones each loads:")

    def heavy(mods: list[str]) -> str:
        found = [h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in mods)]
        return ", ".join(found) or "-"

    for name in cases:
        mb, mo = modules.get((name, base.name)), modules.get((name, ours.name))
        if mb is None or mo is None:
            continue
        print(f"  {name:<38} {len(mb):4d} -> {len(mo):4d}   baseline: {heavy(mb)}")
        print(f"  {'':<38} {'':>12}   ours:     {heavy(mo)}")


if __name__ == "__main__":
    sys.exit(main())
