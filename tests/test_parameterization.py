"""x̂₀ / ε̂ for every parameterisation, checked against real diffusers schedulers' own x0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

from latent_probe import LatentProbe, LayoutError, UnknownParameterizationError
from latent_probe.parameterization import Parameterization
from latent_probe.parameterization import parameterization_of


class Toy(torch.nn.Module):
    """A small deterministic 'denoiser' over [B, C, F, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)) + 0.001 * t.float()


@torch.no_grad()
def _loop(model, sched, steps=6):
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 5, 6, 6, generator=g) * sched.init_noise_sigma
    internal = []
    for t in sched.timesteps:
        out = model(x, t)
        res = sched.step(out, t, x)
        x = res.prev_sample
        internal.append(getattr(res, "pred_original_sample", None))
        if internal[-1] is None:
            internal[-1] = sched.model_outputs[-1].clone()
    return x, internal


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample", "flow_prediction"])
@pytest.mark.parametrize("cls", [UniPCMultistepScheduler, DPMSolverMultistepScheduler])
def test_x0_matches_scheduler_internal(cls, kind):
    kw = dict(prediction_type=kind)
    if kind == "flow_prediction":
        kw.update(use_flow_sigmas=True, flow_shift=3.0)
    if cls is DPMSolverMultistepScheduler and kind == "flow_prediction":
        kw.update(algorithm_type="dpmsolver++")
    sched = cls(**kw)
    model = Toy()
    plain, _ = _loop(model, cls(**kw))
    with LatentProbe((model, sched), store_dtype="float32") as probe:
        out, internal = _loop(model, sched)
    assert torch.equal(out, plain)
    run = probe.run
    assert run.attrs["parameterization"] == kind
    x0, eps, xt = (run.latents(n)[:] for n in ("x0", "eps", "x_t"))
    for i, ref in enumerate(internal):
        ref = ref.numpy()  # float32 rounding relative to the step's largest value
        assert np.abs(x0[i] - ref).max() <= 1e-5 * np.abs(ref).max(), f"step {i}"
    # the decomposition holds: x_t = alpha x0 + sigma eps
    a = run.alphas[:, None, None, None, None, None]
    s = run.sigmas[:, None, None, None, None, None]
    finite = np.isfinite(eps).all(axis=tuple(range(1, eps.ndim)))
    np.testing.assert_allclose((a * x0 + s * eps)[finite], xt[finite], rtol=1e-4, atol=1e-4)


def test_ddim_reads_alphas_cumprod():
    sched = DDIMScheduler(prediction_type="epsilon", clip_sample=False)  # x̂₀ is recorded before any clipping
    model = Toy()
    with LatentProbe((model, sched), store_dtype="float32") as probe:
        _, internal = _loop(model, sched)
    run = probe.run
    ac = sched.alphas_cumprod.double().numpy()[run.timesteps.astype(int)]
    np.testing.assert_allclose(run.alphas, np.sqrt(ac))
    for i, ref in enumerate(internal):
        ref = ref.numpy()
        assert np.abs(run.latents("x0")[i] - ref).max() <= 1e-5 * np.abs(ref).max(), f"step {i}"


def test_flow_formula_against_float64():
    """x̂₀ = x_t − σ v and ε̂ = x_t + (1 − σ) v, checked in float64 numpy."""
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    model = Toy()
    with LatentProbe((model, sched), store_dtype="float32") as probe:
        _loop(model, sched)
    run = probe.run
    xt = run.latents("x_t")[:].astype(np.float64)
    v = run.latents("pred")[:].astype(np.float64)
    s = run.sigmas[:, None, None, None, None, None]
    np.testing.assert_allclose(run.latents("x0")[:], xt - s * v, atol=1e-5)
    np.testing.assert_allclose(run.latents("eps")[:], xt + (1 - s) * v, atol=1e-5)
    # and not the DDPM formula: for flow matching that would be a different (wrong) x0
    ddpm = (xt - np.sqrt(1 - (1 - s) ** 2) * v) / (1 - s)
    assert not np.allclose(run.latents("x0")[:], ddpm, atol=1e-2)


def test_config_decides_never_a_guess():
    class Bare:
        config = {}

        def step(self, *a, **k):
            raise AssertionError

    with pytest.raises(UnknownParameterizationError, match="no config.prediction_type"):
        parameterization_of(Bare())
    assert parameterization_of(UniPCMultistepScheduler(prediction_type="v_prediction")) is Parameterization.V


def test_generic_layout_error():
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)
    sched.set_timesteps(3)
    x = torch.randn(4, 5, 6, 6)  # [C, F, H, W]: not the declared layout
    # recording stops with one warning that says why; the generation is never aborted by the probe
    with pytest.warns(RuntimeWarning, match="recording stopped at step 0.*expected layout 'b c f h w'"):
        with LatentProbe((Toy(), sched)) as probe:
            out = sched.step(torch.zeros_like(x), sched.timesteps[0], x).prev_sample
            sched.step(torch.zeros_like(x), sched.timesteps[1], out)
    assert "step" not in vars(sched) and probe.capture_state.steps == 0
    with pytest.raises(RuntimeError, match="no step was recorded"):
        probe.run


def test_generic_layout_pattern_converts():
    """A loop whose step sees [B, F, C, H, W] declares it; stored latents are [B, C, F, H, W]."""
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)
    sched.set_timesteps(3)
    x = torch.randn(1, 5, 4, 6, 6)
    with LatentProbe((Toy(), sched), layout="b f c h w", store_dtype="float32") as probe:
        for t in sched.timesteps:
            x = sched.step(torch.zeros_like(x), t, x).prev_sample
    first = probe.run.latents("x_t")[0]
    assert first.shape == (1, 4, 5, 6, 6)
