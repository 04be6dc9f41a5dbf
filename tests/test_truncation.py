"""FrameTruncation (issue 5): key frames only before ``until``, full frames after; feasibility; comparison."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import wan
from conftest import run_pipe
from wan.configs import tiny_i2v_config, tiny_t2v_config, tiny_ti2v_config

from latent_probe import LatentProbe, Run
from latent_probe.app.compare import compare_truncation
from latent_probe.metrics.feasibility import truncation_feasibility
from latent_probe.interventions import FrameTruncation, default_keyframes, interpolate_frames
from latent_probe.views.truncation_text import format_comparison, format_feasibility
from latent_probe.app.truncation_cmd import add_truncation_parser, truncation_command
from latent_probe.store.writer import RunWriter, StepMeta

WAN_KW = dict(size=(64, 64), frame_num=17, sampling_steps=8, seed=3, offload_model=False)
F = 5  # latent frames of 17 video frames
TOKENS_PER_FRAME = 16  # 64x64 video -> 8x8 latent (stride 8) -> 4x4 patches; TI2V 128x128 -> 8x8 -> 4x4


# ---------------------------------------------------------------------------------------------- references
def np_linear(values: np.ndarray, keys: list[int], n: int) -> np.ndarray:
    """values [..., C, K, H, W] -> [..., C, n, H, W] by np.interp along frames (constant beyond the ends)."""
    moved = np.moveaxis(values, -3, -1)
    out = np.apply_along_axis(lambda v: np.interp(np.arange(n), keys, v), -1, moved)
    return np.moveaxis(out, -1, -3)


def np_nearest(values: np.ndarray, keys: list[int], n: int) -> np.ndarray:
    pick = [int(np.argmin(np.abs(np.asarray(keys) - f))) for f in range(n)]  # argmin: a tie -> earlier key
    return np.take(values, pick, axis=-3)


def np_slerp(values: np.ndarray, keys: list[int], n: int) -> np.ndarray:
    """Loop reference: slerp of each (batch item's) frame vector [C, H, W], norm linear."""
    b, c, _, h, w = values.shape
    out = np.empty((b, c, n, h, w))
    for bi in range(b):
        for f in range(n):
            if f <= keys[0] or f >= keys[-1] or f in keys:
                j = 0 if f <= keys[0] else len(keys) - 1 if f >= keys[-1] else keys.index(f)
                out[bi, :, f] = values[bi, :, j]
                continue
            j = int(np.searchsorted(keys, f)) - 1
            t = (f - keys[j]) / (keys[j + 1] - keys[j])
            a, z = values[bi, :, j].ravel(), values[bi, :, j + 1].ravel()
            na, nz = np.linalg.norm(a), np.linalg.norm(z)
            om = np.arccos(np.clip(a @ z / (na * nz), -1, 1))
            d = (np.sin((1 - t) * om) * a / na + np.sin(t * om) * z / nz) / np.sin(om)
            out[bi, :, f] = (((1 - t) * na + t * nz) * d).reshape(c, h, w)
    return out


# ---------------------------------------------------------------------------------------------- interpolation
def test_default_keyframes():
    assert default_keyframes(21, 3) == [0, 10, 20]
    assert default_keyframes(5, 3) == [0, 2, 4]
    assert default_keyframes(5, 4) == [0, 1, 3, 4]
    assert default_keyframes(5, 9) == [0, 1, 2, 3, 4]
    assert default_keyframes(21, 1) == [0]


@pytest.mark.parametrize("keys", [[0, 3, 8], [2, 5], [0, 1, 2, 8], [4]])
@pytest.mark.parametrize("mode", ["linear", "nearest", "slerp"])
def test_interpolation_matches_numpy(keys, mode):
    rng = np.random.default_rng(len(keys))
    vals = rng.standard_normal((2, 3, len(keys), 4, 5))
    ref = {"linear": np_linear, "nearest": np_nearest, "slerp": np_slerp}[mode](vals, keys, 9)
    got = interpolate_frames(torch.from_numpy(vals), keys, 9, mode).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    # key frames are copied bit for bit, also in float32 and bfloat16
    for dtype in (torch.float32, torch.bfloat16):
        v = torch.from_numpy(vals).to(dtype)
        out = interpolate_frames(v, keys, 9, mode)
        assert out.dtype == dtype and torch.equal(out[:, :, keys], v)


def test_slerp_keeps_norm_on_a_great_circle():
    a = torch.zeros(2, 1, 1, 1)  # [C, F, H, W]
    a[0, 0] = 2.0
    b = torch.zeros(2, 1, 1, 1)
    b[1, 0] = 4.0  # orthogonal, norms 2 and 4
    out = interpolate_frames(torch.cat([a, b], dim=1), [0, 2], 3, "slerp")
    mid = out[:, 1].flatten()
    assert torch.allclose(mid.norm(), torch.tensor(3.0)) and torch.allclose(mid[0] / mid[1], torch.tensor(1.0))


def test_arguments_validated():
    with pytest.raises(ValueError, match="keep= or keyframes="):
        FrameTruncation(keep=3, keyframes=[0, 4])
    with pytest.raises(ValueError, match="until"):
        FrameTruncation(until="later")
    with pytest.raises(ValueError, match="fill"):
        FrameTruncation(fill="cubic")
    with pytest.raises(ValueError, match="out of range"):
        FrameTruncation(keyframes=[0, 9]).keys_for(5)
    assert FrameTruncation(keyframes=[-1, 0]).keys_for(5) == [0, 4]


# ---------------------------------------------------------------------------------------------- diffusers
def _no_hooks(*modules):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)


