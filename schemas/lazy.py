"""Lazy package exports (PEP 562), shared by ``schemas`` and ``producer``.

A package lists where each public name lives; the name's module is imported on first
access, so a process needing one small module of the package (the ``dockrq`` CLI's
defaults, a worker's ``producer.usage``) does not pay for the rest.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(namespace: dict[str, Any], homes: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of the package whose ``globals()`` is ``namespace``:
    ``homes`` maps each public name to its module, relative to the package (``{"Producer":
    ".client"}``). An unknown name raises AttributeError, as for any module; a name once
    imported is kept in the package's namespace, so later accesses do not come back here.
    ``__dir__`` lists the package's ``__all__``."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(namespace["__all__"])

    return __getattr__, __dir__
