#!/usr/bin/env python3
"""Flip and rollback time (issue "Crash-safe release store", benchmark).

    .venv/bin/python bench/flip.py [--activations 1000] [--rollbacks 50] [--small-mb 10]
                                   [--big-mb 1024] [--out bench/out/flip]

Measures, in-process (no Python start-up in any figure), on the real release store:

1. ``host.current.flip`` alone (temp symlink + ``rename(2)`` + fsync of the root directory), with a raw
   ``os.symlink`` + ``os.replace`` without fsync as the floor, and ``AppManager.activate`` end to
   end with no hooks and no checks (lock, recovery check, state + journal writes, each fsynced,
   and the flip) over ``--activations`` activations alternating between two releases. The three
   are interleaved in every iteration (activate, bare flip away and back, raw rename away and
   back) so that machine noise hits them alike.
2. ``AppManager.rollback`` (and the roll-forward ``activate`` that precedes each one) for a
   ``--small-mb`` and a ``--big-mb`` release of incompressible files, interleaved A B B A. A
   rollback only switches a symlink and rewrites small state files, so its time must not grow with
   the release size: the printed ratio big / small should stay near 1.

Packages (``--compression none``: random bytes do not compress), generated trees and the staged app
roots are cached under ``--out`` (gitignored) and reused; only the activation root is rebuilt on
every run, so its activation history starts empty. Nothing large is deleted during a run (this
disk slows down for minutes after a mass delete; see /work/shared/bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cutover.agent._util.logsetup import configure_logging  # noqa: E402
from cutover.agent.config import add_app_to_config, load_config  # noqa: E402
from cutover.agent.host.current import flip  # noqa: E402
from cutover.agent.keys import PrivateKey, generate_keypair, load_private_key  # noqa: E402
from cutover.agent.lifecycle.manager import AppManager  # noqa: E402
from cutover.controller.build import build_package, sign_package  # noqa: E402

FILE_BYTES = 256 * 1024  # every generated file; the big release just has more of them
V1, V2 = "1.0.0", "2.0.0"
SAMPLE_KEYS = ("rollback_flip", "rollback", "activate_flip", "activate")


# ---------------------------------------------------------------------------------- statistics
def pct(samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.1f} µs"
    return f"{seconds * 1e3:8.2f} ms"


class FlipClock:
    """AppManager event sink: remembers when the ``flip`` event (right after the rename) came."""

    def __init__(self) -> None:
        self.at = 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") == "flip":
            self.at = time.perf_counter()


async def timed_op(mgr: AppManager, fn: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(seconds until ``current`` was switched, seconds for the whole operation)."""
    clock = mgr.ctx.events
    assert isinstance(clock, FlipClock)
    clock.at = 0.0
    t0 = time.perf_counter()
    await fn()
    t1 = time.perf_counter()
    assert clock.at, "the operation did not flip"
    return clock.at - t0, t1 - t0


# ---------------------------------------------------------------------------------- material
def release_key(out: Path) -> PrivateKey:
    path = out / "release.key"
    return load_private_key(path) if path.exists() else generate_keypair(path)


