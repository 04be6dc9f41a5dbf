"""Every video DiT pipeline in diffusers: recorded exactly, or refused before anything runs (issue 9).

For each family (tiny random-weight pipelines from tests/video_families.py) and against references that do
not go through the probe — the scheduler's own x̂₀ (or x̂₀ recomputed in float64 from its own σ), the
``sample`` each ``step`` call received laid out by the facts table (LTX: by the pipeline's own
``_unpack_latents``) — the probe must store x̂₀ exactly, put frames on the frame axis, and leave the
generation bit-identical. Refused families raise at entry with nothing attached.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_probe import LatentProbe
from latent_probe.adapters import UnsupportedTargetError
from video_families import BUILDERS, FACTS, Recorder

REFUSED = {"skyreels_v2_df": "diffusion forcing", "ltx2": "joint audio-video"}
SUPPORTED = [f for f in BUILDERS if f not in REFUSED]

_BUILT: dict[str, object] = {}


def family(name):
    if name not in _BUILT:
        _BUILT[name] = BUILDERS[name]()
    return _BUILT[name]


def to_bcfhw(name: str, fam, t: torch.Tensor, f_h_w=None) -> torch.Tensor:
    """The reference [B, C, F, H, W] of what ``step`` received, by the facts table (not by the probe)."""
    layout = FACTS[name]["step"]["sample"]["layout"]
    if layout.startswith("b c f h w"):
        return t
    if layout.startswith("b f c h w"):
        return t.permute(0, 2, 1, 3, 4)
    if layout.startswith("b (f h w)"):  # LTX: the pipeline's own inverse of its packing
        pipe = fam.pipe
        f, h, w = f_h_w
        return pipe._unpack_latents(t, f, h, w, pipe.transformer_spatial_patch_size,
                                    pipe.transformer_temporal_patch_size)
    raise AssertionError(f"no reference layout for {layout}")


def own_x0(name: str, call) -> torch.Tensor:
    """The scheduler's own x̂₀ of one step, in step's layout (float64 where it has to be recomputed)."""
    kind = FACTS[name]["x0"]["kind"]
    if kind in ("model_outputs", "out1"):
        return call.x0_own.double()
    v, x, s = call.model_output.double(), call.sample.double(), call.sigma
    if kind == "flow":
        return x - s * v
    if kind == "flow_inverted":
        return x + (1 - s) * v
    raise AssertionError(kind)


def pipe_untouched(fam) -> bool:
    pipe = fam.pipe
    experts = [getattr(pipe, n) for n in fam.experts]
    return ("step" not in vars(pipe.scheduler) and not any(m._forward_hooks or m._forward_pre_hooks for m in experts)
            and not {"check_inputs", "prepare_latents", "_pack_latents"} & set(vars(pipe)))


@pytest.mark.parametrize("name", SUPPORTED)
def test_family_recorded_exactly(name):
    fam = family(name)
    base = fam.run(seed=0)
    with Recorder(fam) as rec, LatentProbe(fam.pipe, store_dtype="float32", cfg_branches=True) as probe:
        out = fam.run(seed=0)
    assert torch.equal(out, base), "the probe changed the generation"
    assert pipe_untouched(fam)
    run = probe.run
    calls = rec.steps("pipe")
    assert run.num_steps == len(calls) > 0
    sizes = None
    if FACTS[name]["step"]["sample"]["layout"].startswith("b (f h w)"):
        # the latent sizes, from the pipeline's own formula (pipeline_ltx.py: latent_num_frames, ...)
        kw, pipe = fam.kwargs, fam.pipe
        sizes = ((kw["num_frames"] - 1) // pipe.vae_temporal_compression_ratio + 1,
                 kw["height"] // pipe.vae_spatial_compression_ratio, kw["width"] // pipe.vae_spatial_compression_ratio)
    x_t, x0, eps = run.latents("x_t")[:], run.latents("x0")[:], run.latents("eps")[:]
    for i, call in enumerate(calls):
        ref_x = to_bcfhw(name, fam, call.sample, sizes).numpy()
        assert x_t[i].shape == ref_x.shape, f"step {i}: stored {x_t[i].shape}, step saw {ref_x.shape} frames-wise"
        np.testing.assert_array_equal(x_t[i], ref_x, err_msg=f"step {i}: x_t is not the sample step received")
        ref_x0 = to_bcfhw(name, fam, own_x0(name, call), sizes).numpy()
        np.testing.assert_allclose(x0[i], ref_x0, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(ref_x0).max()),
                                   err_msg=f"step {i}: x̂₀ differs from the scheduler's own")
        a, s = run.alphas[i], run.sigmas[i]  # x_t = α·x̂₀ + σ·ε̂ for the stored convention
        np.testing.assert_allclose(a * x0[i].astype(np.float64) + s * eps[i], x_t[i], rtol=1e-4,
                                   atol=1e-4 * max(1.0, np.abs(x_t[i]).max()))
    sig = run.sigmas
    assert np.all(np.diff(sig) < 0), f"stored σ must fall as noise is removed: {sig}"
    if "pred_cond" in run.quantities:
        assert run.latents("pred_cond").shape == run.latents("pred").shape


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_family_refused_at_entry_with_nothing_attached(name):
    fam = family(name)
    base = fam.run(seed=0)
    probe = LatentProbe(fam.pipe)
    with pytest.raises(UnsupportedTargetError, match=REFUSED[name]) as err:
        probe.__enter__()
    assert "\n" not in str(err.value)
    assert probe.hooks_attached == 0 and pipe_untouched(fam)
    assert torch.equal(fam.run(seed=0), base)


def test_unknown_pipeline_needs_a_layout_and_a_known_one_refuses_a_contradicting_layout():
    fam = family("cogvideox_ddim")
    with pytest.raises(UnsupportedTargetError, match="receives 'b f c h w'"):
        LatentProbe(fam.pipe, layout="b c f h w").__enter__()
    assert pipe_untouched(fam)

    class MyVideoPipeline(type(family("easyanimate").pipe)):
        pass

    other = family("easyanimate")
    mine = MyVideoPipeline.__new__(MyVideoPipeline)
    mine.__dict__.update(other.pipe.__dict__)  # a subclass of a known pipeline inherits its spec
    with LatentProbe(mine, store_dtype="float32") as probe:
        other.call(mine, seed=0)
    assert probe.run.num_steps > 0


def test_frame_truncation_refused_where_the_dit_frame_axis_is_not_verified():
    from latent_probe import FrameTruncation

    fam = family("cogvideox_ddim")  # its DiT input is [B, F, C, H, W]: slicing dim 2 would cut channels
    probe = LatentProbe(fam.pipe, intervene=FrameTruncation(keep=2, until=2))
    with pytest.raises(ValueError, match="frame truncation cannot slice the DiT calls of this cogvideox"):
        probe.__enter__()
    assert probe.hooks_attached == 0 and pipe_untouched(fam)
