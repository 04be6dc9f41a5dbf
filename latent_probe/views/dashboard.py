"""Interactive plotly dashboards of one or more runs, written as one self-contained HTML file.

``build_figures(runs)`` returns the plotly figures; ``write_dashboard(runs, "report.html")`` writes them
with plotly.js inlined (nothing is fetched when the page is opened), a header naming each run and the
statistics table; ``videos={"baseline": frames, ...}`` (uint8 RGB [F, H, W, 3] each, decoded by the
caller) adds the generated videos at the top, side by side (``views.video``). Every string read from a file
(prompt, expert names, labels) is HTML-escaped before it reaches the page or a plotly title, legend, hover
label or annotation, which plotly renders as HTML.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Any, Mapping, Sequence

import plotly.graph_objects as go

from .figures import all_figures
from .page import render_page
from .progress import progress
from .series import RunSeries, collect, default_labels
from .verdict import verdict
from .video import is_video_figure, video_figure, video_section

__all__ = ["build_figures", "write_dashboard", "collect_series"]


def collect_series(runs: Any, labels: Sequence[str] | None = None, space: str = "x0",
                   phases: str = "thirds") -> list[RunSeries]:
    """RunSeries of each run; ``runs`` is a Run, a path, or a sequence of them (paths are opened and closed)."""
    from ..store.reader import open_run

    items = [runs] if isinstance(runs, (str, os.PathLike)) or hasattr(runs, "latents") else list(runs)
    if not items:
        raise ValueError("no run given")
    sources = [os.fspath(r) if isinstance(r, (str, os.PathLike)) else (r.source or f"run {i + 1}")
               for i, r in enumerate(items)]
    if labels is None:
        labels = default_labels(sources)
    labels = list(labels)
    if len(labels) != len(items):
        raise ValueError(f"{len(labels)} labels for {len(items)} runs")
    out = []
    for item, label in progress(list(zip(items, labels)), desc="reading runs", total=len(items)):
        with ExitStack() as stack:
            run = stack.enter_context(open_run(item)) if isinstance(item, (str, os.PathLike)) else item
            out.append(collect(run, label=label, space=space, phases=phases))
    return out


def build_figures(runs: Any, labels: Sequence[str] | None = None, space: str = "x0",
                  phases: str = "thirds", videos: Mapping[str, Any] | None = None) -> list[go.Figure]:
    """The dashboard's plotly figures for one or more runs (Run objects or paths), overlaid with a legend.

    Order: the videos (``videos``: label → uint8 frames [F, H, W, 3], one animated figure, if given),
    continuity (L2 and cosine against step), step × pair heatmaps, noise floor and norm ratio, step-to-step
    change, frame-similarity matrices of the first run.
    """
    series = runs if _all_series(runs) else collect_series(runs, labels, space, phases)
    return ([video_figure(videos)] if videos else []) + all_figures(series)


def _all_series(runs: Any) -> bool:
    return isinstance(runs, (list, tuple)) and bool(runs) and all(isinstance(r, RunSeries) for r in runs)


def write_dashboard(runs: Any, path: str | os.PathLike, labels: Sequence[str] | None = None, space: str = "x0",
                    title: str | None = None, phases: str = "thirds",
                    figures: Sequence[go.Figure] | None = None, videos: Mapping[str, Any] | None = None,
                    seconds: Mapping[str, float] | None = None) -> str:
    """Write the dashboard of ``runs`` (Run objects or paths) to ``path`` as one self-contained HTML file,
    atomically (a temporary file beside it, then a rename). ``figures``: ones already built with
    ``build_figures`` for the same runs (not built again). ``videos``: label → uint8 RGB frames
    [F, H, W, 3] (numpy or CPU torch, e.g. decoded generations), shown at the top of the page side by side,
    animated, with a static strip of evenly spaced frames under them. The page opens with its verdict in
    words (``views.verdict``: what was compared, token-steps and time saved, fidelity against the seed
    floor, whether the runs support truncating); ``seconds``: label → measured wall seconds of each
    generation for it (else the runs' step commit times). Returns the path written.
    """
    series = runs if _all_series(runs) else collect_series(runs, labels, space, phases)
    figs = list(figures) if figures is not None else all_figures(series)
    built = [f for f in figs if is_video_figure(f)]  # build_figures(videos=...) made it: reuse, don't rebuild
    figs = [f for f in figs if not is_video_figure(f)]
    section = video_section(videos, figure=built[0] if built else None) if videos or built else None
    page = render_page(figs, series, title, video=section, verdict=verdict(series, seconds))
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.replace(tmp, path)
    return path
