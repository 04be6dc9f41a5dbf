"""Block-probe metrics across a study (issue 21 item 3): ``RunSet.blocks()`` holds each run's own
``run.blocks.metrics()``, runs without block probes are counted not mixed, and ``block_curves``' prompt-cluster CI equals
``inference.cluster_bootstrap`` cell by cell and brackets the mean."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_pipe
from latent_probe import LatentProbe, open_run
from latent_probe.study.blockset import block_curves
from latent_probe.study.collection import open_runs
from latent_probe.study.inference import cluster_bootstrap
from latent_probe.study.records import StudyError
from latent_probe.testing import tiny_prompt_embeds


def record(pipe, path, prompt, seed, steps=3, blocks="all"):
    attrs = {"study": "b", "job_id": f"{prompt}-{seed}-{steps}", "prompt_id": prompt, "prompt": prompt, "seed": seed}
    with LatentProbe(pipe, path, capture=("x0",), blocks=blocks, attrs=attrs):
        run_pipe(pipe, steps=steps, seed=seed, prompt_embeds=tiny_prompt_embeds(prompt))
    return str(path)


@pytest.fixture(scope="module")
def study(one_expert_pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("blockstudy")
    return [record(one_expert_pipe, d / "a.h5", "a red ball", 0), record(one_expert_pipe, d / "b.h5", "a blue cube", 1),
            record(one_expert_pipe, d / "c.h5", "a green cone", 2, blocks=None)]


def test_block_dataset_holds_each_runs_own_metrics_and_counts_unprobed_runs(study):
    rs = open_runs(study, workers=0)
    bs = rs.blocks()
    assert bs.attrs["without_blocks"] == 1 and bs.attrs["runs_without_blocks"] == ["a green cone-2-3"]
    assert list(bs["run"].values) == ["a red ball-0-3", "a blue cube-1-3"]
    assert bs["block_cos"].dims == ("run", "step", "branch", "block", "frame_pair")
    for i, path in enumerate(study[:2]):
        with open_run(path) as run:
            own = run.blocks.metrics()
            assert list(bs["block"].values) == run.blocks.indices
        for short in ("cos", "l2", "update", "change"):
            np.testing.assert_array_equal(bs[f"block_{short}"].values[i], own[short][:, :, 0])
        np.testing.assert_array_equal(bs["mag_ratio"].values[i], own["mag"][:, :, 0])


def test_block_curves_ci_is_the_prompt_cluster_bootstrap_and_brackets_the_mean(study):
    bs = open_runs(study, workers=0).blocks()
    for metric in ("block_update", "block_cos", "block_change"):
        c = block_curves(bs, metric, n_resamples=500, seed=7)
        vals = bs[metric].sel(branch="cond")
        if "frame_pair" in vals.dims:
            vals = vals.mean("frame_pair")
        for s in range(bs.sizes["step"]):
            for k in range(bs.sizes["block"]):
                cell = vals.values[:, s, k]
                if not np.isfinite(cell).all():  # block_change at step 0
                    assert np.isnan(c["mean"].values[s, k]) and np.isnan(c["ci_low"].values[s, k])
                    continue
                ref = cluster_bootstrap(cell, bs["prompt_key"].values, n_resamples=500, seed=7)
                np.testing.assert_allclose([c["mean"].values[s, k], c["ci_low"].values[s, k], c["ci_high"].values[s, k]],
                                           [ref.mean, ref.low, ref.high], rtol=1e-12)
                assert c["ci_low"].values[s, k] <= c["mean"].values[s, k] <= c["ci_high"].values[s, k]
                assert c["ci_low"].values[s, k] < c["ci_high"].values[s, k]  # two prompts that differ
    assert np.isnan(block_curves(bs, "block_change")["mean"].values[0]).all()
    assert c.attrs["n_prompts"] == 2 and c.attrs["n_runs"] == 2


def test_block_study_refusals(study, one_expert_pipe, tmp_path):
    bs = open_runs(study, workers=0).blocks()
    with pytest.raises(StudyError, match="not a block metric"):
        block_curves(bs, "l2_mean")
    with pytest.raises(StudyError, match="at least 2 prompts"):
        block_curves(bs.isel(run=[0]), "block_update")
    with pytest.raises(StudyError, match="none of the 1 runs"):
        open_runs(study[2], workers=0).blocks()
    longer = record(one_expert_pipe, tmp_path / "d.h5", "a red ball", 3, steps=4)
    with pytest.raises(StudyError, match="3, 4 steps: block curves need equal step counts on step"):
        block_curves(open_runs([*study[:2], longer], workers=0).blocks(), "block_update")
    with pytest.raises(StudyError, match="on must be step, sigma or progress"):
        block_curves(bs, "block_update", on="timestep")
    other = record(one_expert_pipe, tmp_path / "e.h5", "a blue cube", 4, blocks=[0])
    with pytest.raises(StudyError, match="probed blocks"):
        open_runs([study[0], other], workers=0).blocks()


@pytest.mark.parametrize("on", ["sigma", "progress"])
def test_block_curves_on_sigma_put_runs_of_different_step_counts_on_one_axis(study, one_expert_pipe, tmp_path, on):
    """3- and 5-step runs: each run's curve equals numpy's np.interp of its own per-step values at the grid (float64,
    σ descending handled by reversing), and each cell's CI equals cluster_bootstrap of those interpolated values."""
    longer = [record(one_expert_pipe, tmp_path / f"l{i}.h5", p, 10 + i, steps=5)
              for i, p in enumerate(("a red ball", "a blue cube"))]
    bs = open_runs([*study[:2], *longer], workers=0).blocks()
    c = block_curves(bs, "block_update", on=on, points=7, n_resamples=300, seed=3)
    assert c["mean"].dims == (on, "block") and c.attrs["on"] == on
    grid = c[on].values
    sig = bs["sigma"].values
    if on == "sigma":   # the σ range every run covers, noisiest first
        assert grid[0] == np.nanmin(np.nanmax(sig, 1)) and grid[-1] == np.nanmax(np.nanmin(sig, 1))
        assert np.all(np.diff(grid) < 0)
    vals = bs["block_update"].sel(branch="cond").values
    interp = np.empty((len(longer) + 2, grid.size, bs.sizes["block"]))
    for r in range(interp.shape[0]):
        n = int(bs["num_steps"].values[r])
        x = sig[r, :n] if on == "sigma" else np.linspace(0, 1, n)
        order = np.argsort(x)
        for k in range(bs.sizes["block"]):
            interp[r, :, k] = np.interp(grid, x[order], vals[r, :n, k][order])
    np.testing.assert_allclose(c["mean"].values, interp.mean(0), rtol=1e-12)
    for g in range(grid.size):
        for k in range(bs.sizes["block"]):
            ref = cluster_bootstrap(interp[:, g, k], bs["prompt_key"].values, n_resamples=300, seed=3)
            np.testing.assert_allclose([c["ci_low"].values[g, k], c["ci_high"].values[g, k]], [ref.low, ref.high],
                                       rtol=1e-12)
    # block_change is NaN at every run's step 0: on σ the first grid interval is NaN, never a mean of fewer runs
    ch = block_curves(bs, "block_change", on=on, points=7, n_resamples=50)
    assert np.isnan(ch["mean"].values[0]).all() and np.isfinite(ch["mean"].values[-1]).all()
