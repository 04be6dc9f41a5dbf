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
