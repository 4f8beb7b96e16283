"""Release modes after staging: whatever umask the stage hooks ran under, the installed release
is readable (and its executables runnable) by any user, so the web server can serve it under the
shipped unit's ``UMask=0027`` (issue 9, item 2).

Real host, real hooks, and a real second user: the files are read back by ``runuser -u nobody``.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cutover.agent.keys import PrivateKey
from tests.agent.test_lifecycle import hook, op
from tests.conftest import Host, PackageFactory

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None,
    reason="reading as another user needs root and runuser(1)",
)

# A hook that writes like `composer install` under UMask=0027: group-only files and dirs.
HOOK = (
    "umask 0027; mkdir -p vendor/composer"
    " && echo '<?php return 1;' > vendor/autoload.php"
    " && printf '#!/bin/sh\\necho tool\\n' > vendor/composer/tool && chmod 0750 vendor/composer/tool"
)


@pytest.fixture
def open_host(release_key: PrivateKey, tmp_path: Path) -> Iterator[Host]:
    """A host whose root every user can traverse (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="cutover-modes-", dir="/tmp"))
    base.chmod(0o755)
    root = base / "srv" / "demo"
    h = Host(root=root, config=tmp_path / "etc" / "agent.toml", app="demo", tmp=tmp_path)
    h.cli_json(
        "init", "--app", "demo", "--root", str(root),
        "--trust-release-key", str(tmp_path / "keys" / "release.pub"),
    )  # fmt: skip
    yield h
    shutil.rmtree(base)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", *argv],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_files_stage_hooks_write_under_umask_0027_are_readable_by_another_user(
    open_host: Host, make_package: PackageFactory
) -> None:
    op(open_host, "stage", make_package("1.0.0", toml=hook("stage", "composer", HOOK)))
    release = open_host.root / "releases" / "1.0.0"

    read = as_nobody("cat", str(release / "vendor" / "autoload.php"), str(release / "VERSION"))
    assert read.returncode == 0, read.stderr
    assert read.stdout == "<?php return 1;\n1.0.0\n"
    run = as_nobody(str(release / "vendor" / "composer" / "tool"))
    assert (run.returncode, run.stdout) == (0, "tool\n"), run.stderr
    listed = as_nobody("ls", str(release / "vendor" / "composer"))
    assert listed.stdout.split() == ["tool"], listed.stderr

    modes = {}
    for dirpath, dirnames, filenames in os.walk(release):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = p.lstat()
            if not stat.S_ISLNK(st.st_mode):
                modes[str(p.relative_to(release))] = stat.S_IMODE(st.st_mode)
    assert modes["vendor"] == modes["vendor/composer"] == 0o555
    assert modes["vendor/autoload.php"] == modes["VERSION"] == 0o444
    assert modes["vendor/composer/tool"] == modes["bin/console"] == 0o555
    assert set(modes.values()) <= {0o444, 0o555}, modes
    assert stat.S_IMODE(release.stat().st_mode) == 0o555
    out = open_host.cli_json("verify", "1.0.0")
    assert out["ok"] is True and out["drift"] == {"1.0.0": []}
