"""Adapter for anything else: ``LatentProbe((modules, scheduler), path)``.

``modules`` is one ``nn.Module``, a list of them (named ``model_0``, ``model_1``, ...) or a dict
name → module. ``step`` must receive latents in ``layout`` (default ``"b c f h w"``).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import TargetParts, UnsupportedTargetError
from ._util import jsonable


def matches(target: Any) -> bool:
    return isinstance(target, tuple) and len(target) == 2 and callable(getattr(target[1], "step", None))


def parts(target: Any, layout: str = "b c f h w") -> TargetParts:
    modules, scheduler = target
    if isinstance(modules, torch.nn.Module):
        experts = {"model": modules}
    elif isinstance(modules, dict):
        experts = dict(modules)
    elif isinstance(modules, (list, tuple)):
        experts = {f"model_{i}": m for i, m in enumerate(modules)}
    else:
        raise UnsupportedTargetError(
            f"(modules, scheduler): modules must be an nn.Module, a list or a dict of them, got {type(modules).__name__}"
        )
    bad = [n for n, m in experts.items() if not isinstance(m, torch.nn.Module)]
    if bad:
        raise UnsupportedTargetError(f"(modules, scheduler): {bad} are not torch.nn.Module instances")
    return TargetParts(
        family="modules",
        experts=experts,
        scheduler=scheduler,
        step_layout=layout,
        blocks_refused="a (modules, scheduler) target does not say how its blocks are called; block probes need a "
                       "Wan2.2 repository or diffusers Wan pipeline",
        dit_calls="diffusers",  # documented: the modules take [B, C, F, H, W] first (or as hidden_states)
        attrs={
            "family": "modules",
            "target_class": f"{type(scheduler).__module__}.{type(scheduler).__name__}",
            "scheduler_config": jsonable(getattr(scheduler, "config", {})),
        },
    )
