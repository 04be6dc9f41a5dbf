"""Measures that tell a broken organism clip from a merely different one (issue 19, item 1).

PSNR against the baseline cannot: two valid clips of one prompt differ by as much as a broken one. These
measures look at what the clip is supposed to show. Clips are RGB [3, F, H, W] in [0, 1] (``videos.to_rgb``
of a latent), one clip at a time; units are latent pixels, frames, radians.

* ``motion_error(clip, reference, label)`` — |velocity(clip) − velocity(reference)|, px/frame (the bar's
  angular velocity as its tip speed, × ``BAR_TIP_PX``): does the clip move as its baseline does?
* ``motion_truth_error(clip, motion, b)`` — the same against the renderer's true velocity (training clips:
  the estimator's own floor).
* ``motion_fidelity(clip, label)`` — the clip against the renderer's motion model: its own line-fit
  residual (px), visibility (fraction of frames the object is found), velocity.
* ``frame_flicker(clip)`` — temporal flicker proper: RMS second difference of per-frame mean colour, and of
  the tracked object's path (jitter, px); constant-velocity motion scores 0 (adjacent L2 mixes motion in).
* ``key_filled_psnr(clip, reference, keys)`` — PSNR on the key frames and on the filled ones.
* ``frechet_distance(a, b)`` — Fréchet distance of Gaussians fitted to feature rows [N, D], [M, D].
* ``motion_features`` / ``PcaBasis`` — feature rows for it: motion parameters, or latent (RGB) PCA scores.
* ``psnr`` / ``ssim`` — kept, to be read next to their floors (``pair_floor``: all pairs within groups).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import LatentProbeError
from . import quality, videos

__all__ = ["FidelityInputError", "BAR_TIP_PX", "psnr", "ssim", "velocity", "motion_error", "motion_truth_error", "motion_fidelity",
           "frame_flicker", "key_filled_psnr", "frechet_distance", "motion_features", "PcaBasis",
           "nearest_feature_distance", "pair_floor", "score_clip"]

class FidelityInputError(LatentProbeError, ValueError):
    """Features a distance cannot be computed from (shapes, too few rows, non-finite values)."""


BAR_TIP_PX = 5.6   # mean half length of the rotating bar (renderer: 5.0–6.2 px): ω rad/frame → px/frame


def psnr(clip: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR (dB, data range 1) of two RGB clips [3, F, H, W]; inf when identical."""
    mse = float(((clip.double() - reference.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(clip: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over frames of ``skimage.metrics.structural_similarity`` (7×7 window, RGB, data range 1)."""
    from skimage.metrics import structural_similarity

    a = clip.double().permute(1, 2, 3, 0).numpy()
    b = reference.double().permute(1, 2, 3, 0).numpy()
    return float(np.mean([structural_similarity(a[f], b[f], channel_axis=-1, data_range=1.0, win_size=7)
                          for f in range(a.shape[0])]))


def velocity(clip: torch.Tensor, label: int) -> np.ndarray:
    """The clip's motion as a 2-vector, px/frame: the object's (vx, vy) (classes 0–3, 5), the bar's tip speed
    (ω · BAR_TIP_PX, 0) (4), the pan's (vx, 0) (6, 7). NaN when the object is not found in ≥ 2 frames."""
    m = quality.object_motion(clip, label)
    if label == 4:
        return np.array([m["omega"] * BAR_TIP_PX, 0.0])
    if label in (6, 7):
        return np.array([m["vx"], 0.0])
    return np.array([m["vx"], m["vy"]])


def motion_error(clip: torch.Tensor, reference: torch.Tensor, label: int) -> float:
    """|velocity(clip) − velocity(reference)| (Euclidean, px/frame); NaN if either clip lost its object."""
    return float(np.linalg.norm(velocity(clip, label) - velocity(reference, label)))


def motion_truth_error(clip: torch.Tensor, motion: videos.Motion, b: int) -> float:
    """|velocity(clip) − the renderer's true velocity of clip ``b`` of ``motion``| (px/frame)."""
    label = int(motion.labels[b])
    if label == 4:
        truth = np.array([float(motion.omega[b]) * BAR_TIP_PX, 0.0])
    elif label in (6, 7):
        truth = np.array([float(motion.pan[b, 1, 0] - motion.pan[b, 0, 0]), 0.0])
    elif label == 5:
        truth = (motion.velocity[b, 1]).double().numpy()                # the tracked front (blue) disc
    else:
        truth = (motion.velocity[b, 0]).double().numpy()
    return float(np.linalg.norm(velocity(clip, label) - truth))


def motion_fidelity(clip: torch.Tensor, label: int) -> dict[str, float]:
    """The clip against the renderer's motion model (linear motion, object always visible).

    ``residual`` — RMS distance of the path from its best line (px; rad × BAR_TIP_PX for the bar; for pans the
    frame-to-frame spread of vx, px/frame); ``visible`` — fraction of frames the object was found (1 for the
    bar and pans); ``speed`` — |velocity| px/frame.
    """
    m = quality.object_motion(clip, label)
    if label == 4:
        residual, visible = m["residual_rad"] * BAR_TIP_PX, 1.0
    elif label in (6, 7):
        residual, visible = m["vx_std"], 1.0
    else:
        residual, visible = m["residual_px"], m["visible"]
    return {"residual": float(residual), "visible": float(visible),
            "speed": float(np.linalg.norm(velocity(clip, label)))}


def frame_flicker(clip: torch.Tensor, label: int | None = None) -> dict[str, float]:
    """Second differences in time (a constant-velocity clip scores 0 on both).

    ``brightness`` — RMS over frames f = 1 … F−2 and channels of m[f+1] − 2 m[f] + m[f−1], m = the frame's
    mean colour [F, 3]; ``jitter`` — RMS norm of the same second difference of the tracked object's path
    (px; classes 0–3 and 5; NaN otherwise or when it is lost).
    """
    m = clip.double().mean((2, 3)).T                                      # [F, 3]
    d2 = m[2:] - 2 * m[1:-1] + m[:-2]
    out = {"brightness": float(d2.pow(2).mean().sqrt()), "jitter": math.nan}
    if label in (0, 1, 2, 3, 5):
        track, _ = quality.color_track(clip, "blue" if label == 5 else videos._COLOR[label])
        t = track.double()
        j = t[2:] - 2 * t[1:-1] + t[:-2]
        ok = torch.isfinite(j).all(-1)
        if ok.any():
            out["jitter"] = float(j[ok].pow(2).sum(-1).mean().sqrt())
    return out


def key_filled_psnr(clip: torch.Tensor, reference: torch.Tensor, keys: Sequence[int]) -> dict[str, float]:
    """PSNR (dB) of the key frames and of the other (filled) frames against ``reference`` [3, F, H, W]."""
    f = clip.shape[1]
    key = sorted({k % f for k in keys})
    filled = [i for i in range(f) if i not in key]
    return {"key_psnr": psnr(clip[:, key], reference[:, key]),
            "filled_psnr": psnr(clip[:, filled], reference[:, filled]) if filled else math.nan}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to rows a [N, D] and b [M, D] (N, M ≥ 2):
    ‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½), covariances with N − 1; float64, the square root via
    ``scipy.linalg.sqrtm`` (imaginary round-off dropped). Units: the features' squared."""
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise FidelityInputError(f"frechet_distance needs [N, D] and [M, D] with N, M ≥ 2, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise FidelityInputError("frechet_distance got non-finite features (drop clips whose object was lost first)")
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(sa @ sb)
    root = np.real(root)
    return float(max(mu @ mu + np.trace(sa + sb - 2 * root), 0.0))


def motion_features(clip: torch.Tensor, label: int) -> np.ndarray:
    """[3] motion parameters of a clip for distribution distances: velocity (2, px/frame) and residual (px)."""
    return np.concatenate([velocity(clip, label), [motion_fidelity(clip, label)["residual"]]])


@dataclass(frozen=True)
class PcaBasis:
    """Principal axes of training clips' pixels: mean [D], components [K, D] (D = 3·F·h·w of a 4×-pooled clip)."""

    mean: np.ndarray
    components: np.ndarray

    @staticmethod
    def pooled(clips: torch.Tensor) -> np.ndarray:
        """[N, 3, F, H, W] → [N, D] rows: 4×4 spatial average pooling (low-frequency content)."""
        x = torch.nn.functional.avg_pool3d(clips.double(), (1, 4, 4))
        return x.flatten(1).numpy()

    @classmethod
    def fit(cls, clips: torch.Tensor, k: int = 8) -> "PcaBasis":
        x = cls.pooled(clips)
        mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        return cls(mean, vt[:k])

    def scores(self, clips: torch.Tensor) -> np.ndarray:
        """[N, K] coordinates of clips [N, 3, F, H, W] on the components."""
        return (self.pooled(clips) - self.mean) @ self.components.T


def nearest_feature_distance(rows: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """[N] Euclidean distance of each row [N, D] to its nearest row of ``pool`` [M, D] (float64)."""
    a, b = np.asarray(rows, dtype=np.float64), np.asarray(pool, dtype=np.float64)
    return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1).min(1))


def pair_floor(clips: Sequence[torch.Tensor], groups: Sequence[int],
               measure: Callable[[torch.Tensor, torch.Tensor], float]) -> np.ndarray:
    """``measure(a, b)`` over every unordered pair of clips in the same group (e.g. prompt): what two
    valid, different clips score. Returns the values [n_pairs]."""
    out = []
    for i, j in itertools.combinations(range(len(clips)), 2):
        if groups[i] == groups[j]:
            out.append(measure(clips[i], clips[j]))
    return np.asarray(out, dtype=np.float64)


def score_clip(clip: torch.Tensor, reference: torch.Tensor, label: int,
               keys: Sequence[int] | None = None) -> dict[str, float]:
    """Every per-clip measure of one generated clip against its reference (same seed's baseline), both RGB
    [3, F, H, W]: ``psnr`` (dB), ``ssim``, ``motion_error`` (px/frame), the clip's own ``residual`` (px),
    ``visible``, ``speed`` (px/frame), ``flicker`` (brightness, second differences) and ``jitter`` (px), and
    with ``keys`` the ``key_psnr`` / ``filled_psnr`` (dB)."""
    fid = motion_fidelity(clip, label)
    fl = frame_flicker(clip, label)
    out = {"psnr": psnr(clip, reference), "ssim": ssim(clip, reference),
           "motion_error": motion_error(clip, reference, label), **fid,
           "flicker": fl["brightness"], "jitter": fl["jitter"]}
    if keys is not None:
        out.update(key_filled_psnr(clip, reference, keys))
    return out
