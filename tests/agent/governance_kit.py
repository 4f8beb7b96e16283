"""A governed host for the governance tests: one trusted release key per role, the release
process's approval matrix in the agent config, packages built and signed by any set of roles,
and the agent's own stage-time verification run in-process."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from cutover.agent.config import load_config
from cutover.agent.keys import PrivateKey, generate_keypair
from cutover.agent.package.container import open_package
from cutover.agent.trust.policy import HostHistory, verify_release
from cutover.controller.build import build_package, sign_package
from tests.conftest import Host

__all__ = ["MATRIX", "ROLES", "Gov", "offline", "online", "verify"]

ROLES = ("technical", "product", "business", "security", "management")

# The matrix of the release process (issue 13), as an agent config would state it.
MATRIX = """
[apps.demo.approvals]
patch = ["technical"]
hotfix = ["technical"]
minor = ["technical", "product"]
major = ["technical", "product", "business"]
security = ["technical", "security"]
destructive_migration = ["technical", "management"]
"""


class Gov:
    """A host whose app trusts one key per role, plus packages built and signed for it."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.keys: dict[str, PrivateKey] = {}
        keydir = host.tmp / "keys"
        for role in ROLES:
            self.keys[role] = generate_keypair(keydir / role)
        self.n = 0

    def configure(self, extra: str = MATRIX, app_lines: str = "") -> None:
        entries = ", ".join(
            f'{{path = "{self.host.tmp / "keys" / role}.pub", roles = ["{role}"]}}'
            for role in ROLES
        )
        self.host.config.write_text(
            f'[apps.demo]\nroot = "{self.host.root}"\nrelease_keys = [{entries}]\n'
            f"threshold = 1\nkeep = 5\n{app_lines}{extra}"
        )

    def package(
        self,
        version: str,
        release_type: str,
        signed_by: tuple[str, ...],
        *,
        destructive: bool = False,
        branch: str = "main",
        toml: str = "",
        migrating: bool = False,
    ) -> Path:
        self.n += 1
        src = self.host.tmp / "src" / f"gov-{self.n}"
        src.mkdir(parents=True)
        (src / "index.html").write_text(f"{version}\n")
        (src / "cutover.toml").write_text(
            f'app = "demo"\n{toml}\n[release]\nrelease_type = "{release_type}"\n'
            + ("requires_migration = true\n" if destructive or migrating else "")
            + ("destructive_migration = true\n" if destructive else "")
        )
        out = self.host.tmp / "packages" / str(self.n) / f"demo-{version}.cutover"
        build_package(src, out, version=version, branch=branch)
        for role in signed_by:
            sign_package(out, self.keys[role])
        return out

    def refused(self, pkg: Path, *needles: str) -> dict[str, object]:
        before = self.host.snapshot()
        proc = self.host.cli("stage", str(pkg))
        assert proc.returncode == 3, proc.stdout + proc.stderr
        body = json.loads(proc.stdout)
        for needle in needles:
            assert needle in body["message"], body["message"]
        assert self.host.snapshot() == before
        return body


def online(host: Host) -> Gov:
    """A governed host driven through the real CLI (``host`` was initialised by ``init``)."""
    g = Gov(host)
    g.configure()
    return g


def offline(tmp_path: Path) -> Gov:
    """The same keys and config for in-process checks: no CLI, no ``init`` (faster)."""
    host = Host(tmp_path / "srv" / "demo", tmp_path / "etc" / "agent.toml", "demo", tmp_path)
    host.root.mkdir(parents=True)
    host.config.parent.mkdir(parents=True)
    (tmp_path / "keys").mkdir()
    return online(host)


def verify(gov: Gov, pkg: Path, highest: str | None = None) -> None:
    """The agent's stage-time verification of ``pkg`` under the current config, in-process."""
    parts, fh = open_package(pkg)
    fh.close()
    verify_release(
        parts.manifest_bytes,
        parts.signatures_bytes,
        load_config(gov.host.config).policies["demo"],
        expected_version=None,
        history=HostHistory(highest_version=highest),
        now=datetime.now(UTC),
    )
