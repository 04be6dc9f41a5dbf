"""Key latent frames and their interpolation along the frame axis.

Layout throughout: ``[..., C, F, H, W]`` — the frame axis is dim −3, a *frame vector* is the ``(C, H, W)``
slice of one frame (of one batch item), and any leading dims are batch dims. Positions are latent frame
indices (0 … F−1), not video frames.

Fills (``values`` holds the K key frames, ``keys`` their true positions):

* ``linear``  piecewise linear between neighbouring keys; constant beyond the first / last key;
* ``nearest`` the value of the nearest key (a tie goes to the earlier key);
* ``slerp``   spherical interpolation of the frame vector's direction between neighbouring keys, its norm
  interpolated linearly; falls back to ``linear`` for a zero vector or (anti)parallel neighbours;
* ``motion``  motion-compensated: the displacement s between neighbouring keys a → b is found by phase
  correlation (the peak of ifft(Σ_C F_b·conj(F_a) / |…|), whole latent pixels, per batch item, torch FFT on the
  tensor's device); a frame at weight w blends a moved by w·s and b moved back by (1 − w)·s (Fourier shift:
  sub-pixel, circular at the borders), weights as ``linear``. One global translation per key interval: it
  aligns a pan or one moving object, not several objects moving differently (those still cross-fade).

Key frames are copied exactly (bit for bit) in every mode.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["FILLS", "default_keyframes", "resolve_keyframes", "fill_plan", "FillPlan", "interpolate_frames"]

FILLS = ("linear", "nearest", "slerp", "motion")
FRAME_DIM = -3
_VECTOR_DIMS = (-4, -2, -1)  # C, H, W of [..., C, F, H, W]


def default_keyframes(num_frames: int, keep: int) -> list[int]:
    """K evenly spaced latent frame indices including the first and last: ``np.linspace(0, F−1, K).round()``.

    numpy rounds halves to even; duplicates are dropped (they cannot occur for K ≤ F). ``keep ≥ F`` keeps
    every frame; ``keep = 1`` keeps frame 0 only.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    k = min(int(keep), int(num_frames))
    return sorted({int(i) for i in np.linspace(0, num_frames - 1, k).round()})


def resolve_keyframes(keyframes: Sequence[int], num_frames: int) -> list[int]:
    """Explicit key frames for a video of ``num_frames`` latent frames: negatives count from the end,
    sorted, deduplicated; out-of-range indices raise ``ValueError``."""
    out = set()
    for k in keyframes:
        i = int(k) + num_frames if int(k) < 0 else int(k)
        if not 0 <= i < num_frames:
            raise ValueError(f"key frame {k} is out of range for {num_frames} latent frames")
        out.add(i)
    if not out:
        raise ValueError("keyframes is empty")
    return sorted(out)


