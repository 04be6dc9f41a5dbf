"""Views a researcher reads without asking (issue 10, item 6), checked on the plotly figure objects.

Every axis and colour bar says what it shows; the noise floor (defined on x_t) is drawn only beside x_t
curves; log axes carry no bare "2 3 … 9" labels; every per-step subplot shows the phases (and the expert
switch of a two-expert run); comparisons show one similarity matrix row per run; phases="original" on a run
that is not 20 steps long says how its ranges were fitted. Runs on the demo and a tiny two-expert pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latent_probe import LatentProbe, open_run
from latent_probe.views import build_figures, write_dashboard
from latent_probe.views import dashboard as dashboard_mod
from latent_probe.views import figures as figures_mod
from latent_probe.views import page as page_mod
from latent_probe.views import static as static_mod
from latent_probe.views.dashboard import collect_series
from latent_probe.views.figures import FIGURE_NAMES, all_figures
from latent_probe.views.report import metrics_json, write_statistics

from conftest import demo_run_file, run_pipe

SIMILARITY = FIGURE_NAMES.index("frame_similarity")
STEP_CHANGE = FIGURE_NAMES.index("step_change")


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory):
    return demo_run_file(tmp_path_factory, "readable", "demo.h5", steps=8, frames=6)


@pytest.fixture(scope="module")
def two_expert_path(two_expert_pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("readable_pipe") / "two_expert.h5"
    with LatentProbe(two_expert_pipe, path, cfg_branches=True, store_dtype="float32"):
        run_pipe(two_expert_pipe, steps=8)
    return str(path)


@pytest.fixture(scope="module")
def long_path(tmp_path_factory):
    """A 40-step run: longer than the original analysis's 20 steps."""
    return demo_run_file(tmp_path_factory, "readable_long", "long.h5", steps=40, frames=4)


@pytest.fixture(scope="module")
def dashboards(demo_path, two_expert_path):
    """(name, series, figures) of the demo, the two-expert run, both compared, and the demo in x_t space."""
    out = []
    for name, runs, kw in (("demo", [demo_path], {}), ("two-expert", [two_expert_path], {}),
                           ("compare", [demo_path, two_expert_path], {"labels": ["demo", "two-expert"]}),
                           ("demo x_t", [demo_path], {"space": "x_t"})):
        series = collect_series(runs, **kw)
        out.append((name, series, all_figures(series)))
    return out


def _axes(fig):
    """{layout name: axis} of every x / y axis of a figure ("xaxis", "yaxis3", ...)."""
    layout = fig.layout.to_plotly_json()
    return {k: fig.layout[k] for k in layout if k.startswith(("xaxis", "yaxis"))}


def _ref(axis_name: str) -> str:
    """"xaxis3" → "x3" (how traces and shapes name the axis)."""
    return axis_name.replace("axis", "")


def _title(obj) -> str:
    return (obj.title.text or "").strip() if obj.title is not None else ""


def _step_axes(fig) -> list[str]:
    """x axes of the per-step subplots (their title names the denoising step)."""
    return [k for k, ax in _axes(fig).items() if k.startswith("xaxis") and "denoising step" in _title(ax)]


def _subplot_traces(fig):
    """(x ref, y ref) → traces drawn there with data (legend-only keys have x = [None])."""
    out: dict[tuple[str, str], list] = {}
    for t in fig.data:
        if t.x is not None and len(t.x) and all(v is None for v in t.x):
            continue
        out.setdefault((t.xaxis or "x", t.yaxis or "y"), []).append(t)
    return out


def test_every_axis_and_colorbar_has_a_title(dashboards):
    for name, _, figs in dashboards:
        for k, fig in enumerate(figs):
            where = f"{name}: figure {FIGURE_NAMES[k]}"
            for axis_name, axis in _axes(fig).items():  # an axis without tick labels repeats its row's first
                assert _title(axis) or axis.showticklabels is False, f"{where}: {axis_name} has no title"
            for key in fig.layout.to_plotly_json():
                if key.startswith("coloraxis"):
                    assert _title(fig.layout[key].colorbar), f"{where}: {key}'s colour bar has no title"
            for t in fig.data:
                if t.type == "heatmap" and not t.coloraxis:
                    assert _title(t.colorbar), f"{where}: a heatmap's colour bar has no title"


