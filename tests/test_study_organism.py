"""``latent-probe study --backend organism`` with acceleration methods, and ``latent-probe calibrate``: MagCache
ratios equal diffusers' own calibration, the exported config is accepted by MagCacheConfig and makes
diffusers' apply_mag_cache skip. A tiny random-weight organism keeps it fast."""

from __future__ import annotations

import ast
import contextlib
import glob
import io
import json
import os

import numpy as np
import pytest
import torch

from latent_probe.app import cli

PROMPTS = ("a red square moving right", "a blue disc moving left")
STEPS = 6


@pytest.fixture(scope="module")
def tiny_weights(weights):
    return weights   # conftest's tiny organism, built once per session


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_weights):
    folder = tmp_path_factory.mktemp("orgstudy")
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = str(folder / "st")
    code = cli.main(["study", str(prompts), "--out", out, "--backend", "organism", "--model_path", tiny_weights,
                     "--seeds", "0,1", "--set", f"steps={STEPS}", "--set",
                     "method=baseline,first_block_cache:0.5,truncation:2", "--record_residuals",
                     "--capture", "none", "--metrics", "x0"])
    assert code == 0
    return out


def _methods(out):
    return {os.path.basename(p): json.load(open(p)) for p in glob.glob(os.path.join(out, "methods", "*.json"))}


def test_organism_study_runs_every_method_and_counts_what_it_skipped(study):
    from latent_probe.study import job_status, run_path

    docs = _methods(study)
    assert len(docs) == 2 * 2 * 3
    for d in docs.values():
        assert job_status(run_path(study, d["job_id"]), d["job_id"]).done
        assert d["num_inference_steps"] == STEPS and d["skips"]["dit_calls"] == 2 * STEPS and d["wall_s"] > 0
        assert 0 < d["skips"]["dit_s"] < d["wall_s"] and d["residuals_recorded"] == (d["kind"] == "baseline")
        skipped = d["skips"]["units_skipped"]
        assert (skipped > 0) == (d["kind"] == "first_block_cache"), (d["method"], skipped)
    # residuals only for the plain jobs (a cache or truncation changes what the blocks compute)
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(study, "residuals", "*.json")))
    assert len(names) == 4 and all("-baseline-" in n for n in names)
    from latent_probe import open_run

    trunc = next(d for d in docs.values() if d["kind"] == "truncation")
    with open_run(run_path(study, trunc["job_id"])) as run:
        assert run.attrs["intervention"]["keep"] == 2


def test_recorded_mag_ratios_equal_diffusers_own_calibration(study, tiny_weights):
    from diffusers.hooks import MagCacheConfig

    from latent_probe.interventions.caches import experts_of
    from latent_probe.organism import load_organism
    from latent_probe.study.calibrate import read_residuals

    rec = next(r for r in read_residuals(study, {"method": "baseline"}) if r.seed == 1 and r.prompt_id == "p002")
    org = load_organism(path=tiny_weights)
    calls = {e: len(rec.series[(e, "cond")]["mag_ratio"]) for e in ("transformer", "transformer_2")}
    for e, m in experts_of(org.pipe).items():
        m.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=calls[e]))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        org.generate(PROMPTS[1], seed=1, num_inference_steps=STEPS)
    printed = [ast.literal_eval(line) for line in buf.getvalue().splitlines() if line.startswith("[1.0")]
    ours = [rec.series[(e, b)]["mag_ratio"] for e in ("transformer", "transformer_2") for b in ("cond", "uncond")]
    assert printed == ours    # float for float: the same quantity diffusers computes


