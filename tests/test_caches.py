"""Acceleration baselines through diffusers' own cache hooks (interventions.caches): each skips, is counted, and
is removed exactly (the pipeline's output is bit-identical to the baseline again)."""

from __future__ import annotations

import pytest
import torch

from conftest import run_pipe
from latent_probe.interventions.caches import (CACHE_KINDS, Method, MethodError, _cache_hooks, experts_of,
                                               frontier_methods)

STEPS = 8
FLAT_RATIOS = {n: {"mag_ratios": [1.0] * STEPS, "num_inference_steps": STEPS, "retention_ratio": 0.2,
                   "max_skip_steps": 2} for n in ("transformer", "transformer_2")}
SKIPPING = {  # a strength at which each cache must skip on the tiny two-expert pipeline
    "first_block_cache": Method("first_block_cache", 0.5),
    "mag_cache": Method("mag_cache", 0.5),
    "taylorseer": Method("taylorseer", 2, options=(("disable_cache_before_step", 1),)),
    "pab": Method("pab", 2, options=(("spatial_attention_timestep_skip_range", (-1, 1001)),)),
    "faster_cache": Method("faster_cache", 2),  # its default range (-1, 681) holds only low-noise steps here
}


@pytest.fixture(scope="module")
def baseline(two_expert_pipe):
    return run_pipe(two_expert_pipe, steps=STEPS)


@pytest.mark.parametrize("kind", CACHE_KINDS)
def test_each_cache_skips_changes_output_and_is_removed_exactly(two_expert_pipe, baseline, kind):
    method = SKIPPING[kind]
    with method.applied(two_expert_pipe, mag_ratios=FLAT_RATIOS) as counter:
        out = run_pipe(two_expert_pipe, steps=STEPS)
        again = run_pipe(two_expert_pipe, steps=STEPS)  # the cache state is reset for a new generation
    s = counter.summary()
    assert s["dit_calls"] == 2 * 2 * STEPS                   # two generations, CFG: cond + uncond
    assert s["units_skipped"] > 0 and 0 < s["skipped_fraction"] < 1
    assert set(s["per_expert"]) == {"transformer", "transformer_2"}
    skipped_in = {n for n, d in s["per_expert"].items() if d["units_skipped"]}
    assert skipped_in == ({"transformer_2"} if kind == "faster_cache" else {"transformer", "transformer_2"})
    assert not torch.equal(out, baseline)                    # it skipped, so the output changed
    assert torch.equal(out, again)
    for m in experts_of(two_expert_pipe).values():           # removed: no hook, no config, same output
        assert _cache_hooks(m) == 0 and m._cache_config is None
    assert torch.equal(run_pipe(two_expert_pipe, steps=STEPS), baseline)


def test_a_cache_that_never_skips_is_visible_and_leaves_output_bit_identical(two_expert_pipe, baseline):
    with Method("first_block_cache", 0.0).applied(two_expert_pipe) as counter:
        out = run_pipe(two_expert_pipe, steps=STEPS)
    assert counter.skipped == 0 and counter.called == 2 * STEPS * 2 * 3   # calls × blocks × units
    rows = counter.per_call()
    assert len(rows) == 2 * STEPS and all(r["seconds"] > 0 for r in rows)
    assert counter.summary()["dit_s"] == pytest.approx(sum(r["seconds"] for r in rows))
    assert torch.equal(out, baseline)


def test_baseline_and_steps_count_nothing_skipped(two_expert_pipe, baseline):
    with Method("baseline").applied(two_expert_pipe) as counter:
        out = run_pipe(two_expert_pipe, steps=STEPS)
    assert torch.equal(out, baseline) and counter.skipped == 0 and counter.computed == counter.called > 0
    m = Method("steps", 5)
    assert m.num_steps(20) == 5 and m.intervention() is None


def test_a_cache_that_hooks_nothing_is_refused(two_expert_pipe):
    m = Method("taylorseer", 2, options=(("cache_identifiers", ["no_such_module"]),))
    with pytest.raises(MethodError, match="hooked no module"):
        with m.applied(two_expert_pipe):
            pass
    assert all(_cache_hooks(e) == 0 and e._cache_config is None for e in experts_of(two_expert_pipe).values())


def test_mag_cache_without_ratios_is_refused_before_anything_runs(two_expert_pipe):
    with pytest.raises(MethodError, match="calibrated mag_ratios"):
        with Method("mag_cache", 0.1).applied(two_expert_pipe):
            pass


def test_method_names_parse_back_and_bad_ones_are_refused():
    for m in frontier_methods(20):
        assert Method.parse(m.name) == m
    m = Method.parse("truncation:3:steps=12:until=boundary")
    assert (m.kind, m.strength, m.steps, dict(m.options)) == ("truncation", 3, 12, {"until": "boundary"})
    assert m.num_steps(20) == 12 and m.intervention().keep == 3
    assert Method.parse("first_block_cache:0.1").strength == 0.1
    grow = Method.parse("truncation:3:schedule=3@4/6@8/11@12:fill=motion").intervention()
    assert grow.schedule == [(3, 4), (6, 8), (11, 12)] and grow.fill == "motion"
    for bad in ("truncation:2:schedule=3@4/6@8", "truncation:3:schedule=3@4/6", "truncation:3:renoise=maybe"):
        with pytest.raises(MethodError):
            Method.parse(bad).intervention()
    for bad in ("nocache:1", "steps", "steps:0", "steps:2.5", "first_block_cache", "baseline:3",
                "first_block_cache:-1", "truncation:3:oops", "pab:nan"):
        with pytest.raises(MethodError):
            Method.parse(bad)
    kinds = {m.kind for m in frontier_methods(20)}
    assert kinds == {"baseline", "steps", "truncation", *CACHE_KINDS}
    assert all(sum(m.kind == k for m in frontier_methods(20)) >= 3 for k in kinds - {"baseline"})


@pytest.mark.parametrize("doc, match", [
    ({"mag_ratios": "no", "num_inference_steps": 4}, "mag_ratios"),
    ({"mag_ratios": [1.0, float("nan")], "num_inference_steps": 2}, "mag_ratios"),
    ({"mag_ratios": [], "num_inference_steps": 2}, "mag_ratios"),
    ({"mag_ratios": [1.0, 0.9], "num_inference_steps": "2"}, "num_inference_steps"),
    ([1.0, 0.9], "JSON object"),
])
def test_a_crafted_magcache_config_is_refused_before_any_job(tmp_path, doc, match):
    """A --mag_config file that diffusers would reject only at the first DiT call is refused in one line at entry."""
    import json

    from latent_probe.app.cli import main
    from latent_probe.interventions.caches import check_mag_config

    with pytest.raises(MethodError, match=match):
        check_mag_config(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red square moving right\n")
    code = main(["study", str(prompts), "--out", str(tmp_path / "out"), "--backend", "organism", "--seeds", "0",
                 "--set", "method=mag_cache:0.1", "--mag_config", f"transformer={bad}",
                 "--mag_config", f"transformer_2={bad}"])
    assert code == 2 and not (tmp_path / "out").exists()
    assert check_mag_config({"mag_ratios": [1.0, 0.95], "num_inference_steps": 2})["num_inference_steps"] == 2
