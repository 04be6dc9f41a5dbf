"""Offline feasibility of frame truncation from a baseline run.

For every recorded step, rebuild a latent quantity (x̂₀ by default) of all F frames from its K key frames
by the same interpolation ``FrameTruncation`` uses, and compare with the real one:

    rel_l2  = ‖x̂₀_interp − x̂₀‖ / ‖x̂₀‖      (over C, F, H, W; averaged over the batch)
    cosine  = ⟨x̂₀_interp, x̂₀⟩ / (‖x̂₀_interp‖ ‖x̂₀‖)
    frame_rel_l2[s, f] = the same ratio for frame f alone (0 at key frames)

Streams one step at a time from ``run.latents(space)`` (memory: a few copies of one step in float64).
The interpolation is computed in float64 from the stored values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..frames import FILLS, default_keyframes, interpolate_frames, resolve_keyframes
from .formulas import cosine_from_sums, relative_l2
from .reductions import diff_norms

__all__ = ["FeasibilityResult", "truncation_feasibility", "frame_errors", "integrated_error", "weighted_error"]


@dataclass
class FeasibilityResult:
    """Per-step interpolation error of a run's latents from K key frames. Arrays have length S."""

    space: str
    fill: str
    keys: list[int]
    num_frames: int
    step_index: np.ndarray
    timestep: np.ndarray
    sigma: np.ndarray
    expert: np.ndarray
    rel_l2: np.ndarray
    cosine: np.ndarray
    frame_rel_l2: np.ndarray  # [S, F]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(self.rel_l2.shape[0])

    def leading_steps_below(self, threshold: float) -> int:
        """How many steps from the first have rel_l2 ≤ threshold without interruption."""
        bad = np.flatnonzero(~(self.rel_l2 <= threshold))
        return int(bad[0]) if bad.size else self.num_steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (lists), for dashboards and ``--json``."""
        out: dict[str, Any] = {"space": self.space, "fill": self.fill, "keys": list(self.keys),
                               "num_frames": self.num_frames}
        for name in ("step_index", "timestep", "sigma", "rel_l2", "cosine", "frame_rel_l2"):
            out[name] = np.asarray(getattr(self, name)).tolist()
        out["expert"] = [str(e) for e in self.expert]
        return out


def frame_errors(x: torch.Tensor, keys: Sequence[int], fill: str) -> tuple[float, float, np.ndarray]:
    """(rel_l2, cosine, per-frame rel_l2 [F]) of one step x [B, C, F, H, W] (float64), batch-averaged.

    The same float64 sums (``reductions.diff_norms``) and formulas (``formulas.relative_l2``,
    ``cosine_from_sums``) as every other metric; ‖interp − x‖ is summed directly, never by cancellation.
    """
    num_frames = x.shape[-3]
    idx = torch.as_tensor(list(keys), dtype=torch.long)
    interp = interpolate_frames(x.index_select(-3, idx), keys, num_frames, fill)
    r = diff_norms(interp, x, "b c f h w", dot=True)  # per [B, F]: sq_a = ‖interp_f‖², sq_b = ‖x_f‖², dd, dot
    total = {k: v.sum(-1) for k, v in r.items()}
    rel = relative_l2(total["dd"], total["sq_b"])
    cos = cosine_from_sums(total["sq_a"], total["sq_b"], total["dd"], total["dot"])
    frame_rel = relative_l2(r["dd"], r["sq_b"]).mean(0)
    return float(rel.mean()), float(cos.mean()), frame_rel.numpy()


def truncation_feasibility(run: Any, keep: int = 3, *, keyframes: Sequence[int] | None = None, space: str = "x0",
                           fill: str = "linear") -> FeasibilityResult:
    """Per-step error of rebuilding ``run.latents(space)`` from K key frames (see module docstring).

    ``run`` is a :class:`latent_probe.Run` (latents [S, B, C, F, H, W]); ``keep`` / ``keyframes`` choose the
    key frames as ``FrameTruncation`` does.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    view = run.latents(space)
    if len(run.latent_steps) != run.num_steps:
        raise ValueError(f"truncation feasibility needs every step's latents; this run stored {space!r} at "
                         f"{len(run.latent_steps)} of {run.num_steps} steps (latent_steps=)")
    num_frames = int(view.shape[-3])
    keys = resolve_keyframes(keyframes, num_frames) if keyframes is not None else default_keyframes(num_frames, keep)
    rel, cos, per_frame = [], [], []
    for step in view:
        x = torch.from_numpy(np.asarray(step, dtype=np.float64))
        r, c, f = frame_errors(x, keys, fill)
        rel.append(r)
        cos.append(c)
        per_frame.append(f)
    s = len(rel)
    return FeasibilityResult(
        space=space, fill=fill, keys=keys, num_frames=num_frames,
        step_index=np.asarray(run.step_indices[:s]), timestep=np.asarray(run.timesteps[:s]),
        sigma=np.asarray(run.sigmas[:s]), expert=np.asarray(run.experts[:s], dtype=object),
        rel_l2=np.asarray(rel, dtype=np.float64), cosine=np.asarray(cos, dtype=np.float64),
        frame_rel_l2=np.asarray(per_frame, dtype=np.float64).reshape(s, num_frames),
        attrs={"boundary_timestep": run.attrs.get("boundary_timestep")},
    )


