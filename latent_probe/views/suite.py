"""The dashboard of a ``RunSet``: statistics across many runs as one self-contained HTML page.

Figures (plotly, every axis titled): mean ± bootstrap CI per setting on a σ (or progress) axis with each run's
expert boundary marked at its own σ; per-prompt small multiples; phase means with CIs; the paired difference
of two settings. Tables: phases with CIs, the paired difference per phase, prompts ranked by deviation, each
run's boundary, the files left out. Strings read from files (prompts, ids, settings, experts) are escaped.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import xarray as xr
from plotly.subplots import make_subplots

from ..study.align import interp_rows
from ..study.collection import RunSet
from ..study.stats import PairedDifference, groups, prompt_keys
from .figures import COLORS, esc, space_name
from .page import CSS, PLOT_CONFIG
from .progress import progress

__all__ = ["SuiteStats", "suite_stats", "suite_figures", "suite_json", "render_suite_page",
           "write_suite_dashboard", "default_comparison", "METRIC_TITLES", "AXIS_TITLES"]

METRIC_TITLES = {"l2_mean": "normalized L2 (mean over frame pairs)",
                 "cos_mean": "adjacent-frame cosine (mean over pairs)",
                 "one_minus_cos_mean": "1 − cosine (mean over pairs)"}
AXIS_TITLES = {"sigma": "σ, noise level (noisiest at left)", "progress": "progress = step / (S − 1)",
               "step": "denoising step (0 = noisiest)"}
BASELINES = ("none", "baseline", "off", "false", "0")


@dataclass
class SuiteStats:
    """Everything the suite page shows, computed once (also what ``--json`` writes)."""

    on: str
    metric: str
    curves: dict[str, xr.Dataset]
    phases: pd.DataFrame
    expert_phases: pd.DataFrame
    ranking: pd.DataFrame
    boundaries: pd.DataFrame
    prompt_curves: xr.Dataset
    paired: PairedDifference | None = None
    compare_note: str = ""
    settings: dict[str, list] = field(default_factory=dict)
    by: Any = None


def default_comparison(rs: RunSet) -> tuple[str, Any, Any] | None:
    """(setting, a, b) for the paired difference a − b: the first setting with exactly two values; b is the one
    named like a baseline (none, baseline, off, false, 0), else the first seen."""
    for name, values in rs.settings().items():
        if len(values) == 2:
            base = [v for v in values if str(v).lower() in BASELINES]
            b = base[0] if len(base) == 1 else values[0]
            a = values[1] if b == values[0] else values[0]
            return name, a, b
    return None


def _prompt_curves(rs: RunSet, aligned: xr.Dataset, metric: str, by: Any) -> xr.Dataset:
    """Mean curve per (prompt, group) on the aligned axis: dims prompt × group × on (NaN: no such run)."""
    on = aligned.attrs["aligned_on"]
    keys = np.asarray(prompt_keys(rs.dataset), dtype=object)
    prompts = list(dict.fromkeys(keys))
    grp = groups(rs.dataset, by)
    vals = aligned[metric].values
    out = np.full((len(prompts), len(grp), vals.shape[1]), np.nan)
    for i, p in enumerate(prompts):
        for j, (_, idx) in enumerate(grp):
            rows = idx[keys[idx] == p]
            if rows.size:
                v = vals[rows]
                ok = np.isfinite(v)
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[i, j] = np.where(ok, v, 0).sum(0) / ok.sum(0)
    return xr.Dataset({"mean": (("prompt", "group", on), out)},
                      coords={"prompt": prompts, "group": [g for g, _ in grp], on: aligned[on].values})


def suite_stats(rs: RunSet, on: str = "sigma", metric: str = "l2_mean", compare: tuple[str, Any, Any] | None = None,
                by: Any = None, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                points: int | None = None) -> SuiteStats:
    """Curves (l2_mean, cos_mean and ``metric``), phase tables, ranking, boundaries and the paired difference
    ``compare`` = (setting, a, b) (default: :func:`default_comparison`; none when no setting has two values)."""
    if on not in ("sigma", "progress"):
        raise ValueError(f"--on {on!r}: sigma or progress (runs are never compared by step index)")
    kw = dict(n_resamples=n_resamples, confidence=confidence, seed=seed)
    curves = {m: rs.curves(m, by=by, on=on, points=points, **kw)
              for m in dict.fromkeys(("l2_mean", "cos_mean", metric))}
    aligned = rs.aligned(on, points=points)
    paired, note = None, ""
    comparison = compare if compare is not None else default_comparison(rs)
    if comparison is not None:
        paired = rs.paired_difference(*comparison, metric=metric, on=on, points=points, **kw)
    else:
        note = "no setting with two values to compare (pass --compare SETTING=A,B)"
    return SuiteStats(on=on, metric=metric, curves=curves, phases=rs.phase_table(metric, by, "run", **kw),
                      expert_phases=rs.phase_table(metric, by, "expert", **kw),
                      ranking=rs.rank_prompts(metric, on, points=points), boundaries=rs.boundaries(),
                      prompt_curves=_prompt_curves(rs, aligned, metric, by), paired=paired, compare_note=note,
                      settings=rs.settings(), by=by)


# ----------------------------------------------------------------------------- figures
def _rgba(color: str, alpha: float) -> str:
    c = color.lstrip("#")
    return f"rgba({int(c[0:2], 16)},{int(c[2:4], 16)},{int(c[4:6], 16)},{alpha})"


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _finish(fig: go.Figure, title: str, height: int, notes: Sequence[str] = ()) -> go.Figure:
    """figures.py's look: title with notes under it, white template, legend below the plot."""
    text = title + "".join(f"<br><sup>{n}</sup>" for n in notes if n)
    extra = 16 * len([n for n in notes if n])
    fig.update_layout(title=dict(text=text, x=0.01, xanchor="left", font_size=16), template="plotly_white",
                      height=height + extra, hovermode="closest",
                      legend=dict(orientation="h", yanchor="top", y=-0.18, x=0),
                      margin=dict(l=70, r=30, t=80 + extra, b=40))
    return fig


