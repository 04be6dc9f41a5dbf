"""Organism v2 as a diffusers ``WanPipeline``: the learned causal VAE as ``pipe.vae``, two experts, shift 12.

    org = load_organism(size="small")                          # weights/organism_v2_small.safetensors
    latent = org.generate("a cyan disc appears and then vanishes", seed=0)    # [1, 16, 21, 16, 16]
    frames = org.decode(latent)                                 # uint8 [81, 64, 64, 3], through pipe.vae

``decode`` runs the pipeline's own decode path (latent · latents_std + latents_mean → ``vae.decode``), so a
probe on ``pipe.vae`` and every adapter path see the real calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import Organism, OrganismInputError, videos_v2, wan_pipeline
from .model import EXPERTS, OrganismWeightsError, build_transformer
from .model_v2 import (OrganismV2Config, config_for, expected_sha256, null_embedding_v2, prompt_embeddings_v2,
                       read_organism_v2, weights_path)

__all__ = ["OrganismV2", "build_pipeline_v2", "load_organism_v2", "random_organism_v2"]


def build_pipeline_v2(config: OrganismV2Config, experts: dict[str, Any], vae: Any) -> Any:
    """``WanPipeline(vae=<learned AutoencoderKLWan>, scheduler=UniPC flow, shift config.flow_shift,
    transformer=high_noise, transformer_2=low_noise, boundary_ratio=config.boundary_ratio)``; no text encoder."""
    return wan_pipeline(config, experts, vae)


@dataclass
class OrganismV2(Organism):
    """``Organism`` whose latent is the learned VAE's; ``decode`` goes through ``pipe.vae``."""

    prompts: tuple[str, ...] = videos_v2.PROMPTS

    @property
    def size(self) -> str:
        return self.config.size

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, scale: int = 1) -> torch.Tensor:
        """Latent [1, 16, f, 16, 16] or [16, f, 16, 16] → uint8 RGB [4(f − 1) + 1, 64·scale, 64·scale, 3] (CPU),
        decoded as ``WanPipeline`` decodes (latents_mean / latents_std, ``pipe.vae.decode``)."""
        from .vae_v2 import decode

        if latent.dim() == 4:
            latent = latent[None]
        if latent.dim() != 5 or latent.shape[0] != 1 or latent.shape[1] != self.config.channels:
            raise OrganismInputError(f"decode expects one latent [16, F, h, w], got {list(latent.shape)}")
        rgb = decode(self.pipe.vae, latent.to(self.pipe.vae.device))[0].float().cpu()     # [3, F, H, W]
        if scale != 1:
            rgb = torch.nn.functional.interpolate(rgb.transpose(0, 1), scale_factor=scale, mode="nearest")
            rgb = rgb.transpose(0, 1)
        return (rgb * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).contiguous()

    @torch.no_grad()
    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB [B, 3, F, 64, 64] in [0, 1] → the DiT's (normalised) latent [B, 16, 1 + (F − 1)/4, 16, 16]."""
        from .vae_v2 import encode

        return encode(self.pipe.vae, rgb.to(self.pipe.vae.device))


def _build(config: OrganismV2Config, experts: dict[str, Any], vae: Any, prompts: torch.Tensor, null: torch.Tensor,
           device: str | torch.device, dtype: torch.dtype, trained: bool) -> OrganismV2:
    if dtype != torch.float32:   # built in float32; diffusers warns on any dtype cast
        experts = {k: m.to(dtype=dtype) for k, m in experts.items()}
    experts = {k: m.to(device).eval().requires_grad_(False) for k, m in experts.items()}
    vae = vae.to(device).eval().requires_grad_(False)
    pipe = build_pipeline_v2(config, experts, vae)
    return OrganismV2(pipe=pipe, config=config, prompt_embeds=prompts.to(device, dtype),
                      null_embeds=null.to(device, dtype), trained=trained)


def load_organism_v2(size: str = "small", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     path: str | Path | None = None, sha256: str | None = None) -> OrganismV2:
    """A trained v2 organism from ``path`` (default ``weights/organism_v2_<size>.safetensors``), read only if its
    SHA-256 is ``sha256`` (default: the digest ``weights/checksums_v2.json`` records for the file name).

    Raises ``OrganismWeightsError`` (one line) when the file is missing, its digest is unknown or differs, or
    its tensors do not fit; also when the file holds another size than ``size``. The VAE stays float32.
    """
    config_for(size)
    path = Path(path) if path is not None else weights_path(size)
    config, experts, vae, prompts, null = read_organism_v2(path, sha256 or expected_sha256(path))
    if config.size != size:
        raise OrganismWeightsError(f"{path} holds the {config.size!r} organism, not {size!r}")
    return _build(config, experts, vae, prompts, null, device, dtype, trained=True)


def random_organism_v2(size: str = "small", seed: int = 0, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, vae_config: dict[str, Any] | None = None) -> OrganismV2:
    """The v2 architecture, pipeline and embeddings with random weights (VAE included): a control, and what tests
    run without trained files. ``vae_config`` overrides ``vae_v2.VAE_CONFIG`` entries (e.g. a small base_dim)."""
    from .vae_v2 import build_vae

    config = config_for(size)
    experts = {name: build_transformer(config, seed=seed + i) for i, name in enumerate(EXPERTS)}
    vae = build_vae(vae_config, seed=seed + 7)
    return _build(config, experts, vae, prompt_embeddings_v2(config), null_embedding_v2(config), device, dtype,
                  trained=False)