def integrated_error(rel_l2: Any, sigmas: Any, until: int) -> float:
    """The offline error integrated over the truncated steps in σ: Σ_{s < until} rel_l2[s] · (σ_s − σ_{s+1}).

    ``rel_l2`` [S] per-step interpolation error (``FeasibilityResult.rel_l2``), ``sigmas`` [S] or [S + 1]
    (σ in [0, 1], decreasing; a final 0 is appended when S values are given). A flow step moves the latent by
    (σ_{s+1} − σ_s)·v, so an error in the prediction at step s reaches the sample scaled by the step's Δσ:
    unlike the mean over truncated steps, this grows with ``until`` and weighs large steps more.
    """
    err = np.asarray(rel_l2, dtype=np.float64)
    sig = np.asarray(sigmas, dtype=np.float64)
    if sig.size == err.size:
        sig = np.append(sig, 0.0)
    if sig.size != err.size + 1 or not 0 <= until <= err.size:
        raise ValueError(f"integrated_error needs S errors, S or S + 1 sigmas and 0 ≤ until ≤ S; got {err.size}, "
                         f"{sig.size}, {until}")
    return float((err[:until] * (sig[:until] - sig[1:until + 1])).sum())


def weighted_error(errors: Any, sensitivity: Any, until: int) -> Any:
    """The offline error weighted by a measured step sensitivity: Σ_{s < until} sensitivity[s] · errors[..., s].

    ``errors`` [S] or [B, S] per-step relative error in one space (x̂₀ or the prediction); ``sensitivity`` [S] the
    final sample's relative change per unit relative perturbation at each step, in the same space
    (``interventions.sensitivity.step_sensitivity``). To first order (errors adding without cancelling) the
    final sample's relative change under truncation until ``until``. Steps a sweep did not measure may be
    NaN beyond ``until`` (refused before it). Float64; a float for [S], an array for [B, S].
    """
    err = np.asarray(errors, dtype=np.float64)
    sens = np.asarray(sensitivity, dtype=np.float64)
    if sens.ndim != 1 or err.shape[-1] != sens.size:
        raise ValueError(f"weighted_error needs errors [..., S] and S sensitivities; got {err.shape}, {sens.shape}")
    if not 0 <= until <= sens.size:
        raise ValueError(f"weighted_error needs 0 ≤ until ≤ S = {sens.size}; got {until}")
    if not np.isfinite(sens[:until]).all():
        raise ValueError(f"weighted_error: no finite sensitivity measured at steps "
                         f"{np.flatnonzero(~np.isfinite(sens[:until])).tolist()} (< until = {until})")
    out = (err[..., :until] * sens[:until]).sum(-1)
    return float(out) if out.ndim == 0 else out
