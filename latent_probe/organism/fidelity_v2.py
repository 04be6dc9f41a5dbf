"""Per-clip measures for organism v2 generations: broken or merely different (issue 19 on v2).

Clips are decoded RGB [3, F, H, W] in [0, 1] (``OrganismV2.decode``; 81 frames, 64×64). The motion model is
``motion_v2``'s: ``measure`` gives a class's statistics, ``check`` says whether they follow the renderer's
motion model. Here:

* ``judge(clip, label)`` — statistics, pass (every ``check`` key true) and the keys that failed.
* ``stat_errors(stats, ref, label)`` — |statistic − the reference clip's| per motion-model key (its units:
  px/frame, rad/frame, frames, px/frame²).
* ``motion_error(stats, ref, label)`` — one dimensionless number: RMS over the class's motion-model keys
  (``motion_v2.MODEL[label]``) of |Δ| / ``motion_v2.TOLERANCE`` of the key (1 = one tolerance off); NaN
  when a statistic is undefined in either clip (object lost).
* ``frame_flicker(clip, label)`` — RMS second difference in time of the frame's mean colour (``brightness``)
  and of the tracked object's path (``jitter``, px; classes with a constant-velocity object); both 0 for a
  clip that moves at constant velocity under constant light.
* ``nearest_latent_distance(z, pool)`` — RMS distance of each latent to its nearest latent in a pool.
* ``score_clip(clip, reference, label)`` — all of the above against the same seed's baseline clip, plus
  PSNR / SSIM (``fidelity.psnr`` / ``fidelity.ssim``), to be read next to their floors.
"""

from __future__ import annotations

import math

import torch

from . import fidelity, motion_v2
from . import videos_v2 as v2

__all__ = ["JITTER_CLASSES", "judge", "stat_errors", "motion_error", "frame_flicker", "nearest_latent_distance",
           "score_clip"]

JITTER_CLASSES = (0, 1, 2, 3, 5, 8)   # an object moving at constant velocity (8: standing still while visible)


def judge(clip: torch.Tensor, label: int) -> dict:
    """``{"stats": motion_v2.measure, "pass": all keys of motion_v2.check, "failed": [keys]}``."""
    stats = motion_v2.measure(clip, label)
    verdict = motion_v2.check(stats, label)
    return {"stats": stats, "pass": all(verdict.values()), "failed": [k for k, ok in verdict.items() if not ok]}


def _keys(label: int) -> list[str]:
    return list(motion_v2.MODEL[int(label)])


def stat_errors(stats: dict[str, float], ref: dict[str, float], label: int) -> dict[str, float]:
    """|stats[k] − ref[k]| for every key k of the class's motion model (NaN where either is missing/NaN)."""
    return {k: abs(stats.get(k, math.nan) - ref.get(k, math.nan)) for k in _keys(label)}


def motion_error(stats: dict[str, float], ref: dict[str, float], label: int) -> float:
    """sqrt(mean over the class's motion-model keys of (|Δk| / TOLERANCE[k])²), dimensionless; NaN if any Δ is."""
    err = stat_errors(stats, ref, label)
    z = [e / motion_v2.TOLERANCE[motion_v2._TOL_KEY[k]] for k, e in err.items()]
    return math.nan if not all(math.isfinite(x) for x in z) else math.sqrt(sum(x * x for x in z) / len(z))


def frame_flicker(clip: torch.Tensor, label: int) -> dict[str, float]:
    """``brightness``: RMS over f = 1 … F−2 and channels of m[f+1] − 2 m[f] + m[f−1] (m: frame mean colour);
    ``jitter``: RMS norm of the same second difference of the tracked object's centroid (px) over frames where
    it is found (classes ``JITTER_CLASSES``; NaN otherwise or when it is never found in 3 consecutive frames)."""
    out = {"brightness": fidelity.frame_flicker(clip, None)["brightness"], "jitter": math.nan}
    if int(label) in JITTER_CLASSES:
        color = "blue" if label == 5 else v2.CLASS_COLOR[int(label)]
        t, _ = motion_v2.color_track(clip, color)
        j = t[2:] - 2 * t[1:-1] + t[:-2]
        ok = torch.isfinite(j).all(-1)
        if ok.any():
            out["jitter"] = float(j[ok].pow(2).sum(-1).mean().sqrt())
    return out


def nearest_latent_distance(z: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """[N] RMS distance (per element) of each latent z [N, …] to its nearest latent in ``pool`` [M, …]
    (float64, computed on ``pool``'s device, returned on the CPU)."""
    a, b = z.flatten(1).to(pool.device).double(), pool.flatten(1).double()
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    return (d2.clamp(min=0).min(1).values / a.shape[1]).sqrt().cpu()


def score_clip(clip: torch.Tensor, reference: torch.Tensor, label: int,
               ref_stats: dict[str, float] | None = None) -> dict[str, float]:
    """Every per-clip measure of a generated clip against its reference (same seed's baseline), RGB
    [3, F, H, W]: ``psnr`` (dB), ``ssim``, ``motion_pass`` (1/0), ``motion_error`` (tolerance units),
    ``err_<key>`` per motion-model key, the clip's own statistics as ``stat_<key>``, ``failed`` (the check keys
    that failed, ';'-joined), ``flicker`` and ``jitter``."""
    j = judge(clip, label)
    ref = ref_stats if ref_stats is not None else motion_v2.measure(reference, label)
    fl = frame_flicker(clip, label)
    out: dict = {"psnr": fidelity.psnr(clip, reference), "ssim": fidelity.ssim(clip, reference),
                 "motion_pass": float(j["pass"]), "motion_error": motion_error(j["stats"], ref, label),
                 "failed": ";".join(j["failed"]), "flicker": fl["brightness"], "jitter": fl["jitter"]}
    out.update({f"err_{k}": v for k, v in stat_errors(j["stats"], ref, label).items()})
    out.update({f"stat_{k}": v for k, v in j["stats"].items()})
    return out