def test_calibrated_config_is_accepted_and_makes_apply_mag_cache_skip(study, tiny_weights, tmp_path):
    from diffusers.hooks import MagCacheConfig, apply_mag_cache

    from latent_probe.interventions.caches import Method, MethodError, SkipCounter, expert_steps, experts_of
    from latent_probe.organism import load_organism

    out = str(tmp_path / "mag.json")
    assert cli.main(["calibrate", study, "--method", "magcache", "-o", out, "--setting", "method=baseline",
                     "--bootstrap", "200"]) == 0
    configs = {e: json.load(open(tmp_path / f"mag.{e}.json")) for e in ("transformer", "transformer_2")}
    report = json.load(open(tmp_path / "mag.report.json"))
    assert report["clips"] == 4 and report["prompts"] == 2
    row = report["mag_ratios"][0]
    assert all(lo <= m <= hi for lo, m, hi in zip(row["ci95_low"], row["mean"], row["ci95_high"]))
    org = load_organism(path=tiny_weights)
    experts = experts_of(org.pipe)
    for e, m in experts.items():   # diffusers' own apply_mag_cache, with the JSON as written, on a fresh pipeline
        apply_mag_cache(m, MagCacheConfig(**{**configs[e], "threshold": 10.0, "retention_ratio": 0.0}))
    counter = SkipCounter(experts)
    counter.attach()
    out_cached = org.generate(PROMPTS[0], seed=0, num_inference_steps=STEPS)
    counter.detach()
    other = load_organism(path=tiny_weights)
    base = other.generate(PROMPTS[0], seed=0, num_inference_steps=STEPS)
    assert counter.skipped > 0 and not torch.equal(out_cached, base)
    # the same configs through the study's Method, on a pipeline that has run before
    with Method("mag_cache", 10.0, options=(("retention_ratio", 0.0),)).applied(other.pipe, configs) as c:
        again = other.generate(PROMPTS[0], seed=0, num_inference_steps=STEPS)
    assert c.skipped == counter.skipped and torch.equal(again, out_cached)
    assert torch.equal(other.generate(PROMPTS[0], seed=0, num_inference_steps=STEPS), base)
    # each expert's config holds its own step count; run at another step count it is refused before anything runs
    calls = expert_steps(other.pipe, STEPS)
    assert {e: configs[e]["num_inference_steps"] for e in configs} == calls
    assert {e: d["calls"] // 2 for e, d in c.summary()["per_expert"].items()} == calls
    with pytest.raises(MethodError, match="calibrate at steps=4"):
        with Method("mag_cache", 0.1).applied(other.pipe, configs, steps=4):
            pass


def test_firstblock_report_and_refusals(study, tiny_weights, tmp_path, capsys):
    out = str(tmp_path / "fbc.json")
    assert cli.main(["calibrate", study, "--method", "firstblock", "-o", out, "--setting", "method=baseline"]) == 0
    rows = json.load(open(out))["first_block_cache_signal"]
    assert {(r["expert"], r["branch"]) for r in rows} == {(e, b) for e in ("transformer", "transformer_2")
                                                         for b in ("cond", "uncond")}
    assert all(len(v) == 5 and v == sorted(v) for r in rows for v in r["values"])
    capsys.readouterr()
    assert cli.main(["calibrate", study, "--method", "magcache", "-o", out, "--num_inference_steps", "9"]) == 1
    assert "give --expert" in capsys.readouterr().err
    assert cli.main(["calibrate", study, "--method", "magcache", "-o", out, "--num_inference_steps", "9",
                     "--expert", "transformer_2", "--setting", "method=baseline"]) == 0
    cfg = json.load(open(out))
    assert cfg["num_inference_steps"] == 9 and len(cfg["mag_ratios"]) == 9 and cfg["mag_ratios"][0] == 1.0
    capsys.readouterr()
    # no residuals recorded → one line, exit 1
    bare = tmp_path / "bare"
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    assert cli.main(["study", str(prompts), "--out", str(bare), "--backend", "organism", "--model_path",
                     tiny_weights, "--set", "steps=2", "--dry_run"]) == 0
    assert cli.main(["calibrate", str(bare), "--method", "magcache", "-o", out]) == 1
    assert "--record_residuals" in capsys.readouterr().err
    # a prompt the organism was not trained on; mag_cache without calibrated ratios; method on another backend
    prompts.write_text("a cat\n")
    assert cli.main(["study", str(prompts), "--out", str(tmp_path / "x"), "--backend", "organism"]) == 1
    assert "training prompts" in capsys.readouterr().err
    prompts.write_text(PROMPTS[0] + "\n")
    assert cli.main(["study", str(prompts), "--out", str(tmp_path / "y"), "--backend", "organism",
                     "--set", "method=mag_cache:0.1"]) == 2
    assert "--mag_config" in capsys.readouterr().err
    assert cli.main(["study", str(prompts), "--out", str(tmp_path / "z"), "--backend", "demo",
                     "--set", "method=steps:4"]) == 2
    assert cli.main(["study", str(prompts), "--out", str(tmp_path / "z"), "--backend", "demo",
                     "--record_residuals"]) == 2
    assert "organism backend" in capsys.readouterr().err
    assert cli.main(["study", str(prompts), "--out", str(tmp_path / "z"), "--backend", "organism",
                     "--set", "truncation=keep3", "--set", "method=truncation:3"]) == 2
    assert "truncate twice" in capsys.readouterr().err


def test_calibration_refuses_to_pool_other_settings_or_other_timesteps():
    from latent_probe.study import StudyError
    from latent_probe.study.calibrate import ResidualRecord, magcache_config, nearest_interp
    from latent_probe.study.inference import cluster_bootstrap_columns

    def rec(job, prompt, settings, ts, ratios):
        s = {"timestep": ts, "mag_ratio": ratios, "fbc_signal": [None] + [0.1] * (len(ts) - 1)}
        return ResidualRecord(job, prompt, 0, settings, {("transformer", "cond"): s, ("transformer", "uncond"): s})

    a = rec("a", "p1", {"steps": 4}, [999, 900, 800, 700], [1.0, 1.1, 1.2, 1.3])
    b = rec("b", "p2", {"steps": 4}, [999, 900, 800, 700], [1.0, 0.9, 1.0, 1.1])
    cfg = magcache_config([a, b], "transformer", "cond")
    np.testing.assert_allclose(cfg["mag_ratios"], [1.0, 1.0, 1.1, 1.2])
    assert cfg["num_inference_steps"] == 4
    np.testing.assert_allclose(magcache_config([a, b], "transformer", "cond", 7)["mag_ratios"],
                               nearest_interp([1.0, 1.0, 1.1, 1.2], 7))
    assert nearest_interp([1.0, 2.0, 3.0, 4.0], 7) == [1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 4.0]   # index round(j/2), half to even
    with pytest.raises(StudyError, match="different settings"):
        magcache_config([a, rec("c", "p1", {"steps": 4, "guidance": 2.0}, [999, 900, 800, 700], [1.0] * 4)],
                        "transformer", "cond")
    with pytest.raises(StudyError, match="other timesteps"):
        magcache_config([a, rec("d", "p1", {"steps": 4}, [999, 950, 800, 700], [1.0] * 4)], "transformer", "cond")
    # the CI resamples prompts: two clips of one prompt and one of another give only two cluster values
    table = np.array([[1.0], [1.0], [3.0]])
    lo, hi = cluster_bootstrap_columns(table, ["p1", "p1", "p2"], n_resamples=500)
    assert lo[0] == 1.0 and hi[0] == 3.0
