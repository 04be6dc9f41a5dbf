"""Plotly figures of one or more runs (from ``RunSeries``): continuity, heatmaps, noise floor and norms,
step change, frame similarity.

Every string that comes from a file (labels, expert names, prompt) goes through :func:`esc` before it
reaches a title, legend entry, hover label or annotation: plotly renders those as HTML.
"""

from __future__ import annotations

import html
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .series import RunSeries

__all__ = ["continuity_figure", "heatmap_figure", "floor_and_norms_figure", "step_change_figure",
           "similarity_figure", "feasibility_figure", "all_figures", "esc", "space_name", "FIGURE_NAMES", "SPACE_NAMES"]

SPACE_NAMES = {"x0": "x̂₀ (clean estimate)", "eps": "ε̂ (noise estimate)", "x_t": "x_t (noisy latent)",
               "pred": "model prediction", "pred_cond": "conditional prediction",
               "pred_uncond": "unconditional prediction"}
COLORS = qualitative.Plotly
PHASE_FILL = ("rgba(239,85,59,0.09)", "rgba(254,203,82,0.13)", "rgba(0,204,150,0.09)", "rgba(99,110,250,0.08)")
DASHES = {"pred": "solid", "pred_cond": "dash", "pred_uncond": "dot"}
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x")
HOVER = ("step %{x}<br>t = %{customdata[0]:.1f}<br>σ = %{customdata[1]:.4f}<br>expert: %{customdata[2]}"
         "<br>{metric} = %{y:.5g}<extra>%{fullData.name}</extra>")


def esc(text: Any) -> str:
    """HTML-escape a string read from a file (quotes too)."""
    return html.escape(str(text), quote=True)


def space_name(space: str) -> str:
    return SPACE_NAMES.get(space, esc(space))


def _hover(metric: str) -> str:
    return HOVER.replace("{metric}", metric)


def _custom(s: RunSeries, idx: np.ndarray | None = None) -> np.ndarray:
    """[S, 3] hover data: timestep, σ, escaped expert name."""
    cd = np.empty((s.num_steps, 3), dtype=object)
    cd[:, 0], cd[:, 1], cd[:, 2] = s.timesteps, s.sigmas, [esc(e) for e in s.experts]
    return cd if idx is None else cd[idx]


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _shade_phases(fig: go.Figure, s: RunSeries, annotate: bool = True) -> None:
    """Shade the phases of ``s`` (steps start+1 … stop) on every subplot of ``fig``."""
    for k, (name, start, stop) in enumerate(s.phases):
        if stop <= start:
            continue
        note = dict(annotation_text=esc(f"{name} {start + 1}–{stop}"), annotation_position="top left",
                    annotation_font_size=10, annotation_font_color="#666") if annotate else {}
        fig.add_vrect(x0=start + 0.5, x1=stop + 0.5, fillcolor=PHASE_FILL[k % len(PHASE_FILL)], line_width=0,
                      layer="below", row="all", col="all", **note)


def _mark_switches(fig: go.Figure, s: RunSeries, color: str, annotate: bool) -> None:
    """A dashed vertical line where another expert takes over (between step k-1 and k)."""
    for step in s.switches:
        note = {}
        if annotate:
            b = s.attrs.get("boundary_timestep")
            text = "expert switch → " + esc(s.experts[step - 1])
            if isinstance(b, (int, float)):
                text += f" (t < {b:g})"
            note = dict(annotation_text=text, annotation_position="bottom right", annotation_font_size=10)
        fig.add_vline(x=step - 0.5, line_dash="dash", line_color=color, line_width=1.5, row="all", col="all", **note)


def _phase_note(series: Sequence[RunSeries]) -> str:
    if len({s.num_steps for s in series}) > 1:
        return f" — phases shaded for {esc(series[0].label)}"
    return ""


def _finish(fig: go.Figure, title: str, height: int, top: int = 70) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, font_size=16), template="plotly_white", height=height,
                      hovermode="closest", legend=dict(orientation="h", yanchor="top", y=-0.2, x=0),
                      margin=dict(l=60, r=30, t=top, b=40))
    return fig


