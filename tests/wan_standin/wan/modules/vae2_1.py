"""Fake stand-in for wan/modules/vae2_1.py (Wan2.1 VAE: 16 latent channels, stride 4x8x8)."""
import torch

from ._fake_vae import FakeVAEWrapper

__all__ = ['Wan2_1_VAE']


class Wan2_1_VAE(FakeVAEWrapper):
    spatial_stride = 8

    def __init__(self, z_dim=16, vae_pth='cache/vae_step_411000.pth', dtype=torch.float, device='cpu'):
        super().__init__(z_dim=z_dim, vae_pth=vae_pth, dtype=dtype, device=device)