def _x_axes(fig: go.Figure, on: str) -> None:
    fig.update_xaxes(title_text=AXIS_TITLES[on], autorange="reversed" if on == "sigma" else None)


def _band(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, name: str, color: str, group: str,
          showlegend: bool = True) -> go.Scatter:
    ok = np.isfinite(lo) & np.isfinite(hi)
    xs, l, h = x[ok], lo[ok], hi[ok]
    return go.Scatter(x=np.concatenate([xs, xs[::-1]]), y=np.concatenate([h, l[::-1]]), fill="toself",
                      fillcolor=_rgba(color, 0.18), line=dict(width=0), hoverinfo="skip", name=name,
                      legendgroup=group, showlegend=showlegend)


def _boundary_key(on: str) -> str:
    return "boundary_sigma" if on == "sigma" else "boundary_progress"


def _boundary_trace(rs: RunSet, idx: Sequence[int], x: np.ndarray, y: np.ndarray, on: str, name: str, color: str,
                    group: str, showlegend: bool = True) -> go.Scatter | None:
    """A marker per run at its own boundary (σ or progress where its next expert took over), on the curve y(x)."""
    ds = rs.dataset
    bx = ds[_boundary_key(on)].values[list(idx)]
    keep = np.isfinite(bx)
    if not keep.any():
        return None
    runs = [esc(r) for r in ds["run"].values[list(idx)][keep]]
    steps = ds["boundary_step"].values[list(idx)][keep]
    sig = ds["boundary_sigma"].values[list(idx)][keep]
    by = interp_rows(x, y, bx[keep]) if np.isfinite(y).sum() >= 2 else np.full(keep.sum(), np.nan)
    cd = np.stack([np.asarray(runs, dtype=object), steps, sig], axis=1)
    return go.Scatter(x=bx[keep], y=by, mode="markers", name=name, legendgroup=group, showlegend=showlegend,
                      marker=dict(symbol="line-ns-open", size=16, line=dict(width=2, color=color), color=color),
                      customdata=cd, hovertemplate="%{customdata[0]}<br>next expert from step %{customdata[1]}"
                                                   "<br>σ = %{customdata[2]:.4f}<extra>expert boundary</extra>")


