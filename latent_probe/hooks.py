"""Own every hook handle and attribute interception; remove exactly those, in any order of several probes.

Modelled on diffusers' ``HookRegistry`` (one registry per patched object, hooks removed by identity) and
TransformerLens' ``HookPoint`` bookkeeping (own your handles). Forward hooks are torch's own handles. An
attribute (a scheduler's ``step``, Wan2.2's class-level ``step``, a pipeline's ``generate``) gets **one**
dispatcher however many probes listen: each probe adds a listener and removes that listener by identity;
the original comes back when the last listener leaves — unless someone else replaced the attribute in the
meantime, which is then left as it is (with a warning). Hooks a user registered are never touched.

A listener is ``listener(call_next, *args, **kwargs)``: it may look at the arguments, must call
``call_next(*args, **kwargs)`` exactly once (or the original is skipped) and return its result.
"""

from __future__ import annotations

import functools
import types
import warnings
from typing import Any, Callable

import torch

__all__ = ["HookRegistry", "Dispatcher", "static_lookup", "dispatcher_of"]

_MISSING = object()
Listener = Callable[..., Any]


def static_lookup(owner: Any, name: str) -> Any:
    """The attribute as stored (no descriptor binding): on a class, the raw function from its MRO."""
    if isinstance(owner, type):
        for klass in owner.__mro__:
            if name in vars(klass):
                return vars(klass)[name]
        raise AttributeError(f"{owner.__name__} has no attribute {name!r}")
    return getattr(owner, name)


class Dispatcher:
    """The single replacement of ``owner.name`` while anyone listens: listeners (first added outermost)
    around the attribute as it was. On a class it binds like a function, so instances pass ``self``."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner = owner
        self.name = name
        own = vars(owner) if hasattr(owner, "__dict__") else {}
        self.previous = own.get(name, _MISSING)  # the owner's own entry, restored when the last listener leaves
        self.original = static_lookup(owner, name)  # what is called at the end of the chain
        self.is_class = isinstance(owner, type)
        self.listeners: list[Listener] = []
        functools.update_wrapper(self, self.original, updated=())

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None or not self.is_class:
            return self
        return types.MethodType(self, obj)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        listeners = tuple(self.listeners)  # a listener leaving mid-call does not break the chain
        original = self.original

        def run(i: int, a: tuple, k: dict) -> Any:
            if i == len(listeners):
                return original(*a, **k)
            return listeners[i](lambda *a2, **k2: run(i + 1, a2, k2), *a, **k)

        return run(0, args, kwargs)

    def __deepcopy__(self, memo: dict) -> Any:
        """A copy of a probed object is not probed (LTX-2 and diffusion forcing deep-copy their scheduler):
        it gets a copy of what the attribute was, bound to the copy — never this probe's listeners."""
        import copy

        return copy.deepcopy(self.original, memo)

    def __reduce__(self) -> Any:
        raise TypeError(f"latent_probe: {self.name} is being probed; pickle the object after the probe's block")

    def installed(self) -> bool:
        own = vars(self.owner) if hasattr(self.owner, "__dict__") else {}
        return own.get(self.name) is self


def dispatcher_of(owner: Any, name: str) -> Dispatcher | None:
    """The dispatcher currently installed on ``owner.name``, if any."""
    own = vars(owner) if hasattr(owner, "__dict__") else {}
    value = own.get(name)
    return value if isinstance(value, Dispatcher) else None


class HookRegistry:
    """One probe's hooks: forward hooks and attribute listeners, removed exactly and only."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._listeners: list[tuple[Dispatcher, Listener]] = []

    def __len__(self) -> int:
        return len(self._handles) + len(self._listeners)

    def forward_pre(self, module: torch.nn.Module, fn: Callable, *, prepend: bool = False) -> None:
        """``fn(module, args, kwargs) -> None | (args, kwargs)``."""
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=True, prepend=prepend))

    def forward(self, module: torch.nn.Module, fn: Callable, *, prepend: bool = False) -> None:
        """``fn(module, args, kwargs, output) -> None | output``."""
        self._handles.append(module.register_forward_hook(fn, with_kwargs=True, prepend=prepend))

    def intercept(self, owner: Any, name: str, listener: Listener) -> Dispatcher:
        """Listen to calls of ``owner.name`` (an instance's or a class's attribute)."""
        dispatcher = dispatcher_of(owner, name)
        if dispatcher is None:
            dispatcher = Dispatcher(owner, name)
            setattr(owner, name, dispatcher)
        dispatcher.listeners.append(listener)
        self._listeners.append((dispatcher, listener))
        return dispatcher

    def remove_all(self) -> None:
        """Remove this registry's hooks and listeners, newest first. Safe to call twice."""
        errors: list[BaseException] = []
        while self._handles:
            try:
                self._handles.pop().remove()
            except Exception as exc:  # pragma: no cover - torch's remove() does not raise
                errors.append(exc)
        while self._listeners:
            dispatcher, listener = self._listeners.pop()
            try:
                for i, fn in enumerate(dispatcher.listeners):
                    if fn is listener:
                        del dispatcher.listeners[i]
                        break
                if not dispatcher.listeners:
                    _uninstall(dispatcher)
            except Exception as exc:  # pragma: no cover
                errors.append(exc)
        if errors:  # pragma: no cover
            raise RuntimeError(f"latent_probe could not remove {len(errors)} hook(s): {errors[0]!r}")


def _uninstall(dispatcher: Dispatcher) -> None:
    """Put back what the attribute was, unless someone else has replaced the dispatcher since."""
    if not dispatcher.installed():
        owner = dispatcher.owner
        where = owner.__name__ if isinstance(owner, type) else type(owner).__name__
        warnings.warn(f"latent_probe: {where}.{dispatcher.name} was replaced by someone else while probed; "
                      "left as it is", RuntimeWarning, stacklevel=3)
        return
    if dispatcher.previous is _MISSING:
        delattr(dispatcher.owner, dispatcher.name)
    else:
        setattr(dispatcher.owner, dispatcher.name, dispatcher.previous)
