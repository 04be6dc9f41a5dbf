"""σ of the step in progress, checked against the DiT call's timestep: what an x̂₀-space intervention needs.

A flow-matching DiT is called with t ≈ σ·T (T = the scheduler's ``num_train_timesteps``), so x̂₀ = x_t − σ·v is
exact only when the call's t and the scheduler's σ agree; interventions that convert a prediction to x̂₀
(``FrameTruncation(fill_space="x0")``, the sensitivity sweep's ``space="x0"``) refuse the call otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["checked_sigma"]

TOLERANCE = 2e-3   # |t/T − σ| allowed: the timesteps are σ·T rounded or cast by the pipeline


def checked_sigma(scheduler: Any, i: int, t: Any) -> float:
    """``scheduler.sigmas[i]`` (σ in [0, 1]) when the call's timestep ``t`` (a number or tensor, its first value)
    equals σ·T within ``TOLERANCE`` (a NaN never does) and σ is not ~0; else ``ValueError`` with one line naming
    both."""
    sigma = float(scheduler.sigmas[i])
    now = float(t.detach().reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)
    total = float(getattr(scheduler.config, "num_train_timesteps", 1000))
    if not abs(now / total - sigma) <= TOLERANCE or sigma < 1e-3:   # `not <=`: a NaN timestep is refused
        raise ValueError(f"step {i}'s timestep {now:g} does not match the scheduler's σ {sigma:.5f} (or σ ≈ 0): "
                         f"cannot convert its prediction to x̂₀ exactly")
    return sigma
