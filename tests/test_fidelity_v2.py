"""fidelity_v2: per-clip measures of organism v2 clips against independent references (rendered clips whose
motion is known, hand-computed tolerance units, float64 numpy nearest neighbours)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latent_probe.organism import fidelity_v2 as F2
from latent_probe.organism import motion_v2, videos_v2


def test_motion_error_is_rms_of_differences_in_tolerance_units():
    tol = motion_v2.TOLERANCE["v"]
    a, b = {"vx": 0.40, "vy": 0.0}, {"vx": 0.40 - 2 * tol, "vy": tol}
    assert F2.motion_error(a, b, 0) == pytest.approx(math.sqrt((4 + 1) / 2))
    assert F2.stat_errors(a, b, 0) == pytest.approx({"vx": 2 * tol, "vy": tol})
    # class 9: acceleration, start speed, vy (each in its own tolerance)
    s, r = {"accel": 0.010, "v0": 0.0, "vy": 0.0}, {"accel": 0.010 + motion_v2.TOLERANCE["accel"], "v0": 0.0, "vy": 0.0}
    assert F2.motion_error(s, r, 9) == pytest.approx(math.sqrt(1 / 3))
    assert math.isnan(F2.motion_error({"vx": math.nan, "vy": 0.0}, b, 0))    # object lost: undefined
    assert math.isnan(F2.motion_error({"vx": 0.4}, b, 0))                      # a key missing: undefined


@pytest.mark.parametrize("label,seed", [(0, 3), (3, 4), (4, 3), (6, 2), (9, 2)])
def test_motion_error_of_two_rendered_clips_matches_their_true_motion(label, seed):
    """Two training clips of one class: the measured error equals the error between their true parameters
    (the renderer's), within the estimators' accuracy (a small fraction of a tolerance)."""
    (ra, ma), (rb, mb) = videos_v2.render_clip(label, 1), videos_v2.render_clip(label, seed)
    sa, sb = motion_v2.measure(ra, label), motion_v2.measure(rb, label)
    ta, tb = motion_v2.truth(ma, 0), motion_v2.truth(mb, 0)
    measured, true = F2.motion_error(sa, sb, label), F2.motion_error(ta, tb, label)
    assert true > 0.5        # the two clips really differ (else the test says nothing)
    assert measured == pytest.approx(true, abs=0.1)
    assert F2.motion_error(sa, sa, label) == 0.0


def test_judge_passes_rendered_clips_and_fails_a_frozen_one():
    rgb, _ = videos_v2.render_clip(0, 5)
    assert F2.judge(rgb, 0)["pass"]
    frozen = rgb[:, :1].expand_as(rgb).contiguous()                # the square does not move: vx ≈ 0
    j = F2.judge(frozen, 0)
    assert not j["pass"] and "vx" in j["failed"]


def test_flicker_is_zero_for_constant_velocity_and_sees_a_displaced_frame():
    rgb, _ = videos_v2.render_clip(1, 3)
    fl = F2.frame_flicker(rgb, 1)
    assert fl["jitter"] < 0.2 and fl["brightness"] < 2e-3
    bad = rgb.clone()
    bad[:, 40] = rgb[:, 44]                                         # frame 40 shows frame 44: the disc jumps
    assert F2.frame_flicker(bad, 1)["jitter"] > fl["jitter"] + 0.15
    lit = rgb.clone()
    lit[:, 40] = (lit[:, 40] + 0.1).clamp(max=1)
    m = lit.double().mean((2, 3)).T
    ref = float(((m[2:] - 2 * m[1:-1] + m[:-2]) ** 2).mean().sqrt())   # the definition, by hand
    assert F2.frame_flicker(lit, 1)["brightness"] == pytest.approx(ref, rel=1e-9)
    assert math.isnan(F2.frame_flicker(rgb, 4)["jitter"])           # the bar: no centroid path


def test_nearest_latent_distance_matches_float64_brute_force():
    g = torch.Generator().manual_seed(0)
    z, pool = torch.randn(5, 16, 3, 4, 4, generator=g), torch.randn(9, 16, 3, 4, 4, generator=g)
    pool[3] = z[2]                                                  # an exact neighbour: distance 0
    a, b = z.flatten(1).double().numpy(), pool.flatten(1).double().numpy()
    ref = np.sqrt(((a[:, None] - b[None]) ** 2).mean(-1).min(1))
    got = F2.nearest_latent_distance(z, pool).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-6)
    assert got[2] < 1e-6


def test_score_clip_against_itself_and_a_shifted_clip():
    rgb, _ = videos_v2.render_clip(2, 7)
    same = F2.score_clip(rgb, rgb, 2)
    # the clip's statistics are measured twice (as clip and as reference) and need not round identically: one test
    # order gave 5.9e-15 (cause not pinned down), so "0" is 0 up to rounding, not bit-exact
    assert same["psnr"] == math.inf and same["motion_error"] <= 1e-12 and same["motion_pass"] == 1.0
    other, _ = videos_v2.render_clip(2, 8)
    s = F2.score_clip(other, rgb, 2)
    assert s["psnr"] < 40 and s["err_vy"] == pytest.approx(abs(s["stat_vy"] - motion_v2.measure(rgb, 2)["vy"]))
