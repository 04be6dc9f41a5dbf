"""Truncation variants (issue 19 item 3): a motion-compensated fill, a growing key-frame schedule, re-noising the
filled frames at the switch. Each against an independent reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_pipe
from latent_probe import LatentProbe
from latent_probe.interventions import FrameTruncation, interpolate_frames
from latent_probe.frames import key_shifts, translate

F = 5  # latent frames of the tiny pipelines (17 video frames)
H = W = 16


def _wrap(d: torch.Tensor, n: int) -> torch.Tensor:
    """Circular distance on a ring of n pixels, in [−n/2, n/2)."""
    return (d + n / 2) % n - n / 2


def blob_video(frames: int, vy: float, vx: float, width: float = 1.2) -> torch.Tensor:
    """[1, 2, frames, H, W] float64: a Gaussian blob (and its negative in channel 1) moving (vy, vx) px a frame."""
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    out = [torch.exp(-(_wrap(y - 5 - vy * t, H) ** 2 + _wrap(x - 3 - vx * t, W) ** 2) / (2 * width ** 2))
           for t in range(frames)]
    v = torch.stack(out)
    return torch.stack([v, -0.5 * v])[None]


def test_motion_fill_moves_a_translated_pattern_where_linear_ghosts():
    video = blob_video(9, vy=1.0, vx=2.0)           # 4 px down, 8 px right between keys 4 apart (wraps once)
    keys = [0, 4, 8]
    vals = video[:, :, keys]
    assert key_shifts(vals).tolist() == [[[4.0, 8.0], [4.0, 8.0]]]
    lin = interpolate_frames(vals, keys, 9, "linear")
    mot = interpolate_frames(vals, keys, 9, "motion")
    for f in range(9):
        ref = video[0, :, f]
        if f in keys:   # key frames are copied bit for bit
            assert torch.equal(mot[0, :, f], ref)
            continue
        assert float((mot[0, :, f] - ref).abs().max()) < 1e-6          # at the right place
        assert float((lin[0, :, f] - ref).abs().max()) > 0.4           # linear: two half blobs (ghosting)
        assert np.unravel_index(int(mot[0, 0, f].argmax()), (H, W)) == ((5 + f) % H, (3 + 2 * f) % W)
    # sub-pixel motion between keys (0.75 and 1.5 px a frame): a wider blob lands within a few per cent
    video = blob_video(9, vy=0.75, vx=1.5, width=2.0)
    vals = video[:, :, keys]
    mot = interpolate_frames(vals, keys, 9, "motion")
    lin = interpolate_frames(vals, keys, 9, "linear")
    for f in (1, 2, 3, 5, 6, 7):
        assert float((mot[0, :, f] - video[0, :, f]).abs().max()) < 0.05
        assert float((lin[0, :, f] - video[0, :, f]).abs().max()) > 0.25


def test_motion_fill_of_a_static_or_single_key_clip_is_linear():
    still = blob_video(5, 0.0, 0.0).repeat(1, 1, 1, 1, 1) * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0],
                                                                          dtype=torch.float64).view(1, 1, 5, 1, 1)
    keys = [0, 4]
    np.testing.assert_allclose(interpolate_frames(still[:, :, keys], keys, 5, "motion").numpy(),
                               interpolate_frames(still[:, :, keys], keys, 5, "linear").numpy(), atol=1e-12)
    one = interpolate_frames(still[:, :, [2]], [2], 5, "motion")
    assert all(torch.equal(one[:, :, f], still[:, :, 2]) for f in range(5))


def test_translate_by_whole_pixels_is_a_circular_roll():
    x = torch.randn(2, 3, 4, 8, 8, dtype=torch.float64)
    shift = torch.tensor([2.0, -3.0], dtype=torch.float64).expand(2, 4, 2)
    np.testing.assert_allclose(translate(x, shift).numpy(), torch.roll(x, (2, -3), (-2, -1)).numpy(), atol=1e-12)


def test_motion_fill_runs_in_a_pipeline_and_keep_all_stays_bit_identical(two_expert_pipe):
    baseline = run_pipe(two_expert_pipe)
    with LatentProbe(two_expert_pipe, intervene=FrameTruncation(keep=F, fill="motion"), capture=("x_t",)):
        assert torch.equal(run_pipe(two_expert_pipe), baseline)
    ft = FrameTruncation(keep=3, fill="motion")
    with LatentProbe(two_expert_pipe, intervene=ft, capture=("x_t",)):
        out = run_pipe(two_expert_pipe)
    assert torch.isfinite(out).all() and not torch.equal(out, baseline) and ft.keys_used == [0, 2, 4]


def test_growing_schedule_widens_the_keys_stage_by_stage(two_expert_pipe):
    baseline = run_pipe(two_expert_pipe)
    ft = FrameTruncation(schedule=[(2, 2), (3, 4)])
    with LatentProbe(two_expert_pipe, intervene=ft, capture=("x_t",)) as probe:
        out = run_pipe(two_expert_pipe)
    # keys: {0, 4} for steps 0-1; {0, 4} ∪ {0, 2, 4} for steps 2-3; every frame from step 4 (cond + uncond each)
    assert ft.frames_seen == [2] * 4 + [3] * 4 + [F] * 16
    assert ft.keys_used == [0, 2, 4] and not torch.equal(out, baseline)
    assert probe.run.attrs["intervention"]["schedule"] == [[2, 2], [3, 4]]
    # a schedule whose first stage keeps every frame changes nothing
    with LatentProbe(two_expert_pipe, intervene=FrameTruncation(schedule=[(F, 6)]), capture=("x_t",)):
        assert torch.equal(run_pipe(two_expert_pipe), baseline)
    # stages are unions: 3 then 4 keys of 5 frames gives {0, 2, 4} then {0, 1, 2, 3, 4}
    assert FrameTruncation(schedule=[(3, 1), (4, 2)]).keys_for(5, 1) == [0, 1, 2, 3, 4]
    for bad in ([], [(3, 4), (2, 6)], [(3, 4), (6, 4)], [(0, 2)], [("a", 1)]):
        with pytest.raises(ValueError):
            FrameTruncation(schedule=bad)
    with pytest.raises(ValueError, match="alone"):
        FrameTruncation(keep=3, schedule=[(3, 2)])


def test_renoise_sets_filled_frames_to_the_forward_process_at_the_switch(two_expert_pipe):
    until, seed = 3, 7
    plain = FrameTruncation(keep=2, until=until)
    with LatentProbe(two_expert_pipe, intervene=plain, store_dtype="float32", capture=("x_t", "x0")) as p0:
        run_pipe(two_expert_pipe)
    ft = FrameTruncation(keep=2, until=until, renoise=True, renoise_seed=seed)
    with LatentProbe(two_expert_pipe, intervene=ft, store_dtype="float32", capture=("x_t", "x0")) as p1:
        out = run_pipe(two_expert_pipe)
    x_t, x0 = p1.run.latents("x_t")[:], p1.run.latents("x0")[:]      # [S, B, C, F, H, W]
    sigma = float(p1.run.sigmas[until])
    assert ft.summary()["renoised"] == [{"step": until - 1, "sigma": sigma, "frames": [1, 2, 3], "seed": seed}]
    eps = torch.randn(x_t.shape[1:], generator=torch.Generator().manual_seed(seed), dtype=torch.float32).numpy()
    filled = [1, 2, 3]
    # reference: the forward process x = (1 − σ)·x̂₀ + σ·ε, with the scheduler's own x̂₀ of the last truncated step
    ref = (1 - sigma) * x0[until - 1][:, :, filled] + sigma * eps[:, :, filled]
    np.testing.assert_allclose(x_t[until][:, :, filled], ref, rtol=0, atol=1e-5)
    z = (x_t[until][:, :, filled] - (1 - sigma) * x0[until - 1][:, :, filled]) / sigma   # σ-scaled noise
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1
    # up to the switch nothing differs; key frames at the switch are the plain run's
    plain_x = p0.run.latents("x_t")[:]
    np.testing.assert_array_equal(x_t[:until], plain_x[:until])
    np.testing.assert_array_equal(x_t[until][:, :, [0, 4]], plain_x[until][:, :, [0, 4]])
    assert torch.isfinite(out).all()
    # keep all frames + renoise: nothing filled, nothing re-noised, bit-identical
    baseline = run_pipe(two_expert_pipe)
    full = FrameTruncation(keep=F, until=until, renoise=True)
    with LatentProbe(two_expert_pipe, intervene=full, capture=("x_t",)):
        assert torch.equal(run_pipe(two_expert_pipe), baseline)
    assert full.summary()["renoised"] == []


def test_renoise_without_a_unipc_flow_scheduler_is_refused_before_anything_runs(two_expert_pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler

    keep = two_expert_pipe.scheduler
    two_expert_pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    try:
        with pytest.raises(ValueError, match="renoise=True needs"):
            with LatentProbe(two_expert_pipe, intervene=FrameTruncation(keep=2, until=3, renoise=True)):
                pass
    finally:
        two_expert_pipe.scheduler = keep


def test_x0_space_fill_interpolates_the_schedulers_x0_not_the_prediction(two_expert_pipe):
    until = 4
    ft = FrameTruncation(keep=3, until=until, fill_space="x0")
    with LatentProbe(two_expert_pipe, intervene=ft, store_dtype="float32", capture=("x_t", "pred", "x0")) as probe:
        out = run_pipe(two_expert_pipe)
    x0, pred = probe.run.latents("x0")[:], probe.run.latents("pred")[:]   # [S, B, C, F, H, W]
    assert probe.run.attrs["intervention"]["fill_space"] == "x0"
    # reference: the scheduler's own x̂₀ of a truncated step is the linear fill of its key frames' x̂₀ ...
    for f, (a, b) in ((1, (0, 2)), (3, (2, 4))):
        np.testing.assert_allclose(x0[:until, :, :, f], 0.5 * (x0[:until, :, :, a] + x0[:until, :, :, b]), atol=2e-5)
        # ... while the prediction there is not the fill of the key predictions (each frame keeps its own noise)
        assert not np.allclose(pred[:until, :, :, f], 0.5 * (pred[:until, :, :, a] + pred[:until, :, :, b]),
                               atol=1e-3)
    assert not np.allclose(x0[until:, :, :, 1], 0.5 * (x0[until:, :, :, 0] + x0[until:, :, :, 2]), atol=1e-3)
    assert torch.isfinite(out).all()
    baseline = run_pipe(two_expert_pipe)
    with LatentProbe(two_expert_pipe, intervene=FrameTruncation(keep=F, until=until, fill_space="x0"),
                     capture=("x_t",)):
        assert torch.equal(run_pipe(two_expert_pipe), baseline)
    with pytest.raises(ValueError, match="fill_space"):
        FrameTruncation(keep=3, fill_space="latent")


def test_x0_fill_refuses_a_call_whose_timestep_is_not_the_schedulers_sigma() -> None:
    """x̂₀ = x_t − σ·v is exact only when the DiT call's t equals σ·T: the fill finds σ from the scheduler and
    refuses a call at another timestep (one line naming both), never converting with the wrong σ."""
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler

    from latent_probe.interventions.frame_truncation import _call_sigma

    sched = FlowMatchEulerDiscreteScheduler(shift=5.0)
    sched.set_timesteps(10)
    parts = SimpleNamespace(scheduler=sched)
    sched._step_index = 3
    assert _call_sigma(parts, sched.timesteps[3]) == float(sched.sigmas[3])
    assert _call_sigma(parts, float(sched.timesteps[3])) == float(sched.sigmas[3])
    with pytest.raises(ValueError, match=r"fill_space='x0': step 3's timestep .* does not match the scheduler's σ"):
        _call_sigma(parts, sched.timesteps[4])


def test_x0_fill_refuses_a_nan_timestep() -> None:
    """|t/T − σ| > tol is False for a NaN t: the check must refuse it, not pass it as a match."""
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler

    from latent_probe.interventions.frame_truncation import _call_sigma

    sched = FlowMatchEulerDiscreteScheduler(shift=5.0)
    sched.set_timesteps(10)
    sched._step_index = 3
    for t in (float("nan"), torch.tensor([float("nan")])):
        with pytest.raises(ValueError, match=r"fill_space='x0': step 3's timestep nan does not match"):
            _call_sigma(SimpleNamespace(scheduler=sched), t)
