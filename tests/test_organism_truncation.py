"""Frame truncation on the trained organism: keep = F changes nothing, fewer keys change the video (issue 12)."""

import pytest
import torch

pytest.importorskip("diffusers")

from latent_probe import FrameTruncation, LatentProbe  # noqa: E402
from latent_probe.organism import load_organism  # noqa: E402

STEPS = 4


@pytest.fixture(scope="module")
def organism():
    return load_organism()


def _generate(org, intervene):
    with LatentProbe(org.pipe, None, capture=("x0",), store_dtype="float32", intervene=intervene) as probe:
        out = org.generate("a red square moving right", seed=1, num_inference_steps=STEPS)
    return out, probe.run


@pytest.mark.parametrize("positions", ["true", "compressed"])
def test_keep_all_frames_is_bit_identical_on_the_organism(organism, positions):
    base, _ = _generate(organism, None)
    frames = base.shape[2]
    same, run = _generate(organism, FrameTruncation(keep=frames, until="boundary", positions=positions))
    assert torch.equal(same, base)
    assert run.attrs["intervention"]["positions"] == positions


def test_fewer_keys_change_the_organism_video(organism):
    base, _ = _generate(organism, None)
    trunc, run = _generate(organism, FrameTruncation(keep=3, until="boundary"))
    rel = float((trunc - base).norm() / base.norm())
    assert rel > 1e-3                                   # the truncated steps really ran on 3 frames
    assert run.attrs["intervention"]["keep"] == 3
