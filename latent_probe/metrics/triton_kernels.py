"""Fused CUDA kernel (Triton) for the frame-pair sums.

One launch, one read of the latent.  Input: a contiguous ``[N, R, F, L]``
tensor (see :func:`layout.canonicalize`; one frame = the ``R x L`` slab),
float32 / float16 / bfloat16.  Output: one float64 tensor ``out[N, 7, F]``:

====  ===========================================  =================
row   value                                        valid columns
====  ===========================================  =================
0     ||x_f||^2                                    all F
1     x_p . x_{p+lag}                              first P = F - lag
2     ||x_p - x_{p+lag}||^2 (direct)               first P
3     ||a-b|| / sqrt(||a||^2 + ||b||^2)            first P
4     cos(a, b)                                    first P
5     1 - cos(a, b) (stable form)                  first P
6     ||b|| / ||a||                                first P
====  ===========================================  =================

Grid ``(N * P, SPLIT)``: program ``(g, s)`` handles pair ``g`` on the
``s``-th contiguous share of the pair's tiles (BLOCK values of one row of
the ``R x L`` slab).  Values are loaded once, upcast to float32, and
accumulated per lane in float32 over at most ``INNER`` tiles; each group of
``INNER`` tiles is tree-reduced and added into float64 accumulators.  With
``SPLIT > 1`` every program writes its four float64 partial sums to a
scratch buffer and bumps a per-pair counter (acq_rel atomic); the program
that arrives last sums the partials in a fixed order (deterministic), computes
the derived metrics in float64, writes them, and resets the counter to zero,
so no zeroing launch and no finishing launch are needed.

The module imports without Triton or CUDA: :func:`is_available` says whether
the kernel can run; nothing here is touched on CPU-only paths.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

try:  # pragma: no cover - depends on the environment
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except Exception:  # ImportError, or a broken triton install
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    _HAS_TRITON = False

__all__ = ["is_available", "fused_pair_stats", "choose_split", "OUT_ROWS"]

OUT_ROWS = ("sq", "dot", "diff_sq", "l2", "cos", "one_minus_cos", "norm_ratio")
BLOCK = 1024
INNER = 2
NUM_WARPS = 4
MAX_SPLIT = 128
PROGRAMS_PER_SM = 4
_SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)


def is_available() -> bool:
    """True when Triton imports and a CUDA device is present."""
    return _HAS_TRITON and torch.cuda.is_available()


if _HAS_TRITON:  # pragma: no cover - needs a GPU
    # (2 + sqrt 3)^2: squared norm ratio up to which the stable 1 - cos is used
    _RMAX2 = tl.constexpr(13.928203230275509)

    @triton.jit
    def _finish(out_ptr, n, p, P, F, lag, sa, sb, dot, dd):
        """Derived metrics in float64 and the stores of one pair's results."""
        # float64: sqrt and "/" lower to IEEE-rounded sqrt.rn.f64 / div.rn.f64
        na = tl.sqrt(sa)
        nb = tl.sqrt(sb)
        bad = (sa == 0.0) | (sb == 0.0)
        nan = float("nan")
        l2 = tl.sqrt(dd / (sa + sb))
        nanb = na * nb
        omc_s = (dd - (na - nb) * (na - nb)) / (2.0 * nanb)
        omc_s = tl.minimum(tl.maximum(omc_s, 0.0), 2.0)
        cos_d = dot / nanb
        cos_d = tl.minimum(tl.maximum(cos_d, -1.0), 1.0)
        # stable 1 - cos for comparable norms (ratio^2 within [1/13.93, 13.93]),
        # 1 - cos from the dot product otherwise (there 1 - cos >= 1)
        balanced = (sb <= _RMAX2 * sa) & (sa <= _RMAX2 * sb)
        omc = tl.where(balanced, omc_s, 1.0 - cos_d)
        cos = tl.where(balanced & (omc_s < 1e-3), 1.0 - omc_s, cos_d)
        ratio = nb / na
        l2 = tl.where(bad, nan, l2)
        omc = tl.where(bad, nan, omc)
        cos = tl.where(bad, nan, cos)
        ratio = tl.where(bad, nan, ratio)
        row = out_ptr + n.to(tl.int64) * (7 * F)
        tl.store(row + p, sa)
        # frames never an "a" of a pair (f >= P) are written as "b"
        tl.store(row + p + lag, sb, mask=p + lag >= P)
        tl.store(row + F + p, dot)
        tl.store(row + 2 * F + p, dd)
        tl.store(row + 3 * F + p, l2)
        tl.store(row + 4 * F + p, cos)
        tl.store(row + 5 * F + p, omc)
        tl.store(row + 6 * F + p, ratio)

    @triton.jit
    def _pair_stats_kernel(
        y_ptr,
        out_ptr,
        part_ptr,
        cnt_ptr,
        P,
        F,
        L,
        lag,
        n_lb,
        n_tiles,
        tiles_per_prog,
        s_n,
        s_r,
        s_f,
        SPLIT: tl.constexpr,
        BLOCK: tl.constexpr,
        INNER: tl.constexpr,
    ):
        g = tl.program_id(0)  # pair index n * P + p
        s = tl.program_id(1)  # share of the pair's tiles
        n = g // P
        p = g - n * P
        base_a = y_ptr + n.to(tl.int64) * s_n + p.to(tl.int64) * s_f
        base_b = base_a + lag * s_f
        lanes = tl.arange(0, BLOCK)
        t_start = s * tiles_per_prog
        t_end = tl.minimum(t_start + tiles_per_prog, n_tiles)

        zero64 = tl.sum(tl.zeros([2], dtype=tl.float64), axis=0)
        sa = zero64
        sb = zero64
        sab = zero64
        sdd = zero64
        for t0 in range(t_start, t_end, INNER):
            acc_aa = tl.zeros([BLOCK], dtype=tl.float32)
            acc_bb = tl.zeros([BLOCK], dtype=tl.float32)
            acc_ab = tl.zeros([BLOCK], dtype=tl.float32)
            acc_dd = tl.zeros([BLOCK], dtype=tl.float32)
            for j in tl.static_range(INNER):
                t = t0 + j
                r = t // n_lb
                l0 = (t - r * n_lb) * BLOCK
                offs = l0 + lanes
                mask = (offs < L) & (t < t_end)
                off = r.to(tl.int64) * s_r + offs
                a = tl.load(base_a + off, mask=mask, other=0.0).to(tl.float32)
                b = tl.load(base_b + off, mask=mask, other=0.0).to(tl.float32)
                d = a - b
                acc_aa += a * a
                acc_bb += b * b
                acc_ab += a * b
                acc_dd += d * d
            sa += tl.sum(acc_aa, axis=0).to(tl.float64)
            sb += tl.sum(acc_bb, axis=0).to(tl.float64)
            sab += tl.sum(acc_ab, axis=0).to(tl.float64)
            sdd += tl.sum(acc_dd, axis=0).to(tl.float64)

        if SPLIT == 1:
            _finish(out_ptr, n, p, P, F, lag, sa, sb, sab, sdd)
        else:
            pbase = part_ptr + g.to(tl.int64) * (4 * SPLIT)
            tl.store(pbase + s, sa)
            tl.store(pbase + SPLIT + s, sb)
            tl.store(pbase + 2 * SPLIT + s, sab)
            tl.store(pbase + 3 * SPLIT + s, sdd)
            tl.debug_barrier()
            prev = tl.atomic_add(cnt_ptr + g, 1, sem="acq_rel", scope="gpu")
            if prev == SPLIT - 1:
                tl.debug_barrier()
                idx = tl.arange(0, SPLIT)
                ta = tl.sum(tl.load(pbase + idx, volatile=True), axis=0)
                tb = tl.sum(tl.load(pbase + SPLIT + idx, volatile=True), axis=0)
                tab = tl.sum(tl.load(pbase + 2 * SPLIT + idx, volatile=True), axis=0)
                tdd = tl.sum(tl.load(pbase + 3 * SPLIT + idx, volatile=True), axis=0)
                tl.atomic_xchg(cnt_ptr + g, 0)  # ready for the next launch
                _finish(out_ptr, n, p, P, F, lag, ta, tb, tab, tdd)


