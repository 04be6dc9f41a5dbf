"""What the two organism renderers share: random draws, shapes, coverage, the crossing disc, pans, compositing.

``videos`` (v1: 16×16 latent pixels, 21 frames, supersampled 4×) and ``videos_v2`` (v2: 64×64 pixels, 81
frames, no supersampling) draw the same kinds of clip for their classes 0–7, so the class layout below is
common to both. Units are the caller's pixels (x to the right, y down; pixel i covers [i, i+1)) and frames.

Each helper draws from the generator in the order its lines are written and does the float ops the renderers
did inline, so both renderers' clips stay bit-identical (``tests/test_organism_renderers_frozen.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

SQUARE, DISC, BAR, NONE = 0, 1, 2, 3                       # shape of object A
ROTATING_BAR, CROSSING_DISCS, PAN_STRIPES, PAN_CHECKER = 4, 5, 6, 7   # classes both renderers draw alike

Range = tuple[float, float]


@dataclass
class CommonMotion:
    """Ground truth both renderers give with a batch (``videos.Motion``, ``videos_v2.MotionV2`` add their own).

    labels [B] class index; centers [B, 2, F, 2] (object A / B, frame, (x, y)), NaN where the object is absent;
    angle [B, F] bar orientation (``ROTATING_BAR``; NaN otherwise); pan [B, F, 2] displacement of the background
    content since frame 0; size [B, 2] half side / radius / bar half length of A, radius of B; omega [B] bar
    angular velocity (rad/frame).
    """

    labels: torch.Tensor
    centers: torch.Tensor
    angle: torch.Tensor
    pan: torch.Tensor
    size: torch.Tensor
    omega: torch.Tensor


def uniform(g: torch.Generator, b: int, lo: float | torch.Tensor, hi: float | torch.Tensor) -> torch.Tensor:
    """[b] draws uniform in [lo, hi) (bounds scalars or [b]), on the generator's device."""
    return lo + (hi - lo) * torch.rand(b, generator=g, device=g.device)


def drawn_per_class(g: torch.Generator, labels: torch.Tensor, default: Range,
                    per_class: Mapping[int, Range]) -> torch.Tensor:
    """[B] uniform in ``default``, redrawn from ``per_class[k]`` for clips of class k (one draw per range, in order)."""
    b = labels.shape[0]
    out = uniform(g, b, *default)
    for k, (lo, hi) in per_class.items():
        out = torch.where(labels == k, uniform(g, b, lo, hi), out)
    return out


