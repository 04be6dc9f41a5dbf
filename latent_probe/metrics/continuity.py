"""Temporal-continuity metrics of video latents (pure tensor functions).

A *frame* is all C*H*W values of one latent frame.  Latents are stored
``[S, B, C, F, H, W]`` (all steps) or ``[B, C, F, H, W]`` (one step, Wan's
``"b c f h w"``); every function takes an einops-style ``layout`` naming the
axes, and any extra leading axes (e.g. the step axis) are treated as batch
axes.  Results are float64 numpy arrays whose leading axes are the batch axes
in input order (``...`` below).

Definitions (a, b: two frames flattened to D = C*H*W values):

* normalised L2 distance  d = ||a - b||_2 / sqrt(||a||^2 + ||b||^2)  in [0, sqrt(2)]
* cosine similarity       s = a.b / (||a|| ||b||)                    in [-1, 1]
* 1 - cosine              (||a-b||^2 - (||a|| - ||b||)^2) / (2 ||a|| ||b||)
* norm ratio              ||b|| / ||a||

A frame whose norm is zero makes its pairs NaN and is flagged in
``zero_frames``; no exception, no warning.  See docs/metrics.md.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
import dataclasses
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch
from einops import rearrange

from .formulas import PairStats, pair_metrics
from .layout import DEFAULT_FRAME_AXES, as_tensor
from .reductions import diff_norms, frame_gram, frame_pair_stats, series_stats

__all__ = [
    "AdjacentFrameMetrics",
    "StepChange",
    "CondUncondGap",
    "adjacent_frame_metrics",
    "lag_similarity",
    "frame_similarity_matrix",
    "step_change",
    "cond_uncond_gap",
    "noise_floor",
    "compute_normalized_l2_distance",
    "compute_cosine_similarity",
    "analyze_latent_continuity",
]

log = logging.getLogger(__name__)

Array = torch.Tensor | np.ndarray


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _nanmean_last(a: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (no warning) where all are NaN."""
    ok = ~np.isnan(a)
    n = ok.sum(axis=-1)
    tot = np.where(ok, a, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, tot / np.maximum(n, 1), np.nan)


@dataclass(frozen=True)
class AdjacentFrameMetrics:
    """Metrics of frame pairs (f, f + lag) — the one result type of per-pair metrics, for one latent or for
    every step of a run (``run.metrics(space)``: leading axes [S, B]).

    l2, cos, one_minus_cos, norm_ratio: [..., F - lag] float64 (unitless)
    l2_mean, cos_mean:                  [...] float64, means over the pairs,
                                        NaN pairs (zero frames) left out
    zero_frames:                        [..., F] bool, frames of zero norm
    lag:                                pair distance (1 = adjacent frames)
    space:                              the run quantity measured ("x0", "eps", "x_t", "pred", ...), or None
                                        for a tensor passed in directly
    """

    l2: np.ndarray
    cos: np.ndarray
    one_minus_cos: np.ndarray
    norm_ratio: np.ndarray
    l2_mean: np.ndarray
    cos_mean: np.ndarray
    zero_frames: np.ndarray
    lag: int = 1
    space: str | None = None

    def batch_mean(self, axis: int = 1) -> "AdjacentFrameMetrics":
        """The same metrics averaged (float64) over the batch axis ``axis`` (1 for a run's [S, B, ...]);
        ``zero_frames`` becomes "zero in any batch item". What the views and the run sets show per step."""
        avg = {k: np.asarray(getattr(self, k), dtype=np.float64).mean(axis=axis)
               for k in ("l2", "cos", "one_minus_cos", "norm_ratio", "l2_mean", "cos_mean")}
        return dataclasses.replace(self, **avg, zero_frames=np.asarray(self.zero_frames).any(axis=axis))


@dataclass(frozen=True)
class StepChange:
    """Change of a prediction between consecutive steps — one type for tensors and for runs; step 0 is NaN.

    rel_l1:        [S] ||p_s - p_{s-1}||_1 / ||p_{s-1}||_1 (the difference summed directly)
    norm_ratio:    [S] ||p_s||_2 / ||p_{s-1}||_2 (the same "norm ratio" as between frames, along steps)
    space:         the run quantity ("pred", "x0", ...), None for tensors passed in directly
    expert_switch: [S] bool, True where step s ran another expert than step s−1 (values there compare two
                   networks; per-expert statistics leave them out); None without expert labels
    """

    rel_l1: np.ndarray
    norm_ratio: np.ndarray
    space: str | None = None
    expert_switch: np.ndarray | None = None


@dataclass(frozen=True)
class CondUncondGap:
    """Relative L2 gap ||c - u|| / ||c|| between conditional and unconditional predictions.

    per_step:  [...]     over all frames of each batch item (of each step)
    per_frame: [..., F]  per frame
    """

    per_step: np.ndarray
    per_frame: np.ndarray


