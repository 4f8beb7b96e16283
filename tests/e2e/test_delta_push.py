"""Delta push end to end (issue 12 items 2 and 3): real ``cutover-agent serve`` daemons on
127.0.0.1, the real ``cutover`` CLI and the typed client.

The ``missing`` endpoint answers from the host's content index and refuses malformed bodies;
``cutover push`` sends each host only the files it lacks (``transfer`` in ``--json``, the
``sent`` column for humans) and the staged tree is the signed one; ``--no-delta`` sends the
full package.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cutover.agent.errors import AuthError, PayloadTooLargeError, RequestError
from cutover.agent.package.container import open_package
from cutover.agent.package.manifest import FileEntry, parse_manifest
from cutover.controller.build import build_package, sign_package
from cutover.controller.delta import ask_missing
from tests.e2e.conftest import APP, BIN, Agent, Keys, run_op
from tests.e2e.fleet_fixture import Fleet, results

pytestmark = [pytest.mark.e2e]

V1, V2 = "1.0.0", "2.0.0"


def _tree(root: Path, version: str) -> None:
    """Forty files, of which the second release changes one and adds one."""
    for i in range(40):
        p = root / "vendor" / f"pkg{i % 4}" / f"file{i}.php"
        p.parent.mkdir(parents=True, exist_ok=True)
        noise = "".join(hashlib.sha256(f"{i}.{j}".encode()).hexdigest() for j in range(60))
        p.write_text(f"<?php // file {i}\n{noise}\n")  # about 4 KB that compresses poorly
    (root / "VERSION").write_text(f"{version}\n")
    if version != V1:
        (root / "vendor" / "pkg0" / "file0.php").write_text("<?php // changed\n")
        (root / "public").mkdir()
        (root / "public" / "new.js").write_text("console.log('new');\n")
    (root / "cutover.toml").write_text(f'app = "{APP}"\n')


@pytest.fixture(scope="module")
def pkgs(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("delta-packages")
    out: dict[str, Path] = {}
    for version in (V1, V2):
        src = tmp / f"src-{version}"
        _tree(src, version)
        out[version] = tmp / f"{APP}-{version}.cutover"
        build_package(src, out[version], version=version)
        sign_package(out[version], keys.release)
    return out


def _digests(pkg: Path) -> list[str]:
    parts, fh = open_package(pkg)
    fh.close()
    manifest = parse_manifest(parts.manifest_bytes)
    return sorted({e.sha256 for e in manifest.files if isinstance(e, FileEntry)})


async def _stage(agent: Agent, pkg: Path, version: str) -> None:
    async with agent.client() as client:
        record = await run_op(client, await client.upload(APP, version, pkg))
        assert record.status == "succeeded", record


async def test_missing_answers_from_the_content_index(agent: Agent, pkgs: dict[str, Path]) -> None:
    await _stage(agent, pkgs[V1], V1)
    have, want = set(_digests(pkgs[V1])), _digests(pkgs[V2])
    async with agent.client() as client:
        missing = await ask_missing(client, APP, V2, want)
        resp = await client.request(
            "POST",
            f"/v1/apps/{APP}/releases/{V2}/missing",
            content=json.dumps({"digests": want}).encode(),
            content_type="application/json",
        )
        body = json.loads(await resp.aread(1 << 20))
        await resp.aclose()
    assert missing == [d for d in want if d not in have] and len(missing) == 3
    assert body == {"missing": missing, "present": len(want) - 3}


async def test_missing_takes_a_large_body_within_its_own_cap(agent: Agent) -> None:
    """150,000 digests (about 10 MiB: far over the 64 KiB of other JSON bodies) are answered;
    a body over the endpoint's 16 MiB is 413."""
    many = sorted({hashlib.sha256(str(i).encode()).hexdigest() for i in range(150_000)})
    async with agent.client() as client:
        assert await ask_missing(client, APP, V2, many) == many
        with pytest.raises(PayloadTooLargeError):
            huge = json.dumps({"digests": many, "pad": "x" * (17 << 20)}).encode()

            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(huge), 1 << 20):
                    yield huge[start : start + (1 << 20)]

            await client.request(
                "POST",
                f"/v1/apps/{APP}/releases/{V2}/missing",
                content=chunks(),
                content_type="application/json",
                content_sha256=hashlib.sha256(huge).digest(),
                content_length=len(huge),
            )


@pytest.mark.parametrize(
    ("digests", "why"),
    [
        (["A" * 64], "is not a lowercase SHA-256 hex digest"),
        (["a" * 63], "is not a lowercase SHA-256 hex digest"),
        (["b" * 64, "b" * 64], "more than once"),
        ("b" * 64, "valid list"),
    ],
    ids=["uppercase", "short", "duplicate", "not-a-list"],
)
async def test_missing_refuses_a_malformed_body(agent: Agent, digests: object, why: str) -> None:
    before = agent.snapshot()
    async with agent.client() as client:
        with pytest.raises(RequestError) as info:
            await client.request(
                "POST",
                f"/v1/apps/{APP}/releases/{V2}/missing",
                content=json.dumps({"digests": digests}).encode(),
                content_type="application/json",
            )
    assert info.value.code == "bad_request" and why in str(info.value)
    assert agent.snapshot() == before


async def test_missing_needs_a_deploy_key(agent: Agent, keys: Keys) -> None:
    async with agent.client(keys.read) as client:
        with pytest.raises(AuthError) as info:
            await ask_missing(client, APP, V2, ["c" * 64])
    assert info.value.code == "forbidden_role"


@pytest.fixture
def pair(tmp_path: Path, keys: Keys) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path / "fleet", keys, {"a-1": ["web"], "a-2": ["web"]})
    fleet.start()
    yield fleet
    fleet.stop()


def _verify(agent: Agent, version: str) -> None:
    proc = subprocess.run(
        [str(BIN / "cutover-agent"), "--config", str(agent.config), "--json", "verify", version],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"] is True, proc.stdout


def test_push_sends_each_host_only_what_it_lacks(pair: Fleet, pkgs: dict[str, Path]) -> None:
    pair.stream("push", str(pkgs[V1]), expect=0)
    events = pair.stream("push", str(pkgs[V2]), expect=0)
    size = pkgs[V2].stat().st_size
    for name, host in results(events).items():
        transfer = host["transfer"]
        assert host["status"] == "ok", host
        assert transfer["mode"] == "delta" and transfer["files_sent"] == 3, transfer
        assert transfer["package_bytes"] == size
        assert transfer["sent_bytes"] < size
        assert transfer["saved_bytes"] == size - transfer["sent_bytes"]
        agent = pair.agents[name]
        release = agent.root / "releases" / V2
        assert (release / "public" / "new.js").read_text() == "console.log('new');\n"
        content = json.loads((agent.meta / "state.json").read_text())["releases"][V2]["content"]
        # 3 files changed or new; 39 unchanged vendor files and cutover.toml linked
        assert content["payload_files"] == 3 and content["hardlink_files"] == 40
        _verify(agent, V2)
        _verify(agent, V1)

    human = pair.cutover("push", str(pkgs[V2]))
    assert human.returncode == 0, human.stderr
    assert "sent" in human.stdout and "delta (saved" in human.stdout


def test_push_no_delta_sends_the_full_package(pair: Fleet, pkgs: dict[str, Path]) -> None:
    pair.stream("push", str(pkgs[V1]), expect=0)
    events = pair.stream("push", str(pkgs[V2]), "--no-delta", expect=0)
    size = pkgs[V2].stat().st_size
    for host in results(events).values():
        assert host["transfer"]["mode"] == "full" and host["transfer"]["sent_bytes"] == size
