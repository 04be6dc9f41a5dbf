"""Statistics across runs (issue 11 items 4, 5, 8): RunSet dataset, bootstrap CIs, σ alignment with each run's
own expert boundary, paired differences, Dask recompute with caches, the suite dashboard and CLI.

Every number is checked against numpy computed here from the individual runs (opened with ``open_run``).
Runs: a two-expert analytic denoiser through the real capture path (fast), and the tiny two-expert diffusers
Wan pipeline (boundary_ratio 0.875) at 20, 30 and 40 steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import zlib

import numpy as np
import pytest
import torch

import latent_probe
from latent_probe import open_run
from latent_probe.app import cli
from latent_probe.study.collection import open_runs
from latent_probe.study.records import StudyError
from latent_probe.study.stats import bootstrap_mean_ci

PROMPTS = ("p1", "p2", "p3")
SEEDS = (0, 1)
TRUNC = ("keep3", "none")  # file-name order: the order groups are first seen


@contextlib.contextmanager
def one_thread():
    """Generate with one torch thread: two-thread torch operations stall on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def write_run(path, *, steps=12, seed=0, prompt="p1", error=0.8, attrs=None, switch_t=900.0):
    """A two-expert run (high_noise for t >= switch_t, then low_noise) of an analytic denoiser, x̂₀ captured."""
    from diffusers import UniPCMultistepScheduler

    from latent_probe import LatentProbe
    from latent_probe.demo import AnalyticDenoiser, moving_pattern_video

    clean = moving_pattern_video(frames=5, height=8, width=8, seed=zlib.crc32(prompt.encode()) % 1000)
    hi = AnalyticDenoiser(clean, error_scale=error, seed=seed + 1)
    lo = AnalyticDenoiser(clean, error_scale=0.5 * error, seed=seed + 1)
    sch = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
                                  num_train_timesteps=1000)
    sch.set_timesteps(steps)
    x = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + 2))
    with LatentProbe(({"high_noise": hi, "low_noise": lo}, sch), str(path), capture=("x0",), attrs=attrs,
                     overwrite=True), torch.no_grad():
        for t in sch.timesteps:
            v = (hi if t >= switch_t else lo)(x, t.expand(1))
            x = sch.step(v, t, x, return_dict=False)[0]
    return str(path)


def suite_attrs(prompt, seed, trunc, steps=12):
    return {"study": "t", "job_id": f"{prompt}-s{seed}-{trunc}", "prompt_id": prompt, "prompt": f"text of {prompt}",
            "seed": seed, "setting_truncation": trunc, "setting_steps": steps}


def write_suite(folder, prompts=PROMPTS, seeds=SEEDS):
    os.makedirs(folder, exist_ok=True)
    with one_thread():
        for p in prompts:
            for s in seeds:
                for tr in TRUNC:
                    write_run(os.path.join(folder, f"{p}-{s}-{tr}.h5"), seed=s, prompt=p,
                              error=0.8 if tr == "none" else 1.3, attrs=suite_attrs(p, s, tr))
    return str(folder)


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    return write_suite(tmp_path_factory.mktemp("suite") / "runs")


@pytest.fixture(scope="module")
def runset(suite_dir):
    return open_runs(suite_dir, workers=0)


def reference(path, space="x0"):
    """A run's per-step arrays read independently: batch-mean metrics, σ, experts, thirds."""
    with open_run(path) as run:
        m = run.metrics(space)
        return dict(l2=m.l2.mean(axis=1), cos=m.cos.mean(axis=1), l2_mean=m.l2_mean.mean(axis=1),
                    cos_mean=m.cos_mean.mean(axis=1), sigma=run.sigmas.copy(), timestep=run.timesteps.copy(),
                    experts=[str(e) for e in run.experts], attrs=dict(run.attrs),
                    thirds=[(p.name, p.start, p.stop) for p in run.metrics.phases("thirds")])