def test_diffusers_keep_all_is_bit_identical(two_expert_pipe):
    baseline = run_pipe(two_expert_pipe)
    ft = FrameTruncation(keep=F)
    with LatentProbe(two_expert_pipe, intervene=ft, capture=("x_t",)):
        out = run_pipe(two_expert_pipe)
    assert torch.equal(out, baseline)
    assert ft.frames_seen == [F] * 24 and ft.token_steps_run == ft.token_steps_full


def test_diffusers_two_experts_truncated_until_boundary(two_expert_pipe):
    pipe = two_expert_pipe
    baseline = run_pipe(pipe)
    ft = FrameTruncation(keep=3)
    with LatentProbe(pipe, intervene=ft, store_dtype="float32", capture=("x_t", "pred")) as probe:
        out = run_pipe(pipe)
    assert _no_hooks(pipe.transformer, pipe.transformer_2)
    run = probe.run
    assert run.attrs["intervention"] == {"kind": "frame_truncation", "keep": 3, "keyframes": None,
                                         "until": "boundary", "fill": "linear", "positions": "true"}
    high = np.asarray(run.experts == "transformer")
    assert 0 < high.sum() < 12
    # the DiT sees 3 frames while the high-noise expert runs (cond + uncond per step), 5 after
    assert ft.frames_seen == [3 if h else F for h in high for _ in range(2)]
    assert ft.keys_used == [0, 2, 4]
    # the scheduler sees full-size tensors
    assert run.latents("x_t").shape == (12, 1, 16, F, 8, 8) and out.shape == baseline.shape
    n_high, n_low = int(high.sum()), int((~high).sum())
    assert ft.token_steps_run == 2 * TOKENS_PER_FRAME * (3 * n_high + F * n_low)
    assert ft.token_steps_full == 2 * TOKENS_PER_FRAME * F * 12
    # the guided prediction of a truncated step is the linear fill of its key frames; later steps are not
    pred = run.latents("pred")[:]
    mid = 0.5 * (pred[:, :, :, 0] + pred[:, :, :, 2])
    np.testing.assert_allclose(pred[high][:, :, :, 1], mid[high], atol=1e-5)
    assert not np.allclose(pred[~high][:, :, :, 1], mid[~high], atol=1e-3)
    assert not torch.equal(out, baseline)


def test_diffusers_single_expert_until_step(one_expert_pipe):
    ft = FrameTruncation(keep=2, until=3, fill="slerp")
    with LatentProbe(one_expert_pipe, intervene=ft, capture=("x_t",)) as probe:
        run_pipe(one_expert_pipe, steps=6)
        run_pipe(one_expert_pipe, steps=6)  # a second generation: step indices start again at 0
    assert [c.step for c in ft.calls] == [s for _ in range(2) for s in range(6) for _ in range(2)]
    assert ft.frames_seen == ([2] * 6 + [F] * 6) * 2 and ft.keys_used == [0, 4]
    assert probe.run.latents("x_t").shape[3] == F and _no_hooks(one_expert_pipe.transformer)


