"""Procedural training videos for the model organism: seeded, vectorised, with their true motion.

Eight classes of 21-frame clips rendered at latent resolution (16×16 by default; x to the right, y down,
in latent pixels; pixel i covers [i, i+1)), anti-aliased by supersampling, then lifted to the 16-channel
"latent" space by a fixed seeded linear map (``lift``; ``to_rgb`` is its pseudo-inverse):

* linear motion of a textured shape over a static textured background (classes 0–3),
* a bar rotating about a fixed centre (4),
* two discs crossing, the blue one in front (occlusion, 5),
* a camera pan over a periodic texture (6, 7): the whole frame translates.

``render(labels, generator)`` returns ``Clips``: ``latents`` [B, 16, F, H, W], ``rgb`` [B, 3, F, H, W] in
[0, 1] and ``Motion``, the parameters the frames were drawn from (centres per frame, bar angle, pan
offset), so a generated clip can be measured against the renderer's own motion model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F_

from .render_common import (BAR, CROSSING_DISCS, DISC, NONE, ROTATING_BAR, SQUARE, CommonMotion, coverage,
                            crossing_disc, drawn_per_class, front_disc, offsets, paint, pan_or_static, pin_centres,
                            pixel_grid, shaded, shape_distance, start_inside, tracks, uniform)

__all__ = ["PROMPTS", "FRAMES", "SIZE", "CHANNELS", "COLORS", "Motion", "Clips", "render", "render_clip",
           "lift", "to_rgb", "latent_map", "sample_labels"]

PROMPTS: tuple[str, ...] = (
    "a red square moving right",
    "a blue disc moving left",
    "a green square falling",
    "a yellow disc drifting diagonally",
    "a white bar rotating",
    "two discs crossing with occlusion",
    "camera pans left over stripes",
    "camera pans right over a checkerboard",
)
FRAMES = 21        # latent frames of a clip
SIZE = 16          # latent height = width
CHANNELS = 16      # latent channels
SUPERSAMPLE = 4    # sub-pixels per latent pixel and axis (anti-aliasing)
LATENT_SEED = 16_021
LATENT_SCALE = 4.0  # latent = LATENT_SCALE · Q (2·rgb − 1), Q [16, 3] orthonormal: latent std ≈ 1

COLORS = {  # RGB in [0, 1] of the shapes
    "red": (0.92, 0.16, 0.12), "blue": (0.15, 0.35, 0.95), "green": (0.15, 0.85, 0.25),
    "yellow": (0.95, 0.85, 0.15), "white": (0.95, 0.95, 0.95),
}
# per class: shape of object A, its colour, whether the background pans
_SHAPE = (SQUARE, DISC, SQUARE, DISC, BAR, DISC, NONE, NONE)
_COLOR = ("red", "blue", "green", "yellow", "white", "red", "white", "white")


@dataclass
class Motion(CommonMotion):
    """Ground truth of a batch. Units: latent pixels, frames, radians.

    labels [B] class index into ``PROMPTS``; centers [B, 2, F, 2] (object A / B, frame, (x, y)), NaN where the
    object is absent; angle [B, F] orientation of the bar (class 4; NaN otherwise); pan [B, F, 2]
    displacement (x, y) of the background content since frame 0 (0 for static backgrounds); size [B, 2]
    half side / radius / bar half length of A, radius of B; omega [B] bar angular velocity (rad/frame).
    """

    @property
    def velocity(self) -> torch.Tensor:
        """[B, 2, 2] px/frame of objects A and B (their motion is linear in the frame index)."""
        return self.centers[:, :, 1] - self.centers[:, :, 0]


@dataclass
class Clips:
    """latents [B, 16, F, H, W] (float32), rgb [B, 3, F, H, W] in [0, 1], motion."""

    latents: torch.Tensor
    rgb: torch.Tensor
    motion: Motion


def latent_map(device: torch.device | str = "cpu") -> torch.Tensor:
    """The fixed lift [16, 3]: LATENT_SCALE times a seeded orthonormal basis of a 3-D subspace."""
    g = torch.Generator().manual_seed(LATENT_SEED)
    q, _ = torch.linalg.qr(torch.randn(CHANNELS, 3, generator=g, dtype=torch.float64))
    return (LATENT_SCALE * q).float().to(device)


def lift(rgb: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] in [0, 1] → latent [B, 16, F, H, W]."""
    return torch.einsum("lc,bcfhw->blfhw", latent_map(rgb.device), 2 * rgb - 1)