def make_tree(tree: Path, mb: int) -> None:
    """``mb`` MiB of incompressible files (``FILE_BYTES`` each) in a few directories."""
    done = tree.with_name(tree.name + ".complete")  # outside the tree: it is not shipped
    if done.exists():
        return
    if tree.exists():
        shutil.rmtree(tree)
    files = max(1, mb * 1024 * 1024 // FILE_BYTES)
    for i in range(files):
        d = tree / "public" / "media" / f"d{i // 256:03}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"blob-{i:05}.bin").write_bytes(os.urandom(FILE_BYTES))
    (tree / "cutover.toml").write_text('app = "bench"\n')
    done.write_text(f"{files} files\n")


def make_package(out: Path, key: PrivateKey, name: str, mb: int, version: str) -> Path:
    pkg = out / "packages" / f"bench-{name}-{version}.cutover"
    if pkg.exists():
        return pkg
    tree = out / "trees" / name
    make_tree(tree, mb)
    (tree / "VERSION").write_text(f"{version}\n")
    tmp = pkg.with_name(pkg.name + ".partial")
    tmp.unlink(missing_ok=True)
    build_package(tree, tmp, version=version, compression="none")
    sign_package(tmp, key)
    tmp.rename(pkg)
    return pkg


def manager(root: Path, config: Path) -> AppManager:
    cfg = load_config(config)
    return AppManager(
        "bench", cfg.apps["bench"], cfg.policies["bench"], actor="bench", events=FlipClock()
    )


async def app_root(
    out: Path, key: PrivateKey, name: str, mb: int, *, fresh: bool = False
) -> AppManager:
    """An app root with V1 and V2 staged and V2 active (reused when a previous run left one)."""
    root, config = out / "roots" / name, out / "roots" / f"{name}.toml"
    if not fresh and config.exists():
        mgr = manager(root, config)
        state = mgr.snapshot()
        if all(v in state.releases and state.releases[v].installed for v in (V1, V2)):
            if state.current != V2:
                await mgr.activate(V2)
            return mgr
    packages = [make_package(out, key, name, mb, v) for v in (V1, V2)]
    if root.exists():
        _remove(root)
    config.unlink(missing_ok=True)
    add_app_to_config(config, "bench", root, out / "release.key.pub")
    mgr = manager(root, config)
    mgr.layout.create()
    for pkg in packages:
        t0 = time.perf_counter()
        await mgr.stage(pkg)
        print(f"  staged {name} {pkg.name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    await mgr.activate(V1)
    await mgr.activate(V2)
    return mgr


def _remove(path: Path) -> None:
    for dirpath, dirnames, _ in os.walk(path):
        os.chmod(dirpath, 0o700)
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o700)
    shutil.rmtree(path)


# ---------------------------------------------------------------------------------- measurements
async def bench_activate(mgr: AppManager, n: int) -> dict[str, list[float]]:
    """Interleaved: one activation, two bare flips, two raw renames per iteration."""
    layout = mgr.layout
    raw_link = layout.root / "raw-link"
    os.symlink(f"releases/{V1}", raw_link)
    samples: dict[str, list[float]] = {"activate": [], "activate_flip": [], "flip": [], "raw": []}
    current = mgr.snapshot().current
    for i in range(n + 10):  # 10 warm-up iterations, not recorded
        other = V1 if current == V2 else V2
        t_act_flip, t_act = await timed_op(mgr, partial(mgr.activate, other))
        current, back = other, (V1 if other == V2 else V2)
        flips = []
        for target in (back, current):  # away and back: disk matches the state again
            t0 = time.perf_counter()
            flip(layout, target)
            flips.append(time.perf_counter() - t0)
        raws = []
        for target in (back, current):
            tmp = layout.root / f"raw.{i}"
            t0 = time.perf_counter()
            os.symlink(f"releases/{target}", tmp)
            os.replace(tmp, raw_link)
            raws.append(time.perf_counter() - t0)
        if i >= 10:
            samples["activate"].append(t_act)
            samples["activate_flip"].append(t_act_flip)
            samples["flip"].extend(flips)
            samples["raw"].extend(raws)
    raw_link.unlink()
    return samples


async def bench_rollback(
    small: AppManager, big: AppManager, reps: int
) -> dict[str, dict[str, list[float]]]:
    """Per rep and size: roll back V2 -> V1 (timed), roll forward to V2 (timed). Order A B B A."""
    out: dict[str, dict[str, list[float]]] = {
        s: {k: [] for k in SAMPLE_KEYS} for s in ("small", "big")
    }
    for rep in range(reps + 2):  # 2 warm-up reps
        order = [("small", small), ("big", big)]
        if rep % 2:
            order.reverse()
        for size, mgr in order:
            samples = [*await timed_op(mgr, mgr.rollback), *await timed_op(mgr, fwd(mgr))]
            if rep >= 2:
                for k, v in zip(SAMPLE_KEYS, samples, strict=True):
                    out[size][k].append(v)
    return out


def fwd(mgr: AppManager) -> Callable[[], Awaitable[object]]:
    return partial(mgr.activate, V2)


def release_bytes(mgr: AppManager, version: str) -> tuple[int, int, int]:
    """(bytes, files) of an installed release, and the size of its stored manifest."""
    total = files = 0
    for dirpath, _, filenames in os.walk(mgr.layout.release(version)):
        for f in filenames:
            total += os.lstat(os.path.join(dirpath, f)).st_size
            files += 1
    return total, files, mgr.layout.kept_manifest(version).stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--activations", type=int, default=1000)
    ap.add_argument("--rollbacks", type=int, default=50)
    ap.add_argument("--small-mb", type=int, default=10)
    ap.add_argument("--big-mb", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "flip")
    args = ap.parse_args()
    configure_logging("console", "warning")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(args, out, release_key(out)))


