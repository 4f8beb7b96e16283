"""The controller CLI as a user runs it: keygen, build, sign (several signers), inspect."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

from cutover.agent.keys import load_private_key, load_public_key
from cutover.agent.package.container import open_package
from cutover.controller.build import build_package
from tests.conftest import BIN


def cutover(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cutover"), *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def test_keygen_writes_pem_pair_and_refuses_to_overwrite(tmp_path: Path) -> None:
    proc = cutover("keygen", str(tmp_path / "k"), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    priv, pub = load_private_key(tmp_path / "k"), load_public_key(tmp_path / "k.pub")
    assert out["keyid"] == priv.keyid == pub.keyid and len(out["keyid"]) == 64
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert (tmp_path / "k").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = (tmp_path / "k").read_bytes()
    again = cutover("keygen", str(tmp_path / "k"))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert (tmp_path / "k").read_bytes() == before


def _tree(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    (app / "public").mkdir(parents=True)
    (app / "public" / "index.php").write_text("<?php echo 'hi';\n")
    (app / "cutover.toml").write_text(
        'app = "ame"\n[[hooks.post_activate]]\nname = "queue restart"\nargv = ["php", "artisan", "queue:restart"]\n'
    )
    return app


def test_build_sign_twice_inspect(tmp_path: Path) -> None:
    app = _tree(tmp_path)
    for name in ("tech", "sec"):
        assert cutover("keygen", str(tmp_path / name)).returncode == 0
    pkg = tmp_path / "ame-1.0.0.cutover"
    proc = cutover(
        "build", str(app), "--version", "1.0.0", "-o", str(pkg), "--commit", "abc123", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["version"] == "1.0.0"
    assert json.loads(cutover("inspect", str(pkg), "--json").stdout)["signers"] == []
    for name in ("tech", "sec"):
        assert cutover("sign", str(pkg), "--key", str(tmp_path / name)).returncode == 0
    info = json.loads(cutover("inspect", str(pkg), "--json").stdout)
    keyids = {load_public_key(tmp_path / f"{n}.pub").keyid for n in ("tech", "sec")}
    assert set(info["signers"]) == keyids
    assert info["payload_matches"] is True and info["commit"] == "abc123"
    assert info["hooks"]["post_activate"] == [
        {
            "name": "queue restart",
            "argv": ["php", "artisan", "queue:restart"],
            "timeout_s": 300.0,
            "once": False,
        }
    ]
    checked = json.loads(
        cutover("inspect", str(pkg), "--json", "--trust", str(tmp_path / "tech.pub")).stdout
    )
    tech = load_public_key(tmp_path / "tech.pub").keyid
    assert checked["signature_check"][tech] == "valid"
    assert set(checked["signature_check"].values()) == {"valid", "unknown"}
    human = cutover("inspect", str(pkg))
    assert (
        "matches its digest" in human.stdout
        and "hooks.post_activate: queue restart: php artisan queue:restart" in human.stdout
    )


def test_inspect_reports_a_tampered_payload(tmp_path: Path) -> None:
    app = _tree(tmp_path)
    pkg = tmp_path / "ame-1.0.0.cutover"
    assert cutover("build", str(app), "--version", "1.0.0", "-o", str(pkg)).returncode == 0
    parts, fh = open_package(pkg)
    fh.close()
    data = bytearray(pkg.read_bytes())
    data[parts.payload_offset + parts.payload_size // 2] ^= 0xFF
    pkg.write_bytes(bytes(data))
    proc = cutover("inspect", str(pkg), "--json")
    assert proc.returncode == 3 and json.loads(proc.stdout)["payload_matches"] is False


def test_build_refuses_unsafe_trees_with_a_clear_error(tmp_path: Path) -> None:
    app = _tree(tmp_path)
    (app / "escape").symlink_to("../../etc/passwd")
    proc = cutover("build", str(app), "--version", "1.0.0", "-o", str(tmp_path / "x.cutover"))
    assert proc.returncode == 3 and "points outside the app tree" in proc.stderr
    assert not (tmp_path / "x.cutover").exists()
    (app / "escape").unlink()
    (app / "cutover.toml").write_text('app = "ame"\nbogus = 1\n')
    proc = cutover("build", str(app), "--version", "1.0.0", "-o", str(tmp_path / "x.cutover"))
    assert proc.returncode == 2 and "bogus" in proc.stderr and "cutover.toml" in proc.stderr


def test_excludes_match_names_at_any_depth_and_anchor_with_a_slash(tmp_path: Path) -> None:
    app = _tree(tmp_path)
    for rel in (
        "node_modules/a.js",
        "lib/node_modules/b.js",
        "vendor/x.php",
        "public/vendor/y.css",
        "debug.log",
        "lib/deep/trace.log",
        "lib/keep.php",
    ):
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        (app / rel).write_text(rel)
    (app / "cutover.toml").write_text(
        'app = "ame"\n[build]\nexclude = ["node_modules", "/vendor", "*.log"]\n'
    )
    pkg = tmp_path / "ame-1.0.0.cutover"
    assert cutover("build", str(app), "--version", "1.0.0", "-o", str(pkg)).returncode == 0
    parts, fh = open_package(pkg)
    fh.close()
    paths = {e["path"] for e in json.loads(parts.manifest_bytes)["files"]}
    assert {"lib/keep.php", "public/vendor/y.css", "public/index.php"} <= paths
    assert not paths & {
        "node_modules",
        "lib/node_modules",
        "vendor",
        "debug.log",
        "lib/deep/trace.log",
    }


def _shipped(pkg: Path) -> set[str]:
    parts, fh = open_package(pkg)
    fh.close()
    return {e["path"] for e in json.loads(parts.manifest_bytes)["files"]}


def test_excludes_have_gitignore_semantics_double_star_and_negation(tmp_path: Path) -> None:
    app = _tree(tmp_path)
    for rel in (
        "storage/logs/a.log",
        "storage/logs/keep.log",
        "lib/deep/er/cache.tmp",
        "cache.tmp",
        "lib/x.php",
        "docs/tests",  # a file named like the directory-only pattern below
        "tests/t.php",
    ):
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        (app / rel).write_text(rel)
    (app / "cutover.toml").write_text(
        'app = "ame"\n[build]\nexclude = ["*.log", "!keep.log", "lib/**/*.tmp", "tests/"]\n'
    )
    pkg = tmp_path / "ame-1.0.0.cutover"
    build_package(app, pkg, version="1.0.0")
    paths = _shipped(pkg)
    assert {"storage/logs/keep.log", "cache.tmp", "lib/x.php", "docs/tests"} <= paths
    assert not paths & {"storage/logs/a.log", "lib/deep/er/cache.tmp", "tests", "tests/t.php"}


def test_build_output_inside_the_app_tree_is_refused_unless_excluded(tmp_path: Path) -> None:
    app = _tree(tmp_path)
    (app / "dist").mkdir()
    old = app / "dist" / "ame-0.9.0.cutover"
    old.write_bytes(b"previous package")
    before = sorted(p.name for p in (app / "dist").iterdir())
    out = app / "dist" / "ame-1.0.0.cutover"
    proc = cutover("build", str(app), "--version", "1.0.0", "-o", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "inside the app tree" in proc.stderr and "exclude" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (app / "dist").iterdir()) == before  # nothing written
    proc = cutover("build", str(app), "--version", "1.0.0", "-o", str(app / "top.cutover"))
    assert proc.returncode == 2 and not (app / "top.cutover").exists()

    (app / "cutover.toml").write_text('app = "ame"\n[build]\nexclude = ["/dist/"]\n')
    assert cutover("build", str(app), "--version", "1.0.0", "-o", str(out)).returncode == 0
    paths = _shipped(out)
    assert "public/index.php" in paths
    assert not {p for p in paths if p.startswith("dist")}


def test_build_base_makes_a_thin_package(tmp_path: Path) -> None:
    """``cutover build --base PREVIOUS``: the manifest lists the whole tree and names the base;
    the payload holds only the files the base lacks; ``inspect`` still checks its digest."""
    app = _tree(tmp_path)
    (app / "public" / "style.css").write_text("body { color: red; }\n" * 200)
    base = tmp_path / "ame-1.0.0.cutover"
    assert cutover("build", str(app), "--version", "1.0.0", "-o", str(base)).returncode == 0
    (app / "public" / "index.php").write_text("<?php echo 'hello';\n")
    thin = tmp_path / "ame-1.1.0.cutover"
    proc = cutover(
        "build", str(app), "--version", "1.1.0", "-o", str(thin), "--base", str(base), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["base"] == "1.0.0" and out["entries"] == 4  # public/, 2 files, cutover.toml
    human = cutover("build", str(app), "--version", "1.1.0", "-o", str(tmp_path / "h.cutover"),
                    "--base", str(base))  # fmt: skip
    assert "(thin: base 1.0.0)" in human.stdout
    info = json.loads(cutover("inspect", str(thin), "--json").stdout)
    assert info["payload_matches"] is True and info["payload"]["base"] == "1.0.0"
    parts, fh = open_package(thin)
    fh.close()
    full_parts, fh = open_package(base)
    fh.close()
    assert parts.payload_size < full_parts.payload_size

    other = tmp_path / "other"
    (other / "x").mkdir(parents=True)
    (other / "cutover.toml").write_text('app = "zzz"\n')
    refused = cutover("build", str(other), "--version", "1.0.0", "-o", str(tmp_path / "z.cutover"),
                      "--base", str(base))  # fmt: skip
    assert refused.returncode == 2 and "is a package of 'ame', not 'zzz'" in refused.stderr
    assert not (tmp_path / "z.cutover").exists()
