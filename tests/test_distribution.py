"""The distribution as pip installs it: namespaced import names, both commands, what the sdist ships."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from cutover.agent import __version__

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command", ["cutover", "cutover-agent"])
def test_version_flag_names_the_command_and_version(command: str) -> None:
    proc = subprocess.run(
        [str(BIN / command), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{command} {__version__}"


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = out.glob("cutover_deploy-*.whl")
    (sdist,) = out.glob("cutover_deploy-*.tar.gz")
    return wheel, sdist


@pytest.mark.slow
def test_wheel_installs_only_the_cutover_namespace(dists: tuple[Path, Path]) -> None:
    wheel, _ = dists
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"cutover", f"cutover_deploy-{__version__}.dist-info"}
    assert "cutover/agent/__init__.py" in names
    assert "cutover/controller/__init__.py" in names
    assert "cutover/agent/py.typed" in names
    assert "cutover = cutover.controller.cli:main" in scripts
    assert "cutover-agent = cutover.agent.cli:main" in scripts


@pytest.mark.slow
def test_fresh_venv_has_no_bare_agent_or_controller(
    dists: tuple[Path, Path], tmp_path: Path
) -> None:
    wheel, _ = dists
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with zipfile.ZipFile(wheel) as zf:  # what `pip install --no-deps` does for a pure wheel
        zf.extractall(site)  # noqa: S202 (our own wheel, just built)
    installed = {p.name for p in Path(site).iterdir()}
    assert "agent" not in installed and "controller" not in installed
    probe = "import importlib.util as u; print(u.find_spec('agent'), u.find_spec('controller'))"
    out = subprocess.run(
        [str(py), "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout.split()
    assert out == ["None", "None"]


@pytest.mark.slow
def test_sdist_ships_systemd_docs_and_license(dists: tuple[Path, Path]) -> None:
    _, sdist = dists
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert "LICENSE" in names
    assert "systemd/cutover-agent.service" in names
    assert "docs/design.md" in names
    assert "docs/operations.md" in names


# Every public name of every package, as a user of the installed distribution looks it up.
_EVERY_NAME = """
import importlib, pkgutil, sys
import cutover.agent, cutover.controller
count = 0
for top in (cutover.agent, cutover.controller):
    found = [top.__name__]
    found += [i.name for i in pkgutil.walk_packages(top.__path__, top.__name__ + ".") if i.ispkg]
    for name in found:
        mod = importlib.import_module(name)
        for attr in mod.__all__:
            getattr(mod, attr)
            count += 1
print(cutover.agent.__file__, cutover.controller.__file__, count)
"""


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["-O"], ["-OO"]], ids=["plain", "O", "OO"])
def test_an_installed_wheel_serves_every_lazy_name(
    dists: tuple[Path, Path], tmp_path: Path, flags: list[str]
) -> None:
    """Installed from the wheel, not editable: each package ``__init__`` reads its names from
    the installed source (agent/_util/lazy.py), also with asserts off (``-O``) and docstrings
    stripped (``-OO``). The wheel's files come first on ``sys.path`` (the dependencies from
    this interpreter's site-packages)."""
    wheel, _ = dists
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:  # what `pip install --no-deps` does for a pure wheel
        zf.extractall(site)  # noqa: S202 (our own wheel, just built)
    proc = subprocess.run(
        [sys.executable, *flags, "-c", _EVERY_NAME],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    agent_init, controller_init, count = proc.stdout.split()
    assert agent_init == str(site / "cutover" / "agent" / "__init__.py")
    assert controller_init == str(site / "cutover" / "controller" / "__init__.py")
    assert int(count) > 100
