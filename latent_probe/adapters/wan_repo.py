"""Adapter for the original Wan2.2 repository (``wan.WanT2V``, ``wan.WanI2V``, ``wan.WanTI2V``).

The experts are attributes of the pipeline object (``high_noise_model`` / ``low_noise_model`` for the
A14B models, ``model`` for TI2V-5B). ``generate`` creates its scheduler inside itself, so the scheduler
classes it uses — found in the namespace of the module that defines the pipeline class — get their
``step`` patched for the duration of the context. ``step`` sees [1, C, F, H, W] tensors.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from .base import TargetParts, UnsupportedTargetError, dit_output_tensor
from ._util import capture_call_args, jsonable

EXPERT_ATTRS = ("high_noise_model", "low_noise_model", "model")
GENERATE_ARGS = (
    "input_prompt", "img", "size", "max_area", "frame_num", "shift", "sample_solver", "sampling_steps",
    "guide_scale", "n_prompt", "seed", "offload_model",
)


def matches(target: Any) -> bool:
    return callable(getattr(target, "generate", None)) and any(
        isinstance(getattr(target, name, None), torch.nn.Module) for name in EXPERT_ATTRS
    )


def _scheduler_classes(target: Any) -> list[type]:
    module = sys.modules.get(type(target).__module__)
    found: list[type] = []
    for name, obj in sorted(vars(module).items()) if module else []:
        if isinstance(obj, type) and name.endswith("Scheduler") and callable(getattr(obj, "step", None)):
            if obj not in found:
                found.append(obj)
    return found


def _scale_for(guide_scale: Any, expert: str | None) -> float | None:
    """Wan2.2 passes ``guide_scale`` as one number or as ``(low_noise, high_noise)``."""
    if guide_scale is None:
        return None
    if isinstance(guide_scale, (tuple, list)):
        return float(guide_scale[1] if expert == "high_noise_model" else guide_scale[0])
    return float(guide_scale)


def _dit_output(output: Any) -> torch.Tensor:
    """Wan2.2's WanModel returns a list of [C, F, H, W] tensors, one per sample."""
    if isinstance(output, (list, tuple)) and output and all(isinstance(o, torch.Tensor) and o.dim() == 4
                                                            for o in output):
        return torch.stack(list(output))
    return dit_output_tensor(output)


def parts(target: Any) -> TargetParts:
    experts = {n: getattr(target, n) for n in EXPERT_ATTRS if isinstance(getattr(target, n, None), torch.nn.Module)}
    classes = _scheduler_classes(target)
    sp_size = int(getattr(target, "sp_size", 1) or 1)  # > 1 under --ulysses_size (sequence parallel)
    if not classes:
        raise UnsupportedTargetError(
            f"{type(target).__name__} looks like a Wan2.2 pipeline but module {type(target).__module__} "
            "imports no *Scheduler class whose step could be intercepted"
        )
    call: dict[str, Any] = {}

    def remember(args: dict) -> None:
        call.clear()
        call.update(args)
        if "input_prompt" in args:
            call["prompt"] = args["input_prompt"]
        if "n_prompt" in args:
            call["negative_prompt"] = args["n_prompt"]

    attrs: dict[str, Any] = {"family": "wan_repo", "target_class": f"{type(target).__module__}.{type(target).__name__}"}
    if getattr(target, "boundary", None) is not None:
        attrs["boundary"] = float(target.boundary)
        attrs["boundary_timestep"] = float(target.boundary) * float(getattr(target, "num_train_timesteps", 1000))
    cfg = getattr(target, "config", None)
    if cfg is not None:
        attrs["model_config"] = jsonable(cfg)
    return TargetParts(
        family="wan_repo",
        experts=experts,
        scheduler_classes=classes,
        step_layout="b c f h w",
        guidance_scale=lambda expert: _scale_for(call.get("guide_scale"), expert),
        call_patches=[(target, "generate", capture_call_args(GENERATE_ARGS, remember))],
        generation_call=(target, "generate"),
        cfg="sequential",
        dit_output=_dit_output,
        high_noise_expert="high_noise_model" if {"high_noise_model", "low_noise_model"} <= set(experts) else None,
        dit_calls=None if sp_size > 1 else "wan_repo",
        rope="wan_repo",
        blocks=None if sp_size > 1 else "wan_repo",
        blocks_refused=(f"Wan2.2's sequence parallelism (sp_size={sp_size}) splits each block's tokens across "
                        "ranks; block probes see one rank's share") if sp_size > 1 else None,  # rope_apply(x, grid_sizes, freqs) in the module of WanModel's self-attention
        dit_calls_refused=(f"Wan2.2's sequence parallelism (--ulysses_size, sp_size={sp_size}) splits each DiT "
                           "call's tokens across ranks and pads seq_len to a multiple of the world size; slicing "
                           "frames there is not supported yet") if sp_size > 1 else None,
        attrs=attrs,
        call_args=call,
    )
