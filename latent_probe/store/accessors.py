"""Extensions of ``Run`` that the store does not know: xarray's accessor pattern (``core/extensions.py``).

A package registers a namespace class with ``@register_run_accessor("name")``: a cached descriptor is set on
``Run`` itself, so ``run.<name>`` shows in ``dir(run)``, is found by IDEs, and is built once per Run
(``cls(run)``) and kept until ``run.refresh()``. The store imports nothing from its extensions:
``latent_probe.metrics`` registers ``run.metrics`` and ``run.blocks`` when it is imported (the package root
imports it).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Generic, TypeVar, overload

from .reader import Run

__all__ = ["register_run_accessor", "CachedAccessor"]

T = TypeVar("T")


class CachedAccessor(Generic[T]):
    """Descriptor on ``Run``: ``Run.<name>`` is the namespace class, ``run.<name>`` its instance for that run,
    made on first use and kept in ``run._accessors`` (which ``refresh`` clears)."""

    def __init__(self, name: str, accessor: type[T]) -> None:
        self._name = name
        self._accessor = accessor

    @overload
    def __get__(self, obj: None, cls: type | None = None) -> type[T]: ...

    @overload
    def __get__(self, obj: Run, cls: type | None = None) -> T: ...

    def __get__(self, obj: Run | None, cls: type | None = None) -> type[T] | T:
        if obj is None:  # Run.metrics: the class, for help() and documentation tools
            return self._accessor
        cache = obj._accessors
        if self._name not in cache:
            try:
                cache[self._name] = self._accessor(obj)  # type: ignore[call-arg]
            except AttributeError as err:  # an AttributeError here would read as "Run has no attribute <name>"
                raise RuntimeError(f"error initializing the {self._name!r} accessor of Run: {err}") from err
        return cache[self._name]


def register_run_accessor(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: ``run.<name>`` is an instance of the class, made on first use. A name that shadows an
    attribute ``Run`` already has warns (the accessor wins), as xarray's ``register_*_accessor`` do."""

    def decorate(cls: type[T]) -> type[T]:
        old = Run.__dict__.get(name)
        if hasattr(Run, name) and not (isinstance(old, CachedAccessor) and old._accessor is cls):
            warnings.warn(f"latent_probe: run accessor {name!r} ({cls.__module__}.{cls.__qualname__}) overrides an "
                          "attribute Run already has", RuntimeWarning, stacklevel=2)
        setattr(Run, name, CachedAccessor(name, cls))
        return cls

    return decorate
