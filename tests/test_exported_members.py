"""Each package's ``__all__`` names exactly its public, importable members (httpx style)."""

from __future__ import annotations

import importlib
import os
import pathlib
import pkgutil
import py_compile
import subprocess
import sys
import zipfile

import pytest

import cutover.agent
import cutover.controller
from cutover.agent._util.lazy import typing_exports

REPO = pathlib.Path(__file__).resolve().parent.parent


def _packages() -> list[str]:
    found = []
    for top in (cutover.agent, cutover.controller):
        found.append(top.__name__)
        for info in pkgutil.walk_packages(top.__path__, top.__name__ + "."):
            if info.ispkg:
                found.append(info.name)
    return sorted(found)


@pytest.mark.parametrize("package", _packages())
def test_all_names_exist_and_are_public(package: str) -> None:
    mod = importlib.import_module(package)
    names = mod.__all__
    # A literal __all__ is ordered by ruff (RUF022); a lazy package's is built sorted.
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(mod, name), f"{package}.{name} in __all__ but missing"
    public = {
        n
        for n, v in vars(mod).items()
        if not n.startswith("_") and not isinstance(v, type(importlib)) and n != "annotations"
    }
    assert public <= set(names), f"{package} exposes names not in __all__: {public - set(names)}"


def test_every_subpackage_is_installed() -> None:
    """pyproject's package list names every folder with an __init__.py (or pip drops it)."""
    import tomllib

    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        "cutover." + ".".join(p.parent.relative_to(REPO).parts)
        for top in ("agent", "controller")
        for p in (REPO / top).rglob("__init__.py")
    }
    assert listed == on_disk


def test_agent_never_imports_controller() -> None:
    offenders = [
        str(p)
        for p in (REPO / "agent").rglob("*.py")
        if "cutover.controller" in p.read_text() or "from controller" in p.read_text()
    ]
    assert offenders == []


def _type_checking_imports(package: str) -> dict[str, set[str]]:
    """``{module: names}`` imported under the package's ``if typing.TYPE_CHECKING:``, each an
    explicit re-export (``Name as Name``: mypy --strict re-exports nothing implicitly)."""
    import ast

    mod = importlib.import_module(package)
    tree = ast.parse(pathlib.Path(str(mod.__file__)).read_text())
    found: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "typing.TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module is not None
                assert all(a.asname == a.name for a in imp.names), ast.unparse(imp)
                found.setdefault(imp.module, set()).update(a.name for a in imp.names)
    return found


def _is_lazy(package: str) -> bool:
    hook = getattr(importlib.import_module(package), "__getattr__", None)
    return getattr(hook, "__module__", None) == "cutover.agent._util.lazy"


@pytest.mark.parametrize("package", [p for p in _packages() if _is_lazy(p)])
def test_lazy_exports_match_their_typing_imports(package: str) -> None:
    """A lazily re-exporting package (agent/_util/lazy.py) loads at run time exactly what mypy
    sees under TYPE_CHECKING (its one list of names, read from its source: checked here against
    ``ast``), and ``__all__`` lists every name it loads."""
    mod = importlib.import_module(package)
    exports = {m: set(names) for m, names in typing_exports(package).items()}
    assert exports == _type_checking_imports(package)
    lazy = set().union(*exports.values())
    assert lazy <= set(mod.__all__)
    eager = set(mod.__all__) - lazy  # e.g. __version__, or names defined in the __init__
    assert all(n in vars(mod) for n in eager), eager
    for module, names in exports.items():  # each loads from the module mypy sees
        assert all(getattr(mod, n) is getattr(importlib.import_module(module), n) for n in names)


