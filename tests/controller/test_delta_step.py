"""The stage step's delta decisions (controller/fleet/steps.py, controller/delta.py), against a
fake remote agent (the only fake: the packages, the delta containers and their files are real).

Per host: the delta container when the host holds some of the files; the full package when the
agent has no ``missing`` endpoint, holds nothing, or refuses the thin payload as lacking a base
file; a thin package is always uploaded as it is. Hosts lacking the same files share one
container.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from cutover.agent.package.container import open_package
from cutover.agent.package.delta import parse_delta
from cutover.agent.package.manifest import FileEntry, parse_manifest
from cutover.controller.build import build_package
from cutover.controller.delta import DeltaPlanner
from cutover.controller.fleet.agents import OpRecord
from cutover.controller.fleet.steps import stage_step


def _package(tmp: Path, version: str, changed: str, base: Path | None = None) -> Path:
    src = tmp / f"src-{version}"
    for i in range(12):
        p = src / "lib" / f"f{i}.php"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(hashlib.sha256(f"{i}{j}".encode()).hexdigest() for j in range(50)))
    (src / "lib" / "f0.php").write_text(changed)
    (src / "cutover.toml").write_text('app = "ame"\n')
    out = tmp / f"ame-{version}.cutover"
    build_package(src, out, version=version, base=base)
    return out


class Remote:
    """A fake agent: answers ``missing`` as told and records what was uploaded."""

    def __init__(self, missing: list[str] | None, fail_first: str | None = None) -> None:
        self._missing = missing
        self._fail_first = fail_first
        self.uploads: list[Path] = []
        self.asked: list[list[str]] = []

    async def missing(self, app: str, version: str, digests: list[str]) -> list[str] | None:
        self.asked.append(digests)
        return self._missing

    async def upload(
        self, app: str, version: str, package: Path, sha256: bytes, on_event: Any
    ) -> OpRecord:
        assert _sha256(package) == sha256
        self.uploads.append(package)
        if self._fail_first and len(self.uploads) == 1:
            error = {"error": self._fail_first, "kind": "digest_mismatch", "message": "lacks"}
            return OpRecord(id="op-1", op="stage", status="failed", error=error)
        return OpRecord(id="op-2", op="stage", status="succeeded", result={"version": version})


def _sha256(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def _size(path: Path) -> int:
    return path.stat().st_size


def _containers(workdir: Path) -> list[Path]:
    return list(workdir.glob("delta-*"))


def _files(pkg: Path) -> list[FileEntry]:
    parts, fh = open_package(pkg)
    fh.close()
    return [e for e in parse_manifest(parts.manifest_bytes).files if isinstance(e, FileEntry)]


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    return _package(tmp_path, "2.0", "changed\n")


async def test_a_host_holding_some_files_gets_a_delta(pkg: Path, tmp_path: Path) -> None:
    changed = next(e.sha256 for e in _files(pkg) if e.path == "lib/f0.php")
    planner = DeltaPlanner(pkg, tmp_path)
    remotes = [Remote([changed]), Remote([changed])]
    step = stage_step("ame", "2.0", package=pkg, delta=planner)
    done = [await step(r, lambda e: None) for r in remotes]  # type: ignore[arg-type]
    sent = remotes[0].uploads[0]
    assert sent != pkg and remotes[1].uploads == [sent]  # one container for both
    parts, fh = open_package(sent)
    fh.close()
    assert parts.delta_bytes is not None
    assert parse_delta(parts.delta_bytes).payload.size == parts.payload_size
    assert remotes[0].asked[0] == sorted({e.sha256 for e in _files(pkg)})
    transfer = done[0].transfer
    assert transfer is not None and transfer.mode == "delta" and transfer.files_sent == 1
    assert transfer.sent_bytes == _size(sent) < _size(pkg)
    assert transfer.saved_bytes == _size(pkg) - transfer.sent_bytes


@pytest.mark.parametrize(
    ("missing", "reason"),
    [(None, "the agent has no delta support"), ("all", "the host holds none of it")],
    ids=["no-endpoint", "holds-nothing"],
)
async def test_the_full_package_when_a_delta_cannot_help(
    pkg: Path, tmp_path: Path, missing: str | None, reason: str
) -> None:
    answer = None if missing is None else sorted({e.sha256 for e in _files(pkg)})
    remote = Remote(answer)
    step = stage_step("ame", "2.0", package=pkg, delta=DeltaPlanner(pkg, tmp_path))
    done = await step(remote, lambda e: None)  # type: ignore[arg-type]
    assert remote.uploads == [pkg]
    assert done.transfer is not None and (done.transfer.mode, done.transfer.reason) == (
        "full",
        reason,
    )
    assert _containers(tmp_path) == []


async def test_a_refused_thin_payload_is_retried_in_full(pkg: Path, tmp_path: Path) -> None:
    changed = next(e.sha256 for e in _files(pkg) if e.path == "lib/f0.php")
    remote = Remote([changed], fail_first="base_missing")
    step = stage_step("ame", "2.0", package=pkg, delta=DeltaPlanner(pkg, tmp_path))
    done = await step(remote, lambda e: None)  # type: ignore[arg-type]
    assert len(remote.uploads) == 2 and remote.uploads[1] == pkg
    assert done.status.value == "ok" and done.transfer is not None
    assert done.transfer.reason == "the host lost a base file"


async def test_a_thin_package_is_uploaded_as_it_is(tmp_path: Path) -> None:
    base = _package(tmp_path / "a", "1.0", "old\n")
    thin = _package(tmp_path / "b", "2.0", "new\n", base=base)
    remote = Remote([])
    step = stage_step("ame", "2.0", package=thin, delta=DeltaPlanner(thin, tmp_path))
    done = await step(remote, lambda e: None)  # type: ignore[arg-type]
    assert remote.uploads == [thin] and remote.asked == []
    assert done.transfer is not None and done.transfer.reason == "a thin package (--base)"
