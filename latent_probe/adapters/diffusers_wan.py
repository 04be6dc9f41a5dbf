"""Adapter for diffusers video pipelines with ``transformer`` (+ ``transformer_2``) and ``scheduler``.

``WanPipeline`` / ``WanImageToVideoPipeline``: ``transformer`` is the high-noise expert (t ≥ boundary),
``transformer_2`` the low-noise one. The scheduler instance's ``step`` is replaced on the instance only.
``step`` sees [B, C, F, H, W] latents.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import TargetParts
from ._util import capture_call_args, jsonable

EXPERT_ATTRS = ("transformer", "transformer_2")


def matches(target: Any) -> bool:
    return callable(getattr(getattr(target, "scheduler", None), "step", None)) and any(
        isinstance(getattr(target, n, None), torch.nn.Module) for n in EXPERT_ATTRS
    )


def _seed_of(generator: Any) -> int | None:
    if isinstance(generator, (list, tuple)):
        generator = generator[0] if generator else None
    if isinstance(generator, torch.Generator):
        return int(generator.initial_seed())
    return None


def parts(target: Any) -> TargetParts:
    experts = {n: getattr(target, n) for n in EXPERT_ATTRS if isinstance(getattr(target, n, None), torch.nn.Module)}
    call: dict[str, Any] = {}

    def remember_inputs(args: dict) -> None:
        call.clear()
        call.update({k: v for k, v in args.items() if isinstance(v, (str, int, float, list, type(None)))})

    def remember_latents(args: dict) -> None:
        seed = _seed_of(args.get("generator"))
        if seed is not None:
            call["seed"] = seed
        if "num_frames" in args:
            call["num_frames"] = args["num_frames"]

    def guidance(expert: str | None) -> float | None:
        name = "_guidance_scale_2" if expert == "transformer_2" else "_guidance_scale"
        value = getattr(target, name, None)
        return None if value is None else float(value)

    attrs: dict[str, Any] = {"family": "diffusers", "target_class": f"{type(target).__module__}.{type(target).__name__}"}
    boundary = getattr(getattr(target, "config", None), "boundary_ratio", None)
    if boundary is not None:
        attrs["boundary"] = float(boundary)
        attrs["boundary_timestep"] = float(boundary) * float(target.scheduler.config.num_train_timesteps)
    attrs["model_config"] = {n: jsonable(getattr(m, "config", {})) for n, m in experts.items()}
    attrs["scheduler_config"] = jsonable(getattr(target.scheduler, "config", {}))
    patches = []
    if callable(getattr(target, "check_inputs", None)):
        patches.append((target, "check_inputs", capture_call_args(
            ("prompt", "negative_prompt", "height", "width"), remember_inputs)))
    if callable(getattr(target, "prepare_latents", None)):
        patches.append((target, "prepare_latents", capture_call_args(("num_frames", "generator"), remember_latents)))
    return TargetParts(
        family="diffusers",
        experts=experts,
        scheduler=target.scheduler,
        step_layout="b c f h w",
        guidance_scale=guidance,
        call_patches=patches,
        call_args=call,
        attrs=attrs,
    )