@pytest.mark.parametrize("package", [p for p in _packages() if _is_lazy(p)])
def test_no_lazy_name_is_also_the_name_of_a_submodule(package: str) -> None:
    """Importing ``package.name`` binds that submodule over a re-exported ``name`` (what
    happened to ``controller.fleet.release_log``). lazy.py refuses it when the name's own module
    is that submodule; this checks it against every submodule on disk."""
    mod = importlib.import_module(package)
    submodules = {info.name for info in pkgutil.iter_modules(mod.__path__)}
    lazy = set().union(*typing_exports(package).values())
    assert lazy & submodules == set()


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            "    from cutover.agent.host.layout import Layout\n",
            "as ``Layout as Layout`` (explicit, for mypy), not 'Layout'",
        ),
        ("    from cutover.agent.host.layout import Layout as L\n", "not 'Layout as L'"),
        (
            "    from cutover.agent.host.layout import Layout as Layout\n"
            "    from cutover.agent.host.lock import Layout as Layout\n",
            "'Layout' is exported by cutover.agent.host.layout and cutover.agent.host.lock",
        ),
        (  # a function named as its module: once that module is imported, the name is it
            "    from lazypkg.Layout import Layout as Layout\n",
            "'Layout' of lazypkg.Layout is also the name of its submodule lazypkg.Layout",
        ),
    ],
    ids=["implicit", "renamed", "twice", "submodule"],
)
def test_a_lazy_block_that_mypy_and_the_runtime_would_read_apart_is_refused(
    tmp_path: pathlib.Path, block: str, message: str
) -> None:
    """Only explicit re-exports, each name once: an ``__init__`` the reader cannot take as
    what mypy sees fails its first lookup with a message naming the name."""
    import subprocess
    import sys

    pkg = tmp_path / "lazypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import typing\n"
        "from cutover.agent._util.lazy import lazy_exports\n"
        f"if typing.TYPE_CHECKING:\n{block}"
        "__getattr__, __dir__ = lazy_exports(__name__)\n"
    )
    code = "import lazypkg; lazypkg.Layout"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 1 and "ImportError: lazypkg: " in proc.stderr, proc.stderr
    assert message in proc.stderr


def test_importing_a_module_does_not_import_its_siblings() -> None:
    """``import cutover.agent.host.layout`` runs the package __init__s on its way; they import
    no sibling (a fresh interpreter): only layout.py's own imports load."""
    import ast
    import subprocess
    import sys

    code = "import sys, cutover.agent.host.layout; print(sorted(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = {m for m in ast.literal_eval(out.strip()) if m.startswith("cutover.")}
    tree = ast.parse((REPO / "agent" / "host" / "layout.py").read_text())
    own = {
        n.module
        for n in tree.body
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("cutover.")
    }
    assert {m for m in loaded if m.startswith("cutover.agent.host.")} <= {
        "cutover.agent.host.layout",
        *own,
    }
    # what the eager __init__s used to pull in
    assert not loaded & {"cutover.agent.config", "cutover.agent.trust.policy"}


_LAZYPKG = (
    "import typing\n"
    "from cutover.agent._util.lazy import lazy_exports\n"
    "if typing.TYPE_CHECKING:\n"
    "    from cutover.agent.host.layout import Layout as Layout\n"
    "__getattr__, __dir__ = lazy_exports(__name__)\n"
)


def _lazy_lookup(path: pathlib.Path, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """``lazypkg.Layout`` in a fresh interpreter with ``path`` first on ``sys.path``."""
    code = "import lazypkg; print(lazypkg.Layout.__module__, lazypkg.__all__)"
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(path)},
        check=False,
        timeout=60,
    )


def test_a_lazy_package_imported_from_a_zip_finds_its_names(tmp_path: pathlib.Path) -> None:
    """The block is read through the package's loader, not ``open(__file__)``: a package on
    ``sys.path`` inside a zip (a wheel or a zipapp put there as it is) serves its names."""
    archive = tmp_path / "lazypkg.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("lazypkg/__init__.py", _LAZYPKG)
    proc = _lazy_lookup(archive, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cutover.agent.host.layout", "['Layout']"]


def test_a_sourceless_lazy_package_fails_its_first_lookup_with_an_import_error(
    tmp_path: pathlib.Path,
) -> None:
    """Installed without its ``__init__.py`` (only the ``.pyc``): the first lookup is an
    ``ImportError`` naming the package and saying what to do (agent/_util/lazy.py's docstring),
    not a ``UnicodeDecodeError`` from reading the bytecode as text."""
    pkg = tmp_path / "site" / "lazypkg"
    pkg.mkdir(parents=True)
    source = pkg / "__init__.py"
    source.write_text(_LAZYPKG)
    py_compile.compile(str(source), cfile=str(pkg / "__init__.pyc"), doraise=True)
    source.unlink()
    proc = _lazy_lookup(tmp_path / "site", tmp_path)
    assert proc.returncode == 1
    assert "ImportError: lazypkg: " in proc.stderr and "UnicodeDecodeError" not in proc.stderr
    assert "__init__.pyc" in proc.stderr, proc.stderr
