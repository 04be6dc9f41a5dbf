"""Procedural training videos for organism v2: 64×64 RGB pixels, 81 frames, ten classes, with their true motion.

Pixel space, not latent space: v2's latent comes from a learned causal VAE (``vae_v2``), so the renderer
draws what a camera would see. x to the right, y down, in pixels (pixel i covers [i, i+1)); time in video
frames (81 frames ↔ 21 latent frames of a 4×-in-time causal VAE). Edges are anti-aliased analytically
(coverage = clamp(½ − signed distance, 0, 1)), textures are band-limited (periods ≥ 4 px), so no
supersampling is needed.

Classes (``PROMPTS``): 0–3 linear motion of a textured shape over a static multi-frequency background;
4 a bar rotating clockwise about a fixed centre; 5 two discs crossing, the blue one in front; 6–7 a camera
pan over stripes / a checkerboard (the whole frame translates); 8 a disc that appears and later vanishes
(hard cuts at frames that need not fall on the VAE's 4-frame chunks); 9 a square accelerating from rest.

Against v1's wrong samples (see docs/organism.md "Organism v2"): every prompt now names one motion — v1's
diagonal class drew four directions and its bar both rotation senses, so one prompt meant several motions (a
data fix); pans are purely horizontal. Sizes in latent pixels (÷ 4) are v1's: bar half width 3.5–4.5 px,
checker cells 14–22 px, stripe periods 16–26 px, so whether the checkerboard comes out right is left to
capacity and training (the two DiT sizes tell those apart).

``render(labels, generator)`` → ``ClipsV2``: ``rgb`` [B, 3, F, H, W] in [0, 1] and ``MotionV2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import OrganismInputError
from .render_common import (BAR, CROSSING_DISCS, DISC, NONE, ROTATING_BAR, SQUARE, CommonMotion, coverage,
                            crossing_disc, drawn_per_class, front_disc, offsets, paint, pan_or_static, pin_centres,
                            pixel_grid, shaded, shape_distance, start_inside, tracks, uniform)

__all__ = ["PROMPTS", "FRAMES", "SIZE", "LATENT_FRAMES", "COLORS", "CLASS_COLOR", "MotionV2", "ClipsV2",
           "render", "render_clip", "sample_labels"]

PROMPTS: tuple[str, ...] = (
    "a red square moving right",
    "a blue disc moving left",
    "a green square falling",
    "a yellow disc drifting down and to the right",
    "a white bar rotating clockwise",
    "two discs crossing with occlusion",
    "camera pans left over stripes",
    "camera pans right over a checkerboard",
    "a cyan disc appears and then vanishes",
    "an orange square accelerating to the right",
)
FRAMES = 81          # video frames of a clip
LATENT_FRAMES = 21   # 1 + (FRAMES − 1) / 4 latent frames after a 4×-in-time causal VAE
SIZE = 64            # pixel height = width

COLORS = {  # RGB in [0, 1] of the shapes
    "red": (0.92, 0.16, 0.12), "blue": (0.15, 0.35, 0.95), "green": (0.15, 0.85, 0.25),
    "yellow": (0.95, 0.85, 0.15), "white": (0.95, 0.95, 0.95), "cyan": (0.15, 0.85, 0.92),
    "orange": (0.98, 0.55, 0.08),
}
_SHAPE = (SQUARE, DISC, SQUARE, DISC, BAR, DISC, NONE, NONE, DISC, SQUARE)
CLASS_COLOR = ("red", "blue", "green", "yellow", "white", "red", "white", "white", "cyan", "orange")
STATIC_BG_MAX = 0.42   # static backgrounds stay at or below this in every channel (objects stay trackable)


@dataclass
class MotionV2(CommonMotion):
    """Ground truth of a batch. Units: pixels, video frames, radians.

    labels [B]; centers [B, 2, F, 2] (object A / B, frame, (x, y)), NaN where the object is absent (class 8
    outside its window); angle [B, F] bar orientation (class 4, NaN otherwise; clockwise on screen = increasing,
    since y points down); pan [B, F, 2] displacement of the background content since frame 0; size [B, 2]
    half side / radius / bar half length of A, radius of B; omega [B] rad/frame; accel [B] px/frame² (class 9);
    appear, vanish [B] first visible frame and first frame gone again (class 8; −1 otherwise).
    """

    accel: torch.Tensor
    appear: torch.Tensor
    vanish: torch.Tensor

    @property
    def visible(self) -> torch.Tensor:
        """[B, F] whether object A is drawn in the frame."""
        return torch.isfinite(self.centers[:, 0, :, 0])


@dataclass
class ClipsV2:
    """rgb [B, 3, F, H, W] float32 in [0, 1] and the motion it was drawn from."""

    rgb: torch.Tensor
    motion: MotionV2


def sample_labels(n: int, generator: torch.Generator) -> torch.Tensor:
    """[n] class indices drawn uniformly (on the generator's device)."""
    return torch.randint(len(PROMPTS), (n,), generator=generator, device=generator.device)


def _params(labels: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-clip parameters [B], drawn for every class in one fixed order (the seed decides everything)."""
    b, dev, cls = labels.shape[0], labels.device, labels
    n = FRAMES - 1
    zero = torch.zeros(b, device=dev)
    speed = uniform(g, b, 0.30, 0.45)
    diag = uniform(g, b, 0.20, 0.30)
    p: dict[str, torch.Tensor] = {}
    vx = torch.where(cls == 0, speed, torch.where(cls == 1, -speed, torch.where(cls == 3, diag, zero)))
    vx = torch.where(cls == 5, speed, vx)
    vy = torch.where(cls == 2, speed, torch.where(cls == 3, diag, zero))
    size = drawn_per_class(g, cls, (6.4, 9.2), {ROTATING_BAR: (19.0, 23.0), CROSSING_DISCS: (7.6, 9.6),
                                                8: (7.0, 9.0), 9: (5.5, 7.0)})
    accel = torch.where(cls == 9, uniform(g, b, 0.008, 0.012), zero)
    x0, y0 = start_inside(g, SIZE, size + 1.0, n * vx + 0.5 * accel * n * n, n * vy)
    x0, y0 = pin_centres(g, cls, x0, y0, {ROTATING_BAR: ((29.0, 35.0), (29.0, 35.0)),
                                          CROSSING_DISCS: ((10.0, 14.0), (20.0, 44.0))})
    p.update(x0=x0, y0=y0, vx=vx, vy=vy, size=size, accel=accel)
    p["width"] = uniform(g, b, 3.5, 4.5)                               # bar half width (px): v1's ≈ 1 latent px
    p["theta0"] = uniform(g, b, 0.0, math.pi)
    p["omega"] = torch.where(cls == 4, uniform(g, b, 0.015, 0.030), zero)  # clockwise on screen (y down)
    p["appear"] = torch.where(cls == 8, torch.randint(16, 33, (b,), generator=g, device=dev).float(), zero - 1)
    p["vanish"] = torch.where(cls == 8, torch.randint(48, 65, (b,), generator=g, device=dev).float(), zero - 1)
    p.update(crossing_disc(g, y0, SIZE, radius=(7.6, 9.6), speed=(0.30, 0.45), start_x=(50.0, 54.0), dy=4.0,
                           margin=14.0))
    pan_v = uniform(g, b, 0.30, 0.60)
    p["pan_vx"] = torch.where(cls == 6, pan_v, torch.where(cls == 7, -pan_v, zero))
    p["stripe_angle"] = uniform(g, b, -math.pi / 4, math.pi / 4)     # stripe normal within 45° of x
    p["period"] = uniform(g, b, 16.0, 26.0)                           # stripes (px): 4–6.5 latent px
    p["cell"] = uniform(g, b, 14.0, 22.0)                             # checker cell side (px): 3.5–5.5 latent px
    p["phase"] = uniform(g, b, 0.0, 2 * math.pi)
    p["texture"] = torch.rand(b, 3, 2, generator=g, device=dev)       # colours
    p["waves"] = torch.rand(b, 6, 3, generator=g, device=dev)         # static background: angle, period, phase
    return p


def _motion(labels: torch.Tensor, p: dict[str, torch.Tensor]) -> MotionV2:
    dev = labels.device
    f = torch.arange(FRAMES, device=dev, dtype=torch.float32)
    ax = p["x0"][:, None] + p["vx"][:, None] * f + 0.5 * p["accel"][:, None] * f * f
    ay = p["y0"][:, None] + p["vy"][:, None] * f
    window = (f[None] >= p["appear"][:, None]) & (f[None] < p["vanish"][:, None])
    has_a = (_shape(labels) != NONE)[:, None] & ((labels != 8)[:, None] | window)
    centers, angle, size = tracks(labels, p, f, ax, ay, has_a)
    pan = torch.stack([p["pan_vx"][:, None] * f, torch.zeros(labels.shape[0], FRAMES, device=dev)], -1)
    return MotionV2(labels=labels, centers=centers, angle=angle, pan=pan, size=size, omega=p["omega"],
                    accel=p["accel"], appear=p["appear"].long(), vanish=p["vanish"].long())


def _shape(labels: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_SHAPE, device=labels.device)[labels]


def _grid(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres [H, 1] and [1, W] (no supersampling: coverage is analytic, exact for an axis-aligned edge)."""
    return pixel_grid(SIZE, 1, device)


def _background(labels: torch.Tensor, p: dict[str, torch.Tensor], motion: MotionV2) -> torch.Tensor:
    """[B, 3, F, H, W]: a static sum of six plane waves (classes 0–5, 8, 9) or a panning pattern (6, 7)."""
    yy, xx = _grid(labels.device)
    tex, waves = p["texture"], p["waves"]
    ang = math.pi * waves[:, :, 0, None, None]                                # [B, 6, 1, 1]
    per = 4.0 + 14.0 * waves[:, :, 1, None, None]                             # periods 4–18 px
    amp = 1.0 / (1.0 + torch.arange(6, device=labels.device))[None, :, None, None]
    phase = 2 * math.pi * waves[:, :, 2, None, None]
    field = (amp * torch.sin(2 * math.pi * (torch.cos(ang) * xx + torch.sin(ang) * yy) / per + phase)).sum(1)
    field = field / amp.sum()                                                 # [B, H, W] in [−1, 1]
    tint = 0.55 + 0.45 * tex[:, :, 0]                                         # [B, 3]
    static = (0.22 + 0.18 * field)[:, None, None] * tint[:, :, None, None, None]   # ≤ 0.40
    # panning: content at (x, y) in frame f is the pattern at (x − pan_x, y)
    px = (xx[None, None] - motion.pan[:, :, 0, None, None]).expand(-1, -1, SIZE, SIZE)   # [B, F, H, W]
    py = yy[None, None].expand_as(px)
    k = 2 * math.pi / p["period"][:, None, None, None]
    ca, sa = torch.cos(p["stripe_angle"])[:, None, None, None], torch.sin(p["stripe_angle"])[:, None, None, None]
    s = ca * px + sa * py
    ph = p["phase"][:, None, None, None]
    stripes = 0.5 + 0.35 * torch.sin(k * s + ph) + 0.15 * torch.sin(2.7 * k * s + 2 * ph)   # 1-D, two scales
    kc = math.pi / p["cell"][:, None, None, None]
    checker = 0.5 + 0.4 * torch.tanh(3 * torch.sin(kc * px + ph) * torch.sin(kc * py))
    grain = 0.1 * torch.sin(2 * math.pi * (px + 0.6 * py) / 5.0) * torch.sin(2 * math.pi * (py - 0.3 * px) / 6.5)
    checker = checker + grain
    dark, light = 0.10 + 0.20 * tex[:, :, 1], 0.60 + 0.35 * tex[:, :, 0]     # [B, 3]
    return pan_or_static(labels, static, stripes, checker, dark, light).clamp(0, 1)


def _object_a(labels: torch.Tensor, p: dict[str, torch.Tensor], motion: MotionV2
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage [B, F, H, W] and textured colour [B, 3, F, H, W] of the first object."""
    yy, xx = _grid(labels.device)
    dx, dy = offsets(xx, yy, motion.centers[:, 0])
    shape = _shape(labels)[:, None, None, None]
    d, u, v = shape_distance(shape, dx, dy, p["size"], p["width"], motion.angle)
    alpha = torch.where((shape == NONE) | ~motion.visible[:, :, None, None], torch.zeros_like(d), coverage(d, 1))
    color = torch.tensor([COLORS[c] for c in CLASS_COLOR], device=labels.device)[labels]
    # texture carried by the object: two stripe sets in its own frame, ±12 % brightness
    along = torch.where(shape == BAR, u, dx + 0.5 * dy)
    across = torch.where(shape == BAR, v, dy - 0.4 * dx)
    shade = 1.0 + 0.08 * torch.sin(2 * math.pi * along / 4.5) + 0.04 * torch.sin(2 * math.pi * across / 3.1)
    return alpha, shaded(color, shade)


def _object_b(labels: torch.Tensor, p: dict[str, torch.Tensor], motion: MotionV2
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage [B, F, H, W] and colour [B, 3, F, H, W] of the front (blue) disc of class 5."""
    yy, xx = _grid(labels.device)
    return front_disc(labels, xx, yy, motion.centers[:, 1], p["b_radius"], COLORS["blue"], 1, stripe=0.08, period=4.5)


def render(labels: torch.Tensor, generator: torch.Generator) -> ClipsV2:
    """One clip per label (indices into ``PROMPTS``) on the generator's device; deterministic in the seed."""
    labels = labels.to(generator.device).long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(PROMPTS)):
        raise OrganismInputError(f"organism v2 labels must be in 0..{len(PROMPTS) - 1}, got {labels.tolist()}")
    p = _params(labels, generator)
    motion = _motion(labels, p)
    img = paint(_background(labels, p, motion), (_object_a(labels, p, motion), _object_b(labels, p, motion)))
    return ClipsV2(rgb=img.contiguous(), motion=motion)


def render_clip(label: int, seed: int) -> tuple[torch.Tensor, MotionV2]:
    """One clip on the CPU: rgb [3, F, H, W] and its ``MotionV2`` (batch of one)."""
    clips = render(torch.tensor([label]), torch.Generator().manual_seed(seed))
    return clips.rgb[0], clips.motion
