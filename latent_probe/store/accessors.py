"""Extensions of ``Run`` that the store does not know: xarray's accessor pattern (``core/extensions.py``).

A package registers a namespace class; ``run.<name>`` builds it once per Run (``cls(run)``) and keeps it
until ``run.refresh()``. Names a namespace lists in ``promoted`` are also reachable as ``run.<method>``.
The store imports nothing from its extensions: ``latent_probe.metrics`` registers ``run.metrics`` when it
is imported (the package root imports it).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

__all__ = ["register_run_accessor", "accessor_of", "ACCESSORS"]

ACCESSORS: dict[str, type] = {}


def register_run_accessor(name: str) -> Callable[[type], type]:
    """Class decorator: ``run.<name>`` is an instance of the class, made on first use."""

    def decorate(cls: type) -> type:
        if name in ACCESSORS and ACCESSORS[name] is not cls:
            warnings.warn(f"latent_probe: run accessor {name!r} registered again; the new one wins", RuntimeWarning,
                          stacklevel=2)
        ACCESSORS[name] = cls
        return cls

    return decorate


def accessor_of(run: Any, name: str) -> Any:
    """``run.<name>`` for a registered namespace, or a promoted method of one; AttributeError otherwise."""
    cache = run.__dict__.setdefault("_accessors", {})
    for acc_name, cls in ACCESSORS.items():
        if name == acc_name or name in getattr(cls, "promoted", ()):
            if acc_name not in cache:
                cache[acc_name] = cls(run)
            ns = cache[acc_name]
            return ns if name == acc_name else getattr(ns, name)
    raise AttributeError(f"'Run' object has no attribute {name!r}")
