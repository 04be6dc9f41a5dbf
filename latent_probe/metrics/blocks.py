"""Inside the DiT: per-block sums of the residual stream and attention's temporal reach (tensor maths only).

Shapes: a block's input and output hidden states are [B, N, D] tokens (N ≥ F'·T real tokens, frame-major, T =
H'·W' tokens a frame; Wan2.2 pads past F'·T). Everything returned is float64 on the tensors' device; no host
synchronisation.

Per block and DiT call (:func:`block_call_sums`):

* ``sq`` [B, F'], ``dot`` [B, F'−1], ``dd`` [B, F'−1] — the block output's adjacent-frame sums (frame_pair_stats:
  the fused kernel on CUDA) → cosine and normalised L2 as for latents;
* ``upd`` [B, 2] — ‖out − in‖², ‖in‖² (float64 values): the update size ‖out − in‖ / ‖in‖;
* ``change`` [B, 2] — ‖u_s − u_{s−1}‖₁, ‖u_{s−1}‖₁ of the update u = out − in between consecutive steps (what
  FirstBlockCache / TeaCache threshold on: relative L1), NaN without a previous step.

Per DiT call (:func:`residual_norms`): MagCache's magnitude ratio of the output residual r = (last block's output −
first block's input): mean over tokens of ‖r_s,n‖ / ‖r_{s−1},n‖ → ``mag`` [B].

Attention's temporal reach (:func:`temporal_reach`): for sampled queries, the softmax mass on keys of each frame,
folded by frame distance d = |f_q − f_k| → ``reach`` [B, H, F'] (mean over the sampled queries; sums to 1 over d).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from ..store.accessors import register_run_accessor
from ..store.blocks import BRANCHES, block_info, hidden_steps, read_block_sums, read_hidden
from .formulas import pair_metrics
from .reductions import frame_pair_stats

if TYPE_CHECKING:  # pragma: no cover
    from ..store.reader import Run

__all__ = ["block_call_sums", "update_change", "residual_norms", "temporal_reach", "sample_queries",
           "reach_reference", "block_metrics_from_sums", "RunBlocks", "skip_map"]

REACH_CHUNK_ELEMS = 1 << 26  # scores held at once by temporal_reach (float32): 256 MiB


def frames_view(x: torch.Tensor, frames: int, tokens: int) -> torch.Tensor:
    """[B, F', T, D] view of the real tokens of [B, N, D] hidden states."""
    return x[:, : frames * tokens].unflatten(1, (frames, tokens))


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32/float64 values as float64, half-precision values as float32: the difference of two bf16/fp16 values
    is then exact (their 8/11 significant bits fit float32's 24 unless the exponents differ by more than 16, when the
    rounding is 2⁻²⁴ of the result) without a float64 copy of a half-precision block (4× its bytes)."""
    return x.double() if x.dtype in (torch.float32, torch.float64) else x.float()


@torch.no_grad()
def block_call_sums(x_in: torch.Tensor, x_out: torch.Tensor, frames: int, tokens: int
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The sums of one block call (module doc) and the update u = out − in [B, F'·T·D] (float64 for float32 hidden
    states, float32 for half precision: :func:`_wide`), for the next step's change. Norms are accumulated in float64
    (``vector_norm(dtype=float64)`` casts inside the reduction). With one frame there are no pair sums."""
    b = x_out.shape[0]
    out_v = frames_view(x_out.detach(), frames, tokens)
    sums: dict[str, torch.Tensor] = {}
    if frames >= 2:
        st = frame_pair_stats(out_v, "b f t d", 1, frame_axes=("t", "d"))
        sums.update(sq=st.sq, dot=st.dot, dd=st.diff_sq)
    n = frames * tokens
    x_in = x_in.detach()[:, :n].reshape(b, -1)
    u = torch.sub(_wide(x_out.detach()[:, :n].reshape(b, -1)), x_in)  # x_in widened inside the kernel: no copy
    f64 = torch.float64
    sums["upd"] = torch.stack([torch.linalg.vector_norm(u, dim=1, dtype=f64) ** 2,
                               torch.linalg.vector_norm(x_in, dim=1, dtype=f64) ** 2], 1)
    return sums, u


@torch.no_grad()
def update_change(u: torch.Tensor, prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``change`` [B, 2] = (‖u − prev‖₁, ‖prev‖₁) per batch row (NaN without ``prev`` or of another shape), and the
    update to keep for the next step (float32: 2⁻²⁴ relative rounding of each value of a float64 update)."""
    keep = u.to(torch.float32)
    if prev is None or prev.shape != u.shape:
        return torch.full((u.shape[0], 2), math.nan, dtype=torch.float64, device=u.device), keep
    f64 = torch.float64
    diff = u - (prev.double() if u.dtype == f64 else prev)
    return torch.stack([torch.linalg.vector_norm(diff, 1, dim=1, dtype=f64),
                        torch.linalg.vector_norm(prev, 1, dim=1, dtype=f64)], 1), keep


@torch.no_grad()
def residual_norms(x_first_in: torch.Tensor, x_last_out: torch.Tensor, frames: int, tokens: int) -> torch.Tensor:
    """Per-token norms ‖r_n‖ [B, F'·T] (float64) of the DiT's residual r = last block's output − first's input."""
    n = frames * tokens
    r = torch.sub(_wide(x_last_out.detach()[:, :n]), x_first_in.detach()[:, :n])
    return torch.linalg.vector_norm(r, dim=-1, dtype=torch.float64)


@torch.no_grad()
def magnitude_ratio(norms: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    """MagCache's ratio mean_n ‖r_s,n‖ / ‖r_{s−1},n‖ [B] (NaN without a previous step)."""
    if prev is None or prev.shape != norms.shape:
        return torch.full((norms.shape[0],), math.nan, dtype=torch.float64, device=norms.device)
    return (norms / prev).mean(1)


def sample_queries(frames: int, tokens: int, per_frame: int, seed: int) -> torch.Tensor:
    """Token indices [F', n] of ``per_frame`` (≤ T) queries drawn without replacement in each frame, seeded (the same
    for every block, step and branch of a run), sorted within a frame."""
    g = torch.Generator().manual_seed(seed)
    n = min(per_frame, tokens)
    idx = torch.stack([torch.randperm(tokens, generator=g)[:n].sort().values for _ in range(frames)])
    return idx + torch.arange(frames)[:, None] * tokens


@torch.no_grad()
def temporal_reach(q: torch.Tensor, k: torch.Tensor, frames: int, tokens: int, scale: float) -> torch.Tensor:
    """Mean share of attention mass at frame distance d, [B, H, F'] float64.

    ``q`` [B, F', n, H, d]: the sampled queries of each frame (frame-major); ``k`` [B, F'·T, H, d]: every real key.
    softmax(q·k / √d · scale) is taken over all keys, frame chunk by frame chunk (log-sum-exp per key frame in
    float32, combined in float64); the full attention matrix is never formed."""
    b, f, n, h, dh = q.shape
    qf = q.reshape(b, f * n, h, dh).transpose(1, 2).float()  # [B, H, Q, d]
    kf = k[:, : frames * tokens].unflatten(1, (frames, tokens))  # [B, F', T, H, d]
    per_frame = max(1, REACH_CHUNK_ELEMS // max(1, b * h * f * n * tokens))
    lse = []
    for f0 in range(0, frames, per_frame):
        kc = kf[:, f0: f0 + per_frame].float()  # [B, c, T, H, d]
        c = kc.shape[1]
        s = torch.einsum("bhqd,bcthd->bhqct", qf, kc) * scale
        lse.append(torch.logsumexp(s, dim=-1).double())  # [B, H, Q, c]
    lse_f = torch.cat(lse, dim=-1)  # [B, H, Q, F'] log-mass on each key frame
    share = torch.exp(lse_f - torch.logsumexp(lse_f, dim=-1, keepdim=True))
    share = share.unflatten(2, (f, n)).sum(3)  # [B, H, F'(query), F'(key)] summed over a frame's queries
    dist = (torch.arange(f)[:, None] - torch.arange(frames)[None, :]).abs()
    onehot = torch.nn.functional.one_hot(dist, frames).to(share.device, torch.float64)  # [Fq, Fk, F']
    return torch.einsum("bhqk,qkd->bhd", share, onehot) / (f * n)


def reach_reference(q: np.ndarray, k: np.ndarray, frame_of_query: np.ndarray, frame_of_key: np.ndarray,
                    scale: float, frames: int) -> np.ndarray:
    """Dense float64 reference of :func:`temporal_reach`: q [B, Q, H, d], k [B, K, H, d] → [B, H, F']."""
    s = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), k.astype(np.float64)) * scale
    s -= s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    dist = np.abs(frame_of_query[:, None] - frame_of_key[None, :])
    out = np.zeros(p.shape[:2] + (frames,))
    for d in range(frames):
        out[..., d] = (p * (dist == d)).sum(-1).mean(-1)
    return out


def block_metrics_from_sums(sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Metrics from stored block sums (leading axes [S, branch, B, block]): ``cos`` and ``l2`` [..., F'−1] of adjacent
    frames of the block output, ``update`` ‖out − in‖/‖in‖, ``change`` relative L1 of the update against the previous
    step, ``mag`` (MagCache's ratio) [S, branch, B] and ``reach`` as stored."""
    out: dict[str, np.ndarray] = {}
    if "sq" in sums:
        pm = pair_metrics((np.asarray(sums["sq"], np.float64), np.asarray(sums["dot"], np.float64),
                           np.asarray(sums["dd"], np.float64), 1))
        out["cos"], out["l2"] = np.asarray(pm.cos), np.asarray(pm.l2)
    with np.errstate(invalid="ignore", divide="ignore"):
        if "upd" in sums:
            upd = np.asarray(sums["upd"], np.float64)
            out["update"] = np.where(upd[..., 1] > 0, np.sqrt(upd[..., 0] / upd[..., 1]), np.nan)
        if "change" in sums:
            ch = np.asarray(sums["change"], np.float64)
            out["change"] = np.where(ch[..., 1] > 0, ch[..., 0] / ch[..., 1], np.nan)
    for name in ("mag", "reach"):
        if name in sums:
            out[name] = np.asarray(sums[name], np.float64)
    return out


# ------------------------------------------------------------------ the accessor: run.blocks
@register_run_accessor("blocks")
class RunBlocks:
    """``run.blocks``: what the block probes measured (``LatentProbe(blocks=...)``), read from ``/blocks``.

    ``run.blocks.metrics()`` → name → array [S, branch (cond, uncond), B, block, ...] (:func:`block_metrics_from_sums`);
    ``run.blocks.to_xarray()`` the same as an xarray Dataset (also merged into ``run.to_xarray()``)."""

    def __init__(self, run: "Run") -> None:
        self._run = run
        self._sums: dict[str, np.ndarray] | None = None

    @property
    def info(self) -> dict:
        info = block_info(self._run)
        if info is None:
            raise KeyError("this run was recorded without block probes (LatentProbe(blocks=...))")
        return info

    @property
    def indices(self) -> list[int]:
        """The probed blocks' indices in the expert's block list."""
        return list(self.info["blocks"])

    def sums(self) -> dict[str, np.ndarray]:
        if self._sums is None:
            self.info  # noqa: B018 - refuses a run without block probes
            self._sums = read_block_sums(self._run)
        return self._sums

    def metrics(self) -> dict[str, np.ndarray]:
        return block_metrics_from_sums(self.sums())

    def hidden_steps(self, branch: str = "cond") -> list[int]:
        """The steps whose hidden states ``block_steps=`` stored for ``branch``."""
        self.info  # noqa: B018 - refuses a run without block probes
        return [int(s) for s in hidden_steps(self._run, branch)]

    def hidden(self, step: int, block: int, branch: str = "cond", verify: bool = True) -> torch.Tensor:
        """The output hidden states of block ``block`` (its index in the expert's block list; negative from the end)
        at ``step`` and ``branch``, as stored (``block_steps=``): a CPU tensor [B, F', T, D] in the store dtype — the
        real tokens, frame-major, T = H'·W' a frame (Wan2.2's padding past F'·T is not stored). Read from the file (or
        the in-memory image) on each call, checked against the checksum written with it (``verify``)."""
        info = self.info
        count = int(info.get("block_count", 0))
        index = block + count if block < 0 <= count + block else block
        blocks = list(info["blocks"])
        if index not in blocks:
            raise KeyError(f"block {block} was not probed; probed blocks: {blocks}")
        return torch.from_numpy(read_hidden(self._run, step, blocks.index(index), branch, verify))

    def to_xarray(self) -> Any:
        """xarray Dataset: ``block_cos``, ``block_l2`` (step, branch, batch, block, frame_pair); ``block_update``,
        ``block_change`` (step, branch, batch, block); ``mag_ratio`` (step, branch, batch); ``attention_reach``
        (step, branch, batch, block, head, distance); coordinates branch, block, and sigma / expert on step."""
        import xarray as xr

        m = self.metrics()
        run = self._run
        dims = {"cos": ("frame_pair",), "l2": ("frame_pair",), "update": (), "change": (), "reach": ("head", "distance")}
        data = {}
        for name, tail in dims.items():
            if name in m:
                var = "attention_reach" if name == "reach" else f"block_{name}"
                data[var] = (("step", "branch", "batch", "block") + tail, m[name])
        if "mag" in m:
            data["mag_ratio"] = (("step", "branch", "batch"), m["mag"])
        coords = {"branch": list(BRANCHES), "block": self.indices, "step": np.arange(run.num_steps),
                  "sigma": ("step", np.asarray(run.sigmas, np.float64)),
                  "expert": ("step", np.asarray([str(e) for e in run.experts], dtype=object))}
        ds = xr.Dataset(data, coords=coords)
        ds.attrs["block_count"] = int(self.info.get("block_count", 0))
        return ds


def skip_map(changes: np.ndarray, experts: Sequence[str], blocks: Sequence[int], threshold: float,
             quantile: float = 0.9) -> dict[str, Any]:
    """A data-driven skip map: per expert, the (step, block) cells whose update changed less than ``threshold``
    (relative L1 against the previous step) in at least ``quantile`` of the runs. ``changes`` [runs, S, block] (one
    branch, batch-averaged; NaN — a run's first step — never qualifies); ``experts`` [S] the expert of each step.
    JSON-ready: ``{"threshold", "quantile", "runs", "experts": {name: {"steps": [...], "cells": [[step, block], ...],
    "share": float}}}``."""
    c = np.asarray(changes, np.float64)
    if c.ndim != 3 or c.shape[1] != len(experts) or c.shape[2] != len(blocks):
        raise ValueError(f"changes must be [runs, {len(experts)} steps, {len(blocks)} blocks], got {list(c.shape)}")
    if not 0 < quantile <= 1 or not threshold > 0:
        raise ValueError("skip_map needs threshold > 0 and 0 < quantile ≤ 1")
    with np.errstate(invalid="ignore"):
        below = np.where(np.isnan(c), False, c < threshold).mean(0) >= quantile  # [S, block]
    out: dict[str, Any] = {"threshold": threshold, "quantile": quantile, "runs": int(c.shape[0]),
                           "blocks": [int(b) for b in blocks], "experts": {}}
    for name in dict.fromkeys(str(e) for e in experts):
        steps = [s for s, e in enumerate(experts) if str(e) == name]
        cells = [[s, int(blocks[j])] for s in steps for j in range(len(blocks)) if below[s, j]]
        out["experts"][name] = {"steps": steps, "cells": cells,
                                "share": len(cells) / max(1, len(steps) * len(blocks))}
    return out
