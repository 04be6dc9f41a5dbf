"""The dashboard page: header, run table, figures (plotly.js inlined once) and the statistics tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import plotly.graph_objects as go
import plotly.io as pio

from .figures import esc, space_name
from .progress import progress
from .series import RunSeries

if TYPE_CHECKING:
    from .verdict import Verdict
    from .video import VideoSection

__all__ = ["render_page", "summary_table", "run_table", "phase_notes", "verdict_html", "PLOT_CONFIG"]

PLOT_CONFIG = {"displaylogo": False, "responsive": True}

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1400px;padding:16px;color:#222}
h1{font-size:22px;margin:4px 0 8px} h2{font-size:17px;margin:24px 0 6px}
.simulated{background:#fff3cd;border:1px solid #e0b300;padding:8px 12px;border-radius:4px;font-weight:600}
table.runs{border-collapse:collapse;font-size:13px;margin:6px 0} table.runs td,table.runs th{border:1px solid #ddd;
padding:3px 8px;text-align:left;vertical-align:top} table.runs th{background:#f4f4f4}
pre.summary{background:#f8f8f8;border:1px solid #e4e4e4;padding:8px 12px;font-size:13px;display:inline-block;
margin:4px 16px 4px 0;vertical-align:top} .fig{margin:10px 0 18px} .note{color:#666;font-size:13px}
table.strips{border-collapse:collapse;font-size:13px} table.strips th{text-align:right;padding:2px 8px 2px 0;
font-weight:600;vertical-align:middle} img.strip{image-rendering:pixelated;max-width:100%;height:auto;display:block}
.tablewrap{overflow-x:auto;max-width:100%} table.runs td{overflow-wrap:anywhere}
.verdict{background:#eef5ff;border:1px solid #9cc0f0;padding:8px 14px;border-radius:4px;margin:8px 0 12px}
.verdict p{margin:4px 0;font-size:14px} .verdict p.headline{font-weight:600;font-size:15px}
"""


def run_table(series: Sequence[RunSeries]) -> str:
    head = "<tr><th>run</th><th>file</th><th>prompt</th><th>steps</th><th>frame pairs</th><th>experts</th>" \
           "<th>captured</th></tr>"
    rows = []
    for s in series:
        experts = ", ".join(dict.fromkeys(s.experts.tolist()))
        cells = (s.label, s.source, s.prompt or "—", s.num_steps, s.num_pairs, experts, ", ".join(s.quantities))
        rows.append("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in cells) + "</tr>")
    return f'<div class="tablewrap"><table class="runs">{head}{"".join(rows)}</table></div>'


def _fmt(mean: Any, std: Any) -> str:
    try:
        return f"{float(mean):.4f} ± {float(std):.4f}"
    except (TypeError, ValueError):
        return "—"


def summary_table(series: Sequence[RunSeries]) -> str:
    """HTML table of the phase statistics (mean ± std over the phase's steps), one block of rows per run."""
    head = ("<tr><th>run</th><th>phase</th><th>steps</th><th>normalized L2</th><th>cosine</th></tr>")
    rows = []
    for s in series:
        rows_of = s.summary.get("rows", [])
        single_expert = sum(r.get("kind") == "expert" for r in rows_of) < 2
        for r in rows_of:
            if single_expert and r.get("kind") == "expert":
                continue  # one expert: its row repeats the whole run
            kind = "expert " if r.get("kind") == "expert" else ""
            rows.append("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in (
                s.label, kind + str(r.get("name", "")), f"{int(r['start'])}–{int(r['stop']) - 1}",
                _fmt(r.get("l2_mean"), r.get("l2_std")), _fmt(r.get("cos_mean"), r.get("cos_std")))) + "</tr>")
    return f'<table class="runs">{head}{"".join(rows)}</table>'


def phase_notes(series: Sequence[RunSeries]) -> str:
    """A paragraph per run whose phase scheme had to be fitted to its length (e.g. phases="original" on a
    40-step run), saying how; "" when none had."""
    multi = len(series) > 1
    return "".join(f'<p class="note phase-note">{esc(s.label) + ": " if multi else ""}{esc(s.phase_note)}.</p>'
                   for s in series if s.phase_note)


def verdict_html(v: "Verdict") -> str:
    """The verdict box: its headline, then one paragraph per sentence (escaped)."""
    paras = "".join(f"<p>{esc(s)}</p>" for s in v.sentences)
    return f'<div class="verdict" id="verdict"><p class="headline">{esc(v.headline)}</p>{paras}</div>'


def render_page(figures: Iterable[go.Figure], series: Sequence[RunSeries], title: str | None = None,
                video: "VideoSection | None" = None, verdict: "Verdict | None" = None) -> str:
    """The whole HTML page: header, the verdict in words (``verdict``, if any), the video section (``video``,
    if any), run table, figures (plotly.js inlined once), statistics tables."""
    title = title if title is not None else "latent_probe dashboard: " + ", ".join(s.label for s in series)
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
             f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>',
             f"<h1>{esc(title)}</h1>"]
    sim = [s.label for s in series if s.simulated]
    if sim:
        parts.append('<p class="simulated">SIMULATED DATA: ' + esc(", ".join(sim)) + " — an analytic denoiser, not "
                     "a model. It shows what latent_probe records and how to read the views.</p>")
    if verdict is not None:
        parts.append(verdict_html(verdict))
    js_done = False
    if video is not None:
        parts.append(f'<h2 id="videos">{esc(video.heading)}</h2>')
        if video.note:
            parts.append(f'<p class="note">{esc(video.note)}</p>')
        if video.figure is not None:
            div = pio.to_html(video.figure, full_html=False, include_plotlyjs=True, config=PLOT_CONFIG,
                              div_id="video-fig", default_width="100%", auto_play=False)
            parts.append(f'<div class="fig">{div}</div>')
            js_done = True
        parts.append(video.static_html)
    parts.append(f'<p class="note">Metrics in {space_name(series[0].space)} space; adjacent frames f, f+1 of the '
                 "latent (all C·H·W values of a frame); mean over frame pairs. Coloured bands above the per-step "
                 "panels (and shading behind the curves): the run's phases; dashed vertical line: the step where "
                 "another expert takes over. Hover for step, timestep, σ and expert.</p>")
    notes = phase_notes(series)
    parts.append(notes)
    parts.append(run_table(series))
    for k, fig in enumerate(progress(list(figures), desc="writing figures")):
        div = pio.to_html(fig, full_html=False, include_plotlyjs=(k == 0 and not js_done), config=PLOT_CONFIG,
                          div_id=f"fig{k}", default_width="100%")
        parts.append(f'<div class="fig">{div}</div>')
    parts.append("<h2>Temporal continuity statistics</h2>")
    parts.append(notes)
    parts.append(summary_table(series))
    parts.append("<details><summary>as text (the original analysis's format)</summary>")
    for s in series:
        parts.append(f'<pre class="summary">{esc(s.label)}\n\n{esc(s.summary_text)}</pre>')
    parts.append("</details>")
    parts.append('<p class="note">Written by latent_probe. Self-contained: plotly.js is inlined, nothing is '
                 "fetched.</p></body></html>\n")
    return "\n".join(parts)


