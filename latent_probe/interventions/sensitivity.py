"""How much a perturbation at one sampling step moves the final sample: a perturbation sweep (issue 19, item 6).

For each step k, one generation runs with the prediction the scheduler integrates at step k (``model_output`` of
``scheduler.step``: the guided v of a flow-matching pipeline) perturbed, every other step untouched:

* ``space="prediction"``: δv = ε·‖v‖·d/‖d‖ with d = fill(v at the key frames) − v — the direction of frame
  truncation's own damage (``FrameTruncation`` fills the prediction of the non-key frames from the key frames);
* ``space="x0"``: the same in x̂₀ = x_t − σ·v: δx̂₀ = ε·‖x̂₀‖·d/‖d‖ with d = fill(x̂₀ at the key frames) − x̂₀,
  applied as δv = −δx̂₀/σ (flow matching; the damage of ``FrameTruncation(fill_space="x0")``).

Norms are per clip (batch element) over C, F, H, W. The sensitivity of clip b at step k is

    s[k, b] = (‖x_final,perturbed − x_final‖ / ‖x_final‖) / ε

— the final sample's relative change per unit relative perturbation at step k. To first order, an error of
relative size e_k in the perturbed space at step k moves the final sample by s_k·e_k
(``metrics.feasibility.weighted_error`` sums that over the truncated steps).

The sweep refuses (``SensitivityError``, one line) before measuring anything when two unperturbed runs differ
(the generation is not deterministic, so a difference could not be attributed to the perturbation), and when
``space="x0"`` meets a scheduler that is not flow matching or a call whose timestep is not the scheduler's σ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import LatentProbeError
from ..frames import FILLS, default_keyframes, interpolate_frames, resolve_keyframes
from ..hooks import HookRegistry, ModelHook
from .step_sigma import checked_sigma

__all__ = ["SensitivityError", "StepPerturbation", "StepSensitivity", "step_sensitivity", "SPACES"]

SPACES = ("prediction", "x0")


class SensitivityError(LatentProbeError):
    """The perturbation sweep cannot measure exactly on this target."""


def _per_clip_norm(x: torch.Tensor) -> torch.Tensor:
    """‖x_b‖ over every axis but the first, shaped [B, 1, ..., 1] for broadcasting."""
    return x.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.dim() - 1)))


class StepPerturbation(ModelHook):
    """A ``ModelHook`` on ``scheduler.step`` that perturbs ``model_output`` at one step of each generation.

    Counts ``step`` calls since ``reset_state()`` (call it before each generation); at call ``step`` it adds the
    perturbation of the module docstring (float64 maths, result in the prediction's dtype). ``applied`` holds,
    per perturbed call, the relative size actually applied per clip (‖δ‖/‖v‖ or ‖δx̂₀‖/‖x̂₀‖ recomputed from the
    cast result): ε up to rounding.
    """

    def __init__(self, scheduler: Any, step: int, *, keys: Sequence[int], fill: str = "linear",
                 space: str = "prediction", eps: float = 0.05) -> None:
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if space == "x0":
            _check_flow(scheduler)
        self.scheduler, self.step, self.keys, self.fill = scheduler, int(step), list(keys), fill
        self.space, self.eps = space, float(eps)
        self.calls = 0
        self.applied: list[np.ndarray] = []

    def reset_state(self) -> None:
        self.calls = 0

    def pre_forward(self, site: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        i = self.calls
        self.calls += 1
        if i != self.step:
            return None
        pos, kw = list(args), dict(kwargs)
        v = _arg(pos, kw, 0, "model_output")
        sigma = 1.0
        if self.space == "prediction":
            new = v.double() + self._delta(v.double())
        else:
            sigma = _sigma(self.scheduler, i, _arg(pos, kw, 1, "timestep"))
            x_t = _arg(pos, kw, 2, "sample").double()
            x0 = x_t - sigma * v.double()
            new = v.double() - self._delta(x0) / sigma
        new = new.to(v.dtype)
        got = new.double() - v.double() if self.space == "prediction" else -sigma * (new.double() - v.double())
        ref = v.double() if self.space == "prediction" else x0
        self.applied.append((_per_clip_norm(got) / _per_clip_norm(ref)).flatten().numpy())
        _set_arg(pos, kw, 0, "model_output", new)
        return tuple(pos), kw

    def _delta(self, x: torch.Tensor) -> torch.Tensor:
        """ε·‖x‖·d/‖d‖ per clip, d = fill(x at the keys) − x (x [B, C, F, H, W], float64)."""
        idx = torch.as_tensor(self.keys, dtype=torch.long, device=x.device)
        d = interpolate_frames(x.index_select(-3, idx), self.keys, x.shape[-3], self.fill) - x
        dn = _per_clip_norm(d)
        if bool((dn == 0).any()):
            raise SensitivityError(f"step {self.step}: the fill reproduces a clip exactly (‖fill − x‖ = 0): no "
                                   "damage direction to perturb along")
        return self.eps * _per_clip_norm(x) * d / dn


@dataclass
class StepSensitivity:
    """Per-step sensitivities of one sweep. ``per_clip`` [S, B]; ``sensitivity`` [S] its mean over clips."""

    space: str
    fill: str
    keys: list[int]
    eps: float
    steps: list[int]
    per_clip: np.ndarray
    applied: np.ndarray            # [S, B] relative perturbation actually applied (ε up to rounding)
    baseline_repeat_max_abs_diff: float
    clips: list[Any] = field(default_factory=list)

    @property
    def sensitivity(self) -> np.ndarray:
        return self.per_clip.mean(axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "fill": self.fill, "keys": list(self.keys), "eps": self.eps,
                "steps": list(self.steps), "sensitivity": self.sensitivity.tolist(),
                "per_clip": self.per_clip.tolist(), "applied": self.applied.tolist(),
                "baseline_repeat_max_abs_diff": self.baseline_repeat_max_abs_diff, "clips": list(self.clips)}


def step_sensitivity(scheduler: Any, run_fn: Callable[[], torch.Tensor], num_steps: int, *,
                     steps: Sequence[int] | None = None, keep: int = 3, keyframes: Sequence[int] | None = None,
                     fill: str = "linear", space: str = "prediction", eps: float = 0.05,
                     clips: Sequence[Any] = (), progress: Callable[[str], None] | None = None) -> StepSensitivity:
    """The perturbation sweep of the module docstring.

    ``run_fn()`` runs one seeded generation (deterministic: the same result every call) whose sampling loop calls
    ``scheduler.step(model_output, timestep, sample, ...)`` once per step, and returns the final sample
    [B, C, F, H, W]. ``steps`` (default all ``num_steps``) are the 0-based steps perturbed, one generation each;
    ``keep`` / ``keyframes`` choose the key frames as ``FrameTruncation`` does; ``clips`` is recorded as given
    (what the batch holds). Costs len(steps) + 2 generations.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    if space == "x0":
        _check_flow(scheduler)
    steps = list(range(num_steps)) if steps is None else [int(s) for s in steps]
    if not steps or any(not 0 <= s < num_steps for s in steps):
        raise ValueError(f"steps must lie in [0, {num_steps}), got {steps}")
    say = progress or (lambda _: None)
    base = run_fn().detach().double().cpu()
    again = run_fn().detach().double().cpu()
    repeat = float((base - again).abs().max())
    if repeat != 0.0:
        raise SensitivityError(f"two unperturbed generations differ (max |Δ| = {repeat:.3g}): the sweep needs a "
                               "deterministic run_fn (fixed seeds, deterministic kernels)")
    num_frames = int(base.shape[-3])
    keys = resolve_keyframes(keyframes, num_frames) if keyframes is not None else default_keyframes(num_frames, keep)
    base_norm = _per_clip_norm(base).flatten()
    per_clip, applied = [], []
    for k in steps:
        hook = StepPerturbation(scheduler, k, keys=keys, fill=fill, space=space, eps=eps)
        registry = HookRegistry()
        registry.add_call(scheduler, "step", hook)
        try:
            out = run_fn().detach().double().cpu()
        finally:
            registry.remove_all()
        if hook.calls != num_steps or len(hook.applied) != 1:
            raise SensitivityError(f"run_fn called scheduler.step {hook.calls} times, expected {num_steps}")
        rel = _per_clip_norm(out - base).flatten() / base_norm
        per_clip.append((rel / eps).numpy())
        applied.append(hook.applied[0])
        say(f"{space} step {k}: sensitivity {float(per_clip[-1].mean()):.4g}")
    return StepSensitivity(space=space, fill=fill, keys=list(keys), eps=float(eps), steps=steps,
                           per_clip=np.asarray(per_clip, dtype=np.float64),
                           applied=np.asarray(applied, dtype=np.float64), baseline_repeat_max_abs_diff=repeat,
                           clips=list(clips))


# ---------------------------------------------------------------------- helpers
def _arg(args: list, kwargs: dict, pos: int, name: str) -> Any:
    return kwargs[name] if name in kwargs else args[pos]


def _set_arg(args: list, kwargs: dict, pos: int, name: str, value: Any) -> None:
    if name in kwargs:
        kwargs[name] = value
    else:
        args[pos] = value


def _check_flow(scheduler: Any) -> None:
    cfg = getattr(scheduler, "config", None)
    flow = (getattr(cfg, "prediction_type", None) == "flow_prediction" or getattr(cfg, "use_flow_sigmas", False)
            or type(scheduler).__name__.startswith("FlowMatch"))
    if not flow or getattr(scheduler, "sigmas", None) is None:
        raise SensitivityError(f"space='x0' needs a flow-matching scheduler with sigmas (x̂₀ = x_t − σ·v); this "
                               f"one is {type(scheduler).__name__}")


def _sigma(scheduler: Any, i: int, t: Any) -> float:
    """σ of step i (the scheduler's own), checked against the call's timestep t ≈ σ·T."""
    try:
        return checked_sigma(scheduler, i, t)
    except ValueError as exc:
        raise SensitivityError(f"space='x0': {exc}") from None
