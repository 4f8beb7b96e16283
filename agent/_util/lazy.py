"""Lazy re-exports for package ``__init__`` modules (PEP 562), so importing one module of a
package does not import all its siblings.

Why: ``import cutover.agent.host.layout`` runs ``cutover/agent/host/__init__.py`` first; if that
re-exports every public name eagerly, the on-host CLI pays for the whole package (and what it
imports: structlog, the seal and content index, the drift checker) before it knows which command
it runs. Each process start (``cutover-agent stage``, a stage worker child, ``cutover``) paid
~0.3 s of imports this way (issue 12).

One source of truth: the package's ``if typing.TYPE_CHECKING:`` block of explicit re-exports
(``from module import Name as Name``), which mypy and readers see. At run time nothing of it is
imported; the first lookup of a package attribute reads that block from the package's source
(once per process) and builds from it the name -> module map, ``__all__`` (the re-exported names,
sorted, plus the ``eager`` ones the ``__init__`` defines itself) and ``__dir__``.
tests/test_exported_members.py checks the reading against ``ast``.

Usage in a package ``__init__``::

    if typing.TYPE_CHECKING:
        from cutover.agent.host.layout import Layout as Layout

    __getattr__, __dir__ = lazy_exports(__name__)

The block holds only ``from ... import ...`` statements (ruff-formatted, parenthesised or not),
each name re-exported under its own name. The ``__init__.py`` sources must be installed (pip and
the wheel install them beside the ``.pyc``); they are read through the package's loader, so a
package in a zip on ``sys.path`` works too, and a sourceless install fails the first lookup with
an ``ImportError`` naming the file.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports", "typing_exports"]

_BLOCK = "if typing.TYPE_CHECKING:"


def _parse_block(package: str, source: str) -> dict[str, tuple[str, ...]]:
    lines = source.splitlines()
    try:
        start = lines.index(_BLOCK) + 1
    except ValueError:
        raise ImportError(
            f"{package}: its __init__ has no {_BLOCK!r} block of re-exports"
        ) from None
    body: list[str] = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        body.append(line.split("#", 1)[0])
    # words: "from M import A as A , B as B" per statement (parentheses and line breaks dropped)
    words = " ".join(body).replace("(", " ").replace(")", " ").replace(",", " , ").split()
    exports: dict[str, tuple[str, ...]] = {}
    i = 0
    while i < len(words):
        if words[i] != "from" or i + 2 >= len(words) or words[i + 2] != "import":
            raise ImportError(
                f"{package}: cannot read {' '.join(words[i : i + 4])!r}... in its {_BLOCK!r}"
            )
        module, i = words[i + 1], i + 3
        while i < len(words) and words[i] != "from":
            item = words[i : i + 3]
            if len(item) < 3 or item[1] != "as" or item[2] != item[0]:
                raise ImportError(
                    f"{package}: re-export {item[0]!r} of {module} as ``{item[0]} as {item[0]}`` "
                    f"(explicit, for mypy), not {' '.join(item)!r}"
                )
            exports[module] = (*exports.get(module, ()), item[0])
            i += 3
            if i < len(words) and words[i] == ",":
                i += 1
    return exports


def typing_exports(package: str) -> dict[str, tuple[str, ...]]:
    """``{module: names}`` re-exported by ``package``'s ``if typing.TYPE_CHECKING:`` block,
    read from its source (the package must be imported).

    Raises:
        ImportError: the source is missing or its block is not one of re-exports.
    """
    module = sys.modules[package]
    path = str(getattr(module, "__file__", None))
    if not path.endswith(".py"):  # e.g. __init__.pyc alone: bytecode, no block to read
        raise ImportError(
            f"{package}: no source for its lazy re-exports ({path}): install the package with "
            "its __init__.py (pip and the wheel do)"
        )
    # Through the loader that imported it: a plain file, or a member of a zip on sys.path
    # (zipimport), which open() cannot read.
    loader = getattr(getattr(module, "__spec__", None), "loader", None)
    get_data = getattr(loader, "get_data", None)
    try:
        if get_data is None:
            raise OSError(f"its loader {loader!r} reads no files")
        source = get_data(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportError(
            f"{package}: cannot read its source {path} for its lazy re-exports: {exc}"
        ) from exc
    return _parse_block(package, source)


def _where(package: str, exports: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    where: dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if name in where:
                raise ImportError(f"{package}: {name!r} is exported by {where[name]} and {module}")
            if f"{package}.{name}" in exports:  # importing that submodule rebinds the name to it
                raise ImportError(
                    f"{package}: {name!r} of {module} is also the name of its submodule "
                    f"{package}.{name}; import it from the module instead"
                )
            where[name] = module
    return where


def lazy_exports(
    package: str, *, eager: tuple[str, ...] = ()
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, re-exporting what its
    ``if typing.TYPE_CHECKING:`` block names (read on first use).

    A name is imported from its module on first access and then stored in the package's
    namespace, so later lookups are plain attribute reads. ``__all__`` is served the same way.

    Args:
        package: the package's ``__name__``.
        eager: public names the ``__init__`` defines itself (e.g. ``__version__``), for
            ``__all__``.

    Returns:
        ``(__getattr__, __dir__)`` to assign at the package's module level.

    Raises:
        ImportError: (on first use) the block cannot be read, or names a name twice.
    """
    cache: list[dict[str, str]] = []

    def where() -> dict[str, str]:
        if not cache:
            cache.append(_where(package, typing_exports(package)))
        return cache[0]

    def __getattr__(name: str) -> object:  # noqa: N807 (the PEP 562 hook's name)
        if name == "__all__":
            value: object = sorted({*where(), *eager})
        else:
            try:
                module = where()[name]
            except KeyError:
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
            value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted({*vars(sys.modules[package]), *where()})

    return __getattr__, __dir__
