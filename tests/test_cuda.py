"""CUDA paths (pinned non-blocking copies on a side stream). Skipped without a GPU; run on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_pipe as _run_pipe
from latent_probe import LatentProbe
from latent_probe.testing import tiny_prompt_embeds


def run_pipe(pipe, **kw):
    """The CPU helper with its prompt embeddings moved to the GPU."""
    kw.setdefault("prompt_embeds", tiny_prompt_embeds("a red ball rolls").cuda())
    kw.setdefault("negative_prompt_embeds", tiny_prompt_embeds("").cuda())
    return _run_pipe(pipe, **kw)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_tiny_pipeline_on_cuda_bit_identical_and_x0_exact():
    from latent_probe.testing import tiny_wan_pipeline

    pipe = tiny_wan_pipeline().to("cuda")
    kw = dict(generator=torch.Generator("cuda").manual_seed(0))
    base = run_pipe(pipe, steps=10, **kw)
    seen = []

    def cb(p, i, t, k):
        seen.append(p.scheduler.model_outputs[-1].detach().cpu().clone())
        return {}

    kw = dict(generator=torch.Generator("cuda").manual_seed(0))
    with LatentProbe(pipe, store_dtype="float32", cfg_branches=True) as probe:
        out = run_pipe(pipe, steps=10, callback_on_step_end=cb, **kw)
    assert torch.equal(out, base)
    run = probe.run
    assert run.num_steps == 10
    np.testing.assert_array_equal(run.timesteps, pipe.scheduler.timesteps[:10].double().cpu().numpy())
    for i, ref in enumerate(seen):
        np.testing.assert_allclose(run.latents("x0")[i], ref.numpy(), atol=1e-6)
    assert 0 < (run.experts == "transformer").sum() < 10


def test_float16_cast_on_gpu_matches_host_cast():
    from latent_probe.testing import tiny_wan_pipeline

    pipe = tiny_wan_pipeline().to("cuda")
    with LatentProbe(pipe) as p16:
        run_pipe(pipe, steps=4, generator=torch.Generator("cuda").manual_seed(0))
    with LatentProbe(pipe, store_dtype="float32") as p32:
        run_pipe(pipe, steps=4, generator=torch.Generator("cuda").manual_seed(0))
    np.testing.assert_array_equal(p16.run.latents("x_t")[:], p32.run.latents("x_t")[:].astype(np.float16))


def test_float16_overflow_flagged_from_the_gpu_range(tmp_path):
    """On CUDA the cast runs on the GPU; the source's min/max travel with it, so overflow is told from NaN."""
    from diffusers import UniPCMultistepScheduler

    from latent_probe import open_run

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    sched.set_timesteps(4, device="cuda")
    x = torch.ones(1, 4, 3, 4, 4, device="cuda")
    fills = [0.5, 1e5, float("nan"), -7e4]
    with pytest.warns(RuntimeWarning), LatentProbe((torch.nn.Identity(), sched), tmp_path / "o.h5",
                                                   capture=("x_t", "pred")):
        for t, fill in zip(sched.timesteps, fills):
            sched.step(torch.full_like(x, fill), t, x)
    with open_run(tmp_path / "o.h5") as run:
        assert list(run.overflow["pred"]) == [False, True, False, True]
        assert list(run.nonfinite["pred"]) == [False, True, True, True]
        assert not run.nonfinite["x_t"].any()
        pred = run.latents("pred")[:]
        assert np.isposinf(pred[1]).all() and np.isnan(pred[2]).all() and np.isneginf(pred[3]).all()