def start_inside(g: torch.Generator, size: int, margin: torch.Tensor, travel_x: torch.Tensor,
                 travel_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame-0 centres x0, y0 [B] such that an object ``margin`` px from its edge stays inside the size×size
    frame while it travels (travel_x, travel_y) px [B] over the clip."""
    b = margin.shape[0]
    x_lo, x_hi = margin - torch.clamp(travel_x, max=0), size - margin - torch.clamp(travel_x, min=0)
    y_lo, y_hi = margin - torch.clamp(travel_y, max=0), size - margin - torch.clamp(travel_y, min=0)
    return uniform(g, b, x_lo, x_hi), uniform(g, b, y_lo, y_hi)


def pin_centres(g: torch.Generator, labels: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor,
                pins: Mapping[int, tuple[Range, Range]]) -> tuple[torch.Tensor, torch.Tensor]:
    """x0, y0 [B] with the clips of class k redrawn from the fixed ranges ``pins[k]`` = (x range, y range)."""
    b = labels.shape[0]
    for k, ((x_lo, x_hi), (y_lo, y_hi)) in pins.items():
        x0 = torch.where(labels == k, uniform(g, b, x_lo, x_hi), x0)
        y0 = torch.where(labels == k, uniform(g, b, y_lo, y_hi), y0)
    return x0, y0


def crossing_disc(g: torch.Generator, y0: torch.Tensor, size: int, radius: Range, speed: Range, start_x: Range,
                  dy: float, margin: float) -> dict[str, torch.Tensor]:
    """Object B of class ``CROSSING_DISCS`` [B]: radius, leftward velocity, frame-0 x, and a height within ±dy
    of object A's frame-0 ``y0``, kept ``margin`` px from the top and bottom."""
    b = y0.shape[0]
    return {"b_radius": uniform(g, b, *radius), "b_vx": -uniform(g, b, *speed), "b_x0": uniform(g, b, *start_x),
            "b_y0": (y0 + uniform(g, b, -dy, dy)).clamp(margin, size - margin)}


def tracks(labels: torch.Tensor, p: Mapping[str, torch.Tensor], f: torch.Tensor, ax: torch.Tensor,
           ay: torch.Tensor, has_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centres [B, 2, F, 2] (object A given as ax, ay [B, F] where has_a, object B from ``crossing_disc``;
    NaN where absent), bar angle [B, F] (NaN outside ``ROTATING_BAR``), sizes [B, 2] (A; B or 0).
    f: [F] frame indices (float32)."""
    b, frames = labels.shape[0], f.shape[0]
    nan = torch.full((b, frames), float("nan"), device=labels.device)
    bx, by = p["b_x0"][:, None] + p["b_vx"][:, None] * f, p["b_y0"][:, None].expand(b, frames)
    has_b = (labels == CROSSING_DISCS)[:, None]
    centers = torch.stack([
        torch.stack([torch.where(has_a, ax, nan), torch.where(has_a, ay, nan)], -1),
        torch.stack([torch.where(has_b, bx, nan), torch.where(has_b, by, nan)], -1)], 1)
    angle = torch.where((labels == ROTATING_BAR)[:, None], p["theta0"][:, None] + p["omega"][:, None] * f, nan)
    b_size = torch.where(labels == CROSSING_DISCS, p["b_radius"], torch.zeros_like(p["b_radius"]))
    return centers, angle, torch.stack([p["size"], b_size], 1)


def pixel_grid(size: int, supersample: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(Sub-)pixel centres [size·supersample, 1] (y) and [1, size·supersample] (x), in pixels."""
    c = (torch.arange(size * supersample, device=device, dtype=torch.float32) + 0.5) / supersample
    return c[:, None], c[None, :]


def coverage(d: torch.Tensor, supersample: int) -> torch.Tensor:
    """Signed distance (px, < 0 inside) → coverage in [0, 1] over a one-(sub-)pixel edge."""
    return (0.5 - d * supersample).clamp(0, 1)


def offsets(xx: torch.Tensor, yy: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dx, dy [B, F, H, W] of the grid from one object's centres [B, F, 2] (NaN, i.e. absent, read as 0)."""
    cx, cy = centers[:, :, 0, None, None], centers[:, :, 1, None, None]
    return xx - torch.nan_to_num(cx), yy - torch.nan_to_num(cy)


def shape_distance(shape: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, size: torch.Tensor, width: torch.Tensor,
                   angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Signed distance d [B, F, H, W] (< 0 inside) of object A and the bar's own coordinates u (along), v.

    shape [B, 1, 1, 1] (``SQUARE`` of half side ``size``, ``DISC`` of radius ``size``, else ``BAR`` of half
    length ``size`` and half width ``width``, both [B], turned by ``angle`` [B, F] rad, NaN read as 0).
    """
    s = size[:, None, None, None]
    d_square = torch.maximum(dx.abs(), dy.abs()) - s
    d_disc = torch.sqrt(dx * dx + dy * dy) - s
    th = torch.nan_to_num(angle)[:, :, None, None]
    u, v = dx * torch.cos(th) + dy * torch.sin(th), -dx * torch.sin(th) + dy * torch.cos(th)
    d_bar = torch.maximum(u.abs() - s, v.abs() - width[:, None, None, None])
    return torch.where(shape == SQUARE, d_square, torch.where(shape == DISC, d_disc, d_bar)), u, v


def shaded(color: torch.Tensor, shade: torch.Tensor) -> torch.Tensor:
    """Colour [B or 1, 3] times brightness [B, F, H, W] → [B, 3, F, H, W] clamped to [0, 1]."""
    return (color[:, :, None, None, None] * shade[:, None]).clamp(0, 1)


def front_disc(labels: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor, centers: torch.Tensor, radius: torch.Tensor,
               color: tuple[float, float, float], supersample: int, stripe: float, period: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage [B, F, H, W] and colour [B, 3, F, H, W] of object B (the front disc of ``CROSSING_DISCS``):
    centres [B, F, 2], radius [B], striped at ±``stripe`` brightness with ``period`` px."""
    dx, dy = offsets(xx, yy, centers)
    d = torch.sqrt(dx * dx + dy * dy) - radius[:, None, None, None]
    alpha = coverage(d, supersample) * (labels == CROSSING_DISCS)[:, None, None, None]
    shade = 1.0 + stripe * torch.sin(2 * math.pi * (dx - 0.5 * dy) / period)
    return alpha, shaded(torch.tensor(color, device=labels.device)[None], shade)


def pan_or_static(labels: torch.Tensor, static: torch.Tensor, stripes: torch.Tensor, checker: torch.Tensor,
                  dark: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """Background [B, 3, F, H, W]: between the colours dark and light [B, 3] by the stripes (``PAN_STRIPES``) or
    checker (``PAN_CHECKER``) pattern [B, F, H, W] for pans, ``static`` [B, 3, 1, H, W] for every other class."""
    pattern = torch.where((labels == PAN_STRIPES)[:, None, None, None], stripes, checker)
    panning = dark[:, :, None, None, None] + (light - dark)[:, :, None, None, None] * pattern[:, None]
    pans = ((labels == PAN_STRIPES) | (labels == PAN_CHECKER))[:, None, None, None, None]
    return torch.where(pans, panning, static.expand_as(panning))


def paint(img: torch.Tensor, layers: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Painter's order: each (coverage [B, F, H, W], colour [B, 3, F, H, W]) over img [B, 3, F, H, W]."""
    for alpha, color in layers:
        a = alpha[:, None]
        img = img * (1 - a) + color * a
    return img