def to_rgb(latent: torch.Tensor) -> torch.Tensor:
    """Latent [..., 16, F, H, W] → RGB [..., 3, F, H, W] in [0, 1] (pseudo-inverse of ``lift``, clamped)."""
    pinv = torch.linalg.pinv(latent_map("cpu").double()).float().to(latent.device)
    return ((torch.einsum("cl,...lfhw->...cfhw", pinv, latent.float()) + 1) / 2).clamp(0, 1)


def sample_labels(n: int, generator: torch.Generator) -> torch.Tensor:
    """[n] class indices drawn uniformly (on the generator's device)."""
    return torch.randint(len(PROMPTS), (n,), generator=generator, device=generator.device)


def _params(labels: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-clip parameters [B] (frame 0 positions, velocities, sizes, texture), drawn for every class."""
    b, dev = labels.shape[0], labels.device
    n = FRAMES - 1
    p: dict[str, torch.Tensor] = {}
    cls = labels
    speed = uniform(g, b, 0.30, 0.45)
    sign = torch.where(torch.rand(b, generator=g, device=dev) < 0.5, -1.0, 1.0)
    sign2 = torch.where(torch.rand(b, generator=g, device=dev) < 0.5, -1.0, 1.0)
    diag = uniform(g, b, 0.20, 0.30)
    vx = torch.zeros(b, device=dev)
    vy = torch.zeros(b, device=dev)
    vx = torch.where(cls == 0, speed, vx)
    vx = torch.where(cls == 1, -speed, vx)
    vy = torch.where(cls == 2, speed, vy)
    vx = torch.where(cls == 3, sign * diag, vx)
    vy = torch.where(cls == 3, sign2 * diag, vy)
    vx = torch.where(cls == 5, speed, vx)
    size = drawn_per_class(g, cls, (1.6, 2.3), {ROTATING_BAR: (5.0, 6.2), CROSSING_DISCS: (1.9, 2.4)})
    # frame-0 centre chosen so the object stays inside the frame for all F frames
    x0, y0 = start_inside(g, SIZE, size + 0.5, n * vx, n * vy)
    x0, y0 = pin_centres(g, cls, x0, y0, {ROTATING_BAR: ((7.0, 9.0), (7.0, 9.0)),
                                          CROSSING_DISCS: ((2.5, 3.5), (5.0, 11.0))})
    p.update(x0=x0, y0=y0, vx=vx, vy=vy, size=size)
    p["width"] = uniform(g, b, 0.9, 1.2)                              # bar half width
    p["theta0"] = uniform(g, b, 0.0, math.pi)
    p["omega"] = torch.where(cls == 4, sign * uniform(g, b, 0.06, 0.12), torch.zeros(b, device=dev))
    # object B (class 5): blue disc moving left, in front, at about the same height
    p.update(crossing_disc(g, y0, SIZE, radius=(1.9, 2.4), speed=(0.30, 0.45), start_x=(12.5, 13.5), dy=1.0,
                           margin=3.5))
    # pans (6: camera left → content moves right; 7: camera right → content moves left)
    pan_v = uniform(g, b, 0.30, 0.60)
    p["pan_vx"] = torch.where(cls == 6, pan_v, torch.where(cls == 7, -pan_v, torch.zeros(b, device=dev)))
    p["pan_vy"] = torch.where((cls == 6) | (cls == 7), uniform(g, b, -0.08, 0.08), torch.zeros(b, device=dev))
    p["stripe_angle"] = uniform(g, b, -math.pi / 3, math.pi / 3)   # stripe normal, never ⟂ the pan
    p["period"] = uniform(g, b, 4.0, 7.0)
    p["phase"] = uniform(g, b, 0.0, 2 * math.pi)
    p["texture"] = torch.rand(b, 3, 2, generator=g, device=dev)   # background colours / texture phases
    return p


def _grid(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel centres [Hs, 1] and [1, Ws] in latent pixels."""
    return pixel_grid(SIZE, SUPERSAMPLE, device)


def _motion(labels: torch.Tensor, p: dict[str, torch.Tensor]) -> Motion:
    f = torch.arange(FRAMES, device=labels.device, dtype=torch.float32)
    ax, ay = p["x0"][:, None] + p["vx"][:, None] * f, p["y0"][:, None] + p["vy"][:, None] * f
    centers, angle, size = tracks(labels, p, f, ax, ay, has_a=(labels <= 5)[:, None])
    pan = torch.stack([p["pan_vx"][:, None] * f, p["pan_vy"][:, None] * f], -1)
    return Motion(labels=labels, centers=centers, angle=angle, pan=pan, size=size, omega=p["omega"])


def _background(labels: torch.Tensor, p: dict[str, torch.Tensor], motion: Motion) -> torch.Tensor:
    """[B, 3, F, Hs, Ws]: a static soft texture (classes 0–5) or a panning periodic one (6, 7)."""
    yy, xx = _grid(labels.device)
    tex = p["texture"]                                                        # [B, 3, 2]
    # static: dim, slightly tinted sum of two slow waves
    w = 2 * math.pi / 11.0
    static = (0.5 + 0.25 * torch.sin(w * xx + 6.3 * tex[:, 0, 0, None, None])
              * torch.cos(0.8 * w * yy + 6.3 * tex[:, 0, 1, None, None]))    # [B, Hs, Ws]
    tint = 0.18 + 0.14 * tex[:, :, 0]                                         # [B, 3]
    static = static[:, None, None] * tint[:, :, None, None, None] * 1.6      # [B, 3, 1, Hs, Ws]
    # panning: content at (x, y) in frame f is the texture at (x − pan_x, y − pan_y)
    px = xx[None, None] - motion.pan[:, :, 0, None, None]                    # [B, F, Hs, Ws]
    py = yy[None, None] - motion.pan[:, :, 1, None, None]
    k = 2 * math.pi / p["period"][:, None, None, None]
    ca, sa = torch.cos(p["stripe_angle"])[:, None, None, None], torch.sin(p["stripe_angle"])[:, None, None, None]
    stripes = 0.5 + 0.5 * torch.sin(k * (ca * px + sa * py) + p["phase"][:, None, None, None])
    kc = 0.6 * k                                                              # checker cells of 3.3–5.8 px
    checker = 0.5 + 0.5 * torch.tanh(3 * torch.sin(kc * px) * torch.sin(kc * py + p["phase"][:, None, None, None]))
    dark, light = 0.10 + 0.25 * tex[:, :, 1], 0.55 + 0.40 * tex[:, :, 0]      # [B, 3]
    return pan_or_static(labels, static, stripes, checker, dark, light)


def _object_a(labels: torch.Tensor, p: dict[str, torch.Tensor], motion: Motion) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage [B, F, Hs, Ws] and textured colour [B, 3, F, Hs, Ws] of the first object."""
    yy, xx = _grid(labels.device)
    dx, dy = offsets(xx, yy, motion.centers[:, 0])
    shape = torch.tensor(_SHAPE, device=labels.device)[labels][:, None, None, None]
    d, u, _ = shape_distance(shape, dx, dy, p["size"], p["width"], motion.angle)
    alpha = torch.where(shape == NONE, torch.zeros_like(d), coverage(d, SUPERSAMPLE))
    color = torch.tensor([COLORS[c] for c in _COLOR], device=labels.device)[labels]       # [B, 3]
    # texture carried by the object: stripes in the object's own frame, ±12 % brightness
    along = torch.where(shape == BAR, u, dx + 0.5 * dy)
    return alpha, shaded(color, 1.0 + 0.12 * torch.sin(2 * math.pi * along / 2.2))


def _object_b(labels: torch.Tensor, p: dict[str, torch.Tensor], motion: Motion) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage [B, F, Hs, Ws] and colour [B, 3, F, Hs, Ws] of the second (front) disc of class 5."""
    yy, xx = _grid(labels.device)
    return front_disc(labels, xx, yy, motion.centers[:, 1], p["b_radius"], COLORS["blue"], SUPERSAMPLE,
                      stripe=0.12, period=2.2)


def render(labels: torch.Tensor, generator: torch.Generator) -> Clips:
    """Render one clip per label (classes index ``PROMPTS``) on the generator's device. Deterministic in the seed."""
    labels = labels.to(generator.device).long()
    p = _params(labels, generator)
    motion = _motion(labels, p)
    img = paint(_background(labels, p, motion), (_object_a(labels, p, motion), _object_b(labels, p, motion)))
    b = labels.shape[0]
    rgb = F_.avg_pool2d(img.reshape(b, 3 * FRAMES, *img.shape[-2:]), SUPERSAMPLE)
    rgb = rgb.reshape(b, 3, FRAMES, SIZE, SIZE)
    return Clips(latents=lift(rgb), rgb=rgb, motion=motion)


def render_clip(label: int, seed: int) -> tuple[torch.Tensor, Motion]:
    """One clip on the CPU: latent [16, F, H, W] and its ``Motion`` (batch of one)."""
    clips = render(torch.tensor([label]), torch.Generator().manual_seed(seed))
    return clips.latents[0], clips.motion