def test_metrics_computed_on_the_gpu_during_the_run_equal_those_of_the_stored_latents(tmp_path):
    """The online sums (fused Triton kernel on CUDA, copied with the step) give the metrics the stored float32
    latents give; a metrics-only run gives the same; the output is bit-identical to an unprobed run; x̂₀ derived
    on read from float32 x_t and pred equals the stored one bit for bit."""
    from latent_probe import open_run
    from latent_probe.testing import tiny_wan_pipeline

    pipe = tiny_wan_pipeline(two_experts=True, boundary_ratio=0.875).to("cuda")
    gen = lambda: dict(generator=torch.Generator("cuda").manual_seed(0))  # noqa: E731
    base = run_pipe(pipe, steps=8, **gen())
    spaces = ("x_t", "pred", "x0", "eps")
    with LatentProbe(pipe, tmp_path / "full.h5", store_dtype="float32", metrics=spaces):
        out = run_pipe(pipe, steps=8, **gen())
    with LatentProbe(pipe, tmp_path / "only.h5", capture=(), metrics=spaces):
        out2 = run_pipe(pipe, steps=8, **gen())
    with LatentProbe(pipe, tmp_path / "derived.h5", capture=("x_t", "pred"), store_dtype="float32",
                     latent_steps="every:3,last,boundary:1"):
        out3 = run_pipe(pipe, steps=8, **gen())
    assert torch.equal(out, base) and torch.equal(out2, base) and torch.equal(out3, base)
    with open_run(tmp_path / "full.h5") as run, open_run(tmp_path / "only.h5") as only, \
            open_run(tmp_path / "derived.h5") as der:
        for space in spaces:
            on, off = run.metrics(space, source="online"), run.metrics(space, source="latents")
            np.testing.assert_allclose(on.l2, off.l2, rtol=1e-6)  # float32 partial sums in another order
            np.testing.assert_allclose(on.cos, off.cos, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(only.metrics(space).l2, on.l2)
            np.testing.assert_allclose(run.metrics.step_change(space, source="online").rel_l1,
                                       run.metrics.step_change(space, source="latents").rel_l1, rtol=1e-9,
                                       equal_nan=True)
        kept = der.latent_steps
        assert 0 < len(kept) < 8
        for q in ("x0", "eps"):
            assert der.latents(q)[:].tobytes() == run.latents(q)[kept].tobytes()


@pytest.mark.parametrize("store_dtype", ["float32", "float16"])
def test_block_hidden_states_copied_off_the_gpu_equal_an_independent_hook(tmp_path, store_dtype):
    """block_steps= on CUDA: each block output is copied in the store dtype on the producer's stream, then to a pinned
    slot buffer on the writer's copy stream; what is stored equals, bit for bit, the output a plain forward hook
    cloned, cast with Tensor.to; the output is bit-identical to an unprobed run."""
    from latent_probe import open_run
    from latent_probe.testing import tiny_wan_pipeline

    pipe = tiny_wan_pipeline(two_experts=True, boundary_ratio=0.875).to("cuda")
    gen = lambda: dict(generator=torch.Generator("cuda").manual_seed(0))  # noqa: E731
    base = run_pipe(pipe, steps=6, **gen())
    calls: list[list[torch.Tensor]] = []
    handles = []
    for expert in (pipe.transformer, pipe.transformer_2):
        handles.append(expert.register_forward_pre_hook(lambda m, a: calls.append([])))
        for block in expert.blocks:
            handles.append(block.register_forward_hook(lambda m, a, out: calls[-1].append(out.detach().clone())))
    try:
        with LatentProbe(pipe, tmp_path / "h.h5", capture=("x0",), blocks="all", block_steps="0,3,last",
                         store_dtype=store_dtype, slots=1):
            out = run_pipe(pipe, steps=6, **gen())
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(out, base)
    dtype = getattr(torch, store_dtype)
    with open_run(tmp_path / "h.h5") as run:
        assert run.blocks.hidden_steps("uncond") == [0, 3, 5]
        frames, tokens = 5, 16
        for step in (0, 3, 5):
            for j in range(len(pipe.transformer.blocks)):
                for b, branch in enumerate(("cond", "uncond")):
                    ref = calls[2 * step + b][j][:, : frames * tokens].unflatten(1, (frames, tokens)).to(dtype).cpu()
                    got = run.blocks.hidden(step, j, branch)
                    assert got.dtype == ref.dtype and got.view(torch.uint8).equal(ref.view(torch.uint8)), (step, j, branch)
