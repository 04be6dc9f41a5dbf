"""Low-level reductions behind the latent metrics.

Everything here is pure tensor code: no file I/O, no caching of results.

The central routine is :func:`frame_pair_stats`.  For a latent viewed as
``[N, F, D]`` (N = all batch/step axes, F frames, D = C*H*W values of one
frame) it returns, in float64,

* ``sq[n, f]      = ||x_f||^2``
* ``dot[n, p]     = x_p . x_{p+k}``
* ``diff_sq[n, p] = ||x_p - x_{p+k}||^2``  (taken directly from the differences,
  never as ``||a||^2 + ||b||^2 - 2 a.b``, which cancels catastrophically for
  nearly identical frames)

in a single pass over the latent.  The pass is blocked: rows of at most
``MAX_BLOCK`` contiguous values are reduced in float32 (float64 for float64
input) and the per-row partial sums are combined in float64, which keeps the
relative error near 1e-7 while running at memory speed.  Half-precision input
is upcast chunk by chunk, so no full-size float32/float64 copy is made.

On a CUDA tensor with Triton installed, :func:`frame_pair_stats` dispatches to
the fused kernel in :mod:`latent_probe.metrics.triton_kernels` (one launch,
one read of the latent).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from einops import rearrange

__all__ = [
    "DEFAULT_FRAME_AXES",
    "MAX_BLOCK",
    "PairStats",
    "PairMetrics",
    "CanonicalLatent",
    "as_tensor",
    "canonicalize",
    "frame_pair_stats",
    "pair_metrics",
    "one_minus_cos",
    "frame_gram",
    "diff_norms",
    "series_stats",
    "triton_available",
]

#: Axis names that make up one frame unless ``frame_axes=`` says otherwise.
DEFAULT_FRAME_AXES: tuple[str, ...] = ("c", "h", "w")
#: Longest run of values reduced in float32 before the float64 combination.
MAX_BLOCK = 2048
#: Elements per chunk of the CPU pass (about 4 MiB of float32; the measured sweet spot).
CHUNK_ELEMS = 1 << 20
#: The same on accelerators (torch path, i.e. without Triton): 64 MiB of float32.
GPU_CHUNK_ELEMS = 1 << 24

_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------- #
# layout handling
# --------------------------------------------------------------------------- #
class CanonicalLatent(NamedTuple):
    """A latent rearranged (a view whenever possible) to ``[N, R, F, L]``.

    ``R`` and ``L`` are the frame axes that precede / follow ``f`` in memory,
    so one frame is the ``R x L`` slab ``y[n, :, f, :]`` and ``D = R * L``.
    ``batch_shape`` are the sizes of the axes flattened into ``N``.
    """

    y: torch.Tensor
    batch_shape: tuple[int, ...]


def as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Zero-copy conversion of a numpy array (memmaps included) to a tensor."""
    if isinstance(x, torch.Tensor):
        return x
    arr = np.asarray(x)
    if not arr.flags.writeable:
        # torch.from_numpy warns on read-only arrays; nothing here writes into it.
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(arr)
    return torch.from_numpy(arr)


@functools.lru_cache(maxsize=256)
def _parse_layout(
    layout: str, ndim: int, frame_axes: tuple[str, ...], time_axis: str
) -> tuple[str, tuple[int, ...]]:
    """Return (einops pattern to [N, R, F, L], positions of batch axes)."""
    names = layout.split()
    if "(" in layout or ")" in layout:
        raise ValueError(f"layout {layout!r}: use plain axis names, no groups")
    if names.count(time_axis) != 1:
        raise ValueError(f"layout {layout!r} must name the frame axis {time_axis!r} once")
    if len(set(n for n in names if n != "...")) != len([n for n in names if n != "..."]):
        raise ValueError(f"layout {layout!r} repeats an axis name")
    if "..." not in names:
        if ndim > len(names):
            names = ["..."] + names  # extra leading axes (e.g. steps) are batch
        elif ndim < len(names):
            raise ValueError(f"layout {layout!r} has {len(names)} axes, tensor has {ndim}")
    elif ndim < len(names) - 1:
        raise ValueError(f"layout {layout!r} needs at least {len(names) - 1} axes, tensor has {ndim}")
    fpos = names.index(time_axis)
    frame = [n for n in names if n in frame_axes]
    if not frame:
        raise ValueError(f"layout {layout!r} contains none of the frame axes {frame_axes}")
    batch = [n for n in names if n != time_axis and n not in frame_axes]
    before = [n for n in names[:fpos] if n in frame_axes]
    after = [n for n in names[fpos + 1 :] if n in frame_axes]
    pattern = (
        f"{' '.join(names)} -> ({' '.join(batch)}) ({' '.join(before)}) "
        f"{time_axis} ({' '.join(after)})"
    )
    # positions of batch axes in the input, to recover batch_shape
    n_ell = ndim - (len(names) - 1) if "..." in names else 0
    pos: list[int] = []
    i = 0
    for n in names:
        if n == "...":
            if n in batch:
                pos.extend(range(i, i + n_ell))
            i += n_ell
        else:
            if n in batch:
                pos.append(i)
            i += 1
    return pattern, tuple(pos)


