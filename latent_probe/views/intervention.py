"""What an intervention did to a run, read back from the run itself: one line of text and the steps it changed.

A run recorded under ``LatentProbe(..., intervene=FrameTruncation(...))`` carries the intervention's
description in its ``intervention`` attribute. Which steps it changed follows from that and the run's own
step table: ``until=k`` changes the steps with index < k (0-based, per generation); ``until="boundary"`` changes
the steps of the high-noise expert, which in every two-expert family supported (Wan2.2 A14B, diffusers'
Wan 2.2 pipelines) runs the leading steps (t ≥ boundary): the first run of the first expert.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..metrics.phases import expert_phases
from .safe_text import terminal

__all__ = ["intervention_of", "changed_steps", "describe_intervention"]


def intervention_of(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's intervention description (a dict with ``kind``), or None for a plain run."""
    value = attrs.get("intervention")
    return value if isinstance(value, dict) and value.get("kind") else None


def changed_steps(attrs: Mapping[str, Any], experts: Sequence[str]) -> np.ndarray:
    """[S] bool: True at the steps whose DiT calls the intervention changed (all False for a plain run).

    For frame truncation those steps' non-key frames are interpolated fills: their continuity metrics
    describe the fill, not the model.
    """
    mask = np.zeros(len(experts), dtype=bool)
    iv = intervention_of(attrs)
    if iv is None or iv.get("kind") != "frame_truncation":
        return mask
    until = iv.get("until")
    if until == "boundary":
        phases = expert_phases([str(e) for e in experts])
        if len(phases) > 1:
            mask[phases[0].start:phases[0].stop] = True
    elif isinstance(until, (int, np.integer)) and not isinstance(until, bool):
        mask[: max(0, min(int(until), len(experts)))] = True
    return mask


def _steps_text(mask: np.ndarray) -> str:
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return "no step"
    if idx[-1] - idx[0] + 1 == idx.size:
        return f"steps {idx[0]}–{idx[-1]}" if idx.size > 1 else f"step {idx[0]}"
    return "steps " + ", ".join(str(i) for i in idx)


def describe_intervention(attrs: Mapping[str, Any], experts: Sequence[str]) -> str:
    """One line (control characters escaped), e.g. "frame truncation: 3 key frames, until boundary, linear
    fill, true time positions — changed steps 0–8 (their non-key frames are fills)"; "" for a plain run."""
    iv = intervention_of(attrs)
    if iv is None:
        return ""
    if iv.get("kind") != "frame_truncation":
        return terminal(f"intervention {iv.get('kind')}: {iv}")
    keys = f"key frames {iv['keyframes']}" if iv.get("keyframes") is not None else f"{iv.get('keep')} key frames"
    positions = iv.get("positions", "compressed")  # runs from before the option had compressed positions
    mask = changed_steps(attrs, experts)
    return terminal(f"frame truncation: {keys}, until {iv.get('until')}, {iv.get('fill')} fill, {positions} time "
                    f"positions — changed {_steps_text(mask)} of {len(mask)} (their non-key frames are fills)")
