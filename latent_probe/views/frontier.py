"""The speed–quality frontier: measured time saved (x, %) against each quality measure (y), one curve per
method, 95 % CIs by prompt on both axes, the floors (what two valid, different clips score) drawn as
dashed lines. Input: ``study.frontier.frontier_summary`` rows (as records or a DataFrame) and a floors dict
(``{"psnr": (value, "label"), ...}``), e.g. docs/data/frontier_organism.json.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..errors import LatentProbeError
from .figures import COLORS

__all__ = ["FrontierFileError", "MEASURE_TITLES", "frontier_figure", "frontier_from_json", "frontier_from_document"]


class FrontierFileError(LatentProbeError, ValueError):
    """A frontier JSON that cannot be read or lacks the per-setting summary."""

MEASURE_TITLES = {
    "psnr": "PSNR vs baseline (dB, ↑)",
    "ssim": "SSIM vs baseline (↑)",
    "motion_error": "motion error vs baseline (px/frame, ↓)",
    "residual": "line-fit residual of own motion (px, ↓)",
    "jitter": "path jitter, 2nd difference (px, ↓)",
    "flicker": "brightness flicker, 2nd difference (↓)",
    "nn_motion": "motion distance to nearest training clip (↓)",
    "nn_latent": "latent RMS distance to nearest training clip (↓)",
    "motion_pass": "follows the motion model (fraction of clips, ↑)",
}
SAVING_TITLES = {"saving_priced_s": "time saved (%): DiT calls priced at equal load",
                 "saving_thread_cpu_s": "thread CPU time saved (%)", "saving_wall_s": "wall time saved (%)",
                 "saving_dit_s": "DiT time saved (%)", "saving_token_steps": "token-steps saved (%)"}


def frontier_figure(summary: Any, floors: Mapping[str, tuple[float, str]] | None = None,
                    measures: Sequence[str] = ("psnr", "motion_error", "residual", "nn_latent"),
                    saving: str = "saving_thread_cpu_s", title: str | None = None,
                    titles: Mapping[str, str] | None = None) -> go.Figure:
    """One panel per measure present in ``summary``; x = ``saving`` × 100 with its CI, y = the measure's mean
    with its CI (``FrontierFileError`` when the saving or every measure is missing); ``titles`` override
    ``MEASURE_TITLES`` (a measure's units differ between organisms).
    Each method's settings are joined in order of saving; the baseline is the point at 0 % (when present)."""
    df = pd.DataFrame(summary)
    need = {"method", "setting", saving, f"{saving}_low", f"{saving}_high"}
    if not need <= set(df.columns):
        raise FrontierFileError(f"the frontier summary lacks {sorted(need - set(df.columns))}")
    measures = [m for m in measures if {m, f"{m}_low", f"{m}_high"} <= set(df.columns)]
    for c in [saving, f"{saving}_low", f"{saving}_high", *[f"{m}{e}" for m in measures for e in ("", "_low", "_high")]]:
        df[c] = pd.to_numeric(df[c], errors="coerce")   # a JSON null (no interval) reads as NaN
    if not measures:
        raise FrontierFileError("the frontier summary has none of the measures to draw (mean, _low, _high)")
    floors = dict(floors or {})
    names = {**MEASURE_TITLES, **dict(titles or {})}
    fig = make_subplots(rows=1, cols=len(measures), subplot_titles=[names.get(m, m) for m in measures],
                        horizontal_spacing=0.06)
    methods = [m for m in dict.fromkeys(df["method"]) if m != "baseline"]
    for col, measure in enumerate(measures, start=1):
        for i, method in enumerate(["baseline", *methods]):
            g = df[df["method"] == method].sort_values(saving)
            if g.empty:
                continue
            color = "black" if method == "baseline" else COLORS[i % len(COLORS)]
            fig.add_trace(go.Scatter(
                x=100 * g[saving], y=g[measure], mode="markers" if method == "baseline" else "lines+markers",
                name=method, legendgroup=method, showlegend=col == 1, marker=dict(color=color, size=8),
                line=dict(color=color),
                error_x=dict(type="data", symmetric=False, array=100 * (g[f"{saving}_high"] - g[saving]),
                             arrayminus=100 * (g[saving] - g[f"{saving}_low"]), thickness=1, width=2),
                error_y=dict(type="data", symmetric=False, array=g[f"{measure}_high"] - g[measure],
                             arrayminus=g[measure] - g[f"{measure}_low"], thickness=1, width=2),
                text=g["setting"], hovertemplate="%{text}<br>saved %{x:.1f} %<br>%{y:.3f}<extra></extra>"),
                row=1, col=col)
        if measure in floors:
            value, label = floors[measure]
            fig.add_hline(y=value, line=dict(color="grey", dash="dash"), row=1, col=col,
                          annotation_text=label, annotation_position="bottom right", annotation_font_size=10)
        fig.update_xaxes(title_text=SAVING_TITLES.get(saving, saving), row=1, col=col)
    fig.update_layout(title=title or "Speed–quality frontier (95 % CI by prompt; dashed: floor)",
                      legend_title_text="method (colour)", height=420, width=max(700, 380 * len(measures)),
                      template="plotly_white", margin=dict(t=80))
    return fig


def frontier_from_json(path: str | os.PathLike, **kw: Any) -> go.Figure:
    """The figure from a frontier JSON: ``latent-probe suite STUDY --frontier --frontier_out F``'s, or
    ``training/frontier_measure.py``'s (``frontier_from_document``)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise FrontierFileError(f"cannot read frontier file {os.fspath(path)!r}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("settings"), list) or not data["settings"]:
        raise FrontierFileError(f"{os.fspath(path)!r} has no per-setting summary ('settings'); "
                                "write it with latent-probe suite STUDY --frontier --frontier_out or "
                                "training/frontier_measure.py")
    return frontier_from_document(data, **kw)


def frontier_from_document(data: Mapping[str, Any], **kw: Any) -> go.Figure:
    """The figure from a frontier document: its per-setting summary (``settings``), its floors (same prompt other
    seed for PSNR, SSIM and motion error; training clips' own residual and nearest distance, where present), its
    saving axis, and — when it names them — the measures to draw (``drawn``) and their titles."""
    fl = data.get("floors") or {}
    floors = {}
    for measure, key, label in (("psnr", "seed_psnr", "other seed"), ("ssim", "seed_ssim", "other seed"),
                                ("motion_error", "seed_motion_error", "other seed"),
                                ("residual", "train_residual", "training clips"),
                                ("jitter", "train_jitter", "training clips"),
                                ("flicker", "train_flicker", "training clips"),
                                ("nn_motion", "train_nn_motion", "held-out training clips"),
                                ("nn_latent", "train_nn_latent", "held-out training clips")):
        value = (fl.get(key) or {}).get("mean")
        if isinstance(value, (int, float)) and value == value:
            floors[measure] = (float(value), f"floor: {label} (mean)")
    kw.setdefault("saving", data.get("saving_axis", "saving_thread_cpu_s"))
    if data.get("drawn"):
        kw.setdefault("measures", tuple(data["drawn"]))
    if data.get("measure_titles"):
        kw.setdefault("titles", data["measure_titles"])
    if data.get("baseline") and data.get("study"):
        kw.setdefault("title", f"Speed–quality frontier of {data['study']} against {data['baseline']} "
                               "(95 % CI by prompt; dashed: floor)")
    return frontier_figure(data["settings"], floors, **kw)
