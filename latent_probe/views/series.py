"""What the views plot, gathered from a ``Run`` through its metrics API (no metric is computed here).

``collect(run)`` returns a :class:`RunSeries`: plain numpy arrays indexed by step, with batch items
averaged (B is 1 for Wan and diffusers runs). Strings are raw, as read from the file: whoever renders them
escapes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from ..metrics.phases import fit_phases as resolve_phases  # the views show what the metrics define
from ..metrics.continuity import AdjacentFrameMetrics
from .intervention import changed_steps, describe_intervention

__all__ = ["RunSeries", "collect", "default_labels", "expert_switches", "resolve_phases", "PREDICTIONS"]


# Prediction quantities whose step-to-step change is shown, in this order, where captured.
PREDICTIONS = ("pred", "pred_cond", "pred_uncond")  # the step-change panels: guided and per-branch predictions


@dataclass
class RunSeries:
    """Per-step data of one run for plotting.

    steps:      [S] step numbers, 0-based (step s is ``run.latents(q)[s]``; the convention everywhere)
    timesteps:  [S] scheduler timesteps;  sigmas: [S] noise level σ;  experts: [S] expert names
    pairs:      the run's ``AdjacentFrameMetrics`` in ``space``, batch-averaged — the metrics' own result type;
                ``.l2``, ``.cos``, ``.one_minus_cos``, ``.norm_ratio`` [S, F-1] and ``.l2_mean``, ``.cos_mean`` [S]
                are reachable here directly (``series.l2``)
    noise_floor: [S] adjacent-frame cosine x_t shows from noise alone at σ
    xt_cos_mean: [S] adjacent-frame cosine of x_t itself, or None when x_t was not captured
    step_change: branch → (rel_l1 [S], norm_ratio [S]); NaN at step 0
    expert_switch: [S] bool, True where the step ran another expert than the step before
    gap: [S] cond–uncond gap ‖c−u‖/‖c‖, or None without captured branches
    phases: [(name, start, stop)] 0-based, stop exclusive
    phase_note: how the phase scheme was fitted to this run ("" when it applies as written), e.g. the
        original analysis's 20-step ranges scaled to a 40-step run; shown on the figures and in the tables
    switches: steps (0-based) at which a different expert takes over
    frame_similarity: step (0-based) → [F, F] cosine of every frame pair (first batch item)
    intervention, changed_steps: the intervention (views/intervention.py) and the [S] steps it changed, whose
        non-key frames are fills (their continuity metrics describe the fill)
    feasibility: (keep, rel_l2 [S], cosine [S]) of rebuilding x̂₀ of all frames from ``keep`` key frames by
        linear interpolation (frame truncation), or None when x̂₀ was not captured or F ≤ keep
    final_x0, step_times: what the verdict (views/verdict.py) compares runs by: the last step's x̂₀ and the
        steps' commit times
    """

    label: str
    source: str
    space: str
    attrs: dict[str, Any]
    quantities: list[str]
    steps: np.ndarray
    timesteps: np.ndarray
    sigmas: np.ndarray
    experts: np.ndarray
    pairs: AdjacentFrameMetrics
    noise_floor: np.ndarray
    xt_cos_mean: np.ndarray | None
    step_change: dict[str, tuple[np.ndarray, np.ndarray]]
    expert_switch: np.ndarray
    gap: np.ndarray | None
    phases: list[tuple[str, int, int]]
    switches: list[int]
    summary_text: str
    summary: dict[str, Any]  # Summary.to_dict() and "phase_note"
    frame_similarity: dict[int, np.ndarray] = field(default_factory=dict)
    feasibility: tuple[int, np.ndarray, np.ndarray] | None = None
    phase_note: str = ""
    intervention: str = ""                      # one line naming the intervention and its steps ("" plain run)
    changed_steps: np.ndarray | None = None     # [S] bool: steps the intervention changed (their fills, not the model)
    final_x0: np.ndarray | None = None          # [C, F, H, W] float32 x̂₀ of the last step (first batch item), if stored
    step_times: np.ndarray | None = None        # [S] wall-clock seconds (Unix time) at which each step was committed

    @property
    def l2(self) -> np.ndarray:
        return self.pairs.l2

    @property
    def cos(self) -> np.ndarray:
        return self.pairs.cos

    @property
    def one_minus_cos(self) -> np.ndarray:
        return self.pairs.one_minus_cos

    @property
    def norm_ratio(self) -> np.ndarray:
        return self.pairs.norm_ratio

    @property
    def l2_mean(self) -> np.ndarray:
        return self.pairs.l2_mean

    @property
    def cos_mean(self) -> np.ndarray:
        return self.pairs.cos_mean

    @property
    def num_steps(self) -> int:
        return int(self.steps.shape[0])

    @property
    def num_pairs(self) -> int:
        return int(self.l2.shape[1])

    @property
    def prompt(self) -> str:
        return str(self.attrs.get("prompt") or "")

    @property
    def simulated(self) -> bool:
        return bool(self.attrs.get("simulated", False))


def _batch_mean(a: Any) -> np.ndarray:
    """float64 mean over the batch axis (axis 1): [S, B, ...] → [S, ...]."""
    return np.asarray(a, dtype=np.float64).mean(axis=1)


def expert_switches(experts: Sequence[str]) -> list[int]:
    """Steps (0-based) where the expert differs from the previous step's."""
    return [i for i in range(1, len(experts)) if experts[i] != experts[i - 1]]


def default_labels(sources: Sequence[str]) -> list[str]:
    """Short distinct labels from file paths: the file stem, or parent/stem where stems repeat."""
    stems = [os.path.splitext(os.path.basename(s))[0] or s for s in sources]
    if len(set(stems)) == len(stems):
        return stems
    longer = [os.path.join(os.path.basename(os.path.dirname(os.path.abspath(s))), t) for s, t in zip(sources, stems)]
    if len(set(longer)) == len(longer):
        return longer
    return [f"{i + 1}: {t}" for i, t in enumerate(stems)]


