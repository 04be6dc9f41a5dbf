"""Own every hook handle and attribute patch; remove exactly those.

Modelled on TransformerLens' ``HookPoint`` bookkeeping: the registry keeps the handles it created and
the attributes it replaced, and ``remove_all`` undoes exactly those, newest first. Hooks a user
registered on the same modules are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = ["HookRegistry", "static_lookup"]

_MISSING = object()


@dataclass
class _Patch:
    owner: Any
    name: str
    previous: Any  # the owner's own attribute before patching, or _MISSING if it was inherited / absent


def static_lookup(owner: Any, name: str) -> Any:
    """The attribute as stored (no descriptor binding): on a class, the raw function from its MRO."""
    if isinstance(owner, type):
        for klass in owner.__mro__:
            if name in vars(klass):
                return vars(klass)[name]
        raise AttributeError(f"{owner.__name__} has no attribute {name!r}")
    return getattr(owner, name)


class HookRegistry:
    """Attach forward hooks and attribute patches; undo exactly those."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._patches: list[_Patch] = []

    def __len__(self) -> int:
        return len(self._handles) + len(self._patches)

    def forward_pre(self, module: torch.nn.Module, fn: Callable) -> None:
        """``fn(module, args, kwargs) -> None | (args, kwargs)``."""
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def forward(self, module: torch.nn.Module, fn: Callable) -> None:
        """``fn(module, args, kwargs, output) -> None | output``."""
        self._handles.append(module.register_forward_hook(fn, with_kwargs=True))

    def patch(self, owner: Any, name: str, replacement: Any) -> None:
        """Set ``owner.name = replacement`` (an instance or a class), remembering how to undo it."""
        own = vars(owner) if hasattr(owner, "__dict__") else {}
        previous = own.get(name, _MISSING)
        self._patches.append(_Patch(owner, name, previous))
        setattr(owner, name, replacement)

    def remove_all(self) -> None:
        """Remove this registry's hooks and patches, newest first. Safe to call twice."""
        errors: list[BaseException] = []
        while self._handles:
            try:
                self._handles.pop().remove()
            except Exception as exc:  # pragma: no cover - torch's remove() does not raise
                errors.append(exc)
        while self._patches:
            p = self._patches.pop()
            try:
                if p.previous is _MISSING:
                    delattr(p.owner, p.name)
                else:
                    setattr(p.owner, p.name, p.previous)
            except Exception as exc:  # pragma: no cover
                errors.append(exc)
        if errors:  # pragma: no cover
            raise RuntimeError(f"latent_probe could not remove {len(errors)} patch(es): {errors[0]!r}")
