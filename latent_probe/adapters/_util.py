"""Small helpers shared by adapters: JSON-safe configuration, call-argument capture."""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Iterable

from ..hooks import ModelHook

__all__ = ["jsonable", "capture_call_args"]


def jsonable(obj: Any) -> Any:
    """A JSON-serialisable copy of a configuration (dicts, FrozenDict, EasyDict, namespaces)."""
    if hasattr(obj, "to_dict") and not isinstance(obj, dict):
        try:
            obj = obj.to_dict()
        except Exception:
            pass
    if not isinstance(obj, dict) and hasattr(obj, "__dict__") and not isinstance(obj, type):
        obj = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    return json.loads(json.dumps(obj, default=str))


def capture_call_args(names: Iterable[str], into: Callable[[dict], None]) -> "ModelHook":
    """A hook (hooks.py) on a call whose arguments in ``names`` it binds against the original's signature and
    hands on (before the call goes on)."""
    return _CallArgs(tuple(names), into)


class _CallArgs(ModelHook):
    def __init__(self, names: tuple[str, ...], into: Callable[[dict], None]) -> None:
        self.names, self.into = names, into
        self._sigs: dict[int, inspect.Signature | None] = {}

    def _signature(self, site: Any) -> inspect.Signature | None:
        key = id(site)
        if key not in self._sigs:
            try:
                self._sigs[key] = inspect.signature(site.original)
            except (TypeError, ValueError):  # pragma: no cover - builtins
                self._sigs[key] = None
        return self._sigs[key]

    def pre_forward(self, site: Any, args: tuple, kwargs: dict) -> None:
        sig = self._signature(site)
        if sig is not None:
            try:
                bound = sig.bind(*args, **kwargs)
                bound.apply_defaults()
                self.into({k: bound.arguments[k] for k in self.names if k in bound.arguments})
            except TypeError:
                pass  # let the original raise its own error
        return None
