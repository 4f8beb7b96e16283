"""``make demo``: a two-agent demo fleet on 127.0.0.1, end to end with real parts.

Everything is real: Ed25519 keys, deterministic signed packages, two ``cutover-agent serve``
daemons on loopback ports, the signed HTTP API, subprocess hooks, health checks, the on-host CLI.
All files live under ``./demo-run/`` (recreated each run); the agents are stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cutover.agent.api_models import Accepted, OperationRecord
from cutover.agent.keys import PrivateKey, generate_keypair
from cutover.controller.build import build_package, sign_package
from cutover.controller.client import AgentClient

console = Console(highlight=False)
BIN = Path(sys.executable).parent
APP = "shop"

CUTOVER_TOML = """\
app = "shop"

[shared]
dirs = ["storage"]

[[hooks.stage]]
name = "build assets"
argv = ["sh", "-c", "echo compiling assets for $CUTOVER_VERSION; echo built > public/build.txt"]

[[hooks.post_activate]]
name = "restart workers"
argv = ["sh", "-c", "echo workers now on $CUTOVER_VERSION >> $CUTOVER_SHARED_DIR/storage/workers.log"]

[[hooks.post_rollback]]
name = "restart workers"
argv = ["sh", "-c", "echo workers back on $CUTOVER_VERSION >> $CUTOVER_SHARED_DIR/storage/workers.log"]

[health.live]
interval_s = 0.2
retries = 1
healthy_deadline_s = 5
{extra_checks}
"""

FAILING_CHECK = """
[[health.live.checks]]
type = "command"
name = "smoke test /checkout"
argv = ["sh", "-c", "echo 'HTTP 500 on /checkout' >&2; exit 1"]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _step(text: str) -> None:
    console.print(f"\n[bold cyan]==>[/] [bold]{text}[/]")


def _make_release(work: Path, version: str, key: PrivateKey, *, broken: bool = False) -> Path:
    src = work / "src" / version
    (src / "public").mkdir(parents=True)
    (src / "public" / "index.html").write_text(f"<h1>shop {version}</h1>\n")
    (src / "VERSION").write_text(f"{version}\n")
    (src / "cutover.toml").write_text(
        CUTOVER_TOML.format(extra_checks=FAILING_CHECK if broken else "")
    )
    pkg = work / "packages" / f"{APP}-{version}.cutover"
    res = build_package(src, pkg, version=version, commit=f"demo{version.replace('.', '')}")
    sign_package(pkg, key)
    console.print(f"    built and signed {pkg.name}: {res.files} entries, {res.payload_size} bytes")
    return pkg


