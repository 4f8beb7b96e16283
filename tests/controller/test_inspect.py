"""`cutover inspect` decides with the agent's own checks (signature verdicts, payload size, codec
and digest), run as a user runs it; inspecting never changes the package."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

from cutover.agent.keys import generate_keypair
from cutover.agent.package.container import open_package, write_package
from cutover.agent.package.signatures import SignatureEntry
from cutover.agent.package.writer import add_signature
from tests.controller.test_cli import _tree, cutover


def _built(tmp_path: Path) -> Path:
    pkg = tmp_path / "ame-1.0.0.cutover"
    proc = cutover("build", str(_tree(tmp_path)), "--version", "1.0.0", "-o", str(pkg))
    assert proc.returncode == 0, proc.stderr
    return pkg


def _inspect(pkg: Path, *trusted: Path) -> tuple[int, dict[str, object]]:
    """``cutover inspect --json`` trusting the public keys of the private key files given."""
    args = [a for k in trusted for a in ("--trust", f"{k}.pub")]
    before = hashlib.sha256(pkg.read_bytes()).hexdigest()
    proc = cutover("inspect", str(pkg), "--json", *args)
    assert hashlib.sha256(pkg.read_bytes()).hexdigest() == before  # read-only
    return proc.returncode, json.loads(proc.stdout)


def test_a_signature_over_other_bytes_is_invalid(tmp_path: Path) -> None:
    pkg = _built(tmp_path)
    good, forger = generate_keypair(tmp_path / "good"), generate_keypair(tmp_path / "forger")
    add_signature(pkg, lambda data: SignatureEntry.of(good.keyid, good.sign(data)))
    add_signature(pkg, lambda data: SignatureEntry.of(forger.keyid, forger.sign(data + b" ")))

    code, info = _inspect(pkg, tmp_path / "good", tmp_path / "forger")
    assert code == 3
    assert info["signature_check"] == {good.keyid: "valid", forger.keyid: "INVALID"}
    assert info["payload_matches"] is True

    code, info = _inspect(
        pkg, tmp_path / "good"
    )  # the forger's key not given: unknown, not a failure
    assert code == 0
    assert info["signature_check"] == {good.keyid: "valid", forger.keyid: "unknown"}


def test_a_signature_that_is_not_base64_is_invalid(tmp_path: Path) -> None:
    pkg = _built(tmp_path)
    key = generate_keypair(tmp_path / "k")
    add_signature(pkg, lambda _: SignatureEntry(keyid=key.keyid, sig="not base64!"))
    code, info = _inspect(pkg, tmp_path / "k")
    assert code == 3 and info["signature_check"] == {key.keyid: "INVALID"}


def test_a_payload_codec_other_than_the_manifests_does_not_match(tmp_path: Path) -> None:
    """The container says zstd, the manifest gzip: the agent refuses that at staging, so must
    inspect (it runs the same check)."""
    pkg = _built(tmp_path)
    parts, fh = open_package(pkg)
    with fh:
        fh.seek(parts.payload_offset)
        payload = fh.read(parts.payload_size)
    manifest = parts.manifest_bytes.replace(b'"compression":"zstd"', b'"compression":"gzip"')
    assert manifest != parts.manifest_bytes
    lying = tmp_path / "lying.cutover"
    with lying.open("xb") as out:
        write_package(out, manifest, b"[]\n", io.BytesIO(payload), len(payload), "zstd")

    code, info = _inspect(lying)
    assert code == 3 and info["payload_matches"] is False
    assert "compression" in str(info["payload_problem"])
    assert sorted(os.listdir(tmp_path)) == ["ame-1.0.0.cutover", "app", "lying.cutover"]


def test_a_matching_payload_has_no_problem(tmp_path: Path) -> None:
    code, info = _inspect(_built(tmp_path))
    assert code == 0 and info["payload_matches"] is True and info["payload_problem"] is None
    assert info["signature_check"] is None  # nothing given to check against


def test_trusting_a_key_that_signed_nothing_fails(tmp_path: Path) -> None:
    pkg = _built(tmp_path)
    signer, bystander = generate_keypair(tmp_path / "signer"), generate_keypair(tmp_path / "by")
    add_signature(pkg, lambda data: SignatureEntry.of(signer.keyid, signer.sign(data)))

    code, info = _inspect(pkg, tmp_path / "by")
    assert code == 3
    assert info["signature_check"] == {signer.keyid: "unknown"}
    assert info["trusted_unsigned"] == [bystander.keyid]
    proc = cutover("inspect", str(pkg), "--trust", str(tmp_path / "by.pub"))
    assert proc.returncode == 3 and f"{bystander.keyid}  MISSING" in proc.stdout

    code, info = _inspect(pkg, tmp_path / "signer")  # the one that signed: fine
    assert code == 0 and info["trusted_unsigned"] == []


def test_inspect_shows_every_hook_argv_and_every_health_check(tmp_path: Path) -> None:
    app = _tree(tmp_path)
    (app / "cutover.toml").write_text(
        'app = "ame"\n'
        '[[hooks.stage]]\nname = "deps"\nargv = ["composer", "install", "--no-dev"]\n'
        '[[hooks.stage]]\nname = "cache"\nargv = ["php", "artisan", "config:cache"]\ntimeout_s = 60\n'
        '[[hooks.pre_activate]]\nname = "migrate"\nargv = ["php", "artisan", "migrate", "--force"]\n'
        "[health.staged]\n"
        '[[health.staged.checks]]\ntype = "command"\nname = "boots"\nargv = ["php", "artisan", "about"]\n'
        "[health.live]\n"
        '[[health.live.checks]]\ntype = "http"\nname = "home"\nurl = "http://127.0.0.1:8080/"\n'
        '[[health.live.checks]]\ntype = "tcp"\nhost = "127.0.0.1"\nport = 9000\n'
        '[[health.live.checks]]\ntype = "log"\npath = "storage/logs/laravel.log"\npattern = "ERROR"\n'
        '[health.version_probe]\nurl = "http://127.0.0.1:8080/version"\n'
    )
    pkg = tmp_path / "ame-1.0.0.cutover"
    assert cutover("build", str(app), "--version", "1.0.0", "-o", str(pkg)).returncode == 0
    code, info = _inspect(pkg)
    assert code == 0
    hooks = info["hooks"]
    assert isinstance(hooks, dict)
    assert [h["argv"] for h in hooks["stage"]] == [
        ["composer", "install", "--no-dev"],
        ["php", "artisan", "config:cache"],
    ]
    assert hooks["pre_activate"][0]["argv"] == ["php", "artisan", "migrate", "--force"]
    assert hooks["post_activate"] == hooks["post_rollback"] == []
    health = info["health"]
    assert isinstance(health, dict)
    assert health["staged"]["checks"][0]["argv"] == ["php", "artisan", "about"]
    assert [c["type"] for c in health["live"]["checks"]] == ["http", "tcp", "log"]
    assert health["version_probe"]["url"] == "http://127.0.0.1:8080/version"

    human = cutover("inspect", str(pkg)).stdout
    for line in (
        "hooks.stage: deps: composer install --no-dev",
        "hooks.stage: cache: php artisan config:cache",
        "hooks.pre_activate: migrate: php artisan migrate --force",
        "health.staged: command boots: php artisan about",
        "health.live: http home: GET http://127.0.0.1:8080/ expects 200",
        "health.live: tcp: 127.0.0.1:9000",
        "health.live: log: storage/logs/laravel.log must not match 'ERROR'",
        "health.version_probe: http://127.0.0.1:8080/version",
    ):
        assert line in human, (line, human)


def test_inspect_with_a_matrix_says_whether_the_package_would_pass(tmp_path: Path) -> None:
    """CI can tell before pushing: ``--trust KEY.pub=ROLE --matrix FILE`` reports the rule, the
    roles signed and the roles missing (exit 3), then passes once the missing role signed."""
    pkg = _built(tmp_path)  # release_type defaults to minor
    tech, prod = generate_keypair(tmp_path / "tech"), generate_keypair(tmp_path / "prod")
    add_signature(pkg, lambda data: SignatureEntry.of(tech.keyid, tech.sign(data)))
    matrix = tmp_path / "matrix.toml"
    matrix.write_text('[approvals]\npatch = ["technical"]\nminor = ["technical", "product"]\n')
    trust = [
        "--trust",
        f"{tmp_path / 'tech'}.pub=technical",
        "--trust",
        f"{tmp_path / 'prod'}.pub=product",
    ]
    proc = cutover("inspect", str(pkg), "--json", *trust, "--matrix", str(matrix))
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)["approvals"]
    assert report["rule"] == "minor" and report["passed"] is False
    assert report["signed_roles"] == {"technical": [tech.keyid]}
    assert report["missing"] == {"product": 1}
    add_signature(pkg, lambda data: SignatureEntry.of(prod.keyid, prod.sign(data)))
    proc = cutover("inspect", str(pkg), *trust, "--matrix", str(matrix))
    assert proc.returncode == 0, proc.stderr
    assert "approvals (minor): would pass" in proc.stdout