@functools.lru_cache(maxsize=16)
def _num_sms(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


_COUNTERS: dict[tuple[int, int], torch.Tensor] = {}


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 counters, one per pair, kept per (device, stream).

    The kernel leaves them at zero, so they are zeroed once, at allocation.
    """
    idx = device.index if device.index is not None else torch.cuda.current_device()
    key = (idx, torch.cuda.current_stream(idx).cuda_stream)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


def choose_split(n_pairs: int, n_tiles: int, n_sms: int) -> int:
    """Power-of-two number of programs per pair: about PROGRAMS_PER_SM programs per SM in all."""
    want = max(1, -(-PROGRAMS_PER_SM * n_sms // max(n_pairs, 1)))
    split = 1
    while split < want and split < MAX_SPLIT:
        split *= 2
    while split > 1 and split > n_tiles:
        split //= 2  # never more programs than tiles
    return split


def fused_pair_stats(y: torch.Tensor, lag: int = 1, *, split: int | None = None) -> torch.Tensor:
    """Run the fused kernel on ``y`` ([N, R, F, L], CUDA); returns ``out[N, 7, F]`` float64.

    Rows of ``out`` are named in :data:`OUT_ROWS`; pair rows are valid in
    their first ``F - lag`` columns.  Requires ``F >= 2 * lag`` so that every
    frame is the first or second frame of some pair.
    """
    if not is_available():
        raise RuntimeError("the Triton kernel needs triton and a CUDA device")
    if y.dim() != 4 or not y.is_cuda:
        raise ValueError("expected a CUDA tensor [N, R, F, L]")
    if y.dtype not in _SUPPORTED:
        raise TypeError(f"fused kernel supports {_SUPPORTED}, got {y.dtype}")
    if not y.is_contiguous():
        y = y.contiguous()
    N, R, F, L = y.shape
    P = F - lag
    if lag < 1 or P < 1 or F < 2 * lag:
        raise ValueError(f"need F >= 2 * lag (F={F}, lag={lag})")
    n_lb = -(-L // BLOCK)
    n_tiles = R * n_lb
    n_pairs = N * P
    dev = y.device
    if split is None:
        split = choose_split(n_pairs, n_tiles, _num_sms(dev.index if dev.index is not None else 0))
    if split & (split - 1):
        raise ValueError("split must be a power of two")
    tiles_per_prog = -(-n_tiles // split)
    out = torch.empty((N, 7, F), dtype=torch.float64, device=dev)
    if split > 1:
        part = torch.empty(n_pairs * 4 * split, dtype=torch.float64, device=dev)
        cnt = _counters(dev, n_pairs)
    else:
        part = out  # unused
        cnt = out  # unused
    grid: Any = (n_pairs, split)
    _pair_stats_kernel[grid](
        y,
        out,
        part,
        cnt,
        P,
        F,
        L,
        lag,
        n_lb,
        n_tiles,
        tiles_per_prog,
        y.stride(0),
        y.stride(1),
        y.stride(2),
        SPLIT=split,
        BLOCK=BLOCK,
        INNER=INNER,
        num_warps=NUM_WARPS,
    )
    return out
