"""block_steps= (issue 21, item 1): the probed blocks' full output hidden states at chosen steps, stored like latents.

Each stored (step, block, branch) equals, bit for bit, the block output an independent torch forward hook captured in
the same DiT call (cast to the store dtype the way the writer does, ``Tensor.to``); outputs are bit-identical with
the option on; what cannot be exact is refused; a flipped bit in a stored hidden state is caught on read."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

import wan
from wan.configs import tiny_t2v_config

from conftest import run_pipe
from latent_probe import LatentProbe, open_run
from latent_probe.latent_steps import LatentStepsError
from latent_probe.store.validate import RunFileError

KW = dict(size=(64, 64), frame_num=17, sampling_steps=6, seed=3, offload_model=False)
FRAMES, TOKENS = 5, 16  # 17 frames → 5 latent frames; 64 px / 8 (VAE) / 2 (patch) = 4 × 4 tokens a frame


@pytest.fixture(scope="module")
def t2v():
    return wan.WanT2V(tiny_t2v_config())


class Outputs:
    """Independent reference: plain torch forward hooks keeping each block's output (a clone, its own dtype) per DiT
    call, in call order."""

    def __init__(self, experts):
        self.calls: list[list[torch.Tensor]] = []
        self.handles = []
        for expert in experts:
            self.handles.append(expert.register_forward_pre_hook(lambda m, a: self.calls.append([])))
            for block in expert.blocks:
                self.handles.append(block.register_forward_hook(
                    lambda m, a, out: self.calls[-1].append((out[0] if isinstance(out, tuple) else out).detach().clone())))

    def remove(self):
        for h in self.handles:
            h.remove()

    def block(self, step: int, branch: int, block: int, dtype: torch.dtype) -> torch.Tensor:
        """[B, F', T, D] of the real tokens, as the store holds them (sequential CFG: cond, uncond per step)."""
        out = self.calls[2 * step + branch][block]
        return out[:, : FRAMES * TOKENS].unflatten(1, (FRAMES, TOKENS)).to(dtype)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.contiguous().view(torch.uint8).equal(b.contiguous().view(torch.uint8))


# ------------------------------------------------------------------ Wan2.2 repository (stand-in)
@pytest.mark.parametrize("store_dtype", ["float32", "float16"])
def test_wan_repo_hidden_states_equal_an_independent_hook_bit_for_bit(t2v, tmp_path, store_dtype):
    base = t2v.generate("a cat on a skateboard", **KW)
    ref = Outputs([t2v.high_noise_model, t2v.low_noise_model])
    try:
        with LatentProbe(t2v, tmp_path / "h.h5", capture=("x0",), blocks="all", block_steps="0,3,last",
                         store_dtype=store_dtype):
            out = t2v.generate("a cat on a skateboard", **KW)
    finally:
        ref.remove()
    assert torch.equal(base, out)  # bit-identical output with the hidden states kept
    dtype = getattr(torch, store_dtype)
    with open_run(tmp_path / "h.h5") as run:
        assert run.attrs["block_probe"]["block_steps"] == "0,3,last"
        for branch in ("cond", "uncond"):
            assert run.blocks.hidden_steps(branch) == [0, 3, 5]
        for step in (0, 3, 5):
            for j in (0, 1):
                for b, branch in enumerate(("cond", "uncond")):
                    got = run.blocks.hidden(step, j, branch)
                    assert got.shape == (1, FRAMES, TOKENS, 32)
                    assert _same_bits(got, ref.block(step, b, j, dtype)), (step, j, branch)
        assert _same_bits(run.blocks.hidden(3, -1, "uncond"), ref.block(3, 1, 1, dtype))
        with pytest.raises(KeyError, match="stored steps: \\[0, 3, 5\\]"):
            run.blocks.hidden(1, 0)
        # the cond and uncond outputs differ (the branches are not mixed up)
        assert not torch.equal(run.blocks.hidden(0, 0, "cond"), run.blocks.hidden(0, 0, "uncond"))
        # readable with plain h5py too: [R, K, B, F', T, D], the step of each row beside it
        f = run.file
        assert f["block_hidden/cond"].shape == (3, 2, 1, FRAMES, TOKENS, 32)
        assert f["block_hidden/cond"].chunks == (1, 1, 1, FRAMES, TOKENS, 32)
        assert f["block_hidden/uncond_step"][:].tolist() == [0, 3, 5]
        np.testing.assert_array_equal(f["block_hidden/uncond"][1, 0], ref.block(3, 1, 0, dtype).numpy())


def test_wan_repo_every_k_in_memory_and_blocks_subset(t2v):
    ref = Outputs([t2v.high_noise_model, t2v.low_noise_model])
    try:
        with LatentProbe(t2v, None, capture=(), blocks=[1], block_steps="every:4", store_dtype="float32") as probe:
            t2v.generate("a dog", **KW)
    finally:
        ref.remove()
    run = probe.run
    assert run.blocks.hidden_steps() == [0, 4]
    assert _same_bits(run.blocks.hidden(4, 1, "uncond"), ref.block(4, 1, 1, torch.float32))
    with pytest.raises(KeyError, match="block 0 was not probed"):
        run.blocks.hidden(4, 0)
    run.close()


def test_first_step_staged_provisionally_is_dropped_when_not_chosen(t2v, tmp_path):
    """"boundary" may choose step 0 (unknown before the plan): staged, then dropped when the switch is later."""
    with LatentProbe(t2v, tmp_path / "b.h5", capture=(), blocks=[0], block_steps="boundary") as probe:
        t2v.generate("a dog", **KW)
    with open_run(tmp_path / "b.h5") as run:
        switch = int(np.flatnonzero(np.asarray(run.experts) != run.experts[0])[0])
        assert switch > 1
        assert run.blocks.hidden_steps() == [switch - 1, switch]
        assert run.file["block_hidden/cond"].shape[0] == 2
    assert probe.hooks_attached == 0


# ------------------------------------------------------------------ diffusers WanPipeline (2 experts)
def test_diffusers_hidden_states_equal_an_independent_hook_and_output_is_bit_identical(two_expert_pipe, tmp_path):
    pipe = two_expert_pipe
    base = run_pipe(pipe, steps=4)
    ref = Outputs([pipe.transformer, pipe.transformer_2])
    try:
        with LatentProbe(pipe, tmp_path / "d.h5", capture=("x0",), latent_steps="last", blocks="all",
                         block_steps=[1, 3]):
            out = run_pipe(pipe, steps=4)
    finally:
        ref.remove()
    assert torch.equal(base, out)
    with open_run(tmp_path / "d.h5") as run:
        assert run.blocks.hidden_steps("uncond") == [1, 3]
        assert run.experts[1] != run.experts[3]  # one kept step on each expert (boundary 0.875 of 4 steps)
        for step in (1, 3):
            for j in range(len(pipe.transformer.blocks)):
                for b, branch in enumerate(("cond", "uncond")):
                    assert _same_bits(run.blocks.hidden(step, j, branch), ref.block(step, b, j, torch.float16))


def test_diffusers_guidance_off_stores_cond_only(one_expert_pipe, tmp_path):
    with LatentProbe(one_expert_pipe, tmp_path / "g.h5", capture=(), blocks=[0], block_steps="first") as probe:
        run_pipe(one_expert_pipe, steps=3, guidance_scale=1.0)
    with open_run(tmp_path / "g.h5") as run:
        assert run.blocks.hidden_steps("cond") == [0] and run.blocks.hidden_steps("uncond") == []
        assert run.blocks.hidden(0, 0).shape[:3] == (1, FRAMES, TOKENS)
        with pytest.raises(KeyError, match="branch 'uncond' at step 0"):
            run.blocks.hidden(0, 0, "uncond")
    assert probe.hooks_attached == 0


# ------------------------------------------------------------------ refusals
def test_what_cannot_be_exact_is_refused(t2v, one_expert_pipe, tmp_path):
    with pytest.raises(ValueError, match="give blocks= too"):
        LatentProbe(t2v, None, block_steps="0")
    with pytest.raises(LatentStepsError, match="block_steps term 'often'"):
        LatentProbe(t2v, None, blocks="all", block_steps="often")
    with pytest.raises(LatentStepsError, match="block_steps='boundary' .* one expert"):
        LatentProbe(one_expert_pipe, None, capture=(), blocks="all", block_steps="boundary").__enter__()
    assert not one_expert_pipe.transformer.blocks[0]._forward_hooks
    # a step outside the plan is refused at the generation's first step: recording stops, the generation goes on
    base = t2v.generate("a cat", **KW)
    with pytest.warns(RuntimeWarning) as caught:
        with LatentProbe(t2v, tmp_path / "o.h5", capture=(), blocks="all", block_steps="0,9") as probe:
            out = t2v.generate("a cat", **KW)
    said = [str(w.message) for w in caught]
    assert any("recording stopped at step 0: block_steps ['9'] select no step of this generation of 6 planned" in m
               for m in said), said
    assert torch.equal(base, out) and probe.runs == [] and not (tmp_path / "o.h5").exists()
    # block_steps="none" is the default: nothing stored
    with LatentProbe(t2v, None, capture=(), blocks=[0], block_steps="none") as probe:
        t2v.generate("a cat", **KW)
    assert "block_hidden" not in probe.run.file and "block_steps" not in probe.run.attrs["block_probe"]
    with pytest.raises(KeyError, match="stored no block hidden states"):
        probe.run.blocks.hidden(0, 0)
    probe.run.close()


# ------------------------------------------------------------------ integrity
def test_a_flipped_bit_in_a_stored_hidden_state_is_caught_on_read(t2v, tmp_path):
    import random

    path = tmp_path / "c.h5"
    with LatentProbe(t2v, path, capture=(), blocks="all", block_steps="1,4"):
        t2v.generate("a cat", **KW)
    with open_run(path) as run:
        truth = {(s, j, br): run.blocks.hidden(s, j, br).clone() for s in (1, 4) for j in (0, 1)
                 for br in ("cond", "uncond")}
    chunks = []
    with h5py.File(path, "r") as f:
        for br in ("cond", "uncond"):
            ds = f[f"block_hidden/{br}"]
            for row, step in enumerate((1, 4)):
                for j in (0, 1):
                    info = ds.id.get_chunk_info_by_coord((row, j, 0, 0, 0, 0))
                    chunks.append((br, step, j, info.byte_offset, info.size))
    rng = random.Random(21)
    for trial in range(12):
        br, step, j, offset, size = rng.choice(chunks)
        bit = rng.randrange(size * 8)
        flipped = tmp_path / f"flip{trial}.h5"
        shutil.copyfile(path, flipped)
        with open(flipped, "r+b") as fh:
            fh.seek(offset + bit // 8)
            byte = fh.read(1)[0]
            fh.seek(offset + bit // 8)
            fh.write(bytes([byte ^ (1 << bit % 8)]))
        with open_run(flipped) as run:
            with pytest.raises(RunFileError, match=f"\\({br}\\) of block position {j} at step {step} do not match"):
                run.blocks.hidden(step, j, br)
            other = "uncond" if br == "cond" else "cond"
            assert torch.equal(run.blocks.hidden(step, j, other), truth[step, j, other])  # the rest reads as written
            changed = run.blocks.hidden(step, j, br, verify=False)
            assert not _same_bits(changed, truth[step, j, br])


def test_rows_of_uncommitted_steps_are_not_read(t2v, tmp_path):
    """A row whose step the file does not count as committed (a killed writer) is not offered."""
    path = tmp_path / "k.h5"
    with LatentProbe(t2v, path, capture=(), blocks=[0], block_steps="all"):
        t2v.generate("a cat", **KW)
    with h5py.File(path, "r+") as f:
        state = f["run_state"][0]
        state["steps"] = 3
        f["run_state"][0] = state
    with open_run(path) as run:
        assert run.num_steps == 3
        assert run.blocks.hidden_steps() == [0, 1, 2]
        with pytest.raises(KeyError):
            run.blocks.hidden(4, 0)


def test_xarray_reads_the_run_with_hidden_states(t2v, tmp_path):
    xr = pytest.importorskip("xarray")
    path = tmp_path / "x.h5"
    with LatentProbe(t2v, path, capture=("x0",), blocks=[0], block_steps="2", store_dtype="float32"):
        t2v.generate("a cat", **KW)
    with open_run(path) as run:
        ds = run.to_xarray()
        assert "block_update" in ds and "x0" in ds
        want = run.blocks.hidden(2, 0, "cond").numpy()
    with xr.open_dataset(path, engine="h5netcdf", group="block_hidden", phony_dims="sort") as hidden:
        np.testing.assert_array_equal(hidden["cond"].values[0, 0], want)
        assert hidden["cond_step"].values.tolist() == [2]
