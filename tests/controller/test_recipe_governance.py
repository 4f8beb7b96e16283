"""The Laravel recipe's governance example works as written (docs/recipes/laravel.md,
"Governance"): its agent config loads with real keys, its ``cutover.toml`` builds a real package
whose maintenance-mode and queue hooks are in the signed manifest, and the agent's own stage-time
verification refuses it with the technical signature alone and accepts it with the product
owner's too."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cutover.agent.config import load_config
from cutover.agent.errors import MismatchError, SignatureError
from cutover.agent.keys import generate_keypair
from cutover.agent.package.container import open_package
from cutover.agent.package.manifest import parse_manifest
from cutover.agent.trust.policy import HostHistory, verify_release
from cutover.controller.build import build_package, sign_package
from cutover.controller.notes import notes_markdown

RECIPE = Path(__file__).resolve().parents[2] / "docs" / "recipes" / "laravel.md"


def _governance_blocks() -> tuple[str, str]:
    text = RECIPE.read_text()
    section = text[text.index("### Governance") : text.index("## 4. nginx")]
    agent_toml, app_toml = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    return agent_toml, app_toml


def test_the_recipes_governance_example_is_enforced_as_described(tmp_path: Path) -> None:
    agent_toml, app_toml = _governance_blocks()
    (tmp_path / "keys").mkdir()
    keys = {
        n: generate_keypair(tmp_path / "keys" / n) for n in ("tech-lead", "product", "cto", "sec")
    }
    root = tmp_path / "srv" / "ame"
    root.mkdir(parents=True)
    config = tmp_path / "agent.toml"
    config.write_text(
        agent_toml.replace("/etc/cutover/keys/", f"{tmp_path / 'keys'}/").replace(
            '"/srv/ame"', f'"{root}"'
        )
    )
    cfg = load_config(config)
    section, policy = cfg.apps["ame"], cfg.policies["ame"]
    assert [w.name for w in section.freeze.weekly] == ["friday-evening"]
    assert policy.key_roles[keys["cto"].keyid] == frozenset({"business", "management"})

    src = tmp_path / "src"
    src.mkdir()
    (src / "cutover.toml").write_text(app_toml)
    (src / "artisan").write_text("<?php\n")

    def build(version: str, branch: str = "main") -> Path:
        out = tmp_path / branch.replace("/", "-") / f"ame-{version}.cutover"
        build_package(src, out, version=version, branch=branch, requirements=section.require)
        return out

    def verify(pkg: Path) -> None:
        parts, fh = open_package(pkg)
        fh.close()
        verify_release(
            parts.manifest_bytes,
            parts.signatures_bytes,
            policy,
            expected_version=None,
            history=HostHistory(highest_version="1.3.2"),
            now=datetime.now(UTC),
        )

    pkg = build("1.4.0")
    parts, fh = open_package(pkg)
    fh.close()
    manifest = parse_manifest(parts.manifest_bytes)
    hooks = manifest.hooks
    assert [h.name for h in hooks.pre_activate] == ["down", "migrate"]
    assert [h.name for h in hooks.post_activate] == ["up", "queue-restart"]
    assert [h.name for h in hooks.post_rollback] == ["queue-restart"]
    assert [h.name for h in hooks.on_failure or []] == ["up"]
    assert "- rollback safety: needs-confirmation" in notes_markdown(manifest)

    sign_package(pkg, keys["tech-lead"])
    with pytest.raises(SignatureError, match="missing: product") as exc:
        verify(pkg)
    assert exc.value.code == "approvals"
    sign_package(pkg, keys["product"])
    verify(pkg)  # minor: technical + product

    other = build("1.4.0", branch="feature/csv")
    for k in ("tech-lead", "product"):
        sign_package(other, keys[k])
    with pytest.raises(MismatchError) as branch:
        verify(other)
    assert branch.value.code == "branch"
