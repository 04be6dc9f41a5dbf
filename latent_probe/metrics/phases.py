"""Early / middle / late step ranges, expert phases, and the statistics table of the original analysis.

Steps are numbered from 0 everywhere (labels, tables, JSON, notes, phase strings): a 20-step run has steps
0-19, and a range "0-4" holds steps 0, 1, 2, 3 and 4 (both ends included). The original analysis numbered
its steps from 1; its ranges are read only behind the explicit prefix ``"1-based:"``
(``"1-based:1-5,6-10,11-20"`` is ``"0-4,5-9,10-19"``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["Phase", "step_range", "ONE_BASED_PREFIX", "phase_ranges", "expert_phases", "expert_switch_mask", "Summary", "summarize"]

PhaseSpec = str | Sequence[tuple[str, int, int]]
ONE_BASED_PREFIX = "1-based:"  # the explicit flag for the original analysis's 1-based ranges


def step_range(start: int, stop: int) -> str:
    """Steps ``start`` … ``stop`` − 1 as printed everywhere: "0-6", "5" for one step, "(no step)" for none."""
    if stop <= start:
        return "(no step)"
    return f"{start}" if stop == start + 1 else f"{start}-{stop - 1}"


@dataclass(frozen=True)
class Phase:
    """Steps ``start`` (inclusive) to ``stop`` (exclusive), 0-based; ``label`` prints them 0-based, both ends
    included: ``Phase("Early steps", 0, 7).label == "Early steps (0-6)"``."""

    name: str
    start: int
    stop: int

    @property
    def label(self) -> str:
        return f"{self.name} ({step_range(self.start, self.stop)})"

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def phase_ranges(num_steps: int, scheme: PhaseSpec = "thirds") -> list[Phase]:
    """Step ranges by scheme.

    ``"thirds"``: three near-equal contiguous ranges. ``"original"``: steps 0-4, 5-9, 10-19 (the original
    analysis's 1-5, 6-10, 11-20 counted from 0; clipped to the run). A string like ``"0-4,5-9,10-39"``
    (0-based, both ends included), the same prefixed ``"1-based:"`` for 1-based ranges
    (``"1-based:1-5,6-10,11-40"``), or a sequence of (name, start, stop) 0-based ranges (stop excluded) gives
    custom phases. Empty ranges are dropped.
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
            one_based = scheme.startswith(ONE_BASED_PREFIX)
            text = scheme[len(ONE_BASED_PREFIX):] if one_based else scheme
            first = 1 if one_based else 0
            parts = [p.strip() for p in text.split(",") if p.strip()]
            if not parts:
                raise ValueError(f"phases {scheme!r}: expected thirds, original or FIRST-LAST ranges "
                                 "(0-based steps), e.g. '0-4,5-9,10-19'")
            for i, part in enumerate(parts):
                try:
                    lo, hi = (int(v) for v in part.split("-"))
                except ValueError:
                    raise ValueError(f"phase {part!r}: expected FIRST-LAST (0-based steps, both included), e.g. "
                                     f"'0-4,5-9,10-19' ('{ONE_BASED_PREFIX}1-5,6-10,11-20' for 1-based ranges)"
                                     ) from None
                if lo < first or hi < lo:
                    raise ValueError(f"phase {part!r}: FIRST-LAST needs {first} <= FIRST <= LAST "
                                     f"({'1-based' if one_based else '0-based'} steps)")
                start, stop = lo - first, hi - first + 1
                name = names[i] if len(parts) == 3 else f"Steps {step_range(start, stop)}"
                spans.append((name, start, stop))
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


def expert_switch_mask(experts: Sequence[str]) -> np.ndarray:
    """[S] bool: True at the first step of every run of an expert but the first (from :func:`expert_phases`,
    the one place that finds runs of the same expert)."""
    mask = np.zeros(len(experts), dtype=bool)
    mask[[p.start for p in expert_phases(experts)[1:]]] = True
    return mask


@dataclass
class Summary:
    """Phase statistics of one space: means (and std) of the pair-averaged L2 and cosine per phase."""

    space: str
    num_steps: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""  # how the phase scheme was fitted to this run (fit_phases), "" when it applies as written

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
        if self.note:
            lines.append(f"Note: {self.note}")
        return "\n".join(lines)


def summarize(space: str, l2_mean: np.ndarray, cos_mean: np.ndarray, experts: Sequence[str],
              scheme: PhaseSpec = "thirds") -> Summary:
    """Summary from per-step values [S] (batch already averaged); the scheme is fitted to S (fit_phases)."""
    S = len(l2_mean)
    scheme, note = fit_phases(S, scheme)
    summary = Summary(space=space, num_steps=S, note=note)
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


ORIGINAL_STEPS = 20
ORIGINAL_NAMES = ("Early steps", "Middle steps", "Late steps")


def _ranges(spans: Sequence[tuple[str, int, int]]) -> str:
    return ", ".join(f"{name.split()[0].lower()} {step_range(a, b)}" for name, a, b in spans)


def fit_phases(num_steps: int, scheme: Any = "thirds") -> tuple[Any, str]:
    """(scheme to pass to ``Run.phases`` / ``Run.summary``, note saying how it was fitted to the run).

    ``"original"`` is the original analysis's steps 0-4, 5-9, 10-19 of a 20-step run. On 11-20 steps they
    apply as written (the late phase ends at the last step). On a longer run they would leave steps 20 on
    out of every phase, on a shorter one (fewer than 11 steps) the late phase would vanish: there they are
    scaled to the same fractions of the run (first quarter, second quarter, second half) and the note says
    so with the resulting ranges. Other schemes pass through; the note names the steps that fall in no
    phase and the ranges that fall outside the run, if any.
    """
    S = int(num_steps)
    if isinstance(scheme, str) and scheme == "original":
        if S == ORIGINAL_STEPS:
            return scheme, ""
        if 11 <= S < ORIGINAL_STEPS:
            return scheme, (f"phases 'original' (steps 0-4, 5-9, 10-19 of the original 20-step analysis) on "
                            f"this {S}-step run: the late phase is 10-{S - 1}")
        e1 = min(S, max(1, math.floor(S * 5 / ORIGINAL_STEPS + 0.5)))
        e2 = min(S, max(e1 + 1, math.floor(S * 10 / ORIGINAL_STEPS + 0.5)))
        if e2 >= S and S >= 3:
            e2 = S - 1
        spans = [(ORIGINAL_NAMES[0], 0, e1), (ORIGINAL_NAMES[1], e1, e2), (ORIGINAL_NAMES[2], e2, S)]
        return spans, (f"phases 'original' (steps 0-4, 5-9, 10-19 of the original 20-step analysis) scaled to "
                       f"this {S}-step run by the same fractions: {_ranges(spans)} "
                       f"(phases='0-4,5-9,10-19' keeps the fixed steps)")
    if isinstance(scheme, str) and scheme == "thirds":
        return scheme, ""
    try:
        phases = phase_ranges(S, scheme)
    except (TypeError, ValueError):
        return scheme, ""
    covered = np.zeros(S, dtype=bool)
    for p in phases:
        covered[p.start:p.stop] = True
    notes = []
    missing = np.flatnonzero(~covered)
    if missing.size:
        runs = np.split(missing, np.flatnonzero(np.diff(missing) > 1) + 1)
        text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)
        notes.append(f"step {text} is in no phase" if missing.size == 1 else f"steps {text} are in no phase")
    wanted = len(scheme.removeprefix(ONE_BASED_PREFIX).split(",")) if isinstance(scheme, str) else len(list(scheme))
    if len(phases) < wanted:
        notes.append(f"{wanted - len(phases)} of the {wanted} phases fall outside the run's {S} steps")
    cut = [p for p in phase_ranges(max(S, 1) * 1000 + 10**6, scheme) if p.start < S < p.stop]
    if cut:
        notes.append(f"{', '.join(p.name for p in cut)} reach{'es' if len(cut) == 1 else ''} past the last step "
                     f"{S - 1} and {'is' if len(cut) == 1 else 'are'} cut there")
    if notes and isinstance(scheme, str) and not scheme.startswith(ONE_BASED_PREFIX) and (~covered)[:1].all():
        notes.append(f"steps are numbered from 0; for the original analysis's 1-based ranges write "
                     f"'{ONE_BASED_PREFIX}{scheme}'")
    return scheme, (f"phases {scheme!r} on this {S}-step run: " + "; ".join(notes)) if notes else ""
