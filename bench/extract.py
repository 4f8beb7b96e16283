"""Benchmark: staging a release with our extractor vs GNU tar, on the reference corpus.

    python bench/extract.py [--runs N]

Builds once (cached under bench/out/, which git ignores) the 20,000-file, 250 MiB corpus with
/work/shared/bench/make_corpus.py, a signed package of it made by ``cutover build``/``sign``, and
the same tree as a plain tar and a tar.zst (``tar --sort=name``, zstd level 3). Then, in one run,
interleaved round by round, it times:

* ``tar --zstd -xf corpus.tar.zst -C fresh_dir``, then ``sync`` (timed separately, so both the
  plain and the durable figure come from the same run);
* ``tar -xf corpus.tar -C fresh_dir``, then ``sync``;
* ours, durable, in a fresh Python process: open the package, ``verify_release``, (only for a
  package without ``payload.chunks``) ``verify_payload_digest``, ``extract_payload``,
  ``syncfs``. Reported twice: the whole process (includes interpreter start-up and imports) and
  the in-process time the child measures itself, split by phase, with the time the extracting
  thread spent waiting for decompressed data (blocked on the decompressor thread's queue); and
  once more for the same tree packaged without chunks (``--no-chunks``: the whole-payload
  pre-hash path), the two alternating which goes first;
* ``python -c pass``, for the start-up cost alone;
* a real ``cutover-agent serve`` on 127.0.0.1 (fresh app root each round; timed once it answers
  and its stage worker started ahead had a second to get ready, as on a running agent):
  upload+stage of the package over loopback (``AgentClient.upload`` then waiting for the operation), with the
  streaming stage on (the default) and off; against ``cutover-agent stage PACKAGE`` from the
  local file (the on-host CLI, a fresh process, so it also pays start-up and imports).

Each step's CPU (user + system, every thread and child: tar's includes its zstd) is printed too,
with the extraction's split (the kernel's share, the parsing thread's): on a shared machine CPU
seconds are steadier than wall time, and they say whether a change did less work or only moved it.

An untimed ``sync`` precedes every step so none pays for another's dirty pages. Extracted trees
are kept until the end of the run (deleting a large tree slows file creation on this disk for
minutes; see /work/shared/bench/README.md) and removed afterwards. Prints medians (min-max), the
ratio ours / (``tar --zstd -xf && sync``), the load average, and each goal of issue 12 (durable
stage <= 1.0x; upload+stage <= 1.15x the local stage) as met or NOT met.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from _bytecode import add_bytecode_flag, prepare_bytecode

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
MAKE_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "bench" / "make_corpus.py"
CORPUS_ARGS = ["--files", "20000", "--total-mb", "250", "--seed", "1"]
VERSION = "1.0.0"
CREATED_AT = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def prepare() -> dict[str, Path]:
    """Build (or reuse) the corpus, the signed package, the tar and the tar.zst."""
    sys.path.insert(0, str(ROOT))
    from cutover.agent.keys import generate_keypair
    from cutover.controller.build import build_package, sign_package

    OUT.mkdir(parents=True, exist_ok=True)
    corpus = OUT / "corpus"
    marker = OUT / "corpus.done"
    if not marker.exists():
        if corpus.exists():
            shutil.rmtree(corpus)
        print("building the corpus (once)...", flush=True)
        _run([sys.executable, str(MAKE_CORPUS), str(corpus), *CORPUS_ARGS])
        (corpus / "cutover.toml").write_text('app = "ame"\n')
        marker.write_text(" ".join(CORPUS_ARGS) + "\n")
    key = OUT / "release.key"
    if not key.exists():
        generate_keypair(key)
    package = OUT / f"ame-{VERSION}.cutover"
    if not package.exists():
        print("building and signing the package (once)...", flush=True)
        from cutover.agent.keys import load_private_key

        build_package(corpus, package, version=VERSION, created_at=CREATED_AT)
        sign_package(package, load_private_key(key))
    tar = OUT / "corpus.tar"
    if not tar.exists():
        print("making corpus.tar and corpus.tar.zst with GNU tar (once)...", flush=True)
        _run(["tar", "--sort=name", "-C", str(corpus), "-cf", str(tar), "."])
    tzst = OUT / "corpus.tar.zst"
    if not tzst.exists():
        _run(["zstd", "-3", "-q", "-f", str(tar), "-o", str(tzst)])
    whole = OUT / f"ame-{VERSION}-nochunks.cutover"
    if not whole.exists():
        from cutover.agent.keys import load_private_key

        build_package(corpus, whole, version=VERSION, created_at=CREATED_AT, chunks=False)
        sign_package(whole, load_private_key(key))
    deploy = OUT / "deploy.key"
    if not deploy.exists():
        generate_keypair(deploy)
    return {
        "package": package,
        "whole": whole,
        "pub": Path(f"{key}.pub"),
        "deploy": deploy,
        "tar": tar,
        "tzst": tzst,
    }


def child(package: Path, pub: Path, dest: Path) -> None:
    """One durable staging, in this fresh process; prints phase timings as JSON."""
    t0 = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    from cutover.agent._util.fsutil import syncfs
    from cutover.agent.extract._source import Producer
    from cutover.agent.extract.extractor import extract_payload, verify_payload_digest
    from cutover.agent.keys import load_public_key
    from cutover.agent.package.container import open_package
    from cutover.agent.trust.policy import HostHistory, TrustPolicy, verify_release

    waited = [0.0]  # the extracting thread's time blocked on the decompressor thread's queue
    real_next = Producer.next

    def timed_next(self: Producer) -> bytes:
        start = time.perf_counter()
        try:
            return real_next(self)
        finally:
            waited[0] += time.perf_counter() - start

    Producer.next = timed_next  # type: ignore[method-assign]
    t1 = time.perf_counter()
    key = load_public_key(pub)
    parts, fh = open_package(package)
    with fh:
        verified = verify_release(
            parts.manifest_bytes,
            parts.signatures_bytes,
            TrustPolicy("ame", {key.keyid: key}),
            expected_version=VERSION,
            history=HostHistory(),
            now=datetime.now(UTC),
        )
        t2 = time.perf_counter()
        if verified.manifest.payload.chunks is None:  # as agent/host/installer.py does
            verify_payload_digest(fh, parts, verified.manifest)
        t3 = time.perf_counter()
        cpu, main_cpu = os.times(), time.thread_time()
        extract_payload(fh, parts, verified.manifest, dest, already_verified=True)
        t4 = time.perf_counter()
        main_cpu, after = time.thread_time() - main_cpu, os.times()
    syncfs(dest)
    t5 = time.perf_counter()
    phases = {
        "imports": t1 - t0,
        "verify_release": t2 - t1,
        "payload_digest": t3 - t2,
        "extract": t4 - t3,
        "syncfs": t5 - t4,
        "extract_waiting": waited[0],
        "extract_cpu": after.user + after.system - cpu.user - cpu.system,  # every thread
        "extract_cpu_sys": after.system - cpu.system,
        "extract_cpu_main": main_cpu,  # the extracting (parsing, creating) thread alone
        "in_process": t5 - t1,
    }
    print(json.dumps(phases))


AGENT = Path(sys.executable).parent / "cutover-agent"


def _agent_files(base: Path, files: dict[str, Path], stream: bool) -> tuple[Path, int]:
    """A fresh app root and agent config under ``base``; returns (config, port)."""
    sys.path.insert(0, str(ROOT))
    from cutover.agent.host.layout import Layout

    root = base / "srv" / "ame"
    for d in Layout(root).dirs():
        d.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = base / "agent.toml"
    config.write_text(
        f'[agent]\nname = "127.0.0.1:{port}"\nlisten = "127.0.0.1:{port}"\n'
        f'state_dir = "{base / "state"}"\nmax_upload_bytes = 2147483648\nlog_format = "json"\n'
        f"stream_uploads = {'true' if stream else 'false'}\n\n"
        f'[[controller_keys]]\nname = "bench"\npath = "{files["deploy"]}.pub"\n\n'
        f'[apps.ame]\nroot = "{root}"\nrelease_keys = ["{files["pub"]}"]\n'
    )
    return config, port


def serve_agent(
    config: Path, port: int, log: BinaryIO, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A real ``cutover-agent serve`` on 127.0.0.1, returned once it answers and the stage worker
    it starts ahead has had time to get ready, as on an agent that has been running."""
    import urllib.request

    proc = subprocess.Popen(
        [str(AGENT), "--config", str(config), "serve"], stdout=log, stderr=log, env=env
    )
    for _ in range(400):
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/v1/health", timeout=1
            ):  # loopback
                break
        except OSError:
            time.sleep(0.05)
    time.sleep(1.0)  # the spare worker's start-up (~0.2 s CPU) is not part of an upload
    return proc


