"""Motion estimators for organism v2 clips, and each class's motion model (``videos_v2``).

Every function reads RGB pixels [3, F, H, W] in [0, 1] (a rendered clip or a decoded generation) and returns
pixels, video frames and radians. ``measure(rgb, label)`` gives a class's statistics; ``truth(motion, i)``
gives the same statistics from the renderer's parameters; ``check(stats, label)`` says, key by key, whether
a clip follows the class's motion model (the renderer's parameter ranges widened by ``TOLERANCE``), so a
generated clip — whose parameters nobody knows — can be judged by the same rule as a training clip.
"""

from __future__ import annotations

import math

import torch

from . import OrganismInputError
from . import videos_v2 as v2
from .quality import colour_weights, fit_line, principal_angle, unwrap_orientation, weighted_centroid

__all__ = ["TRACK_RADIUS", "MIN_MASS", "TOLERANCE", "color_track", "bar_angle", "fit_quadratic", "pan_speed", "measure",
           "truth", "check", "MODEL"]

TRACK_RADIUS = 0.45    # RGB distance at which a pixel stops counting as the object's colour
MIN_MASS = 8.0         # weight (≈ pixels) for a frame to count as "object visible" (a disc of r 7 is ≈ 150)

# how far a measured statistic may sit outside the class's parameter range and still "follow the model"
TOLERANCE = {"v": 0.04, "residual_px": 1.0, "omega": 0.004, "residual_rad": 0.08, "pan_vx": 0.06,
             "pan_std": 0.10, "accel": 0.0015, "v0": 0.06, "frame": 1.0, "visible": 0.0}

# the renderer's ranges per class (``videos_v2._params``): key → (lo, hi), units px/frame, rad/frame, px/frame²
MODEL: dict[int, dict[str, tuple[float, float]]] = {
    0: {"vx": (0.30, 0.45), "vy": (0.0, 0.0)},
    1: {"vx": (-0.45, -0.30), "vy": (0.0, 0.0)},
    2: {"vx": (0.0, 0.0), "vy": (0.30, 0.45)},
    3: {"vx": (0.20, 0.30), "vy": (0.20, 0.30)},
    4: {"omega": (0.015, 0.030)},
    5: {"vx": (-0.45, -0.30), "vy": (0.0, 0.0), "behind_vx": (0.30, 0.45)},
    6: {"pan_vx": (0.30, 0.60)},
    7: {"pan_vx": (-0.60, -0.30)},
    8: {"appear": (16, 32), "vanish": (48, 64), "vx": (0.0, 0.0), "vy": (0.0, 0.0)},
    9: {"accel": (0.008, 0.012), "v0": (0.0, 0.0), "vy": (0.0, 0.0)},
}
_TOL_KEY = {"vx": "v", "vy": "v", "behind_vx": "v", "omega": "omega", "pan_vx": "pan_vx", "appear": "frame",
            "vanish": "frame", "accel": "accel", "v0": "v0"}


