"""Formulas: frame-pair metrics (normalised L2, cosine, 1 − cosine, norm ratio) from float64 sums.

Pure arithmetic on torch tensors or numpy arrays (the same kind comes back); no pass over a latent here —
the sums come from :mod:`latent_probe.metrics.reductions`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch

__all__ = ["PairStats", "PairMetrics", "POLAR_MAX_RATIO", "one_minus_cos", "pair_metrics", "relative_l2",
           "cosine_from_sums"]

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)

class PairStats(NamedTuple):
    """Raw float64 sums for frame pairs (f, f+lag); leading axes = batch axes.

    sq:      [..., F]        ||x_f||^2
    dot:     [..., F - lag]  x_f . x_{f+lag}
    diff_sq: [..., F - lag]  ||x_f - x_{f+lag}||^2, taken directly
    lag:     pair distance k
    """

    sq: torch.Tensor
    dot: torch.Tensor
    diff_sq: torch.Tensor
    lag: int


class PairMetrics(NamedTuple):
    """Derived float64 metrics, shapes [..., F - lag] (``zero_frames``: [..., F], bool).

    Torch tensors or numpy arrays, whichever :func:`pair_metrics` was given.
    """

    l2: Any
    cos: Any
    one_minus_cos: Any
    norm_ratio: Any
    zero_frames: Any



#: Polarised dot products are replaced by direct ones where ||a||/||b|| leaves
#: [1/POLAR_MAX_RATIO, POLAR_MAX_RATIO] (r + 1/r <= 4 keeps the error <= 4x that
#: of the sums the dot product is recovered from).
POLAR_MAX_RATIO = 2.0 + math.sqrt(3.0)


def _xp(a: torch.Tensor | np.ndarray) -> Any:
    return np if isinstance(a, np.ndarray) else torch


def one_minus_cos(sq_a: ArrayT, sq_b: ArrayT, diff_sq: ArrayT) -> ArrayT:
    """1 - cos(a, b) = (||a-b||^2 - (||a|| - ||b||)^2) / (2 ||a|| ||b||), in float64.

    Takes squared norms and the directly summed ||a-b||^2 (torch tensors or
    numpy arrays).  Stable for nearly identical frames: nothing of size
    ||a||^2 is subtracted, (||a|| - ||b||)^2 is formed from the float64 norms.
    Use it for frames of comparable norms (it cancels when ||a|| >> ||b||;
    :func:`pair_metrics` switches formula there).  NaN where a norm is zero.
    """
    xp = _xp(sq_a)
    if xp is np:
        sa, sb, dd = (np.asarray(v, dtype=np.float64) for v in (sq_a, sq_b, diff_sq))
    else:
        sa, sb, dd = (v.to(torch.float64) for v in (sq_a, sq_b, diff_sq))  # type: ignore[union-attr]
    with np.errstate(all="ignore"):
        na, nb = xp.sqrt(sa), xp.sqrt(sb)
        den = 2.0 * na * nb
        # 1 - cos lies in [0, 2]; rounding can leave it a hair outside
        val = xp.clip((dd - (na - nb) ** 2) / den, 0.0, 2.0)
        return xp.where(den > 0, val, xp.full_like(val, math.nan))  # type: ignore[no-any-return]


def pair_metrics(stats: PairStats | tuple[ArrayT, ArrayT, ArrayT, int]) -> PairMetrics:
    """Normalised L2, cosine, 1 - cosine, norm ratio from (sq, dot, diff_sq, lag), float64.

    Works on torch tensors (any device) or numpy arrays, returning the same kind.
    l2 = ||a-b|| / sqrt(||a||^2 + ||b||^2) in [0, sqrt(2)]; cos in [-1, 1];
    norm_ratio = ||b|| / ||a||; NaN where a frame of the pair has zero norm.

    1 - cos takes the stable form :func:`one_minus_cos` for pairs of comparable
    norms (ratio within [1/3.73, 3.73]) and 1 - a.b/(||a|| ||b||) otherwise
    (there 1 - cos >= 1, so nothing cancels); cos near 1 (1 - cos < 1e-3) is
    taken as 1 - (1 - cos).
    """
    sq, dot, dd, k = stats
    xp = _xp(sq)
    sa, sb = sq[..., :-k], sq[..., k:]
    zero = sq == 0
    bad = (sa == 0) | (sb == 0)
    with np.errstate(all="ignore"):
        nan = xp.full_like(dd, math.nan)
        na, nb = xp.sqrt(sa), xp.sqrt(sb)
        l2 = xp.where(bad, nan, xp.sqrt(dd / (sa + sb)))
        cos_d = xp.clip(dot / (na * nb), -1.0, 1.0)
        omc_s = one_minus_cos(sa, sb, dd)
        rmax = POLAR_MAX_RATIO**2
        balanced = (sb <= rmax * sa) & (sa <= rmax * sb)
        omc = xp.where(bad, nan, xp.where(balanced, omc_s, 1.0 - cos_d))
        cos = xp.where(bad, nan, xp.where(balanced & (omc_s < 1e-3), 1.0 - omc_s, cos_d))
        ratio = xp.where(bad, nan, nb / na)
    return PairMetrics(l2, cos, omc, ratio, zero)


def relative_l2(diff_sq: ArrayT, sq_ref: ArrayT) -> ArrayT:
    """‖a − b‖ / ‖b‖ from ‖a − b‖² and ‖b‖² (float64): 0/0 = 0 (identical zeros), x/0 = inf."""
    xp = _xp(sq_ref)
    with np.errstate(all="ignore"):
        ratio = xp.sqrt(diff_sq / xp.where(sq_ref > 0, sq_ref, xp.ones_like(sq_ref)))
        return xp.where(sq_ref > 0, ratio,  # type: ignore[no-any-return]
                        xp.where(diff_sq == 0, xp.zeros_like(ratio), xp.full_like(ratio, math.inf)))


def cosine_from_sums(sq_a: ArrayT, sq_b: ArrayT, diff_sq: ArrayT, dot: ArrayT) -> ArrayT:
    """cos(a, b) from float64 sums, as :func:`pair_metrics` takes it: 1 − :func:`one_minus_cos` for balanced
    norms close to 1, a·b/(‖a‖‖b‖) otherwise; NaN where a norm is zero."""
    xp = _xp(sq_a)
    with np.errstate(all="ignore"):
        cos_d = xp.clip(dot / (xp.sqrt(sq_a) * xp.sqrt(sq_b)), -1.0, 1.0)
        omc = one_minus_cos(sq_a, sq_b, diff_sq)
        rmax = POLAR_MAX_RATIO**2
        balanced = (sq_b <= rmax * sq_a) & (sq_a <= rmax * sq_b)
        bad = (sq_a == 0) | (sq_b == 0)
        return xp.where(bad, xp.full_like(cos_d, math.nan),  # type: ignore[no-any-return]
                        xp.where(balanced & (omc < 1e-3), 1.0 - omc, cos_d))
