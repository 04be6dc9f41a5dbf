"""Organism v2's learned causal video VAE: diffusers ``AutoencoderKLWan`` in Wan's shape, smaller.

``dim_mult`` of length 3 gives two spatial down-samplings (64×64 pixels → 16×16 latents, 4×) and
``temperal_downsample=[True, True]`` two temporal ones; the encoder sees video frame 0 alone and then chunks
of 4 frames (diffusers' causal cache), so 81 frames → 1 + 80/4 = 21 latent frames, the first one encoding
frame 0 alone, as Wan's VAE does. 16 latent channels (``z_dim``).

Normalisation is the pipeline's: ``WanPipeline`` decodes ``z = latent · latents_std + latents_mean`` (it
divides by 1/std), so the DiT's latent is ``(μ − latents_mean) / latents_std`` with μ the posterior mean.
``encode`` and ``decode`` here apply exactly that; ``calibrate`` measures ``latents_mean`` / ``latents_std``
per channel on training clips and writes them into the VAE's config, where the pipeline reads them.
"""

from __future__ import annotations

from typing import Any

import torch

from . import OrganismInputError

__all__ = ["VAE_CONFIG", "build_vae", "encode", "decode", "calibrate", "channel_usage", "psnr",
           "temporal_consistency"]

# the config every v2 VAE is built with (plus latents_mean / latents_std, which ``calibrate`` sets)
VAE_CONFIG: dict[str, Any] = dict(base_dim=32, z_dim=16, dim_mult=[1, 2, 4], num_res_blocks=1, attn_scales=[],
                                  temperal_downsample=[True, True], dropout=0.0, scale_factor_temporal=4,
                                  scale_factor_spatial=4)


def build_vae(config: dict[str, Any] | None = None, seed: int | None = None) -> Any:
    """An ``AutoencoderKLWan`` of ``VAE_CONFIG`` updated by ``config`` (random weights; seeded if ``seed``), eval."""
    from diffusers import AutoencoderKLWan

    cfg = dict(VAE_CONFIG)
    cfg.update(config or {})
    cfg.setdefault("latents_mean", [0.0] * cfg["z_dim"])
    cfg.setdefault("latents_std", [1.0] * cfg["z_dim"])
    if len(cfg["temperal_downsample"]) != len(cfg["dim_mult"]) - 1:
        raise OrganismInputError(f"temperal_downsample needs {len(cfg['dim_mult']) - 1} entries (one per "
                                 "down-sampling), "
                         f"got {cfg['temperal_downsample']}")
    if cfg["scale_factor_spatial"] != 2 ** (len(cfg["dim_mult"]) - 1) or \
            cfg["scale_factor_temporal"] != 2 ** sum(cfg["temperal_downsample"]):
        raise OrganismInputError("scale_factor_spatial / scale_factor_temporal must match dim_mult / "
                                 "temperal_downsample")
    if seed is not None:
        torch.manual_seed(seed)
    return AutoencoderKLWan(**cfg).eval()


def _stats(vae: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    return mean, std


def encode(vae: Any, rgb: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
           ) -> torch.Tensor:
    """RGB [B, 3, F, H, W] in [0, 1] → normalised latent [B, 16, 1 + (F − 1)/4, H/4, W/4] (posterior mean,
    or a sample when ``sample``), in the VAE's dtype."""
    x = (2 * rgb - 1).to(vae.dtype)
    dist = vae.encode(x).latent_dist
    mu = dist.sample(generator) if sample else dist.mode()
    mean, std = _stats(vae, mu)
    return (mu - mean) / std


def decode(vae: Any, latent: torch.Tensor) -> torch.Tensor:
    """Normalised latent [B, 16, f, h, w] → RGB [B, 3, 4(f − 1) + 1, 4h, 4w] in [0, 1], exactly as
    ``WanPipeline`` decodes (latent / (1/std) + mean, then ``vae.decode``, clamped to [−1, 1])."""
    latent = latent.to(vae.dtype)
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latent.device, latent.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latent.device,
                                                                                           latent.dtype)
    video = vae.decode(latent / inv_std + mean, return_dict=False)[0]
    return (video.float() + 1) / 2


@torch.no_grad()
def calibrate(vae: Any, rgb_batches: Any) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior mean over ``rgb_batches`` (an iterable of [B, 3, F, H, W]);
    written into ``vae.config.latents_mean`` / ``latents_std`` and returned."""
    total = total2 = None
    count = 0
    vae.register_to_config(latents_mean=[0.0] * vae.config.z_dim, latents_std=[1.0] * vae.config.z_dim)
    for rgb in rgb_batches:
        mu = encode(vae, rgb).double()
        s, s2 = mu.sum((0, 2, 3, 4)), mu.pow(2).sum((0, 2, 3, 4))
        total = s if total is None else total + s
        total2 = s2 if total2 is None else total2 + s2
        count += mu.numel() // mu.shape[1]
    mean = total / count
    std = (total2 / count - mean * mean).clamp(min=1e-12).sqrt()
    vae.register_to_config(latents_mean=[float(x) for x in mean], latents_std=[float(x) for x in std])
    return vae.config.latents_mean, vae.config.latents_std


def channel_usage(latent: torch.Tensor) -> torch.Tensor:
    """[C] share of each channel in the latent's variance across clips and positions (sums to 1); a channel the
    VAE does not use scores ≈ 0. ``latent`` [B, C, F, H, W], normalised or not."""
    x = latent.double().transpose(0, 1).flatten(1)
    var = x.var(1)
    return var / var.sum()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per clip [B] of videos [B, 3, F, H, W] in [0, 1] (float64)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-12))


def temporal_consistency(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per clip [B]: RMS of the error in frame differences, (x̂_{f+1} − x̂_f) − (x_{f+1} − x_f), over RMS of the
    target's frame differences. 0: the reconstruction moves exactly as the clip; flicker the VAE adds
    between frames (e.g. at its 4-frame chunk seams) raises it. Videos [B, 3, F, H, W]."""
    dr, dt = recon.double().diff(dim=2), target.double().diff(dim=2)
    return (dr - dt).pow(2).flatten(1).mean(1).sqrt() / dt.pow(2).flatten(1).mean(1).sqrt().clamp(min=1e-12)