def test_boundary_on_single_expert_raises(one_expert_pipe):
    with pytest.raises(ValueError, match="two-expert model.*until=<step index>"):
        with LatentProbe(one_expert_pipe, intervene=FrameTruncation(keep=3)):
            pass
    assert _no_hooks(one_expert_pipe.transformer)


# ---------------------------------------------------------------------------------------------- Wan2.2 repo
@pytest.fixture(scope="module")
def t2v():
    return wan.WanT2V(tiny_t2v_config())


def _spy(module, seen):
    """A pre-hook registered after the probe's: sees what the DiT really receives."""

    def hook(m, args, kwargs):
        seen.append({"frames": kwargs.get("x", args[0] if args else None)[0].shape[1], "seq_len": kwargs.get("seq_len"),
                     "t": tuple(kwargs.get("t", args[1] if len(args) > 1 else None).shape),
                     "y": None if kwargs.get("y") is None else kwargs["y"][0].shape[1]})

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def test_positional_call_keeps_its_convention(t2v):
    """model(x, t, context, seq_len) called positionally: sliced in place, output filled to F frames."""

    from latent_probe.adapters import TargetParts
    from latent_probe.hooks import HookRegistry

    model = t2v.low_noise_model
    ft, reg, seen = FrameTruncation(keep=2, until=1), HookRegistry(), []
    ft.attach(reg, TargetParts(family="wan_repo", experts={"low_noise_model": model}, dit_calls="wan_repo",
                                  rope="wan_repo"), None)
    h = model.register_forward_pre_hook(lambda m, a, k: seen.append((len(a), a[0][0].shape[1], a[3], sorted(k))),
                                        with_kwargs=True)
    try:
        x = [torch.randn(16, F, 8, 8)]
        out = model(x, torch.tensor([900]), [torch.randn(4, 32)], F * TOKENS_PER_FRAME)
    finally:
        h.remove()
        reg.remove_all()
    assert seen == [(4, 2, 2 * TOKENS_PER_FRAME, [])]
    assert isinstance(out, list) and out[0].shape == (16, F, 8, 8) and _no_hooks(model)
    torch.testing.assert_close(out[0][:, 1], 0.75 * out[0][:, 0] + 0.25 * out[0][:, 4])  # keys [0, 4]


def test_wan_keep_all_is_bit_identical(t2v):
    baseline = t2v.generate("a cat", **WAN_KW)
    ft = FrameTruncation(keep=F)
    with LatentProbe(t2v, intervene=ft, capture=("x_t",)):
        out = t2v.generate("a cat", **WAN_KW)
    assert torch.equal(out, baseline) and ft.frames_seen == [F] * 16


def test_wan_t2v_truncated_until_boundary(t2v):
    ft = FrameTruncation(keep=3)
    seen: list[dict] = []
    with LatentProbe(t2v, intervene=ft, capture=("x_t",)) as probe:
        handles = [_spy(m, seen) for m in (t2v.high_noise_model, t2v.low_noise_model)]
        try:
            t2v.generate("a cat", **WAN_KW)
        finally:
            for h in handles:
                h.remove()
    run = probe.run
    high = np.asarray(run.experts == "high_noise_model")
    assert 0 < high.sum() < 8
    assert ft.frames_seen == [s["frames"] for s in seen] == [3 if h else F for h in high for _ in range(2)]
    # seq_len follows the frames the DiT receives: K * (H/2) * (W/2)
    assert [s["seq_len"] for s in seen] == [f * TOKENS_PER_FRAME for f in ft.frames_seen]
    assert run.latents("x_t").shape == (8, 1, 16, F, 8, 8)
    assert ft.token_steps_run == 2 * TOKENS_PER_FRAME * (3 * int(high.sum()) + F * int((~high).sum()))
    assert _no_hooks(t2v.high_noise_model, t2v.low_noise_model)


