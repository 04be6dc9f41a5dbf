"""Text reports of frame-truncation results: the feasibility table and the comparison summary.

Expert names and other recorded strings are printed with control characters escaped (``safe_text``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..metrics.feasibility import FeasibilityResult
from .safe_text import terminal

__all__ = ["format_feasibility", "format_comparison"]


def format_feasibility(result: FeasibilityResult, threshold: float | None = 0.1) -> str:
    """A text table (one row per step) and a summary, for ``latent-probe truncation``; expert names are
    printed with control characters escaped."""
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


def _saved(baseline_s: float, truncated_s: float) -> str:
    """"23.9% saved", or "slower by 23.9%" when the truncated run took longer (never a negative saving)."""
    if not baseline_s > 0:
        return "no baseline time"
    f = 1.0 - truncated_s / baseline_s
    return f"{100 * f:.1f}% saved" if f >= 0 else f"slower by {100 * -f:.1f}%"


def format_comparison(c: Any) -> str:
    """A short text report of a :class:`TruncationComparison`."""
    i = c.intervention
    what = f"keep {i['keep']}" if i.get("keyframes") is None else f"keyframes {i['keyframes']}"
    positions = i.get("positions", "compressed")  # runs from before the option had compressed positions
    lines = [f"frame truncation ({what}, until {i['until']}, {i['fill']} fill, {positions} time positions; "
             f"keys {c.keys})",
             f"  DiT calls          {c.dit_calls} ({c.truncated_calls} truncated)",
             f"  token-steps        {c.token_steps_run:,} of {c.token_steps_full:,} "
             f"({100 * c.token_steps_skipped_fraction:.1f}% skipped)",
             f"  DiT time           {c.dit_time_truncated_s:.3f} s vs {c.dit_time_baseline_s:.3f} s baseline "
             f"({_saved(c.dit_time_baseline_s, c.dit_time_truncated_s)})",
             f"  generation wall    {c.wall_truncated_s:.3f} s vs {c.wall_baseline_s:.3f} s baseline "
             f"({_saved(c.wall_baseline_s, c.wall_truncated_s)})"]
    if c.final_x0 is not None:
        lines.append(f"  final x0           rel L2 {c.final_x0['rel_l2']:.4f}, cos {c.final_x0['cosine']:.6f}")
    if c.output is not None:
        psnr = f", PSNR {c.output['psnr_db']:.2f} dB" if "psnr_db" in c.output else ""
        lines.append(f"  output             rel L2 {c.output['rel_l2']:.4f}, cos {c.output['cosine']:.6f}{psnr}")
    return "\n".join(lines)
