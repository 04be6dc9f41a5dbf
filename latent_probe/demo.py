"""The demo's generations: the model organism (baseline and frame-truncated), or a simulated run.

``run_organism_demo`` records two generations of the packaged model organism (``latent_probe.organism``: a
small two-expert diffusers WanPipeline trained here on procedural videos; CPU, no download) with the same
prompt and seed: a baseline and one under ``FrameTruncation(keep=3, until="boundary")``, and decodes both
final latents to RGB frames. ``load_demo_organism`` raises ``OrganismUnavailable`` with a one-line reason
when it cannot be loaded (diffusers or safetensors missing, weights file missing or damaged); the demo
then falls back to the simulated run below.

The simulated run (``run_demo_generation``; no weights, CPU only, seconds): an analytic "denoiser" (a torch
module, hooked like a DiT) knows the clean video — a bright blob moving across a textured background —
and returns the flow velocity v = ε̂ − x̂₀ for an x̂₀ whose error shrinks with σ: x̂₀ = x₀ + σ²·η with η
independent per frame, so adjacent frames of x̂₀ agree more as σ falls.
A real diffusers flow-matching scheduler (UniPC, configured as Wan2.2 configures it) integrates it.
The data are simulated: they show what the probe records and how the views read, not a model.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .errors import LatentProbeError

__all__ = ["moving_pattern_video", "AnalyticDenoiser", "run_demo_generation", "ORGANISM_DESCRIPTION",
           "DEMO_PROMPT", "OrganismUnavailable", "OrganismDemo", "load_demo_organism", "run_organism_demo",
           "truncated_label", "floor_label"]

ORGANISM_DESCRIPTION = "a small video DiT trained on synthetic videos (the latent_probe organism), not Wan2.2"
DEMO_PROMPT = "a red square moving right"


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


# ----------------------------------------------------------------------------------------- the organism
class OrganismUnavailable(LatentProbeError, RuntimeError):
    """The model organism cannot be loaded here; the message says why in one line."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ImportError):
        name = getattr(exc, "name", None) or str(exc)
        return f"{name} is not installed (pip install 'latent-probe[diffusers]')"
    if isinstance(exc, LatentProbeError):
        return " ".join(str(exc).split())
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_demo_organism(weights: str | os.PathLike | None = None) -> Any:
    """``latent_probe.organism.load_organism(path=weights)`` on the CPU; ``OrganismUnavailable`` (one line)
    when it cannot be loaded: diffusers or safetensors missing, weights missing or not the organism's."""
    try:
        from .organism import load_organism

        return load_organism(path=weights)
    except Exception as exc:  # noqa: BLE001 — any failure to load means: fall back, saying why
        raise OrganismUnavailable(_reason(exc)) from exc


@dataclass
class OrganismDemo:
    """What ``run_organism_demo`` recorded: run files, decoded frames and final latents by label (baseline
    first), and the wall-clock seconds of each generation."""

    paths: dict[str, str]
    frames: dict[str, torch.Tensor]        # label → uint8 RGB [F, H, W, 3]
    latents: dict[str, torch.Tensor]       # label → final latent [1, C, F, h, w]
    seconds: dict[str, float] = field(default_factory=dict)
    prompt: str = DEMO_PROMPT
    seed: int = 0
    steps: int = 20
    keep: int = 3

    @property
    def labels(self) -> list[str]:
        return list(self.paths)


def truncated_label(keep: int) -> str:
    return f"truncated (keep {keep}, until boundary)"


def floor_label(seed: int) -> str:
    return f"baseline seed {seed}"


StepCallback = Callable[[str, int, int, float], None]  # (label, steps done, steps in all, seconds so far)


def run_organism_demo(organism: Any, baseline_path: str | os.PathLike, truncated_path: str | os.PathLike,
                      prompt: str | int = DEMO_PROMPT, seed: int = 0, steps: int = 20, keep: int = 3,
                      overwrite: bool = True, on_step: StepCallback | None = None,
                      floor_path: str | os.PathLike | None = None, **probe_kwargs: Any) -> OrganismDemo:
    """Record the organism's generation of ``prompt`` twice with the same seed — as it is, and under
    ``FrameTruncation(keep=keep, until="boundary")`` — into two closed run files; decode both final latents.

    Labels: "baseline" and ``truncated_label(keep)``. The runs' attrs carry the prompt, the seed and
    ``model`` = ``ORGANISM_DESCRIPTION``. ``floor_path``: also record the same prompt with seed ``seed + 1``
    (label ``floor_label(seed + 1)``), plain: what two valid samples of the prompt differ by, the floor the
    truncated run's distance from the baseline is read against. ``on_step(label, done, steps, seconds)`` is
    called after every
    denoising step (from the pipeline's ``callback_on_step_end``, which leaves the latents untouched).
    """
    from .interventions import FrameTruncation
    from .probe import LatentProbe

    text = organism.prompts[organism.index(prompt)]
    plans = (("baseline", os.fspath(baseline_path), None),
             (truncated_label(keep), os.fspath(truncated_path), FrameTruncation(keep=keep, until="boundary")))
    if floor_path is not None:
        plans += ((floor_label(seed + 1), os.fspath(floor_path), None),)
    demo = OrganismDemo(paths={}, frames={}, latents={}, prompt=text, seed=seed, steps=steps, keep=keep)
    for k, (label, path, intervention) in enumerate(plans):
        run_seed = seed + 1 if k == 2 else seed
        attrs = {"prompt": text, "seed": run_seed, "model": ORGANISM_DESCRIPTION, "demo_run": label}
        start = time.perf_counter()
        extra: dict[str, Any] = {}
        if on_step is not None:
            def step_end(pipe: Any, i: int, t: Any, kwargs: dict, _label: str = label) -> dict:
                on_step(_label, i + 1, steps, time.perf_counter() - start)
                return {}

            extra["callback_on_step_end"] = step_end
        probe = LatentProbe(organism.pipe, path, overwrite=overwrite, attrs=attrs, intervene=intervention,
                            **probe_kwargs)
        with probe:
            latent = organism.generate(text, seed=run_seed, num_inference_steps=steps, **extra)
        probe.run.close()
        demo.seconds[label] = time.perf_counter() - start
        demo.paths[label] = path
        demo.latents[label] = latent.detach().cpu()
        demo.frames[label] = organism.decode(latent)
    return demo