def _stats_np(stats: PairStats) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The three float64 stat arrays on the host (one transfer from a GPU)."""
    sq, dot, dd = stats.sq, stats.dot, stats.diff_sq
    if sq.device.type == "cpu":
        return sq.numpy(), dot.numpy(), dd.numpy(), stats.lag
    flat = torch.cat([sq.reshape(-1), dot.reshape(-1), dd.reshape(-1)]).cpu().numpy()
    n1, n2 = sq.numel(), dot.numel()
    return (
        flat[:n1].reshape(sq.shape),
        flat[n1 : n1 + n2].reshape(dot.shape),
        flat[n1 + n2 :].reshape(dd.shape),
        stats.lag,
    )


def _pair_metrics(x: Array, layout: str, lag: int, frame_axes: Sequence[str], backend: str) -> AdjacentFrameMetrics:
    stats = frame_pair_stats(x, layout, lag, frame_axes=frame_axes, backend=backend)
    pm = pair_metrics(_stats_np(stats))
    return AdjacentFrameMetrics(
        l2=pm.l2,
        cos=pm.cos,
        one_minus_cos=pm.one_minus_cos,
        norm_ratio=pm.norm_ratio,
        l2_mean=_nanmean_last(pm.l2),
        cos_mean=_nanmean_last(pm.cos),
        zero_frames=np.asarray(pm.zero_frames, dtype=bool),
        lag=lag,
    )


def adjacent_frame_metrics(
    x: Array,
    layout: str = "b c f h w",
    *,
    frame_axes: Sequence[str] = DEFAULT_FRAME_AXES,
    backend: str = "auto",
) -> AdjacentFrameMetrics:
    """Normalised L2, cosine, 1 - cosine and norm ratio of every adjacent frame pair.

    ``x``: latent (torch or numpy, any float dtype, any device) whose axes
    ``layout`` names; e.g. [B, C, F, H, W] with "b c f h w", or
    [S, B, C, F, H, W] with the same layout (leading S becomes a batch axis).
    One blocked pass over ``x``; see :func:`reductions.frame_pair_stats`.
    """
    return _pair_metrics(x, layout, 1, frame_axes, backend)


def lag_similarity(
    x: Array,
    k: int,
    layout: str = "b c f h w",
    *,
    frame_axes: Sequence[str] = DEFAULT_FRAME_AXES,
    backend: str = "auto",
) -> AdjacentFrameMetrics:
    """Metrics of frame f against frame f + k: fields shaped [..., F - k].

    ``lag_similarity(x, 1)`` equals :func:`adjacent_frame_metrics`.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    return _pair_metrics(x, layout, int(k), frame_axes, backend)


