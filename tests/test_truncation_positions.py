"""FrameTruncation(positions=...) (issue 12 item 1): key frames keep their true rotary time positions.

What the attention really uses is read where it is used: diffusers — the ``rotary_emb`` (cos, sin) the first
block receives; Wan2.2 — the rotation ``rope_apply`` applies, measured by rotating a probe tensor of unit
pairs (1, 0) with the very arguments the attention passes (a listener inside the probe's). Each is compared
with the same expert's unprobed full-length call, row for row, bit for bit.
"""

from __future__ import annotations

import pytest
import torch

import wan
import wan.modules.model as wan_model
from conftest import run_pipe
from wan.configs import tiny_t2v_config

from latent_probe import LatentProbe
from latent_probe.adapters.rope import TimePositionsError, refusal
from latent_probe.hooks import Dispatcher, HookRegistry
from latent_probe.interventions import FrameTruncation

F, KEYS = 5, [0, 2, 4]  # 17 video frames -> 5 latent frames; keep=3
WAN_KW = dict(size=(64, 64), frame_num=17, sampling_steps=4, seed=3, offload_model=False)


def by_frame(t: torch.Tensor, frames: int) -> torch.Tensor:
    """[1, frames*T, ...] tokens (frame-major) -> [frames, T, ...]."""
    return t[0].unflatten(0, (frames, -1))


def expect_positions(table: torch.Tensor, full: torch.Tensor, positions: str) -> None:
    """``table`` [K, T, ...] of a truncated call against ``full`` [F, T, ...] of the full-length call."""
    true_rows, compressed_rows = full[KEYS], full[: len(KEYS)]
    assert not torch.equal(true_rows, compressed_rows)  # the two options are distinguishable here
    assert torch.equal(table, true_rows if positions == "true" else compressed_rows)


# ---------------------------------------------------------------------------------------------- diffusers
def rotary_spy(module, seen: list):
    """Records the (cos, sin) the first block of ``module`` receives: block(h, enc, temb, rotary_emb)."""

    def hook(m, args, kwargs):
        cos, sin = kwargs.get("rotary_emb", args[3] if len(args) > 3 else None)
        seen.append((cos.clone(), sin.clone()))

    return module.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("positions", ["true", "compressed"])
def test_diffusers_key_frames_get_their_full_length_angles(two_expert_pipe, positions):
    pipe, tokens = two_expert_pipe, 16  # 8x8 latent, patch 2x2
    full: list = []
    h = rotary_spy(pipe.transformer, full)
    try:
        run_pipe(pipe, steps=4)  # unprobed: the full-length calls of the high-noise expert
    finally:
        h.remove()
    seen: list = []
    ft = FrameTruncation(keep=3, positions=positions)
    with LatentProbe(pipe, intervene=ft, capture=("x_t",)):
        h = rotary_spy(pipe.transformer, seen)
        try:
            run_pipe(pipe, steps=4)
        finally:
            h.remove()
    assert ft.keys_used == KEYS and seen and all(c.shape[1] == 3 * tokens for c, _ in seen)
    ref_cos, ref_sin = (by_frame(t, F) for t in full[0])
    for cos, sin in seen:
        expect_positions(by_frame(cos, 3), ref_cos, positions)
        expect_positions(by_frame(sin, 3), ref_sin, positions)
    assert not pipe.transformer.rope._forward_hooks


# ---------------------------------------------------------------------------------------------- Wan2.2 stand-in
@pytest.fixture(scope="module")
def t2v():
    return wan.WanT2V(tiny_t2v_config())


def rotation_spy(seen: dict, registry: HookRegistry) -> None:
    """A listener on rope_apply inside the probe's: the rotation of unit pairs (1, 0) for every token of each
    call, [F, T, n, c, 2] = (cos θ, sin θ), keyed by (the model's rotary table, frames)."""

    def listener(call_next, x, grid_sizes, freqs):
        unit = torch.zeros_like(x[:1])
        unit[..., 0::2] = 1
        f, h, w = grid_sizes[0].tolist()
        rot = call_next(unit, grid_sizes[:1], freqs)[0, : f * h * w]
        seen.setdefault((id(freqs), f), rot.unflatten(0, (f, h * w)))
        return call_next(x, grid_sizes, freqs)

    registry.intercept(wan_model, "rope_apply", listener)


@pytest.mark.parametrize("positions", ["true", "compressed"])
def test_wan_key_frames_get_their_full_length_angles(t2v, positions):
    base: dict = {}
    reg = HookRegistry()
    rotation_spy(base, reg)
    try:
        t2v.generate("a cat", **WAN_KW)
    finally:
        reg.remove_all()
    full = base[(id(t2v.high_noise_model.freqs), F)]
    seen: dict = {}
    ft = FrameTruncation(keep=3, positions=positions)
    with LatentProbe(t2v, intervene=ft, capture=("x_t",)):
        reg = HookRegistry()
        rotation_spy(seen, reg)
        try:
            t2v.generate("a cat", **WAN_KW)
        finally:
            reg.remove_all()
    truncated = [rot for (_, frames), rot in seen.items() if frames == 3]
    assert ft.keys_used == KEYS and 3 in ft.frames_seen and len(truncated) == 1
    expect_positions(truncated[0], full, positions)
    assert wan_model.rope_apply is not None and not isinstance(vars(wan_model)["rope_apply"], Dispatcher)