def test_wan_ti2v_per_token_timesteps_until_step():
    ti2v = wan.WanTI2V(tiny_ti2v_config())
    kw = dict(WAN_KW, size=(128, 128))
    ft = FrameTruncation(keep=3, until=3)
    seen: list[dict] = []
    with LatentProbe(ti2v, intervene=ft, capture=("x_t",)) as probe:
        h = _spy(ti2v.model, seen)
        try:
            ti2v.generate("waves", **kw)
        finally:
            h.remove()
    assert ft.frames_seen == [3] * 6 + [F] * 10
    assert [s["t"] for s in seen] == [(1, f * TOKENS_PER_FRAME) for f in ft.frames_seen]  # per-token t sliced
    assert probe.run.latents("x_t").shape == (8, 1, 48, F, 8, 8)
    assert ft.token_steps_run == 2 * TOKENS_PER_FRAME * (3 * 3 + F * 5)
    with pytest.raises(ValueError, match="two-expert"):
        with LatentProbe(ti2v, intervene=FrameTruncation(keep=3, until="boundary")):
            pass
    assert _no_hooks(ti2v.model)


def test_wan_i2v_slices_conditioning_and_needs_frame0():
    from PIL import Image

    i2v = wan.WanI2V(tiny_i2v_config())
    img = Image.fromarray((np.random.default_rng(0).random((48, 72, 3)) * 255).astype("uint8"))
    with pytest.raises(ValueError, match="frame 0"):
        with LatentProbe(i2v, intervene=FrameTruncation(keyframes=[2, 4])):
            pass
    ft = FrameTruncation(keep=2, until="boundary")
    seen: list[dict] = []
    with LatentProbe(i2v, intervene=ft, capture=("x_t",)):
        h = _spy(i2v.high_noise_model, seen)
        try:
            i2v.generate("a boat", img, max_area=64 * 96, frame_num=17, sampling_steps=4, seed=0, offload_model=False)
        finally:
            h.remove()
    assert seen and all(s["y"] == s["frames"] == 2 for s in seen)  # y follows x
    assert ft.keys_used == [0, 4]


# ---------------------------------------------------------------------------------------------- feasibility
def synthetic_run(x0: np.ndarray, path=None) -> Run:
    """A run whose x0 is ``x0`` [S, B, C, F, H, W] (float32, stored exactly)."""
    w = RunWriter(path, "float32", experts=["transformer", "transformer_2"])
    for i, x in enumerate(x0):
        meta = StepMeta(index=i, timestep=1000.0 - 100 * i, sigma=1.0 - 0.1 * i, alpha=0.1 * i,
                        expert="transformer" if i < 2 else "transformer_2", guidance_scale=None, generation=0,
                        model_calls=2)
        w.submit(meta, {"x0": torch.from_numpy(np.ascontiguousarray(x))}, attrs={"family": "modules"} if i == 0 else None)
    w.close({"complete": True})
    return Run(w.file, owns_file=True, source=None) if path is None else None


def test_feasibility_zero_for_frames_linear_in_time():
    rng = np.random.default_rng(0)
    a = rng.integers(-8, 8, (4, 2, 3, 1, 4, 4)) / 8
    b = rng.integers(-8, 8, (4, 2, 3, 1, 4, 4)) / 8
    x0 = (a + b * np.arange(9)[None, None, None, :, None, None]).astype(np.float32)  # exact in float32
    run = synthetic_run(x0)
    res = truncation_feasibility(run, keep=3)
    assert res.keys == [0, 4, 8]
    assert np.all(res.rel_l2 == 0) and np.all(res.frame_rel_l2 == 0)
    np.testing.assert_allclose(res.cosine, 1.0, atol=1e-12)
    assert res.leading_steps_below(0.0) == 4


@pytest.mark.parametrize("fill", ["linear", "nearest", "slerp"])
def test_feasibility_matches_numpy(fill):
    x0 = np.random.default_rng(1).standard_normal((3, 2, 4, 7, 3, 5)).astype(np.float32)
    res = truncation_feasibility(synthetic_run(x0), keep=3, fill=fill)
    keys = [0, 3, 6]
    ref = {"linear": np_linear, "nearest": np_nearest, "slerp": np_slerp}[fill]
    for s in range(3):
        x = x0[s].astype(np.float64)
        interp = ref(x[:, :, keys], keys, 7)
        rel = [np.linalg.norm(interp[b] - x[b]) / np.linalg.norm(x[b]) for b in range(2)]
        cos = [np.vdot(interp[b], x[b]) / (np.linalg.norm(interp[b]) * np.linalg.norm(x[b])) for b in range(2)]
        frame = np.mean([[np.linalg.norm(interp[b, :, f] - x[b, :, f]) / np.linalg.norm(x[b, :, f])
                          for f in range(7)] for b in range(2)], axis=0)
        assert res.rel_l2[s] == pytest.approx(np.mean(rel), rel=1e-10)
        assert res.cosine[s] == pytest.approx(np.mean(cos), rel=1e-10)
        np.testing.assert_allclose(res.frame_rel_l2[s], frame, rtol=1e-10, atol=1e-15)
    assert list(res.expert) == ["transformer", "transformer", "transformer_2"]
    text = format_feasibility(res)
    assert "3 key frames [0, 3, 6]" in text and "transformer_2: 1 steps" in text