def test_noise_floor_only_beside_x_t(dashboards):
    floors = 0
    for name, _, figs in dashboards:
        for k, fig in enumerate(figs):
            for cell, traces in _subplot_traces(fig).items():
                floor = [t for t in traces if (t.name or "").startswith("noise floor")]
                if not floor:
                    continue
                floors += len(floor)
                others = [t for t in traces if t not in floor]
                assert others, f"{name}: {FIGURE_NAMES[k]} {cell}: the noise floor with nothing to compare"
                for t in others:
                    assert "x_t" in (t.hovertemplate or ""), (
                        f"{name}: {FIGURE_NAMES[k]} {cell}: the noise floor (defined on x_t) is drawn over "
                        f"{t.name!r}, which is not x_t")
    assert floors >= 4  # it is still shown: beside x_t's cosine, and on the continuity figure of x_t


def test_log_axes_have_no_labelled_minor_ticks(dashboards):
    logs = 0
    for name, _, figs in dashboards:
        for k, fig in enumerate(figs):
            for axis_name, ax in _axes(fig).items():
                if ax.type != "log":
                    continue
                logs += 1
                where = f"{name}: {FIGURE_NAMES[k]} {axis_name}"
                # plotly's automatic log ticks ("D1"/"D2") label 2, 3, … 9 between decades with bare digits
                assert ax.tickmode == "array" or (isinstance(ax.dtick, (int, float)) and ax.dtick >= 1), (
                    f"{where}: automatic log ticks")
                if ax.tickmode == "array":
                    vals, text = list(ax.tickvals), list(ax.ticktext)
                    assert 2 <= len(vals) <= 10 and len(text) == len(vals), where
                    for v, label in zip(vals, text):  # every label is the full value, not a bare mantissa
                        assert float(label) == pytest.approx(v, rel=1e-2), (where, v, label)
                if ax.minor is not None and ax.minor.tickvals is not None:
                    assert not set(np.round(ax.minor.tickvals, 12)) & set(np.round(ax.tickvals, 12)), where
    assert logs >= 4  # the relative L1 change is on a log axis in every dashboard


def test_phases_on_every_per_step_subplot(dashboards):
    for name, series, figs in dashboards:
        spans = {(a - 0.5, b - 0.5) for s in series for _, a, b in s.phases if b > a}  # steps a … b − 1, 0-based
        switches = {k - 0.5 for s in series for k in s.switches}
        assert spans
        for k, fig in enumerate(figs):
            shapes = fig.layout.shapes
            for axis_name in _step_axes(fig):
                xref = _ref(axis_name)
                mine = [sh for sh in shapes if sh.xref == xref]
                phases = {(sh.x0, sh.x1) for sh in mine if sh.type == "rect"}
                assert phases & spans, f"{name}: {FIGURE_NAMES[k]} {axis_name}: no phase shading"
                assert {(a, b) for a, b in phases if (a, b) in spans} == spans or len(series) > 1, (
                    f"{name}: {FIGURE_NAMES[k]} {axis_name}: only some phases")
                lines = {sh.x0 for sh in mine if sh.type == "line"}
                if name == "two-expert":
                    assert switches and switches <= lines, f"{FIGURE_NAMES[k]} {axis_name}: no expert switch"
        assert sum(len(_step_axes(f)) for f in figs) >= 9 + (3 if len(series) > 1 else 0)


def test_comparison_has_one_similarity_row_per_run(dashboards):
    name, series, figs = dashboards[2]
    assert name == "compare"
    sim = figs[SIMILARITY]
    heat = [t for t in sim.data if t.type == "heatmap"]
    assert len(heat) == sum(len(s.frame_similarity) for s in series) == 6
    for s in series:  # each run's own matrices (their sizes are the runs' frame counts)
        frames = next(iter(s.frame_similarity.values())).shape[-1]
        mine = [t for t in heat if t.name.startswith(s.label)]
        assert len(mine) == 3 and all(np.asarray(t.z).shape == (frames, frames) for t in mine)
    for axis_name, ax in _axes(sim).items():
        want = "frame j" if axis_name.startswith("xaxis") else "frame i"
        assert want in _title(ax), (axis_name, _title(ax))