def test_dataset_holds_each_runs_metrics_and_attributes(runset, suite_dir, tmp_path):
    ds = runset.dataset
    assert dict(ds.sizes) == {"run": 12, "step": 12, "pair": 4, "phase": 3}
    for i, path in enumerate(ds["path"].values):
        ref = reference(path)
        np.testing.assert_array_equal(ds["l2"].values[i], ref["l2"])
        np.testing.assert_array_equal(ds["cos"].values[i], ref["cos"])
        np.testing.assert_array_equal(ds["l2_mean"].values[i], ref["l2_mean"])
        np.testing.assert_array_equal(ds["sigma"].values[i], ref["sigma"])
        np.testing.assert_array_equal(ds["timestep"].values[i], ref["timestep"])
        assert list(ds["expert"].values[i]) == ref["experts"]
        np.testing.assert_allclose(ds["progress"].values[i], np.arange(12) / 11, rtol=0, atol=0)
        a = ref["attrs"]
        assert (ds["prompt_id"].values[i], int(ds["seed"].values[i]), ds["setting_truncation"].values[i]) == \
            (a["prompt_id"], a["seed"], a["setting_truncation"])
        assert ds["run"].values[i] == a["job_id"] and ds["prompt"].values[i] == a["prompt"]
        k = ref["experts"].index("low_noise")
        assert ds["boundary_step"].values[i] == k and ds["boundary_sigma"].values[i] == ref["sigma"][k]
    # tidy frame: one row per (run, step, metric) of the per-step means
    df = runset.to_dataframe()
    assert len(df) == 12 * 12 * 3
    row = df[(df.run == ds["run"].values[3]) & (df.step == 5) & (df.metric == "cos_mean")]
    assert row["value"].item() == ds["cos_mean"].values[3, 5] and row["setting_truncation"].item() == \
        ds["setting_truncation"].values[3]
    assert len(runset.to_dataframe(pairs=True)) == 12 * 12 * 4 * 4
    # a run without suite attributes: run = file stem, no prompt id, seed NaN, no settings
    with one_thread():
        plain = write_run(tmp_path / "plain.h5", steps=8)
    both = open_runs([plain, os.path.join(suite_dir, "p1-0-none.h5")], workers=0).dataset
    j = list(both["path"].values).index(plain)
    assert both["run"].values[j] == "plain" and both["prompt_id"].values[j] == "" and np.isnan(both["seed"].values[j])
    assert both["setting_truncation"].values[j] == "" and np.isnan(both["setting_steps"].values[j])
    assert both["num_steps"].values[j] == 8 and np.isnan(both["l2_mean"].values[j, 8:]).all()


def test_bootstrap_ci_reproduced_contains_the_mean_and_narrows():
    rng = np.random.default_rng(7)
    x = rng.normal(1.0, 0.3, size=(40, 6))
    x[3, 2] = np.nan  # a run without a value there
    mean, lo, hi, n = bootstrap_mean_ci(x, n_resamples=500, confidence=0.9, seed=11)
    idx = np.random.default_rng(11).integers(0, 40, size=(500, 40))
    boot = np.nanmean(x[idx], axis=1)
    ref_lo, ref_hi = np.nanpercentile(boot, [5, 95], axis=0)
    np.testing.assert_allclose(lo, ref_lo, rtol=1e-12)
    np.testing.assert_allclose(hi, ref_hi, rtol=1e-12)
    np.testing.assert_allclose(mean, np.nanmean(x, axis=0), rtol=1e-15)
    assert n.tolist() == [40, 40, 39, 40, 40, 40]
    assert np.all(lo < mean) and np.all(mean < hi)
    widths = []
    for runs in (5, 20, 80):
        y = np.random.default_rng(3).normal(0.0, 1.0, size=(runs, 4))
        m, lo, hi, _ = bootstrap_mean_ci(y, seed=0)
        assert np.all(lo <= m) and np.all(m <= hi)
        widths.append(float(np.mean(hi - lo)))
    assert widths[0] > widths[1] > widths[2] and widths[0] > 2.5 * widths[2]