def color_track(rgb: torch.Tensor, color: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid (x, y) [F, 2] (float64) of the pixels near ``COLORS[color]`` and their weight [F].

    Weight of a pixel (1 − |rgb − colour| / TRACK_RADIUS)², 0 beyond; frames below MIN_MASS get NaN.
    """
    return weighted_centroid(colour_weights(rgb.double(), v2.COLORS[color], TRACK_RADIUS), MIN_MASS)


def bar_angle(rgb: torch.Tensor) -> torch.Tensor:
    """Orientation [F] in [0, π) of the white bar: principal axis of the near-white pixels' second moments."""
    return principal_angle(colour_weights(rgb.double(), v2.COLORS["white"], TRACK_RADIUS), eps=1e-12)


def _shift_x(img: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """[N, H, W] images shifted right by dx [N] px (linear interpolation; values past the edge repeat it)."""
    w = img.shape[-1]
    src = torch.arange(w, dtype=img.dtype)[None] - dx[:, None]                       # [N, W] source x
    lo = src.floor().clamp(0, w - 1)
    frac = (src - src.floor()).clamp(0, 1)
    hi = (lo + 1).clamp(max=w - 1)
    lo_i, hi_i = lo.long()[:, None].expand(-1, img.shape[1], -1), hi.long()[:, None].expand(-1, img.shape[1], -1)
    frac = torch.where((src < 0) | (src > w - 1), torch.zeros_like(frac), frac)[:, None]
    return img.gather(2, lo_i) * (1 - frac) + img.gather(2, hi_i) * frac


def pan_speed(rgb: torch.Tensor, iterations: int = 6, margin: int = 6) -> torch.Tensor:
    """Horizontal speed vx [F−1] (px/frame) of a whole-frame translation between adjacent frames.

    Iterative Lucas–Kanade in x alone (a v2 pan is horizontal, so the stripes' aperture problem does not
    arise): warp frame f by the current vx, regress the residual on the warped frame's x gradient, repeat;
    ``margin`` px at the left and right edges are left out (content enters there). Float64.
    """
    g = rgb.double().mean(0)                                                         # [F, H, W]
    a, b = g[:-1], g[1:]
    v = torch.zeros(a.shape[0], dtype=torch.float64)
    for _ in range(iterations):
        aw = _shift_x(a, v)
        ix = (aw[:, :, 2:] - aw[:, :, :-2]) / 2
        it = (b - aw)[:, :, 1:-1]
        ix, it = ix[:, :, margin:-margin], it[:, :, margin:-margin]
        v = v - (ix * it).sum((1, 2)) / (ix * ix).sum((1, 2)).clamp(min=1e-12)
    return v


def fit_quadratic(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Least squares p(f) = p0 + v0·f + ½·a·f² through the finite rows of [F, D].

    Returns (a [D], v0 [D], residual RMS)."""
    f = torch.arange(points.shape[0], dtype=torch.float64)
    ok = torch.isfinite(points).all(-1)
    if ok.sum() < 3:
        nan = torch.full((points.shape[-1],), math.nan, dtype=torch.float64)
        return nan, nan, math.nan
    p, fo = points[ok].double(), f[ok]
    A = torch.stack([torch.ones_like(fo), fo, 0.5 * fo * fo], -1)
    coef = torch.linalg.lstsq(A, p).solution
    res = p - A @ coef
    return coef[2], coef[1], float(res.pow(2).sum(-1).mean().sqrt())


def _window(mass: torch.Tensor) -> tuple[float, float]:
    """First visible frame and first frame gone again, from a per-frame mass: the visible run's ends are
    where the mass crosses half its median over visible frames (hard cuts → exact frame indices)."""
    on = mass >= MIN_MASS
    if not on.any():
        return math.nan, math.nan
    half = 0.5 * float(mass[on].median())
    idx = torch.nonzero(mass >= half).flatten()
    return float(idx[0]), float(idx[-1] + 1)


def measure(rgb: torch.Tensor, label: int) -> dict[str, float]:
    """Per-class motion statistics of one clip [3, F, H, W] (keys as in ``MODEL`` plus fit residuals)."""
    label = int(label)
    if rgb.dim() != 4 or rgb.shape[0] != 3:
        raise OrganismInputError(f"measure takes one RGB clip [3, F, H, W], got {list(rgb.shape)}")
    n = rgb.shape[1]
    out: dict[str, float] = {}
    if label in (0, 1, 2, 3, 5):
        track, _ = color_track(rgb, "blue" if label == 5 else v2.CLASS_COLOR[label])
        fit = fit_line(track)
        out.update(visible=fit.frames / n, vx=float(fit.velocity[0]), vy=float(fit.velocity[1]),
                   residual_px=fit.rms)
        if label == 5:   # the red disc behind: its x velocity from the frames where it is mostly visible
            red, mass = color_track(rgb, "red")
            good = mass >= 0.8 * float(mass.max())
            fit_b = fit_line(torch.where(good[:, None], red, torch.full_like(red, math.nan)))
            out["behind_vx"] = float(fit_b.velocity[0])
    elif label == 4:
        ang = torch.tensor(unwrap_orientation(bar_angle(rgb).tolist()), dtype=torch.float64)
        fit = fit_line(ang[:, None])
        out.update(omega=float(fit.velocity[0]), residual_rad=fit.rms)
    elif label in (6, 7):
        v = pan_speed(rgb)
        out.update(pan_vx=float(v.mean()), pan_std=float(v.std()))
    elif label == 8:
        track, mass = color_track(rgb, "cyan")
        appear, vanish = _window(mass)
        fit = fit_line(track)
        out.update(appear=appear, vanish=vanish, vx=float(fit.velocity[0]), vy=float(fit.velocity[1]),
                   residual_px=fit.rms)
    elif label == 9:
        track, _ = color_track(rgb, "orange")
        a, v0, res = fit_quadratic(track)
        out.update(visible=float(torch.isfinite(track).all(-1).double().mean()), accel=float(a[0]),
                   v0=float(v0[0]), vy=float(fit_line(track).velocity[1]), residual_px=res)
    else:
        raise OrganismInputError(f"organism v2 label must be in 0..{len(v2.PROMPTS) - 1}, got {label}")
    return out


def truth(motion: v2.MotionV2, i: int) -> dict[str, float]:
    """The statistics ``measure`` should find on clip ``i`` of a rendered batch, from the renderer's parameters."""
    label = int(motion.labels[i])
    c = motion.centers[i].double()
    if label in (0, 1, 2, 3, 5):
        obj = 1 if label == 5 else 0
        v = c[obj, 1] - c[obj, 0]
        out = {"vx": float(v[0]), "vy": float(v[1])}
        if label == 5:
            out["behind_vx"] = float(c[0, 1, 0] - c[0, 0, 0])
        return out
    if label == 4:
        return {"omega": float(motion.omega[i])}
    if label in (6, 7):
        return {"pan_vx": float(motion.pan[i, 1, 0])}
    if label == 8:
        return {"appear": float(motion.appear[i]), "vanish": float(motion.vanish[i]), "vx": 0.0, "vy": 0.0}
    return {"accel": float(motion.accel[i]), "v0": 0.0, "vy": 0.0}


def check(stats: dict[str, float], label: int) -> dict[str, bool]:
    """Key by key: does ``stats`` (from ``measure``) fall in the class's ``MODEL`` range ± ``TOLERANCE``,
    and are the fit residuals and visibility what a clip of the class shows? NaN never passes."""
    ok: dict[str, bool] = {}
    for key, (lo, hi) in MODEL[int(label)].items():
        tol = TOLERANCE[_TOL_KEY[key]]
        x = stats.get(key, math.nan)
        ok[key] = bool(math.isfinite(x) and lo - tol <= x <= hi + tol)
    if "residual_px" in stats:
        ok["residual_px"] = bool(stats["residual_px"] <= TOLERANCE["residual_px"])
    if "residual_rad" in stats:
        ok["residual_rad"] = bool(stats["residual_rad"] <= TOLERANCE["residual_rad"])
    if "pan_std" in stats:
        ok["pan_std"] = bool(stats["pan_std"] <= TOLERANCE["pan_std"])
    if "visible" in stats:
        ok["visible"] = bool(stats["visible"] >= 1.0 - TOLERANCE["visible"])
    return ok
