"""What an adapter finds in a target: the DiT experts, the scheduler(s), and run metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from ..errors import LatentProbeError

__all__ = ["TargetParts", "UnsupportedTargetError"]


class UnsupportedTargetError(LatentProbeError, TypeError):
    """The object given to LatentProbe is none of the supported kinds, or one that cannot be recorded exactly."""


def dit_output_tensor(output: Any) -> torch.Tensor:
    """The prediction in a diffusers DiT's return value: a tensor, ``(tensor, ...)`` or an object with
    ``.sample``."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "sample") and isinstance(output.sample, torch.Tensor):
        return output.sample
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find a prediction tensor in a model output of type {type(output).__name__}")


@dataclass
class TargetParts:
    """The pieces of one target that the probe hooks.

    experts: attribute name → DiT module (``high_noise_model``, ``transformer_2``, ...).
    scheduler: the scheduler instance whose ``step`` is intercepted, when it exists before generation.
    scheduler_classes: classes whose ``step`` is patched for the context only (Wan2.2 builds its scheduler
        inside ``generate``).
    step_layout: einops pattern of the tensors ``step`` receives, e.g. ``"b c f h w"``, ``"b f c h w"`` or packed
        tokens ``"b (f h w) (c pt ph pw)"``; ``unpacked_layout`` the right-hand side that gives [B, C, F, H, W]
        and ``layout_sizes`` the axis sizes it needs (filled while the pipeline runs).
    cfg: the CFG call pattern: ``"sequential"`` (one DiT call per branch, cond first) or ``"batched"`` (one call
        on [uncond, cond]).
    dit_output: the prediction tensor in a DiT's return value.
    high_noise_expert: the expert that runs while t ≥ the boundary, when there are two.
    dit_calls: the experts' calling convention for interventions that slice frames (adapters/dit_calls.py):
        ``"wan_repo"`` or ``"diffusers"`` (hidden_states [B, C, F, H, W]); None: no intervention may slice them.
    rope: where the experts take their rotary time positions from (adapters/rope.py): ``"diffusers_wan"``
        or ``"wan_repo"``; None: unknown, so frame truncation cannot give key frames their true positions;
        ``rope_refused`` says why, when the adapter knows.
    blocks: the experts' block convention for block probes (adapters/blocks.py): ``"wan_repo"`` or
        ``"diffusers_wan"``; None: unknown (``blocks_refused`` says why), so ``blocks=`` is refused.
    guidance_scale: expert name → guidance scale in force for it, or None when unknown.
    call_patches: (owner, attribute, hook) — ModelHooks (hooks.py) on calls, that read call arguments (prompt,
        seed, size) into ``call_args``.
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
    unpacked_layout: str = "b c f h w"
    layout_sizes: dict[str, int] = field(default_factory=dict)
    cfg: str = "sequential"
    dit_output: Callable[[Any], torch.Tensor] = dit_output_tensor
    high_noise_expert: str | None = None
    dit_calls: str | None = None
    dit_calls_refused: str | None = None  # why interventions may not slice these DiT calls, when dit_calls is None
    rope: str | None = None
    rope_refused: str | None = None  # why true time positions are not available, when rope is None
    blocks: str | None = None  # where the experts keep their transformer blocks (adapters/blocks.py)
    blocks_refused: str | None = None  # why blocks cannot be probed, when blocks is None
    guidance_scale: Callable[[str | None], float | None] = lambda expert: None
    call_patches: list[tuple[Any, str, Any]] = field(default_factory=list)
    call_args: dict[str, Any] = field(default_factory=dict)
    generation_call: tuple[Any, str] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
