"""Fused CUDA kernels (Triton) for the frame-pair sums.

Input: a contiguous ``[N, R, F, L]`` tensor (see :func:`kernels.canonicalize`;
one frame = the ``R x L`` slab), float32 / float16 / bfloat16.  Output: one
float64 tensor ``out[N, 7, F]``:

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

Two kernels, one launch each:

* **walk** (the default; ``lag <= WALK_MAX_LAG``, ``F <= WALK_MAX_F``): reads
  every value exactly once.  Program ``(n, s)`` owns tile ``s`` (BLOCK
  contiguous values of one row of the ``R x L`` slab) of batch item ``n`` and
  walks the frames ``f = 0 .. F-1`` (``F`` is a compile-time constant, the walk
  is unrolled), keeping the last ``lag`` frames' tiles in registers and
  prefetching ``PF`` frames ahead (``PF`` loads in flight per program: walking
  frames leaves only one frame's worth of independent loads otherwise).  Per
  frame one fused float32 tree reduction over the tile gives ||x_f||^2,
  x_{f-lag}.x_f and ||x_{f-lag} - x_f||^2 (taken directly); the program's 3 x F
  partials go to a float32 scratch buffer.  Partials are combined in float64
  in a fixed order, in the same launch: the last program of each group of
  ``G`` tiles (acq_rel counter) sums its group's partials, and the last group
  of each ``n`` sums the group sums and computes the derived metrics for all
  pairs.  Counters reset themselves; results are bitwise deterministic.
* **pairs** (the former kernel; other lags and frame counts, or an explicit
  ``split``): grid ``(N * P, SPLIT)``, program ``(g, s)`` handles pair ``g`` on
  the ``s``-th share of the pair's tiles, so every frame is loaded twice (as
  ``a`` and as ``b``).  Values are accumulated per lane in float32 over at most
  ``INNER`` tiles, tree-reduced and added into float64 accumulators; with
  ``SPLIT > 1`` the last-arriving program of a pair sums the partials in a
  fixed order and finishes the pair.

The module imports without Triton or CUDA: :func:`is_available` says whether
the kernels can run; nothing here is touched on CPU-only paths.
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

__all__ = ["is_available", "fused_pair_stats", "choose_split", "walk_config", "OUT_ROWS", "METHODS"]

OUT_ROWS = ("sq", "dot", "diff_sq", "l2", "cos", "one_minus_cos", "norm_ratio")
METHODS = ("auto", "walk", "pairs")

# --- "pairs" kernel (grid: pair x split; every frame read twice) ------------
BLOCK = 1024
INNER = 2
NUM_WARPS = 4
MAX_SPLIT = 128
PROGRAMS_PER_SM = 4

# --- "walk" kernel (grid: tile x n; every value read once) ------------------
#: Bytes of one frame's tile per program (BLOCK = WALK_TILE_BYTES / itemsize):
#: 256 float32 / 512 half values, i.e. two or four 16-byte loads per thread of
#: a one-warp program.  One warp per program keeps the per-frame reduction in
#: shuffles (no shared memory, no barrier): it runs once per frame and tile, so
#: its cost per value matters.
WALK_TILE_BYTES = 1024
WALK_NUM_WARPS = 1
#: Frames loaded ahead of the one being reduced (loads in flight per program).
WALK_PREFETCH = 8
#: Tiles whose partials one program sums in the first combination stage.
WALK_GROUP = 32
#: The walk is unrolled over the frames (F is a compile-time constant): up to
#: this many frames; longer clips use the pairs kernel.
WALK_MAX_F = 64
#: Largest lag the walk keeps in registers; larger lags use the pairs kernel.
WALK_MAX_LAG = 4

_SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)


def is_available() -> bool:
    """True when Triton imports and a CUDA device is present."""
    return _HAS_TRITON and torch.cuda.is_available()


if _HAS_TRITON:  # pragma: no cover - needs a GPU
    # (2 + sqrt 3)^2: squared norm ratio up to which the stable 1 - cos is used
    _RMAX2 = tl.constexpr(13.928203230275509)

    @triton.jit
    def _derive(sa, sb, dot, dd):
        """Derived metrics in float64 from the sums (scalars or vectors): l2, cos, 1 - cos, ratio."""
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
        return l2, cos, omc, ratio

    @triton.jit
    def _finish(out_ptr, n, p, P, F, lag, sa, sb, dot, dd):
        """Derived metrics in float64 and the stores of one pair's results."""
        l2, cos, omc, ratio = _derive(sa, sb, dot, dd)
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

    @triton.jit
    def _add3(a0, a1, a2, b0, b1, b2):
        return a0 + b0, a1 + b1, a2 + b2

    @triton.jit
    def _walk_kernel(
        y_ptr,
        out_ptr,
        part_ptr,
        part2_ptr,
        cnt_ptr,
        cnt2_ptr,
        L,
        n_lb,
        S,
        NG,
        s_n,
        s_r,
        F: tl.constexpr,
        LAG: tl.constexpr,
        FB: tl.constexpr,
        BLOCK: tl.constexpr,
        PF: tl.constexpr,
        G: tl.constexpr,
    ):
        pid = tl.program_id(0)  # n * S + s
        n = pid // S
        s = pid - n * S  # tile of the R x L slab: row r, block lb
        r = s // n_lb
        lb = s - r * n_lb
        n64 = n.to(tl.int64)
        offs = lb * BLOCK + tl.arange(0, BLOCK)
        mask = offs < L
        ptr = y_ptr + n64 * s_n + r.to(tl.int64) * s_r + offs  # frame f at ptr + f * L
        fidx = tl.arange(0, FB)

        # per-frame float32 tree sums of this tile, scattered into [FB] vectors
        v_sq = tl.zeros([FB], dtype=tl.float32)
        v_dot = tl.zeros([FB], dtype=tl.float32)
        v_dd = tl.zeros([FB], dtype=tl.float32)
        ring = ()  # tiles of frames f .. f + PF - 1 (loads in flight)
        for j in tl.static_range(PF):
            ring = ring + (tl.load(ptr + j * L, mask=mask, other=0.0),)
        hist = ()  # float32 tiles of frames f - LAG .. f - 1
        for f in tl.static_range(F):
            cur = ring[0].to(tl.float32)
            ring = ring[1:]
            if f + PF < F:
                ring = ring + (tl.load(ptr + (f + PF) * L, mask=mask, other=0.0),)
            if f < LAG:
                sq = tl.sum(cur * cur, axis=0)
            else:
                prev = hist[0]
                hist = hist[1:]
                d = prev - cur
                sq, dot, dd = tl.reduce((cur * cur, prev * cur, d * d), 0, _add3)
                v_dot = tl.where(fidx == f - LAG, dot, v_dot)
                v_dd = tl.where(fidx == f - LAG, dd, v_dd)
            v_sq = tl.where(fidx == f, sq, v_sq)
            if f + LAG < F:
                hist = hist + (cur,)

        # stage 0: this tile's partials (float32: each is one float32 tree sum)
        pbase = part_ptr + (n64 * S + s) * (3 * FB)
        tl.store(pbase + fidx, v_sq)
        tl.store(pbase + FB + fidx, v_dot)
        tl.store(pbase + 2 * FB + fidx, v_dd)
        tl.debug_barrier()
        gi = s // G
        c1 = cnt_ptr + n * NG + gi
        arrived = tl.atomic_add(c1, 1, sem="acq_rel", scope="gpu")
        if arrived == tl.minimum(S - gi * G, G) - 1:
            # stage 1: the group's last program sums the group's G tiles in float64
            tl.debug_barrier()
            rows = gi * G + tl.arange(0, G)
            blk = part_ptr + (n64 * S + rows[:, None]) * (3 * FB) + fidx[None, :]
            rm = (rows < S)[:, None]
            g_sq = tl.sum(tl.load(blk, mask=rm, other=0.0, volatile=True).to(tl.float64), axis=0)
            g_dot = tl.sum(tl.load(blk + FB, mask=rm, other=0.0, volatile=True).to(tl.float64), axis=0)
            g_dd = tl.sum(tl.load(blk + 2 * FB, mask=rm, other=0.0, volatile=True).to(tl.float64), axis=0)
            p2 = part2_ptr + (n64 * NG + gi) * (3 * FB)
            tl.store(p2 + fidx, g_sq)
            tl.store(p2 + FB + fidx, g_dot)
            tl.store(p2 + 2 * FB + fidx, g_dd)
            tl.atomic_xchg(c1, 0)  # ready for the next launch
            tl.debug_barrier()
            done = tl.atomic_add(cnt2_ptr + n, 1, sem="acq_rel", scope="gpu")
            if done == NG - 1:
                # stage 2: the last group of n sums the group sums in a fixed order
                tl.debug_barrier()
                t_sq = tl.zeros([FB], dtype=tl.float64)
                t_sqb = tl.zeros([FB], dtype=tl.float64)  # ||x_{f+LAG}||^2
                t_dot = tl.zeros([FB], dtype=tl.float64)
                t_dd = tl.zeros([FB], dtype=tl.float64)
                bmask = (fidx + LAG < FB)[None, :]
                for c0 in range(0, NG, G):
                    rows2 = c0 + tl.arange(0, G)
                    blk2 = part2_ptr + (n64 * NG + rows2[:, None]) * (3 * FB) + fidx[None, :]
                    rm2 = (rows2 < NG)[:, None]
                    t_sq += tl.sum(tl.load(blk2, mask=rm2, other=0.0, volatile=True), axis=0)
                    t_sqb += tl.sum(tl.load(blk2 + LAG, mask=rm2 & bmask, other=0.0, volatile=True), axis=0)
                    t_dot += tl.sum(tl.load(blk2 + FB, mask=rm2, other=0.0, volatile=True), axis=0)
                    t_dd += tl.sum(tl.load(blk2 + 2 * FB, mask=rm2, other=0.0, volatile=True), axis=0)
                tl.atomic_xchg(cnt2_ptr + n, 0)
                l2, cos, omc, ratio = _derive(t_sq, t_sqb, t_dot, t_dd)
                row = out_ptr + n64 * (7 * F)
                fm = fidx < F
                pm = fidx < F - LAG  # pair columns; the last LAG columns are written as NaN
                nan = float("nan")
                tl.store(row + fidx, t_sq, mask=fm)
                tl.store(row + F + fidx, tl.where(pm, t_dot, nan), mask=fm)
                tl.store(row + 2 * F + fidx, tl.where(pm, t_dd, nan), mask=fm)
                tl.store(row + 3 * F + fidx, tl.where(pm, l2, nan), mask=fm)
                tl.store(row + 4 * F + fidx, tl.where(pm, cos, nan), mask=fm)
                tl.store(row + 5 * F + fidx, tl.where(pm, omc, nan), mask=fm)
                tl.store(row + 6 * F + fidx, tl.where(pm, ratio, nan), mask=fm)