def _boundary_lines(fig: go.Figure, values: np.ndarray, color: str, row: int | None = None,
                    col: int | None = None) -> None:
    uniq = np.unique(np.round(values[np.isfinite(values)], 6))
    if 0 < uniq.size <= 12:
        for v in uniq:
            kw = dict(row=row, col=col) if row is not None else {}
            fig.add_vline(x=float(v), line=dict(color=color, width=1, dash="dash"), opacity=0.6, **kw)


def curves_figure(rs: RunSet, st: SuiteStats) -> go.Figure:
    """Mean ± CI per group of normalized L2 and cosine against σ (or progress), runs' boundaries marked."""
    metrics = ("l2_mean", "cos_mean")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=[METRIC_TITLES[m] for m in metrics])
    grp = groups(rs.dataset, st.by)  # the curves' groups, in their order
    for c, m in enumerate(metrics, start=1):
        cv = st.curves[m]
        x = cv[st.on].values
        for i, label in enumerate(cv["group"].values):
            color, name = _color(i), esc(label)
            first = c == 1
            fig.add_trace(_band(x, cv["ci_low"].values[i], cv["ci_high"].values[i],
                                f"{name} {cv.attrs['confidence']:.0%} CI",
                                color, name, first), row=1, col=c)
            n = cv["n"].values[i]
            fig.add_trace(go.Scatter(x=x, y=cv["mean"].values[i], mode="lines", name=name, legendgroup=name,
                                     showlegend=first, line=dict(color=color, width=2), customdata=n,
                                     hovertemplate=f"{st.on} %{{x:.4f}}<br>mean %{{y:.5g}} over %{{customdata}} runs"
                                                   "<extra>%{fullData.name}</extra>"), row=1, col=c)
            idx = dict(grp).get(str(label), [])
            bt = _boundary_trace(rs, idx, x, cv["mean"].values[i], st.on, f"{name}: expert boundary of each run",
                                 color, name, first)
            if bt is not None:
                fig.add_trace(bt, row=1, col=c)
            _boundary_lines(fig, rs.dataset[_boundary_key(st.on)].values[list(idx)], color, 1, c)
    _x_axes(fig, st.on)
    fig.update_yaxes(title_text="normalized L2 distance", row=1, col=1)
    fig.update_yaxes(title_text="adjacent-frame cosine", row=1, col=2)
    note = (f"line: mean over runs; band: {st.curves['l2_mean'].attrs['confidence']:.0%} bootstrap CI over runs; "
            "| marks and dashed lines: each run's expert boundary at its own "
            + ("σ" if st.on == "sigma" else "progress"))
    return _finish(fig, f"Adjacent-frame continuity of {space_name(rs.space)} across {len(rs)} runs", 470, [note])


def prompt_figure(rs: RunSet, st: SuiteStats, max_prompts: int = 24) -> go.Figure:
    """Small multiples: one panel per prompt (the most deviating first), the mean curve of each group."""
    pc = st.prompt_curves
    order = [p for p in st.ranking["prompt_id"].astype(str) if p in set(pc["prompt"].values)]
    order += [p for p in pc["prompt"].values if p not in order]
    shown = order[:max_prompts]
    cols = min(4, max(1, len(shown)))
    rows = math.ceil(len(shown) / cols)
    titles = [f"{esc(p)}" for p in shown]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.06,
                        vertical_spacing=min(0.12, 0.5 / max(rows, 1)))
    x = pc[st.on].values
    for k, p in enumerate(shown):
        r, c = k // cols + 1, k % cols + 1
        i = list(pc["prompt"].values).index(p)
        for j, g in enumerate(pc["group"].values):
            y = pc["mean"].values[i, j]
            if not np.isfinite(y).any():
                continue
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=esc(g), legendgroup=esc(g), showlegend=k == 0,
                                     line=dict(color=_color(j), width=1.5),
                                     hovertemplate=f"{esc(p)}<br>{st.on} %{{x:.4f}}<br>%{{y:.5g}}"
                                                   "<extra>%{fullData.name}</extra>"), row=r, col=c)
    _x_axes(fig, st.on)
    fig.update_xaxes(title_text="σ" if st.on == "sigma" else "progress", title_standoff=2)
    fig.update_yaxes(title_text=_short(st.metric), title_standoff=2)
    notes = ["mean of each prompt's runs per group; panels ordered by deviation from the mean curve"]
    if len(order) > len(shown):
        notes.append(f"{len(shown)} of {len(order)} prompts shown (the most deviating)")
    return _finish(fig, f"Per prompt: {METRIC_TITLES.get(st.metric, esc(st.metric))}", 120 + 230 * rows, notes)


