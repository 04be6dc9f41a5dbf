"""Plotly figures of one or more runs (from ``RunSeries``): continuity, heatmaps, noise floor and norms,
step change, frame similarity.

Every string that comes from a file (labels, expert names, prompt) goes through :func:`esc` before it
reaches a title, legend entry, hover label or annotation: plotly renders those as HTML.
"""

from __future__ import annotations

import html
import re
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .progress import progress
from .series import RunSeries

__all__ = ["continuity_figure", "heatmap_figure", "floor_and_norms_figure", "step_change_figure",
           "similarity_figure", "feasibility_figure", "all_figures", "esc", "space_name", "phase_label",
           "FIGURE_NAMES", "SPACE_NAMES", "STEP_TITLE"]

SPACE_NAMES = {"x0": "x̂₀ (clean estimate)", "eps": "ε̂ (noise estimate)", "x_t": "x_t (noisy latent)",
               "pred": "model prediction", "pred_cond": "conditional prediction",
               "pred_uncond": "unconditional prediction"}
COLORS = qualitative.Plotly
PHASE_FILL = ("rgba(239,85,59,0.09)", "rgba(254,203,82,0.13)", "rgba(0,204,150,0.09)", "rgba(99,110,250,0.08)")
PHASE_STRIP = ("rgba(239,85,59,0.30)", "rgba(254,203,82,0.45)", "rgba(0,204,150,0.30)", "rgba(99,110,250,0.28)")
STEP_TITLE = "denoising step (0-based; 0 = noisiest)"
HEAT_BOTTOM_PX = 120  # room under the heatmaps for their horizontal colour bars
PHASE_BAND_PX = 20  # subplot titles of per-step panels sit this much higher, above the phase band
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


def _refs(fig: go.Figure, row: int, col: int) -> tuple[str, str]:
    """("x3", "y3"): the axis references of subplot (row, col), as shapes and annotations name them."""
    sp = fig.get_subplot(row, col)
    return sp.xaxis.plotly_name.replace("axis", ""), sp.yaxis.plotly_name.replace("axis", "")


def _cells(fig: go.Figure) -> list[tuple[int, int]]:
    rows, cols = fig._get_subplot_rows_columns()
    return [(r, c) for r in rows for c in cols if fig.get_subplot(r, c) is not None]


def phase_label(name: str, start: int, stop: int, html: bool = True) -> str:
    """"early 0–6" from ("Early steps", 0, 7): steps start … stop − 1, 0-based like every step number; custom names
    keep their words. HTML-escaped unless ``html`` is False (matplotlib)."""
    words = str(name).strip()
    if words.lower().endswith(" steps"):
        words = words[: -len(" steps")].lower()
    elif words.lower().startswith("steps "):
        words = "steps"
    text = f"{words} {start}–{stop - 1}" if stop - start > 1 else f"{words} {start}"
    return esc(text) if html else text


def _subplots(**kw: Any) -> go.Figure:
    """make_subplots for per-step panels: subplot titles lifted to make room for the phase band."""
    fig = make_subplots(**kw)
    for a in fig.layout.annotations:
        a.update(yshift=PHASE_BAND_PX)
    return fig


def _add(fig: go.Figure, shapes: Sequence[dict[str, Any]], annotations: Sequence[dict[str, Any]] = ()) -> None:
    """Queue shapes and annotations; :func:`_flush` (called by ``_finish``) adds them all at once: plotly
    validates the whole list on every update, so adding them one at a time is quadratic."""
    pending = fig.__dict__.setdefault("_lp_pending", ([], []))
    pending[0].extend(shapes)
    pending[1].extend(annotations)


def _flush(fig: go.Figure) -> None:
    shapes, annotations = fig.__dict__.pop("_lp_pending", ([], []))
    if shapes:
        fig.layout.shapes = (*fig.layout.shapes, *shapes)
    if annotations:
        fig.layout.annotations = (*fig.layout.annotations, *annotations)