def _upload_stage(base: Path, files: dict[str, Path], stream: bool) -> float:
    """Seconds from the first upload byte to the staged release, against a running agent."""
    import asyncio

    sys.path.insert(0, str(ROOT))
    from cutover.agent.keys import load_private_key
    from cutover.controller.client import AgentClient

    config, port = _agent_files(base, files, stream)
    log = (base / "agent.log").open("wb")
    proc = serve_agent(config, port, log)
    url = f"http://127.0.0.1:{port}"
    try:

        async def go() -> float:
            key = load_private_key(files["deploy"])
            async with AgentClient(url, key, upload_timeout_s=3600) as client:
                t0 = time.perf_counter()
                accepted = await client.upload("ame", VERSION, files["package"])
                record = await client.wait(accepted.operation)
                elapsed = time.perf_counter() - t0
            if not record.succeeded:
                raise RuntimeError(f"upload+stage failed: {record.error}")
            return elapsed

        return asyncio.run(go())
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _local_stage(base: Path, files: dict[str, Path]) -> float:
    config, _ = _agent_files(base, files, True)
    cmd = [str(AGENT), "--config", str(config), "--json", "stage", str(files["package"])]
    return _timed(cmd)[0]


def _timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return time.perf_counter() - t0, proc.stdout


def tar_kinds(files: dict[str, Path]) -> tuple[tuple[str, Path, list[str]], ...]:
    """The GNU tar baselines: (name, archive, flags), the zstd one first."""
    return (("zst", files["tzst"], ["--zstd", "-xf"]), ("tar", files["tar"], ["-xf"]))


