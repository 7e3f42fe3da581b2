"""Package attributes that import their module on first use (PEP 562), so that importing a
package (or building the ``seedfast`` command line) stays cheap."""
from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` for ``exports`` (name → module path).

    A module path starting with ``.`` is relative to ``package``. Unknown names raise
    ``AttributeError`` as a plain module would.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    def __dir__() -> list[str]:
        return sorted([*vars(importlib.import_module(package)), *exports])

    return __getattr__, __dir__


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module's ``__getattr__`` for names that moved to another module (name → new module path).

    The old import path keeps working for one release: each access warns with a
    ``DeprecationWarning`` naming the new home, then returns the object from there. The new
    module is imported by name on first use, so the old module does not depend on it.
    """

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(f"{module}.{name} moved to {moved[name]}.{name}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(moved[name]), name)

    return __getattr__
