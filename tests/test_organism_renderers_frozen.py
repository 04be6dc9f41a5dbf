"""Both organism renderers are frozen: every clip and motion field stays bit-identical to the recorded digests.

The digests (sha256 of dtype, shape and bytes of each tensor) were recorded from the renderers at main
1d50bcb (before ``organism/render_common.py`` took their shared logic), on the CPU, torch 2.13.0. A single
changed value (an RNG draw moved, a float op reordered, a constant nudged) changes its digest, so a refactor
of ``videos`` / ``videos_v2`` that passes here renders the very same training data.

Several seeds per version, every class: batches of all classes (``render``), one clip per class
(``render_clip``) and a shuffled batch with repeats. Regenerate only on purpose, with
``python tests/test_organism_renderers_frozen.py``, and say why in the commit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
import torch

from latent_probe.organism import videos, videos_v2

TORCH_RECORDED = "2.13"   # transcendental kernels (sin, tanh, sqrt) may round otherwise under another torch


def _digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype} {tuple(t.shape)} ".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def _v1_fields(clips: videos.Clips) -> dict[str, torch.Tensor]:
    m = clips.motion
    return {"latents": clips.latents, "rgb": clips.rgb, "labels": m.labels, "centers": m.centers,
            "angle": m.angle, "pan": m.pan, "size": m.size, "omega": m.omega, "velocity": m.velocity}


def _v2_fields(clips: videos_v2.ClipsV2) -> dict[str, torch.Tensor]:
    m = clips.motion
    return {"rgb": clips.rgb, "labels": m.labels, "centers": m.centers, "angle": m.angle, "pan": m.pan,
            "size": m.size, "omega": m.omega, "accel": m.accel, "appear": m.appear, "vanish": m.vanish,
            "visible": m.visible}


def _v1_batch(seed: int) -> dict[str, torch.Tensor]:
    labels = torch.arange(len(videos.PROMPTS)).repeat(2)
    return _v1_fields(videos.render(labels, torch.Generator().manual_seed(seed)))


def _v2_batch(seed: int) -> dict[str, torch.Tensor]:
    labels = torch.arange(len(videos_v2.PROMPTS))
    return _v2_fields(videos_v2.render(labels, torch.Generator().manual_seed(seed)))


def _v1_clips(seed: int) -> dict[str, torch.Tensor]:
    """render_clip of every class; latents stacked [8, 16, F, H, W], motion fields stacked over the batch of one."""
    out = [videos.render_clip(k, seed) for k in range(len(videos.PROMPTS))]
    m = [mo for _, mo in out]
    return {"latents": torch.stack([lat for lat, _ in out]), "centers": torch.cat([x.centers for x in m]),
            "angle": torch.cat([x.angle for x in m]), "pan": torch.cat([x.pan for x in m]),
            "size": torch.cat([x.size for x in m]), "omega": torch.cat([x.omega for x in m])}


def _v2_clips(seed: int) -> dict[str, torch.Tensor]:
    out = [videos_v2.render_clip(k, seed) for k in range(len(videos_v2.PROMPTS))]
    m = [mo for _, mo in out]
    return {"rgb": torch.stack([rgb for rgb, _ in out]), "centers": torch.cat([x.centers for x in m]),
            "angle": torch.cat([x.angle for x in m]), "size": torch.cat([x.size for x in m]),
            "accel": torch.cat([x.accel for x in m]), "appear": torch.cat([x.appear for x in m]),
            "vanish": torch.cat([x.vanish for x in m])}


def _v1_shuffled() -> dict[str, torch.Tensor]:
    return _v1_fields(videos.render(torch.tensor([7, 3, 3, 0, 5, 4, 6, 1, 2, 5]), torch.Generator().manual_seed(99)))


def _v2_shuffled() -> dict[str, torch.Tensor]:
    return _v2_fields(videos_v2.render(torch.tensor([9, 8, 8, 4, 5, 0, 7]), torch.Generator().manual_seed(99)))


CASES: dict[str, Callable[[], dict[str, torch.Tensor]]] = {
    "v1 batch seed 0": lambda: _v1_batch(0),
    "v1 batch seed 1": lambda: _v1_batch(1),
    "v1 batch seed 12345": lambda: _v1_batch(12345),
    "v1 render_clip seed 3": lambda: _v1_clips(3),
    "v1 shuffled seed 99": _v1_shuffled,
    "v2 batch seed 0": lambda: _v2_batch(0),
    "v2 batch seed 1": lambda: _v2_batch(1),
    "v2 batch seed 12345": lambda: _v2_batch(12345),
    "v2 render_clip seed 3": lambda: _v2_clips(3),
    "v2 shuffled seed 99": _v2_shuffled,
}

DIGESTS: dict[str, dict[str, str]] = {
    "v1 batch seed 0": {
        "latents": "a2105454ce8dc0498373d4c9347a01cc",
        "rgb": "1ab683a2f5b08d42663440883196bddc",
        "labels": "ef24f3307a947c986ba3b3ea476b9ffe",
        "centers": "5aaeb461ffe2df4b4fae31db3f7c05d7",
        "angle": "4183607d7b9d356f0c51c551b25485e5",
        "pan": "f6a40cdd33c72de2b6d7f9781b1cc173",
        "size": "f9e5bff7548386491086d79ebf279b7f",
        "omega": "b46d456a40619c383091d1a778888fc0",
        "velocity": "a6170e4268f34eb20e596eb9c51b5a2d",
    },
    "v1 batch seed 1": {
        "latents": "1c7a4620484e4fe093d3af4e057eab99",
        "rgb": "4a0fed15635b2acad6cb24d028a38380",
        "labels": "ef24f3307a947c986ba3b3ea476b9ffe",
        "centers": "e2fbb6f33af0bbaeb9a6f8842d1f51ed",
        "angle": "f2379b67b4917983f3a150d9c106189b",
        "pan": "205240c11022373851698e47683a82e2",
        "size": "79cd396b0efecdc7b6706b17a79dc47a",
        "omega": "cf4638227c47b485bd7fb6135c4d5fac",
        "velocity": "228dd0f3fc4ba57eed531fc21f8a4140",
    },
    "v1 batch seed 12345": {
        "latents": "941b391d8c85a433e071b7649ef56be2",
        "rgb": "feb9f2e977615967a67a189b04a002ee",
        "labels": "ef24f3307a947c986ba3b3ea476b9ffe",
        "centers": "9da5759030d494ab570288b1cfb8acc3",
        "angle": "d962e7ca5ac10c935562123579bbd469",
        "pan": "01a7c559ac34e536964230a4a3dea004",
        "size": "0db3465a86cacdec257512d432157cf1",
        "omega": "1e5f3c62847d728ed0775d0c0bea6a96",
        "velocity": "38f3ee7010bb8f683ad363cd5ece7b86",
    },
    "v1 render_clip seed 3": {
        "latents": "ef5c50240a5edeb8ed81b8e0f7461625",
        "centers": "f18afa095c8a133b3b5acba39cb21f47",
        "angle": "0e4fc02297babfa9604e559a9c16f5ee",
        "pan": "0951bb6cfd6d7b08f5e6c232fbf9fbe2",
        "size": "03eda9a9b2505a60414bfc9af22931ef",
        "omega": "6399ab725607580e16ea5a630423ef83",
    },
    "v1 shuffled seed 99": {
        "latents": "b290ed01547b1a7a064de5172d2b1f5d",
        "rgb": "36d3cd1b7d08da481fac772251f68d87",
        "labels": "7821d2a5c8ffc80911d104623fb3cebe",
        "centers": "bf4945c317a2c34a6c9edd642348b776",
        "angle": "7d7b571c132057f6c92ad721443c16f8",
        "pan": "6d2c186f895641f31acf633ee827920c",
        "size": "df6310daf8b722340e9a35942f45f7af",
        "omega": "339a82da49dce149ef0a1e40a9e3955c",
        "velocity": "e248636aa9725b1a5ab40589ef55ff15",
    },
    "v2 batch seed 0": {
        "rgb": "b51163a0cb7efa1daa1ec4322240f790",
        "labels": "993b24ef21a30d32ed1b1eb36b625617",
        "centers": "36851ad02cf91b39555b58c44a0312fc",
        "angle": "4b93b2d917f6e39e9468ccbfd4ede192",
        "pan": "07a2e485988f54fd2880b2a3024bc2c2",
        "size": "8e72d17c090800192326feb24b0cb2fb",
        "omega": "622af8528cde4012b104491fd247b3dd",
        "accel": "55ab5f016ea96daaaf1672092783c8a3",
        "appear": "bca12e5aebea4326f7f622293e7a55bd",
        "vanish": "4b19a25205df2457a4f172df95e7dce0",
        "visible": "38a21c7f05f3cf00eecf1e5451390a09",
    },
    "v2 batch seed 1": {
        "rgb": "29e98241fe9af8de23f9f0856b427b69",
        "labels": "993b24ef21a30d32ed1b1eb36b625617",
        "centers": "b49c09d106907d66c8f2c82b97157a37",
        "angle": "4c33fcab721a309310af8460a61a64d7",
        "pan": "7619ba3b8fdaf93791b68163d14d407f",
        "size": "8c670fbd3c2d65c13b8e258cf4b44764",
        "omega": "923c2e732d7b7ecd887770ac493542ac",
        "accel": "4da887becfbffa1b0cf797a1c55ea0da",
        "appear": "37cded73662af388c196b08bedee5622",
        "vanish": "22cbe94e8c2fb18495cf7ae90603f1ec",
        "visible": "9c14167321252bb0b0a20e93f9c9e57d",
    },
    "v2 batch seed 12345": {
        "rgb": "c4d8b0a3c01a6709694e673ada044e7d",
        "labels": "993b24ef21a30d32ed1b1eb36b625617",
        "centers": "dc36f0609e0c72e4c1dc7864e34236af",
        "angle": "984a19f48e0c6c712a62f77cc297fcb5",
        "pan": "faf41d307517ab7f2d2e88e25ed45efd",
        "size": "1f3f0b19b0537e5e2d46eea4cbdae785",
        "omega": "7b930293848077b1f234177a604ef47c",
        "accel": "87db4468abc725d38de4cf75c08fc488",
        "appear": "3250beaa5e6eab6eefd7b2d0196364a9",
        "vanish": "73acf53d2f151c05c3e66d0f491aefa7",
        "visible": "88b0ac9d67816a79706568374a025153",
    },
    "v2 render_clip seed 3": {
        "rgb": "1982298960ff598d20ea576f9d50849f",
        "centers": "71741856e28df2fd5b591fd62974632c",
        "angle": "de52d581dd5493a64e0e3839b640bafc",
        "size": "daab9f8016a592ce7d552473c747a0b6",
        "accel": "e6d93836748afcfebe9cb34fc7a625bb",
        "appear": "3250beaa5e6eab6eefd7b2d0196364a9",
        "vanish": "541e4e61c05ae5a9169369531accaf10",
    },
    "v2 shuffled seed 99": {
        "rgb": "d2886ef8699fd0679e04e6e046c98a1b",
        "labels": "87eb91a551d8d70a13f6c30fa07dcef1",
        "centers": "914390485836027b8f3969edc01a0dd4",
        "angle": "6e7c598b2ae9b90bde7c0b45f0accdb1",
        "pan": "83f264af49b10f857397a51b208aec47",
        "size": "db5ba37282b0c0df660c59a21f697217",
        "omega": "de31368ac505a428a0aeeb03bde4803c",
        "accel": "3b6a1c57ab5ca6b6a67cacdd4906e97b",
        "appear": "3ae9b7e036f099fa95efb4d11685a201",
        "vanish": "e2a61699dde08316faa39e4948b05713",
        "visible": "f3af3cf603a1f792dd1122cc78b293d1",
    },
}


def _digests(case: str) -> dict[str, str]:
    return {name: _digest(t) for name, t in CASES[case]().items()}


@pytest.mark.parametrize("case", list(CASES))
def test_renderer_output_is_bit_identical_to_the_recorded_digests(case):
    if not torch.__version__.startswith(TORCH_RECORDED + "."):
        pytest.skip(f"digests recorded under torch {TORCH_RECORDED}, this is {torch.__version__}")
    got = _digests(case)
    changed = sorted(name for name in DIGESTS[case] if got.get(name) != DIGESTS[case][name])
    assert got.keys() == DIGESTS[case].keys() and not changed, f"{case}: changed fields {changed}"


def test_digest_sees_a_single_changed_value():
    """The digest is not blind: one float32 value moved by one ulp changes it, and -0.0 differs from 0.0."""
    t = torch.linspace(0, 1, 1000)
    u = t.clone()
    u[517] = torch.nextafter(u[517], torch.tensor(2.0))
    assert _digest(t) != _digest(u) and _digest(t) == _digest(t.clone())
    assert _digest(torch.zeros(3)) != _digest(-torch.zeros(3))


if __name__ == "__main__":   # print the table to paste into DIGESTS (only when a change of output is intended)
    print("DIGESTS: dict[str, dict[str, str]] = {")
    for case in CASES:
        print(f'    "{case}": {{')
        for name, d in _digests(case).items():
            print(f'        "{name}": "{d}",')
        print("    },")
    print("}")