def _short(metric: str) -> str:
    return {"l2_mean": "norm. L2", "cos_mean": "cosine", "one_minus_cos_mean": "1 − cos"}.get(metric, esc(metric))


def phase_figure(st: SuiteStats) -> go.Figure:
    """Bars: each group's mean of the runs' phase means, with the bootstrap CI as error bars (both schemes)."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("phases of each run's steps", "expert phases (cut at each run's boundary)"))
    for c, table in enumerate((st.phases, st.expert_phases), start=1):
        for i, g in enumerate(dict.fromkeys(table["group"])):
            t = table[table["group"] == g]
            fig.add_trace(go.Bar(x=[esc(p) for p in t["phase"]], y=t["mean"], name=esc(g), legendgroup=esc(g),
                                 showlegend=c == 1, marker_color=_color(i),
                                 error_y=dict(type="data", symmetric=False, array=t["ci_high"] - t["mean"],
                                              arrayminus=t["mean"] - t["ci_low"]),
                                 customdata=np.stack([t["runs"], t["ci_low"], t["ci_high"]], axis=1),
                                 hovertemplate="%{x}: %{y:.5g} [%{customdata[1]:.5g}, %{customdata[2]:.5g}] over "
                                               "%{customdata[0]} runs<extra>%{fullData.name}</extra>"), row=1, col=c)
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="phase")
    fig.update_yaxes(title_text=METRIC_TITLES.get(st.metric, esc(st.metric)))
    return _finish(fig, "Phase means with bootstrap CIs", 420,
                   ["error bars: CI over runs of the runs' own phase means"])


def paired_figure(rs: RunSet, st: SuiteStats, max_pairs: int = 40) -> go.Figure | None:
    """The paired difference a − b against σ: mean, CI band, each pair's difference (faint), zero line."""
    pdiff = st.paired
    if pdiff is None:
        return None
    cv = pdiff.curve
    x = cv[st.on].values
    label = f"{esc(pdiff.setting.replace('setting_', ''))}: {esc(pdiff.a)} − {esc(pdiff.b)}"
    fig = go.Figure()
    for k in range(min(max_pairs, pdiff.per_pair.shape[0])):
        fig.add_trace(go.Scatter(x=x, y=pdiff.per_pair.values[k], mode="lines", name="each pair",
                                 legendgroup="pairs", showlegend=k == 0, line=dict(color="rgba(120,120,120,0.35)",
                                                                                      width=1),
                                 hovertemplate=f"{esc(pdiff.per_pair['pair_key'].values[k])}<br>%{{y:.5g}}"
                                               "<extra>pair</extra>"))
    fig.add_trace(_band(x, cv["ci_low"].values, cv["ci_high"].values, "mean difference 95% CI", _color(0), "mean"))
    fig.add_trace(go.Scatter(x=x, y=cv["mean"].values, mode="lines", name="mean difference", legendgroup="mean",
                             line=dict(color=_color(0), width=2.5), customdata=cv["n"].values,
                             hovertemplate="%{y:.5g} over %{customdata} pairs<extra>mean difference</extra>"))
    ds = rs.dataset
    runs = list(ds["run"].values)
    for side, col, color in (("a", "run_a", _color(1)), ("b", "run_b", _color(2))):
        idx = [runs.index(r) for r in pdiff.pairs[col]]
        value = f"{esc(pdiff.setting.replace('setting_', ''))}={esc(pdiff.a if side == 'a' else pdiff.b)}"
        bt = _boundary_trace(rs, idx, x, cv["mean"].values, st.on, f"expert boundary of each {value} run", color,
                             f"b{side}")
        if bt is not None:
            fig.add_trace(bt)
    fig.add_hline(y=0, line=dict(color="#444", width=1))
    _x_axes(fig, st.on)
    fig.update_yaxes(title_text=f"Δ {_short(st.metric)} ({esc(pdiff.a)} − {esc(pdiff.b)})")
    note = (f"{pdiff.per_pair.shape[0]} pairs of runs with the same prompt, seed and other settings; "
            "band: bootstrap CI over pairs")
    return _finish(fig, f"Paired difference of {METRIC_TITLES.get(st.metric, esc(st.metric))}, {label}", 460, [note])


