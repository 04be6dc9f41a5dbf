"""``latent-probe analyze``: load a model once, record one generation per sweep point, write the views.

The model is loaded by ``latent_probe.app.backends`` (the Wan2.2 repository, a diffusers-format folder,
the tiny test pipelines). Each generation runs under ``LatentProbe`` into ``<dir>/run.h5``; the statistics,
the ``.npz`` and the dashboard are written next to it, and a sweep gets one comparison dashboard. With
``truncation`` set, each sweep point runs baseline and frame-truncated with the same seed
(``interventions.compare_truncation``).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .backends import TASKS, SweepPoint, load_backend, parse_size

__all__ = ["AnalyzeOptions", "Variant", "SweepPoint", "AnalysisResult", "run_analysis", "load_backend",
           "parse_size", "TASKS", "BASELINE"]


@dataclass(frozen=True)
class Variant:
    """One way to run each sweep point: ``intervene`` builds the probe's intervention (None: unchanged).

    ``AnalyzeOptions(variants=[BASELINE, Variant("mine", lambda point: MyIntervention(...))])`` records
    every variant of every point into its own subfolder and overlays all of them in the comparison
    dashboard (Python API; the CLI's ``--enable_half_frame`` uses ``AnalyzeOptions.truncation`` instead).
    """

    name: str
    intervene: Callable[[SweepPoint], Any] | None = None


BASELINE = Variant("baseline")


@dataclass
class AnalyzeOptions:
    """Everything ``analyze`` needs; ``None`` means the task's default."""

    prompt: str
    output_dir: str
    task: str = "t2v-A14B"
    backend: str = "wan"
    model_path: str | None = None
    num_frames: Sequence[int] | None = None
    num_inference_steps: Sequence[int] | None = None
    size: str | None = None
    seed: int = 0
    use_epsilon: bool = False
    negative_prompt: str = ""
    image: str | None = None
    wan_repo: str | None = None
    wan_config: str = "full"
    sample_solver: str = "unipc"
    sample_shift: float | None = None
    guide_scale: Sequence[float] | None = None
    offload_model: bool | None = None
    t5_cpu: bool = False
    convert_model_dtype: bool = False
    device: str | None = None
    dtype: str | None = None
    store_dtype: str = "float16"
    cfg_branches: bool = False
    phases: str = "thirds"
    static_images: bool = True
    variants: Sequence[Variant] = field(default_factory=lambda: [BASELINE])
    # --enable_half_frame: {"keep": K, "until": "boundary" | step index, "fill": "linear"}; each sweep point
    # then runs baseline and truncated with the same seed (interventions.compare_truncation)
    truncation: dict[str, Any] | None = None

    @property
    def space(self) -> str:
        return "eps" if self.use_epsilon else "x0"


@dataclass
class AnalysisResult:
    runs: list[str]
    labels: list[str]
    dashboard: str
    notes: list[str]


def _points(o: AnalyzeOptions, defaults: tuple[int, int]) -> list[SweepPoint]:
    frames = list(o.num_frames or [defaults[0]])
    steps = list(o.num_inference_steps or [defaults[1]])
    return [SweepPoint(f, s) for f, s in itertools.product(frames, steps)]


def _name(point: SweepPoint, variant: Variant, o: AnalyzeOptions, n_variants: int) -> tuple[str, str]:
    """(subfolder, label) of one generation; empty subfolder for a single run."""
    parts, labels = [], []
    if o.num_frames and len(o.num_frames) > 1:
        parts.append(f"frames{point.num_frames}")
        labels.append(f"frames={point.num_frames}")
    if o.num_inference_steps and len(o.num_inference_steps) > 1:
        parts.append(f"steps{point.num_inference_steps}")
        labels.append(f"steps={point.num_inference_steps}")
    if n_variants > 1:
        parts.append(variant.name)
        labels.append(variant.name)
    return "_".join(parts), " · ".join(labels) or f"{point.num_frames} frames, {point.num_inference_steps} steps"


def _compare_point(o: AnalyzeOptions, backend: Any, point: SweepPoint, attrs: dict[str, Any],
                   views: Callable[[str, str, str], None], log: Callable[[str], None]) -> None:
    """Baseline and frame-truncated generation of one sweep point (same seed), their report and views."""
    from ..views.truncation_text import format_comparison
    from .compare import compare_truncation
    from ..views.safe_text import terminal, terminal_lines

    sub, label = _name(point, BASELINE, o, 1)
    base = os.path.join(o.output_dir, sub) if sub else o.output_dir
    folders = {v: os.path.join(base, v) for v in ("baseline", "half_frame")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    t = o.truncation or {}
    log(terminal(f"comparing baseline and frame truncation (keep {t.get('keep', 3)}) at {point.num_frames} "
                 f"frames, {point.num_inference_steps} steps"))
    result = compare_truncation(
        backend.target, lambda: backend.generate(point), keep=t.get("keep", 3), until=t.get("until", "boundary"),
        fill=t.get("fill", "linear"), baseline_path=os.path.join(folders["baseline"], "run.h5"),
        truncated_path=os.path.join(folders["half_frame"], "run.h5"),
        probe_kwargs={"capture": ("x_t", "pred", "x0", "eps"), "store_dtype": o.store_dtype,
                      "cfg_branches": o.cfg_branches, "attrs": dict(attrs, label=label), "overwrite": True},
        output_range=2.0 if o.backend == "wan" else None)
    report = format_comparison(result)
    log(terminal_lines(report))
    with open(os.path.join(base, "truncation_comparison.txt"), "w", encoding="utf-8") as fh:
        fh.write(report + "\n")
    for run in (result.baseline_run, result.truncated_run):
        if run is not None:
            run.close()
    for variant, folder in folders.items():
        views(os.path.join(folder, "run.h5"), f"{label} · {variant}", folder)


def run_analysis(o: AnalyzeOptions, log: Callable[[str], None] = print) -> AnalysisResult:
    """Record every (sweep point × variant) generation into ``o.output_dir`` and write the views.

    ``log`` receives progress text with control characters escaped (safe to print to a terminal).
    """
    from ..probe import LatentProbe
    from ..store.reader import open_run
    from ..views.dashboard import write_dashboard
    from ..views.figures import continuity_figure
    from ..views.progress import progress
    from ..views.report import terminal_summary, write_npz, write_statistics
    from ..views.safe_text import terminal
    from ..views.series import collect
    from ..views.static import StaticExportError, write_continuity_image

    backend = load_backend(o)
    points = _points(o, backend.defaults())
    backend.check(points)  # a size or frame count the model cannot run is refused here, in one line
    jobs = [(p, v) for p in points for v in o.variants]
    os.makedirs(o.output_dir, exist_ok=True)
    paths, labels, notes, series = [], [], [], []
    attrs = {"prompt": o.prompt, "task": o.task, "backend": o.backend, "model_path": o.model_path or "",
             "seed": o.seed, "metrics_space": o.space}

    def views(path: str, label: str, folder: str) -> None:
        with open_run(path, "r+") as run:  # writable: the metrics are cached in the file under /metrics
            s = collect(run, label=label, space=o.space, phases=o.phases)
        write_statistics(s, folder)
        write_npz(s, os.path.join(folder, "temporal_continuity.npz"))
        log(f"{terminal(label)}:\n{terminal_summary(s.summary)}")
        paths.append(path)
        labels.append(label)
        series.append(s)

    if o.truncation is not None:
        for point in progress(points, desc="comparisons", total=len(points)):
            _compare_point(o, backend, point, attrs, views, log)
    for point, variant in progress(jobs if o.truncation is None else [], desc="generations", total=len(jobs)):
        sub, label = _name(point, variant, o, len(o.variants))
        folder = os.path.join(o.output_dir, sub) if sub else o.output_dir
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "run.h5")
        intervene = variant.intervene(point) if variant.intervene else None
        log(terminal(f"recording {label}: {point.num_frames} frames, {point.num_inference_steps} steps → {path}"))
        with LatentProbe(backend.target, path, overwrite=True, store_dtype=o.store_dtype,
                         cfg_branches=o.cfg_branches, attrs=dict(attrs, label=label), intervene=intervene):
            backend.generate(point)
        views(path, label, folder)
    name = "dashboard.html" if len(paths) == 1 else "comparison.html"
    title = f"latent_probe analyze: {o.task} ({o.backend})" + (" — comparison" if len(paths) > 1 else "")
    dashboard = write_dashboard(series, os.path.join(o.output_dir, name), title=title)
    if o.static_images:
        try:
            write_continuity_image(series, os.path.join(o.output_dir, "temporal_continuity.png"),
                                   continuity_figure(series))
        except StaticExportError as exc:
            notes.append(str(exc))
    return AnalysisResult(paths, labels, dashboard, notes)