async def run(args: argparse.Namespace, out: Path, key: PrivateKey) -> None:
    print("preparing (cached under bench/out/flip) ...", file=sys.stderr)
    act = await app_root(out, key, "activation", 0, fresh=True)
    small = await app_root(out, key, f"{args.small_mb}mb", args.small_mb)
    big = await app_root(out, key, f"{args.big_mb}mb", args.big_mb)
    os.sync()  # let the staging writes drain before anything is timed
    await asyncio.sleep(2)

    print("measuring ...", file=sys.stderr)
    t0 = time.perf_counter()
    act_s = await bench_activate(act, args.activations)
    rb = await bench_rollback(small, big, args.rollbacks)
    wall = time.perf_counter() - t0

    sizes = {"small": release_bytes(small, V1), "big": release_bytes(big, V1)}
    label = {
        k: f"{b / 2**20:.0f} MiB, {f} files, manifest {m // 1024} KiB"
        for k, (b, f, m) in sizes.items()
    }
    acts = act_s["activate"]
    tenth = max(1, len(acts) // 10)
    rows: list[tuple[str, list[float]] | None] = [
        ("raw symlink + rename, no fsync (floor)", act_s["raw"]),
        ("host.current.flip: symlink + rename + fsync dir", act_s["flip"]),
        ("AppManager.activate, no hooks: until flip", act_s["activate_flip"]),
        ("AppManager.activate, no hooks: whole op", acts),
        (f"  first {tenth} activations: whole op", acts[:tenth]),
        (f"  last {tenth} activations: whole op", acts[-tenth:]),
        None,
    ]
    for size in ("small", "big"):
        rows.append((f"rollback {label[size]}", []))
        rows.append(("  until flip", rb[size]["rollback_flip"]))
        rows.append(("  whole op", rb[size]["rollback"]))
        rows.append(("  then activate forward: until flip", rb[size]["activate_flip"]))
        rows.append(("  then activate forward: whole op", rb[size]["activate"]))
    print()
    print(
        f"Cutover flip benchmark: in-process (no Python start-up), {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        f"measuring took {wall:.1f}s"
    )
    print()
    width = 52
    print(f"| {'measure':<{width}} | {'n':>5} | {'p50':>11} | {'p99':>11} |")
    print(f"|{'-' * (width + 2)}|{'-' * 7}|{'-' * 13}|{'-' * 13}|")
    for row in rows:
        if row is None:
            print(f"| {'':<{width}} | {'':>5} | {'':>11} | {'':>11} |")
            continue
        name, xs = row
        if not xs:
            print(f"| {name:<{width}} | {'':>5} | {'':>11} | {'':>11} |")
            continue
        print(f"| {name:<{width}} | {len(xs):>5} | {fmt(pct(xs, 50))} | {fmt(pct(xs, 99))} |")
    print()
    big_mb, small_mb = (sizes[k][0] / 2**20 for k in ("big", "small"))
    for what, key_ in (
        ("rollback until flip", "rollback_flip"),
        ("rollback whole op", "rollback"),
        ("activate until flip", "activate_flip"),
        ("activate whole op", "activate"),
    ):
        sm, bg = rb["small"][key_], rb["big"][key_]
        print(
            f"ratio {big_mb:.0f} MiB / {small_mb:.0f} MiB, {what:<20}: "
            f"p50 {pct(bg, 50) / pct(sm, 50):5.2f}   p99 {pct(bg, 99) / pct(sm, 99):5.2f}"
        )
    print(
        f"activate whole op / bare flip (p50): {pct(acts, 50) / pct(act_s['flip'], 50):.1f}x;"
        f" activation history grew to {len(act.snapshot().activations)} entries"
    )


if __name__ == "__main__":
    main()