def _shade_phases(fig: go.Figure, s: RunSeries, cells: Sequence[tuple[int, int]] | None = None,
                  background: bool = True) -> None:
    """Mark the phases of ``s`` (steps start … stop − 1) on each (row, col) of ``cells`` (default: every subplot).

    Each subplot gets a coloured band just above its plot area with the phases' names and steps (never over
    the data); line plots (``background``) also get the phases shaded behind the curves, heatmaps (whose
    cells would hide a background) thin boundary lines instead. Shapes are named "phase: …" / "phase boundary".
    """
    phases = [(n, a, b) for n, a, b in s.phases if b > a]
    shapes, notes = [], []
    for r, c in cells if cells is not None else _cells(fig):
        xr, yr = _refs(fig, r, c)
        for j, (name, start, stop) in enumerate(phases):
            box = dict(type="rect", xref=xr, yref=f"{yr} domain", x0=start - 0.5, x1=stop - 0.5, line_width=0,
                       name=f"phase: {esc(name)} {start}–{stop - 1}")
            shapes.append(dict(box, y0=1.01, y1=1.075, fillcolor=PHASE_STRIP[j % len(PHASE_STRIP)], layer="above"))
            if background:
                shapes.append(dict(box, y0=0, y1=1, fillcolor=PHASE_FILL[j % len(PHASE_FILL)], layer="below"))
            elif j:
                shapes.append(dict(type="line", xref=xr, yref=f"{yr} domain", x0=start - 0.5, x1=start - 0.5,
                                   y0=0, y1=1, line=dict(color="rgba(255,255,255,0.9)", width=1, dash="dot"),
                                   name="phase boundary"))
            notes.append(dict(text=phase_label(name, start, stop), xref=xr, yref=f"{yr} domain",
                              x=(start + stop - 1) / 2, y=1.0425, yanchor="middle", showarrow=False,
                              font=dict(size=9, color="#444")))
    _add(fig, shapes, notes)


def _mark_switches(fig: go.Figure, s: RunSeries, color: str, annotate: bool,
                   cells: Sequence[tuple[int, int]] | None = None, halo: bool = False) -> None:
    """A dashed vertical line where another expert takes over (between steps k − 1 and k, at k − 0.5), on each of
    ``cells``."""
    shapes, notes = [], []
    for step in s.switches:
        for k, (r, c) in enumerate(cells if cells is not None else _cells(fig)):
            xr, yr = _refs(fig, r, c)
            line = dict(type="line", xref=xr, yref=f"{yr} domain", x0=step - 0.5, x1=step - 0.5, y0=0, y1=1,
                        name="expert switch")
            if halo:  # a light line under the dashes keeps them visible on dark heatmap cells
                shapes.append(dict(line, line=dict(color="rgba(255,255,255,0.85)", width=3.5)))
            shapes.append(dict(line, line=dict(color=color, dash="dash", width=1.5)))
            if annotate and k == 0:
                b = s.attrs.get("boundary_timestep")
                text = "expert switch → " + esc(s.experts[step])
                if isinstance(b, (int, float)):
                    text += f" (t < {b:g})"
                notes.append(dict(text=text, xref=xr, yref=f"{yr} domain", x=step - 0.5, y=0.0, xanchor="left",
                                  yanchor="bottom", showarrow=False, font=dict(size=10, color="#444"),
                                  bgcolor="rgba(255,255,255,0.7)"))
    _add(fig, shapes, notes)


def _mark_changed(fig: go.Figure, series: Sequence[RunSeries], cells: Sequence[tuple[int, int]] | None = None
                  ) -> None:
    """Hatch-like grey bands over the steps an intervention changed (frame truncation: the non-key frames of
    those steps are interpolated fills, so continuity there describes the fill), one band per run that has
    them, labelled at the bottom of the first subplot. Shapes are named "intervened: <run>"."""
    shapes, notes = [], []
    for s in series:
        mask = s.changed_steps
        if mask is None or not np.any(mask):
            continue
        idx = np.flatnonzero(mask)
        runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
        for k, (r, c) in enumerate(cells if cells is not None else _cells(fig)):
            xr, yr = _refs(fig, r, c)
            for run in runs:
                shapes.append(dict(type="rect", xref=xr, yref=f"{yr} domain", x0=run[0] - 0.5, x1=run[-1] + 0.5,
                                   y0=0, y1=1, fillcolor="rgba(90,90,90,0.10)", layer="below",
                                   line=dict(color="rgba(90,90,90,0.55)", width=1, dash="dot"),
                                   name=f"intervened: {esc(s.label)}"))
                if k == 0:
                    notes.append(dict(text=f"{esc(s.label)}: truncated (fills)", xref=xr, yref=f"{yr} domain",
                                      x=(run[0] + run[-1]) / 2, y=0.98, yanchor="top", showarrow=False,
                                      font=dict(size=9, color="#333"), bgcolor="rgba(255,255,255,0.75)"))
    _add(fig, shapes, notes)


