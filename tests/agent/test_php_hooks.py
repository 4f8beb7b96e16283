"""PHP hooks under the daemon's ``MemoryDenyWriteExecute=yes`` (issue 9, item 3).

The shipped unit denies writable-executable memory; PCRE's JIT needs it, so PHP warns
"Allocation of JIT memory failed" and Laravel turns the warning into an exception. The recipes
run PHP with ``-d pcre.jit=0`` instead of weakening the sandbox. These tests run real ``php``
in a real stage hook, under the same kernel restriction (``prctl(PR_SET_MDWE)``, Linux >= 6.3,
applied to the ``cutover-agent`` process and so inherited by its hooks as under systemd), and
check that every PHP command in the recipes carries the flag.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, Host, PackageFactory

DOCS = Path(__file__).resolve().parents[2] / "docs" / "recipes"
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
JIT = ["-d", "pcre.jit=0"]  # what the recipes pass to every php


def _deny_write_execute() -> None:  # runs in the child, before exec
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def _mdwe_available() -> bool:
    try:
        subprocess.run(["true"], preexec_fn=_deny_write_execute, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


# Laravel's behaviour in one line: every PHP warning becomes an exception (exit 255).
STRICT_PHP = (
    "set_error_handler(function ($n, $s) { throw new ErrorException($s); });"
    ' exit(preg_match("/a+b/", "xaab") === 1 ? 0 : 3);'
)


def php_recipe_argvs() -> list[tuple[str, list[str]]]:
    """Every argv in the recipes' TOML blocks that runs PHP (directly or through ``env``)."""
    found: list[tuple[str, list[str]]] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            argv = node.get("argv")
            if isinstance(argv, list) and any(a == "php" or a.endswith("/php") for a in argv):
                found.append((f"{where}:{node.get('name', '?')}", argv))
            for v in node.values():
                walk(v, where)
        elif isinstance(node, list):
            for v in node:
                walk(v, where)

    for md in sorted(DOCS.glob("*.md")):
        for block in re.findall(r"```toml\n(.*?)```", md.read_text(), flags=re.S):
            walk(tomllib.loads(block), md.name)
    return found


def test_every_php_command_in_the_recipes_disables_the_pcre_jit() -> None:
    argvs = php_recipe_argvs()
    assert len(argvs) >= 10  # both recipes: stage, pre/post hooks and checks
    for where, argv in argvs:
        i = next(i for i, a in enumerate(argv) if a == "php" or a.endswith("/php"))
        assert argv[i + 1 : i + 3] == JIT, (where, argv)


@pytest.mark.skipif(shutil.which("php") is None, reason="php is not installed (Debian: php-cli)")
@pytest.mark.skipif(not _mdwe_available(), reason="kernel without PR_SET_MDWE (Linux < 6.3)")
def test_php_stage_hook_under_memory_deny_write_execute_needs_the_recipe_flag(
    host: Host, make_package: PackageFactory
) -> None:
    def stage(package: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        before = host.snapshot()
        proc = subprocess.run(
            [str(BIN / "cutover-agent"), "--config", str(host.config), "--json", "stage",
             str(package)],
            capture_output=True, text=True, timeout=60, check=False,
            preexec_fn=_deny_write_execute,
        )  # fmt: skip
        return proc, before

    argv = ["php", "-r", STRICT_PHP]
    bare = make_package("1.0.0", toml=_hook_toml("artisan", argv))
    proc, before = stage(bare)  # the field report: the JIT warning becomes a fatal exception
    assert proc.returncode != 0
    assert "Allocation of JIT memory failed" in proc.stdout + proc.stderr
    after = host.snapshot()
    assert after["current"] == before["current"] is None
    assert after["releases"] == before["releases"] == []
    assert after["incoming"] == [] and after["trash"] == []

    fixed = make_package("2.0.0", toml=_hook_toml("artisan", ["php", *JIT, "-r", STRICT_PHP]))
    proc, _ = stage(fixed)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "JIT" not in proc.stdout + proc.stderr
    assert host.state()["releases"]["2.0.0"]["status"] == "staged"
    assert host.state()["releases"]["2.0.0"]["hooks"][0]["exit_code"] == 0


def _hook_toml(name: str, argv: list[str]) -> str:
    return f"[[hooks.stage]]\nname = {json.dumps(name)}\nargv = {json.dumps(argv)}\n"
