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


def tiny_organism_weights(path) -> str:
    """A tiny random-weight organism v1 (8×8 latents, 5 frames, 2 layers) saved at ``path``; its output heads
    re-initialised (diffusers zero-initialises them: every prediction would be 0)."""
    from latent_probe.organism.model import EXPERTS, OrganismConfig, build_transformer, save_weights

    cfg = OrganismConfig(latent_size=8, latent_frames=5, num_layers=2, num_attention_heads=2, attention_head_dim=16,
                         ffn_dim=64, text_dim=32)
    experts = {}
    for i, name in enumerate(EXPERTS):
        m = build_transformer(cfg, seed=i)
        with torch.no_grad():
            m.proj_out.weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(10 + i))
        experts[name] = m
    save_weights(path, experts, cfg)
    return str(path)


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> str:
    """The tiny organism's weights file, built once for the organism-study tests."""
    return tiny_organism_weights(tmp_path_factory.mktemp("organism") / "tiny.safetensors")


def read_job_sidecar(out, job_id):
    """A study job's outputs/<job id>.safetensors read with safetensors' own API, no latent_probe code (an
    independent reader): (record dict, final latent, a copy not backed by the mapped file)."""
    import json

    from safetensors import safe_open

    with safe_open(os.path.join(out, "outputs", f"{job_id}.safetensors"), "pt") as fh:
        return json.loads(fh.metadata()["record"]), fh.get_tensor("final_latent").clone()


def manifest_jobs(out):
    """The job list of a study's manifest.json, read as plain JSON."""
    import json

    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as fh:
        return json.load(fh)["jobs"]


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
