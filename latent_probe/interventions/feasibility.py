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

from .interpolation import FILLS, default_keyframes, interpolate_frames, resolve_keyframes

__all__ = ["FeasibilityResult", "truncation_feasibility", "format_feasibility", "frame_errors"]


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
    """(rel_l2, cosine, per-frame rel_l2 [F]) of one step x [B, C, F, H, W] (float64), batch-averaged."""
    num_frames = x.shape[-3]
    idx = torch.as_tensor(list(keys), dtype=torch.long)
    interp = interpolate_frames(x.index_select(-3, idx), keys, num_frames, fill)
    diff = interp - x
    b = x.shape[0]
    d2 = diff.reshape(b, -1).pow(2).sum(1)
    x2 = x.reshape(b, -1).pow(2).sum(1)
    i2 = interp.reshape(b, -1).pow(2).sum(1)
    dot = (interp * x).reshape(b, -1).sum(1)
    rel = _ratio(d2.sqrt(), x2.sqrt())
    cos = torch.where((x2 > 0) & (i2 > 0), dot / (x2.sqrt() * i2.sqrt()).clamp_min(1e-300),
                      torch.full_like(dot, float("nan")))
    fd2 = diff.pow(2).sum(dim=(1, 3, 4))  # [B, F]
    fx2 = x.pow(2).sum(dim=(1, 3, 4))
    frame_rel = _ratio(fd2.sqrt(), fx2.sqrt()).mean(0)
    return float(rel.mean()), float(cos.mean()), frame_rel.numpy()


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, with 0/0 = 0 and x/0 = inf."""
    zero = den == 0
    out = num / torch.where(zero, torch.ones_like(den), den)
    return torch.where(zero, torch.where(num == 0, torch.zeros_like(num), torch.full_like(num, float("inf"))), out)


def truncation_feasibility(run: Any, keep: int = 3, *, keyframes: Sequence[int] | None = None, space: str = "x0",
                           fill: str = "linear") -> FeasibilityResult:
    """Per-step error of rebuilding ``run.latents(space)`` from K key frames (see module docstring).

    ``run`` is a :class:`latent_probe.Run` (latents [S, B, C, F, H, W]); ``keep`` / ``keyframes`` choose the
    key frames as ``FrameTruncation`` does.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    view = run.latents(space)
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


def format_feasibility(result: FeasibilityResult, threshold: float | None = 0.1) -> str:
    """A text table (one row per step) and a summary, for ``latent-probe truncation``; expert names are
    printed with control characters escaped."""
    from ..views.safe_text import terminal

    r = result
    lines = [f"frame truncation feasibility: {r.space} of all {r.num_frames} latent frames rebuilt from "
             f"{len(r.keys)} key frames {r.keys} ({r.fill} fill)",
             "  rel L2 = |interp - real| / |real|; cos = cosine(interp, real); worst = largest per-frame rel L2",
             "",
             f"{'step':>5} {'t':>8} {'sigma':>7} {'expert':<18} {'rel L2':>8} {'cos':>9} {'worst':>8}  "]
    scale = max(float(np.nanmax(r.rel_l2)) if r.num_steps else 0.0, 1e-12)
    for i in range(r.num_steps):
        worst = float(np.max(r.frame_rel_l2[i])) if r.num_frames else 0.0
        bar = "#" * int(round(20 * min(r.rel_l2[i] / scale, 1.0))) if np.isfinite(r.rel_l2[i]) else "?"
        expert = terminal(r.expert[i])[:18]
        lines.append(f"{int(r.step_index[i]):>5} {r.timestep[i]:>8.1f} {r.sigma[i]:>7.4f} {expert:<18} "
                     f"{r.rel_l2[i]:>8.4f} {r.cosine[i]:>9.6f} {worst:>8.4f}  {bar}")
    lines.append("")
    for name in dict.fromkeys(str(e) for e in r.expert):
        sel = np.asarray([str(e) == name for e in r.expert])
        lines.append(f"{terminal(name)}: {int(sel.sum())} steps, mean rel L2 {np.mean(r.rel_l2[sel]):.4f}, "
                     f"mean cos {np.mean(r.cosine[sel]):.6f}")
    if threshold is not None:
        n = r.leading_steps_below(threshold)
        lines.append(f"rel L2 <= {threshold:g} for the first {n} of {r.num_steps} steps"
                     + (f" (through step {int(r.step_index[n - 1])})" if n else ""))
    return "\n".join(lines)
