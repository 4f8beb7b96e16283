"""Lazy re-exports for package ``__init__`` modules (PEP 562), so importing one module of a
package does not import all its siblings.

Why: ``import cutover.agent.host.layout`` runs ``cutover/agent/host/__init__.py`` first; if that
re-exports every public name eagerly, the on-host CLI pays for the whole package (and what it
imports: structlog, the seal and content index, the drift checker) before it knows which command
it runs. Each process start (``cutover-agent stage``, a stage worker child, ``cutover``) paid
~0.3 s of imports this way (issue 12).

Each package keeps three things in step, and tests/test_exported_members.py checks them:

* ``__all__``: the public names, literal and sorted (ruff RUF022);
* ``_EXPORTS``: ``{module: (name, ...)}``, where each name is defined (the runtime source);
* an ``if TYPE_CHECKING:`` block importing the same names, for mypy and readers.

Usage in a package ``__init__``::

    _EXPORTS = {"cutover.agent.host.layout": ("Layout",)}
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, tuple[str, ...]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` for the names in ``exports``.

    A name is imported from its module on first access and then stored in the package's
    namespace, so later lookups are plain attribute reads.

    Args:
        package: the package's ``__name__``.
        exports: module name -> the public names it defines.

    Returns:
        ``(__getattr__, __dir__)`` to assign at the package's module level.

    Raises:
        ValueError: a name is listed under two modules.
    """
    where: dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name!r} is exported by {where[name]} and {module}")
            where[name] = module

    def __getattr__(name: str) -> object:  # noqa: N807 (the PEP 562 hook's name)
        try:
            module = where[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__
