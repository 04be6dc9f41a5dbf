"""The perturbation sweep (interventions.sensitivity) against closed forms on a linear toy sampler, and the
weighted predictor (metrics.feasibility.weighted_error) against a float64 numpy sum."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from latent_probe.interventions.sensitivity import SensitivityError, StepPerturbation, step_sensitivity
from latent_probe.metrics.feasibility import weighted_error

SIGMAS = np.array([1.0, 0.9, 0.7, 0.45, 0.2, 0.0])      # S = 5 Euler steps of a flow sampler
A = np.array([[-0.8, 0.3], [0.1, -1.2]])                 # v = A x on the channel axis (C = 2)
F = 5


class ToyScheduler:
    """Euler on flow sigmas: x_{i+1} = x_i + (σ_{i+1} − σ_i)·v; timestep = σ·1000."""

    def __init__(self) -> None:
        self.sigmas = torch.tensor(SIGMAS, dtype=torch.float64)
        self.timesteps = self.sigmas[:-1] * 1000
        self.config = SimpleNamespace(prediction_type="flow_prediction", num_train_timesteps=1000)
        self.i = 0

    def step(self, model_output, timestep, sample, return_dict=False):
        out = sample + (self.sigmas[self.i + 1] - self.sigmas[self.i]) * model_output
        self.i += 1
        return (out,)


def x_init() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((2, 2, F, 3, 4))    # [B, C, F, H, W]


def toy_run(sched: ToyScheduler):
    def run() -> torch.Tensor:
        sched.i = 0
        x = torch.from_numpy(x_init())
        a = torch.from_numpy(A)
        for t in sched.timesteps:
            v = torch.einsum("dc,bcfhw->bdfhw", a, x)
            x = sched.step(v, t, x, return_dict=False)[0]
        return x
    return run


def reference(space: str, eps: float) -> np.ndarray:
    """[S, B]: the final relative change per ε from the closed form, float64 numpy (keys 0 and F − 1, linear)."""
    S = len(SIGMAS) - 1
    xs = [x_init()]
    for i in range(S):
        xs.append(xs[-1] + (SIGMAS[i + 1] - SIGMAS[i]) * np.einsum("dc,bcfhw->bdfhw", A, xs[-1]))
    w = np.arange(F) / (F - 1)

    def lerp_damage(y):   # fill from frames 0 and F − 1, minus y
        return (1 - w)[None, None, :, None, None] * y[:, :, :1] + w[None, None, :, None, None] * y[:, :, -1:] - y

    def norm(y):
        return np.sqrt((y.reshape(y.shape[0], -1) ** 2).sum(1))[:, None, None, None, None]

    out = np.zeros((S, 2))
    for k in range(S):
        v = np.einsum("dc,bcfhw->bdfhw", A, xs[k])
        if space == "prediction":
            d = lerp_damage(v)
            dv = eps * norm(v) * d / norm(d)
        else:
            x0 = xs[k] - SIGMAS[k] * v
            d = lerp_damage(x0)
            dv = -(eps * norm(x0) * d / norm(d)) / SIGMAS[k]
        dx = (SIGMAS[k + 1] - SIGMAS[k]) * dv       # the perturbed step, then the linear propagator
        for j in range(k + 1, S):
            dx = dx + (SIGMAS[j + 1] - SIGMAS[j]) * np.einsum("dc,bcfhw->bdfhw", A, dx)
        out[k] = (norm(dx) / norm(xs[-1])).ravel() / eps
    return out


@pytest.mark.parametrize("space", ["prediction", "x0"])
def test_sensitivity_matches_the_linear_closed_form(space):
    sched = ToyScheduler()
    res = step_sensitivity(sched, toy_run(sched), 5, keep=2, space=space, eps=1e-3, clips=["a", "b"])
    ref = reference(space, 1e-3)
    np.testing.assert_allclose(res.per_clip, ref, rtol=1e-9)
    np.testing.assert_allclose(res.applied, 1e-3, rtol=1e-12)
    assert res.keys == [0, F - 1] and res.steps == list(range(5)) and res.clips == ["a", "b"]
    np.testing.assert_allclose(res.sensitivity, ref.mean(1), rtol=1e-9)
    # the model is linear: the response is exactly proportional to ε
    res2 = step_sensitivity(sched, toy_run(sched), 5, steps=[1, 3], keep=2, space=space, eps=0.3)
    np.testing.assert_allclose(res2.per_clip, ref[[1, 3]], rtol=1e-9)
    assert sched.step.__func__ is ToyScheduler.step      # the hook came off after every run


def test_perturbation_touches_only_its_step():
    sched = ToyScheduler()
    hook = StepPerturbation(sched, 2, keys=[0, F - 1], eps=0.1)
    v = torch.ones(1, 2, F, 2, 2, dtype=torch.float64)
    x = torch.zeros_like(v)
    assert hook.pre_forward(None, (v, 1000.0, x), {}) is None and hook.pre_forward(None, (v, 900.0, x), {}) is None
    # a constant prediction is reproduced exactly by the fill: no damage direction, refused in one line
    with pytest.raises(SensitivityError, match="no damage direction"):
        hook.pre_forward(None, (v, 700.0, x), {})


def test_sweep_refuses_a_nondeterministic_run_and_x0_without_flow_sigmas():
    sched = ToyScheduler()
    calls = iter(range(100))
    with pytest.raises(SensitivityError, match="differ"):
        step_sensitivity(sched, lambda: torch.full((1, 1, 3, 1, 1), float(next(calls))), 5)
    sched.config.prediction_type = "epsilon"
    with pytest.raises(SensitivityError, match="flow-matching"):
        step_sensitivity(sched, toy_run(sched), 5, space="x0")
    sched = ToyScheduler()
    sched.timesteps = sched.timesteps * 0.5       # timesteps that are not σ·T
    with pytest.raises(SensitivityError, match="does not match"):
        step_sensitivity(sched, toy_run(sched), 5, space="x0")


def test_weighted_error_is_the_float64_sum_over_truncated_steps():
    rng = np.random.default_rng(0)
    err = rng.random((4, 7)).astype(np.float32)
    sens = rng.random(7)
    for until in (0, 1, 4, 7):
        want = np.array([sum(float(sens[s]) * float(err[b, s]) for s in range(until)) for b in range(4)])
        np.testing.assert_allclose(weighted_error(err, sens, until), want, rtol=1e-12)
        assert weighted_error(err[1], sens, until) == pytest.approx(want[1], rel=1e-12)
    with pytest.raises(ValueError, match="until"):
        weighted_error(err, sens, 8)
    with pytest.raises(ValueError, match="sensitivities"):
        weighted_error(err, sens[:5], 3)
    partial = np.where(np.arange(7) < 4, sens, np.nan)         # a sweep that measured steps 0-3 only
    np.testing.assert_allclose(weighted_error(err, partial, 4), weighted_error(err, sens, 4), rtol=0)
    with pytest.raises(ValueError, match=r"no finite sensitivity measured at steps \[4\]"):
        weighted_error(err, partial, 5)
