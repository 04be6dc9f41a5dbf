"""Find the DiT experts and the scheduler of a target: one module per family."""

from __future__ import annotations

from typing import Any

from . import diffusers_wan, generic, wan_repo
from .base import TargetParts, UnsupportedTargetError

__all__ = ["resolve_target", "TargetParts", "UnsupportedTargetError"]


def resolve_target(target: Any, layout: str = "b c f h w") -> TargetParts:
    """TargetParts for a Wan2.2 repo object, a diffusers pipeline, or ``(modules, scheduler)``."""
    if generic.matches(target):
        return generic.parts(target, layout)
    if wan_repo.matches(target):
        return wan_repo.parts(target)
    if diffusers_wan.matches(target):
        return diffusers_wan.parts(target)
    found = sorted(n for n in ("generate", "scheduler", *wan_repo.EXPERT_ATTRS, *diffusers_wan.EXPERT_ATTRS)
                   if getattr(target, n, None) is not None)
    raise UnsupportedTargetError(
        f"LatentProbe cannot instrument {type(target).__module__}.{type(target).__name__}: found attributes "
        f"{found or 'none of generate/scheduler/model/transformer'}; expected a Wan2.2 WanT2V/WanI2V/WanTI2V, "
        "a diffusers WanPipeline, or a (modules, scheduler) tuple"
    )
