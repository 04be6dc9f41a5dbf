"""Block probes (issue 21): sums against a float64 reference from hidden states an independent forward hook
captured; attention's temporal reach against a dense softmax of the q and k the attention really used; outputs
bit-identical; layouts that cannot be probed refused at entry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import wan
from wan.configs import tiny_t2v_config

from conftest import run_pipe
from latent_probe import LatentProbe, open_run
from latent_probe.adapters.base import UnsupportedTargetError
from latent_probe.metrics.blocks import reach_reference, sample_queries, temporal_reach

KW = dict(size=(64, 64), frame_num=17, sampling_steps=6, seed=3, offload_model=False)
FRAMES, TOKENS = 5, 16  # 17 frames → 5 latent frames; 64 px / 8 (VAE) / 2 (patch) = 4 × 4 tokens a frame


@pytest.fixture(scope="module")
def t2v():
    return wan.WanT2V(tiny_t2v_config())


class Recorder:
    """Independent reference: plain torch hooks keeping every block's input and output (float64 numpy), per DiT call."""

    def __init__(self, experts):
        self.calls: list[list[tuple[np.ndarray, np.ndarray]]] = []
        self.handles = []
        for expert in experts:
            self.handles.append(expert.register_forward_pre_hook(lambda m, a: self.calls.append([])))
            for block in expert.blocks:
                self.handles.append(block.register_forward_pre_hook(self._pre, with_kwargs=True))
                self.handles.append(block.register_forward_hook(self._post, with_kwargs=True))

    def _pre(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("x", kwargs.get("hidden_states"))
        self.calls[-1].append([x.detach().double().numpy().copy(), None])

    def _post(self, module, args, kwargs, output):
        self.calls[-1][-1][1] = output.detach().double().numpy().copy()

    def remove(self):
        for h in self.handles:
            h.remove()


def reference(calls, steps: int, branches: int = 2):
    """Per step, branch and block: the sums and metrics computed here in float64 from the captured hidden states."""
    n = FRAMES * TOKENS
    assert len(calls) == steps * branches
    out = {k: np.full((steps, 2, 1, len(calls[0])) + s, np.nan) for k, s in
           (("cos", (FRAMES - 1,)), ("l2", (FRAMES - 1,)), ("update", ()), ("change", ()), ("sq", (FRAMES,)))}
    out["mag"] = np.full((steps, 2, 1), np.nan)
    prev_u, prev_norm = {}, {}
    for c, blocks in enumerate(calls):
        s, b = divmod(c, branches)
        for j, (x_in, x_out) in enumerate(blocks):
            h = x_out[0, :n].reshape(FRAMES, TOKENS * x_out.shape[-1])
            sq = (h * h).sum(1)
            dot = (h[:-1] * h[1:]).sum(1)
            dd = ((h[:-1] - h[1:]) ** 2).sum(1)
            out["sq"][s, b, 0, j] = sq
            out["cos"][s, b, 0, j] = dot / np.sqrt(sq[:-1] * sq[1:])
            out["l2"][s, b, 0, j] = np.sqrt(dd / (sq[:-1] + sq[1:]))
            u = x_out[0, :n] - x_in[0, :n]
            out["update"][s, b, 0, j] = np.linalg.norm(u) / np.linalg.norm(x_in[0, :n])
            if (b, j) in prev_u:
                out["change"][s, b, 0, j] = np.abs(u - prev_u[b, j]).sum() / np.abs(prev_u[b, j]).sum()
            prev_u[b, j] = u
        r = blocks[-1][1][0, :n] - blocks[0][0][0, :n]
        norm = np.linalg.norm(r, axis=-1)
        if b in prev_norm:
            out["mag"][s, b, 0] = (norm / prev_norm[b]).mean()
        prev_norm[b] = norm
    return out


def check_against(run, ref, blocks=None):
    m = run.blocks.metrics()
    sel = slice(None) if blocks is None else blocks
    # the pair sums are frame_pair_stats' (float32 blocks of a float32 tensor, combined in float64), as for latents
    np.testing.assert_allclose(run.blocks.sums()["sq"], ref["sq"][:, :, :, sel], rtol=1e-6)
    np.testing.assert_allclose(m["cos"], ref["cos"][:, :, :, sel], rtol=0, atol=1e-6)  # CPU: polar dot
    np.testing.assert_allclose(m["l2"], ref["l2"][:, :, :, sel], rtol=1e-6)
    np.testing.assert_allclose(m["update"], ref["update"][:, :, :, sel], rtol=1e-12)
    # the previous update is kept in float32 on the device (documented): 2^-24 relative per value
    np.testing.assert_allclose(m["change"], ref["change"][:, :, :, sel], rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(m["mag"], ref["mag"], rtol=1e-12, equal_nan=True)


# ------------------------------------------------------------------ Wan2.2 repository (stand-in)
def test_wan_repo_block_sums_match_independent_hooks_and_output_is_bit_identical(t2v, tmp_path):
    base = t2v.generate("a cat on a skateboard", **KW)
    rec = Recorder([t2v.high_noise_model, t2v.low_noise_model])
    try:
        probe = LatentProbe(t2v, tmp_path / "b.h5", capture=(), blocks="all", attention_reach=4)
        with probe:
            out = t2v.generate("a cat on a skateboard", **KW)
    finally:
        rec.remove()
    assert torch.equal(base, out)
    assert probe.hooks_attached == 0 and not t2v.high_noise_model.blocks[0]._forward_hooks
    assert "rope_apply" not in vars(type(t2v)) and wan.modules.model.rope_apply.__name__ == "rope_apply"
    with open_run(tmp_path / "b.h5") as run:
        assert run.blocks.indices == [0, 1]
        check_against(run, reference(rec.calls, KW["sampling_steps"]))
        ds = run.to_xarray()
        assert ds["block_cos"].dims == ("step", "branch", "batch", "block", "frame_pair")
        assert ds["attention_reach"].dims == ("step", "branch", "batch", "block", "head", "distance")
        assert list(ds["branch"].values) == ["cond", "uncond"]
        np.testing.assert_allclose(ds["attention_reach"].sum("distance"), 1.0, rtol=1e-12)


def test_wan_repo_chosen_blocks_and_metrics_only(t2v, tmp_path):
    rec = Recorder([t2v.high_noise_model, t2v.low_noise_model])
    try:
        with LatentProbe(t2v, tmp_path / "c.h5", capture=(), blocks=[-1], block_change=False):
            t2v.generate("a dog", **KW)
    finally:
        rec.remove()
    with open_run(tmp_path / "c.h5") as run:
        assert run.blocks.indices == [1]
        m = run.blocks.metrics()
        assert "change" not in m
        ref = reference(rec.calls, KW["sampling_steps"])
        np.testing.assert_allclose(m["cos"], ref["cos"][:, :, :, [1]], rtol=0, atol=1e-6)
        np.testing.assert_allclose(m["mag"], ref["mag"], rtol=1e-12, equal_nan=True)
    # a file whose block tables were cut short or do not fit together is refused when read, never misread
    import h5py

    from latent_probe.store.validate import RunFileError

    with h5py.File(tmp_path / "c.h5", "r+") as f:
        f["blocks/upd"].resize(3, axis=0)
    with open_run(tmp_path / "c.h5") as run, pytest.raises(RunFileError, match="holds 3 steps of the 6 committed"):
        run.blocks.sums()
    with h5py.File(tmp_path / "c.h5", "r+") as f:
        del f["blocks/upd"]
        f.create_dataset("blocks/upd", data=np.zeros((6, 2, 1, 2, 2)), chunks=(6, 2, 1, 2, 2))
    with open_run(tmp_path / "c.h5") as run, pytest.raises(RunFileError, match="holds 2 blocks, the run probed 1"):
        run.blocks.metrics()


def test_wan_repo_temporal_reach_equals_dense_softmax_of_the_attention_inputs(t2v, tmp_path, monkeypatch):
    """q and k as scaled_dot_product_attention received them in self-attention; dense float64 softmax over the real
    keys, at the seeded query sample."""
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        if q.shape[2] == k.shape[2]:  # self-attention (cross-attention has text_len keys)
            seen.append((q.detach().double().numpy().copy(), k.detach().double().numpy().copy()))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(wan.modules.model.F, "scaled_dot_product_attention", spy)
    with LatentProbe(t2v, tmp_path / "r.h5", capture=(), blocks="all", attention_reach=5):
        t2v.generate("a cat", **KW)
    monkeypatch.undo()
    n = FRAMES * TOKENS
    idx = sample_queries(FRAMES, TOKENS, 5, 0).flatten().numpy()
    frame_q, frame_k = idx // TOKENS, np.arange(n) // TOKENS
    with open_run(tmp_path / "r.h5") as run:
        reach = run.blocks.metrics()["reach"]  # [S, 2, B, block, H, F']
    blocks = len(t2v.high_noise_model.blocks)
    assert len(seen) == KW["sampling_steps"] * 2 * blocks
    for c, (q, k) in enumerate(seen):
        s, rest = divmod(c, 2 * blocks)
        b, j = divmod(rest, blocks)
        q = q.transpose(0, 2, 1, 3)[:, idx]  # [B, Q, H, d]
        k = k.transpose(0, 2, 1, 3)[:, :n]  # the real keys (the rest is seq_len padding, masked)
        ref = reach_reference(q, k, frame_q, frame_k, 1 / math.sqrt(q.shape[-1]), FRAMES)
        np.testing.assert_allclose(reach[s, b, :, j], ref, rtol=0, atol=1e-6)  # float32 scores


def test_temporal_reach_chunked_equals_dense(monkeypatch):
    import latent_probe.metrics.blocks as mb

    g = torch.Generator().manual_seed(1)
    frames, tokens, heads, d, per = 6, 10, 3, 8, 4
    k = torch.randn(2, frames * tokens + 7, heads, d, generator=g, dtype=torch.float64) * 2
    q_all = torch.randn(2, frames * tokens, heads, d, generator=g, dtype=torch.float64) * 2
    idx = sample_queries(frames, tokens, per, 3)
    monkeypatch.setattr(mb, "REACH_CHUNK_ELEMS", 1)  # one key frame a chunk
    got = temporal_reach(q_all[:, idx.flatten()].unflatten(1, (frames, per)), k, frames, tokens, 0.3)
    ref = reach_reference(q_all[:, idx.flatten()].numpy(), k[:, : frames * tokens].numpy(),
                          idx.flatten().numpy() // tokens, np.arange(frames * tokens) // tokens, 0.3, frames)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-6)
    assert idx.shape == (frames, per) and all((row // tokens == f).all() for f, row in enumerate(idx))


# ------------------------------------------------------------------ diffusers WanPipeline
def test_diffusers_block_sums_reach_and_bit_identical(two_expert_pipe, tmp_path, monkeypatch):
    from diffusers.models.transformers import transformer_wan

    pipe = two_expert_pipe
    base = run_pipe(pipe, steps=4)
    experts = [pipe.transformer, pipe.transformer_2]
    seen = []
    real = transformer_wan.dispatch_attention_fn

    def spy(q, k, v, *a, **kw):
        if q.shape[1] == k.shape[1]:
            seen.append((q.detach().double().numpy().copy(), k.detach().double().numpy().copy()))
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(transformer_wan, "dispatch_attention_fn", spy)
    rec = Recorder(experts)
    try:
        with LatentProbe(pipe, tmp_path / "d.h5", capture=("x0",), blocks="all", attention_reach=3):
            out = run_pipe(pipe, steps=4)
    finally:
        rec.remove()
        monkeypatch.undo()
    assert torch.equal(base, out)
    n = FRAMES * TOKENS
    idx = sample_queries(FRAMES, TOKENS, 3, 0).flatten().numpy()
    with open_run(tmp_path / "d.h5") as run:
        check_against(run, reference(rec.calls, 4))
        reach = run.blocks.metrics()["reach"]
    blocks = len(pipe.transformer.blocks)
    assert len(seen) == 4 * 2 * blocks
    for c, (q, k) in enumerate(seen):
        s, rest = divmod(c, 2 * blocks)
        b, j = divmod(rest, blocks)
        ref = reach_reference(q[:, idx], k[:, :n], idx // TOKENS, np.arange(n) // TOKENS, 1 / math.sqrt(q.shape[-1]),
                              FRAMES)
        np.testing.assert_allclose(reach[s, b, :, j], ref, rtol=0, atol=1e-6)


def test_diffusers_guidance_off_leaves_uncond_nan(one_expert_pipe, tmp_path):
    with LatentProbe(one_expert_pipe, tmp_path / "g.h5", capture=(), blocks="every:2") as probe:
        run_pipe(one_expert_pipe, steps=3, guidance_scale=1.0)
    run = probe.run
    m = run.blocks.metrics()
    assert run.blocks.indices == list(range(0, len(one_expert_pipe.transformer.blocks), 2))
    assert np.isfinite(m["update"][:, 0]).all() and np.isnan(m["update"][:, 1]).all()
    run.close()


# ------------------------------------------------------------------ refusals, before anything runs
def test_unknown_block_layouts_and_bad_options_are_refused_at_entry(t2v, two_expert_pipe, tmp_path):
    from latent_probe.interventions import FrameTruncation

    sched = two_expert_pipe.scheduler
    with pytest.raises(UnsupportedTargetError, match="does not say how its blocks are called"):
        LatentProbe(([two_expert_pipe.transformer], sched), None, capture=(), blocks="all").__enter__()

    class NoBlocks(torch.nn.Module):
        def forward(self, x):
            return x

    saved = t2v.low_noise_model
    t2v.low_noise_model = NoBlocks()
    try:
        with pytest.raises(UnsupportedTargetError, match="has no .blocks module list"):
            LatentProbe(t2v, None, capture=(), blocks="all").__enter__()
    finally:
        t2v.low_noise_model = saved
    for spec, msg in (("every:0", "every:k"), ([5], "outside the 2 blocks"), ([0, 0], "twice"), ("some", "'all'")):
        with pytest.raises(ValueError, match=msg):
            LatentProbe(t2v, None, capture=(), blocks=spec).__enter__()
    with pytest.raises(ValueError, match="give blocks= too"):
        LatentProbe(t2v, None, attention_reach=8)
    with pytest.raises(ValueError, match="attention_reach"):
        LatentProbe(t2v, None, blocks="all", attention_reach=-1).__enter__()
    with pytest.raises(ValueError, match="block_change must be True or False"):
        LatentProbe(t2v, None, blocks="all", block_change="no")
    with pytest.raises(ValueError, match="intervene="):
        LatentProbe(t2v, None, blocks="all", intervene=FrameTruncation(keep=2))
    assert not t2v.high_noise_model.blocks[0]._forward_hooks and not t2v.high_noise_model._forward_pre_hooks
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_update_sums_of_half_precision_blocks_are_exact(dtype):
    """The update of a bf16/fp16 block is taken in float32 (exact differences there), its norms in float64."""
    from latent_probe.metrics.blocks import block_call_sums, residual_norms, update_change

    g = torch.Generator().manual_seed(0)
    frames, tokens, d = 3, 4, 8
    x_in = (torch.randn(2, frames * tokens + 5, d, generator=g) * 3).to(dtype)  # 5 padding tokens
    x_out = (x_in.float() + torch.randn(x_in.shape, generator=g) * 0.1).to(dtype)
    x_out2 = (x_in.float() + torch.randn(x_in.shape, generator=g) * 0.1).to(dtype)
    n = frames * tokens
    a, b, b2 = (t[:, :n].double().numpy() for t in (x_in, x_out, x_out2))
    sums, u = block_call_sums(x_in, x_out, frames, tokens)
    np.testing.assert_allclose(sums["upd"][:, 0].numpy(), ((b - a) ** 2).sum((1, 2)), rtol=1e-12)
    np.testing.assert_allclose(sums["upd"][:, 1].numpy(), (a ** 2).sum((1, 2)), rtol=1e-12)
    _, keep = update_change(u, None)
    sums2, u2 = block_call_sums(x_in, x_out2, frames, tokens)
    change, _ = update_change(u2, keep)
    ref = np.abs((b2 - a) - (b - a)).sum((1, 2)) / np.abs(b - a).sum((1, 2))
    np.testing.assert_allclose((change[:, 0] / change[:, 1]).numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(residual_norms(x_in, x_out, frames, tokens).numpy(),
                               np.linalg.norm(b - a, axis=-1), rtol=1e-12)


def test_kept_updates_that_would_not_fit_stop_recording_not_the_generation(t2v, monkeypatch):
    """block_change keeps blocks × 2 × F'·T·D float32 values on the device; more than half the free memory is refused
    at the first DiT call: recording stops with the reason, the generation goes on unchanged."""
    import latent_probe.block_probe as bp

    base = t2v.generate("a cat", **KW)
    need = 2 * 2 * 1 * FRAMES * TOKENS * 32 * 4  # 2 blocks, 2 branches, B = 1, D = 32, float32
    monkeypatch.setattr(bp, "free_device_bytes", lambda device: 2 * need - 2)
    with pytest.warns(RuntimeWarning, match="block_change=True would keep .* probe fewer blocks"):
        with LatentProbe(t2v, None, capture=(), blocks="all") as probe:
            out = t2v.generate("a cat", **KW)
    assert torch.equal(base, out) and probe.runs == []
    monkeypatch.setattr(bp, "free_device_bytes", lambda device: 2 * need)  # exactly half: allowed
    with LatentProbe(t2v, None, capture=(), blocks="all") as probe:
        t2v.generate("a cat", **KW)
    assert probe.run.num_steps == KW["sampling_steps"]
