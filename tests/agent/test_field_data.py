"""Issue 9 (field report), the data items: an existing Capistrano/Deployer root is refused or
adopted and never emptied (1), a root belongs to one app (5), a failed staging leaves the root as
it was (11), several trusted keys (15), and the CLI details (19). Real CLI, real directories."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.agent.conftest import snapshot
from tests.conftest import BIN, Host, PackageFactory

OLD, NEW = "20260301120000", "20260302120000"


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cutover-agent"), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _capistrano_root(root: Path) -> None:
    """What `cap deploy` leaves: timestamped releases, shared/, an absolute current link."""
    for name in (OLD, NEW):
        rel = root / "releases" / name
        rel.mkdir(parents=True)
        (rel / "index.php").write_text(f"<?php echo '{name}';\n")
        os.symlink(str(root / "shared" / "log"), rel / "log")
    (root / "shared" / "log").mkdir(parents=True)
    (root / "revisions.log").write_text(f"Branch main deployed as release {NEW}\n")
    os.symlink(str(root / "releases" / NEW), root / "current")


def _init(tmp: Path, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    key = str(tmp / "keys" / "release.pub")
    return _cli(
        tmp / "etc" / "agent.toml",
        "init",
        "--app",
        "ame",
        "--root",
        str(root),
        "--trust-release-key",
        key,
        *extra,
    )


def test_init_refuses_a_capistrano_root_and_adopt_keeps_every_release(
    tmp_path: Path, release_key: object, make_package: PackageFactory
) -> None:
    root = tmp_path / "srv" / "ame"
    _capistrano_root(root)
    before = snapshot(root)

    proc = _init(tmp_path, root)
    assert proc.returncode == 1, proc.stderr
    assert f"releases/{OLD}" in proc.stderr and "--adopt" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(root) == before  # not even .cutover/
    assert not (tmp_path / "etc" / "agent.toml").exists()

    proc = _init(tmp_path, root, "--adopt", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["adopted"]["releases"] == [OLD, NEW] and out["adopted"]["converted_link"] is True
    assert os.readlink(root / "current") == f"releases/{NEW}"  # converted to relative
    for name in (OLD, NEW):  # every release and its content is still there
        assert (root / "releases" / name / "index.php").read_text() == f"<?php echo '{name}';\n"
    assert (root / "revisions.log").exists() and (root / "shared" / "log").is_dir()
    host = Host(root=root, config=tmp_path / "etc" / "agent.toml", app="ame", tmp=tmp_path)
    st = host.state()
    assert (st["current"], st["previous"]) == (NEW, OLD)
    assert all(st["releases"][n]["adopted"] for n in (OLD, NEW))
    assert [e["event"] for e in host.journal()] == ["init", "adopt"]

    assert host.cli_json("status")["apps"][0]["recovered"] == []  # recovery removes nothing
    proc = host.cli("activate", OLD)  # unsigned: a rollback target only
    assert proc.returncode == 1 and "rollback target" in proc.stdout
    out = host.cli_json("rollback")
    assert out["current"] == OLD and host.current == f"releases/{OLD}"
    assert host.cli_json("adopt")["releases"] == []  # idempotent

    # A signed release goes live next to them; retention never prunes what was adopted.
    host.cli_json("stage", str(make_package("1.0.0", app="ame")))
    host.cli_json("activate", "1.0.0")
    host.cli_json("prune")
    assert sorted(p.name for p in (root / "releases").iterdir()) == ["1.0.0", OLD, NEW]


def test_recovery_and_staging_never_remove_a_directory_cutover_did_not_create(
    host: Host, make_package: PackageFactory
) -> None:
    foreign = host.root / "releases" / "1.0.0"
    foreign.mkdir()
    (foreign / "data.txt").write_text("someone's release\n")
    other = host.root / "releases" / OLD
    other.mkdir()
    before = snapshot(host.root / "releases")

    host.cli_json("status")
    proc = host.cli("stage", str(make_package("1.0.0")))
    assert proc.returncode == 1, proc.stdout
    assert "Cutover never removes what it did not create" in proc.stdout
    host.cli_json("status")
    assert snapshot(host.root / "releases") == before
    assert (foreign / "data.txt").read_text() == "someone's release\n"
    assert sorted(p.name for p in (host.root / ".cutover" / "incoming").iterdir()) == []


def test_init_refuses_a_root_another_app_uses(host: Host, tmp_path: Path) -> None:
    before, journal = host.snapshot(), host.journal()
    config_before = host.config.read_text()
    key = str(tmp_path / "keys" / "release.pub")
    proc = _cli(
        host.config, "init", "--app", "other", "--root", str(host.root), "--trust-release-key", key
    )
    assert proc.returncode != 0 and "'demo'" in proc.stderr, proc.stderr
    # the same root under another config: its state file names the app
    proc = _cli(
        tmp_path / "etc2.toml",
        "init",
        "--app",
        "other",
        "--root",
        str(host.root),
        "--trust-release-key",
        key,
    )
    assert proc.returncode != 0 and "'demo'" in proc.stderr, proc.stderr
    assert not (tmp_path / "etc2.toml").exists()
    assert (host.snapshot(), host.journal(), host.config.read_text()) == (
        before,
        journal,
        config_before,
    )


def test_a_failed_staging_leaves_no_shared_dirs(host: Host, make_package: PackageFactory) -> None:
    (host.root / "shared" / "logs").mkdir()  # the operator's, used by the release: stays
    before = snapshot(host.root)
    pkg = make_package(
        "1.0.0",
        toml='[shared]\ndirs = ["storage", "logs", "cache"]\n'
        '[[hooks.stage]]\nname = "build"\nargv = ["sh", "-c", "exit 3"]\n',
    )
    proc = host.cli("stage", str(pkg))
    assert proc.returncode == 1, proc.stdout
    after = snapshot(host.root)
    changed = {k for k in after.keys() | before.keys() if after.get(k) != before.get(k)}
    # the locks (the app's, and the stage workers' that recovery takes) and the record only
    assert changed == {
        ".cutover/state.json",
        ".cutover/journal.jsonl",
        ".cutover/lock",
        ".cutover/worker.lock",
    }
    assert host.state()["releases"]["1.0.0"]["status"] == "failed"


def test_init_trusts_every_key_given(tmp_path: Path, release_key: object) -> None:
    from cutover.agent.keys import generate_keypair

    second = generate_keypair(tmp_path / "keys" / "second")
    root, config = tmp_path / "srv" / "ame", tmp_path / "etc" / "agent.toml"
    proc = _init(tmp_path, root, "--trust-release-key", str(tmp_path / "keys" / "second.pub"))
    assert proc.returncode == 0, proc.stderr
    keys = json.loads(_cli(config, "keys", "--json").stdout)["keys"]
    assert {k["keyid"] for k in keys} == {release_key.public.keyid, second.public.keyid}  # type: ignore[attr-defined]


def test_cli_details(host: Host, tmp_path: Path) -> None:
    # --config after the command, as docs/operations.md shows it
    proc = subprocess.run(
        [str(BIN / "cutover-agent"), "status", "--json", "--config", str(host.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["apps"][0]["app"] == "demo"
    usage = _cli(host.config, "init", "--help").stdout
    assert "--app APP" in usage and "[--app APP]" not in usage and "(required)" in usage
    proc = _cli(host.config, "journal", "--limit", "-1")
    assert proc.returncode == 2 and "at least 1" in proc.stderr
    bad = tmp_path / "bad.toml"
    text = host.config.read_text().replace("keep = 5", 'keep = "5"\nkeep_releases = 3\nfoo = 1')
    bad.write_text(text)
    proc = _cli(bad, "status")
    assert proc.returncode == 2
    assert "3 problems" in proc.stderr and "more)" not in proc.stderr
    assert "apps.demo.keep: Input should be a valid integer" in proc.stderr
    assert "keep_releases: Extra inputs are not permitted (did you mean 'keep'?)" in proc.stderr
    assert "apps.demo.foo" in proc.stderr


def test_a_tarball_is_refused_as_not_a_cutover_package(host: Host, tmp_path: Path) -> None:
    import tarfile

    src = tmp_path / "index.php"
    src.write_text("<?php\n")
    tgz = tmp_path / "ame-1.0.0.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(src, arcname="index.php")
    before = host.snapshot()
    proc = _cli(host.config, "stage", "--app", "demo", str(tgz))
    assert proc.returncode == 3, proc.stderr
    assert "is not a Cutover package: it is gzip-compressed (a .tar.gz?)" in proc.stderr
    assert host.snapshot() == before
    proc = subprocess.run(
        [str(BIN / "cutover"), "inspect", str(src)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0 and "is not a Cutover package" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def _owned_by_nobody_setup(tmp_path: Path, release_key: object) -> tuple[Path, Path, int]:
    """An app root owned by the real ``nobody`` user, in a directory it can traverse (pytest's
    tmp_path is root's 0700), with the config and keys root's."""
    import pwd
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root: it runs the CLI as root on an app owned by nobody")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user on this host")
    base = Path(tempfile.mkdtemp(prefix="cutover-owner-", dir="/tmp"))
    base.chmod(0o755)
    root = base / "srv" / "ame"
    root.mkdir(parents=True)
    os.chown(root, nobody.pw_uid, nobody.pw_gid)
    (base / "etc").mkdir()
    shutil.copytree(tmp_path / "keys", base / "keys")
    return base, root, nobody.pw_uid


def _uids(root: Path) -> set[int]:
    found = {root.lstat().st_uid}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            found.add((Path(dirpath) / name).lstat().st_uid)
    return found


def test_cli_as_root_acts_as_the_owner_of_the_app(
    tmp_path: Path, release_key: object, make_package: PackageFactory
) -> None:
    import http.server
    import shutil
    import threading

    # Live checks by host name: resolving "localhost" imports encodings.idna lazily, after the
    # drop, where nobody may not read the interpreter's files (review r5: the checks crashed).
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    port = web.server_address[1]
    checks = (
        f'[[health.live.checks]]\ntype = "http"\nname = "home"\nurl = "http://localhost:{port}/"\n'
        f'[[health.live.checks]]\ntype = "tcp"\nname = "port"\nhost = "localhost"\nport = {port}\n'
    )
    base, root, uid = _owned_by_nobody_setup(tmp_path, release_key)
    try:
        config = base / "etc" / "agent.toml"
        key = str(base / "keys" / "release.pub")
        proc = _cli(config, "init", "--app", "ame", "--root", str(root), "--trust-release-key", key)
        assert proc.returncode == 0, proc.stderr
        assert config.stat().st_uid == 0  # the config stays root's
        pkg = base / "ame-1.0.0.cutover"  # where nobody can read it
        shutil.copy(make_package("1.0.0", app="ame", toml=checks), pkg)
        pkg.chmod(0o644)
        for args in (("stage", str(pkg)), ("activate", "1.0.0"), ("status",), ("journal",)):
            proc = _cli(config, *args)
            assert proc.returncode == 0, (args, proc.stderr)
        assert os.readlink(root / "current") == "releases/1.0.0"
        assert "check crashed" not in proc.stderr
        assert _uids(root) == {uid}  # not one root-owned file in nobody's app
        journal = (root / ".cutover" / "journal.jsonl").read_text()
        assert '"actor":"cli:root"' in journal.replace(" ", "")  # who ran it is recorded

        # Failures after the drop: the interpreter's own files may be unreadable as nobody
        # (tmp_path's pyenv under /root), so what they import was imported before it: the
        # error line of the failed operation is written and no import fails.
        state_before = (root / ".cutover" / "state.json").read_bytes()
        for args, code in ((("activate", "9.9.9"), 5), (("rollback",), 1)):
            proc = _cli(config, *args)
            assert proc.returncode == code, (args, proc.stderr)
            assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
            logged = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
            assert [d["outcome"] for d in logged if d["event"] == "lifecycle_operation"] == [
                "failed"
            ], proc.stderr
        assert (root / ".cutover" / "state.json").read_bytes() == state_before
        assert os.readlink(root / "current") == "releases/1.0.0"

        # A root-owned file left by an older agent: the error names path, user, what to run.
        state = root / ".cutover" / "state.json"
        os.chown(state, 0, 0)
        state.chmod(0o600)
        before = state.read_bytes()
        proc = _cli(config, "status")
        assert proc.returncode != 0
        assert str(state) in proc.stderr and "as user nobody" in proc.stderr
        assert "sudo chown -R nobody:" in proc.stderr and "Traceback" not in proc.stderr
        assert state.read_bytes() == before and os.readlink(root / "current") == "releases/1.0.0"
    finally:
        web.shutdown()
        web.server_close()  # its listening socket too (a ResourceWarning at GC otherwise)
        shutil.rmtree(base)


def test_init_adopt_refuses_a_current_outside_the_root_before_writing_anything(
    tmp_path: Path, release_key: object
) -> None:
    root = tmp_path / "srv" / "ame"
    _capistrano_root(root)
    (root / "current").unlink()
    os.symlink(str(tmp_path), root / "current")  # not a release of this root
    before = snapshot(root)
    proc = _init(tmp_path, root, "--adopt")
    assert proc.returncode == 6, proc.stderr
    assert "is not a release under" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(root) == before and not (tmp_path / "etc" / "agent.toml").exists()