def _new_floor(floors: list[np.ndarray], s: RunSeries) -> bool:
    """True (and remembered) when ``s``'s noise floor differs from every one in ``floors``."""
    if any(f.shape == s.noise_floor.shape and np.allclose(f, s.noise_floor) for f in floors):
        return False
    floors.append(s.noise_floor)
    return True


def continuity_figure(series: Sequence[RunSeries]) -> go.Figure:
    """The original two-subplot layout: normalised L2 and cosine of adjacent frames against step.

    Mean over frame pairs per step; the noise floor (cosine x_t shows from noise alone at σ) is overlaid on
    the cosine; phases are shaded and expert switches marked.
    """
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=(
        "Normalized L2 distance (adjacent frames)", "Cosine similarity (adjacent frames)"))
    floors: list[np.ndarray] = []
    for i, s in enumerate(series):
        name, color, cd = esc(s.label), _color(i), _custom(s)
        common = dict(x=s.steps, customdata=cd, mode="lines+markers", legendgroup=name, name=name,
                      line=dict(color=color, width=2), marker=dict(size=5))
        fig.add_trace(go.Scatter(y=s.l2_mean, hovertemplate=_hover("mean L2"), **common), row=1, col=1)
        fig.add_trace(go.Scatter(y=s.cos_mean, hovertemplate=_hover("mean cos"), showlegend=False, **common),
                      row=1, col=2)
        if _new_floor(floors, s):
            label = "noise floor" + (f" ({name})" if len(series) > 1 else "")
            fig.add_trace(go.Scatter(x=s.steps, y=s.noise_floor, customdata=cd, mode="lines", name=label,
                                     legendgroup=label, line=dict(color="#888", dash="dot", width=1.5),
                                     hovertemplate=_hover("noise floor")), row=1, col=2)
        _mark_switches(fig, s, color if len(series) > 1 else "#555", annotate=(i == 0))
    _shade_phases(fig, series[0])
    fig.update_xaxes(title_text="denoising step")
    fig.update_yaxes(title_text="normalized L2", row=1, col=1)
    fig.update_yaxes(title_text="cosine", row=1, col=2)
    sim = " — SIMULATED data" if any(s.simulated for s in series) else ""
    return _finish(fig, f"Temporal continuity of {space_name(series[0].space)}{sim}{_phase_note(series)}", 470)


def _heat_custom(s: RunSeries) -> np.ndarray:
    """[F-1, S, 3] hover data for step × pair heatmaps."""
    return np.broadcast_to(_custom(s)[None], (s.num_pairs, s.num_steps, 3))


def heatmap_figure(series: Sequence[RunSeries]) -> go.Figure:
    """Step × frame-pair heatmaps of normalised L2, cosine and norm ratio, one row per run."""
    rows = len(series)
    titles = []
    for s in series:
        prefix = f"{esc(s.label)}: " if rows > 1 else ""
        titles += [prefix + "normalized L2", prefix + "cosine",
                   prefix + "norm ratio ‖x<sub>f+1</sub>‖ / ‖x<sub>f</sub>‖"]
    height = 140 + 280 * rows
    fig = make_subplots(rows=rows, cols=3, horizontal_spacing=0.07, vertical_spacing=min(0.3, 90 / height),
                        subplot_titles=titles)
    specs = (("l2", "coloraxis", "normalized L2"), ("cos", "coloraxis2", "cos"),
             ("norm_ratio", "coloraxis3", "norm ratio"))
    for r, s in enumerate(series, start=1):
        cd = _heat_custom(s)
        pairs = [f"{p}→{p + 1}" for p in range(s.num_pairs)]
        for c, (attr, axis, metric) in enumerate(specs, start=1):
            fig.add_trace(go.Heatmap(
                z=getattr(s, attr).T, x=s.steps, y=pairs, customdata=cd, coloraxis=axis, name=esc(s.label),
                hovertemplate=("step %{x}, frames %{y}<br>t = %{customdata[0]:.1f}<br>σ = %{customdata[1]:.4f}"
                               "<br>expert: %{customdata[2]}<br>" + metric + " = %{z:.5g}<extra>%{fullData.name}"
                               "</extra>")), row=r, col=c)
    fig.update_xaxes(title_text="denoising step", row=rows)
    fig.update_yaxes(title_text="frame pair", col=1)
    ratio_span = max((float(np.nanmax(np.abs(np.log(s.norm_ratio)))) for s in series
                      if np.isfinite(s.norm_ratio).any()), default=0.1) or 0.1
    bars = []
    for c in range(3):
        dom = fig.layout[f"xaxis{c + 1 if c else ''}"].domain
        bars.append(dict(x=dom[1] + 0.005, thickness=10, len=0.9 if rows == 1 else 0.6, y=0.5))
    fig.update_layout(
        coloraxis=dict(colorscale="Viridis", colorbar=bars[0]),
        coloraxis2=dict(colorscale="Viridis", colorbar=bars[1]),
        coloraxis3=dict(colorscale="RdBu", cmid=1.0, cmin=float(np.exp(-ratio_span)), cmax=float(np.exp(ratio_span)),
                        colorbar=bars[2]))
    return _finish(fig, f"Per frame pair and step: {space_name(series[0].space)}", height)


