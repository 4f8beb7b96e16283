"""Benchmark: the floor under a verifying full stage, against ``tar --zstd -xf && sync`` (issue 12).

    python bench/extract.py --runs 1      # once, to build the corpus and package (cached)
    python bench/extract_floor.py [--runs N]

``bench/extract.py`` times our durable full stage against GNU tar. This script says how far
any design can get on this machine, by timing, in one run and interleaved, the work that a
stage which verifies what it writes cannot skip and tar does not do, beside tar itself:

* ``tar --zstd -xf X.tar.zst && sync`` (the goal's baseline) and ``tar -xf X.tar && sync``
  (the same tree from an uncompressed tar: what creating and writing 20,000 files costs, with no
  decompression);
* in this process, no file written: the package's payload read from the page cache, each chunk
  hashed (SHA-256, the signed chunk digests), decompressed (python-zstandard, as our extractor
  does), and the decompressed stream hashed (SHA-256: the manifest's file digests cover every
  byte of every file). "bytes work" below; it is C code (OpenSSL, libzstd) called from Python;
* the fixed costs of our stage that tar has no counterpart for, in a fresh process: start-up and
  imports of the stage modules, and ``verify_release`` of the 20,000-entry manifest.

Then it prints two floors, each as a ratio to the baseline:

* a perfect two-core pipeline in our architecture: fixed costs + max(bytes work, writing),
  i.e. decompressing and hashing on one core, writing on the other, with no per-file Python at
  all;
* a native extractor (no interpreter, manifest checks in microseconds): max(bytes work,
  writing).

"Writing" is what creating and writing the tree costs GNU tar: ``tar -xf X.tar && sync``, or the
baseline if that is less (the baseline writes the same tree; on this disk the two swap places
from one round to the next). A floor above 1.0x means the goal cannot be met by that design on
this machine in this state, if writing cannot be done faster than tar does it. That holds when
the CPU is the limit; when the disk is (a fresh or loaded disk: ``sync`` takes seconds), our
extractor, which spreads the writeback over the extraction, has been measured writing faster
than tar (``bench/extract.py``: extract + syncfs under ``tar --zstd -xf && sync``), and the floor
is then an overestimate.
An untimed ``sync`` precedes every step; extracted trees are kept until the end of the run and
removed afterwards (mass deletes slow this disk; /work/shared/bench/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from _bytecode import add_bytecode_flag, prepare_bytecode
from extract import OUT, ROOT, VERSION, _timed, prepare, tar_kinds, time_tar

_FIXED = """
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
from datetime import UTC, datetime
from pathlib import Path
from cutover.agent.extract.extractor import extract_payload
from cutover.agent.keys import load_public_key
from cutover.agent.package.container import open_package
from cutover.agent.trust.policy import HostHistory, TrustPolicy, verify_release
t1 = time.perf_counter()
key = load_public_key(Path({pub!r}))
parts, fh = open_package(Path({package!r}))
with fh:
    verify_release(parts.manifest_bytes, parts.signatures_bytes,
                   TrustPolicy("ame", {{key.keyid: key}}), expected_version={version!r},
                   history=HostHistory(), now=datetime.now(UTC))
t2 = time.perf_counter()
print(json.dumps({{"imports": t1 - t0, "verify": t2 - t1}}))
"""


def bytes_work(package: Path) -> tuple[float, int, int]:
    """Seconds to read, chunk-hash, decompress and hash the payload (no writes); returns
    (seconds, compressed bytes, decompressed bytes)."""
    sys.path.insert(0, str(ROOT))
    import zstandard

    from cutover.agent.package.container import open_package

    parts, fh = open_package(package)
    with fh:
        fh.seek(parts.payload_offset)
        payload = fh.read(parts.payload_size)  # page cache: reading is not what is measured
    chunk = 4 << 20
    t0 = time.perf_counter()
    out = 0
    whole = hashlib.sha256()
    dctx = zstandard.ZstdDecompressor().decompressobj()
    view = memoryview(payload)
    for start in range(0, len(payload), chunk):
        piece = view[start : start + chunk]
        hashlib.sha256(piece).digest()
        data = dctx.decompress(piece)
        whole.update(data)
        out += len(data)
    whole.digest()
    return time.perf_counter() - t0, len(payload), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3)")
    add_bytecode_flag(ap)
    args = ap.parse_args(argv)
    print(prepare_bytecode(args.from_source), flush=True)
    files = prepare()
    runs_dir = OUT / "floor-runs"
    shutil.rmtree(runs_dir, ignore_errors=True)
    runs_dir.mkdir()
    t: dict[str, list[float]] = {}
    sizes = (0, 0)
    fixed_src = _FIXED.format(
        root=str(ROOT), pub=str(files["pub"]), package=str(files["package"]), version=VERSION
    )
    try:
        for i in range(args.runs):
            for kind, archive, flags in tar_kinds(files):
                wall = time_tar(archive, flags, runs_dir / f"{kind}-{i}")[0]
                t.setdefault(kind, []).append(wall + _timed(["sync"])[0])
            seconds, *rest = bytes_work(files["package"])
            sizes = (rest[0], rest[1])
            t.setdefault("bytes", []).append(seconds)
            wall, out = _timed([sys.executable, "-c", fixed_src])
            fixed = json.loads(out)
            t.setdefault("process", []).append(wall)
            t.setdefault("imports", []).append(fixed["imports"])
            t.setdefault("verify", []).append(fixed["verify"])
            print(f"round {i + 1}/{args.runs} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(runs_dir, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in t.items()}
    base = med["zst"]
    fixed_total = med["process"]  # start-up + imports + verify, as one fresh process pays them
    # Creating and writing the tree: tar's, without zstd; never more than the baseline's, which
    # writes the same tree (on this disk the two swap places from one round to the next).
    write = min(med["tar"], base)
    two_core = fixed_total + max(med["bytes"], write)
    native = max(med["bytes"], write)

    def row(name: str, value: float) -> str:
        return f"{name:<66} {value:7.3f}  {value / base:6.2f}x"

    print(f"\nfloor benchmark: {args.runs} interleaved rounds; medians, ratio vs the baseline\n")
    print(row("tar --zstd -xf X.tar.zst && sync   [baseline]", base))
    print(row("tar -xf X.tar && sync (create + write 20,000 files, no zstd)", med["tar"]))
    print(
        row(
            f"bytes work: sha256 {sizes[0] / 1e6:.0f} MB chunks, zstd -d, sha256 {sizes[1] / 1e6:.0f} MB",
            med["bytes"],
        )
    )
    print(row("fixed: fresh process, start-up + imports + verify_release", fixed_total))
    print(row("  of which imports", med["imports"]))
    print(row("  of which verify_release (20,000 entries)", med["verify"]))
    print(row("writing, as tar does it: min(tar -xf && sync, baseline)", write))
    print(row("floor, two-core pipeline in Python: fixed + max(bytes, writing)", two_core))
    print(row("floor, native extractor: max(bytes, writing)", native))
    print(
        "\nthe goal (durable stage <= 1.0x) is "
        + ("within reach of" if two_core <= base else "beyond")
        + " a perfect pipeline in our architecture, and "
        + ("within reach of" if native <= base else "beyond")
        + " a native extractor, on this machine in this state"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
