"""Public names imported on first use (PEP 562), so that importing a package stays cheap.

>>> __getattr__, __dir__ = attach(__name__, {"simulate": "simulator"})   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def attach(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """(``__getattr__``, ``__dir__``) for ``package``: each public name in ``names`` maps to the
    module that defines it (a full module path, or a submodule of ``package`` without dots)."""

    def __getattr__(name: str) -> object:
        where = names.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where if "." in where else f"{package}.{where}"), name)
        sys.modules[package].__dict__[name] = value  # once
        return value

    def __dir__() -> list[str]:
        return sorted({*sys.modules[package].__dict__, *names})

    return __getattr__, __dir__
