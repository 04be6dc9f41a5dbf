"""Early / middle / late step ranges, expert phases, and the statistics table of the original analysis."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["Phase", "phase_ranges", "expert_phases", "Summary", "summarize"]

PhaseSpec = str | Sequence[tuple[str, int, int]]


@dataclass(frozen=True)
class Phase:
    """Steps ``start`` (inclusive) to ``stop`` (exclusive), 0-based; printed 1-based inclusive."""

    name: str
    start: int
    stop: int

    @property
    def label(self) -> str:
        return f"{self.name} ({self.start + 1}-{self.stop})"

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def phase_ranges(num_steps: int, scheme: PhaseSpec = "thirds") -> list[Phase]:
    """Step ranges by scheme.

    ``"thirds"``: three near-equal contiguous ranges. ``"original"``: steps 1-5, 6-10, 11-20 of the original
    analysis (clipped to the run). A string like ``"1-5,6-10,11-40"`` (1-based, inclusive) or a sequence of
    (name, start, stop) 0-based ranges gives custom phases. Empty ranges are dropped.
    """
    S = int(num_steps)
    names = ("Early steps", "Middle steps", "Late steps")
    if isinstance(scheme, str):
        if scheme == "thirds":
            edges = [0, math.ceil(S / 3), math.ceil(2 * S / 3), S]
            spans = [(names[i], edges[i], edges[i + 1]) for i in range(3)]
        elif scheme == "original":
            spans = [(names[0], 0, 5), (names[1], 5, 10), (names[2], 10, 20)]
        else:
            spans = []
            parts = [p.strip() for p in scheme.split(",") if p.strip()]
            for i, part in enumerate(parts):
                try:
                    lo, hi = (int(v) for v in part.split("-"))
                except ValueError:
                    raise ValueError(f"phase {part!r}: expected FIRST-LAST (1-based steps), e.g. '1-5,6-10,11-20'")
                name = names[i] if len(parts) == 3 else f"Steps {lo}-{hi}"
                spans.append((name, lo - 1, hi))
    else:
        spans = [(str(n), int(a), int(b)) for n, a, b in scheme]
    out = []
    for name, a, b in spans:
        a, b = max(0, a), min(S, b)
        if b > a:
            out.append(Phase(name, a, b))
    return out


def expert_phases(experts: Sequence[str]) -> list[Phase]:
    """One phase per contiguous run of the same expert (A14B: high-noise steps, then low-noise steps)."""
    out: list[Phase] = []
    for i, e in enumerate(experts):
        if out and out[-1].name == e and out[-1].stop == i:
            out[-1] = Phase(e, out[-1].start, i + 1)
        else:
            out.append(Phase(str(e), i, i + 1))
    return out


@dataclass
class Summary:
    """Phase statistics of one space: means (and std) of the pair-averaged L2 and cosine per phase."""

    space: str
    num_steps: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True)

    def to_text(self) -> str:
        """The table in the original analysis's format, then the per-expert phases."""
        lines = ["Temporal Continuity Statistics", "=" * 40]
        steps = [r for r in self.rows if r["kind"] == "steps"]
        experts = [r for r in self.rows if r["kind"] == "expert"]
        for metric, title in (("l2", "Normalized L2 Distance:"), ("cos", "Cosine Similarity:")):
            lines.append(title)
            width = max((len(r["label"]) for r in steps), default=0) + 1
            for r in steps:
                lines.append(f"  {(r['label'] + ':').ljust(width)} Mean = {r[metric + '_mean']:.4f}")
        if len(experts) > 1:
            lines.append("By expert:")
            width = max(len(r["label"]) for r in experts) + 1
            for r in experts:
                lines.append(f"  {(r['label'] + ':').ljust(width)} L2 Mean = {r['l2_mean']:.4f}, "
                             f"Cosine Mean = {r['cos_mean']:.4f}")
        lines.append(f"(space: {self.space}, {self.num_steps} steps)")
        return "\n".join(lines)


def summarize(space: str, l2_mean: np.ndarray, cos_mean: np.ndarray, experts: Sequence[str],
              scheme: PhaseSpec = "thirds") -> Summary:
    """Summary from per-step values [S] (batch already averaged)."""
    S = len(l2_mean)
    summary = Summary(space=space, num_steps=S)
    groups = [("steps", p) for p in phase_ranges(S, scheme)] + [("expert", p) for p in expert_phases(experts)]
    for kind, p in groups:
        l2, cs = l2_mean[p.start:p.stop], cos_mean[p.start:p.stop]
        summary.rows.append({
            "kind": kind, "name": p.name, "label": p.label, "start": p.start, "stop": p.stop,
            "l2_mean": float(np.nanmean(l2)) if np.isfinite(l2).any() else math.nan,
            "l2_std": float(np.nanstd(l2)) if np.isfinite(l2).any() else math.nan,
            "cos_mean": float(np.nanmean(cs)) if np.isfinite(cs).any() else math.nan,
            "cos_std": float(np.nanstd(cs)) if np.isfinite(cs).any() else math.nan,
        })
    return summary