def test_original_phases_on_40_steps_say_how_they_map(long_path, tmp_path):
    [s] = collect_series(long_path, phases="original")
    # every step is in a phase, three phases, and the note gives the mapping
    assert [(a, b) for _, a, b in s.phases] == [(0, 10), (10, 20), (20, 40)]
    assert "original" in s.phase_note and "0-4, 5-9, 10-19" in s.phase_note and "late 20-39" in s.phase_note
    figs = all_figures([s])
    for k, fig in enumerate(figs):
        if _step_axes(fig):
            text = fig.layout.title.text + " ".join(a.text or "" for a in fig.layout.annotations)
            assert "late 20-39" in text, f"{FIGURE_NAMES[k]} does not say how the phases were mapped"
    assert [r["label"] for r in s.summary["rows"] if r["kind"] == "steps"] == [  # step ranges 0-based
        "Early steps (0-9)", "Middle steps (10-19)", "Late steps (20-39)"]
    assert "late 20-39" in s.summary_text
    page = Path(write_dashboard([s], tmp_path / "long.html")).read_text(encoding="utf-8")
    assert "late 20-39" in page
    txt, js = write_statistics(s, tmp_path)
    assert "late 20-39" in Path(txt).read_text() and "late 20-39" in json.loads(Path(js).read_text())["phase_note"]
    with open_run(long_path) as run:
        doc = json.loads(metrics_json(run, phases="original"))
    assert "late 20-39" in doc["phase_note"] and len(doc["summary"]["rows"]) >= 3


def test_original_phases_on_short_runs_keep_every_row(two_expert_path):
    [s] = collect_series(two_expert_path, phases="original")  # 8 steps: the original late phase 11-20 is beyond it
    assert [name for name, a, b in s.phases if b > a] == ["Early steps", "Middle steps", "Late steps"]
    assert s.phases[-1][2] == 8 and "8-step" in s.phase_note
    assert sum(r["kind"] == "steps" for r in s.summary["rows"]) == 3
    from latent_probe.views.series import resolve_phases

    assert resolve_phases(20, "original") == ("original", "")  # 20 steps: as written, nothing to say
    scheme, note = resolve_phases(16, "original")
    assert scheme == "original" and "10-15" in note
    scheme, note = resolve_phases(40, "0-4,5-9,10-19")  # fixed steps on purpose: the rest is named
    assert scheme == "0-4,5-9,10-19" and "20-39 are in no phase" in note
    # the original analysis's 1-based ranges only behind the explicit prefix; they mean the same steps
    assert resolve_phases(40, "1-based:1-5,6-10,11-20")[1].endswith("20-39 are in no phase")
    # the original's ranges pasted without the prefix: read 0-based, and the note says what that did
    note = resolve_phases(20, "1-5,6-10,11-20")[1]
    assert "step 0 is in no phase" in note and "past the last step 19" in note and "'1-based:1-5,6-10,11-20'" in note


def test_long_view_operations_show_progress(demo_path, two_expert_path, tmp_path, monkeypatch):
    seen = []

    def spy(items, desc, total=None):
        seen.append(desc)
        yield from items

    monkeypatch.setattr(dashboard_mod, "progress", spy)
    monkeypatch.setattr(figures_mod, "progress", spy)
    monkeypatch.setattr(page_mod, "progress", spy)
    monkeypatch.setattr(static_mod, "progress", spy)
    write_dashboard([demo_path, two_expert_path], tmp_path / "two.html")
    assert {"reading runs", "drawing figures", "writing figures"} <= set(seen)
    # static export, one figure at a time (kaleido replaced by a stub: no browser needed here)
    import plotly.io as pio

    monkeypatch.setattr(static_mod, "kaleido_available", lambda: True)
    monkeypatch.setattr(pio, "write_image", lambda fig, path, **kw: Path(path).write_bytes(b"\x89PNG"))
    figs = build_figures([demo_path])
    static_mod.export_figures(figs, [tmp_path / f"{n}.png" for n in FIGURE_NAMES[:len(figs)]])
    assert any(d.startswith("exporting") and "PNG" in d for d in seen)