def _first_switching(series: Sequence[RunSeries]) -> RunSeries | None:
    """The first run with an expert switch (its switch is the one labelled)."""
    return next((s for s in series if s.switches), None)


def _notes(series: Sequence[RunSeries], phases: bool = True) -> list[str]:
    """Caption lines about the shading: whose phases (runs of different lengths) and how they were fitted."""
    out = []
    if phases and len({tuple(s.phases) for s in series}) > 1:
        out.append(f"phases shaded for {esc(series[0].label)}")
    multi = len(series) > 1
    for s in series:
        if s.phase_note:
            out.append((f"{esc(s.label)}: " if multi else "") + esc(s.phase_note))
        if s.intervention:  # grey dotted bands: steps whose non-key frames the intervention filled in
            out.append((f"{esc(s.label)}: " if multi else "") + esc(s.intervention) + "; grey bands")
    return out


NOTE_CHARS = 105  # a note line's visible characters: fits a figure 800 px wide (plotly does not wrap text)


def wrap_html(text: str, width: int = NOTE_CHARS) -> list[str]:
    """Lines of at most ``width`` visible characters (tags and entities not counted, never split), broken at
    spaces: plotly draws a title or annotation on one line however wide, so long notes were cut off."""
    lines: list[str] = []
    line, seen = "", 0
    for word in text.split(" "):
        n = len(html.unescape(re.sub(r"<[^>]+>", "", word)))
        if line and seen + 1 + n > width:
            lines.append(line)
            line, seen = word, n
        else:
            line, seen = (f"{line} {word}", seen + 1 + n) if line else (word, n)
    return lines + ([line] if line else [])


def _finish(fig: go.Figure, title: str, height: int, notes: Sequence[str] = (), top: int = 92) -> go.Figure:
    """Title (with ``notes`` as small lines under it, wrapped to fit 800 px), white template, legend below."""
    _flush(fig)
    notes = [line for n in notes if n for line in wrap_html(n)]
    text = title + "".join(f"<br><sup>{n}</sup>" for n in notes)
    extra = 16 * len(notes)
    fig.update_layout(title=dict(text=text, x=0.01, xanchor="left", yref="container", y=1 - 24 / (height + extra),
                                 yanchor="top", font_size=16),
                      template="plotly_white", height=height + extra, hovermode="closest",
                      legend=dict(orientation="h", yanchor="top", y=-0.2, x=0),
                      margin=dict(l=70, r=30, t=top + extra, b=40))
    return fig


def _log_axis(fig: go.Figure, values: Sequence[np.ndarray], row: int, col: int, title: str) -> None:
    """A log y axis labelled with full values at decades (1-2-5 or finer where the data span about a decade
    or less), faint unlabelled grid lines at the other multiples: none of plotly's bare "2 3 … 9" labels."""
    v = np.concatenate([np.ravel(np.asarray(a, dtype=np.float64)) for a in values] or [np.zeros(0)])
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        fig.update_yaxes(type="log", dtick=1, title_text=title, row=row, col=col)
        return
    lo, hi = float(np.log10(v.min())), float(np.log10(v.max()))
    span = hi - lo
    decades = range(int(np.floor(lo)) - 1, int(np.ceil(hi)) + 2)
    pad = 0.05 * max(span, 0.1)

    def inside(values: Sequence[float]) -> list[float]:
        return [x for x in values if lo - pad <= np.log10(x) <= hi + pad]

    # the coarsest of decades / 1-2-5 / finer that labels at least three ticks (one decade line alone reads
    # as no scale at all)
    for mantissas in ((1,), (1, 2, 5), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8)):
        ticks = inside([m * 10.0 ** k for k in decades for m in mantissas])
        if len(ticks) >= 3:
            break
    minor = inside([m * 10.0 ** k for k in decades for m in range(2, 10) if m not in mantissas])
    fig.update_yaxes(type="log", tickmode="array", tickvals=ticks, ticktext=[f"{x:.3g}" for x in ticks],
                     range=[lo - pad, hi + pad], title_text=title, row=row, col=col,
                     minor=dict(tickmode="array", tickvals=minor, ticks="", showgrid=True,
                                gridcolor="rgba(0,0,0,0.035)"))


