"""One-pass reductions over a latent, dispatched to the fused Triton kernel (CUDA) or the blocked engine.

The central routine is :func:`frame_pair_stats`.  For a latent viewed as ``[N, F, D]`` (N = all batch/step
axes, F frames, D = C*H*W values of one frame) it returns, in float64,

* ``sq[n, f]      = ||x_f||^2``
* ``dot[n, p]     = x_p . x_{p+k}``
* ``diff_sq[n, p] = ||x_p - x_{p+k}||^2``  (taken directly from the differences, never as
  ``||a||^2 + ||b||^2 - 2 a.b``, which cancels catastrophically for nearly identical frames)

in a single pass (:mod:`latent_probe.metrics.engine`; on a CUDA tensor with Triton installed, the fused
kernel in :mod:`latent_probe.metrics.triton_kernels`: one launch, one read). :func:`diff_norms` does the same
for two latents (a vs b per frame), :func:`series_stats` along a step axis, :func:`frame_gram` all frame
pairs. No file I/O, no caching of results.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from . import engine, formulas
from .engine import as_t, block_len, compute_dtype, f64, fold, row_engine, rows_view
from .formulas import PairStats
from .layout import DEFAULT_FRAME_AXES, FLOAT_TYPES, as_tensor, canonicalize

__all__ = ["frame_pair_stats", "diff_norms", "series_stats", "frame_gram", "triton_available"]


_TRITON_BROKEN: list[str] = []


def _warn_triton_failure(exc: Exception) -> None:
    import warnings

    if not _TRITON_BROKEN:
        warnings.warn(f"Triton kernel failed ({exc!r}); using the torch path", RuntimeWarning, stacklevel=3)
    _TRITON_BROKEN.append(repr(exc))


def triton_available() -> bool:
    """True when the fused Triton kernel can be used (triton importable, CUDA present)."""
    if _TRITON_BROKEN:
        return False
    from . import triton_kernels

    return triton_kernels.is_available()


@torch.no_grad()
def _direct_dots(y: torch.Tensor, pairs: torch.Tensor, lag: int) -> torch.Tensor:
    """Direct float64-combined dot products for the (n, f) rows of ``pairs`` ([K, 2])."""
    L = y.shape[-1]
    Lb = block_len(L)
    cdt = compute_dtype(y.dtype)
    out = torch.empty(pairs.shape[0], dtype=torch.float64, device=y.device)
    for i, (n, f) in enumerate(pairs.tolist()):
        a = y[n, :, f].to(cdt)
        b = y[n, :, f + lag].to(cdt)
        out[i] = (a * b).reshape(-1, Lb).sum(-1).to(torch.float64).sum()
    return out


@torch.no_grad()
def frame_pair_stats(
    x: torch.Tensor | np.ndarray,
    layout: str = "b c f h w",
    lag: int = 1,
    *,
    frame_axes: Sequence[str] = DEFAULT_FRAME_AXES,
    backend: str = "auto",
    dot: str = "auto",
) -> PairStats:
    """One blocked pass over ``x`` giving ||x_f||^2, x_f.x_{f+lag}, ||x_f - x_{f+lag}||^2.

    ``x``: latent whose axes ``layout`` names (extra leading axes are batch
    axes), any float dtype, numpy or torch.  Returns float64 tensors on ``x``'s
    device, shapes ``batch + (F,)`` and ``batch + (F - lag,)``.

    ``backend``: "auto" (fused Triton kernel for CUDA tensors when available,
    else the blocked torch pass), "torch" or "triton".

    ``dot`` (torch backend): "direct" sums a*b in the pass; "polar" recovers
    a.b = (||a||^2 + ||b||^2 - ||a-b||^2) / 2 from the two direct sums (one
    elementwise pass fewer; its absolute error relative to ||a|| ||b|| is at
    most (r + 1/r) times that of the sums, r = ||a||/||b||, so pairs with
    r outside [1/3.73, 3.73] get a direct dot product); "auto" is "polar" on
    the CPU and "direct" elsewhere.  The Triton kernel always sums directly.
    """
    if lag < 1:
        raise ValueError("lag must be >= 1")
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"unknown backend {backend!r}")
    if dot not in ("auto", "direct", "polar"):
        raise ValueError(f"unknown dot mode {dot!r}")
    y, bshape = canonicalize(x, layout, frame_axes=frame_axes)
    N, R, F, L = y.shape
    if lag >= F:
        raise ValueError(f"lag {lag} needs more than {F} frames (layout {layout!r})")
    P = F - lag
    use_triton = backend == "triton" or (
        backend == "auto"
        and y.is_cuda
        and y.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and F >= 2 * lag
        and triton_available()
    )
    out = None
    if use_triton:
        from . import triton_kernels

        if backend == "triton":
            out = triton_kernels.fused_pair_stats(y, lag)
        else:
            try:
                out = triton_kernels.fused_pair_stats(y, lag)
            except Exception as exc:  # compile/launch failure: fall back once, loudly
                _warn_triton_failure(exc)
    if out is not None:
        sq, dots, dd = out[:, 0, :], out[:, 1, :P], out[:, 2, :P]
    else:
        direct = dot == "direct" or (dot == "auto" and y.device.type != "cpu")
        rows, m = rows_view(y)
        T = rows.shape[0]
        r = f64(row_engine(rows, lag * m, want_dot=direct))
        shape4 = (N, R, F, m)
        sq_ = fold(r["sq"], T, shape4, F)
        dd_ = fold(r["dd"], T, shape4, P)
        if direct:
            dots_ = fold(r["dot"], T, shape4, P)
        else:
            sa, sb = sq_[:, :P], sq_[:, lag:]
            dots_ = 0.5 * ((sa + sb) - dd_)
            rmax = formulas.POLAR_MAX_RATIO**2
            with np.errstate(all="ignore"):
                ratio2 = sa / sb
                bad = (ratio2 > rmax) | (ratio2 < 1.0 / rmax)
            bad = bad & (sa > 0) & (sb > 0)
            if bool(bad.any()):
                idx = torch.as_tensor(np.argwhere(np.asarray(bad)) if isinstance(bad, np.ndarray) else bad.nonzero())
                fixed = _direct_dots(y, idx, lag)
                if isinstance(dots_, np.ndarray):
                    dots_[idx[:, 0].numpy(), idx[:, 1].numpy()] = fixed.numpy()
                else:
                    dots_[idx[:, 0], idx[:, 1]] = fixed
        sq, dots, dd = as_t(sq_), as_t(dots_), as_t(dd_)
    return PairStats(
        sq.reshape(bshape + (F,)),
        dots.reshape(bshape + (P,)),
        dd.reshape(bshape + (P,)),
        lag,
    )



@torch.no_grad()
def frame_gram(
    x: torch.Tensor | np.ndarray,
    layout: str = "b c f h w",
    *,
    frame_axes: Sequence[str] = DEFAULT_FRAME_AXES,
) -> torch.Tensor:
    """Float64 Gram matrix G[..., f, g] = x_f . x_g, shape batch + (F, F).

    Computed chunk by chunk (chunks upcast to float64, then batched matmul), so
    memory stays bounded; symmetric by construction.
    """
    y, bshape = canonicalize(x, layout, frame_axes=frame_axes)
    N, R, F, L = y.shape
    G = torch.zeros((N, F, F), dtype=torch.float64, device=y.device)
    ce = engine.CHUNK_ELEMS if y.device.type == "cpu" else engine.GPU_CHUNK_ELEMS
    step = max(1, ce // max(F * N, 1))
    for r in range(R):
        for l0 in range(0, L, step):
            c = y[:, r, :, l0 : l0 + step].to(torch.float64)
            G.baddbmm_(c, c.transpose(1, 2))
    G = 0.5 * (G + G.transpose(1, 2))
    return G.reshape(bshape + (F, F))


@torch.no_grad()
def diff_norms(
    a: torch.Tensor | np.ndarray,
    b: torch.Tensor | np.ndarray,
    layout: str = "b c f h w",
    *,
    frame_axes: Sequence[str] = DEFAULT_FRAME_AXES,
    dot: bool = False,
    l1: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-frame sums for two same-shaped latents ``a`` and ``b``, float64, batch + (F,).

    Keys: ``sq_a`` = ||a_f||^2, ``sq_b`` = ||b_f||^2, ``dd`` = ||a_f - b_f||^2
    (direct); with ``dot=True`` also ``dot`` = a_f . b_f (direct); with
    ``l1=True`` also ``l1_a`` = ||a_f||_1 and ``l1_d`` = ||a_f - b_f||_1.
    """
    ta, tb = as_tensor(a), as_tensor(b)
    if ta.shape != tb.shape:
        raise ValueError(f"shape mismatch: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    ya, bshape = canonicalize(ta, layout, frame_axes=frame_axes)
    yb, _ = canonicalize(tb, layout, frame_axes=frame_axes)
    if yb.dtype != ya.dtype:
        common = torch.promote_types(ya.dtype, yb.dtype)
        ya, yb = ya.to(common), yb.to(common)
    N, R, F, _ = ya.shape
    ra, m = rows_view(ya)
    rb, _ = rows_view(yb)
    r = f64(row_engine(ra, 0, rows_b=rb, want_dot=dot, want_l1=l1))
    T = ra.shape[0]

    def per_frame(v: np.ndarray | torch.Tensor) -> torch.Tensor:
        return as_t(fold(v, T, (N, R, F, m), F)).reshape(bshape + (F,))

    out = {"sq_a": per_frame(r["sq"]), "sq_b": per_frame(r["sqb"]), "dd": per_frame(r["dd"])}
    if dot:
        out["dot"] = per_frame(r["dot"])
    if l1:
        out["l1_a"] = per_frame(r["l1a"])
        out["l1_d"] = per_frame(r["l1d"])
    return out


@torch.no_grad()
def series_stats(x: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
    """Sums along the leading (step) axis of ``x`` ([S, ...]), float64.

    Keys: ``sq`` [S] = ||x_s||^2, ``l1`` [S] = ||x_s||_1, ``l1_d`` [S - 1] =
    ||x_{s+1} - x_s||_1 (direct), ``dd`` [S - 1] = ||x_{s+1} - x_s||^2 (direct).
    """
    t = as_tensor(x)
    if t.dtype not in FLOAT_TYPES:
        raise TypeError(f"expected a floating tensor, got {t.dtype}")
    if t.ndim < 1 or t.shape[0] < 1:
        raise ValueError("need a leading step axis with at least one step")
    S = t.shape[0]
    y = t.reshape(1, 1, S, -1)
    if not y.is_contiguous():
        y = y.contiguous()
    rows, m = rows_view(y)
    T = rows.shape[0]
    r = f64(row_engine(rows, m, want_l1=True))
    shape4 = (1, 1, S, m)
    return {
        "sq": as_t(fold(r["sq"], T, shape4, S))[0],
        "l1": as_t(fold(r["l1a"], T, shape4, S))[0],
        "l1_d": as_t(fold(r["l1d"], T, shape4, S - 1))[0],
        "dd": as_t(fold(r["dd"], T, shape4, S - 1))[0],
    }
