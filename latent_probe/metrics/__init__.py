"""Pure-tensor latent metrics (no I/O, no caching).

Public API (see docs/metrics.md):

* :func:`adjacent_frame_metrics`, :func:`lag_similarity`,
  :func:`frame_similarity_matrix`, :func:`step_change`,
  :func:`cond_uncond_gap`, :func:`noise_floor`
* drop-ins of the original analysis: :func:`compute_normalized_l2_distance`,
  :func:`compute_cosine_similarity`, :func:`analyze_latent_continuity`
* low-level float64 sums: :mod:`latent_probe.metrics.kernels`
  (:func:`frame_pair_stats`, :func:`one_minus_cos`, ...); the fused CUDA kernel
  lives in :mod:`latent_probe.metrics.triton_kernels` and is imported lazily.
"""

from .continuity import (
    AdjacentFrameMetrics,
    CondUncondGap,
    StepChange,
    adjacent_frame_metrics,
    analyze_latent_continuity,
    compute_cosine_similarity,
    compute_normalized_l2_distance,
    cond_uncond_gap,
    frame_similarity_matrix,
    lag_similarity,
    noise_floor,
    step_change,
)
from .kernels import PairMetrics, PairStats, frame_pair_stats, one_minus_cos, pair_metrics
from .run_metrics import RunMetrics  # registers run.metrics (store/accessors.py)

__all__ = [
    "AdjacentFrameMetrics",
    "CondUncondGap",
    "StepChange",
    "PairMetrics",
    "PairStats",
    "RunMetrics",
    "adjacent_frame_metrics",
    "analyze_latent_continuity",
    "compute_cosine_similarity",
    "compute_normalized_l2_distance",
    "cond_uncond_gap",
    "frame_pair_stats",
    "frame_similarity_matrix",
    "lag_similarity",
    "noise_floor",
    "one_minus_cos",
    "pair_metrics",
    "step_change",
]