def _new_floor(floors: list[np.ndarray], s: RunSeries) -> bool:
    """True (and remembered) when ``s``'s noise floor differs from every one in ``floors``."""
    if any(f.shape == s.noise_floor.shape and np.allclose(f, s.noise_floor) for f in floors):
        return False
    floors.append(s.noise_floor)
    return True


def _floor_trace(s: RunSeries, label: str, color: str) -> go.Scatter:
    return go.Scatter(x=s.steps, y=s.noise_floor, customdata=_custom(s), mode="lines", name=label, legendgroup=label,
                      line=dict(color=color, dash="dot", width=1.5), hovertemplate=_hover("noise floor"))


FLOOR_NOTE = ("dotted: noise floor, the cosine x_t shows for a perfectly static clip at this σ (noise alone); "
              "cos(x_t) / floor ≈ the content's own adjacent-frame cosine")


def continuity_figure(series: Sequence[RunSeries]) -> go.Figure:
    """The original two-subplot layout: normalised L2 and cosine of adjacent frames against step.

    Mean over frame pairs per step; phases are shaded and expert switches marked. The noise floor is
    defined on x_t, so it is overlaid only when the metrics are of x_t (else it is in floor_and_norms_figure).
    """
    space = series[0].space
    fig = _subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=(
        "Normalized L2 distance (adjacent frames)", "Cosine similarity (adjacent frames)"))
    floors: list[np.ndarray] = []
    for i, s in enumerate(series):
        name, color, cd = esc(s.label), _color(i), _custom(s)
        common = dict(x=s.steps, customdata=cd, mode="lines+markers", legendgroup=name, name=name,
                      line=dict(color=color, width=2), marker=dict(size=5))
        metric = "x_t " if space == "x_t" else ""
        fig.add_trace(go.Scatter(y=s.l2_mean, hovertemplate=_hover(metric + "mean L2"), **common), row=1, col=1)
        fig.add_trace(go.Scatter(y=s.cos_mean, hovertemplate=_hover(metric + "mean cos"), showlegend=False, **common),
                      row=1, col=2)
        if space == "x_t" and _new_floor(floors, s):
            label = "noise floor" + (f" ({name})" if len(series) > 1 else "")
            fig.add_trace(_floor_trace(s, label, color if len(series) > 1 else "#888"), row=1, col=2)
        _mark_switches(fig, s, color if len(series) > 1 else "#555", annotate=s is _first_switching(series))
    _shade_phases(fig, series[0])
    _mark_changed(fig, series)
    fig.update_xaxes(title_text=STEP_TITLE)
    fig.update_yaxes(title_text="normalized L2 distance", row=1, col=1)
    fig.update_yaxes(title_text="adjacent-frame cosine", row=1, col=2)
    sim = " — SIMULATED data" if any(s.simulated for s in series) else ""
    floor = FLOOR_NOTE if space == "x_t" else ("the noise floor is defined on x_t: it is drawn with x_t's own "
                                               "cosine under “Noise floor and frame norms”")
    return _finish(fig, f"Temporal continuity of {space_name(space)}{sim}", 470, [floor] + _notes(series))


def _heat_custom(s: RunSeries) -> np.ndarray:
    """[F-1, S, 3] hover data for step × pair heatmaps."""
    return np.broadcast_to(_custom(s)[None], (s.num_pairs, s.num_steps, 3))


