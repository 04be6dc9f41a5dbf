"""Measure a clip (generated or rendered) against the renderer's own motion model (``videos``).

All functions take RGB clips [3, F, H, W] in [0, 1] (``videos.to_rgb`` of a latent) and return numbers in
latent pixels, frames and radians. The same estimators run on training clips, whose true motion is known,
so their error there is the floor a generated clip can be compared with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import videos

__all__ = ["color_track", "bar_angle", "unwrap_orientation", "pan_velocity", "LinearFit", "fit_line",
           "object_motion", "nearest_distance"]

TRACK_RADIUS = 0.5     # RGB distance at which a pixel stops counting as the object's colour
MIN_MASS = 1.0         # minimum weight (≈ pixels) for a frame to count as "object visible"


def _pixel_centres(h: int, w: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y [H, W] of the pixel centres (k + 0.5, exact in any float dtype)."""
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return xs.to(dtype), ys.to(dtype)


def colour_weights(rgb: torch.Tensor, colour: tuple[float, float, float], radius: float) -> torch.Tensor:
    """[F, H, W] weight of each pixel of ``rgb`` [3, F, H, W] (in its dtype): (1 − |rgb − colour| / radius)², 0
    beyond ``radius``."""
    col = torch.tensor(colour, dtype=rgb.dtype)
    d = (rgb - col[:, None, None, None]).pow(2).sum(0).sqrt()            # [F, H, W]
    return (1 - d / radius).clamp(min=0) ** 2


