"""Metrics computed during generation, on the tensors' own device, from their full precision.

``LatentProbe(..., metrics=("x0", "eps"))`` hands each step's [B, C, F, H, W] tensors of those spaces to
:class:`OnlineSums`, which returns the float64 *sums* the offline metrics are made of — never the metrics
themselves — as small tensors on the same device (no host synchronisation: the writer copies them with the
step). The run file keeps them per step under ``/online/<space>/`` and ``run.metrics(space)`` turns them into
:class:`~latent_probe.metrics.AdjacentFrameMetrics` and :class:`~latent_probe.metrics.StepChange` with the same
formulas as for stored latents (:func:`from_sums`).

Per step and space:

* ``sq``  [B, F]   ‖x_f‖²;  ``dot`` [B, F−1] x_f·x_{f+1};  ``dd`` [B, F−1] ‖x_f − x_{f+1}‖²  (frame_pair_stats: the
  fused Triton kernel on CUDA, the blocked engine elsewhere)
* ``change`` [4]   ‖x_s − x_{s−1}‖₁, ‖x_{s−1}‖², ‖x_{s−1}‖₁, ‖x_s‖² over the whole tensor, from float64 values
  (the previous step is kept in float64 on the device); NaN at a generation's first step.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

from .continuity import AdjacentFrameMetrics, _nanmean_last
from .formulas import pair_metrics
from .reductions import frame_pair_stats

__all__ = ["OnlineSums", "ONLINE_SPACES", "from_sums", "change_from_sums"]

ONLINE_SPACES = ("x_t", "pred", "x0", "eps")


class OnlineSums:
    """Per-step sums of ``spaces`` (a subset of :data:`ONLINE_SPACES`); keeps the previous step of each space on
    its device for the step change. :meth:`reset` at a generation's start."""

    def __init__(self, spaces: Iterable[str]) -> None:
        self.spaces = tuple(dict.fromkeys(spaces))
        unknown = [s for s in self.spaces if s not in ONLINE_SPACES]
        if unknown:
            raise ValueError(f"cannot compute metrics of {unknown} online; choose from {ONLINE_SPACES}")
        self._prev: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def reset(self) -> None:
        self._prev = {}

    @torch.no_grad()
    def step(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors``: space → [B, C, F, H, W] of this step. Returns ``"<space>/<field>"`` → float64 tensor on the
        tensor's device (frames < 2: no pair sums, only ``change``). No host synchronisation: a handful of kernel
        launches a space (the fused pair kernel on CUDA, then four float64 reductions)."""
        out: dict[str, torch.Tensor] = {}
        for space in self.spaces:
            x = tensors[space].detach()
            if x.shape[2] >= 2:
                st = frame_pair_stats(x, "b c f h w", 1)
                out[f"{space}/sq"], out[f"{space}/dot"], out[f"{space}/dd"] = st.sq, st.dot, st.diff_sq
            x64 = x.double()  # float64 values, as the stored-latent step change streams them: exact differences
            l1 = torch.linalg.vector_norm(x64, 1)
            sq = torch.linalg.vector_norm(x64) ** 2
            prev = self._prev.get(space)
            if prev is None or prev[0].shape != x.shape:
                out[f"{space}/change"] = torch.full((4,), math.nan, dtype=torch.float64, device=x.device)
            else:
                prev64, prev_l1, prev_sq = prev
                l1d = torch.linalg.vector_norm(x64 - prev64, 1)
                out[f"{space}/change"] = torch.stack([l1d, prev_sq, prev_l1, sq])
            self._prev[space] = (x64, l1, sq)
        return out


def from_sums(sq: np.ndarray, dot: np.ndarray, dd: np.ndarray, space: str | None = None) -> AdjacentFrameMetrics:
    """Adjacent-frame metrics from per-step sums [S, B, F] / [S, B, F−1] (what :func:`adjacent_frame_metrics`
    computes from the same sums)."""
    pm = pair_metrics((np.asarray(sq, np.float64), np.asarray(dot, np.float64), np.asarray(dd, np.float64), 1))
    return AdjacentFrameMetrics(l2=pm.l2, cos=pm.cos, one_minus_cos=pm.one_minus_cos, norm_ratio=pm.norm_ratio,
                                l2_mean=_nanmean_last(pm.l2), cos_mean=_nanmean_last(pm.cos),
                                zero_frames=np.asarray(pm.zero_frames, dtype=bool), lag=1, space=space)


def change_from_sums(change: np.ndarray) -> dict[str, np.ndarray]:
    """``rel_l1`` and ``norm_ratio`` [S] from the per-step ``change`` sums [S, 4] (as :func:`step_change`)."""
    c = np.asarray(change, np.float64)
    l1d, sq_prev, l1_prev, sq_cur = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(l1_prev > 0, l1d / l1_prev, np.nan)
        nr = np.where(sq_prev > 0, np.sqrt(sq_cur / sq_prev), np.nan)
    return {"rel_l1": rel, "norm_ratio": nr}