def suite_figures(rs: RunSet, st: SuiteStats, max_prompts: int = 24) -> list[go.Figure]:
    """The page's figures, in order: curves, per prompt, phases, paired difference (when there is one)."""
    figs = [curves_figure(rs, st), prompt_figure(rs, st, max_prompts), phase_figure(st)]
    p = paired_figure(rs, st)
    return figs + ([p] if p is not None else [])


# ----------------------------------------------------------------------------- tables and the page
def _num(v: Any, fmt: str = ".5g") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return esc(v)
    return "—" if not math.isfinite(f) else format(f, fmt)


def _table(df: pd.DataFrame, cls: str = "runs") -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{_num(v) if isinstance(v, (float, np.floating)) else esc(v)}</td>"
                                    for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _ci_frame(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["mean [CI]"] = [f"{_num(m)} [{_num(lo)}, {_num(hi)}]" for m, lo, hi in zip(df["mean"], df["ci_low"],
                                                                                   df["ci_high"])]
    return out.drop(columns=["mean", "ci_low", "ci_high"])


def render_suite_page(rs: RunSet, st: SuiteStats, figures: Sequence[go.Figure], title: str | None = None) -> str:
    """The whole HTML page (plotly.js inlined once, nothing fetched)."""
    ds = rs.dataset
    title = title if title is not None else f"latent_probe suite: {len(rs)} runs"
    conf = st.curves["l2_mean"].attrs
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
             f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>',
             f"<h1>{esc(title)}</h1>"]
    if ds["simulated"].values.any():
        parts.append(f'<p class="simulated">SIMULATED DATA: {int(ds["simulated"].values.sum())} of {len(rs)} runs come '
                     "from an analytic denoiser, not a model.</p>")
    studies = sorted({s for s in ds["study"].values if s})
    settings = "; ".join(f"{esc(k)}: {', '.join(esc(v) for v in vs)}" for k, vs in st.settings.items()) or "none"
    steps = sorted({int(n) for n in ds["num_steps"].values})
    parts.append(f'<p class="note">{len(rs)} runs{" of study " + esc(", ".join(studies)) if studies else ""}; '
                 f"settings — {settings}; steps per run: {', '.join(map(str, steps))}. Metrics in "
                 f"{space_name(rs.space)} space, adjacent latent frames, mean over frame pairs. Runs are compared on "
                 f"{'σ' if st.on == 'sigma' else 'progress'}: each run's curve is interpolated linearly onto a common "
                 "grid (never by step index), and each run keeps its own expert boundary. CIs: "
                 f"{esc(conf['method'])}.</p>")
    if rs.skipped:
        parts.append(f"<details open><summary>{len(rs.skipped)} file(s) left out</summary><ul>"
                     + "".join(f"<li>{esc(s.path)}: {esc(s.reason)}</li>" for s in rs.skipped) + "</ul></details>")
    for k, fig in enumerate(progress(list(figures), desc="writing figures")):
        div = pio.to_html(fig, full_html=False, include_plotlyjs=(k == 0), config=PLOT_CONFIG, div_id=f"fig{k}",
                          default_width="100%")
        parts.append(f'<div class="fig">{div}</div>')
    metric = METRIC_TITLES.get(st.metric, esc(st.metric))
    parts.append(f"<h2>Phases: {metric}, mean over runs with {conf['confidence']:.0%} CI</h2>")
    parts.append('<p class="note">Each run contributes the mean over its own steps of the phase (0-based steps; '
                 "σ from → to over the runs); expert phases are cut at each run's own boundary.</p>")
    parts.append(_table(_ci_frame(st.phases)))
    parts.append(_table(_ci_frame(st.expert_phases)))
    if st.paired is not None:
        p = st.paired
        parts.append(f"<h2>Paired difference {esc(p.setting.replace('setting_', ''))}: {esc(p.a)} − {esc(p.b)}</h2>")
        parts.append(f'<p class="note">{len(p.pairs)} pairs (same prompt, seed and other settings); mean of the '
                     "per-pair differences of the runs' phase means, bootstrap CI over pairs.</p>")
        parts.append(_table(_ci_frame(p.phases)))
        parts.append("<details><summary>the pairs</summary>" + _table(p.pairs) + "</details>")
    elif st.compare_note:
        parts.append(f'<h2>Paired difference</h2><p class="note">{esc(st.compare_note)}</p>')
    parts.append(f"<h2>Prompts ranked by deviation from the mean curve ({metric})</h2>")
    parts.append(_table(st.ranking))
    parts.append("<details><summary>each run's expert boundary</summary>" + _table(st.boundaries) + "</details>")
    parts.append('<p class="note">Written by latent_probe. Self-contained: plotly.js is inlined, nothing is '
                 "fetched.</p></body></html>\n")
    return "\n".join(parts)