def time_tar(archive: Path, flags: list[str], dest: Path) -> tuple[float, float]:
    """Extract ``archive`` with GNU tar into a new folder ``dest``, after an untimed ``sync``:
    (wall seconds, CPU seconds of tar and its zstd); the caller times the ``sync`` after it."""
    dest.mkdir()
    _run(["sync"])
    cpu = _children_cpu()
    wall = _timed(["tar", *flags, str(archive), "-C", str(dest)])[0]
    return wall, _children_cpu() - cpu


def _children_cpu() -> float:
    """User + system CPU seconds of every child waited for so far (a step's is the difference:
    tar's includes its zstd child; ours every thread of the child process)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _row(name: str, values: list[float], base: float | None, width: int = 52) -> str:
    med = statistics.median(values)
    ratio = f"{med / base:6.2f}x" if base else ""
    return f"{name:<{width}} {med:7.3f}  ({min(values):.3f}-{max(values):.3f})  {ratio}"


def main(argv: list[str] | None = None) -> int:
    os.umask(os.umask(0o022) | 0o022)  # agents refuse group/world-writable configs and roots
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--child", nargs=3, metavar=("PACKAGE", "PUB", "DEST"), help=argparse.SUPPRESS)
    add_bytecode_flag(ap)
    args = ap.parse_args(argv)
    if args.child:
        child(*(Path(p) for p in args.child))
        return 0
    print(prepare_bytecode(args.from_source), flush=True)
    files = prepare()
    runs_dir = OUT / f"runs-{os.getpid()}"
    runs_dir.mkdir()
    t: dict[str, list[float]] = {}
    phases: list[dict[str, float]] = []

    def add(key: str, value: float) -> None:
        t.setdefault(key, []).append(value)

    done = False
    try:
        for i in range(args.runs):
            for kind, archive, flags in tar_kinds(files):
                wall, cpu = time_tar(archive, flags, runs_dir / f"{kind}-{i}")
                add(kind, wall)
                add(f"{kind}-cpu", cpu)
                add(f"{kind}+sync", wall + _timed(["sync"])[0])
            # With and without chunks alternate which goes first, so that neither always runs
            # right after the other (the previous figures always ran the chunked one first).
            for kind in ("ours", "ours-whole")[:: 1 if i % 2 == 0 else -1]:
                _run(["sync"])
                package = files["package" if kind == "ours" else "whole"]
                cmd = [sys.executable, __file__, "--child", str(package), str(files["pub"])]
                cpu = _children_cpu()
                wall, out = _timed([*cmd, str(runs_dir / f"{kind}-{i}")])
                add(kind, wall)
                add(f"{kind}-cpu", _children_cpu() - cpu)
                if kind == "ours":
                    phases.append(json.loads(out))
            for name, stream in (("upload", True), ("upload-nostream", False)):
                _run(["sync"])
                (runs_dir / f"{name}-{i}").mkdir()
                add(name, _upload_stage(runs_dir / f"{name}-{i}", files, stream))
            _run(["sync"])
            (runs_dir / f"local-{i}").mkdir()
            add("local", _local_stage(runs_dir / f"local-{i}", files))
            add("pass", _timed([sys.executable, "-c", "pass"])[0])
            print(f"round {i + 1}/{args.runs} done", file=sys.stderr, flush=True)
        done = True
    finally:
        if not done:
            shutil.rmtree(runs_dir, ignore_errors=True)
    _report(args.runs, t, phases)
    # The trees go once the report is out: removing 15 trees of 20,000 files takes minutes here.
    print(f"removing {runs_dir} ...", file=sys.stderr, flush=True)
    shutil.rmtree(runs_dir, ignore_errors=True)
    return 0


def _report(runs: int, t: dict[str, list[float]], phases: list[dict[str, float]]) -> None:

    base = statistics.median(t["zst+sync"])
    ph = {k: [p[k] for p in phases] for k in phases[0]}
    print(f"\nextract benchmark: 20,000 files / 250 MiB corpus, {runs} interleaved rounds")
    print(f"median seconds (min-max); ratio vs `tar --zstd -xf && sync` = {base:.3f} s\n")
    print(_row("tar -xf X.tar", t["tar"], base))
    print(_row("tar -xf X.tar && sync", t["tar+sync"], base))
    print(_row("tar --zstd -xf X.tar.zst", t["zst"], base))
    print(_row("tar --zstd -xf X.tar.zst && sync   [baseline]", t["zst+sync"], base))
    print(_row("ours, whole process (incl. start-up + imports)", t["ours"], base))
    print(_row("ours, in-process (verify..syncfs)", ph["in_process"], base))
    print(_row("  python -c pass", t["pass"], None))
    for name in ("imports", "verify_release", "payload_digest", "extract", "syncfs"):
        print(_row(f"  ours: {name}", ph[name], None))
    print(_row("    of extract: waiting for decompressed data", ph["extract_waiting"], None))
    print(_row("ours, whole process, package without chunks", t["ours-whole"], base))
    cpu_base = statistics.median(t["zst-cpu"])
    print(
        f"\nCPU seconds (user + system), ratio vs `tar --zstd -xf` (tar + zstd) = {cpu_base:.3f} s\n"
    )
    print(_row("tar --zstd -xf X.tar.zst (tar + zstd)   [baseline]", t["zst-cpu"], cpu_base))
    print(_row("ours, whole process", t["ours-cpu"], cpu_base))
    print(_row("  ours: extract, every thread", ph["extract_cpu"], cpu_base))
    print(_row("    of which system (kernel: creating, writing)", ph["extract_cpu_sys"], None))
    print(_row("    of which the parsing thread", ph["extract_cpu_main"], None))
    local = statistics.median(t["local"])
    print(f"\nupload+stage over loopback vs stage from the local file = {local:.3f} s\n")
    print(_row("cutover-agent stage PACKAGE (local file, CLI)   [baseline]", t["local"], local))
    print(_row("upload+stage over loopback (streaming stage)", t["upload"], local))
    print(_row("upload+stage over loopback (stream_uploads off)", t["upload-nostream"], local))
    durable = statistics.median(t["ours"]) / base
    upload = statistics.median(t["upload"]) / local
    print(
        f"\nload average at the end: {os.getloadavg()[0]:.2f} (2 cores; quote it with the ratios)"
    )
    print(_goal("durable stage, whole process / `tar --zstd -xf && sync`", durable, 1.0))
    print(_goal("upload+stage (streaming) / local `cutover-agent stage`", upload, 1.15), flush=True)


def _goal(what: str, ratio: float, goal: float) -> str:
    return f"{what}: {ratio:.2f}x; goal <= {goal:.2f}x: {'met' if ratio <= goal else 'NOT met'}"


if __name__ == "__main__":
    sys.exit(main())
