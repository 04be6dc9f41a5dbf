"""Every scheduler a supported pipeline accepts: x̂₀ exact against the scheduler's own, or refused at entry (issue 18).

Allegro accepts diffusers' ``KarrasDiffusionSchedulers``; the Wan pipeline is run with the flow-matching ones.
The reference is the scheduler's own x̂₀, taken inside its ``step`` (``pred_original_sample`` of the output it
returns, or ``model_outputs[-1]`` for the multistep solvers), never through the probe.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
import pytest
import torch

import diffusers
from diffusers.schedulers import KarrasDiffusionSchedulers

from latent_probe import LatentProbe
from latent_probe.parameterization import (REFUSED_SCHEDULERS, SchedulerRule, UnverifiedSchedulerError,
                                           register_scheduler, scheduler_rule)
from conftest import run_pipe
from video_families import BUILDERS

KARRAS = [e.name for e in KarrasDiffusionSchedulers]
KARRAS_VERIFIED = [n for n in KARRAS if n not in REFUSED_SCHEDULERS]
FLOW = [("FlowMatchEulerDiscreteScheduler", {}), ("FlowMatchHeunDiscreteScheduler", {}),
        ("FlowMatchLCMScheduler", {}),
        ("UniPCMultistepScheduler", dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)),
        ("DPMSolverMultistepScheduler", dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)),
        ("DPMSolverSinglestepScheduler", dict(prediction_type="flow_prediction", use_flow_sigmas=True,
                                              flow_shift=3.0)),
        ("DEISMultistepScheduler", dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0))]


class OwnX0:
    """Wrap ``step`` on a scheduler class: keep the scheduler's own x̂₀ (or ε̂ for DEIS, whose solver keeps ε̂) of
    every call, computed by ``step`` itself."""

    def __init__(self, cls):
        self.cls, self.own = cls, []

    def __enter__(self):
        cls, orig, rec = self.cls, self.cls.step, self

        @functools.wraps(orig)
        def step(sched, *args, **kwargs):
            want_dict = kwargs.pop("return_dict", True)
            out = orig(sched, *args, return_dict=True, **kwargs)
            x0 = getattr(out, "pred_original_sample", None)
            kind = "x0"
            if x0 is None and not hasattr(sched, "model_outputs"):
                # FlowMatch*: step keeps no x̂₀; its source's expression (sample - sigma * model_output with
                # sigma = sigmas[step_index] of the call), in float64
                bound = inspect.signature(orig).bind(sched, *args, **kwargs).arguments
                sigma = sched.sigmas[sched.step_index - 1].double()
                x0 = bound["sample"].double() - sigma * bound["model_output"].double()
            elif x0 is None:
                x0 = sched.model_outputs[-1]
                if getattr(sched.config, "algorithm_type", None) == "deis":
                    kind = "eps"
            rec.own.append((kind, x0.detach().clone()))
            return out if want_dict else (out.prev_sample,)

        self._had = "step" in cls.__dict__
        self._orig = orig
        cls.step = step
        return self

    def __exit__(self, *exc):
        if self._had:
            self.cls.step = self._orig
        else:
            del self.cls.step


def assert_own(run, own):
    assert run.num_steps == len(own) > 0
    for i, (kind, ref) in enumerate(own):
        got = run.latents(kind)[i]
        ref = ref.double().numpy()
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(ref).max()),
                                   err_msg=f"step {i}: {kind} differs from the scheduler's own")


@pytest.fixture(scope="module")
def allegro():
    return BUILDERS["allegro"]()


@pytest.mark.parametrize("name", KARRAS_VERIFIED)
def test_allegro_with_every_accepted_scheduler_is_exact(allegro, name):
    pipe, base_sched = allegro.pipe, allegro.pipe.scheduler
    cls = getattr(diffusers, name)
    clips = {"clip_sample": False} if "clip_sample" in inspect.signature(cls.__init__).parameters else {}
    pipe.scheduler = cls.from_config(base_sched.config, **clips)
    try:
        with OwnX0(cls) as rec, LatentProbe(pipe, store_dtype="float32", capture=("x_t", "x0", "eps")) as probe:
            allegro.run(seed=0, num_inference_steps=4)
        assert_own(probe.run, rec.own)
        run = probe.run  # x_t = α·x̂₀ + σ·ε̂ in the convention stored with the run
        x_t, x0, eps = (run.latents(q)[:].astype(np.float64) for q in ("x_t", "x0", "eps"))
        ab = run.alphas[:, None, None, None, None, None], run.sigmas[:, None, None, None, None, None]
        np.testing.assert_allclose(ab[0] * x0 + ab[1] * eps, x_t, rtol=1e-4, atol=1e-4 * np.abs(x_t).max())
    finally:
        pipe.scheduler = base_sched


@pytest.mark.parametrize("name", sorted(REFUSED_SCHEDULERS))
def test_unverified_scheduler_refused_at_entry_by_name(allegro, name):
    pipe, base_sched = allegro.pipe, allegro.pipe.scheduler
    try:
        cls = getattr(diffusers, name)
        pipe.scheduler = cls.from_config(base_sched.config)
    except Exception as exc:  # DPMSolverSDE needs torchsde to be made at all
        pytest.skip(f"{name} cannot be built here: {exc}")
    try:
        probe = LatentProbe(pipe)
        with pytest.raises(UnverifiedSchedulerError, match=name) as err:
            probe.__enter__()
        assert "\n" not in str(err.value) and probe.hooks_attached == 0
        assert "step" not in vars(pipe.scheduler)
    finally:
        pipe.scheduler = base_sched


def test_a_subclass_of_a_verified_scheduler_is_refused_unless_declared():
    class MyEuler(diffusers.EulerDiscreteScheduler):
        pass

    with pytest.raises(UnverifiedSchedulerError, match="MyEuler"):
        scheduler_rule(MyEuler)
    register_scheduler(MyEuler, SchedulerRule("index", k_diffusion=True))
    assert scheduler_rule(MyEuler).k_diffusion
    with pytest.raises(ValueError, match="verified by latent_probe already"):
        register_scheduler(diffusers.EulerDiscreteScheduler, SchedulerRule())


@pytest.mark.parametrize("name,config", FLOW, ids=[n for n, _ in FLOW])
def test_flow_pipeline_with_every_flow_scheduler_is_exact(one_expert_pipe, name, config):
    pipe, base_sched = one_expert_pipe, one_expert_pipe.scheduler
    cls = getattr(diffusers, name)
    pipe.scheduler = cls(**config) if config else cls(shift=3.0)
    try:
        with OwnX0(cls) as rec, LatentProbe(pipe, store_dtype="float32", capture=("x_t", "x0", "eps")) as probe:
            run_pipe(pipe, steps=4)
        assert_own(probe.run, rec.own)
        assert probe.run.attrs["noise_convention"] == "flow"
    finally:
        pipe.scheduler = base_sched


@pytest.mark.parametrize("name", ["DDIMScheduler", "DDPMScheduler"])
def test_a_scheduler_that_clips_its_x0_is_refused_at_entry(allegro, name):
    pipe, base_sched = allegro.pipe, allegro.pipe.scheduler
    pipe.scheduler = getattr(diffusers, name).from_config(base_sched.config, clip_sample=True)
    try:
        probe = LatentProbe(pipe)
        with pytest.raises(UnverifiedSchedulerError, match=f"{name} is configured with clip_sample=True"):
            probe.__enter__()
        assert probe.hooks_attached == 0
    finally:
        pipe.scheduler = base_sched


def test_euler_called_with_churn_stops_recording_with_its_reason(tmp_path):
    from latent_probe import open_run

    class Toy(torch.nn.Module):
        def forward(self, x):
            return x

    sched = diffusers.EulerDiscreteScheduler()
    sched.set_timesteps(4)
    x = torch.randn(1, 4, 3, 4, 4) * sched.init_noise_sigma
    with pytest.warns(RuntimeWarning, match="s_churn=0.5"):
        with LatentProbe((Toy(), sched), tmp_path / "c.h5", capture=("x0",)):
            for i, t in enumerate(sched.timesteps):
                churn = 0.5 if i == 2 else 0.0
                x = sched.step(torch.zeros_like(x), t, x, s_churn=churn).prev_sample
    with open_run(tmp_path / "c.h5") as run:
        assert run.num_steps == 2 and "s_churn" in run.error