def heatmap_figure(series: Sequence[RunSeries]) -> go.Figure:
    """Step × frame-pair heatmaps of normalised L2, cosine and norm ratio, one row per run, each row with its
    run's phases (a band above it) and expert switch."""
    rows = len(series)
    titles = []
    for r in range(rows):  # column titles on the first row; each row's run is named by its y-axis title
        titles += ["normalized L2", "cosine", "norm ratio ‖x<sub>f+1</sub>‖ / ‖x<sub>f</sub>‖"] if r == 0 else \
            ["", "", ""]
    height = 150 + 320 * rows
    fig = _subplots(rows=rows, cols=3, horizontal_spacing=0.07, vertical_spacing=min(0.3, 130 / height),
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
        cells = [(r, c) for c in (1, 2, 3)]
        _shade_phases(fig, s, cells, background=False)
        _mark_switches(fig, s, "#111", annotate=False, cells=cells, halo=True)
    # short: three full step titles side by side ran into each other at 800 px (the note says 0-based)
    fig.update_xaxes(title_text="denoising step", title_standoff=6)
    fig.update_yaxes(title_text="frame pair f→f+1", title_standoff=4)
    for r, s in enumerate(series, start=1):
        if rows > 1:
            fig.update_yaxes(title_text=f"<b>{esc(s.label)}</b><br>frame pair f→f+1", row=r, col=1)
        for c in (2, 3):  # the same frame pairs as column 1: their labels and title sat on the heat map beside
            fig.update_yaxes(title_text="", showticklabels=False, row=r, col=c)
    ratio_span = max((float(np.nanmax(np.abs(np.log(s.norm_ratio)))) for s in series
                      if np.isfinite(s.norm_ratio).any()), default=0.1) or 0.1
    notes = ["one row per frame pair (latent frames f and f+1), one column per denoising step (0-based; 0 = "
             "noisiest); band above: phases; dashed: expert switch"] + _notes(series, phases=False)
    _finish(fig, f"Per frame pair and step: {space_name(series[0].space)}", height, notes)
    # horizontal colour bars under their columns (beside the heatmaps they would crowd the next y axis)
    fig.update_layout(margin_b=HEAT_BOTTOM_PX, height=fig.layout.height + HEAT_BOTTOM_PX - fig.layout.margin.b)
    plot_h = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    bars = []
    for c, text in enumerate(("normalized L2", "adjacent-frame cosine",
                              "norm ratio ‖x<sub>f+1</sub>‖ / ‖x<sub>f</sub>‖")):
        dom = fig.layout[f"xaxis{c + 1 if c else ''}"].domain
        bars.append(dict(orientation="h", x=(dom[0] + dom[1]) / 2, xanchor="center", len=(dom[1] - dom[0]) * 0.9,
                         y=-62 / plot_h, yanchor="top", thickness=10, title=dict(text="colour: " + text, side="top")))
    return fig.update_layout(
        coloraxis=dict(colorscale="Viridis", colorbar=bars[0]),
        coloraxis2=dict(colorscale="Viridis", colorbar=bars[1]),
        coloraxis3=dict(colorscale="RdBu", cmid=1.0, cmin=float(np.exp(-ratio_span)), cmax=float(np.exp(ratio_span)),
                        colorbar=bars[2]))


def floor_and_norms_figure(series: Sequence[RunSeries]) -> go.Figure:
    """Left: adjacent-frame cosine of x_t against the noise floor (only for runs whose x_t was captured: the
    floor is defined on x_t); right: norm ratio (mean, min–max band)."""
    fig = _subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=(
        "x_t (noisy latent):<br>adjacent-frame cosine vs noise floor",
        f"Norm ratio ‖x<sub>f+1</sub>‖ / ‖x<sub>f</sub>‖ of {space_name(series[0].space)}:<br>"
        "mean, min–max over pairs"))
    floors: list[np.ndarray] = []
    multi = len(series) > 1
    for i, s in enumerate(series):
        name, color, cd = esc(s.label), _color(i), _custom(s)
        if s.xt_cos_mean is not None:
            fig.add_trace(go.Scatter(x=s.steps, y=s.xt_cos_mean, customdata=cd, mode="lines+markers", name=name,
                                     legendgroup=name, line=dict(color=color), marker=dict(size=5),
                                     hovertemplate=_hover("x_t cos")), row=1, col=1)
            if _new_floor(floors, s):
                fig.add_trace(_floor_trace(s, "noise floor" + (f" ({name})" if multi else ""),
                                           color if multi else "#888"), row=1, col=1)
        with np.errstate(all="ignore"):
            lo, hi = np.nanmin(s.norm_ratio, axis=1), np.nanmax(s.norm_ratio, axis=1)
            mean = np.nanmean(s.norm_ratio, axis=1)
        fig.add_trace(go.Scatter(x=np.concatenate([s.steps, s.steps[::-1]]), y=np.concatenate([hi, lo[::-1]]),
                                 fill="toself", fillcolor=color, opacity=0.15, line=dict(width=0), hoverinfo="skip",
                                 showlegend=False, legendgroup=name), row=1, col=2)
        fig.add_trace(go.Scatter(x=s.steps, y=mean, customdata=cd, mode="lines+markers", name=name, legendgroup=name,
                                 showlegend=s.xt_cos_mean is None, line=dict(color=color), marker=dict(size=5),
                                 hovertemplate=_hover("mean norm ratio")), row=1, col=2)
        _mark_switches(fig, s, color if multi else "#555", annotate=False)
    if all(s.xt_cos_mean is None for s in series):
        fig.add_annotation(text="x_t was not captured: no x_t cosine to set against the noise floor",
                           xref="x domain", yref="y domain", x=0.5, y=0.5, showarrow=False, font_color="#888")
    _shade_phases(fig, series[0])
    _mark_changed(fig, series)
    fig.update_xaxes(title_text=STEP_TITLE)
    fig.update_yaxes(title_text="adjacent-frame cosine of x_t", row=1, col=1)
    fig.update_yaxes(title_text="norm ratio ‖x<sub>f+1</sub>‖ / ‖x<sub>f</sub>‖", row=1, col=2)
    return _finish(fig, "Noise floor and frame norms", 440, [FLOOR_NOTE] + _notes(series), top=112)  # 2-line titles


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
    titles = ["relative L1 change<br>‖p<sub>s</sub> − p<sub>s−1</sub>‖₁ / ‖p<sub>s−1</sub>‖₁",  # two lines: three
              "magnitude ratio<br>‖p<sub>s</sub>‖₂ / ‖p<sub>s−1</sub>‖₂"]                # side by side fit 800 px
    if has_gap:
        titles.append("cond–uncond gap<br>‖c − u‖₂ / ‖c‖₂")
    fig = _subplots(rows=1, cols=len(titles), horizontal_spacing=0.07, subplot_titles=titles)
    multi = len(series) > 1
    branches = list(dict.fromkeys(b for s in series for b in s.step_change))
    experts = list(dict.fromkeys(e for s in series for e in s.experts.tolist()))
    symbol = {e: SYMBOLS[k % len(SYMBOLS)] for k, e in enumerate(experts)}
    shown: list[np.ndarray] = []  # the relative L1 values drawn (the log axis is fitted to them)
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
                shown.append(rel[idx])
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
    _shade_phases(fig, series[0])
    _mark_changed(fig, series)
    _log_axis(fig, shown, 1, 1,
              "relative L1 change (log scale)")
    fig.update_yaxes(title_text="magnitude ratio", row=1, col=2)
    if has_gap:
        fig.update_yaxes(title_text="cond–uncond gap (relative L2)", rangemode="tozero", row=1, col=3)
    fig.update_xaxes(title_text=STEP_TITLE)
    notes = ["p<sub>s</sub>: the model's prediction at step s; cache-acceleration methods calibrate on these"]
    if any(s.switches for s in series):
        notes.append("dashed: expert switch; the steps where the expert changes are left out (they compare two "
                     "networks)")
    if not has_gap:
        notes.append("record with cfg_branches=True for the cond / uncond branches and their gap")
    return _finish(fig, "Step-to-step change of the prediction, per branch and expert", 470,
                   ["; ".join(notes)] + _notes(series), top=116)


