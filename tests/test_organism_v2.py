"""Organism v2: the learned causal VAE as pipe.vae, two sizes, the checksummed loader, exact probing (issue 20).

Everything runs on random weights (a small VAE, base_dim 8), so no trained file is needed; the shipped sizes are
loaded only when their files exist.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from latent_probe import FrameTruncation, LatentProbe, LatentProbeError  # noqa: E402
from latent_probe.organism import (Organism, OrganismV2, OrganismWeightsError, load_organism,  # noqa: E402
                                   random_organism_v2, vae_v2, videos_v2)
from latent_probe.organism.model import parameter_count  # noqa: E402
from latent_probe.organism.model_v2 import (config_for, expected_sha256, record_checksum,  # noqa: E402
                                            save_organism_v2, sha256, weights_path)

SMALL_VAE = {"base_dim": 8}
STEPS = 4


@pytest.fixture(scope="module")
def org():
    torch.manual_seed(0)
    o = random_organism_v2("small", seed=0, vae_config=SMALL_VAE)
    g = torch.Generator().manual_seed(1)   # a non-trivial normalisation, so a wrong one cannot pass
    o.pipe.vae.register_to_config(latents_mean=(0.3 * torch.randn(16, generator=g)).tolist(),
                                  latents_std=(0.5 + torch.rand(16, generator=g)).tolist())
    return o


# --------------------------------------------------------------------------------------------- the VAE
def test_vae_has_wans_strides_and_encodes_frame_0_alone():
    vae = vae_v2.build_vae(SMALL_VAE, seed=0)
    assert vae.config.z_dim == 16 and vae.config.scale_factor_temporal == 4 and vae.config.scale_factor_spatial == 4
    rgb = videos_v2.render(torch.tensor([0]), torch.Generator().manual_seed(0)).rgb[:, :, :17]
    with torch.no_grad():
        z = vae_v2.encode(vae, rgb)
        assert z.shape == (1, 16, 5, 16, 16)                 # 1 + 16/4 latent frames (81 → 21: the probe test)
        late = rgb.clone()
        late[:, :, 5:] = 1 - late[:, :, 5:]                  # change frames 5…80: latent frames 0 and 1 unchanged
        z2 = vae_v2.encode(vae, late)
        first = rgb.clone()
        first[:, :, 1:] = 0.5                                # only frame 0 shared: latent frame 0 unchanged
        z3 = vae_v2.encode(vae, first)
    assert torch.equal(z2[:, :, :2], z[:, :, :2]) and not torch.equal(z2[:, :, 2], z[:, :, 2])
    assert torch.equal(z3[:, :, 0], z[:, :, 0]) and not torch.equal(z3[:, :, 1], z[:, :, 1])
    with pytest.raises(LatentProbeError, match="temperal_downsample"):
        vae_v2.build_vae({"temperal_downsample": [True, True, False]})


def test_encode_and_decode_apply_the_pipelines_normalisation(org):
    vae = org.pipe.vae
    rgb = videos_v2.render(torch.tensor([8]), torch.Generator().manual_seed(3)).rgb[:, :, :9]
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        mu = vae.encode(2 * rgb - 1).latent_dist.mean
        torch.testing.assert_close(org.encode(rgb), (mu - mean) / std, rtol=0, atol=1e-6)
        z = torch.randn(1, 16, 3, 16, 16, generator=torch.Generator().manual_seed(4))
        ref = (vae.decode(z * std + mean).sample.clamp(-1, 1) + 1) / 2
        torch.testing.assert_close(vae_v2.decode(vae, z), ref, rtol=0, atol=1e-5)   # z/(1/std) vs z·std


def test_usage_psnr_and_temporal_error_against_hand_computed_values():
    z = torch.zeros(4, 16, 2, 3, 3, dtype=torch.float64)
    z[:, 0] = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    share = vae_v2.channel_usage(z)
    assert float(share[0]) == pytest.approx(1.0) and float(share[1:].abs().max()) == 0
    a = torch.full((1, 3, 2, 4, 4), 0.5)
    b = a + 0.1
    assert float(vae_v2.psnr(a, b)) == pytest.approx(20.0, abs=1e-4)
    moving = torch.zeros(1, 3, 3, 4, 4)
    moving[:, :, 1:] = 1.0
    assert float(vae_v2.temporal_consistency(moving, moving)) == 0
    assert float(vae_v2.temporal_consistency(moving[:, :, [0, 0, 2]], moving)) == pytest.approx(2 ** 0.5)


# --------------------------------------------------------------------------------------------- sizes, pipeline
def test_two_sizes_two_experts_wan_boundary_and_shift(org):
    from diffusers import AutoencoderKLWan, WanPipeline

    small, large = config_for("small"), config_for("large")
    assert (small.num_layers, small.num_attention_heads * small.attention_head_dim) == (6, 128)
    assert 8 <= large.num_layers <= 12 and 256 <= large.num_attention_heads * large.attention_head_dim <= 384
    from latent_probe.organism.model import build_transformer
    assert parameter_count(build_transformer(large)) >= 4 * parameter_count(build_transformer(small))
    pipe = org.pipe
    assert isinstance(org, OrganismV2) and isinstance(pipe, WanPipeline) and isinstance(pipe.vae, AutoencoderKLWan)
    assert pipe.config.boundary_ratio == 0.875 and pipe.scheduler.config.flow_shift == 12.0
    assert (pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial) == (4, 4)
    assert (org.config.height, org.config.num_frames) == (64, 81)
    pipe.scheduler.set_timesteps(40)
    high = int((pipe.scheduler.timesteps >= 875).sum())
    assert 24 <= high <= 28                                       # Wan T2V-A14B: ≈ 26 of 40 steps high-noise
    assert org.index("A cyan disc appears and then vanishes ") == 8


def test_v1_stays_the_default():
    org = load_organism()
    assert type(org) is Organism and org.config.flow_shift == 5.0 and len(org.prompts) == 8
    with pytest.raises(OrganismWeightsError, match="v2 files only"):
        load_organism(sha256="0" * 64)
    with pytest.raises(OrganismWeightsError, match="unknown organism size") as info:
        load_organism(size="huge")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------- the loader
def test_weights_file_roundtrip_and_checksum_refusals(org, tmp_path):
    path = tmp_path / "organism_v2_small.safetensors"
    experts = {"high_noise": org.pipe.transformer, "low_noise": org.pipe.transformer_2}
    save_organism_v2(path, experts, org.pipe.vae, org.config)
    digest = sha256(path)
    back = load_organism(size="small", path=path, sha256=digest)
    assert isinstance(back, OrganismV2) and back.trained and back.config == org.config
    for a, b in ((org.pipe.transformer, back.pipe.transformer), (org.pipe.vae, back.pipe.vae)):
        for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(q, p.half().float(), rtol=0, atol=0, msg=k)   # float16 on disk
    assert back.pipe.vae.config.latents_mean == pytest.approx(org.pipe.vae.config.latents_mean)
    registry = tmp_path / "checksums_v2.json"
    assert expected_sha256(path, registry) is None
    assert record_checksum(path, registry) == digest == expected_sha256(path, registry)

    def refused(match, **kw):
        with pytest.raises(OrganismWeightsError, match=match) as info:
            load_organism(**kw)
        assert isinstance(info.value, LatentProbeError) and "\n" not in str(info.value)

    refused("expected", size="small", path=path, sha256="f" * 64)
    refused("no checksum known", size="small", path=path)
    refused("not found", size="small", path=tmp_path / "absent.safetensors", sha256=digest)
    refused("holds the 'small' organism", size="large", path=path, sha256=digest)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[:-100])
    refused("expected", size="small", path=damaged, sha256=digest)
    refused("not a readable", size="small", path=damaged, sha256=sha256(damaged))


@pytest.mark.parametrize("size", ["small", "large"])
def test_shipped_v2_sizes_load(size):
    path = weights_path(size)
    if not path.is_file():
        pytest.skip(f"{path.name} not trained yet (training/train_organism_v2.sh on a GPU writes it)")
    org = load_organism(size=size)
    assert isinstance(org, OrganismV2) and org.config.size == size and org.trained
    latent = org.generate(0, seed=0, num_inference_steps=STEPS)
    assert latent.shape == (1, 16, 21, 16, 16) and torch.isfinite(latent).all()


# --------------------------------------------------------------------------------------------- exact probing
def _scheduler_x0(org, **kw):
    seen = []

    def cb(p, i, t, kwargs):
        seen.append(p.scheduler.model_outputs[-1].detach().clone())
        return {}

    return org.generate(0, callback_on_step_end=cb, **kw), seen


def test_probe_records_exactly_through_the_learned_vaes_latents(org, tmp_path):
    """81 frames → 21 latent frames; recorded x̂₀ = the scheduler's own; decode = the pipeline's own decode
    (17 frames → 5 latent frames for the decode comparison, to keep the CPU test short)."""
    baseline = org.generate(0, seed=2, num_inference_steps=STEPS)
    assert baseline.shape == (1, 16, 21, 16, 16)
    with LatentProbe(org.pipe, tmp_path / "v2.h5", store_dtype="float32") as probe:
        out, sched_x0 = _scheduler_x0(org, seed=2, num_inference_steps=STEPS)
    assert torch.equal(out, baseline), "the probe changed the generation"
    run = probe.run
    assert run.complete and run.num_steps == STEPS
    x0 = run.latents("x0")
    assert x0.shape == (STEPS, 1, 16, 21, 16, 16)
    for i, ref in enumerate(sched_x0):
        np.testing.assert_array_equal(x0[i], ref.numpy())
    assert list(run.experts) == ["transformer" if t >= 875 else "transformer_2" for t in run.timesteps]
    run.close()
    # a final latent decodes through pipe.vae exactly as the pipeline's own output_type="pt" does
    short = org.generate(0, seed=2, num_inference_steps=2, num_frames=17)                      # [1, 16, 5, 16, 16]
    video = org.pipe(**org.call_kwargs(0, seed=2, num_inference_steps=2, num_frames=17, output_type="pt")).frames
    ours = org.decode(short)                                                                   # [17, 64, 64, 3]
    ref = (video[0].permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8)           # video [1, F, 3, H, W]
    assert short.shape == (1, 16, 5, 16, 16) and ours.shape == (17, 64, 64, 3)
    assert int((ours.int() - ref.int()).abs().max()) <= 1 and float(ours.float().std()) > 1


def test_truncation_keeping_every_frame_is_bit_identical_on_v2(org):
    base = org.generate(1, seed=3, num_inference_steps=STEPS)
    with LatentProbe(org.pipe, None, capture=("x0",), intervene=FrameTruncation(keep=21, until="boundary")):
        same = org.generate(1, seed=3, num_inference_steps=STEPS)
    assert torch.equal(same, base)
    with LatentProbe(org.pipe, None, capture=("x0",), intervene=FrameTruncation(keep=3, until="boundary")):
        fewer = org.generate(1, seed=3, num_inference_steps=STEPS)
    assert not torch.equal(fewer, base)
