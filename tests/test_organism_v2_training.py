"""CPU smoke runs of organism v2's training scripts: a few steps each, then the loader reads what they wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from latent_probe.organism import OrganismV2, load_organism, vae_v2  # noqa: E402
from latent_probe.organism.model_v2 import expected_sha256, save_vae  # noqa: E402


def test_vae_training_smoke(tmp_path):
    import train_vae_v2

    assert train_vae_v2.main(["--device", "cpu", "--base-dim", "8", "--batch", "1", "--frames", "5",
                              "--max-steps", "2", "--calib-clips", "1", "--val-per-class", "1", "--val-frames", "5",
                              "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "organism_v2_vae.json").read_text())
    assert meta["steps"] == 2 and meta["metrics"]["latent_shape"] == [16, 2, 16, 16]
    assert len(meta["metrics"]["channel_share"]) == 16 and len(meta["metrics"]["per_class"]) == 10
    assert 0 <= meta["metrics"]["channels_used"] <= 16
    assert (tmp_path / "organism_v2_vae.safetensors").stat().st_size < 2 * 2**20


def test_dit_training_smoke_writes_a_file_the_loader_accepts(tmp_path):
    import train_organism_v2

    vae = vae_v2.build_vae({"base_dim": 8}, seed=0)
    save_vae(tmp_path / "vae.safetensors", vae)
    registry = tmp_path / "checksums_v2.json"
    common = ["--size", "small", "--vae", str(tmp_path / "vae.safetensors"), "--latents", str(tmp_path / "latents.pt"),
              "--device", "cpu", "--out", str(tmp_path)]
    assert train_organism_v2.main(common + ["--encode", "2", "--encode-batch", "2", "--encode-only"]) == 0
    assert (tmp_path / "latents.pt").is_file() and not (tmp_path / "organism_v2_small.safetensors").exists()
    assert train_organism_v2.main(common + ["--max-steps", "3", "--batch", "1", "--val-clips", "1",   # cached latents
                                            "--checksums", str(registry)]) == 0
    data = torch.load(tmp_path / "latents.pt")
    assert data["latents"].shape == (2, 16, 21, 16, 16) and data["labels"].tolist() == [0, 1]
    path = tmp_path / "organism_v2_small.safetensors"
    org = load_organism(size="small", path=path, sha256=expected_sha256(path, registry))
    assert isinstance(org, OrganismV2) and org.trained
    meta = json.loads((tmp_path / "organism_v2_small.json").read_text())["training"]
    assert meta["steps"] >= 3 and meta["sha256"] == expected_sha256(path, registry)
    assert set(meta["validation_loss_per_sigma"]) == {"base", "high_noise", "low_noise"}