def test_curves_and_phases_against_numpy(runset):
    ds = runset.dataset
    refs = {str(p): reference(p) for p in ds["path"].values}
    cv = runset.curves("l2_mean", by="truncation", on="step", n_resamples=300, seed=5)
    assert list(cv["group"].values) == ["truncation=keep3", "truncation=none"]
    for g, tr in enumerate(TRUNC):
        paths = [p for p in ds["path"].values if refs[p]["attrs"]["setting_truncation"] == tr]
        vals = np.stack([refs[p]["l2_mean"] for p in paths])  # [runs, S], in the dataset's run order
        np.testing.assert_array_equal(cv["mean"].values[g], vals.mean(axis=0))  # means exactly
        idx = np.random.default_rng(5).integers(0, len(paths), size=(300, len(paths)))
        lo, hi = np.percentile(vals[idx].mean(axis=1), [2.5, 97.5], axis=0)
        np.testing.assert_allclose(cv["ci_low"].values[g], lo, rtol=1e-12)
        np.testing.assert_allclose(cv["ci_high"].values[g], hi, rtol=1e-12)
        assert (cv["n"].values[g] == 6).all()
        assert np.all(cv["ci_low"].values[g] <= cv["mean"].values[g]) and \
            np.all(cv["mean"].values[g] <= cv["ci_high"].values[g])
    # default grouping: every setting combination
    assert list(runset.curves("cos_mean", on="step", n_resamples=50)["group"].values) == \
        ["steps=12, truncation=keep3", "steps=12, truncation=none"]
    # phases: each run's own thirds, and expert phases cut at its own boundary
    table = runset.phase_table("l2_mean", by="truncation", scheme="run", n_resamples=200, seed=1)
    experts = runset.phase_table("l2_mean", by="truncation", scheme="expert", n_resamples=200, seed=1)
    for tr in TRUNC:
        paths = [p for p in ds["path"].values if refs[p]["attrs"]["setting_truncation"] == tr]
        for name, a, b in refs[paths[0]]["thirds"]:
            v = np.asarray([refs[p]["l2_mean"][a:b].mean() for p in paths])
            row = table[(table.group == f"truncation={tr}") & (table.phase == name)].iloc[0]
            assert row["runs"] == 6 and row["mean"] == pytest.approx(v.mean(), rel=1e-14)
            assert row["ci_low"] <= row["mean"] <= row["ci_high"]
        hi = np.asarray([refs[p]["l2_mean"][: refs[p]["experts"].index("low_noise")].mean() for p in paths])
        row = experts[(experts.group == f"truncation={tr}") & (experts.phase == "high_noise")].iloc[0]
        assert row["mean"] == pytest.approx(hi.mean(), rel=1e-14)


def test_paired_difference_equals_numpy_per_prompt_and_seed(runset):
    ds = runset.dataset
    by_key = {}
    for p in ds["path"].values:
        ref = reference(p)
        a = ref["attrs"]
        by_key[(a["prompt_id"], a["seed"], a["setting_truncation"])] = ref["l2_mean"]
    pdiff = runset.paired_difference("truncation", "keep3", "none", on="step", n_resamples=400, seed=2)
    keys = list(zip(pdiff.pairs["prompt_id"], pdiff.pairs["seed"]))
    assert sorted(keys) == [(p, s) for p in PROMPTS for s in SEEDS]
    diff = np.stack([by_key[(p, s, "keep3")] - by_key[(p, s, "none")] for p, s in keys])
    np.testing.assert_array_equal(pdiff.per_pair.values, diff)
    np.testing.assert_array_equal(pdiff.curve["mean"].values, diff.mean(axis=0))
    idx = np.random.default_rng(2).integers(0, 6, size=(400, 6))
    lo, hi = np.percentile(diff[idx].mean(axis=1), [2.5, 97.5], axis=0)
    np.testing.assert_allclose(pdiff.curve["ci_low"].values, lo, rtol=1e-12)
    np.testing.assert_allclose(pdiff.curve["ci_high"].values, hi, rtol=1e-12)
    assert np.all(pdiff.curve["mean"].values[1:] > 0)  # keep3 runs were given the larger x̂₀ error
    ranking = runset.rank_prompts("l2_mean", on="step")
    means = {p: np.mean([v for (q, _, _), v in by_key.items() if q == p], axis=0) for p in PROMPTS}
    overall = np.mean([means[p] for p in PROMPTS], axis=0)
    rms = {p: float(np.sqrt(np.mean((means[p] - overall) ** 2))) for p in PROMPTS}
    assert list(ranking["prompt_id"]) == sorted(PROMPTS, key=lambda p: -rms[p])
    np.testing.assert_allclose(ranking["rms_deviation"], sorted(rms.values(), reverse=True), rtol=1e-12)
    with pytest.raises(StudyError, match="no run has it"):
        runset.paired_difference("truncation", "keep9", "none")


@pytest.fixture(scope="module")
def lengths(tmp_path_factory, two_expert_pipe):
    """The tiny two-expert diffusers pipeline (boundary_ratio 0.875) at 20, 30 and 40 steps."""
    from conftest import run_pipe
    from latent_probe import LatentProbe

    folder = tmp_path_factory.mktemp("lengths")
    paths = []
    for steps in (20, 30, 40):
        path = str(folder / f"steps{steps}.h5")
        with one_thread(), LatentProbe(two_expert_pipe, path, capture=("x0",),
                                       attrs={"prompt_id": "ball", "seed": 0, "setting_steps": steps}):
            run_pipe(two_expert_pipe, steps=steps, guidance_scale=1.0)
        paths.append(path)
    return paths