class DemoHost:
    def __init__(self, work: Path, name: str, release_pub: Path, controller_pub: Path) -> None:
        self.name = name
        self.dir = work / "hosts" / name
        self.root = self.dir / "srv" / APP
        self.port = _free_port()
        self.config = self.dir / "agent.toml"
        self.dir.mkdir(parents=True)
        self.config.write_text(
            f'[agent]\nname = "127.0.0.1:{self.port}"\nlisten = "127.0.0.1:{self.port}"\n'
            f'state_dir = "{self.dir / "state"}"\nlog_format = "json"\n\n'
            f'[[controller_keys]]\nname = "demo-operator"\npath = "{controller_pub}"\nrole = "deploy"\n'
        )
        self.cli(
            "init", "--app", APP, "--root", str(self.root), "--trust-release-key", str(release_pub)
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> dict[str, Any]:
        proc = subprocess.run(
            [str(BIN / "cutover-agent"), "--config", str(self.config), "--json", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(
                f"{self.name}: cutover-agent {' '.join(args)} failed: {proc.stdout}{proc.stderr}"
            )
        return json.loads(proc.stdout) if proc.stdout.strip() else {}

    def start(self) -> None:
        log = (self.dir / "agent.log").open("wb")
        self.proc = subprocess.Popen(
            [str(BIN / "cutover-agent"), "--config", str(self.config), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


async def _wait_healthy(client: AgentClient, host: DemoHost) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await client.health()
            return
        except Exception:
            if time.monotonic() > deadline or (host.proc and host.proc.poll() is not None):
                raise SystemExit(
                    f"{host.name} did not start; see {host.dir / 'agent.log'}"
                ) from None
            await asyncio.sleep(0.1)


async def _run_op(client: AgentClient, host: DemoHost, accepted: Accepted) -> OperationRecord:
    op_id = accepted.operation
    async for event in client.events(op_id):
        name = event.event
        ev = event.model_dump()
        if name in (
            "verify.done",
            "extract.done",
            "hooks.done",
            "flip",
            "health.done",
            "revert.start",
            "revert.done",
            "stage.done",
            "activate.done",
            "rollback.done",
        ):
            detail = {
                k: v for k, v in ev.items() if k in ("phase", "status", "version", "to", "reason")
            }
            console.print(f"    [dim]{host.name}[/] {name} {json.dumps(detail)[:160]}")
        elif name == "hook.output":
            console.print(f"    [dim]{host.name}   | {ev.get('line')}[/]")
        if name == "operation.done":
            break
    return await client.wait(op_id)


def _table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="fleet", title_justify="left")
    for col in ("host", "current", "previous", "staged", "bad"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["host"],
            r["current"] or "-",
            r["previous"] or "-",
            r["staged"] or "-",
            f"[red]{r['bad']}[/]" if r["bad"] else "-",
        )
    return t


async def _status(clients: dict[str, AgentClient]) -> list[dict[str, Any]]:
    rows = []
    for name, c in clients.items():
        info = await c.app(APP)
        rels = info.releases
        rows.append(
            {
                "host": name,
                "current": info.current,
                "previous": info.previous,
                "staged": ", ".join(
                    r.version for r in rels if r.status == "staged" and r.installed
                ),
                "bad": ", ".join(r.version for r in rels if r.status == "bad"),
            }
        )
    return rows


async def _demo(work: Path) -> int:
    _step("keys: a release key (signs packages) and a controller key (signs API requests)")
    (work / "keys").mkdir(parents=True)
    release = generate_keypair(work / "keys" / "release")
    controller = generate_keypair(work / "keys" / "operator")
    console.print(f"    release key {release.keyid[:16]}…  controller key {controller.keyid[:16]}…")

    _step("build and sign three releases (1.2.0 ships a live health check that fails)")
    pkgs = {
        v: _make_release(work, v, release, broken=(v == "1.2.0"))
        for v in ("1.0.0", "1.1.0", "1.2.0")
    }

    _step("start two agents on 127.0.0.1 (cutover-agent init + serve)")
    hosts = [
        DemoHost(work, n, work / "keys" / "release.pub", work / "keys" / "operator.pub")
        for n in ("web-1", "web-2")
    ]
    for h in hosts:
        h.start()
    clients = {h.name: AgentClient(h.url, controller) for h in hosts}
    try:
        for h in hosts:
            await _wait_healthy(clients[h.name], h)
            console.print(f"    {h.name} listening on {h.url} (logs: {h.dir / 'agent.log'})")

        for version in ("1.0.0", "1.1.0"):
            _step(f"push {version}: upload and stage on every host first")
            for h in hosts:
                res = await _run_op(
                    clients[h.name], h, await clients[h.name].upload(APP, version, pkgs[version])
                )
                if not res.succeeded:
                    raise SystemExit(f"{h.name}: {version} did not succeed: {res}")
            _step(f"activate {version}: canary web-1, then web-2")
            for h in hosts:
                res = await _run_op(
                    clients[h.name], h, await clients[h.name].activate(APP, version)
                )
                if not res.succeeded:
                    raise SystemExit(f"{h.name}: {version} did not succeed: {res}")
        console.print(_table(await _status(clients)))

        _step("1.2.0 on the canary: the live check fails, the agent flips back by itself")
        c1 = clients["web-1"]
        await _run_op(c1, hosts[0], await c1.upload(APP, "1.2.0", pkgs["1.2.0"]))
        res = await _run_op(c1, hosts[0], await c1.activate(APP, "1.2.0"))
        console.print(
            f"    operation {res.status}: [yellow]{(res.error.message if res.error else '')[:200]}[/]"
        )
        console.print(_table(await _status(clients)))

        _step("roll web-2 back over the API, then web-1 with the on-host CLI (the emergency path)")
        await _run_op(clients["web-2"], hosts[1], await clients["web-2"].rollback(APP))
        out = hosts[0].cli("rollback")
        console.print(f"    web-1$ cutover-agent rollback -> current {out['current']}")
        console.print(_table(await _status(clients)))

        _step("audit: verify installed files and the hash-chained journal on each host")
        for h in hosts:
            v = h.cli("verify")
            j = h.cli("journal", "--verify")
            console.print(
                f"    {h.name}: {v['message']}; journal {j['entries']} entries, chain intact"
            )
        workers = (hosts[0].root / "shared" / "storage" / "workers.log").read_text().splitlines()
        console.print(f"    web-1 shared/storage/workers.log: {workers}")
    finally:
        for c in clients.values():
            await c.close()
        for h in hosts:
            code = h.stop()
            console.print(f"    stopped {h.name} (exit {code})")
    _step(
        f"done. Everything is under {work}/ — try: {BIN}/cutover-agent --config {hosts[0].config} status"
    )
    return 0


def main() -> int:
    # The agents refuse group/world-writable configs, keys and roots (docs/security-model.md §1):
    # whatever the caller's umask, the demo's files are not.
    os.umask(os.umask(0o022) | 0o022)
    work = Path(os.environ.get("CUTOVER_DEMO_DIR", "demo-run")).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return asyncio.run(_demo(work))


if __name__ == "__main__":
    sys.exit(main())
