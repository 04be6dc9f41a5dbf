"""layout= of the original analysis's drop-in (issue 9, item 5).

The test latents make the frame axis and the channel axis tell different
stories: frames f = base + f * delta with identical channels (adjacent frames
differ, channels do not), or the reverse.  Reading the wrong axis then gives
visibly different numbers (L2 exactly 0 / cosine 1 instead of clearly not).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import latent_probe
from latent_probe import analyze_latent_continuity, compute_cosine_similarity, compute_normalized_l2_distance
from latent_probe.metrics import continuity

B, C, F, H, W = 2, 4, 5, 6, 7


def frames_differ(dtype=torch.float64) -> torch.Tensor:
    """[B, C, F, H, W]: frame f = base + f * delta, the same in every channel."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((B, 1, 1, H, W))
    delta = 0.3 * rng.standard_normal((B, 1, 1, H, W))
    f = np.arange(F, dtype=np.float64).reshape(1, 1, F, 1, 1)
    x = np.broadcast_to(base + f * delta, (B, C, F, H, W))
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype)


def channels_differ(dtype=torch.float64) -> torch.Tensor:
    """[B, C, F, H, W]: channel c = base + c * delta, every frame the same."""
    return frames_differ(dtype).transpose(1, 2).contiguous()  # [B, F, C, H, W] values now read as b c f h w