def floor_and_norms_figure(series: Sequence[RunSeries]) -> go.Figure:
    """Left: adjacent-frame cosine of x_t against the noise floor; right: norm ratio (mean, min–max band)."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=(
        "x_t cosine vs noise floor (static content from noise alone)",
        f"Norm ratio ‖x<sub>f+1</sub>‖ / ‖x<sub>f</sub>‖ of {space_name(series[0].space)}: "
        "mean, min–max over pairs"))
    floors: list[np.ndarray] = []
    for i, s in enumerate(series):
        name, color, cd = esc(s.label), _color(i), _custom(s)
        if s.xt_cos_mean is not None:
            fig.add_trace(go.Scatter(x=s.steps, y=s.xt_cos_mean, customdata=cd, mode="lines+markers", name=name,
                                     legendgroup=name, line=dict(color=color), marker=dict(size=5),
                                     hovertemplate=_hover("x_t cos")), row=1, col=1)
        if _new_floor(floors, s):
            fig.add_trace(go.Scatter(x=s.steps, y=s.noise_floor, customdata=cd, mode="lines",
                                     name="noise floor" + (f" ({name})" if len(series) > 1 else ""),
                                     line=dict(color=color if len(series) > 1 else "#888", dash="dot"),
                                     hovertemplate=_hover("noise floor")), row=1, col=1)
        with np.errstate(all="ignore"):
            lo, hi = np.nanmin(s.norm_ratio, axis=1), np.nanmax(s.norm_ratio, axis=1)
            mean = np.nanmean(s.norm_ratio, axis=1)
        fig.add_trace(go.Scatter(x=np.concatenate([s.steps, s.steps[::-1]]), y=np.concatenate([hi, lo[::-1]]),
                                 fill="toself", fillcolor=color, opacity=0.15, line=dict(width=0), hoverinfo="skip",
                                 showlegend=False, legendgroup=name), row=1, col=2)
        fig.add_trace(go.Scatter(x=s.steps, y=mean, customdata=cd, mode="lines+markers", name=name, legendgroup=name,
                                 showlegend=s.xt_cos_mean is None, line=dict(color=color), marker=dict(size=5),
                                 hovertemplate=_hover("mean norm ratio")), row=1, col=2)
    if all(s.xt_cos_mean is None for s in series):
        fig.add_annotation(text="x_t was not captured: noise floor only", xref="x domain", yref="y domain",
                           x=0.5, y=0.5, showarrow=False, font_color="#888")
    _shade_phases(fig, series[0], annotate=False)
    fig.update_xaxes(title_text="denoising step")
    fig.update_yaxes(title_text="cosine", row=1, col=1)
    fig.update_yaxes(title_text="norm ratio", row=1, col=2)
    return _finish(fig, "Noise floor and frame norms", 440)


def _segments(s: RunSeries) -> list[tuple[str, np.ndarray]]:
    """(expert, step indices) for each expert in order of first appearance, leaving out the steps where the
    expert changes (their step change compares two different networks)."""
    names = list(dict.fromkeys(s.experts.tolist()))
    return [(n, np.flatnonzero((s.experts == n) & ~s.expert_switch)) for n in names]


def _legend_key(fig: go.Figure, name: str, group: str, line: dict[str, Any] | None = None,
                marker: dict[str, Any] | None = None) -> None:
    """A legend-only entry (no data): explains a colour, dash or symbol; clicking it toggles ``group``."""
    mode = "lines+markers" if line and marker else ("lines" if line else "markers")
    fig.add_trace(go.Scatter(x=[None], y=[None], mode=mode, name=name, legendgroup=group, line=line,
                             marker=marker, hoverinfo="skip"), row=1, col=1)


def step_change_figure(series: Sequence[RunSeries]) -> go.Figure:
    """Step-to-step change of the prediction per branch and expert (relative L1, magnitude ratio) and the
    cond–uncond gap where the CFG branches were captured.

    Colour: run (several runs) or branch (one run); dash: branch; marker: expert. The legend lists each once.
    """
    has_gap = any(s.gap is not None for s in series)
    titles = ["relative L1 change ‖p<sub>s</sub> − p<sub>s−1</sub>‖₁ / ‖p<sub>s−1</sub>‖₁",
              "magnitude ratio ‖p<sub>s</sub>‖₂ / ‖p<sub>s−1</sub>‖₂"]
    if has_gap:
        titles.append("cond–uncond gap ‖c − u‖₂ / ‖c‖₂")
    fig = make_subplots(rows=1, cols=len(titles), horizontal_spacing=0.07, subplot_titles=titles)
    multi = len(series) > 1
    branches = list(dict.fromkeys(b for s in series for b in s.step_change))
    experts = list(dict.fromkeys(e for s in series for e in s.experts.tolist()))
    symbol = {e: SYMBOLS[k % len(SYMBOLS)] for k, e in enumerate(experts)}
    for i, s in enumerate(series):
        label = esc(s.label)
        for b, (branch, (rel, ratio)) in enumerate(s.step_change.items()):
            color = _color(i) if multi else _color(branches.index(branch))
            for expert, idx in _segments(s):
                style = dict(mode="lines+markers", showlegend=False, legendgroup=label if multi else branch,
                             name=" · ".join(([label] if multi else []) + [branch, esc(expert)]),
                             customdata=_custom(s, idx), line=dict(color=color, dash=DASHES.get(branch, "solid")),
                             marker=dict(symbol=symbol[expert], size=6))
                fig.add_trace(go.Scatter(x=s.steps[idx], y=rel[idx], hovertemplate=_hover("rel. L1"), **style),
                              row=1, col=1)
                fig.add_trace(go.Scatter(x=s.steps[idx], y=ratio[idx], hovertemplate=_hover("ratio"), **style),
                              row=1, col=2)
        if s.gap is not None:
            fig.add_trace(go.Scatter(x=s.steps, y=s.gap, customdata=_custom(s), mode="lines+markers",
                                     name=(label + " · " if multi else "") + "cond–uncond gap",
                                     legendgroup=label if multi else "gap", showlegend=not multi,
                                     line=dict(color=_color(i) if multi else "#444"), marker=dict(size=5),
                                     hovertemplate=_hover("gap")), row=1, col=3)
        _mark_switches(fig, s, _color(i) if multi else "#555", annotate=False)
    for i, s in enumerate(series if multi else []):
        _legend_key(fig, esc(s.label), esc(s.label), line=dict(color=_color(i)))
    for k, branch in enumerate(branches):
        _legend_key(fig, branch, branch if not multi else f"key:{branch}",
                    line=dict(color="#777" if multi else _color(k), dash=DASHES.get(branch, "solid")))
    if len(experts) > 1:
        for expert in experts:
            _legend_key(fig, esc(expert), f"key:{expert}", marker=dict(symbol=symbol[expert], color="#777", size=7))
    if not branches:
        fig.add_annotation(text="no prediction was captured", xref="x domain", yref="y domain", x=0.5, y=0.5,
                           showarrow=False, font_color="#888")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="denoising step")
    notes = []
    if any(s.switches for s in series):
        notes.append("steps where the expert changes are left out: they compare two networks")
    if not has_gap:
        notes.append("record with cfg_branches=True for the cond / uncond branches and their gap")
    note = f"<br><sup>{'; '.join(notes)}</sup>" if notes else ""
    return _finish(fig, "Step-to-step change of the prediction, per branch and expert" + note, 470,
                   top=95 if notes else 70)


def similarity_figure(s: RunSeries) -> go.Figure:
    """F × F cosine of every frame pair at a few steps of one run."""
    steps = sorted(s.frame_similarity)
    fig = make_subplots(rows=1, cols=len(steps), horizontal_spacing=0.05,
                        subplot_titles=[f"step {k} (σ = {s.sigmas[k - 1]:.3f})" for k in steps])
    for c, k in enumerate(steps, start=1):
        fig.add_trace(go.Heatmap(z=s.frame_similarity[k], coloraxis="coloraxis", name=f"step {k}",
                                 hovertemplate="frames %{x} and %{y}<br>cos = %{z:.5f}<extra>%{fullData.name}</extra>"),
                      row=1, col=c)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{c if c > 1 else ''}", row=1, col=c)
    frames = next(iter(s.frame_similarity.values())).shape[-1]
    fig.update_xaxes(title_text="frame", dtick=max(1, frames // 8), constrain="domain")
    fig.update_yaxes(dtick=max(1, frames // 8))
    fig.update_layout(coloraxis=dict(colorscale="Viridis", colorbar=dict(thickness=10)))
    return _finish(fig, f"Frame-similarity matrices of {space_name(s.space)}: {esc(s.label)}", 420)


# File-name stems of the figures of all_figures, in order.
def feasibility_figure(series: Sequence[RunSeries]) -> go.Figure | None:
    """Frame-truncation feasibility: error of x̂₀ rebuilt from K key frames by linear interpolation, per step.

    Low error from some step on says the frames in between could be interpolated there instead of denoised.
    None when no run has the curve (x̂₀ not captured).
    """
    have = [(i, s) for i, s in enumerate(series) if s.feasibility is not None]
    if not have:
        return None
    keep = have[0][1].feasibility[0]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=(
        f"relative L2 error ‖x̂₀(interp. from {keep} key frames) − x̂₀‖ / ‖x̂₀‖", "cosine to the real x̂₀"))
    for i, s in have:
        _, rel, cos = s.feasibility
        name, color, cd = esc(s.label), _color(i), _custom(s)
        common = dict(x=s.steps, customdata=cd, mode="lines+markers", legendgroup=name, name=name,
                      line=dict(color=color, width=2), marker=dict(size=5))
        fig.add_trace(go.Scatter(y=rel, hovertemplate=_hover("rel. error"), **common), row=1, col=1)
        fig.add_trace(go.Scatter(y=cos, hovertemplate=_hover("cosine"), showlegend=False, **common), row=1, col=2)
        _mark_switches(fig, s, color if len(series) > 1 else "#555", annotate=(i == have[0][0]))
    fig.add_hline(y=0.1, line=dict(color="#999", dash="dash", width=1), row=1, col=1)
    _shade_phases(fig, have[0][1])
    fig.update_xaxes(title_text="denoising step")
    fig.update_yaxes(title_text="relative L2 error", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="cosine", row=1, col=2)
    return _finish(fig, f"Frame truncation feasibility: x̂₀ of all frames from {keep} key frames "
                        "(dashed: 10 % error)", 430)


FIGURE_NAMES = ("continuity", "heatmaps", "noise_floor", "step_change", "frame_similarity", "feasibility")


def all_figures(series: Sequence[RunSeries]) -> list[go.Figure]:
    """The dashboard's figures, in the order of FIGURE_NAMES."""
    figures = [continuity_figure(series), heatmap_figure(series), floor_and_norms_figure(series),
               step_change_figure(series), similarity_figure(series[0])]
    feasibility = feasibility_figure(series)
    return figures + ([feasibility] if feasibility is not None else [])
