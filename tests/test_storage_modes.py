"""Storage that scales (issue 11 item 6): metrics computed during the run, latents for chosen steps, x̂₀ / ε̂
derived on read. Every check compares against an independent reference: a run of the same deterministic
generation that stored every step in float32, bit for bit where the definitions say so."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

from conftest import run_pipe
from latent_probe import LatentProbe, RunFileError, open_run
from latent_probe.latent_steps import LatentStepsError
from latent_probe.metrics import adjacent_frame_metrics
from latent_probe.metrics import step_change as tensor_step_change

SPACES = ("x_t", "pred", "x0", "eps")


@pytest.fixture(scope="module")
def reference(two_expert_pipe, tmp_path_factory):
    """Every step, every quantity, float32; and the generation's output."""
    path = tmp_path_factory.mktemp("ref") / "full.h5"
    with LatentProbe(two_expert_pipe, path, store_dtype="float32", metrics=SPACES):
        out = run_pipe(two_expert_pipe)
    return str(path), out


def numpy_pair_metrics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 numpy reference: normalised L2 and cosine of adjacent frames of [B, C, F, H, W]."""
    x = x.astype(np.float64)
    a, b = x[:, :, :-1], x[:, :, 1:]
    num = np.sqrt(((a - b) ** 2).sum(axis=(1, 3, 4)))
    na, nb = np.sqrt((a * a).sum(axis=(1, 3, 4))), np.sqrt((b * b).sum(axis=(1, 3, 4)))
    return num / np.sqrt(na * na + nb * nb), (a * b).sum(axis=(1, 3, 4)) / (na * nb)


def test_metrics_computed_during_the_run_equal_those_of_the_stored_latents(reference):
    path, _ = reference
    with open_run(path) as run:
        assert run.online_spaces == list(SPACES)
        for space in SPACES:
            on, off = run.metrics(space, source="online"), run.metrics(space, source="latents")
            np.testing.assert_allclose(on.l2, off.l2, rtol=1e-12, atol=0)
            np.testing.assert_allclose(on.cos, off.cos, rtol=1e-12, atol=1e-15)
            l2, cos = numpy_pair_metrics(run.latents(space)[run.num_steps // 2])
            np.testing.assert_allclose(on.l2[run.num_steps // 2], l2, rtol=1e-6)  # float32 rows, float64 sums
            np.testing.assert_allclose(on.cos[run.num_steps // 2], cos, rtol=0, atol=1e-7)
            a, b = run.metrics.step_change(space, source="online"), run.metrics.step_change(space, source="latents")
            np.testing.assert_allclose(a.rel_l1, b.rel_l1, rtol=1e-12, equal_nan=True)
            np.testing.assert_allclose(a.norm_ratio, b.norm_ratio, rtol=1e-12, equal_nan=True)
            assert np.isnan(a.rel_l1[0]) and np.isfinite(a.rel_l1[1:]).all()
        assert run.metrics("x0").l2 is run.metrics("x0", source="online").l2  # auto prefers the online sums


def test_metrics_only_run_holds_kilobytes_and_the_same_metrics(reference, two_expert_pipe, tmp_path):
    ref_path, ref_out = reference
    path = tmp_path / "metrics_only.h5"
    with LatentProbe(two_expert_pipe, path, capture=(), metrics=("x0", "pred")):
        out = run_pipe(two_expert_pipe)
    assert torch.equal(out, ref_out)  # the probe changes nothing
    with open_run(path) as run, open_run(ref_path) as ref:
        assert run.quantities == [] and run.spaces == ["x0", "pred"] and run.latent_shape == (1, 16, 5, 8, 8)
        assert run.complete and run.num_steps == ref.num_steps == 12
        with h5py.File(path) as f:
            assert "latents" in f and len(f["latents"]) == 0
        m, r = run.metrics("x0"), ref.metrics("x0", source="latents")
        np.testing.assert_allclose(m.l2, r.l2, rtol=1e-12)
        np.testing.assert_allclose(run.metrics.step_change("pred").rel_l1,
                                   ref.metrics.step_change("pred", source="latents").rel_l1,
                                   rtol=1e-12, equal_nan=True)
        with pytest.raises(KeyError, match="no stored latents"):
            run.metrics("x0", source="latents")
        with pytest.raises(KeyError, match="not captured"):
            run.latents("x0")
        assert run.metrics.summary("x0").to_text()
    assert os.path.getsize(path) < 200_000


def test_derived_x0_and_eps_are_bit_identical_from_float32(reference, two_expert_pipe, tmp_path):
    ref_path, _ = reference
    path = tmp_path / "derived.h5"
    with LatentProbe(two_expert_pipe, path, capture=("x_t", "pred"), store_dtype="float32"):
        run_pipe(two_expert_pipe)
    with open_run(path) as run, open_run(ref_path) as ref:
        assert run.quantities == ["x_t", "pred"] and run.derivable == ["x0", "eps"]
        for q in ("x0", "eps"):
            view = run.latents(q)
            assert view.derived and view.shape == ref.latents(q).shape
            assert view[:].tobytes() == ref.latents(q)[:].tobytes()
            assert view[-1].tobytes() == ref.latents(q)[-1].tobytes()
        np.testing.assert_array_equal(run.metrics("x0").l2, ref.metrics("x0", source="latents").l2)


def test_derived_from_float16_states_its_error(reference, two_expert_pipe, tmp_path):
    ref_path, _ = reference
    path = tmp_path / "derived16.h5"
    with LatentProbe(two_expert_pipe, path, capture=("x_t", "pred")):
        run_pipe(two_expert_pipe)
    with open_run(path) as run, open_run(ref_path) as ref:
        for q in ("x0", "eps"):
            d, r = run.latents(q)[:].astype(np.float64), ref.latents(q)[:].astype(np.float64)
            rel = np.linalg.norm((d - r).reshape(len(d), -1), axis=1) / np.linalg.norm(r.reshape(len(r), -1), axis=1)
            assert rel.max() < 2e-3  # float16 rounding of x_t and the prediction (docs/hdf5-schema.md)
            assert rel.max() > 0


def test_derivation_refuses_a_file_without_its_noise_convention(tmp_path, two_expert_pipe):
    path = tmp_path / "old.h5"
    with LatentProbe(two_expert_pipe, path, capture=("x_t", "pred")):
        run_pipe(two_expert_pipe, steps=3)
    with h5py.File(path, "r+") as f:
        del f.attrs["noise_convention"]
    with open_run(path) as run:
        assert run.derivable == []
        with pytest.raises(KeyError, match="noise convention"):
            run.latents("x0")


class Denoiser(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def _loop(scheduler, tmp_path, name, **probe):
    from latent_probe.store.reader import open_run as _open

    model = Denoiser()
    scheduler.set_timesteps(6)
    x = torch.randn(1, 4, 4, 6, 6, generator=torch.Generator().manual_seed(1)) * float(
        getattr(scheduler, "init_noise_sigma", 1.0))
    path = tmp_path / f"{name}.h5"
    with LatentProbe((model, scheduler), path, store_dtype="float32", **probe), torch.no_grad():
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
            x = scheduler.step(model(inp), t, x, return_dict=False)[0]
    return _open(path)


@pytest.mark.parametrize("kind", ["euler_eps", "euler_v", "ddim_eps", "ddim_v", "flow_inverted"])
def test_derivation_is_exact_for_every_noise_convention(tmp_path, kind):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    make = {
        "euler_eps": lambda: EulerDiscreteScheduler(prediction_type="epsilon"),
        "euler_v": lambda: EulerDiscreteScheduler(prediction_type="v_prediction"),
        "ddim_eps": lambda: DDIMScheduler(prediction_type="epsilon", clip_sample=False),
        "ddim_v": lambda: DDIMScheduler(prediction_type="v_prediction", clip_sample=False),
        "flow_inverted": lambda: FlowMatchEulerDiscreteScheduler(invert_sigmas=True),
    }[kind]
    with _loop(make(), tmp_path, "full") as full, _loop(make(), tmp_path, "derived", capture=("x_t", "pred")) as der:
        expected = {"euler_eps": "k_diffusion", "euler_v": "k_diffusion", "ddim_eps": "variance_preserving",
                    "ddim_v": "variance_preserving", "flow_inverted": "flow_inverted"}[kind]
        assert der.attrs["noise_convention"] == expected
        for q in ("x0", "eps"):
            assert der.latents(q)[:].tobytes() == full.latents(q)[:].tobytes(), q


def test_chosen_steps_store_exactly_those_rows(reference, two_expert_pipe, tmp_path):
    ref_path, _ = reference
    path = tmp_path / "chosen.h5"
    with LatentProbe(two_expert_pipe, path, store_dtype="float32", latent_steps="every:5,last,boundary:1"):
        run_pipe(two_expert_pipe)
    with open_run(path) as run, open_run(ref_path) as ref:
        experts = list(ref.experts)
        switch = next(i for i in range(1, len(experts)) if experts[i] != experts[i - 1])
        expected = sorted({0, 5, 10, 11, switch - 1, switch})
        assert run.latent_steps.tolist() == expected and run.attrs["latent_steps"] == "every:5,last,boundary:1"
        assert run.num_steps == 12 and run.latents("x0").shape[0] == len(expected)
        for q in SPACES:
            assert run.latents(q)[:].tobytes() == ref.latents(q)[expected].tobytes()
        m, r = run.metrics("x0"), ref.metrics("x0", source="latents")
        np.testing.assert_array_equal(m.l2[expected], r.l2[expected])
        others = [s for s in range(12) if s not in expected]
        assert np.isnan(m.l2[others]).all()
        with pytest.raises(ValueError, match="needs every step"):
            run.metrics.step_change("pred")
        with pytest.raises(KeyError, match="no stored latents"):
            run.metrics.frame_similarity("x0", 1)
        np.testing.assert_array_equal(run.metrics.frame_similarity("x0", 5), ref.metrics.frame_similarity("x0", 5))
        ds = run.to_xarray()
        assert ds["x0"].dims[0] == "latent_step" and ds["latent_step"].values.tolist() == expected
        assert ds.sizes["step"] == 12


def test_chosen_steps_open_in_xarray_with_named_dims(tmp_path, two_expert_pipe):
    xr = pytest.importorskip("xarray")
    path = tmp_path / "chosen_xr.h5"
    with LatentProbe(two_expert_pipe, path, latent_steps=4, metrics=("x0",)):
        run_pipe(two_expert_pipe)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds["x0"].dims == ("latent_step", "batch", "channel", "frame", "height", "width")
        assert ds["latent_step"].values.tolist() == [0, 4, 8]
        assert ds["sigma"].dims == ("step",) and ds.sizes["step"] == 12


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(latent_steps="boundary"), LatentStepsError, "one expert"),
    (dict(latent_steps="every:2,every:3"), LatentStepsError, "one every:k"),
    (dict(latent_steps="sometimes"), LatentStepsError, "not one of"),
    (dict(latent_steps=0), LatentStepsError, "k >= 1"),
    (dict(latent_steps="none", cfg_branches=True), LatentStepsError, "choose one"),
    (dict(metrics=("latent",)), ValueError, "cannot compute metrics"),
    (dict(capture=()), ValueError, "nothing to record"),
])
def test_storage_options_that_cannot_work_are_refused_before_anything_runs(tmp_path, one_expert_pipe, kwargs,
                                                                          error, match):
    path = tmp_path / "refused.h5"
    with pytest.raises(error, match=match):
        with LatentProbe(one_expert_pipe, path, **kwargs):
            raise AssertionError("the block must not run")
    assert not path.exists() and not [p for p in os.listdir(tmp_path) if "partial" in p]


@pytest.mark.parametrize("kwargs, match", [
    (dict(latent_steps="sometimes"), "not one of"),
    (dict(latent_steps="none", cfg_branches=True), "choose one"),
    (dict(metrics=("latent",)), "cannot compute metrics"),
    (dict(capture=()), "nothing to record"),
    (dict(store_dtype="bfloat16"), "store_dtype must be one of"),
    (dict(on_write_error="ignore"), "on_write_error"),
    (dict(slots=0), "slots must be"),
    (dict(attention_reach=8), "give blocks= too"),
    (dict(overwrite="yes"), "overwrite must be True or False"),
])
def test_storage_options_are_checked_once_when_built(kwargs, match):
    """StorageOptions (issue 22) holds every storage check: the CLI, studies and LatentProbe share it."""
    from latent_probe.storage_options import StorageOptions

    with pytest.raises(ValueError, match=match):
        StorageOptions(**kwargs)


def test_a_storage_options_value_records_what_the_same_keywords_record(tmp_path, one_expert_pipe):
    from latent_probe.storage_options import StorageOptions

    opts = StorageOptions(capture=["x_t", "pred"], metrics=["x0", "x0"], latent_steps="every:2")
    assert opts.capture == ("x_t", "pred") and opts.metrics == ("x0",) and opts.selection.spec == "every:2"
    assert StorageOptions(**opts.as_kwargs()) == opts
    with pytest.raises(Exception):
        opts.capture = ("x0",)  # frozen
    a, b = tmp_path / "kw.h5", tmp_path / "opts.h5"
    with LatentProbe(one_expert_pipe, a, **opts.as_kwargs()):
        out_a = run_pipe(one_expert_pipe)
    with LatentProbe(one_expert_pipe, b, storage=opts):
        out_b = run_pipe(one_expert_pipe)
    assert torch.equal(out_a, out_b)
    with open_run(a) as ra, open_run(b) as rb:
        assert list(ra.quantities) == list(rb.quantities) == ["x_t", "pred"]
        assert list(ra.latent_steps) == list(rb.latent_steps) == [0, 2, 4, 6, 8, 10]
        np.testing.assert_array_equal(ra.latents("x_t")[:], rb.latents("x_t")[:])
    with pytest.raises(ValueError, match="StorageOptions"):
        LatentProbe(one_expert_pipe, storage={"capture": ["x0"]})


def test_analyze_and_study_share_one_definition_of_their_common_options():
    from latent_probe.app.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    analyze, study = subs["analyze"], subs["study"]
    common = ["--wan_repo", "--wan_config", "--sample_solver", "--t5_cpu", "--dtype", "--store_dtype", "--cfg_branches"]
    for flag in common:
        a = next(x for x in analyze._actions if flag in x.option_strings)
        s = next(x for x in study._actions if flag in x.option_strings)
        assert (a.default, a.choices, a.type) == (s.default, s.choices, s.type), flag


def test_a_live_and_a_killed_metrics_only_run_read_their_committed_steps(tmp_path):
    from latent_probe.store.writer import RunWriter, StepMeta

    path = tmp_path / "live.h5"
    w = RunWriter(path, "float16")
    x = torch.randn(1, 4, 5, 6, 6)
    from latent_probe.metrics.online import OnlineSums

    online = OnlineSums(["x0"])
    for i in range(3):
        w.submit(StepMeta(i, 900 - i, 1 - i / 10, i / 10, "m", None, 0, 1), {}, sums=online.step({"x0": x * (i + 1)}),
                 attrs={"latent_shape": list(x.shape)} if i == 0 else None)
    import time

    deadline = time.time() + 10
    while w.steps_written < 3 and time.time() < deadline:
        time.sleep(0.01)
    with open_run(path) as run:  # live: SWMR
        assert run.recording and run.num_steps == 3 and run.spaces == ["x0"]
        ref = adjacent_frame_metrics(x * 3)
        np.testing.assert_allclose(run.metrics("x0").l2[2], ref.l2, rtol=1e-12)
        sc = tensor_step_change([(x * k).double() for k in (1, 2, 3)])  # as the run streams them
        np.testing.assert_allclose(run.metrics.step_change("x0").rel_l1, sc.rel_l1, rtol=1e-12, equal_nan=True)
    w.close({"complete": True})
    with open_run(path) as run:
        assert run.complete and not run.recording and run.num_steps == 3


@pytest.mark.parametrize("damage, match", [
    (lambda f: f["online/x0/sq"].attrs.create("x", 1) or _retype(f, "online/x0/sq"), "per-step sums"),
    (lambda f: _relink(f, "online/x0/sq"), "SoftLink"),
])
def test_crafted_online_sums_are_refused_in_one_line(tmp_path, damage, match):
    from latent_probe.metrics.online import OnlineSums
    from latent_probe.store.writer import RunWriter, StepMeta

    path = tmp_path / "crafted.h5"
    w = RunWriter(path, "float16")
    online = OnlineSums(["x0"])
    x = torch.randn(1, 4, 5, 6, 6)
    w.submit(StepMeta(0, 900, 0.9, 0.1, "m", None, 0, 1), {}, sums=online.step({"x0": x}))
    w.close({"complete": True})
    with h5py.File(path, "r+") as f:
        damage(f)
    with pytest.raises(RunFileError, match=match) as info:
        open_run(path)
    assert "\n" not in str(info.value)


def _retype(f, name):
    data = f[name][()]
    del f[name]
    f.create_dataset(name, data=data.astype(np.float32), maxshape=(None, *data.shape[1:]), chunks=(1, *data.shape[1:]))


def _relink(f, name):
    del f[name]
    f[name] = h5py.SoftLink("/steps")


def test_latent_steps_not_increasing_are_refused(tmp_path, two_expert_pipe):
    path = tmp_path / "chosen_bad.h5"
    with LatentProbe(two_expert_pipe, path, latent_steps=3):
        run_pipe(two_expert_pipe, steps=7)
    with h5py.File(path, "r+") as f:
        f["latent_step"][1] = 0
    with pytest.raises(RunFileError, match="strictly increasing"):
        open_run(path)


def test_latents_of_the_last_step_only(tmp_path, one_expert_pipe):
    """The first step stores no latent (the datasets are made from its shapes), the planned last one does."""
    with LatentProbe(one_expert_pipe, tmp_path / "last.h5", latent_steps="last", store_dtype="float32",
                     capture=("x0",)) as probe:
        out = run_pipe(one_expert_pipe, steps=6)
    run = probe.run
    assert run.latent_steps.tolist() == [5] and run.latents("x0").shape[0] == 1
    assert run.num_steps == 6 and run.complete
    assert np.isfinite(run.metrics("x0").l2[5]).all() and np.isnan(run.metrics("x0").l2[:5]).all()
    assert out.shape[2] == run.latent_shape[2]


# ---------------------------------------------------------------- found by a hostile review of the modes
def test_latent_steps_without_latents_and_empty_selections_are_refused(tmp_path, two_expert_pipe):
    for kwargs, match in ((dict(capture=(), metrics=("x0",), latent_steps="every:2"), "stores none"),
                          (dict(latent_steps=""), "selects nothing"), (dict(latent_steps={"every:2": 1}), "not a selection"),
                          (dict(latent_steps="-0"), "not one of"), (dict(latent_steps="٣"), "not one of")):
        with pytest.raises(LatentStepsError, match=match):
            LatentProbe(two_expert_pipe, tmp_path / "r.h5", **kwargs)
    with pytest.warns(RuntimeWarning, match=r"\['100', '-100'\] select no step"):
        with LatentProbe(two_expert_pipe, tmp_path / "far.h5", latent_steps="0,100,-100"):
            run_pipe(two_expert_pipe, steps=4)


def test_eps_gap_and_views_of_chosen_steps_use_the_steps_the_rows_hold(reference, two_expert_pipe, tmp_path):
    from latent_probe.metrics.feasibility import truncation_feasibility
    from latent_probe.views.series import collect

    full, sel = tmp_path / "full.h5", tmp_path / "sel.h5"
    with LatentProbe(two_expert_pipe, full, cfg_branches=True, store_dtype="float32"):
        run_pipe(two_expert_pipe, steps=6)
    with LatentProbe(two_expert_pipe, sel, cfg_branches=True, store_dtype="float32", latent_steps="every:2,last"):
        run_pipe(two_expert_pipe, steps=6)
    with open_run(full) as a, open_run(sel) as b:
        kept = b.latent_steps.tolist()
        assert kept == [0, 2, 4, 5]
        gap = b.metrics.eps_gap()
        assert gap.shape == (6,) and np.isnan(gap[[1, 3]]).all()
        np.testing.assert_allclose(gap[kept], a.metrics.eps_gap()[kept], rtol=1e-12)
        s = collect(b)
        assert s.gap.shape == (6,) and "cover 4 of 6 steps" in s.summary_text
        with pytest.raises(ValueError, match="needs every step"):
            truncation_feasibility(b, keep=2)


def test_dashboard_of_a_metrics_only_run_beside_a_full_one(reference, two_expert_pipe, tmp_path):
    from latent_probe.views.figures import all_figures
    from latent_probe.views.series import collect

    path = tmp_path / "mo.h5"
    with LatentProbe(two_expert_pipe, path, capture=(), metrics=("x0", "x_t", "pred")):
        run_pipe(two_expert_pipe)
    with open_run(reference[0]) as full, open_run(path) as mo:
        series = [collect(full, "full"), collect(mo, "metrics only")]
        assert series[1].frame_similarity == {} and series[1].step_change
        assert len(all_figures(series)) >= 5


def _metrics_only_copy(tmp_path, two_expert_pipe, name):
    path = tmp_path / name
    with LatentProbe(two_expert_pipe, path, capture=(), metrics=("x0",)):
        run_pipe(two_expert_pipe, steps=4)
    return path


@pytest.mark.parametrize("damage, match", [
    (lambda f: _rewrite(f, "online/x0/change", lambda a: a[:, :3]), r"change is missing or is not \[S, 4\]"),
    (lambda f: f.__delitem__("online/x0/dot"), "of the pair sums"),
    (lambda f: _rewrite(f, "online/x0/sq", lambda a: a[:, :, :-1]), "are not"),
    (lambda f: f.attrs.__setitem__("latent_shape", "[1, 16, 1, 8, 8]"), "disagrees with the metric sums"),
])
def test_crafted_sums_that_do_not_fit_together_are_refused_at_open(tmp_path, two_expert_pipe, damage, match):
    path = _metrics_only_copy(tmp_path, two_expert_pipe, "mo.h5")
    with h5py.File(path, "r+") as f:
        damage(f)
    with pytest.raises(RunFileError, match=match):
        open_run(path)


def test_frames_come_from_the_sums_when_the_shape_attribute_is_gone(tmp_path, two_expert_pipe):
    from latent_probe import open_runs

    path = _metrics_only_copy(tmp_path, two_expert_pipe, "noshape.h5")
    with h5py.File(path, "r+") as f:
        del f.attrs["latent_shape"]
    with open_run(path) as run:
        assert run.latent_shape is None and run.num_frames == 5
    rs = open_runs([str(path)], workers=0)
    assert len(rs.records) == 1 and not rs.skipped


def _rewrite(f, name, change):
    data = change(f[name][()])
    del f[name]
    f.create_dataset(name, data=data, maxshape=(None, *data.shape[1:]), chunks=(64, *data.shape[1:]))


def test_study_refuses_storage_options_that_cannot_work_before_any_job(tmp_path, capsys):
    from latent_probe.app import cli

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red ball\n")
    for bad in (["--capture", "x_t,bogus"], ["--metrics", "latent"], ["--capture", "none"],
                ["--latent_steps", "every:2,every:3"], ["--capture", "none", "--metrics", "x0", "--latent_steps", "last"]):
        out = tmp_path / "s"
        code = cli.main(["study", str(prompts), "--out", str(out), "--backend", "demo", *bad])
        assert code == 2, bad
        assert not (out / "manifest.json").exists()
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err


def test_phase_table_of_a_run_set_numbers_steps_from_zero_as_everything_else(reference):
    from latent_probe import open_runs

    rs = open_runs([reference[0]], workers=0)
    with open_run(reference[0]) as run:
        phases = run.metrics.phases("thirds")
    table = rs.phase_table()
    assert list(table["steps"]) == [f"{p.start}–{p.stop - 1}" for p in phases]
    assert table["steps"].iloc[0].startswith("0–")