def ref_pairs(fr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised L2 and cosine of frame pairs (f, f+1) of [F, D] float64 frames, one pair at a time."""
    l2, cos = [], []
    for i in range(fr.shape[0] - 1):
        a, b = fr[i], fr[i + 1]
        na, nb = np.sqrt(np.sum(a * a)), np.sqrt(np.sum(b * b))
        l2.append(np.sqrt(np.sum((a - b) ** 2)) / np.sqrt(na**2 + nb**2))
        cos.append(np.sum(a * b) / (na * nb))
    return np.array(l2), np.array(cos)


def frames_of(x: torch.Tensor, frame_axis: int) -> np.ndarray:
    """[F, D] float64 frames of one latent (no batch axis) whose frame axis is ``frame_axis``."""
    a = np.moveaxis(x.to(torch.float64).numpy(), frame_axis, 0)
    return a.reshape(a.shape[0], -1)


def ref_mean(x: torch.Tensor, frame_axis: int) -> tuple[float, float]:
    """Means over all pairs of every batch item of a 5-D latent (frame_axis counted without b)."""
    pairs = [ref_pairs(frames_of(x[b], frame_axis)) for b in range(x.shape[0])]
    return float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs]))


@pytest.fixture
def fresh_warning(monkeypatch):
    """Re-arm the once-per-process warning for this test."""
    monkeypatch.setattr(continuity, "_warned_5d_default", False)


def test_test_latent_tells_the_axes_apart():
    x = frames_differ()
    l2_frames, _ = ref_mean(x, 1)  # frame pairs: clearly apart
    l2_chans, cos_chans = ref_mean(x, 0)  # channel pairs: identical
    assert l2_frames > 0.05 and l2_chans == 0.0 and cos_chans == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-10, 1e-12), (torch.float32, 1e-6, 1e-6)])
def test_wan_5d_layout_per_pair_matches_reference(fresh_warning, dtype, rtol, atol):
    x = frames_differ(dtype)  # [B, C, F, H, W]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit layout never warns
        # per pair: a 2-frame slice holds exactly one pair per batch item
        for f in range(F - 1):
            for b in range(B):
                l2_ref, cos_ref = ref_pairs(frames_of(x[b, :, f : f + 2], 1))
                l2, cos = analyze_latent_continuity(x[b : b + 1, :, f : f + 2], f, layout="b c f h w")
                assert l2 == pytest.approx(l2_ref[0], rel=rtol) and cos == pytest.approx(cos_ref[0], abs=atol)
                # the frame drop-ins on correctly sliced frames agree
                assert compute_normalized_l2_distance(x[b, :, f], x[b, :, f + 1]) == pytest.approx(l2_ref[0], rel=rtol)
                assert compute_cosine_similarity(x[b, :, f], x[b, :, f + 1]) == pytest.approx(cos_ref[0], abs=atol)
        l2, cos = analyze_latent_continuity(x, 3, layout="b c f h w")
    l2_ref, cos_ref = ref_mean(x, 1)
    assert l2 == pytest.approx(l2_ref, rel=rtol) and cos == pytest.approx(cos_ref, abs=atol)
    assert l2 > 0.05  # the channel reading would give 0


@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-10, 1e-12), (torch.float32, 1e-6, 1e-6)])
def test_wan_4d_layout_per_pair_matches_reference(fresh_warning, dtype, rtol, atol):
    x = frames_differ(dtype)[1]  # [C, F, H, W]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for f in range(F - 1):
            l2_ref, cos_ref = ref_pairs(frames_of(x[:, f : f + 2], 1))
            l2, cos = analyze_latent_continuity(x[:, f : f + 2], f, layout="c f h w")
            assert l2 == pytest.approx(l2_ref[0], rel=rtol) and cos == pytest.approx(cos_ref[0], abs=atol)
        l2, cos = analyze_latent_continuity(x, layout="c f h w")
        l2_np, cos_np = analyze_latent_continuity(x.numpy(), layout="c f h w")  # numpy in
    l2_ref, cos_ref = ref_pairs(frames_of(x, 1))
    assert l2 == pytest.approx(l2_ref.mean(), rel=rtol) and cos == pytest.approx(cos_ref.mean(), abs=atol)
    assert (l2_np, cos_np) == (l2, cos)


def test_reverse_latent_and_other_layouts(fresh_warning):
    y = channels_differ()  # [B, C, F, H, W]: frames identical, channels differ
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        l2, cos = analyze_latent_continuity(y, layout="b c f h w")
        assert l2 == 0.0 and cos == pytest.approx(1.0, abs=1e-12)
        # the original's layout, given explicitly, and the same values in its memory order
        bfchw = y.permute(0, 2, 1, 3, 4).contiguous()
        assert analyze_latent_continuity(bfchw, layout="b f c h w") == (l2, cos)
        assert analyze_latent_continuity(bfchw[0], layout="f c h w")[0] == 0.0
        # extra batch axes (a step axis) are merged; the historical 4-D-under-"b c f h w" form still works
        s = torch.stack([y, y])
        assert analyze_latent_continuity(s, layout="s b c f h w") == pytest.approx((l2, cos), abs=1e-12)
        assert analyze_latent_continuity(s, layout="... c f h w") == pytest.approx((l2, cos), abs=1e-12)
        assert analyze_latent_continuity(y[0], layout="b c f h w") == analyze_latent_continuity(y[0], layout="c f h w")


def test_4d_without_layout_is_refused():
    x = frames_differ()[0]
    for arg in (x, x.numpy()):
        with pytest.raises(ValueError) as e:
            analyze_latent_continuity(arg)
        msg = str(e.value)
        assert "\n" not in msg and "layout=" in msg and "'c f h w'" in msg and "'f c h w'" in msg
    assert msg == (
        "a 4-D latent is ambiguous: pass layout='c f h w' (Wan2.2) or layout='f c h w' "
        "(the original analysis's [F, C, H, W])"
    )


@pytest.mark.parametrize("ndim", [3, 6])
def test_other_ranks_without_layout_are_refused(ndim):
    x = torch.randn((2,) * ndim)
    with pytest.raises(ValueError, match="needs layout=") as e:
        analyze_latent_continuity(x)
    assert "\n" not in str(e.value)


def test_5d_without_layout_warns_once_and_reads_b_f_c_h_w(fresh_warning):
    x = frames_differ()  # [B, C, F, H, W] values; without layout they are read as [B, F, C, H, W]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        first = analyze_latent_continuity(x, 0)
        second = analyze_latent_continuity(x, 1)
    ours = [w for w in rec if "layout=" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in rec]
    w = ours[0]
    assert issubclass(w.category, UserWarning) and w.filename == __file__  # points at the caller
    msg = str(w.message)
    assert "\n" not in msg and 'layout="b c f h w"' in msg
    assert msg == (
        "analyze_latent_continuity: no layout= given, reading this 5-D latent as the original "
        "analysis's [B, F, C, H, W]; Wan's pipeline latents are [B, C, F, H, W]: pass "
        'layout="b c f h w" (shown once per process)'
    )
    # the [B, F, C, H, W] reading: axis 1 (here the channels, all equal) is taken as frames
    l2_ref, cos_ref = ref_mean(x, 0)
    assert first == second
    assert first[0] == pytest.approx(l2_ref, abs=1e-12) and first[1] == pytest.approx(cos_ref, abs=1e-12)
    assert first[0] == 0.0 and analyze_latent_continuity(x, layout="b c f h w")[0] > 0.05
    # an original-layout latent gets the original's answer
    y = x.permute(0, 2, 1, 3, 4).contiguous()  # true [B, F, C, H, W]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = analyze_latent_continuity(y)
    assert not [w for w in rec if "layout=" in str(w.message)]  # already warned in this process
    assert got == analyze_latent_continuity(y, layout="b f c h w")
    assert got == pytest.approx(ref_mean(y, 0), rel=1e-10)


@pytest.mark.parametrize(
    "layout",
    ["b c f h", "b c f h w t", "b c f f w", "b x f h w", "b (c f) h w", "b c f h w w", "", "b c-f h w", "... ... c f h w"],
)
def test_invalid_layout_is_refused_in_one_line(layout):
    x = frames_differ()
    with pytest.raises(ValueError) as e:
        analyze_latent_continuity(x, layout=layout)
    msg = str(e.value)
    assert "\n" not in msg and "layout" in msg


def test_exported_from_package():
    assert latent_probe.analyze_latent_continuity is continuity.analyze_latent_continuity