def test_sigma_alignment_keeps_each_runs_own_boundary(lengths):
    rs = open_runs(lengths, workers=0)
    ds = rs.dataset
    assert ds["num_steps"].values.tolist() == [20, 30, 40]
    with pytest.raises(StudyError, match="never by step index"):
        rs.curves("l2_mean", on="step")
    bounds = []
    for i, path in enumerate(lengths):
        with open_run(path) as run:
            experts, sig = list(run.experts), run.sigmas
        k = next(j for j in range(1, len(experts)) if experts[j] != experts[j - 1])
        assert ds["boundary_step"].values[i] == k and ds["boundary_sigma"].values[i] == sig[k]
        assert ds["boundary_progress"].values[i] == k / (len(sig) - 1)
        bounds.append(sig[k])
    assert len(set(bounds)) == 3  # three runs, three boundaries: each at its own σ
    al = rs.aligned("sigma", points=57)
    grid = al["sigma"].values
    assert grid[0] > grid[-1] and al.sizes["sigma"] == 57
    for i, path in enumerate(lengths):
        with open_run(path) as run:
            sig, l2m = run.sigmas, run.metrics("x0").l2_mean.mean(axis=1)
            experts = list(run.experts)
        inside = (grid <= sig.max()) & (grid >= sig.min())
        ref = np.interp(grid[inside], sig[::-1], l2m[::-1])  # np.interp wants increasing x
        np.testing.assert_allclose(al["l2_mean"].values[i][inside], ref, rtol=1e-12)
        expected = np.where(grid > bounds[i], experts[0], experts[-1])
        assert (al["expert"].values[i] == expected).all()
        assert al["boundary_sigma"].values[i] == bounds[i]
    cv = rs.curves("l2_mean", on="sigma", points=57, n_resamples=100)
    assert cv.sizes["group"] == 3 and np.isfinite(cv["mean"].values).all()
    on_progress = rs.curves("l2_mean", on="progress", points=11, n_resamples=100)
    assert on_progress["progress"].values.tolist() == pytest.approx(np.linspace(0, 1, 11).tolist())
    # the dashboard marks each run's boundary at its own σ
    from latent_probe.views.suite import curves_figure, suite_stats

    fig = curves_figure(rs, suite_stats(rs, n_resamples=100))
    marks = sorted(x for t in fig.data if "expert boundary" in (t.name or "") for x in t.x)
    assert sorted(bounds) == sorted(set(marks)) and len(marks) == 6  # 3 runs × 2 panels


def _copy_fresh(runs, folder):
    os.makedirs(folder)
    return [shutil.copy(p, os.path.join(folder, os.path.basename(p))) for p in runs]


def test_dask_recompute_equals_serial_and_reuses_caches(tmp_path):
    """2-worker LocalCluster with processes=False (threads: starting worker processes costs seconds here; the
    benchmark runs processes)."""
    src = write_suite(tmp_path / "src", PROMPTS[:2], SEEDS)  # no metrics cached yet: written by the probe only
    originals = sorted(os.path.join(src, f) for f in os.listdir(src))
    serial_files = _copy_fresh(originals, tmp_path / "serial")
    dask_files = _copy_fresh(originals, tmp_path / "dask")
    thread_files = _copy_fresh(originals, tmp_path / "threads")
    serial = open_runs(serial_files, workers=0)
    first = open_runs(dask_files, workers=2, processes=False)
    threaded = open_runs(thread_files)  # the default: threads of this process, no Dask
    assert all(r.computed for r in serial.records) and all(r.computed for r in first.records)
    assert all(r.computed for r in threaded.records)
    second = open_runs(dask_files, workers=2, processes=False)
    assert not any(r.computed for r in second.records)  # every cache current: nothing recomputed
    for rs in (first, second, threaded):
        for v in ("l2", "cos", "one_minus_cos", "norm_ratio", "l2_mean", "cos_mean", "sigma"):
            np.testing.assert_array_equal(rs.dataset[v].values, serial.dataset[v].values)  # bit for bit
        assert list(rs.dataset["run"].values) == list(serial.dataset["run"].values)


