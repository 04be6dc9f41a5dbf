"""Metric kernels against plain float64 numpy references written out per pair."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from latent_probe.metrics import (
    adjacent_frame_metrics,
    analyze_latent_continuity,
    compute_cosine_similarity,
    compute_normalized_l2_distance,
    cond_uncond_gap,
    frame_pair_stats,
    frame_similarity_matrix,
    lag_similarity,
    noise_floor,
    one_minus_cos,
    step_change,
)
from latent_probe.metrics import engine, formulas, layout, triton_kernels


# --------------------------------------------------------------------------- #
# independent references (float64 numpy, one pair at a time)
# --------------------------------------------------------------------------- #
def frames_bcfhw(x: torch.Tensor | np.ndarray, b: int) -> np.ndarray:
    """[F, D] float64 frames of batch item b of a [B, C, F, H, W] latent."""
    a = x.to(torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
    a = a[b]
    return a.transpose(1, 0, 2, 3).reshape(a.shape[1], -1)


def ref_pairs(fr: np.ndarray, lag: int = 1) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {k: [] for k in ("l2", "cos", "omc", "ratio", "sq_a", "dot", "dd")}
    for f in range(fr.shape[0] - lag):
        a, b = fr[f], fr[f + lag]
        na, nb = np.sqrt(np.sum(a * a)), np.sqrt(np.sum(b * b))
        if na == 0 or nb == 0:
            for k in ("l2", "cos", "omc", "ratio"):
                out[k].append(np.nan)
        else:
            out["l2"].append(np.sqrt(np.sum((a - b) ** 2)) / np.sqrt(na**2 + nb**2))
            out["cos"].append(np.sum(a * b) / (na * nb))
            # 1 - cos from the unit vectors: no cancellation, independent of the kernel's formula
            out["omc"].append(0.5 * np.sum((a / na - b / nb) ** 2))
            out["ratio"].append(nb / na)
        out["sq_a"].append(np.sum(a * a))
        out["dot"].append(np.sum(a * b))
        out["dd"].append(np.sum((a - b) ** 2))
    return {k: np.array(v) for k, v in out.items()}


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref) / np.abs(ref)))


def rng_latent(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def near_identical(shape: tuple[int, ...], eps: float, seed: int = 0) -> torch.Tensor:
    """[B, C, F, H, W] float32 whose frames are x0 + eps * noise_f (b = a + eps*noise)."""
    g = torch.Generator().manual_seed(seed)
    B, C, F, H, W = shape
    base = torch.randn((B, C, 1, H, W), generator=g)
    return base + eps * torch.randn(shape, generator=g)


# --------------------------------------------------------------------------- #
# adjacent metrics
# --------------------------------------------------------------------------- #
# Absolute error allowed in cos on the CPU default path: there a.b is recovered
# from the direct float32-block sums (polarisation), whose rounding (~1e-7 per
# row, less for frames of many rows) shows up in cos undiminished.
ATOL_COS = 3e-7


def check_against_ref(x: torch.Tensor, m, lag: int = 1, rtol_l2=1e-6, atol_cos=ATOL_COS, rtol_omc=1e-5):
    for b in range(x.shape[0]):
        r = ref_pairs(frames_bcfhw(x, b), lag)
        np.testing.assert_allclose(m.l2[b], r["l2"], rtol=rtol_l2)
        np.testing.assert_allclose(m.cos[b], r["cos"], rtol=0, atol=atol_cos)
        np.testing.assert_allclose(m.one_minus_cos[b], r["omc"], rtol=rtol_omc, atol=1e-12)
        np.testing.assert_allclose(m.norm_ratio[b], r["ratio"], rtol=1e-6)
        ok = ~np.isnan(r["l2"])  # means leave out NaN pairs (zero frames)
        np.testing.assert_allclose(m.l2_mean[b], np.mean(r["l2"][ok]) if ok.any() else np.nan, rtol=1e-6)
        np.testing.assert_allclose(m.cos_mean[b], np.mean(r["cos"][ok]) if ok.any() else np.nan, rtol=0, atol=atol_cos)


def test_random_latent_matches_reference():
    x = rng_latent((2, 4, 7, 12, 20), seed=1)
    m = adjacent_frame_metrics(x, "b c f h w")
    assert m.l2.shape == (2, 6) and m.l2_mean.shape == (2,) and m.zero_frames.shape == (2, 7)
    assert m.l2.dtype == np.float64 and m.zero_frames.dtype == bool
    check_against_ref(x, m)
    assert not m.zero_frames.any()


def test_direct_dot_mode_is_tighter():
    x = rng_latent((2, 4, 7, 12, 20), seed=1)
    st = frame_pair_stats(x, dot="direct")
    from latent_probe.metrics.formulas import pair_metrics

    pm = pair_metrics(st)
    for b in range(2):
        r = ref_pairs(frames_bcfhw(x, b))
        np.testing.assert_allclose(pm.cos[b].numpy(), r["cos"], rtol=0, atol=2e-8)
        np.testing.assert_allclose(st.dot[b].numpy(), r["dot"], rtol=0, atol=1e-7 * r["sq_a"].max())
        np.testing.assert_allclose(pm.l2[b].numpy(), r["l2"], rtol=1e-6)


def test_random_latent_correlated_frames_and_scaled_frames(monkeypatch):
    # correlated frames of very different norms (ratios 400, 20): exercises the
    # direct-dot fallback of the polarised dot product on the CPU
    g = torch.Generator().manual_seed(5)
    base = torch.randn((1, 3, 1, 16, 16), generator=g)
    scale = torch.tensor([1.0, 1.5, 20.0, 0.05, 1.0, 3.0]).view(1, 1, 6, 1, 1)
    x = (base + 0.5 * torch.randn((1, 3, 6, 16, 16), generator=g)) * scale
    m = adjacent_frame_metrics(x)
    check_against_ref(x, m, atol_cos=2e-7)
    # without the fallback the polarised cosine of the 400x pair is visibly off
    monkeypatch.setattr(formulas, "POLAR_MAX_RATIO", float("inf"))
    bad = adjacent_frame_metrics(x)
    r = ref_pairs(frames_bcfhw(x, 0))
    assert abs(bad.cos[0, 2] - r["cos"][2]) > 2e-7
    monkeypatch.undo()
    st = frame_pair_stats(x)
    r = ref_pairs(frames_bcfhw(x, 0))
    np.testing.assert_allclose(st.dot[0].numpy(), r["dot"], rtol=0, atol=1e-7 * np.sqrt(r["sq_a"] * np.roll(r["sq_a"], -1)).max())
    for mode in ("direct", "polar"):
        st2 = frame_pair_stats(x, dot=mode)
        np.testing.assert_allclose(st2.diff_sq.numpy(), st.diff_sq.numpy(), rtol=1e-12)


@pytest.mark.parametrize("eps", [1e-3, 1e-4])
def test_nearly_identical_frames_realistic_size(eps):
    # one 720p Wan frame is 16 x 90 x 160; four frames keep the test fast
    x = near_identical((1, 16, 4, 90, 160), eps, seed=2)
    m = adjacent_frame_metrics(x)
    r = ref_pairs(frames_bcfhw(x, 0))
    assert rel_err(m.l2[0], r["l2"]) <= 1e-6
    assert rel_err(m.one_minus_cos[0], r["omc"]) <= 1e-5
    # cosine itself: absolute error far below the size of 1 - cos
    assert np.max(np.abs(m.cos[0] - r["cos"])) <= 1e-3 * np.min(r["omc"])
    st = frame_pair_stats(x)
    assert rel_err(st.diff_sq[0].numpy(), r["dd"]) <= 2e-6
    assert rel_err(st.sq[0, :3].numpy(), r["sq_a"]) <= 1e-6


def test_identity_formula_would_fail_the_precision_test():
    # guards the test itself: the cancelling identity ||a||^2+||b||^2-2a.b in float32
    # is far outside the tolerance used above
    x = near_identical((1, 16, 2, 90, 160), 1e-4, seed=3)
    fr32 = x[0].permute(1, 0, 2, 3).reshape(2, -1)
    a, b = fr32[0], fr32[1]
    dd_identity = (a * a).sum() + (b * b).sum() - 2 * (a * b).sum()
    r = ref_pairs(frames_bcfhw(x, 0))
    assert abs(float(dd_identity) / r["dd"][0] - 1) > 1e-2
    st = frame_pair_stats(x)
    assert abs(float(st.diff_sq[0, 0]) / r["dd"][0] - 1) < 2e-6


def test_pair_metrics_torch_and_numpy_agree():
    x = rng_latent((2, 3, 5, 4, 4), seed=22)
    x[0, :, 1] = 0
    x[1, :, 3] *= 50.0  # unbalanced norms: the other 1 - cos branch
    st = frame_pair_stats(x)
    a = formulas.pair_metrics(st)
    b = formulas.pair_metrics((st.sq.numpy(), st.dot.numpy(), st.diff_sq.numpy(), st.lag))
    for u, v in zip(a, b):
        assert isinstance(v, np.ndarray)
        np.testing.assert_array_equal(u.numpy(), v)
    check_against_ref(x, adjacent_frame_metrics(x))


def test_one_minus_cos_function():
    sa = torch.tensor([4.0, 1.0, 0.0])
    sb = torch.tensor([4.0, 4.0, 1.0])
    dd = torch.tensor([0.0, 1.0, 1.0])  # identical; b = 2a; zero frame
    v = one_minus_cos(sa, sb, dd).numpy()
    np.testing.assert_allclose(v[:2], [0.0, 0.0], atol=1e-15)
    assert np.isnan(v[2])
    # orthogonal unit vectors: 1 - cos = 1
    assert float(one_minus_cos(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([2.0]))) == pytest.approx(1.0)


def test_zero_frames_nan_and_flag_without_warnings():
    x = rng_latent((2, 3, 6, 8, 8), seed=4)
    x[0, :, 2] = 0
    x[1, :, 5] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = adjacent_frame_metrics(x)
        S = frame_similarity_matrix(x)
        lag = lag_similarity(x, 2)
    assert m.zero_frames.tolist() == [[False, False, True, False, False, False], [False] * 5 + [True]]
    assert np.isnan(m.l2[0, [1, 2]]).all() and np.isnan(m.cos[0, [1, 2]]).all()
    assert np.isnan(m.one_minus_cos[0, [1, 2]]).all() and np.isnan(m.norm_ratio[0, [1, 2]]).all()
    assert np.isfinite(m.l2[0, [0, 3, 4]]).all()
    assert np.isnan(m.l2[1, 4]) and np.isfinite(m.l2[1, :4]).all()
    check_against_ref(x, m)  # NaNs compare equal in assert_allclose
    np.testing.assert_allclose(m.l2_mean[0], np.mean(m.l2[0, [0, 3, 4]]))
    assert np.isnan(S[0, 2]).all() and np.isnan(S[0, :, 2]).all() and S[0, 1, 1] == 1.0
    assert np.isnan(lag.l2[0, [0, 2]]).all() and np.isfinite(lag.l2[0, [1, 3]]).all()


def test_all_zero_latent():
    x = torch.zeros(1, 2, 3, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = adjacent_frame_metrics(x)
        l2, cos = analyze_latent_continuity(x, 0, layout="b c f h w")
    assert m.zero_frames.all() and np.isnan(m.l2).all() and np.isnan(m.l2_mean).all()
    assert np.isnan(l2) and np.isnan(cos)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    x = rng_latent((2, 4, 5, 10, 12), seed=6, dtype=dtype)
    m = adjacent_frame_metrics(x)
    check_against_ref(x, m)  # reference on the upcast values
    y = near_identical((1, 4, 4, 30, 40), 1e-2, seed=7).to(dtype)
    my = adjacent_frame_metrics(y)
    r = ref_pairs(frames_bcfhw(y, 0))
    assert rel_err(my.l2[0], r["l2"]) <= 1e-6
    assert rel_err(my.one_minus_cos[0], r["omc"]) <= 1e-5


def test_float64_and_numpy_inputs():
    x = rng_latent((1, 3, 4, 6, 6), seed=8, dtype=torch.float64)
    m = adjacent_frame_metrics(x)
    r = ref_pairs(frames_bcfhw(x, 0))
    np.testing.assert_allclose(m.l2[0], r["l2"], rtol=1e-12)
    np.testing.assert_allclose(m.cos[0], r["cos"], atol=1e-14)
    arr = x.to(torch.float32).numpy()
    arr.flags.writeable = False  # e.g. a read-only memmap
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mn = adjacent_frame_metrics(arr)
    np.testing.assert_allclose(mn.l2, m.l2, rtol=1e-6)


def test_inputs_requiring_grad():
    x = rng_latent((1, 2, 4, 6, 6), seed=23).requires_grad_(True)
    m = adjacent_frame_metrics(x)
    check_against_ref(x.detach(), m)
    assert frame_similarity_matrix(x).shape == (1, 4, 4)
    assert np.isfinite(step_change(x[0].permute(1, 0, 2, 3)).rel_l1[1:]).all()  # frames as steps
    assert cond_uncond_gap(x, x * 0.5).per_step[0] == pytest.approx(0.5, rel=1e-6)


def test_layouts_agree_and_canonical_view_is_free():
    x = rng_latent((2, 4, 6, 10, 14), seed=9)  # b c f h w
    m1 = adjacent_frame_metrics(x, "b c f h w")
    m2 = adjacent_frame_metrics(x.permute(0, 2, 1, 3, 4).contiguous(), "b f c h w")
    m3 = adjacent_frame_metrics(x.permute(0, 2, 3, 4, 1).contiguous(), "b f h w c")
    for m in (m2, m3):
        np.testing.assert_allclose(m.l2, m1.l2, rtol=1e-6)
        np.testing.assert_allclose(m.cos, m1.cos, atol=ATOL_COS)
    # the Wan layout is rearranged without a copy
    y, bshape = layout.canonicalize(x, "b c f h w")
    assert y.data_ptr() == x.data_ptr() and tuple(y.shape) == (2, 4, 6, 140) and bshape == (2,)
    # a non-contiguous input still gives the right answer
    xt = x.transpose(3, 4)
    mt = adjacent_frame_metrics(xt, "b c f w h")
    np.testing.assert_allclose(mt.l2, m1.l2, rtol=1e-6)


def test_step_axis_is_a_batch_axis():
    xs = rng_latent((3, 2, 4, 5, 6, 6), seed=10)  # s b c f h w
    m = adjacent_frame_metrics(xs, "b c f h w")
    assert m.l2.shape == (3, 2, 4) and m.l2_mean.shape == (3, 2)
    for s in range(3):
        ms = adjacent_frame_metrics(xs[s], "b c f h w")
        np.testing.assert_allclose(m.l2[s], ms.l2, rtol=1e-12)
    m6 = adjacent_frame_metrics(xs, "s b c f h w")
    np.testing.assert_allclose(m6.l2, m.l2, rtol=1e-12)


def test_multiple_chunks_and_blocks(monkeypatch):
    # small chunks: pairs straddle chunk boundaries; rows split into blocks (L > MAX_BLOCK)
    monkeypatch.setattr(engine, "CHUNK_ELEMS", 3000)
    x = rng_latent((2, 3, 5, 40, 60), seed=11)  # L = 2400 -> blocks of 1200
    assert engine.block_len(2400) == 1200
    m = adjacent_frame_metrics(x)
    check_against_ref(x, m)
    for dt in (torch.float16, torch.bfloat16):
        xh = x.to(dt)
        check_against_ref(xh, adjacent_frame_metrics(xh))


def test_long_rows_without_divisor():
    # frame of a prime number of values > MAX_BLOCK: rows reduced whole (cascade sum)
    D = 4099
    x = rng_latent((1, 5, D), seed=12)
    m = adjacent_frame_metrics(x, "b f d", frame_axes=("d",))
    r = ref_pairs(x[0].double().numpy())
    np.testing.assert_allclose(m.l2[0], r["l2"], rtol=1e-6)
    np.testing.assert_allclose(m.cos[0], r["cos"], atol=ATOL_COS)


# --------------------------------------------------------------------------- #
# lag similarity and the frame-similarity matrix
# --------------------------------------------------------------------------- #
def test_lag_similarity():
    x = rng_latent((2, 3, 8, 6, 10), seed=13)
    adj = adjacent_frame_metrics(x)
    l1 = lag_similarity(x, 1)
    np.testing.assert_array_equal(l1.l2, adj.l2)
    np.testing.assert_array_equal(l1.cos, adj.cos)
    for k in (2, 5, 7):
        lk = lag_similarity(x, k)
        assert lk.l2.shape == (2, 8 - k) and lk.lag == k
        check_against_ref(x, lk, lag=k)
    with pytest.raises(ValueError):
        lag_similarity(x, 8)


def test_frame_similarity_matrix():
    x = rng_latent((2, 3, 6, 8, 8), seed=14)
    x[:, :, 3] = x[:, :, 2] * 2.0 + 0.01 * x[:, :, 3]  # a highly similar pair
    S = frame_similarity_matrix(x)
    assert S.shape == (2, 6, 6) and S.dtype == np.float64
    np.testing.assert_array_equal(np.diagonal(S, axis1=1, axis2=2), 1.0)
    np.testing.assert_array_equal(S, np.swapaxes(S, 1, 2))
    for b in range(2):
        fr = frames_bcfhw(x, b)
        n = np.sqrt((fr * fr).sum(1))
        ref = (fr @ fr.T) / np.outer(n, n)
        np.testing.assert_allclose(S[b], ref, atol=1e-12)
    adj = adjacent_frame_metrics(x)
    np.testing.assert_allclose(np.diagonal(S, offset=1, axis1=1, axis2=2), adj.cos, atol=ATOL_COS)


# --------------------------------------------------------------------------- #
# step change, cond/uncond gap, noise floor
# --------------------------------------------------------------------------- #
def ref_step_change(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rel, ratio = [np.nan], [np.nan]
    for s in range(1, p.shape[0]):
        rel.append(np.abs(p[s] - p[s - 1]).sum() / np.abs(p[s - 1]).sum())
        ratio.append(np.sqrt((p[s] ** 2).sum()) / np.sqrt((p[s - 1] ** 2).sum()))
    return np.array(rel), np.array(ratio)


def test_step_change_tensor_and_sequence():
    g = torch.Generator().manual_seed(15)
    p = torch.randn((5, 1, 4, 3, 10, 12), generator=g)
    p[3] = p[2] * (1 + 1e-5) + 1e-5 * torch.randn(p[2].shape, generator=g)  # almost no change
    rel_ref, ratio_ref = ref_step_change(p.double().numpy())
    sc = step_change(p)
    assert sc.rel_l1.shape == (5,) and np.isnan(sc.rel_l1[0]) and np.isnan(sc.norm_ratio[0])
    np.testing.assert_allclose(sc.rel_l1[1:], rel_ref[1:], rtol=1e-6)
    np.testing.assert_allclose(sc.norm_ratio[1:], ratio_ref[1:], rtol=1e-7)
    sq = step_change(list(p))
    np.testing.assert_allclose(sq.rel_l1, sc.rel_l1, rtol=1e-9)
    np.testing.assert_allclose(sq.norm_ratio, sc.norm_ratio, rtol=1e-9)
    sh = step_change(p.to(torch.bfloat16))
    rh, qh = ref_step_change(p.to(torch.bfloat16).double().numpy())
    np.testing.assert_allclose(sh.rel_l1[1:], rh[1:], rtol=1e-6)
    np.testing.assert_allclose(sh.norm_ratio[1:], qh[1:], rtol=1e-7)
    one = step_change(p[:1])
    assert one.rel_l1.shape == (1,) and np.isnan(one.rel_l1).all()
    z = p.clone()
    z[1] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sz = step_change(z)
    assert np.isnan(sz.rel_l1[2]) and np.isnan(sz.norm_ratio[2]) and sz.norm_ratio[1] == 0.0


def test_cond_uncond_gap():
    g = torch.Generator().manual_seed(16)
    c = torch.randn((2, 4, 5, 6, 8), generator=g)
    u = c + 0.1 * torch.randn(c.shape, generator=g)
    u[1, :, 2] = c[1, :, 2]  # identical frame: gap 0
    gap = cond_uncond_gap(c, u)
    assert gap.per_step.shape == (2,) and gap.per_frame.shape == (2, 5)
    c64, u64 = c.double().numpy(), u.double().numpy()
    for b in range(2):
        fc = c64[b].transpose(1, 0, 2, 3).reshape(5, -1)
        fu = u64[b].transpose(1, 0, 2, 3).reshape(5, -1)
        for f in range(5):
            ref = np.sqrt(((fc[f] - fu[f]) ** 2).sum()) / np.sqrt((fc[f] ** 2).sum())
            assert gap.per_frame[b, f] == pytest.approx(ref, rel=1e-6, abs=1e-12)
        assert gap.per_step[b] == pytest.approx(np.sqrt(((fc - fu) ** 2).sum() / (fc**2).sum()), rel=1e-6)
    assert gap.per_frame[1, 2] == 0.0
    # stacked steps: leading axis is a batch axis
    gs = cond_uncond_gap(torch.stack([c, u]), torch.stack([u, c]))
    assert gs.per_step.shape == (2, 2)
    np.testing.assert_allclose(gs.per_step[0], gap.per_step, rtol=1e-12)


def test_noise_floor():
    assert noise_floor(0.5) == pytest.approx(0.5)
    assert noise_floor(0.0) == 1.0 and noise_floor(1.0) == 0.0
    np.testing.assert_allclose(noise_floor(np.array([0.2, 0.8])), [0.64 / 0.68, 0.04 / 0.68])
    assert noise_floor(0.6, alpha=0.8) == pytest.approx(0.64 / 1.0)
    assert noise_floor(0.3) == pytest.approx(noise_floor(0.3, alpha=0.7))
    # Monte Carlo: static content x0 (unit variance per element), independent noise per frame
    g = torch.Generator().manual_seed(17)
    D = 400_000
    x0 = torch.randn(D, generator=g, dtype=torch.float64)
    for sigma in (0.3, 0.7, 0.9):
        frames = torch.stack([(1 - sigma) * x0 + sigma * torch.randn(D, generator=g, dtype=torch.float64) for _ in range(2)])
        cos = compute_cosine_similarity(frames[0], frames[1])
        assert cos == pytest.approx(noise_floor(sigma), abs=5e-3)


# --------------------------------------------------------------------------- #
# drop-ins with the original analysis's names
# --------------------------------------------------------------------------- #
def test_drop_in_pair_functions():
    g = torch.Generator().manual_seed(18)
    a = torch.randn((4, 10, 12), generator=g)
    b = a + 0.3 * torch.randn((4, 10, 12), generator=g)
    a64, b64 = a.double().numpy().ravel(), b.double().numpy().ravel()
    d_ref = np.sqrt(((a64 - b64) ** 2).sum()) / np.sqrt((a64**2).sum() + (b64**2).sum())
    c_ref = (a64 * b64).sum() / np.sqrt((a64**2).sum() * (b64**2).sum())
    d = compute_normalized_l2_distance(a, b)
    c = compute_cosine_similarity(a, b)
    assert isinstance(d, float) and isinstance(c, float)
    assert d == pytest.approx(d_ref, rel=1e-6) and c == pytest.approx(c_ref, abs=1e-7)
    assert np.isnan(compute_cosine_similarity(a, torch.zeros_like(a)))
    with pytest.raises(ValueError):
        compute_cosine_similarity(a, a[:2])


def test_analyze_latent_continuity():
    x = rng_latent((2, 5, 3, 6, 8), seed=19)  # b f c h w (the original's layout)
    l2, cos = analyze_latent_continuity(x, 7)
    refs = [ref_pairs(x[b].double().numpy().reshape(5, -1)) for b in range(2)]
    assert l2 == pytest.approx(np.mean([r["l2"] for r in refs]), rel=1e-6)
    assert cos == pytest.approx(np.mean([r["cos"] for r in refs]), abs=ATOL_COS)
    l2s, coss = analyze_latent_continuity(x[1], 7, layout="f c h w")  # [F, C, H, W]
    assert l2s == pytest.approx(np.mean(refs[1]["l2"]), rel=1e-6)
    assert coss == pytest.approx(np.mean(refs[1]["cos"]), abs=ATOL_COS)
    wan = x.permute(0, 2, 1, 3, 4).contiguous()  # b c f h w
    l2w, cosw = analyze_latent_continuity(wan, 7, layout="b c f h w")
    assert l2w == pytest.approx(l2, rel=1e-6) and cosw == pytest.approx(cos, abs=ATOL_COS)
    assert analyze_latent_continuity(wan[0], 7, layout="b c f h w")[0] == pytest.approx(np.mean(refs[0]["l2"]), rel=1e-6)


# --------------------------------------------------------------------------- #
# layout errors and the optional Triton module
# --------------------------------------------------------------------------- #
def test_layout_errors():
    x = rng_latent((1, 2, 3, 4, 4))
    with pytest.raises(ValueError):
        adjacent_frame_metrics(x, "b c h w")  # no f
    with pytest.raises(ValueError):
        adjacent_frame_metrics(x[0, 0], "b c f h w")  # too few axes
    with pytest.raises(ValueError):
        adjacent_frame_metrics(x, "b f f h w")
    with pytest.raises(TypeError):
        adjacent_frame_metrics(x.to(torch.int32))
    with pytest.raises(ValueError):
        frame_pair_stats(x, lag=0)


def test_triton_module_imports_and_cpu_dispatch():
    assert triton_kernels.is_available() == (triton_kernels._HAS_TRITON and torch.cuda.is_available())
    assert triton_kernels.choose_split(20, 240, 132) == 32
    assert triton_kernels.choose_split(800, 240, 132) == 1
    assert triton_kernels.choose_split(1, 3, 132) == 2
    if not triton_kernels.is_available():
        with pytest.raises(RuntimeError):
            triton_kernels.fused_pair_stats(torch.zeros(1, 1, 2, 4))
    x = rng_latent((1, 2, 3, 4, 4))
    st = frame_pair_stats(x, backend="torch")
    st2 = frame_pair_stats(x)  # CPU tensor: torch path whatever is installed
    np.testing.assert_array_equal(st.sq.numpy(), st2.sq.numpy())


@pytest.mark.skipif(not triton_kernels.is_available(), reason="needs triton and CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_kernel_matches_reference(dtype):
    dev = torch.device("cuda")
    x = near_identical((1, 16, 6, 90, 160), 1e-4, seed=20).to(dtype)
    xs = [x, rng_latent((3, 4, 5, 18, 30), seed=21, dtype=dtype)]
    for xx in xs:
        for lag in (1, 2):
            m = lag_similarity(xx.to(dev), lag)
            for b in range(xx.shape[0]):
                r = ref_pairs(frames_bcfhw(xx, b), lag)
                assert rel_err(m.l2[b], r["l2"]) <= 1e-6
                assert rel_err(m.one_minus_cos[b], r["omc"]) <= 1e-5
                np.testing.assert_allclose(m.cos[b], r["cos"], atol=1e-7)
    y = layout.canonicalize(x.to(dev)).y
    for split in (1, 4, 32):
        out = triton_kernels.fused_pair_stats(y, 1, split=split).cpu().numpy()
        r = ref_pairs(frames_bcfhw(x, 0))
        assert rel_err(out[0, 3, :5], r["l2"]) <= 1e-6