# ---------------------------------------------------------------------------------------------- keep = F
@pytest.mark.parametrize("positions", ["true", "compressed"])
def test_keep_all_is_bit_identical(two_expert_pipe, t2v, positions):
    baseline = run_pipe(two_expert_pipe, steps=6)
    with LatentProbe(two_expert_pipe, intervene=FrameTruncation(keep=F, positions=positions), capture=("x_t",)):
        out = run_pipe(two_expert_pipe, steps=6)
    assert torch.equal(out, baseline)
    baseline = t2v.generate("a cat", **WAN_KW)
    ft = FrameTruncation(keep=F, positions=positions)
    with LatentProbe(t2v, intervene=ft, capture=("x_t",)):
        out = t2v.generate("a cat", **WAN_KW)
    assert torch.equal(out, baseline) and set(ft.frames_seen) == {F}


def test_true_and_compressed_give_different_generations(t2v):
    outs = []
    for positions in ("true", "compressed"):
        with LatentProbe(t2v, intervene=FrameTruncation(keep=3, positions=positions), capture=("x_t",)) as p:
            outs.append(t2v.generate("a cat", **WAN_KW))
        assert p.run.attrs["intervention"]["positions"] == positions
    assert not torch.equal(*outs)


# ---------------------------------------------------------------------------------------------- refusals
def test_unknown_rope_is_refused_at_entry_in_one_line(two_expert_pipe):
    pipe = two_expert_pipe
    target = (pipe.transformer, pipe.scheduler)  # (modules, scheduler): latent_probe does not know its rope
    probe = LatentProbe(target, intervene=FrameTruncation(keep=3, until=2))
    with pytest.raises(TimePositionsError) as err:
        probe.__enter__()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("positions='true' is not available for this modules target (model)")
    assert "does not know where" in msg and "positions='compressed'" in msg
    assert probe.hooks_attached == 0 and "step" not in vars(pipe.scheduler)
    assert not pipe.transformer._forward_pre_hooks and not pipe.transformer.rope._forward_hooks
    with LatentProbe(target, intervene=FrameTruncation(keep=3, until=2, positions="compressed")) as p:
        assert p.hooks_attached > 0
    assert not pipe.transformer._forward_pre_hooks


def test_refusal_reasons_per_convention(two_expert_pipe, t2v):
    assert refusal("diffusers_wan", two_expert_pipe.transformer) is None
    assert refusal("wan_repo", t2v.high_noise_model) is None
    assert "not diffusers' WanRotaryPosEmbed" in refusal("diffusers_wan", t2v.high_noise_model)
    assert "module-level rope_apply" in refusal("wan_repo", two_expert_pipe.transformer)


def test_vace_truncation_refused_at_entry():
    from video_families import BUILDERS

    fam = BUILDERS["wan_vace"]()
    probe = LatentProbe(fam.pipe, intervene=FrameTruncation(keep=2, until=2))
    with pytest.raises(ValueError, match="VACE's control_hidden_states"):
        probe.__enter__()
    assert probe.hooks_attached == 0 and not fam.pipe.transformer._forward_pre_hooks


# ---------------------------------------------------------------------------------------------- lifecycle
def test_hooks_installed_in_the_block_and_removed_exactly_on_exit(two_expert_pipe, t2v):
    pipe, original = two_expert_pipe, vars(wan_model)["rope_apply"]
    with LatentProbe(pipe, intervene=FrameTruncation(keep=3)):
        assert len(pipe.transformer.rope._forward_hooks) == len(pipe.transformer_2.rope._forward_hooks) == 1
    assert not pipe.transformer.rope._forward_hooks and not pipe.transformer_2.rope._forward_hooks
    with pytest.raises(RuntimeError, match="boom"):
        with LatentProbe(t2v, intervene=FrameTruncation(keep=3)):
            d = vars(wan_model)["rope_apply"]
            assert isinstance(d, Dispatcher) and d.original is original and len(d.listeners) == 2
            raise RuntimeError("boom")
    assert vars(wan_model)["rope_apply"] is original


def test_only_the_probed_experts_calls_are_changed_also_after_an_exception(t2v):
    """Another WanModel called inside a truncated expert's call keeps its own positions; an exception in the
    middle of a DiT call leaves nothing behind."""
    other = wan.WanT2V(tiny_t2v_config()).low_noise_model
    args = ([torch.randn(16, 3, 8, 8)], torch.tensor([900]), [torch.randn(4, 32)], 3 * 16)
    alone = other(*args)
    inside: list = []

    def call_other(m, a, k):
        inside.append(other(*args))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with LatentProbe(t2v, intervene=FrameTruncation(keep=3), capture=("x_t",)):
            h = t2v.high_noise_model.register_forward_pre_hook(call_other, with_kwargs=True)
            try:
                t2v.generate("a cat", **WAN_KW)
            finally:
                h.remove()
    assert torch.equal(inside[0][0], alone[0])
    assert not isinstance(vars(wan_model)["rope_apply"], Dispatcher)
    assert not t2v.high_noise_model._forward_pre_hooks and not t2v.high_noise_model._forward_hooks
    assert torch.equal(other(*args)[0], alone[0])