def test_corrupt_and_foreign_files_are_skipped_in_one_line(suite_dir, tmp_path, capsys):
    folder = tmp_path / "mixed"
    good = _copy_fresh([os.path.join(suite_dir, f"p1-{s}-{t}.h5") for s in SEEDS for t in TRUNC], folder)
    with open(good[0], "rb") as fh:
        data = fh.read()
    with open(folder / "truncated.h5", "wb") as fh:
        fh.write(data[: len(data) // 2])
    (folder / "notes.h5").write_text("not hdf5")
    rs = open_runs(str(folder / "*.h5"), workers=0)
    assert len(rs) == 4 and sorted(os.path.basename(s.path) for s in rs.skipped) == ["notes.h5", "truncated.h5"]
    assert all("\n" not in s.reason and s.reason for s in rs.skipped)
    assert "truncated" in dict((os.path.basename(s.path), s.reason) for s in rs.skipped)["truncated.h5"]
    with pytest.raises(StudyError, match="notes.h5|truncated.h5"):
        open_runs(str(folder), workers=0, strict=True)
    code = cli.main(["suite", str(folder), "-o", str(tmp_path / "m.html"), "--workers", "0", "--resamples", "50"])
    out, err = capsys.readouterr()
    assert code == 0 and (tmp_path / "m.html").exists()
    skipped = [ln for ln in err.splitlines() if ln.startswith("latent-probe suite: skipped ")]
    assert len(skipped) == 2 and any("truncated.h5: " in ln for ln in skipped)
    code = cli.main(["suite", str(folder), "-o", str(tmp_path / "n.html"), "--workers", "0", "--strict"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("latent-probe suite: error: ")


def test_suite_dashboard_and_cli(runset, suite_dir, tmp_path, capsys):
    from latent_probe.views.suite import suite_figures, suite_stats, write_suite_dashboard

    st = suite_stats(runset, n_resamples=200)
    assert (st.paired.setting, st.paired.a, st.paired.b) == ("setting_truncation", "keep3", "none")
    figs = suite_figures(runset, st)
    for fig in figs:
        for key in fig.layout:
            if key.startswith(("xaxis", "yaxis")):
                assert fig.layout[key].title.text, f"untitled {key} in {fig.layout.title.text}"
    names = [t.name for t in figs[0].data]
    for tr in TRUNC:
        g = f"steps=12, truncation={tr}"
        assert names.count(g) == 2 and names.count(f"{g} 95% CI") == 2
        assert names.count(f"{g}: expert boundary of each run") == 2
    assert len(figs[1].layout.annotations) >= 3  # one small multiple per prompt
    assert {t.name for t in figs[3].data} >= {"mean difference", "mean difference 95% CI", "each pair"}
    html = tmp_path / "suite.html"
    write_suite_dashboard(runset, html, stats=st, figures=figs)
    text = html.read_text()
    assert text.count("<script") >= 4 and 'src="http' not in text and "cdn.plot.ly/plotly" not in text  # inlined
    assert "truncation=keep3 95% CI" in text and "Paired difference" in text and "p1-s0-keep3" in text
    out_html, out_json, out_csv = tmp_path / "c.html", tmp_path / "c.json", tmp_path / "c.csv"
    code = cli.main(["suite", os.path.join(suite_dir, "*.h5"), "-o", str(out_html), "--workers", "0", "--json",
                     str(out_json), "--csv", str(out_csv), "--compare", "truncation=keep3,none", "--on", "progress",
                     "--resamples", "100"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "read 12 runs (0 computed, 12 from caches or sums recorded during the run)" in err and f"wrote {out_html}" in out
    doc = json.loads(out_json.read_text())
    assert doc["on"] == "progress" and doc["runs"] == 12 and doc["paired"]["a"] == "keep3"
    assert set(doc["curves"]["l2_mean"]["groups"]) == {"steps=12, truncation=none", "steps=12, truncation=keep3"}
    lines = out_csv.read_text().splitlines()
    assert lines[0].startswith("run,") and len(lines) == 1 + 12 * 12 * 3
    code = cli.main(["suite", os.path.join(suite_dir, "*.h5"), "--compare", "truncation"])
    assert code == 2 and "SETTING=A,B" in capsys.readouterr().err


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(latent_probe.__file__)))
UNGUARDED = """
import os, sys
with open("ran.txt", "a") as fh:          # no `if __name__ == "__main__":` guard, on purpose
    fh.write(f"{os.getpid()}\\n")
from latent_probe import open_runs
rs = open_runs("runs/*.h5")
print(len(rs), len(rs.skipped), "distributed" in sys.modules)
"""


@pytest.mark.slow
def test_an_unguarded_script_runs_once(tmp_path):
    """open_runs's default works in this process (threads): a plain script without a __main__ guard is not
    imported again by worker processes (it used to run three times at once under Dask's LocalCluster)."""
    import subprocess

    from latent_probe.demo import run_demo_generation

    (tmp_path / "runs").mkdir()
    for k in range(3):
        run_demo_generation(tmp_path / "runs" / f"r{k}.h5", steps=4, frames=3, seed=k)[1].close()
    (tmp_path / "script.py").write_text(UNGUARDED)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["3", "0", "False"]  # three runs read, none skipped, Dask never imported
    assert len((tmp_path / "ran.txt").read_text().splitlines()) == 1
