"""LatentProbe on real diffusers WanPipelines (tiny random weights, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_pipe
from latent_probe import LatentProbe, UnknownParameterizationError, UnsupportedTargetError, open_run


def _scheduler_x0_per_step(pipe, **kw):
    """The scheduler's own x0 after every step, read through diffusers' public callback (not the probe)."""
    seen = []

    def cb(p, i, t, kwargs):
        seen.append(p.scheduler.model_outputs[-1].detach().clone())
        return {}

    out = run_pipe(pipe, callback_on_step_end=cb, **kw)
    return out, seen


def test_two_experts_every_step_recorded(two_expert_pipe, tmp_path):
    pipe = two_expert_pipe
    baseline = run_pipe(pipe)
    path = tmp_path / "run.h5"
    with LatentProbe(pipe, path, store_dtype="float32") as probe:
        out, sched_x0 = _scheduler_x0_per_step(pipe)
    assert torch.equal(out, baseline), "the probe changed the generation"
    run = probe.run
    assert run.complete and run.num_steps == 12
    # experts follow the boundary: transformer while t >= 0.875 * 1000
    expected = np.where(run.timesteps >= 875, "transformer", "transformer_2")
    assert list(run.experts) == list(expected)
    assert 0 < (run.experts == "transformer").sum() < 12
    # sigma matches the scheduler's table at each step, read before it advanced
    np.testing.assert_allclose(run.sigmas, pipe.scheduler.sigmas[:12].double().numpy(), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(run.timesteps, pipe.scheduler.timesteps[:12].double().numpy())
    # x0 equals the scheduler's internal x0_pred at every step
    x0 = run.latents("x0")
    assert x0.shape == (12, 1, 16, 5, 8, 8)
    for i, ref in enumerate(sched_x0):
        np.testing.assert_allclose(x0[i], ref.numpy(), rtol=0, atol=1e-6)
    # eps and x0 reconstruct x_t: x_t = (1 - sigma) x0 + sigma eps
    xt, eps = run.latents("x_t")[:], run.latents("eps")[:]
    s = run.sigmas[:, None, None, None, None, None]
    np.testing.assert_allclose((1 - s) * x0[:] + s * eps, xt, atol=1e-4)
    assert run.attrs["parameterization"] == "flow_prediction"
    assert run.attrs["boundary_timestep"] == 875.0
    assert np.all(run.guidance_scales == 4.0)
    run.close()


def test_single_transformer_pipeline(one_expert_pipe):
    baseline = run_pipe(one_expert_pipe, steps=8)
    with LatentProbe(one_expert_pipe, store_dtype="float32") as probe:
        out, sched_x0 = _scheduler_x0_per_step(one_expert_pipe, steps=8)
    assert torch.equal(out, baseline)
    assert probe.run.num_steps == 8
    assert set(probe.run.experts) == {"transformer"}
    for i, ref in enumerate(sched_x0):
        np.testing.assert_allclose(probe.run.latents("x0")[i], ref.numpy(), atol=1e-6)


def test_cfg_branches_told_apart(two_expert_pipe):
    with LatentProbe(two_expert_pipe, cfg_branches=True, store_dtype="float32") as probe:
        run_pipe(two_expert_pipe, steps=6, guidance_scale=3.0)
    run = probe.run
    cond, uncond, pred = (run.latents(n)[:] for n in ("pred_cond", "pred_uncond", "pred"))
    assert not np.allclose(cond, uncond)
    np.testing.assert_allclose(uncond + 3.0 * (cond - uncond), pred, atol=1e-5)
    assert np.all(run.file["steps"].fields("model_calls")[:] == 2)


def test_guidance_off_means_one_call(two_expert_pipe):
    with LatentProbe(two_expert_pipe, cfg_branches=True, store_dtype="float32") as probe:
        run_pipe(two_expert_pipe, steps=4, guidance_scale=1.0)
    run = probe.run
    assert "pred_uncond" not in run.quantities
    np.testing.assert_array_equal(run.latents("pred_cond")[:], run.latents("pred")[:])
    assert np.all(run.file["steps"].fields("model_calls")[:] == 1)


def test_float16_store_close_to_float32(two_expert_pipe):
    with LatentProbe(two_expert_pipe) as p16:
        run_pipe(two_expert_pipe, steps=4)
    with LatentProbe(two_expert_pipe, store_dtype="float32") as p32:
        run_pipe(two_expert_pipe, steps=4)
    a, b = p16.run.latents("x0"), p32.run.latents("x0")
    assert a.dtype == np.float16 and b.dtype == np.float32
    np.testing.assert_allclose(a[:].astype(np.float32), b[:], rtol=2e-3, atol=2e-3)


def test_hooks_removed_and_user_hooks_survive(two_expert_pipe):
    pipe = two_expert_pipe
    calls = []
    user = pipe.transformer.register_forward_hook(lambda m, a, o: calls.append(1))
    before = {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in
              (("t1", pipe.transformer), ("t2", pipe.transformer_2))}
    try:
        probe = LatentProbe(pipe)
        with probe:
            assert probe.hooks_attached >= 3
            assert "step" in vars(pipe.scheduler)
            run_pipe(pipe, steps=3)
        assert probe.hooks_attached == 0
        assert "step" not in vars(pipe.scheduler) and "check_inputs" not in vars(pipe)
        after = {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in
                 (("t1", pipe.transformer), ("t2", pipe.transformer_2))}
        assert after == before
        n = len(calls)
        run_pipe(pipe, steps=3)
        assert len(calls) > n, "the user's hook no longer runs"
    finally:
        user.remove()


def test_exception_mid_generation_detaches_and_keeps_steps(two_expert_pipe, tmp_path):
    pipe = two_expert_pipe
    path = tmp_path / "crash.h5"

    def boom(p, i, t, kwargs):
        if i == 4:
            raise RuntimeError("interrupted at step 4")
        return {}

    probe = LatentProbe(pipe, path)
    with pytest.raises(RuntimeError, match="interrupted"):
        with probe:
            run_pipe(pipe, steps=10, callback_on_step_end=boom)
    assert probe.hooks_attached == 0 and "step" not in vars(pipe.scheduler)
    assert not pipe.transformer._forward_hooks and not pipe.transformer_2._forward_hooks
    with open_run(path) as run:
        assert run.num_steps == 5 and not run.complete
        assert "interrupted at step 4" in run.attrs["error"]
    # the pipeline still runs normally afterwards
    assert torch.equal(run_pipe(pipe, steps=3), run_pipe(pipe, steps=3))


def test_existing_file_refused_unless_overwrite(two_expert_pipe, tmp_path):
    path = tmp_path / "r.h5"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        with LatentProbe(two_expert_pipe, path):
            pass
    assert path.read_bytes() == b"precious"
    with LatentProbe(two_expert_pipe, path, overwrite=True):
        run_pipe(two_expert_pipe, steps=2)
    with open_run(path) as run:
        assert run.num_steps == 2


def test_nonfinite_flagged_generation_continues(two_expert_pipe):
    pipe = two_expert_pipe
    n = {"calls": 0}

    def poison(m, a, out):
        n["calls"] += 1
        if n["calls"] == 3:  # step 1, cond branch (the high-noise expert runs steps 0-1 of 6)
            return (out[0] * float("nan"),)
        return None

    h = pipe.transformer.register_forward_hook(poison)
    try:
        with pytest.warns(RuntimeWarning, match="NaN/Inf"):
            with LatentProbe(pipe, store_dtype="float32") as probe:
                run_pipe(pipe, steps=6)
    finally:
        h.remove()
    run = probe.run
    assert run.num_steps == 6, "a NaN must not stop the recording"
    flags = run.nonfinite["pred"]
    assert not flags[0] and flags[1]
    assert run.attrs["nonfinite_steps"] >= 1


def test_unknown_prediction_type_is_an_error(tmp_path):
    from latent_probe.testing import tiny_wan_pipeline

    pipe = tiny_wan_pipeline(two_experts=False)
    pipe.scheduler.register_to_config(prediction_type="mystery")
    with pytest.raises(UnknownParameterizationError, match="mystery"):
        with LatentProbe(pipe, tmp_path / "x.h5"):
            pass
    assert "step" not in vars(pipe.scheduler)


def test_unsupported_target_names_what_was_found():
    class NotAPipeline:
        scheduler = None
        generate = None

    with pytest.raises(UnsupportedTargetError, match="NotAPipeline"):
        LatentProbe(NotAPipeline()).__enter__()
    with pytest.raises(ValueError, match="cannot capture"):
        LatentProbe(NotAPipeline(), capture=("x_t", "latent"))