@functools.lru_cache(maxsize=16)
def _num_sms(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


_COUNTERS: dict[tuple[int, int], torch.Tensor] = {}


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 counters, kept per (device, stream).

    The kernels leave them at zero, so they are zeroed once, at allocation.
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


def _next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def walk_config(
    L: int,
    itemsize: int,
    *,
    block: int | None = None,
    num_warps: int | None = None,
) -> tuple[int, int]:
    """(BLOCK, num_warps) of the walk kernel for rows of ``L`` values of ``itemsize`` bytes.

    BLOCK: WALK_TILE_BYTES of values, shrunk for short rows; num_warps: at
    most WALK_NUM_WARPS, and few enough that each thread holds at least one
    16-byte vector.
    """
    if block is None:
        block = max(WALK_TILE_BYTES // itemsize, 32)
        block = min(block, max(_next_pow2(L), 32))
    if block & (block - 1):
        raise ValueError("block must be a power of two")
    if num_warps is None:
        vec = max(16 // itemsize, 1)
        num_warps = max(1, min(WALK_NUM_WARPS, block // (32 * vec)))
    return block, num_warps


def _walk_ok(F: int, lag: int) -> bool:
    return 1 <= lag <= WALK_MAX_LAG and lag < F <= WALK_MAX_F


def fused_pair_stats(
    y: torch.Tensor,
    lag: int = 1,
    *,
    split: int | None = None,
    method: str = "auto",
    block: int | None = None,
    num_warps: int | None = None,
    prefetch: int | None = None,
    group: int | None = None,
) -> torch.Tensor:
    """Run a fused kernel on ``y`` ([N, R, F, L], CUDA); returns ``out[N, 7, F]`` float64.

    Rows of ``out`` are named in :data:`OUT_ROWS`; pair rows are valid in
    their first ``F - lag`` columns (the walk kernel writes NaN in the others,
    the pairs kernel leaves them unwritten).  ``method``: "walk" (every value read
    once; needs ``lag <= WALK_MAX_LAG`` and ``F <= WALK_MAX_F``), "pairs" (the
    pair-parallel kernel, every frame read twice; needs ``F >= 2 * lag``), or
    "auto": "walk" where it applies and no ``split`` is given, else "pairs".
    ``split`` (pairs), ``block``, ``num_warps``, ``prefetch``, ``group`` (walk)
    override the tuned launch parameters (for tests and benchmarks).
    """
    if not is_available():
        raise RuntimeError("the Triton kernel needs triton and a CUDA device")
    if y.dim() != 4 or not y.is_cuda:
        raise ValueError("expected a CUDA tensor [N, R, F, L]")
    if y.dtype not in _SUPPORTED:
        raise TypeError(f"fused kernel supports {_SUPPORTED}, got {y.dtype}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    if not y.is_contiguous():
        y = y.contiguous()
    N, R, F, L = y.shape
    if method == "auto":
        method = "walk" if split is None and _walk_ok(F, lag) else "pairs"
    if method == "walk":
        if not _walk_ok(F, lag):
            raise ValueError(f"walk kernel needs 1 <= lag <= {WALK_MAX_LAG} and lag < F <= {WALK_MAX_F}")
        return _run_walk(y, lag, block=block, num_warps=num_warps, prefetch=prefetch, group=group)
    return _run_pairs(y, lag, split)


def _run_walk(
    y: torch.Tensor,
    lag: int,
    *,
    block: int | None,
    num_warps: int | None,
    prefetch: int | None,
    group: int | None,
) -> torch.Tensor:
    N, R, F, L = y.shape
    dev = y.device
    BLOCK_, warps = walk_config(L, y.element_size(), block=block, num_warps=num_warps)
    pf = max(1, min(WALK_PREFETCH if prefetch is None else prefetch, F))
    G = WALK_GROUP if group is None else group
    if G < 1 or G & (G - 1):
        raise ValueError("group must be a power of two")
    FB = max(_next_pow2(F), 2)
    n_lb = -(-L // BLOCK_)
    S = R * n_lb  # programs (tiles) per batch item
    NG = -(-S // G)
    out = torch.empty((N, 7, F), dtype=torch.float64, device=dev)
    part = torch.empty(N * S * 3 * FB, dtype=torch.float32, device=dev)
    part2 = torch.empty(N * NG * 3 * FB, dtype=torch.float64, device=dev)
    cnt = _counters(dev, N * NG + N)
    _walk_kernel[(N * S,)](
        y,
        out,
        part,
        part2,
        cnt,
        cnt[N * NG :],
        L,
        n_lb,
        S,
        NG,
        y.stride(0),
        y.stride(1),
        F=F,
        LAG=lag,
        FB=FB,
        BLOCK=BLOCK_,
        PF=pf,
        G=G,
        num_warps=warps,
    )
    return out


def _run_pairs(y: torch.Tensor, lag: int, split: int | None) -> torch.Tensor:
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