def frame_similarity_matrix(
    x: Array,
    layout: str = "b c f h w",
    *,
    frame_axes: Sequence[str] = DEFAULT_FRAME_AXES,
) -> np.ndarray:
    """Cosine similarity of every pair of frames: [..., F, F] float64.

    Symmetric, diagonal exactly 1; rows and columns of zero frames are NaN.
    Accumulated in float64 (float64 Gram matrix of float64-upcast chunks).
    """
    G = _np(frame_gram(x, layout, frame_axes=frame_axes))
    d = np.sqrt(np.diagonal(G, axis1=-2, axis2=-1))
    den = d[..., :, None] * d[..., None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        S = np.where(den > 0, G / den, np.nan)
    S = np.clip(S, -1.0, 1.0)
    F = S.shape[-1]
    idx = np.arange(F)
    diag = S[..., idx, idx]
    S[..., idx, idx] = np.where(np.isnan(diag), np.nan, 1.0)
    return S


def step_change(preds: Array | Iterable[Array]) -> StepChange:
    """Step-to-step change of a prediction (x̂₀, v, ...) over sampling steps.

    ``preds``: an [S, ...] tensor/array (one blocked pass), or any iterable of S same-shaped tensors — a
    list, or a generator streaming a run's steps (two steps in memory at a time). Returns per-step arrays
    [S]; step 0 (no predecessor) is NaN, as is any step whose predecessor has zero norm. Float64 sums of
    float32-reduced rows (relative error ~1e-7).
    """
    if isinstance(preds, (torch.Tensor, np.ndarray)):
        st = series_stats(preds)
        sq, l1, l1d = _np(st["sq"]), _np(st["l1"]), _np(st["l1_d"])
    else:
        sq_l, l1_l, l1d_l = [], [], []
        prev = None
        for s, p in enumerate(preds):
            t = as_tensor(p)
            if prev is None:
                sq_l.append(math.nan)
                l1_l.append(math.nan)
            else:
                if t.shape != prev.shape:
                    raise ValueError(f"step {s}: shape {tuple(t.shape)} != {tuple(prev.shape)}")
                t = t.to(prev.device)
                r = diff_norms(prev.reshape(1, -1), t.reshape(1, -1), "f d", frame_axes=("d",), l1=True)
                sq_l[-1], l1_l[-1] = float(r["sq_a"][0]), float(r["l1_a"][0])
                sq_l.append(float(r["sq_b"][0]))
                l1_l.append(math.nan)
                l1d_l.append(float(r["l1_d"][0]))
            prev = t
        if prev is None:
            raise ValueError("empty sequence of predictions")
        sq, l1, l1d = np.asarray(sq_l), np.asarray(l1_l), np.asarray(l1d_l)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.concatenate([[np.nan], np.where(l1[:-1] > 0, l1d / l1[:-1], np.nan)])
        nr = np.concatenate([[np.nan], np.where(sq[:-1] > 0, np.sqrt(sq[1:] / sq[:-1]), np.nan)])
    return StepChange(rel_l1=rel, norm_ratio=nr)


def cond_uncond_gap(
    cond: Array,
    uncond: Array,
    layout: str = "b c f h w",
    *,
    frame_axes: Sequence[str] = DEFAULT_FRAME_AXES,
) -> CondUncondGap:
    """Relative L2 gap ||c - u|| / ||c|| (direct difference), per step and per frame.

    ``cond``, ``uncond``: same shape, axes named by ``layout`` (leading extra
    axes, e.g. steps, are batch axes).  per_step: [...], per_frame: [..., F];
    NaN where ||c|| = 0.
    """
    r = diff_norms(cond, uncond, layout, frame_axes=frame_axes)
    dd, sc = _np(r["dd"]), _np(r["sq_a"])
    with np.errstate(invalid="ignore", divide="ignore"):
        per_frame = np.where(sc > 0, np.sqrt(dd / sc), np.nan)
        tot_c = sc.sum(axis=-1)
        per_step = np.where(tot_c > 0, np.sqrt(dd.sum(axis=-1) / tot_c), np.nan)
    return CondUncondGap(per_step=per_step, per_frame=per_frame)


@overload
def noise_floor(sigma: float, alpha: float | None = None) -> float: ...
@overload
def noise_floor(sigma: np.ndarray | Sequence[float], alpha: np.ndarray | Sequence[float] | float | None = None) -> np.ndarray: ...
def noise_floor(sigma, alpha=None):  # type: ignore[no-untyped-def]
    """Adjacent-frame cosine that x_t = alpha x0 + sigma eps shows from noise alone.

    For static content (both frames the same x0, per-element unit variance)
    and independent noise, cos -> alpha^2 / (alpha^2 + sigma^2) as D grows.
    ``alpha=None`` means flow matching, alpha = 1 - sigma:
    (1 - sigma)^2 / ((1 - sigma)^2 + sigma^2).  Scalars in, float out;
    arrays in, float64 array out.  sigma = alpha = 0 gives NaN.
    """
    s = np.asarray(sigma, dtype=np.float64)
    a = 1.0 - s if alpha is None else np.asarray(alpha, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = a * a / (a * a + s * s)
    if np.ndim(out) == 0:
        return float(out)
    return out


# --------------------------------------------------------------------------- #
# drop-ins with the original analysis's names
# --------------------------------------------------------------------------- #
def _pair_of(latent_f: Array, latent_f_plus_1: Array) -> AdjacentFrameMetrics:
    a, b = as_tensor(latent_f), as_tensor(latent_f_plus_1)
    if a.shape != b.shape:
        raise ValueError(f"frame shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if b.dtype != a.dtype or b.device != a.device:
        b = b.to(a.device, torch.promote_types(a.dtype, b.dtype))
        a = a.to(b.dtype)
    x = torch.stack([a.reshape(-1), b.reshape(-1)])  # [2, D]: "f d"
    return _pair_metrics(x, "f d", 1, ("d",), "auto")


def compute_normalized_l2_distance(latent_f: Array, latent_f_plus_1: Array) -> float:
    """||a - b|| / sqrt(||a||^2 + ||b||^2) of two frames ([C, H, W] each); NaN for a zero frame."""
    return float(_pair_of(latent_f, latent_f_plus_1).l2[0])


def compute_cosine_similarity(latent_f: Array, latent_f_plus_1: Array) -> float:
    """Cosine similarity of two frames ([C, H, W] each), flattened; NaN for a zero frame."""
    return float(_pair_of(latent_f, latent_f_plus_1).cos[0])


#: The original analysis's reading of a 5-D latent (used when ``layout`` is not given).
ORIGINAL_LAYOUT = "b f c h w"
_LATENT_AXES = ("c", "f", "h", "w")
_warned_5d_default = False  # the 5-D-without-layout warning is shown once per process


def _warn_5d_default(stacklevel: int) -> None:
    global _warned_5d_default
    if _warned_5d_default:
        return
    _warned_5d_default = True
    warnings.warn(
        "analyze_latent_continuity: no layout= given, reading this 5-D latent as the original "
        "analysis's [B, F, C, H, W]; Wan's pipeline latents are [B, C, F, H, W]: pass "
        'layout="b c f h w" (shown once per process)',
        UserWarning,
        stacklevel=stacklevel + 1,
    )


def _dropin_latent(latent: Array, layout: str | None, stacklevel: int) -> tuple[torch.Tensor, str]:
    """``latent`` as a 5-D tensor ``[N, *the c f h w axes in the order layout gives]`` and its layout.

    ``layout=None``: 5-D is the original's [B, F, C, H, W] (one-time warning),
    anything else is refused.  Batch axes (any names besides c, f, h, w, or
    ``...``) are merged into one with einops ``rearrange`` (a view); c, f, h, w
    keep their order, so the kernels see the same memory layout as the input.
    """
    t = as_tensor(latent)
    if layout is None:
        if t.ndim == 4:
            raise ValueError(
                "a 4-D latent is ambiguous: pass layout='c f h w' (Wan2.2) or layout='f c h w' "
                "(the original analysis's [F, C, H, W])"
            )
        if t.ndim != 5:
            raise ValueError(
                f"a {t.ndim}-D latent (shape {tuple(t.shape)}) needs layout=, e.g. "
                "layout='s b c f h w' for [S, B, C, F, H, W]"
            )
        _warn_5d_default(stacklevel + 1)
        layout = ORIGINAL_LAYOUT
    if not isinstance(layout, str):
        raise TypeError(f"layout must be a string such as 'b c f h w', got {type(layout).__name__}")
    names = layout.split()
    hint = "name c, f, h, w once each plus optional batch axes, e.g. layout='b c f h w' or 'c f h w'"
    bad = [n for n in names if n != "..." and not n.isidentifier()]
    if bad or names.count("...") > 1:
        raise ValueError(f"invalid layout {layout!r}: {hint}")
    if any(names.count(a) != 1 for a in _LATENT_AXES) or len(set(names)) != len(names):
        raise ValueError(f"invalid layout {layout!r}: {hint}")
    if t.ndim == 4 and sorted(names) == ["b", "c", "f", "h", "w"]:
        names.remove("b")  # a 4-D latent under a 5-D layout such as "b c f h w": one batch item
    n_fixed = len(names) - names.count("...")
    if ("..." in names and t.ndim < n_fixed) or ("..." not in names and t.ndim != n_fixed):
        raise ValueError(
            f"layout {' '.join(names)!r} names {n_fixed} axes, the latent has {t.ndim} (shape {tuple(t.shape)})"
        )
    batch = [n for n in names if n not in _LATENT_AXES]
    inner = " ".join(n for n in names if n in _LATENT_AXES)
    y = rearrange(t, f"{' '.join(names)} -> ({' '.join(batch)}) {inner}")
    return y, "b " + inner


def analyze_latent_continuity(
    latent: Array, step_idx: int | None = None, layout: str | None = None
) -> tuple[float, float]:
    """Mean adjacent-frame normalised L2 and cosine of one step's latent.

    ``layout``: an einops pattern naming the latent's axes, e.g. ``"b c f h w"``
    (Wan's [B, C, F, H, W] pipeline latents), ``"c f h w"`` (one Wan latent),
    ``"b f c h w"`` / ``"f c h w"`` (the original analysis's); axes other than
    c, f, h, w are batch axes.  A 4-D latent under a 5-name layout drops "b".
    Without ``layout`` a 5-D latent is read as the original's [B, F, C, H, W]
    (with a one-time warning) and any other one raises ``ValueError``.
    Averages over all pairs and batch items (NaN pairs left out).
    ``step_idx`` is only logged (kept for compatibility).
    """
    x, inner = _dropin_latent(latent, layout, stacklevel=2)
    m = adjacent_frame_metrics(x, inner)
    avg_l2 = float(_nanmean_last(m.l2.reshape(-1)))
    avg_cos = float(_nanmean_last(m.cos.reshape(-1)))
    log.debug("step %s: avg normalised L2 %.6g, avg cosine %.6g", step_idx, avg_l2, avg_cos)
    if math.isnan(avg_l2):
        log.debug("step %s: no valid frame pair (zero frames)", step_idx)
    return avg_l2, avg_cos