def _phase_tuples(run: Any, scheme: Any) -> list[tuple[str, int, int]]:
    return [(str(p.name), int(p.start), int(p.stop)) for p in run.metrics.phases(scheme)]


# The original analysis's phases: steps 0-4, 5-9 and 10-19 of a 20-step run (its 1-5, 6-10, 11-20).
def _step_change(run: Any, quantities: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Step change of each prediction: from the sums computed during the run, or from every step's latents."""
    out = {}
    every_step = len(run.latent_steps) == run.num_steps
    for branch in PREDICTIONS:
        if branch in run.online_spaces or (branch in quantities and every_step):
            sc = run.metrics.step_change(branch)
            out[branch] = (np.asarray(sc.rel_l1, dtype=np.float64), np.asarray(sc.norm_ratio, dtype=np.float64))
    return out


def collect(run: Any, label: str | None = None, space: str = "x0", phases: str = "thirds",
            similarity_steps: Sequence[int] | None = None, feasibility_keep: int = 3) -> RunSeries:
    """Read everything the dashboard shows from ``run`` (a ``latent_probe.Run``).

    ``similarity_steps``: 0-based steps for the F×F frame-similarity matrices (default first, middle, last).
    """
    quantities = list(run.quantities)
    spaces = list(run.spaces)
    if space not in spaces:
        raise KeyError(f"space {space!r} was not captured in {run.source or 'this run'}; its spaces: {spaces}")
    S = int(run.num_steps)
    if S == 0:
        raise ValueError(f"{run.source or 'the run'} holds no committed step")
    frames = run.num_frames or 0
    if frames < 2:
        raise ValueError(f"{run.source or 'the run'} has {frames} latent frame: continuity needs at least 2")
    m = run.metrics(space)
    xt_cos = None
    if "x_t" in spaces:
        xt_cos = _batch_mean(run.metrics("x_t").cos_mean) if space != "x_t" else _batch_mean(m.cos_mean)
    gap = run.metrics.eps_gap()
    experts = np.asarray([str(e) for e in run.experts], dtype=object)
    if similarity_steps is None:
        similarity_steps = sorted({0, S // 2, S - 1})
    scheme, phase_note = resolve_phases(S, phases)
    summary = run.metrics.summary(space, scheme)
    switch = np.zeros(S, dtype=bool)
    switch[1:] = experts[1:] != experts[:-1]
    # F×F matrices and feasibility need latents: the steps stored (or derivable) only
    kept = [int(k) for k in run.latent_steps] if space in quantities or space in run.derivable else []
    shown = [int(s) for s in similarity_steps if int(s) in kept]
    if kept and not shown:
        shown = [kept[i] for i in sorted({0, len(kept) // 2, len(kept) - 1})]
    sim = {s: np.asarray(run.metrics.frame_similarity(space, s), dtype=np.float64)[0] for s in shown}
    feasibility = None
    every_step = len(run.latent_steps) == S
    if every_step and ("x0" in quantities or "x0" in run.derivable) and frames > feasibility_keep > 0:
        from ..metrics.feasibility import truncation_feasibility

        f = truncation_feasibility(run, keep=feasibility_keep, space="x0")
        feasibility = (feasibility_keep, np.asarray(f.rel_l2, dtype=np.float64), np.asarray(f.cosine, dtype=np.float64))
    return RunSeries(
        label=label if label is not None else (os.path.basename(run.source) if run.source else "run"),
        source=str(run.source or "in memory"),
        space=space,
        attrs=dict(run.attrs),
        quantities=quantities,
        steps=np.arange(S),
        timesteps=np.asarray(run.timesteps, dtype=np.float64),
        sigmas=np.asarray(run.sigmas, dtype=np.float64),
        experts=experts,
        pairs=m.batch_mean(),
        noise_floor=np.asarray(run.metrics.noise_floor(), dtype=np.float64),
        xt_cos_mean=xt_cos,
        step_change=_step_change(run, quantities),
        expert_switch=switch,
        gap=None if gap is None else np.asarray(gap, dtype=np.float64).reshape(S, -1).mean(axis=1),
        phases=_phase_tuples(run, scheme),
        switches=expert_switches(list(experts)),
        summary_text=summary.to_text() + "".join(f"\nNote: {n}" for n in (phase_note, run.metrics.coverage(space)) if n),
        summary=dict(summary.to_dict(), phase_note=phase_note),
        frame_similarity=sim,
        feasibility=feasibility,
        phase_note=phase_note,
        intervention=describe_intervention(run.attrs, [str(e) for e in experts]),
        changed_steps=changed_steps(run.attrs, [str(e) for e in experts]),
        final_x0=_final_x0(run, S),
        step_times=_step_times(run),
    )


def _final_x0(run: Any, num_steps: int) -> np.ndarray | None:
    """x̂₀ [C, F, H, W] of the run's last step (first batch item) as float32, or None when not stored."""
    steps = list(run.latent_steps)
    if not steps or int(steps[-1]) != num_steps - 1 or not ("x0" in run.quantities or "x0" in run.derivable):
        return None
    return np.asarray(run.latents("x0")[-1], dtype=np.float32)[0]


def _step_times(run: Any) -> np.ndarray | None:
    """[S] commit times of the steps (the store's per-step ``wall_time``), or None where the store has none."""
    try:
        return np.asarray(run._steps("wall_time"), dtype=np.float64)  # noqa: SLF001 - no public accessor yet
    except Exception:  # noqa: BLE001 - an older or foreign file: no timing, the verdict says so
        return None
