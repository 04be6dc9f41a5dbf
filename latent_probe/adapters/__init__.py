"""Find the DiT experts and the scheduler of a target: one module per family."""

from __future__ import annotations

from typing import Any

from . import diffusers_video, generic, wan_repo
from .base import TargetParts, UnsupportedTargetError

__all__ = ["resolve_target", "TargetParts", "UnsupportedTargetError"]


def resolve_target(target: Any, layout: str | None = None) -> TargetParts:
    """TargetParts for a Wan2.2 repo object, a diffusers video pipeline, or ``(modules, scheduler)``.

    ``layout``: the einops layout of what ``step`` receives — for ``(modules, scheduler)`` (default
    ``"b c f h w"``) and for a diffusers pipeline latent_probe has no spec for; it must agree with a known one."""
    if generic.matches(target):
        return generic.parts(target, layout or "b c f h w")
    if wan_repo.matches(target):
        if layout not in (None, "b c f h w"):
            raise UnsupportedTargetError(f"Wan2.2's scheduler.step receives 'b c f h w', not layout='{layout}'")
        return wan_repo.parts(target)
    if diffusers_video.matches(target):
        return diffusers_video.parts(target, layout)
    found = sorted(n for n in ("generate", "scheduler", *wan_repo.EXPERT_ATTRS, *diffusers_video.EXPERT_ATTRS)
                   if getattr(target, n, None) is not None)
    raise UnsupportedTargetError(
        f"LatentProbe cannot instrument {type(target).__module__}.{type(target).__name__}: found attributes "
        f"{found or 'none of generate/scheduler/model/transformer'}; expected a Wan2.2 WanT2V/WanI2V/WanTI2V, "
        "a diffusers video pipeline (docs/capture.md lists them), or a (modules, scheduler) tuple"
    )
