"""Views: series, figures, the dashboard page (escaping, self-contained, renders in headless Chromium),
reports and static export. Runs on demo files and a tiny two-expert diffusers pipeline (CPU, seconds)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from latent_probe import LatentProbe, open_run
from latent_probe.views import build_figures, write_dashboard
from latent_probe.views import static as static_mod
from latent_probe.views.dashboard import collect_series
from latent_probe.views.figures import FIGURE_NAMES
from latent_probe.views.report import metrics_csv, metrics_json, write_npz, write_statistics
from latent_probe.views.series import collect, default_labels

from conftest import demo_run_file, run_pipe

# Either part, if it ran, would put XSSRAN (spelled nowhere in the payload) into the page's title.
PAYLOAD = ("<script>document.title='XSS'+'RAN';window.__pwned=1</script>"
           "<img src=x onerror=\"document.title='XSS'+'RAN'\">")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium; "
                                                             "CI installs it)")


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory):
    return demo_run_file(tmp_path_factory, "views", "demo.h5", steps=8, frames=6)


@pytest.fixture(scope="module")
def hostile_path(demo_path, tmp_path_factory):
    """The demo run with a prompt that tries to run script in the page."""
    path = tmp_path_factory.mktemp("hostile") / "hostile.h5"
    shutil.copy(demo_path, path)
    with h5py.File(path, "r+") as f:
        f.attrs["prompt"] = PAYLOAD
    return str(path)


@pytest.fixture(scope="module")
def two_expert_path(two_expert_pipe, tmp_path_factory):
    """A tiny two-expert diffusers run with the cond / uncond branches recorded."""
    path = tmp_path_factory.mktemp("pipe") / "pipe.h5"
    with LatentProbe(two_expert_pipe, path, cfg_branches=True, store_dtype="float32",
                     attrs={"prompt": "a red ball rolls"}):
        run_pipe(two_expert_pipe, steps=8)
    return str(path)


def test_collect_shapes(demo_path, two_expert_path):
    with open_run(demo_path) as run:
        s = collect(run, label="demo")
    S, P = 8, 5
    assert s.steps.tolist() == list(range(S))  # 0-based, like run.latents(q)[s]
    assert s.l2.shape == s.cos.shape == s.norm_ratio.shape == (S, P)
    assert s.l2_mean.shape == s.cos_mean.shape == s.noise_floor.shape == s.sigmas.shape == (S,)
    assert s.xt_cos_mean is not None and s.gap is None
    assert list(s.step_change) == ["pred"] and np.isnan(s.step_change["pred"][0][0])
    assert s.simulated and s.switches == [] and len(s.phases) == 3
    assert set(s.frame_similarity) == {0, 4, 7} and s.frame_similarity[0].shape == (6, 6)
    assert "Temporal Continuity Statistics" in s.summary_text
    with open_run(two_expert_path) as run:
        t = collect(run, label="pipe", space="eps")
        experts = list(run.experts)
    switch = next(i for i in range(1, 8) if experts[i] != experts[i - 1])
    assert t.switches == [switch] and t.expert_switch.tolist() == [i == switch for i in range(8)]
    assert list(t.step_change) == ["pred", "pred_cond", "pred_uncond"] and t.gap.shape == (8,)
    with pytest.raises(KeyError, match="not captured"):
        with open_run(demo_path) as run:
            collect(run, space="pred_cond")


def test_default_labels():
    assert default_labels(["a/x.h5", "b/y.h5"]) == ["x", "y"]
    assert default_labels(["a/run.h5", "b/run.h5"]) == ["a/run", "b/run"]


def test_figures_overlay_and_hover(demo_path, two_expert_path):
    figs = build_figures([demo_path, two_expert_path], labels=["demo", "pipe"])
    assert len(figs) == len(FIGURE_NAMES) == 6  # the feasibility panel appears when x̂₀ was captured
    cont = figs[0]
    names = [t.name for t in cont.data]
    assert names.count("demo") == 2 and names.count("pipe") == 2  # both runs, both subplots
    main = [t for t in cont.data if t.name == "pipe"][0]
    assert all(w in main.hovertemplate for w in ("step %{x}", "t = %{customdata[0]", "σ = %{customdata[1]",
                                                 "expert: %{customdata[2]}"))
    assert main.customdata.shape == (8, 3) and str(main.customdata[0, 2]) == "transformer"
    # expert switch marked (a dashed line) and three phases shaded (rectangles behind the curves, and a
    # labelled band above the plot) on both subplots
    kinds = [sh.type for sh in cont.layout.shapes]
    assert sum(sh.type == "rect" and sh.layer == "below" for sh in cont.layout.shapes) == 6
    assert sum(sh.type == "rect" and sh.layer == "above" for sh in cont.layout.shapes) == 6
    assert kinds.count("line") >= 2
    # heatmaps: one row per run, 3 metrics; step change: per branch and per expert
    assert sum(t.type == "heatmap" for t in figs[1].data) == 6
    legend = {t.name for t in figs[3].data}
    assert "pipe · pred_cond · transformer_2" in legend and "pipe · cond–uncond gap" in legend


def test_dashboard_self_contained_and_escaped(hostile_path, tmp_path):
    out = write_dashboard([hostile_path], tmp_path / "report.html", labels=["<b>label</b>"])
    page = Path(out).read_text(encoding="utf-8")
    assert PAYLOAD not in page and "<script>document.title" not in page and "<img src=x" not in page
    assert "&lt;script&gt;document.title=&#x27;XSS&#x27;+&#x27;RAN&#x27;" in page  # shown as text
    assert "<b>label</b>" not in page and "&lt;b&gt;label&lt;/b&gt;" in page
    # plotly.js inlined once, nothing loaded from the network
    assert page.count("Plotly.newPlot") >= 5 and 3_000_000 < len(page) < 8_000_000
    assert "<script src=" not in page.replace(" ", "") and 'src="http' not in page and "cdn.plot.ly/plotly" not in page
    assert "SIMULATED DATA" in page


@needs_chromium
def test_dashboard_renders_in_chromium(hostile_path, two_expert_path, tmp_path):
    from PIL import Image

    out = write_dashboard([hostile_path, two_expert_path], tmp_path / "report.html", labels=[PAYLOAD, "pipe"])
    url = "file://" + os.path.abspath(out)
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--enable-logging=stderr", "--v=0"]
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(common + [f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    assert dom.stdout.count('class="main-svg"') >= 10  # every figure drawn (plotly makes 2 svgs per plot)
    assert "XSSRAN" not in dom.stdout  # neither the <script> nor the onerror handler ran
    assert "<img src=\"x\"" not in dom.stdout and "window.__pwned=1</script>" not in dom.stdout
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(common + [f"--user-data-dir={profile}", "--window-size=1400,2400", "--hide-scrollbars",
                                        f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 22)
    assert colours is not None and len(colours) > 1000, "the screenshot is (nearly) blank"
    pixels = np.asarray(img)
    assert (pixels.min(axis=2) < 240).mean() > 0.05  # a good part of the page is not white


def test_reports(demo_path, tmp_path):
    with open_run(demo_path) as run:
        doc = json.loads(metrics_json(run))  # strict JSON: NaN became null
        rows = metrics_csv(run).splitlines()
        s = collect(run, label="demo")
    assert doc["simulated"] and doc["space"] == "x0" and len(doc["per_step"]["l2_mean"]) == 8
    assert [r["kind"] for r in doc["summary"]["rows"]][:3] == ["steps"] * 3
    assert rows[0].startswith("step,batch,pair,metric,value") and len(rows) == 1 + 4 * 8 * 5
    npz = np.load(write_npz(s, tmp_path / "d.npz"))
    assert npz["steps"].tolist() == list(range(8)) and npz["l2"].shape == (8, 5)
    assert doc["per_step"]["step"] == list(range(8)) and rows[1].startswith("0,0,0,")
    for key in ("timesteps", "sigmas", "l2_mean", "cos_mean", "cos", "noise_floor", "experts"):
        assert npz[key].shape[0] == 8
    np.testing.assert_allclose(npz["cos_mean"], s.cos_mean)
    txt, js = write_statistics(s, tmp_path)
    assert Path(txt).read_text().startswith("SIMULATED DATA") and json.loads(Path(js).read_text())["space"] == "x0"


def test_static_export_or_one_line_reason(demo_path, tmp_path, monkeypatch):
    [s] = collect_series(demo_path)
    from latent_probe.views.figures import continuity_figure

    fig = continuity_figure([s])
    if static_mod.kaleido_available() and CHROMIUM:
        path = static_mod.write_continuity_image([s], tmp_path / "c.png", fig)
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without kaleido and matplotlib: a single-line reason, no traceback
    monkeypatch.setattr(static_mod, "kaleido_available", lambda: False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(static_mod.StaticExportError) as err:
        static_mod.write_continuity_image([s], tmp_path / "d.png", fig)
    assert "\n" not in str(err.value) and "kaleido" in str(err.value) and "matplotlib" in str(err.value)


@needs_chromium
@pytest.mark.slow
@pytest.mark.parametrize("width", [800, 1400, 1920])
def test_dashboard_layout_holds_at_common_widths(demo_path, two_expert_path, tmp_path, width):
    """Rendered in headless Chromium at ``width`` px: no two text boxes of a plot overlap (subplot titles,
    annotations, axis titles, tick labels, legend entries) and every log axis has at least three tick labels —
    measured in the page by benchmarks/screenshot_dashboard.py (which also writes the screenshots looked at)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    try:
        from screenshot_dashboard import check
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(0)
    labels = ["a two-expert pipeline run with a long label", "demo"]
    videos = {k: rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8) for k in labels}  # play/pause + slider too
    out = write_dashboard([two_expert_path, demo_path], tmp_path / "two.html", labels=labels, videos=videos)
    found = check(str(out), width)
    assert found["plots"] >= 6
    assert found["overlaps"] == [] and found["log_axes"] == [], found