def _frame_json(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in row.items()} for row in df.to_dict(orient="records")]


def suite_json(rs: RunSet, st: SuiteStats) -> dict[str, Any]:
    """The page's tables as plain data (NaN stays NaN: pass through ``views.report.strict_json``)."""
    curves = {m: {"axis": cv[st.on].values, "groups": {str(g): {k: cv[k].values[i] for k in ("mean", "ci_low",
                                                                                           "ci_high", "n")}
                                                         for i, g in enumerate(cv["group"].values)}}
              for m, cv in st.curves.items()}
    doc: dict[str, Any] = {
        "space": rs.space, "on": st.on, "metric": st.metric, "runs": len(rs),
        "method": st.curves["l2_mean"].attrs["method"], "settings": st.settings, "curves": curves,
        "phases": _frame_json(st.phases), "expert_phases": _frame_json(st.expert_phases),
        "ranking": _frame_json(st.ranking), "boundaries": _frame_json(st.boundaries),
        "skipped": [{"path": s.path, "reason": s.reason} for s in rs.skipped], "paired": None}
    if st.paired is not None:
        p = st.paired
        doc["paired"] = {"setting": p.setting, "a": p.a, "b": p.b, "metric": p.metric, "axis": p.curve[st.on].values,
                         **{k: p.curve[k].values for k in ("mean", "ci_low", "ci_high", "n")},
                         "phases": _frame_json(p.phases), "pairs": _frame_json(p.pairs)}
    return doc


def write_suite_dashboard(rs: RunSet, path: str | os.PathLike, stats: SuiteStats | None = None,
                          title: str | None = None, figures: Sequence[go.Figure] | None = None, **kw: Any) -> str:
    """Write the suite dashboard of ``rs`` to ``path`` (atomically: a temporary file, then a rename); ``kw`` go
    to :func:`suite_stats` when ``stats`` is not given. Returns the path."""
    st = stats if stats is not None else suite_stats(rs, **kw)
    page = render_suite_page(rs, st, list(figures) if figures is not None else suite_figures(rs, st), title)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.replace(tmp, path)
    return path
