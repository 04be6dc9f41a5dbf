"""LatentProbe on the Wan2.2 repository's call structure (tests/wan_standin mirrors it; CPU)."""

from __future__ import annotations

import functools
import numpy as np
import pytest
import torch

import wan
from wan.configs import tiny_t2v_config, tiny_ti2v_config
from wan.utils.fm_solvers import FlowDPMSolverMultistepScheduler
from wan.utils.fm_solvers_unipc import FlowUniPCMultistepScheduler

from latent_probe import LatentProbe, open_run

KW = dict(size=(64, 64), frame_num=17, sampling_steps=10, seed=3, offload_model=False)
SOLVER_CLASS = {"unipc": FlowUniPCMultistepScheduler, "dpm++": FlowDPMSolverMultistepScheduler}


@pytest.fixture(scope="module")
def t2v():
    return wan.WanT2V(tiny_t2v_config())


@pytest.fixture(scope="module")
def ti2v():
    return wan.WanTI2V(tiny_ti2v_config())


@pytest.fixture
def scheduler_x0(monkeypatch):
    """Spy on the Wan schedulers' own x0 (model_outputs[-1] after each step), independently of the probe."""
    seen: list[torch.Tensor] = []
    for cls in SOLVER_CLASS.values():
        original = cls.step

        @functools.wraps(original)  # keeps step's signature visible (the probe binds its arguments by name)
        def spy(self, *a, _original=original, **k):
            out = _original(self, *a, **k)
            seen.append(self.model_outputs[-1].detach().clone())
            return out

        monkeypatch.setattr(cls, "step", spy)
    return seen


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_t2v_two_experts(t2v, solver, scheduler_x0, tmp_path):
    base = t2v.generate("a cat on a skateboard", sample_solver=solver, **KW)
    scheduler_x0.clear()
    classes = {c: vars(c)["step"] for c in SOLVER_CLASS.values()}
    path = tmp_path / "wan.h5"
    with LatentProbe(t2v, path, store_dtype="float32", cfg_branches=True):
        out = t2v.generate("a cat on a skateboard", sample_solver=solver, guide_scale=(3.0, 4.0), **KW)
    internal_x0 = list(scheduler_x0)
    # the probe's class-level patches are gone: each class has exactly the step it had before
    assert {c: vars(c)["step"] for c in SOLVER_CLASS.values()} == classes
    assert "generate" not in vars(t2v)
    assert not t2v.high_noise_model._forward_hooks and not t2v.low_noise_model._forward_hooks
    base2 = t2v.generate("a cat on a skateboard", sample_solver=solver, guide_scale=(3.0, 4.0), **KW)
    assert torch.equal(out, base2), "the probe changed the generation"
    assert not torch.equal(out, base)  # different guidance really changes the video (the test can fail)
    run = open_run(path)
    assert run.complete and run.num_steps == 10
    high = run.timesteps >= 875
    assert list(run.experts) == ["high_noise_model" if h else "low_noise_model" for h in high]
    assert 0 < high.sum() < 10
    # guide_scale (low_noise, high_noise) = (3, 4)
    np.testing.assert_array_equal(run.guidance_scales, np.where(high, 4.0, 3.0))
    # stored latents gain B = 1: [S, 1, C, F, H, W]
    assert run.latents("x_t").shape == (10, 1, 16, 5, 8, 8)
    assert len(internal_x0) == 10
    for i, ref in enumerate(internal_x0):
        np.testing.assert_allclose(run.latents("x0")[i], ref.numpy(), rtol=0, atol=1e-6)
    cond, uncond, pred = (run.latents(n)[:] for n in ("pred_cond", "pred_uncond", "pred"))
    g = run.guidance_scales[:, None, None, None, None, None]
    np.testing.assert_allclose(uncond + g * (cond - uncond), pred, atol=1e-5)
    a = run.attrs
    assert a["prompt"] == "a cat on a skateboard" and a["seed"] == 3 and a["sample_solver"] == solver
    assert a["family"] == "wan_repo" and a["boundary_timestep"] == 875.0
    run.close()


def test_ti2v_single_model(ti2v, scheduler_x0):
    kw = dict(KW, size=(128, 128))
    base = ti2v.generate("waves", **kw)
    scheduler_x0.clear()
    with LatentProbe(ti2v, store_dtype="float32") as probe:
        out = ti2v.generate("waves", **kw)
    assert torch.equal(out, base)
    run = probe.run
    assert set(run.experts) == {"model"} and run.num_steps == 10
    assert run.latents("x0").shape[2] == 48  # Wan2.2 VAE: 48 latent channels
    for i, ref in enumerate(scheduler_x0):
        np.testing.assert_allclose(run.latents("x0")[i], ref.numpy(), atol=1e-6)


def test_exception_inside_generate_restores_everything(t2v, tmp_path):
    calls = {"n": 0}

    def fail_on_7th_call(module, args, kwargs, output):
        calls["n"] += 1
        if calls["n"] == 7:  # step 3, cond
            raise RuntimeError("DiT exploded")

    h = t2v.high_noise_model.register_forward_hook(fail_on_7th_call, with_kwargs=True)
    originals = {c: vars(c)["step"] for c in SOLVER_CLASS.values()}
    path = tmp_path / "crash.h5"
    try:
        with pytest.raises(RuntimeError, match="DiT exploded"):
            with LatentProbe(t2v, path):
                t2v.generate("a cat", **KW)
    finally:
        h.remove()
    assert {c: vars(c)["step"] for c in SOLVER_CLASS.values()} == originals
    assert "generate" not in vars(t2v) and not t2v.high_noise_model._forward_hooks
    with open_run(path) as run:
        assert run.num_steps == 3 and not run.complete and "DiT exploded" in run.attrs["error"]


def test_i2v_records_the_sampled_latent_not_the_conditioned_input(scheduler_x0):
    """WanI2V feeds the DiT [x_t ‖ y] (16 + 20 channels); the probe stores the 16-channel latent `step` integrates."""
    from PIL import Image

    i2v = wan.WanI2V(wan.configs.tiny_i2v_config())
    img = Image.fromarray((np.random.default_rng(0).random((48, 72, 3)) * 255).astype("uint8"))
    kw = dict(max_area=64 * 96, frame_num=17, sampling_steps=6, seed=0, offload_model=False)
    base = i2v.generate("a boat", img, **kw)
    scheduler_x0.clear()
    with LatentProbe(i2v, store_dtype="float32") as probe:
        out = i2v.generate("a boat", img, **kw)
    assert torch.equal(out, base)
    run = probe.run
    assert run.num_steps == 6 and run.latents("x_t").shape[2] == 16
    assert set(run.experts) == {"high_noise_model", "low_noise_model"}  # boundary 0.9
    for i, ref in enumerate(scheduler_x0):
        np.testing.assert_allclose(run.latents("x0")[i], ref.numpy(), atol=1e-6)
