"""Lazy package exports (PEP 562): a package names what it exports and where each name lives, and a name's module is
imported on first use. ``icl``, ``icl.training`` and ``learned_optimizers`` use it so that importing them (and the
CLI's ``list`` / ``--show-config``) loads neither torch nor scipy until a name that needs them is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:  # fmt: skip
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``.

    Args:
        package: the package's name (for the error message).
        exports: exported name -> the module that defines it.
        namespace: the package's ``globals()``; a name once imported is cached there.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
