"""Frontier tables and figure: paired savings, per-method best at a saving, the floors drawn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from latent_probe.errors import LatentProbeError
from latent_probe.study.frontier import add_saving, best_at_saving, frontier_summary


def table():
    rows = []
    for p in range(4):
        for s in range(2):
            cost = 10.0 + p + s                                   # clip-specific cost, shared by all settings
            for name, method, frac, q in (("base", "baseline", 1.0, 40.0), ("s12", "steps", 0.6, 30.0),
                                          ("s8", "steps", 0.4, 25.0), ("t3", "trunc", 0.62, 16.0)):
                rows.append({"setting": name, "method": method, "prompt": p, "seed": s,
                             "t": cost * frac, "psnr": q + 0.1 * p})
    return pd.DataFrame(rows)


def test_saving_is_paired_per_clip_and_exact():
    t = add_saving(table(), "base", "t")
    np.testing.assert_allclose(t[t.setting == "s12"].saving_t, 0.4, rtol=1e-12)
    np.testing.assert_allclose(t[t.setting == "base"].saving_t, 0.0, atol=0)
    with pytest.raises(LatentProbeError, match="no baseline row"):
        add_saving(table()[lambda d: ~((d.setting == "base") & (d.prompt == 0) & (d.seed == 0))], "base", "t")


def test_best_at_saving_picks_per_method_among_settings_that_reach_the_target():
    t = add_saving(table(), "base", "t")
    summ = frontier_summary(t, ["psnr", "saving_t"], n_resamples=200)
    assert set(summ.setting) == {"base", "s12", "s8", "t3"}
    assert summ.set_index("setting").loc["s12", "psnr"] == pytest.approx(30.15)
    best = best_at_saving(summ[summ.method != "baseline"], "psnr", "saving_t", higher_is_better=True,
                          targets=(0.25, 0.5, 0.7))
    b = best.set_index(["method", "target"])
    assert b.loc[("steps", 0.25), "setting"] == "s12" and b.loc[("steps", 0.5), "setting"] == "s8"
    assert b.loc[("trunc", 0.25), "setting"] == "t3" and pd.isna(b.loc[("trunc", 0.5), "setting"])
    assert np.isnan(b.loc[("steps", 0.7), "psnr"])


def test_frontier_figure_has_a_curve_per_method_and_the_floor(tmp_path):
    from latent_probe.views.frontier import frontier_figure

    t = add_saving(table(), "base", "t")
    summ = frontier_summary(t, ["psnr", "saving_t"], n_resamples=200)
    fig = frontier_figure(summ, {"psnr": (16.5, "floor: other seed")}, measures=("psnr",), saving="saving_t")
    names = [tr.name for tr in fig.data]
    assert names == ["baseline", "steps", "trunc"]
    steps = fig.data[1]
    assert list(steps.x) == pytest.approx([40.0, 60.0])          # ordered by saving, in %
    assert any(s.y0 == 16.5 for s in fig.layout.shapes)
    assert fig.layout.legend.title.text == "method (colour)"


def test_frontier_from_json_refuses_a_file_without_settings(tmp_path):
    from latent_probe.views.frontier import frontier_from_json

    bad = tmp_path / "f.json"
    bad.write_text('{"floors": {}}')
    with pytest.raises(LatentProbeError, match="no per-setting summary"):
        frontier_from_json(bad)
    with pytest.raises(LatentProbeError, match="cannot read"):
        frontier_from_json(tmp_path / "missing.json")


def test_suite_command_draws_the_frontier_file(tmp_path):
    import json

    from latent_probe.app import cli
    from latent_probe.demo import run_demo_generation

    (tmp_path / "runs").mkdir()
    for seed in (0, 1):
        run_demo_generation(tmp_path / "runs" / f"r{seed}.h5", steps=4, frames=5, seed=seed)[1].close()
    t = add_saving(table(), "base", "t")
    summ = frontier_summary(t, ["psnr", "saving_t"], n_resamples=50)
    summ = summ.rename(columns=lambda c: c.replace("saving_t", "saving_thread_cpu_s"))
    data = {"settings": summ.to_dict("records"), "floors": {"seed_psnr": {"mean": 16.5}}}
    (tmp_path / "f.json").write_text(json.dumps(data))
    out = tmp_path / "suite.html"
    code = cli.main(["suite", str(tmp_path / "runs"), "-o", str(out), "--workers", "0", "--resamples", "20",
                     "--frontier", str(tmp_path / "f.json")])
    page = out.read_text()
    assert code == 0 and "quality frontier" in page and "method (colour)" in page
