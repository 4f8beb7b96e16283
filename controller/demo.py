"""``make demo``: a three-agent demo fleet on 127.0.0.1, driven by the real ``cutover`` commands.

Everything is real: Ed25519 keys, deterministic signed packages, three ``cutover-agent serve``
daemons on loopback ports, a ``fleet.toml``, the fleet commands (``deploy``, ``deploy --rollout``
with a canary and waves, ``status``,
``rollback``, ``log``) over the signed HTTP API, subprocess hooks, health checks, the automatic
revert of a release that fails its live check, and the on-host CLI. All files live under
``./demo-run/`` (recreated each run); the agents are stopped at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console

from cutover.agent.keys import PrivateKey, generate_keypair
from cutover.controller.build import build_package, sign_package

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


def _wait_healthy(hosts: list[DemoHost]) -> None:
    deadline = time.monotonic() + 30
    waiting = list(hosts)
    while waiting:
        host = waiting[0]
        try:
            with urllib.request.urlopen(f"{host.url}/v1/health", timeout=1):  # noqa: S310  # loopback
                waiting.pop(0)
                console.print(
                    f"    {host.name} listening on {host.url} (logs: {host.dir / 'agent.log'})"
                )
                continue
        except OSError:
            pass
        if time.monotonic() > deadline or (host.proc and host.proc.poll() is not None):
            raise SystemExit(f"{host.name} did not start; see {host.dir / 'agent.log'}")
        time.sleep(0.1)


def _write_fleet(work: Path, hosts: list[DemoHost]) -> Path:
    lines = [f'app = "{APP}"', f'controller_key = "{work / "keys" / "operator"}"', ""]
    lines += ["[concurrency]", "max_parallel = 3", ""]
    for i, h in enumerate(hosts):
        groups = ["web", "canary"] if i == 0 else ["web"]
        lines += [f"[hosts.{h.name}]", f'url = "{h.url}"', f"groups = {json.dumps(groups)}", ""]
    path = work / "fleet.toml"
    path.write_text("\n".join(lines))
    return path


def _cutover(fleet: Path, *args: str) -> int:
    """Run the real controller CLI against the demo fleet; its output goes to the terminal."""
    console.print(f"    [dim]$ cutover {' '.join(args)}[/]")
    sys.stdout.flush()
    proc = subprocess.run(
        [str(BIN / "cutover"), *args],
        env={**os.environ, "CUTOVER_FLEET": str(fleet)},
        check=False,
    )
    console.print(f"    [dim]exit {proc.returncode}[/]")
    return proc.returncode


def _expect(code: int, wanted: int, what: str) -> None:
    if code != wanted:
        raise SystemExit(f"demo: {what} exited {code}, expected {wanted}")


def _demo(work: Path) -> int:
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

    _step("start three agents on 127.0.0.1 (cutover-agent init + serve) and write fleet.toml")
    hosts = [
        DemoHost(work, n, work / "keys" / "release.pub", work / "keys" / "operator.pub")
        for n in ("web-1", "web-2", "web-3")
    ]
    for h in hosts:
        h.start()
    try:
        _wait_healthy(hosts)
        fleet = _write_fleet(work, hosts)
        console.print(f"    {fleet}: web-1 (groups web, canary), web-2, web-3 (group web)")

        state = ["--state-dir", str(work / "controller-state")]
        waves = ["--canary", "1", "--batch", "1", "--bake", "1", *state]
        _step("deploy 1.0.0: stage on every host first, then activate all at once")
        _expect(_cutover(fleet, "deploy", str(pkgs["1.0.0"])), 0, "deploy 1.0.0")
        _step("deploy 1.1.0 as a rollout: canary web-1, then one host per wave, 1 s bake each")
        _expect(_cutover(fleet, "deploy", str(pkgs["1.1.0"]), "--rollout", *waves), 0, "rollout")
        _step("fleet status")
        _expect(_cutover(fleet, "status"), 0, "status")

        _step(
            "deploy 1.2.0 as a rollout: the canary's live check fails, the agent flips back by "
            "itself, the later waves never start, and the failure report says why (exit 7)"
        )
        _expect(
            _cutover(fleet, "deploy", str(pkgs["1.2.0"]), "--rollout", *waves), 7, "broken rollout"
        )
        _expect(_cutover(fleet, "rollouts", *state), 0, "rollouts")
        _step("roll the whole fleet back to 1.0.0, every host in parallel")
        _expect(_cutover(fleet, "rollback", "--to", "1.0.0"), 0, "rollback")
        _expect(_cutover(fleet, "status"), 0, "status")

        _step("release history, merged from the three agents' journals")
        _expect(_cutover(fleet, "log", "--limit", "12"), 0, "log")

        _step("audit on web-1 with the on-host CLI: installed files and the hash-chained journal")
        v = hosts[0].cli("verify")
        j = hosts[0].cli("journal", "--verify")
        console.print(f"    web-1: {v['message']}; journal {j['entries']} entries, chain intact")
        workers = (hosts[0].root / "shared" / "storage" / "workers.log").read_text().splitlines()
        console.print(f"    web-1 shared/storage/workers.log: {workers}")
    finally:
        for h in hosts:
            code = h.stop()
            console.print(f"    stopped {h.name} (exit {code})")
    _step(
        f"done. Everything is under {work}/ — try: CUTOVER_FLEET={work}/fleet.toml {BIN}/cutover status"
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
    return _demo(work)


if __name__ == "__main__":
    sys.exit(main())
