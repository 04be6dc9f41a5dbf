"""``latent-probe suite STUDY --frontier``: the speed–quality frontier computed from an organism study's job outputs.

Orchestration only: ``study.frontier_clips`` reads the study (costs, final latents, the baseline setting) and
refuses what cannot give a frontier; ``organism.clip_scores`` scores each clip against the baseline clip of the
same (prompt, seed) and the seed floor (baseline clips of one prompt at two seeds); ``study.frontier`` pairs the
savings per clip (1 − t / t_baseline) and gives means with CIs by prompt; ``views.frontier`` draws it.

The document (``frontier_document``; ``--frontier_out`` writes it as JSON, which ``--frontier JSON`` reads
back): ``format``, ``study``, ``organism``, ``baseline``, ``saving_axis``, ``device``, ``n_clips``,
``measures``, ``measure_titles``, ``floors`` (``seed_<measure>``: mean, p05, p95, min, max, n over pairs),
``settings`` (``frontier_summary`` rows: each measure and ``saving_<cost>`` with ``_low`` / ``_high`` / ``_n``),
``best_at_saving`` (per quality measure: the best setting of each method at 25 / 40 / 60 % saving —
exploratory, a selection over settings), ``clips`` (one row per clip: ids, costs, savings, measures) and, with
``declared`` (``--declared FILE``), ``declared``: the pre-declared comparisons as paired differences by prompt with
Holm's correction (``study.inference.declared_comparisons``) — the confirmatory part, fixed before scoring.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

__all__ = ["frontier_document", "SAVING_AXES"]

SAVING_AXES = ("auto", "wall_s", "thread_cpu_s", "dit_s", "token_steps")


def _scorer(study: Any, device: str | None) -> Any:
    from ..organism.clip_scores import ScorerV1, ScorerV2

    if study.organism == "v1":
        return ScorerV1()
    from .backends import load_organism_model

    f = study.fixed
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return ScorerV2(load_organism_model(study.organism, f.get("model_path"), f.get("sha256"), device))


def _summary_stats(values: list[float]) -> dict[str, Any]:
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"mean": math.nan, "p05": math.nan, "p95": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": float(v.mean()), "p05": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95)),
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def frontier_document(out_dir: str, saving: str = "auto", n_resamples: int = 2000, seed: int = 0,
                      device: str | None = None, log: Callable[[str], None] | None = None,
                      declared: Sequence[Any] = ()) -> dict[str, Any]:
    """Score every clip of the study in ``out_dir`` and summarise the frontier (see the module docstring);
    ``declared``: ``study.inference.Declared`` comparisons to test (their settings and measures are checked
    before any clip is scored). Raises ``StudyError`` (one line) for a study that cannot give one."""
    import itertools

    import numpy as np
    import pandas as pd

    from ..study.frontier import add_saving, best_at_saving, frontier_summary
    from ..study.frontier_clips import COST_COLUMNS, read_frontier_study
    from ..study.inference import declared_comparisons
    from ..study.jobs import StudyError

    say = log or (lambda text: None)
    if saving not in SAVING_AXES:
        raise StudyError(f"--frontier_saving {saving!r}: choose one of {', '.join(SAVING_AXES)}")
    study = read_frontier_study(out_dir)
    scorer = _scorer(study, device)
    _check_declared(declared, {c.setting for c in study.clips}, scorer.measures)
    base_clips = [c for c in study.clips if c.setting == study.baseline]
    labels = {c.prompt_id: scorer.label(c.prompt) for c in study.clips}
    base_rgb = {(c.prompt_id, c.seed): scorer.rgb(study.final_latent(c)) for c in base_clips}
    say(f"frontier: {len(study.clips)} clips, baseline {study.baseline!r} ({len(base_clips)} clips), organism "
        f"{study.organism}")
    rows = []
    for row, clip in zip(study.cost_rows(), study.clips):
        ref = base_rgb.get((clip.prompt_id, clip.seed))
        if ref is None:
            raise StudyError(f"clip {clip.job_id} has no {study.baseline!r} clip of the same prompt and seed")
        rgb = ref if clip.setting == study.baseline else scorer.rgb(study.final_latent(clip))
        scores = scorer.score(rgb, ref, labels[clip.prompt_id], clip.keys_used)
        rows.append({**row, "class": labels[clip.prompt_id],
                     **{k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}})
    table = pd.DataFrame(rows)
    for col in COST_COLUMNS:
        table = add_saving(table, study.baseline, col)
    floors: dict[str, list[float]] = {f"seed_{m}": [] for m in scorer.floor_measures}
    for a, b in itertools.combinations(base_clips, 2):
        if a.prompt_id == b.prompt_id:
            fl = scorer.floor(base_rgb[(a.prompt_id, a.seed)], base_rgb[(b.prompt_id, b.seed)], labels[a.prompt_id])
            for m, v in fl.items():
                floors[f"seed_{m}"].append(v)
    device_used = str(study.clips[0].cost.get("device", "cpu"))
    axis = saving if saving != "auto" else ("thread_cpu_s" if not device_used.startswith("cuda") else "wall_s")
    measures = [m for m in scorer.measures if m in table]
    summary = frontier_summary(table, [*measures, *[f"saving_{c}" for c in COST_COLUMNS], "blocks_run",
                                       "units_skipped"], extra=("method", "steps"), n_resamples=n_resamples,
                               seed=seed)
    others = summary[summary.method != "baseline"]
    best = {}
    for m, higher in scorer.higher_is_better.items():
        defined = others[np.isfinite(others[m].to_numpy(dtype=float))] if m in others else others.iloc[:0]
        if len(defined):   # a setting whose measure is undefined on every clip (object lost) cannot be best
            best[m] = best_at_saving(defined, m, f"saving_{axis}", higher_is_better=higher).to_dict("records")
    return {"format": "latent_probe.frontier", "version": 1, "study": out_dir, "organism": study.organism,
            "baseline": study.baseline, "saving_axis": f"saving_{axis}", "device": device_used,
            "n_clips": int((table.setting == study.baseline).sum()), "measures": measures,
            "drawn": [m for m in scorer.drawn if m in measures], "measure_titles": dict(scorer.titles),
            "floors": {k: _summary_stats(v) for k, v in floors.items() if v},
            "settings": summary.to_dict("records"), "best_at_saving": best, "clips": table.to_dict("records"),
            **({"declared": declared_comparisons(table, declared, n_resamples=n_resamples, seed=seed)}
               if declared else {})}


def _check_declared(declared: Sequence[Any], settings: set[str], measures: Sequence[str]) -> None:
    """A declared comparison names settings of this study and a measure its scorer gives (else one line)."""
    from ..study.jobs import StudyError

    for d in declared:
        for name in (d.a, d.b):
            if name not in settings:
                raise StudyError(f"declared comparison {d.id}: the study has no setting {name!r} (its settings: "
                                 f"{', '.join(sorted(settings))})")
        if d.measure not in measures:
            raise StudyError(f"declared comparison {d.id}: no measure {d.measure!r} (measures: "
                             f"{', '.join(measures)})")
