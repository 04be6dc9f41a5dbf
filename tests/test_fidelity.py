"""Fidelity measures against independent references: the renderer's true motion, float64 numpy, hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latent_probe.errors import LatentProbeError
from latent_probe.organism import fidelity as F
from latent_probe.organism import videos


@pytest.fixture(scope="module")
def clips():
    labels = torch.arange(8).repeat(2)
    return videos.render(labels, torch.Generator().manual_seed(3))


def test_rendered_clips_score_near_zero_motion_error_against_their_true_motion(clips):
    errs = [F.motion_truth_error(clips.rgb[b], clips.motion, b) for b in range(len(clips.motion.labels))]
    assert max(errs) < 0.2                          # pans (global gradient flow): the loosest floor
    obj = [e for e, l in zip(errs, clips.motion.labels.tolist()) if l in (0, 1, 2, 3, 4, 5)]
    assert max(obj) < 0.01


def halved(rgb: torch.Tensor) -> torch.Tensor:
    """The same clip with its motion at half speed: frame f shows the original frame f/2 (linear blend)."""
    f = rgb.shape[1]
    out = []
    for i in range(f):
        t = i / 2
        lo, w = int(math.floor(t)), t - math.floor(t)
        out.append(rgb[:, lo] if w == 0 else (1 - w) * rgb[:, lo] + w * rgb[:, lo + 1])
    return torch.stack(out, 1)


def test_motion_halved_is_flagged_while_the_clip_against_itself_scores_zero(clips):
    for b in (0, 1, 2):                             # the object classes
        rgb, label = clips.rgb[b], int(clips.motion.labels[b])
        assert F.motion_error(rgb, rgb, label) < 1e-12
        speed = float(clips.motion.velocity[b, 0].norm())
        err = F.motion_error(halved(rgb), rgb, label)
        assert err == pytest.approx(speed / 2, abs=0.05)
        assert err > 10 * F.motion_truth_error(rgb, clips.motion, b)


def test_flicker_is_zero_for_constant_motion_and_flags_a_brightness_flicker(clips):
    rgb, label = clips.rgb[0], int(clips.motion.labels[0])
    base = F.frame_flicker(rgb, label)
    assert base["brightness"] < 1e-3
    sign = torch.tensor([(-1.0) ** f for f in range(rgb.shape[1])])
    flick = F.frame_flicker((rgb + 0.05 * sign[None, :, None, None]).clamp(0, 1), label)
    assert flick["brightness"] > 0.1                 # ±0.05 alternating → second difference ≈ 0.2
    # three frame pairs swapped: the path jumps back and forth
    swapped = rgb.clone()
    for i in (4, 10, 16):
        swapped[:, [i, i + 1]] = rgb[:, [i + 1, i]]
    assert F.frame_flicker(swapped, label)["jitter"] > base["jitter"] + 0.3


def test_flicker_of_a_linear_ramp_in_brightness_is_zero():
    f = torch.linspace(0, 1, 21, dtype=torch.float64)
    rgb = (0.2 + 0.5 * f)[None, :, None, None].expand(3, 21, 16, 16)
    assert F.frame_flicker(rgb)["brightness"] < 1e-12


def test_line_fit_residual_is_the_model_check(clips):
    rgb, label = clips.rgb[0], int(clips.motion.labels[0])
    good = F.motion_fidelity(rgb, label)
    assert good["visible"] == 1.0 and good["residual"] < 0.3
    broken = rgb.clone()
    broken[:, 10:] = rgb[:, :11]                    # the object jumps back half-way
    assert F.motion_fidelity(broken, label)["residual"] > max(0.5, 4 * good["residual"])


def test_key_and_filled_psnr_split_the_frames(clips):
    ref = clips.rgb[0]
    g = torch.Generator().manual_seed(1)
    clip = ref.clone()
    keys = [0, 10, 20]
    noise = 0.1 * torch.randn(ref.shape, generator=g)
    filled = [i for i in range(21) if i not in keys]
    clip[:, filled] = (ref[:, filled] + noise[:, filled])
    out = F.key_filled_psnr(clip, ref, keys)
    assert out["key_psnr"] == math.inf
    mse = float(((clip[:, filled].double() - ref[:, filled].double()) ** 2).mean())
    assert out["filled_psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)
    assert F.psnr(clip, ref) < out["filled_psnr"] + 10 * math.log10(21 / 18) + 1e-9


def frechet_reference(a: np.ndarray, b: np.ndarray) -> float:
    """float64 numpy via symmetric square roots: tr((Σa^½ Σb Σa^½)^½) = tr((Σa Σb)^½)."""
    ma, mb = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    ra = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = ra @ sb @ ra
    lam = np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)
    return float(((ma - mb) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(lam).sum())


def test_frechet_distance_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(30, 5)) @ rng.normal(size=(5, 5)) + 0.7
    assert F.frechet_distance(a, b) == pytest.approx(frechet_reference(a, b), rel=1e-8)
    assert F.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # 1-D closed form: (μa − μb)² + (σa − σb)²
    x, y = rng.normal(1, 2, size=(50, 1)), rng.normal(-1, 0.5, size=(60, 1))
    ref = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert F.frechet_distance(x, y) == pytest.approx(ref, rel=1e-10)


def test_frechet_distance_refuses_bad_features():
    with pytest.raises(LatentProbeError, match="N, M ≥ 2"):
        F.frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(LatentProbeError, match="non-finite"):
        F.frechet_distance(np.array([[0.0], [np.nan]]), np.zeros((4, 1)))


def test_distribution_distances_separate_halved_motion_from_training_clips():
    g = torch.Generator().manual_seed(5)
    labels = torch.zeros(24, dtype=torch.long)                 # red square moving right
    train = videos.render(labels, g)
    held = videos.render(labels, torch.Generator().manual_seed(6))
    feats = lambda rgb: np.stack([F.motion_features(r, 0) for r in rgb])   # noqa: E731
    f_train, f_held = feats(train.rgb), feats(held.rgb)
    f_half = feats(torch.stack([halved(r) for r in held.rgb]))
    assert F.frechet_distance(f_half, f_train) > 5 * F.frechet_distance(f_held, f_train)
    nn_held = F.nearest_feature_distance(f_held, f_train)
    nn_half = F.nearest_feature_distance(f_half, f_train)
    assert np.median(nn_half) > 3 * np.median(nn_held)
    ref = np.array([min(np.linalg.norm(r - p) for p in f_train) for r in f_held])
    np.testing.assert_allclose(nn_held, ref, rtol=1e-12)
    basis = F.PcaBasis.fit(train.rgb, k=4)
    assert basis.scores(train.rgb).shape == (24, 4)
    np.testing.assert_allclose(basis.scores(train.rgb).mean(0), 0, atol=1e-9)


def test_pair_floor_takes_every_pair_within_a_group_only():
    clips = [torch.full((3, 2, 2, 2), v) for v in (0.0, 0.1, 0.3, 0.6)]
    out = F.pair_floor(clips, [0, 0, 1, 1], lambda a, b: float((a - b).abs().mean()))
    np.testing.assert_allclose(sorted(out), [0.1, 0.3])