def weighted_centroid(w: torch.Tensor, min_mass: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid (x, y) [F, 2] of the weights ``w`` [F, H, W] (NaN where the mass is below ``min_mass``) and
    the mass [F]."""
    xs, ys = _pixel_centres(*w.shape[-2:], dtype=w.dtype)
    mass = w.sum((1, 2))
    c = torch.stack([(w * xs).sum((1, 2)), (w * ys).sum((1, 2))], -1) / mass.clamp(min=1e-12)[:, None]
    return torch.where((mass >= min_mass)[:, None], c, torch.full_like(c, math.nan)), mass


def principal_angle(w: torch.Tensor, eps: float) -> torch.Tensor:
    """Orientation [F] in [0, π) of the principal axis of the weights' second moments (``w`` [F, H, W]; a
    frame's mass is clamped at ``eps``)."""
    xs, ys = _pixel_centres(*w.shape[-2:], dtype=w.dtype)
    m = w.sum((1, 2)).clamp(min=eps)
    cx, cy = (w * xs).sum((1, 2)) / m, (w * ys).sum((1, 2)) / m
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    sxx, syy, sxy = (w * dx * dx).sum((1, 2)), (w * dy * dy).sum((1, 2)), (w * dx * dy).sum((1, 2))
    return (0.5 * torch.atan2(2 * sxy, sxx - syy)) % math.pi


def color_track(rgb: torch.Tensor, color: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid (x, y) [F, 2] of the pixels near ``videos.COLORS[color]``, and their weight [F] (≈ pixels).

    Weight of a pixel: (1 − |rgb − colour| / TRACK_RADIUS)², 0 beyond. Frames of weight < MIN_MASS get NaN.
    """
    return weighted_centroid(colour_weights(rgb, videos.COLORS[color], TRACK_RADIUS), MIN_MASS)


def bar_angle(rgb: torch.Tensor) -> torch.Tensor:
    """Orientation [F] in [0, π) of the white bar (principal axis of the near-white pixels' second moments)."""
    return principal_angle(colour_weights(rgb, videos.COLORS["white"], TRACK_RADIUS), eps=1e-9)


def pan_velocity(rgb: torch.Tensor) -> torch.Tensor:
    """Horizontal pan speed vx [F−1] px/frame between adjacent frames (gradient-based, whole frame).

    Lucas–Kanade for one global translation. Where the texture is one-dimensional (stripes: the structure
    tensor's eigenvalue ratio < 0.1) only the speed along the stripes' normal n is observable; vx is then
    that speed divided by n_x, i.e. the pan is taken as horizontal (the renderer's |vy| ≤ 0.08 px/frame).
    """
    g = rgb.mean(0).double()                                             # [F, H, W]
    a, b = g[:-1], g[1:]
    mid = (a + b) / 2
    ix = (mid[:, 1:-1, 2:] - mid[:, 1:-1, :-2]) / 2
    iy = (mid[:, 2:, 1:-1] - mid[:, :-2, 1:-1]) / 2
    it = (b - a)[:, 1:-1, 1:-1]
    sxx, syy, sxy = (ix * ix).sum((1, 2)), (iy * iy).sum((1, 2)), (ix * iy).sum((1, 2))
    bx, by = -(ix * it).sum((1, 2)), -(iy * it).sum((1, 2))
    det = sxx * syy - sxy * sxy
    tr = sxx + syy
    disc = ((sxx - syy) ** 2 / 4 + sxy ** 2).sqrt()
    lam_hi, lam_lo = tr / 2 + disc, tr / 2 - disc
    full = (syy * bx - sxy * by) / det.clamp(min=1e-12)
    # normal flow: n = eigenvector of the largest eigenvalue, oriented n_x ≥ 0
    nx, ny = sxy, lam_hi - sxx
    swap = (nx.abs() + ny.abs()) < 1e-12
    nx, ny = torch.where(swap, lam_hi - syy, nx), torch.where(swap, sxy, ny)
    norm = (nx * nx + ny * ny).sqrt().clamp(min=1e-12)
    nx, ny = nx / norm, ny / norm
    sign = torch.where(nx < 0, -1.0, 1.0).double()
    nx, ny = nx * sign, ny * sign
    vn = (nx * bx + ny * by) / lam_hi.clamp(min=1e-12)
    normal = vn / nx.clamp(min=0.2)
    return torch.where(lam_lo / lam_hi.clamp(min=1e-12) < 0.1, normal, full).float()


@dataclass(frozen=True)
class LinearFit:
    """Least-squares line p(f) = p0 + v·f through the finite points: v, p0 [D], per-frame residual RMS, frames."""

    velocity: torch.Tensor
    start: torch.Tensor
    rms: float
    frames: int


def fit_line(points: torch.Tensor) -> LinearFit:
    """Fit [F, D] points (NaN rows skipped) with a line in the frame index."""
    f = torch.arange(points.shape[0], dtype=torch.float64)
    ok = torch.isfinite(points).all(-1)
    if ok.sum() < 2:
        nan = torch.full((points.shape[-1],), math.nan, dtype=torch.float64)
        return LinearFit(nan, nan, math.nan, int(ok.sum()))
    p, fo = points[ok].double(), f[ok]
    A = torch.stack([torch.ones_like(fo), fo], -1)
    coef = torch.linalg.lstsq(A, p).solution                              # [2, D]
    res = p - A @ coef
    return LinearFit(coef[1], coef[0], float(res.pow(2).sum(-1).mean().sqrt()), int(ok.sum()))


def object_motion(rgb: torch.Tensor, label: int) -> dict[str, float]:
    """Per-class motion statistics of one clip [3, F, H, W]: what a clip of class ``label`` should show.

    Classes 0–3 and 5: the tracked object's visible frames, line-fit residual (px) and velocity (px/frame);
    4: the bar's angular velocity (rad/frame) and angle residual; 6–7: pan speed vx (px/frame) and its spread
    over the frame pairs.
    """
    out: dict[str, float] = {}
    if label in (0, 1, 2, 3, 5):
        track, _ = color_track(rgb, videos._COLOR[label])
        if label == 5:                                                    # the front (blue) disc is never hidden
            track, _ = color_track(rgb, "blue")
        fit = fit_line(track)
        out.update(visible=fit.frames / rgb.shape[1], residual_px=fit.rms,
                   vx=float(fit.velocity[0]), vy=float(fit.velocity[1]))
    elif label == 4:
        ang = torch.tensor(unwrap_orientation(bar_angle(rgb).double().tolist()))
        fit = fit_line(ang[:, None])
        out.update(omega=float(fit.velocity[0]), residual_rad=fit.rms)
    else:
        v = pan_velocity(rgb)
        out.update(vx=float(v.mean()), vx_std=float(v.std()))
    return out


def unwrap_orientation(angles: list[float]) -> list[float]:
    """Unwrap orientations defined modulo π (radians): each step taken as the one in [−π/2, π/2)."""
    out = [angles[0]]
    for a in angles[1:]:
        d = (a - out[-1] + math.pi / 2) % math.pi - math.pi / 2
        out.append(out[-1] + d)
    return out


def nearest_distance(clips: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """RMS latent distance [N] of each clip [N, 16, F, H, W] to its nearest neighbour in ``pool`` [M, ...]."""
    a, b = clips.flatten(1).double(), pool.flatten(1).double()
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    return (d2.clamp(min=0).min(1).values / a.shape[1]).sqrt()
