"""Pure-tensor latent metrics (no I/O, no caching).

Public API (see docs/metrics.md):

* :func:`adjacent_frame_metrics`, :func:`lag_similarity`,
  :func:`frame_similarity_matrix`, :func:`step_change`,
  :func:`cond_uncond_gap`, :func:`noise_floor`
* drop-ins of the original analysis: :func:`compute_normalized_l2_distance`,
  :func:`compute_cosine_similarity`, :func:`analyze_latent_continuity`
* the machinery, one job a module: :mod:`.layout` (any layout → [N, R, F, L]),
  :mod:`.engine` (the blocked row reductions), :mod:`.reductions` (one-pass float64
  sums: :func:`frame_pair_stats`, ...; dispatch to the fused CUDA kernel in
  :mod:`.triton_kernels`, imported lazily), :mod:`.formulas` (metrics from sums)
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
from .formulas import PairMetrics, PairStats, one_minus_cos, pair_metrics
from .reductions import frame_pair_stats
from .run_metrics import RunMetrics  # registers run.metrics (store/accessors.py)
from .blocks import RunBlocks  # registers run.blocks

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
