"""What an adapter finds in a target: the DiT experts, the scheduler(s), and run metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["TargetParts", "UnsupportedTargetError"]


class UnsupportedTargetError(TypeError):
    """The object given to LatentProbe is none of the supported kinds."""


@dataclass
class TargetParts:
    """The pieces of one target that the probe hooks.

    experts: attribute name → DiT module (``high_noise_model``, ``transformer_2``, ...).
    scheduler: the scheduler instance whose ``step`` is intercepted, when it exists before generation.
    scheduler_classes: classes whose ``step`` is patched for the context only (Wan2.2 builds its scheduler
        inside ``generate``).
    step_layout: einops pattern of the tensors ``step`` receives, e.g. ``"b c f h w"``.
    guidance_scale: expert name → guidance scale in force for it, or None when unknown.
    call_patches: (owner, attribute, make_listener) — listeners (hooks.py) that read call arguments (prompt,
        seed, size) into ``call_args``; ``make_listener(original)`` returns the listener.
    generation_call: (owner, attribute) of the call that runs one generation, when class-level ``step``
        patches must be routed to the probe whose target runs them (Wan2.2's ``generate``).
    call_args: the arguments of the latest generation call, as far as the adapter could read them.
    attrs: run attributes known up front (target class, model configuration, boundary).
    """

    family: str
    experts: dict[str, torch.nn.Module]
    scheduler: Any | None = None
    scheduler_classes: list[type] = field(default_factory=list)
    step_layout: str = "b c f h w"
    guidance_scale: Callable[[str | None], float | None] = lambda expert: None
    call_patches: list[tuple[Any, str, Callable[[Callable], Callable]]] = field(default_factory=list)
    call_args: dict[str, Any] = field(default_factory=dict)
    generation_call: tuple[Any, str] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
