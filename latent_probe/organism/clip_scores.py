"""Per-clip scores of organism generations for a speed–quality frontier: each clip against its baseline clip
(same prompt and seed), and the seed floor (two baseline clips of one prompt at different seeds).

The measures are the fidelity modules' own, applied as the frontier scripts apply them:

* ``ScorerV1`` (v1 organism; ``training/frontier_measure.py``): RGB = ``videos.to_rgb`` of the final latent
  (the fixed lift's pseudo-inverse), scored by ``fidelity.score_clip`` (PSNR, SSIM, motion error px/frame,
  own line-fit residual, visibility, speed, flicker, jitter; key / filled-frame PSNR of a truncated clip); floor
  measures ``fidelity.psnr``, ``fidelity.ssim``, ``fidelity.motion_error``.
* ``ScorerV2`` (organism v2; ``training/frontier_measure_v2.py``): RGB = the organism's VAE decode
  (``OrganismV2.decode`` / 255, [3, 81, 64, 64]), scored by ``fidelity_v2.score_clip`` against the baseline clip
  and its ``motion_v2.measure`` statistics (motion error in tolerance units, motion-model pass, PSNR, SSIM,
  flicker, jitter); floor measures PSNR, SSIM and ``fidelity_v2.motion_error`` of the two clips' statistics.

A scorer's ``rgb(latent)`` takes the final latent as the pipeline returned it ([1, 16, F, h, w] or
[16, F, h, w]); ``label(prompt)`` is the prompt's class index.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from . import OrganismInputError, fidelity, fidelity_v2, motion_v2, videos, videos_v2

__all__ = ["ScorerV1", "ScorerV2"]


def _label(prompts: Sequence[str], text: str) -> int:
    wanted = " ".join(str(text).lower().split())
    for i, p in enumerate(prompts):
        if p == wanted:
            return i
    raise OrganismInputError(f"{text!r} is not one of the organism's training prompts")


def _clip(latent: torch.Tensor) -> torch.Tensor:
    """[1, 16, F, h, w] or [16, F, h, w] → [16, F, h, w] float32 on the CPU."""
    z = latent.detach().float().cpu()
    if z.dim() == 5:
        if z.shape[0] != 1:
            raise OrganismInputError(f"one clip at a time, got a batch of {z.shape[0]}")
        z = z[0]
    return z


class ScorerV1:
    """v1 organism clips (see the module docstring)."""

    name = "v1"
    measures = ("psnr", "ssim", "motion_error", "residual", "visible", "flicker", "jitter")
    floor_measures = ("psnr", "ssim", "motion_error")
    higher_is_better = {"psnr": True, "ssim": True, "motion_error": False}
    drawn = ("psnr", "motion_error", "residual", "jitter")
    titles: dict[str, str] = {}

    def label(self, prompt: str) -> int:
        return _label(videos.PROMPTS, prompt)

    def rgb(self, latent: torch.Tensor) -> torch.Tensor:
        """RGB [3, F, h, w] in [0, 1]."""
        return videos.to_rgb(_clip(latent))

    def score(self, rgb: torch.Tensor, reference: torch.Tensor, label: int,
              keys: Sequence[int] | None = None) -> dict[str, Any]:
        return fidelity.score_clip(rgb, reference, label, keys)

    def floor(self, a: torch.Tensor, b: torch.Tensor, label: int) -> dict[str, float]:
        return {"psnr": fidelity.psnr(a, b), "ssim": fidelity.ssim(a, b),
                "motion_error": fidelity.motion_error(a, b, label)}


class ScorerV2:
    """Organism v2 clips, decoded by ``organism``'s VAE (see the module docstring)."""

    name = "v2"
    measures = ("psnr", "ssim", "motion_error", "motion_pass", "flicker", "jitter")
    floor_measures = ("psnr", "ssim", "motion_error")
    higher_is_better = {"psnr": True, "ssim": True, "motion_error": False, "motion_pass": True}
    drawn = ("psnr", "motion_error", "motion_pass", "jitter")
    titles = {"motion_error": "motion error vs baseline (tolerance units, ↓)"}

    def __init__(self, organism: Any) -> None:
        self.organism = organism
        self._stats: dict[int, tuple[torch.Tensor, int, dict[str, float]]] = {}

    def label(self, prompt: str) -> int:
        return _label(videos_v2.PROMPTS, prompt)

    def rgb(self, latent: torch.Tensor) -> torch.Tensor:
        """RGB [3, 81, 64, 64] in [0, 1]: the uint8 frames the VAE decodes, / 255."""
        return self.organism.decode(_clip(latent)).permute(3, 0, 1, 2).float() / 255

    def _measure(self, rgb: torch.Tensor, label: int) -> dict[str, float]:
        """``motion_v2.measure``, once per reference clip (held here with its statistics, so its id stays its)."""
        held = self._stats.get(id(rgb))
        if held is None or held[0] is not rgb or held[1] != label:
            held = (rgb, label, motion_v2.measure(rgb, label))
            self._stats[id(rgb)] = held
        return held[2]

    def score(self, rgb: torch.Tensor, reference: torch.Tensor, label: int,
              keys: Sequence[int] | None = None) -> dict[str, Any]:
        return fidelity_v2.score_clip(rgb, reference, label, self._measure(reference, label))

    def floor(self, a: torch.Tensor, b: torch.Tensor, label: int) -> dict[str, float]:
        return {"psnr": fidelity.psnr(a, b), "ssim": fidelity.ssim(a, b),
                "motion_error": fidelity_v2.motion_error(self._measure(a, label), self._measure(b, label), label)}