def canonicalize(
    x: torch.Tensor | np.ndarray,
    layout: str = "b c f h w",
    *,
    frame_axes: Sequence[str] = DEFAULT_FRAME_AXES,
    time_axis: str = "f",
) -> CanonicalLatent:
    """Rearrange ``x`` to a contiguous ``[N, R, F, L]`` tensor (a view for the usual layouts).

    ``layout`` is an einops-style list of axis names.  ``time_axis`` ("f") is
    the frame axis, ``frame_axes`` (default c, h, w) make up one frame, every
    other axis (and any extra leading axes, e.g. a step axis) is a batch axis.
    """
    t = as_tensor(x)
    if t.dtype not in _FLOAT_TYPES:
        raise TypeError(f"expected a floating latent, got {t.dtype}")
    pattern, pos = _parse_layout(layout, t.ndim, tuple(frame_axes), time_axis)
    y = rearrange(t, pattern)
    if not y.is_contiguous():
        y = y.contiguous()
    return CanonicalLatent(y, tuple(t.shape[p] for p in pos))


@functools.lru_cache(maxsize=256)
def _block_len(L: int, max_block: int = MAX_BLOCK) -> int:
    """Largest divisor of L that is <= max_block (L itself when no useful one exists)."""
    if L <= max_block:
        return L
    k0 = -(-L // max_block)
    for k in range(k0, min(L, 64 * k0) + 1):
        if L % k == 0:
            return L // k
    return L  # no divisor in range: rows reduced whole (float32 cascade sum)


# --------------------------------------------------------------------------- #
# blocked row engine
# --------------------------------------------------------------------------- #
def _compute_dtype(dt: torch.dtype) -> torch.dtype:
    return torch.float64 if dt == torch.float64 else torch.float32


def _norm_rows(t: torch.Tensor, out: torch.Tensor) -> None:
    """Per-row L2 norms of a 2-D tensor into ``out`` (rows of <= MAX_BLOCK values).

    ``vector_norm`` reduces in one fused read; rows longer than MAX_BLOCK (no
    divisor found) fall back to torch's cascade ``sum``, which stays accurate.
    """
    if t.shape[-1] > MAX_BLOCK:
        torch.sum(t * t, dim=-1, out=out)
        out.sqrt_()
    else:
        torch.linalg.vector_norm(t, dim=-1, out=out)


def _l1_rows(t: torch.Tensor, out: torch.Tensor) -> None:
    """Per-row L1 norms (sum |t|) into ``out``.

    ``vector_norm(ord=1)`` would save the temporary but measured 1.4e-6 relative
    error on 1,440-value rows; torch's cascade ``sum`` stays near 1e-8.
    """
    torch.sum(t.abs(), dim=-1, out=out)


def _row_engine(
    rows: torch.Tensor,
    off: int,
    *,
    rows_b: torch.Tensor | None = None,
    want_dd: bool = True,
    want_dot: bool = False,
    want_l1: bool = False,
    chunk_elems: int | None = None,
) -> dict[str, torch.Tensor]:
    """Blocked per-row reductions over ``rows`` ([T, Lb]), in the compute dtype.

    Pairs are row ``i`` with row ``i + off`` of ``rows`` (``rows_b`` None:
    ``T - off`` pairs) or with ``rows_b[i]`` (``T`` pairs).  Returns

    * ``sq``  [T]: L2 norm of each row (and ``sqb`` for ``rows_b``)
    * ``dd``  [P]: L2 norm of b - a, from the materialised difference (direct)
    * ``dot`` [P]: sum a*b (only with ``want_dot``)
    * ``l1a`` [T], ``l1d`` [P]: sum |a|, sum |b - a| (only with ``want_l1``)

    Norms, not squares: :func:`_f64` squares them in float64.  The rows are
    visited in chunks of about ``chunk_elems`` values (4 MiB of float32 measured
    best on the CPU, 64 MiB on accelerators); each row is reduced in float32 (float64 input: float64), and the
    callers combine rows in float64.  Half-precision chunks are upcast into a
    reused buffer.
    """
    T, Lb = rows.shape
    dev = rows.device
    cdt = _compute_dtype(rows.dtype)
    two = rows_b is not None
    P = T if two else max(T - off, 0)
    ce = CHUNK_ELEMS if chunk_elems is None else chunk_elems
    if dev.type != "cpu" and chunk_elems is None:
        ce = GPU_CHUNK_ELEMS  # few, large launches; buffers still bounded
    K = max(1, min(T, ce // max(Lb, 1)))
    # norms (not squares) are stored; squared in float64 at the end
    nrm = torch.empty(T, dtype=cdt, device=dev)
    nrm_b = torch.empty(T, dtype=cdt, device=dev) if two else None
    dd = torch.empty(P, dtype=cdt, device=dev) if want_dd else None
    dot = torch.empty(P, dtype=cdt, device=dev) if want_dot else None
    l1a = torch.empty(T, dtype=cdt, device=dev) if want_l1 else None
    l1d = torch.empty(P, dtype=cdt, device=dev) if want_l1 else None
    convert = rows.dtype != cdt
    ext = 0 if two else off
    cbuf = torch.empty((min(K + ext, T), Lb), dtype=cdt, device=dev) if convert else None
    cbuf_b = torch.empty((K, Lb), dtype=cdt, device=dev) if convert and two else None
    need_w = P > 0 and (want_dd or want_dot or want_l1)
    work = torch.empty((min(K, P), Lb), dtype=cdt, device=dev) if need_w else None

    for i0 in range(0, T, K):
        i1 = min(i0 + K, T)
        j1 = min(i1, P)  # pairs i in [i0, j1) are handled with this chunk
        npair = j1 - i0
        if cbuf is not None:
            hi = i1 if two else min(i1 + ext, T)
            src = cbuf[: hi - i0]
            src.copy_(rows[i0:hi])
            A = src[: i1 - i0]
        else:
            src = rows
            A = rows[i0:i1]
        _norm_rows(A, nrm[i0:i1])
        if l1a is not None:
            _l1_rows(A, l1a[i0:i1])
        if npair <= 0:
            continue
        if two:
            assert rows_b is not None and nrm_b is not None
            if cbuf_b is not None:
                B = cbuf_b[:npair]
                B.copy_(rows_b[i0:j1])
            else:
                B = rows_b[i0:j1]
            _norm_rows(B, nrm_b[i0:j1])
        elif cbuf is not None:
            B = src[off : off + npair]
        else:
            B = rows[i0 + off : j1 + off]
        if work is None:
            continue
        Ap = A[:npair]
        w = work[:npair]
        if dot is not None:
            torch.sum(torch.mul(Ap, B, out=w), dim=-1, out=dot[i0:j1])
        if dd is not None or l1d is not None:
            torch.sub(B, Ap, out=w)
            if l1d is not None:
                _l1_rows(w, l1d[i0:j1])
            if dd is not None:
                _norm_rows(w, dd[i0:j1])

    # raw compute-dtype values; callers square the norms in float64 (_f64)
    out: dict[str, torch.Tensor] = {"sq": nrm}
    if nrm_b is not None:
        out["sqb"] = nrm_b
    if dd is not None:
        out["dd"] = dd
    if dot is not None:
        out["dot"] = dot
    if l1a is not None and l1d is not None:
        out["l1a"] = l1a
        out["l1d"] = l1d
    return out


_NORM_KEYS = ("sq", "sqb", "dd")


def _f64(r: dict[str, torch.Tensor]) -> dict[str, np.ndarray | torch.Tensor]:
    """Engine output -> float64 (numpy on the CPU, where small ops are cheaper).

    Norm entries ("sq", "sqb", "dd") are squared here, in float64.
    """
    out: dict[str, np.ndarray | torch.Tensor] = {}
    for k, v in r.items():
        if v.device.type == "cpu":
            a = v.numpy().astype(np.float64)
            out[k] = a * a if k in _NORM_KEYS else a
        else:
            t = v.to(torch.float64)
            out[k] = t * t if k in _NORM_KEYS else t
    return out


def _fold(
    v: np.ndarray | torch.Tensor, T: int, shape4: tuple[int, int, int, int], keep: int
) -> np.ndarray | torch.Tensor:
    """Row values [<=T] -> sum over (R, m) of view [N, R, F, m], first ``keep`` frames."""
    N, R, F, m = shape4
    if isinstance(v, np.ndarray):
        if v.shape[0] < T:
            full = np.zeros(T, dtype=np.float64)
            full[: v.shape[0]] = v
            v = full
        return v.reshape(N, R, F, m)[:, :, :keep, :].sum(axis=(1, 3))
    if v.shape[0] < T:
        full_t = torch.zeros(T, dtype=v.dtype, device=v.device)
        full_t[: v.shape[0]] = v
        v = full_t
    return v.view(N, R, F, m)[:, :, :keep, :].sum(dim=(1, 3))


def _as_t(v: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v


def _rows_view(y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[N, R, F, L] contiguous -> ([N*R*F*m, Lb] view, m) with Lb * m = L."""
    L = y.shape[-1]
    Lb = _block_len(L)
    m = L // Lb
    return y.reshape(-1, Lb), m


# --------------------------------------------------------------------------- #
# public kernels
# --------------------------------------------------------------------------- #
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


#: Polarised dot products are replaced by direct ones where ||a||/||b|| leaves
#: [1/POLAR_MAX_RATIO, POLAR_MAX_RATIO] (r + 1/r <= 4 keeps the error <= 4x that
#: of the sums the dot product is recovered from).
POLAR_MAX_RATIO = 2.0 + math.sqrt(3.0)


@torch.no_grad()
def _direct_dots(y: torch.Tensor, pairs: torch.Tensor, lag: int) -> torch.Tensor:
    """Direct float64-combined dot products for the (n, f) rows of ``pairs`` ([K, 2])."""
    L = y.shape[-1]
    Lb = _block_len(L)
    cdt = _compute_dtype(y.dtype)
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
        rows, m = _rows_view(y)
        T = rows.shape[0]
        r = _f64(_row_engine(rows, lag * m, want_dot=direct))
        shape4 = (N, R, F, m)
        sq_ = _fold(r["sq"], T, shape4, F)
        dd_ = _fold(r["dd"], T, shape4, P)
        if direct:
            dots_ = _fold(r["dot"], T, shape4, P)
        else:
            sa, sb = sq_[:, :P], sq_[:, lag:]
            dots_ = 0.5 * ((sa + sb) - dd_)
            rmax = POLAR_MAX_RATIO**2
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
        sq, dots, dd = _as_t(sq_), _as_t(dots_), _as_t(dd_)
    return PairStats(
        sq.reshape(bshape + (F,)),
        dots.reshape(bshape + (P,)),
        dd.reshape(bshape + (P,)),
        lag,
    )


ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


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
    ce = CHUNK_ELEMS if y.device.type == "cpu" else GPU_CHUNK_ELEMS
    step = max(1, ce // max(F * N, 1))
    for r in range(R):
        for l0 in range(0, L, step):
            c = y[:, r, :, l0 : l0 + step].to(torch.float64)
            G.baddbmm_(c, c.transpose(1, 2))
    G = 0.5 * (G + G.transpose(1, 2))
    return G.reshape(bshape + (F, F))


@torch.no_grad()
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
    ra, m = _rows_view(ya)
    rb, _ = _rows_view(yb)
    r = _f64(_row_engine(ra, 0, rows_b=rb, want_dot=dot, want_l1=l1))
    T = ra.shape[0]

    def fold(v: np.ndarray | torch.Tensor) -> torch.Tensor:
        return _as_t(_fold(v, T, (N, R, F, m), F)).reshape(bshape + (F,))

    out = {"sq_a": fold(r["sq"]), "sq_b": fold(r["sqb"]), "dd": fold(r["dd"])}
    if dot:
        out["dot"] = fold(r["dot"])
    if l1:
        out["l1_a"] = fold(r["l1a"])
        out["l1_d"] = fold(r["l1d"])
    return out


@torch.no_grad()
def series_stats(x: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
    """Sums along the leading (step) axis of ``x`` ([S, ...]), float64.

    Keys: ``sq`` [S] = ||x_s||^2, ``l1`` [S] = ||x_s||_1, ``l1_d`` [S - 1] =
    ||x_{s+1} - x_s||_1 (direct), ``dd`` [S - 1] = ||x_{s+1} - x_s||^2 (direct).
    """
    t = as_tensor(x)
    if t.dtype not in _FLOAT_TYPES:
        raise TypeError(f"expected a floating tensor, got {t.dtype}")
    if t.ndim < 1 or t.shape[0] < 1:
        raise ValueError("need a leading step axis with at least one step")
    S = t.shape[0]
    y = t.reshape(1, 1, S, -1)
    if not y.is_contiguous():
        y = y.contiguous()
    rows, m = _rows_view(y)
    T = rows.shape[0]
    r = _f64(_row_engine(rows, m, want_l1=True))
    shape4 = (1, 1, S, m)
    return {
        "sq": _as_t(_fold(r["sq"], T, shape4, S))[0],
        "l1": _as_t(_fold(r["l1a"], T, shape4, S))[0],
        "l1_d": _as_t(_fold(r["l1d"], T, shape4, S - 1))[0],
        "dd": _as_t(_fold(r["dd"], T, shape4, S - 1))[0],
    }
