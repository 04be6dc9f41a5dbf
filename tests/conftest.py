"""Shared fixtures: tiny random-weight diffusers Wan pipelines (built in memory, nothing downloaded)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(__file__)
STANDIN = os.path.join(HERE, "wan_standin")
if STANDIN not in sys.path:
    sys.path.insert(0, STANDIN)

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def two_expert_pipe():
    from latent_probe.testing import tiny_wan_pipeline

    return tiny_wan_pipeline(two_experts=True, boundary_ratio=0.875)


@pytest.fixture(scope="session")
def one_expert_pipe():
    from latent_probe.testing import tiny_wan_pipeline

    return tiny_wan_pipeline(two_experts=False)


def run_pipe(pipe, steps: int = 12, guidance_scale: float = 4.0, seed: int = 0, **kw):
    """Run a tiny pipeline to latents [1, 16, 5, 8, 8] (17 frames at 64×64)."""
    from latent_probe.testing import tiny_prompt_embeds

    args = dict(
        prompt_embeds=tiny_prompt_embeds("a red ball rolls"),
        negative_prompt_embeds=tiny_prompt_embeds(""),
        height=64, width=64, num_frames=17, num_inference_steps=steps, guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed), output_type="latent",
    )
    args.update(kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe(**args).frames


def demo_run_file(tmp_path_factory, folder: str, name: str, steps: int, frames: int) -> str:
    """A closed demo run file of ``steps`` steps and ``frames`` latent frames (module-scoped fixtures)."""
    from latent_probe.demo import run_demo_generation

    path = tmp_path_factory.mktemp(folder) / name
    run_demo_generation(path, steps=steps, frames=frames)[1].close()
    return str(path)
