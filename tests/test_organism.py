"""The model organism (latent_probe.organism): renderer, loader, probed generation, learned temporal structure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from latent_probe import LatentProbe, LatentProbeError  # noqa: E402
from latent_probe.metrics import adjacent_frame_metrics  # noqa: E402
from latent_probe.organism import (WEIGHTS, OrganismInputError, OrganismWeightsError, load_organism,  # noqa: E402
                                   random_organism, videos)
from latent_probe.organism import quality  # noqa: E402
from latent_probe.organism.model import prompt_embeddings  # noqa: E402

STEPS = 6
PROMPT = "a red square moving right"


def _centroid(rgb: torch.Tensor, color: tuple[float, float, float], radius: float = 0.25) -> torch.Tensor:
    """Plain centroid [F, 2] of the pixels within ``radius`` of ``color`` (independent of quality.py)."""
    d = (rgb - torch.tensor(color)[:, None, None, None]).pow(2).sum(0).sqrt()
    w = (d < radius).double()
    ys, xs = torch.meshgrid(torch.arange(rgb.shape[-2]) + 0.5, torch.arange(rgb.shape[-1]) + 0.5, indexing="ij")
    return torch.stack([(w * xs).sum((1, 2)) / w.sum((1, 2)), (w * ys).sum((1, 2)) / w.sum((1, 2))], -1)


# ---------------------------------------------------------------------------------------------- renderer
def test_renderer_is_seeded_and_shaped():
    labels = torch.arange(len(videos.PROMPTS))
    a = videos.render(labels, torch.Generator().manual_seed(3))
    b = videos.render(labels, torch.Generator().manual_seed(3))
    c = videos.render(labels, torch.Generator().manual_seed(4))
    assert a.latents.shape == (8, 16, 21, 16, 16) and a.rgb.shape == (8, 3, 21, 16, 16)
    assert torch.equal(a.latents, b.latents)
    assert torch.equal(a.motion.centers.nan_to_num(), b.motion.centers.nan_to_num())
    assert not torch.equal(a.latents, c.latents)
    assert 0 <= a.rgb.min() and a.rgb.max() <= 1
    assert 0.8 < float(a.latents.std()) < 1.2            # the lift keeps latents at about unit scale
    one, motion = videos.render_clip(2, seed=9)
    assert one.shape == (16, 21, 16, 16) and int(motion.labels[0]) == 2


def test_lift_is_inverted_by_the_decoder():
    rgb = torch.rand(2, 3, 21, 16, 16, generator=torch.Generator().manual_seed(0))
    lat = videos.lift(rgb)
    assert lat.shape == (2, 16, 21, 16, 16)
    torch.testing.assert_close(videos.to_rgb(lat), rgb, atol=1e-5, rtol=0)
    m = videos.latent_map()
    torch.testing.assert_close(m.T @ m, torch.eye(3) * videos.LATENT_SCALE ** 2, atol=1e-4, rtol=0)


@pytest.mark.parametrize("label,color,obj", [(0, "red", 0), (1, "blue", 0), (2, "green", 0), (3, "yellow", 0),
                                             (5, "blue", 1)])
def test_rendered_objects_move_as_their_parameters_say(label, color, obj):
    for seed in (0, 1):
        clips = videos.render(torch.tensor([label]), torch.Generator().manual_seed(seed))
        truth = clips.motion.centers[0, obj]                                  # [F, 2]
        seen = _centroid(clips.rgb[0], videos.COLORS[color])
        assert (seen - truth).norm(dim=-1).max() < 0.6, (seen - truth).norm(dim=-1)   # hard mask: ±½ px
        # linear motion with the velocity the parameters give, in the direction the prompt says
        v = clips.motion.velocity[0, obj]
        torch.testing.assert_close(truth[1:] - truth[:-1], v.expand(20, 2), atol=1e-5, rtol=0)
        direction = {0: (1, 0), 1: (-1, 0), 2: (0, 1), 5: (-1, 0)}.get(label)
        if direction is not None:
            assert float(v @ torch.tensor(direction, dtype=v.dtype)) > 0.25
        track, _ = quality.color_track(clips.rgb[0], color)                   # the estimator used on samples
        assert (track - truth).norm(dim=-1).max() < 0.35


def test_bar_rotates_and_camera_pans_as_parameters_say():
    clips = videos.render(torch.tensor([4, 6, 7]), torch.Generator().manual_seed(2))
    angle = torch.tensor(quality.unwrap_orientation(quality.bar_angle(clips.rgb[0]).tolist()))
    truth = clips.motion.angle[0]
    assert ((angle - truth + math.pi / 2) % math.pi - math.pi / 2).abs().max() < 0.06
    # a pan translates the whole frame: the speed estimated from the pixels has the parameters' sign and size
    for i, sign in ((1, 1.0), (2, -1.0)):
        vx = float(quality.pan_velocity(clips.rgb[i]).mean())
        true_vx = float(clips.motion.pan[i, 1, 0])
        assert sign * true_vx > 0.25 and sign * vx > 0.2 and abs(vx - true_vx) < 0.4 * abs(true_vx)
    assert torch.equal(clips.motion.pan[0], torch.zeros(21, 2))


# ---------------------------------------------------------------------------------------------- loader
def test_missing_weights_raise_one_line(tmp_path):
    with pytest.raises(OrganismWeightsError) as info:
        load_organism(path=tmp_path / "nothing.safetensors")
    assert isinstance(info.value, LatentProbeError) and "\n" not in str(info.value)
    assert "nothing.safetensors" in str(info.value)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(OrganismWeightsError, match="bad.safetensors") as info:
        load_organism(path=bad)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def organism():
    return load_organism()


def test_loader_builds_the_real_two_expert_pipeline(organism):
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    pipe = organism.pipe
    assert isinstance(pipe, WanPipeline) and isinstance(pipe.scheduler, UniPCMultistepScheduler)
    experts = (pipe.transformer, pipe.transformer_2)
    assert all(isinstance(e, WanTransformer3DModel) for e in experts)
    assert pipe.config.boundary_ratio == organism.config.boundary_ratio == 0.875
    assert pipe.scheduler.config.use_flow_sigmas and pipe.scheduler.config.prediction_type == "flow_prediction"
    assert WEIGHTS.stat().st_size <= 20 * 2**20
    a, b = (dict(e.named_parameters()) for e in experts)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in a.values())
    assert any(not torch.equal(a[k], b[k]) for k in a)                          # two experts, not one copy
    torch.testing.assert_close(organism.prompt_embeds, prompt_embeddings(organism.config))
    assert organism.index("  A Red Square moving  right ") == 0
    with pytest.raises(OrganismInputError):
        organism.index("a purple elephant")


# ---------------------------------------------------------------------------------------------- generation
@pytest.fixture(scope="module")
def probed(organism, tmp_path_factory):
    path = tmp_path_factory.mktemp("organism") / "run.h5"
    with LatentProbe(organism.pipe, path, store_dtype="float32") as probe:
        latent = organism.generate(PROMPT, seed=0, num_inference_steps=STEPS)
    return latent, probe.run


def test_a_probed_generation_records_every_step(organism, probed):
    latent, run = probed
    assert latent.shape == (1, 16, 21, 16, 16)
    assert run.complete and run.num_steps == STEPS
    experts = list(run.experts)
    n_high = sum(e == "transformer" for e in experts)
    assert 0 < n_high < STEPS and experts == ["transformer"] * n_high + ["transformer_2"] * (STEPS - n_high)
    assert np.all(run.timesteps[:n_high] >= 875) and np.all(run.timesteps[n_high:] < 875)
    x0 = run.latents("x0")
    assert x0.shape == (STEPS, 1, 16, 21, 16, 16)
    # the probe did not change the generation: the same call unprobed gives the same latent
    assert torch.equal(organism.generate(PROMPT, seed=0, num_inference_steps=STEPS), latent)
    frames = organism.decode(latent)
    assert frames.shape == (21, 128, 128, 3) and frames.dtype == torch.uint8


def test_trained_samples_have_the_training_clips_temporal_structure(probed):
    """Adjacent-frame cosine of the final x̂0: trained ≈ training clips, the same pipeline untrained far below;
    and the prompt's object is there in every frame, moving right along a straight line."""
    latent, run = probed
    x0 = torch.from_numpy(np.asarray(run.latents("x0")[-1]))                   # [1, 16, F, h, w]
    clips = videos.render(torch.zeros(8, dtype=torch.long), torch.Generator().manual_seed(11))
    control = random_organism(seed=0).generate(PROMPT, seed=0, num_inference_steps=STEPS)

    def cos(x):
        return float(np.mean(adjacent_frame_metrics(x, "b c f h w").cos_mean))

    trained, training, untrained = cos(x0), cos(clips.latents), cos(control)
    assert abs(trained - training) < 0.03, (trained, training)
    assert untrained < training - 0.2, (untrained, training)
    track, _ = quality.color_track(videos.to_rgb(latent[0]), "red")
    fit = quality.fit_line(track)
    assert fit.frames == 21 and fit.rms < 0.8 and 0.2 < float(fit.velocity[0]) < 0.7, fit
    ctrl_fit = quality.fit_line(quality.color_track(videos.to_rgb(control[0]), "red")[0])
    assert not (ctrl_fit.frames == 21 and ctrl_fit.rms < 0.8 and 0.2 < float(ctrl_fit.velocity[0]) < 0.7)