def fill_plan(keys: Sequence[int], num_frames: int, mode: str = "linear") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every output frame f: (lo, hi, w) — indices into ``keys`` of its two neighbours and the weight of
    ``hi`` (``out_f = (1−w)·v[lo] + w·v[hi]`` for ``linear``). Key frames and frames beyond the ends have
    lo = hi and w = 0. Arrays of length ``num_frames`` (int64, int64, float64)."""
    if mode not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {mode!r}")
    k = np.asarray(sorted(keys), dtype=np.int64)
    if k.size == 0 or k[0] < 0 or k[-1] >= num_frames or np.any(np.diff(k) == 0):
        raise ValueError(f"keys {list(keys)} must be distinct indices in [0, {num_frames})")
    f = np.arange(num_frames)
    j = np.clip(np.searchsorted(k, f, side="right") - 1, 0, k.size - 1)  # last key <= f (or 0)
    lo = j.copy()
    hi = np.minimum(j + 1, k.size - 1)
    inside = (f > k[0]) & (f < k[-1]) & (k[lo] != f)
    w = np.zeros(num_frames)
    w[inside] = (f[inside] - k[lo[inside]]) / (k[hi[inside]] - k[lo[inside]])
    hi[~inside] = lo[~inside]
    lo[f < k[0]] = hi[f < k[0]] = 0
    if mode == "nearest":
        pick_hi = inside & (w > 0.5)  # a tie (w == 0.5) goes to the earlier key
        lo = np.where(pick_hi, hi, lo)
        hi = lo.copy()
        w = np.zeros(num_frames)
    return lo, hi, w


class FillPlan:
    """The interpolation from fixed ``keys`` to ``num_frames`` frames; its index and weight tensors are made once
    per (device, dtype) and reused, so applying it in a hook costs no host-to-device copy after the first call."""

    def __init__(self, keys: Sequence[int], num_frames: int, mode: str = "linear") -> None:
        self.keys = [int(k) for k in keys]
        self.num_frames = int(num_frames)
        self.mode = mode
        self.lo, self.hi, self.w = fill_plan(self.keys, self.num_frames, mode)
        self.trivial = mode == "nearest" or not np.any(self.w)
        self._tensors: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    def _on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        key = (device, dtype)
        if key not in self._tensors:
            f = self.num_frames
            self._tensors[key] = (
                torch.as_tensor(self.lo, device=device), torch.as_tensor(self.hi, device=device),
                torch.as_tensor(self.w, dtype=dtype, device=device).view(f, 1, 1),
                torch.as_tensor(self.w == 0, device=device).view(f, 1, 1),
                torch.as_tensor(self.keys, dtype=torch.long, device=device))
        return self._tensors[key]

    def key_index(self, device: torch.device) -> torch.Tensor:
        """The key frame indices as an int64 tensor on ``device`` (cached)."""
        return self._on(device, torch.float32)[4]

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """[..., C, K, H, W] → [..., C, F, H, W] (see :func:`interpolate_frames`)."""
        if values.dim() < 4:
            raise ValueError(f"values must be [..., C, K, H, W], got shape {tuple(values.shape)}")
        if values.shape[FRAME_DIM] != len(self.keys):
            raise ValueError(f"values have {values.shape[FRAME_DIM]} frames but {len(self.keys)} keys were given")
        work = torch.promote_types(values.dtype, torch.float32)
        lo, hi, w, at_key, _ = self._on(values.device, work)
        v = values.to(work)
        a = v.index_select(FRAME_DIM, lo)
        if self.trivial:
            return a.to(values.dtype)
        b = v.index_select(FRAME_DIM, hi)
        if self.mode == "motion":
            out = _motion_blend(a, b, w, key_shifts(v).index_select(-2, lo.clamp(max=max(len(self.keys) - 2, 0))))
        else:
            out = torch.lerp(a, b, w) if self.mode == "linear" else _slerp(a, b, w)
        return torch.where(at_key, a, out).to(values.dtype)


def interpolate_frames(values: torch.Tensor, keys: Sequence[int], num_frames: int,
                       mode: str = "linear") -> torch.Tensor:
    """Expand K key frames ``values`` [..., C, K, H, W] at positions ``keys`` to [..., C, F, H, W].

    Computed in float32 (float64 for float64 input), returned in the input dtype; key frames are exact
    copies of ``values``.
    """
    return FillPlan(keys, num_frames, mode)(values)


def key_shifts(values: torch.Tensor) -> torch.Tensor:
    """Displacement (dy, dx) in latent pixels from each key frame to the next, by phase correlation.

    ``values`` [..., C, K, H, W] → [..., K−1, 2] (float, whole pixels in (−H/2, H/2] × (−W/2, W/2]); frame b is
    frame a moved by (dy, dx) when b(p) = a(p − (dy, dx)). [..., 1, 2] of zeros for K = 1.
    """
    *lead, c, k, h, w = values.shape
    if k < 2:
        return values.new_zeros((*lead, 1, 2), dtype=torch.float32)
    spec = torch.fft.fft2(values.to(torch.promote_types(values.dtype, torch.float32)))   # [..., C, K, H, W]
    cross = (spec[..., :, 1:, :, :] * spec[..., :, :-1, :, :].conj()).sum(dim=-4)        # [..., K−1, H, W]
    mag = cross.abs()
    cross = torch.where(mag > 0, cross / mag.clamp_min(torch.finfo(mag.dtype).tiny), torch.zeros_like(cross))
    corr = torch.fft.ifft2(cross).real.flatten(-2)                                       # [..., K−1, H·W]
    peak = corr.argmax(dim=-1)
    dy, dx = (peak // w).float(), (peak % w).float()
    dy = torch.where(dy > h // 2, dy - h, dy)
    dx = torch.where(dx > w // 2, dx - w, dx)
    return torch.stack([dy, dx], dim=-1)


def translate(frames: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move ``frames`` [..., C, F, H, W] by ``shift`` [..., F, 2] (dy, dx; sub-pixel) with the Fourier shift
    theorem: out(p) = frames(p − shift), circular at the borders. Real in, real out."""
    h, w = frames.shape[-2:]
    fy = torch.fft.fftfreq(h, device=frames.device, dtype=shift.dtype).view(h, 1)
    fx = torch.fft.fftfreq(w, device=frames.device, dtype=shift.dtype).view(1, w)
    dy = shift[..., 0].unsqueeze(-1).unsqueeze(-1).unsqueeze(-4)       # [..., 1, F, 1, 1]
    dx = shift[..., 1].unsqueeze(-1).unsqueeze(-1).unsqueeze(-4)
    phase = torch.exp(-2j * torch.pi * (fy * dy + fx * dx))
    return torch.fft.ifft2(torch.fft.fft2(frames) * phase).real.to(frames.dtype)


def _motion_blend(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(1 − w)·a moved by w·s + w·b moved by −(1 − w)·s; ``a``, ``b`` [..., C, F, H, W], ``w`` [F, 1, 1], ``shift``
    [..., F, 2] the displacement of each frame's key interval."""
    wf = w.view(-1, 1).to(shift.dtype)                                   # [F, 1]
    return torch.lerp(translate(a, wf * shift), translate(b, -(1 - wf) * shift), w)


def _slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Slerp of frame-vector directions, linear norms; ``linear`` where the directions are undefined."""
    na = torch.linalg.vector_norm(a, dim=_VECTOR_DIMS, keepdim=True)
    nb = torch.linalg.vector_norm(b, dim=_VECTOR_DIMS, keepdim=True)
    ok = (na > 0) & (nb > 0)
    ua = a / torch.where(ok, na, torch.ones_like(na))
    ub = b / torch.where(ok, nb, torch.ones_like(nb))
    cos = (ua * ub).sum(dim=_VECTOR_DIMS, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    ok = ok & (sin > 1e-6)
    safe_sin = torch.where(ok, sin, torch.ones_like(sin))
    direction = (torch.sin((1 - w) * theta) * ua + torch.sin(w * theta) * ub) / safe_sin
    norm = (1 - w) * na + w * nb
    return torch.where(ok, norm * direction, torch.lerp(a, b, w))
