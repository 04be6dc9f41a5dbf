"""Figures of the block probes: step × block heat maps, the expert switch marked; attention's temporal reach by noise.

Inputs are arrays (one run's ``run.blocks.metrics()`` reduced by :func:`step_block_tables`, or a study's means), so
the same figures serve a run and a set of runs. Plotly figures; ``views.static.export_figures`` writes PNGs.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["step_block_tables", "block_heatmaps", "reach_curves", "HEATMAP_PANELS"]

HEATMAP_PANELS = (
    ("continuity", "adjacent-frame cosine of the block output", "Viridis"),
    ("excess", "adjacent-frame cosine − cross-clip floor", "Viridis"),
    ("update", "update size ‖out − in‖ / ‖in‖", "Magma"),
    ("change", "step-to-step change of the update (rel. L1)", "Cividis"),
    ("locality", "attention at d ≤ 1 ÷ uniform", "Plasma"),
)


def step_block_tables(metrics: dict[str, np.ndarray], branch: int = 0) -> dict[str, np.ndarray]:
    """[S, block] tables of one branch (0: cond), batch-averaged: ``continuity`` (cosine averaged over frame pairs),
    ``update``, ``change``; and ``reach`` [S, block, distance] averaged over heads."""
    out = {}
    if "cos" in metrics:
        out["continuity"] = np.nanmean(metrics["cos"][:, branch], axis=(1, 3))
    for name in ("update", "change"):
        if name in metrics:
            out[name] = np.nanmean(metrics[name][:, branch], axis=1)
    if "reach" in metrics:
        out["reach"] = np.nanmean(metrics["reach"][:, branch], axis=(1, 3))
    return out


def _switch_step(experts: Sequence[str]) -> int | None:
    for s in range(1, len(experts)):
        if experts[s] != experts[s - 1]:
            return s
    return None


def block_heatmaps(tables: dict[str, np.ndarray], blocks: Sequence[int], sigmas: Sequence[float],
                   experts: Sequence[str], title: str = "") -> Any:
    """Heat maps (step on y, σ in the labels; block on x) of ``tables`` (:func:`step_block_tables`); a dashed
    line where the expert changes."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    panels = [p for p in HEATMAP_PANELS if p[0] in tables]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[1] for p in panels], horizontal_spacing=0.09)
    labels = [f"{s} (σ={sig:.2f})" for s, sig in enumerate(sigmas)]
    switch = _switch_step(list(experts))
    for col, (name, _, scale) in enumerate(panels, start=1):
        z = tables[name]
        lo, hi = fig.layout["xaxis" + ("" if col == 1 else str(col))].domain
        fig.add_trace(go.Heatmap(z=z, x=[str(b) for b in blocks], y=labels, colorscale=scale,
                                 colorbar=dict(orientation="h", x=(lo + hi) / 2, xanchor="center", y=-0.16,
                                               len=(hi - lo) * 0.95, thickness=10),
                                 hovertemplate="block %{x}<br>step %{y}<br>%{z:.4f}<extra>" + name + "</extra>"),
                      row=1, col=col)
        if switch is not None:
            fig.add_shape(type="line", xref=f"x{col if col > 1 else ''} domain", yref=f"y{col if col > 1 else ''}",
                          x0=0, x1=1, y0=switch - 0.5, y1=switch - 0.5, line=dict(color="white", width=2, dash="dash"))
        fig.update_xaxes(title_text="block", title_standoff=2, row=1, col=col)
        fig.update_yaxes(autorange="reversed", showticklabels=col == 1, row=1, col=col)
    fig.update_layout(title=title + ("  (dashed: expert switch)" if switch is not None else ""), height=560,
                      margin=dict(l=120, r=30, t=70, b=90), font=dict(size=12))
    return fig


def reach_curves(reach: np.ndarray, sigmas: Sequence[float], steps: Sequence[int], low: np.ndarray | None = None,
                 high: np.ndarray | None = None, floor: np.ndarray | None = None, title: str = "") -> Any:
    """Share of attention mass against frame distance d, one line per chosen step (``reach`` [S, F'] averaged over
    blocks and heads, or any [S, F'] table); ``low``/``high`` a CI band, ``floor`` [F'] a reference line (e.g. the
    share uniform attention would give)."""
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale

    d = np.arange(reach.shape[-1])
    fig = go.Figure()
    colours = sample_colorscale("Plasma", [i / max(1, len(steps) - 1) * 0.85 for i in range(len(steps))])
    for colour, s in zip(colours, steps):
        name = f"step {s}, σ={sigmas[s]:.2f}"
        if low is not None and high is not None:
            fig.add_trace(go.Scatter(x=np.r_[d, d[::-1]], y=np.r_[high[s], low[s][::-1]], fill="toself",
                                     fillcolor=colour.replace("rgb", "rgba").replace(")", ", 0.15)"),
                                     line=dict(width=0), showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=d, y=reach[s], mode="lines+markers", name=name, line=dict(color=colour)))
    if floor is not None:
        fig.add_trace(go.Scatter(x=d, y=floor, mode="lines", name="uniform attention", line=dict(color="grey",
                                                                                                 dash="dot")))
    fig.update_layout(title=title, xaxis_title="frame distance d (latent frames)",
                      yaxis_title="share of attention mass", yaxis_type="log", height=460,
                      margin=dict(l=70, r=20, t=60, b=50))
    return fig
