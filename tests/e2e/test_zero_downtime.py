"""Zero downtime with a real nginx: hundreds of activations and rollbacks under load, and not one
failed request or mixed-up response.

nginx (a child process, 127.0.0.1, config in tmp_path) serves ``<root>/current/public`` as static
files. A bounded asyncio load generator requests random files of the two releases continuously
while the agent's lifecycle (AppManager, in-process: the daemon's code path) alternates
``activate B`` / ``rollback`` between them. Every file of a release carries that release's version
marker and content unique to it, so each response can be traced to exactly one complete release.
Why nginx picks up every flip without a reload: see :mod:`tests.e2e.nginx_fixture`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from cutover.agent.config import load_config
from cutover.agent.lifecycle.manager import AppManager
from tests.conftest import Host, PackageFactory
from tests.e2e.nginx_fixture import Nginx, ensure_nginx, run_nginx

pytestmark = pytest.mark.e2e

A, B = "1.0.0", "2.0.0"
FLIPS = 200  # activations of B, each followed by a rollback to A: 400 switches of `current`
WORKERS = 8  # concurrent client connections
MAX_REQUESTS = 400_000  # the load stops by itself even if the flipper hangs...
WARMUP = 200  # responses before the first flip
DEADLINE_S = 150.0  # ...or at this deadline (the test then fails: the flips did not finish)
MARKER = re.compile(rb"release=(\d+\.\d+\.\d+)")

# public/ path -> size in bytes: an index page, a version page and 18 assets, 300 B to 192 KiB.
PUBLIC = {
    "index.html": 2_000,
    "version.json": 0,
    "assets/app.css": 12_000,
    "assets/app.js": 48_000,
    "assets/vendor.js": 196_608,
    "assets/fonts.css": 900,
    **{f"img/icon-{i:02}.svg": 300 + 700 * i for i in range(10)},
    "docs/changelog.html": 24_000,
    "docs/about.html": 5_000,
    "robots.txt": 300,
    "favicon.ico": 4_000,
}
assert len(PUBLIC) == 20


def _filler(version: str, path: str, size: int) -> str:
    """Text unique to (version, path): a body can match only one release's copy of a file."""
    lines = [
        hashlib.sha256(f"{version}:{path}:{i}".encode()).hexdigest() + "\n"
        for i in range(size // 65 + 1)
    ]
    return "".join(lines)[:size]


def release_files(version: str) -> dict[str, str]:
    """Every file of the release: each one starts with ``release=VERSION``."""
    files = {"VERSION": f"{version}\n"}
    for path, size in PUBLIC.items():
        if path == "index.html":
            links = "".join(f'<a href="/{p}">{p}</a>\n' for p in PUBLIC if p != path)
            body = (
                f'<!doctype html><html><head><meta name="release" content="{version}">'
                f"<title>demo {version}</title></head><body>\n<!-- release={version} -->\n"
                f"<h1>demo {version}</h1>\n{links}<pre>{_filler(version, path, size)}</pre>"
                "</body></html>\n"
            )
        elif path == "version.json":
            body = f'{{"app": "demo", "version": "{version}", "marker": "release={version}"}}\n'
        else:
            body = f"/* release={version} {path} */\n{_filler(version, path, size)}"
        files[f"public/{path}"] = body
    return files


@dataclass
class Load:
    """What the load generator saw."""

    ok: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    index_versions: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    samples: list[str] = field(default_factory=list)  # first few failures, for the message
    during_flips: int = 0  # responses completed while the flipper was running
    serving: asyncio.Event = field(default_factory=asyncio.Event)  # set after WARMUP responses

    def fail(self, what: str) -> None:
        self.failures += 1
        if len(self.samples) < 10:
            self.samples.append(what)


@pytest.fixture(scope="session")
def nginx_binary() -> Path:
    """nginx, installed with apt-get (Debian's nginx-light) when missing and possible."""
    return ensure_nginx()


@pytest.fixture
def nginx(nginx_binary: Path, host: Host) -> Iterator[Nginx]:
    with run_nginx(nginx_binary, host.tmp / "nginx", host.root / "current" / "public") as server:
        yield server


async def _load(
    url: str,
    expected: dict[str, dict[str, bytes]],
    load: Load,
    stop: asyncio.Event,
    flipping: asyncio.Event,
    seed: int,
) -> None:
    """One client worker: GET random files until told to stop or the request budget is spent."""
    rng = random.Random(seed)  # noqa: S311  # a load pattern, not a secret
    paths = ["/", *(f"/{p}" for p in PUBLIC)]
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        while not stop.is_set() and load.ok + load.failures < MAX_REQUESTS:
            path = rng.choice(paths)
            try:
                async with session.get(url + path) as resp:
                    status, body = resp.status, await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                load.fail(f"GET {path}: {type(exc).__name__}: {exc}")
                continue
            found = MARKER.search(body)
            version = found.group(1).decode() if found else "?"
            if status != 200:
                load.fail(f"GET {path}: status {status}")
            elif version not in expected:
                load.fail(f"GET {path}: no known release marker in {body[:80]!r}")
            elif body != expected[version][path]:
                load.fail(f"GET {path}: body is not release {version}'s complete file")
            else:
                load.ok += 1
                if load.ok >= WARMUP:
                    load.serving.set()
                load.versions[version] += 1
                if path in ("/", "/index.html"):
                    load.index_versions[version] += 1
                if flipping.is_set():
                    load.during_flips += 1


async def _flip(mgr: AppManager, flipping: asyncio.Event, done: list[str]) -> None:
    flipping.set()
    try:
        for _ in range(FLIPS):
            await mgr.activate(B)
            done.append(B)
            await mgr.rollback()
            done.append(A)
    finally:
        flipping.clear()


def test_hundreds_of_flips_under_load_fail_no_request(
    host: Host, make_package: PackageFactory, nginx: Nginx
) -> None:
    """While ``current`` is switched between two releases 400 times (200 activations of B, each
    rolled back to A), concurrent clients get only status 200 bodies, each byte-identical to one
    release's complete file, both releases are seen, nginx logs no error, and the journal and both
    releases still verify."""
    cfg = load_config(host.config)
    mgr = AppManager(host.app, cfg.apps[host.app], cfg.policies[host.app], actor="e2e")
    for version in (A, B):
        asyncio.run(mgr.stage(make_package(version, files=release_files(version))))
    asyncio.run(mgr.activate(A))
    expected = {
        v: {
            **{f"/{p}": c.encode() for p, c in _public(release_files(v)).items()},
            "/": release_files(v)["public/index.html"].encode(),
        }
        for v in (A, B)
    }
    done: list[str] = []

    async def scenario() -> float:
        stop, flipping = asyncio.Event(), asyncio.Event()
        workers = [
            asyncio.create_task(_load(nginx.url, expected, load, stop, flipping, seed))
            for seed in range(WORKERS)
        ]
        try:
            async with asyncio.timeout(DEADLINE_S):
                await load.serving.wait()  # nginx serves A before the first flip
                started = time.monotonic()
                await _flip(mgr, flipping, done)
                return time.monotonic() - started
        finally:
            stop.set()
            await asyncio.gather(*workers)

    load = Load()
    flip_seconds = asyncio.run(scenario())

    assert done == [B, A] * FLIPS
    assert load.failures == 0, f"{load.failures} failed requests, e.g. {load.samples}"
    assert set(load.versions) == {A, B}, load.versions
    assert set(load.index_versions) == {A, B}, load.index_versions
    assert load.during_flips > 0
    assert nginx.process.poll() is None, "nginx died during the test"
    assert nginx.errors() == []
    assert host.current == f"releases/{A}"
    state = host.state()
    assert (state["current"], state["pending"]) == (A, None)
    assert [e["event"] for e in host.journal()].count("rollback.done") == FLIPS
    assert host.cli_json("journal", "--verify")["ok"] is True  # hash chain intact after 400 ops
    assert asyncio.run(mgr.check_drift(B)).details["drift"] == {B: []}
    print(
        f"\n{2 * FLIPS} flips in {flip_seconds:.1f}s under {WORKERS} clients; "
        f"{load.ok} responses ({load.during_flips} during flips): "
        f"{A}: {load.versions[A]}, {B}: {load.versions[B]}; index page {dict(load.index_versions)}"
    )


def _public(files: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix("public/"): v for k, v in files.items() if k.startswith("public/")}
