"""A simulated run through the real capture path: no weights, CPU only, seconds.

An analytic "denoiser" (a torch module, hooked like a DiT) knows the clean video — a bright blob moving
across a textured background — and returns the flow velocity v = ε̂ − x̂₀ for an x̂₀ whose error shrinks
with σ: x̂₀ = x₀ + σ²·η with η independent per frame, so adjacent frames of x̂₀ agree more as σ falls.
A real diffusers flow-matching scheduler (UniPC, configured as Wan2.2 configures it) integrates it.
The data are simulated: they show what the probe records and how the views read, not a model.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

__all__ = ["moving_pattern_video", "AnalyticDenoiser", "run_demo_generation"]


def moving_pattern_video(frames: int = 13, channels: int = 16, height: int = 24, width: int = 32,
                         seed: int = 0) -> torch.Tensor:
    """A clean latent video [1, C, F, H, W]: a Gaussian blob moving left to right over fixed texture."""
    g = torch.Generator().manual_seed(seed)
    texture = 0.5 * torch.randn(channels, 1, height, width, generator=g)
    weights = torch.randn(channels, 1, 1, 1, generator=g)
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    blobs = []
    for f in range(frames):
        cx = 4 + (width - 8) * f / max(1, frames - 1)
        cy = height / 2 + 3 * math.sin(f / 2)
        blobs.append(torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 12.0))
    blob = torch.stack(blobs)[None]  # [1, F, H, W]
    return (texture + 2.0 * weights * blob)[None]


class AnalyticDenoiser(torch.nn.Module):
    """Predicts flow velocity for x_t = (1−σ)x₀ + σε from a known x₀ with a σ-dependent error.

    forward(x_t [B, C, F, H, W], timestep [B]) → v [B, C, F, H, W]; σ = timestep / 1000.
    """

    def __init__(self, clean: torch.Tensor, error_scale: float = 0.8, seed: int = 1) -> None:
        super().__init__()
        self.register_buffer("clean", clean)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("frame_error", torch.randn(clean.shape, generator=g))
        self.error_scale = error_scale

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        sigma = (timestep.float() / 1000.0).clamp(1e-4, 1.0).view(-1, 1, 1, 1, 1)
        x0_hat = self.clean + self.error_scale * sigma**2 * self.frame_error
        eps_hat = (x_t - (1 - sigma) * x0_hat) / sigma
        return eps_hat - x0_hat


def run_demo_generation(path: str | os.PathLike | None, steps: int = 20, frames: int = 13, seed: int = 0,
                        overwrite: bool = True, **probe_kwargs: Any):
    """Generate the simulated video under a LatentProbe; returns (final latent, Run)."""
    from diffusers import UniPCMultistepScheduler

    from .probe import LatentProbe

    clean = moving_pattern_video(frames=frames, seed=seed)
    model = AnalyticDenoiser(clean, seed=seed + 1)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
                                        num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    x = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + 2))
    attrs = {"prompt": "simulated: a blob moving across a textured background (analytic denoiser)",
             "seed": seed, "simulated": True}
    probe = LatentProbe((model, scheduler), path, overwrite=overwrite, attrs=attrs, **probe_kwargs)
    with probe, torch.no_grad():
        for t in scheduler.timesteps:
            v = model(x, t.expand(x.shape[0]))
            x = scheduler.step(v, t, x, return_dict=False)[0]
    return x, probe.run
