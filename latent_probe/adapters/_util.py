"""Small helpers shared by adapters: JSON-safe configuration, call-argument capture."""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Iterable

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


def capture_call_args(names: Iterable[str], into: Callable[[dict], None]) -> Callable[[Callable], Callable]:
    """Make a listener factory (hooks.py): the listener binds the call's arguments against the original's
    signature and hands those in ``names`` on, then continues the call."""
    names = tuple(names)

    def make(original: Callable) -> Callable:
        try:
            sig = inspect.signature(original)
        except (TypeError, ValueError):  # pragma: no cover - builtins
            sig = None

        def listener(call_next: Callable, *args: Any, **kwargs: Any) -> Any:
            if sig is not None:
                try:
                    bound = sig.bind(*args, **kwargs)
                    bound.apply_defaults()
                    into({k: bound.arguments[k] for k in names if k in bound.arguments})
                except TypeError:
                    pass  # let the original raise its own error
            return call_next(*args, **kwargs)

        return listener

    return make