def similarity_figure(series: RunSeries | Sequence[RunSeries]) -> go.Figure | None:
    """F × F cosine of every pair of latent frames (i, j) at the first, middle and last step: one row of
    matrices per run that stored latents (metrics-only runs have none: left out; None when no run has)."""
    series = [series] if isinstance(series, RunSeries) else list(series)
    series = [s for s in series if s.frame_similarity]
    rows = len(series)
    cols = max((len(s.frame_similarity) for s in series), default=0)
    if not series:
        return None
    multi = rows > 1
    titles = []
    for s in series:
        steps = sorted(s.frame_similarity)
        titles += [f"step {k} of 0–{s.num_steps - 1} (σ = {s.sigmas[k]:.3f})"
                   for k in steps] + [""] * (cols - len(steps))
    height = 130 + 330 * rows
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.07, vertical_spacing=min(0.25, 110 / height),
                        subplot_titles=titles)
    for r, s in enumerate(series, start=1):
        frames = next(iter(s.frame_similarity.values())).shape[-1]
        for c, k in enumerate(sorted(s.frame_similarity), start=1):
            fig.add_trace(go.Heatmap(z=s.frame_similarity[k], coloraxis="coloraxis",
                                     name=esc(s.label) + f" · step {k}" if multi else f"step {k}",
                                     hovertemplate="frame i = %{y}, frame j = %{x}<br>cos = %{z:.5f}"
                                                   "<extra>%{fullData.name}</extra>"), row=r, col=c)
            xr, _ = _refs(fig, r, c)
            fig.update_yaxes(autorange="reversed", scaleanchor=xr, constrain="domain", dtick=max(1, frames // 8),
                             row=r, col=c)
            fig.update_xaxes(dtick=max(1, frames // 8), constrain="domain", row=r, col=c)
    fig.update_xaxes(title_text="frame j", title_standoff=4)
    fig.update_yaxes(title_text="frame i", title_standoff=4)
    for r, s in enumerate(series, start=1):  # the run of each row, named once, beside it
        fig.update_yaxes(title_text=(f"<b>{esc(s.label)}</b><br>" if multi else "") + "frame i", row=r, col=1)
    fig.update_layout(coloraxis=dict(colorscale="Viridis", colorbar=dict(
        thickness=10, title=dict(text="cosine of frames i and j", side="right"))))
    name = esc(series[0].label) if not multi else "one row per run"
    return _finish(fig, f"Frame-similarity matrices of {space_name(series[0].space)}: {name}", height,
                   ["cosine of every pair of latent frames (i, j) at the first, middle and last step; "
                    "the band along the diagonal is how far continuity reaches"], top=70)


def feasibility_figure(series: Sequence[RunSeries]) -> go.Figure | None:
    """Frame-truncation feasibility: error of x̂₀ rebuilt from K key frames by linear interpolation, per step.

    Low error from some step on says the frames in between could be interpolated there instead of denoised.
    None when no run has the curve (x̂₀ not captured).
    """
    have = [(i, s) for i, s in enumerate(series) if s.feasibility is not None]
    if not have:
        return None
    keep = have[0][1].feasibility[0]
    fig = _subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=(
        f"relative L2 error ‖x̂₀(interp. from {keep} key frames) − x̂₀‖ / ‖x̂₀‖", "cosine to the real x̂₀"))
    for i, s in have:
        _, rel, cos = s.feasibility
        name, color, cd = esc(s.label), _color(i), _custom(s)
        common = dict(x=s.steps, customdata=cd, mode="lines+markers", legendgroup=name, name=name,
                      line=dict(color=color, width=2), marker=dict(size=5))
        fig.add_trace(go.Scatter(y=rel, hovertemplate=_hover("rel. error"), **common), row=1, col=1)
        fig.add_trace(go.Scatter(y=cos, hovertemplate=_hover("cosine"), showlegend=False, **common), row=1, col=2)
        _mark_switches(fig, s, color if len(series) > 1 else "#555",
                       annotate=s is _first_switching([s for _, s in have]))
    fig.add_hline(y=0.1, line=dict(color="#999", dash="dash", width=1), row=1, col=1)
    _shade_phases(fig, have[0][1])
    _mark_changed(fig, [h[1] for h in have])
    fig.update_xaxes(title_text=STEP_TITLE)
    fig.update_yaxes(title_text="relative L2 error of x̂₀", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="cosine to the real x̂₀", row=1, col=2)
    return _finish(fig, f"Frame truncation feasibility: x̂₀ of all frames from {keep} key frames "
                        "(dashed: 10 % error)", 430, _notes([s for _, s in have]))


# File-name stems of the figures of all_figures, in order.
FIGURE_NAMES = ("continuity", "heatmaps", "noise_floor", "step_change", "frame_similarity", "feasibility")


def all_figures(series: Sequence[RunSeries]) -> list[go.Figure]:
    """The dashboard's figures, in the order of FIGURE_NAMES (feasibility only where x̂₀ was captured)."""
    builders = (continuity_figure, heatmap_figure, floor_and_norms_figure, step_change_figure, similarity_figure,
                feasibility_figure)
    figures = [build(series) for build in progress(builders, desc="drawing figures", total=len(builders))]
    return [f for f in figures if f is not None]