def test_cli_truncation(tmp_path, capsys):
    x0 = np.random.default_rng(2).standard_normal((3, 1, 2, 5, 2, 2)).astype(np.float32)
    path = tmp_path / "base.h5"
    synthetic_run(x0, path)
    parser = argparse.ArgumentParser()
    add_truncation_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["truncation", str(path), "--keep", "2"])
    assert args.func is truncation_command and args.func(args) == 0
    assert "2 key frames [0, 4]" in capsys.readouterr().out
    args = parser.parse_args(["truncation", str(path), "--keyframes", "0,2,4", "--json"])
    assert truncation_command(args) == 0
    def no_nan(token):
        raise AssertionError(f"not strict JSON: {token}")

    data = json.loads(capsys.readouterr().out, parse_constant=no_nan)  # strict JSON, like metrics --json
    assert data["keys"] == [0, 2, 4] and len(data["rel_l2"]) == 3


# ---------------------------------------------------------------------------------------------- comparison
def test_compare_truncation(two_expert_pipe):
    pipe = two_expert_pipe
    c = compare_truncation(pipe, lambda: run_pipe(pipe), keep=3, warmup=True)
    assert c.keys == [0, 2, 4] and c.dit_calls == 24 and c.truncated_calls == 8
    assert c.token_steps_full == 24 * F * TOKENS_PER_FRAME
    assert c.token_steps_run == c.token_steps_full - 8 * 2 * TOKENS_PER_FRAME
    assert c.dit_time_baseline_s > 0 and c.dit_time_truncated_s > 0 and c.wall_baseline_s > 0
    assert 0 < c.output["rel_l2"] and c.output["cosine"] < 1 and 0 < c.final_x0["rel_l2"]
    assert c.baseline_run.num_steps == c.truncated_run.num_steps == 12
    assert "token-steps" in format_comparison(c)
    same = compare_truncation(pipe, lambda: run_pipe(pipe), keep=F, output_range=2.0)
    assert same.output["rel_l2"] == 0 and same.final_x0["rel_l2"] == 0 and same.output["psnr_db"] == float("inf")
    assert _no_hooks(pipe.transformer, pipe.transformer_2)
    with pytest.raises(ValueError, match="two-expert"):
        compare_truncation((pipe.transformer, pipe.scheduler), lambda: None, keep=3)  # one expert, no boundary


def test_in_memory_runs_stay_open_side_by_side():
    """compare_truncation keeps two in-memory runs open: their HDF5 core files must not share a name."""
    import gc

    runs = []
    for _ in range(6):
        runs.append(synthetic_run(np.zeros((1, 1, 1, 2, 1, 1), dtype=np.float32)))
        gc.collect()
    assert all(r.num_steps == 1 for r in runs)


def test_wan_sequence_parallel_truncation_refused_at_entry():
    """Under --ulysses_size every rank holds a slice of each DiT call's tokens (seq_len padded to the world
    size): frame truncation is refused on entry, on every rank, with the reason, and nothing is attached."""
    import wan
    from wan.configs import tiny_t2v_config

    t2v = wan.WanT2V(tiny_t2v_config())
    t2v.sp_size = 2  # what WanT2V(use_sp=True) sets on a 2-process run
    probe = LatentProbe(t2v, intervene=FrameTruncation(keep=3, until="boundary"))
    with pytest.raises(ValueError, match=r"sequence parallelism \(--ulysses_size, sp_size=2\)"):
        probe.__enter__()
    assert probe.hooks_attached == 0 and "generate" not in vars(t2v)
    assert not t2v.high_noise_model._forward_pre_hooks
    with LatentProbe(t2v) as p:  # recording alone is unaffected
        t2v.generate("a cat", size=(64, 64), frame_num=17, sampling_steps=3, seed=1, offload_model=False)
    assert p.run.num_steps == 3
